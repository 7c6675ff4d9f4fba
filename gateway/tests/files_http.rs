//! File sharing over the HTTPS API (issue 13), against the real binary over real TLS with raw
//! HTTP requests, every scenario on both storage backends: the local directory and S3 (an
//! s3s-fs server: `TERN_TEST_S3` and friends from `scripts/s3-server.sh`, else the test starts
//! one through that script itself; on CI it must be set).
//!
//! "Nothing stored" is checked on disk: the server's staging and object directories, and for
//! S3 the bucket's directory inside the S3 server's data.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::s3::{S3Bucket, s3_bucket};
use common::{TestServer, TestUser, alice_and_bob, https, user};
use reqwest::StatusCode;
use sha2::Digest as _;
use tern_sdk::TransportPref;
use tern_sdk::tern_wire::api::{FileList, FileUrl, FileView, UploadView};
use tern_sdk::tern_wire::ids::{ConversationId, MessageId, UserId};
use tern_sdk::tern_wire::msg::{ClientMessage, ErrorCode, FileRef, ServerMessage};

const OFFSET_STREAM: &str = "application/offset+octet-stream";

#[derive(Clone, Copy, Debug)]
enum Backend {
    Local,
    S3,
}

struct Ctx {
    server: TestServer,
    s3: Option<S3Bucket>,
    client: reqwest::Client,
}

/// The `files = { ... }` line for `backend` (an S3 bucket or local) plus extra keys.
fn files_line(s3: Option<&S3Bucket>, files: &str) -> String {
    let mut keys: Vec<String> = Vec::new();
    if let Some(s3) = s3 {
        keys.push("backend = \"s3\"".into());
        keys.push(format!("s3_endpoint = \"{}\"", s3.endpoint));
        keys.push(format!("s3_bucket = \"{}\"", s3.bucket));
        keys.push(format!("s3_access_key = \"{}\"", s3.access_key));
        keys.push(format!("s3_secret_key = \"{}\"", s3.secret_key));
        keys.push("s3_allow_http = true".into());
    }
    if !files.is_empty() {
        keys.push(files.to_owned());
    }
    // An inline table: the harness appends top-level keys after our lines.
    format!("files = {{ {} }}", keys.join(", "))
}

/// Starts a server on `backend` with extra `[files]` keys (`k = v, ...`).
async fn start(backend: Backend, files: &str) -> Ctx {
    start_with_top(backend, "", files).await
}

/// [`start`] with top-level configuration lines too (e.g. `http_body_timeout_ms = 1000`).
async fn start_with_top(backend: Backend, top: &str, files: &str) -> Ctx {
    let s3 = matches!(backend, Backend::S3).then(s3_bucket);
    let line = files_line(s3.as_ref(), files);
    let server = TestServer::start_with(&[top, &line]).await;
    let client = https(&server);
    Ctx { server, s3, client }
}

/// A PATCH body: `first` pieces of `len` bytes at once, then one more after `delay`.
fn late_last_piece(
    first: u32,
    len: usize,
    delay: Duration,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures_util::stream::unfold(0u32, move |i| async move {
        if i < first {
            Some((Ok(vec![7u8; len]), i + 1))
        } else if i == first {
            tokio::time::sleep(delay).await;
            Some((Ok(vec![7u8; len]), i + 1))
        } else {
            None
        }
    })
}

