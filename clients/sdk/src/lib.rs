//! Tern's Rust client SDK.
//!
//! Layers, bottom up:
//! * [`tls`]: one trust decision ([`Trust`]: pinned SHA-256, CA PEM or system roots) turned into
//!   rustls configs for HTTPS, WSS and WebTransport, always with the ring provider.
//! * [`HttpApi`]: the HTTPS JSON API (accounts, conversations, history).
//! * [`files`]: shared files: encrypted resumable uploads, verified resumable downloads.
//! * [`Transport`]: raw frames over WebTransport or WebSocket (public so tests can send
//!   malformed frames).
//! * [`Connection`]: Hello/Welcome, request/reply matching, an event queue.
//! * [`search`] (feature `search`): the local search index fed with decrypted messages, and
//!   its history backfill.
//! * [`Client`]: cursors, resume, de-duplication, gap filling, Acks, the [`Outbox`] of pending
//!   sends and reconnecting with [`Backoff`].
//!
//! The decisions (cursors, de-duplication, gaps, acks, outbox ordering and retry rules, reconnect
//! backoff, request matching, the Hello) are the sans-IO client core's ([`tern_core::protocol`]);
//! this crate is its tokio driver: sockets, TLS, files, timers.
//!
//! Everything runs on a current-thread tokio runtime (tasks are spawned with `tokio::spawn`, so
//! call from within a runtime).

pub mod backoff;
pub mod client;
pub mod config;
pub mod connection;
pub mod e2e;
pub mod error;
pub mod files;
pub mod http;
pub mod outbox;
#[cfg(feature = "search")]
pub mod search;
pub mod sync;
pub mod tls;
pub mod transport;

pub use backoff::{Backoff, BackoffPolicy};
pub use client::{Client, ClientEvent, Rejected, SkipReason};
pub use config::{Config, DEFAULT_MAX_FRAME_BYTES, TransportPref};
pub use connection::{
    Connection, ConnectionSender, EVENT_QUEUE, Event, EventStream, HistoryPage, OUTGOING_QUEUE,
    SendReceipt, Welcome,
};
pub use e2e::{CryptoNotice, E2e, FileCryptoStore, UndecryptableMessage};
pub use error::{ApiFailure, CloseReason, Error, Result};
pub use files::{FileUpload, Progress, download, file_body_of};
pub use http::{HistoryQuery, HttpApi, message_from_view};
pub use outbox::{FileStore, MemoryStore, Outbox, OutboxLimits, OutboxStore, PendingSend};
pub use sync::{Gap, SyncState};
pub use tls::{PinnedCertVerifier, Trust, certificate_sha256};
pub use transport::{FrameReader, FrameWriter, Transport, TransportKind};

// Re-exported so users need not depend on tern-wire directly for the common types.
pub use tern_core;
pub use tern_wire;
