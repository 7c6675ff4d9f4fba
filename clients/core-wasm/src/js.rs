//! Conversions at the JavaScript boundary: argument checks, JSON in and out, and the error
//! every export throws.
//!
//! Exports return `Result<_, Fail>`; a `Fail` becomes a JavaScript `Error` with its message
//! when it crosses into JS. Keeping our own type (instead of `JsError` everywhere) lets the
//! facade's logic run in native unit tests too, where no JS engine exists to build an `Error`.

use std::fmt::Display;
use std::str::FromStr;

use serde::Serialize;
use serde::de::DeserializeOwned;
use wasm_bindgen::JsValue;

/// A failure of an export: thrown in JS as an `Error` with this message (and, for failures
/// the page must tell apart, this `name`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fail(pub String, pub Option<&'static str>);

impl Fail {
    /// A failure the page recognises by `Error.name` (e.g. a wrong passphrase).
    pub fn named(name: &'static str, message: impl Into<String>) -> Fail {
        Fail(message.into(), Some(name))
    }
}

impl From<Fail> for JsValue {
    fn from(f: Fail) -> JsValue {
        let e = js_sys::Error::new(&f.0);
        if let Some(name) = f.1 {
            e.set_name(name);
        }
        e.into()
    }
}

pub type JsResult<T> = Result<T, Fail>;

pub fn fail(message: impl Into<String>) -> Fail {
    Fail(message.into(), None)
}

/// Any error of the core, with its own message.
pub fn err(e: impl Display) -> Fail {
    fail(e.to_string())
}

/// An id (UUID string) or any other `FromStr` argument; the message names the argument.
pub fn parse<T: FromStr>(s: &str, what: &str) -> JsResult<T> {
    s.parse()
        .map_err(|_| fail(format!("invalid {what}: {s:?}")))
}

/// JavaScript numbers are exact integers up to 2^53 - 1.
const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_991.0;

/// A non-negative integer argument given as a JS number (times, seqs, counts).
pub fn uint(v: f64, what: &str) -> JsResult<u64> {
    if (0.0..=MAX_SAFE_INTEGER).contains(&v) && v.fract() == 0.0 {
        Ok(v as u64)
    } else {
        Err(fail(format!(
            "{what} must be a non-negative integer below 2^53, got {v}"
        )))
    }
}

/// A time argument in milliseconds (any monotonic or wall clock the page chooses).
pub fn ms(now_ms: f64) -> JsResult<u64> {
    if (0.0..=MAX_SAFE_INTEGER).contains(&now_ms) {
        // Fractions (performance.now()) are cut to whole milliseconds.
        Ok(now_ms as u64)
    } else {
        Err(fail(format!(
            "now_ms must be a non-negative number of milliseconds, got {now_ms}"
        )))
    }
}

/// A u64 result as a JS number (values here are seqs, ids and times, far below 2^53).
pub fn num(v: u64) -> f64 {
    v as f64
}

/// Parses a JSON argument into `T`; the message names what was expected and serde's reason.
pub fn from_json<T: DeserializeOwned>(json: &str, what: &str) -> JsResult<T> {
    serde_json::from_str(json).map_err(|e| fail(format!("invalid {what} JSON: {e}")))
}

pub fn to_json(v: &impl Serialize) -> JsResult<String> {
    serde_json::to_string(v).map_err(err)
}

/// A 128-bit client message id as the wire's JSON writes it: 32 lowercase hex digits.
pub fn client_msg_id_hex(id: u128) -> String {
    format!("{id:032x}")
}

pub fn parse_client_msg_id(s: &str) -> JsResult<u128> {
    if s.len() == 32
        && let Ok(id) = u128::from_str_radix(s, 16)
    {
        return Ok(id);
    }
    Err(fail(format!(
        "invalid client_msg_id {s:?}: expected 32 hex digits"
    )))
}

/// A pickle key: exactly 32 bytes.
pub fn key32(key: &[u8]) -> JsResult<[u8; 32]> {
    key.try_into().map_err(|_| {
        fail(format!(
            "pickle key must be 32 bytes, got {} bytes",
            key.len()
        ))
    })
}

/// Serde helpers for bytes as lowercase hex inside JSON (the wire's JSON convention).
pub mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        hex::decode(s.as_ref()).map_err(serde::de::Error::custom)
    }
}

/// Serde helpers for a `u128` client message id as 32 hex digits.
pub mod hex_u128 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(id: &u128, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::client_msg_id_hex(*id))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        super::parse_client_msg_id(&s).map_err(|e| serde::de::Error::custom(e.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_ids_are_checked() {
        assert_eq!(uint(5.0, "seq"), Ok(5));
        assert!(uint(-1.0, "seq").unwrap_err().0.contains("seq must be"));
        assert!(uint(1.5, "seq").is_err());
        assert!(uint(f64::NAN, "seq").is_err());
        assert!(uint(1e300, "seq").is_err());
        assert_eq!(ms(12.7), Ok(12));
        assert!(ms(f64::INFINITY).is_err());
        assert_eq!(client_msg_id_hex(1), format!("{}1", "0".repeat(31)));
        assert_eq!(
            parse_client_msg_id(&client_msg_id_hex(u128::MAX)),
            Ok(u128::MAX)
        );
        assert!(parse_client_msg_id("12").is_err());
        assert!(parse_client_msg_id(&"g".repeat(32)).is_err());
        assert!(key32(&[0; 31]).unwrap_err().0.contains("31 bytes"));
    }
}
