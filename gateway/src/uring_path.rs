//! The io_uring driver for TCP connections (Linux): `tern-uring` moves the bytes (multishot
//! accept and receive into a provided-buffer ring, batched sends, buffer-driven rustls,
//! WebSocket framing); sessions and the HTTP API are the very same code as on the epoll path.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use tern_uring::{Handler, UringConfig, WsConnection, WsEvent, WsReceiver, WsSender};
use tern_wire::msg::ErrorCode;

use crate::metrics::Transport;
use crate::session::{self, FrameRecv, FrameSend, Received, SessionContext, TransportClosed};

/// WebSocket endpoint path (the same route the epoll path serves through axum).
pub const WS_PATH: &str = "/api/v1/ws";

/// Starts this shard's io_uring driver on the current (shard) runtime.
pub fn start(
    listener: std::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    sessions: Arc<SessionContext>,
    router: axum::Router,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let config = UringConfig::new(tls, WS_PATH, sessions.limits.max_frame_bytes);
    let handler: Arc<dyn Handler> = Arc::new(Glue { sessions, router });
    tokio::task::spawn_local(async move {
        if let Err(error) = tern_uring::serve(listener, config, handler, shutdown).await {
            tracing::error!(%error, shard = crate::shard::current(), "io_uring driver stopped");
        }
    });
}

struct Glue {
    sessions: Arc<SessionContext>,
    router: axum::Router,
}

impl Handler for Glue {
    fn websocket(&self, _peer: SocketAddr, connection: WsConnection) {
        let ctx = self.sessions.clone();
        tokio::spawn(session::run(
            ctx,
            Transport::WebSocket,
            UringRecv(connection.receiver),
            UringSend(connection.sender),
        ));
    }

    fn http(&self, peer: SocketAddr, stream: tokio::io::DuplexStream) {
        let router = self.router.clone();
        tokio::spawn(crate::server::serve_http(TokioIo::new(stream), peer, router));
    }
}

struct UringRecv(WsReceiver);

impl FrameRecv for UringRecv {
    async fn recv(&mut self) -> Received {
        match self.0.recv().await {
            WsEvent::Frame(bytes) => Received::Frame(bytes),
            WsEvent::TooLarge { size } => Received::TooLarge { size },
            WsEvent::Malformed(why) => Received::Malformed(why),
            WsEvent::Closed => Received::Closed,
        }
    }
}

struct UringSend(WsSender);

impl FrameSend for UringSend {
    async fn send(&mut self, frame: &[u8]) -> Result<(), TransportClosed> {
        self.0.send(frame).await.map_err(|_| TransportClosed)
    }

    async fn close(&mut self, code: ErrorCode, reason: &str) {
        self.0
            .close(crate::ws::close_code_for(code), crate::ws::close_reason(reason))
            .await;
    }
}
