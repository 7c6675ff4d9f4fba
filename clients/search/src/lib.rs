//! The client's local search index (issue 14, part 1).
//!
//! Messages are end-to-end encrypted, so the server cannot index them: every client indexes what
//! it decrypted. This crate is that index: SQLite FTS5 inside a SQLCipher database (encrypted at
//! rest with a 32-byte key the client holds), with Unicode-aware tokenising (accents folded, CJK
//! split into characters queried as phrases, emoji ignored), filters by conversation, sender and
//! date, bm25 ranking, snippets with highlighted parts, and a sans-IO planner that backfills older
//! history page by page with a checkpoint stored in the same database.
//!
//! The same code builds for `wasm32-unknown-unknown`, where rusqlite runs over `sqlite-wasm-rs`
//! (SQLCipher with libtomcrypt): the web worker opens a [`rusqlite::Connection`] on its OPFS VFS
//! and hands it to [`SearchIndex::from_connection`]. Nothing here touches files, threads or
//! clocks except [`SearchIndex::open`] and [`delete_index_files`], which are native only.

pub mod backfill;
mod error;
mod index;
mod query;
mod schema;
mod snippet;
mod text;
mod types;

pub use backfill::{
    Backfill, BackfillConfig, BackfillError, Checkpoint, FetchedPage, PageRequest, SeqRange,
    StorePage,
};
pub use error::SearchError;
#[cfg(not(target_arch = "wasm32"))]
pub use index::delete_index_files;
pub use index::{MAX_RANKED_MATCHES, SearchIndex};
pub use types::{IndexedMessage, SearchHit, SearchQuery, SnippetPart};

/// The most hits one search returns (a results list, not an export).
pub const MAX_SEARCH_LIMIT: u32 = 200;
/// The longest query text, in characters (a search box, not a document).
pub const MAX_QUERY_CHARS: usize = 256;
/// The most words one query may have after tokenising: each is a phrase the index intersects.
pub const MAX_QUERY_WORDS: usize = 16;
/// The most messages one [`SearchIndex::add`] call takes (one transaction; a backfill page is
/// at most 1,000 by the server's history limit).
pub const MAX_ADD_BATCH: usize = 10_000;
/// Only the first this many bytes of a message's text are indexed and kept for snippets (the
/// server's frame limit is 64 KiB, so a real message is never cut).
pub const MAX_INDEXED_TEXT_BYTES: usize = 64 * 1024;
