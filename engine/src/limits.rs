//! Explicit limits on everything the engine holds for clients.

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
}

impl Default for EngineLimits {
    fn default() -> Self {
        EngineLimits {
            max_payload_bytes: 60 * 1024,
            max_queued_sends_per_conversation: 1024,
            dedupe_window: 4096,
            max_content_type_bytes: 128,
            max_files_per_message: 16,
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
        Ok(())
    }
}
