//! File sharing end to end (issue 13) through the SDK against the real binary: Alice's
//! `Client::send_file` encrypts a file on her device and uploads it over HTTPS, the message
//! with its key travels end-to-end encrypted over the real-time transport, Bob's client
//! decrypts it and `download` verifies the object while it streams. Every scenario on both
//! storage backends (the local directory and an S3 server: `TERN_TEST_S3` and friends from
//! `scripts/s3-server.sh`, else the test starts one through that script; on CI it must be
//! set), and the sends over both transports.
//!
//! Checked on the server's disk: the stored object contains none of the file's plaintext
//! (marker scan, as tests/at_rest.rs does for messages); a byte flipped in the stored object,
//! or the object cut short, fails the download with no output file.

mod common;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use common::cli::{Cli, cli_binary};
use common::s3::{S3Bucket, s3_bucket};
use common::*;
use sha2::Digest as _;
use tern_core::crypto::CryptoConfig;
use tern_core::files::{FileBody, FileError, encrypted_len};
use tern_sdk::tern_wire::ids::{ConversationId, DeviceId, MessageId};
use tern_sdk::{Client, ClientEvent, E2e, Error, Outbox, OutboxLimits, TransportPref};
use tokio::io::AsyncWriteExt as _;

const TRANSPORTS: [TransportPref; 2] = [TransportPref::WebSocket, TransportPref::WebTransport];
const TEN_MB: usize = 10_000_000;

#[derive(Clone, Copy, Debug)]
enum Backend {
    Local,
    S3,
}

// ---------------------------------------------------------------------------------------------
// harness

struct Ctx {
    server: TestServer,
    s3: Option<S3Bucket>,
    work: tempfile::TempDir,
}

async fn start(backend: Backend) -> Ctx {
    let s3 = matches!(backend, Backend::S3).then(s3_bucket);
    let line = match &s3 {
        Some(s3) => format!(
            "files = {{ backend = \"s3\", s3_endpoint = \"{}\", s3_bucket = \"{}\", \
             s3_access_key = \"{}\", s3_secret_key = \"{}\", s3_allow_http = true }}",
            s3.endpoint, s3.bucket, s3.access_key, s3.secret_key
        ),
        None => String::new(),
    };
    let server = TestServer::start_with(&[&line]).await;
    Ctx {
        server,
        s3,
        work: tempfile::tempdir().expect("work dir"),
    }
}

impl Ctx {
    /// Where the finished objects are on disk: the local object directory, or the bucket's.
    fn object_root(&self) -> PathBuf {
        match &self.s3 {
            Some(s3) => s3.dir.clone(),
            None => self.server.data_dir.join("files").join("objects"),
        }
    }

    /// The stored objects of exactly `len` bytes.
    fn objects_of_len(&self, len: u64) -> Vec<PathBuf> {
        walk(&self.object_root())
            .into_iter()
            .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.len() == len))
            .collect()
    }

    /// A file of `len` bytes in the work directory: random bytes with `marker` written in
    /// every 64 KiB (so any stored plaintext would show it).
    fn file(&self, name: &str, len: usize, marker: &str) -> (PathBuf, Vec<u8>) {
        let mut bytes = vec![0u8; len];
        rand::fill(&mut bytes[..]);
        for at in (0..len.saturating_sub(marker.len())).step_by(65_536) {
            bytes[at..at + marker.len()].copy_from_slice(marker.as_bytes());
        }
        let path = self.work.path().join(name);
        std::fs::write(&path, &bytes).expect("write the file");
        (path, bytes)
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    walk(dir)
        .into_iter()
        .filter(|p| std::fs::read(p).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle)))
        .collect()
}

fn marker() -> String {
    format!(
        "MARKER-FILE-{:08x}-never-stored-in-clear",
        (DeviceId::random().0 >> 96) as u32
    )
}

/// A connected client with end-to-end encryption (its keys published on connect).
async fn client(ctx: &Ctx, transport: TransportPref, user: &TestUser) -> Client {
    client_with(ctx.server.config(transport), user).await
}

