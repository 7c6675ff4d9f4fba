//! `tern-loadgen attack ...`: hostile-client measurements (issue 10), each one bounded in time
//! and count, against loopback servers only (refused otherwise, in code).
//!
//! * [`idle`]: idle TLS connections from one address; does another address still get /healthz?
//! * [`h2`]: HTTP/2 by prior knowledge, streams with unfinished bodies; server RSS.
//! * [`slow_body`]: POST bodies trickling in; server RSS and connections still held.
//! * [`bystander`]: a chatting pair and a legitimate user logging in, quiet and then next to a
//!   login flood and a send flood, in one process and one report.
//! * [`raw`]: the raw TLS / HTTP/1.1 client they share; [`probe`]: RSS and /healthz sampling.
//!
//! Every scenario writes one JSON report ([`AttackReport`], see loadgen/REPORT.md) and prints a
//! short human summary.

pub mod bystander;
pub mod flood;
pub mod h2;
pub mod idle;
pub mod probe;
pub mod raw;
pub mod slow_body;

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs as _};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use tern_sdk::Trust;

use crate::cli::{AttackCommand, AttackCommonArgs};
use crate::report::Tool;
use crate::sysstat::Machine;

pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum AttackError {
    #[error("{0}")]
    Usage(String),
    #[error("setup failed: {0}")]
    Setup(String),
}

/// The server under attack and how to reach it.
#[derive(Debug, Clone)]
pub struct AttackTarget {
    pub addr: SocketAddr,
    /// `host:port` as given (the Host header and the SDK's server address).
    pub authority: String,
    pub sdk: tern_sdk::Config,
    /// TLS as the SDK does it (pinning or CA, ALPN http/1.1).
    pub tls: Arc<rustls::ClientConfig>,
}

/// Refuses anything that is not loopback: these tools exist to attack our own server.
pub fn require_loopback(what: &str, ip: IpAddr) -> Result<(), AttackError> {
    if ip.is_loopback() {
        Ok(())
    } else {
        Err(AttackError::Usage(format!(
            "{what} {ip} is not a loopback address; attacks only run against 127.0.0.0/8 or ::1"
        )))
    }
}

impl AttackTarget {
    pub fn new(args: &AttackCommonArgs) -> Result<AttackTarget, AttackError> {
        let addr = args
            .server
            .to_socket_addrs()
            .map_err(|e| AttackError::Usage(format!("--server {}: {e}", args.server)))?
            .next()
            .ok_or_else(|| AttackError::Usage(format!("--server {}: no address", args.server)))?;
        require_loopback("--server", addr.ip())?;
        require_loopback("--probe-from", args.probe_from)?;
        let trust = match (&args.ca_file, args.cert_hash.is_empty()) {
            (Some(_), false) => {
                return Err(AttackError::Usage(
                    "give --cert-hash or --ca-file, not both".into(),
                ));
            }
            (Some(f), true) => Trust::ca_pem_file(f),
            (None, false) => Trust::pinned_hex(&args.cert_hash),
            (None, true) => {
                return Err(AttackError::Usage(
                    "--cert-hash or --ca-file is required".into(),
                ));
            }
        }
        .map_err(|e| AttackError::Usage(e.to_string()))?;
        let sdk = tern_sdk::Config::new(&args.server, trust)
            .map_err(|e| AttackError::Usage(e.to_string()))?
            .with_client_name(format!("tern-loadgen-attack/{}", env!("CARGO_PKG_VERSION")));
        let tls = sdk.tls().tcp.clone();
        Ok(AttackTarget {
            addr,
            authority: args.server.clone(),
            sdk,
            tls,
        })
    }

    /// The TLS config with `alpn` offered instead of the SDK's `http/1.1`.
    pub fn tls_with_alpn(&self, alpn: crate::cli::AlpnChoice) -> Arc<rustls::ClientConfig> {
        let mut c = (*self.tls).clone();
        c.alpn_protocols = match alpn {
            crate::cli::AlpnChoice::None => Vec::new(),
            crate::cli::AlpnChoice::Http11 => vec![b"http/1.1".to_vec()],
            crate::cli::AlpnChoice::H2 => vec![b"h2".to_vec()],
        };
        Arc::new(c)
    }
}

