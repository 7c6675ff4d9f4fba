// The wasm facade against the REAL server (run by ../../test.sh when TERN_LIVE=1): `tern
// serve` on a loopback port, two users over HTTPS and secure WebSocket (TLS trusting the
// server's own self-signed certificate, as a user who installed it would), Hello/Welcome,
// key publication, a 1:1 conversation, an encrypted message prepared with SendPlan, shares
// split with shareBatches, the outbox acked by send_ack, and the receiver decrypting through
// WaitingForKeys after looking up the sender. Every frame goes through encodeClient /
// decodeServer. Bounded: every wait has a deadline, the server is killed at the end.
'use strict';
const { test, after } = require('node:test');
const assert = require('node:assert');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const https = require('node:https');
const tls = require('node:tls');
const crypto = require('node:crypto');
const { spawn } = require('node:child_process');

const pkgDir = process.env.TERN_WASM_PKG;
const ternBin = process.env.TERN_BIN;
assert.ok(pkgDir && ternBin, 'TERN_WASM_PKG and TERN_BIN must be set (use test.sh with TERN_LIVE=1)');
const w = require(path.resolve(pkgDir, 'tern_core_wasm.js'));
const j = JSON.stringify;
const MAX = 65536;
const DEADLINE_MS = 15000;

function withDeadline(promise, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), DEADLINE_MS);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-wasm-live-'));
let server;
after(() => {
  if (server) server.kill('SIGKILL');
  fs.rmSync(dataDir, { recursive: true, force: true });
});

function startServer() {
  server = spawn(ternBin, ['serve', '--data-dir', dataDir, '--listen', '127.0.0.1:0',
    '--ops-listen', 'off', '--shards', '1'], { stdio: ['ignore', 'pipe', 'pipe'] });
  return withDeadline(new Promise((resolve, reject) => {
    let out = '';
    server.stdout.on('data', (d) => {
      out += d;
      const m = out.match(/listening on 127\.0\.0\.1:(\d+)/);
      if (m && /certificate sha-256/.test(out)) resolve(Number(m[1]));
    });
    server.on('exit', (code) => reject(new Error(`tern exited with ${code}: ${out}`)));
  }), 'the server banner');
}

function connectOptions(port) {
  return { host: '127.0.0.1', port, servername: 'localhost',
    ca: fs.readFileSync(path.join(dataDir, 'tls', 'self-signed-cert.pem')) };
}

function api(port, method, urlPath, body, token) {
  return withDeadline(new Promise((resolve, reject) => {
    const headers = { 'content-type': 'application/json' };
    if (token) headers.authorization = `Bearer ${token}`;
    const req = https.request({ ...connectOptions(port), method, path: `/api/v1${urlPath}`, headers }, (res) => {
      let text = '';
      res.on('data', (d) => { text += d; });
      res.on('end', () => (res.statusCode < 300 ? resolve(JSON.parse(text))
        : reject(new Error(`${method} ${urlPath}: ${res.statusCode} ${text}`))));
    });
    req.on('error', reject);
    req.end(body === undefined ? undefined : j(body));
  }), `${method} ${urlPath}`);
}

/** A minimal secure WebSocket client: one binary message = one envelope. */
function wsConnect(port, onMessage) {
  return withDeadline(new Promise((resolve, reject) => {
    const sock = tls.connect(connectOptions(port), () => {
      sock.write(`GET /api/v1/ws HTTP/1.1\r\nHost: localhost:${port}\r\nUpgrade: websocket\r\n` +
        `Connection: Upgrade\r\nSec-WebSocket-Key: ${crypto.randomBytes(16).toString('base64')}\r\n` +
        'Sec-WebSocket-Version: 13\r\n\r\n');
    });
    let buf = Buffer.alloc(0);
    let open = false;
    const send = (opcode, payload) => {
      const mask = crypto.randomBytes(4);
      const len = payload.length;
      const head = len < 126 ? Buffer.from([0x80 | opcode, 0x80 | len])
        : len < 65536 ? Buffer.from([0x80 | opcode, 0x80 | 126, len >> 8, len & 255])
          : Buffer.concat([Buffer.from([0x80 | opcode, 0x80 | 127]), (() => { const b = Buffer.alloc(8); b.writeBigUInt64BE(BigInt(len)); return b; })()]);
      const body = Buffer.from(payload.map((b, i) => b ^ mask[i % 4]));
      sock.write(Buffer.concat([head, mask, body]));
    };
    sock.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      if (!open) {
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0) return;
        const head = buf.subarray(0, end).toString();
        if (!head.startsWith('HTTP/1.1 101')) return reject(new Error(head));
        buf = buf.subarray(end + 4);
        open = true;
        resolve({ send: (bytes) => send(2, Buffer.from(bytes)), close: () => sock.destroy() });
      }
      for (;;) {
        if (buf.length < 2) return;
        const opcode = buf[0] & 15;
        let len = buf[1] & 127;
        let at = 2;
        if (len === 126) { if (buf.length < 4) return; len = buf.readUInt16BE(2); at = 4; }
        if (len === 127) { if (buf.length < 10) return; len = Number(buf.readBigUInt64BE(2)); at = 10; }
        if (buf.length < at + len) return;
        const payload = buf.subarray(at, at + len);
        buf = buf.subarray(at + len);
        if (opcode === 2) onMessage(new Uint8Array(payload));
        else if (opcode === 9) send(10, payload);
      }
    });
    sock.on('error', reject);
  }), 'the WebSocket upgrade');
}

