//! Test harness: starts the real `tern` binary on ephemeral ports with its own data directory,
//! and helpers to talk to it through the SDK over real TLS.

#![allow(dead_code)] // each test binary uses a different subset

pub mod cli;
pub mod s3;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tern_sdk::tern_wire::ids::{ConversationId, DeviceId};
use tern_sdk::tern_wire::msg::Message;
use tern_sdk::{Config, Connection, Event, HttpApi, TransportPref, Trust};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const WAIT: Duration = Duration::from_secs(15);
pub const PASSWORD: &str = "correct horse battery staple";

pub struct TestServer {
    child: Option<Child>,
    pub addr: SocketAddr,
    /// The operations listener (/healthz, /metrics), when the config did not switch it off.
    pub ops_addr: Option<SocketAddr>,
    pub cert_hash: [u8; 32],
    pub data_dir: PathBuf,
    /// The banner's lines up to the certificate hash (what an operator reads at start).
    pub banner: Vec<String>,
    _dir: tempfile::TempDir,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(&[]).await
    }

    /// `config` lines go into a TOML file passed with --config.
    pub async fn start_with(config: &[&str]) -> TestServer {
        Self::start_in(tempfile::tempdir().expect("tempdir"), config).await
    }

    /// Starts in a directory the caller prepared (e.g. with certificate files in it).
    pub async fn start_in(dir: tempfile::TempDir, config: &[&str]) -> TestServer {
        let data_dir = dir.path().join("data");
        let config_path = dir.path().join("tern.toml");
        let mut lines = config.join("\n");
        // The default operations port (client port + 1) could be taken: a free one instead.
        if !lines.contains("ops_listen") {
            lines.push_str("\nops_listen = \"127.0.0.1:0\"\n");
        }
        // Every test client connects from 127.0.0.1 and each SDK user keeps its own HTTPS pool:
        // suites with hundreds of users would meet the per-address budget (tests/edge.rs sets
        // its own).
        if !lines.contains("max_connections_per_address") {
            lines.push_str("\nmax_connections_per_address = 1000000\n");
        }
        std::fs::write(&config_path, lines).expect("write config");
        let (child, addr, ops_addr, cert_hash, banner) = spawn(
            &data_dir,
            &config_path,
            "127.0.0.1:0".parse().expect("addr"),
        )
        .await;
        TestServer {
            child: Some(child),
            addr,
            ops_addr,
            cert_hash,
            data_dir,
            banner,
            _dir: dir,
        }
    }

    /// SIGKILL: no shutdown code runs, unsynced writes are lost (what crash safety must survive).
    pub async fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.start_kill().expect("kill -9");
            let _ = child.wait().await;
        }
    }

    /// SIGTERM: the graceful path. Waits for the process to exit.
    pub async fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id().expect("running server has a pid");
            let status = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status()
                .expect("kill -TERM");
            assert!(status.success());
            let exit = tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .expect("exits in time")
                .expect("wait");
            assert!(exit.success(), "graceful shutdown exits 0, got {exit:?}");
        }
    }

    /// Starts the server again on the same data directory and address.
    pub async fn restart(&mut self) {
        self.kill9().await;
        let config_path = self.data_dir.parent().expect("parent").join("tern.toml");
        let (child, addr, ops_addr, cert_hash, banner) =
            spawn(&self.data_dir, &config_path, self.addr).await;
        self.banner = banner;
        assert_eq!(addr, self.addr);
        self.ops_addr = ops_addr;
        assert_eq!(
            cert_hash, self.cert_hash,
            "a restart keeps the persisted certificate"
        );
        self.child = Some(child);
    }

    pub fn config(&self, transport: TransportPref) -> Config {
        let mut config = Config::new(
            &self.addr.to_string(),
            Trust::PinnedSha256(vec![self.cert_hash]),
        )
        .expect("config");
        config.transport = transport;
        config
    }

    pub fn http(&self) -> HttpApi {
        HttpApi::new(&self.config(TransportPref::WebSocket)).expect("http client")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.parent().expect("parent").join("server.log"))
            .unwrap_or_default()
    }
}

