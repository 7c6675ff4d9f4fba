// Node test of the E2E exports beyond one message (run by ../test.sh): SendPlan against a
// scripted key directory, the wasm -> NATIVE direction (the message written to
// $TERN_FROM_WASM is decrypted by the native core afterwards: `wasm_fixture check`), the key
// backup made by the native core restored in wasm (wrong passphrase distinct), a wasm backup
// restored on a second wasm device, the trust store, and malformed input throwing.
'use strict';
const { test } = require('node:test');
const assert = require('node:assert');
const fs = require('node:fs');
const path = require('node:path');
const { randomUUID } = require('node:crypto');

const pkgDir = process.env.TERN_WASM_PKG;
const fixturePath = process.env.TERN_FIXTURE;
const fromWasmPath = process.env.TERN_FROM_WASM;
assert.ok(pkgDir && fixturePath && fromWasmPath, 'TERN_WASM_PKG, TERN_FIXTURE, TERN_FROM_WASM (use test.sh)');
const w = require(path.resolve(pkgDir, 'tern_core_wasm.js'));
const f = JSON.parse(fs.readFileSync(fixturePath, 'utf8'));
const j = JSON.stringify;
const CHEAP_KDF = j({ backup_kdf: { m_kib: 64, t: 1, p: 1 } });

const identity = (k) => ({ ...k, one_time_keys: [], fallback_key: '' });
const bundle = (devices, unanswered = []) => j({ type: 'key_bundle', request_id: 1, devices, unanswered });
function published(m) {
  const k = JSON.parse(m.keysToPublish(0));
  m.markKeysPublished();
  return k;
}
function wireMessage(conversation, m, enc, seq = 1) {
  return {
    conversation, seq, message_id: randomUUID(), sender_user: m.userId(), sender_device: m.deviceId(),
    client_msg_id: '0'.repeat(31) + '7', timestamp_ms: 9, content_type: enc.content_type,
    payload: enc.payload, files: [],
  };
}

/** Runs a SendPlan with a directory holding `keys` (user -> [DeviceKeys with one OTK]). */
function runPlan(machine, conversation, members, keys) {
  const plan = new w.SendPlan(conversation, j(members), 65536);
  const steps = [];
  for (;;) {
    const step = JSON.parse(plan.next(machine, 5));
    steps.push(step.step);
    if (step.step === 'ready') return steps;
    for (const batch of step.batches) {
      if (step.step === 'query') {
        const devices = batch.flatMap((u) => (keys[u] || []).map(identity));
        const out = JSON.parse(plan.onQueryAnswer(machine, j(batch), bundle(devices), 5));
        assert.deepStrictEqual(out.retry, []);
      } else {
        const devices = batch.flatMap((t) => (keys[t.user] || []).filter((k) => t.devices.includes(k.device)));
        const out = JSON.parse(plan.onClaimAnswer(machine, j(batch), bundle(devices)));
        assert.deepStrictEqual(out.problems, []);
      }
    }
  }
}

test('wasm -> native: SendPlan, encrypt to the native receiver, written for the native check', () => {
  const carolUser = randomUUID();
  const carol = new w.Machine(carolUser, randomUUID());
  const ck = published(carol);
  const bob = f.receiver_keys;
  const conv = randomUUID();
  const steps = runPlan(carol, conv, [carolUser, bob.user], { [carolUser]: [ck], [bob.user]: [bob] });
  assert.deepStrictEqual(steps, ['query', 'claim', 'ready']);
  const enc = JSON.parse(carol.encryptText(conv, 'made by wasm', 6));
  assert.deepStrictEqual(enc.missing, []);
  const share = enc.key_shares.find((s) => s.to_device === bob.device);
  assert.ok(share, 'a key share for the native receiver');
  const batches = JSON.parse(w.shareBatches(j(enc.key_shares), 65536));
  assert.deepStrictEqual(batches.flat(), enc.key_shares);
  assert.ok(w.encodeClient(j({ type: 'send_key_shares', request_id: 2, shares: batches[0] }), 65536).length > 0);
  const message = wireMessage(conv, carol, enc);
  if (process.env.TERN_TAMPER_WASM === '1') {
    const p = Buffer.from(message.payload, 'hex');
    p[p.length - 73] ^= 1;
    message.payload = p.toString('hex');
  }
  fs.writeFileSync(fromWasmPath, j({ sender_keys: identity(ck), share, message, text: 'made by wasm' }));
  // The next message needs no round trip.
  assert.deepStrictEqual(runPlan(carol, conv, [carolUser, bob.user], {}), ['ready']);
});

