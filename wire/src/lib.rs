//! Tern's wire protocol. Nothing else in the project defines bytes on the wire.
//!
//! Every frame, on every transport, is one FlatBuffers `Envelope` (schema:
//! `wire/schema/tern.fbs`, file identifier `TERN`) whose `body` union holds one client or server
//! message. WebSocket carries one envelope per binary message; the WebTransport stream carries
//! [`framing`]'s `u32 little-endian length ++ envelope` frames.
//!
//! The rest of the project works with the owned types in [`msg`] and [`ids`]; [`codec`] is the
//! only bridge to bytes. Decoding checks, in this order, size ([`Limits::max_frame_bytes`]), file
//! identifier and FlatBuffers verification (with [`Limits`] on depth, table count and apparent
//! size), direction, then meaning (enum and union values), so nothing reads unchecked bytes and no
//! input can make it panic.
//!
//! Modules:
//! - [`msg`], [`ids`]: the protocol messages as plain Rust types (with serde for JSON tooling).
//! - [`codec`]: `encode_*` / `decode_*` between those types and envelope bytes.
//! - [`framing`]: length-prefixed frames for stream transports.
//! - [`limits`]: the resource limits applied to every incoming frame.
//! - [`samples`]: one deterministic sample per message, the source of the shared test vectors
//!   in `wire/vectors/` (which clients in other languages test against).
//! - [`api`]: JSON shapes of the HTTPS API.
//!
//! The FlatBuffers code itself (`generated`, produced by `scripts/gen-wire.sh` and committed) is
//! private: its root accessors use FlatBuffers' permissive default limits, so every read goes
//! through [`codec`].

pub mod api;
pub mod codec;
pub mod error;
pub mod framing;
mod generated;
pub mod ids;
pub mod limits;
pub mod msg;
pub mod samples;
mod serde_hex;

#[cfg(test)]
mod tests;

pub use codec::{
    decode_client, decode_server, encode_client, encode_client_into, encode_server,
    encode_server_into,
};
pub use error::WireError;
pub use framing::{FrameDecoder, frame, frame_into};
pub use limits::Limits;
pub use msg::{ClientMessage, ErrorCode, Notice, PROTOCOL_VERSION, ServerMessage};

/// Re-exported so callers of [`encode_server_into`] can hold a builder without depending on the
/// `flatbuffers` crate (and its exact pinned version) themselves.
pub use flatbuffers::FlatBufferBuilder;
