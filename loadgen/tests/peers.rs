//! The peer adapters against the real peer servers (`bench/peers/`): Socket.IO 4 on Node and
//! Centrifugo v6, each started here on a free port with a fresh self-signed certificate made by
//! `bench/peers/tls.sh`. Three users share a room and two of them a second one; every send must
//! be acknowledged, reach every other member exactly once and in order, and never come back to
//! its sender.
//!
//! These tests need Node 20 + `npm ci --prefix bench/peers/socketio`, the Centrifugo binary from
//! `bash bench/peers/centrifugo/install.sh`, and openssl; `scripts/test.sh` installs all three
//! before running the tests. When something is missing they FAIL with the command that fixes
//! it, never pass vacuously.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use tern_loadgen::target::centrifugo::CentrifugoTarget;
use tern_loadgen::target::socketio::SocketIoTarget;
use tern_loadgen::target::{Connected, Population, Target};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("loadgen/ has a parent")
        .to_path_buf()
}

fn peers_dir() -> PathBuf {
    repo_root().join("bench/peers")
}

/// A scratch directory with the certificate pair; removed when dropped.
struct Certs {
    dir: PathBuf,
}

impl Certs {
    fn make(tag: &str) -> Certs {
        let dir = std::env::temp_dir().join(format!("tern-peers-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let status = std::process::Command::new("bash")
            .arg(peers_dir().join("tls.sh"))
            .arg(&dir)
            .stdout(Stdio::null())
            .status()
            .expect("run bench/peers/tls.sh (needs bash)");
        assert!(
            status.success(),
            "bench/peers/tls.sh failed (needs openssl: apt-get install openssl)"
        );
        Certs { dir }
    }
    fn cert(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }
    fn key(&self) -> PathBuf {
        self.dir.join("key.pem")
    }
    fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let cert = CertificateDer::from_pem_file(self.cert()).expect("read cert.pem");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).expect("trust the test certificate");
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        Arc::new(config)
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

async fn start_socketio(certs: &Certs, env: &[(&str, &str)]) -> (Child, String) {
    let dir = peers_dir().join("socketio");
    assert!(
        dir.join("node_modules/socket.io").is_dir(),
        "Socket.IO peer not installed: run `npm ci --prefix bench/peers/socketio`"
    );
    let mut child = Command::new("node")
        .arg(dir.join("server.js"))
        .args(["--port", "0", "--cert"])
        .arg(certs.cert())
        .arg("--key")
        .arg(certs.key())
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start node (Node 20 is required for the Socket.IO peer)");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("socket.io server ready within 20 s")
        .expect("read server output")
        .expect("socket.io server exited before it was ready");
    let addr = ready
        .strip_prefix("socketio listening on ")
        .unwrap_or_else(|| panic!("unexpected ready line {ready:?}"))
        .to_string();
    (child, addr)
}

async fn start_centrifugo(certs: &Certs, env: &[(&str, &str)]) -> (Child, String) {
    let bin = peers_dir().join(".bin/centrifugo");
    assert!(
        bin.is_file(),
        "Centrifugo peer not installed: run `bash bench/peers/centrifugo/install.sh`"
    );
    let port = free_port();
    let child = Command::new("bash")
        .arg(peers_dir().join("centrifugo/run.sh"))
        .arg(port.to_string())
        .arg(certs.cert())
        .arg(certs.key())
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start bench/peers/centrifugo/run.sh");
    let addr = format!("127.0.0.1:{port}");
    // Ready once the port accepts connections (run.sh execs Centrifugo, which binds last).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if tokio::net::TcpStream::connect(&addr).await.is_ok() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "centrifugo did not listen on {addr} within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (child, addr)
}

/// Three users: room 0 has all of them, room 1 only users 0 and 1. Each user sends `PER_USER`
/// messages to every room it is in; payloads are arbitrary bytes so the base64 carriage is
/// exercised too.
async fn exercise(target: &dyn Target) {
    const PER_USER: usize = 20;
    let population = Population {
        users: 3,
        conversations: vec![vec![0, 1, 2], vec![0, 1]],
    };
    let specs = target.setup(&population).await.expect("setup");
    assert_eq!(specs.len(), 3);

    // Two source addresses, as the loadgen spreads them over 127.0.0.0/8.
    let mut connections: Vec<Connected> = Vec::new();
    for spec in &specs {
        let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (spec.index % 2) as u8));
        connections.push(target.connect(spec, source).await.expect("connect"));
    }

    let payload = |sender: usize, room: usize, n: usize| -> Vec<u8> {
        let mut bytes = format!("{sender}:{room}:{n}:").into_bytes();
        bytes.extend((0..=255u8).map(|b| b.wrapping_add(n as u8)));
        bytes
    };

    // Sends are acknowledged (sequentially per user, concurrently across users).
    let mut sends = Vec::new();
    for (user, connection) in connections.iter().enumerate() {
        let spec = &specs[user];
        let sender = &connection.sender;
        sends.push(async move {
            for n in 0..PER_USER {
                for room in &spec.conversations {
                    sender
                        .send(room, payload(user, room.index, n))
                        .await
                        .unwrap_or_else(|e| panic!("user {user} send {n} to {}: {e}", room.key));
                }
            }
        });
    }
    futures_util::future::join_all(sends).await;

