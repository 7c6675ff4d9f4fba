//! The error every service operation returns: a stable code, a human message, and for rate
//! limits the time to wait. The gateway maps it to HTTP statuses and `Error` frames.

use std::time::Duration;

use tern_wire::msg::ErrorCode;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ServiceError {
    pub code: ErrorCode,
    pub message: String,
    pub retry_after: Option<Duration>,
}

impl ServiceError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ServiceError {
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }

    pub fn rate_limited(wait: Duration) -> Self {
        // Round up so that a client waiting exactly Retry-After seconds is let through.
        let wait = Duration::from_secs(wait.as_millis().div_ceil(1000).max(1) as u64);
        ServiceError {
            code: ErrorCode::RateLimited,
            message: "too many attempts, retry later".into(),
            retry_after: Some(wait),
        }
    }

    pub fn poisoned() -> Self {
        Self::new(ErrorCode::Internal, "internal state unavailable")
    }
}
