//! The end-to-end key service: who may read whose keys, the limits, and the live pushes
//! (`DeviceListChanged`, `KeyShare`). Storage is [`KeyStore`]; the server never parses a key.
//!
//! Authorization: a user may query or claim the keys of, and send key shares to, itself and
//! every user it shares a conversation with (members of its conversations, which includes both
//! ends of a pending 1:1 message request), the inviters and members of groups it is invited to,
//! and users with a pending invitation into one of its conversations (invitations it sent).
//! Everyone else is `forbidden`: the directory is not a way to enumerate users or drain their
//! one-time keys.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tern_wire::ids::{ConversationId, DeviceId, UserId};
use tern_wire::limits::{
    KEY_BUNDLE_FIXED_BYTES, KEY_BUNDLE_UNANSWERED_USER_BYTES, MAX_CLAIMED_DEVICE_BYTES,
    key_bundle_device_bytes,
};
use tern_wire::msg::{ClaimTarget, DeviceKeys, ErrorCode, KeyShareItem, ServerMessage};

use crate::accounts::RateLimiter;
use crate::conversations::MAX_CONTACT_CONVERSATIONS;
use crate::core::Input;
use crate::driver::EngineHandle;
use crate::service::ServiceError;
use crate::store::keys::{
    BackupMeta, BackupPutOutcome, BackupSession, DeviceEntry, InboxEntry, InboxPush, KeyStore,
    PublishOutcome, PublishedKeys,
};
use crate::store::{Store, StoreError};

/// Limits of the key service (configurable; see `gateway/src/config.rs`).
#[derive(Debug, Clone)]
pub struct KeyLimits {
    /// Unclaimed one-time keys one device may hold. 100: clients top up below 50, and a claim
    /// burst of a new 100-member group needs one per member device.
    pub max_one_time_keys_per_device: u32,
    /// Key shares waiting in one device inbox. 10,000: a device offline for weeks in many busy
    /// groups (one share per rotation per sender device), at most 10,000 x 8 KiB = 80 MiB.
    pub max_inbox_entries_per_device: u64,
    /// Inbox entries older than this are dropped when the device connects: a device away that
    /// long restores from the backup or asks its other devices.
    pub inbox_retention: Duration,
    /// One-time keys one user may consume of one other user per minute. Beyond it claims are
    /// answered with the fallback key instead: one-time keys are scarce (100 per device), and a
    /// malicious contact claiming in a loop would otherwise leave the victim's devices with
    /// none, degrading every new session to the fallback key anyway; capping the claimer keeps
    /// honest newcomers' forward secrecy. 50: far above a legitimate client (one claim per
    /// target device per new session).
    pub claims_per_target_per_minute: u32,
    /// Backup session entries per user. 200,000: years of rotations in hundreds of groups.
    pub max_backup_sessions_per_user: u64,
    /// Entries per backup page read.
    pub max_backup_page: u32,
}

impl Default for KeyLimits {
    fn default() -> Self {
        KeyLimits {
            max_one_time_keys_per_device: 100,
            max_inbox_entries_per_device: 10_000,
            inbox_retention: Duration::from_secs(30 * 24 * 3600),
            claims_per_target_per_minute: 50,
            max_backup_sessions_per_user: 200_000,
            max_backup_page: 1_000,
        }
    }
}

/// A `KeyBundle` answer: the devices, and the users of the request left out because the frame
/// was full.
#[derive(Debug, Default)]
pub struct KeyAnswer {
    pub devices: Vec<DeviceKeys>,
    pub unanswered: Vec<UserId>,
}

/// Keeps a `KeyBundle` inside one frame. Every target starts reserved as "unanswered" (16
/// bytes), so listing all the rest as unanswered always fits; answering a target trades its
/// reservation for its devices' bytes.
struct AnswerBudget {
    left: usize,
}

