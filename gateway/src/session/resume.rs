//! Resume replay: everything after a device's cursors, without gaps or duplicates.

use super::*;

impl<R: FrameRecv, W: FrameSend> Session<'_, R, W> {
    /// Sends every message after the device's position in each of its conversations, in order,
    /// then `SyncComplete`. Live frames that arrive meanwhile are held (bounded) and written
    /// afterwards, minus copies of what the replay sent.
    pub(super) async fn resume(
        &mut self,
        cursors: &[Cursor],
        all_conversations: bool,
    ) -> Result<(), End> {
        let given: HashMap<ConversationId, u64> =
            cursors.iter().map(|c| (c.conversation, c.seq)).collect();
        let store = self.ctx.store.clone();
        let internal = |_| End::fatal(ErrorCode::Internal, "storage unavailable");
        let mut targets = Vec::new();
        if all_conversations {
            for conversation in store.conversations_of(self.user).await.map_err(internal)? {
                let after = match given.get(&conversation) {
                    Some(seq) => *seq,
                    None => store
                        .cursor(self.device, conversation)
                        .await
                        .map_err(internal)?,
                };
                targets.push((conversation, after));
            }
        } else {
            for (conversation, after) in given {
                if store
                    .is_member(conversation, self.user)
                    .await
                    .map_err(internal)?
                {
                    targets.push((conversation, after));
                }
            }
        }
        let mut held: VecDeque<Outbound> = VecDeque::new();
        let hold_limit = self.ctx.send_queue_frames;
        for (conversation, after) in targets {
            let mut after = after.max(self.delivered.get(&conversation).copied().unwrap_or(0));
            let last = store.last_seq(conversation).await.map_err(internal)?;
            if last > after && last - after > self.ctx.resume_backlog {
                // Nothing is deleted: the device fetches the skipped range with History when
                // (and if) the user scrolls there.
                let to_seq = last - self.ctx.resume_backlog;
                let notice = Notice::BacklogTruncated {
                    conversation,
                    from_seq: after + 1,
                    to_seq,
                };
                self.reply(&ServerMessage::Notice { notice }).await?;
                after = to_seq;
                self.delivered.insert(conversation, after);
            }
            loop {
                // One Deliver frame per message, each within the frame limit by the payload
                // limit; pages bounded by bytes keep the memory held here bounded too.
                let query = HistoryQuery::after(conversation, after, REPLAY_PAGE)
                    .with_max_bytes(REPLAY_PAGE_BYTES);
                let page = store.history(query).await.map_err(internal)?;
                let mut cost = 0u64;
                for message in &page {
                    debug_assert!(message.seq > after, "history pages ascend");
                    after = message.seq;
                    cost += tern_engine::store::message_cost(message);
                }
                let full = page.len() as u32 >= REPLAY_PAGE || cost > REPLAY_PAGE_BYTES;
                for message in page {
                    self.reply(&ServerMessage::Deliver { message }).await?;
                }
                self.delivered.insert(conversation, after);
                while let Ok(frame) = self.frames.try_recv() {
                    if held.len() >= hold_limit {
                        return Err(End::fatal(
                            ErrorCode::SlowConsumer,
                            "too much live traffic during resume",
                        ));
                    }
                    held.push_back(frame);
                }
                if !full {
                    break;
                }
            }
        }
        self.reply(&ServerMessage::SyncComplete).await?;
        while let Some(frame) = held.pop_front() {
            self.write_outbound(frame).await?;
        }
        Ok(())
    }
}
