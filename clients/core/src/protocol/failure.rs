//! The core-level view of an error: just enough to decide whether to retry.
//!
//! Drivers map their own error types (sockets, TLS, HTTP) onto [`Failure`]; every retry and
//! rejection rule in this crate is written against it, so the rules are the same for every
//! driver.

use tern_wire::msg::ErrorCode;

/// What went wrong, as far as retry decisions care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The server answered this request (or the Hello) with an `Error` frame.
    Answered {
        code: ErrorCode,
        /// A fatal error closes the connection: the request itself was not judged.
        fatal: bool,
        /// For `RateLimited`: how long the server asks to wait (`None`: it did not say).
        retry_after_ms: Option<u64>,
    },
    /// An error code that is not the answer to this request: the connection was closed by a
    /// fatal `Error`, or the HTTPS API refused with this code.
    Coded(ErrorCode),
    /// The outgoing frame is larger than the negotiated maximum: it can never be sent.
    FrameTooLarge,
    /// Local setup (configuration, TLS): retrying cannot fix it.
    Setup,
    /// Everything else (timeouts, lost connections, transport or protocol trouble): may work
    /// next time.
    Transient,
}

impl Failure {
    /// The server's error code, when there is one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Failure::Answered { code, .. } | Failure::Coded(code) => Some(*code),
            _ => None,
        }
    }

    /// The credentials or token are no longer good: logging in again helps, retrying does not.
    pub fn is_auth(&self) -> bool {
        matches!(
            self.code(),
            Some(ErrorCode::Unauthenticated | ErrorCode::TokenRevoked)
        )
    }

    /// How long the server asked to wait before retrying, if it said.
    pub fn retry_after_ms(&self) -> Option<u64> {
        match self {
            Failure::Answered { retry_after_ms, .. } => *retry_after_ms,
            _ => None,
        }
    }
}

/// The wire code whose string form is `code` (HTTP API errors carry the same names).
pub fn error_code_from_str(code: &str) -> Option<ErrorCode> {
    ErrorCode::ALL.iter().copied().find(|c| c.as_str() == code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_auth() {
        let revoked = Failure::Coded(ErrorCode::TokenRevoked);
        assert!(revoked.is_auth());
        assert_eq!(revoked.retry_after_ms(), None);
        let limited = Failure::Answered {
            code: ErrorCode::RateLimited,
            fatal: false,
            retry_after_ms: Some(250),
        };
        assert!(!limited.is_auth());
        assert_eq!(limited.retry_after_ms(), Some(250));
        assert_eq!(Failure::Transient.code(), None);
        for code in ErrorCode::ALL {
            assert_eq!(error_code_from_str(code.as_str()), Some(code));
        }
        assert_eq!(error_code_from_str("http_502"), None);
    }
}