impl Ctx {
    fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.server.addr)
    }

    /// Every regular file under the staging and object directories (and the bucket).
    fn stored(&self) -> Vec<PathBuf> {
        let files = self.server.data_dir.join("files");
        let mut out = Vec::new();
        let mut roots = vec![files.join("staging"), files.join("objects")];
        if let Some(s3) = &self.s3 {
            roots.push(s3.dir.clone());
        }
        for root in roots {
            walk(&root, &mut out);
        }
        out
    }

    fn assert_nothing_stored(&self, what: &str) {
        let stored = self.stored();
        assert!(stored.is_empty(), "{what}: something is stored: {stored:?}");
    }

    async fn create(
        &self,
        who: &TestUser,
        c: ConversationId,
        size: u64,
        ty: &str,
    ) -> reqwest::Response {
        self.client
            .post(self.url("/api/v1/uploads"))
            .bearer_auth(&who.token)
            .json(&serde_json::json!({"conversation": c, "size": size, "content_type": ty}))
            .send()
            .await
            .expect("create request")
    }

    async fn create_ok(
        &self,
        who: &TestUser,
        c: ConversationId,
        size: u64,
        ty: &str,
    ) -> UploadView {
        let r = self.create(who, c, size, ty).await;
        assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);
        r.json().await.expect("UploadView")
    }

    async fn patch(
        &self,
        who: &TestUser,
        id: MessageId,
        offset: u64,
        body: Vec<u8>,
    ) -> reqwest::Response {
        self.patch_body(who, id, offset, body.into())
            .await
            .expect("patch request")
    }

    /// A PATCH whose body may be a stream; `Err` when the server closed before answering.
    async fn patch_body(
        &self,
        who: &TestUser,
        id: MessageId,
        offset: u64,
        body: reqwest::Body,
    ) -> reqwest::Result<reqwest::Response> {
        self.client
            .patch(self.url(&format!("/api/v1/uploads/{id}")))
            .bearer_auth(&who.token)
            .header("content-type", OFFSET_STREAM)
            .header("upload-offset", offset.to_string())
            .body(body)
            .send()
            .await
    }

    async fn head(&self, who: &TestUser, id: MessageId) -> (StatusCode, Option<u64>) {
        let r = self
            .client
            .head(self.url(&format!("/api/v1/uploads/{id}")))
            .bearer_auth(&who.token)
            .send()
            .await
            .expect("head request");
        let offset = r
            .headers()
            .get("upload-offset")
            .and_then(|v| v.to_str().ok()?.parse().ok());
        (r.status(), offset)
    }

    async fn finish(&self, who: &TestUser, id: MessageId) -> reqwest::Response {
        self.client
            .post(self.url(&format!("/api/v1/uploads/{id}/finish")))
            .bearer_auth(&who.token)
            .send()
            .await
            .expect("finish request")
    }

    /// Create, PATCH in chunks, finish.
    async fn upload(&self, who: &TestUser, c: ConversationId, bytes: &[u8], ty: &str) -> FileView {
        let view = self.create_ok(who, c, bytes.len() as u64, ty).await;
        let chunk = view.max_chunk_bytes as usize;
        let mut offset = 0;
        for part in bytes.chunks(chunk) {
            let r = self.patch(who, view.upload_id, offset, part.to_vec()).await;
            assert_eq!(r.status(), StatusCode::NO_CONTENT, "{:?}", r.text().await);
            offset += part.len() as u64;
            assert_eq!(header(&r, "upload-offset"), Some(offset.to_string()));
        }
        let r = self.finish(who, view.upload_id).await;
        assert_eq!(r.status(), StatusCode::OK, "{:?}", r.text().await);
        r.json().await.expect("FileView")
    }

    async fn signed_url(&self, who: &TestUser, id: MessageId) -> reqwest::Response {
        self.client
            .post(self.url(&format!("/api/v1/files/{id}/url")))
            .bearer_auth(&who.token)
            .send()
            .await
            .expect("url request")
    }

    async fn signed_url_ok(&self, who: &TestUser, id: MessageId) -> FileUrl {
        let r = self.signed_url(who, id).await;
        assert_eq!(r.status(), StatusCode::OK, "{:?}", r.text().await);
        r.json().await.expect("FileUrl")
    }

    async fn get(&self, path: &str, range: Option<&str>) -> reqwest::Response {
        let mut request = self.client.get(self.url(path));
        if let Some(range) = range {
            request = request.header("range", range);
        }
        request.send().await.expect("content request")
    }

    async fn list(&self, who: &TestUser, c: ConversationId) -> reqwest::Response {
        self.client
            .get(self.url(&format!("/api/v1/conversations/{c}/files")))
            .bearer_auth(&who.token)
            .send()
            .await
            .expect("list request")
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.is_dir() {
            walk(&path, out);
        } else {
            out.push(path);
        }
    }
}

fn header(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

async fn error_code(r: reqwest::Response) -> String {
    let body: serde_json::Value = r.json().await.expect("a JSON error body");
    body["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::fill(&mut v[..]);
    v
}

fn sha256(b: &[u8]) -> [u8; 32] {
    sha2::Sha256::digest(b).into()
}

/// Sends a message naming `files` over `transport`: the SendAck's seq, or the refusal's code.
async fn send_files(
    ctx: &Ctx,
    transport: TransportPref,
    who: &TestUser,
    c: ConversationId,
    files: Vec<FileRef>,
) -> Result<u64, ErrorCode> {
    let conn = common::connect(
        &ctx.server,
        transport,
        who,
        tern_sdk::tern_wire::ids::DeviceId::random(),
    )
    .await;
    let reply = conn
        .request(|request_id| ClientMessage::Send {
            request_id,
            conversation: c,
            client_msg_id: MessageId::random().as_u128(),
            content_type: "e2e.megolm".into(),
            payload: b"ciphertext".to_vec(),
            files,
        })
        .await;
    conn.close().await;
    match reply {
        Ok(ServerMessage::SendAck { seq, .. }) => Ok(seq),
        Ok(other) => panic!("unexpected reply {other:?}"),
        Err(tern_sdk::Error::Server { code, .. }) => Err(code),
        Err(e) => panic!("send failed: {e}"),
    }
}

fn file_ref(v: &FileView) -> FileRef {
    FileRef {
        file_id: v.file_id,
        size: v.size,
        content_type: v.content_type.clone(),
    }
}

// ---------------------------------------------------------------------------------------------
// scenarios

/// 10 MB of random bytes: upload in chunks, send, the recipient downloads the same bytes.
async fn round_trip(backend: Backend) {
    let ctx = start(backend, "").await;
    let (alice, bob, c) = alice_and_bob(&ctx.server).await;
    let bytes = random_bytes(10_000_000);
    let file = ctx.upload(&alice, c, &bytes, "video/mp4").await;
    assert_eq!(file.size, bytes.len() as u64);
    assert_eq!(file.conversation, c);
    // Before any message names it, only its owner may fetch it.
    assert_eq!(
        ctx.signed_url(&bob, file.file_id).await.status(),
        StatusCode::NOT_FOUND
    );
    send_files(
        &ctx,
        TransportPref::WebSocket,
        &alice,
        c,
        vec![file_ref(&file)],
    )
    .await
    .expect("the send is accepted");
    let url = ctx.signed_url_ok(&bob, file.file_id).await;
    let r = ctx.get(&url.url, None).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        header(&r, "content-type").as_deref(),
        Some("application/octet-stream")
    );
    assert_eq!(
        header(&r, "x-content-type-options").as_deref(),
        Some("nosniff")
    );
    assert_eq!(header(&r, "accept-ranges").as_deref(), Some("bytes"));
    // The API's Cache-Control for everything (headers.rs): stricter than "private".
    assert_eq!(header(&r, "cache-control").as_deref(), Some("no-store"));
    assert_eq!(
        header(&r, "content-disposition"),
        Some(format!("attachment; filename=\"{}.tern\"", file.file_id))
    );
    let got = r.bytes().await.expect("body");
    assert_eq!(
        sha256(&got),
        sha256(&bytes),
        "the download is the uploaded bytes"
    );
    // The counters saw it (the operations listener's /metrics).
    assert_eq!(
        common::metric(&ctx.server, "tern_file_uploads_finished_total").await,
        1.0
    );
    assert_eq!(
        common::metric(&ctx.server, "tern_file_upload_bytes_total").await,
        bytes.len() as f64
    );
    assert_eq!(
        common::metric(&ctx.server, "tern_file_download_bytes_total").await,
        bytes.len() as f64
    );
    // Exactly one object, nothing left in staging.
    let stored = ctx.stored();
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert!(stored[0].ends_with(file.file_id.to_string()), "{stored:?}");
}

async fn ranges(backend: Backend) {
    let ctx = start(backend, "").await;
    let (alice, _bob, c) = alice_and_bob(&ctx.server).await;
    let bytes = random_bytes(300_000);
    let file = ctx.upload(&alice, c, &bytes, "application/pdf").await;
    let url = ctx.signed_url_ok(&alice, file.file_id).await;
    let r = ctx.get(&url.url, Some("bytes=1000-1999")).await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        header(&r, "content-range").as_deref(),
        Some("bytes 1000-1999/300000")
    );
    assert_eq!(&r.bytes().await.expect("body")[..], &bytes[1000..2000]);
    let r = ctx.get(&url.url, Some("bytes=299990-")).await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(&r.bytes().await.expect("body")[..], &bytes[299_990..]);
    let r = ctx.get(&url.url, Some("bytes=-5")).await;
    assert_eq!(&r.bytes().await.expect("body")[..], &bytes[299_995..]);
    let r = ctx.get(&url.url, Some("bytes=300000-")).await;
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        header(&r, "content-range").as_deref(),
        Some("bytes */300000")
    );
}

