//! The gateway's Prometheus metrics, served at `GET /metrics` with the engine's.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    WebSocket,
    WebTransport,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TransportLabels {
    pub transport: &'static str,
}

impl Transport {
    pub fn labels(self) -> TransportLabels {
        TransportLabels {
            transport: match self {
                Transport::WebSocket => "ws",
                Transport::WebTransport => "wt",
            },
        }
    }
}

#[derive(Default)]
pub struct GatewayMetrics {
    /// Open sessions (authenticated or not yet) by transport.
    pub connections: Family<TransportLabels, Gauge>,
    pub frames_in: Family<TransportLabels, Counter>,
    pub frames_out: Family<TransportLabels, Counter>,
    /// `Send` requests received.
    pub messages_in: Family<TransportLabels, Counter>,
    /// TLS handshakes that failed (including plain-text requests to the TLS port).
    pub tls_handshake_failures: Counter,
}

impl GatewayMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "tern_connections",
            "Open connections by transport",
            self.connections.clone(),
        );
        registry.register(
            "tern_frames_in",
            "Frames received by transport",
            self.frames_in.clone(),
        );
        registry.register(
            "tern_frames_out",
            "Frames sent by transport",
            self.frames_out.clone(),
        );
        registry.register(
            "tern_messages_in",
            "Send requests received by transport",
            self.messages_in.clone(),
        );
        registry.register(
            "tern_tls_handshake_failures",
            "Failed TLS handshakes on the TCP listener",
            self.tls_handshake_failures.clone(),
        );
    }
}