impl AnswerBudget {
    fn new(frame_bytes: usize, targets: usize) -> Result<Self, ServiceError> {
        let reserved = KEY_BUNDLE_FIXED_BYTES + targets * KEY_BUNDLE_UNANSWERED_USER_BYTES;
        match frame_bytes.checked_sub(reserved) {
            Some(left) => Ok(AnswerBudget { left }),
            None => Err(ServiceError::new(
                ErrorCode::LimitExceeded,
                format!(
                    "at most {} users per key request with this server's {frame_bytes}-byte frames",
                    frame_bytes.saturating_sub(KEY_BUNDLE_FIXED_BYTES)
                        / KEY_BUNDLE_UNANSWERED_USER_BYTES
                ),
            )),
        }
    }

    /// Takes `bytes` for one target's devices (releasing its unanswered reservation) if they fit.
    fn take(&mut self, bytes: usize) -> bool {
        match (self.left + KEY_BUNDLE_UNANSWERED_USER_BYTES).checked_sub(bytes) {
            Some(left) => {
                self.left = left;
                true
            }
            None => false,
        }
    }

    /// Takes `bytes` more for a target already taken.
    fn take_more(&mut self, bytes: usize) -> bool {
        match self.left.checked_sub(bytes) {
            Some(left) => {
                self.left = left;
                true
            }
            None => false,
        }
    }

    fn give_back(&mut self, bytes: usize) {
        self.left += bytes;
    }
}

/// Most (claimer, target) pairs tracked by the claim cap (bounds memory).
const MAX_CLAIM_PAIRS: usize = 100_000;
/// Inbox entries sent per page on connect.
pub const INBOX_PAGE: u32 = 256;

pub struct Keys {
    store: Arc<dyn Store>,
    keys: Arc<dyn KeyStore>,
    engine: EngineHandle,
    limits: KeyLimits,
    claims: Mutex<RateLimiter<(UserId, UserId)>>,
}

fn internal(e: StoreError) -> ServiceError {
    tracing::error!(error = %e, "key storage error");
    ServiceError::new(ErrorCode::Internal, "storage error")
}

fn forbidden() -> ServiceError {
    ServiceError::new(
        ErrorCode::Forbidden,
        "you share no conversation with this user",
    )
}

impl Keys {
    pub fn new(
        store: Arc<dyn Store>,
        keys: Arc<dyn KeyStore>,
        engine: EngineHandle,
        limits: KeyLimits,
    ) -> Self {
        let claims = RateLimiter::new(
            limits.claims_per_target_per_minute.max(1),
            Duration::from_secs(60),
            MAX_CLAIM_PAIRS,
        );
        Keys {
            store,
            keys,
            engine,
            limits,
            claims: Mutex::new(claims),
        }
    }

    pub fn limits(&self) -> &KeyLimits {
        &self.limits
    }

    /// `me`, members of its conversations, and inviters and members of groups it is invited
    /// to; plus the ids of its conversations.
    async fn contacts(
        &self,
        me: UserId,
    ) -> Result<(HashSet<UserId>, HashSet<ConversationId>), ServiceError> {
        let mut users = HashSet::from([me]);
        let conversations: HashSet<ConversationId> = self
            .store
            .conversations_of(me)
            .await
            .map_err(internal)?
            .into_iter()
            .take(MAX_CONTACT_CONVERSATIONS)
            .collect();
        for c in &conversations {
            for m in self.store.members(*c).await.map_err(internal)? {
                users.insert(m.user);
            }
        }
        for i in self.store.invitations_of(me).await.map_err(internal)? {
            users.insert(i.inviter);
            for m in self.store.members(i.conversation).await.map_err(internal)? {
                users.insert(m.user);
            }
        }
        Ok((users, conversations))
    }