async fn client_with(config: tern_sdk::Config, user: &TestUser) -> Client {
    let device = DeviceId::random();
    let e2e = E2e::in_memory(user.id, device, CryptoConfig::default()).expect("crypto");
    let mut client = Client::new(
        config,
        user.token.clone(),
        device,
        &[],
        Outbox::in_memory(OutboxLimits::default()),
    );
    client.set_e2e(e2e);
    client.reconnect().await.expect("connect");
    client
}

/// Pumps `client` until a file message arrives; returns its body.
async fn next_file(client: &mut Client) -> FileBody {
    let wait = async {
        loop {
            match client.next_event().await {
                // The message may come before its key (NoKeyYet), then as Decrypted.
                Some(ClientEvent::Message(m) | ClientEvent::Decrypted(m)) => {
                    if let Some(body) = tern_sdk::file_body_of(&m) {
                        assert_eq!(m.content_type, "tern.file");
                        return body;
                    }
                }
                Some(ClientEvent::Undecryptable(u)) => {
                    assert!(
                        matches!(u.reason, tern_core::crypto::Undecryptable::NoKeyYet),
                        "undecryptable: {u:?}"
                    );
                }
                Some(_) => {}
                None => client.reconnect().await.expect("reconnect"),
            }
        }
    };
    tokio::time::timeout(WAIT * 2, wait)
        .await
        .expect("the file message in time")
}

fn no_progress() -> impl FnMut(u64, u64) -> ControlFlow<()> + Send {
    |_, _| ControlFlow::Continue(())
}

fn sha256(b: &[u8]) -> [u8; 32] {
    sha2::Sha256::digest(b).into()
}

/// Alice and Bob (both connected, Bob first so his device keys are there when Alice sends).
async fn pair(ctx: &Ctx, transport: TransportPref) -> (Client, Client, ConversationId) {
    let suffix = format!("{:x}", DeviceId::random().0 >> 100);
    let alice = user(&ctx.server, &format!("alice{suffix}")).await;
    let bob = user(&ctx.server, &format!("bob{suffix}")).await;
    let conversation = alice
        .http
        .create_direct(&bob.name)
        .await
        .expect("dm")
        .conversation_id;
    bob.http
        .accept_invitation(conversation)
        .await
        .expect("accept");
    let bob_client = client(ctx, transport, &bob).await;
    let alice_client = client(ctx, transport, &alice).await;
    (alice_client, bob_client, conversation)
}

// ---------------------------------------------------------------------------------------------
// scenarios

/// A 10 MB file A→B over each transport: the download's hash matches, the Send named the
/// upload (the server lists it as referenced), the stored object is exactly the encrypted
/// length and holds none of the plaintext.
async fn ten_megabytes(backend: Backend) {
    let ctx = start(backend).await;
    for (round, transport) in TRANSPORTS.into_iter().enumerate() {
        let (mut alice, mut bob, conversation) = pair(&ctx, transport).await;
        let mark = marker();
        let (path, bytes) = ctx.file("report.bin", TEN_MB, &mark);
        let mut seen = Vec::new();
        let mut progress = |done: u64, total: u64| {
            seen.push((done, total));
            ControlFlow::Continue(())
        };
        let (receipt, sent) = alice
            .send_file(
                conversation,
                &path,
                None,
                "application/octet-stream",
                "the numbers",
                &mut progress,
            )
            .await
            .unwrap_or_else(|e| panic!("{transport:?}: send_file: {e}"));
        assert_eq!(receipt.conversation, conversation);
        assert_eq!(sent.size, TEN_MB as u64);
        assert_eq!(sent.name, "report.bin");
        assert_eq!(sent.sha256, sha256(&bytes));
        let total = encrypted_len(TEN_MB as u64);
        assert_eq!(
            seen.last(),
            Some(&(total, total)),
            "progress ends at the total"
        );
        assert!(
            seen.windows(2).all(|w| w[0].0 <= w[1].0),
            "progress never goes back"
        );
        assert!(seen.len() > 100, "progress in pieces: {}", seen.len());

        let body = next_file(&mut bob).await;
        assert_eq!(body, sent, "{transport:?}: bob got the body alice sent");
        // The server kept the upload as referenced by the message, at its encrypted size.
        let files = bob
            .http_api()
            .expect("api")
            .conversation_files(conversation)
            .await
            .expect("list");
        assert_eq!(files.files.len(), 1);
        assert_eq!(files.files[0].file_id, body.file_id);
        assert_eq!(files.files[0].size, total);

        let dest = ctx.work.path().join(format!("bob-{transport:?}.bin"));
        let mut got = Vec::new();
        let mut progress = |done: u64, total: u64| {
            got.push((done, total));
            ControlFlow::Continue(())
        };
        let size = bob
            .download(&body, &dest, &mut progress)
            .await
            .expect("download");
        assert_eq!(size, TEN_MB as u64);
        let downloaded = std::fs::read(&dest).expect("read the download");
        assert_eq!(
            sha256(&downloaded),
            body.sha256,
            "{transport:?}: hash matches"
        );
        assert!(downloaded == bytes, "{transport:?}: the same bytes");
        assert_eq!(got.last(), Some(&(total, total)));

        // The stored object: the exact encrypted length, no plaintext anywhere the server
        // wrote; the same scan finds the marker in the plaintext copies (the scan works).
        assert_eq!(
            ctx.objects_of_len(total).len(),
            round + 1,
            "one object per upload"
        );
        let hits = files_containing(&ctx.server.data_dir, mark.as_bytes());
        assert!(hits.is_empty(), "plaintext on the server's disk: {hits:?}");
        if let Some(s3) = &ctx.s3 {
            let hits = files_containing(&s3.dir, mark.as_bytes());
            assert!(hits.is_empty(), "plaintext in the bucket: {hits:?}");
        }
        assert_eq!(files_containing(ctx.work.path(), mark.as_bytes()).len(), 2);
        std::fs::remove_file(&path).expect("remove");
        std::fs::remove_file(&dest).expect("remove");
        alice.close().await;
        bob.close().await;
    }
}

