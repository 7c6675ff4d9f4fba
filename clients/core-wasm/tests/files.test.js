// Node test of the file exports (run by ../test.sh): the wasm FileDecryptor verifies and
// decrypts a file the NATIVE core encrypted (fixture `file`), in random pieces; every tamper
// and truncation throws its named error; the wasm FileEncryptor's object (resumed mid-chunk)
// decrypts in wasm and is written to $TERN_FROM_WASM.files.json, which the native core then
// decrypts (`wasm_fixture check`); a file message goes through Machine.encrypt/decrypt.
'use strict';
const { test } = require('node:test');
const assert = require('node:assert');
const fs = require('node:fs');
const path = require('node:path');
const { randomUUID, createHash } = require('node:crypto');

const pkgDir = process.env.TERN_WASM_PKG;
const fixturePath = process.env.TERN_FIXTURE;
const fromWasmPath = process.env.TERN_FROM_WASM;
assert.ok(pkgDir && fixturePath && fromWasmPath, 'TERN_WASM_PKG, TERN_FIXTURE, TERN_FROM_WASM (use test.sh)');
const w = require(path.resolve(pkgDir, 'tern_core_wasm.js'));
const f = JSON.parse(fs.readFileSync(fixturePath, 'utf8'));

// The bytes both sides encrypt: byte i = (31 i + 7) mod 251.
const pattern = (n) => Uint8Array.from({ length: n }, (_, i) => (i * 31 + 7) % 251);

/** Decrypts `object` with a fresh decryptor in pieces of sizes from `sizes` (cycled). */
function decryptPieces(bodyJson, object, sizes) {
  const dec = new w.FileDecryptor(bodyJson);
  const out = [];
  let at = 0;
  for (let i = 0; at < object.length; i++) {
    const n = Math.max(1, Math.min(sizes[i % sizes.length], object.length - at));
    out.push(dec.push(object.subarray(at, at + n)));
    at += n;
  }
  assert.equal(dec.consumed(), object.length);
  dec.finish();
  return Buffer.concat(out);
}

function throwsNamed(fn, name) {
  assert.throws(fn, (e) => e instanceof Error && e.name === name, `expected ${name}`);
}

test('wasm decrypts the native file in any pieces', () => {
  const object = Buffer.from(f.file.object_b64, 'base64');
  const body = JSON.stringify(f.file.body);
  const expected = Buffer.from(pattern(f.file.body.size));
  assert.equal(object.length, w.fileEncryptedSize(f.file.body.size));
  for (const sizes of [[object.length], [1, 19, 2, 65552, 7], [4096], [65553, 3]]) {
    assert.ok(decryptPieces(body, object, sizes).equals(expected), `pieces ${sizes}`);
  }
  // The hash in the body is the SHA-256 of the plaintext (what the page may show or compare).
  assert.equal(Buffer.from(f.file.body.sha256, 'base64').toString('hex'),
    createHash('sha256').update(expected).digest('hex'));
});

test('tampered, reordered, truncated or extended native objects throw named errors', () => {
  const object = Buffer.from(f.file.object_b64, 'base64');
  const body = JSON.stringify(f.file.body);
  const push = (bytes) => { const d = new w.FileDecryptor(body); d.push(bytes); return d; };
  for (const at of [1, 19, 20, 30_000, 65_571, object.length - 1]) {
    const bad = Buffer.from(object);
    bad[at] ^= 0x40;
    throwsNamed(() => push(bad), 'FileTamperedError');
  }
  // Chunks 0 and 1 swapped.
  const c = (i) => object.subarray(20 + i * 65552, 20 + (i + 1) * 65552);
  const swapped = Buffer.concat([object.subarray(0, 20), c(1), c(0), object.subarray(20 + 2 * 65552)]);
  throwsNamed(() => push(swapped), 'FileTamperedError');
  // One byte short, the last chunk dropped, nothing at all: finish() says truncated.
  for (const cut of [object.length - 1, 20 + 3 * 65552, 0]) {
    const d = push(object.subarray(0, cut));
    throwsNamed(() => d.finish(), 'FileTruncatedError');
  }
  // Bytes after the end.
  throwsNamed(() => push(Buffer.concat([object, Buffer.from([0])])), 'FileTamperedError');
  // The body's hash wrong: every chunk authentic, finish() refuses.
  const wrongHash = { ...f.file.body, sha256: Buffer.alloc(32, 1).toString('base64') };
  const d = new w.FileDecryptor(JSON.stringify(wrongHash));
  d.push(object);
  throwsNamed(() => d.finish(), 'FileHashMismatchError');
  // A wrong key fails on the first chunk.
  const wrongKey = { ...f.file.body, key: Buffer.alloc(32, 2).toString('base64') };
  throwsNamed(() => new w.FileDecryptor(JSON.stringify(wrongKey)).push(object), 'FileTamperedError');
  // Bad bodies are plain errors.
  assert.throws(() => new w.FileDecryptor('{}'));
  assert.throws(() => new w.FileDecryptor(JSON.stringify({ ...f.file.body, name: 'n'.repeat(256) })));
});

