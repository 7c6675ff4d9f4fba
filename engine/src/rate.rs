//! Token buckets: the sans-IO rate limit behind every per-device, per-user and per-conversation
//! send limit and the per-device request limit.
//!
//! A bucket holds up to `capacity` tokens and gains `refill_per_sec` of them every second; a
//! request costs some tokens (1 per message, or its bytes) and is refused when the bucket holds
//! fewer, with the time until it would hold enough. Time is an input (`now_ms`, any monotonic
//! millisecond clock), so the logic is deterministic and tested without sleeping.

use std::collections::HashMap;
use std::hash::Hash;

/// The shape of a bucket: how much may be spent at once, and how fast it comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketConfig {
    /// Largest burst (tokens held when full).
    pub capacity: u64,
    /// Tokens added per second (the sustained rate).
    pub refill_per_sec: u64,
}

impl BucketConfig {
    pub const fn new(capacity: u64, refill_per_sec: u64) -> Self {
        BucketConfig {
            capacity,
            refill_per_sec,
        }
    }

    /// Both numbers must be positive: a zero would refuse everything forever.
    pub fn is_valid(&self) -> bool {
        self.capacity > 0 && self.refill_per_sec > 0
    }
}

/// How long to wait before the refused request would be accepted (at least 1 ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter {
    pub ms: u32,
}

#[derive(Debug, Clone)]
pub struct TokenBucket {
    config: BucketConfig,
    /// Tokens in thousandths, so that refills of less than one token per millisecond add up.
    milli_tokens: u64,
    last_ms: u64,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(config: BucketConfig, now_ms: u64) -> Self {
        TokenBucket {
            config,
            milli_tokens: config.capacity.saturating_mul(1000),
            last_ms: now_ms,
        }
    }

    fn refill(&mut self, now_ms: u64) {
        // A clock that steps back refills nothing (and does not move `last_ms` back).
        let elapsed = now_ms.saturating_sub(self.last_ms);
        self.last_ms = self.last_ms.max(now_ms);
        let cap = self.config.capacity.saturating_mul(1000);
        // refill_per_sec tokens per 1000 ms = refill_per_sec milli-tokens per ms.
        let gained = elapsed.saturating_mul(self.config.refill_per_sec);
        self.milli_tokens = self.milli_tokens.saturating_add(gained).min(cap);
    }

    /// Takes `cost` tokens, or says how long until they are there. A cost above the capacity
    /// is charged as the whole capacity, so an oversized request is slow, never impossible.
    pub fn try_take(&mut self, now_ms: u64, cost: u64) -> Result<(), RetryAfter> {
        self.refill(now_ms);
        let need = cost.min(self.config.capacity).saturating_mul(1000);
        if self.milli_tokens >= need {
            self.milli_tokens -= need;
            return Ok(());
        }
        let missing = need - self.milli_tokens;
        // missing milli-tokens at refill_per_sec milli-tokens per ms, rounded up.
        let ms = missing.div_ceil(self.config.refill_per_sec.max(1)).max(1);
        Err(RetryAfter {
            ms: u32::try_from(ms).unwrap_or(u32::MAX),
        })
    }

    /// Gives back tokens taken for a request that was then refused for another reason.
    pub fn refund(&mut self, cost: u64) {
        let cap = self.config.capacity.saturating_mul(1000);
        self.milli_tokens = self
            .milli_tokens
            .saturating_add(cost.saturating_mul(1000))
            .min(cap);
    }

    /// A full bucket carries no information: it can be forgotten and recreated full.
    pub fn is_full(&self, now_ms: u64) -> bool {
        let elapsed = now_ms.saturating_sub(self.last_ms);
        let gained = elapsed.saturating_mul(self.config.refill_per_sec);
        self.milli_tokens.saturating_add(gained) >= self.config.capacity.saturating_mul(1000)
    }
}

/// One bucket per key (user, conversation), bounded: when the map reaches `max_keys`, buckets
/// that have refilled completely are dropped (they are indistinguishable from new ones). If
/// every bucket is still draining the map grows past the bound rather than forgive anyone:
/// entries exist only for keys that sent recently, and each is a few dozen bytes.
#[derive(Debug)]
pub struct BucketMap<K> {
    config: BucketConfig,
    max_keys: usize,
    buckets: HashMap<K, TokenBucket>,
}

