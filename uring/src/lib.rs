//! io_uring data path for TCP → TLS → WebSocket, one driver per server shard.
//!
//! [`serve`] owns one io_uring instance. The ring's completions are signalled through an eventfd
//! registered with the ring and polled by the shard's tokio runtime (`AsyncFd`), so the shard
//! thread never blocks inside `io_uring_enter`. One multishot accept feeds connections; every
//! connection has one multishot receive drawing from a shared provided-buffer ring, so an idle
//! connection holds no receive buffer. rustls runs buffer-driven (no socket inside), WebSocket
//! frames are parsed and written with tungstenite's frame layer, and everything the sessions
//! queued during one driver turn goes out as one `Send` per connection and a single submit.
//!
//! See `driver.rs` for the event loop, `session.rs` for the halves handed to sessions.

mod bufring;
mod driver;
mod session;
/// Public for the fuzz target (`fuzz/fuzz_targets/uring_ws_frames.rs`): message assembly is
/// pure, so it is fuzzed without a ring or TLS.
pub mod ws;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use session::{ConnectionClosed, WsConnection, WsReceiver, WsSender};

/// What the driver reports to the session reading a WebSocket connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsEvent {
    /// One complete binary message (reassembled if it was fragmented).
    Frame(Vec<u8>),
    /// A binary message above `frame_limit` (its payload is dropped), or one beyond
    /// `max_message_bytes` (then the connection can not be read any further).
    TooLarge { size: usize },
    /// A text message or a protocol violation.
    Malformed(String),
    /// The peer closed, the connection failed, or the driver stopped.
    Closed,
}

/// Settings of one driver.
#[derive(Clone)]
pub struct UringConfig {
    pub tls: Arc<rustls::ServerConfig>,
    /// Path of the WebSocket endpoint, e.g. `/api/v1/ws`.
    pub ws_path: String,
    /// Binary messages above this are reported as [`WsEvent::TooLarge`].
    pub frame_limit: usize,
    /// Hard limit on one message (`2 * frame_limit` by default); beyond it the connection's
    /// reading stops after reporting [`WsEvent::TooLarge`].
    pub max_message_bytes: usize,
    /// Time from accept to a complete TLS handshake and HTTP request head.
    pub handshake_timeout: Duration,
    /// Connections open at once on this driver; more are closed right after accept.
    pub max_connections: usize,
    /// Submission queue entries (the completion queue gets four times as many).
    pub ring_entries: u32,
    /// Provided receive buffers of the shard (rounded down to a power of two, at most 32768).
    pub recv_buffers: u16,
    /// Size of one provided receive buffer.
    pub recv_buffer_bytes: usize,
    /// Largest HTTP/1.1 request head accepted (431 beyond).
    pub max_head_bytes: usize,
    /// Events queued per connection towards its session; when full the driver stops reading
    /// that socket until the session has drained half of it.
    pub inbound_queue: usize,
    /// Bytes a session may have queued and not yet written to its socket before `send` waits.
    pub outbound_budget: usize,
    /// How long a close (close frame + close_notify + FIN) may take before the socket is cut.
    pub close_timeout: Duration,
    /// After shutdown, how long the driver keeps serving connections still open before it cuts
    /// them and returns.
    pub shutdown_grace: Duration,
    /// Counters of this driver, readable from any thread.
    pub stats: Arc<UringStats>,
    /// Header lines (`Name: value\r\n` each) added to the responses the driver writes itself
    /// (the 101 of a WebSocket upgrade, 400 and 431), e.g. the server's security headers.
    pub extra_response_headers: String,
    /// A header line added like `extra_response_headers`, except to an upgrade whose `Host`
    /// is `localhost` (meant for Strict-Transport-Security, which binds a host name on every
    /// port).
    pub not_for_localhost_header: String,
}

