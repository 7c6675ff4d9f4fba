//! How outbox send outcomes are judged, and when the outbox may be drained again.
//!
//! The driver sends the outbox's [`front`](super::outbox::Outbox::front) entry, waits for its
//! answer and reports failures to [`Drain::on_send_failed`], which decides:
//!
//! * a **permanent rejection** ([`rejection_code`]: forbidden, not found, invalid, too large,
//!   conflict, unsupported): retrying the same message cannot succeed, so the entry is dropped
//!   and reported (kept for [`Drain::take_rejected`]);
//! * **rate limited**: the entry stays; automatic draining resumes at
//!   `now + max(retry_after, next backoff delay)` on the same connection (never sooner than the
//!   backoff: several devices may share the limit);
//! * anything else is **transient** (timeout, connection lost, server shutting down): the entry
//!   stays and automatic draining waits for the next connection.

use std::collections::VecDeque;

use tern_wire::ids::ConversationId;
use tern_wire::msg::ErrorCode;

use super::backoff::Backoff;
use super::failure::Failure;
use super::outbox::PendingSend;

/// Structured rejections kept for [`Drain::take_rejected`]; the oldest are dropped beyond this
/// (the app also sees each one as an event, this is only the structured copy).
pub const MAX_REJECTED: usize = 1024;

/// An outbox entry the server refused for good; it was removed from the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub client_msg_id: u128,
    pub conversation: ConversationId,
    pub code: ErrorCode,
    pub message: String,
}

/// When the outbox may be drained automatically on the current connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainGate {
    Open,
    /// Rate limited: not before this `now_ms`.
    At(u64),
    /// A transient failure on this connection: wait for the next one.
    Parked,
}

/// The decision for one failed send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendFailed {
    /// Drop the entry from the outbox and tell the app (already recorded for
    /// [`Drain::take_rejected`]).
    Rejected(Rejected),
    /// Keep the entry and stop draining; the gate says when to try again.
    Retry(DrainGate),
}

/// The error code when `failure` rejects a send for good (retrying the same message cannot
/// succeed); `None` for transient failures.
pub fn rejection_code(failure: &Failure) -> Option<ErrorCode> {
    match failure {
        Failure::Answered {
            code:
                code @ (ErrorCode::Forbidden
                | ErrorCode::NotFound
                | ErrorCode::InvalidArgument
                | ErrorCode::LimitExceeded
                | ErrorCode::FrameTooLarge
                | ErrorCode::Conflict
                | ErrorCode::Unsupported),
            fatal: false,
            ..
        } => Some(*code),
        Failure::FrameTooLarge => Some(ErrorCode::FrameTooLarge),
        _ => None,
    }
}

/// The drain gate and the record of rejections.
#[derive(Debug, Clone)]
pub struct Drain {
    gate: DrainGate,
    rejected: VecDeque<Rejected>,
}

impl Default for Drain {
    fn default() -> Self {
        Drain {
            gate: DrainGate::Open,
            rejected: VecDeque::new(),
        }
    }
}

impl Drain {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn gate(&self) -> DrainGate {
        self.gate
    }

    /// A new connection: whatever held draining back applied to the old one.
    pub fn on_connected(&mut self) {
        self.gate = DrainGate::Open;
    }

    /// May the outbox be drained automatically now? An expired rate-limit wait opens the gate.
    pub fn may_drain(&mut self, now_ms: u64) -> bool {
        if let DrainGate::At(t) = self.gate
            && now_ms >= t
        {
            self.gate = DrainGate::Open;
        }
        self.gate == DrainGate::Open
    }

    /// When a rate-limit wait ends (the driver sets a timer for it).
    pub fn retry_at(&self) -> Option<u64> {
        match self.gate {
            DrainGate::At(t) => Some(t),
            _ => None,
        }
    }

    /// Judges a failed send of `entry` (see the module docs). `message` is the failure's text
    /// for the app. Draws a backoff delay when rate limited.
    pub fn on_send_failed(
        &mut self,
        entry: &PendingSend,
        failure: &Failure,
        message: String,
        backoff: &mut Backoff,
        now_ms: u64,
    ) -> SendFailed {
        if let Some(code) = rejection_code(failure) {
            let rejected = Rejected {
                client_msg_id: entry.client_msg_id,
                conversation: entry.conversation,
                code,
                message,
            };
            if self.rejected.len() >= MAX_REJECTED {
                self.rejected.pop_front();
            }
            self.rejected.push_back(rejected.clone());
            return SendFailed::Rejected(rejected);
        }
        self.gate = if failure.code() == Some(ErrorCode::RateLimited) {
            let backoff = backoff.next_delay().as_millis() as u64;
            let wait = failure.retry_after_ms().map_or(backoff, |r| r.max(backoff));
            DrainGate::At(now_ms.saturating_add(wait))
        } else {
            DrainGate::Parked
        };
        SendFailed::Retry(self.gate)
    }

