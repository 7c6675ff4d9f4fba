//! `Delivery`: cursors, de-duplication, gap detection and the ack-after-taken rule (tern-core's
//! `Delivery`). Feed it every `deliver`, `sync_complete`, `backlog_truncated` notice, own
//! `send_ack` and gap-fetch `history_page`; `pop()` surfaces messages in seq order, each
//! once; `acksDue()` says which acks to send (only for what the page has taken).

use serde::Deserialize;
use serde_json::{Value, json};
use tern_core::protocol::delivery::{self, Delivered, Popped, SkipReason};
use tern_wire::ids::ConversationId;
use tern_wire::msg::{Cursor, Message, Notice, ServerMessage};
use wasm_bindgen::prelude::*;

use crate::js::{JsResult, err, from_json, num, parse, to_json, uint};

fn cursors_json(cursors: &[Cursor]) -> JsResult<String> {
    to_json(&cursors)
}

/// The delivery state of one device. The page's own events (`push`, any JSON) are queued in
/// arrival order with the messages.
#[wasm_bindgen]
pub struct Delivery {
    inner: delivery::Delivery<Value>,
}

#[wasm_bindgen]
impl Delivery {
    /// Starts from the cursors the page persisted (`[{conversation, seq}]`, may be `[]`).
    #[wasm_bindgen(constructor)]
    pub fn new(cursors_json: &str) -> JsResult<Delivery> {
        let cursors: Vec<Cursor> = from_json(cursors_json, "cursors")?;
        Ok(Delivery {
            inner: delivery::Delivery::new(&cursors),
        })
    }

    /// A new connection is being made: resume replay follows until `sync_complete`.
    #[wasm_bindgen(js_name = onConnect)]
    pub fn on_connect(&mut self) {
        self.inner.on_connect();
    }

    #[wasm_bindgen(js_name = isSynced)]
    pub fn is_synced(&self) -> bool {
        self.inner.is_synced()
    }

    /// The cursors to put in the Hello (`hello(…, resumeCursors())`): everything seen.
    #[wasm_bindgen(js_name = resumeCursors)]
    pub fn resume_cursors(&self) -> JsResult<String> {
        cursors_json(&self.inner.resume_cursors())
    }

    /// Cursors of what the page has taken (`[{conversation, seq}]`): persist these.
    pub fn cursors(&self) -> JsResult<String> {
        cursors_json(&self.inner.cursors())
    }

