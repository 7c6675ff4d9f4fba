//! Messages and what hangs off them: send, acknowledge, history pages, reactions.

use super::limits::QuotaCheck;
use super::*;
use tern_engine::paging::{PageBudget, PageCost};

impl<R: FrameRecv, W: FrameSend> Session<'_, R, W> {
    /// Per-device rate limits and the storage quota are checked here, before the engine's
    /// queue: a refused send costs its neighbours nothing and is never sequenced.
    pub(super) async fn on_send(&mut self, request: SendRequest) -> Result<(), End> {
        self.ctx.metrics.of(self.transport).messages_in.inc();
        let bytes = request.payload.len() as u64;
        if let Err(retry) = self.rate.take_send(bytes) {
            return self
                .refuse_rate(
                    request.request_id,
                    "too many messages from this device",
                    retry,
                )
                .await;
        }
        if let Some(refusal) = self.over_quota(request.request_id, bytes).await {
            self.rate.refund_send(bytes);
            return self.reply(&refusal).await;
        }
        if let Some(refusal) = self.refused_files(&request).await {
            self.rate.refund_send(bytes);
            return self.reply(&refusal).await;
        }
        self.ctx.engine.send(request).await.map_err(engine_gone)
    }

    /// Issue 13: a Send naming files is refused (never sequenced) unless each is a finished
    /// upload of this user in this conversation; accepted ones are marked referenced (kept).
    async fn refused_files(&mut self, request: &SendRequest) -> Option<ServerMessage> {
        if request.files.is_empty() {
            return None;
        }
        let checked = self
            .ctx
            .files
            .check_send(self.user, request.conversation, &request.files)
            .await;
        let (code, message) = match checked {
            Ok(()) => return None,
            Err(crate::files::SendRefusal::Invalid(m)) => (ErrorCode::InvalidArgument, m),
            Err(crate::files::SendRefusal::Unavailable(m)) => {
                tracing::warn!(error = %m, "checking the files of a send");
                (ErrorCode::Internal, "storage unavailable, retry".to_owned())
            }
        };
        Some(ServerMessage::error(
            request.request_id,
            code,
            message,
            false,
        ))
    }

    /// The refusal when `bytes` more would exceed the user's storage quota.
    async fn over_quota(&mut self, request_id: u64, bytes: u64) -> Option<ServerMessage> {
        loop {
            match self.rate.check_quota(bytes) {
                QuotaCheck::Fits => return None,
                QuotaCheck::NeedsRead => match self.ctx.store.stored_bytes(self.user).await {
                    Ok(stored) => self.rate.quota_read(stored),
                    Err(e) => {
                        tracing::warn!(error = %e, "reading stored bytes for the quota");
                        return Some(ServerMessage::error(
                            request_id,
                            ErrorCode::Internal,
                            "storage unavailable, retry",
                            false,
                        ));
                    }
                },
                QuotaCheck::Exceeded { stored, quota } => {
                    return Some(ServerMessage::error(
                        request_id,
                        ErrorCode::LimitExceeded,
                        format!(
                            "storage quota exceeded: {stored} of {quota} payload bytes used, \
                             this message needs {bytes} more"
                        ),
                        false,
                    ));
                }
            }
        }
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
        // Only progress is forwarded, so acks cannot flood the engine: at most one per message
        // the device was sent.
        let acked = self.acked.entry(conversation).or_insert(0);
        if seq <= *acked {
            return Ok(());
        }
        *acked = seq;
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

    /// Every member's delivery mark: what a sender needs to show "delivered" after it opens a
    /// conversation or reconnects (live pushes reach it only while connected).
    pub(super) async fn on_get_delivered(
        &mut self,
        request_id: u64,
        conversation: ConversationId,
    ) -> Result<(), End> {
        match self
            .ctx
            .conversations
            .delivery_marks(self.user, conversation)
            .await
        {
            Ok(marks) => {
                self.reply(&ServerMessage::Delivered {
                    request_id,
                    conversation,
                    marks,
                })
                .await
            }
            Err(e) => self.reply(&service_error(request_id, e)).await,
        }
    }

    pub(super) async fn on_history(
        &mut self,
        request_id: u64,
        conversation: ConversationId,
        request: HistoryRequest,
    ) -> Result<(), End> {
        // Every page fits in one frame of the negotiated size: cut by bytes (has_more set).
        let max_frame = self.ctx.limits.max_frame_bytes;
        let budget = (max_frame - PAGE_HEADROOM_BYTES) as u64;
        let page = self
            .ctx
            .conversations
            .history_page(
                self.user,
                conversation,
                request,
                PageBudget {
                    max_bytes: budget,
                    cost: PageCost::WIRE,
                },
            )
            .await;
        let mut page = match page {
            Ok(page) => page,
            Err(e) => return self.reply(&service_error(request_id, e)).await,
        };
        let mut reactions = match self
            .ctx
            .reactions
            .for_page(conversation, &page.messages)
            .await
        {
            Ok(reactions) => reactions,
            Err(e) => return self.reply(&service_error(request_id, e)).await,
        };
        page.fit(&mut reactions, &request, budget, PageCost::WIRE);
        let mut page = ServerMessage::HistoryPage {
            request_id,
            conversation,
            messages: page.messages,
            reactions,
            has_more: page.has_more,
            has_more_before: page.has_more_before,
            has_more_after: page.has_more_after,
        };
        let mut frame = tern_wire::encode_server(&page);
        if frame.len() > max_frame
            && let ServerMessage::HistoryPage { reactions, .. } = &mut page
        {
            // Only a single message with many reactions can get here (the estimates are upper
            // bounds): its reactions are left out rather than the frame limit broken.
            reactions.clear();
            frame = tern_wire::encode_server(&page);
        }
        debug_assert!(
            frame.len() <= max_frame,
            "a history page of one message always fits in a frame"
        );
        self.write(&frame).await
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
