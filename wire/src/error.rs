//! Why a frame was rejected.

use crate::msg::ErrorCode;

/// A frame that cannot be accepted. Every variant is the peer's fault (or a corrupted stream):
/// the usual reaction is to send `ServerMessage::Error { code: err.code(), fatal: true, .. }`
/// and close the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The frame (or a stream length header) announced more bytes than the limit allows.
    /// Detected before the body is read or buffered.
    #[error("frame of {size} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge { size: usize, max: usize },
    /// The bytes are not a valid Tern envelope: failed FlatBuffers verification, wrong file
    /// identifier, missing required field, unknown enum or union value, empty body, empty frame.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// A valid envelope travelling the wrong way: a server message sent by a client, or a client
    /// message sent by a server.
    #[error("message sent in the wrong direction")]
    WrongDirection,
}

impl WireError {
    /// The protocol error code to report to the peer.
    pub fn code(&self) -> ErrorCode {
        match self {
            WireError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            WireError::Malformed(_) | WireError::WrongDirection => ErrorCode::MalformedFrame,
        }
    }

    pub(crate) fn malformed(why: impl Into<String>) -> Self {
        WireError::Malformed(why.into())
    }
}

impl From<flatbuffers::InvalidFlatbuffer> for WireError {
    fn from(e: flatbuffers::InvalidFlatbuffer) -> Self {
        // The verifier's message spans several lines (error, then a trace of fields); keep it
        // on one line so it logs cleanly.
        let text = e.to_string();
        let parts: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        WireError::Malformed(format!("verification failed: {}", parts.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        assert_eq!(
            WireError::FrameTooLarge { size: 2, max: 1 }.code(),
            ErrorCode::FrameTooLarge
        );
        assert_eq!(WireError::malformed("x").code(), ErrorCode::MalformedFrame);
        assert_eq!(WireError::WrongDirection.code(), ErrorCode::MalformedFrame);
        assert_eq!(
            WireError::FrameTooLarge {
                size: 70_000,
                max: 65_536
            }
            .to_string(),
            "frame of 70000 bytes exceeds the maximum of 65536 bytes"
        );
    }
}
