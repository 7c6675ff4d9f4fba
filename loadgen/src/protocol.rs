//! Between the coordinator and its workers: the plan a worker starts from, and the messages
//! both ways. In-process workers get them over channels; worker processes as JSON lines on
//! stdin (to the worker) and stdout (from it). Histograms travel V2-serialized, base64.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tern_sdk::Trust;

use crate::accounting::{ArrivalCounts, LossSample, SentRow, Tally};
use crate::phase_stats::WarmupResult;
use crate::schedule::ScheduleSpec;
use crate::target::centrifugo::CentrifugoTarget;
use crate::target::socketio::SocketIoTarget;
use crate::target::tern::{TernOptions, TernTarget, TernTransport};
use crate::target::{Target, TargetError, UserSpec};

/// The system under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum TargetKind {
    /// Tern over secure WebSocket.
    #[serde(rename = "tern-ws")]
    #[value(name = "tern-ws")]
    TernWs,
    /// Tern over WebTransport (HTTP/3, QUIC).
    #[serde(rename = "tern-wt")]
    #[value(name = "tern-wt")]
    TernWt,
    /// Socket.IO 4 (Engine.IO v4 over WebSocket).
    #[serde(rename = "socketio")]
    #[value(name = "socketio")]
    SocketIo,
    /// Centrifugo (JSON protocol over WebSocket).
    #[serde(rename = "centrifugo")]
    #[value(name = "centrifugo")]
    Centrifugo,
}

impl TargetKind {
    pub fn name(self) -> &'static str {
        match self {
            TargetKind::TernWs => "tern-ws",
            TargetKind::TernWt => "tern-wt",
            TargetKind::SocketIo => "socketio",
            TargetKind::Centrifugo => "centrifugo",
        }
    }
}

/// Everything needed to build a [`Target`] in any process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetSpec {
    pub kind: TargetKind,
    /// `host:port`.
    pub server: String,
    /// Pinned certificate SHA-256s (hex); empty with no `ca_file` means the system roots.
    pub cert_hashes: Vec<String>,
    pub ca_file: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub setup_concurrency: usize,
    pub connect_timeout_ms: u64,
    pub sync_timeout_ms: u64,
    pub request_timeout_ms: u64,
    /// `--e2e`: rotation after this many messages per outbound session; `None`: plaintext.
    #[serde(default)]
    pub e2e_rotation_messages: Option<u32>,
}

impl TargetSpec {
    pub fn new(kind: TargetKind, server: impl Into<String>) -> TargetSpec {
        TargetSpec {
            kind,
            server: server.into(),
            cert_hashes: Vec::new(),
            ca_file: None,
            state_dir: None,
            setup_concurrency: 8,
            connect_timeout_ms: 30_000,
            sync_timeout_ms: 60_000,
            request_timeout_ms: 30_000,
            e2e_rotation_messages: None,
        }
    }

    pub fn trust(&self) -> Result<Trust, TargetError> {
        let bad = |e: tern_sdk::Error| TargetError::Setup(e.to_string());
        if let Some(ca) = &self.ca_file {
            return Trust::ca_pem_file(ca).map_err(bad);
        }
        if !self.cert_hashes.is_empty() {
            return Trust::pinned_hex(&self.cert_hashes).map_err(bad);
        }
        Ok(Trust::System)
    }

    pub fn build(&self) -> Result<Arc<dyn Target>, TargetError> {
        let trust = self.trust()?;
        let tern = |transport| -> Result<TernTarget, TargetError> {
            let mut o = TernOptions::new(self.server.clone(), trust.clone(), transport);
            o.state_dir = self.state_dir.clone();
            o.setup_concurrency = self.setup_concurrency;
            o.connect_timeout = Duration::from_millis(self.connect_timeout_ms);
            o.sync_timeout = Duration::from_millis(self.sync_timeout_ms);
            o.request_timeout = Duration::from_millis(self.request_timeout_ms);
            o.e2e_rotation_messages = self.e2e_rotation_messages;
            TernTarget::new(o)
        };
        // The peers get the same TLS trust as Tern's WebSocket (TLS over TCP, ALPN http/1.1).
        let tcp_tls = || -> Result<Arc<rustls::ClientConfig>, TargetError> {
            Ok(tern_sdk::tls::TlsConfigs::new(&trust)
                .map_err(|e| TargetError::Setup(e.to_string()))?
                .tcp)
        };
        Ok(match self.kind {
            TargetKind::TernWs => Arc::new(tern(TernTransport::WebSocket)?),
            TargetKind::TernWt => Arc::new(tern(TernTransport::WebTransport)?),
            TargetKind::SocketIo => Arc::new(SocketIoTarget::new(self.server.clone(), tcp_tls()?)),
            TargetKind::Centrifugo => {
                Arc::new(CentrifugoTarget::new(self.server.clone(), tcp_tls()?))
            }
        })
    }
}

