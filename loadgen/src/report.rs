//! The run report: one JSON document with a stable, documented schema (loadgen/REPORT.md), and
//! the human summary printed at the end of a run.
//!
//! Compatibility rule: fields are only ever added within a `schema_version`; renaming, removing
//! or changing the meaning of a field bumps it.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::accounting::LossSample;
use crate::histo::Percentiles;
use crate::history::HistorySection;
use crate::sysstat::Machine;
use crate::util::{fmt_bytes, fmt_us};

pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub schema_version: u32,
    pub tool: Tool,
    pub label: Option<String>,
    pub command_line: Vec<String>,
    /// RFC 3339, UTC.
    pub started_at: String,
    pub finished_at: String,
    pub wall_secs: f64,
    pub machine: Machine,
    pub scenario: ScenarioInfo,
    pub setup_secs: f64,
    pub connect: ConnectSection,
    pub traffic: TrafficSection,
    pub latency: LatencySection,
    pub accounting: AccountingSection,
    pub connections: ConnectionsSection,
    pub server: Option<ServerSection>,
    pub loadgen: LoadgenSection,
    pub samples: Vec<Sample>,
    pub fanout: Option<FanoutSection>,
    pub reconnect: Option<ReconnectSection>,
    /// `--verify-history`: the stored history checked against the acknowledgements; null
    /// without the flag.
    #[serde(default)]
    pub history: Option<HistorySection>,
    /// `chat --warmup`: the traffic before the measured phase, for information; null without
    /// it. `traffic`, `latency`, `server` and `loadgen` leave it out; `accounting` (the
    /// correctness checks) covers every message, the warm-up's included.
    #[serde(default)]
    pub warmup: Option<WarmupSection>,
    pub histograms: Histograms,
    /// Every error the workers saw (connects, sends, reconnects), by message, most frequent
    /// first. Errors are not failures by themselves: a retried send that succeeded is fine.
    pub errors: Vec<ErrorCount>,
    pub passed: bool,
    pub failures: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    pub name: String,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SizeCount {
    pub size: usize,
    pub conversations: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenarioInfo {
    /// "connect", "chat", "fanout" or "reconnect".
    pub kind: String,
    /// "tern-ws", "tern-wt", "socketio" or "centrifugo".
    pub target: String,
    pub server: String,
    pub users: usize,
    pub conversations: usize,
    pub conversation_sizes: Vec<SizeCount>,
    /// The scenario's own parameters, as given (see REPORT.md per kind).
    pub params: serde_json::Value,
    pub seed: u64,
    pub payload_bytes: usize,
    /// Worker processes; 0 means the scenario ran inside the coordinator process.
    pub workers: usize,
    pub source_addrs: Vec<String>,
    pub run_id: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ErrorCount {
    pub message: String,
    pub count: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConnectSection {
    pub users: u64,
    pub succeeded: u64,
    pub users_failed: u64,
    pub failed_attempts: u64,
    /// From the first attempt to the last initial connection settled.
    pub duration_secs: f64,
    pub connections_per_sec: f64,
    pub latency: Percentiles,
    pub errors: Vec<ErrorCount>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrafficSection {
    /// Scheduled duration of all traffic phases together.
    pub duration_secs: f64,
    /// Sends the schedule dispatched.
    pub sent: u64,
    pub acked: u64,
    /// Sends never acknowledged before their give-up time.
    pub send_failed: u64,
    /// Failed send attempts, retries included.
    pub send_errors: u64,
    /// Acknowledgements saying the message had been stored before (a retry whose first
    /// acknowledgement was lost, e.g. to a server crash; not a failure).
    #[serde(default)]
    pub ack_duplicates: u64,
    pub sent_per_sec: f64,
    /// `accounting.delivered / duration_secs`.
    pub delivered_per_sec: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySection {
    /// Scheduled send time → arrival at each recipient (first arrival only).
    pub delivery: Percentiles,
    /// Send started → acknowledged by the server.
    pub send_ack: Percentiles,
    /// Connection attempt → ready (Tern: SyncComplete received).
    pub connect: Percentiles,
    /// Reconnect scenario: dropped connection closed → reconnected with the replay received.
    pub reconnect: Percentiles,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AccountingSection {
    pub expected: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    /// Arrivals of a (conversation, seq) already received (live and again in a replay):
    /// dropped as a client would. Not a failure.
    #[serde(default)]
    pub client_dedupes: u64,
    pub out_of_order: u64,
    pub seq_regressions: u64,
    pub unconfirmed_delivered: u64,
    pub phantom: u64,
    pub misrouted: u64,
    pub malformed: u64,
    pub stale: u64,
    pub own: u64,
    pub arrivals: u64,
    /// `--e2e`: deliveries that could not be decrypted (a failure; reasons under `errors`).
    #[serde(default)]
    pub undecryptable: u64,
    /// `--e2e`: deliveries decrypted only when their key arrived after them.
    #[serde(default)]
    pub late_keys: u64,
    pub loss_samples: Vec<LossSample>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConnectionsSection {
    pub disconnects: u64,
    pub reconnects: u64,
    pub reconnect_failed_attempts: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerSection {
    pub pids: Vec<u32>,
    /// Percent of one core (200 = two cores busy), averaged over the traffic phases (the hold
    /// for the connect scenario).
    pub cpu_percent_avg: f64,
    pub cpu_percent_max: f64,
    pub rss_bytes_before_connect: u64,
    pub rss_bytes_at_hold: u64,
    pub rss_bytes_peak: u64,
    pub rss_bytes_end: u64,
    /// (rss_bytes_at_hold − rss_bytes_before_connect) / connections up at hold.
    pub memory_per_connection_bytes: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadgenSection {
    /// Processes measured: the coordinator and its worker processes.
    pub processes: usize,
    pub cpu_percent_avg: f64,
    pub cpu_percent_max: f64,
    pub rss_bytes_before_connect: u64,
    pub rss_bytes_at_hold: u64,
    pub rss_bytes_peak: u64,
    pub memory_per_connection_bytes: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since the run started.
    pub t_secs: f64,
    /// "connect", "hold", "warmup", "traffic", "drain", "step N", "idle".
    pub phase: String,
    pub server_cpu_percent: Option<f64>,
    pub server_rss_bytes: Option<u64>,
    pub loadgen_cpu_percent: f64,
    pub loadgen_rss_bytes: u64,
    /// Connections up (all workers) at the last progress report.
    pub connected: u64,
    /// Cumulative first arrivals at the last progress report.
    pub delivered: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FanoutStep {
    pub step: u32,
    pub rate_per_sec: f64,
    pub duration_secs: f64,
    pub sent: u64,
    pub expected_deliveries: u64,
    pub deliveries_per_sec: f64,
    pub delivery: Percentiles,
    pub send_ack: Percentiles,
    /// Everything expected arrived within the drain period.
    pub drained: bool,
    pub send_failed: u64,
    pub server_cpu_percent_avg: Option<f64>,
    pub sustained: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FanoutSection {
    pub group_size: usize,
    pub p99_threshold_us: u64,
    pub steps: Vec<FanoutStep>,
    pub max_sustained_deliveries_per_sec: f64,
    pub max_sustained_rate_per_sec: f64,
    pub stop_reason: String,
}

/// `chat --warmup`: traffic at the scenario's rate and schedule before the measured phase, so
/// the cold start is not measured. A message belongs to the warm-up when its send was
/// scheduled in it, whenever it arrives.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WarmupSection {
    pub duration_secs: f64,
    pub sent: u64,
    pub acked: u64,
    pub send_failed: u64,
    /// Deliveries the acknowledged warm-up messages owe (one per member other than the sender).
    pub expected: u64,
    /// First arrivals of warm-up messages (also those arriving during the measured phase).
    pub delivered: u64,
    /// Everything expected of the warm-up arrived before the measured phase started.
    pub drained: bool,
    /// Scheduled send time → arrival of warm-up messages.
    pub delivery: Percentiles,
    pub send_ack: Percentiles,
    /// `--e2e`: warm-up messages decrypted only when their key arrived after them.
    pub late_keys: u64,
    /// `--e2e`: undecryptable arrivals while the warm-up ran (by arrival time: such a message
    /// has no readable header). Also counted in `accounting.undecryptable`.
    pub undecryptable: u64,
    /// Sends that were the first of their (sender, conversation) in the run but came in the
    /// measured phase: with `--e2e` each paid its cold start inside the measurement. A longer
    /// warm-up makes it smaller.
    pub first_sends_after_warmup: u64,
    /// Percent of one core averaged over the warm-up phase (its drain excluded).
    pub server_cpu_percent_avg: Option<f64>,
    pub loadgen_cpu_percent_avg: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReconnectSection {
    pub drop_percent: f64,
    pub drop_at_secs: f64,
    /// Users chosen to drop.
    pub selected: u64,
    /// Of those, connected when the drop came (and dropped).
    pub dropped: u64,
    pub not_connected_at_drop: u64,
    /// Dropped users that reconnected (count of `latency.reconnect`).
    pub resumed: u64,
    pub time_to_resume: Percentiles,
}

/// Merged histograms, HdrHistogram V2 serialization, base64 (microseconds).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Histograms {
    pub delivery: String,
    pub send_ack: String,
    pub connect: String,
    pub reconnect: String,
}

fn pct_line(name: &str, p: &Percentiles) -> String {
    if p.count == 0 {
        return format!("  {name:<10} (none)\n");
    }
    format!(
        "  {name:<10} p50 {:>9}  p90 {:>9}  p95 {:>9}  p99 {:>9}  p99.9 {:>9}  max {:>9}  (n={})\n",
        fmt_us(p.p50_us),
        fmt_us(p.p90_us),
        fmt_us(p.p95_us),
        fmt_us(p.p99_us),
        fmt_us(p.p999_us),
        fmt_us(p.max_us),
        p.count
    )
}

impl WarmupSection {
    fn human(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "warm-up (not in the measured figures): {:.0}s, sent {}, acked {}, failed {}, delivered {} of {} expected{}, first sends after it {}",
            self.duration_secs,
            self.sent,
            self.acked,
            self.send_failed,
            self.delivered,
            self.expected,
            if self.drained {
                ""
            } else {
                " (not drained before the measured phase)"
            },
            self.first_sends_after_warmup
        );
        s.push_str(&pct_line("delivery", &self.delivery));
        s.push_str(&pct_line("send→ack", &self.send_ack));
        if self.late_keys + self.undecryptable > 0 {
            let _ = writeln!(
                s,
                "  e2e: undecryptable {}, decrypted after a late key {}",
                self.undecryptable, self.late_keys
            );
        }
        let _ = writeln!(
            s,
            "  CPU avg: server {}, loadgen {:.0}%",
            self.server_cpu_percent_avg
                .map_or("-".to_string(), |c| format!("{c:.0}%")),
            self.loadgen_cpu_percent_avg
        );
        s
    }
}

impl Report {
    /// The summary printed on stdout.
    pub fn human(&self) -> String {
        let mut s = String::new();
        let sc = &self.scenario;
        let _ = writeln!(
            s,
            "tern-loadgen {} · {} on {} · {} users, {} conversations · {} · {}",
            sc.kind,
            sc.target,
            sc.server,
            sc.users,
            sc.conversations,
            if sc.workers == 0 {
                "in-process".to_string()
            } else {
                format!("{} worker processes", sc.workers)
            },
            self.started_at
        );
        if let Some(l) = &self.label {
            let _ = writeln!(s, "label: {l}");
        }
        let c = &self.connect;
        let _ = writeln!(
            s,
            "connect: {}/{} users up in {:.1}s ({:.0}/s), {} failed attempts, {} users failed",
            c.succeeded,
            c.users,
            c.duration_secs,
            c.connections_per_sec,
            c.failed_attempts,
            c.users_failed
        );
        for e in c.errors.iter().take(5) {
            let _ = writeln!(s, "  {}× {}", e.count, e.message);
        }
        let t = &self.traffic;
        if t.sent > 0 || t.duration_secs > 0.0 {
            let _ = writeln!(
                s,
                "traffic: {:.0}s, sent {} ({:.1}/s), acked {} ({} as already stored), failed {}, send errors {}, delivered {:.1}/s",
                t.duration_secs,
                t.sent,
                t.sent_per_sec,
                t.acked,
                t.ack_duplicates,
                t.send_failed,
                t.send_errors,
                t.delivered_per_sec
            );
        }
        if let Some(w) = &self.warmup {
            s.push_str(&w.human());
        }
        s.push_str("latency:\n");
        if sc.kind != "connect" {
            s.push_str(&pct_line("delivery", &self.latency.delivery));
            s.push_str(&pct_line("send→ack", &self.latency.send_ack));
        }
        s.push_str(&pct_line("connect", &self.latency.connect));
        if self.latency.reconnect.count > 0 {
            s.push_str(&pct_line("reconnect", &self.latency.reconnect));
        }
        let a = &self.accounting;
        let _ = writeln!(
            s,
            "accounting: expected {}, delivered {}, lost {}, duplicated {}, out of order {}, seq regressions {}, client dedupes {}",
            a.expected,
            a.delivered,
            a.lost,
            a.duplicated,
            a.out_of_order,
            a.seq_regressions,
            a.client_dedupes
        );
        if a.undecryptable + a.late_keys > 0 {
            let _ = writeln!(
                s,
                "  e2e: undecryptable {}, decrypted after a late key {}",
                a.undecryptable, a.late_keys
            );
        }
        if a.unconfirmed_delivered + a.phantom + a.misrouted + a.malformed + a.stale > 0 {
            let _ = writeln!(
                s,
                "  also: unconfirmed delivered {}, phantom {}, misrouted {}, malformed {}, stale (earlier runs) {}",
                a.unconfirmed_delivered, a.phantom, a.misrouted, a.malformed, a.stale
            );
        }
        if let Some(h) = &self.history {
            let _ = writeln!(
                s,
                "history: {} conversations, {} messages ({} of this run); acknowledged missing {}, duplicates {}, seq gaps {}, seq mismatch {}, unexpected {}, read errors {}; unacknowledged but stored {}",
                h.conversations,
                h.messages,
                h.this_run,
                h.acknowledged_missing,
                h.duplicates,
                h.seq_gaps,
                h.seq_mismatch,
                h.unexpected,
                h.read_errors,
                h.unacknowledged_stored
            );
        }
        let cn = &self.connections;
        if cn.disconnects + cn.reconnects > 0 {
            let _ = writeln!(
                s,
                "connections: {} unexpected disconnects, {} reconnects, {} failed reconnect attempts",
                cn.disconnects, cn.reconnects, cn.reconnect_failed_attempts
            );
        }
        if let Some(r) = &self.reconnect {
            let _ = writeln!(
                s,
                "reconnect: dropped {} of {} selected at {:.1}s ({} were not connected), {} resumed; time to resume p50 {} p99 {} max {}",
                r.dropped,
                r.selected,
                r.drop_at_secs,
                r.not_connected_at_drop,
                r.resumed,
                fmt_us(r.time_to_resume.p50_us),
                fmt_us(r.time_to_resume.p99_us),
                fmt_us(r.time_to_resume.max_us)
            );
        }
        if let Some(f) = &self.fanout {
            let _ = writeln!(
                s,
                "fanout (groups of {}, p99 threshold {}):",
                f.group_size,
                fmt_us(f.p99_threshold_us)
            );
            for st in &f.steps {
                let _ = writeln!(
                    s,
                    "  step {:>2}: {:>9.1} msg/s → {:>10.1} deliveries/s, p99 {:>9}, drained {}, {}",
                    st.step,
                    st.rate_per_sec,
                    st.deliveries_per_sec,
                    fmt_us(st.delivery.p99_us),
                    st.drained,
                    if st.sustained {
                        "sustained"
                    } else {
                        "NOT sustained"
                    }
                );
            }
            let _ = writeln!(
                s,
                "  highest sustained: {:.1} deliveries/s ({:.1} msg/s); stopped: {}",
                f.max_sustained_deliveries_per_sec, f.max_sustained_rate_per_sec, f.stop_reason
            );
        }
        if let Some(sv) = &self.server {
            let _ = writeln!(
                s,
                "server (pid {:?}): CPU avg {:.0}% max {:.0}% of a core; RSS before {} · at hold {} · peak {}; {} per connection",
                sv.pids,
                sv.cpu_percent_avg,
                sv.cpu_percent_max,
                fmt_bytes(sv.rss_bytes_before_connect as f64),
                fmt_bytes(sv.rss_bytes_at_hold as f64),
                fmt_bytes(sv.rss_bytes_peak as f64),
                fmt_bytes(sv.memory_per_connection_bytes)
            );
        }
        let l = &self.loadgen;
        let _ = writeln!(
            s,
            "loadgen ({} processes): CPU avg {:.0}% max {:.0}%; RSS peak {}; {} per connection",
            l.processes,
            l.cpu_percent_avg,
            l.cpu_percent_max,
            fmt_bytes(l.rss_bytes_peak as f64),
            fmt_bytes(l.memory_per_connection_bytes)
        );
        if !self.errors.is_empty() {
            s.push_str("errors seen:\n");
            for e in self.errors.iter().take(8) {
                let _ = writeln!(s, "  {}× {}", e.count, e.message);
            }
        }
        if self.passed {
            s.push_str("result: PASS\n");
        } else {
            s.push_str("result: FAIL\n");
            for f in &self.failures {
                let _ = writeln!(s, "  - {f}");
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn sample_report() -> Report {
        let p = Percentiles {
            count: 10,
            min_us: 100,
            mean_us: 950.5,
            p50_us: 900,
            p90_us: 1500,
            p95_us: 1800,
            p99_us: 2500,
            p999_us: 2500,
            max_us: 2500,
        };
        Report {
            schema_version: SCHEMA_VERSION,
            tool: Tool {
                name: "tern-loadgen".into(),
                version: "0.1.0".into(),
            },
            label: Some("test".into()),
            command_line: vec!["tern-loadgen".into(), "chat".into()],
            started_at: "2025-01-01T00:00:00Z".into(),
            finished_at: "2025-01-01T00:00:30Z".into(),
            wall_secs: 30.0,
            machine: Machine::default(),
            scenario: ScenarioInfo {
                kind: "chat".into(),
                target: "tern-ws".into(),
                server: "127.0.0.1:4433".into(),
                users: 10,
                conversations: 5,
                conversation_sizes: vec![SizeCount {
                    size: 2,
                    conversations: 5,
                }],
                params: serde_json::json!({"rate_per_sec": 10.0}),
                seed: 1,
                payload_bytes: 64,
                workers: 0,
                source_addrs: vec![],
                run_id: 7,
            },
            setup_secs: 1.5,
            connect: ConnectSection {
                users: 10,
                succeeded: 10,
                latency: p,
                errors: vec![ErrorCount {
                    message: "x".into(),
                    count: 1,
                }],
                ..Default::default()
            },
            traffic: TrafficSection {
                sent: 100,
                acked: 100,
                ..Default::default()
            },
            latency: LatencySection {
                delivery: p,
                send_ack: p,
                connect: p,
                reconnect: Percentiles::default(),
            },
            accounting: AccountingSection {
                expected: 100,
                delivered: 100,
                loss_samples: vec![LossSample {
                    receiver: 1,
                    conversation: 2,
                    sender: 3,
                    counter: 4,
                }],
                ..Default::default()
            },
            connections: ConnectionsSection::default(),
            server: Some(ServerSection {
                pids: vec![42],
                ..Default::default()
            }),
            loadgen: LoadgenSection::default(),
            samples: vec![Sample {
                t_secs: 1.0,
                phase: "traffic".into(),
                server_cpu_percent: Some(12.5),
                server_rss_bytes: Some(1 << 20),
                loadgen_cpu_percent: 3.0,
                loadgen_rss_bytes: 1 << 22,
                connected: 10,
                delivered: 5,
            }],
            fanout: Some(FanoutSection {
                group_size: 5,
                steps: vec![FanoutStep::default()],
                ..Default::default()
            }),
            reconnect: Some(ReconnectSection::default()),
            history: Some(HistorySection::default()),
            warmup: Some(WarmupSection {
                duration_secs: 5.0,
                sent: 20,
                delivery: p,
                ..Default::default()
            }),
            histograms: Histograms::default(),
            errors: vec![],
            passed: true,
            failures: vec![],
        }
    }

    #[test]
    fn json_round_trip_and_field_names() {
        let r = sample_report();
        let json = serde_json::to_string_pretty(&r).unwrap();
        let back: Report = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
        // Field names are the documented schema: a rename must be a deliberate version bump.
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        for key in [
            "schema_version",
            "command_line",
            "started_at",
            "machine",
            "scenario",
            "connect",
            "traffic",
            "latency",
            "accounting",
            "server",
            "loadgen",
            "samples",
            "histograms",
            "passed",
            "failures",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        for key in [
            "expected",
            "delivered",
            "lost",
            "duplicated",
            "out_of_order",
        ] {
            assert!(
                v["accounting"].get(key).is_some(),
                "missing accounting.{key}"
            );
        }
        for key in [
            "p50_us", "p90_us", "p95_us", "p99_us", "p999_us", "max_us", "count",
        ] {
            assert!(v["latency"]["delivery"].get(key).is_some(), "missing {key}");
        }
        assert_eq!(v["schema_version"], SCHEMA_VERSION);
        assert_eq!(v["warmup"]["sent"], 20);
        assert!(r.human().contains("result: PASS"));
        assert!(
            r.human()
                .contains("warm-up (not in the measured figures): 5s, sent 20")
        );
    }
}