    /// Whether `me` may see `target`'s keys, by point reads: the hot path (one claim per member
    /// device when a session is set up) must not read every member of every conversation.
    async fn may_see(&self, me: UserId, target: UserId) -> Result<bool, ServiceError> {
        if target == me {
            return Ok(true);
        }
        let conversations: HashSet<ConversationId> = self
            .store
            .conversations_of(me)
            .await
            .map_err(internal)?
            .into_iter()
            .take(MAX_CONTACT_CONVERSATIONS)
            .collect();
        for c in &conversations {
            if self.store.is_member(*c, target).await.map_err(internal)? {
                return Ok(true);
            }
        }
        for i in self.store.invitations_of(me).await.map_err(internal)? {
            if i.inviter == target
                || self
                    .store
                    .is_member(i.conversation, target)
                    .await
                    .map_err(internal)?
            {
                return Ok(true);
            }
        }
        Ok(self
            .store
            .invitations_of(target)
            .await
            .map_err(internal)?
            .iter()
            .any(|i| i.inviter == me || conversations.contains(&i.conversation)))
    }

    /// Refuses unless `me` may see the keys of every one of `targets`.
    async fn authorize(&self, me: UserId, targets: &BTreeSet<UserId>) -> Result<(), ServiceError> {
        if targets.iter().all(|t| *t == me) {
            return Ok(());
        }
        if let [target] = targets.iter().copied().collect::<Vec<_>>().as_slice() {
            return match self.may_see(me, *target).await? {
                true => Ok(()),
                false => Err(forbidden()),
            };
        }
        let (users, conversations) = self.contacts(me).await?;
        for t in targets {
            if users.contains(t) {
                continue;
            }
            // A pending invitation of `t` into one of `me`'s conversations (e.g. sent by me).
            let invited = self
                .store
                .invitations_of(*t)
                .await
                .map_err(internal)?
                .iter()
                .any(|i| i.inviter == me || conversations.contains(&i.conversation));
            if !invited {
                return Err(forbidden());
            }
        }
        Ok(())
    }

    /// Tells every online device of `user`'s contacts (and of `user`) that its devices changed.
    pub async fn device_list_changed(&self, user: UserId) -> Result<(), ServiceError> {
        let (users, _) = self.contacts(user).await?;
        let message = Arc::new(ServerMessage::DeviceListChanged { user });
        self.engine
            .input(Input::Notify {
                users: users.into_iter().collect(),
                message,
            })
            .await
            .map_err(|_| ServiceError::new(ErrorCode::ServerShutdown, "server is shutting down"))
    }

    /// Records that the device connected (device list, last seen).
    pub async fn device_connected(
        &self,
        user: UserId,
        device: DeviceId,
        now_ms: u64,
    ) -> Result<(), ServiceError> {
        self.keys
            .note_device(user, device, now_ms)
            .await
            .map_err(internal)?;
        let cutoff = now_ms.saturating_sub(self.limits.inbox_retention.as_millis() as u64);
        self.keys
            .expire_inbox(device, cutoff)
            .await
            .map_err(internal)?;
        Ok(())
    }

    pub async fn one_time_keys_left(&self, device: DeviceId) -> Result<u32, ServiceError> {
        self.keys.one_time_keys_left(device).await.map_err(internal)
    }

    /// Publishes the connected device's keys; returns its unclaimed one-time key count.
    pub async fn publish(
        &self,
        user: UserId,
        device: DeviceId,
        keys: DeviceKeys,
    ) -> Result<u32, ServiceError> {
        if keys.user != user || keys.device != device {
            return Err(ServiceError::new(
                ErrorCode::Forbidden,
                "keys may only be published for the connected device",
            ));
        }
        if keys.identity_key.is_empty() != keys.signing_key.is_empty() {
            return Err(ServiceError::invalid(
                "identity_key and signing_key are published together",
            ));
        }
        let published = PublishedKeys {
            identity_key: keys.identity_key,
            signing_key: keys.signing_key,
            signature: keys.signature,
            one_time_keys: keys.one_time_keys,
            fallback_key: keys.fallback_key,
        };
        let max = self.limits.max_one_time_keys_per_device;
        match self
            .keys
            .publish_keys(user, device, published, max)
            .await
            .map_err(internal)?
        {
            PublishOutcome::Stored {
                identity_changed,
                one_time_keys_left,
            } => {
                if identity_changed {
                    self.device_list_changed(user).await?;
                }
                Ok(one_time_keys_left)
            }
            PublishOutcome::TooManyOneTimeKeys { stored, max } => Err(ServiceError::new(
                ErrorCode::LimitExceeded,
                format!(
                    "a device holds at most {max} unclaimed one-time keys ({stored} stored); nothing was stored"
                ),
            )),
        }
    }