async fn disallowed_type(backend: Backend) {
    let ctx = start(
        backend,
        "allowed_types = [\"image/*\", \"application/pdf\"]",
    )
    .await;
    let (alice, _bob, c) = alice_and_bob(&ctx.server).await;
    let r = ctx
        .create(&alice, c, 1000, "application/x-msdownload")
        .await;
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(error_code(r).await, "type_not_allowed");
    ctx.assert_nothing_stored("a refused type");
    // The allow-list's own types pass.
    ctx.create_ok(&alice, c, 10, "image/png").await;
}

async fn declared_over_limit(backend: Backend) {
    let ctx = start(backend, "max_file_bytes = 1048576").await;
    let (alice, _bob, c) = alice_and_bob(&ctx.server).await;
    for size in [1_048_577u64, 0] {
        let r = ctx.create(&alice, c, size, "image/png").await;
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE, "size {size}");
        assert_eq!(error_code(r).await, "limit_exceeded");
    }
    ctx.assert_nothing_stored("a refused size");
    ctx.create_ok(&alice, c, 1_048_576, "image/png").await;
}

/// More bytes than declared, with a Content-Length and streamed without one: 413, the upload
/// is gone and nothing is stored.
async fn lying_client(backend: Backend) {
    let ctx = start(backend, "").await;
    let (alice, _bob, c) = alice_and_bob(&ctx.server).await;
    let view = ctx.create_ok(&alice, c, 100_000, "image/png").await;
    let r = ctx
        .patch(&alice, view.upload_id, 0, random_bytes(100_001))
        .await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_code(r).await, "limit_exceeded");
    assert_eq!(
        ctx.head(&alice, view.upload_id).await.0,
        StatusCode::NOT_FOUND
    );
    ctx.assert_nothing_stored("a client that declared less (Content-Length)");
    // Chunked: the server only finds out while streaming.
    let view = ctx.create_ok(&alice, c, 100_000, "image/png").await;
    let first = ctx
        .patch(&alice, view.upload_id, 0, random_bytes(60_000))
        .await;
    assert_eq!(first.status(), StatusCode::NO_CONTENT);
    let parts: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..10).map(|_| Ok(random_bytes(10_000))).collect();
    let r = ctx
        .client
        .patch(ctx.url(&format!("/api/v1/uploads/{}", view.upload_id)))
        .bearer_auth(&alice.token)
        .header("content-type", OFFSET_STREAM)
        .header("upload-offset", "60000")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            parts,
        )))
        .send()
        .await;
    // The server answers 413 as soon as it knows (it may close before reading the rest).
    if let Ok(r) = r {
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }
    assert_eq!(
        ctx.head(&alice, view.upload_id).await.0,
        StatusCode::NOT_FOUND
    );
    ctx.assert_nothing_stored("a client that streamed more than it declared");
}

