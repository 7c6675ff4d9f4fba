//! Shared files: encrypted, resumable uploads and verified, resumable downloads over the HTTPS
//! API (`/api/v1/uploads`, `/api/v1/files`), with the file format of [`tern_core::files`].
//!
//! Sending ([`Client::send_file`]): the file is encrypted on the fly under a fresh key while
//! it streams from disk (64 KiB at a time, never the whole file in memory) into PATCH requests
//! at the server's offset; after a dropped connection the upload asks the server where it
//! stands (HEAD) and re-encrypts from the chunk holding that offset (the encryption is
//! deterministic for a key, nonce and chunk), then finishes, and the message carrying the key
//! and hash ([`FileBody`], content type `tern.file`) goes through the outbox and end-to-end
//! encryption like any message, naming the upload in its Send frame so the server keeps it.
//!
//! Receiving ([`download`]): a short-lived signed URL, then GET with `Range` resume; every
//! chunk is authenticated as it streams and written to a temporary file beside the
//! destination, which is renamed into place only when the whole object arrived and the
//! SHA-256 matches. Tampered, truncated or extended objects fail with [`Error::File`] and leave
//! no file behind.
//!
//! Progress callbacks get `(done, total)` in bytes of the encrypted object (what travels) and
//! may return [`ControlFlow::Break`] to cancel: an upload cancelled this way stays on the
//! server and [`FileUpload::run`] resumes it.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use reqwest::{Method, StatusCode};
use tern_core::files::{
    CHUNK_PLAINTEXT_LEN, FILE_CONTENT_TYPE, FileBody, FileDecryptor, FileEncryptor, FileError,
    HEADER_LEN,
};
use tern_wire::api::{FileList, FileUrl, FileView, UploadCreate, UploadView};
use tern_wire::ids::{ConversationId, MessageId};
use tern_wire::msg::Message;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::client::Client;
use crate::connection::SendReceipt;
use crate::error::{Error, Result};
use crate::http::{HttpApi, api_failure, read_limited};

/// A progress callback: `(done, total)` bytes; `Break` cancels the transfer.
pub type Progress<'a> = &'a mut (dyn FnMut(u64, u64) -> ControlFlow<()> + Send);

/// Attempts of one upload or download after dropped connections (each resumes where the
/// server or the decryptor stands) before the error is returned: enough for a flaky network,
/// few enough that a server that keeps failing is reported within a minute.
pub const TRANSFER_ATTEMPTS: u32 = 5;
/// Wait before the second attempt; doubled for each further one (0.5, 1, 2, 4 s).
const RETRY_DELAY: Duration = Duration::from_millis(500);
/// A whole PATCH or GET may take long (8 MiB on a slow uplink, a 256 MiB download); what
/// bounds a dead connection is [`Client`]'s request timeout applied to every single piece
/// (a stall), so the overall request timeout is only a last resort.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(3600);
/// Pieces queued between the encrypting reader and the HTTP connection: two chunks in
/// flight keep the connection busy while the next is read and encrypted.
const PIECES_IN_FLIGHT: usize = 2;

/// The `Upload-Offset` header of the resumable upload API.
const UPLOAD_OFFSET: &str = "upload-offset";

impl HttpApi {
    /// `POST /uploads` → 201 UploadView: a new upload of `size` encrypted bytes.
    pub async fn create_upload(&self, create: &UploadCreate) -> Result<UploadView> {
        self.call(Method::POST, self.url(&["uploads"])?, Some(create), true)
            .await
    }

    /// `HEAD /uploads/{id}` → the bytes the server has durably received.
    pub async fn upload_offset(&self, upload: MessageId) -> Result<u64> {
        let url = self.url(&["uploads", &upload.to_string()])?;
        let resp = self.request(Method::HEAD, url, true)?.send().await?;
        let status = resp.status();
        if !status.is_success() {
            return Err(Error::Api(api_failure(status, b"", None)));
        }
        offset_header(&resp)
    }