test('SendPlan: lists that stay stale end the send; bad answers throw', () => {
  const me = randomUUID();
  const m = new w.Machine(me, randomUUID());
  const other = randomUUID();
  const plan = new w.SendPlan(randomUUID(), j([me, other]), 65536);
  for (let i = 0; i < 3; i++) assert.equal(JSON.parse(plan.next(m, 1)).step, 'query');
  assert.throws(() => plan.next(m, 1), /device lists stay stale after repeated queries/);

  const p2 = new w.SendPlan(randomUUID(), j([me, other]), 65536);
  const users = JSON.parse(p2.next(m, 1)).batches[0];
  assert.throws(() => p2.onQueryAnswer(m, j(users), j({ type: 'error', request_id: 1, code: 'rate_limited',
    message: 'slow', fatal: false, retry_after_ms: 5 }), 1), /key directory refused: rate_limited: slow/);
  assert.throws(() => p2.onQueryAnswer(m, j(users), bundle([], users), 1), /left every user unanswered/);
  const partial = JSON.parse(p2.onQueryAnswer(m, j(users), bundle([], [other]), 1));
  assert.deepStrictEqual(partial.retry, [other]);
  assert.throws(() => p2.onQueryAnswer(m, j(users), '{"type":"pong","nonce":1}', 1), /expected key_bundle/);
  assert.throws(() => p2.onQueryAnswer(m, '{', bundle([]), 1), /invalid asked users JSON/);
  assert.throws(() => p2.onClaimAnswer(m, j([{ user: other, devices: [randomUUID()] }]), bundle([], [other])),
    /left every target unanswered/);
  assert.throws(() => new w.SendPlan('nope', '[]', 65536), /invalid conversation id/);
  assert.throws(() => new w.SendPlan(randomUUID(), '[1]', 65536), /invalid member list JSON/);
  assert.throws(() => new w.SendPlan(randomUUID(), '[]', 0), /at least 1/);
  assert.throws(() => w.shareBatches('[{}]', 65536), /invalid key shares JSON/);
  const many = Array.from({ length: 100 }, () => ({ to_user: me, to_device: me, payload: 'ab'.repeat(900) }));
  const split = JSON.parse(w.shareBatches(j(many), 65536));
  assert.ok(split.length >= 2, 'a 100-device rotation does not fit one frame');
  for (const b of split) w.encodeClient(j({ type: 'send_key_shares', request_id: 1, shares: b }), 65536);
});

test('the native sender\'s key backup restores in wasm; a wrong passphrase is WrongPassphraseError', () => {
  const me = new w.Machine(f.sender_user, randomUUID());
  me.onDeviceList(f.sender_user, j([f.sender_keys]), 1);
  assert.equal(JSON.parse(me.decrypt(j(f.message))).error, 'NoKeyYet');
  assert.throws(() => me.backupUnlock('wrong passphrase', j(f.backup)),
    (e) => e instanceof Error && e.name === 'WrongPassphraseError' && /wrong backup passphrase/.test(e.message));
  assert.equal(me.backupVersion(), undefined, 'a wrong passphrase changes nothing');
  assert.throws(() => me.backupImport(j(f.backup_page), 2), /no backup key/);
  me.backupUnlock(f.backup_passphrase, j(f.backup));
  assert.equal(me.backupVersion(), f.backup.version);
  assert.deepStrictEqual(JSON.parse(me.backupImport(j(f.backup_page), 2)), { imported: 1, already_known: 0, invalid: 0 });
  assert.deepStrictEqual(JSON.parse(me.backupImport(j(f.backup_page), 2)), { imported: 0, already_known: 1, invalid: 0 });
  assert.equal(JSON.parse(me.decrypt(j(f.message))).text, f.expected_text);
  const tampered = { ...f.backup_page, sessions: f.backup_page.sessions.map((s) => ({ ...s,
    data: Buffer.from(Buffer.from(s.data, 'base64').map((b, i) => (i === 30 ? b ^ 1 : b))).toString('base64') })) };
  const fresh = new w.Machine(f.sender_user, randomUUID());
  fresh.backupUnlock(f.backup_passphrase, j(f.backup));
  assert.equal(JSON.parse(fresh.backupImport(j(tampered), 2)).invalid, 1);
  const other = new w.Machine(f.sender_user, randomUUID());
  assert.throws(() => other.backupRestore('nope', j(f.backup), j(f.backup_page), 2), { name: 'WrongPassphraseError' });
  assert.throws(() => other.backupRestore(f.backup_passphrase, j(f.backup), '{}', 2), /invalid backup session page JSON/);
  assert.equal(other.backupVersion(), undefined, 'malformed input changes nothing');
  assert.equal(JSON.parse(other.backupRestore(f.backup_passphrase, j(f.backup), j(f.backup_page), 2)).imported, 1);
  assert.equal(JSON.parse(other.decrypt(j(f.message))).error, 'UntrustedDevice', 'sender device not looked up yet');
  assert.throws(() => me.backupUnlock('x', '{"version":"v"}'), /invalid key backup JSON/);
  assert.throws(() => me.backupUnlock('x', j({ version: 'v', meta: '!!' })), /not base64/);
  assert.throws(() => me.backupImport('[]', 1), /invalid backup session page JSON/);
});

