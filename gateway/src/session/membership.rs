//! Conversations and who is in them: create, invite, accept, decline, add, remove, leave,
//! block.
//! The rules (owner checks, limits, notifications) live in `tern_engine::conversations`.

use super::*;

impl<R: FrameRecv, W: FrameSend> Session<'_, R, W> {
    pub(super) async fn on_create_conversation(
        &mut self,
        request_id: u64,
        kind: ConversationKind,
        name: &str,
        description: &str,
        members: &[UserId],
    ) -> Result<(), End> {
        let conversations = &self.ctx.conversations;
        let result = match kind {
            ConversationKind::Direct => match members {
                [peer] => conversations
                    .open_direct(self.user, *peer)
                    .await
                    .map(|(info, _)| info),
                _ => Err(ServiceError::invalid(
                    "a 1:1 conversation has exactly one other member",
                )),
            },
            ConversationKind::Group => {
                conversations
                    .create_group(self.user, name, description, members)
                    .await
            }
        };
        self.reply(&conversation_or_error(request_id, result)).await
    }

    pub(super) async fn on_invite(
        &mut self,
        request_id: u64,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<(), End> {
        let result = self
            .ctx
            .conversations
            .invite(self.user, conversation, user)
            .await;
        self.reply(&ok_or_error(request_id, result)).await
    }

    pub(super) async fn on_accept_invite(
        &mut self,
        request_id: u64,
        conversation: ConversationId,
    ) -> Result<(), End> {
        // The joiner's devices also get the `Conversation` announcement; this is the answer to
        // the request.
        let result = self
            .ctx
            .conversations
            .accept_invite(self.user, conversation)
            .await;
        if result.is_ok() {
            // Presence may now flow between the joiner and the members.
            self.ctx.presence.relations_changed(&[self.user]).await;
        }
        self.reply(&conversation_or_error(request_id, result)).await
    }

    pub(super) async fn on_block(
        &mut self,
        request_id: u64,
        user: UserId,
        blocked: bool,
    ) -> Result<(), End> {
        let result = self
            .ctx
            .conversations
            .set_block(self.user, user, blocked)
            .await;
        if result.is_ok() && !blocked {
            // Unblocked: presence flows again where they share an accepted conversation.
            self.ctx
                .presence
                .relations_changed(&[self.user, user])
                .await;
        }
        self.reply(&ok_or_error(request_id, result)).await
    }

    pub(super) async fn on_decline_invite(
        &mut self,
        request_id: u64,
        conversation: ConversationId,
    ) -> Result<(), End> {
        let result = self
            .ctx
            .conversations
            .decline_invite(self.user, conversation)
            .await;
        self.reply(&ok_or_error(request_id, result)).await
    }

    pub(super) async fn on_add_member(
        &mut self,
        request_id: u64,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<(), End> {
        let result = self
            .ctx
            .conversations
            .add_member(self.user, conversation, user)
            .await;
        self.reply(&conversation_or_error(request_id, result)).await
    }

    pub(super) async fn on_remove_member(
        &mut self,
        request_id: u64,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<(), End> {
        let result = self
            .ctx
            .conversations
            .remove_member(self.user, conversation, user)
            .await;
        self.reply(&ok_or_error(request_id, result)).await
    }

    pub(super) async fn on_leave(
        &mut self,
        request_id: u64,
        conversation: ConversationId,
    ) -> Result<(), End> {
        let result = self.ctx.conversations.leave(self.user, conversation).await;
        // Live copies still queued for this conversation are not dropped here: the engine
        // stopped fanning out to this user before the answer was sent.
        self.reply(&ok_or_error(request_id, result)).await
    }
}

fn conversation_or_error(
    request_id: u64,
    result: Result<tern_wire::msg::ConversationInfo, ServiceError>,
) -> ServerMessage {
    match result {
        Ok(info) => ServerMessage::Conversation { request_id, info },
        Err(e) => service_error(request_id, e),
    }
}
