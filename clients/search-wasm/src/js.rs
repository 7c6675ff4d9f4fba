//! The JavaScript boundary: the error every export throws, and JSON in and out.
//!
//! Exports return `Result<_, Fail>`; a `Fail` becomes a JavaScript `Error` (with a `name` the
//! worker can tell apart when it has one). Our own type keeps the facade's logic testable in
//! native unit tests, where no JS engine exists to build an `Error`.

use std::fmt::Display;

use serde::Serialize;
use serde::de::DeserializeOwned;
use wasm_bindgen::JsValue;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fail(pub String, pub Option<&'static str>);

impl Fail {
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

pub fn err(e: impl Display) -> Fail {
    fail(e.to_string())
}

/// Parses a JSON argument. The message names what was expected, the kind of error and where,
/// never serde's own text: that quotes the offending value, which may be message text.
pub fn from_json<T: DeserializeOwned>(json: &str, what: &str) -> JsResult<T> {
    serde_json::from_str(json).map_err(|e| {
        fail(format!(
            "invalid {what}: {:?} error at line {} column {}",
            e.classify(),
            e.line(),
            e.column()
        ))
    })
}

pub fn to_json<T: Serialize>(v: &T) -> JsResult<String> {
    serde_json::to_string(v).map_err(err)
}
