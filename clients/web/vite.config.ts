import { defineConfig } from 'vite';
import react from '@vitejs/plugin-react';
import { fileURLToPath } from 'node:url';

// The app is served by `tern serve` (same origin as the API), so no dev proxy is needed for the
// built app; `npm run dev` proxies /api to a local server for development only.
export default defineConfig({
  plugins: [react()],
  resolve: {
    // The wasm-bindgen output of clients/core-wasm (scripts/build-web.sh writes it here).
    alias: {
      '@tern/core-wasm': fileURLToPath(new URL('./wasm/tern_core_wasm.js', import.meta.url)),
      // The search index (clients/search-wasm: SQLite + FTS5), loaded only by its worker.
      '@tern/search-wasm': fileURLToPath(
        new URL('./wasm/search/tern_search_wasm.js', import.meta.url),
      ),
    },
  },
  // The search worker is an ES module (its wasm-bindgen glue finds the .wasm by import.meta.url).
  worker: { format: 'es' },
  build: {
    target: 'es2022',
    outDir: 'dist',
    assetsDir: 'assets',
    sourcemap: false,
    // Every asset is a file (never inlined as data: URLs): the CSP allows 'self' scripts only.
    assetsInlineLimit: 0,
    modulePreload: { polyfill: false },
  },
  server: {
    proxy: {
      '/api': {
        target: process.env.TERN_DEV_SERVER ?? 'https://127.0.0.1:4433',
        secure: false,
        ws: true,
      },
    },
  },
});