test('a wasm backup restores on a second wasm device', () => {
  const user = randomUUID();
  const a1 = Machine_withKeys(user);
  const conv = randomUUID();
  runPlan(a1.m, conv, [user], { [user]: [a1.keys] });
  const msg = wireMessage(conv, a1.m, JSON.parse(a1.m.encryptText(conv, 'remember me', 3)));
  assert.throws(() => a1.m.backupExportSessions(), /no backup key/);
  assert.throws(() => a1.m.backupCreate('', 4), /passphrase is empty/);
  const header = JSON.parse(a1.m.backupCreate('open sesame', 4));
  assert.ok(header.version && header.meta);
  const put = JSON.parse(a1.m.backupExportSessions());
  assert.equal(put.version, header.version);
  assert.equal(put.sessions.length, 1);
  a1.m.backupMarkUploaded(j(put.sessions.map((s) => s.session_id)));
  assert.deepStrictEqual(JSON.parse(a1.m.backupExportSessions()).sessions, []);

  const a2 = new w.Machine(user, randomUUID());
  a2.onDeviceList(user, j([identity(a1.keys)]), 5);
  assert.throws(() => a2.backupUnlock('open sesam', j(header)), { name: 'WrongPassphraseError' });
  a2.backupUnlock('open sesame', j(header));
  assert.equal(JSON.parse(a2.backupImport(j({ sessions: put.sessions, next_after: null }), 6)).imported, 1);
  assert.equal(JSON.parse(a2.decrypt(j(msg))).text, 'remember me');
});

function Machine_withKeys(user) {
  const m = w.Machine.withConfig(user, randomUUID(), CHEAP_KDF);
  return { m, keys: published(m) };
}

test('trust store: device list, verification, blocking, safety numbers', () => {
  const [a, b] = [randomUUID(), randomUUID()];
  const alice = Machine_withKeys(a);
  const bob = Machine_withKeys(b);
  assert.deepStrictEqual(JSON.parse(alice.m.deviceList(b)), []);
  assert.equal(alice.m.safetyNumber(b), undefined);
  alice.m.onDeviceList(a, j([identity(alice.keys)]), 1);
  alice.m.onDeviceList(b, j([identity(bob.keys)]), 2);
  bob.m.onDeviceList(a, j([identity(alice.keys)]), 1);
  bob.m.onDeviceList(b, j([identity(bob.keys)]), 2);
  const list = JSON.parse(alice.m.deviceList(b));
  assert.deepStrictEqual(list, [{ user: b, device: bob.m.deviceId(), trust: 'unverified', blocked: false,
    fingerprint: bob.m.fingerprint(), first_seen_ms: 2, previous_identities: 0 }]);
  assert.equal(JSON.parse(alice.m.deviceList(a))[0].fingerprint, alice.m.fingerprint());
  assert.equal(alice.m.safetyNumber(b), bob.m.safetyNumber(a));
  assert.equal(alice.m.markDeviceVerified(b, bob.m.deviceId()), true);
  assert.equal(JSON.parse(alice.m.deviceList(b))[0].trust, 'verified');
  assert.equal(alice.m.markUserVerified(b), true);
  assert.equal(JSON.parse(alice.m.deviceList(b))[0].trust, 'verified');
  assert.equal(alice.m.markDeviceVerified(b, randomUUID()), false);
  assert.equal(alice.m.markUserVerified(randomUUID()), false);
  assert.equal(alice.m.blockDevice(b, bob.m.deviceId()), true);
  assert.equal(JSON.parse(alice.m.deviceList(b))[0].blocked, true);
  // A new identity under the same device id is the warning.
  const impostor = w.Machine.withConfig(b, bob.m.deviceId(), CHEAP_KDF);
  const events = JSON.parse(alice.m.onDeviceList(b, j([identity(published(impostor))]), 3));
  assert.deepStrictEqual(events.map((e) => e.type), ['identity_changed']);
  assert.equal(JSON.parse(alice.m.deviceList(b))[0].trust, 'changed');
  assert.equal(JSON.parse(alice.m.deviceList(b))[0].previous_identities, 1);
  assert.throws(() => alice.m.deviceList('x'), /invalid user id/);
  assert.throws(() => alice.m.blockDevice(b, 'x'), /invalid device id/);
  assert.throws(() => alice.m.onDeviceList(b, j([identity(alice.keys)]), 1), /holds a device of/);
});

