//! A worker's traffic statistics, kept apart by the phase a message belongs to.
//!
//! `chat --warmup` runs traffic before the measured phase so that the cold start (with `--e2e`:
//! device-list queries, one-time-key claims, Olm sessions, key shares on every device's first
//! message) is not mixed into the measurement. A message belongs to the warm-up when its send
//! was *scheduled* inside the warm-up window (the header carries the scheduled time), so a
//! warm-up message that arrives after the measured phase started still counts as warm-up: it
//! never reaches the measured histograms. Its arrival is still checked like every other (the
//! receiver ledgers and the sent table see every message; this only decides which histogram
//! and which counters it lands in).
//!
//! The measured histograms come twice, like before the warm-up existed: for the whole run
//! (the report's `latency`) and for the current phase (reset at each phase end: the fanout
//! steps).

use serde::{Deserialize, Serialize};

use crate::histo::{self, Hist};

/// Counters of the warm-up phase (one worker, or merged).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarmupCounts {
    /// Sends the warm-up schedule dispatched.
    pub sent: u64,
    pub acked: u64,
    /// Warm-up sends never acknowledged before their give-up time.
    pub send_failed: u64,
    /// First arrivals of warm-up messages at their recipients, whenever they came.
    pub delivered: u64,
    /// `--e2e`: warm-up messages decrypted only when their key arrived after them.
    pub late_keys: u64,
    /// `--e2e`: undecryptable arrivals while the warm-up ran. An undecryptable message has no
    /// readable header, so it is attributed by arrival time, not by its scheduled time.
    pub undecryptable: u64,
    /// Sends that were the first of their (sender, conversation) in this run yet fell in the
    /// measured phase: with `--e2e` each paid its cold start inside the measurement.
    pub first_sends_after_warmup: u64,
}

impl WarmupCounts {
    pub fn add(&mut self, o: &WarmupCounts) {
        self.sent += o.sent;
        self.acked += o.acked;
        self.send_failed += o.send_failed;
        self.delivered += o.delivered;
        self.late_keys += o.late_keys;
        self.undecryptable += o.undecryptable;
        self.first_sends_after_warmup += o.first_sends_after_warmup;
    }
}

/// What a worker reports about its warm-up at the end of the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WarmupResult {
    pub counts: WarmupCounts,
    pub delivery_hist: String,
    pub send_ack_hist: String,
}

/// One worker's delivery and send→ack statistics, split into warm-up and measured.
pub struct TrafficStats {
    /// Scheduled send times `[start, end)` (Unix ns) of the warm-up; `None`: no warm-up.
    warmup_window: Option<(u64, u64)>,
    /// The warm-up phase is the one running (between its start and the next phase's).
    warmup_running: bool,
    /// Measured traffic, the whole run.
    delivery: Hist,
    send_ack: Hist,
    /// Measured traffic, the current phase.
    phase_delivery: Hist,
    phase_send_ack: Hist,
    warmup_delivery: Hist,
    warmup_send_ack: Hist,
    warmup: WarmupCounts,
}

impl Default for TrafficStats {
    fn default() -> Self {
        TrafficStats::new()
    }
}

impl TrafficStats {
    pub fn new() -> TrafficStats {
        TrafficStats {
            warmup_window: None,
            warmup_running: false,
            delivery: histo::new_hist(),
            send_ack: histo::new_hist(),
            phase_delivery: histo::new_hist(),
            phase_send_ack: histo::new_hist(),
            warmup_delivery: histo::new_hist(),
            warmup_send_ack: histo::new_hist(),
            warmup: WarmupCounts::default(),
        }
    }

    /// A traffic phase starts at `start_unix_ns` for `duration_ns`; `warmup` says which kind.
    pub fn phase_started(&mut self, warmup: bool, start_unix_ns: u64, duration_ns: u64) {
        self.warmup_running = warmup;
        if warmup {
            self.warmup_window = Some((start_unix_ns, start_unix_ns.saturating_add(duration_ns)));
        }
    }

    /// Whether a message scheduled at `scheduled_unix_ns` belongs to the warm-up.
    pub fn is_warmup(&self, scheduled_unix_ns: u64) -> bool {
        self.warmup_window
            .is_some_and(|(start, end)| (start..end).contains(&scheduled_unix_ns))
    }

    /// The schedule dispatched one send of a phase of the given kind.
    pub fn dispatched(&mut self, warmup: bool) {
        if warmup {
            self.warmup.sent += 1;
        }
    }

    /// A send was acknowledged `us` after it started. `first` says it was the first send of
    /// its (sender, conversation).
    pub fn acked(&mut self, warmup: bool, first: bool, us: u64) {
        if warmup {
            self.warmup.acked += 1;
            histo::record_us(&mut self.warmup_send_ack, us);
        } else {
            histo::record_us(&mut self.send_ack, us);
            histo::record_us(&mut self.phase_send_ack, us);
            if first && self.warmup_window.is_some() {
                self.warmup.first_sends_after_warmup += 1;
            }
        }
    }

