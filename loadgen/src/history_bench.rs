//! `tern-loadgen history-bench`: the server's history page latency on one long conversation
//! (issue 14), read through the real server over TLS while other traffic runs.
//!
//! 1. **Setup**: one user owning one group (cached in `--state-dir`, so a second run reuses the
//!    filled conversation).
//! 2. **Fill** to `--messages` through the real server: one WebSocket device sending with
//!    `--fill-window` sends in flight (the server's send limits must allow it: see
//!    `bench/run-history.sh`). A single device, because every other device of a member would
//!    receive each message live.
//! 3. **Wait for the load** (optional, `--metrics-url`): the server's committed-messages
//!    counter (`/metrics` on its operations listener) must rise by at least `--min-load` per
//!    second for 5 seconds in a row, i.e. the chat load generator runs; the rate is sampled
//!    every second of the measurement and reported.
//! 4. **Measure**: three page kinds, each on an open-loop schedule of `--rate` requests per
//!    second: the newest page, the oldest page (seqs 1..=limit) and a page around a uniformly
//!    random seq. Latency counts from the *scheduled* time, so a stalled server cannot hide
//!    behind a waiting client. Every page is checked (the seqs it must hold); a wrong page is a
//!    failure, not a sample.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures_util::stream::{FuturesUnordered, StreamExt as _};
use serde::{Deserialize, Serialize};
use tern_sdk::tern_wire::ids::{ConversationId, DeviceId, UserId};
use tern_sdk::tern_wire::msg::Cursor;
use tern_sdk::{Config, Connection, ConnectionSender, HistoryQuery, HttpApi, TransportPref};

use crate::histo::{self, Hist, Percentiles};
use crate::protocol::{TargetKind, TargetSpec};
use crate::util::parse_duration;

/// The goal for the p99 of every page kind, embedded store.
pub const GOAL_P99_MS: f64 = 5.0;
/// Consecutive one-second samples at or above `--min-load` before measuring starts.
const LOAD_STEADY_SECS: usize = 5;
/// Requests in flight at once; a schedule that needs more counts the rest as overload errors.
const MAX_IN_FLIGHT: usize = 1024;
/// The committed-messages counter on the operations listener.
const COMMITTED_METRIC: &str = "tern_engine_messages_committed_total";

#[derive(Debug, clap::Args)]
pub struct HistoryBenchArgs {
    /// Transport of the measured reads: tern-ws or tern-wt (the fill always uses tern-ws).
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
    /// Read pages over the socket (`ClientHistory`) or HTTPS (`GET …/messages`).
    #[arg(long, value_enum, default_value = "socket")]
    pub api: Api,
    /// Messages the conversation holds before measuring (filled up to this).
    #[arg(long, default_value_t = 1_000_000)]
    pub messages: u64,
    /// Sends in flight during the fill.
    #[arg(long, default_value_t = 256)]
    pub fill_window: usize,
    /// Payload bytes per filled message (303: a 128-byte text, end-to-end encrypted).
    #[arg(long, default_value_t = 303)]
    pub payload_bytes: usize,
    /// Stop after the fill.
    #[arg(long)]
    pub fill_only: bool,
    /// Messages per page.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Requests per second of each page kind.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// Measured time.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Requests before the measurement, not recorded (cold caches, connection set-up).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// The server's `/metrics` (operations listener), to wait for and record the other load.
    #[arg(long)]
    pub metrics_url: Option<String>,
    /// Committed messages per second the other load must reach before measuring.
    #[arg(long, default_value_t = 900.0)]
    pub min_load: f64,
    /// How long to wait for that load.
    #[arg(long, default_value = "900s", value_parser = parse_duration)]
    pub load_timeout: Duration,
    /// Setup cache: the account and conversation, reused by later runs.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Write the JSON report here.
    #[arg(long)]
    pub report: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    Socket,
    Https,
}

/// The cached account and conversation.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    server: String,
    username: String,
    password: String,
    user: UserId,
    conversation: ConversationId,
}

