//! `Outbox`: messages composed (possibly offline) and not yet acknowledged, in compose order,
//! within explicit limits (tern-core's rules). The page persists: `compose` returns the entry
//! for it to write to IndexedDB (in one transaction with the timeline copy), and after a
//! reload `Outbox.fromLoaded` takes back what IndexedDB holds. Removals (`onAcked`, `remove`,
//! a rejection in `Drain.onSendFailed`) return the entry the page then deletes.

use std::collections::HashSet;
use std::convert::Infallible;

use serde::{Deserialize, Serialize};
use tern_core::crypto::MAX_CONTENT_BYTES;
use tern_core::protocol::outbox::{self, OutboxError, OutboxStore};
use tern_core::{OutboxLimits, PendingSend};
use tern_wire::ids::{ConversationId, MessageId};
use wasm_bindgen::prelude::*;

use crate::js::{JsResult, err, fail, from_json, ms, parse, parse_client_msg_id, to_json};

/// Persistence is the page's (IndexedDB is asynchronous): the core's store calls are no-ops
/// and the page writes what the methods return.
pub(crate) struct PageStore;

impl OutboxStore for PageStore {
    type Error = Infallible;
    fn load(&mut self) -> Result<Vec<PendingSend>, Infallible> {
        Ok(Vec::new())
    }
    fn append(&mut self, _entry: &PendingSend) -> Result<(), Infallible> {
        Ok(())
    }
    fn remove(&mut self, _client_msg_id: u128) -> Result<(), Infallible> {
        Ok(())
    }
}

/// One entry as the page stores it: `{client_msg_id (32 hex), conversation, content_type,
/// payload (hex), created_ms}`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EntryJson {
    #[serde(with = "crate::js::hex_u128")]
    client_msg_id: u128,
    conversation: ConversationId,
    content_type: String,
    #[serde(with = "crate::js::hex_bytes")]
    payload: Vec<u8>,
    created_ms: u64,
}

impl From<&PendingSend> for EntryJson {
    fn from(e: &PendingSend) -> Self {
        EntryJson {
            client_msg_id: e.client_msg_id,
            conversation: e.conversation,
            content_type: e.content_type.clone(),
            payload: e.payload.clone(),
            created_ms: e.created_ms,
        }
    }
}

impl From<EntryJson> for PendingSend {
    fn from(e: EntryJson) -> Self {
        PendingSend {
            client_msg_id: e.client_msg_id,
            conversation: e.conversation,
            content_type: e.content_type,
            payload: e.payload,
            created_ms: e.created_ms,
        }
    }
}

pub(crate) fn entry_json(e: &PendingSend) -> JsResult<String> {
    to_json(&EntryJson::from(e))
}

/// `{max_entries, max_bytes, max_payload_bytes}`, each optional.
#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LimitsJson {
    max_entries: Option<usize>,
    max_bytes: Option<usize>,
    max_payload_bytes: Option<usize>,
}

/// The core's limits plus the page's bound on one message's plaintext: every web message is
/// end-to-end encrypted, so its default is the crypto core's content limit (40 KiB, which
/// keeps the ciphertext inside a 64 KiB frame).
#[derive(Clone, Copy)]
struct Limits {
    outbox: OutboxLimits,
    max_payload_bytes: usize,
}

fn limits(json: Option<String>) -> JsResult<Limits> {
    let l: LimitsJson = match json {
        Some(j) => from_json(&j, "outbox limits")?,
        None => LimitsJson::default(),
    };
    let limits = Limits {
        outbox: OutboxLimits {
            max_entries: l.max_entries.unwrap_or(OutboxLimits::DEFAULT_MAX_ENTRIES),
            max_bytes: l.max_bytes.unwrap_or(OutboxLimits::DEFAULT_MAX_BYTES),
        },
        max_payload_bytes: l.max_payload_bytes.unwrap_or(MAX_CONTENT_BYTES),
    };
    if limits.outbox.max_entries == 0 || limits.outbox.max_bytes == 0 {
        return Err(fail("outbox limits must be at least 1"));
    }
    Ok(limits)
}

/// Pending sends in compose order. Send `front()` (encrypt it with `Machine.encrypt` as it
/// leaves), one at a time; remove it on its `send_ack` (`onAcked`).
#[wasm_bindgen]
pub struct Outbox {
    pub(crate) inner: outbox::Outbox<PageStore>,
    max_payload_bytes: usize,
}

#[wasm_bindgen]
impl Outbox {
    /// An empty outbox. `limits_json`: `{max_entries (10000), max_bytes (64 MiB),
    /// max_payload_bytes (40960)}`, each optional, or `undefined`.
    #[wasm_bindgen(constructor)]
    pub fn new(limits_json: Option<String>) -> JsResult<Outbox> {
        Self::from_loaded("[]", limits_json)
    }

