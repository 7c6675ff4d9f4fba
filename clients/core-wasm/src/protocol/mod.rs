//! The protocol state machines of tern-core as wasm classes: `Delivery` (cursors, dedupe,
//! gaps, acks), `Outbox` (compose order and limits; the page persists the entries), `Drain`
//! (judging a send's outcome), `Reconnect` / `Backoff` (when to connect again). All sans-IO:
//! the page feeds decoded server messages and `now_ms`, and carries out what they return.

pub mod delivery;
pub mod drain;
pub mod failure;
pub mod outbox;
pub mod reconnect;
