//! Deletes what nobody will use: uploads idle in staging longer than `upload_idle_secs`, and
//! finished files no message referenced within `unreferenced_secs` (bytes, metadata and their
//! share of the owner's quota), every `sweep_interval_secs`.
//!
//! Each deletion is conditional in the metadata store (still idle, still unreferenced) and
//! runs before the bytes go, so a Send that references a file at the same moment either wins
//! (the file stays) or loses (it is refused). A crash between the two leaves an orphan object
//! that nothing can read (no metadata, so no URL is ever signed for it).

use std::sync::Arc;

use tern_engine::driver::now_ms;
use tern_engine::store::files::{DeleteIf, UploadState};

use super::FileService;

/// Uploads examined per store query; a sweep repeats queries until fewer come back.
const SWEEP_BATCH: usize = 256;
/// Most deletions per sweep, so one sweep stays short (the next one continues).
const MAX_PER_SWEEP: usize = 10_000;

/// Most orphans looked at in one start-up pass.
const MAX_ORPHAN_SCAN: usize = 100_000;

/// Runs forever (until the runtime stops). First removes orphans a crash may have left.
pub async fn run(files: Arc<FileService>) {
    let removed = remove_orphans(&files).await;
    if removed > 0 {
        tracing::info!(
            removed,
            "file sweeper removed bytes without metadata (left by a crash)"
        );
    }
    let mut tick = tokio::time::interval(files.config.sweep_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let deleted = sweep_once(&files, now_ms()).await;
        if deleted > 0 {
            tracing::info!(
                deleted,
                "file sweeper deleted idle and unreferenced uploads"
            );
        }
    }
}

/// Deletes staging files and objects that have no metadata record: a crash between a
/// deletion's metadata write and its byte removal leaves them, and nothing could ever read
/// them. Bytes of a live upload always have a record (it is written before the first byte and
/// removed before the last), so this never touches one.
pub async fn remove_orphans(files: &FileService) -> usize {
    let staging = files
        .staging
        .ids(MAX_ORPHAN_SCAN)
        .await
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "listing staging files");
            Vec::new()
        });
    let objects = files.blobs.ids(MAX_ORPHAN_SCAN).await.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "listing file objects");
        Vec::new()
    });
    let mut removed = 0;
    for id in staging.into_iter().chain(objects) {
        let Some(_guard) = files.try_lock(id).await else {
            continue;
        };
        match files.meta.upload(id).await {
            Ok(None) => {
                files.remove_bytes(id).await;
                removed += 1;
            }
            Ok(Some(_)) => {}
            Err(e) => tracing::warn!(file = %id, error = %e, "checking an orphan"),
        }
    }
    removed
}

/// One sweep at `now`: returns how many uploads were deleted.
pub async fn sweep_once(files: &FileService, now: u64) -> usize {
    let staging_before = now.saturating_sub(files.config.upload_idle.as_millis() as u64);
    let unreferenced_before = now.saturating_sub(files.config.unreferenced.as_millis() as u64);
    let mut deleted = 0;
    while deleted < MAX_PER_SWEEP {
        let batch = match files
            .meta
            .sweepable(staging_before, unreferenced_before, SWEEP_BATCH)
            .await
        {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "file sweeper could not read the store");
                return deleted;
            }
        };
        let mut progressed = false;
        for record in &batch {
            // A request is using it right now: not idle.
            let Some(_guard) = files.try_lock(record.id).await else {
                continue;
            };
            let condition = match record.state {
                UploadState::Staging => DeleteIf::StagingIdleSince(staging_before),
                UploadState::Finished => DeleteIf::UnreferencedSince(unreferenced_before),
            };
            match files.meta.delete_upload(record.id, condition).await {
                Ok(Some(_)) => {
                    files.remove_bytes(record.id).await;
                    files.metrics.swept.inc();
                    deleted += 1;
                    progressed = true;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(file = %record.id, error = %e, "file sweeper delete failed");
                }
            }
        }
        if batch.len() < SWEEP_BATCH || !progressed {
            break;
        }
    }
    deleted
}
