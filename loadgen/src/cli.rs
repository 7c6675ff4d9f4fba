//! Command line and scenario files.
//!
//! A scenario file is TOML whose keys are the long flags of the scenario's subcommand
//! (`group_sizes` or `group-sizes`), plus `kind` naming the subcommand. It is expanded into
//! flags placed before the ones typed on the command line, and every flag overrides earlier
//! occurrences of itself, so the command line wins over the file. Repeatable flags
//! (`cert_hash`, `server_pid`) take a TOML array and accumulate.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::population::GroupMix;
use crate::protocol::{TargetKind, TargetSpec};
use crate::run::{Common, Sabotage, Scenario};
use crate::schedule::ScheduleKind;
use crate::util::parse_duration;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("scenario file {0}: {1}")]
    ScenarioFile(String, String),
    #[error("{0}")]
    Usage(String),
}

#[derive(Debug, Parser)]
#[command(
    name = "tern-loadgen",
    version,
    about = "Load generator for Tern and its peers: connect, chat, fan-out and reconnect \
             scenarios with exact loss/duplicate/order accounting, HdrHistogram latencies, \
             /proc sampling, a JSON report and an SVG latency plot.",
    after_help = "Scenario files: `tern-loadgen run --scenario FILE` or `tern-loadgen chat \
                  --scenario FILE [flags]`; see loadgen/REPORT.md. Exit status: 0 pass, 1 the \
                  run failed its checks (loss, duplicates, ...), 2 the run could not be done."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Ramp N connections at R per second, hold them, report connect times and failures.
    #[command(args_override_self = true)]
    Connect(ConnectArgs),
    /// N users in conversations of mixed sizes sending M msg/s in total (open loop).
    #[command(args_override_self = true)]
    Chat(ChatArgs),
    /// Groups of size K; the rate steps up until p99 delivery exceeds a threshold or
    /// deliveries fall behind; reports the highest sustained deliveries per second.
    #[command(args_override_self = true)]
    Fanout(FanoutArgs),
    /// Chat traffic; X% of the connections drop at once and must resume and catch up.
    #[command(args_override_self = true)]
    Reconnect(ReconnectArgs),
    /// Runs the scenario a file describes (its `kind` key names the scenario).
    Run(RunArgs),
    /// Hostile-client measurements (issue 10): idle connections, HTTP/2 streams, slow
    /// bodies, login and send floods next to a bystander. Loopback targets only.
    #[command(subcommand)]
    Attack(AttackCommand),
    /// End-to-end encryption: the cost of a Megolm key rotation burst in one group of
    /// --members devices (claims, Olm encryption, key-share upload, until every device
    /// decrypted). Tern targets only.
    Rotation(crate::rotation::RotationArgs),
    /// Server history page latency (newest, oldest, around a seq) on one conversation filled
    /// to --messages through the server, optionally while other load runs. Tern targets only.
    HistoryBench(crate::history_bench::HistoryBenchArgs),
    /// A worker process (started by the coordinator; not for direct use).
    #[command(hide = true)]
    Worker(WorkerArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// TOML scenario file (`kind = "chat"` plus flags as keys).
    #[arg(long)]
    pub scenario: PathBuf,
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    #[arg(long)]
    pub plan: PathBuf,
}

/// Source addresses: a comma list of addresses and IPv4 ranges (`127.0.0.1-127.0.0.8`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceAddrs(pub Vec<IpAddr>);

pub fn parse_source_addrs(s: &str) -> Result<SourceAddrs, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once('-') {
            let a: Ipv4Addr = a.trim().parse().map_err(|e| format!("{a:?}: {e}"))?;
            let b: Ipv4Addr = b.trim().parse().map_err(|e| format!("{b:?}: {e}"))?;
            let (a, b) = (u32::from(a), u32::from(b));
            if b < a || b - a >= 65_536 {
                return Err(format!("bad range {part:?}"));
            }
            out.extend((a..=b).map(|x| IpAddr::V4(Ipv4Addr::from(x))));
        } else {
            out.push(part.parse().map_err(|e| format!("{part:?}: {e}"))?);
        }
    }
    if out.is_empty() {
        return Err("no address given".into());
    }
    Ok(SourceAddrs(out))
}