/// One attack run's report. `result` is the scenario's own section (see REPORT.md per kind).
#[derive(Debug, Clone, Serialize)]
pub struct AttackReport {
    pub schema_version: u32,
    pub tool: Tool,
    /// "idle-conns", "h2", "slow-body" or "bystander".
    pub kind: String,
    pub label: Option<String>,
    pub command_line: Vec<String>,
    pub started_at: String,
    pub finished_at: String,
    pub wall_secs: f64,
    pub machine: Machine,
    pub server: String,
    /// Server RSS sampled from /proc over the run (null without --server-pid).
    pub server_rss: Option<probe::RssStats>,
    /// GET /healthz from --probe-from during the run (null for `bystander`).
    pub healthz: Option<probe::HealthStats>,
    pub result: serde_json::Value,
    /// The human summary, also printed.
    pub summary: String,
}

pub fn rfc3339_now() -> String {
    let now = time::OffsetDateTime::now_utc();
    now.replace_nanosecond(0)
        .unwrap_or(now)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// What a scenario hands back: its section of the report and its summary lines.
pub struct Outcome {
    pub result: serde_json::Value,
    pub summary: String,
    pub rss: Option<probe::RssStats>,
    pub healthz: Option<probe::HealthStats>,
}

/// Runs one attack (on the caller's runtime) and builds its report.
pub async fn run(cmd: AttackCommand, command_line: Vec<String>) -> anyhow::Result<AttackReport> {
    let common = cmd.common().clone();
    let target = AttackTarget::new(&common)?;
    let started_at = rfc3339_now();
    let t0 = Instant::now();
    let (kind, outcome) = match cmd {
        AttackCommand::IdleConns(a) => ("idle-conns", idle::run(&target, &a).await?),
        AttackCommand::H2(a) => ("h2", h2::run(&target, &a).await?),
        AttackCommand::SlowBody(a) => ("slow-body", slow_body::run(&target, &a).await?),
        AttackCommand::Bystander(a) => ("bystander", bystander::run(&target, &a).await?),
        AttackCommand::Flood(a) => ("flood", flood::run(&target, &a).await?),
    };
    let mut summary = String::new();
    let _ = writeln!(summary, "attack {kind} against {}", common.server);
    if let Some(r) = &outcome.rss {
        let _ = writeln!(summary, "  {}", r.line());
    }
    if let Some(h) = &outcome.healthz {
        let _ = writeln!(summary, "  {}", h.line());
    }
    summary.push_str(&outcome.summary);
    Ok(AttackReport {
        schema_version: SCHEMA_VERSION,
        tool: Tool {
            name: "tern-loadgen".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        },
        kind: kind.into(),
        label: common.label.clone(),
        command_line,
        started_at,
        finished_at: rfc3339_now(),
        wall_secs: t0.elapsed().as_secs_f64(),
        machine: crate::sysstat::machine(),
        server: common.server.clone(),
        server_rss: outcome.rss,
        healthz: outcome.healthz,
        result: outcome.result,
        summary,
    })
}

/// `tern-loadgen attack ...` from `main`: runs, writes --report, prints the summary.
pub fn main(cmd: AttackCommand, command_line: Vec<String>) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let report_path = cmd.common().report.clone();
    // Current-thread like the other scenarios: the measured costs are the server's, and a
    // single-threaded client leaves more of the shared cores to it.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let report = rt.block_on(run(cmd, command_line))?;
    if let Some(path) = &report_path {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json + "\n")
            .with_context(|| format!("writing the report to {}", path.display()))?;
    }
    print!("{}", report.summary);
    // Background tasks (held sockets) end with the runtime.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    Ok(())
}

/// `n` bounded by `max`, or a usage error naming the flag.
pub fn bounded(flag: &str, n: usize, min: usize, max: usize) -> Result<usize, AttackError> {
    if (min..=max).contains(&n) {
        Ok(n)
    } else {
        Err(AttackError::Usage(format!(
            "{flag} must be within {min}..={max}, got {n}"
        )))
    }
}

/// Durations are bounded too: no attack runs longer than this per phase.
pub const MAX_DURATION: std::time::Duration = std::time::Duration::from_secs(600);

pub fn bounded_duration(
    flag: &str,
    d: std::time::Duration,
) -> Result<std::time::Duration, AttackError> {
    if d <= MAX_DURATION {
        Ok(d)
    } else {
        Err(AttackError::Usage(format!(
            "{flag} must be at most {}s",
            MAX_DURATION.as_secs()
        )))
    }
}
