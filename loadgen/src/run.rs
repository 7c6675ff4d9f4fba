//! The coordinator: sets the target up, starts the workers (in this process or as child
//! processes), walks them through the scenario's phases, samples /proc, merges the results and
//! builds the report.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::IsTerminal as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::rc::Rc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::sync::mpsc;

use crate::accounting::{ArrivalCounts, LossSample, SentTable, Tally};
use crate::histo::{self, Hist, percentiles};
use crate::history::HistorySection;
use crate::phase_stats::WarmupCounts;
use crate::population::{self, GroupMix, PopulationError};
use crate::protocol::{
    DropSpec, FinalResult, FromWorker, Progress, TargetSpec, ToWorker, TrafficSpec, WorkerPlan,
};
use crate::report::{
    AccountingSection, ConnectSection, ConnectionsSection, ErrorCount, FanoutSection, FanoutStep,
    Histograms, LatencySection, LoadgenSection, ReconnectSection, Report, SCHEMA_VERSION, Sample,
    ScenarioInfo, ServerSection, SizeCount, Tool, TrafficSection, WarmupSection,
};
use crate::schedule::{ScheduleKind, ScheduleSpec};
use crate::sysstat::{self, ProcSample};
use crate::target::{ConversationRef, Population, Target, TargetError, UserSpec};
use crate::util::{SplitMix64, derive_seed, unix_now_ns};
use crate::worker;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Population(#[from] PopulationError),
    #[error("setup failed: {0}")]
    Target(#[from] TargetError),
    #[error("worker {0}: {1}")]
    Worker(usize, String),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

/// What to run.
#[derive(Debug, Clone, PartialEq)]
pub enum Scenario {
    /// Ramp `connections` at `ramp` per second, hold them for `hold`.
    Connect {
        connections: usize,
        ramp: f64,
        hold: Duration,
    },
    /// `users` in conversations of mixed sizes, `rate` messages/s in total for `duration`,
    /// after `warmup` of the same traffic that is checked but not measured (zero: none).
    Chat {
        users: usize,
        mix: GroupMix,
        rate: f64,
        duration: Duration,
        warmup: Duration,
        /// The warm-up's rate rises from 0 to `rate` (see `ScheduleSpec::ramp`).
        warmup_ramp: bool,
        schedule: ScheduleKind,
    },
    /// Groups of `group_size`; the rate goes up by `step_factor` every `step_duration` until
    /// p99 delivery exceeds `p99_threshold`, something is not delivered in time, or sends fail.
    Fanout {
        users: usize,
        group_size: usize,
        senders_per_group: usize,
        start_rate: f64,
        step_factor: f64,
        step_duration: Duration,
        max_steps: u32,
        p99_threshold: Duration,
        schedule: ScheduleKind,
    },
    /// Chat traffic; at `drop_at`, `drop_percent` of the connections are closed at once and
    /// reconnect immediately.
    Reconnect {
        users: usize,
        mix: GroupMix,
        rate: f64,
        duration: Duration,
        drop_percent: f64,
        drop_at: Duration,
        schedule: ScheduleKind,
    },
}

impl Scenario {
    pub fn kind(&self) -> &'static str {
        match self {
            Scenario::Connect { .. } => "connect",
            Scenario::Chat { .. } => "chat",
            Scenario::Fanout { .. } => "fanout",
            Scenario::Reconnect { .. } => "reconnect",
        }
    }

    fn users(&self) -> usize {
        match self {
            Scenario::Connect { connections, .. } => *connections,
            Scenario::Chat { users, .. }
            | Scenario::Fanout { users, .. }
            | Scenario::Reconnect { users, .. } => *users,
        }
    }

    fn params(&self) -> serde_json::Value {
        match self {
            Scenario::Connect {
                connections,
                ramp,
                hold,
            } => json!({
                "connections": connections,
                "ramp_per_sec": ramp,
                "hold_secs": hold.as_secs_f64(),
            }),
            Scenario::Chat {
                users,
                mix,
                rate,
                duration,
                warmup,
                warmup_ramp,
                schedule,
            } => json!({
                "users": users,
                "group_sizes": mix.to_string(),
                "rate_per_sec": rate,
                "duration_secs": duration.as_secs_f64(),
                "warmup_secs": warmup.as_secs_f64(),
                "warmup_ramp": warmup_ramp,
                "schedule": schedule.to_string(),
            }),
            Scenario::Fanout {
                users,
                group_size,
                senders_per_group,
                start_rate,
                step_factor,
                step_duration,
                max_steps,
                p99_threshold,
                schedule,
            } => json!({
                "users": users,
                "group_size": group_size,
                "senders_per_group": senders_per_group,
                "start_rate_per_sec": start_rate,
                "step_factor": step_factor,
                "step_duration_secs": step_duration.as_secs_f64(),
                "max_steps": max_steps,
                "p99_threshold_us": p99_threshold.as_micros() as u64,
                "schedule": schedule.to_string(),
            }),
            Scenario::Reconnect {
                users,
                mix,
                rate,
                duration,
                drop_percent,
                drop_at,
                schedule,
            } => json!({
                "users": users,
                "group_sizes": mix.to_string(),
                "rate_per_sec": rate,
                "duration_secs": duration.as_secs_f64(),
                "drop_percent": drop_percent,
                "drop_at_secs": drop_at.as_secs_f64(),
                "schedule": schedule.to_string(),
            }),
        }
    }

    fn validate(&self) -> Result<(), RunError> {
        let bad = |m: &str| Err(RunError::Config(m.to_string()));
        if self.users() == 0 {
            return bad("at least one user is needed");
        }
        match self {
            Scenario::Connect { ramp, .. } if *ramp <= 0.0 => bad("--ramp must be positive"),
            Scenario::Chat { rate, .. } | Scenario::Reconnect { rate, .. } if *rate < 0.0 => {
                bad("--rate must not be negative")
            }
            Scenario::Reconnect {
                drop_percent,
                drop_at,
                duration,
                ..
            } => {
                if !(0.0..=100.0).contains(drop_percent) {
                    return bad("--drop-percent must be within 0..=100");
                }
                if drop_at >= duration {
                    return bad("--drop-at must be before the end of --duration");
                }
                Ok(())
            }
            Scenario::Fanout {
                group_size,
                start_rate,
                step_factor,
                users,
                senders_per_group,
                ..
            } => {
                if *group_size < 2 || group_size > users {
                    return bad("--group-size must be at least 2 and at most --users");
                }
                if *start_rate <= 0.0 || *step_factor <= 1.0 {
                    return bad("--start-rate must be positive and --step-factor above 1");
                }
                if *senders_per_group == 0 {
                    return bad("--senders-per-group must be at least 1");
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// Settings shared by every scenario.
#[derive(Debug, Clone)]
pub struct Common {
    pub target: TargetSpec,
    /// `None`: automatic (in-process when the connections fit one process's open-file limit,
    /// else as many worker processes as needed); `Some(0)`: in-process; `Some(w)`: w worker
    /// processes.
    pub workers: Option<usize>,
    pub source_addrs: Vec<IpAddr>,
    pub payload_bytes: usize,
    pub seed: u64,
    /// After the last send settled, how long to wait for outstanding deliveries.
    pub drain: Duration,
    /// Initial connections per second (all workers); the connect scenario uses its `ramp`.
    pub connect_rate: f64,
    pub connect_concurrency: usize,
    pub connect_attempts: u32,
    pub server_pids: Vec<u32>,
    pub quiet: bool,
    pub label: Option<String>,
    pub command_line: Vec<String>,
    /// The executable started as `worker` (default: this one).
    pub worker_exe: Option<PathBuf>,
    /// After the drain, read every conversation's stored history and check it against the
    /// acknowledgements (see [`crate::history`]).
    pub verify_history: bool,
    /// Written (with the traffic start time) when the first traffic phase starts: setup and
    /// the initial connections are done. The crash test starts killing the server then.
    pub ready_file: Option<PathBuf>,
    /// Test only: break the run on purpose to show the checks notice.
    pub sabotage: Option<Sabotage>,
}

/// `--debug-sabotage`: deliberate damage for testing the checks themselves (never in CI runs
/// that are meant to pass). Each must make the run fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Sabotage {
    /// Forget one acknowledged message before accounting: its arrivals become phantom and its
    /// stored copy unexpected.
    ForgetAck,
    /// Claim one message was acknowledged that was never sent: every member misses it (lost)
    /// and the history lacks it (acknowledged_missing).
    InventAck,
    /// Store one acknowledged message a second time under another idempotency key: receivers
    /// get it under two seqs (duplicated) and the history holds it twice (duplicates).
    DuplicateSend,
}

impl Common {
    pub fn new(target: TargetSpec) -> Common {
        Common {
            target,
            workers: None,
            source_addrs: Vec::new(),
            payload_bytes: 128,
            seed: 1,
            drain: Duration::from_secs(5),
            connect_rate: 1000.0,
            connect_concurrency: 256,
            connect_attempts: 3,
            server_pids: Vec::new(),
            quiet: true,
            label: None,
            command_line: Vec::new(),
            worker_exe: None,
            verify_history: false,
            ready_file: None,
            sabotage: None,
        }
    }
}

/// The progress bar currently on screen, so log lines can be printed above it instead of
/// through it (see [`LogWriter`]).
static ACTIVE_BAR: std::sync::Mutex<Option<ProgressBar>> = std::sync::Mutex::new(None);

fn set_active_bar(bar: Option<ProgressBar>) {
    *ACTIVE_BAR.lock().unwrap_or_else(|p| p.into_inner()) = bar;
}

/// A log writer for `tracing_subscriber` that writes to stderr, hiding the progress bar while
/// it does.
pub struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let bar = ACTIVE_BAR.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match bar {
            Some(b) => b.suspend(|| std::io::stderr().write_all(buf))?,
            None => std::io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// How a send's give-up time is set: this long after the phase's scheduled end, plus `drain`.
const GIVE_UP_GRACE: Duration = Duration::from_secs(5);
/// Traffic starts this long after the command is sent, so every worker has it in time.
const START_LEAD: Duration = Duration::from_millis(300);
/// The warm-up's phase number: never one of the fanout steps (0, 1, ...) or chat's traffic (0).
const WARMUP_PHASE: u32 = u32::MAX;
/// The warm-up's phase label in the samples (not a CPU phase, see `cpu_phase`).
const WARMUP_LABEL: &str = "warmup";
/// Seed salt of the warm-up schedule: the measured schedule keeps its own (salt 1), the same
/// with or without a warm-up.
const WARMUP_SEED_SALT: u64 = 3;

/// Decides the number of worker processes (0 = in-process) for `connections` under the
/// open-file `limit` of one process. Errors when the choice cannot hold the connections.
pub fn plan_workers(
    requested: Option<usize>,
    connections: usize,
    limit: u64,
) -> Result<usize, RunError> {
    let budget = sysstat::connection_budget(limit).max(1) as usize;
    let needed = connections.div_ceil(budget).max(1);
    let workers = match requested {
        None if needed <= 1 => 0,
        None => needed,
        Some(w) => w,
    };
    let per_process = connections.div_ceil(workers.max(1));
    if per_process > budget {
        return Err(RunError::Config(format!(
            "{connections} connections need at least {needed} worker processes: one process may \
             hold about {budget} (open-file limit {limit} minus {} kept for itself), and \
             {} would have to hold {per_process}. Use --workers {needed} (or more), or raise the \
             hard open-file limit.",
            sysstat::FD_RESERVE,
            if workers == 0 {
                "the in-process worker".to_string()
            } else {
                format!("each of {workers} workers")
            }
        )));
    }
    Ok(workers)
}

/// Runs a scenario to the end and returns its report. Drives everything on the current
/// (current-thread) runtime inside a `LocalSet`.
pub async fn run(common: Common, scenario: Scenario) -> Result<Report, RunError> {
    let local = tokio::task::LocalSet::new();
    local.run_until(run_inner(common, scenario)).await
}

struct Sampler {
    samples: Rc<RefCell<Vec<Sample>>>,
    phase: Rc<RefCell<String>>,
    worker_pids: Rc<RefCell<Vec<u32>>>,
    /// (connected, delivered) from the last progress.
    progress: Rc<Cell<(u64, u64)>>,
}

fn sum_samples(pids: &[u32]) -> Option<ProcSample> {
    let mut total = ProcSample::default();
    for &pid in pids {
        let s = sysstat::sample(pid).ok()?;
        total.cpu_ticks += s.cpu_ticks;
        total.rss_bytes += s.rss_bytes;
    }
    Some(total)
}

impl Sampler {
    fn start(server_pids: Vec<u32>, t0: Instant) -> Sampler {
        let s = Sampler {
            samples: Rc::new(RefCell::new(Vec::new())),
            phase: Rc::new(RefCell::new("setup".into())),
            worker_pids: Rc::new(RefCell::new(Vec::new())),
            progress: Rc::new(Cell::new((0, 0))),
        };
        let samples = s.samples.clone();
        let phase = s.phase.clone();
        let worker_pids = s.worker_pids.clone();
        let progress = s.progress.clone();
        let hz = sysstat::clock_ticks_per_sec() as f64;
        tokio::task::spawn_local(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // Per-pid previous ticks: a worker that exits must not make the sum jump backwards.
            let mut prev: HashMap<u32, (u64, Instant)> = HashMap::new();
            loop {
                tick.tick().await;
                let now = Instant::now();
                let mut cpu = |pids: &[u32]| -> (Option<f64>, Option<u64>) {
                    let mut pct = 0.0;
                    let mut rss = 0;
                    let mut any = false;
                    let mut complete = true;
                    for &pid in pids {
                        let Ok(s) = sysstat::sample(pid) else {
                            continue;
                        };
                        any = true;
                        rss += s.rss_bytes;
                        match prev.insert(pid, (s.cpu_ticks, now)) {
                            Some((t, at)) => {
                                let dt = now.duration_since(at).as_secs_f64();
                                if dt > 0.0 {
                                    pct += (s.cpu_ticks.saturating_sub(t)) as f64 / hz / dt * 100.0;
                                }
                            }
                            None => complete = false,
                        }
                    }
                    (
                        (any && complete).then_some((pct * 10.0).round() / 10.0),
                        any.then_some(rss),
                    )
                };
                let (server_cpu, server_rss) = if server_pids.is_empty() {
                    (None, None)
                } else {
                    cpu(&server_pids)
                };
                let mut own = vec![std::process::id()];
                own.extend(worker_pids.borrow().iter().copied());
                let (lg_cpu, lg_rss) = cpu(&own);
                let (connected, delivered) = progress.get();
                samples.borrow_mut().push(Sample {
                    t_secs: (now.duration_since(t0).as_secs_f64() * 10.0).round() / 10.0,
                    phase: phase.borrow().clone(),
                    server_cpu_percent: server_cpu,
                    server_rss_bytes: server_rss,
                    loadgen_cpu_percent: lg_cpu.unwrap_or(0.0),
                    loadgen_rss_bytes: lg_rss.unwrap_or(0),
                    connected,
                    delivered,
                });
            }
        });
        s
    }

    fn set_phase(&self, p: &str) {
        *self.phase.borrow_mut() = p.to_string();
    }

    fn loadgen_pids(&self) -> Vec<u32> {
        let mut v = vec![std::process::id()];
        v.extend(self.worker_pids.borrow().iter().copied());
        v
    }

    /// (avg, max) of a CPU column over samples whose phase satisfies `pick`.
    fn cpu_stats(&self, server: bool, pick: impl Fn(&str) -> bool) -> (f64, f64) {
        let samples = self.samples.borrow();
        let vals: Vec<f64> = samples
            .iter()
            .filter(|s| pick(&s.phase))
            .filter_map(|s| {
                if server {
                    s.server_cpu_percent
                } else {
                    Some(s.loadgen_cpu_percent)
                }
            })
            .collect();
        if vals.is_empty() {
            return (0.0, 0.0);
        }
        let avg = vals.iter().sum::<f64>() / vals.len() as f64;
        let max = vals.iter().copied().fold(0.0, f64::max);
        ((avg * 10.0).round() / 10.0, max)
    }
}

struct Coordinator {
    to: Vec<mpsc::UnboundedSender<ToWorker>>,
    from: mpsc::UnboundedReceiver<(usize, FromWorker)>,
    progress: Vec<Progress>,
    bar: ProgressBar,
    sampler: Sampler,
    children: Vec<tokio::process::Child>,
    /// Traffic progress bar: (phase start, scheduled length).
    phase_clock: Option<(Instant, Duration)>,
}

impl Coordinator {
    fn broadcast(&self, msg: ToWorker) -> Result<(), RunError> {
        for (i, tx) in self.to.iter().enumerate() {
            tx.send(msg.clone())
                .map_err(|_| RunError::Worker(i, "stopped accepting commands".into()))?;
        }
        Ok(())
    }

    fn total(&self) -> Progress {
        let mut t = Progress::default();
        for p in &self.progress {
            t.connected += p.connected;
            t.connect_settled += p.connect_settled;
            t.connect_failed_attempts += p.connect_failed_attempts;
            t.sent += p.sent;
            t.acked += p.acked;
            t.send_failed += p.send_failed;
            t.delivered += p.delivered;
            t.duplicates += p.duplicates;
            t.disconnects += p.disconnects;
        }
        t
    }

    fn refresh_bar(&self) {
        let t = self.total();
        self.sampler.progress.set((t.connected, t.delivered));
        if let Some((start, len)) = self.phase_clock {
            self.bar
                .set_position(start.elapsed().as_secs().min(len.as_secs()));
            self.bar.set_message(format!(
                "up {} · sent {} · acked {} · delivered {} · dup {} · failed {}",
                t.connected, t.sent, t.acked, t.delivered, t.duplicates, t.send_failed
            ));
        } else {
            self.bar.set_position(t.connect_settled);
            self.bar.set_message(format!(
                "up {} · failed attempts {} · disconnects {}",
                t.connected, t.connect_failed_attempts, t.disconnects
            ));
        }
    }

    fn bar_phase(&mut self, prefix: &str, len: u64, clock: Option<(Instant, Duration)>) {
        self.phase_clock = clock;
        self.bar.set_prefix(prefix.to_string());
        self.bar.set_length(len);
        self.bar.set_position(0);
        self.refresh_bar();
    }

    async fn recv(&mut self) -> Result<(usize, FromWorker), RunError> {
        let (i, m) = self
            .from
            .recv()
            .await
            .ok_or_else(|| RunError::Worker(0, "all workers are gone".into()))?;
        match &m {
            FromWorker::Progress(p) => {
                if let Some(slot) = self.progress.get_mut(i) {
                    *slot = *p;
                }
                self.refresh_bar();
            }
            FromWorker::Failed { message } => return Err(RunError::Worker(i, message.clone())),
            _ => {}
        }
        Ok((i, m))
    }

    /// One message of the kind `pick` accepts from every worker; others are skipped.
    async fn gather<T>(
        &mut self,
        mut pick: impl FnMut(FromWorker) -> Option<T>,
    ) -> Result<Vec<T>, RunError> {
        let n = self.to.len();
        let mut got: Vec<Option<T>> = (0..n).map(|_| None).collect();
        let mut left = n;
        while left > 0 {
            let (i, m) = self.recv().await?;
            if i < n
                && got[i].is_none()
                && let Some(t) = pick(m)
            {
                got[i] = Some(t);
                left -= 1;
            }
        }
        Ok(got.into_iter().flatten().collect())
    }

    /// Keeps receiving (progress) until `deadline`.
    async fn idle_until(&mut self, deadline: Instant) -> Result<(), RunError> {
        loop {
            match tokio::time::timeout_at(deadline.into(), self.recv()).await {
                Err(_) => return Ok(()),
                Ok(r) => {
                    r?;
                }
            }
        }
    }
}

/// `chat --warmup`: the warm-up phase, before the measured one: the scenario's rate and
/// schedule (its own seed) for the warm-up's length, labelled `warmup` (outside the CPU
/// averages) and drained like any phase, so the measured phase starts without its backlog.
/// The workers keep its messages out of the measured statistics ([`crate::phase_stats`]).
/// `None` when the warm-up is zero.
async fn run_warmup(
    co: &mut Coordinator,
    st: &mut PhaseState,
    schedule: ScheduleSpec,
    drain: Duration,
) -> Result<Option<WarmupPhase>, RunError> {
    if schedule.duration_ns == 0 {
        return Ok(None);
    }
    let duration_secs = Duration::from_nanos(schedule.duration_ns).as_secs_f64();
    let outcome = run_phase(co, st, WARMUP_PHASE, WARMUP_LABEL, schedule, None, drain).await?;
    Ok(Some(WarmupPhase {
        duration_secs,
        expected: outcome.expected,
        drained: outcome.drained,
    }))
}

/// What the coordinator itself learned of the warm-up phase.
struct WarmupPhase {
    duration_secs: f64,
    expected: u64,
    drained: bool,
}

/// (server, loadgen) CPU averages of the warm-up phase.
fn warmup_cpu(sampler: &Sampler, server_pids: &[u32]) -> (Option<f64>, f64) {
    let server =
        (!server_pids.is_empty()).then(|| sampler.cpu_stats(true, |p| p == WARMUP_LABEL).0);
    (server, sampler.cpu_stats(false, |p| p == WARMUP_LABEL).0)
}

fn warmup_section(p: WarmupPhase, m: &Merged, cpu: (Option<f64>, f64)) -> WarmupSection {
    let w = &m.warmup;
    WarmupSection {
        duration_secs: p.duration_secs,
        sent: w.sent,
        acked: w.acked,
        send_failed: w.send_failed,
        expected: p.expected,
        delivered: w.delivered,
        drained: p.drained,
        delivery: percentiles(&m.warmup_delivery),
        send_ack: percentiles(&m.warmup_send_ack),
        late_keys: w.late_keys,
        undecryptable: w.undecryptable,
        first_sends_after_warmup: w.first_sends_after_warmup,
        server_cpu_percent_avg: cpu.0,
        loadgen_cpu_percent_avg: cpu.1,
    }
}

/// The traffic section: the measured phases only (what the warm-up sent is taken out; the
/// retries and duplicate acknowledgements are the whole run's).
fn measured_traffic(m: &Merged, secs: f64) -> TrafficSection {
    let (t, w) = (&m.totals, &m.warmup);
    let sent = t.sent.saturating_sub(w.sent);
    TrafficSection {
        duration_secs: secs,
        sent,
        acked: t.acked.saturating_sub(w.acked),
        send_failed: t.send_failed.saturating_sub(w.send_failed),
        send_errors: t.send_errors,
        ack_duplicates: t.ack_duplicates,
        sent_per_sec: per_sec(sent, secs),
        delivered_per_sec: per_sec(m.tally.delivered.saturating_sub(w.delivered), secs),
    }
}

/// The workers' final results added up. `counts`, `tally` and the loss samples (the
/// correctness checks) cover every message; `delivery` and `send_ack` the measured traffic.
struct Merged {
    counts: ArrivalCounts,
    tally: Tally,
    loss_samples: Vec<LossSample>,
    delivery: Hist,
    send_ack: Hist,
    reconnect: Hist,
    totals: FinalTotals,
    errors: HashMap<String, u64>,
    warmup: WarmupCounts,
    warmup_delivery: Hist,
    warmup_send_ack: Hist,
}

fn merge_finals(finals: &[Box<FinalResult>]) -> Result<Merged, RunError> {
    let mut m = Merged {
        counts: ArrivalCounts::default(),
        tally: Tally::default(),
        loss_samples: Vec::new(),
        delivery: histo::new_hist(),
        send_ack: histo::new_hist(),
        reconnect: histo::new_hist(),
        totals: FinalTotals::default(),
        errors: HashMap::new(),
        warmup: WarmupCounts::default(),
        warmup_delivery: histo::new_hist(),
        warmup_send_ack: histo::new_hist(),
    };
    for f in finals {
        m.counts.add(&f.counts);
        m.tally.add(&f.tally);
        for s in &f.loss_samples {
            if m.loss_samples.len() < 20 {
                m.loss_samples.push(s.clone());
            }
        }
        merge_into(&mut m.delivery, &f.delivery_hist)?;
        merge_into(&mut m.send_ack, &f.send_ack_hist)?;
        merge_into(&mut m.reconnect, &f.reconnect_hist)?;
        m.totals.add(f);
        for (e, n) in &f.errors {
            *m.errors.entry(e.clone()).or_insert(0) += n;
        }
        m.warmup.add(&f.warmup.counts);
        merge_into(&mut m.warmup_delivery, &f.warmup.delivery_hist)?;
        merge_into(&mut m.warmup_send_ack, &f.warmup.send_ack_hist)?;
    }
    Ok(m)
}

/// What a traffic phase produced.
struct PhaseOutcome {
    delivery: Hist,
    send_ack: Hist,
    sent: u64,
    send_failed: u64,
    expected: u64,
    drained: bool,
}

struct PhaseState {
    members: Vec<u64>,
    expected_total: u64,
}

async fn run_phase(
    co: &mut Coordinator,
    st: &mut PhaseState,
    phase: u32,
    label: &str,
    schedule: ScheduleSpec,
    drop: Option<DropSpec>,
    drain: Duration,
) -> Result<PhaseOutcome, RunError> {
    let before = co.total();
    let start_unix_ns = unix_now_ns() + START_LEAD.as_nanos() as u64;
    let duration = Duration::from_nanos(schedule.duration_ns);
    let give_up_unix_ns =
        start_unix_ns + schedule.duration_ns + (drain + GIVE_UP_GRACE).as_nanos() as u64;
    co.broadcast(ToWorker::Traffic(TrafficSpec {
        phase,
        start_unix_ns,
        schedule,
        give_up_unix_ns,
        drop,
        warmup: phase == WARMUP_PHASE,
    }))?;
    co.sampler.set_phase(label);
    co.bar_phase(
        label,
        duration.as_secs().max(1),
        Some((Instant::now() + START_LEAD, duration)),
    );
    let done = co
        .gather(|m| match m {
            FromWorker::SendsDone {
                phase: p,
                acked_per_conversation,
                send_failed,
            } if p == phase => Some((acked_per_conversation, send_failed)),
            _ => None,
        })
        .await?;
    let mut expected_total = 0u64;
    let mut failed_total = 0u64;
    for (per_conv, failed) in &done {
        failed_total += failed;
        for &(c, acked) in per_conv {
            let recipients = st
                .members
                .get(c as usize)
                .copied()
                .unwrap_or(1)
                .saturating_sub(1);
            expected_total += acked * recipients;
        }
    }
    // Drain: wait until every expected delivery arrived (only provable when no send failed:
    // a failed send may or may not arrive), or until the drain period is over.
    co.sampler.set_phase("drain");
    co.bar.set_prefix("drain");
    let deadline = Instant::now() + drain;
    let drained = loop {
        let t = co.total();
        if failed_total == 0 && t.delivered >= expected_total {
            break true;
        }
        match tokio::time::timeout_at(deadline.into(), co.recv()).await {
            Err(_) => break false,
            Ok(r) => {
                r?;
            }
        }
    };
    co.broadcast(ToWorker::EndPhase { phase })?;
    let stats = co
        .gather(|m| match m {
            FromWorker::PhaseStats(s) if s.phase == phase => Some(s),
            _ => None,
        })
        .await?;
    let mut delivery = histo::new_hist();
    let mut send_ack = histo::new_hist();
    for s in &stats {
        merge_into(&mut delivery, &s.delivery_hist)?;
        merge_into(&mut send_ack, &s.send_ack_hist)?;
    }
    let after = co.total();
    let expected = expected_total - st.expected_total.min(expected_total);
    st.expected_total = expected_total;
    Ok(PhaseOutcome {
        delivery,
        send_ack,
        sent: after.sent - before.sent,
        send_failed: after.send_failed - before.send_failed,
        expected,
        drained,
    })
}

fn merge_into(h: &mut Hist, encoded: &str) -> Result<(), RunError> {
    if encoded.is_empty() {
        return Ok(());
    }
    histo::merge_encoded(h, encoded).map_err(|e| RunError::Worker(0, e.to_string()))
}

fn rfc3339_now() -> String {
    let now = time::OffsetDateTime::now_utc();
    now.replace_nanosecond(0)
        .unwrap_or(now)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn build_population(s: &Scenario, seed: u64) -> Result<(Population, Option<usize>), RunError> {
    Ok(match s {
        Scenario::Connect { connections, .. } => {
            (population::without_conversations(*connections), None)
        }
        Scenario::Chat { users, mix, .. } | Scenario::Reconnect { users, mix, .. } => {
            (population::mixed(*users, mix, seed)?, None)
        }
        Scenario::Fanout {
            users,
            group_size,
            senders_per_group,
            ..
        } => (
            population::mixed(*users, &GroupMix(vec![(*group_size, 100.0)]), seed)?,
            Some(*senders_per_group),
        ),
    })
}

/// Starts the workers: in this process (`workers == 0`) or as child processes of `exe`.
async fn start_workers(
    common: &Common,
    plans: Vec<WorkerPlan>,
    in_process: bool,
    run_dir: &std::path::Path,
) -> Result<
    (
        Vec<mpsc::UnboundedSender<ToWorker>>,
        mpsc::UnboundedReceiver<(usize, FromWorker)>,
        Vec<tokio::process::Child>,
    ),
    RunError,
> {
    let (merged_tx, merged_rx) = mpsc::unbounded_channel();
    let mut to = Vec::new();
    let mut children = Vec::new();
    for plan in plans {
        let i = plan.index;
        let (to_tx, to_rx) = mpsc::unbounded_channel::<ToWorker>();
        to.push(to_tx);
        if in_process {
            let (from_tx, mut from_rx) = mpsc::unbounded_channel();
            tokio::task::spawn_local(worker::run(plan, to_rx, from_tx));
            let merged = merged_tx.clone();
            tokio::task::spawn_local(async move {
                while let Some(m) = from_rx.recv().await {
                    if merged.send((i, m)).is_err() {
                        break;
                    }
                }
            });
            continue;
        }
        let path = run_dir.join(format!("plan-{i}.json"));
        let json = serde_json::to_vec(&plan)
            .map_err(|e| RunError::Config(format!("cannot serialize the plan: {e}")))?;
        std::fs::write(&path, json).map_err(|e| RunError::Io(path.display().to_string(), e))?;
        let exe = match &common.worker_exe {
            Some(p) => p.clone(),
            None => {
                std::env::current_exe().map_err(|e| RunError::Io("current executable".into(), e))?
            }
        };
        let mut child = tokio::process::Command::new(&exe)
            .arg("worker")
            .arg("--plan")
            .arg(&path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| RunError::Io(format!("starting worker {}", exe.display()), e))?;
        let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(RunError::Worker(i, "no stdio pipes".into()));
        };
        let mut to_rx = to_rx;
        tokio::task::spawn_local(async move {
            while let Some(cmd) = to_rx.recv().await {
                let Ok(mut line) = serde_json::to_vec(&cmd) else {
                    break;
                };
                line.push(b'\n');
                if stdin.write_all(&line).await.is_err() || stdin.flush().await.is_err() {
                    break;
                }
            }
        });
        let merged = merged_tx.clone();
        tokio::task::spawn_local(async move {
            let mut lines = BufReader::new(stdout).lines();
            loop {
                match lines.next_line().await {
                    Ok(Some(line)) => match serde_json::from_str::<FromWorker>(&line) {
                        Ok(m) => {
                            let bye = matches!(m, FromWorker::Bye);
                            if merged.send((i, m)).is_err() || bye {
                                return;
                            }
                        }
                        Err(e) => {
                            let _ = merged.send((
                                i,
                                FromWorker::Failed {
                                    message: format!("unreadable message from worker: {e}"),
                                },
                            ));
                            return;
                        }
                    },
                    _ => {
                        let _ = merged.send((
                            i,
                            FromWorker::Failed {
                                message: "worker process exited unexpectedly".into(),
                            },
                        ));
                        return;
                    }
                }
            }
        });
        children.push(child);
    }
    Ok((to, merged_rx, children))
}

async fn run_inner(common: Common, scenario: Scenario) -> Result<Report, RunError> {
    scenario.validate()?;
    let t0 = Instant::now();
    let started_at = rfc3339_now();
    let limit = sysstat::raise_nofile_limit().map_err(|e| RunError::Config(e.to_string()))?;
    let machine = sysstat::machine();
    for &pid in &common.server_pids {
        sysstat::sample(pid).map_err(|e| RunError::Config(format!("--server-pid {pid}: {e}")))?;
    }
    let users = scenario.users();
    let workers = plan_workers(common.workers, users, limit)?;
    let in_process = workers == 0;

    let bar = if common.quiet || !std::io::stderr().is_terminal() {
        ProgressBar::hidden()
    } else {
        let b = ProgressBar::with_draw_target(Some(users as u64), ProgressDrawTarget::stderr());
        b.set_style(
            ProgressStyle::with_template(
                "{prefix:>9.bold} [{elapsed_precise}] {bar:30.cyan/blue} {pos}/{len} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    };
    if !bar.is_hidden() {
        set_active_bar(Some(bar.clone()));
    }
    // Whatever way this function returns, the bar stops intercepting log lines.
    struct ClearBar;
    impl Drop for ClearBar {
        fn drop(&mut self) {
            set_active_bar(None);
        }
    }
    let _clear_bar = ClearBar;
    let sampler = Sampler::start(common.server_pids.clone(), t0);

    // Setup.
    bar.set_prefix("setup");
    bar.set_message("registering users and conversations");
    let (population, senders_per) = build_population(&scenario, common.seed)?;
    let target = common.target.build()?;
    let setup_started = Instant::now();
    let specs: Vec<UserSpec> = target.setup(&population).await?;
    let setup_secs = setup_started.elapsed().as_secs_f64();
    let target_state = target.export_state();
    let target_name = target.name();
    drop(target);
    let eligible = population::eligible_senders(&population, senders_per);
    let members: Vec<u64> = population
        .conversations
        .iter()
        .map(|c| c.len() as u64)
        .collect();

    let run_id = loop {
        let r: u32 = rand::random();
        if r != 0 {
            break r;
        }
    };
    let processes = workers.max(1);
    let connect_rate = match &scenario {
        Scenario::Connect { ramp, .. } => *ramp,
        _ => common.connect_rate,
    };
    // Who reads each conversation's history for --verify-history: its first member.
    let history_access: Vec<(Option<String>, Option<ConversationRef>)> = population
        .conversations
        .iter()
        .enumerate()
        .map(|(ci, members)| {
            let spec = members.first().and_then(|&u| specs.get(u));
            (
                spec.and_then(|s| s.token.clone()),
                spec.and_then(|s| s.conversations.iter().find(|c| c.index == ci).cloned()),
            )
        })
        .collect();
    let mut slices: Vec<Vec<UserSpec>> = vec![Vec::new(); processes];
    let per = specs.len().div_ceil(processes).max(1);
    for (i, s) in specs.into_iter().enumerate() {
        slices[(i / per).min(processes - 1)].push(s);
    }
    let plans: Vec<WorkerPlan> = slices
        .into_iter()
        .enumerate()
        .map(|(index, users)| WorkerPlan {
            index,
            workers: processes,
            run_id,
            target: common.target.clone(),
            target_state: target_state.clone(),
            users,
            eligible: eligible.clone(),
            source_addrs: common.source_addrs.clone(),
            payload_bytes: common.payload_bytes,
            connect_rate,
            connect_concurrency: common.connect_concurrency,
            connect_attempts: common.connect_attempts,
            sabotage_duplicate_send: common.sabotage == Some(Sabotage::DuplicateSend),
        })
        .collect();
    let run_dir =
        std::env::temp_dir().join(format!("tern-loadgen-{}-{run_id:08x}", std::process::id()));
    if !in_process {
        std::fs::create_dir_all(&run_dir)
            .map_err(|e| RunError::Io(run_dir.display().to_string(), e))?;
    }
    // The plans hold tokens: removed once the workers have read them (or on any error).
    let plan_dir = RemoveOnDrop(run_dir.clone());
    let (to, from, children) = start_workers(&common, plans, in_process, &run_dir).await?;
    let mut co = Coordinator {
        progress: vec![Progress::default(); to.len()],
        to,
        from,
        bar,
        sampler,
        children,
        phase_clock: None,
    };
    let pids = co
        .gather(|m| match m {
            FromWorker::Hello { pid } => Some(pid),
            _ => None,
        })
        .await?;
    if !in_process {
        *co.sampler.worker_pids.borrow_mut() = pids;
    }
    // Workers say Hello after reading their plan.
    drop(plan_dir);

    // Connect.
    let server_before = sum_samples(&common.server_pids);
    let loadgen_before = sum_samples(&co.sampler.loadgen_pids());
    co.sampler.set_phase("connect");
    co.bar_phase("connect", users as u64, None);
    let connect_started = Instant::now();
    co.broadcast(ToWorker::Connect {
        start_unix_ns: unix_now_ns() + START_LEAD.as_nanos() as u64,
    })?;
    let connected = co
        .gather(|m| match m {
            FromWorker::Connected(c) => Some(c),
            _ => None,
        })
        .await?;
    let connect_secs = connect_started.elapsed().as_secs_f64();
    let mut connect = ConnectSection {
        duration_secs: (connect_secs * 100.0).round() / 100.0,
        ..Default::default()
    };
    let mut connect_hist = histo::new_hist();
    let mut errors: HashMap<String, u64> = HashMap::new();
    for c in &connected {
        connect.users += c.users;
        connect.succeeded += c.succeeded;
        connect.users_failed += c.users_failed;
        connect.failed_attempts += c.failed_attempts;
        merge_into(&mut connect_hist, &c.connect_hist)?;
        for (m, n) in &c.errors {
            *errors.entry(m.clone()).or_insert(0) += n;
        }
    }
    connect.connections_per_sec = if connect_secs > 0.0 {
        (connect.succeeded as f64 / connect_secs * 10.0).round() / 10.0
    } else {
        0.0
    };
    connect.latency = percentiles(&connect_hist);
    connect.errors = sorted_errors(errors);

    // Hold: the connect scenario holds for its duration; the others settle for a second so
    // the memory reading is not taken mid-handshake.
    co.sampler.set_phase("hold");
    let hold = match &scenario {
        Scenario::Connect { hold, .. } => *hold,
        _ => Duration::from_secs(1),
    };
    co.bar_phase("hold", hold.as_secs().max(1), Some((Instant::now(), hold)));
    co.idle_until(Instant::now() + hold).await?;
    let server_hold = sum_samples(&common.server_pids);
    let loadgen_hold = sum_samples(&co.sampler.loadgen_pids());
    let up_at_hold = co.total().connected;

    if let Some(path) = &common.ready_file {
        std::fs::write(path, format!("traffic {}\n", rfc3339_now()))
            .map_err(|e| RunError::Io(path.display().to_string(), e))?;
    }

    // Traffic.
    let mut st = PhaseState {
        members: members.clone(),
        expected_total: 0,
    };
    let mut traffic_secs = 0.0;
    let mut warmup_phase = None;
    let mut fanout_section = None;
    let mut reconnect_section = None;
    match &scenario {
        Scenario::Connect { .. } => {}
        Scenario::Chat {
            rate,
            duration,
            warmup,
            warmup_ramp,
            schedule,
            ..
        } => {
            let spec = |length: &Duration, salt| ScheduleSpec {
                kind: *schedule,
                rate: *rate,
                duration_ns: length.as_nanos() as u64,
                seed: derive_seed(common.seed, salt),
                ramp: false,
            };
            let warmup_spec = ScheduleSpec {
                ramp: *warmup_ramp,
                ..spec(warmup, WARMUP_SEED_SALT)
            };
            warmup_phase = run_warmup(&mut co, &mut st, warmup_spec, common.drain).await?;
            run_phase(
                &mut co,
                &mut st,
                0,
                "traffic",
                spec(duration, 1),
                None,
                common.drain,
            )
            .await?;
            traffic_secs = duration.as_secs_f64();
        }
        Scenario::Reconnect {
            users,
            rate,
            duration,
            drop_percent,
            drop_at,
            schedule,
            ..
        } => {
            let spec = ScheduleSpec {
                kind: *schedule,
                rate: *rate,
                duration_ns: duration.as_nanos() as u64,
                seed: derive_seed(common.seed, 1),
                ramp: false,
            };
            let mut all: Vec<u32> = (0..*users as u32).collect();
            SplitMix64::new(derive_seed(common.seed, 2)).shuffle(&mut all);
            let n = ((*users as f64) * drop_percent / 100.0).round() as usize;
            all.truncate(n.min(*users));
            let selected = all.len() as u64;
            let drop = DropSpec {
                at_ns: drop_at.as_nanos() as u64,
                users: all,
            };
            run_phase(
                &mut co,
                &mut st,
                0,
                "traffic",
                spec,
                Some(drop),
                common.drain,
            )
            .await?;
            traffic_secs = duration.as_secs_f64();
            reconnect_section = Some(ReconnectSection {
                drop_percent: *drop_percent,
                drop_at_secs: drop_at.as_secs_f64(),
                selected,
                ..Default::default()
            });
        }
        Scenario::Fanout {
            group_size,
            start_rate,
            step_factor,
            step_duration,
            max_steps,
            p99_threshold,
            schedule,
            ..
        } => {
            let mut section = FanoutSection {
                group_size: *group_size,
                p99_threshold_us: p99_threshold.as_micros() as u64,
                stop_reason: "max steps reached".into(),
                ..Default::default()
            };
            let mut rate = *start_rate;
            for step in 0..*max_steps {
                let label = format!("step {step}");
                let spec = ScheduleSpec {
                    kind: *schedule,
                    rate,
                    duration_ns: step_duration.as_nanos() as u64,
                    seed: derive_seed(common.seed, 100 + step as u64),
                    ramp: false,
                };
                let o = run_phase(&mut co, &mut st, step, &label, spec, None, common.drain).await?;
                traffic_secs += step_duration.as_secs_f64();
                let delivery = percentiles(&o.delivery);
                let secs = step_duration.as_secs_f64();
                let server_cpu = (!common.server_pids.is_empty())
                    .then(|| co.sampler.cpu_stats(true, |p| p == label).0);
                let threshold_ok = delivery.p99_us <= p99_threshold.as_micros() as u64;
                let sustained = threshold_ok && o.drained && o.send_failed == 0;
                section.steps.push(FanoutStep {
                    step,
                    rate_per_sec: rate,
                    duration_secs: secs,
                    sent: o.sent,
                    expected_deliveries: o.expected,
                    deliveries_per_sec: (o.expected as f64 / secs * 10.0).round() / 10.0,
                    delivery,
                    send_ack: percentiles(&o.send_ack),
                    drained: o.drained,
                    send_failed: o.send_failed,
                    server_cpu_percent_avg: server_cpu,
                    sustained,
                });
                if sustained {
                    section.max_sustained_deliveries_per_sec =
                        (o.expected as f64 / secs * 10.0).round() / 10.0;
                    section.max_sustained_rate_per_sec = rate;
                } else {
                    section.stop_reason = if !threshold_ok {
                        format!(
                            "p99 {} µs above the threshold at {rate:.1} msg/s",
                            delivery.p99_us
                        )
                    } else if o.send_failed > 0 {
                        format!("{} sends failed at {rate:.1} msg/s", o.send_failed)
                    } else {
                        format!("deliveries still missing after the drain at {rate:.1} msg/s")
                    };
                    break;
                }
                rate *= step_factor;
            }
            fanout_section = Some(section);
        }
    }

    // Accounting.
    co.sampler.set_phase("final");
    co.bar.set_prefix("account");
    co.bar
        .set_message("comparing what was sent with what arrived");
    co.broadcast(ToWorker::Collect)?;
    let sent_rows = co
        .gather(|m| match m {
            FromWorker::Sent { rows } => Some(rows),
            _ => None,
        })
        .await?;
    let mut table = SentTable::default();
    for rows in sent_rows {
        table.merge_rows(rows);
    }
    if let Some(s) = common.sabotage {
        sabotage_table(&mut table, s);
    }
    // The workers do not need the acknowledged seqs (only --verify-history does).
    let rows: Vec<_> = table
        .rows()
        .into_iter()
        .map(|mut r| {
            r.seqs = Vec::new();
            r
        })
        .collect();
    co.broadcast(ToWorker::Account { rows })?;
    let finals: Vec<Box<FinalResult>> = co
        .gather(|m| match m {
            FromWorker::Final(f) => Some(f),
            _ => None,
        })
        .await?;
    let server_end = sum_samples(&common.server_pids);
    co.broadcast(ToWorker::Shutdown)?;
    co.bar.set_prefix("closing");
    let _ = co
        .gather(|m| match m {
            FromWorker::Bye => Some(()),
            _ => None,
        })
        .await;
    // Closing their stdin is the workers' signal that nobody listens any more.
    co.to.clear();
    for c in &mut co.children {
        let _ = tokio::time::timeout(Duration::from_secs(10), c.wait()).await;
    }
    let history = if common.verify_history {
        co.sampler.set_phase("verify");
        co.bar.set_prefix("history");
        co.bar
            .set_message("reading every conversation's stored history");
        Some(verify_history(&common, &table, run_id, &history_access).await?)
    } else {
        None
    };
    drop(table);
    co.bar.finish_and_clear();

    // Merge.
    let merged = merge_finals(&finals)?;
    let traffic = measured_traffic(&merged, traffic_secs);
    let warmup = warmup_phase
        .map(|p| warmup_section(p, &merged, warmup_cpu(&co.sampler, &common.server_pids)));
    let Merged {
        counts,
        tally,
        loss_samples: samples_lost,
        delivery,
        send_ack,
        reconnect: reconnect_hist,
        totals,
        errors,
        ..
    } = merged;
    let accounting = AccountingSection {
        expected: tally.expected,
        delivered: tally.delivered,
        lost: tally.lost,
        duplicated: counts.duplicates,
        client_dedupes: counts.client_dedupes,
        out_of_order: counts.out_of_order,
        seq_regressions: counts.seq_regressions,
        unconfirmed_delivered: tally.unconfirmed_delivered,
        phantom: tally.phantom,
        misrouted: counts.misrouted,
        malformed: counts.malformed,
        stale: counts.stale,
        own: counts.own,
        arrivals: counts.arrivals,
        undecryptable: counts.undecryptable,
        late_keys: counts.late_keys,
        loss_samples: samples_lost,
    };
    if let Some(r) = &mut reconnect_section {
        r.dropped = totals.dropped;
        r.not_connected_at_drop = totals.drop_skipped;
        r.resumed = reconnect_hist.len();
        r.time_to_resume = percentiles(&reconnect_hist);
    }
    let traffic_phase = |p: &str| p == "traffic" || p.starts_with("step ");
    let cpu_phase = |p: &str| match scenario {
        Scenario::Connect { .. } => p == "hold",
        _ => traffic_phase(p),
    };
    let server = if common.server_pids.is_empty() {
        None
    } else {
        let (avg, max) = co.sampler.cpu_stats(true, cpu_phase);
        let before = server_before.map(|s| s.rss_bytes).unwrap_or(0);
        let at_hold = server_hold.map(|s| s.rss_bytes).unwrap_or(0);
        let peak = co
            .sampler
            .samples
            .borrow()
            .iter()
            .filter_map(|s| s.server_rss_bytes)
            .max()
            .unwrap_or(0)
            .max(at_hold);
        Some(ServerSection {
            pids: common.server_pids.clone(),
            cpu_percent_avg: avg,
            cpu_percent_max: max,
            rss_bytes_before_connect: before,
            rss_bytes_at_hold: at_hold,
            rss_bytes_peak: peak,
            rss_bytes_end: server_end.map(|s| s.rss_bytes).unwrap_or(0),
            memory_per_connection_bytes: per_connection(before, at_hold, up_at_hold),
        })
    };
    let loadgen = {
        let (avg, max) = co.sampler.cpu_stats(false, cpu_phase);
        let before = loadgen_before.map(|s| s.rss_bytes).unwrap_or(0);
        let at_hold = loadgen_hold.map(|s| s.rss_bytes).unwrap_or(0);
        let peak = co
            .sampler
            .samples
            .borrow()
            .iter()
            .map(|s| s.loadgen_rss_bytes)
            .max()
            .unwrap_or(0)
            .max(at_hold);
        LoadgenSection {
            processes: 1 + if in_process { 0 } else { workers },
            cpu_percent_avg: avg,
            cpu_percent_max: max,
            rss_bytes_before_connect: before,
            rss_bytes_at_hold: at_hold,
            rss_bytes_peak: peak,
            memory_per_connection_bytes: per_connection(before, at_hold, up_at_hold),
        }
    };

    let mut failures = Vec::new();
    if connect.users_failed > 0 {
        failures.push(format!("{} users never connected", connect.users_failed));
    }
    let checks = [
        (
            accounting.lost,
            "messages lost (expected at a recipient, never arrived)",
        ),
        (accounting.duplicated, "duplicate deliveries"),
        (
            accounting.out_of_order,
            "deliveries out of per-sender order",
        ),
        (
            accounting.seq_regressions,
            "deliveries with a seq not above the previous one",
        ),
        (
            accounting.phantom,
            "deliveries of messages that were never sent",
        ),
        (
            accounting.misrouted,
            "deliveries to a conversation the message was not sent to",
        ),
        (accounting.malformed, "deliveries with a malformed payload"),
        (
            accounting.undecryptable,
            "deliveries that could not be decrypted",
        ),
        (totals.send_failed, "sends never acknowledged"),
    ];
    for (n, what) in checks {
        if n > 0 {
            failures.push(format!("{n} {what}"));
        }
    }
    if let Some(h) = &history {
        for (n, what) in h.problems() {
            if n > 0 {
                failures.push(format!("history: {n} {what}"));
            }
        }
    }
    let wants_traffic = match &scenario {
        Scenario::Connect { .. } => false,
        Scenario::Chat { rate, .. } | Scenario::Reconnect { rate, .. } => *rate > 0.0,
        Scenario::Fanout { .. } => true,
    };
    if wants_traffic && accounting.expected == 0 {
        failures.push("nothing was expected: no message was sent and acknowledged".into());
    }
    if matches!(scenario, Scenario::Connect { .. }) && totals.disconnects > 0 {
        failures.push(format!(
            "{} connections dropped during the hold",
            totals.disconnects
        ));
    }

    let mut sizes: HashMap<usize, usize> = HashMap::new();
    for c in &population.conversations {
        *sizes.entry(c.len()).or_insert(0) += 1;
    }
    let mut conversation_sizes: Vec<SizeCount> = sizes
        .into_iter()
        .map(|(size, conversations)| SizeCount {
            size,
            conversations,
        })
        .collect();
    conversation_sizes.sort_by_key(|s| s.size);

    let report = Report {
        schema_version: SCHEMA_VERSION,
        tool: Tool {
            name: "tern-loadgen".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        },
        label: common.label.clone(),
        command_line: common.command_line.clone(),
        started_at,
        finished_at: rfc3339_now(),
        wall_secs: (t0.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        machine,
        scenario: ScenarioInfo {
            kind: scenario.kind().into(),
            target: target_name,
            server: common.target.server.clone(),
            users,
            conversations: population.conversations.len(),
            conversation_sizes,
            params: scenario.params(),
            seed: common.seed,
            payload_bytes: common.payload_bytes,
            workers,
            source_addrs: common.source_addrs.iter().map(|a| a.to_string()).collect(),
            run_id,
        },
        setup_secs: (setup_secs * 100.0).round() / 100.0,
        connect,
        traffic,
        latency: LatencySection {
            delivery: percentiles(&delivery),
            send_ack: percentiles(&send_ack),
            connect: percentiles(&connect_hist),
            reconnect: percentiles(&reconnect_hist),
        },
        accounting,
        connections: ConnectionsSection {
            disconnects: totals.disconnects,
            reconnects: totals.reconnects,
            reconnect_failed_attempts: totals.reconnect_failed_attempts,
        },
        server,
        loadgen,
        samples: co.sampler.samples.borrow().clone(),
        fanout: fanout_section,
        reconnect: reconnect_section,
        history,
        warmup,
        histograms: Histograms {
            delivery: histo::encode(&delivery).unwrap_or_default(),
            send_ack: histo::encode(&send_ack).unwrap_or_default(),
            connect: histo::encode(&connect_hist).unwrap_or_default(),
            reconnect: histo::encode(&reconnect_hist).unwrap_or_default(),
        },
        errors: sorted_errors(errors),
        passed: failures.is_empty(),
        failures,
    };
    Ok(report)
}

/// `--debug-sabotage` applied to the merged sent table (see [`Sabotage`]).
fn sabotage_table(table: &mut SentTable, s: Sabotage) {
    let mut keys: Vec<(u32, u32)> = table
        .entries
        .iter()
        .filter(|(_, e)| !e.acked.is_empty())
        .map(|(&k, _)| k)
        .collect();
    keys.sort_unstable();
    let Some(key) = keys.first().copied() else {
        tracing::warn!("debug sabotage: nothing was acknowledged, nothing to break");
        return;
    };
    let Some(e) = table.entries.get_mut(&key) else {
        return;
    };
    match s {
        Sabotage::ForgetAck => {
            let Some(counter) = e.acked.max() else {
                return;
            };
            let mut kept = crate::accounting::RangeSet::new();
            for &(a, b) in e.acked.ranges() {
                for x in a..b {
                    if x != counter {
                        kept.insert(x);
                    }
                }
            }
            e.acked = kept;
            e.seqs.retain(|&(c, _)| c != counter);
            tracing::warn!(
                conversation = key.0,
                sender = key.1,
                counter,
                "debug sabotage: forgot one acknowledgement"
            );
        }
        Sabotage::InventAck => {
            let counter = e.acked.max().unwrap_or(0) + e.failed.max().unwrap_or(0) + 1_000_000;
            e.acked.insert(counter);
            tracing::warn!(
                conversation = key.0,
                sender = key.1,
                counter,
                "debug sabotage: invented one acknowledgement"
            );
        }
        // Done by worker 0 during the traffic.
        Sabotage::DuplicateSend => {}
    }
}

/// Pages through every conversation's stored history and checks it against `table`.
async fn verify_history(
    common: &Common,
    table: &SentTable,
    run_id: u32,
    access: &[(Option<String>, Option<ConversationRef>)],
) -> Result<HistorySection, RunError> {
    use futures_util::StreamExt as _;

    let target = common.target.build()?;
    let mut by_conversation: HashMap<u32, HashMap<u32, &crate::accounting::SentEntry>> =
        HashMap::new();
    for (&(c, s), e) in &table.entries {
        by_conversation.entry(c).or_default().insert(s, e);
    }
    let empty = HashMap::new();
    let jobs = access.iter().enumerate().map(|(ci, (token, conv))| {
        let target = target.clone();
        async move {
            (
                ci,
                read_history(target.as_ref(), token.as_deref(), conv.as_ref()).await,
            )
        }
    });
    let mut results = futures_util::stream::iter(jobs).buffer_unordered(8);
    let mut total = HistorySection::default();
    while let Some((ci, r)) = results.next().await {
        let ci = ci as u32;
        match r {
            Ok(entries) => {
                let sent = by_conversation.get(&ci).unwrap_or(&empty);
                total.add(&crate::history::check_conversation(
                    ci, run_id, &entries, sent,
                ));
            }
            Err(e) => {
                tracing::warn!(conversation = ci, error = %e, "cannot read the history");
                total.conversations += 1;
                total.read_errors += 1;
            }
        }
    }
    Ok(total)
}

/// A conversation's whole history, ascending, retrying each page for up to a minute (the server
/// may be restarting when the crash test's last kill was late).
async fn read_history(
    target: &dyn Target,
    token: Option<&str>,
    conversation: Option<&ConversationRef>,
) -> Result<Vec<crate::target::HistoryEntry>, TargetError> {
    let conversation =
        conversation.ok_or_else(|| TargetError::Setup("conversation without members".into()))?;
    // Newest page first, then backwards: pages in reverse order, each ascending.
    let mut pages: Vec<Vec<crate::target::HistoryEntry>> = Vec::new();
    let mut before = 0u64;
    loop {
        let give_up = Instant::now() + Duration::from_secs(60);
        let (page, more) = loop {
            match target.history_page(token, conversation, before).await {
                Ok(p) => break p,
                Err(e) if Instant::now() < give_up => {
                    tracing::debug!(error = %e, "history page failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e),
            }
        };
        let oldest = page.first().map(|m| m.seq);
        pages.push(page);
        match oldest {
            // Stop at the start, or if the server stopped making progress.
            Some(seq) if more && (before == 0 || seq < before) && seq > 1 => before = seq,
            _ => break,
        }
    }
    Ok(pages.into_iter().rev().flatten().collect())
}

/// Removes a directory when dropped.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Default)]
struct FinalTotals {
    sent: u64,
    acked: u64,
    send_failed: u64,
    send_errors: u64,
    ack_duplicates: u64,
    disconnects: u64,
    reconnects: u64,
    reconnect_failed_attempts: u64,
    dropped: u64,
    drop_skipped: u64,
}

impl FinalTotals {
    fn add(&mut self, f: &FinalResult) {
        self.sent += f.sent;
        self.acked += f.acked;
        self.send_failed += f.send_failed;
        self.send_errors += f.send_errors;
        self.ack_duplicates += f.ack_duplicates;
        self.disconnects += f.disconnects;
        self.reconnects += f.reconnects;
        self.reconnect_failed_attempts += f.reconnect_failed_attempts;
        self.dropped += f.dropped;
        self.drop_skipped += f.drop_skipped;
    }
}

fn sorted_errors(errors: HashMap<String, u64>) -> Vec<ErrorCount> {
    let mut v: Vec<ErrorCount> = errors
        .into_iter()
        .map(|(message, count)| ErrorCount { message, count })
        .collect();
    v.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then_with(|| a.message.cmp(&b.message))
    });
    v
}

fn per_sec(n: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        (n as f64 / secs * 10.0).round() / 10.0
    } else {
        0.0
    }
}

fn per_connection(before: u64, at_hold: u64, connections: u64) -> f64 {
    if connections == 0 {
        return 0.0;
    }
    (at_hold.saturating_sub(before) as f64 / connections as f64).round()
}

/// The latency plot of a finished run.
pub fn plot(report: &Report) -> Result<String, histo::HistoError> {
    let decode = |s: &str| -> Result<Hist, histo::HistoError> {
        if s.is_empty() {
            Ok(histo::new_hist())
        } else {
            histo::decode(s)
        }
    };
    let delivery = decode(&report.histograms.delivery)?;
    let send_ack = decode(&report.histograms.send_ack)?;
    let connect = decode(&report.histograms.connect)?;
    let reconnect = decode(&report.histograms.reconnect)?;
    let sc = &report.scenario;
    let title = format!("{} · {} · {}", sc.kind, sc.target, report.started_at);
    let params = match &sc.params {
        serde_json::Value::Object(m) => m
            .iter()
            .map(|(k, v)| format!("{k}={}", v.to_string().trim_matches('"')))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    };
    let mut subtitle = format!("{} conversations · {params}", sc.conversations);
    if subtitle.chars().count() > 140 {
        subtitle = subtitle.chars().take(137).collect::<String>() + "...";
    }
    let mut series = Vec::new();
    if sc.kind == "connect" {
        series.push(crate::plot::Series {
            name: "connect",
            hist: &connect,
            color: "#2ca02c",
        });
    } else {
        series.push(crate::plot::Series {
            name: "delivery (scheduled send → arrival)",
            hist: &delivery,
            color: "#1f77b4",
        });
        series.push(crate::plot::Series {
            name: "send → ack",
            hist: &send_ack,
            color: "#ff7f0e",
        });
        if !reconnect.is_empty() {
            series.push(crate::plot::Series {
                name: "reconnect (closed → resumed)",
                hist: &reconnect,
                color: "#d62728",
            });
        }
    }
    Ok(crate::plot::render(&title, &subtitle, &series))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_planning() {
        // Fits one process: in-process.
        assert_eq!(plan_workers(None, 10_000, 20_000).unwrap(), 0);
        // Does not fit: as many processes as needed.
        assert_eq!(plan_workers(None, 100_000, 20_000).unwrap(), 6);
        assert_eq!(plan_workers(Some(3), 30_000, 20_000).unwrap(), 3);
        let e = plan_workers(Some(0), 30_000, 20_000)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--workers 2"), "{e}");
        assert!(plan_workers(Some(1), 30_000, 20_000).is_err());
    }

    /// Serves a history the way Tern does: the newest `page` messages below `before`.
    struct FakeHistory {
        n: u64,
        page: u64,
    }

    #[async_trait::async_trait]
    impl Target for FakeHistory {
        fn name(&self) -> String {
            "fake".into()
        }
        async fn setup(&self, _: &Population) -> Result<Vec<UserSpec>, TargetError> {
            Err(TargetError::Setup("fake".into()))
        }
        async fn connect(
            &self,
            _: &UserSpec,
            _: IpAddr,
        ) -> Result<crate::target::Connected, TargetError> {
            Err(TargetError::Connect("fake".into()))
        }
        async fn history_page(
            &self,
            _: Option<&str>,
            _: &ConversationRef,
            before: u64,
        ) -> Result<(Vec<crate::target::HistoryEntry>, bool), TargetError> {
            let hi = if before == 0 { self.n } else { before - 1 };
            let lo = hi.saturating_sub(self.page) + 1;
            let page = (lo..=hi)
                .map(|seq| crate::target::HistoryEntry {
                    seq,
                    sender_user: "u".into(),
                    client_msg_id: seq as u128,
                    payload: Vec::new(),
                })
                .collect();
            Ok((page, lo > 1))
        }
    }

    #[tokio::test]
    async fn history_is_read_whole_and_ascending() {
        let conv = ConversationRef {
            index: 0,
            key: "c".into(),
        };
        for (n, page) in [
            (0, 500),
            (1, 500),
            (500, 500),
            (501, 500),
            (1234, 500),
            (7, 2),
        ] {
            let t = FakeHistory { n, page };
            let all = read_history(&t, Some("token"), Some(&conv)).await.unwrap();
            let seqs: Vec<u64> = all.iter().map(|m| m.seq).collect();
            assert_eq!(seqs, (1..=n).collect::<Vec<_>>(), "n={n} page={page}");
        }
    }

    /// A worker's final result as [`worker`] builds it: histograms from its [`TrafficStats`].
    fn final_result(t: &crate::phase_stats::TrafficStats, sent: u64, tally: Tally) -> FinalResult {
        let (delivery_hist, send_ack_hist) = t.measured();
        let warmup = t.warmup_result();
        FinalResult {
            counts: ArrivalCounts {
                unique: tally.delivered,
                arrivals: tally.delivered + warmup.counts.undecryptable,
                undecryptable: warmup.counts.undecryptable,
                late_keys: warmup.counts.late_keys,
                ..Default::default()
            },
            tally,
            loss_samples: Vec::new(),
            delivery_hist,
            send_ack_hist,
            connect_hist: String::new(),
            reconnect_hist: String::new(),
            sent,
            acked: sent,
            send_failed: 0,
            send_errors: 0,
            ack_duplicates: 0,
            disconnects: 0,
            reconnects: 0,
            reconnect_failed_attempts: 0,
            dropped: 0,
            drop_skipped: 0,
            errors: Vec::new(),
            warmup,
        }
    }

    #[test]
    fn warmup_is_in_the_accounting_but_not_in_the_measured_figures() {
        const S: u64 = 1_000_000_000;
        // Two workers; the warm-up's scheduled times are [0 s, 5 s), the measured phase's
        // [6 s, 16 s).
        let mut a = crate::phase_stats::TrafficStats::new();
        let mut b = crate::phase_stats::TrafficStats::new();
        for t in [&mut a, &mut b] {
            t.phase_started(true, 0, 5 * S);
        }
        for i in 0..3 {
            a.dispatched(true);
            a.acked(true, i == 0, 1_000);
            a.delivered(i * S, 40_000, i == 0);
        }
        a.undecryptable();
        for t in [&mut a, &mut b] {
            t.phase_started(false, 6 * S, 10 * S);
        }
        // A warm-up message (scheduled at 4.5 s) arriving 3 s late, in the measured phase.
        b.delivered(4 * S + S / 2, 3_000_000, false);
        for i in 0..4 {
            b.dispatched(false);
            b.acked(false, i == 0, 500);
            b.delivered(6 * S + i * S, 2_000, false);
        }
        let whole = |n| Tally {
            expected: n,
            delivered: n,
            ..Default::default()
        };
        let finals = vec![
            Box::new(final_result(&a, 3, whole(3))),
            Box::new(final_result(&b, 4, whole(5))),
        ];
        let m = merge_finals(&finals).unwrap();
        // The correctness counts cover every message, the warm-up's too.
        assert_eq!((m.tally.expected, m.tally.delivered), (8, 8));
        assert_eq!(m.counts.undecryptable, 1);
        // The measured figures leave all four warm-up deliveries out, the late one included.
        assert_eq!(m.delivery.len(), 4);
        assert!(m.delivery.max() < 10_000, "a warm-up delivery leaked");
        assert_eq!(m.send_ack.len(), 4);
        let traffic = measured_traffic(&m, 10.0);
        assert_eq!(
            (traffic.sent, traffic.acked, traffic.send_failed),
            (4, 4, 0)
        );
        assert_eq!(traffic.delivered_per_sec, 0.4);
        let phase = WarmupPhase {
            duration_secs: 5.0,
            expected: 4,
            drained: true,
        };
        let w = warmup_section(phase, &m, (Some(12.0), 3.0));
        assert_eq!((w.sent, w.acked, w.expected, w.delivered), (3, 3, 4, 4));
        assert_eq!((w.delivery.count, w.send_ack.count), (4, 3));
        assert_eq!((w.late_keys, w.undecryptable), (1, 1));
        assert_eq!(w.first_sends_after_warmup, 1);
        assert_eq!(w.server_cpu_percent_avg, Some(12.0));
    }

    #[test]
    fn without_a_warmup_the_traffic_is_the_whole_run() {
        let mut t = crate::phase_stats::TrafficStats::new();
        t.phase_started(false, 0, 10);
        t.dispatched(false);
        t.acked(false, true, 500);
        t.delivered(5, 900, false);
        let tally = Tally {
            expected: 1,
            delivered: 1,
            ..Default::default()
        };
        let m = merge_finals(&[Box::new(final_result(&t, 1, tally))]).unwrap();
        let traffic = measured_traffic(&m, 1.0);
        assert_eq!(
            (traffic.sent, traffic.acked, traffic.delivered_per_sec),
            (1, 1, 1.0)
        );
        assert_eq!(m.delivery.len(), 1);
        assert_eq!(m.warmup, WarmupCounts::default());
    }

    #[test]
    fn validation() {
        let chat = |rate: f64| Scenario::Chat {
            users: 10,
            mix: "2".parse().unwrap(),
            rate,
            duration: Duration::from_secs(1),
            warmup: Duration::ZERO,
            warmup_ramp: false,
            schedule: ScheduleKind::Poisson,
        };
        assert!(chat(1.0).validate().is_ok());
        assert!(chat(-1.0).validate().is_err());
        let rc = Scenario::Reconnect {
            users: 10,
            mix: "2".parse().unwrap(),
            rate: 1.0,
            duration: Duration::from_secs(10),
            drop_percent: 20.0,
            drop_at: Duration::from_secs(10),
            schedule: ScheduleKind::Poisson,
        };
        assert!(rc.validate().is_err());
    }
}
