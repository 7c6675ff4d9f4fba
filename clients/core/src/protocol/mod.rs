//! Sans-IO protocol state machines: what the client decides, never how bytes move.
//!
//! Time comes in as `now_ms: u64` (any monotonic millisecond clock the driver chooses; only
//! differences matter), randomness as seeds or ids handed in by the driver, storage through the
//! small [`outbox::OutboxStore`] trait. The tokio SDK (`tern-sdk`) and the wasm bindings are
//! drivers over these types.
//!
//! * [`sync`]: per-conversation cursors, de-duplication and gap detection.
//! * [`delivery`]: the app's queue over `sync`, the ack-after-taken rule, gap fetches.
//! * [`outbox`]: pending sends in compose order, their limits, and the store trait.
//! * [`drain`]: how an outbox send outcome is judged (permanent rejection, rate limit,
//!   transient) and when the outbox may be drained again on the current connection.
//! * [`backoff`]: seeded exponential backoff with full jitter.
//! * [`reconnect`]: which connect failures are permanent, the uptime-based backoff reset and
//!   `GoingAway` retry hints.
//! * [`requests`]: request ids and pending replies with deadlines.
//! * [`handshake`]: the Hello and the version check of the Welcome.
//! * [`receipts`]: delivery marks and the "delivered" state of one's own messages.
//! * [`failure`]: the core-level view of an error that these decisions work on.

pub mod backoff;
pub mod delivery;
pub mod drain;
pub mod failure;
pub mod handshake;
pub mod outbox;
pub mod receipts;
pub mod reconnect;
pub mod requests;
pub mod sync;

#[cfg(test)]
mod sim_tests;
