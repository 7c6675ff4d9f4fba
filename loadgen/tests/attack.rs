//! `tern-loadgen attack ...`: flag checks that need no server (loopback only, bounds), the
//! ledgers' accounting, and each attack once against the real `tern` binary on an ephemeral
//! loopback port with small, bounded counts. The server-backed tests assert the tool's
//! accounting invariants (every attempt ends up in exactly one bucket), never timings and
//! never the server's limits: the same tests must pass before and after the server is hardened.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use clap::Parser as _;
use serde_json::Value;
use tern_loadgen::attack::bystander::{ChatLedger, LoginLedger, decode_chat, encode_chat};
use tern_loadgen::attack::{self, AttackReport};
use tern_loadgen::cli::{AttackCommand, Cli, Command};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command as Process};

fn tern_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
    let bin = dir.join("tern");
    if !bin.exists() {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("workspace root");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args(["build", "-p", "tern-gateway", "--bin", "tern"])
            .current_dir(workspace)
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building the tern binary failed");
    }
    bin
}

struct Server {
    _child: Child,
    addr: String,
    cert_hash: String,
    pid: u32,
    _dir: tempfile::TempDir,
}

/// `tern serve` with its defaults (the point of these tools), on an ephemeral port.
async fn start_server() -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = std::fs::File::create(dir.path().join("server.log")).expect("log");
    let mut child = Process::new(tern_binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .expect("start tern");
    let pid = child.id().expect("pid");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let (mut addr, mut hash) = (None, None);
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(a) = line.strip_prefix("tern listening on ") {
                addr = Some(a.trim().to_string());
            }
            if let Some(h) = line.trim().strip_prefix("certificate sha-256: ") {
                hash = Some(h.trim().to_string());
                break;
            }
        }
    })
    .await
    .expect("banner in time");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Server {
        _child: child,
        addr: addr.expect("address"),
        cert_hash: hash.expect("certificate hash"),
        pid,
        _dir: dir,
    }
}

fn parse(args: &[&str]) -> AttackCommand {
    let mut argv = vec!["tern-loadgen", "attack"];
    argv.extend_from_slice(args);
    match Cli::try_parse_from(argv).expect("parses").command {
        Command::Attack(a) => a,
        other => panic!("not an attack: {other:?}"),
    }
}

async fn run(server: &Server, args: &[&str]) -> AttackReport {
    let pid = server.pid.to_string();
    let mut all = args.to_vec();
    all.extend_from_slice(&[
        "--server",
        &server.addr,
        "--cert-hash",
        &server.cert_hash,
        "--server-pid",
        &pid,
    ]);
    attack::run(parse(&all), vec![]).await.expect("attack runs")
}

