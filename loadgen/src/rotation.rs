//! `tern-loadgen rotation`: the cost of a Megolm key rotation burst in one large group.
//!
//! One group of `--members N` users, one device each, all online with keys published (the
//! `--e2e` Tern target). Member 0 sends `--before R` messages (the first is the cold start:
//! device-list query, one-time key claims, an Olm session and a key share per member device),
//! then one more: its outbound session has reached `rotation_messages = R`, so this send starts
//! a new Megolm session and shares it with every other member device over the existing Olm
//! sessions. Then one message after the rotation (the steady state). For every message: the
//! sender's cost split (query, claim, Olm+Megolm encryption, key-share upload, send→ack), and
//! the time from the start of the send until each member device decrypted it (first, p50, p99,
//! last), plus the CPU the server and this process used meanwhile.
//!
//! All receiving devices live in this one process on one thread: the time until the LAST
//! device decrypted includes this process decrypting one Olm share and one Megolm message for
//! every device in turn; its CPU time is reported beside it so the two can be told apart.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures_util::StreamExt as _;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::payload::Header;
use crate::protocol::{TargetKind, TargetSpec};
use crate::target::tern::{TernOptions, TernTarget, TernTransport};
use crate::target::{Connected, Population, Target as _};

/// How long one message may take to reach every member device before the run gives up.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(120);
/// Payload size of the test messages (the PRD scenario's).
const PAYLOAD_BYTES: usize = 128;

#[derive(Debug, clap::Args)]
pub struct RotationArgs {
    /// tern-ws or tern-wt.
    #[arg(long, value_enum, default_value = "tern-ws")]
    pub target: TargetKind,
    /// Server address, host:port.
    #[arg(long)]
    pub server: String,
    /// Pin the server certificate by SHA-256 (hex). Repeatable.
    #[arg(long)]
    pub cert_hash: Vec<String>,
    /// Trust the server certificate through this CA (PEM) instead of a pin.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// Group size (the sender included).
    #[arg(long, default_value_t = 100)]
    pub members: usize,
    /// Messages in the first outbound session; the next one rotates.
    #[arg(long, default_value_t = 5)]
    pub before: u32,
    /// Setup cache (accounts, the group) between runs; default: fresh accounts.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Registrations in flight at once during setup.
    #[arg(long, default_value_t = 8)]
    pub setup_concurrency: usize,
    /// Connections being set up at once.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// Server process to sample (CPU) from /proc.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Write the JSON report here.
    #[arg(long)]
    pub report: Option<PathBuf>,
}