    /// `POST /uploads/{id}/finish` → the stored file.
    pub async fn finish_upload(&self, upload: MessageId) -> Result<FileView> {
        let url = self.url(&["uploads", &upload.to_string(), "finish"])?;
        self.call(Method::POST, url, None::<&()>, true).await
    }

    /// `DELETE /uploads/{id}`: abort (nothing is kept).
    pub async fn abort_upload(&self, upload: MessageId) -> Result<()> {
        let url = self.url(&["uploads", &upload.to_string()])?;
        self.call_empty(Method::DELETE, url).await
    }

    /// `POST /files/{id}/url` → a signed download URL for this user (minutes).
    pub async fn file_url(&self, file: MessageId) -> Result<FileUrl> {
        let url = self.url(&["files", &file.to_string(), "url"])?;
        self.call(Method::POST, url, None::<&()>, true).await
    }

    /// `GET /conversations/{id}/files`: the files messages of the conversation reference.
    pub async fn conversation_files(&self, conversation: ConversationId) -> Result<FileList> {
        let url = self.url(&["conversations", &conversation.to_string(), "files"])?;
        self.call(Method::GET, url, None::<&()>, true).await
    }

    /// One PATCH of `len` bytes at `offset`, the body fed from `pieces`. Returns the server's
    /// new offset (or, for `409 offset_mismatch`, its current one as an `Ok`).
    async fn patch_upload(
        &self,
        upload: MessageId,
        offset: u64,
        len: u64,
        pieces: mpsc::Receiver<Bytes>,
    ) -> Result<u64> {
        let url = self.url(&["uploads", &upload.to_string()])?;
        let resp = self
            .request(Method::PATCH, url, true)?
            .timeout(TRANSFER_TIMEOUT)
            .header(UPLOAD_OFFSET, offset)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/offset+octet-stream",
            )
            .body(reqwest::Body::wrap(PieceBody {
                pieces,
                remaining: len,
            }))
            .send()
            .await?;
        let status = resp.status();
        if status.is_success() {
            return offset_header(&resp);
        }
        let current = offset_header(&resp).ok();
        let bytes = read_limited(resp).await?;
        let failure = api_failure(status, &bytes, None);
        match current {
            Some(current) if status == StatusCode::CONFLICT => Ok(current),
            _ => Err(Error::Api(failure)),
        }
    }
}

fn offset_header(resp: &reqwest::Response) -> Result<u64> {
    resp.headers()
        .get(UPLOAD_OFFSET)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| Error::BadResponse(format!("no Upload-Offset in HTTP {}", resp.status())))
}

/// A request body of a known length fed from a channel: the encrypting reader pushes pieces,
/// the connection takes them. The reader stopping early (cancel, stall) ends the body short
/// of its Content-Length, which fails the request instead of finishing a truncated PATCH.
struct PieceBody {
    pieces: mpsc::Receiver<Bytes>,
    remaining: u64,
}

impl http_body::Body for PieceBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<http_body::Frame<Bytes>, std::io::Error>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        match self.pieces.poll_recv(cx) {
            Poll::Ready(Some(piece)) => {
                self.remaining = self.remaining.saturating_sub(piece.len() as u64);
                Poll::Ready(Some(Ok(http_body::Frame::data(piece))))
            }
            Poll::Ready(None) => Poll::Ready(Some(Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "upload body stopped early",
            )))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.remaining)
    }
}

/// Why one PATCH attempt ended without the server's answer.
enum PatchEnd {
    Cancelled,
    Failed(Error),
}