fn parse_mix(s: &str) -> Result<GroupMix, String> {
    s.parse()
        .map_err(|e: crate::population::PopulationError| e.to_string())
}

#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// System under test.
    #[arg(long, value_enum, default_value = "tern-ws")]
    pub target: TargetKind,
    /// Server address, host:port.
    #[arg(long)]
    pub server: String,
    /// Pin the server certificate by SHA-256 (hex, as the server prints it). Repeatable.
    #[arg(long)]
    pub cert_hash: Vec<String>,
    /// Trust the server certificate through this CA (PEM) instead of a pin.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// Where setup state (accounts, tokens, conversation ids) is cached between runs.
    /// Default: $TMPDIR/tern-loadgen.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Do not cache setup state: register a fresh population.
    #[arg(long)]
    pub no_state: bool,
    /// Worker processes. Default: in-process when the connections fit this process's
    /// open-file limit, else as many as needed. 0: always in-process.
    #[arg(long)]
    pub workers: Option<usize>,
    /// Local source addresses, e.g. 127.0.0.1-127.0.0.8 or 127.0.0.1,127.0.0.2 (user i uses
    /// the (i mod n)-th). Default: chosen by the OS.
    #[arg(long, value_parser = parse_source_addrs)]
    pub source_addrs: Option<SourceAddrs>,
    /// Payload size in bytes (a 32-byte header plus padding; at least 32).
    #[arg(long, default_value_t = 128)]
    pub payload_bytes: usize,
    /// Seed of the population and the schedules.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// After the last send settled, wait at most this long for outstanding deliveries.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub drain: Duration,
    /// Initial connections started per second (all workers together; not for `connect`, which
    /// has --ramp).
    #[arg(long, default_value_t = 1000.0)]
    pub connect_rate: f64,
    /// Connection attempts in flight at once, per worker.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Attempts per user for its first connection (default 1 for `connect`, else 3).
    #[arg(long)]
    pub connect_attempts: Option<u32>,
    /// Connect (TCP/QUIC + TLS + Hello) timeout.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub connect_timeout: Duration,
    /// How long a send waits for its acknowledgement before it is retried.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub request_timeout: Duration,
    /// Setup requests (registrations: argon2id on the server) in flight at once.
    #[arg(long, default_value_t = 8)]
    pub setup_concurrency: usize,
    /// Server process to sample (CPU, RSS) from /proc; repeatable or comma-separated (summed).
    #[arg(long, value_delimiter = ',')]
    pub server_pid: Vec<u32>,
    /// Write the JSON report here (schema: loadgen/REPORT.md).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Write the latency-percentile plot (SVG) here.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Free text stored in the report (e.g. which RESULTS.md row this is).
    #[arg(long)]
    pub label: Option<String>,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
    /// TOML scenario file whose keys are defaults for these flags.
    #[arg(long)]
    pub scenario: Option<PathBuf>,
    /// Tern: after the drain, read every conversation's full stored history and check that
    /// each acknowledged message is stored exactly once under its acknowledged seq, with
    /// gapless seqs (report field `history`; any problem fails the run).
    #[arg(long)]
    pub verify_history: bool,
    /// Tern: end-to-end encryption on every simulated device (a real Olm/Megolm state per
    /// device: keys published on connect, key shares on first sends and rotations, every
    /// delivery decrypted; an undecryptable one fails the run).
    #[arg(long)]
    pub e2e: bool,
    /// With --e2e: messages per outbound Megolm session before it rotates (the SDK default).
    #[arg(long, default_value_t = 100)]
    pub e2e_rotation_messages: u32,
    /// Write this file when traffic starts (setup and initial connections done); the crash
    /// test (loadgen/crash.sh) waits for it before killing the server.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// TEST ONLY: damage the run on purpose to prove the checks catch it (the run must fail):
    /// forget-ack, invent-ack, duplicate-send. See loadgen/REPORT.md.
    #[arg(long, value_enum)]
    pub debug_sabotage: Option<Sabotage>,
}

