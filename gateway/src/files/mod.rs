//! File sharing, server side (issue 13): resumable uploads into a staging file, promotion to
//! the object store on finish, signed short-lived download URLs, the Send check that a message
//! names only its sender's finished uploads, and the sweeper of what nobody references.
//!
//! - `config`: the `[files]` block; `policy`: the content-type allow-list;
//! - `staging`: PATCH bodies streamed frame by frame to `<data_dir>/files/staging/<id>`;
//! - `blob`: the object store (local directory or S3);
//! - `url`: HMAC-signed download URLs; `http`: the API handlers; `sweeper`: expiry.
//!
//! Invariants: nothing partial is visible (objects appear only at finish; a refused, aborted
//! or oversized upload leaves neither object nor staging file); downloads only through signed
//! URLs, bound to the file and a member, re-checked on use. The server learns the declared type
//! and the (padded, encrypted) size, never a name or a byte of plaintext.

pub mod blob;
pub mod config;
pub mod http;
pub mod metrics;
pub mod pace;
pub mod policy;
pub mod staging;
pub mod sweeper;
pub mod url;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tern_engine::rate::{BucketConfig, BucketMap, RetryAfter};
use tern_engine::store::Store;
use tern_engine::store::files::{FileStore, UploadState};
use tern_wire::ids::{ConversationId, MessageId, UserId};
use tern_wire::msg::FileRef;

use self::blob::Blobs;
use self::config::FilesConfig;
use self::url::UrlSigner;

/// Files one message may name.
pub const MAX_FILES_PER_MESSAGE: usize = 10;
/// Most files one listing returns (the newest).
pub const MAX_LISTED_FILES: usize = 1_000;
/// Users whose request buckets are kept at once (full ones are forgotten first).
const MAX_RATE_KEYS: usize = 100_000;
/// How long a request waits for another request on the same upload (a PATCH whose
/// connection dropped ends at once; this only covers that moment).
const LOCK_WAIT: Duration = Duration::from_secs(10);

pub struct FileService {
    pub config: FilesConfig,
    pub meta: Arc<dyn FileStore>,
    /// Membership checks.
    pub store: Arc<dyn Store>,
    pub blobs: Blobs,
    pub staging: staging::Staging,
    pub signer: UrlSigner,
    pub metrics: metrics::FileMetrics,
    /// All uploads together, all downloads together (`pace.rs`).
    pub upload_pace: Arc<pace::Pacer>,
    pub download_pace: Arc<pace::Pacer>,
    locks: Arc<UploadLocks>,
    requests: Mutex<BucketMap<UserId>>,
}

impl FileService {
    /// Opens staging, the object store and the URL key under `files.dir`, by default
    /// `<data_dir>/files`.
    pub fn open(
        config: FilesConfig,
        data_dir: &Path,
        meta: Arc<dyn FileStore>,
        store: Arc<dyn Store>,
        requests: BucketConfig,
    ) -> anyhow::Result<FileService> {
        use anyhow::Context as _;
        let dir = config.dir.clone().unwrap_or_else(|| data_dir.join("files"));
        let staging = staging::Staging::open(dir.join("staging"))
            .with_context(|| format!("creating {}", dir.join("staging").display()))?;
        let blobs = Blobs::open(&config, &dir).context("opening the file object store")?;
        let signer =
            UrlSigner::load_or_create(&dir.join("url.key")).context("loading the file URL key")?;
        Ok(FileService {
            upload_pace: Arc::new(pace::Pacer::new(config.upload_bytes_per_sec)),
            download_pace: Arc::new(pace::Pacer::new(config.download_bytes_per_sec)),
            config,
            meta,
            store,
            blobs,
            staging,
            signer,
            metrics: metrics::FileMetrics::default(),
            locks: Arc::new(UploadLocks::default()),
            requests: Mutex::new(BucketMap::new(requests, MAX_RATE_KEYS)),
        })
    }

    /// One token of the user's file-request bucket.
    pub fn take_request(&self, user: UserId) -> Result<(), RetryAfter> {
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .try_take(user, tern_engine::driver::now_ms(), 1)
    }

