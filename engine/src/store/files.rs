//! Metadata of uploaded files (issue 13), behind its own narrow trait so that other backends
//! (ScyllaDB, issue 15) implement it without touching the main [`Store`](super::Store) trait.
//!
//! The bytes themselves live elsewhere (a staging file while the upload runs, then the object
//! store); this trait only knows what was declared, how far the upload got, whether a message
//! references it, and each user's usage (the quota counter).
//!
//! Durability contract: every write is durable and atomic (the record, its indexes and the
//! owner's usage counter together) when its call returns `Ok`. Conditional writes
//! ([`FileStore::create_upload`], [`FileStore::delete_upload`] with a condition) check and
//! write atomically: of concurrent calls that cannot both pass, exactly one does.

use tern_wire::ids::{ConversationId, MessageId, UserId};

use super::StoreResult;

/// Longest declared content type any backend must store (RFC 6838 caps names at 127 bytes).
pub const MAX_FILE_CONTENT_TYPE_BYTES: usize = 127;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadState {
    /// Bytes are still arriving (in a staging file): nothing is visible.
    Staging,
    /// Every declared byte arrived and the object is in the object store.
    Finished,
}

/// One upload, which becomes a file once finished. The upload id is the file id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadRecord {
    pub id: MessageId,
    pub owner: UserId,
    pub conversation: ConversationId,
    /// Declared (and, once finished, actual) size in bytes.
    pub size: u64,
    pub content_type: String,
    /// Bytes durably received.
    pub offset: u64,
    pub state: UploadState,
    /// A sent message names it: kept until deleted explicitly.
    pub referenced: bool,
    pub created_ms: u64,
    /// Staging: the last progress (idle time counts from it). Finished: when it finished
    /// (unreferenced time counts from it). Never changes once referenced.
    pub updated_ms: u64,
}

/// Limits checked atomically with a creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadLimits {
    /// Most declared bytes (open and finished uploads together) one user may hold.
    pub quota_bytes: u64,
    /// Most uploads in staging one user may have at once.
    pub max_open: u32,
}

/// One user's usage: what the quota and the open-upload limit count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FileUsage {
    /// Declared sizes of the user's uploads, open and finished.
    pub bytes: u64,
    /// Uploads in staging.
    pub open: u32,
}

/// What a creation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateOutcome {
    Created,
    /// Refused, nothing written: the size would take the user's usage past the quota.
    QuotaExceeded {
        used: u64,
    },
    /// Refused, nothing written: the user already has `max_open` uploads in staging.
    TooManyOpen,
}

/// When a deletion goes ahead (checked atomically with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteIf {
    /// Whatever its state (an abort, a lying client).
    Always,
    /// Only if still in staging and idle since at most this time (the sweeper).
    StagingIdleSince(u64),
    /// Only if finished, unreferenced and finished at most at this time (the sweeper): a Send
    /// that references it concurrently wins or loses as a whole.
    UnreferencedSince(u64),
    /// Only if still in staging (the owner aborts: a finished file is not deleted by DELETE).
    Staging,
}

#[async_trait::async_trait]
pub trait FileStore: Send + Sync + 'static {
    /// Stores a new upload (state `Staging`, offset 0) and adds its size to the owner's usage,
    /// unless that passes a limit (see [`CreateOutcome`]). `AlreadyExists` for a taken id.
    async fn create_upload(
        &self,
        record: UploadRecord,
        limits: UploadLimits,
    ) -> StoreResult<CreateOutcome>;
    async fn upload(&self, id: MessageId) -> StoreResult<Option<UploadRecord>>;
    /// Records progress of an upload in staging: `offset` (at most its size) and `now_ms` as
    /// its last activity. Returns false, writing nothing, when there is no such upload in
    /// staging.
    async fn set_offset(&self, id: MessageId, offset: u64, now_ms: u64) -> StoreResult<bool>;
    /// Staging with every byte received → finished at `now_ms`. Returns false, writing
    /// nothing, otherwise.
    async fn finish_upload(&self, id: MessageId, now_ms: u64) -> StoreResult<bool>;
    /// Marks a finished upload referenced (idempotent; it then shows in
    /// [`FileStore::conversation_files`] and is never swept). False when not finished.
    async fn reference(&self, id: MessageId) -> StoreResult<bool>;
    /// Deletes the record when `condition` holds, releasing its bytes (and its open slot)
    /// from the owner's usage. Returns the deleted record.
    async fn delete_upload(
        &self,
        id: MessageId,
        condition: DeleteIf,
    ) -> StoreResult<Option<UploadRecord>>;
    async fn usage(&self, user: UserId) -> StoreResult<FileUsage>;
    /// Referenced files of a conversation, oldest first; the newest `limit` of them.
    async fn conversation_files(
        &self,
        conversation: ConversationId,
        limit: usize,
    ) -> StoreResult<Vec<UploadRecord>>;
    /// At most `limit` uploads the sweeper may delete: in staging with `updated_ms <
    /// staging_before_ms`, and finished unreferenced with `updated_ms < unreferenced_before_ms`.
    async fn sweepable(
        &self,
        staging_before_ms: u64,
        unreferenced_before_ms: u64,
        limit: usize,
    ) -> StoreResult<Vec<UploadRecord>>;
}
