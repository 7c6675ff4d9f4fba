//! Where the server is, how to trust it, and the client's timeouts and limits.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::backoff::BackoffPolicy;
use crate::error::{Error, Result};
use crate::tls::{TlsConfigs, Trust};

/// Which transport to use for the real-time connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransportPref {
    /// WebTransport, falling back to WebSocket when it does not come up within
    /// [`Config::webtransport_timeout`] (UDP blocked, HTTP/3 disabled, ...).
    #[default]
    Auto,
    WebTransport,
    WebSocket,
}

impl std::str::FromStr for TransportPref {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(TransportPref::Auto),
            "wt" | "webtransport" => Ok(TransportPref::WebTransport),
            "ws" | "websocket" => Ok(TransportPref::WebSocket),
            other => Err(Error::Config(format!(
                "unknown transport {other:?} (auto, wt, ws)"
            ))),
        }
    }
}

/// The default maximum frame size (64 KiB), the protocol's default.
pub const DEFAULT_MAX_FRAME_BYTES: usize = tern_wire::Limits::DEFAULT_MAX_FRAME_BYTES;

/// Everything needed to reach one server. Cheap to clone (TLS configs are shared).
#[derive(Debug, Clone)]
pub struct Config {
    authority: String,
    trust: Trust,
    tls: Arc<TlsConfigs>,
    pub transport: TransportPref,
    /// Sent in `Hello` (shows up in the server's session list and logs).
    pub client_name: String,
    /// TCP/QUIC connect plus TLS handshake plus Hello/Welcome.
    pub connect_timeout: Duration,
    /// How long `TransportPref::Auto` waits for WebTransport before falling back.
    pub webtransport_timeout: Duration,
    /// HTTPS requests, and socket requests awaiting an answer (SendAck, HistoryPage, Pong).
    pub request_timeout: Duration,
    /// Largest frame accepted or sent; the server announces its own in `Welcome`.
    pub max_frame_bytes: usize,
    /// Ping the server this often and drop the connection when a Pong does not come back
    /// within `request_timeout`: detects silently dead paths. `None` disables it.
    pub heartbeat_interval: Option<Duration>,
    /// Local address the real-time connection originates from (WebSocket: the TCP socket is
    /// bound to it before connecting; WebTransport: the QUIC endpoint's UDP socket). `None` lets
    /// the OS choose. A load generator spreads connections over 127.0.0.0/8 with it, because one
    /// source address has only ~28k ephemeral ports. [`crate::HttpApi`] binds its TCP
    /// connections to it too (the server's login and registration limits are per address).
    pub bind_address: Option<IpAddr>,
    /// The reconnect schedule of [`crate::Client::run_until_connected`].
    pub reconnect: BackoffPolicy,
}

impl Config {
    /// `server` is `host:port` (an `https://host:port` prefix is tolerated). Builds the TLS
    /// configs now, so a bad PEM or hash fails here rather than at the first request.
    pub fn new(server: &str, trust: Trust) -> Result<Config> {
        let authority = parse_authority(server)?;
        let tls = Arc::new(TlsConfigs::new(&trust)?);
        Ok(Config {
            authority,
            trust,
            tls,
            transport: TransportPref::Auto,
            client_name: format!("tern-sdk/{}", env!("CARGO_PKG_VERSION")),
            connect_timeout: Duration::from_secs(10),
            webtransport_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(10),
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            heartbeat_interval: Some(Duration::from_secs(20)),
            bind_address: None,
            reconnect: BackoffPolicy::default(),
        })
    }

    pub fn with_transport(mut self, transport: TransportPref) -> Self {
        self.transport = transport;
        self
    }

    pub fn with_bind_address(mut self, address: Option<IpAddr>) -> Self {
        self.bind_address = address;
        self
    }

    pub fn with_client_name(mut self, name: impl Into<String>) -> Self {
        self.client_name = name.into();
        self
    }

    /// `host:port` of the server.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    pub fn trust(&self) -> &Trust {
        &self.trust
    }

    pub fn tls(&self) -> &TlsConfigs {
        &self.tls
    }

    /// `https://host:port/api/v1`
    pub fn api_base(&self) -> String {
        format!("https://{}/api/v1", self.authority)
    }

    /// `wss://host:port/api/v1/ws`. Derived from the configured address rather than taken from
    /// `TransportInfo`, which names the server's own idea of its host (possibly a bind address).
    pub fn websocket_url(&self) -> String {
        format!("wss://{}/api/v1/ws", self.authority)
    }

    /// `https://host:port/api/v1/wt`
    pub fn webtransport_url(&self) -> String {
        format!("https://{}/api/v1/wt", self.authority)
    }
}

fn parse_authority(server: &str) -> Result<String> {
    let s = server.trim();
    let s = s.strip_prefix("https://").unwrap_or(s);
    let s = s.strip_suffix('/').unwrap_or(s);
    if s.is_empty() || s.contains('/') || s.contains("://") || s.chars().any(|c| c.is_whitespace())
    {
        return Err(Error::Config(format!(
            "server must be host:port, got {server:?}"
        )));
    }
    // host:port, [v6]:port. A missing port means 443, which is never Tern's default, so require it.
    let port = s.rsplit_once(':').map(|(_, p)| p).unwrap_or("");
    if s.ends_with(']') || port.parse::<u16>().is_err() {
        return Err(Error::Config(format!(
            "server must include a port (host:port), got {server:?}"
        )));
    }
    Ok(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_forms() {
        assert_eq!(
            parse_authority("127.0.0.1:4433").expect("ip"),
            "127.0.0.1:4433"
        );
        assert_eq!(
            parse_authority("https://localhost:4433/").expect("url"),
            "localhost:4433"
        );
        assert_eq!(parse_authority("[::1]:4433").expect("v6"), "[::1]:4433");
        assert!(parse_authority("localhost").is_err());
        assert!(parse_authority("[::1]").is_err());
        assert!(parse_authority("localhost:4433/api").is_err());
        assert!(parse_authority("").is_err());
    }

    #[test]
    fn transport_pref_parse() {
        assert_eq!(
            "wt".parse::<TransportPref>().expect("wt"),
            TransportPref::WebTransport
        );
        assert_eq!(
            "WS".parse::<TransportPref>().expect("ws"),
            TransportPref::WebSocket
        );
        assert!("tcp".parse::<TransportPref>().is_err());
    }
}
