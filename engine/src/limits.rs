//! Explicit limits on everything the engine holds for clients.

use crate::rate::BucketConfig;

/// Limits of the engine core. Every queue and map a client can grow has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineLimits {
    /// Largest message payload accepted (the frame limit bounds it too; this leaves room for
    /// the envelope around it).
    pub max_payload_bytes: usize,
    /// Sends waiting for one conversation's sequencer before new ones are refused with
    /// `RateLimited`.
    pub max_queued_sends_per_conversation: usize,
    /// Committed client message ids remembered per loaded conversation for duplicate checks
    /// without a store read. Must exceed `max_queued_sends_per_conversation` (see
    /// `Loaded::decide_head` for why).
    pub dedupe_window: usize,
    /// Content type strings longer than this are refused.
    pub max_content_type_bytes: usize,
    /// File references per message.
    pub max_files_per_message: usize,
    /// Sends per user, all devices together, counted by each engine shard for the
    /// conversations it owns (so a user spread over N shards' conversations may reach up to N
    /// times this; one conversation is always on one shard). The per-device limit in the
    /// session refuses floods before they reach the engine; this one caps a user's many devices.
    pub user_sends: BucketConfig,
    /// Sends per conversation, all members together: bounds the fan-out one conversation can
    /// demand (a big group shouting at once).
    pub conversation_sends: BucketConfig,
    /// Per-user buckets kept before full (idle) ones are forgotten.
    pub max_user_buckets: usize,
}

impl Default for EngineLimits {
    fn default() -> Self {
        EngineLimits {
            max_payload_bytes: 60 * 1024,
            max_queued_sends_per_conversation: 1024,
            dedupe_window: 4096,
            max_content_type_bytes: 128,
            max_files_per_message: 16,
            // 2,000 at once (a device's outbox flushed after a long time offline is sent at
            // the per-device rate anyway), 200 per second sustained: twice the per-device
            // sustained rate, so two busy devices of one person never meet it, and ~100 times
            // what the heaviest human typist sends.
            user_sends: BucketConfig::new(2_000, 200),
            // 1,000 messages per second sustained into one conversation: the PRD load
            // (1,000 msg/s over all conversations) fits in any single one, the fan-out
            // scenario peaks at a few hundred per group.
            conversation_sends: BucketConfig::new(4_000, 1_000),
            max_user_buckets: 100_000,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid engine limits: {0}")]
pub struct InvalidLimits(pub &'static str);

impl EngineLimits {
    pub fn validate(&self) -> Result<(), InvalidLimits> {
        if self.dedupe_window <= self.max_queued_sends_per_conversation {
            return Err(InvalidLimits(
                "dedupe_window must exceed max_queued_sends_per_conversation",
            ));
        }
        if self.max_payload_bytes == 0 || self.max_queued_sends_per_conversation == 0 {
            return Err(InvalidLimits("limits must be positive"));
        }
        if !self.user_sends.is_valid() || !self.conversation_sends.is_valid() {
            return Err(InvalidLimits("send rate limits must be positive"));
        }
        Ok(())
    }
}
