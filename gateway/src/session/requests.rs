//! Client requests after authentication: `dispatch` routes each message to the handler of its
//! family (`messaging.rs`, `membership.rs`); session control and presence are small enough to
//! live here.

use super::*;

impl<R: FrameRecv, W: FrameSend> Session<'_, R, W> {
    pub(super) async fn dispatch(&mut self, conn: u64, message: ClientMessage) -> Result<(), End> {
        // Sends have their own buckets (on_send), acks forward only progress, typing is limited
        // by the presence task; everything else shares the device's request bucket.
        if let Some(request_id) = limited_request_id(&message)
            && let Err(retry) = self.rate.take_request()
        {
            return self
                .refuse_rate(request_id, "too many requests from this device", retry)
                .await;
        }
        match message {
            ClientMessage::Send {
                request_id,
                conversation,
                client_msg_id,
                content_type,
                payload,
                files,
            } => {
                let request = SendRequest {
                    conn,
                    request_id,
                    conversation,
                    client_msg_id,
                    content_type,
                    payload,
                    files,
                };
                self.on_send(request).await
            }
            ClientMessage::Ack { conversation, seq } => self.on_ack(conn, conversation, seq).await,
            ClientMessage::History {
                request_id,
                conversation,
                before_seq,
                after_seq,
                limit,
                around_seq,
                since_ms,
                until_ms,
                sender,
            } => {
                let request = HistoryRequest {
                    before_seq,
                    after_seq,
                    limit,
                    around_seq,
                    since_ms,
                    until_ms,
                    sender,
                };
                self.on_history(request_id, conversation, request).await
            }
            ClientMessage::React {
                request_id,
                conversation,
                seq,
                emoji,
                add,
            } => {
                self.on_react(request_id, conversation, seq, &emoji, add)
                    .await
            }
            ClientMessage::CreateConversation {
                request_id,
                kind,
                name,
                description,
                members,
            } => {
                self.on_create_conversation(request_id, kind, &name, &description, &members)
                    .await
            }
            ClientMessage::Invite {
                request_id,
                conversation,
                user,
            } => self.on_invite(request_id, conversation, user).await,
            ClientMessage::AcceptInvite {
                request_id,
                conversation,
            } => self.on_accept_invite(request_id, conversation).await,
            ClientMessage::DeclineInvite {
                request_id,
                conversation,
            } => self.on_decline_invite(request_id, conversation).await,
            ClientMessage::AddMember {
                request_id,
                conversation,
                user,
            } => self.on_add_member(request_id, conversation, user).await,
            ClientMessage::RemoveMember {
                request_id,
                conversation,
                user,
            } => self.on_remove_member(request_id, conversation, user).await,
            ClientMessage::Leave {
                request_id,
                conversation,
            } => self.on_leave(request_id, conversation).await,
            ClientMessage::Block {
                request_id,
                user,
                blocked,
            } => self.on_block(request_id, user, blocked).await,
            ClientMessage::SetPresence { status } => self.on_set_presence(conn, status).await,
            ClientMessage::Typing {
                conversation,
                active,
            } => {
                // Fire and forget: rate limit, membership check and fan-out happen in the
                // presence task; nothing is answered (non-members are silently ignored).
                self.ctx
                    .presence
                    .typing(self.user, conn, conversation, active);
                Ok(())
            }
            ClientMessage::GetDelivered {
                request_id,
                conversation,
            } => self.on_get_delivered(request_id, conversation).await,
            ClientMessage::Resume { cursors } => self.on_resume(&cursors).await,
            ClientMessage::Ping { nonce } => self.reply(&ServerMessage::Pong { nonce }).await,
            ClientMessage::Hello { .. } => {
                self.reply(&ServerMessage::error(
                    0,
                    ErrorCode::InvalidArgument,
                    "already authenticated",
                    false,
                ))
                .await
            }
            ClientMessage::PublishKeys { request_id, keys } => {
                self.on_publish_keys(request_id, keys).await
            }
            ClientMessage::QueryKeys { request_id, users } => {
                self.on_query_keys(request_id, users).await
            }
            ClientMessage::ClaimKeys {
                request_id,
                user,
                devices,
            } => self.on_claim_keys(request_id, user, devices).await,
            ClientMessage::ClaimKeysBatch {
                request_id,
                targets,
            } => self.on_claim_keys_batch(request_id, targets).await,
            ClientMessage::SendKeyShares { request_id, shares } => {
                self.on_send_key_shares(Some(request_id), shares).await
            }
            ClientMessage::KeyShare {
                to_user,
                to_device,
                payload,
            } => {
                let share = tern_wire::msg::KeyShareItem {
                    to_user,
                    to_device,
                    payload,
                };
                self.on_send_key_shares(None, vec![share]).await
            }
            ClientMessage::AckKeyShares { up_to, ids } => self.on_ack_key_shares(up_to, ids).await,
        }
    }

    async fn on_resume(&mut self, cursors: &[Cursor]) -> Result<(), End> {
        if cursors.len() > MAX_RESUME_CURSORS {
            return self
                .reply(&ServerMessage::error(
                    0,
                    ErrorCode::LimitExceeded,
                    "too many cursors",
                    false,
                ))
                .await;
        }
        self.resume(cursors, false).await
    }

    async fn on_set_presence(&mut self, conn: u64, status: PresenceStatus) -> Result<(), End> {
        match status {
            PresenceStatus::Online | PresenceStatus::Away => {
                let away = status == PresenceStatus::Away;
                self.ctx.presence.set_away(self.user, conn, away);
                Ok(())
            }
            PresenceStatus::Offline => {
                self.reply(&ServerMessage::error(
                    0,
                    ErrorCode::InvalidArgument,
                    "a connected device is online or away",
                    false,
                ))
                .await
            }
        }
    }
}

/// The request id to answer a refusal with (0 for requests that carry none), or `None` for
/// messages outside the request bucket.
fn limited_request_id(message: &ClientMessage) -> Option<u64> {
    match message {
        ClientMessage::Send { .. } | ClientMessage::Ack { .. } | ClientMessage::Typing { .. } => {
            None
        }
        ClientMessage::History { request_id, .. }
        | ClientMessage::React { request_id, .. }
        | ClientMessage::CreateConversation { request_id, .. }
        | ClientMessage::Invite { request_id, .. }
        | ClientMessage::AcceptInvite { request_id, .. }
        | ClientMessage::DeclineInvite { request_id, .. }
        | ClientMessage::AddMember { request_id, .. }
        | ClientMessage::RemoveMember { request_id, .. }
        | ClientMessage::Leave { request_id, .. }
        | ClientMessage::PublishKeys { request_id, .. }
        | ClientMessage::ClaimKeys { request_id, .. }
        | ClientMessage::ClaimKeysBatch { request_id, .. }
        | ClientMessage::QueryKeys { request_id, .. }
        | ClientMessage::SendKeyShares { request_id, .. }
        | ClientMessage::Block { request_id, .. }
        | ClientMessage::GetDelivered { request_id, .. } => Some(*request_id),
        ClientMessage::Resume { .. }
        | ClientMessage::Ping { .. }
        | ClientMessage::SetPresence { .. }
        | ClientMessage::Hello { .. }
        | ClientMessage::AckKeyShares { .. }
        | ClientMessage::KeyShare { .. } => Some(0),
    }
}