test('Machine: malformed input throws, outbox entries encrypt as they leave', () => {
  const me = randomUUID();
  const m = new w.Machine(me, randomUUID());
  assert.throws(() => new w.Machine('x', randomUUID()), /invalid user id/);
  assert.throws(() => w.Machine.withConfig(me, randomUUID(), '{"rotation_messages":0}'), /rotation_messages/);
  assert.throws(() => w.Machine.withConfig(me, randomUUID(), '{"nope":1}'), /unknown crypto config field/);
  assert.throws(() => w.Machine.withConfig(me, randomUUID(), '[]'), /must be a JSON object/);
  assert.throws(() => w.Machine.unpickle(new Uint8Array(10), new Uint8Array(31)), /pickle key must be 32 bytes/);
  assert.throws(() => w.Machine.unpickle(new Uint8Array(10), new Uint8Array(32)), /could not be opened/);
  assert.throws(() => m.onKeyShare('{"from_user":"x"}', 1), /invalid key share JSON/);
  assert.throws(() => m.decrypt('{}'), /invalid message JSON/);
  assert.throws(() => m.prepare(randomUUID(), 'x', 1), /invalid member list JSON/);
  assert.throws(() => m.encryptText(randomUUID(), 'hi', 1), /was not prepared/);
  assert.throws(() => m.encryptText(randomUUID(), 'hi', -1), /now_ms/);
  // An outbox entry leaves through Machine.encrypt (content type + bytes, hidden from the server).
  const conv = randomUUID();
  const keys = published(m);
  runPlan(m, conv, [me], { [me]: [keys] });
  const o = new w.Outbox();
  const entry = JSON.parse(o.compose(conv, 'text', Buffer.from('queued offline'), 1));
  const enc = JSON.parse(m.encrypt(entry.conversation, entry.content_type, Buffer.from(entry.payload, 'hex'), 2));
  assert.equal(enc.content_type, 'e2e.megolm.v2');
  const send = { type: 'send', request_id: 3, conversation: conv, client_msg_id: entry.client_msg_id,
    content_type: enc.content_type, payload: enc.payload, files: [] };
  assert.ok(w.encodeClient(j(send), 65536).length > 0);
  assert.equal(JSON.parse(m.decrypt(j(wireMessage(conv, m, enc)))).text, 'queued offline');
  const data = JSON.parse(m.encrypt(conv, 'image/png', Uint8Array.of(1, 2, 3), 3));
  const back = JSON.parse(m.decrypt(j(wireMessage(conv, m, data, 2))));
  assert.deepStrictEqual(back.data, { content_type: 'image/png', data: '010203' });
  assert.throws(() => m.encrypt(conv, 'text', new Uint8Array(50 * 1024), 4), /content too large/);
});