    /// Rejections since the last call (at most the latest [`MAX_REJECTED`]).
    pub fn take_rejected(&mut self) -> Vec<Rejected> {
        self.rejected.drain(..).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::backoff::BackoffPolicy;

    fn answered(code: ErrorCode, fatal: bool) -> Failure {
        Failure::Answered {
            code,
            fatal,
            retry_after_ms: None,
        }
    }

    #[test]
    fn permanent_and_transient_send_failures() {
        for code in [
            ErrorCode::Forbidden,
            ErrorCode::NotFound,
            ErrorCode::InvalidArgument,
            ErrorCode::LimitExceeded,
            ErrorCode::FrameTooLarge,
            ErrorCode::Conflict,
            ErrorCode::Unsupported,
        ] {
            assert_eq!(rejection_code(&answered(code, false)), Some(code));
        }
        for code in [
            ErrorCode::RateLimited,
            ErrorCode::Internal,
            ErrorCode::ServerShutdown,
            ErrorCode::SlowConsumer,
            ErrorCode::TokenRevoked,
            ErrorCode::Unauthenticated,
        ] {
            assert_eq!(rejection_code(&answered(code, false)), None, "{code:?}");
        }
        // A fatal error closes the connection: the message itself was not judged.
        assert_eq!(rejection_code(&answered(ErrorCode::Forbidden, true)), None);
        assert_eq!(
            rejection_code(&answered(ErrorCode::MalformedFrame, true)),
            None
        );
        assert_eq!(rejection_code(&Failure::Coded(ErrorCode::Forbidden)), None);
        assert_eq!(rejection_code(&Failure::Transient), None);
        assert_eq!(
            rejection_code(&Failure::FrameTooLarge),
            Some(ErrorCode::FrameTooLarge)
        );
    }

    fn pending(id: u128) -> PendingSend {
        PendingSend {
            client_msg_id: id,
            conversation: ConversationId(1),
            content_type: "text".into(),
            payload: vec![],
            created_ms: 0,
        }
    }

    #[test]
    fn gate_follows_rate_limits_and_transient_failures() {
        let policy = BackoffPolicy::default();
        let mut backoff = Backoff::new(policy, 1);
        let mut d = Drain::new();
        assert!(d.may_drain(0));
        // The server asks for 60 s, more than any first backoff delay: its wait wins.
        let limited = Failure::Answered {
            code: ErrorCode::RateLimited,
            fatal: false,
            retry_after_ms: Some(60_000),
        };
        let got = d.on_send_failed(
            &pending(1),
            &limited,
            "slow down".into(),
            &mut backoff,
            1000,
        );
        assert_eq!(got, SendFailed::Retry(DrainGate::At(61_000)));
        assert_eq!(d.retry_at(), Some(61_000));
        assert!(!d.may_drain(60_999));
        assert!(d.may_drain(61_000));
        assert_eq!(d.gate(), DrainGate::Open);
        // Without a retry-after the backoff delay (seeded, so known) decides.
        let mut expected = Backoff::new(policy, 1);
        expected.next_delay();
        let wait = expected.next_delay().as_millis() as u64;
        let no_hint = Failure::Answered {
            code: ErrorCode::RateLimited,
            fatal: false,
            retry_after_ms: None,
        };
        let got = d.on_send_failed(&pending(1), &no_hint, String::new(), &mut backoff, 5);
        assert_eq!(got, SendFailed::Retry(DrainGate::At(5 + wait)));
        // Transient: parked until the next connection, whatever the time.
        let got = d.on_send_failed(
            &pending(1),
            &Failure::Transient,
            String::new(),
            &mut backoff,
            0,
        );
        assert_eq!(got, SendFailed::Retry(DrainGate::Parked));
        assert!(!d.may_drain(u64::MAX));
        d.on_connected();
        assert!(d.may_drain(0));
        assert!(d.take_rejected().is_empty());
    }

    #[test]
    fn rejections_are_recorded_and_bounded() {
        let mut backoff = Backoff::new(BackoffPolicy::default(), 1);
        let mut d = Drain::new();
        for id in 0..(MAX_REJECTED as u128 + 5) {
            let got = d.on_send_failed(
                &pending(id),
                &answered(ErrorCode::Forbidden, false),
                format!("no {id}"),
                &mut backoff,
                0,
            );
            assert!(
                matches!(got, SendFailed::Rejected(Rejected { client_msg_id, .. }) if client_msg_id == id)
            );
        }
        assert_eq!(
            d.gate(),
            DrainGate::Open,
            "a rejection does not stop draining"
        );
        assert_eq!(backoff.attempt(), 0, "nor does it draw a backoff delay");
        let all = d.take_rejected();
        assert_eq!(all.len(), MAX_REJECTED);
        assert_eq!(all[0].client_msg_id, 5, "the oldest went first");
        assert_eq!(all[0].message, "no 5");
        assert!(d.take_rejected().is_empty());
    }
}
