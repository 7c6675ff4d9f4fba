//! The `tern` server: TLS listeners (TCP for HTTPS and secure WebSocket, UDP for WebTransport)
//! around the engine. See ARCHITECTURE.md for the map.

pub mod config;
pub mod edge;
pub mod files;
pub mod headers;
pub mod http;
pub mod http_keys;
pub mod http_serve;
pub mod metrics;
pub mod presence;
pub mod server;
pub mod session;
pub mod shard;
pub mod tls;
#[cfg(target_os = "linux")]
pub mod uring_path;
pub mod web;
pub mod ws;
pub mod wt;