    /// The outbox over the entries the page loaded from IndexedDB (`[entry]` in compose
    /// order: sort by `created_ms`, then by how they were stored). Entries beyond the limits
    /// are kept (limits lowered since): only new ones are refused. A repeated
    /// `client_msg_id` throws (the store is corrupt).
    #[wasm_bindgen(js_name = fromLoaded)]
    pub fn from_loaded(entries_json: &str, limits_json: Option<String>) -> JsResult<Outbox> {
        let limits = limits(limits_json)?;
        let entries: Vec<EntryJson> = from_json(entries_json, "outbox entries")?;
        let mut seen = HashSet::new();
        for e in &entries {
            if !seen.insert(e.client_msg_id) {
                return Err(fail(format!(
                    "outbox entries repeat client_msg_id {:032x}",
                    e.client_msg_id
                )));
            }
        }
        let loaded = entries.into_iter().map(PendingSend::from).collect();
        Ok(Outbox {
            inner: outbox::Outbox::from_loaded(PageStore, loaded, limits.outbox),
            max_payload_bytes: limits.max_payload_bytes,
        })
    }

    /// Queues a new message under a fresh random `client_msg_id` and returns the entry JSON
    /// for the page to store. Throws when the payload is over `max_payload_bytes` (`message
    /// too large: N bytes, at most M`) or the outbox is full (`outbox full: …` with counts and
    /// limits); nothing queued is touched then.
    pub fn compose(
        &mut self,
        conversation: &str,
        content_type: &str,
        payload: &[u8],
        now_ms: f64,
    ) -> JsResult<String> {
        let conversation: ConversationId = parse(conversation, "conversation id")?;
        if payload.len() > self.max_payload_bytes {
            return Err(fail(format!(
                "message too large: {} bytes, at most {}",
                payload.len(),
                self.max_payload_bytes
            )));
        }
        if content_type.is_empty() {
            return Err(fail("content type is empty"));
        }
        let id = self
            .inner
            .compose(
                conversation,
                content_type,
                payload.to_vec(),
                ms(now_ms)?,
                || MessageId::random().0,
            )
            .map_err(|e: OutboxError<Infallible>| err(e))?;
        self.entry(id)
    }

    /// A `send_ack` arrived (the decoded ServerMessage JSON): the message is stored, its entry
    /// leaves the outbox and is returned (delete it from IndexedDB); `undefined` when it was
    /// not queued here (an id of another conversation stays).
    #[wasm_bindgen(js_name = onAcked)]
    pub fn on_acked(&mut self, send_ack_json: &str) -> JsResult<Option<String>> {
        #[derive(Deserialize)]
        struct SendAck {
            conversation: ConversationId,
            #[serde(with = "crate::js::hex_u128")]
            client_msg_id: u128,
        }
        let ack: SendAck = from_json(send_ack_json, "send_ack")?;
        let removed = self
            .inner
            .on_acked(ack.conversation, ack.client_msg_id)
            .map_err(err)?;
        removed.as_ref().map(entry_json).transpose()
    }

    /// Removes an entry (e.g. the user deleted a queued message); returns it, or `undefined`.
    pub fn remove(&mut self, client_msg_id: &str) -> JsResult<Option<String>> {
        let removed = self
            .inner
            .remove(parse_client_msg_id(client_msg_id)?)
            .map_err(err)?;
        removed.as_ref().map(entry_json).transpose()
    }

    /// The oldest entry (the next to send), or `undefined` when empty.
    pub fn front(&self) -> JsResult<Option<String>> {
        self.inner.front().map(entry_json).transpose()
    }

    pub fn get(&self, client_msg_id: &str) -> JsResult<Option<String>> {
        self.inner
            .get(parse_client_msg_id(client_msg_id)?)
            .map(entry_json)
            .transpose()
    }

    /// Every entry in compose order: `[entry]`.
    pub fn entries(&self) -> JsResult<String> {
        to_json(&self.inner.iter().map(EntryJson::from).collect::<Vec<_>>())
    }

    pub fn len(&self) -> usize {
        self.inner.len()
    }

    #[wasm_bindgen(js_name = isEmpty)]
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// Bytes counted against `max_bytes` (payload + content type of every entry).
    pub fn bytes(&self) -> usize {
        self.inner.bytes()
    }

    /// `{max_entries, max_bytes, max_payload_bytes}` (to show the queue limit, FR-20).
    pub fn limits(&self) -> JsResult<String> {
        let l = self.inner.limits();
        to_json(&LimitsJson {
            max_entries: Some(l.max_entries),
            max_bytes: Some(l.max_bytes),
            max_payload_bytes: Some(self.max_payload_bytes),
        })
    }
}

impl Outbox {
    fn entry(&self, id: u128) -> JsResult<String> {
        let entry = self
            .inner
            .get(id)
            .ok_or_else(|| fail("composed entry vanished"))?;
        entry_json(entry)
    }
}