/// One file being uploaded: its encryptor (key, nonce prefix, the in-order hash pass), the
/// server's upload, and where the bytes come from. Lives as long as the upload may resume.
pub struct FileUpload {
    path: PathBuf,
    mime: String,
    encryptor: FileEncryptor,
    view: UploadView,
    /// Bytes per PATCH (at most the server's `max_chunk_bytes`).
    patch_bytes: u64,
    /// The request timeout, applied to every piece of a transfer (stall detection).
    stall: Duration,
    /// The encrypted chunk last built (a PATCH boundary inside a chunk reuses it).
    cached: Option<(u64, Bytes)>,
    /// The file, opened on first read (dropped after a read error, reopened next time).
    file: Option<tokio::fs::File>,
}

impl std::fmt::Debug for FileUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileUpload")
            .field("path", &self.path)
            .field("upload_id", &self.view.upload_id)
            .field("size", &self.view.size)
            .finish_non_exhaustive()
    }
}

impl FileUpload {
    /// Creates the upload on the server (membership, type and size are checked there before
    /// any byte is sent) for the file at `path`, declared as `mime`.
    pub async fn start(
        api: &HttpApi,
        conversation: ConversationId,
        path: impl Into<PathBuf>,
        mime: &str,
        stall: Duration,
    ) -> Result<FileUpload> {
        let path = path.into();
        let size = tokio::fs::metadata(&path).await?.len();
        let encryptor = FileEncryptor::generate(size).map_err(Error::File)?;
        let view = api
            .create_upload(&UploadCreate {
                conversation,
                size: encryptor.layout().encrypted_len(),
                content_type: mime.to_string(),
            })
            .await?;
        if view.size != encryptor.layout().encrypted_len() {
            return Err(Error::BadResponse(format!(
                "upload created for {} bytes, asked for {}",
                view.size,
                encryptor.layout().encrypted_len()
            )));
        }
        let patch_bytes = view.max_chunk_bytes.max(1);
        Ok(FileUpload {
            path,
            mime: mime.to_string(),
            encryptor,
            view,
            patch_bytes,
            stall,
            cached: None,
            file: None,
        })
    }

    pub fn upload_id(&self) -> MessageId {
        self.view.upload_id
    }

    pub fn conversation(&self) -> ConversationId {
        self.view.conversation
    }

    /// Bytes of the encrypted object (the upload's declared size).
    pub fn encrypted_len(&self) -> u64 {
        self.view.size
    }

    /// Sends at most `bytes` per PATCH (never more than the server allows).
    pub fn set_patch_bytes(&mut self, bytes: u64) {
        self.patch_bytes = bytes.clamp(1, self.view.max_chunk_bytes.max(1));
    }

