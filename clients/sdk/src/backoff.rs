//! Reconnect delays (exponential backoff with full jitter, seeded): the schedule lives in the
//! client core ([`tern_core::protocol::backoff`]); re-exported here so existing paths keep
//! working.

pub use tern_core::protocol::backoff::*;