impl<K: Hash + Eq + Copy> BucketMap<K> {
    pub fn new(config: BucketConfig, max_keys: usize) -> Self {
        BucketMap {
            config,
            max_keys: max_keys.max(1),
            buckets: HashMap::new(),
        }
    }

    pub fn try_take(&mut self, key: K, now_ms: u64, cost: u64) -> Result<(), RetryAfter> {
        if !self.buckets.contains_key(&key) && self.buckets.len() >= self.max_keys {
            self.buckets.retain(|_, b| !b.is_full(now_ms));
        }
        let config = self.config;
        self.buckets
            .entry(key)
            .or_insert_with(|| TokenBucket::new(config, now_ms))
            .try_take(now_ms, cost)
    }

    pub fn refund(&mut self, key: K, cost: u64) {
        if let Some(b) = self.buckets.get_mut(&key) {
            b.refund(cost);
        }
    }

    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refusal_with_retry_after_then_refill() {
        let mut b = TokenBucket::new(BucketConfig::new(3, 10), 1_000);
        for _ in 0..3 {
            assert_eq!(b.try_take(1_000, 1), Ok(()));
        }
        // 10 per second: one token every 100 ms.
        assert_eq!(b.try_take(1_000, 1), Err(RetryAfter { ms: 100 }));
        assert_eq!(b.try_take(1_040, 1), Err(RetryAfter { ms: 60 }));
        assert_eq!(b.try_take(1_100, 1), Ok(()));
        assert_eq!(b.try_take(1_100, 1), Err(RetryAfter { ms: 100 }));
        // Never more than the capacity, however long it rests.
        assert!(b.is_full(100_000));
        for _ in 0..3 {
            assert_eq!(b.try_take(100_000, 1), Ok(()));
        }
        assert!(b.try_take(100_000, 1).is_err());
    }

    #[test]
    fn costs_in_bytes_and_oversized_costs() {
        let mut b = TokenBucket::new(BucketConfig::new(1_000, 500), 0);
        assert_eq!(b.try_take(0, 600), Ok(()));
        // 200 missing at 500/s = 400 ms.
        assert_eq!(b.try_take(0, 600), Err(RetryAfter { ms: 400 }));
        assert_eq!(b.try_take(400, 600), Ok(()));
        // A cost above the capacity waits for a full bucket instead of waiting forever.
        assert_eq!(b.try_take(400, 5_000), Err(RetryAfter { ms: 2_000 }));
        assert_eq!(b.try_take(2_400, 5_000), Ok(()));
    }

    #[test]
    fn slow_refills_accumulate_and_clocks_may_step_back() {
        // One token per second, sampled every 10 ms: the fractions must add up.
        let mut b = TokenBucket::new(BucketConfig::new(1, 1), 0);
        assert_eq!(b.try_take(0, 1), Ok(()));
        let mut t = 0;
        while b.try_take(t, 1).is_err() {
            t += 10;
        }
        assert_eq!(t, 1_000);
        // A clock stepping back refills nothing and does not panic.
        assert!(b.try_take(500, 1).is_err());
        assert!(b.try_take(1_999, 1).is_err());
        assert_eq!(b.try_take(2_000, 1), Ok(()));
    }

    #[test]
    fn refund_gives_back_up_to_capacity() {
        let mut b = TokenBucket::new(BucketConfig::new(2, 1), 0);
        assert_eq!(b.try_take(0, 2), Ok(()));
        b.refund(1);
        assert_eq!(b.try_take(0, 1), Ok(()));
        b.refund(100);
        assert!(b.is_full(0));
    }

    #[test]
    fn bucket_map_is_per_key_and_forgets_full_buckets() {
        let mut m = BucketMap::new(BucketConfig::new(1, 1), 2);
        assert_eq!(m.try_take(1u32, 0, 1), Ok(()));
        assert!(m.try_take(1, 0, 1).is_err());
        assert_eq!(
            m.try_take(2, 0, 1),
            Ok(()),
            "another key has its own bucket"
        );
        // Both draining: a third key grows the map rather than forgive anyone.
        assert_eq!(m.try_take(3, 0, 1), Ok(()));
        assert_eq!(m.len(), 3);
        // Later every bucket has refilled: adding a key prunes them.
        assert_eq!(m.try_take(4, 5_000, 1), Ok(()));
        assert_eq!(m.len(), 1);
    }
}