/// The connection drops mid-PATCH at 50 %: HEAD gives the durable offset (what arrived was
/// kept), the rest is sent from there, and the download is identical.
async fn dropped_and_resumed(backend: Backend) {
    let ctx = start(backend, "").await;
    let (alice, _bob, c) = alice_and_bob(&ctx.server).await;
    let bytes = random_bytes(4_000_000);
    let view = ctx
        .create_ok(&alice, c, bytes.len() as u64, "video/mp4")
        .await;
    let half = bytes.len() / 2;
    let mut parts: Vec<Result<Vec<u8>, std::io::Error>> = bytes[..half]
        .chunks(100_000)
        .map(|p| Ok(p.to_vec()))
        .collect();
    parts.push(Err(std::io::Error::other("the network went away")));
    let dropped = ctx
        .client
        .patch(ctx.url(&format!("/api/v1/uploads/{}", view.upload_id)))
        .bearer_auth(&alice.token)
        .header("content-type", OFFSET_STREAM)
        .header("upload-offset", "0")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            parts,
        )))
        .send()
        .await;
    assert!(dropped.is_err(), "the PATCH broke off: {dropped:?}");
    // The server keeps what arrived once it sees the connection end.
    let mut offset = 0;
    for _ in 0..100 {
        let (status, o) = ctx.head(&alice, view.upload_id).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        offset = o.expect("Upload-Offset");
        if offset > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        offset > 0 && offset <= half as u64,
        "the durable offset after the drop is within what was sent: {offset}"
    );
    assert_eq!(
        ctx.finish(&alice, view.upload_id).await.status(),
        StatusCode::CONFLICT
    );
    // A stale offset is refused with the current one.
    let r = ctx
        .patch(&alice, view.upload_id, 0, bytes[..10].to_vec())
        .await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(header(&r, "upload-offset"), Some(offset.to_string()));
    let r = ctx
        .patch(
            &alice,
            view.upload_id,
            offset,
            bytes[offset as usize..].to_vec(),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT, "{:?}", r.text().await);
    let r = ctx.finish(&alice, view.upload_id).await;
    assert_eq!(r.status(), StatusCode::OK);
    let url = ctx.signed_url_ok(&alice, view.upload_id).await;
    let got = ctx.get(&url.url, None).await.bytes().await.expect("body");
    assert_eq!(sha256(&got), sha256(&bytes));
}

async fn non_member(backend: Backend) {
    let ctx = start(backend, "").await;
    let (alice, _bob, c) = alice_and_bob(&ctx.server).await;
    let carol = user(&ctx.server, "carol").await;
    let r = ctx.create(&carol, c, 100, "image/png").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(r).await, "not_found");
    let file = ctx
        .upload(&alice, c, &random_bytes(1000), "image/png")
        .await;
    send_files(
        &ctx,
        TransportPref::WebSocket,
        &alice,
        c,
        vec![file_ref(&file)],
    )
    .await
    .expect("sent");
    assert_eq!(
        ctx.signed_url(&carol, file.file_id).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(ctx.list(&carol, c).await.status(), StatusCode::NOT_FOUND);
    // Someone else's upload does not exist for carol either.
    let open = ctx.create_ok(&alice, c, 10, "image/png").await;
    assert_eq!(
        ctx.head(&carol, open.upload_id).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        ctx.patch(&carol, open.upload_id, 0, vec![1; 10])
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        ctx.finish(&carol, open.upload_id).await.status(),
        StatusCode::NOT_FOUND
    );
    // Members may list.
    let list: FileList = ctx.list(&alice, c).await.json().await.expect("FileList");
    assert_eq!(list.files.len(), 1);
}

/// Expired, tampered (signature, user, file, expiry) and missing signatures get 403; so does a
/// URL of a member who was removed since.
async fn bad_urls(backend: Backend) {
    let ctx = start(backend, "url_ttl_secs = 1").await;
    let (alice, bob, c) = alice_and_bob(&ctx.server).await;
    let file = ctx
        .upload(&alice, c, &random_bytes(1000), "image/png")
        .await;
    let other = ctx
        .upload(&alice, c, &random_bytes(1000), "image/png")
        .await;
    let url = ctx.signed_url_ok(&alice, file.file_id).await;
    assert_eq!(ctx.get(&url.url, None).await.status(), StatusCode::OK);
    let (path, query) = url.url.split_once('?').expect("a query");
    let param = |k: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
            .expect("param")
            .to_owned()
    };
    let (u, e, s) = (param("u"), param("e"), param("s"));
    let mut flipped = s.clone().into_bytes();
    flipped[0] = if flipped[0] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).expect("ascii");
    let other_path = path.replace(&file.file_id.to_string(), &other.file_id.to_string());
    let later: u64 = e.parse::<u64>().expect("ms") + 60_000;
    for (what, tampered) in [
        ("signature", format!("{path}?u={u}&e={e}&s={flipped}")),
        ("user", format!("{path}?u={}&e={e}&s={s}", bob.id)),
        ("file", format!("{other_path}?u={u}&e={e}&s={s}")),
        ("expiry", format!("{path}?u={u}&e={later}&s={s}")),
        ("no signature", format!("{path}?u={u}&e={e}")),
        ("malformed expiry", format!("{path}?u={u}&e=soon&s={s}")),
        ("malformed user", format!("{path}?u=alice&e={e}&s={s}")),
        ("nothing", path.to_owned()),
    ] {
        let r = ctx.get(&tampered, None).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "tampered {what}");
        assert_eq!(error_code(r).await, "forbidden");
    }
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let r = ctx.get(&url.url, None).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "expired");
    // A member removed after the URL was issued.
    let dave = user(&ctx.server, "dave").await;
    let group = common::group_with_members(&alice, "files", &[&dave]).await;
    let shared = ctx
        .upload(&alice, group, &random_bytes(1000), "image/png")
        .await;
    send_files(
        &ctx,
        TransportPref::WebSocket,
        &alice,
        group,
        vec![file_ref(&shared)],
    )
    .await
    .expect("sent");
    let _ = &bob;
    let dave_url = ctx.signed_url_ok(&dave, shared.file_id).await;
    let r = ctx
        .client
        .delete(ctx.url(&format!("/api/v1/conversations/{group}/members/dave")))
        .bearer_auth(&alice.token)
        .send()
        .await
        .expect("remove dave");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = ctx.get(&dave_url.url, None).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "no longer a member");
}

