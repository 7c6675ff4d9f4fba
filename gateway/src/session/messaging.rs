//! Messages and what hangs off them: send, acknowledge, history pages, reactions.

use super::*;

impl<R: FrameRecv, W: FrameSend> Session<'_, R, W> {
    pub(super) async fn on_send(&mut self, request: SendRequest) -> Result<(), End> {
        self.ctx.metrics.of(self.transport).messages_in.inc();
        self.ctx.engine.send(request).await.map_err(engine_gone)
    }

    pub(super) async fn on_ack(
        &mut self,
        conn: u64,
        conversation: ConversationId,
        seq: u64,
    ) -> Result<(), End> {
        // A device can only acknowledge what it was sent: this keeps cursors of foreign
        // conversations (or beyond the end) out of the store.
        let Some(sent) = self.delivered.get(&conversation).copied() else {
            return Ok(());
        };
        let seq = seq.min(sent);
        self.ctx
            .engine
            .input(Input::Ack {
                conn,
                conversation,
                seq,
            })
            .await
            .map_err(engine_gone)
    }

    pub(super) async fn on_history(
        &mut self,
        request_id: u64,
        conversation: ConversationId,
        before_seq: u64,
        after_seq: u64,
        limit: u32,
    ) -> Result<(), End> {
        let answer = match self
            .ctx
            .conversations
            .history(self.user, conversation, before_seq, after_seq, limit)
            .await
        {
            Ok((messages, has_more)) => {
                match self.ctx.reactions.for_page(conversation, &messages).await {
                    Ok(reactions) => ServerMessage::HistoryPage {
                        request_id,
                        conversation,
                        messages,
                        reactions,
                        has_more,
                    },
                    Err(e) => service_error(request_id, e),
                }
            }
            Err(e) => service_error(request_id, e),
        };
        self.reply(&answer).await
    }

    pub(super) async fn on_react(
        &mut self,
        request_id: u64,
        conversation: ConversationId,
        seq: u64,
        emoji: &str,
        add: bool,
    ) -> Result<(), End> {
        let result = self
            .ctx
            .reactions
            .react(self.user, conversation, seq, emoji, add)
            .await;
        self.reply(&ok_or_error(request_id, result)).await
    }
}

fn engine_gone<E>(_: E) -> End {
    End::fatal(ErrorCode::ServerShutdown, "server is shutting down")
}