test('wasm encrypts (resuming mid-chunk), wasm and native decrypt', () => {
  const size = 300_001;
  const plain = pattern(size);
  const enc = new w.FileEncryptor(size);
  assert.equal(enc.encryptedSize(), w.fileEncryptedSize(size));
  assert.equal(enc.header().length, 20);
  assert.equal(enc.header()[0], 1);
  assert.equal(enc.digest(), undefined);
  const chunk = (i) => enc.encryptChunk(i, plain.subarray(enc.chunkFileStart(i), enc.chunkFileEnd(i)));
  // First attempt: header and chunks 0..2, then "the connection drops" at a server offset
  // inside chunk 2.
  const sent = [Buffer.from(enc.header()), Buffer.from(chunk(0)), Buffer.from(chunk(1))];
  const c2 = Buffer.from(chunk(2));
  const offset = enc.chunkOffset(2) + 1000;
  sent.push(c2.subarray(0, 1000));
  assert.throws(() => enc.fileBody(randomUUID(), 'x', 'y', ''), /not encrypted in order/);
  // Resume: the chunk holding the offset, re-encrypted, continues byte for byte.
  const [index, within] = enc.chunkAt(offset);
  assert.deepStrictEqual([index, within], [2, 1000]);
  for (let i = index; i < enc.chunkCount(); i++) {
    const bytes = Buffer.from(chunk(i));
    sent.push(i === index ? bytes.subarray(within) : bytes);
  }
  assert.equal(enc.chunkAt(0), undefined);
  assert.equal(enc.chunkAt(enc.encryptedSize()), undefined);
  const object = Buffer.concat(sent);
  assert.equal(object.length, enc.encryptedSize());
  assert.equal(Buffer.from(enc.digest()).toString('hex'),
    createHash('sha256').update(plain).digest('hex'));
  const fileId = randomUUID();
  const body = enc.fileBody(fileId, 'wasm.bin', 'application/octet-stream', 'from the page');
  const parsed = JSON.parse(body);
  assert.equal(parsed.key, enc.keyBase64());
  assert.equal(parsed.size, size);
  assert.equal(parsed.file_id, fileId);
  assert.deepStrictEqual(JSON.parse(w.fileRef(body)),
    { file_id: fileId, size: enc.encryptedSize(), content_type: 'application/octet-stream' });
  assert.throws(() => enc.fileBody(fileId, 'n'.repeat(256), 'm', ''));
  assert.throws(() => enc.fileBody(fileId, 'n', 'm', 'c'.repeat(4097)));
  assert.ok(decryptPieces(body, object, [777, 65552]).equals(Buffer.from(plain)));
  // Two encryptors never share a key.
  assert.notEqual(new w.FileEncryptor(1).keyBase64(), enc.keyBase64());
  // For `wasm_fixture check`: the native core decrypts this object.
  fs.writeFileSync(`${fromWasmPath}.files.json`,
    JSON.stringify({ body: parsed, object_b64: object.toString('base64') }));
});

test('a file message goes through Machine.encrypt and decrypt as a file', () => {
  const identity = (k) => ({ ...k, one_time_keys: [], fallback_key: '' });
  const a = randomUUID();
  const b = randomUUID();
  const alice = new w.Machine(a, randomUUID());
  const bob = new w.Machine(b, randomUUID());
  const ak = JSON.parse(alice.keysToPublish(0));
  alice.markKeysPublished();
  const bk = JSON.parse(bob.keysToPublish(0));
  bob.markKeysPublished();
  for (const m of [alice, bob]) {
    m.onDeviceList(a, JSON.stringify([identity(ak)]), 1);
    m.onDeviceList(b, JSON.stringify([identity(bk)]), 1);
  }
  const conv = randomUUID();
  alice.prepare(conv, JSON.stringify([a, b]), 2);
  alice.onClaimed(JSON.stringify([{ ...identity(bk), one_time_keys: [bk.one_time_keys[0]] }]));
  const body = JSON.stringify(f.file.body);
  const enc = JSON.parse(alice.encrypt(conv, w.fileContentType(), Buffer.from(body), 3));
  const share = enc.key_shares.find((s) => s.to_device === bob.deviceId());
  bob.onKeyShare(JSON.stringify({ type: 'key_share', from_user: a, from_device: alice.deviceId(), payload: share.payload, inbox_id: 1 }), 4);
  const msg = {
    conversation: conv, seq: 1, message_id: randomUUID(), sender_user: a,
    sender_device: alice.deviceId(), client_msg_id: '0'.repeat(31) + '1', timestamp_ms: 5,
    content_type: enc.content_type, payload: enc.payload, files: [JSON.parse(w.fileRef(body))],
  };
  const dec = JSON.parse(bob.decrypt(JSON.stringify(msg)));
  assert.deepStrictEqual(dec.file, f.file.body);
  assert.equal(dec.text, null);
  assert.equal(dec.data.content_type, 'tern.file');
  assert.deepStrictEqual(JSON.parse(Buffer.from(dec.data.data, 'hex')), f.file.body);
  // The decrypted body opens the native object.
  const object = Buffer.from(f.file.object_b64, 'base64');
  assert.ok(decryptPieces(JSON.stringify(dec.file), object, [50_000]).equals(Buffer.from(pattern(f.file.body.size))));
});