fn u(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

fn sum(v: &Value) -> u64 {
    v.as_object()
        .map(|m| m.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0)
}

#[tokio::test]
async fn refuses_non_loopback_targets_and_sources() {
    let hash = "00".repeat(32);
    for args in [
        vec![
            "idle-conns",
            "--server",
            "10.1.2.3:443",
            "--cert-hash",
            &hash,
        ],
        vec!["h2", "--server", "[2001:db8::1]:443", "--cert-hash", &hash],
        vec![
            "idle-conns",
            "--server",
            "127.0.0.1:9",
            "--cert-hash",
            &hash,
            "--from",
            "192.0.2.1",
        ],
        vec![
            "slow-body",
            "--server",
            "127.0.0.1:9",
            "--cert-hash",
            &hash,
            "--probe-from",
            "192.0.2.1",
        ],
        vec![
            "bystander",
            "--server",
            "127.0.0.1:9",
            "--cert-hash",
            &hash,
            "--attacker-from",
            "127.0.0.3,192.0.2.7",
        ],
        vec![
            "bystander",
            "--server",
            "127.0.0.1:9",
            "--cert-hash",
            &hash,
            "--user-from",
            "192.0.2.9",
        ],
    ] {
        let err = attack::run(parse(&args), vec![])
            .await
            .expect_err("refused");
        assert!(
            err.to_string().contains("not a loopback address"),
            "{args:?}: {err}"
        );
    }
    // Bounds: counts and durations.
    for args in [
        vec![
            "idle-conns",
            "--server",
            "127.0.0.1:9",
            "--cert-hash",
            &hash,
            "--max",
            "60001",
        ],
        vec![
            "h2",
            "--server",
            "127.0.0.1:9",
            "--cert-hash",
            &hash,
            "--streams",
            "0",
        ],
        vec![
            "slow-body",
            "--server",
            "127.0.0.1:9",
            "--cert-hash",
            &hash,
            "--duration",
            "11m",
        ],
    ] {
        let err = attack::run(parse(&args), vec![])
            .await
            .expect_err("refused");
        assert!(err.to_string().contains("must be"), "{args:?}: {err}");
    }
}

#[test]
fn ledgers_count_every_attempt_once() {
    let mut l = LoginLedger::default();
    l.add(Ok(200), 1_000);
    l.add(Ok(429), 500);
    l.add(Ok(401), 700);
    l.add(Err("connect: refused".into()), 0);
    let s = l.summary();
    assert_eq!((s.attempts, s.ok, s.rate_limited), (4, 1, 1));
    assert_eq!(s.other_status.get("401"), Some(&1));
    assert_eq!(s.errors.get("connect: refused"), Some(&1));
    assert_eq!(s.success_rate, 0.25);
    assert_eq!(s.latency.count, 3, "answers only");

    let mut c = ChatLedger {
        sent: 3,
        ..ChatLedger::default()
    };
    c.acked.extend([1, 2, 3]);
    c.delivery(1, 100);
    c.delivery(1, 100);
    c.delivery(2, 300);
    let s = c.summary();
    assert_eq!((s.acked, s.delivered, s.lost, s.duplicates), (3, 2, 1, 1));
    assert_eq!(s.latency.count, 2, "a duplicate is not a second latency");

    let p = encode_chat(1, 9, 123, 64);
    assert_eq!(decode_chat(&p), Some((1, 9, 123)));
}

#[tokio::test]
async fn idle_h2_and_slow_body_account_for_every_connection() {
    let server = start_server().await;

    let r = run(&server, &["idle-conns", "--max", "20", "--duration", "1s"]).await;
    let v = &r.result;
    assert_eq!(r.kind, "idle-conns");
    assert_eq!(u(v, "attempted"), 20);
    assert_eq!(u(v, "opened") + u(v, "open_failed"), 20);
    assert_eq!(
        u(v, "opened"),
        u(v, "held_at_end") + u(v, "closed_by_server")
    );
    assert!(u(v, "max_held") <= u(v, "opened"));
    let h = r.healthz.as_ref().expect("healthz probed");
    assert_eq!(h.probes, h.ok + h.failed);
    assert!(r.server_rss.as_ref().expect("rss sampled").samples >= 2);

    let r = run(
        &server,
        &[
            "h2",
            "--conns",
            "2",
            "--streams",
            "3",
            "--body-bytes",
            "40000",
            "--duration",
            "1s",
        ],
    )
    .await;
    let v = &r.result;
    assert_eq!(u(v, "conns_attempted"), 2);
    let answered = u(v, "conns_h2_answered") + sum(&v["conns_not_h2"]);
    assert_eq!(answered + u(v, "conns_failed"), 2, "{v}");
    assert_eq!(
        u(v, "streams_opened"),
        u(v, "streams_reset") + u(v, "streams_answered") + u(v, "streams_pending_at_end"),
        "{v}"
    );
    // At most one byte short of every opened body.
    assert!(
        u(v, "body_bytes_sent") <= u(v, "streams_opened") * 39_999,
        "{v}"
    );

    let r = run(
        &server,
        &[
            "slow-body",
            "--conns",
            "5",
            "--interval",
            "100ms",
            "--duration",
            "1s",
        ],
    )
    .await;
    let v = &r.result;
    assert_eq!(u(v, "opened") + u(v, "open_failed"), 5);
    assert_eq!(
        u(v, "opened"),
        u(v, "held_at_end") + u(v, "closed_by_server"),
        "{v}"
    );
    assert!(sum(&v["answered"]) <= u(v, "closed_by_server"));
    // The report is JSON with the documented top-level fields.
    let json = serde_json::to_value(&r).expect("serializes");
    for key in [
        "schema_version",
        "kind",
        "machine",
        "server_rss",
        "healthz",
        "result",
    ] {
        assert!(json.get(key).is_some(), "{key}");
    }
}

#[tokio::test]
async fn bystander_quiet_and_attack_phases_in_one_report_over_websocket() {
    bystander_quiet_and_attack_phases_in_one_report("ws").await;
}

#[tokio::test]
async fn bystander_quiet_and_attack_phases_in_one_report_over_webtransport() {
    bystander_quiet_and_attack_phases_in_one_report("wt").await;
}

async fn bystander_quiet_and_attack_phases_in_one_report(transport: &str) {
    let server = start_server().await;
    let exe = env!("CARGO_BIN_EXE_tern-loadgen");
    let r = run(
        &server,
        &[
            "bystander",
            "--transport",
            transport,
            "--attack",
            "both",
            "--phase",
            "2s",
            "--drain",
            "3s",
            "--chat-rate",
            "10",
            "--login-every",
            "500ms",
            "--login-flood-conns",
            "4",
            "--send-flood-inflight",
            "4",
            "--attacker-exe",
            exe,
        ],
    )
    .await;
    let v = &r.result;
    assert_eq!(v["transport"], transport);
    let phases = v["phases"].as_array().expect("phases");
    assert_eq!(phases.len(), 2);
    assert_eq!(phases[0]["name"], "quiet");
    assert_eq!(phases[1]["name"], "attack");
    for p in phases {
        let b = &p["bystander"];
        assert!(u(b, "sent") > 0, "{p}");
        assert_eq!(u(b, "acked") + sum(&b["send_errors"]), u(b, "sent"), "{p}");
        assert_eq!(u(b, "delivered") + u(b, "lost"), u(b, "acked"), "{p}");
        let l = &p["login"];
        assert!(u(l, "attempts") > 0, "{p}");
        assert_eq!(
            u(l, "attempts"),
            u(l, "ok") + u(l, "rate_limited") + sum(&l["other_status"]) + sum(&l["errors"]),
            "{p}"
        );
    }
    assert!(phases[0]["attacker"].is_null());
    let at = &phases[1]["attacker"];
    assert!(phases[1]["attacker_error"].is_null(), "{}", phases[1]);
    let logins = &at["logins"];
    assert!(u(logins, "tried") > 0, "{at}");
    // Every request has one outcome, except at most one per connection cut by the deadline.
    let settled = sum(&logins["by_status"]) + sum(&logins["errors"]);
    assert!(settled <= u(logins, "tried"), "{at}");
    assert!(u(logins, "tried") - settled <= u(logins, "conns"), "{at}");
    let sends = &at["sends"];
    assert!(u(sends, "tried") > 0, "{at}");
    assert_eq!(
        u(sends, "tried"),
        u(sends, "acked")
            + sum(&sends["refused"])
            + u(sends, "timeouts")
            + u(sends, "unsettled")
            + sum(&sends["closed"])
            + sum(&sends["errors"]),
        "{at}"
    );
}
