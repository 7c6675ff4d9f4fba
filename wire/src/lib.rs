//! Tern's wire protocol. Nothing else in the project defines bytes on the wire.
//!
//! (placeholder: the wire helper fills in schema, codec, framing, limits and vectors)

pub mod api;
pub mod ids;
pub mod msg;
