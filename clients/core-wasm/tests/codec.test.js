// Node test of the codec exports (run by ../test.sh): client JSON -> envelope bytes the
// native decoder accepts, server envelopes (written by the NATIVE encoder: fixture
// `server_frames`) -> JSON, handshake, reply keys, stream framing; malformed input throws.
'use strict';
const { test } = require('node:test');
const assert = require('node:assert');
const fs = require('node:fs');
const path = require('node:path');
const { randomUUID } = require('node:crypto');

const pkgDir = process.env.TERN_WASM_PKG;
const fixturePath = process.env.TERN_FIXTURE;
assert.ok(pkgDir && fixturePath, 'TERN_WASM_PKG and TERN_FIXTURE must be set (use test.sh)');
const w = require(path.resolve(pkgDir, 'tern_core_wasm.js'));
const fixture = JSON.parse(fs.readFileSync(fixturePath, 'utf8'));

const MAX = 64 * 1024;
const conv = randomUUID();
const send = (payloadHex) => ({
  type: 'send', request_id: 7, conversation: conv, client_msg_id: '0'.repeat(31) + 'a',
  content_type: 'e2e.megolm.v2', payload: payloadHex, files: [],
});

test('encodeClient gives the bytes the native encoder gives', () => {
  for (const { json, hex } of fixture.client_frames) {
    const bytes = w.encodeClient(JSON.stringify(json), MAX);
    assert.ok(bytes instanceof Uint8Array);
    assert.equal(Buffer.from(bytes).toString('hex'), hex, json.type);
  }
});

test('decodeServer reads what the native encoder wrote', () => {
  assert.ok(fixture.server_frames.length >= 5);
  for (const { json, hex } of fixture.server_frames) {
    const decoded = JSON.parse(w.decodeServer(Buffer.from(hex, 'hex')));
    assert.deepStrictEqual(decoded, json);
  }
});

test('encodeClient refuses malformed JSON, unknown types and missing fields', () => {
  assert.throws(() => w.encodeClient('{', MAX), /invalid client message JSON/);
  assert.throws(() => w.encodeClient('{"type":"shout"}', MAX), /invalid client message JSON \(shout\)/);
  const noFiles = send('00');
  delete noFiles.files;
  assert.throws(() => w.encodeClient(JSON.stringify(noFiles), MAX), /missing field `files`/);
  assert.throws(() => w.encodeClient(JSON.stringify(send('0')), MAX), /invalid client message JSON/);
  assert.throws(() => w.encodeClient(JSON.stringify({ ...send('00'), conversation: 'nope' }), MAX),
    /invalid client message JSON/);
  assert.throws(() => w.encodeClient(JSON.stringify(send('00')), 0), /at least 1/);
});

test('an oversized frame throws naming both sizes; a frame the server would refuse throws', () => {
  const big = send('ab'.repeat(70 * 1024));
  assert.throws(() => w.encodeClient(JSON.stringify(big), MAX),
    (e) => e instanceof Error && /encodes to \d+ bytes, the limit is 65536 bytes/.test(e.message));
  const justFits = w.encodeClient(JSON.stringify(send('ab'.repeat(1000))), MAX);
  assert.throws(() => w.encodeClient(JSON.stringify(send('ab'.repeat(1000))), justFits.length - 1),
    new RegExp(`encodes to ${justFits.length} bytes, the limit is ${justFits.length - 1} bytes`));
  assert.equal(w.encodeClient(JSON.stringify(send('ab'.repeat(1000))), justFits.length).length, justFits.length);
  // A key blob over the wire's 128-byte bound: the native decoder's verifier refuses it.
  const keys = {
    type: 'publish_keys', request_id: 1,
    keys: { user: randomUUID(), device: randomUUID(), identity_key: '11'.repeat(200),
      signed_prekey: '', one_time_keys: [] },
  };
  assert.throws(() => w.encodeClient(JSON.stringify(keys), MAX), /would be refused by the server/);
});