#[derive(Debug, Args)]
pub struct ConnectArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Connections (one user each).
    #[arg(long, alias = "users", default_value_t = 1000)]
    pub connections: usize,
    /// Connections started per second.
    #[arg(long, default_value_t = 500.0)]
    pub ramp: f64,
    /// How long to hold them once all are up.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub hold: Duration,
}

#[derive(Debug, Args)]
pub struct ChatArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[arg(long, default_value_t = 1000)]
    pub users: usize,
    /// Conversation sizes as size:percent-of-users.
    #[arg(long, value_parser = parse_mix, default_value = "2:60,5:30,50:10")]
    pub group_sizes: GroupMix,
    /// Messages per second, all users together.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub duration: Duration,
    /// Traffic at the same rate and schedule before the measured --duration, so the cold start
    /// (with --e2e: sessions and key shares on every device's first message) is not measured.
    /// Its messages are checked like every other and reported apart (the report's `warmup`);
    /// latencies, CPU and rates leave it out. 0: no warm-up.
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub warmup: Duration,
    /// The warm-up's rate rises linearly from 0 to --rate (half its sends): senders' first
    /// messages, which with --e2e set up an Olm session with every member device, spread over
    /// the whole warm-up as when users come online over time, instead of all in its first
    /// seconds.
    #[arg(long)]
    pub warmup_ramp: bool,
    #[arg(long, value_enum, default_value = "poisson")]
    pub schedule: ScheduleKind,
}

#[derive(Debug, Args)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[arg(long, default_value_t = 1000)]
    pub users: usize,
    /// Members per group.
    #[arg(long, default_value_t = 100)]
    pub group_size: usize,
    /// Members of each group that send (the others only receive).
    #[arg(long, default_value_t = 1)]
    pub senders_per_group: usize,
    /// Messages per second of the first step.
    #[arg(long, default_value_t = 10.0)]
    pub start_rate: f64,
    /// Each step's rate is the previous one times this.
    #[arg(long, default_value_t = 1.5)]
    pub step_factor: f64,
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub step_duration: Duration,
    #[arg(long, default_value_t = 12)]
    pub max_steps: u32,
    /// A step is sustained while its p99 delivery latency stays at or under this.
    #[arg(long, value_parser = parse_duration, default_value = "50ms")]
    pub p99_threshold: Duration,
    #[arg(long, value_enum, default_value = "poisson")]
    pub schedule: ScheduleKind,
}

#[derive(Debug, Args)]
pub struct ReconnectArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[arg(long, default_value_t = 1000)]
    pub users: usize,
    #[arg(long, value_parser = parse_mix, default_value = "2:60,5:30,50:10")]
    pub group_sizes: GroupMix,
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub duration: Duration,
    /// Share of the connections dropped at once.
    #[arg(long, default_value_t = 20.0)]
    pub drop_percent: f64,
    /// When (after traffic starts) they are dropped.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub drop_at: Duration,
    #[arg(long, value_enum, default_value = "poisson")]
    pub schedule: ScheduleKind,
}

/// `tern-loadgen attack ...`: see [`crate::attack`].
#[derive(Debug, Subcommand)]
pub enum AttackCommand {
    /// Opens TLS connections from one source address and sends nothing; counts how many the
    /// server still holds after --duration and whether another address can GET /healthz.
    IdleConns(IdleConnsArgs),
    /// HTTP/2 by prior knowledge: streams each sending headers and an unfinished body;
    /// server RSS sampled from /proc.
    H2(H2Args),
    /// POSTs with a large Content-Length whose body trickles in; server RSS and the
    /// connections it still holds after --duration.
    SlowBody(SlowBodyArgs),
    /// A bystander pair chatting and a legitimate user logging in, first quiet, then while an
    /// attacker floods logins and/or sends; one report with both phases.
    Bystander(BystanderArgs),
    /// The attacker of `bystander`, run as a child process so that its CPU is not the
    /// measurer's (started by `bystander`; not for direct use).
    #[command(hide = true)]
    Flood(FloodArgs),
}