/// An upload cancelled at 50 % (the connection drops mid-PATCH) resumes from the server's
/// offset — re-encrypting from the chunk that holds it — completes, and Bob's copy verifies.
async fn resumed(backend: Backend) {
    let ctx = start(backend).await;
    for transport in TRANSPORTS {
        let (mut alice, mut bob, conversation) = pair(&ctx, transport).await;
        let (path, bytes) = ctx.file("big.bin", TEN_MB, &marker());
        let api = alice.http_api().expect("api");
        let mut upload = alice
            .start_upload(conversation, &path, "application/octet-stream")
            .await
            .expect("start");
        let total = upload.encrypted_len();
        // 1 MiB PATCHes: the cancel falls inside one, after several finished ones.
        upload.set_patch_bytes(1 << 20);
        let mut cancel_at_half = |done: u64, total: u64| {
            if done * 2 >= total {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        };
        let first = upload.run(&api, &mut cancel_at_half).await;
        assert!(matches!(first, Err(Error::Cancelled)), "{first:?}");
        let offset = wait_offset(&api, upload.upload_id()).await;
        assert!(
            offset * 10 >= total * 4 && offset < total,
            "the server kept the first attempt's bytes: {offset} of {total}"
        );
        let mut resumed_from = None;
        let mut progress = |done: u64, _total: u64| {
            resumed_from.get_or_insert(done);
            ControlFlow::Continue(())
        };
        let view = upload.run(&api, &mut progress).await.expect("resume");
        assert_eq!(view.size, total);
        assert_eq!(
            resumed_from,
            Some(offset),
            "the second attempt starts at the server's offset"
        );
        let (_, sent) = alice
            .send_upload(&upload, "big.bin", "")
            .await
            .expect("send");
        assert_eq!(
            sent.sha256,
            sha256(&bytes),
            "the hash covers every chunk once"
        );

        let body = next_file(&mut bob).await;
        let dest = ctx.work.path().join(format!("resumed-{transport:?}.bin"));
        bob.download(&body, &dest, &mut no_progress())
            .await
            .expect("download");
        assert!(
            std::fs::read(&dest).expect("read") == bytes,
            "{transport:?}: same bytes"
        );
        std::fs::remove_file(&path).expect("remove");
        std::fs::remove_file(&dest).expect("remove");
        alice.close().await;
        bob.close().await;
    }
}

/// The server finishes writing a broken PATCH's body on its own: its offset settles.
async fn wait_offset(api: &tern_sdk::HttpApi, upload: MessageId) -> u64 {
    let mut last = None;
    for _ in 0..50 {
        match api.upload_offset(upload).await {
            Ok(o) if last == Some(o) => return o,
            Ok(o) => last = Some(o),
            Err(e) => panic!("HEAD: {e}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    last.expect("an offset")
}

/// A byte flipped in the stored object, or the object cut short, fails Bob's download with
/// `Error::File` and leaves no file (nor a temporary one) behind; the intact object before
/// verified.
async fn tampered_and_truncated(backend: Backend) {
    let ctx = start(backend).await;
    let (mut alice, mut bob, conversation) = pair(&ctx, TransportPref::WebSocket).await;
    let len = 300_000;
    let (path, bytes) = ctx.file("t.bin", len, &marker());
    let (_, sent) = alice
        .send_file(
            conversation,
            &path,
            Some("t.bin"),
            "application/octet-stream",
            "",
            &mut no_progress(),
        )
        .await
        .expect("send");
    let body = next_file(&mut bob).await;
    assert_eq!(body, sent);
    let downloads = ctx.work.path().join("downloads");
    std::fs::create_dir_all(&downloads).expect("mkdir");
    let ok = downloads.join("ok.bin");
    bob.download(&body, &ok, &mut no_progress())
        .await
        .expect("intact download");
    assert!(std::fs::read(&ok).expect("read") == bytes);
    std::fs::remove_file(&ok).expect("remove");

    let objects = ctx.objects_of_len(encrypted_len(len as u64));
    assert_eq!(objects.len(), 1, "{objects:?}");
    let object = &objects[0];
    let original = std::fs::read(object).expect("read the object");
    // One bit in the middle of chunk 2.
    let mut flipped = original.clone();
    flipped[20 + 2 * 65_552 + 1000] ^= 0x01;
    std::fs::write(object, &flipped).expect("tamper");
    let dest = downloads.join("tampered.bin");
    let e = bob
        .download(&body, &dest, &mut no_progress())
        .await
        .expect_err("a tampered object must not verify");
    assert!(
        matches!(e, Error::File(FileError::Tampered { chunk: 2 })),
        "{e}"
    );
    assert_eq!(
        walk(&downloads),
        Vec::<PathBuf>::new(),
        "nothing left after tampering"
    );

    // The last 100 bytes gone (the last chunk's end and tag). The server still declares the
    // recorded size, so its body breaks off and a Range request for the rest finds nothing:
    // the download ends as truncated, or with the server's failure to serve the missing bytes
    // (local: HTTP 500; S3: the connection closes). Never a file.
    std::fs::write(object, &original[..original.len() - 100]).expect("truncate");
    let e = bob
        .download(&body, &dest, &mut no_progress())
        .await
        .expect_err("a truncated object must not verify");
    assert!(
        matches!(e, Error::File(FileError::Truncated { .. }) | Error::Http(_))
            || matches!(&e, Error::Api(f) if f.status >= 500),
        "{e}"
    );
    assert_eq!(
        walk(&downloads),
        Vec::<PathBuf>::new(),
        "nothing left after truncation"
    );

    // Restored, it verifies again (the failures were the object's, not the client's).
    std::fs::write(object, &original).expect("restore");
    bob.download(&body, &dest, &mut no_progress())
        .await
        .expect("restored download");
    assert!(std::fs::read(&dest).expect("read") == bytes);
    alice.close().await;
    bob.close().await;
}

// ---------------------------------------------------------------------------------------------
// real dropped connections: a TCP proxy that cuts one connection after a number of bytes

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// Client to server (an upload's PATCH body).
    Up,
    /// Server to client (a download's body).
    Down,
}

/// Forwards loopback TCP to the server (TLS passes through untouched: the client pins the
/// server's certificate hash) and kills the first connection that carries more than
/// `cut_after` bytes in `direction`, once.
struct Cutter {
    direction: Direction,
    cut_after: u64,
    fired: std::sync::atomic::AtomicBool,
    /// Bytes forwarded in `direction` over all connections.
    forwarded: std::sync::atomic::AtomicU64,
}

async fn cutting_proxy(
    target: std::net::SocketAddr,
    direction: Direction,
    cut_after: u64,
) -> (std::net::SocketAddr, std::sync::Arc<Cutter>) {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    use tokio::io::AsyncReadExt as _;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let cutter = Arc::new(Cutter {
        direction,
        cut_after,
        fired: false.into(),
        forwarded: 0.into(),
    });
    let shared = cutter.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let cutter = shared.clone();
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                // One direction: copies until EOF, or returns early when this connection is
                // the one to cut.
                async fn pump(
                    from: &mut tokio::net::tcp::OwnedReadHalf,
                    to: &mut tokio::net::tcp::OwnedWriteHalf,
                    cutter: &Cutter,
                    counted: bool,
                ) {
                    let mut seen = 0u64;
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match from.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if counted {
                            seen += n as u64;
                            if seen > cutter.cut_after && !cutter.fired.swap(true, Ordering::SeqCst)
                            {
                                return;
                            }
                            cutter.forwarded.fetch_add(n as u64, Ordering::SeqCst);
                        }
                        if to.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
                let up = cutter.direction == Direction::Up;
                // Whichever side ends (EOF or the cut) ends the connection: both halves drop.
                tokio::select! {
                    _ = pump(&mut cr, &mut sw, &cutter, up) => {}
                    _ = pump(&mut sr, &mut cw, &cutter, !up) => {}
                }
            });
        }
    });
    (addr, cutter)
}