async fn quota(backend: Backend) {
    let ctx = start(
        backend,
        "user_quota_bytes = 1000000, max_open_uploads_per_user = 2",
    )
    .await;
    let (alice, _bob, c) = alice_and_bob(&ctx.server).await;
    let first = ctx.create_ok(&alice, c, 600_000, "image/png").await;
    let r = ctx.create(&alice, c, 500_000, "image/png").await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_code(r).await, "quota_exceeded");
    ctx.create_ok(&alice, c, 100, "image/png").await;
    let r = ctx.create(&alice, c, 100, "image/png").await;
    assert_eq!(r.status(), StatusCode::CONFLICT, "the open-upload limit");
    assert_eq!(error_code(r).await, "too_many_uploads");
    // Aborting gives the bytes back.
    let r = ctx
        .client
        .delete(ctx.url(&format!("/api/v1/uploads/{}", first.upload_id)))
        .bearer_auth(&alice.token)
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    ctx.create_ok(&alice, c, 500_000, "image/png").await;
}

async fn abort(backend: Backend) {
    let ctx = start(backend, "").await;
    let (alice, bob, c) = alice_and_bob(&ctx.server).await;
    let view = ctx.create_ok(&alice, c, 200_000, "image/png").await;
    let r = ctx
        .patch(&alice, view.upload_id, 0, random_bytes(100_000))
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert!(!ctx.stored().is_empty(), "the staging file exists");
    let delete = |who: &TestUser, id: MessageId| {
        ctx.client
            .delete(ctx.url(&format!("/api/v1/uploads/{id}")))
            .bearer_auth(who.token.clone())
            .send()
    };
    assert_eq!(
        delete(&bob, view.upload_id).await.expect("delete").status(),
        StatusCode::NOT_FOUND,
        "only the owner aborts"
    );
    assert_eq!(
        delete(&alice, view.upload_id)
            .await
            .expect("delete")
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        ctx.head(&alice, view.upload_id).await.0,
        StatusCode::NOT_FOUND
    );
    ctx.assert_nothing_stored("an aborted upload");
    // A finished, unreferenced file can be deleted too; a referenced one cannot.
    let file = ctx
        .upload(&alice, c, &random_bytes(1000), "image/png")
        .await;
    assert_eq!(
        delete(&alice, file.file_id).await.expect("delete").status(),
        StatusCode::NO_CONTENT
    );
    ctx.assert_nothing_stored("a deleted finished file");
    let file = ctx
        .upload(&alice, c, &random_bytes(1000), "image/png")
        .await;
    send_files(
        &ctx,
        TransportPref::WebSocket,
        &alice,
        c,
        vec![file_ref(&file)],
    )
    .await
    .expect("sent");
    assert_eq!(
        delete(&alice, file.file_id).await.expect("delete").status(),
        StatusCode::CONFLICT
    );
}