    /// A send was given up (never acknowledged).
    pub fn send_failed(&mut self, warmup: bool) {
        if warmup {
            self.warmup.send_failed += 1;
        }
    }

    /// First arrival of a message scheduled at `scheduled_unix_ns`, `us` after that.
    pub fn delivered(&mut self, scheduled_unix_ns: u64, us: u64, late_key: bool) {
        if self.is_warmup(scheduled_unix_ns) {
            self.warmup.delivered += 1;
            self.warmup.late_keys += u64::from(late_key);
            histo::record_us(&mut self.warmup_delivery, us);
        } else {
            histo::record_us(&mut self.delivery, us);
            histo::record_us(&mut self.phase_delivery, us);
        }
    }

    /// An arrival that could not be decrypted (no header to tell its phase by).
    pub fn undecryptable(&mut self) {
        if self.warmup_running {
            self.warmup.undecryptable += 1;
        }
    }

    /// The current phase's measured (delivery, send→ack) histograms, encoded; then resets them.
    pub fn take_phase(&mut self) -> (String, String) {
        let out = (
            histo::encode(&self.phase_delivery).unwrap_or_default(),
            histo::encode(&self.phase_send_ack).unwrap_or_default(),
        );
        self.phase_delivery.reset();
        self.phase_send_ack.reset();
        out
    }

    /// The measured (delivery, send→ack) histograms of the whole run, encoded.
    pub fn measured(&self) -> (String, String) {
        (
            histo::encode(&self.delivery).unwrap_or_default(),
            histo::encode(&self.send_ack).unwrap_or_default(),
        )
    }

    pub fn warmup_result(&self) -> WarmupResult {
        WarmupResult {
            counts: self.warmup,
            delivery_hist: histo::encode(&self.warmup_delivery).unwrap_or_default(),
            send_ack_hist: histo::encode(&self.warmup_send_ack).unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(encoded: &str) -> u64 {
        histo::decode(encoded).map(|h| h.len()).unwrap_or(0)
    }

    const S: u64 = 1_000_000_000;

    #[test]
    fn late_warmup_deliveries_stay_out_of_the_measured_histograms() {
        let mut t = TrafficStats::new();
        // Warm-up: scheduled times [10 s, 15 s).
        t.phase_started(true, 10 * S, 5 * S);
        t.dispatched(true);
        t.dispatched(true);
        t.acked(true, true, 800);
        t.acked(true, true, 900);
        t.delivered(11 * S, 2_000, true);
        t.undecryptable();
        // The measured phase starts at 16 s; one warm-up message (scheduled at 14.9 s) only
        // arrives now, 2 s late.
        t.phase_started(false, 16 * S, 10 * S);
        t.delivered(14 * S + 900_000_000, 2_000_000, false);
        t.dispatched(false);
        t.acked(false, true, 500);
        t.acked(false, false, 600);
        t.delivered(17 * S, 3_000, false);
        t.undecryptable();

        let (phase_delivery, phase_send_ack) = t.take_phase();
        let (delivery, send_ack) = t.measured();
        assert_eq!(count(&delivery), 1, "only the measured message");
        assert_eq!(count(&phase_delivery), 1);
        assert_eq!(count(&send_ack), 2);
        assert_eq!(count(&phase_send_ack), 2);
        let max = histo::decode(&delivery).map(|h| h.max()).unwrap_or(0);
        assert!(
            max < 10_000,
            "the late warm-up delivery leaked: max {max} µs"
        );

        let w = t.warmup_result();
        assert_eq!(
            count(&w.delivery_hist),
            2,
            "both warm-up messages, the late one too"
        );
        assert_eq!(count(&w.send_ack_hist), 2);
        assert_eq!(
            w.counts,
            WarmupCounts {
                sent: 2,
                acked: 2,
                send_failed: 0,
                delivered: 2,
                late_keys: 1,
                undecryptable: 1,
                first_sends_after_warmup: 1,
            }
        );
        // The phase histograms were reset; the run's are not.
        let (phase_delivery, _) = t.take_phase();
        assert_eq!(count(&phase_delivery), 0);
        assert_eq!(count(&t.measured().0), 1);
    }

    #[test]
    fn without_a_warmup_everything_is_measured() {
        let mut t = TrafficStats::new();
        t.phase_started(false, 10 * S, 5 * S);
        t.dispatched(false);
        t.acked(false, true, 500);
        t.send_failed(false);
        t.delivered(0, 100, true);
        t.delivered(11 * S, 100, false);
        t.undecryptable();
        assert!(!t.is_warmup(11 * S));
        assert_eq!(count(&t.measured().0), 2);
        assert_eq!(t.warmup_result().counts, WarmupCounts::default());
    }
}
