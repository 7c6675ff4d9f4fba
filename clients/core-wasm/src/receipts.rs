//! `DeliveryMarks`: the "delivered" state of one's own messages (tern-core's
//! [`CoreMarks`]): merge every `delivered` ServerMessage, then ask per message.

use tern_core::protocol::receipts::DeliveryMarks as CoreMarks;
use tern_wire::ids::{ConversationId, UserId};
use tern_wire::msg::DeliveryMark;
use wasm_bindgen::prelude::*;

use crate::js::{JsResult, from_json, parse, to_json, uint};

/// Flow: for every `delivered` ServerMessage (a live push, or the answer to `get_delivered`
/// sent when a conversation opens and after each reconnect), `apply(conversation, marksJson)`;
/// when it returns true, redraw the sender's own messages with `state(...)`.
#[wasm_bindgen]
#[derive(Default)]
pub struct DeliveryMarks {
    inner: CoreMarks,
}

#[wasm_bindgen]
impl DeliveryMarks {
    #[wasm_bindgen(constructor)]
    pub fn new() -> DeliveryMarks {
        DeliveryMarks::default()
    }

    /// `marksJson`: the message's `marks` (`[{user, seq}]`). True when a mark moved.
    pub fn apply(&mut self, conversation: &str, marks_json: &str) -> JsResult<bool> {
        let conversation: ConversationId = parse(conversation, "conversation")?;
        let marks: Vec<DeliveryMark> = from_json(marks_json, "marks")?;
        Ok(self.inner.apply(conversation, &marks))
    }

    /// `{delivered, recipients}` for the message `seq` sent by `sender`; `membersJson`: the
    /// conversation's member user ids (`["uuid", ...]`).
    pub fn state(
        &self,
        conversation: &str,
        seq: f64,
        sender: &str,
        members_json: &str,
    ) -> JsResult<String> {
        let conversation: ConversationId = parse(conversation, "conversation")?;
        let sender: UserId = parse(sender, "sender")?;
        let members: Vec<UserId> = from_json(members_json, "members")?;
        to_json(
            &self
                .inner
                .state(conversation, uint(seq, "seq")?, sender, &members),
        )
    }

    pub fn forget(&mut self, conversation: &str) -> JsResult<()> {
        self.inner.forget(parse(conversation, "conversation")?);
        Ok(())
    }
}