#[derive(Debug, Clone, Serialize)]
pub struct FillSection {
    pub filled: u64,
    pub secs: f64,
    pub messages_per_sec: f64,
    pub rate_limited_retries: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LoadSection {
    pub metric: String,
    pub waited_secs: f64,
    /// Committed messages per second, one sample per second of the measurement.
    pub samples: Vec<f64>,
    pub min_per_sec: f64,
    pub mean_per_sec: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct KindSection {
    pub kind: &'static str,
    /// From the scheduled time to the page (open loop).
    pub latency: Percentiles,
    /// From the request leaving to the page.
    pub service: Percentiles,
    pub errors: u64,
    pub wrong_pages: u64,
    pub first_problem: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HistoryBenchReport {
    pub tool: String,
    pub command_line: Vec<String>,
    pub started_at: String,
    pub machine: crate::sysstat::Machine,
    pub target: String,
    pub api: Api,
    pub conversation: ConversationId,
    pub messages: u64,
    pub payload_bytes: usize,
    pub fill: Option<FillSection>,
    pub limit: u32,
    pub rate_per_kind: f64,
    pub duration_secs: f64,
    pub load: Option<LoadSection>,
    pub kinds: Vec<KindSection>,
    pub goal_p99_ms: f64,
    pub goal_met: bool,
    pub passed: bool,
    pub failures: Vec<String>,
}

/// Runs the benchmark; the exit status says whether every page was right.
pub fn main(args: HistoryBenchArgs, argv: Vec<String>) -> anyhow::Result<bool> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let report = rt.block_on(run(&args, argv))?;
    if let Some(path) = &args.report {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    print!("{}", human(&report));
    Ok(report.passed)
}

fn human(r: &HistoryBenchReport) -> String {
    let mut out = format!(
        "history pages, {} messages, limit {}, {} over {} ({:?}), {} req/s per kind for {:.0} s\n",
        r.messages, r.limit, r.conversation, r.target, r.api, r.rate_per_kind, r.duration_secs
    );
    if let Some(f) = &r.fill {
        out += &format!(
            "  fill: {} messages in {:.1} s ({:.0} msg/s)\n",
            f.filled, f.secs, f.messages_per_sec
        );
    }
    if let Some(l) = &r.load {
        out += &format!(
            "  other load: {:.0} committed msg/s on average, {:.0} at least\n",
            l.mean_per_sec, l.min_per_sec
        );
    }
    if r.kinds.is_empty() {
        // --fill-only: nothing was read, so there is no latency and no goal to report.
        return out;
    }
    out += "  kind      count    p50 ms   p90 ms   p99 ms  p99.9 ms  max ms  errors wrong\n";
    for k in &r.kinds {
        let ms = |us: u64| us as f64 / 1000.0;
        out += &format!(
            "  {:<8} {:>6} {:>9.2} {:>8.2} {:>8.2} {:>9.2} {:>7.1} {:>7} {:>5}\n",
            k.kind,
            k.latency.count,
            ms(k.latency.p50_us),
            ms(k.latency.p90_us),
            ms(k.latency.p99_us),
            ms(k.latency.p999_us),
            ms(k.latency.max_us),
            k.errors,
            k.wrong_pages
        );
    }
    out += &format!(
        "  goal p99 < {GOAL_P99_MS} ms: {}; {}\n",
        if r.goal_met { "met" } else { "missed" },
        if r.passed {
            "every page right".to_owned()
        } else {
            format!("FAILED: {}", r.failures.join("; "))
        }
    );
    out
}

async fn run(args: &HistoryBenchArgs, argv: Vec<String>) -> anyhow::Result<HistoryBenchReport> {
    if args.limit == 0 || args.rate <= 0.0 || args.fill_window == 0 {
        bail!("--limit, --rate and --fill-window must be above 0");
    }
    let started_at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let mut spec = TargetSpec::new(args.target, args.server.clone());
    spec.cert_hashes = args.cert_hash.clone();
    spec.ca_file = args.ca_file.clone();
    let trust = spec.trust()?;
    let transport = match args.target {
        TargetKind::TernWs => TransportPref::WebSocket,
        TargetKind::TernWt => TransportPref::WebTransport,
        _ => bail!("history-bench needs a Tern target"),
    };
    let base = Config::new(&args.server, trust.clone())?
        .with_client_name(format!("tern-loadgen/{}", env!("CARGO_PKG_VERSION")));
    let (state, token) = setup(args, &base).await?;
    let api = HttpApi::new(&base)?.with_token(token.clone());
    let mut last = last_seq(&api, state.conversation).await?;
    let fill = if last < args.messages {
        let config = base.clone().with_transport(TransportPref::WebSocket);
        let f = fill(args, &config, &token, state.conversation, last).await?;
        last = last_seq(&api, state.conversation).await?;
        Some(f)
    } else {
        None
    };
    let mut failures = Vec::new();
    if last < args.messages {
        failures.push(format!(
            "the conversation holds {last} messages, not {}",
            args.messages
        ));
    }
    let mut report = HistoryBenchReport {
        tool: format!("tern-loadgen {}", env!("CARGO_PKG_VERSION")),
        command_line: argv,
        started_at,
        machine: crate::sysstat::machine(),
        target: args.target.name().to_owned(),
        api: args.api,
        conversation: state.conversation,
        messages: last,
        payload_bytes: args.payload_bytes,
        fill,
        limit: args.limit,
        rate_per_kind: args.rate,
        duration_secs: args.duration.as_secs_f64(),
        load: None,
        kinds: Vec::new(),
        goal_p99_ms: GOAL_P99_MS,
        goal_met: false,
        passed: false,
        failures,
    };
    if args.fill_only || !report.failures.is_empty() {
        report.passed = report.failures.is_empty();
        return Ok(report);
    }
    let reader = Reader::open(args, &base.with_transport(transport), &token, &state, last).await?;
    let mut load = match &args.metrics_url {
        Some(url) => Some(LoadProbe::new(url, &trust)?),
        None => None,
    };
    let waited = match &mut load {
        Some(probe) => probe.wait_for(args.min_load, args.load_timeout).await?,
        None => 0.0,
    };
    let plan = Plan {
        limit: args.limit,
        last,
        rate: args.rate,
    };
    // Warm-up: the same schedule, nothing kept.
    measure(&reader, &plan, args.warmup).await;
    // The load is sampled by its own task: a slow metrics read must not delay a request.
    let sampler = load.take().map(LoadProbe::spawn);
    let kinds = measure(&reader, &plan, args.duration).await;
    if let Some((stop, task)) = sampler {
        let _ = stop.send(());
        let probe = task.await.context("the load sampler")?;
        let samples = probe.samples;
        let min = samples.iter().copied().fold(f64::INFINITY, f64::min);
        let mean = samples.iter().sum::<f64>() / samples.len().max(1) as f64;
        if samples.is_empty() || min < args.min_load * 0.5 {
            report.failures.push(format!(
                "the other load fell to {min:.0} committed msg/s during the measurement"
            ));
        }
        report.load = Some(LoadSection {
            metric: COMMITTED_METRIC.into(),
            waited_secs: waited,
            min_per_sec: if samples.is_empty() { 0.0 } else { min },
            mean_per_sec: mean,
            samples,
        });
    }
    for k in &kinds {
        if k.errors > 0 || k.wrong_pages > 0 {
            report.failures.push(format!(
                "{}: {} errors, {} wrong pages (first: {})",
                k.kind,
                k.errors,
                k.wrong_pages,
                k.first_problem.as_deref().unwrap_or("-")
            ));
        }
        if k.latency.count == 0 {
            report
                .failures
                .push(format!("{}: no page measured", k.kind));
        }
    }
    report.goal_met = kinds
        .iter()
        .all(|k| k.latency.count > 0 && (k.latency.p99_us as f64) < GOAL_P99_MS * 1000.0);
    report.kinds = kinds;
    report.passed = report.failures.is_empty();
    Ok(report)
}

/// Logs in as the cached user (or registers one with a fresh group) and returns its token.
async fn setup(args: &HistoryBenchArgs, base: &Config) -> anyhow::Result<(State, String)> {
    let path = args
        .state_dir
        .as_ref()
        .map(|d| d.join("history-bench.json"));
    if let Some(p) = &path
        && let Ok(bytes) = std::fs::read(p)
    {
        let state: State =
            serde_json::from_slice(&bytes).with_context(|| format!("reading {}", p.display()))?;
        if state.server == args.server {
            let mut api = HttpApi::new(base)?;
            let login = api.login(&state.username, &state.password).await;
            if let Ok(login) = login {
                return Ok((state, login.token));
            }
            tracing::warn!("the cached history-bench account is unknown here; making a new one");
        }
    }
    let suffix: u32 = rand::random();
    let username = format!("histbench{suffix:08x}");
    let password = format!("history bench {:032x}", rand::random::<u128>());
    let mut api = HttpApi::new(base)?;
    let user = api
        .register(&username, &password)
        .await
        .context("register")?;
    let login = api.login(&username, &password).await.context("login")?;
    let group = api
        .create_group(&format!("history bench {suffix:08x}"), "", &[])
        .await
        .context("create the group")?;
    let state = State {
        server: args.server.clone(),
        username,
        password,
        user: user.user_id,
        conversation: group.conversation_id,
    };
    if let (Some(dir), Some(p)) = (&args.state_dir, &path) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(p, serde_json::to_vec_pretty(&state)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok((state, login.token))
}

async fn last_seq(api: &HttpApi, conversation: ConversationId) -> anyhow::Result<u64> {
    let list = api.conversations().await.context("listing conversations")?;
    list.iter()
        .find(|c| c.conversation_id == conversation)
        .map(|c| c.last_seq)
        .context("the benchmark's conversation is not listed")
}

/// Sends until the conversation holds `args.messages`, `fill_window` sends in flight.
async fn fill(
    args: &HistoryBenchArgs,
    config: &Config,
    token: &str,
    conversation: ConversationId,
    from: u64,
) -> anyhow::Result<FillSection> {
    let cursors = [Cursor {
        conversation,
        seq: from,
    }];
    let conn = Connection::connect(config, token, DeviceId::random(), &cursors)
        .await
        .context("connecting the filling device")?;
    let (sender, mut events) = conn.split();
    // The device's own sends are not delivered to it; drain whatever else arrives.
    let drain = tokio::spawn(async move { while events.next_event().await.is_some() {} });
    let todo = args.messages - from;
    let base: u128 = rand::random::<u128>() >> 1;
    let payload: Vec<u8> = (0..args.payload_bytes)
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    let started = Instant::now();
    let retries = std::cell::Cell::new(0u64);
    tracing::info!(todo, "filling the conversation");
    let mut sends = futures_util::stream::iter(0..todo)
        .map(|i| {
            send_one(
                &sender,
                conversation,
                base + u128::from(i),
                &payload,
                &retries,
            )
        })
        .buffer_unordered(args.fill_window);
    let mut done = 0u64;
    while let Some(result) = sends.next().await {
        result?;
        done += 1;
        if done.is_multiple_of(100_000) {
            tracing::info!(
                done,
                todo,
                secs = started.elapsed().as_secs_f64(),
                "fill progress"
            );
        }
    }
    drop(sends);
    let secs = started.elapsed().as_secs_f64();
    sender.close().await;
    drain.abort();
    Ok(FillSection {
        filled: todo,
        secs,
        messages_per_sec: todo as f64 / secs.max(1e-9),
        rate_limited_retries: retries.get(),
    })
}

/// One send, retried with the same client id (deduplicated by the server) while rate-limited.
async fn send_one(
    sender: &ConnectionSender,
    conversation: ConversationId,
    client_msg_id: u128,
    payload: &[u8],
    retries: &std::cell::Cell<u64>,
) -> anyhow::Result<()> {
    loop {
        match sender
            .send(
                conversation,
                client_msg_id,
                "e2e.megolm.v2",
                payload.to_vec(),
            )
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if e.code() == Some("rate_limited") => {
                retries.set(retries.get() + 1);
                let wait = e.retry_after().unwrap_or(Duration::from_millis(100));
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err(e).context("fill send"),
        }
    }
}

/// Where the measured pages are read.
enum Reader {
    Socket {
        sender: ConnectionSender,
        drain: tokio::task::JoinHandle<()>,
        conversation: ConversationId,
    },
    Https {
        api: HttpApi,
        conversation: ConversationId,
    },
}

impl Reader {
    async fn open(
        args: &HistoryBenchArgs,
        config: &Config,
        token: &str,
        state: &State,
        last: u64,
    ) -> anyhow::Result<Reader> {
        let conversation = state.conversation;
        Ok(match args.api {
            Api::Socket => {
                // Resuming at the end: no replay of the million messages.
                let cursors = [Cursor {
                    conversation,
                    seq: last,
                }];
                let conn = Connection::connect(config, token, DeviceId::random(), &cursors)
                    .await
                    .context("connecting the reading device")?;
                let (sender, mut events) = conn.split();
                let drain =
                    tokio::spawn(async move { while events.next_event().await.is_some() {} });
                Reader::Socket {
                    sender,
                    drain,
                    conversation,
                }
            }
            Api::Https => Reader::Https {
                api: HttpApi::new(config)?.with_token(token.to_owned()),
                conversation,
            },
        })
    }

    /// The seqs of one page.
    async fn page(&self, q: HistoryQuery) -> Result<Vec<u64>, String> {
        match self {
            Reader::Socket {
                sender,
                conversation,
                ..
            } => sender
                .history_query(*conversation, q)
                .await
                .map(|p| p.messages.iter().map(|m| m.seq).collect())
                .map_err(|e| e.to_string()),
            Reader::Https { api, conversation } => api
                .history(*conversation, q)
                .await
                .map(|p| p.messages.iter().map(|m| m.seq).collect())
                .map_err(|e| e.to_string()),
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        if let Reader::Socket { drain, .. } = self {
            drain.abort();
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Newest,
    Oldest,
    Around,
}

const KINDS: [Kind; 3] = [Kind::Newest, Kind::Oldest, Kind::Around];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Newest => "newest",
            Kind::Oldest => "oldest",
            Kind::Around => "around",
        }
    }
}

struct Plan {
    limit: u32,
    last: u64,
    rate: f64,
}

impl Plan {
    /// The request of one page and the seqs it must hold.
    fn request(&self, kind: Kind) -> (HistoryQuery, Vec<u64>) {
        let l = u64::from(self.limit).min(self.last);
        match kind {
            Kind::Newest => (
                HistoryQuery {
                    limit: Some(self.limit),
                    ..HistoryQuery::default()
                },
                (self.last - l + 1..=self.last).collect(),
            ),
            Kind::Oldest => (
                HistoryQuery {
                    before: Some(l + 1),
                    limit: Some(self.limit),
                    ..HistoryQuery::default()
                },
                (1..=l).collect(),
            ),
            Kind::Around => {
                let seq = rand::random_range(1..=self.last);
                let after = u64::from(self.limit.saturating_sub(1) / 2);
                let before = u64::from(self.limit) - after;
                let lo = seq.saturating_sub(before - 1).max(1);
                let hi = (seq + after).min(self.last);
                (HistoryQuery::around(seq, self.limit), (lo..=hi).collect())
            }
        }
    }
}

struct Tally {
    latency: Hist,
    service: Hist,
    errors: u64,
    wrong: u64,
    first_problem: Option<String>,
}

impl Tally {
    fn problem(&mut self, what: String) {
        self.first_problem.get_or_insert(what);
    }
}

/// A finished request: kind index, scheduled and sent times, the seqs wanted, the answer.
type Outcome = (usize, Instant, Instant, Vec<u64>, Result<Vec<u64>, String>);

/// Runs the three schedules for `length` and waits for every answer.
async fn measure(reader: &Reader, plan: &Plan, length: Duration) -> Vec<KindSection> {
    let interval = Duration::from_secs_f64(1.0 / plan.rate);
    let start = Instant::now();
    let end = start + length;
    // Kinds staggered inside one interval so their requests do not leave together.
    let mut next: Vec<Instant> = (0..KINDS.len())
        .map(|i| start + interval.mul_f64(i as f64 / KINDS.len() as f64))
        .collect();
    let mut tallies: Vec<Tally> = KINDS
        .iter()
        .map(|_| Tally {
            latency: histo::new_hist(),
            service: histo::new_hist(),
            errors: 0,
            wrong: 0,
            first_problem: None,
        })
        .collect();
    let mut in_flight = FuturesUnordered::new();
    loop {
        let (i, due) = next
            .iter()
            .copied()
            .enumerate()
            .min_by_key(|(_, t)| *t)
            .unwrap_or((0, end));
        let scheduling = due < end;
        if !scheduling && in_flight.is_empty() {
            break;
        }
        tokio::select! {
            biased;
            Some(outcome) = in_flight.next(), if !in_flight.is_empty() => {
                let (k, scheduled, sent, want, got): Outcome = outcome;
                let done = Instant::now();
                let t: &mut Tally = &mut tallies[k];
                match got {
                    Ok(seqs) if seqs == want => {
                        histo::record_us(&mut t.latency, micros(done - scheduled));
                        histo::record_us(&mut t.service, micros(done - sent));
                    }
                    Ok(seqs) => {
                        t.wrong += 1;
                        t.problem(format!("got seqs {:?}..{:?} ({}), want {:?}..{:?} ({})",
                            seqs.first(), seqs.last(), seqs.len(), want.first(), want.last(), want.len()));
                    }
                    Err(e) => {
                        t.errors += 1;
                        t.problem(e);
                    }
                }
            }
            _ = tokio::time::sleep_until(due.into()), if scheduling => {
                next[i] += interval;
                if in_flight.len() >= MAX_IN_FLIGHT {
                    tallies[i].errors += 1;
                    tallies[i].problem("overload: too many requests in flight".into());
                    continue;
                }
                let (q, want) = plan.request(KINDS[i]);
                in_flight.push(async move {
                    let sent = Instant::now();
                    let got = reader.page(q).await;
                    (i, due, sent, want, got)
                });
            }
        }
    }
    KINDS
        .iter()
        .zip(tallies)
        .map(|(k, t)| KindSection {
            kind: k.name(),
            latency: histo::percentiles(&t.latency),
            service: histo::percentiles(&t.service),
            errors: t.errors,
            wrong_pages: t.wrong,
            first_problem: t.first_problem,
        })
        .collect()
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The server's committed-messages counter, read from its operations listener.
struct LoadProbe {
    http: reqwest::Client,
    url: String,
    last: Option<(Instant, f64)>,
    samples: Vec<f64>,
}

impl LoadProbe {
    fn new(url: &str, trust: &tern_sdk::Trust) -> anyhow::Result<LoadProbe> {
        let tls = tern_sdk::tls::TlsConfigs::new(trust)?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured((*tls.tcp).clone())
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()?;
        Ok(LoadProbe {
            http,
            url: url.to_owned(),
            last: None,
            samples: Vec::new(),
        })
    }

    async fn read(&self) -> anyhow::Result<f64> {
        let body = self
            .http
            .get(&self.url)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        body.lines()
            .find_map(|line| {
                let (name, value) = line.rsplit_once(' ')?;
                (name == COMMITTED_METRIC).then(|| value.parse::<f64>().ok())?
            })
            .with_context(|| format!("{COMMITTED_METRIC} not in {}", self.url))
    }

    /// Reads the counter; returns the rate since the previous read.
    async fn rate(&mut self) -> anyhow::Result<Option<f64>> {
        let now = Instant::now();
        let value = self.read().await?;
        let rate = self
            .last
            .map(|(t, v)| (value - v) / (now - t).as_secs_f64().max(1e-3));
        self.last = Some((now, value));
        Ok(rate)
    }

    /// One measurement sample (a failed read is logged, not fatal).
    async fn sample(&mut self) {
        match self.rate().await {
            Ok(Some(r)) => self.samples.push(r),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "reading the load metric"),
        }
    }

    /// Samples every second until told to stop; hands the probe (with its samples) back.
    fn spawn(
        mut self,
    ) -> (
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<LoadProbe>,
    ) {
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = tick.tick() => self.sample().await,
                }
            }
            self
        });
        (stop, task)
    }