/** One device: its machine, connection, pending requests (by replyKey) and pushes. */
class Device {
  constructor(port, login) {
    this.port = port;
    this.login = login;
    this.machine = new w.Machine(login.user_id, crypto.randomUUID());
    this.pending = new Map();
    this.pushes = [];
    this.waiters = [];
    this.nextId = 1;
  }

  async connect() {
    this.ws = await wsConnect(this.port, (frame) => this.onFrame(frame));
    const welcome = this.expectPush((m) => m.type === 'welcome' || m.type === 'error');
    this.send(JSON.parse(w.hello(this.login.token, this.machine.deviceId(), 'wasm-live', '[]')));
    this.welcome = JSON.parse(w.checkWelcome(j(await welcome), MAX));
    const keys = this.machine.keysToPublish(this.welcome.one_time_keys_left);
    assert.ok(keys, 'a new device publishes keys');
    assert.equal((await this.request({ type: 'publish_keys', keys: JSON.parse(keys) })).type, 'ok');
    this.machine.markKeysPublished();
  }

  onFrame(frame) {
    const json = w.decodeServer(frame, MAX);
    const key = w.replyKey(json);
    const msg = JSON.parse(json);
    if (key && this.pending.has(key)) {
      this.pending.get(key)(msg);
      this.pending.delete(key);
      return;
    }
    this.pushes.push(msg);
    for (const waiter of this.waiters.splice(0)) waiter();
  }

  send(msg) {
    this.ws.send(w.encodeClient(j(msg), this.welcome ? this.welcome.max_out_frame : MAX));
  }

  request(msg) {
    const request_id = this.nextId++;
    const reply = new Promise((resolve) => this.pending.set(`request:${request_id}`, resolve));
    this.send({ ...msg, request_id });
    return withDeadline(reply, `the answer to ${msg.type}`);
  }

  /** Resolves with (and removes) the first push matching `pred`. */
  expectPush(pred) {
    return withDeadline(new Promise((resolve) => {
      const look = () => {
        const i = this.pushes.findIndex(pred);
        if (i >= 0) return resolve(this.pushes.splice(i, 1)[0]);
        this.waiters.push(look);
      };
      look();
    }), 'a push');
  }

  /** SendPlan's round trips against the real key directory. */
  async prepare(conversation, members) {
    const plan = new w.SendPlan(conversation, j(members), this.welcome.max_frame_bytes);
    const steps = [];
    for (;;) {
      const step = JSON.parse(plan.next(this.machine, Date.now()));
      steps.push(step.step);
      if (step.step === 'ready') return steps;
      for (let batch of step.batches) {
        while (batch.length) {
          if (step.step === 'query') {
            const answer = await this.request({ type: 'query_keys', users: batch });
            batch = JSON.parse(plan.onQueryAnswer(this.machine, j(batch), j(answer), Date.now())).retry;
          } else {
            const answer = await this.request({ type: 'claim_keys_batch', targets: batch });
            const out = JSON.parse(plan.onClaimAnswer(this.machine, j(batch), j(answer)));
            assert.deepStrictEqual(out.problems, []);
            batch = out.retry;
          }
        }
      }
    }
  }
}

