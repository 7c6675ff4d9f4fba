// The page's build (`build.sh`, wasm-bindgen --target web) under Node: the ES module loads
// with `initSync`, exposes the facade and round-trips a frame. Run by ../test.sh.
import { test } from 'node:test';
import assert from 'node:assert';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const dir = process.env.TERN_WASM_WEB;
assert.ok(dir, 'TERN_WASM_WEB must be set (use test.sh)');

test('the --target web module loads and works', async () => {
  const mod = await import(pathToFileURL(path.resolve(dir, 'tern_core_wasm.js')).href);
  assert.equal(typeof mod.default, 'function', 'default export: async init');
  mod.initSync({ module: readFileSync(path.resolve(dir, 'tern_core_wasm_bg.wasm')) });
  for (const name of ['encodeClient', 'decodeServer', 'hello', 'checkWelcome', 'replyKey',
    'lengthPrefixed', 'FrameDecoder', 'Machine', 'Delivery', 'Outbox', 'Drain', 'Reconnect', 'Backoff',
    'isPermanentConnectFailure', 'SendPlan', 'shareBatches', 'WaitingForKeys', 'InboxAcks']) {
    assert.ok(name in mod, `exports ${name}`);
  }
  const frame = mod.encodeClient(JSON.stringify({ type: 'ping', nonce: 5 }), 65536);
  assert.ok(frame instanceof Uint8Array && frame.length > 8);
  assert.throws(() => mod.decodeServer(frame), /undecodable server frame/);
  const types = readFileSync(path.resolve(dir, 'tern_core_wasm.d.ts'), 'utf8');
  assert.match(types, /export function encodeClient\(json: string, max_frame_bytes: number\): Uint8Array;/);
});
