//! Tern's sans-IO client core (the quinn-proto / rustls pattern): no sockets, no files, no
//! clock of its own. Drivers (the tokio SDK, the wasm bindings) feed it events and the current
//! time and carry out the actions it returns.
//!
//! * [`protocol`]: delivery bookkeeping (cursors, de-duplication, gaps), the outbox's ordering
//!   and retry rules, request matching, reconnect decisions.
//! * [`crypto`]: end-to-end encryption with Olm/Megolm (`vodozemac`): device identity, key
//!   directory use, key shares, message encryption, key backup, trust.
//! * [`files`]: the encrypted file format of shared files (chunked XChaCha20-Poly1305 STREAM,
//!   Padmé padding) and the file message body.

pub mod crypto;
pub mod files;
pub mod protocol;

pub use protocol::backoff::{Backoff, BackoffPolicy};
pub use protocol::failure::Failure;
pub use protocol::outbox::{Outbox, OutboxError, OutboxLimits, OutboxStore, PendingSend};
pub use protocol::sync::{Gap, SyncState};
