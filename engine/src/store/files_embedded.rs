//! [`FileStore`] on the embedded store's fjall database, in keyspaces of its own.
//!
//! # Layout
//!
//! Integers and ids big-endian as in [`super::embedded`].
//!
//! | keyspace         | key                                               | value                     |
//! |------------------|---------------------------------------------------|---------------------------|
//! | `file_uploads`   | id (16)                                           | the record (postcard)     |
//! | `file_usage`     | user (16)                                         | bytes (8), open (4)       |
//! | `file_by_conv`   | conversation (16), updated_ms (8), id (16)        | empty (referenced only)   |
//! | `file_sweep`     | kind (1: 0 staging, 1 unreferenced), updated_ms (8), id (16) | empty          |
//!
//! `file_sweep` holds every upload the sweeper may one day delete, ordered by the time its
//! idleness counts from, so a sweep reads only expired entries. A referenced file leaves it and
//! enters `file_by_conv`.
//!
//! # Atomicity
//!
//! Every write runs under one process-local mutex (read, check, write) and commits one fjall
//! batch with `PersistMode::SyncAll`: all or nothing, durable on return.

use std::sync::{Arc, Mutex};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Readable};
use serde::{Deserialize, Serialize};
use tern_wire::ids::{ConversationId, MessageId, UserId};

use super::embedded::EmbeddedStore;
use super::files::{
    CreateOutcome, DeleteIf, FileStore, FileUsage, MAX_FILE_CONTENT_TYPE_BYTES, UploadLimits,
    UploadRecord, UploadState,
};
use super::{StoreError, StoreResult};

/// File metadata kept in the embedded store's database. Cheap to share behind an `Arc`.
pub struct EmbeddedFiles {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EmbeddedFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedFiles").finish_non_exhaustive()
    }
}

struct Inner {
    db: Database,
    uploads: Keyspace,
    usage: Keyspace,
    by_conversation: Keyspace,
    sweep: Keyspace,
    write_lock: Mutex<()>,
}

fn backend(e: fjall::Error) -> StoreError {
    StoreError::Backend(format!("fjall (files): {e}"))
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("files: malformed {what}"))
}

/// The on-disk form of a record (the id is the key).
#[derive(Serialize, Deserialize)]
struct Stored {
    owner: u128,
    conversation: u128,
    size: u64,
    content_type: String,
    offset: u64,
    finished: bool,
    referenced: bool,
    created_ms: u64,
    updated_ms: u64,
}

fn encode(r: &UploadRecord) -> StoreResult<Vec<u8>> {
    postcard::to_allocvec(&Stored {
        owner: r.owner.as_u128(),
        conversation: r.conversation.as_u128(),
        size: r.size,
        content_type: r.content_type.clone(),
        offset: r.offset,
        finished: r.state == UploadState::Finished,
        referenced: r.referenced,
        created_ms: r.created_ms,
        updated_ms: r.updated_ms,
    })
    .map_err(|e| StoreError::Backend(format!("encoding an upload record: {e}")))
}

fn decode(id: MessageId, bytes: &[u8]) -> StoreResult<UploadRecord> {
    let s: Stored = postcard::from_bytes(bytes).map_err(|_| corrupt("upload record"))?;
    Ok(UploadRecord {
        id,
        owner: UserId(s.owner),
        conversation: ConversationId(s.conversation),
        size: s.size,
        content_type: s.content_type,
        offset: s.offset,
        state: if s.finished {
            UploadState::Finished
        } else {
            UploadState::Staging
        },
        referenced: s.referenced,
        created_ms: s.created_ms,
        updated_ms: s.updated_ms,
    })
}

const SWEEP_STAGING: u8 = 0;
const SWEEP_UNREFERENCED: u8 = 1;

