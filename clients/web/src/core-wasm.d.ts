// The wasm-bindgen module is typed by the facade (src/core/wasm.ts, `RawModule`), so the app
// typechecks before the wasm is built; the facade is the one place that touches it.
declare module '@tern/core-wasm';
declare module '@tern/search-wasm';