/// What one worker is responsible for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerPlan {
    pub index: usize,
    pub workers: usize,
    /// Distinguishes this run's messages from leftovers of earlier runs on the same server.
    pub run_id: u32,
    pub target: TargetSpec,
    /// [`Target::export_state`] of the coordinator's target after setup.
    pub target_state: serde_json::Value,
    /// This worker's users (their `index` is the global user index).
    pub users: Vec<UserSpec>,
    /// All users' (sender, conversation) pairs the schedules pick from, in global order.
    pub eligible: Vec<(u32, u32)>,
    /// Source addresses; user `i` connects from `source_addrs[i % len]` (empty: any).
    pub source_addrs: Vec<IpAddr>,
    pub payload_bytes: usize,
    /// Connection attempts started per second, all workers together (user i starts at i/rate).
    pub connect_rate: f64,
    /// Connection attempts in flight at once in this worker.
    pub connect_concurrency: usize,
    /// Attempts per user for the initial connection before it counts as failed.
    pub connect_attempts: u32,
    /// Test only (`--debug-sabotage duplicate-send`): worker 0 stores one acknowledged message
    /// a second time under another idempotency key.
    #[serde(default)]
    pub sabotage_duplicate_send: bool,
}

/// Reconnect scenario: which users drop their connection, and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DropSpec {
    /// After the phase start.
    pub at_ns: u64,
    /// Global user indexes (each worker acts on its own).
    pub users: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrafficSpec {
    pub phase: u32,
    pub start_unix_ns: u64,
    pub schedule: ScheduleSpec,
    /// A send not acknowledged by then counts as failed.
    pub give_up_unix_ns: u64,
    pub drop: Option<DropSpec>,
    /// `chat --warmup`: this phase's messages are checked like every other but kept out of the
    /// measured statistics (see [`crate::phase_stats`]).
    #[serde(default)]
    pub warmup: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToWorker {
    /// Connect every user, user `i` at `start + i / connect_rate`.
    Connect { start_unix_ns: u64 },
    /// Run one traffic phase.
    Traffic(TrafficSpec),
    /// The phase is drained: report its histograms and start new ones.
    EndPhase { phase: u32 },
    /// Report what was sent.
    Collect,
    /// The merged sent table of all workers: compare it with the receivers' ledgers.
    Account { rows: Vec<SentRow> },
    /// Close every connection and stop.
    Shutdown,
}

/// Cumulative counters, sent twice a second.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Connections up now.
    pub connected: u64,
    /// Users whose initial connection is settled (up or given up).
    pub connect_settled: u64,
    pub connect_failed_attempts: u64,
    /// Sends dispatched by the schedule.
    pub sent: u64,
    pub acked: u64,
    pub send_failed: u64,
    /// First arrivals of this run's messages (all phases).
    pub delivered: u64,
    pub duplicates: u64,
    /// Connections lost without being dropped on purpose.
    pub disconnects: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectResult {
    pub users: u64,
    pub succeeded: u64,
    pub failed_attempts: u64,
    /// Users who never connected.
    pub users_failed: u64,
    pub connect_hist: String,
    /// Error message → count (truncated messages, bounded number of distinct ones).
    pub errors: Vec<(String, u64)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseStats {
    pub phase: u32,
    pub delivery_hist: String,
    pub send_ack_hist: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinalResult {
    pub counts: ArrivalCounts,
    pub tally: Tally,
    pub loss_samples: Vec<LossSample>,
    pub delivery_hist: String,
    pub send_ack_hist: String,
    pub connect_hist: String,
    pub reconnect_hist: String,
    pub sent: u64,
    pub acked: u64,
    pub send_failed: u64,
    /// Failed send attempts (each retry counts), including those that later succeeded.
    pub send_errors: u64,
    /// Acknowledgements that said the key had been stored before (a retry after a lost ack).
    #[serde(default)]
    pub ack_duplicates: u64,
    pub disconnects: u64,
    pub reconnects: u64,
    pub reconnect_failed_attempts: u64,
    pub dropped: u64,
    /// Dropped users that were not connected when the drop came.
    pub drop_skipped: u64,
    pub errors: Vec<(String, u64)>,
    /// The warm-up's own counters and histograms (`delivery_hist`/`send_ack_hist` above are
    /// the measured traffic only; the counters above are the whole run).
    #[serde(default)]
    pub warmup: WarmupResult,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FromWorker {
    Hello {
        pid: u32,
    },
    Progress(Progress),
    Connected(ConnectResult),
    /// Every send of the phase is settled (acknowledged or failed). Cumulative over phases.
    SendsDone {
        phase: u32,
        acked_per_conversation: Vec<(u32, u64)>,
        send_failed: u64,
    },
    PhaseStats(PhaseStats),
    Sent {
        rows: Vec<SentRow>,
    },
    Final(Box<FinalResult>),
    Bye,
    /// The worker cannot go on.
    Failed {
        message: String,
    },
}
