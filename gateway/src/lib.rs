//! The `tern` server: TLS listeners (TCP for HTTPS and secure WebSocket, UDP for WebTransport)
//! around the engine. See ARCHITECTURE.md for the map.

pub mod config;
pub mod http;
pub mod metrics;
pub mod server;
pub mod session;
pub mod shard;
pub mod tls;
pub mod ws;
pub mod wt;

// TEMPORARY until tern-uring lands.
#[allow(clippy::too_many_arguments)]
pub fn uring_path_start<A, B, C, D, E, F>(_: A, _: B, _: C, _: D, _: E, _: F) {
    unreachable!()
}
