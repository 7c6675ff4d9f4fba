//! End to end: the real `tern` binary on an ephemeral port, a tiny chat scenario over
//! WebSocket (in-process worker) and WebTransport (two worker processes), and a reconnect
//! scenario; every run must account for every message with no loss and no duplicate.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tern_loadgen::population::GroupMix;
use tern_loadgen::protocol::{TargetKind, TargetSpec};
use tern_loadgen::report::Report;
use tern_loadgen::run::{self, Common, Scenario};
use tern_loadgen::schedule::ScheduleKind;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// `target/debug/tern`, next to this test's `deps` directory; built first if missing (the
/// binary belongs to another package, so Cargo does not build it for this test).
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

async fn start_server() -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("tern.toml");
    // Every simulated user registers from 127.0.0.1.
    std::fs::write(
        &config,
        "login_attempts_per_address = 1000000\nmax_connections_per_address = 1000000\n\
         registrations_per_address = 1000000\nregistrations_per_window = 1000000\n\
         hash_queue_per_client = 256\n",
    )
    .expect("config");
    let log = std::fs::File::create(dir.path().join("server.log")).expect("log");
    let mut child = Command::new(tern_binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .expect("start tern");
    let pid = child.id().expect("pid");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut addr = None;
    let mut hash = None;
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

fn common(server: &Server, kind: TargetKind, state: &Path) -> Common {
    let mut target = TargetSpec::new(kind, server.addr.clone());
    target.cert_hashes = vec![server.cert_hash.clone()];
    target.state_dir = Some(state.to_path_buf());
    let mut c = Common::new(target);
    c.server_pids = vec![server.pid];
    c.drain = Duration::from_secs(5);
    c.worker_exe = Some(PathBuf::from(env!("CARGO_BIN_EXE_tern-loadgen")));
    c
}

fn chat(users: usize, rate: f64, secs: u64) -> Scenario {
    Scenario::Chat {
        users,
        mix: "2:50,3:30,8:20".parse::<GroupMix>().expect("mix"),
        rate,
        duration: Duration::from_secs(secs),
        warmup: Duration::ZERO,
        warmup_ramp: false,
        schedule: ScheduleKind::Poisson,
    }
}

fn assert_clean(r: &Report) {
    let a = &r.accounting;
    assert!(r.passed, "run failed: {:?}\n{}", r.failures, r.human());
    assert!(a.expected > 0, "{}", r.human());
    assert_eq!(a.delivered, a.expected);
    assert_eq!(
        (a.lost, a.duplicated, a.out_of_order, a.seq_regressions),
        (0, 0, 0, 0)
    );
    assert_eq!(r.connect.users_failed, 0);
    // The measured histogram leaves the warm-up's deliveries out; the accounting has them all.
    let warm = r.warmup.as_ref().map_or(0, |w| w.delivery.count);
    assert!(r.latency.delivery.count + warm >= a.delivered);
    // The report survives its own schema.
    let json = serde_json::to_string(r).expect("serialize");
    let back: Report = serde_json::from_str(&json).expect("deserialize");
    assert_eq!(&back, r);
    assert!(run::plot(r).expect("plot").contains("</svg>"));
}

#[tokio::test]
async fn chat_and_reconnect_over_both_transports_lose_nothing() {
    let server = start_server().await;
    let state = tempfile::tempdir().expect("state dir");

    // WebSocket, in-process.
    let mut c = common(&server, TargetKind::TernWs, state.path());
    c.workers = Some(0);
    let r = run::run(c, chat(40, 40.0, 3)).await.expect("ws run");
    assert_clean(&r);
    assert_eq!(r.scenario.target, "tern-ws");
    assert_eq!(r.scenario.workers, 0);
    let server_section = r.server.as_ref().expect("server sampled");
    assert!(server_section.rss_bytes_at_hold > 0);

    // WebTransport, two worker processes spreading over two source addresses; the setup
    // state from the first run is reused.
    let mut c = common(&server, TargetKind::TernWt, state.path());
    c.workers = Some(2);
    c.source_addrs = vec![
        "127.0.0.1".parse().expect("ip"),
        "127.0.0.2".parse().expect("ip"),
    ];
    let r = run::run(c, chat(40, 40.0, 3)).await.expect("wt run");
    assert_clean(&r);
    assert_eq!(r.scenario.target, "tern-wt");
    assert_eq!(r.loadgen.processes, 3);
    assert!(
        r.setup_secs < 5.0,
        "cached setup reused ({}s)",
        r.setup_secs
    );

    // Reconnect: a third of the connections drop mid-run and must resume without a gap.
    let mut c = common(&server, TargetKind::TernWs, state.path());
    c.workers = Some(0);
    let scenario = Scenario::Reconnect {
        users: 40,
        mix: "2:50,3:30,8:20".parse().expect("mix"),
        rate: 60.0,
        duration: Duration::from_secs(4),
        drop_percent: 33.0,
        drop_at: Duration::from_secs(1),
        schedule: ScheduleKind::Fixed,
    };
    let r = run::run(c, scenario).await.expect("reconnect run");
    assert_clean(&r);
    let rc = r.reconnect.as_ref().expect("reconnect section");
    assert_eq!(rc.selected, 13);
    assert_eq!(rc.dropped, 13);
    assert_eq!(rc.resumed, 13);
}

/// `chat --warmup`: the warm-up's messages are accounted like every other (the run must lose
/// nothing of them either) but are neither in the measured latencies nor in the measured
/// traffic counts. Plaintext over WebSocket in-process, and --e2e over WebTransport with two
/// worker processes (so the warm-up results also cross the process boundary).
#[tokio::test]
async fn chat_warmup_is_checked_but_not_measured() {
    let server = start_server().await;
    let state = tempfile::tempdir().expect("state dir");
    for (kind, workers, e2e) in [
        (TargetKind::TernWs, 0, false),
        (TargetKind::TernWt, 2, true),
    ] {
        let mut c = common(&server, kind, state.path());
        c.workers = Some(workers);
        if e2e {
            c.target.e2e_rotation_messages = Some(100);
        }
        let mut scenario = chat(40, 40.0, 2);
        if let Scenario::Chat {
            warmup,
            warmup_ramp,
            ..
        } = &mut scenario
        {
            *warmup = Duration::from_secs(2);
            // The e2e run eases in (the path `bench/run-e2e.sh` uses).
            *warmup_ramp = e2e;
        }
        let r = run::run(c, scenario).await.expect("run with a warm-up");
        assert_clean(&r);
        let a = &r.accounting;
        let w = r.warmup.as_ref().expect("warmup section");
        let human = r.human();
        assert!(w.sent > 0 && w.acked == w.sent, "{human}");
        assert_eq!((w.send_failed, w.undecryptable), (0, 0), "{human}");
        assert!(w.expected > 0 && w.delivered == w.expected, "{human}");
        assert_eq!(w.delivery.count, w.delivered, "{human}");
        assert_eq!(w.send_ack.count, w.acked, "{human}");
        // Measured = everything minus the warm-up, in every figure.
        assert!(
            a.delivered > w.delivered,
            "the measured phase delivered: {human}"
        );
        assert_eq!(
            r.latency.delivery.count,
            a.delivered - w.delivered,
            "{human}"
        );
        assert_eq!(r.latency.send_ack.count, r.traffic.acked, "{human}");
        assert_eq!(r.traffic.duration_secs, 2.0);
        assert_eq!(r.scenario.params["warmup_secs"], 2.0);
        assert!(
            human.contains("warm-up (not in the measured figures): 2s"),
            "{human}"
        );
    }
}
