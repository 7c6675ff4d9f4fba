//! Reconnect delays: exponential backoff with full jitter.
//!
//! Attempt `n` (0-based) waits a uniformly random time in `[0, min(cap, base * 2^n)]` ("full
//! jitter"): clients that lost the same server at the same moment spread out instead of
//! reconnecting in lockstep. The attempt counter resets once a connection stayed up for
//! [`BackoffPolicy::reset_after`], so a flapping connection keeps backing off.
//!
//! The randomness is a seeded SplitMix64, so a test can check the schedule deterministically
//! ([`Backoff::new`] with a fixed seed).

use std::time::Duration;

/// The reconnect schedule's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// Ceiling of the first delay.
    pub base: Duration,
    /// Largest ceiling.
    pub cap: Duration,
    /// A connection that stayed up this long resets the schedule.
    pub reset_after: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy {
            base: Duration::from_millis(250),
            cap: Duration::from_secs(30),
            reset_after: Duration::from_secs(10),
        }
    }
}

/// The state of one reconnect schedule.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: BackoffPolicy,
    attempt: u32,
    rng: u64,
}

impl Backoff {
    /// A schedule whose jitter is fully determined by `seed`.
    pub fn new(policy: BackoffPolicy, seed: u64) -> Backoff {
        Backoff {
            policy,
            attempt: 0,
            rng: seed,
        }
    }

    /// A schedule with a random seed.
    pub fn random(policy: BackoffPolicy) -> Backoff {
        Self::new(policy, uuid::Uuid::new_v4().as_u64_pair().0)
    }

    pub fn policy(&self) -> BackoffPolicy {
        self.policy
    }

    /// Delays handed out since the last reset.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The upper bound of the next delay: `min(cap, base * 2^attempt)`.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.policy
            .base
            .checked_mul(factor)
            .unwrap_or(self.policy.cap)
            .min(self.policy.cap)
    }

    /// The next delay (uniform in `[0, ceiling]`), advancing the schedule.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let micros = ceiling.as_micros().min(u64::MAX as u128) as u64;
        let jitter = self.next_u64() % micros.saturating_add(1);
        Duration::from_micros(jitter)
    }

    /// Back to the first step (after a connection that stayed up).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// SplitMix64.
    fn next_u64(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_double_up_to_the_cap_and_delays_stay_below_them() {
        let policy = BackoffPolicy::default();
        let mut b = Backoff::new(policy, 7);
        let expected_ms = [250, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000];
        for (i, ms) in expected_ms.iter().enumerate() {
            assert_eq!(b.attempt(), i as u32);
            assert_eq!(b.ceiling(), Duration::from_millis(*ms), "attempt {i}");
            assert!(b.next_delay() <= Duration::from_millis(*ms));
        }
        // Far into the schedule nothing overflows.
        for _ in 0..100 {
            assert!(b.next_delay() <= policy.cap);
        }
        b.reset();
        assert_eq!(b.attempt(), 0);
        assert_eq!(b.ceiling(), policy.base);
    }

    #[test]
    fn same_seed_same_schedule_and_jitter_spreads() {
        let policy = BackoffPolicy::default();
        let run = |seed| {
            let mut b = Backoff::new(policy, seed);
            (0..12).map(|_| b.next_delay()).collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
        // Full jitter: over many clients the first delay covers the whole [0, base] range.
        let firsts: Vec<Duration> = (0..1000u64)
            .map(|seed| Backoff::new(policy, seed).next_delay())
            .collect();
        let low = firsts.iter().filter(|d| **d < policy.base / 4).count();
        let high = firsts.iter().filter(|d| **d > policy.base * 3 / 4).count();
        assert!(low > 150 && high > 150, "low {low} high {high}");
        assert!(firsts.iter().all(|d| *d <= policy.base));
    }
}