test('WaitingForKeys: a message before its key waits, settles after the sender lookup', () => {
  const [a, b] = [randomUUID(), randomUUID()];
  const alice = Machine_withKeys(a);
  const bob = Machine_withKeys(b);
  const conv = randomUUID();
  const plan = new w.SendPlan(conv, j([a, b]), 65536);
  runPlanWith(plan, alice.m, { [a]: [alice.keys], [b]: [bob.keys] });
  assert.deepStrictEqual([plan.queries(), plan.claims()], [1, 1]);
  const enc = JSON.parse(alice.m.encryptText(conv, 'waited for', 3));
  const msg = wireMessage(conv, alice.m, enc);
  const share = enc.key_shares.find((s) => s.to_device === bob.m.deviceId());

  const waiting = new w.WaitingForKeys();
  assert.equal(JSON.parse(waiting.decrypt(bob.m, j(msg))).error, 'NoKeyYet');
  assert.equal(JSON.parse(waiting.decrypt(bob.m, j(msg))).error, 'NoKeyYet');
  assert.equal(waiting.len(), 1, 'a replayed copy waits once');
  assert.deepStrictEqual(JSON.parse(waiting.conversations()), [conv]);
  // Bob has not looked alice's device up: the key is stored, the message keeps waiting.
  const out = JSON.parse(waiting.onKeyShare(bob.m, j({ type: 'key_share', from_user: a,
    from_device: alice.m.deviceId(), payload: share.payload, inbox_id: 3 }), 4));
  assert.deepStrictEqual(out.events.map((e) => e.type), ['unknown_device']);
  assert.deepStrictEqual(out.settled, []);
  assert.equal(waiting.hasUnknownSenders(), true);
  const users = JSON.parse(waiting.takeToQuery());
  assert.deepStrictEqual(users, [a]);
  assert.equal(waiting.hasUnknownSenders(), false);
  bob.m.onDeviceList(a, j([identity(alice.keys)]), 5);
  const settled = JSON.parse(waiting.retrySenders(bob.m, j(users)));
  assert.equal(settled.length, 1);
  assert.equal(settled[0].message.message_id, msg.message_id);
  assert.equal(settled[0].result.text, 'waited for');
  assert.equal(waiting.isEmpty(), true);
  assert.deepStrictEqual(JSON.parse(waiting.retryAll(bob.m)), []);
  const acks = new w.InboxAcks();
  acks.onHandled(3);
  acks.onHandled(3);
  acks.onHandled(0);
  assert.equal(acks.len(), 1);
  const ackFrames = JSON.parse(acks.takeAcks());
  assert.deepStrictEqual(ackFrames, [{ type: 'ack_key_shares', up_to: 3, ids: [3] }]);
  assert.ok(w.encodeClient(j(ackFrames[0]), 65536).length > 0);
  assert.equal(acks.isEmpty(), true);
  assert.deepStrictEqual(JSON.parse(acks.takeAcks()), []);
  assert.throws(() => acks.onHandled(-1), /inbox_id must be/);
  assert.throws(() => waiting.decrypt(bob.m, '{}'), /invalid message JSON/);
  assert.throws(() => waiting.onKeyShare(bob.m, '{"payload":"zz"}', 1), /invalid key share JSON/);
  assert.throws(() => waiting.retrySenders(bob.m, '["x"]'), /invalid user list JSON/);

  // A device-list change makes the next send query again; a removed member rotates the session.
  alice.m.markDeviceListStale(b);
  assert.deepStrictEqual(JSON.parse(alice.m.prepare(conv, j([a, b]), 6)).query_users, [b]);
  alice.m.onDeviceList(b, j([identity(bob.keys)]), 6);
  alice.m.onMemberRemoved(conv, b);
  const rotated = JSON.parse(alice.m.encryptText(conv, 'after removal', 7));
  assert.notEqual(rotated.session_id, enc.session_id);
  assert.throws(() => alice.m.onMemberRemoved(conv, 'x'), /invalid user id/);
  assert.throws(() => alice.m.markDeviceListStale('x'), /invalid user id/);
});

function runPlanWith(plan, machine, keys) {
  for (;;) {
    const step = JSON.parse(plan.next(machine, 5));
    if (step.step === 'ready') return;
    for (const batch of step.batches) {
      if (step.step === 'query') {
        plan.onQueryAnswer(machine, j(batch), bundle(batch.flatMap((u) => (keys[u] || []).map(identity))), 5);
      } else {
        plan.onClaimAnswer(machine, j(batch), bundle(batch.flatMap((t) => keys[t.user] || [])));
      }
    }
  }
}
