//! The SDK's error type.

use std::time::Duration;

use tern_wire::msg::ErrorCode;

/// An error answered by the HTTPS API: the HTTP status, the stable machine-readable code from the
/// `ApiError` body and, for 429, how long to wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiFailure {
    pub status: u16,
    /// The stable code (e.g. `"unauthenticated"`, `"conflict"`). When the body was not an
    /// `ApiError` (a proxy's page, a crash) this is `"http_<status>"`.
    pub code: String,
    pub message: String,
    /// Parsed from `Retry-After` (seconds form) when the server sent it.
    pub retry_after: Option<Duration>,
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {} {}: {}", self.status, self.code, self.message)?;
        if let Some(d) = self.retry_after {
            write!(f, " (retry after {}s)", d.as_secs())?;
        }
        Ok(())
    }
}

/// Why a connection ended. Carried by the final `Event::Closed` and by the errors of requests
/// that were in flight when it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The server sent a fatal `Error` (e.g. `TokenRevoked`, `SlowConsumer`) and closed.
    Fatal { code: ErrorCode, message: String },
    /// The server closed the transport cleanly without saying why.
    ClosedByServer,
    /// The transport failed (reset, timeout, TLS error).
    Transport(String),
    /// The server sent something this client cannot accept (undecodable or oversized frame).
    Protocol(String),
    /// `close()` was called locally.
    Local,
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseReason::Fatal { code, message } => {
                write!(f, "server error {}: {message}", code.as_str())
            }
            CloseReason::ClosedByServer => f.write_str("closed by the server"),
            CloseReason::Transport(e) => write!(f, "transport failed: {e}"),
            CloseReason::Protocol(e) => write!(f, "protocol violation by the server: {e}"),
            CloseReason::Local => f.write_str("closed locally"),
        }
    }
}

/// Everything the SDK can fail with.
///
/// `Display` carries the whole story (including the causes of wrapped errors), and no variant
/// reports a `source()`: printing a cause chain on top (as `anyhow`'s `{:#}` does) would repeat
/// every message. Match the variant to get at the typed inner error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A bad argument or configuration (server address, certificate hash, PEM file).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Building the TLS configuration failed.
    #[error("TLS setup failed: {0}")]
    Tls(rustls::Error),
    /// The HTTPS request did not complete (connect, TLS handshake, timeout, body).
    #[error("HTTP request failed: {}", chain(.0))]
    Http(reqwest::Error),
    /// The HTTPS API answered with an error.
    #[error("API error: {0}")]
    Api(ApiFailure),
    /// A successful HTTP answer whose body was not the expected JSON.
    #[error("unexpected API response: {0}")]
    BadResponse(String),
    /// The WebSocket connection failed. Boxed: tungstenite's error is large.
    #[error("WebSocket: {}", chain(.0.as_ref()))]
    WebSocket(Box<tokio_tungstenite::tungstenite::Error>),
    /// The WebTransport session or its stream failed.
    #[error("WebTransport: {0}")]
    WebTransport(String),
    /// A frame could not be encoded or decoded.
    #[error("wire: {0}")]
    Wire(tern_wire::WireError),
    /// The server answered a request (or the Hello) with an `Error` frame.
    #[error("server error {}: {message}", code.as_str())]
    Server {
        code: ErrorCode,
        message: String,
        fatal: bool,
        /// For `RateLimited`: how long the server asks the client to wait before retrying.
        retry_after: Option<Duration>,
    },
    /// The server sent something out of protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// No answer within the configured time.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// The connection is closed (or closed while the request was in flight).
    #[error("connection closed: {0}")]
    Closed(CloseReason),
    /// The outgoing frame is larger than the negotiated maximum.
    #[error("frame of {size} bytes exceeds the maximum of {max}")]
    FrameTooLarge { size: usize, max: usize },
    #[error("I/O: {0}")]
    Io(std::io::Error),
    /// A shared file failed to encrypt or, downloading, to verify (tampered, truncated, hash).
    #[error("file: {0}")]
    File(tern_core::files::FileError),
    /// A progress callback asked to stop the transfer.
    #[error("cancelled")]
    Cancelled,
    /// The outbox reached one of its limits: the new message was not queued (everything already
    /// queued is kept). Wait until queued messages are sent, or raise the limits.
    #[error(
        "outbox full: {pending} messages ({pending_bytes} bytes) waiting to be sent, limits are \
         {max_entries} messages and {max_bytes} bytes; a {entry_bytes}-byte message does not fit"
    )]
    OutboxFull {
        pending: usize,
        pending_bytes: usize,
        entry_bytes: usize,
        max_entries: usize,
        max_bytes: usize,
    },
    /// End-to-end encryption could not be done (state unreadable, keys missing or invalid).
    #[error("end-to-end encryption: {0}")]
    Crypto(String),
    /// The local search index failed (its messages never contain message or query text).
    #[cfg(feature = "search")]
    #[error("search index: {0}")]
    Search(tern_search::SearchError),
}