async fn sweeper(backend: Backend) {
    let ctx = start(
        backend,
        "upload_idle_secs = 1, unreferenced_secs = 1, sweep_interval_secs = 1, user_quota_bytes = 10000",
    )
    .await;
    let (alice, bob, c) = alice_and_bob(&ctx.server).await;
    let idle = ctx.create_ok(&alice, c, 3000, "image/png").await;
    let r = ctx
        .patch(&alice, idle.upload_id, 0, random_bytes(1000))
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let unreferenced = ctx
        .upload(&alice, c, &random_bytes(3000), "image/png")
        .await;
    let kept_bytes = random_bytes(3000);
    let kept = ctx.upload(&alice, c, &kept_bytes, "image/png").await;
    send_files(
        &ctx,
        TransportPref::WebSocket,
        &alice,
        c,
        vec![file_ref(&kept)],
    )
    .await
    .expect("sent");
    // Only the referenced object remains once the sweeper has run.
    let mut stored = Vec::new();
    for _ in 0..100 {
        stored = ctx.stored();
        if stored.len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert!(stored[0].ends_with(kept.file_id.to_string()), "{stored:?}");
    assert_eq!(
        ctx.head(&alice, idle.upload_id).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        ctx.signed_url(&alice, unreferenced.file_id).await.status(),
        StatusCode::NOT_FOUND
    );
    let url = ctx.signed_url_ok(&bob, kept.file_id).await;
    let got = ctx.get(&url.url, None).await.bytes().await.expect("body");
    assert_eq!(&got[..], &kept_bytes[..]);
    // Their quota came back: 3000 in use of 10000.
    ctx.create_ok(&alice, c, 7000, "image/png").await;
}

/// A Send naming a file that is not the sender's finished upload in that conversation is
/// refused and nothing is sequenced; a valid one is accepted and the file is listed.
async fn send_check(backend: Backend, transport: TransportPref) {
    let ctx = start(backend, "").await;
    let (alice, bob, c) = alice_and_bob(&ctx.server).await;
    let carol = user(&ctx.server, "carol").await;
    let other = alice
        .http
        .create_direct("carol")
        .await
        .expect("dm")
        .conversation_id;
    carol.http.accept_invitation(other).await.expect("accept");
    let mine = ctx
        .upload(&alice, c, &random_bytes(1000), "image/png")
        .await;
    let bobs = ctx.upload(&bob, c, &random_bytes(1000), "image/png").await;
    let elsewhere = ctx
        .upload(&alice, other, &random_bytes(1000), "image/png")
        .await;
    let unfinished = ctx.create_ok(&alice, c, 1000, "image/png").await;
    let unfinished = FileRef {
        file_id: unfinished.upload_id,
        size: 1000,
        content_type: "image/png".into(),
    };
    let wrong_size = FileRef {
        size: 999,
        ..file_ref(&mine)
    };
    let wrong_type = FileRef {
        content_type: "image/gif".into(),
        ..file_ref(&mine)
    };
    let unknown = FileRef {
        file_id: MessageId::random(),
        ..file_ref(&mine)
    };
    let too_many: Vec<FileRef> = (0..11).map(|_| file_ref(&mine)).collect();
    for (what, files) in [
        ("another user's upload", vec![file_ref(&bobs)]),
        (
            "an upload in another conversation",
            vec![file_ref(&elsewhere)],
        ),
        ("an unfinished upload", vec![unfinished]),
        ("the wrong size", vec![wrong_size]),
        ("the wrong type", vec![wrong_type]),
        ("an unknown id", vec![unknown]),
        (
            "a valid and an invalid file",
            vec![file_ref(&mine), file_ref(&bobs)],
        ),
        ("eleven files", too_many),
    ] {
        assert_eq!(
            send_files(&ctx, transport, &alice, c, files).await,
            Err(ErrorCode::InvalidArgument),
            "{what}"
        );
    }
    let listed: FileList = ctx.list(&alice, c).await.json().await.expect("FileList");
    assert!(listed.files.is_empty(), "a refused send references nothing");
    let seq = send_files(&ctx, transport, &alice, c, vec![file_ref(&mine)])
        .await
        .expect("a valid send is accepted");
    assert_eq!(seq, 1, "nothing was sequenced before it");
    let listed: FileList = ctx.list(&bob, c).await.json().await.expect("FileList");
    assert_eq!(listed.files.len(), 1);
    assert_eq!(listed.files[0].file_id, mine.file_id);
    assert_eq!(listed.files[0].size, 1000);
    // Bob receives it with the file reference; resending names it again (idempotent).
    let history = bob
        .http
        .history(c, Default::default())
        .await
        .expect("history");
    assert_eq!(history.messages.len(), 1);
    let files = &history.messages[0].files;
    assert_eq!(files.len(), 1);
    assert_eq!(
        (
            files[0].file_id,
            files[0].size,
            files[0].content_type.as_str()
        ),
        (mine.file_id, 1000, "image/png")
    );
    let _: UserId = alice.id;
}

/// One PATCH is bounded by max_chunk_bytes: refused up front with a Content-Length (the upload
/// stays), cut at the limit when streamed (its first max_chunk_bytes are kept).
async fn chunk_limit(backend: Backend) {
    let ctx = start(backend, "max_chunk_bytes = 65536").await;
    let (alice, _bob, c) = alice_and_bob(&ctx.server).await;
    let bytes = random_bytes(200_000);
    let view = ctx
        .create_ok(&alice, c, bytes.len() as u64, "image/png")
        .await;
    assert_eq!(view.max_chunk_bytes, 65_536);
    let r = ctx
        .patch(&alice, view.upload_id, 0, bytes[..65_537].to_vec())
        .await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(header(&r, "upload-offset").as_deref(), Some("0"));
    let parts: Vec<Result<Vec<u8>, std::io::Error>> = bytes[..100_000]
        .chunks(10_000)
        .map(|p| Ok(p.to_vec()))
        .collect();
    let r = ctx
        .client
        .patch(ctx.url(&format!("/api/v1/uploads/{}", view.upload_id)))
        .bearer_auth(&alice.token)
        .header("content-type", OFFSET_STREAM)
        .header("upload-offset", "0")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            parts,
        )))
        .send()
        .await;
    if let Ok(r) = r {
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }
    assert_eq!(
        ctx.head(&alice, view.upload_id).await,
        (StatusCode::NO_CONTENT, Some(65_536))
    );
    let mut offset = 65_536usize;
    while offset < bytes.len() {
        let end = (offset + 65_536).min(bytes.len());
        let r = ctx
            .patch(
                &alice,
                view.upload_id,
                offset as u64,
                bytes[offset..end].to_vec(),
            )
            .await;
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        offset = end;
    }
    assert_eq!(
        ctx.finish(&alice, view.upload_id).await.status(),
        StatusCode::OK
    );
    let url = ctx.signed_url_ok(&alice, view.upload_id).await;
    let got = ctx.get(&url.url, None).await.bytes().await.expect("body");
    assert_eq!(sha256(&got), sha256(&bytes));
}