    /// Sends what the server does not have yet and finishes the upload. A dropped connection
    /// is retried (up to [`TRANSFER_ATTEMPTS`]) from the server's offset; a progress `Break`
    /// returns [`Error::Cancelled`] and leaves the upload resumable by calling this again.
    pub async fn run(&mut self, api: &HttpApi, progress: Progress<'_>) -> Result<FileView> {
        let total = self.view.size;
        let mut offset = self.view.offset;
        let mut failures = 0u32;
        let mut ask_server = true;
        loop {
            if ask_server {
                match api.upload_offset(self.view.upload_id).await {
                    Ok(o) => offset = o,
                    Err(e) if is_transient(&e) && failures + 1 < TRANSFER_ATTEMPTS => {
                        failures += 1;
                        tokio::time::sleep(retry_delay(failures)).await;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
                ask_server = false;
            }
            if offset > total {
                return Err(Error::BadResponse(format!(
                    "server offset {offset} is past the upload's {total} bytes"
                )));
            }
            if progress(offset, total).is_break() {
                return Err(Error::Cancelled);
            }
            if offset == total {
                break;
            }
            let end = total.min(offset.saturating_add(self.patch_bytes));
            match self.patch(api, offset, end, progress).await {
                Ok(new_offset) => {
                    // A 409 says where the server really is; a 204 where it is now.
                    offset = new_offset;
                    failures = 0;
                }
                Err(PatchEnd::Cancelled) => return Err(Error::Cancelled),
                Err(PatchEnd::Failed(e))
                    if is_transient(&e) && failures + 1 < TRANSFER_ATTEMPTS =>
                {
                    tracing::debug!(error = %e, "upload interrupted; resuming from the server's offset");
                    failures += 1;
                    tokio::time::sleep(retry_delay(failures)).await;
                    ask_server = true;
                }
                Err(PatchEnd::Failed(e)) => return Err(e),
            }
        }
        self.catch_up_hash().await?;
        self.view.offset = total;
        api.finish_upload(self.view.upload_id).await
    }

    /// One PATCH of object bytes `offset..end`, encrypting as it goes.
    async fn patch(
        &mut self,
        api: &HttpApi,
        offset: u64,
        end: u64,
        progress: Progress<'_>,
    ) -> std::result::Result<u64, PatchEnd> {
        let (tx, rx) = mpsc::channel(PIECES_IN_FLIGHT);
        let total = self.view.size;
        let request = api.patch_upload(self.view.upload_id, offset, end - offset, rx);
        let stall = self.stall;
        let this = &mut *self;
        let progress = &mut *progress;
        // The sender lives in this block: when it ends (done, cancel, stall, read error) the
        // body ends, short of its length unless it was done, which fails the request; the
        // server keeps what it durably received.
        let produce = async move {
            let mut at = offset;
            while at < end {
                let piece = this.piece(at, end).await?;
                let len = piece.len() as u64;
                match tokio::time::timeout(stall, tx.send(piece)).await {
                    Ok(Ok(())) => {}
                    // The request ended (its error is the one to report).
                    Ok(Err(_)) => return Ok(()),
                    Err(_) => return Err(PatchEnd::Failed(Error::Timeout("upload progress"))),
                }
                at += len;
                if progress(at, total).is_break() {
                    return Err(PatchEnd::Cancelled);
                }
            }
            Ok(())
        };
        let (produced, answer) = tokio::join!(produce, request);
        produced?;
        let new_offset = answer.map_err(PatchEnd::Failed)?;
        if new_offset < offset || new_offset > total {
            return Err(PatchEnd::Failed(Error::BadResponse(format!(
                "server offset {new_offset} after a PATCH at {offset}"
            ))));
        }
        Ok(new_offset)
    }

    /// The object bytes from `at` up to the end of the header or chunk holding it, cut at
    /// `end`.
    async fn piece(&mut self, at: u64, end: u64) -> std::result::Result<Bytes, PatchEnd> {
        let header_len = HEADER_LEN as u64;
        if at < header_len {
            let header = self.encryptor.header();
            let stop = end.min(header_len);
            return Ok(Bytes::copy_from_slice(&header[at as usize..stop as usize]));
        }
        let layout = *self.encryptor.layout();
        let (index, within) = layout.chunk_at(at).ok_or_else(|| {
            PatchEnd::Failed(Error::BadResponse(format!(
                "offset {at} is past the object"
            )))
        })?;
        let chunk = self.chunk(index).await.map_err(PatchEnd::Failed)?;
        let start = layout.chunk_cipher_offset(index);
        let stop = ((end - start) as usize).min(chunk.len());
        Ok(chunk.slice(within..stop))
    }

    /// Encrypted chunk `index` (read from the file, hashed on the in-order pass).
    async fn chunk(&mut self, index: u64) -> Result<Bytes> {
        if let Some((cached, bytes)) = &self.cached
            && *cached == index
        {
            return Ok(bytes.clone());
        }
        // The hash pass must be contiguous: a resume that skipped chunks (the server had
        // more than this process sent) hashes the skipped ones first.
        while self.encryptor.hashed_chunks() < index {
            let i = self.encryptor.hashed_chunks();
            let plain = self.read_chunk(i).await?;
            self.encryptor
                .encrypt_chunk(i, &plain)
                .map_err(Error::File)?;
        }
        let plain = self.read_chunk(index).await?;
        let chunk = Bytes::from(
            self.encryptor
                .encrypt_chunk(index, &plain)
                .map_err(Error::File)?,
        );
        self.cached = Some((index, chunk.clone()));
        Ok(chunk)
    }

    /// The file bytes chunk `index` carries (at most 64 KiB), read from disk. The file must
    /// not change while it uploads: a different length is an error, not a silent mix.
    async fn read_chunk(&mut self, index: u64) -> Result<Vec<u8>> {
        let range = self.encryptor.layout().chunk_file_range(index);
        let mut plain = vec![0u8; (range.end - range.start) as usize];
        debug_assert!(plain.len() <= CHUNK_PLAINTEXT_LEN);
        if plain.is_empty() {
            return Ok(plain);
        }
        let file = match self.file.as_mut() {
            Some(f) => f,
            None => self.file.insert(tokio::fs::File::open(&self.path).await?),
        };
        let read = async {
            file.seek(std::io::SeekFrom::Start(range.start)).await?;
            file.read_exact(&mut plain).await
        };
        if let Err(e) = read.await {
            self.file = None;
            return Err(e.into());
        }
        Ok(plain)
    }

    /// Completes the in-order hash pass (chunks the server already had are read once more).
    async fn catch_up_hash(&mut self) -> Result<()> {
        let count = self.encryptor.layout().chunk_count();
        while self.encryptor.hashed_chunks() < count {
            let i = self.encryptor.hashed_chunks();
            let plain = self.read_chunk(i).await?;
            self.encryptor
                .encrypt_chunk(i, &plain)
                .map_err(Error::File)?;
        }
        let size = tokio::fs::metadata(&self.path).await?.len();
        if size != self.encryptor.layout().size() {
            return Err(Error::Config(format!(
                "{} changed size while it uploaded",
                self.path.display()
            )));
        }
        Ok(())
    }

    /// The message body of the finished upload (key, hash, name, type, size, caption).
    pub fn file_body(&self, name: &str, caption: &str) -> Result<FileBody> {
        let sha256 = self
            .encryptor
            .digest()
            .ok_or_else(|| Error::Config("the upload is not complete: no file hash yet".into()))?;
        let body = FileBody {
            file_id: self.view.upload_id,
            key: *self.encryptor.key().key_bytes(),
            sha256,
            name: name.to_string(),
            mime: self.mime.clone(),
            size: self.encryptor.layout().size(),
            caption: caption.to_string(),
        };
        body.validate().map_err(Error::File)?;
        Ok(body)
    }
}

fn is_transient(e: &Error) -> bool {
    match e {
        Error::Http(_) | Error::Io(_) | Error::Timeout(_) => true,
        // upload_busy: the server still writes the body of a PATCH whose connection broke.
        Error::Api(f) => f.status >= 500 || f.status == 429 || f.code == "upload_busy",
        _ => false,
    }
}

fn retry_delay(failures: u32) -> Duration {
    RETRY_DELAY * 2u32.saturating_pow(failures.saturating_sub(1).min(4))
}

/// The file a decrypted message carries, if it is a file message.
pub fn file_body_of(message: &Message) -> Option<FileBody> {
    (message.content_type == FILE_CONTENT_TYPE)
        .then(|| FileBody::from_json(&message.payload).ok())
        .flatten()
}

impl Client {
    /// Encrypts and uploads the file at `path`, then sends the message that shares it (its key
    /// and hash travel only inside the end-to-end encryption). `name` is what recipients see
    /// (defaults to the file name), `mime` the declared type (checked against the server's
    /// allow-list before any byte is sent). Requires end-to-end encryption.
    pub async fn send_file(
        &mut self,
        conversation: ConversationId,
        path: &Path,
        name: Option<&str>,
        mime: &str,
        caption: &str,
        progress: Progress<'_>,
    ) -> Result<(SendReceipt, FileBody)> {
        let mut upload = self.start_upload(conversation, path, mime).await?;
        let api = self.http_api()?;
        upload.run(&api, progress).await?;
        let name = match name {
            Some(n) => n.to_string(),
            None => path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "file".into()),
        };
        self.send_upload(&upload, &name, caption).await
    }

    /// Creates the upload for `path` (the first half of [`Client::send_file`], for callers that
    /// drive [`FileUpload::run`] themselves, e.g. to resume after a cancel).
    pub async fn start_upload(
        &self,
        conversation: ConversationId,
        path: &Path,
        mime: &str,
    ) -> Result<FileUpload> {
        if self.e2e().is_none() {
            return Err(Error::Config(
                "file messages need end-to-end encryption (the key would reach the server)".into(),
            ));
        }
        let api = self.http_api()?;
        FileUpload::start(
            &api,
            conversation,
            path,
            mime,
            self.config().request_timeout,
        )
        .await
    }

    /// Sends the message sharing a finished `upload`.
    pub async fn send_upload(
        &mut self,
        upload: &FileUpload,
        name: &str,
        caption: &str,
    ) -> Result<(SendReceipt, FileBody)> {
        let body = upload.file_body(name, caption)?;
        let receipt = self
            .send(upload.conversation(), FILE_CONTENT_TYPE, body.to_json())
            .await?;
        Ok((receipt, body))
    }

    /// [`download`] with this client's server and token.
    pub async fn download(
        &self,
        body: &FileBody,
        dest: &Path,
        progress: Progress<'_>,
    ) -> Result<u64> {
        download(
            &self.http_api()?,
            body,
            dest,
            self.config().request_timeout,
            progress,
        )
        .await
    }
}

/// Downloads the file `body` describes to `dest` (which must not exist): signed URL, GET with
/// `Range` resume after a dropped connection, every chunk verified as it streams into a
/// temporary file beside `dest`, renamed into place only when complete and the SHA-256
/// matches. On any failure no file is left. Returns the plaintext size. `stall` bounds the
/// wait for each piece.
pub async fn download(
    api: &HttpApi,
    body: &FileBody,
    dest: &Path,
    stall: Duration,
    progress: Progress<'_>,
) -> Result<u64> {
    body.validate().map_err(Error::File)?;
    if tokio::fs::try_exists(dest).await? {
        return Err(Error::Config(format!("{} already exists", dest.display())));
    }
    let tmp = temp_path(dest);
    let mut out = create_private(&tmp).await?;
    let result = download_into(api, body, &mut out, stall, progress).await;
    let result = match result {
        Ok(()) => finish_file(out, &tmp, dest).await,
        Err(e) => {
            drop(out);
            Err(e)
        }
    };
    if result.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    result.map(|()| body.size)
}

async fn download_into(
    api: &HttpApi,
    body: &FileBody,
    out: &mut tokio::fs::File,
    stall: Duration,
    progress: Progress<'_>,
) -> Result<()> {
    let mut dec = FileDecryptor::new(body.key, body.size, body.sha256).map_err(Error::File)?;
    let total = body.encrypted_len();
    let mut failures = 0u32;
    while dec.consumed() < total {
        match fetch(api, body.file_id, &mut dec, out, total, stall, progress).await {
            Ok(()) => failures = 0,
            Err(e) if is_transient(&e) && failures + 1 < TRANSFER_ATTEMPTS => {
                tracing::debug!(error = %e, at = dec.consumed(), "download interrupted; resuming");
                failures += 1;
                tokio::time::sleep(retry_delay(failures)).await;
            }
            Err(e) => return Err(e),
        }
    }
    // Anything the server sends past the declared size is refused by the decryptor; a short
    // object never gets here (the loop asks for the rest, the server has nothing more).
    dec.finish().map_err(Error::File)
}

/// One GET from the decryptor's position to the end (or until the connection drops).
async fn fetch(
    api: &HttpApi,
    file: MessageId,
    dec: &mut FileDecryptor,
    out: &mut tokio::fs::File,
    total: u64,
    stall: Duration,
    progress: Progress<'_>,
) -> Result<()> {
    let signed = api.file_url(file).await?;
    let url = api.resolve(&signed.url)?;
    let from = dec.consumed();
    let mut req = api.http().get(url).timeout(TRANSFER_TIMEOUT);
    if from > 0 {
        req = req.header(reqwest::header::RANGE, format!("bytes={from}-"));
    }
    let mut resp = req.send().await?;
    let status = resp.status();
    match status {
        StatusCode::OK if from == 0 => {}
        StatusCode::PARTIAL_CONTENT if content_range_start(&resp) == Some(from) => {}
        // The object is shorter than its declared size: the end is missing.
        StatusCode::RANGE_NOT_SATISFIABLE => {
            return Err(Error::File(FileError::Truncated {
                got: from,
                expected: total,
            }));
        }
        s if s.is_success() => {
            return Err(Error::BadResponse(format!(
                "HTTP {s} for a download from byte {from}"
            )));
        }
        _ => {
            let bytes = read_limited(resp).await?;
            return Err(Error::Api(api_failure(status, &bytes, None)));
        }
    }
    let before = dec.consumed();
    loop {
        let piece = match tokio::time::timeout(stall, resp.chunk()).await {
            Ok(piece) => piece?,
            Err(_) => return Err(Error::Timeout("download progress")),
        };
        let Some(piece) = piece else { break };
        let plain = dec.push(&piece).map_err(Error::File)?;
        out.write_all(&plain).await?;
        if progress(dec.consumed(), total).is_break() {
            return Err(Error::Cancelled);
        }
    }
    if dec.consumed() < total && dec.consumed() == before {
        // A complete answer that added nothing: the stored object ends early.
        return Err(Error::File(FileError::Truncated {
            got: dec.consumed(),
            expected: total,
        }));
    }
    Ok(())
}

fn content_range_start(resp: &reqwest::Response) -> Option<u64> {
    // "bytes START-END/TOTAL"
    let v = resp
        .headers()
        .get(reqwest::header::CONTENT_RANGE)?
        .to_str()
        .ok()?;
    let range = v.trim().strip_prefix("bytes ")?;
    range.split('-').next()?.trim().parse().ok()
}

/// `.<name>.tern-part` beside `dest` (same directory: the final rename stays atomic).
fn temp_path(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "download".into());
    dest.with_file_name(format!(".{name}.{:08x}.tern-part", rand_u32()))
}

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    // Only makes the temporary name unique; a failure falls back to a fixed suffix.
    let _ = getrandom::fill(&mut b);
    u32::from_le_bytes(b)
}

