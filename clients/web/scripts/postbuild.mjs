// After `vite build`: writes a .gz sibling of every compressible file in dist/ (the server
// sends it to clients that accept gzip), prints the transfer sizes and fails when the app's
// JavaScript or WebAssembly (gzip) exceeds its budget.
import { readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { gzipSync, constants } from 'node:zlib';

const dist = new URL('../dist/', import.meta.url).pathname;
// Budgets (gzip bytes): React + the app's code, and the wasm core (vodozemac, FlatBuffers,
// tern-core with its protocol classes: 435 KB gzip on Dec 1) with ~20-25% headroom; raise them only on
// purpose (CI fails above them). `search` is the search index's worker and its wasm (SQLite with
// FTS5 and page encryption, clients/search-wasm: 672 KB gzip on Dec 2): fetched only by that
// worker, after sign-in and after the app is interactive, so it has its own line and never counts
// against the page's.
const BUDGET = {
  js: Number(process.env.TERN_WEB_JS_BUDGET ?? 120 * 1024),
  wasm: Number(process.env.TERN_WEB_WASM_BUDGET ?? 544 * 1024),
  css: 16 * 1024,
  search: Number(process.env.TERN_WEB_SEARCH_BUDGET ?? 800 * 1024),
};
/** The search worker's files (Vite names assets after their source: search-worker.ts and the
 * wasm-bindgen module tern_search_wasm_bg.wasm). */
const SEARCH_ASSET = /^assets\/(search-worker|tern_search_wasm(_bg)?)-[^/]+\.(js|wasm)$/;
const COMPRESSIBLE = /\.(js|css|html|wasm|svg|json|webmanifest)$/;

function walk(dir) {
  return readdirSync(dir).flatMap((name) => {
    const p = join(dir, name);
    return statSync(p).isDirectory() ? walk(p) : [p];
  });
}

// The service worker precaches these (hashed assets: the page, its scripts, styles and wasm),
// so a reload while offline opens the app.
const shell = walk(join(dist, 'assets'))
  .filter((f) => !f.endsWith('.gz'))
  .map((f) => '/' + relative(dist, f));
writeFileSync(join(dist, 'shell-manifest.json'), JSON.stringify({ files: shell }));

const totals = { js: 0, wasm: 0, css: 0, search: 0, other: 0 };
const rows = [];
for (const file of walk(dist)) {
  if (file.endsWith('.gz') || !COMPRESSIBLE.test(file)) continue;
  const raw = readFileSync(file);
  const gz = gzipSync(raw, { level: constants.Z_BEST_COMPRESSION });
  writeFileSync(file + '.gz', gz);
  const kind = SEARCH_ASSET.test(relative(dist, file))
    ? 'search'
    : file.endsWith('.js')
      ? 'js'
      : file.endsWith('.wasm')
        ? 'wasm'
        : file.endsWith('.css')
          ? 'css'
          : 'other';
  totals[kind] += gz.length;
  rows.push([relative(dist, file), raw.length, gz.length]);
}
rows.sort((a, b) => b[2] - a[2]);
console.log('file'.padEnd(48), 'bytes'.padStart(10), 'gzip'.padStart(10));
for (const [name, raw, gz] of rows)
  console.log(name.padEnd(48), String(raw).padStart(10), String(gz).padStart(10));
let failed = false;
if (totals.search === 0) {
  console.log(
    'no search worker assets found (expected search-worker-*.js, tern_search_wasm_bg-*.wasm)',
  );
  failed = true;
}
for (const kind of ['js', 'wasm', 'css', 'search']) {
  const ok = totals[kind] <= BUDGET[kind];
  console.log(
    `${kind} gzip total ${totals[kind]} B, budget ${BUDGET[kind]} B: ${ok ? 'ok' : 'OVER BUDGET'}`,
  );
  failed ||= !ok;
}
if (failed) process.exit(1);