test('decodeServer throws on garbage, truncation, a client frame and an oversized frame', () => {
  const pong = Buffer.from(fixture.server_frames.find((f) => f.json.type === 'pong').hex, 'hex');
  assert.throws(() => w.decodeServer(new Uint8Array(0)), /undecodable server frame/);
  assert.throws(() => w.decodeServer(pong.subarray(0, 6)), /too short/);
  assert.throws(() => w.decodeServer(Buffer.from('garbagegarbage!!')), /undecodable/);
  const ping = w.encodeClient(JSON.stringify({ type: 'ping', nonce: 1 }), MAX);
  assert.throws(() => w.decodeServer(ping), /undecodable server frame/);
  assert.throws(() => w.decodeServer(pong, 4), /frame of \d+ bytes exceeds the maximum of 4 bytes/);
  const flipped = Buffer.from(pong);
  flipped[0] ^= 0x40;
  assert.throws(() => w.decodeServer(flipped), /undecodable/);
});

test('hello and checkWelcome', () => {
  const device = randomUUID();
  const h = JSON.parse(w.hello('tok', device, 'web', JSON.stringify([{ conversation: conv, seq: 4 }])));
  assert.equal(h.type, 'hello');
  assert.equal(h.device, device);
  assert.deepStrictEqual(h.cursors, [{ conversation: conv, seq: 4 }]);
  assert.ok(h.min_version >= 1 && h.max_version >= h.min_version);
  assert.ok(w.encodeClient(JSON.stringify(h), MAX).length > 0);
  assert.throws(() => w.hello('tok', 'not-a-uuid', 'web', '[]'), /invalid device id/);
  assert.throws(() => w.hello('', device, 'web', '[]'), /token is empty/);
  assert.throws(() => w.hello('tok', device, 'web', '[{"seq":1}]'), /invalid cursors JSON/);

  const welcome = {
    type: 'welcome', version: h.max_version, user: randomUUID(), device, server_time_ms: 5,
    max_frame_bytes: 32768, one_time_keys_left: 3,
  };
  const ok = JSON.parse(w.checkWelcome(JSON.stringify(welcome), MAX));
  assert.equal(ok.max_out_frame, 32768);
  assert.equal(ok.one_time_keys_left, 3);
  assert.equal(JSON.parse(w.checkWelcome(JSON.stringify({ ...welcome, max_frame_bytes: 0 }), MAX)).max_out_frame, MAX);
  assert.throws(() => w.checkWelcome(JSON.stringify({ ...welcome, version: h.max_version + 1 }), MAX),
    /unsupported version/);
  const refused = { type: 'error', request_id: 0, code: 'unauthenticated', message: 'bad token', fatal: true };
  assert.throws(() => w.checkWelcome(JSON.stringify(refused), MAX), /hello refused: unauthenticated: bad token/);
  assert.throws(() => w.checkWelcome('{"type":"pong","nonce":1}', MAX), /expected welcome, got/);
  assert.throws(() => w.checkWelcome('[]', MAX), /invalid server message JSON/);
});

test('replyKey names the request a server message answers', () => {
  assert.equal(w.replyKey('{"type":"ok","request_id":9}'), 'request:9');
  assert.equal(w.replyKey('{"type":"pong","nonce":3}'), 'pong:3');
  assert.equal(w.replyKey('{"type":"ok","request_id":0}'), undefined);
  assert.equal(w.replyKey('{"type":"sync_complete"}'), undefined);
  assert.throws(() => w.replyKey('{"type":"ok"}'), /invalid server message JSON/);
});

test('WebTransport stream framing: lengthPrefixed + FrameDecoder', () => {
  const a = w.encodeClient(JSON.stringify({ type: 'ping', nonce: 1 }), MAX);
  const b = w.encodeClient(JSON.stringify(send('cd'.repeat(300))), MAX);
  const stream = Buffer.concat([w.lengthPrefixed(a), w.lengthPrefixed(b)]);
  assert.equal(stream.readUInt32LE(0), a.length);
  const dec = new w.FrameDecoder(MAX);
  // Byte by byte: frames come out whole and in order.
  const out = [];
  for (const byte of stream) {
    dec.push(Uint8Array.of(byte));
    let f;
    while ((f = dec.next()) !== undefined) out.push(Buffer.from(f));
  }
  assert.deepStrictEqual(out, [Buffer.from(a), Buffer.from(b)]);
  assert.equal(dec.bufferedLen(), 0);
  const small = new w.FrameDecoder(16);
  small.push(w.lengthPrefixed(b));
  assert.throws(() => small.next(), /frame of \d+ bytes exceeds the maximum of 16 bytes/);
  assert.throws(() => small.next(), /exceeds the maximum/, 'the error is sticky');
  assert.throws(() => new w.FrameDecoder(0), /at least 1/);
});