impl UringConfig {
    pub fn new(
        tls: Arc<rustls::ServerConfig>,
        ws_path: impl Into<String>,
        frame_limit: usize,
    ) -> Self {
        Self {
            tls,
            ws_path: ws_path.into(),
            frame_limit,
            max_message_bytes: frame_limit.saturating_mul(2),
            handshake_timeout: Duration::from_secs(10),
            max_connections: 100_000,
            ring_entries: 4096,
            recv_buffers: 1024,
            recv_buffer_bytes: 4096,
            max_head_bytes: 16 * 1024,
            inbound_queue: 64,
            outbound_budget: 256 * 1024,
            close_timeout: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(30),
            stats: Arc::new(UringStats::default()),
            extra_response_headers: String::new(),
            not_for_localhost_header: String::new(),
        }
    }
}

/// Counters of one driver (monotonic unless marked as a gauge).
#[derive(Debug, Default)]
pub struct UringStats {
    /// Gauge: connections currently open.
    pub connections_open: AtomicU64,
    pub accepted: AtomicU64,
    /// Accepted beyond `max_connections` and closed at once.
    pub refused: AtomicU64,
    pub handshake_timeouts: AtomicU64,
    pub tls_failures: AtomicU64,
    pub websocket_upgrades: AtomicU64,
    pub http_bridged: AtomicU64,
    /// `io_uring_enter` calls that submitted entries.
    pub submissions: AtomicU64,
    pub sqes: AtomicU64,
    pub cqes: AtomicU64,
    /// `Send` entries pushed (one per connection per driver turn at most).
    pub sends: AtomicU64,
    /// Multishot receives that ended because the provided-buffer ring was empty (ENOBUFS).
    pub recv_buffer_exhausted: AtomicU64,
    /// Gauge: provided buffers taken out of the ring and not yet given back.
    pub recv_buffers_held: AtomicU64,
    /// Times a connection's reading was paused because its session did not keep up.
    pub read_pauses: AtomicU64,
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
}

impl UringStats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Why io_uring can not be used here.
#[derive(Debug, thiserror::Error)]
#[error("io_uring unavailable: {0}")]
pub struct UringUnavailable(pub String);

/// Whether this kernel lets us set up the ring with what we need (multishot accept and
/// receive, send, cancel, a provided-buffer ring and an eventfd). `Err` explains why not.
pub fn probe() -> Result<(), UringUnavailable> {
    driver::probe().map_err(UringUnavailable)
}

/// A connection's place in a budget the handler keeps; dropped when the connection is freed.
pub type Admitted = Box<dyn Send>;

/// What the driver hands finished upgrades to.
pub trait Handler: Send + Sync + 'static {
    /// Asked for every accepted connection before anything is read from it: `None` closes it at
    /// once (counted in [`UringStats::refused`]); `Some` is held until the connection is freed.
    fn admit(&self, _peer: SocketAddr) -> Option<Admitted> {
        Some(Box::new(()))
    }

    /// Whether a WebSocket upgrade with this `Origin` header (`None`: absent) may be upgraded
    /// here; when not, the request is handed to [`Handler::http`] like any other, which
    /// answers it (e.g. 403).
    fn websocket_origin_allowed(&self, _origin: Option<&str>) -> bool {
        true
    }

    /// A WebSocket upgrade completed; spawn the session (tokio::spawn on the current runtime).
    fn websocket(&self, peer: SocketAddr, connection: WsConnection);
    /// Anything else: serve HTTP over this plaintext stream (the request head already read is
    /// replayed into it).
    fn http(&self, peer: SocketAddr, stream: tokio::io::DuplexStream);
}

/// Runs the driver until `shutdown` flips to true, then stops accepting, keeps serving the
/// connections still open until their owners close them (at most `shutdown_grace`), and
/// returns. The listener must be bound and listening. The future is `Send`.
pub async fn serve(
    listener: std::net::TcpListener,
    config: UringConfig,
    handler: Arc<dyn Handler>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    driver::Driver::new(listener, config, handler)?
        .run(shutdown)
        .await
}