    // Each user receives every other member's messages once, in order, and none of its own.
    for (user, connection) in connections.iter_mut().enumerate() {
        let mut expected: HashMap<(usize, usize), usize> = HashMap::new(); // (sender, room) -> next n
        let mut want = 0;
        for (room, members) in population.conversations.iter().enumerate() {
            if members.contains(&user) {
                for &sender in members.iter().filter(|&&m| m != user) {
                    expected.insert((sender, room), 0);
                    want += PER_USER;
                }
            }
        }
        let mut got = 0;
        while got < want {
            let inbound = tokio::time::timeout(Duration::from_secs(10), connection.inbound.recv())
                .await
                .unwrap_or_else(|_| panic!("user {user}: only {got} of {want} deliveries"))
                .expect("connection still open");
            let text = String::from_utf8_lossy(&inbound.payload);
            let mut parts = text.splitn(4, ':');
            let sender: usize = parts.next().and_then(|s| s.parse().ok()).expect("sender");
            let room: usize = parts.next().and_then(|s| s.parse().ok()).expect("room");
            let n: usize = parts.next().and_then(|s| s.parse().ok()).expect("counter");
            assert_ne!(sender, user, "user {user} got its own message back");
            assert_eq!(
                inbound.conversation, room,
                "delivered in the wrong conversation"
            );
            assert!(inbound.seq.is_none());
            assert_eq!(inbound.payload, payload(sender, room, n), "payload altered");
            let next = expected
                .get_mut(&(sender, room))
                .unwrap_or_else(|| panic!("user {user} got a message from {sender} in {room}"));
            assert_eq!(
                n, *next,
                "user {user}: from {sender} in {room} out of order or duplicated"
            );
            *next += 1;
            got += 1;
        }
        // Nothing more may come (no echo of its own, no duplicate).
        let extra =
            tokio::time::timeout(Duration::from_millis(500), connection.inbound.recv()).await;
        assert!(
            !matches!(extra, Ok(Some(_))),
            "user {user} got an unexpected extra delivery"
        );
    }

    for connection in &connections {
        connection.sender.close().await;
    }
    for connection in &mut connections {
        let end = tokio::time::timeout(Duration::from_secs(10), connection.inbound.recv()).await;
        assert!(
            matches!(end, Ok(None)),
            "inbound stream must end after close"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socketio_adapter_joins_delivers_and_acks() {
    let certs = Certs::make("socketio");
    let (mut server, addr) = start_socketio(&certs, &[]).await;
    let target = SocketIoTarget::new(addr, certs.client_config());
    assert_eq!(target.name(), "socketio");
    exercise(&target).await;
    let _ = server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn centrifugo_adapter_subscribes_delivers_and_acks() {
    let certs = Certs::make("centrifugo");
    let (mut server, addr) = start_centrifugo(&certs, &[]).await;
    let target = CentrifugoTarget::new(addr, certs.client_config());
    assert_eq!(target.name(), "centrifugo");
    exercise(&target).await;
    let _ = server.kill().await;
}

/// Two users stay idle across several server heartbeats (shortened to about a second): the
/// adapters must answer every ping, or the server closes the connection and the later send
/// fails.
async fn survives_heartbeats(target: &dyn Target) {
    let population = Population {
        users: 2,
        conversations: vec![vec![0, 1]],
    };
    let specs = target.setup(&population).await.expect("setup");
    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let a = target
        .connect(&specs[0], localhost)
        .await
        .expect("connect a");
    let mut b = target
        .connect(&specs[1], localhost)
        .await
        .expect("connect b");
    tokio::time::sleep(Duration::from_secs(6)).await;
    a.sender
        .send(&specs[0].conversations[0], b"still here".to_vec())
        .await
        .expect("send after idle heartbeats");
    let inbound = tokio::time::timeout(Duration::from_secs(5), b.inbound.recv())
        .await
        .expect("delivery after idle heartbeats")
        .expect("connection still open");
    assert_eq!(inbound.payload, b"still here");
    a.sender.close().await;
    b.sender.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socketio_adapter_answers_heartbeats() {
    let certs = Certs::make("socketio-hb");
    let env = [
        ("SOCKETIO_PING_INTERVAL_MS", "1000"),
        ("SOCKETIO_PING_TIMEOUT_MS", "500"),
    ];
    let (mut server, addr) = start_socketio(&certs, &env).await;
    survives_heartbeats(&SocketIoTarget::new(addr, certs.client_config())).await;
    let _ = server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn centrifugo_adapter_answers_heartbeats() {
    let certs = Certs::make("centrifugo-hb");
    let env = [
        ("CENTRIFUGO_CLIENT_PING_INTERVAL", "1s"),
        ("CENTRIFUGO_CLIENT_PONG_TIMEOUT", "500ms"),
    ];
    let (mut server, addr) = start_centrifugo(&certs, &env).await;
    survives_heartbeats(&CentrifugoTarget::new(addr, certs.client_config())).await;
    let _ = server.kill().await;
}