/// A new file readable by the owner only (the plaintext of a private file).
async fn create_private(path: &Path) -> Result<tokio::fs::File> {
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    Ok(options.open(path).await?)
}

/// Flushes the verified temporary file to disk and renames it into place.
async fn finish_file(mut out: tokio::fs::File, tmp: &Path, dest: &Path) -> Result<()> {
    out.flush().await?;
    out.sync_all().await?;
    drop(out);
    tokio::fs::rename(tmp, dest).await?;
    if let Some(dir) = dest.parent()
        && let Ok(d) = tokio::fs::File::open(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        })
        .await
    {
        let _ = d.sync_all().await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_grow_and_stop_growing() {
        assert_eq!(retry_delay(1), Duration::from_millis(500));
        assert_eq!(retry_delay(2), Duration::from_secs(1));
        assert_eq!(retry_delay(5), Duration::from_secs(8));
        assert_eq!(retry_delay(50), Duration::from_secs(8));
    }

    #[test]
    fn temp_files_sit_beside_the_destination() {
        let t = temp_path(Path::new("/a/b/report.pdf"));
        assert_eq!(t.parent(), Some(Path::new("/a/b")));
        let name = t.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        assert!(
            name.starts_with(".report.pdf.") && name.ends_with(".tern-part"),
            "{name}"
        );
    }
}
