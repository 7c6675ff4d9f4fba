//! What went wrong with a send or a connect, as the page describes it: the JSON form of
//! [`Failure`], or the decoded server `error` message itself.

use serde::Deserialize;
use tern_core::Failure;
use tern_wire::msg::ErrorCode;

use crate::js::{JsResult, fail, from_json};

/// `{"kind": "answered", "code", "fatal", "retry_after_ms"?} | {"kind": "coded", "code"} |
/// {"kind": "frame_too_large"} | {"kind": "setup"} | {"kind": "transient"}`.
#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
enum FailureJson {
    Answered {
        code: ErrorCode,
        #[serde(default)]
        fatal: bool,
        #[serde(default)]
        retry_after_ms: Option<u64>,
    },
    Coded {
        code: ErrorCode,
    },
    FrameTooLarge,
    Setup,
    Transient,
}

/// A server `error` message (`{"type": "error", request_id, code, message, fatal,
/// retry_after_ms}`) as the page decoded it: the answer to the request that failed.
#[derive(Deserialize)]
struct ServerError {
    code: ErrorCode,
    #[serde(default)]
    message: String,
    #[serde(default)]
    fatal: bool,
    #[serde(default)]
    retry_after_ms: u64,
}

/// Parses a failure: a `{"kind": …}` object, or a server `error` message. Returns the
/// failure and the server's message text when there is one.
pub fn parse_failure(json: &str) -> JsResult<(Failure, Option<String>)> {
    let value: serde_json::Value = from_json(json, "failure")?;
    if value.get("type").and_then(|t| t.as_str()) == Some("error") {
        let e: ServerError = serde_json::from_value(value)
            .map_err(|e| fail(format!("invalid server error JSON: {e}")))?;
        let failure = Failure::Answered {
            code: e.code,
            fatal: e.fatal,
            // 0 means the server did not say.
            retry_after_ms: (e.retry_after_ms > 0).then_some(e.retry_after_ms),
        };
        return Ok((failure, Some(e.message)));
    }
    let f: FailureJson = serde_json::from_value(value).map_err(|e| {
        fail(format!(
            "invalid failure JSON (expected {{\"kind\": answered|coded|frame_too_large|setup|transient}} or a server error message): {e}"
        ))
    })?;
    Ok((
        match f {
            FailureJson::Answered {
                code,
                fatal,
                retry_after_ms,
            } => Failure::Answered {
                code,
                fatal,
                retry_after_ms,
            },
            FailureJson::Coded { code } => Failure::Coded(code),
            FailureJson::FrameTooLarge => Failure::FrameTooLarge,
            FailureJson::Setup => Failure::Setup,
            FailureJson::Transient => Failure::Transient,
        },
        None,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_parse_and_unknown_codes_are_refused() {
        let (f, m) = parse_failure(
            r#"{"type":"error","request_id":4,"code":"rate_limited","message":"slow","fatal":false,"retry_after_ms":250}"#,
        )
        .expect("server error");
        assert_eq!(f.retry_after_ms(), Some(250));
        assert_eq!(m.as_deref(), Some("slow"));
        let (f, _) = parse_failure(r#"{"kind":"coded","code":"token_revoked"}"#).expect("coded");
        assert!(f.is_auth());
        assert_eq!(
            parse_failure(r#"{"kind":"transient"}"#).expect("t").0,
            Failure::Transient
        );
        assert!(parse_failure(r#"{"kind":"coded","code":"nope"}"#).is_err());
        assert!(parse_failure(r#"{"kind":"exploded"}"#).is_err());
        assert!(parse_failure("7").is_err());
    }
}