/// The server's body deadline applies to each PATCH: a body that stalls past it is answered 408
/// and what arrived before is kept.
async fn body_deadline(backend: Backend) {
    let ctx = start_with_top(backend, "http_body_timeout_ms = 1000", "").await;
    let (alice, _bob, c) = alice_and_bob(&ctx.server).await;
    let view = ctx.create_ok(&alice, c, 100_000, "image/png").await;
    let stalled = late_last_piece(1, 10_000, Duration::from_secs(3));
    let r = ctx
        .patch_body(
            &alice,
            view.upload_id,
            0,
            reqwest::Body::wrap_stream(stalled),
        )
        .await;
    if let Ok(r) = r {
        assert_eq!(r.status(), StatusCode::REQUEST_TIMEOUT);
    }
    let mut kept = None;
    for _ in 0..50 {
        kept = ctx.head(&alice, view.upload_id).await.1;
        if kept == Some(10_000) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(kept, Some(10_000), "the bytes before the stall are kept");
}

/// The body deadline charges the client only for the time it keeps the server waiting: a PATCH
/// that the server's own pacing stretches past `http_body_timeout_ms` completes. (It counted
/// from the request head before, so with many uploads sharing the pace each PATCH outlasted
/// the deadline and was cut off with a 408: seen with 20 uploads sharing 4 MiB/s.)
async fn paced_patch(backend: Backend) {
    // 256 KiB/s and a 3 s body deadline: the 2 MiB below take the 1 MiB burst at once and 4 s
    // more at the pace.
    let ctx = start_with_top(
        backend,
        "http_body_timeout_ms = 3000",
        "upload_bytes_per_sec = 262144",
    )
    .await;
    let (alice, _bob, c) = alice_and_bob(&ctx.server).await;
    let total = (2 << 20) + 65_536;
    let view = ctx.create_ok(&alice, c, total, "image/png").await;
    // 2 MiB at once (the socket buffers hold what the pace does not take yet), then the last
    // 64 KiB 5 s later: the server, done with the 2 MiB after 4 s, waits about 1 s for the
    // client, and does so after its deadline as counted from the head.
    let pieces = late_last_piece(32, 65_536, Duration::from_secs(5));
    let started = std::time::Instant::now();
    let r = ctx
        .patch_body(
            &alice,
            view.upload_id,
            0,
            reqwest::Body::wrap_stream(pieces),
        )
        .await
        .expect("PATCH");
    assert_eq!(r.status(), StatusCode::NO_CONTENT, "{:?}", r.text().await);
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "the body outlasted the deadline ({:?}), or this test shows nothing",
        started.elapsed()
    );
    assert_eq!(ctx.head(&alice, view.upload_id).await.1, Some(total));
}

/// Two PATCHes at the same offset at once: exactly one is stored, the other learns the offset.
async fn concurrent_patches(backend: Backend) {
    let ctx = start(backend, "").await;
    let (alice, _bob, c) = alice_and_bob(&ctx.server).await;
    let bytes = random_bytes(2_000_000);
    let view = ctx
        .create_ok(&alice, c, bytes.len() as u64, "image/png")
        .await;
    let send = || {
        ctx.client
            .patch(ctx.url(&format!("/api/v1/uploads/{}", view.upload_id)))
            .bearer_auth(&alice.token)
            .header("content-type", OFFSET_STREAM)
            .header("upload-offset", "0")
            .body(bytes[..1_000_000].to_vec())
            .send()
    };
    let (a, b) = tokio::join!(send(), send());
    // The loser is answered 409 as soon as it gets the upload, possibly before its body was
    // read (then the client may see the connection close instead).
    let status = |r: reqwest::Result<reqwest::Response>| r.map(|r| r.status()).ok();
    let mut statuses = [status(a), status(b)];
    statuses.sort();
    assert!(
        statuses == [None, Some(StatusCode::NO_CONTENT)]
            || statuses == [Some(StatusCode::NO_CONTENT), Some(StatusCode::CONFLICT)],
        "exactly one PATCH stored: {statuses:?}"
    );
    assert_eq!(ctx.head(&alice, view.upload_id).await.1, Some(1_000_000));
    let r = ctx
        .patch(
            &alice,
            view.upload_id,
            1_000_000,
            bytes[1_000_000..].to_vec(),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        ctx.finish(&alice, view.upload_id).await.status(),
        StatusCode::OK
    );
    let url = ctx.signed_url_ok(&alice, view.upload_id).await;
    let got = ctx.get(&url.url, None).await.bytes().await.expect("body");
    assert_eq!(sha256(&got), sha256(&bytes));
}

