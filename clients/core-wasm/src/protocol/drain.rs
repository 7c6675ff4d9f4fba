//! `Drain`: how a failed outbox send is judged (tern-core's rules) and when the outbox may be
//! drained again: a permanent rejection drops the entry, `rate_limited` waits for
//! `max(retry_after, backoff)` on this connection, anything else waits for the next one.

use serde_json::{Value, json};
use tern_core::protocol::drain::{self, DrainGate, Rejected, SendFailed};
use wasm_bindgen::prelude::*;

use super::failure::parse_failure;
use super::outbox::{EntryJson, Outbox};
use super::reconnect::Reconnect;
use crate::js::{JsResult, client_msg_id_hex, err, fail, ms, num, parse_client_msg_id, to_json};

fn gate_json(gate: DrainGate) -> Value {
    match gate {
        DrainGate::Open => json!({"state": "open"}),
        DrainGate::At(t) => json!({"state": "at", "at_ms": num(t)}),
        DrainGate::Parked => json!({"state": "parked"}),
    }
}

fn rejected_json(r: &Rejected) -> Value {
    json!({"client_msg_id": client_msg_id_hex(r.client_msg_id), "conversation": r.conversation,
        "code": r.code.as_str(), "message": r.message})
}

/// The drain gate and the record of rejections. Flow: on Welcome `onConnected()`; send
/// `outbox.front()` while `mayDrain(now)`; on its `send_ack` `outbox.onAcked(…)`; on a failure
/// `onSendFailed(…)`; when it says `at`, set a timer for `retryAt()`.
#[wasm_bindgen]
pub struct Drain {
    inner: drain::Drain,
}

impl Default for Drain {
    fn default() -> Self {
        Drain {
            inner: drain::Drain::new(),
        }
    }
}

#[wasm_bindgen]
impl Drain {
    #[wasm_bindgen(constructor)]
    pub fn new() -> Drain {
        Drain::default()
    }

    /// `{state: "open"} | {state: "at", at_ms} | {state: "parked"}`.
    pub fn gate(&self) -> JsResult<String> {
        to_json(&gate_json(self.inner.gate()))
    }

    /// A new connection: whatever held draining back applied to the old one.
    #[wasm_bindgen(js_name = onConnected)]
    pub fn on_connected(&mut self) {
        self.inner.on_connected();
    }

    /// May the outbox be drained now? (An expired rate-limit wait opens the gate.)
    #[wasm_bindgen(js_name = mayDrain)]
    pub fn may_drain(&mut self, now_ms: f64) -> JsResult<bool> {
        Ok(self.inner.may_drain(ms(now_ms)?))
    }

    /// When a rate-limit wait ends (ms), or `undefined`.
    #[wasm_bindgen(js_name = retryAt)]
    pub fn retry_at(&self) -> Option<f64> {
        self.inner.retry_at().map(num)
    }

    /// Judges the failed send of the outbox entry `client_msg_id`. `failure_json`: the server's
    /// `error` answer (decoded JSON) or `{"kind": "transient"}` (timeout, connection lost),
    /// `{"kind": "frame_too_large"}`, … (see `isPermanentConnectFailure`). `message`: the text
    /// for the app (`undefined`: the server's message). Draws from `reconnect`'s backoff when
    /// rate limited. Returns `{decision: "rejected", rejected: {client_msg_id, conversation,
    /// code, message}, removed: entry}` (the entry left the outbox: delete it from IndexedDB,
    /// show the failure) or `{decision: "retry", gate}` (the entry stays).
    #[wasm_bindgen(js_name = onSendFailed)]
    pub fn on_send_failed(
        &mut self,
        outbox: &mut Outbox,
        client_msg_id: &str,
        failure_json: &str,
        message: Option<String>,
        reconnect: &mut Reconnect,
        now_ms: f64,
    ) -> JsResult<String> {
        let id = parse_client_msg_id(client_msg_id)?;
        let (failure, server_message) = parse_failure(failure_json)?;
        let now = ms(now_ms)?;
        let entry = outbox
            .inner
            .get(id)
            .cloned()
            .ok_or_else(|| fail(format!("no outbox entry {client_msg_id}")))?;
        let text = message
            .or(server_message)
            .unwrap_or_else(|| format!("{failure:?}"));
        let decision =
            self.inner
                .on_send_failed(&entry, &failure, text, reconnect.inner.backoff_mut(), now);
        let out = match decision {
            SendFailed::Rejected(r) => {
                let removed = outbox.inner.remove(id).map_err(err)?;
                let removed: Option<Value> = removed
                    .as_ref()
                    .map(|e| serde_json::to_value(EntryJson::from(e)))
                    .transpose()
                    .map_err(err)?;
                json!({"decision": "rejected", "rejected": rejected_json(&r), "removed": removed})
            }
            SendFailed::Retry(gate) => json!({"decision": "retry", "gate": gate_json(gate)}),
        };
        to_json(&out)
    }

    /// Rejections since the last call: `[{client_msg_id, conversation, code, message}]`.
    #[wasm_bindgen(js_name = takeRejected)]
    pub fn take_rejected(&mut self) -> JsResult<String> {
        to_json(
            &self
                .inner
                .take_rejected()
                .iter()
                .map(rejected_json)
                .collect::<Vec<_>>(),
        )
    }
}
