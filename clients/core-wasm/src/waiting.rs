//! `WaitingForKeys`: messages that cannot be decrypted yet, kept (bounded, 10,000 by
//! default) and retried when their key arrives or their sender's device is looked up
//! (tern-core's [`CoreWaiting`], the same rules the native SDK runs).

use serde_json::{Value, json};
use tern_core::crypto::waiting::Outcome;
use tern_core::crypto::{WaitingForKeys as CoreWaiting, waiting::MAX_WAITING_FOR_KEYS};
use tern_wire::ids::UserId;
use tern_wire::msg::Message;
use wasm_bindgen::prelude::*;

use crate::js::{JsResult, err, from_json, ms, to_json};
use crate::machine::{InboxShare, Machine, crypto_event, decrypted_json};

fn settled_json(outcomes: Vec<Outcome>) -> JsResult<Vec<Value>> {
    outcomes
        .into_iter()
        .map(|(m, r)| {
            Ok(json!({"message": serde_json::to_value(&m).map_err(err)?,
                "result": decrypted_json(&r)}))
        })
        .collect()
}

/// Flow: every encrypted message → `decrypt(machine, messageJson)` (same result as
/// `Machine.decrypt`; `NoKeyYet` / `UntrustedDevice` ones are kept here); every inbox
/// `key_share` → `onKeyShare(machine, shareJson, now)`: `settled` are messages that became
/// readable (or failed for good); when `hasUnknownSenders()`, query `takeToQuery()`'s users
/// (`machine.onDeviceList` for each), then `retrySenders(machine, users)`; after a backup
/// import, `retryAll(machine)`. Settled entries: `[{message (wire Message), result}]`.
#[wasm_bindgen]
pub struct WaitingForKeys {
    inner: CoreWaiting,
}

#[wasm_bindgen]
impl WaitingForKeys {
    /// `max`: messages kept at most (default 10,000; beyond it the oldest session's are
    /// dropped: history still has them).
    #[wasm_bindgen(constructor)]
    pub fn new(max: Option<u32>) -> WaitingForKeys {
        WaitingForKeys {
            inner: CoreWaiting::new(max.map_or(MAX_WAITING_FOR_KEYS, |m| m as usize)),
        }
    }

    /// Decrypts a wire `Message` (JSON); see `Machine.decrypt` for the result.
    pub fn decrypt(&mut self, machine: &mut Machine, message_json: &str) -> JsResult<String> {
        let message: Message = from_json(message_json, "message")?;
        to_json(&decrypted_json(
            &self.inner.decrypt(&mut machine.inner, &message),
        ))
    }

    /// An inbox `key_share` (decoded JSON). Returns `{events: [crypto events other than
    /// room_key_received], settled: [{message, result}]}`. Then pickle and acknowledge the
    /// share's `inbox_id`.
    #[wasm_bindgen(js_name = onKeyShare)]
    pub fn on_key_share(
        &mut self,
        machine: &mut Machine,
        share_json: &str,
        now_ms: f64,
    ) -> JsResult<String> {
        let share: InboxShare = from_json(share_json, "key share")?;
        let out = self.inner.on_key_share(
            &mut machine.inner,
            share.from_user,
            share.from_device,
            &share.payload,
            ms(now_ms)?,
        );
        let events: Vec<Value> = out.events.iter().map(crypto_event).collect();
        to_json(&json!({"events": events, "settled": settled_json(out.settled)?}))
    }

    /// After the device lists of `users_json` (user ids) were given to the machine: their
    /// waiting messages, tried again. `[{message, result}]`.
    #[wasm_bindgen(js_name = retrySenders)]
    pub fn retry_senders(&mut self, machine: &mut Machine, users_json: &str) -> JsResult<String> {
        let users: Vec<UserId> = from_json(users_json, "user list")?;
        to_json(&settled_json(
            self.inner.retry_senders(&mut machine.inner, &users),
        )?)
    }

    /// Every waiting message tried again (after `backupImport`). `[{message, result}]`.
    #[wasm_bindgen(js_name = retryAll)]
    pub fn retry_all(&mut self, machine: &mut Machine) -> JsResult<String> {
        to_json(&settled_json(self.inner.retry_all(&mut machine.inner))?)
    }

    /// Senders to look up: `[user]` (emptied by this call).
    #[wasm_bindgen(js_name = takeToQuery)]
    pub fn take_to_query(&mut self) -> JsResult<String> {
        to_json(&self.inner.take_to_query())
    }

    #[wasm_bindgen(js_name = hasUnknownSenders)]
    pub fn has_unknown_senders(&self) -> bool {
        self.inner.has_unknown_senders()
    }

    /// Conversations with waiting messages (a backup fetch may help): `[conversation]`.
    pub fn conversations(&self) -> JsResult<String> {
        to_json(&self.inner.conversations())
    }

    pub fn len(&self) -> usize {
        self.inner.len()
    }

    #[wasm_bindgen(js_name = isEmpty)]
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }
}
