//! The engine's Prometheus metrics. The gateway registers them next to its own.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub struct EngineMetrics {
    /// Authenticated connections registered with the engine.
    pub connections: Gauge,
    /// Message deliveries queued to connections (one per recipient device).
    pub messages_delivered: Counter,
    /// Messages made durable.
    pub messages_committed: Counter,
    /// Time from handing a batch to the store until it is durable.
    pub commit_seconds: Histogram,
    /// Messages per group commit.
    pub commit_batch_messages: Histogram,
    pub slow_consumer_disconnects: Counter,
    /// Frames queued to connections and not yet written (the sessions decrement it).
    pub send_queue_frames: Gauge,
    /// Messages sequenced (and fanned out) by each engine shard.
    pub shard_messages: Family<ShardLabel, Counter>,
    /// Conversations loaded in each engine shard.
    pub shard_conversations: Family<ShardLabel, Gauge>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShardLabel {
    pub shard: u32,
}

impl EngineMetrics {
    pub fn new() -> Self {
        EngineMetrics {
            connections: Gauge::default(),
            messages_delivered: Counter::default(),
            messages_committed: Counter::default(),
            // 50 µs .. ~1.6 s
            commit_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            commit_batch_messages: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            slow_consumer_disconnects: Counter::default(),
            send_queue_frames: Gauge::default(),
            shard_messages: Family::default(),
            shard_conversations: Family::default(),
        }
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "tern_engine_connections",
            "Authenticated connections",
            self.connections.clone(),
        );
        registry.register(
            "tern_engine_deliveries",
            "Message deliveries queued to connections",
            self.messages_delivered.clone(),
        );
        registry.register(
            "tern_engine_messages_committed",
            "Messages made durable",
            self.messages_committed.clone(),
        );
        registry.register(
            "tern_storage_commit_seconds",
            "Latency of a durable group commit",
            self.commit_seconds.clone(),
        );
        registry.register(
            "tern_storage_commit_batch_messages",
            "Messages per group commit",
            self.commit_batch_messages.clone(),
        );
        registry.register(
            "tern_engine_slow_consumer_disconnects",
            "Connections closed because their send queue overflowed",
            self.slow_consumer_disconnects.clone(),
        );
        registry.register(
            "tern_send_queue_frames",
            "Frames queued to connections, not yet written",
            self.send_queue_frames.clone(),
        );
        registry.register(
            "tern_engine_shard_messages",
            "Messages sequenced by each engine shard",
            self.shard_messages.clone(),
        );
        registry.register(
            "tern_engine_shard_conversations",
            "Conversations loaded in each engine shard",
            self.shard_conversations.clone(),
        );
    }
}

impl Default for EngineMetrics {
    fn default() -> Self {
        Self::new()
    }
}