/// Real dropped connections, retried inside one call: Alice's upload loses its connection
/// mid-PATCH (at 5 MB) and `send_file` resumes it from the server's offset on its own; Bob's
/// download loses its connection at 5 MB and continues with a Range request (it does not
/// start over: the bytes forwarded stay below the object plus 1 MB). Both ends verify.
#[tokio::test]
async fn dropped_connections_resume_inside_one_call() {
    use std::sync::atomic::Ordering;
    let ctx = start(Backend::Local).await;
    let suffix = format!("{:x}", DeviceId::random().0 >> 100);
    let alice = user(&ctx.server, &format!("alice{suffix}")).await;
    let bob = user(&ctx.server, &format!("bob{suffix}")).await;
    let conversation = alice
        .http
        .create_direct(&bob.name)
        .await
        .expect("dm")
        .conversation_id;
    bob.http
        .accept_invitation(conversation)
        .await
        .expect("accept");
    let half = 5_000_000;
    let (up_addr, up) = cutting_proxy(ctx.server.addr, Direction::Up, half).await;
    let (down_addr, down) = cutting_proxy(ctx.server.addr, Direction::Down, half).await;
    let via = |addr: std::net::SocketAddr| {
        let mut config = tern_sdk::Config::new(
            &addr.to_string(),
            tern_sdk::Trust::PinnedSha256(vec![ctx.server.cert_hash]),
        )
        .expect("config");
        config.transport = TransportPref::WebSocket;
        config
    };
    let mut bob_client = client_with(via(down_addr), &bob).await;
    let mut alice_client = client_with(via(up_addr), &alice).await;

    let (path, bytes) = ctx.file("cut.bin", TEN_MB, &marker());
    let (_, sent) = alice_client
        .send_file(
            conversation,
            &path,
            None,
            "application/octet-stream",
            "",
            &mut no_progress(),
        )
        .await
        .expect("the upload resumes after its connection was cut");
    assert!(
        up.fired.load(Ordering::SeqCst),
        "the upload's connection was cut"
    );
    let total = encrypted_len(TEN_MB as u64);
    let uploaded = up.forwarded.load(Ordering::SeqCst);
    assert!(
        uploaded < total + (1 << 20),
        "resumed, not restarted: {uploaded} bytes for {total}"
    );

    let body = next_file(&mut bob_client).await;
    assert_eq!(body, sent);
    let dest = ctx.work.path().join("cut-download.bin");
    bob_client
        .download(&body, &dest, &mut no_progress())
        .await
        .expect("the download resumes after its connection was cut");
    assert!(
        down.fired.load(Ordering::SeqCst),
        "the download's connection was cut"
    );
    let downloaded = down.forwarded.load(Ordering::SeqCst);
    assert!(
        downloaded < total + (1 << 20),
        "Range resume, not a restart: {downloaded} bytes for {total}"
    );
    assert!(
        std::fs::read(&dest).expect("read") == bytes,
        "the same bytes"
    );
    alice_client.close().await;
    bob_client.close().await;
}