    /// Identity keys of every device of `users`, as many users (in request order) as fit in a
    /// `KeyBundle` of `frame_bytes`; the rest are returned as unanswered (the client asks again).
    pub async fn query(
        &self,
        me: UserId,
        users: Vec<UserId>,
        frame_bytes: usize,
    ) -> Result<KeyAnswer, ServiceError> {
        let mut seen = HashSet::new();
        let users: Vec<UserId> = users.into_iter().filter(|u| seen.insert(*u)).collect();
        self.authorize(me, &users.iter().copied().collect()).await?;
        let mut budget = AnswerBudget::new(frame_bytes, users.len())?;
        let mut answer = KeyAnswer::default();
        for (i, user) in users.iter().enumerate() {
            let mut devices = self.keys.query_keys(*user).await.map_err(internal)?;
            let bytes: usize = devices.iter().map(key_bundle_device_bytes).sum();
            if !budget.take(bytes) {
                if answer.devices.is_empty() {
                    // One user alone has more devices than a frame holds: answer what fits
                    // rather than nothing (the client would ask forever).
                    tracing::warn!(%user, devices = devices.len(), "device list truncated to one frame");
                    let mut released = false;
                    devices.retain(|d| {
                        let bytes = key_bundle_device_bytes(d);
                        let fits = if released {
                            budget.take_more(bytes)
                        } else {
                            budget.take(bytes)
                        };
                        released |= fits;
                        fits
                    });
                    answer.devices.extend(devices);
                    answer.unanswered.extend_from_slice(&users[i + 1..]);
                } else {
                    answer.unanswered.extend_from_slice(&users[i..]);
                }
                break;
            }
            answer.devices.extend(devices);
        }
        Ok(answer)
    }

    /// One one-time key (or the fallback key) per named device of several users, in request
    /// order, for as many targets as fit in a `KeyBundle` of `frame_bytes`: a target's keys are
    /// consumed only when a frame has room for them at their largest, so the unanswered rest
    /// lost nothing.
    pub async fn claim_batch(
        &self,
        me: UserId,
        targets: Vec<ClaimTarget>,
        frame_bytes: usize,
        now_ms: u64,
    ) -> Result<KeyAnswer, ServiceError> {
        if targets.iter().any(|t| t.devices.is_empty()) {
            return Err(ServiceError::invalid(
                "every ClaimKeysBatch target names its devices (query them first)",
            ));
        }
        let users: BTreeSet<UserId> = targets.iter().map(|t| t.user).collect();
        self.authorize(me, &users).await?;
        let mut budget = AnswerBudget::new(frame_bytes, targets.len())?;
        let mut answer = KeyAnswer::default();
        for (i, target) in targets.iter().enumerate() {
            let reserve = target.devices.len() * MAX_CLAIMED_DEVICE_BYTES;
            if !budget.take(reserve) {
                answer
                    .unanswered
                    .extend(targets[i..].iter().map(|t| t.user));
                break;
            }
            let consume = self.under_claim_cap(me, target.user, now_ms)?;
            let claimed = self
                .keys
                .claim_keys(target.user, target.devices.clone(), consume)
                .await
                .map_err(internal)?;
            let used: usize = claimed.iter().map(key_bundle_device_bytes).sum();
            debug_assert!(used <= reserve, "claimed keys beyond their decode limits");
            budget.give_back(reserve.saturating_sub(used));
            self.notify_low_one_time_keys(&claimed).await?;
            answer.devices.extend(claimed);
        }
        // Each unanswered user appears once, in request order (a client may name a user twice).
        let mut seen = HashSet::new();
        answer.unanswered.retain(|u| seen.insert(*u));
        Ok(answer)
    }

