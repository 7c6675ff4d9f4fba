//! Where finished files live: one small interface over `object_store` (a local directory by
//! default, S3 in production). Objects appear only when an upload finishes (promotion from its
//! staging file), so nothing partial is ever readable.
//!
//! Memory stays bounded whatever the number of uploads: the local promotion is a rename, and
//! the S3 one streams the staging file in parts of `s3_part_bytes`, each part holding one
//! permit of a semaphore shared by every upload (at most `s3_parts_in_flight` parts in memory).
//! Reads stream ranges from the store.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload};
use tern_wire::ids::MessageId;
use tokio::io::AsyncReadExt;
use tokio::sync::Semaphore;

use super::config::{Backend, FilesConfig};

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    #[error("file system: {0}")]
    Io(#[from] std::io::Error),
    #[error("staging file has {actual} bytes, the upload declared {declared}")]
    SizeMismatch { actual: u64, declared: u64 },
}

enum Kind {
    /// Objects are files in this directory (promotion renames into it).
    Local { root: PathBuf },
    S3 {
        part_bytes: usize,
        parts: Arc<Semaphore>,
    },
}

pub struct Blobs {
    store: Arc<dyn ObjectStore>,
    kind: Kind,
}

fn object_path(id: MessageId) -> ObjectPath {
    ObjectPath::from(id.to_string())
}

impl Blobs {
    /// Opens the configured backend. S3 needs the rustls provider installed first (the server
    /// installs ring at start).
    pub fn open(config: &FilesConfig, files_dir: &Path) -> Result<Blobs, BlobError> {
        match &config.backend {
            Backend::Local => {
                let root = files_dir.join("objects");
                std::fs::create_dir_all(&root)?;
                let store = object_store::local::LocalFileSystem::new_with_prefix(&root)?;
                Ok(Blobs {
                    store: Arc::new(store),
                    kind: Kind::Local { root },
                })
            }
            Backend::S3(s3) => {
                let mut builder = object_store::aws::AmazonS3Builder::new()
                    .with_bucket_name(&s3.bucket)
                    .with_region(&s3.region)
                    .with_access_key_id(&s3.access_key)
                    .with_secret_access_key(&s3.secret_key)
                    .with_allow_http(s3.allow_http);
                if let Some(endpoint) = &s3.endpoint {
                    builder = builder.with_endpoint(endpoint);
                }
                Ok(Blobs {
                    store: Arc::new(builder.build()?),
                    kind: Kind::S3 {
                        part_bytes: config.s3_part_bytes as usize,
                        parts: Arc::new(Semaphore::new(config.s3_parts_in_flight)),
                    },
                })
            }
        }
    }

    /// Makes the staging file at `staging` the object of `id` (exactly `size` bytes). Local:
    /// a rename (same file system) plus a directory fsync. S3: one put for a small file, else
    /// a multipart upload in bounded parts; aborted on error. The staging file is left for the
    /// caller to remove (S3) or is gone (local).
    pub async fn promote(&self, id: MessageId, staging: &Path, size: u64) -> Result<(), BlobError> {
        let actual = tokio::fs::metadata(staging).await?.len();
        if actual != size {
            return Err(BlobError::SizeMismatch {
                actual,
                declared: size,
            });
        }
        match &self.kind {
            Kind::Local { root } => {
                let target = root.join(id.to_string());
                let root = root.clone();
                let staging = staging.to_path_buf();
                tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                    std::fs::rename(&staging, &target)?;
                    std::fs::File::open(&root)?.sync_all()
                })
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))??;
                Ok(())
            }
            Kind::S3 { part_bytes, parts } => {
                let path = object_path(id);
                let mut file = tokio::fs::File::open(staging).await?;
                if size <= *part_bytes as u64 {
                    let _permit = parts.acquire().await.map_err(std::io::Error::other)?;
                    let mut buf = Vec::with_capacity(size as usize);
                    file.read_to_end(&mut buf).await?;
                    self.store.put(&path, PutPayload::from(buf)).await?;
                    return Ok(());
                }
                let mut upload = self.store.put_multipart(&path).await?;
                let result = async {
                    let mut left = size;
                    while left > 0 {
                        let n = left.min(*part_bytes as u64) as usize;
                        // The permit is held while the part is in memory.
                        let permit = parts.acquire().await.map_err(std::io::Error::other)?;
                        let mut buf = vec![0u8; n];
                        file.read_exact(&mut buf).await?;
                        upload.put_part(PutPayload::from(buf)).await?;
                        drop(permit);
                        left -= n as u64;
                    }
                    upload.complete().await?;
                    Ok::<(), BlobError>(())
                }
                .await;
                if let Err(e) = result {
                    let _ = upload.abort().await;
                    return Err(e);
                }
                Ok(())
            }
        }
    }

    /// The stored object's size, if it exists (a finish retried after a crash between
    /// promotion and the metadata write).
    pub async fn size_of(&self, id: MessageId) -> Result<Option<u64>, BlobError> {
        match self.store.head(&object_path(id)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Streams `range` of the object (the caller checked it against the file's size).
    pub async fn read(
        &self,
        id: MessageId,
        range: Range<u64>,
    ) -> Result<BoxStream<'static, Result<Bytes, object_store::Error>>, BlobError> {
        let options = GetOptions {
            range: Some(GetRange::Bounded(range)),
            ..Default::default()
        };
        Ok(self
            .store
            .get_opts(&object_path(id), options)
            .await?
            .into_stream())
    }

    /// Deletes the object; a missing one is no error.
    pub async fn delete(&self, id: MessageId) -> Result<(), BlobError> {
        match self.store.delete(&object_path(id)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}
