//! Open-loop send schedules.
//!
//! A schedule is a fixed list of (time, sender) decided before the run from a seed: when the
//! server stalls, the schedule does not wait for it. Each send's latency is measured from its
//! scheduled time, so a send that had to wait behind a stalled one carries the stall in its own
//! number instead of hiding it (no coordinated omission).
//!
//! Every worker process generates the same global schedule from the same seed and keeps the
//! entries of its own users, so no schedule has to be shipped between processes.

use serde::{Deserialize, Serialize};

use crate::util::SplitMix64;

/// How send times are spaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    /// Exponential gaps (a Poisson process): how independent users behave.
    Poisson,
    /// Evenly spaced sends.
    Fixed,
}

impl std::fmt::Display for ScheduleKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ScheduleKind::Poisson => "poisson",
            ScheduleKind::Fixed => "fixed",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScheduleSpec {
    pub kind: ScheduleKind,
    /// Messages per second, all senders together.
    pub rate: f64,
    pub duration_ns: u64,
    pub seed: u64,
    /// The rate rises linearly from 0 to `rate` over the duration (half the sends), so the
    /// senders' first messages spread over the whole phase instead of its first seconds: a
    /// warm-up that eases into the load, as users come online over time.
    #[serde(default)]
    pub ramp: bool,
}

/// One scheduled send: `at_ns` after the phase start, by eligible sender number `pick`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scheduled {
    pub at_ns: u64,
    pub pick: usize,
}

/// The schedule's entries in time order; `eligible` is the number of (sender, conversation)
/// pairs to choose from uniformly.
pub fn iter(spec: ScheduleSpec, eligible: usize) -> impl Iterator<Item = Scheduled> {
    let mut rng = SplitMix64::new(spec.seed);
    let duration = spec.duration_ns as f64;
    // A ramp is the same process in warped time: with rate(t) = rate * t / D the expected sends
    // up to t are rate * t^2 / (2 D), so a constant-rate time u in [0, D/2) maps to
    // t = sqrt(2 D u) in [0, D) (monotone: order and the seed's choices are kept).
    let (limit, warp): (f64, fn(f64, f64) -> f64) = if spec.ramp {
        (duration / 2.0, |u, d| (2.0 * d * u).sqrt())
    } else {
        (duration, |u, _| u)
    };
    let mut t_ns = 0.0f64;
    let mut k = 0u64;
    let interval_ns = if spec.rate > 0.0 {
        1e9 / spec.rate
    } else {
        f64::INFINITY
    };
    std::iter::from_fn(move || {
        if eligible == 0 || spec.rate <= 0.0 {
            return None;
        }
        let at = match spec.kind {
            ScheduleKind::Poisson => {
                // Inverse CDF of the exponential; 1 - u is in (0, 1], so ln is finite.
                t_ns += -(1.0 - rng.next_f64()).ln() * interval_ns;
                t_ns
            }
            ScheduleKind::Fixed => {
                let t = k as f64 * interval_ns;
                k += 1;
                t
            }
        };
        if at >= limit {
            return None;
        }
        let pick = rng.below(eligible as u64) as usize;
        Some(Scheduled {
            at_ns: warp(at, duration) as u64,
            pick,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: ScheduleKind, rate: f64, secs: u64, seed: u64) -> ScheduleSpec {
        ScheduleSpec {
            kind,
            rate,
            duration_ns: secs * 1_000_000_000,
            seed,
            ramp: false,
        }
    }

    #[test]
    fn a_ramp_sends_half_and_rises_linearly() {
        let flat: Vec<_> = iter(spec(ScheduleKind::Poisson, 1000.0, 60, 5), 10).collect();
        let ramp: Vec<_> = iter(
            ScheduleSpec {
                ramp: true,
                ..spec(ScheduleKind::Poisson, 1000.0, 60, 5)
            },
            10,
        )
        .collect();
        // 30,000 expected (the integral of the ramp), sd ~173.
        assert!((29_000..31_000).contains(&ramp.len()), "{}", ramp.len());
        assert!(ramp.windows(2).all(|w| w[0].at_ns <= w[1].at_ns));
        assert!(ramp.iter().all(|e| e.at_ns < 60_000_000_000));
        // The first quarter of the time has 1/16 of the sends, the last quarter 7/16.
        let quarter = |q: u64| {
            ramp.iter()
                .filter(|e| e.at_ns / 15_000_000_000 == q)
                .count() as f64
                / ramp.len() as f64
        };
        assert!((0.05..0.075).contains(&quarter(0)), "{}", quarter(0));
        assert!((0.41..0.465).contains(&quarter(3)), "{}", quarter(3));
        // The same seed makes the same choices of sender.
        assert_eq!(
            ramp[..100].iter().map(|e| e.pick).collect::<Vec<_>>(),
            flat[..100].iter().map(|e| e.pick).collect::<Vec<_>>()
        );
    }

    #[test]
    fn deterministic_per_seed() {
        let a: Vec<_> = iter(spec(ScheduleKind::Poisson, 100.0, 10, 42), 50).collect();
        let b: Vec<_> = iter(spec(ScheduleKind::Poisson, 100.0, 10, 42), 50).collect();
        let c: Vec<_> = iter(spec(ScheduleKind::Poisson, 100.0, 10, 43), 50).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn poisson_rate_and_order() {
        let s: Vec<_> = iter(spec(ScheduleKind::Poisson, 1000.0, 60, 1), 10).collect();
        // 60,000 expected; a Poisson count's standard deviation is ~245.
        assert!((58_500..61_500).contains(&s.len()), "{}", s.len());
        assert!(s.windows(2).all(|w| w[0].at_ns <= w[1].at_ns));
        assert!(s.iter().all(|e| e.at_ns < 60_000_000_000 && e.pick < 10));
        // Every sender gets a fair share.
        let mut per = [0usize; 10];
        for e in &s {
            per[e.pick] += 1;
        }
        assert!(per.iter().all(|&n| (5_300..6_700).contains(&n)), "{per:?}");
        // Exponential gaps: about 63% of gaps are shorter than the mean gap (1 ms).
        let short = s
            .windows(2)
            .filter(|w| w[1].at_ns - w[0].at_ns < 1_000_000)
            .count();
        let frac = short as f64 / (s.len() - 1) as f64;
        assert!((0.60..0.66).contains(&frac), "{frac}");
    }

    #[test]
    fn fixed_is_evenly_spaced() {
        let s: Vec<_> = iter(spec(ScheduleKind::Fixed, 4.0, 2, 9), 3).collect();
        assert_eq!(
            s.iter().map(|e| e.at_ns).collect::<Vec<_>>(),
            (0..8).map(|k| k * 250_000_000).collect::<Vec<_>>()
        );
    }

    #[test]
    fn empty_cases() {
        assert_eq!(iter(spec(ScheduleKind::Fixed, 0.0, 2, 9), 3).count(), 0);
        assert_eq!(iter(spec(ScheduleKind::Poisson, 10.0, 2, 9), 0).count(), 0);
    }
}