#[tokio::test]
async fn ten_megabytes_a_to_b_local() {
    ten_megabytes(Backend::Local).await;
}

#[tokio::test]
async fn ten_megabytes_a_to_b_s3() {
    ten_megabytes(Backend::S3).await;
}

#[tokio::test]
async fn upload_dropped_at_half_resumes_local() {
    resumed(Backend::Local).await;
}

#[tokio::test]
async fn upload_dropped_at_half_resumes_s3() {
    resumed(Backend::S3).await;
}

#[tokio::test]
async fn tampered_or_truncated_object_fails_download_local() {
    tampered_and_truncated(Backend::Local).await;
}

#[tokio::test]
async fn tampered_or_truncated_object_fails_download_s3() {
    tampered_and_truncated(Backend::S3).await;
}

// ---------------------------------------------------------------------------------------------
// the CLI: `/file PATH` in chat, `tern-cli download`

#[tokio::test]
async fn cli_file_and_download() {
    let bin = cli_binary();
    let ctx = start(Backend::Local).await;
    let alice = Cli::new(&bin, &ctx.server);
    let bob = Cli::new(&bin, &ctx.server);
    let here = ctx.work.path();
    alice.run_in(&["register", "alice"], "", Some(here)).await;
    bob.run_in(&["register", "bob"], "", Some(here)).await;
    alice.run_in(&["login", "alice"], "", Some(here)).await;
    bob.run_in(&["login", "bob"], "", Some(here)).await;
    let conversation = alice
        .run_in(&["dm", "bob"], "", Some(here))
        .await
        .trim()
        .to_string();
    bob.run_in(&["accept", "@alice"], "", Some(here)).await;
    // Bob's CLI device publishes its keys.
    bob.run_in(&["history", "@alice"], "", Some(here)).await;

    let (path, bytes) = ctx.file("notes.txt", 200_000, &marker());
    let sent = alice
        .run_in(
            &["chat", "@bob"],
            &format!("/file {}\n/quit\n", path.display()),
            Some(here),
        )
        .await;
    let line = sent
        .lines()
        .find(|l| l.contains("[file] notes.txt (200.0 kB)"))
        .unwrap_or_else(|| panic!("the sent file line: {sent}"));
    let seq: u64 = line
        .rsplit(' ')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a seq at the end of {line:?}"));
    assert!(
        line.contains(&format!("tern-cli download {conversation} {seq}")),
        "{line}"
    );

    // Bob's history shows the file and the command; the download writes the verified file.
    let history = bob.run_in(&["history", "@alice"], "", Some(here)).await;
    assert!(history.contains("[file] notes.txt (200.0 kB)"), "{history}");
    assert!(
        history.contains(&format!("tern-cli download {conversation} {seq}")),
        "{history}"
    );
    let downloads = here.join("bob-downloads");
    std::fs::create_dir_all(&downloads).expect("mkdir");
    let out = bob
        .run_in(
            &["download", &conversation, &seq.to_string()],
            "",
            Some(&downloads),
        )
        .await;
    assert!(out.contains("SHA-256 verified"), "{out}");
    assert!(std::fs::read(downloads.join("notes.txt")).expect("the file") == bytes);
    // Never overwritten: a second download to the same name fails and keeps the file.
    let out = bob
        .output_in(
            &["download", &conversation, &seq.to_string()],
            "",
            Some(&downloads),
        )
        .await;
    let (ok, stderr) = (out.success, out.stderr);
    assert!(!ok && stderr.contains("already exists"), "{stderr}");
    // A message that is not a file.
    alice
        .run_in(&["chat", "@bob"], "just text\n/quit\n", Some(here))
        .await;
    let out = bob
        .output_in(
            &["download", &conversation, &(seq + 1).to_string()],
            "",
            Some(&downloads),
        )
        .await;
    let (ok, stderr) = (out.success, out.stderr);
    assert!(!ok && stderr.contains("not a file"), "{stderr}");
}
