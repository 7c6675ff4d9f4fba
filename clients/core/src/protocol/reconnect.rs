//! Reconnect decisions: which connect failures are final, how long to wait before each
//! attempt, and when the backoff schedule starts over.
//!
//! * A failure that retrying cannot fix ends the reconnect loop
//!   ([`connect_failure_is_permanent`]).
//! * The first attempt after a connection that stayed up for
//!   [`BackoffPolicy::reset_after`](super::backoff::BackoffPolicy::reset_after) goes right away
//!   and the schedule starts over; a flapping connection keeps backing off.
//! * A `GoingAway` notice's `retry_after_ms` is a floor for the next delay.

use std::time::Duration;

use tern_wire::msg::ErrorCode;

use super::backoff::Backoff;
use super::failure::Failure;

/// Connect failures that retrying cannot fix.
pub fn connect_failure_is_permanent(failure: &Failure) -> bool {
    // `forbidden` at Hello: the device id belongs to another user, or to a live session of this
    // user; reconnecting with it cannot succeed (the application needs another device id, or
    // to log out the other session).
    failure.is_auth()
        || failure.code() == Some(ErrorCode::Forbidden)
        || matches!(
            failure,
            Failure::Setup
                | Failure::Answered {
                    code: ErrorCode::UnsupportedVersion,
                    ..
                }
        )
}

/// The reconnect schedule of one client: its backoff, the uptime of the last connection and
/// the server's retry hint.
#[derive(Debug, Clone)]
pub struct Reconnect {
    backoff: Backoff,
    /// When the current (or last) connection came up.
    connected_at_ms: Option<u64>,
    /// How long the connection that ended last stayed up.
    last_uptime_ms: Option<u64>,
    /// From `GoingAway`: wait at least this long before reconnecting.
    retry_hint_ms: Option<u64>,
    /// The next attempt is the first of a reconnect run.
    first_attempt: bool,
}

impl Reconnect {
    pub fn new(backoff: Backoff) -> Self {
        Reconnect {
            backoff,
            connected_at_ms: None,
            last_uptime_ms: None,
            retry_hint_ms: None,
            first_attempt: true,
        }
    }

    pub fn backoff(&self) -> &Backoff {
        &self.backoff
    }

    /// The schedule is shared with rate-limit waits of the outbox.
    pub fn backoff_mut(&mut self) -> &mut Backoff {
        &mut self.backoff
    }

    pub fn set_backoff(&mut self, backoff: Backoff) {
        self.backoff = backoff;
    }

    /// A connection came up (Welcome received).
    pub fn on_connected(&mut self, now_ms: u64) {
        self.connected_at_ms = Some(now_ms);
        self.last_uptime_ms = None;
    }

    /// The connection ended (or is being replaced); records how long it stayed up. Idempotent.
    pub fn on_disconnected(&mut self, now_ms: u64) {
        if let Some(at) = self.connected_at_ms.take() {
            self.last_uptime_ms = Some(now_ms.saturating_sub(at));
        }
    }

    /// The server announced it is going away and asked to wait `retry_after_ms`.
    pub fn on_going_away(&mut self, retry_after_ms: u32) {
        self.retry_hint_ms = Some(retry_after_ms.into());
    }

    /// Starts a run of attempts: the schedule resets when the previous connection stayed up
    /// long enough.
    pub fn begin(&mut self, now_ms: u64) {
        self.on_disconnected(now_ms);
        let reset_after = self.backoff.policy().reset_after.as_millis() as u64;
        if self.last_uptime_ms.is_some_and(|up| up >= reset_after) {
            self.backoff.reset();
        }
        self.last_uptime_ms = None;
        self.first_attempt = true;
    }