fn sweep_key(kind: u8, at_ms: u64, id: MessageId) -> Vec<u8> {
    let mut k = Vec::with_capacity(25);
    k.push(kind);
    k.extend_from_slice(&at_ms.to_be_bytes());
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// The sweep entry of a record (`None` once referenced: never swept).
fn sweep_key_of(r: &UploadRecord) -> Option<Vec<u8>> {
    match (r.state, r.referenced) {
        (UploadState::Staging, _) => Some(sweep_key(SWEEP_STAGING, r.updated_ms, r.id)),
        (UploadState::Finished, false) => Some(sweep_key(SWEEP_UNREFERENCED, r.updated_ms, r.id)),
        (UploadState::Finished, true) => None,
    }
}

fn conversation_key(r: &UploadRecord) -> Vec<u8> {
    let mut k = Vec::with_capacity(40);
    k.extend_from_slice(&r.conversation.to_be_bytes());
    k.extend_from_slice(&r.updated_ms.to_be_bytes());
    k.extend_from_slice(&r.id.to_be_bytes());
    k
}

fn id_of_tail(key: &[u8]) -> StoreResult<MessageId> {
    let start = key
        .len()
        .checked_sub(16)
        .ok_or_else(|| corrupt("index key"))?;
    key.get(start..)
        .and_then(|b| <[u8; 16]>::try_from(b).ok())
        .map(MessageId::from_be_bytes)
        .ok_or_else(|| corrupt("index key"))
}

fn encode_usage(u: FileUsage) -> [u8; 12] {
    let mut v = [0u8; 12];
    v[..8].copy_from_slice(&u.bytes.to_be_bytes());
    v[8..].copy_from_slice(&u.open.to_be_bytes());
    v
}

fn decode_usage(bytes: &[u8]) -> StoreResult<FileUsage> {
    let bytes = <[u8; 12]>::try_from(bytes).map_err(|_| corrupt("usage"))?;
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[..8]);
    let mut o = [0u8; 4];
    o.copy_from_slice(&bytes[8..]);
    Ok(FileUsage {
        bytes: u64::from_be_bytes(b),
        open: u32::from_be_bytes(o),
    })
}

impl EmbeddedFiles {
    /// Opens (creating if needed) the file keyspaces in `store`'s database. Call at start-up.
    pub fn open(store: &EmbeddedStore) -> StoreResult<EmbeddedFiles> {
        let db = store.database();
        let keyspace = |name: &str| {
            db.keyspace(name, KeyspaceCreateOptions::default)
                .map_err(backend)
        };
        let inner = Inner {
            uploads: keyspace("file_uploads")?,
            usage: keyspace("file_usage")?,
            by_conversation: keyspace("file_by_conv")?,
            sweep: keyspace("file_sweep")?,
            db: db.clone(),
            write_lock: Mutex::new(()),
        };
        Ok(EmbeddedFiles {
            inner: Arc::new(inner),
        })
    }

    async fn run<T, F>(&self, f: F) -> StoreResult<T>
    where
        F: FnOnce(&Inner) -> StoreResult<T> + Send + 'static,
        T: Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| StoreError::Backend(format!("storage task did not complete: {e}")))?
    }
}