    /// Routes a decoded server message (JSON) that belongs to delivery: `deliver`,
    /// `sync_complete`, a `backlog_truncated` notice. Returns whether it was taken (false:
    /// the page handles it). Own `send_ack`s go to `onOwnSend`, gap pages to `onHistoryPage`.
    #[wasm_bindgen(js_name = onServerMessage)]
    pub fn on_server_message(&mut self, server_json: &str) -> JsResult<bool> {
        let msg: ServerMessage = from_json(server_json, "server message")?;
        match msg {
            ServerMessage::Deliver { message } => self.inner.on_deliver(message),
            ServerMessage::SyncComplete => self.inner.on_sync_complete(),
            ServerMessage::Notice {
                notice:
                    Notice::BacklogTruncated {
                        conversation,
                        from_seq,
                        to_seq,
                    },
            } => self
                .inner
                .on_backlog_truncated(conversation, from_seq, to_seq),
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// A `deliver`'s message (tern-wire `Message` JSON).
    #[wasm_bindgen(js_name = onDeliver)]
    pub fn on_deliver(&mut self, message_json: &str) -> JsResult<()> {
        let message: Message = from_json(message_json, "message")?;
        self.inner.on_deliver(message);
        Ok(())
    }

    #[wasm_bindgen(js_name = onSyncComplete)]
    pub fn on_sync_complete(&mut self) {
        self.inner.on_sync_complete();
    }

    /// Our own message was stored as `seq` (its `send_ack`): never delivered back to us, so
    /// it must not look like a gap.
    #[wasm_bindgen(js_name = onOwnSend)]
    pub fn on_own_send(&mut self, conversation: &str, seq: f64) -> JsResult<()> {
        self.inner
            .on_own_send(parse(conversation, "conversation id")?, uint(seq, "seq")?);
        Ok(())
    }

    /// The first gap to fill, as the `history` ClientMessage JSON to send with `request_id`,
    /// or `undefined` when there is none. Feed the answer to `onHistoryPage`.
    #[wasm_bindgen(js_name = nextGapFetch)]
    pub fn next_gap_fetch(&self, request_id: f64) -> JsResult<Option<String>> {
        let request_id = uint(request_id, "request_id")?;
        Ok(self.inner.next_gap_fetch().map(|g| {
            json!({"type": "history", "request_id": request_id, "conversation": g.conversation,
                "before_seq": g.before_seq, "after_seq": g.after_seq, "limit": g.limit})
            .to_string()
        }))
    }

    #[wasm_bindgen(js_name = hasGap)]
    pub fn has_gap(&self) -> bool {
        self.inner.has_gap()
    }

    /// The answer to a gap fetch: the `history_page` JSON, or for a refusal (`error`: not a
    /// member any more, not found) `{conversation, messages: []}`. A page that does not
    /// shrink the gap skips the range (surfaced as `skipped`, reason `unavailable`).
    #[wasm_bindgen(js_name = onHistoryPage)]
    pub fn on_history_page(&mut self, page_json: &str) -> JsResult<()> {
        #[derive(Deserialize)]
        struct Page {
            conversation: ConversationId,
            #[serde(default)]
            messages: Vec<Message>,
        }
        let page: Page = from_json(page_json, "history page")?;
        self.inner.on_history(page.conversation, page.messages);
        Ok(())
    }

    /// Queues one of the page's own events (any JSON), surfaced by `pop` in arrival order.
    pub fn push(&mut self, event_json: &str) -> JsResult<()> {
        let event: Value = from_json(event_json, "event")?;
        self.inner.push(event);
        Ok(())
    }

    #[wasm_bindgen(js_name = hasReady)]
    pub fn has_ready(&self) -> bool {
        self.inner.has_ready()
    }

    /// The page takes the next entry: `{kind: "message", message} | {kind: "sync_complete"} |
    /// {kind: "skipped", conversation, from_seq, to_seq, reason: backlog_truncated|unavailable}
    /// | {kind: "event", event} | {kind: "ack_only"}` (nothing to show, an ack became due), or
    /// `undefined` when empty. Taking it makes its seq acknowledgeable.
    pub fn pop(&mut self) -> JsResult<Option<String>> {
        let out = match self.inner.pop() {
            Popped::Empty => return Ok(None),
            Popped::AckOnly => json!({"kind": "ack_only"}),
            Popped::Event(Delivered::Message(m)) => {
                json!({"kind": "message", "message": serde_json::to_value(&m).map_err(err)?})
            }
            Popped::Event(Delivered::SyncComplete) => json!({"kind": "sync_complete"}),
            Popped::Event(Delivered::Skipped {
                conversation,
                from_seq,
                to_seq,
                reason,
            }) => json!({"kind": "skipped", "conversation": conversation, "from_seq": from_seq,
            "to_seq": to_seq, "reason": match reason {
                SkipReason::BacklogTruncated => "backlog_truncated",
                SkipReason::Unavailable => "unavailable",
            }}),
            Popped::Event(Delivered::Other(event)) => json!({"kind": "event", "event": event}),
        };
        Ok(Some(out.to_string()))
    }

    /// Acks to send now, as `ack` ClientMessages: `[{type: "ack", conversation, seq}]` (one
    /// per conversation, the highest seq taken). Call `onAckSent(conversation, seq)` for each
    /// that went out.
    #[wasm_bindgen(js_name = acksDue)]
    pub fn acks_due(&self) -> JsResult<String> {
        let acks: Vec<Value> = self
            .inner
            .acks_due()
            .into_iter()
            .map(|(c, seq)| json!({"type": "ack", "conversation": c, "seq": num(seq)}))
            .collect();
        to_json(&acks)
    }

    #[wasm_bindgen(js_name = onAckSent)]
    pub fn on_ack_sent(&mut self, conversation: &str, seq: f64) -> JsResult<()> {
        self.inner
            .on_ack_sent(parse(conversation, "conversation id")?, uint(seq, "seq")?);
        Ok(())
    }
}