impl AttackCommand {
    pub fn common(&self) -> &AttackCommonArgs {
        match self {
            AttackCommand::IdleConns(a) => &a.common,
            AttackCommand::H2(a) => &a.common,
            AttackCommand::SlowBody(a) => &a.common,
            AttackCommand::Bystander(a) => &a.common,
            AttackCommand::Flood(a) => &a.common,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct AttackCommonArgs {
    /// Server address, host:port; must be a loopback address (127.0.0.0/8 or ::1).
    #[arg(long, alias = "target")]
    pub server: String,
    /// Pin the server certificate by SHA-256 (hex, as the server prints it). Repeatable.
    #[arg(long)]
    pub cert_hash: Vec<String>,
    /// Trust the server certificate through this CA (PEM) instead of a pin.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// Server process to sample (RSS, CPU) from /proc; repeatable or comma-separated (summed).
    #[arg(long, value_delimiter = ',')]
    pub server_pid: Vec<u32>,
    /// Write the JSON report here (schema: loadgen/REPORT.md, "attack reports").
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Free text stored in the report.
    #[arg(long)]
    pub label: Option<String>,
    /// Address the /healthz probe (and other "someone else" requests) connect from.
    #[arg(long, default_value = "127.0.0.1")]
    pub probe_from: IpAddr,
    /// How often the server's RSS is sampled and /healthz is probed.
    #[arg(long, value_parser = parse_duration, default_value = "500ms")]
    pub sample_every: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct IdleConnsArgs {
    #[command(flatten)]
    pub common: AttackCommonArgs,
    /// Source address of every idle connection.
    #[arg(long, default_value = "127.0.0.2")]
    pub from: IpAddr,
    /// Connections to open (at most 60,000).
    #[arg(long, default_value_t = 2000)]
    pub max: usize,
    /// TCP + TLS handshakes in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// How long to hold them after the last one was opened.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub duration: Duration,
    /// TCP + TLS handshake timeout per connection.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub connect_timeout: Duration,
}

/// ALPN a raw attack connection offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AlpnChoice {
    /// No ALPN extension at all (prior knowledge).
    None,
    /// `http/1.1` only, like the SDK (then sends the HTTP/2 preface anyway).
    Http11,
    /// `h2`.
    H2,
}

#[derive(Debug, Clone, Args)]
pub struct H2Args {
    #[command(flatten)]
    pub common: AttackCommonArgs,
    #[arg(long, default_value = "127.0.0.2")]
    pub from: IpAddr,
    /// Connections (at most 1,000).
    #[arg(long, default_value_t = 5)]
    pub conns: usize,
    /// Streams opened per connection (at most 10,000).
    #[arg(long, default_value_t = 200)]
    pub streams: usize,
    /// Content-Length each stream announces; one byte less is sent, so no body ever ends
    /// (at most 64 MiB).
    #[arg(long, default_value_t = 1_000_000)]
    pub body_bytes: usize,
    /// Path the streams POST to (the body is JSON-looking whitespace).
    #[arg(long, default_value = "/api/v1/register")]
    pub path: String,
    #[arg(long, value_enum, default_value = "none")]
    pub alpn: AlpnChoice,
    /// How long to keep the connections open after the streams were opened.
    #[arg(long, value_parser = parse_duration, default_value = "20s")]
    pub duration: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct SlowBodyArgs {
    #[command(flatten)]
    pub common: AttackCommonArgs,
    #[arg(long, default_value = "127.0.0.2")]
    pub from: IpAddr,
    /// Connections, one unfinished POST each (at most 60,000).
    #[arg(long, default_value_t = 500)]
    pub conns: usize,
    /// The Content-Length announced (at most 64 MiB).
    #[arg(long, default_value_t = 1_000_000)]
    pub body_bytes: usize,
    /// Bytes written per tick.
    #[arg(long, default_value_t = 1)]
    pub chunk_bytes: usize,
    /// Time between ticks.
    #[arg(long, value_parser = parse_duration, default_value = "4s")]
    pub interval: Duration,
    #[arg(long, default_value = "/api/v1/register")]
    pub path: String,
    /// How long the bodies trickle; the connections still open then are counted.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    pub duration: Duration,
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
}

/// Which attack runs in the bystander scenario's attack phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttackMix {
    /// Only the quiet phase.
    None,
    Logins,
    Sends,
    Both,
}

impl AttackMix {
    pub fn logins(self) -> bool {
        matches!(self, AttackMix::Logins | AttackMix::Both)
    }
    pub fn sends(self) -> bool {
        matches!(self, AttackMix::Sends | AttackMix::Both)
    }
}

/// The transport of the bystanders' and the send flooder's sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SocketTransport {
    /// Secure WebSocket.
    Ws,
    /// WebTransport over QUIC.
    Wt,
}

impl SocketTransport {
    pub fn sdk(self) -> tern_sdk::TransportPref {
        match self {
            SocketTransport::Ws => tern_sdk::TransportPref::WebSocket,
            SocketTransport::Wt => tern_sdk::TransportPref::WebTransport,
        }
    }

    pub fn flag(self) -> &'static str {
        match self {
            SocketTransport::Ws => "ws",
            SocketTransport::Wt => "wt",
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct BystanderArgs {
    #[command(flatten)]
    pub common: AttackCommonArgs,
    /// Transport of the bystanders' and the send flooder's sockets.
    #[arg(long, value_enum, default_value = "ws")]
    pub transport: SocketTransport,
    #[arg(long, value_enum, default_value = "both")]
    pub attack: AttackMix,
    /// Length of the quiet phase and of the attack phase each.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub phase: Duration,
    /// Messages per second each member of the bystander pair sends to the other.
    #[arg(long, default_value_t = 20.0)]
    pub chat_rate: f64,
    /// Bystander payload size in bytes (at least 16).
    #[arg(long, default_value_t = 128)]
    pub chat_bytes: usize,
    /// The legitimate user logs in (correct password, fresh TLS connection) this often.
    #[arg(long, value_parser = parse_duration, default_value = "3s")]
    pub login_every: Duration,
    /// Source address of the legitimate user's logins.
    #[arg(long, default_value = "127.0.0.5")]
    pub user_from: IpAddr,
    /// Source addresses of the attacker's login flood (comma list or IPv4 range).
    #[arg(long, value_parser = parse_source_addrs, default_value = "127.0.0.3")]
    pub attacker_from: SourceAddrs,
    /// Concurrent keep-alive connections flooding wrong-password logins (at most 10,000).
    #[arg(long, default_value_t = 300)]
    pub login_flood_conns: usize,
    /// Sends the flooder keeps in flight on its one socket (at most 100,000).
    #[arg(long, default_value_t = 256)]
    pub send_flood_inflight: usize,
    /// Flooded message payload size.
    #[arg(long, default_value_t = 1024)]
    pub send_flood_bytes: usize,
    /// After each phase, wait at most this long for the bystanders' outstanding deliveries.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub drain: Duration,
    /// Prefix of the accounts this run registers (a random suffix keeps runs apart).
    #[arg(long, default_value = "abuse")]
    pub user_prefix: String,
    /// The tern-loadgen binary that runs the attacker (default: this executable; tests give
    /// the real binary since theirs is the test harness).
    #[arg(long, hide = true)]
    pub attacker_exe: Option<PathBuf>,
}

/// The environment variable that carries the flooder's bearer token to `attack flood`.
pub const FLOOD_TOKEN_ENV: &str = "TERN_ATTACK_FLOOD_TOKEN";

#[derive(Debug, Clone, Args)]
pub struct FloodArgs {
    #[command(flatten)]
    pub common: AttackCommonArgs,
    #[arg(long, value_parser = parse_duration)]
    pub duration: Duration,
    /// Flood wrong-password logins for this username.
    #[arg(long)]
    pub logins_for: Option<String>,
    #[arg(long, default_value_t = 300)]
    pub login_conns: usize,
    #[arg(long, value_parser = parse_source_addrs, default_value = "127.0.0.3")]
    pub from: SourceAddrs,
    /// Flood sends into this conversation (the token is in $TERN_ATTACK_FLOOD_TOKEN).
    #[arg(long)]
    pub send_conversation: Option<String>,
    #[arg(long, default_value_t = 256)]
    pub inflight: usize,
    #[arg(long, default_value_t = 1024)]
    pub bytes: usize,
    #[arg(long, value_enum, default_value = "ws")]
    pub transport: SocketTransport,
}

/// Where the results go.
#[derive(Debug, Clone)]
pub struct Output {
    pub report: Option<PathBuf>,
    pub plot: Option<PathBuf>,
}

impl CommonArgs {
    fn to_common(
        &self,
        default_attempts: u32,
        command_line: Vec<String>,
    ) -> Result<(Common, Output), CliError> {
        if self.payload_bytes < crate::payload::HEADER_LEN {
            return Err(CliError::Usage(format!(
                "--payload-bytes must be at least {}",
                crate::payload::HEADER_LEN
            )));
        }
        if self.ca_file.is_some() && !self.cert_hash.is_empty() {
            return Err(CliError::Usage(
                "give --cert-hash or --ca-file, not both".into(),
            ));
        }
        if self.e2e {
            if !matches!(self.target, TargetKind::TernWs | TargetKind::TernWt) {
                return Err(CliError::Usage("--e2e needs a Tern target".into()));
            }
            if self.verify_history {
                return Err(CliError::Usage(
                    "--verify-history reads plaintext headers; not with --e2e".into(),
                ));
            }
            if self.e2e_rotation_messages == 0 {
                return Err(CliError::Usage(
                    "--e2e-rotation-messages must be at least 1".into(),
                ));
            }
        }
        let mut target = TargetSpec::new(self.target, self.server.clone());
        target.e2e_rotation_messages = self.e2e.then_some(self.e2e_rotation_messages);
        target.cert_hashes = self.cert_hash.clone();
        target.ca_file = self.ca_file.clone();
        target.state_dir = if self.no_state {
            None
        } else {
            Some(
                self.state_dir
                    .clone()
                    .unwrap_or_else(|| std::env::temp_dir().join("tern-loadgen")),
            )
        };
        target.setup_concurrency = self.setup_concurrency.max(1);
        target.connect_timeout_ms = self.connect_timeout.as_millis() as u64;
        target.request_timeout_ms = self.request_timeout.as_millis() as u64;
        let mut c = Common::new(target);
        c.workers = self.workers;
        c.source_addrs = self.source_addrs.clone().map(|s| s.0).unwrap_or_default();
        c.payload_bytes = self.payload_bytes;
        c.seed = self.seed;
        c.drain = self.drain;
        c.connect_rate = self.connect_rate;
        c.connect_concurrency = self.connect_concurrency.max(1);
        c.connect_attempts = self.connect_attempts.unwrap_or(default_attempts).max(1);
        c.server_pids = self.server_pid.clone();
        c.quiet = self.quiet;
        c.label = self.label.clone();
        c.command_line = command_line;
        c.verify_history = self.verify_history;
        c.ready_file = self.ready_file.clone();
        c.sabotage = self.debug_sabotage;
        Ok((
            c,
            Output {
                report: self.report.clone(),
                plot: self.plot.clone(),
            },
        ))
    }
}

/// The run a parsed command line asks for; `None` for `worker`.
pub fn into_run(
    command: Command,
    command_line: Vec<String>,
) -> Result<Option<(Common, Scenario, Output)>, CliError> {
    Ok(Some(match command {
        Command::Connect(a) => {
            let (c, o) = a.common.to_common(1, command_line)?;
            (
                c,
                Scenario::Connect {
                    connections: a.connections,
                    ramp: a.ramp,
                    hold: a.hold,
                },
                o,
            )
        }
        Command::Chat(a) => {
            let (c, o) = a.common.to_common(3, command_line)?;
            (
                c,
                Scenario::Chat {
                    users: a.users,
                    mix: a.group_sizes,
                    rate: a.rate,
                    duration: a.duration,
                    warmup: a.warmup,
                    warmup_ramp: a.warmup_ramp,
                    schedule: a.schedule,
                },
                o,
            )
        }
        Command::Fanout(a) => {
            let (c, o) = a.common.to_common(3, command_line)?;
            (
                c,
                Scenario::Fanout {
                    users: a.users,
                    group_size: a.group_size,
                    senders_per_group: a.senders_per_group,
                    start_rate: a.start_rate,
                    step_factor: a.step_factor,
                    step_duration: a.step_duration,
                    max_steps: a.max_steps,
                    p99_threshold: a.p99_threshold,
                    schedule: a.schedule,
                },
                o,
            )
        }
        Command::Reconnect(a) => {
            let (c, o) = a.common.to_common(3, command_line)?;
            (
                c,
                Scenario::Reconnect {
                    users: a.users,
                    mix: a.group_sizes,
                    rate: a.rate,
                    duration: a.duration,
                    drop_percent: a.drop_percent,
                    drop_at: a.drop_at,
                    schedule: a.schedule,
                },
                o,
            )
        }
        Command::Run(_) => {
            return Err(CliError::Usage(
                "`run` needs --scenario FILE with a `kind` key".into(),
            ));
        }
        Command::Worker(_)
        | Command::Attack(_)
        | Command::Rotation(_)
        | Command::HistoryBench(_) => return Ok(None),
    }))
}

const KINDS: [&str; 4] = ["connect", "chat", "fanout", "reconnect"];

/// Turns a scenario file into flags: `key = value` → `--key value`, `key = true` → `--key`,
/// arrays → the flag repeated. Returns (kind, flags).
pub fn scenario_flags(path: &std::path::Path) -> Result<(Option<String>, Vec<String>), CliError> {
    let err = |m: String| CliError::ScenarioFile(path.display().to_string(), m);
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| err(e.to_string()))?;
    let mut kind = None;
    let mut flags = Vec::new();
    for (key, value) in table {
        if key == "kind" {
            match value {
                toml::Value::String(s) if KINDS.contains(&s.as_str()) => kind = Some(s),
                other => {
                    return Err(err(format!("kind must be one of {KINDS:?}, got {other}")));
                }
            }
            continue;
        }
        if key == "scenario" {
            return Err(err("a scenario file cannot name another".into()));
        }
        let flag = format!("--{}", key.replace('_', "-"));
        let scalar = |v: &toml::Value| -> Result<String, CliError> {
            match v {
                toml::Value::String(s) => Ok(s.clone()),
                toml::Value::Integer(i) => Ok(i.to_string()),
                toml::Value::Float(f) => Ok(f.to_string()),
                other => Err(err(format!("{key}: unsupported value {other}"))),
            }
        };
        match &value {
            toml::Value::Boolean(true) => flags.push(flag),
            toml::Value::Boolean(false) => {}
            toml::Value::Array(items) => {
                for item in items {
                    flags.push(flag.clone());
                    flags.push(scalar(item)?);
                }
            }
            v => {
                flags.push(flag);
                flags.push(scalar(v)?);
            }
        }
    }
    Ok((kind, flags))
}

/// Expands `--scenario FILE` (and the `run` subcommand) into flags, before clap sees them.
pub fn expand_scenario(args: Vec<String>) -> Result<Vec<String>, CliError> {
    let Some(pos) = args
        .iter()
        .position(|a| a == "--scenario" || a.starts_with("--scenario="))
    else {
        return Ok(args);
    };
    let path = if let Some(p) = args[pos].strip_prefix("--scenario=") {
        PathBuf::from(p)
    } else {
        PathBuf::from(
            args.get(pos + 1)
                .ok_or_else(|| CliError::Usage("--scenario needs a file".into()))?,
        )
    };
    let (kind, flags) = scenario_flags(&path)?;
    let sub = args.get(1).cloned().unwrap_or_default();
    let mut out = vec![args[0].clone()];
    let rest_start;
    if sub == "run" {
        let kind = kind.ok_or_else(|| {
            CliError::ScenarioFile(path.display().to_string(), "no `kind` key".into())
        })?;
        out.push(kind);
        rest_start = 2;
    } else if KINDS.contains(&sub.as_str()) {
        if let Some(k) = &kind
            && *k != sub
        {
            return Err(CliError::ScenarioFile(
                path.display().to_string(),
                format!("is a {k} scenario, not {sub}"),
            ));
        }
        out.push(sub);
        rest_start = 2;
    } else {
        return Err(CliError::Usage(
            "--scenario goes after a scenario subcommand or `run`".into(),
        ));
    }
    out.extend(flags);
    // What was typed follows the file's flags, so it overrides them.
    out.extend(args[rest_start..].iter().cloned());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        Cli::try_parse_from(expand_scenario(args).unwrap()).unwrap()
    }

    #[test]
    fn source_address_forms() {
        let s = parse_source_addrs("127.0.0.1-127.0.0.3,::1").unwrap();
        assert_eq!(s.0.len(), 4);
        assert_eq!(s.0[2], "127.0.0.3".parse::<IpAddr>().unwrap());
        assert!(parse_source_addrs("127.0.0.5-127.0.0.1").is_err());
        assert!(parse_source_addrs("").is_err());
    }

    #[test]
    fn scenario_file_then_flags_override() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s.toml");
        std::fs::write(
            &f,
            "kind = \"chat\"\nserver = \"127.0.0.1:1\"\nusers = 300\nrate = 50.5\n\
             group_sizes = \"2:50,5:50\"\nduration = \"20s\"\nwarmup = \"3s\"\nquiet = true\n\
             server_pid = [1, 2]\n",
        )
        .unwrap();
        let fs = f.to_str().unwrap();
        let cli = parse(&["tern-loadgen", "run", "--scenario", fs, "--users", "40"]);
        let Command::Chat(a) = cli.command else {
            panic!("expected chat")
        };
        assert_eq!(a.users, 40, "the command line wins");
        assert_eq!(a.rate, 50.5);
        assert_eq!(a.duration, Duration::from_secs(20));
        assert_eq!(a.warmup, Duration::from_secs(3), "warmup from the file");
        assert_eq!(a.group_sizes.0, vec![(2, 50.0), (5, 50.0)]);
        assert!(a.common.quiet);
        assert_eq!(a.common.server_pid, vec![1, 2]);
        // The same file through the subcommand; a mismatching kind is refused.
        let cli = parse(&["tern-loadgen", "chat", "--scenario", fs]);
        assert!(matches!(cli.command, Command::Chat(_)));
        let args: Vec<String> = ["tern-loadgen", "fanout", "--scenario", fs]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert!(expand_scenario(args).is_err());
    }

    #[test]
    fn defaults_and_conversion() {
        let cli = parse(&[
            "tern-loadgen",
            "connect",
            "--server",
            "127.0.0.1:4433",
            "--cert-hash",
            "ab",
            "--server-pid",
            "5,6",
        ]);
        let Some((c, s, _)) = into_run(cli.command, vec![]).unwrap() else {
            panic!("a run")
        };
        assert_eq!(c.connect_attempts, 1);
        assert_eq!(c.server_pids, vec![5, 6]);
        assert!(matches!(
            s,
            Scenario::Connect {
                connections: 1000,
                ..
            }
        ));
        assert!(
            Cli::try_parse_from([
                "tern-loadgen",
                "chat",
                "--server",
                "x:1",
                "--group-sizes",
                "2:50"
            ])
            .is_err()
        );
    }
}
