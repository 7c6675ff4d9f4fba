//! End-to-end key requests: publish, query and claim keys, key shares into device inboxes, and
//! the inbox drain on connect (before the resume replay, so keys precede the messages that need
//! them). The logic and authorization live in `tern_engine::keys::Keys`; this is the glue.

use tern_engine::keys::INBOX_PAGE;
use tern_wire::msg::{ClaimTarget, DeviceKeys, KeyShareItem};

use super::*;

impl<R: FrameRecv, W: FrameSend> Session<'_, R, W> {
    pub(super) async fn on_publish_keys(
        &mut self,
        request_id: u64,
        keys: DeviceKeys,
    ) -> Result<(), End> {
        let answer = match self.ctx.keys.publish(self.user, self.device, keys).await {
            Ok(_) => ServerMessage::Ok { request_id },
            Err(e) => service_error(request_id, e),
        };
        self.reply(&answer).await
    }

    pub(super) async fn on_query_keys(
        &mut self,
        request_id: u64,
        users: Vec<UserId>,
    ) -> Result<(), End> {
        let frame = self.ctx.limits.max_frame_bytes;
        let answer = match self.ctx.keys.query(self.user, users, frame).await {
            Ok(answer) => ServerMessage::KeyBundle {
                request_id,
                devices: answer.devices,
                unanswered: answer.unanswered,
            },
            Err(e) => service_error(request_id, e),
        };
        self.reply(&answer).await
    }

    pub(super) async fn on_claim_keys(
        &mut self,
        request_id: u64,
        user: UserId,
        devices: Vec<DeviceId>,
    ) -> Result<(), End> {
        let answer = match self
            .ctx
            .keys
            .claim(self.user, user, devices, now_ms())
            .await
        {
            Ok(devices) => ServerMessage::KeyBundle {
                request_id,
                devices,
                unanswered: Vec::new(),
            },
            Err(e) => service_error(request_id, e),
        };
        self.reply(&answer).await
    }

    pub(super) async fn on_claim_keys_batch(
        &mut self,
        request_id: u64,
        targets: Vec<ClaimTarget>,
    ) -> Result<(), End> {
        let frame = self.ctx.limits.max_frame_bytes;
        let answer = match self
            .ctx
            .keys
            .claim_batch(self.user, targets, frame, now_ms())
            .await
        {
            Ok(answer) => ServerMessage::KeyBundle {
                request_id,
                devices: answer.devices,
                unanswered: answer.unanswered,
            },
            Err(e) => service_error(request_id, e),
        };
        self.reply(&answer).await
    }

    /// `request_id == None`: the legacy single `KeyShare`, which has no answer (errors are
    /// still reported, with request id 0).
    pub(super) async fn on_send_key_shares(
        &mut self,
        request_id: Option<u64>,
        shares: Vec<KeyShareItem>,
    ) -> Result<(), End> {
        let result = self
            .ctx
            .keys
            .send_shares(self.user, self.device, shares, now_ms())
            .await;
        match (request_id, result) {
            (Some(request_id), Ok(full)) => {
                self.reply(&ServerMessage::KeySharesStored { request_id, full })
                    .await
            }
            (None, Ok(full)) if full.is_empty() => Ok(()),
            (None, Ok(_)) => {
                self.reply(&ServerMessage::error(
                    0,
                    ErrorCode::LimitExceeded,
                    "the recipient device's key inbox is full; the share was not stored",
                    false,
                ))
                .await
            }
            (request_id, Err(e)) => self.reply(&service_error(request_id.unwrap_or(0), e)).await,
        }
    }

    /// `ids` (what the device handled and persisted) are deleted exactly; without them, the
    /// entries up to `up_to` that this connection delivered.
    pub(super) async fn on_ack_key_shares(&mut self, up_to: u64, ids: Vec<u64>) -> Result<(), End> {
        let delivered = if ids.is_empty() {
            self.inbox.ack(up_to)
        } else {
            self.inbox.acked(&ids);
            ids
        };
        if delivered.is_empty() {
            return Ok(());
        }
        match self.ctx.keys.ack(self.device, delivered).await {
            Ok(_) => Ok(()),
            Err(e) => self.reply(&service_error(0, e)).await,
        }
    }

    /// Sends every pending inbox entry of this device, oldest first.
    pub(super) async fn send_inbox(&mut self) -> Result<(), End> {
        loop {
            let page = self
                .ctx
                .keys
                .inbox(self.device, self.inbox.drained_up_to())
                .await
                .map_err(|e| End::fatal(e.code, e.message))?;
            let last_page = page.len() < INBOX_PAGE as usize;
            for entry in page {
                self.inbox.drained(entry.inbox_id);
                self.reply(&ServerMessage::KeyShare {
                    from_user: entry.from_user,
                    from_device: entry.from_device,
                    payload: entry.payload,
                    inbox_id: entry.inbox_id,
                })
                .await?;
            }
            if last_page {
                return Ok(());
            }
        }
    }
}
