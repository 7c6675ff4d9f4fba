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

/// The S3 client as configured. Signing uses ring (`object_store`'s `ring` feature) and TLS
/// goes through reqwest's rustls with the process-wide ring provider: no aws-lc-rs.
fn s3_builder(s3: &super::config::S3Config) -> object_store::aws::AmazonS3Builder {
    let mut builder = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name(&s3.bucket)
        .with_region(&s3.region)
        .with_access_key_id(&s3.access_key)
        .with_secret_access_key(&s3.secret_key)
        .with_allow_http(s3.allow_http);
    if let Some(endpoint) = &s3.endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    builder
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
            Backend::S3(s3) => Self::s3(config, s3_builder(s3)),
        }
    }

    fn s3(
        config: &FilesConfig,
        builder: object_store::aws::AmazonS3Builder,
    ) -> Result<Blobs, BlobError> {
        Ok(Blobs {
            store: Arc::new(builder.build()?),
            kind: Kind::S3 {
                part_bytes: config.s3_part_bytes as usize,
                parts: Arc::new(Semaphore::new(config.s3_parts_in_flight)),
            },
        })
    }

    /// `n` bytes of the staging file from `at`, read straight into the part's buffer on a blocking
    /// thread (tokio's `File` would read through its own 2 MiB buffers on every blocking thread it
    /// uses, which glibc then keeps as per-thread arenas: RSS grew ~200 MB while 20 uploads were
    /// promoted at once).
    /// The buffer is allocated here, on the shard thread, so parts come from one arena.
    async fn read_part(staging: &Path, at: u64, n: usize) -> std::io::Result<Vec<u8>> {
        let path = staging.to_path_buf();
        let mut buf = vec![0u8; n];
        tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::FileExt as _;
            let file = std::fs::File::open(&path)?;
            file.read_exact_at(&mut buf, at)?;
            Ok(buf)
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?
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
                drop(file);
                let mut upload = self.store.put_multipart(&path).await?;
                let result = async {
                    let mut at = 0u64;
                    while at < size {
                        let n = (size - at).min(*part_bytes as u64) as usize;
                        // The permit is held while the part is in memory.
                        let permit = parts.acquire().await.map_err(std::io::Error::other)?;
                        let buf = Self::read_part(staging, at, n).await?;
                        upload.put_part(PutPayload::from(buf)).await?;
                        drop(permit);
                        at += n as u64;
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

    /// Up to `limit` ids of stored objects (names that are not file ids are skipped).
    pub async fn ids(&self, limit: usize) -> Result<Vec<MessageId>, BlobError> {
        use futures_util::StreamExt as _;
        let mut out = Vec::new();
        let mut listing = self.store.list(None);
        while out.len() < limit {
            let Some(meta) = listing.next().await else {
                break;
            };
            if let Ok(id) = meta?.location.as_ref().parse::<MessageId>() {
                out.push(id);
            }
        }
        Ok(out)
    }

    /// Deletes the object; a missing one is no error.
    pub async fn delete(&self, id: MessageId) -> Result<(), BlobError> {
        match self.store.delete(&object_path(id)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// The S3 client works over HTTPS with ring as the only rustls provider (what production
    /// uses; the tests' S3 server speaks plain HTTP on loopback): a TLS server with a
    /// self-signed certificate answers a HEAD the way S3 does, trusted as an extra root on top
    /// of the system's.
    #[tokio::test]
    async fn s3_client_speaks_https_with_ring() {
        crate::tls::install_default_provider();
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let der = cert.der().clone();
        let private =
            rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("key der");
        let tls = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![der.clone()], private)
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let mut stream = acceptor.accept(tcp).await.expect("TLS handshake");
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                stream.read_exact(&mut byte).await.expect("request");
                head.push(byte[0]);
            }
            stream
                .write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nETag: \"e\"\r\n\
                      Last-Modified: Wed, 02 Dec 2026 00:00:00 GMT\r\nConnection: close\r\n\r\n",
                )
                .await
                .expect("response");
            stream.shutdown().await.ok();
            String::from_utf8_lossy(&head).into_owned()
        });
        let s3 = super::super::config::S3Config {
            endpoint: Some(format!("https://localhost:{port}")),
            bucket: "b".into(),
            region: "us-east-1".into(),
            access_key: "a".into(),
            secret_key: "s".into(),
            allow_http: false,
        };
        let options = object_store::ClientOptions::new()
            .with_root_certificate(object_store::Certificate::from_der(&der).expect("certificate"));
        let builder =
            s3_builder(&s3)
                .with_client_options(options)
                .with_retry(object_store::RetryConfig {
                    max_retries: 0,
                    ..Default::default()
                });
        let blobs = Blobs::s3(&FilesConfig::default(), builder).expect("S3 client");
        let id = MessageId(7);
        assert_eq!(blobs.size_of(id).await.expect("HEAD over https"), Some(5));
        let request = server.await.expect("server");
        assert!(
            request.starts_with(&format!("HEAD /b/{id} HTTP/1.1")),
            "{request}"
        );
        assert!(
            request
                .to_ascii_lowercase()
                .contains("authorization: aws4-hmac-sha256"),
            "{request}"
        );
    }
}