    /// How long to wait before the next attempt of the run. The very first attempt after a
    /// stable connection goes right away; a flapping connection (counter not reset) or a
    /// `GoingAway` waits.
    pub fn next_attempt_delay(&mut self) -> Duration {
        let hint = self.retry_hint_ms.take().map(Duration::from_millis);
        let first = std::mem::replace(&mut self.first_attempt, false);
        if first && hint.is_none() && self.backoff.attempt() == 0 {
            Duration::ZERO
        } else {
            self.backoff.next_delay().max(hint.unwrap_or_default())
        }
    }

    /// How long the last connection stayed up, once it ended (until the next run begins).
    pub fn last_uptime_ms(&self) -> Option<u64> {
        self.last_uptime_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::backoff::BackoffPolicy;

    #[test]
    fn permanent_connect_failures() {
        let answered = |code| Failure::Answered {
            code,
            fatal: true,
            retry_after_ms: None,
        };
        assert!(connect_failure_is_permanent(&answered(
            ErrorCode::Unauthenticated
        )));
        assert!(connect_failure_is_permanent(&Failure::Coded(
            ErrorCode::TokenRevoked
        )));
        assert!(
            connect_failure_is_permanent(&answered(ErrorCode::Forbidden)),
            "a device bound elsewhere stays bound: no reconnect loop"
        );
        assert!(connect_failure_is_permanent(&answered(
            ErrorCode::UnsupportedVersion
        )));
        assert!(connect_failure_is_permanent(&Failure::Setup));
        assert!(!connect_failure_is_permanent(&Failure::Transient));
        assert!(!connect_failure_is_permanent(&answered(
            ErrorCode::ServerShutdown
        )));
        assert!(!connect_failure_is_permanent(&answered(
            ErrorCode::Internal
        )));
        assert!(!connect_failure_is_permanent(&Failure::Coded(
            ErrorCode::SlowConsumer
        )));
    }

    fn policy() -> BackoffPolicy {
        BackoffPolicy {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(10),
            reset_after: Duration::from_secs(5),
        }
    }

    #[test]
    fn first_attempt_after_a_stable_connection_goes_at_once() {
        let mut r = Reconnect::new(Backoff::new(policy(), 3));
        r.on_connected(0);
        r.on_disconnected(60_000);
        r.begin(60_000);
        assert_eq!(r.next_attempt_delay(), Duration::ZERO);
        // Failed: the following attempts back off.
        assert!(r.next_attempt_delay() <= Duration::from_millis(100));
        assert!(r.next_attempt_delay() <= Duration::from_millis(200));
        assert_eq!(r.backoff().attempt(), 2);
        // Connected and stayed up past reset_after: starts over.
        r.on_connected(70_000);
        r.begin(75_000);
        assert_eq!(r.backoff().attempt(), 0);
        assert_eq!(r.next_attempt_delay(), Duration::ZERO);
    }

    #[test]
    fn a_flapping_connection_keeps_backing_off() {
        let mut r = Reconnect::new(Backoff::new(policy(), 3));
        r.begin(0);
        assert_eq!(r.next_attempt_delay(), Duration::ZERO);
        // That attempt failed; the second one worked.
        assert!(r.next_attempt_delay() <= Duration::from_millis(100));
        for round in 0..5u64 {
            let at = 1000 * (round + 1);
            r.on_connected(at);
            // Up for 1 s < reset_after: no reset, and the first attempt waits.
            r.begin(at + 1000);
            let attempt = r.backoff().attempt();
            let ceiling = r.backoff().ceiling();
            assert!(attempt > 0);
            assert!(r.next_attempt_delay() <= ceiling);
            assert_eq!(r.backoff().attempt(), attempt + 1);
        }
    }

    #[test]
    fn going_away_is_a_floor_for_the_next_delay_only() {
        let mut r = Reconnect::new(Backoff::new(policy(), 3));
        r.on_connected(0);
        r.on_going_away(7_000);
        r.begin(60_000);
        assert_eq!(r.next_attempt_delay(), Duration::from_millis(7_000));
        assert!(r.next_attempt_delay() < Duration::from_millis(7_000));
    }
}
