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

/// One transport's series, resolved once: `Family::get_or_create` takes a lock, these clones
/// share the family's atomics, so the per-frame path is lock-free.
#[derive(Clone)]
pub struct TransportCounters {
    pub connections: Gauge,
    pub frames_in: Counter,
    pub frames_out: Counter,
    pub messages_in: Counter,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ShardLabels {
    pub shard: u32,
}

pub struct GatewayMetrics {
    /// Open sessions (authenticated or not yet) by transport.
    pub connections: Family<TransportLabels, Gauge>,
    pub frames_in: Family<TransportLabels, Counter>,
    pub frames_out: Family<TransportLabels, Counter>,
    /// `Send` requests received.
    pub messages_in: Family<TransportLabels, Counter>,
    /// TLS handshakes that failed (including plain-text requests to the TLS port).
    pub tls_handshake_failures: Counter,
    /// Open sessions by the shard (thread) that serves them.
    pub shard_connections: Family<ShardLabels, Gauge>,
    /// io_uring driver, per shard: `io_uring_enter` calls that submitted, entries submitted,
    /// sends pushed, receives that found the buffer ring empty, buffers held right now.
    pub uring_submissions: Family<ShardLabels, Counter>,
    pub uring_sqes: Family<ShardLabels, Counter>,
    pub uring_sends: Family<ShardLabels, Counter>,
    pub uring_recv_buffer_exhausted: Family<ShardLabels, Counter>,
    pub uring_recv_buffers_held: Family<ShardLabels, Gauge>,
    /// WebTransport datagrams received and sent (typing indicators).
    pub datagrams_in: Counter,
    pub datagrams_out: Counter,
    /// Typing updates dropped (rate limit, not a member, table full).
    pub typing_dropped: Counter,
    /// Typing indicators that ended on their own (not refreshed in time).
    pub typing_expired: Counter,
    /// Presence/typing events dropped because a session's event queue was full.
    pub presence_events_dropped: Counter,
    /// QUIC connections dropped for not sending the WebTransport CONNECT in time.
    pub quic_connect_timeouts: Counter,
    /// Requests (sends and others) refused by a per-device rate limit in the session.
    pub rate_limited: Counter,
    resolved: [TransportCounters; 2],
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        let connections = Family::<TransportLabels, Gauge>::default();
        let frames_in = Family::<TransportLabels, Counter>::default();
        let frames_out = Family::<TransportLabels, Counter>::default();
        let messages_in = Family::<TransportLabels, Counter>::default();
        let resolve = |t: Transport| TransportCounters {
            connections: connections.get_or_create(&t.labels()).clone(),
            frames_in: frames_in.get_or_create(&t.labels()).clone(),
            frames_out: frames_out.get_or_create(&t.labels()).clone(),
            messages_in: messages_in.get_or_create(&t.labels()).clone(),
        };
        let resolved = [
            resolve(Transport::WebSocket),
            resolve(Transport::WebTransport),
        ];
        GatewayMetrics {
            connections,
            frames_in,
            frames_out,
            messages_in,
            tls_handshake_failures: Counter::default(),
            shard_connections: Family::default(),
            uring_submissions: Family::default(),
            uring_sqes: Family::default(),
            uring_sends: Family::default(),
            uring_recv_buffer_exhausted: Family::default(),
            uring_recv_buffers_held: Family::default(),
            datagrams_in: Counter::default(),
            datagrams_out: Counter::default(),
            typing_dropped: Counter::default(),
            typing_expired: Counter::default(),
            presence_events_dropped: Counter::default(),
            quic_connect_timeouts: Counter::default(),
            rate_limited: Counter::default(),
            resolved,
        }
    }
}

impl GatewayMetrics {
    /// The lock-free series of one transport.
    pub fn of(&self, transport: Transport) -> &TransportCounters {
        match transport {
            Transport::WebSocket => &self.resolved[0],
            Transport::WebTransport => &self.resolved[1],
        }
    }

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
            "tern_rate_limited",
            "Requests refused by a per-device rate limit",
            self.rate_limited.clone(),
        );
        registry.register(
            "tern_tls_handshake_failures",
            "Failed TLS handshakes on the TCP listener",
            self.tls_handshake_failures.clone(),
        );
        registry.register(
            "tern_shard_connections",
            "Open sessions by shard",
            self.shard_connections.clone(),
        );
        registry.register(
            "tern_uring_submissions",
            "io_uring_enter calls that submitted entries, by shard",
            self.uring_submissions.clone(),
        );
        registry.register(
            "tern_uring_sqes",
            "io_uring submission entries, by shard",
            self.uring_sqes.clone(),
        );
        registry.register(
            "tern_uring_sends",
            "io_uring send operations, by shard",
            self.uring_sends.clone(),
        );
        registry.register(
            "tern_uring_recv_buffer_exhausted",
            "Multishot receives ended because the provided-buffer ring was empty, by shard",
            self.uring_recv_buffer_exhausted.clone(),
        );
        registry.register(
            "tern_uring_recv_buffers_held",
            "Provided receive buffers taken and not yet returned, by shard",
            self.uring_recv_buffers_held.clone(),
        );
        registry.register(
            "tern_datagrams_in",
            "WebTransport datagrams received",
            self.datagrams_in.clone(),
        );
        registry.register(
            "tern_datagrams_out",
            "WebTransport datagrams sent",
            self.datagrams_out.clone(),
        );
        registry.register(
            "tern_typing_dropped",
            "Typing updates dropped (rate limit, not a member, table full)",
            self.typing_dropped.clone(),
        );
        registry.register(
            "tern_typing_expired",
            "Typing indicators that expired without a refresh",
            self.typing_expired.clone(),
        );
        registry.register(
            "tern_presence_events_dropped",
            "Presence and typing events dropped on a full session event queue",
            self.presence_events_dropped.clone(),
        );
        registry.register(
            "tern_quic_connect_timeouts",
            "QUIC connections closed for not sending the WebTransport CONNECT in time",
            self.quic_connect_timeouts.clone(),
        );
    }
}