    /// The Send check: every named file must be a finished upload of `user` in
    /// `conversation`, with the size and type the upload declared. On success each is marked
    /// referenced (kept, listed). `Err` says why, and nothing was marked.
    pub async fn check_send(
        &self,
        user: UserId,
        conversation: ConversationId,
        files: &[FileRef],
    ) -> Result<(), SendRefusal> {
        if files.len() > MAX_FILES_PER_MESSAGE {
            return Err(SendRefusal::Invalid(format!(
                "a message names at most {MAX_FILES_PER_MESSAGE} files"
            )));
        }
        for (i, f) in files.iter().enumerate() {
            if files[..i].iter().any(|g| g.file_id == f.file_id) {
                return Err(SendRefusal::Invalid(format!(
                    "file {} named twice",
                    f.file_id
                )));
            }
            let record = self
                .meta
                .upload(f.file_id)
                .await
                .map_err(|e| SendRefusal::Unavailable(e.to_string()))?;
            let fits = record.is_some_and(|r| {
                r.owner == user
                    && r.conversation == conversation
                    && r.state == UploadState::Finished
                    && r.size == f.size
                    && r.content_type == f.content_type
            });
            if !fits {
                self.metrics.send_refusals.inc();
                return Err(SendRefusal::Invalid(format!(
                    "file {} is not a finished upload of yours in this conversation (with this \
                     size and type)",
                    f.file_id
                )));
            }
        }
        for f in files {
            match self.meta.reference(f.file_id).await {
                Ok(true) => {}
                // Deleted between the check and now (an abort by the owner).
                Ok(false) => {
                    return Err(SendRefusal::Invalid(format!("file {} is gone", f.file_id)));
                }
                Err(e) => return Err(SendRefusal::Unavailable(e.to_string())),
            }
        }
        Ok(())
    }

    /// Removes an upload's bytes wherever they are (staging file and object).
    pub async fn remove_bytes(&self, id: MessageId) {
        if let Err(e) = self.staging.remove(id).await {
            tracing::warn!(file = %id, error = %e, "removing a staging file");
        }
        if let Err(e) = self.blobs.delete(id).await {
            tracing::warn!(file = %id, error = %e, "deleting a file object");
        }
    }

    pub fn staging_path(&self, id: MessageId) -> PathBuf {
        self.staging.path(id)
    }
}

#[derive(Debug)]
pub enum SendRefusal {
    Invalid(String),
    Unavailable(String),
}

/// One async lock per upload in use, so two requests never write one staging file at once;
/// entries go away with their last user.
#[derive(Default)]
struct UploadLocks {
    map: Mutex<HashMap<MessageId, Arc<tokio::sync::Mutex<()>>>>,
}

pub struct UploadGuard {
    locks: Arc<UploadLocks>,
    id: MessageId,
    lock: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for UploadGuard {
    fn drop(&mut self) {
        let mut map = self.locks.map.lock().unwrap_or_else(|p| p.into_inner());
        drop(self.lock.take());
        if let Some(entry) = map.get(&self.id)
            && Arc::strong_count(entry) == 1
        {
            map.remove(&self.id);
        }
    }
}

impl UploadLocks {
    fn entry(&self, id: MessageId) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(id).or_default().clone()
    }

    async fn lock(self: &Arc<Self>, id: MessageId, wait: Duration) -> Option<UploadGuard> {
        let entry = self.entry(id);
        let guard = tokio::time::timeout(wait, entry.lock_owned()).await.ok();
        // Dropped whether or not it was acquired, so the map can forget it.
        let mut g = UploadGuard {
            locks: Arc::clone(self),
            id,
            lock: None,
        };
        g.lock = Some(guard?);
        Some(g)
    }
}

impl FileService {
    /// Exclusive use of one upload (PATCH, finish, abort, sweep); `None` when another request
    /// holds it for longer than `LOCK_WAIT`.
    pub async fn lock(&self, id: MessageId) -> Option<UploadGuard> {
        self.locks.lock(id, LOCK_WAIT).await
    }

    /// Like [`FileService::lock`] without waiting (the sweeper skips busy uploads).
    pub async fn try_lock(&self, id: MessageId) -> Option<UploadGuard> {
        self.locks.lock(id, Duration::ZERO).await
    }
}