async fn spawn(
    data_dir: &std::path::Path,
    config: &std::path::Path,
    listen: SocketAddr,
) -> (Child, SocketAddr, Option<SocketAddr>, [u8; 32], Vec<String>) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data_dir.parent().expect("parent").join("server.log"))
        .expect("log file");
    // TERN_TEST_BIN runs the same tests against another build (e.g. the previous release, to
    // show a new test fails there).
    let binary = std::env::var_os("TERN_TEST_BIN")
        .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_tern")), PathBuf::from);
    let mut command = Command::new(binary);
    command
        .args(["serve", "--data-dir"])
        .arg(data_dir)
        .arg("--listen")
        .arg(listen.to_string())
        .arg("--config")
        .arg(config);
    // The suite runs once per I/O driver and shard count (scripts/test.sh sets these).
    if let Ok(io) = std::env::var("TERN_TEST_IO") {
        command.arg("--io").arg(io);
    }
    let config_text = std::fs::read_to_string(config).unwrap_or_default();
    if let Ok(shards) = std::env::var("TERN_TEST_SHARDS") {
        // A test that sets its own shard count (in its config) keeps it.
        if !config_text.contains("shards") {
            command.arg("--shards").arg(shards);
        }
    }
    let mut child = command
        .env("TERN_LOG", "info,tern_gateway=debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .expect("start tern");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut addr = None;
    let mut ops_addr = None;
    let mut hash = None;
    let mut banner = Vec::new();
    let read = async {
        while let Ok(Some(line)) = lines.next_line().await {
            banner.push(line.clone());
            if let Some(rest) = line.strip_prefix("tern listening on ") {
                addr = Some(rest.trim().parse::<SocketAddr>().expect("listen address"));
            }
            if let Some(rest) = line.trim().strip_prefix("operations:") {
                let authority = rest.trim().trim_start_matches("https://");
                let authority = authority.split_whitespace().next().unwrap_or_default();
                ops_addr = Some(authority.parse::<SocketAddr>().expect("operations address"));
            }
            if let Some(rest) = line.trim().strip_prefix("certificate sha-256: ") {
                let bytes = hex::decode(rest.trim()).expect("hex hash");
                hash = Some(<[u8; 32]>::try_from(bytes.as_slice()).expect("32 bytes"));
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .expect("server printed its banner in time");
    // Keep draining stdout so the server never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (
        child,
        addr.expect("banner has the address"),
        ops_addr,
        hash.expect("banner has the certificate hash"),
        banner,
    )
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}

/// A registered, logged-in user.
pub struct TestUser {
    pub name: String,
    pub http: HttpApi,
    pub token: String,
    pub id: tern_sdk::tern_wire::ids::UserId,
}

pub async fn user(server: &TestServer, name: &str) -> TestUser {
    let mut http = server.http();
    let view = http.register(name, PASSWORD).await.expect("register");
    let login = http.login(name, PASSWORD).await.expect("login");
    assert_eq!(login.user_id, view.user_id);
    TestUser {
        name: name.to_owned(),
        token: login.token.clone(),
        http,
        id: view.user_id,
    }
}

pub async fn connect(
    server: &TestServer,
    transport: TransportPref,
    user: &TestUser,
    device: DeviceId,
) -> Connection {
    let conn = Connection::connect(&server.config(transport), &user.token, device, &[])
        .await
        .expect("connect");
    assert_eq!(conn.welcome().user, user.id);
    conn
}

/// Connects and waits for the end of resume replay, returning what was replayed.
pub async fn connect_synced(
    server: &TestServer,
    transport: TransportPref,
    user: &TestUser,
    device: DeviceId,
) -> (Connection, Vec<Message>) {
    let mut conn = connect(server, transport, user, device).await;
    let mut replayed = Vec::new();
    loop {
        match next(&mut conn).await {
            Event::SyncComplete => break,
            Event::Deliver(m) => replayed.push(m),
            Event::Other(_) => {}
            other => panic!("unexpected event before SyncComplete: {other:?}"),
        }
    }
    (conn, replayed)
}

pub async fn next(conn: &mut Connection) -> Event {
    tokio::time::timeout(WAIT, conn.next_event())
        .await
        .expect("event in time")
        .expect("connection open")
}

/// The next delivered message, skipping other events.
pub async fn next_message(conn: &mut Connection) -> Message {
    loop {
        match next(conn).await {
            Event::Deliver(m) => return m,
            Event::SyncComplete | Event::Other(_) => {}
            other => panic!("expected a delivery, got {other:?}"),
        }
    }
}

/// Asserts nothing is delivered for a short while.
pub async fn assert_quiet(conn: &mut Connection) {
    match tokio::time::timeout(Duration::from_millis(300), conn.next_event()).await {
        Err(_) => {}
        Ok(Some(Event::Other(_))) => {}
        Ok(other) => panic!("expected no delivery, got {other:?}"),
    }
}

pub fn text(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

pub fn conversation_id(view: &tern_sdk::tern_wire::api::ConversationView) -> ConversationId {
    view.conversation_id
}

/// A plain HTTPS client trusting the test server's pinned certificate.
pub fn https(server: &TestServer) -> reqwest::Client {
    let config = server.config(TransportPref::WebSocket);
    reqwest::Client::builder()
        .use_preconfigured_tls((*config.tls().tcp).clone())
        .build()
        .expect("https client")
}

/// Alice and Bob, registered and logged in, with their 1:1 conversation: opened by Alice,
/// accepted by Bob (so presence flows between them too).
pub async fn alice_and_bob(server: &TestServer) -> (TestUser, TestUser, ConversationId) {
    let alice = user(server, "alice").await;
    let bob = user(server, "bob").await;
    let conversation = alice
        .http
        .create_direct("bob")
        .await
        .expect("dm")
        .conversation_id;
    bob.http
        .accept_invitation(conversation)
        .await
        .expect("bob accepts alice's request");
    (alice, bob, conversation)
}

/// Accepts `conversation`'s pending invitation (a group, or a 1:1 request) for every one of
/// `users` over HTTPS, many at once.
pub async fn accept_all(conversation: ConversationId, users: &[&TestUser]) {
    use futures_util::StreamExt as _;
    futures_util::stream::iter(users.iter())
        .map(|u| async move {
            u.http
                .accept_invitation(conversation)
                .await
                .unwrap_or_else(|e| panic!("{} accepts {conversation}: {e}", u.name))
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
}

/// A group owned by `owner` with `members` in it, made the way the product works: creation
/// invites them (and adds nobody), then each accepts. Returns the group's id.
pub async fn group_with_members(
    owner: &TestUser,
    name: &str,
    members: &[&TestUser],
) -> ConversationId {
    let names: Vec<String> = members.iter().map(|m| m.name.clone()).collect();
    let view = owner
        .http
        .create_group(name, "", &names)
        .await
        .expect("create group");
    assert_eq!(view.members.len(), 1, "creation invites, it adds nobody");
    accept_all(view.conversation_id, members).await;
    view.conversation_id
}

/// One sample of a Prometheus series from `GET /metrics` on the operations listener (0 when
/// absent).
pub async fn metric(server: &TestServer, series: &str) -> f64 {
    let ops = server.ops_addr.expect("the operations listener is on");
    let url = format!("https://{ops}/metrics");
    let body = https(server)
        .get(url)
        .send()
        .await
        .expect("metrics request")
        .text()
        .await
        .expect("metrics body");
    body.lines()
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse::<f64>().expect("metric value"))
        })
        .unwrap_or(0.0)
}