    /// Whether `me` may still consume one-time keys of `target` this minute (and counts it).
    /// Over the cap a claim still succeeds, with the fallback key (see `KeyLimits`).
    fn under_claim_cap(
        &self,
        me: UserId,
        target: UserId,
        now_ms: u64,
    ) -> Result<bool, ServiceError> {
        let mut claims = self.claims.lock().map_err(|_| ServiceError::poisoned())?;
        let under = claims.check(&(me, target), now_ms).is_none();
        if under {
            claims.record(&(me, target), now_ms);
        }
        Ok(under)
    }

    /// One one-time key (or the fallback key) per device of `user`.
    pub async fn claim(
        &self,
        me: UserId,
        user: UserId,
        devices: Vec<DeviceId>,
        now_ms: u64,
    ) -> Result<Vec<DeviceKeys>, ServiceError> {
        self.authorize(me, &BTreeSet::from([user])).await?;
        let consume = self.under_claim_cap(me, user, now_ms)?;
        let claimed = self
            .keys
            .claim_keys(user, devices, consume)
            .await
            .map_err(internal)?;
        self.notify_low_one_time_keys(&claimed).await?;
        Ok(claimed)
    }

    /// Tells each claimed device whose unclaimed one-time keys just fell below a quarter of the
    /// maximum, or to 0, to publish more (a device connected for days would otherwise hand out
    /// only its fallback key once the keys it published at connect are gone). A claim pops one
    /// key per device, so each threshold is crossed once per refill.
    async fn notify_low_one_time_keys(&self, claimed: &[DeviceKeys]) -> Result<(), ServiceError> {
        let low = self.limits.max_one_time_keys_per_device / 4;
        let mut messages = Vec::new();
        for d in claimed.iter().filter(|d| !d.one_time_keys.is_empty()) {
            let left = self
                .keys
                .one_time_keys_left(d.device)
                .await
                .map_err(internal)?;
            if left == 0 || left + 1 == low {
                messages.push((d.device, Arc::new(ServerMessage::OneTimeKeysLow { left })));
            }
        }
        if messages.is_empty() {
            return Ok(());
        }
        self.engine
            .input(Input::NotifyDevices { messages })
            .await
            .map_err(|_| ServiceError::new(ErrorCode::ServerShutdown, "server is shutting down"))
    }

    /// Stores key shares in their devices' inboxes and pushes them live; returns the devices
    /// whose inbox was full.
    pub async fn send_shares(
        &self,
        me: UserId,
        my_device: DeviceId,
        shares: Vec<KeyShareItem>,
        now_ms: u64,
    ) -> Result<Vec<DeviceId>, ServiceError> {
        let targets: BTreeSet<UserId> = shares.iter().map(|s| s.to_user).collect();
        self.authorize(me, &targets).await?;
        let devices: BTreeSet<(UserId, DeviceId)> =
            shares.iter().map(|s| (s.to_user, s.to_device)).collect();
        for (user, device) in &devices {
            let bound = self.store.device(*device).await.map_err(internal)?;
            if bound.is_none_or(|b| b.user != *user) {
                return Err(ServiceError::new(
                    ErrorCode::NotFound,
                    format!("user {user} has no device {device}"),
                ));
            }
        }
        let pushes: Vec<InboxPush> = shares
            .iter()
            .map(|s| InboxPush {
                to_device: s.to_device,
                from_user: me,
                from_device: my_device,
                payload: s.payload.clone(),
            })
            .collect();
        let ids = self
            .keys
            .push_inbox(pushes, now_ms, self.limits.max_inbox_entries_per_device)
            .await
            .map_err(internal)?;
        let mut full = BTreeSet::new();
        let mut live = Vec::new();
        for (share, id) in shares.into_iter().zip(ids) {
            match id {
                None => {
                    full.insert(share.to_device);
                }
                Some(inbox_id) => live.push((
                    share.to_device,
                    Arc::new(ServerMessage::KeyShare {
                        from_user: me,
                        from_device: my_device,
                        payload: share.payload,
                        inbox_id,
                    }),
                )),
            }
        }
        if !live.is_empty() {
            // Best effort: stored shares reach an offline device when it connects.
            let _ = self
                .engine
                .input(Input::NotifyDevices { messages: live })
                .await;
        }
        Ok(full.into_iter().collect())
    }

