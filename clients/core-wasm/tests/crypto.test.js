// Node test of the wasm bindings (run by ../test.sh): wasm <-> wasm round trip, and a message
// produced by the native core (fixture from `cargo run -p tern-core --example wasm_fixture`).
// TERN_TAMPER_FIXTURE=1 flips one ciphertext byte of the native message before the positive
// check, to show this test fails when decryption does not produce the native plaintext.
'use strict';
const { test } = require('node:test');
const assert = require('node:assert');
const fs = require('node:fs');
const path = require('node:path');
const { randomUUID } = require('node:crypto');

const pkgDir = process.env.TERN_WASM_PKG;
const fixturePath = process.env.TERN_FIXTURE;
assert.ok(pkgDir && fixturePath, 'TERN_WASM_PKG and TERN_FIXTURE must be set (use test.sh)');
const { Machine } = require(path.resolve(pkgDir, 'tern_core_wasm.js'));

const identity = (k) => ({ ...k, one_time_keys: [], fallback_key: '' });

function wireMessage(conversation, senderUser, senderDevice, payloadHex, contentType) {
  return {
    conversation, seq: 1, message_id: randomUUID(), sender_user: senderUser,
    sender_device: senderDevice, client_msg_id: '0'.repeat(31) + '1', timestamp_ms: 5,
    content_type: contentType, payload: payloadHex, files: [],
  };
}

// Flips one byte inside the Megolm ciphertext of a tern-wire Message JSON object. The v2
// payload is binary: [0x02][32-byte session id][Megolm message], and the Megolm message ends
// with the AES ciphertext, an 8-byte MAC and a 64-byte signature: flip the last AES byte.
function tamper(message) {
  const payload = Buffer.from(message.payload, 'hex');
  assert.equal(payload[0], 0x02, 'v2 binary envelope');
  payload[payload.length - 72 - 1] ^= 0x01;
  return { ...message, payload: payload.toString('hex') };
}

test('wasm encrypt -> wasm decrypt, tamper rejected, pickle round trip', () => {
  const a = randomUUID();
  const b = randomUUID();
  const alice = new Machine(a, randomUUID());
  const bob = new Machine(b, randomUUID());
  const ak = JSON.parse(alice.keysToPublish(0));
  alice.markKeysPublished();
  const bk = JSON.parse(bob.keysToPublish(0));
  bob.markKeysPublished();
  assert.equal(bk.one_time_keys.length, 50);
  for (const m of [alice, bob]) {
    m.onDeviceList(a, JSON.stringify([identity(ak)]), 1);
    m.onDeviceList(b, JSON.stringify([identity(bk)]), 1);
  }
  const conv = randomUUID();
  const needs = JSON.parse(alice.prepare(conv, JSON.stringify([a, b]), 2));
  assert.deepStrictEqual(needs.claim.map((c) => c.device), [bob.deviceId()]);
  const problems = JSON.parse(
    alice.onClaimed(JSON.stringify([{ ...identity(bk), one_time_keys: [bk.one_time_keys[0]] }])));
  assert.deepStrictEqual(problems, []);
  const enc = JSON.parse(alice.encryptText(conv, 'hello from wasm', 3));
  assert.equal(enc.content_type, 'e2e.megolm.v2');
  // Binary envelope: version byte + 32-byte session id + Megolm message, no JSON or base64.
  const raw = Buffer.from(enc.payload, 'hex');
  assert.equal(raw[0], 0x02);
  assert.equal(raw.subarray(1, 33).toString('base64').replace(/=+$/, ''), enc.session_id);
  const share = enc.key_shares.find((s) => s.to_device === bob.deviceId());
  assert.ok(share, 'a key share for bob');
  const msg = wireMessage(conv, a, alice.deviceId(), enc.payload, enc.content_type);
  assert.equal(JSON.parse(bob.decrypt(JSON.stringify(msg))).error, 'NoKeyYet');
  const events = JSON.parse(bob.onKeyShare(JSON.stringify({ type: 'key_share', from_user: a, from_device: alice.deviceId(), payload: share.payload, inbox_id: 1 }), 4));
  assert.equal(events[0].type, 'room_key_received');
  const dec = JSON.parse(bob.decrypt(JSON.stringify(msg)));
  assert.equal(dec.text, 'hello from wasm');
  assert.equal(dec.sender_device, alice.deviceId());
  assert.equal(JSON.parse(bob.decrypt(JSON.stringify(tamper(msg)))).error, 'Tampered');
  const replay = { ...msg, message_id: randomUUID() };
  assert.equal(JSON.parse(bob.decrypt(JSON.stringify(replay))).error, 'Replayed');

  const key = new Uint8Array(32).fill(9);
  const bob2 = Machine.unpickle(bob.pickle(key), key);
  assert.equal(JSON.parse(bob2.decrypt(JSON.stringify(msg))).text, 'hello from wasm');
  assert.throws(() => Machine.unpickle(bob.pickle(key), new Uint8Array(32)));
  const sn = alice.safetyNumber(b);
  assert.match(sn, /^(\d{5} ){11}\d{5}$/);
  assert.equal(sn, bob2.safetyNumber(a));
});

test('wasm decrypts a message produced by the native core', () => {
  const f = JSON.parse(fs.readFileSync(fixturePath, 'utf8'));
  const key = Buffer.from(f.pickle_key_hex, 'hex');
  const bob = Machine.unpickle(Buffer.from(f.receiver_pickle_b64, 'base64'), key);
  const events = JSON.parse(bob.onKeyShare(JSON.stringify({ from_user: f.from_user, from_device: f.from_device, payload: Buffer.from(f.share_b64, 'base64').toString('hex') }), 10));
  assert.equal(events.length, 1);
  assert.equal(events[0].type, 'room_key_received', JSON.stringify(events));
  let message = f.message;
  if (process.env.TERN_TAMPER_FIXTURE === '1') message = tamper(message);
  const dec = JSON.parse(bob.decrypt(JSON.stringify(message)));
  assert.equal(dec.text, f.expected_text, JSON.stringify(dec));
  assert.equal(dec.sender_user, f.sender_user);
  assert.equal(JSON.parse(bob.decrypt(JSON.stringify(tamper(f.message)))).error, 'Tampered');
});
