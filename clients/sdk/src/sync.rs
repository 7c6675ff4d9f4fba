//! Delivery bookkeeping (cursors, de-duplication, gap detection): the sans-IO state machine
//! lives in the client core ([`tern_core::protocol::sync`]); re-exported here so existing
//! paths keep working.

pub use tern_core::protocol::sync::*;