test('two wasm devices exchange an encrypted message through the real server', async () => {
  const port = await startServer();
  const suffix = crypto.randomBytes(4).toString('hex');
  const password = 'correct horse battery staple';
  const logins = [];
  for (const name of [`alice${suffix}`, `bob${suffix}`]) {
    await api(port, 'POST', '/register', { username: name, password });
    logins.push(await api(port, 'POST', '/login', { username: name, password }));
  }
  const [alice, bob] = logins.map((l) => new Device(port, l));
  await alice.connect();
  await bob.connect();
  const conv = await api(port, 'POST', '/conversations/direct', { peer: bob.login.username }, alice.login.token);
  const members = conv.members.map((m) => m.user_id);
  assert.deepStrictEqual(members.sort(), [alice.login.user_id, bob.login.user_id].sort());

  // Alice composes (outbox), prepares (SendPlan), encrypts as the entry leaves, uploads the
  // shares, sends with the entry's client id; the send_ack empties the outbox.
  const outbox = new w.Outbox();
  const delivery = new w.Delivery('[]');
  const entry = JSON.parse(outbox.compose(conv.conversation_id, 'text', Buffer.from('hello over the wire'), Date.now()));
  assert.deepStrictEqual(await alice.prepare(conv.conversation_id, members), ['query', 'claim', 'ready']);
  const enc = JSON.parse(alice.machine.encrypt(entry.conversation, entry.content_type,
    Buffer.from(entry.payload, 'hex'), Date.now()));
  for (const shares of JSON.parse(w.shareBatches(j(enc.key_shares), alice.welcome.max_frame_bytes))) {
    const stored = await alice.request({ type: 'send_key_shares', shares });
    assert.deepStrictEqual(stored.full, []);
  }
  const ack = await alice.request({ type: 'send', conversation: entry.conversation,
    client_msg_id: entry.client_msg_id, content_type: enc.content_type, payload: enc.payload, files: [] });
  assert.equal(ack.type, 'send_ack', j(ack));
  assert.deepStrictEqual(JSON.parse(outbox.onAcked(j(ack))).client_msg_id, entry.client_msg_id);
  assert.equal(outbox.isEmpty(), true);
  delivery.onOwnSend(ack.conversation, ack.seq);

  // Bob: the key share (inbox push) and the message (live deliver) in whatever order; the
  // sender's device is looked up, then the message settles.
  const waiting = new w.WaitingForKeys();
  const bobDelivery = new w.Delivery('[]');
  const share = await bob.expectPush((m) => m.type === 'key_share');
  const deliver = await bob.expectPush((m) => m.type === 'deliver');
  assert.equal(bobDelivery.onServerMessage(j(deliver)), true);
  const popped = JSON.parse(bobDelivery.pop());
  assert.equal(popped.kind, 'message');
  let result = JSON.parse(waiting.decrypt(bob.machine, j(popped.message)));
  assert.equal(result.error, 'NoKeyYet');
  const shareOut = JSON.parse(waiting.onKeyShare(bob.machine, j(share), Date.now()));
  let settled = shareOut.settled;
  if (waiting.hasUnknownSenders()) {
    const users = JSON.parse(waiting.takeToQuery());
    const answer = await bob.request({ type: 'query_keys', users });
    const plan = new w.SendPlan(conv.conversation_id, j(members), bob.welcome.max_frame_bytes);
    assert.deepStrictEqual(JSON.parse(plan.onQueryAnswer(bob.machine, j(users), j(answer), Date.now())).retry, []);
    settled = settled.concat(JSON.parse(waiting.retrySenders(bob.machine, j(users))));
  }
  assert.equal(settled.length, 1, j(settled));
  result = settled[0].result;
  assert.equal(result.text, 'hello over the wire');
  assert.equal(result.sender_user, alice.login.user_id);
  assert.equal(result.sender_device, alice.machine.deviceId());
  // Acks the server accepts: the inbox entry (after pickling) and the delivery cursor.
  const inboxAcks = new w.InboxAcks();
  inboxAcks.onHandled(share.inbox_id);
  bob.machine.pickle(new Uint8Array(32).fill(1));
  for (const a of JSON.parse(inboxAcks.takeAcks())) bob.send(a);
  for (const a of JSON.parse(bobDelivery.acksDue())) {
    bob.send(a);
    bobDelivery.onAckSent(a.conversation, a.seq);
  }
  const pong = new Promise((resolve) => bob.pending.set('pong:99', resolve));
  bob.send({ type: 'ping', nonce: 99 });
  assert.equal((await withDeadline(pong, 'pong')).type, 'pong', 'the connection is still healthy');

  // A reload before the send_ack was handled: the entry comes back from storage (fromLoaded)
  // and leaves again with the same client_msg_id; the server stores it once.
  const reloaded = w.Outbox.fromLoaded(j([entry]));
  const again = JSON.parse(reloaded.front());
  const enc2 = JSON.parse(alice.machine.encrypt(again.conversation, again.content_type,
    Buffer.from(again.payload, 'hex'), Date.now()));
  const ack2 = await alice.request({ type: 'send', conversation: again.conversation,
    client_msg_id: again.client_msg_id, content_type: enc2.content_type, payload: enc2.payload, files: [] });
  assert.equal(ack2.type, 'send_ack', j(ack2));
  assert.equal(ack2.duplicate, true);
  assert.equal(ack2.seq, ack.seq);
  assert.ok(reloaded.onAcked(j(ack2)));
  // A second copy would be fanned out when it commits, before alice's send_ack: bob's pong,
  // asked for after that ack, comes behind it on bob's connection.
  const pong2 = new Promise((resolve) => bob.pending.set('pong:100', resolve));
  bob.send({ type: 'ping', nonce: 100 });
  await withDeadline(pong2, 'pong');
  assert.deepStrictEqual(bob.pushes.filter((m) => m.type === 'deliver'), [], 'delivered once');
  alice.ws.close();
  bob.ws.close();
});