/// A restart (kill -9) keeps the recorded offset, the finished files and the URL key.
async fn survives_restart(backend: Backend) {
    let mut ctx = start(backend, "").await;
    let (alice, _bob, c) = alice_and_bob(&ctx.server).await;
    let done = ctx
        .upload(&alice, c, &random_bytes(5000), "image/png")
        .await;
    let url = ctx.signed_url_ok(&alice, done.file_id).await;
    let bytes = random_bytes(300_000);
    let view = ctx
        .create_ok(&alice, c, bytes.len() as u64, "image/png")
        .await;
    let r = ctx
        .patch(&alice, view.upload_id, 0, bytes[..100_000].to_vec())
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    // Bytes without metadata, as a crash between a deletion's two steps leaves them.
    let orphan = MessageId::random().to_string();
    let files_dir = ctx.server.data_dir.join("files");
    std::fs::write(files_dir.join("staging").join(&orphan), b"orphan").expect("orphan");
    let objects = match &ctx.s3 {
        Some(s3) => s3.dir.clone(),
        None => files_dir.join("objects"),
    };
    std::fs::write(objects.join(format!("{orphan}x")), b"not an id").expect("foreign");
    let orphan_object = MessageId::random().to_string();
    std::fs::write(objects.join(&orphan_object), b"orphan").expect("orphan object");
    ctx.server.restart().await;
    ctx.client = https(&ctx.server);
    let mut left = Vec::new();
    for _ in 0..100 {
        left = ctx
            .stored()
            .into_iter()
            .filter(|p| p.ends_with(&orphan) || p.ends_with(&orphan_object))
            .collect();
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(left.is_empty(), "orphans are removed at start: {left:?}");
    assert!(
        objects.join(format!("{orphan}x")).exists(),
        "names that are no file id are left alone"
    );
    std::fs::remove_file(objects.join(format!("{orphan}x"))).expect("cleanup");
    assert_eq!(
        ctx.get(&url.url, None).await.status(),
        StatusCode::OK,
        "a URL signed before the restart"
    );
    assert_eq!(ctx.head(&alice, view.upload_id).await.1, Some(100_000));
    let r = ctx
        .patch(&alice, view.upload_id, 100_000, bytes[100_000..].to_vec())
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        ctx.finish(&alice, view.upload_id).await.status(),
        StatusCode::OK
    );
    let url = ctx.signed_url_ok(&alice, view.upload_id).await;
    let got = ctx.get(&url.url, None).await.bytes().await.expect("body");
    assert_eq!(sha256(&got), sha256(&bytes));
}

/// File calls spend the caller's request bucket like other API calls: past the burst, 429
/// with Retry-After.
async fn rate_limited(backend: Backend) {
    let s3 = matches!(backend, Backend::S3).then(s3_bucket);
    let server = TestServer::start_with(&[
        "device_request_burst = 3",
        "device_requests_per_sec = 1",
        "http_refusal_delay_ms = 0",
        &files_line(s3.as_ref(), ""),
    ])
    .await;
    let client = https(&server);
    let ctx = Ctx { server, s3, client };
    let (alice, bob, c) = alice_and_bob(&ctx.server).await;
    for _ in 0..3 {
        ctx.create_ok(&alice, c, 10, "image/png").await;
    }
    let r = ctx.create(&alice, c, 10, "image/png").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(header(&r, "retry-after").is_some());
    assert_eq!(error_code(r).await, "rate_limited");
    // Per user: bob still has his.
    ctx.create_ok(&bob, c, 10, "image/png").await;
}

macro_rules! both_backends {
    ($($name:ident => $scenario:expr;)*) => {
        mod local {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    let f = $scenario;
                    f(Backend::Local).await;
                }
            )*
        }
        mod s3 {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    let f = $scenario;
                    f(Backend::S3).await;
                }
            )*
        }
    };
}

both_backends! {
    round_trip_10mb => round_trip;
    range_requests => ranges;
    disallowed_type_stores_nothing => disallowed_type;
    declared_size_over_the_limit => declared_over_limit;
    lying_client_is_cut_off => lying_client;
    dropped_upload_resumes => dropped_and_resumed;
    non_members_get_404 => non_member;
    expired_and_tampered_urls_get_403 => bad_urls;
    quota_and_open_upload_limit => quota;
    abort_leaves_nothing => abort;
    sweeper_removes_idle_and_unreferenced => sweeper;
    send_check_websocket => |b| send_check(b, TransportPref::WebSocket);
    send_check_webtransport => |b| send_check(b, TransportPref::WebTransport);
    one_patch_is_bounded => chunk_limit;
    body_deadline_keeps_what_arrived => body_deadline;
    paced_patch_outlasts_the_body_deadline => paced_patch;
    concurrent_patches_store_once => concurrent_patches;
    restart_keeps_offsets_files_and_urls => survives_restart;
    file_calls_are_rate_limited => rate_limited;
}

/// The OpenAPI document lists every file route with its method.
#[tokio::test]
async fn openapi_documents_the_file_api() {
    let ctx = start(Backend::Local, "").await;
    let doc: serde_json::Value = ctx
        .client
        .get(ctx.url("/api/v1/openapi.json"))
        .send()
        .await
        .expect("openapi")
        .json()
        .await
        .expect("json");
    for (path, method) in [
        ("/api/v1/uploads", "post"),
        ("/api/v1/uploads/{id}", "head"),
        ("/api/v1/uploads/{id}", "patch"),
        ("/api/v1/uploads/{id}", "delete"),
        ("/api/v1/uploads/{id}/finish", "post"),
        ("/api/v1/files/{id}/url", "post"),
        ("/api/v1/files/{id}/content", "get"),
        ("/api/v1/conversations/{id}/files", "get"),
    ] {
        assert!(
            doc["paths"][path].get(method).is_some(),
            "OpenAPI documents {method} {path}"
        );
    }
    for schema in [
        "UploadCreate",
        "UploadView",
        "FileView",
        "FileList",
        "FileUrl",
    ] {
        assert!(
            doc["components"]["schemas"].get(schema).is_some(),
            "schema {schema}"
        );
    }
}
