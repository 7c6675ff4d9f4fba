//! The io_uring driver for TCP connections (Linux): `tern-uring` moves the bytes (multishot
//! accept and receive into a provided-buffer ring, batched sends, buffer-driven rustls,
//! WebSocket framing); sessions and the HTTP API are the very same code as on the epoll path.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use tern_uring::{Handler, UringConfig, UringStats, WsConnection, WsEvent, WsReceiver, WsSender};
use tern_wire::msg::ErrorCode;

use crate::edge::Admission;
use crate::http_serve::HttpLimits;
use crate::metrics::{GatewayMetrics, ShardLabels, Transport};
use crate::session::{self, FrameRecv, FrameSend, Received, SessionContext, TransportClosed};

/// WebSocket endpoint path (the same route the epoll path serves through axum).
pub const WS_PATH: &str = "/api/v1/ws";
/// How often the driver's counters are copied into the Prometheus series.
const STATS_INTERVAL: Duration = Duration::from_secs(1);

/// The edge limits the driver applies: the shared connection budget, the HTTP deadlines of
/// bridged requests, and its own deadline for TLS plus the first request head.
pub struct UringEdge {
    pub admission: Arc<Admission>,
    pub http: HttpLimits,
    pub handshake_timeout: Duration,
}

/// Starts this shard's io_uring driver on the current (shard) runtime.
pub fn start(
    listener: std::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    sessions: Arc<SessionContext>,
    router: axum::Router,
    metrics: Arc<GatewayMetrics>,
    edge: UringEdge,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut config = UringConfig::new(tls, WS_PATH, sessions.limits.max_frame_bytes);
    config.handshake_timeout = edge.handshake_timeout;
    // The same security headers as every response the router writes.
    (
        config.extra_response_headers,
        config.not_for_localhost_header,
    ) = crate::headers::static_header_lines();
    let stats = config.stats.clone();
    let handler: Arc<dyn Handler> = Arc::new(Glue {
        sessions,
        router,
        admission: edge.admission,
        http: edge.http,
    });
    let shard = crate::shard::current();
    tokio::spawn(async move {
        if let Err(error) = tern_uring::serve(listener, config, handler, shutdown).await {
            tracing::error!(%error, shard, "io_uring driver stopped");
        }
    });
    tokio::spawn(export_stats(stats, metrics, shard));
}

struct Glue {
    sessions: Arc<SessionContext>,
    router: axum::Router,
    admission: Arc<Admission>,
    http: HttpLimits,
}

impl Handler for Glue {
    fn admit(&self, peer: SocketAddr) -> Option<tern_uring::Admitted> {
        let admitted = self.admission.admit(peer.ip()).ok()?;
        Some(Box::new(admitted))
    }

    fn websocket_origin_allowed(&self, origin: Option<&str>) -> bool {
        // Refused upgrades go through the router, whose WebSocket route answers the 403.
        self.sessions.origins.socket_allowed(origin)
    }

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
        tokio::spawn(crate::http_serve::serve_http(
            TokioIo::new(stream),
            peer,
            router,
            self.http.clone(),
        ));
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
            .close(
                crate::ws::close_code_for(code),
                crate::ws::close_reason(reason),
            )
            .await;
    }
}

/// Copies the driver's atomics into this shard's Prometheus series once a second.
async fn export_stats(stats: Arc<UringStats>, metrics: Arc<GatewayMetrics>, shard: usize) {
    let labels = ShardLabels {
        shard: shard as u32,
    };
    let counters: [(&AtomicU64, Counter); 4] = [
        (
            &stats.submissions,
            metrics.uring_submissions.get_or_create(&labels).clone(),
        ),
        (
            &stats.sqes,
            metrics.uring_sqes.get_or_create(&labels).clone(),
        ),
        (
            &stats.sends,
            metrics.uring_sends.get_or_create(&labels).clone(),
        ),
        (
            &stats.recv_buffer_exhausted,
            metrics
                .uring_recv_buffer_exhausted
                .get_or_create(&labels)
                .clone(),
        ),
    ];
    let held = metrics
        .uring_recv_buffers_held
        .get_or_create(&labels)
        .clone();
    let mut exported = [0u64; 4];
    let mut tls_failures = 0u64;
    let mut interval = tokio::time::interval(STATS_INTERVAL);
    loop {
        interval.tick().await;
        for ((source, counter), last) in counters.iter().zip(exported.iter_mut()) {
            let now = source.load(Ordering::Relaxed);
            counter.inc_by(now.saturating_sub(*last));
            *last = now;
        }
        held.set(stats.recv_buffers_held.load(Ordering::Relaxed) as i64);
        let failures = stats.tls_failures.load(Ordering::Relaxed)
            + stats.handshake_timeouts.load(Ordering::Relaxed);
        metrics
            .tls_handshake_failures
            .inc_by(failures.saturating_sub(tls_failures));
        tls_failures = failures;
    }
}