impl Inner {
    fn batch(&self) -> fjall::OwnedWriteBatch {
        self.db.batch().durability(Some(PersistMode::SyncAll))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.write_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn get(&self, id: MessageId) -> StoreResult<Option<UploadRecord>> {
        match self.uploads.get(id.to_be_bytes()).map_err(backend)? {
            Some(v) => Ok(Some(decode(id, &v)?)),
            None => Ok(None),
        }
    }

    fn usage_of(&self, user: UserId) -> StoreResult<FileUsage> {
        match self.usage.get(user.to_be_bytes()).map_err(backend)? {
            Some(v) => decode_usage(&v),
            None => Ok(FileUsage::default()),
        }
    }

    fn put_usage(&self, batch: &mut fjall::OwnedWriteBatch, user: UserId, u: FileUsage) {
        if u == FileUsage::default() {
            batch.remove(&self.usage, user.to_be_bytes());
        } else {
            batch.insert(&self.usage, user.to_be_bytes(), encode_usage(u));
        }
    }

    /// Replaces `old` by `new` with its indexes (same id).
    fn rewrite(
        &self,
        batch: &mut fjall::OwnedWriteBatch,
        old: &UploadRecord,
        new: &UploadRecord,
    ) -> StoreResult<()> {
        if let Some(k) = sweep_key_of(old) {
            batch.remove(&self.sweep, k);
        }
        if let Some(k) = sweep_key_of(new) {
            batch.insert(&self.sweep, k, []);
        }
        if new.referenced && !old.referenced {
            batch.insert(&self.by_conversation, conversation_key(new), []);
        }
        batch.insert(&self.uploads, new.id.to_be_bytes(), encode(new)?);
        Ok(())
    }

    fn create(&self, r: &UploadRecord, limits: UploadLimits) -> StoreResult<CreateOutcome> {
        if r.content_type.len() > MAX_FILE_CONTENT_TYPE_BYTES {
            return Err(StoreError::Backend(format!(
                "content type longer than {MAX_FILE_CONTENT_TYPE_BYTES} bytes"
            )));
        }
        let _guard = self.lock();
        if self.get(r.id)?.is_some() {
            return Err(StoreError::AlreadyExists(format!("upload {}", r.id)));
        }
        let usage = self.usage_of(r.owner)?;
        if usage.open >= limits.max_open {
            return Ok(CreateOutcome::TooManyOpen);
        }
        let after = usage.bytes.checked_add(r.size);
        if after.is_none_or(|b| b > limits.quota_bytes) {
            return Ok(CreateOutcome::QuotaExceeded { used: usage.bytes });
        }
        let record = UploadRecord {
            state: UploadState::Staging,
            offset: 0,
            referenced: false,
            ..r.clone()
        };
        let mut batch = self.batch();
        batch.insert(&self.uploads, record.id.to_be_bytes(), encode(&record)?);
        if let Some(k) = sweep_key_of(&record) {
            batch.insert(&self.sweep, k, []);
        }
        self.put_usage(
            &mut batch,
            record.owner,
            FileUsage {
                bytes: usage.bytes + record.size,
                open: usage.open + 1,
            },
        );
        batch.commit().map_err(backend)?;
        Ok(CreateOutcome::Created)
    }

    fn set_offset(&self, id: MessageId, offset: u64, now_ms: u64) -> StoreResult<bool> {
        let _guard = self.lock();
        let Some(old) = self.get(id)? else {
            return Ok(false);
        };
        if old.state != UploadState::Staging || offset > old.size {
            return Ok(false);
        }
        let new = UploadRecord {
            offset,
            updated_ms: now_ms.max(old.updated_ms),
            ..old.clone()
        };
        let mut batch = self.batch();
        self.rewrite(&mut batch, &old, &new)?;
        batch.commit().map_err(backend)?;
        Ok(true)
    }

    fn finish(&self, id: MessageId, now_ms: u64) -> StoreResult<bool> {
        let _guard = self.lock();
        let Some(old) = self.get(id)? else {
            return Ok(false);
        };
        if old.state != UploadState::Staging || old.offset != old.size {
            return Ok(false);
        }
        let new = UploadRecord {
            state: UploadState::Finished,
            updated_ms: now_ms.max(old.updated_ms),
            ..old.clone()
        };
        let usage = self.usage_of(old.owner)?;
        let mut batch = self.batch();
        self.rewrite(&mut batch, &old, &new)?;
        self.put_usage(
            &mut batch,
            old.owner,
            FileUsage {
                open: usage.open.saturating_sub(1),
                ..usage
            },
        );
        batch.commit().map_err(backend)?;
        Ok(true)
    }

    fn reference(&self, id: MessageId) -> StoreResult<bool> {
        let _guard = self.lock();
        let Some(old) = self.get(id)? else {
            return Ok(false);
        };
        if old.state != UploadState::Finished {
            return Ok(false);
        }
        if old.referenced {
            return Ok(true);
        }
        let new = UploadRecord {
            referenced: true,
            ..old.clone()
        };
        let mut batch = self.batch();
        self.rewrite(&mut batch, &old, &new)?;
        batch.commit().map_err(backend)?;
        Ok(true)
    }

    fn delete(&self, id: MessageId, condition: DeleteIf) -> StoreResult<Option<UploadRecord>> {
        let _guard = self.lock();
        let Some(old) = self.get(id)? else {
            return Ok(None);
        };
        let staging = old.state == UploadState::Staging;
        let go = match condition {
            DeleteIf::Always => true,
            DeleteIf::Staging => staging,
            DeleteIf::StagingIdleSince(ms) => staging && old.updated_ms <= ms,
            DeleteIf::UnreferencedSince(ms) => !staging && !old.referenced && old.updated_ms <= ms,
        };
        if !go {
            return Ok(None);
        }
        let usage = self.usage_of(old.owner)?;
        let mut batch = self.batch();
        batch.remove(&self.uploads, id.to_be_bytes());
        if let Some(k) = sweep_key_of(&old) {
            batch.remove(&self.sweep, k);
        }
        if old.referenced {
            batch.remove(&self.by_conversation, conversation_key(&old));
        }
        self.put_usage(
            &mut batch,
            old.owner,
            FileUsage {
                bytes: usage.bytes.saturating_sub(old.size),
                open: if staging {
                    usage.open.saturating_sub(1)
                } else {
                    usage.open
                },
            },
        );
        batch.commit().map_err(backend)?;
        Ok(Some(old))
    }

    fn conversation_files(
        &self,
        conversation: ConversationId,
        limit: usize,
    ) -> StoreResult<Vec<UploadRecord>> {
        let snapshot = self.db.snapshot();
        let mut ids = Vec::new();
        for kv in snapshot
            .prefix(&self.by_conversation, conversation.to_be_bytes())
            .rev()
            .take(limit)
        {
            ids.push(id_of_tail(&kv.key().map_err(backend)?)?);
        }
        ids.reverse();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(v) = snapshot
                .get(&self.uploads, id.to_be_bytes())
                .map_err(backend)?
            {
                out.push(decode(id, &v)?);
            }
        }
        Ok(out)
    }