/// One measured message.
#[derive(Debug, Clone, Serialize)]
pub struct SendRow {
    /// 0-based; `before` is the rotating one.
    pub message: u32,
    pub kind: &'static str,
    /// The send started a new Megolm session.
    pub new_session: bool,
    pub key_shares: usize,
    pub devices_claimed: usize,
    pub query_ms: f64,
    pub claim_ms: f64,
    pub encrypt_ms: f64,
    pub upload_ms: f64,
    /// Start of the send → the server's SendAck (includes everything above).
    pub send_ack_ms: f64,
    /// Start of the send → each member device had decrypted it.
    pub decrypted_first_ms: f64,
    pub decrypted_p50_ms: f64,
    pub decrypted_p99_ms: f64,
    pub decrypted_all_ms: f64,
    pub devices: usize,
    pub undecryptable: usize,
    /// CPU used from the start of the send until the last device decrypted, ms.
    pub loadgen_cpu_ms: f64,
    pub server_cpu_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RotationReport {
    pub tool: String,
    pub command_line: Vec<String>,
    pub started_at: String,
    pub machine: crate::sysstat::Machine,
    pub target: String,
    pub members: usize,
    pub rotation_messages: u32,
    pub setup_secs: f64,
    pub connect_secs: f64,
    pub sends: Vec<SendRow>,
    pub passed: bool,
    pub failures: Vec<String>,
}

/// Runs the measurement; the exit status says whether every device decrypted every message.
pub fn main(args: RotationArgs, argv: Vec<String>) -> anyhow::Result<bool> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let report = rt.block_on(run(&args, argv))?;
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &args.report {
        std::fs::write(path, json.clone() + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    println!(
        "rotation burst, {} members over {}:",
        report.members, report.target
    );
    println!(
        "  msg kind        shares claimed  query  claim  encrypt upload  ack     first   p50     p99     all     cpu(lg) cpu(srv) ms"
    );
    for r in &report.sends {
        println!(
            "  {:>3} {:<11} {:>6} {:>7} {:>6.1} {:>6.1} {:>7.1} {:>6.1} {:>7.1} {:>7.1} {:>7.1} {:>7.1} {:>7.1} {:>7.1} {:>7}",
            r.message,
            r.kind,
            r.key_shares,
            r.devices_claimed,
            r.query_ms,
            r.claim_ms,
            r.encrypt_ms,
            r.upload_ms,
            r.send_ack_ms,
            r.decrypted_first_ms,
            r.decrypted_p50_ms,
            r.decrypted_p99_ms,
            r.decrypted_all_ms,
            r.loadgen_cpu_ms,
            r.server_cpu_ms.map_or("-".into(), |v| format!("{v:.1}")),
        );
    }
    for f in &report.failures {
        println!("  FAILED: {f}");
    }
    Ok(report.passed)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn own_cpu() -> Duration {
    // SAFETY: getrusage fills the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

fn server_cpu(pid: Option<u32>) -> Option<Duration> {
    let s = crate::sysstat::sample(pid?).ok()?;
    let hz = crate::sysstat::clock_ticks_per_sec().max(1);
    Some(Duration::from_secs_f64(s.cpu_ticks as f64 / hz as f64))
}

/// What a receiving device saw.
enum Seen {
    Decrypted { counter: u64, at: Instant },
    Undecryptable { reason: String },
}

async fn run(args: &RotationArgs, argv: Vec<String>) -> anyhow::Result<RotationReport> {
    let transport = match args.target {
        TargetKind::TernWs => TernTransport::WebSocket,
        TargetKind::TernWt => TernTransport::WebTransport,
        _ => bail!("rotation needs a Tern target"),
    };
    if args.members < 2 || args.before == 0 {
        bail!("--members must be at least 2 and --before at least 1");
    }
    let mut spec = TargetSpec::new(args.target, args.server.clone());
    spec.cert_hashes = args.cert_hash.clone();
    spec.ca_file = args.ca_file.clone();
    let mut opts = TernOptions::new(args.server.clone(), spec.trust()?, transport);
    opts.state_dir = args.state_dir.clone();
    opts.setup_concurrency = args.setup_concurrency.max(1);
    opts.e2e_rotation_messages = Some(args.before);
    let target = Arc::new(TernTarget::new(opts)?);
    let started_at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();

    let population = Population {
        users: args.members,
        conversations: vec![(0..args.members).collect()],
    };
    let t = Instant::now();
    let specs = target.setup(&population).await?;
    let setup_secs = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    let mut connected: Vec<Option<Connected>> = (0..args.members).map(|_| None).collect();
    let mut results = futures_util::stream::iter(specs.iter().cloned())
        .map(|s| {
            let target = target.clone();
            async move { (s.index, target.connect(&s, any).await) }
        })
        .buffer_unordered(args.connect_concurrency.max(1));
    while let Some((i, r)) = results.next().await {
        connected[i] = Some(r.with_context(|| format!("connecting member {i}"))?);
    }
    drop(results);
    let connect_secs = t.elapsed().as_secs_f64();

    let mut connected: Vec<Connected> = connected.into_iter().flatten().collect();
    let sender_conn = connected.remove(0);
    // Receivers report what they decrypted.
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<Seen>();
    for c in connected.iter_mut() {
        let (_, dummy) = mpsc::channel(1);
        let mut inbound = std::mem::replace(&mut c.inbound, dummy);
        let seen = seen_tx.clone();
        tokio::spawn(async move {
            while let Some(m) = inbound.recv().await {
                let s = match (&m.undecryptable, Header::decode(&m.payload)) {
                    (Some(reason), _) => Seen::Undecryptable {
                        reason: reason.clone(),
                    },
                    (None, Ok(h)) => Seen::Decrypted {
                        counter: h.counter,
                        at: m.arrived,
                    },
                    (None, Err(e)) => Seen::Undecryptable {
                        reason: format!("bad payload after decryption: {e}"),
                    },
                };
                if seen.send(s).is_err() {
                    return;
                }
            }
        });
    }
    drop(seen_tx);
    let devices = args.members - 1;
    let conv_ref = specs[0]
        .conversations
        .first()
        .cloned()
        .context("the sender is in no conversation")?;
    let run_id: u32 = rand::random();
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    let mut arrivals: HashMap<u64, Vec<Instant>> = HashMap::new();
    let mut undecryptable_total = 0usize;
    for k in 0..=u64::from(args.before) + 1 {
        let header = Header {
            run: run_id,
            sender: 0,
            conversation: 0,
            counter: k,
            scheduled_unix_ns: crate::util::unix_now_ns(),
        };
        let payload = header.encode(PAYLOAD_BYTES);
        let cpu0 = own_cpu();
        let srv0 = server_cpu(args.server_pid);
        let start = Instant::now();
        sender_conn
            .sender
            .send(&conv_ref, payload)
            .await
            .with_context(|| format!("sending message {k}"))?;
        let ack = start.elapsed();
        let cost = target.last_outgoing_cost(0).await.unwrap_or_default();
        let deadline = tokio::time::Instant::now() + DELIVERY_TIMEOUT;
        let mut undecryptable = 0usize;
        while arrivals.get(&k).map_or(0, Vec::len) < devices {
            match tokio::time::timeout_at(deadline, seen_rx.recv()).await {
                Ok(Some(Seen::Decrypted { counter, at })) => {
                    arrivals.entry(counter).or_default().push(at);
                }
                Ok(Some(Seen::Undecryptable { reason })) => {
                    undecryptable += 1;
                    failures.push(format!("message {k}: undecryptable: {reason}"));
                }
                Ok(None) => bail!("every receiving connection ended"),
                Err(_) => {
                    failures.push(format!(
                        "message {k}: only {} of {devices} devices decrypted it within {:?}",
                        arrivals.get(&k).map_or(0, Vec::len),
                        DELIVERY_TIMEOUT
                    ));
                    break;
                }
            }
        }
        undecryptable_total += undecryptable;
        let cpu = own_cpu().saturating_sub(cpu0);
        let srv = match (srv0, server_cpu(args.server_pid)) {
            (Some(a), Some(b)) => Some(ms(b.saturating_sub(a))),
            _ => None,
        };
        let mut times: Vec<Duration> = arrivals
            .get(&k)
            .map(|v| {
                v.iter()
                    .map(|a| a.saturating_duration_since(start))
                    .collect()
            })
            .unwrap_or_default();
        times.sort_unstable();
        let pick = |q: f64| -> f64 {
            if times.is_empty() {
                return f64::NAN;
            }
            let i = ((times.len() as f64 * q).ceil() as usize).clamp(1, times.len()) - 1;
            ms(times[i])
        };
        let kind = if k == 0 {
            "cold-first"
        } else if k == u64::from(args.before) {
            "rotation"
        } else if k > u64::from(args.before) {
            "after"
        } else {
            "warm"
        };
        rows.push(SendRow {
            message: k as u32,
            kind,
            new_session: cost.new_session,
            key_shares: cost.key_shares,
            devices_claimed: cost.devices_claimed,
            query_ms: ms(cost.query),
            claim_ms: ms(cost.claim),
            encrypt_ms: ms(cost.encrypt),
            upload_ms: ms(cost.upload),
            send_ack_ms: ms(ack),
            decrypted_first_ms: times.first().copied().map_or(f64::NAN, ms),
            decrypted_p50_ms: pick(0.5),
            decrypted_p99_ms: pick(0.99),
            decrypted_all_ms: times.last().copied().map_or(f64::NAN, ms),
            devices: times.len(),
            undecryptable,
            loadgen_cpu_ms: ms(cpu),
            server_cpu_ms: srv,
        });
        if kind == "rotation" && !cost.new_session {
            failures.push(format!("message {k} did not rotate the session"));
        }
    }
    if undecryptable_total > 0 {
        failures.push(format!("{undecryptable_total} undecryptable deliveries"));
    }
    sender_conn.sender.close().await;
    for c in &connected {
        c.sender.close().await;
    }
    Ok(RotationReport {
        tool: format!("tern-loadgen {}", env!("CARGO_PKG_VERSION")),
        command_line: argv,
        started_at,
        machine: crate::sysstat::machine(),
        target: target.name(),
        members: args.members,
        rotation_messages: args.before,
        setup_secs,
        connect_secs,
        sends: rows,
        passed: failures.is_empty(),
        failures,
    })
}