impl Error {
    /// An `Error` frame as an SDK error (`retry_after_ms` 0 means the server did not say).
    pub fn server(code: ErrorCode, message: String, fatal: bool, retry_after_ms: u32) -> Self {
        Error::Server {
            code,
            message,
            fatal,
            retry_after: (retry_after_ms > 0)
                .then(|| Duration::from_millis(u64::from(retry_after_ms))),
        }
    }

    /// How long the server asked to wait before retrying (rate limits), if it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Server { retry_after, .. } => *retry_after,
            Error::Api(f) => f.retry_after,
            _ => None,
        }
    }

    /// The API error code (HTTP errors) or the wire error code's string form (socket errors).
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api(f) => Some(f.code.as_str()),
            Error::Server { code, .. } => Some(code.as_str()),
            Error::Closed(CloseReason::Fatal { code, .. }) => Some(code.as_str()),
            _ => None,
        }
    }

    /// True when the credentials or token are no longer good: retrying will not help, logging
    /// in again will.
    pub fn is_auth(&self) -> bool {
        matches!(self.code(), Some("unauthenticated" | "token_revoked"))
    }
}

/// An error and its causes on one line, skipping causes whose text the previous one already
/// contains (reqwest and hyper repeat themselves).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = c.source();
    }
    out
}

impl From<rustls::Error> for Error {
    fn from(e: rustls::Error) -> Self {
        Error::Tls(e)
    }
}

impl From<tern_wire::WireError> for Error {
    fn from(e: tern_wire::WireError) -> Self {
        Error::Wire(e)
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e)
    }
}

impl From<reqwest::Error> for Error {
    fn from(e: reqwest::Error) -> Self {
        Error::Http(e)
    }
}

impl From<tokio_tungstenite::tungstenite::Error> for Error {
    fn from(e: tokio_tungstenite::tungstenite::Error) -> Self {
        Error::WebSocket(Box::new(e))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct E(&'static str, Option<Box<E>>);
    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for E {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1
                .as_deref()
                .map(|e| e as &(dyn std::error::Error + 'static))
        }
    }

    #[test]
    fn chain_skips_repeats() {
        let e = E(
            "sending request",
            Some(Box::new(E(
                "sending request",
                Some(Box::new(E("bad cert", None))),
            ))),
        );
        assert_eq!(chain(&e), "sending request: bad cert");
    }

    #[test]
    fn codes_and_auth() {
        let e = Error::server(ErrorCode::TokenRevoked, String::new(), true, 0);
        assert!(e.is_auth());
        assert_eq!(e.retry_after(), None);
        let e = Error::server(ErrorCode::RateLimited, String::new(), false, 250);
        assert_eq!(e.retry_after(), Some(Duration::from_millis(250)));
        let e = Error::Api(ApiFailure {
            status: 409,
            code: "conflict".into(),
            message: String::new(),
            retry_after: None,
        });
        assert_eq!(e.code(), Some("conflict"));
        assert!(!e.is_auth());
        assert!(Error::Timeout("x").code().is_none());
    }
}
