//! Per-device rate limits and the storage quota check, decided in the session before anything
//! reaches the engine's queues: refusing a flood here is what keeps its neighbours' latency
//! (the engine shard, the store, the fan-out) untouched.
//!
//! A refusal answers `RateLimited` with the time after which the request would be accepted,
//! and the session then stops reading the device's frames for that long (at most
//! [`MAX_READ_PAUSE`]): a client that ignores the hint is slowed by TCP/QUIC flow control
//! instead of costing the server one refusal per frame. It is not disconnected.

use std::time::{Duration, Instant};

use tern_engine::rate::{BucketConfig, RetryAfter, TokenBucket};

/// The limits, shared by every session (from the configuration).
#[derive(Debug, Clone, Copy)]
pub struct DeviceLimits {
    /// Messages sent by one connection.
    pub sends: BucketConfig,
    /// Payload bytes sent by one connection.
    pub send_bytes: BucketConfig,
    /// Every other request (history, create, invite, react, resume, ping, presence).
    pub requests: BucketConfig,
    /// Payload bytes a user may have stored, all conversations together.
    pub storage_quota_bytes: u64,
}

/// Longest the session stops reading after a refusal (a hint longer than this is still sent).
pub const MAX_READ_PAUSE: Duration = Duration::from_secs(1);

/// How many bytes a session may send on its own estimate before it reads the user's stored
/// bytes again. Other devices of the user send too, so the quota is soft by at most this much
/// per device sending concurrently (1 MiB against a quota of GiBs); a send that the estimate
/// says would cross the quota always re-reads first.
const QUOTA_REFRESH_BYTES: u64 = 1024 * 1024;

/// One connection's buckets, its view of the user's stored bytes, and its read pause.
pub struct DeviceRate {
    started: Instant,
    sends: TokenBucket,
    send_bytes: TokenBucket,
    requests: TokenBucket,
    quota: u64,
    /// Stored bytes as last read plus what this session sent since; `None` before the first read.
    stored_estimate: Option<u64>,
    sent_since_read: u64,
    /// The session reads no frame before this instant.
    pub paused_until: Option<Instant>,
}

/// What the quota check needs before it can decide.
pub enum QuotaCheck {
    Fits,
    /// Read the user's stored bytes from the store, then call [`DeviceRate::quota_read`].
    NeedsRead,
    /// Over the quota: `stored` bytes already, the quota is `quota`.
    Exceeded {
        stored: u64,
        quota: u64,
    },
}

impl DeviceRate {
    pub fn new(limits: &DeviceLimits) -> Self {
        DeviceRate {
            started: Instant::now(),
            sends: TokenBucket::new(limits.sends, 0),
            send_bytes: TokenBucket::new(limits.send_bytes, 0),
            requests: TokenBucket::new(limits.requests, 0),
            quota: limits.storage_quota_bytes,
            stored_estimate: None,
            sent_since_read: 0,
            paused_until: None,
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// One message of `bytes` payload bytes, against both send buckets.
    pub fn take_send(&mut self, bytes: u64) -> Result<(), RetryAfter> {
        let now = self.now_ms();
        self.sends.try_take(now, 1)?;
        if let Err(retry) = self.send_bytes.try_take(now, bytes) {
            self.sends.refund(1);
            return Err(retry);
        }
        Ok(())
    }

    /// Gives back a send's tokens (refused for another reason, e.g. the quota).
    pub fn refund_send(&mut self, bytes: u64) {
        self.sends.refund(1);
        self.send_bytes.refund(bytes);
    }

    pub fn take_request(&mut self) -> Result<(), RetryAfter> {
        let now = self.now_ms();
        self.requests.try_take(now, 1)
    }

    /// After a refusal: read nothing more until the bucket has what was missing.
    pub fn pause_reads(&mut self, retry: RetryAfter) {
        let pause = Duration::from_millis(u64::from(retry.ms)).min(MAX_READ_PAUSE);
        self.paused_until = Some(Instant::now() + pause);
    }

    pub fn check_quota(&mut self, bytes: u64) -> QuotaCheck {
        let Some(stored) = self.stored_estimate else {
            return QuotaCheck::NeedsRead;
        };
        let crosses = stored.saturating_add(bytes) > self.quota;
        if self.sent_since_read >= QUOTA_REFRESH_BYTES || (crosses && self.sent_since_read > 0) {
            return QuotaCheck::NeedsRead;
        }
        if crosses {
            return QuotaCheck::Exceeded {
                stored,
                quota: self.quota,
            };
        }
        self.stored_estimate = Some(stored + bytes);
        self.sent_since_read += bytes;
        QuotaCheck::Fits
    }

    /// The stored bytes just read; the next `check_quota` decides with it.
    pub fn quota_read(&mut self, stored: u64) {
        self.stored_estimate = Some(stored);
        self.sent_since_read = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(quota: u64) -> DeviceLimits {
        DeviceLimits {
            sends: BucketConfig::new(2, 1),
            send_bytes: BucketConfig::new(1000, 1000),
            requests: BucketConfig::new(1, 1),
            storage_quota_bytes: quota,
        }
    }

    #[test]
    fn sends_are_limited_by_count_and_bytes() {
        let mut rate = DeviceRate::new(&limits(u64::MAX));
        assert!(rate.take_send(600).is_ok());
        // The count allows a second, the bytes do not: nothing is taken.
        assert!(rate.take_send(600).is_err());
        assert!(rate.take_send(100).is_ok());
        assert!(rate.take_send(1).is_err(), "two per burst");
        assert!(rate.take_request().is_ok());
        assert!(rate.take_request().is_err());
    }

    #[test]
    fn the_quota_rereads_before_refusing_and_refuses_over_it() {
        let mut rate = DeviceRate::new(&limits(1000));
        assert!(matches!(rate.check_quota(400), QuotaCheck::NeedsRead));
        rate.quota_read(0);
        assert!(matches!(rate.check_quota(400), QuotaCheck::Fits));
        assert!(matches!(rate.check_quota(400), QuotaCheck::Fits));
        // The estimate says 800 + 400 > 1000: read again first (another device may not have
        // sent; a refused send may not have been stored).
        assert!(matches!(rate.check_quota(400), QuotaCheck::NeedsRead));
        rate.quota_read(800);
        assert!(matches!(
            rate.check_quota(400),
            QuotaCheck::Exceeded {
                stored: 800,
                quota: 1000
            }
        ));
        assert!(matches!(rate.check_quota(200), QuotaCheck::Fits));
    }
}