    /// Waits until the rate holds at `min` for a few seconds; returns the seconds waited.
    async fn wait_for(&mut self, min: f64, timeout: Duration) -> anyhow::Result<f64> {
        let started = Instant::now();
        let mut steady = 0;
        tracing::info!(min, "waiting for the other load");
        while steady < LOAD_STEADY_SECS {
            if started.elapsed() > timeout {
                bail!("the other load did not reach {min} committed msg/s within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            match self.rate().await {
                Ok(Some(r)) if r >= min => steady += 1,
                Ok(_) => steady = 0,
                // The server may not listen yet.
                Err(e) => {
                    tracing::debug!(error = %e, "load metric");
                    steady = 0;
                }
            }
        }
        self.last = None;
        Ok(started.elapsed().as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_page_kind_asks_for_what_it_checks() {
        let plan = Plan {
            limit: 50,
            last: 1_000_000,
            rate: 1.0,
        };
        let (q, want) = plan.request(Kind::Newest);
        assert_eq!((q.limit, q.before), (Some(50), None));
        assert_eq!(want, (999_951..=1_000_000).collect::<Vec<_>>());
        let (q, want) = plan.request(Kind::Oldest);
        assert_eq!(q.before, Some(51));
        assert_eq!(want, (1..=50).collect::<Vec<_>>());
        for _ in 0..1000 {
            let (q, want) = plan.request(Kind::Around);
            let seq = q.around.expect("around");
            assert!(want.contains(&seq) && want.len() <= 50, "{seq}: {want:?}");
            // 25 at or below (24 before), 24 after, cut at either end of the conversation.
            assert_eq!(*want.first().expect("first"), seq.saturating_sub(25).max(1));
            assert_eq!(*want.last().expect("last"), (seq + 24).min(1_000_000));
        }
        let tiny = Plan {
            limit: 50,
            last: 3,
            rate: 1.0,
        };
        assert_eq!(tiny.request(Kind::Newest).1, vec![1, 2, 3]);
        assert_eq!(tiny.request(Kind::Oldest).1, vec![1, 2, 3]);
    }
}