    fn sweepable(
        &self,
        staging_before_ms: u64,
        unreferenced_before_ms: u64,
        limit: usize,
    ) -> StoreResult<Vec<UploadRecord>> {
        let snapshot = self.db.snapshot();
        let mut ids = Vec::new();
        for (kind, before) in [
            (SWEEP_STAGING, staging_before_ms),
            (SWEEP_UNREFERENCED, unreferenced_before_ms),
        ] {
            let lo = sweep_key(kind, 0, MessageId(0));
            let hi = sweep_key(kind, before, MessageId(0));
            for kv in snapshot.range(&self.sweep, lo..hi) {
                if ids.len() >= limit {
                    break;
                }
                ids.push(id_of_tail(&kv.key().map_err(backend)?)?);
            }
        }
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(v) = snapshot
                .get(&self.uploads, id.to_be_bytes())
                .map_err(backend)?
            {
                out.push(decode(id, &v)?);
            }
        }
        Ok(out)
    }
}

#[async_trait::async_trait]
impl FileStore for EmbeddedFiles {
    async fn create_upload(
        &self,
        record: UploadRecord,
        limits: UploadLimits,
    ) -> StoreResult<CreateOutcome> {
        self.run(move |s| s.create(&record, limits)).await
    }

    async fn upload(&self, id: MessageId) -> StoreResult<Option<UploadRecord>> {
        self.run(move |s| s.get(id)).await
    }

    async fn set_offset(&self, id: MessageId, offset: u64, now_ms: u64) -> StoreResult<bool> {
        self.run(move |s| s.set_offset(id, offset, now_ms)).await
    }

    async fn finish_upload(&self, id: MessageId, now_ms: u64) -> StoreResult<bool> {
        self.run(move |s| s.finish(id, now_ms)).await
    }

    async fn reference(&self, id: MessageId) -> StoreResult<bool> {
        self.run(move |s| s.reference(id)).await
    }

    async fn delete_upload(
        &self,
        id: MessageId,
        condition: DeleteIf,
    ) -> StoreResult<Option<UploadRecord>> {
        self.run(move |s| s.delete(id, condition)).await
    }

    async fn usage(&self, user: UserId) -> StoreResult<FileUsage> {
        self.run(move |s| s.usage_of(user)).await
    }

    async fn conversation_files(
        &self,
        conversation: ConversationId,
        limit: usize,
    ) -> StoreResult<Vec<UploadRecord>> {
        self.run(move |s| s.conversation_files(conversation, limit))
            .await
    }

    async fn sweepable(
        &self,
        staging_before_ms: u64,
        unreferenced_before_ms: u64,
        limit: usize,
    ) -> StoreResult<Vec<UploadRecord>> {
        self.run(move |s| s.sweepable(staging_before_ms, unreferenced_before_ms, limit))
            .await
    }
}
