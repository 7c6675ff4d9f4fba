//! `InboxAcks`: which key-share inbox entries to acknowledge, and when (tern-core's rule: only
//! what was handled AND persisted, exact ids, in frames the server accepts).

use tern_core::crypto::InboxAcks as CoreInboxAcks;
use wasm_bindgen::prelude::*;

use crate::js::{JsResult, to_json, uint};

/// Flow: after `onKeyShare` of a share with `inbox_id`, `onHandled(inbox_id)`; once the
/// machine's pickle is stored (IndexedDB transaction complete), send every message of
/// `takeAcks()`.
#[wasm_bindgen]
#[derive(Default)]
pub struct InboxAcks {
    inner: CoreInboxAcks,
}

#[wasm_bindgen]
impl InboxAcks {
    #[wasm_bindgen(constructor)]
    pub fn new() -> InboxAcks {
        InboxAcks::default()
    }

    /// The share `inbox_id` was handled (0: not an inbox entry, ignored).
    #[wasm_bindgen(js_name = onHandled)]
    pub fn on_handled(&mut self, inbox_id: f64) -> JsResult<()> {
        self.inner.on_handled(uint(inbox_id, "inbox_id")?);
        Ok(())
    }

    /// The `ack_key_shares` ClientMessages to send now (`[{type: "ack_key_shares", up_to,
    /// ids}]`, at most 2,000 ids each), emptying the set. Call only after the state is stored.
    #[wasm_bindgen(js_name = takeAcks)]
    pub fn take_acks(&mut self) -> JsResult<String> {
        to_json(&self.inner.take_acks())
    }

    pub fn len(&self) -> usize {
        self.inner.len()
    }

    #[wasm_bindgen(js_name = isEmpty)]
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }
}
