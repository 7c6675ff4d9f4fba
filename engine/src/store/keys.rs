//! End-to-end key material the server stores and routes but never reads: the key directory
//! (device identities, one-time keys, fallback keys), the per-device inbox of key shares, the
//! user's device list, and the encrypted key backup. Behind its own narrow trait beside
//! [`ReactionStore`](super::reactions::ReactionStore), so it evolves without touching
//! [`Store`](super::Store).
//!
//! Durability contract: every write is durable and atomic when its call returns `Ok`.
//! [`KeyStore::claim_keys`] pops one-time keys atomically: of concurrent claims no two get the
//! same key, and a claim finding none left gets the fallback key, which is never consumed.
//!
//! The store knows nothing of who may read whose keys: the caller ([`crate::keys::Keys`])
//! checks that first. The store enforces the per-device and per-user counts, because only it
//! can check them atomically with the write.

use tern_wire::ids::{ConversationId, DeviceId, UserId};
use tern_wire::msg::DeviceKeys;

use super::StoreResult;

/// Longest backup version string any backend must store.
pub const MAX_BACKUP_VERSION_BYTES: usize = 64;
/// Longest backup session id any backend must store.
pub const MAX_BACKUP_SESSION_ID_BYTES: usize = 128;

/// A device's public identity and keys as a publish carries them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PublishedKeys {
    pub identity_key: Vec<u8>,
    pub signing_key: Vec<u8>,
    pub signature: Vec<u8>,
    /// Appended to the stored ones.
    pub one_time_keys: Vec<Vec<u8>>,
    /// Non-empty replaces the stored fallback key.
    pub fallback_key: Vec<u8>,
}

/// What a publish did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishOutcome {
    Stored {
        /// The identity (identity key, signing key, signature) was new or differs from the
        /// stored one: a device-list change contacts must hear about.
        identity_changed: bool,
        /// Unclaimed one-time keys of the device after the publish.
        one_time_keys_left: u32,
    },
    /// Refused, nothing written: the device would hold more one-time keys than allowed.
    TooManyOneTimeKeys { stored: u32, max: u32 },
}

/// One device of a user, as its owner lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceEntry {
    pub device: DeviceId,
    pub created_ms: u64,
    pub last_seen_ms: u64,
    /// The published Curve25519 identity key (empty when the device never published).
    pub identity_key: Vec<u8>,
}

/// One key share waiting in a device inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxEntry {
    pub inbox_id: u64,
    pub from_user: UserId,
    pub from_device: DeviceId,
    pub created_ms: u64,
    pub payload: Vec<u8>,
}

/// A key share to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxPush {
    pub to_device: DeviceId,
    pub from_user: UserId,
    pub from_device: DeviceId,
    pub payload: Vec<u8>,
}

/// The backup's header: the client's version string and its opaque metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupMeta {
    pub version: String,
    pub meta: Vec<u8>,
}

/// One backed-up (encrypted) inbound session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupSession {
    pub conversation: ConversationId,
    pub session_id: String,
    pub data: Vec<u8>,
}

/// What storing backup sessions did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupPutOutcome {
    /// All stored (inserted or replaced); `total` entries of the user now.
    Stored { total: u64 },
    /// The user has no backup.
    NoBackup,
    /// The version is not the current one: nothing stored.
    StaleVersion,
    /// Storing them would exceed the per-user entry limit: nothing stored.
    TooMany { max: u64 },
}

#[async_trait::async_trait]
pub trait KeyStore: Send + Sync + 'static {
    // ---- device list ----
    /// Records that `device` of `user` connected at `now_ms` (creating its entry).
    async fn note_device(&self, user: UserId, device: DeviceId, now_ms: u64) -> StoreResult<()>;
    /// The user's devices in device-id order.
    async fn devices_of(&self, user: UserId) -> StoreResult<Vec<DeviceEntry>>;
    /// Deletes everything of the device: device-list entry, identity, one-time and fallback
    /// keys, inbox. Returns whether the device was listed for `user`.
    async fn delete_device(&self, user: UserId, device: DeviceId) -> StoreResult<bool>;

    // ---- key directory ----
    /// Sets or replaces the identity, appends one-time keys (at most `max_one_time_keys` held,
    /// else nothing is written) and replaces the fallback key when given.
    async fn publish_keys(
        &self,
        user: UserId,
        device: DeviceId,
        keys: PublishedKeys,
        max_one_time_keys: u32,
    ) -> StoreResult<PublishOutcome>;
    /// Identity only (no one-time or fallback keys) of every device of `user` that published.
    async fn query_keys(&self, user: UserId) -> StoreResult<Vec<DeviceKeys>>;
    /// For each device of `user` that published (only those in `devices` when non-empty):
    /// identity plus one one-time key popped atomically when `consume` and one is left,
    /// otherwise no one-time key and the fallback key (not consumed).
    async fn claim_keys(
        &self,
        user: UserId,
        devices: Vec<DeviceId>,
        consume: bool,
    ) -> StoreResult<Vec<DeviceKeys>>;
    async fn one_time_keys_left(&self, device: DeviceId) -> StoreResult<u32>;

    // ---- device inbox ----
    /// Stores each share unless its device's inbox holds `max_entries` already. Returns, per
    /// push in order, its inbox id or `None` (inbox full, not stored).
    async fn push_inbox(
        &self,
        pushes: Vec<InboxPush>,
        now_ms: u64,
        max_entries: u64,
    ) -> StoreResult<Vec<Option<u64>>>;
    /// Entries with `inbox_id > after`, ascending, at most `limit`.
    async fn inbox(&self, device: DeviceId, after: u64, limit: u32)
    -> StoreResult<Vec<InboxEntry>>;
    /// Deletes exactly the entries `inbox_ids` (ids not stored are ignored); returns how many
    /// were deleted.
    async fn ack_inbox(&self, device: DeviceId, inbox_ids: Vec<u64>) -> StoreResult<u64>;
    /// Deletes entries created before `cutoff_ms`; returns how many.
    async fn expire_inbox(&self, device: DeviceId, cutoff_ms: u64) -> StoreResult<u64>;

    // ---- key backup ----
    /// Creates or replaces the backup header; a version different from the stored one deletes
    /// every stored session entry.
    async fn put_backup(&self, user: UserId, backup: BackupMeta) -> StoreResult<()>;
    async fn backup(&self, user: UserId) -> StoreResult<Option<BackupMeta>>;
    /// Upserts session entries under `version` (see [`BackupPutOutcome`]).
    async fn put_backup_sessions(
        &self,
        user: UserId,
        version: String,
        sessions: Vec<BackupSession>,
        max_entries: u64,
    ) -> StoreResult<BackupPutOutcome>;
    /// Entries ordered by (conversation, session id): only `conversation`'s when given, strictly
    /// after `after` (a (conversation, session id) position), at most `limit`.
    async fn backup_sessions(
        &self,
        user: UserId,
        conversation: Option<ConversationId>,
        after: Option<(ConversationId, String)>,
        limit: u32,
    ) -> StoreResult<Vec<BackupSession>>;
}