    /// Pending inbox entries of the device after `after`, at most `INBOX_PAGE`.
    pub async fn inbox(
        &self,
        device: DeviceId,
        after: u64,
    ) -> Result<Vec<InboxEntry>, ServiceError> {
        self.keys
            .inbox(device, after, INBOX_PAGE)
            .await
            .map_err(internal)
    }

    /// Deletes the listed inbox entries of `device` (what its connection delivered and the
    /// device acknowledged); returns how many were still there.
    pub async fn ack(&self, device: DeviceId, inbox_ids: Vec<u64>) -> Result<u64, ServiceError> {
        self.keys
            .ack_inbox(device, inbox_ids)
            .await
            .map_err(internal)
    }

    pub async fn devices(&self, me: UserId) -> Result<Vec<DeviceEntry>, ServiceError> {
        self.keys.devices_of(me).await.map_err(internal)
    }

    /// Revokes one of `me`'s devices: deletes its keys, inbox and binding, revokes the token
    /// bound to it (closing its live connections) and tells contacts. `NotFound` for a device
    /// that is not `me`'s (another user's device is indistinguishable from a missing one).
    pub async fn revoke_device(&self, me: UserId, device: DeviceId) -> Result<(), ServiceError> {
        let listed = self
            .keys
            .delete_device(me, device)
            .await
            .map_err(internal)?;
        let binding = self
            .store
            .unbind_device(device, me)
            .await
            .map_err(internal)?;
        if !listed && binding.is_none() {
            return Err(ServiceError::new(ErrorCode::NotFound, "no such device"));
        }
        if let Some(binding) = binding {
            self.store
                .delete_token(&binding.token_hash)
                .await
                .map_err(internal)?;
            let _ = self
                .engine
                .input(Input::TokenRevoked {
                    token_hash: binding.token_hash,
                })
                .await;
        }
        self.device_list_changed(me).await
    }

    pub async fn put_backup(&self, me: UserId, backup: BackupMeta) -> Result<(), ServiceError> {
        self.keys.put_backup(me, backup).await.map_err(internal)
    }

    pub async fn backup(&self, me: UserId) -> Result<Option<BackupMeta>, ServiceError> {
        self.keys.backup(me).await.map_err(internal)
    }

    pub async fn put_backup_sessions(
        &self,
        me: UserId,
        version: String,
        sessions: Vec<BackupSession>,
    ) -> Result<u64, ServiceError> {
        let max = self.limits.max_backup_sessions_per_user;
        match self
            .keys
            .put_backup_sessions(me, version, sessions, max)
            .await
            .map_err(internal)?
        {
            BackupPutOutcome::Stored { total } => Ok(total),
            BackupPutOutcome::NoBackup => Err(ServiceError::new(
                ErrorCode::NotFound,
                "no key backup; create one first",
            )),
            BackupPutOutcome::StaleVersion => Err(ServiceError::new(
                ErrorCode::Conflict,
                "the backup version is not the current one",
            )),
            BackupPutOutcome::TooMany { max } => Err(ServiceError::new(
                ErrorCode::LimitExceeded,
                format!("a backup holds at most {max} session entries; nothing was stored"),
            )),
        }
    }

    pub async fn backup_sessions(
        &self,
        me: UserId,
        conversation: Option<ConversationId>,
        after: Option<(ConversationId, String)>,
        limit: u32,
    ) -> Result<Vec<BackupSession>, ServiceError> {
        let limit = limit.clamp(1, self.limits.max_backup_page);
        self.keys
            .backup_sessions(me, conversation, after, limit)
            .await
            .map_err(internal)
    }
}
