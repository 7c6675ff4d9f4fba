//! wasm-bindgen facade over tern-search for the web client's search worker
//! (clients/web/src/core/search/search-worker.ts): the same index code as the native clients
//! (rusqlite over SQLite with FTS5, encrypted at rest), compiled to wasm32-unknown-unknown,
//! its files in the Origin Private File System through SQLite's sync-access-handle pool VFS.
//!
//! Conventions (those of tern-core-wasm): structured values are JSON strings in tern-search's
//! serde shapes (ids are UUID strings, times ms numbers), the key is a `Uint8Array`, every
//! failure is a thrown `Error` whose message never contains message text.
//!
//! Modules: [`index`] (`SearchIndex`: add, search, remove a conversation, backfill bookkeeping),
//! `opfs` (wasm32 only: `installOpfs`, `removeDatabase`, `wipeOpfs`), [`js`] (the boundary).

pub mod index;
pub mod js;
#[cfg(all(target_family = "wasm", target_os = "unknown"))]
pub mod opfs;

pub use index::SearchIndex;
