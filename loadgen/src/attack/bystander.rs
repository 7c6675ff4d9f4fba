//! `attack bystander`: does an attacker hurt people who are not the target of the attack?
//!
//! One process measures, in phases of `--phase` each: "quiet" (no attack), then "attack" (with
//! `--attack logins|sends|both`, the attacker runs as a child process, [`super::flood`], so
//! its CPU is not the measurer's):
//! * a bystander pair (two users in a 1:1 conversation) sends `--chat-rate`
//!   msg/s each way (`--transport ws|wt`); delivery latency (send time → delivery, HdrHistogram), lost (acknowledged,
//!   never delivered after `--drain`) and duplicated deliveries;
//! * a legitimate user logs in with the correct password every `--login-every` on a fresh
//!   TLS connection from `--user-from`: ok / 429 / other answers / errors, and latency;
//! * the attacker floods wrong-password logins for the legitimate user's username from
//!   `--attacker-from`, and/or sends from its own socket into its own 1:1 conversation.
//!
//! Accounts are registered fresh each run (names `<prefix>-<random>-<role>`), from the
//! default source address (127.0.0.1), so the legitimate user's address is used by nobody else.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tern_sdk::tern_wire::ids::{ConversationId, DeviceId, UserId};
use tern_sdk::{Connection, ConnectionSender, Event, EventStream, HttpApi};

use super::flood::FloodResult;
use super::probe::{RssSampler, lock};
use super::{AttackError, AttackTarget, Outcome, bounded, bounded_duration, require_loopback};
use crate::cli::{BystanderArgs, FLOOD_TOKEN_ENV};
use crate::histo::{Hist, Percentiles, new_hist, percentiles, record_us};
use crate::util::{fmt_us, unix_now_ns};

/// Marks bystander payloads (the rest: phase, message number, send time, padding).
const MAGIC: &[u8; 4] = b"BYST";
pub const CHAT_HEADER_LEN: usize = 4 + 1 + 8 + 8;
const PASSWORD: &str = "abuse-run-password-0001";
const LOGIN_TIMEOUT: Duration = Duration::from_secs(10);
/// The phases, in order; "attack" only with an attack.
pub const PHASES: [&str; 2] = ["quiet", "attack"];

pub fn encode_chat(phase: u8, number: u64, sent_unix_ns: u64, len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(len.max(CHAT_HEADER_LEN));
    p.extend_from_slice(MAGIC);
    p.push(phase);
    p.extend_from_slice(&number.to_be_bytes());
    p.extend_from_slice(&sent_unix_ns.to_be_bytes());
    p.resize(len.max(CHAT_HEADER_LEN), b'.');
    p
}

/// (phase, number, send time) of a bystander payload; `None` for anything else.
pub fn decode_chat(p: &[u8]) -> Option<(u8, u64, u64)> {
    if p.len() < CHAT_HEADER_LEN || &p[..4] != MAGIC {
        return None;
    }
    let number = u64::from_be_bytes(p[5..13].try_into().ok()?);
    let sent = u64::from_be_bytes(p[13..21].try_into().ok()?);
    Some((p[4], number, sent))
}

/// The bystanders' messages of one phase.
pub struct ChatLedger {
    pub sent: u64,
    pub acked: HashSet<u64>,
    pub send_errors: BTreeMap<String, u64>,
    pub delivered: HashSet<u64>,
    pub duplicates: u64,
    pub latency: Hist,
}

impl Default for ChatLedger {
    fn default() -> Self {
        ChatLedger {
            sent: 0,
            acked: HashSet::new(),
            send_errors: BTreeMap::new(),
            delivered: HashSet::new(),
            duplicates: 0,
            latency: new_hist(),
        }
    }
}

impl ChatLedger {
    pub fn delivery(&mut self, number: u64, latency_us: u64) {
        if self.delivered.insert(number) {
            record_us(&mut self.latency, latency_us);
        } else {
            self.duplicates += 1;
        }
    }

    pub fn summary(&self) -> ChatSummary {
        ChatSummary {
            sent: self.sent,
            acked: self.acked.len() as u64,
            send_errors: self.send_errors.clone(),
            delivered: self.delivered.len() as u64,
            lost: self.acked.difference(&self.delivered).count() as u64,
            duplicates: self.duplicates,
            latency: percentiles(&self.latency),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ChatSummary {
    pub sent: u64,
    pub acked: u64,
    pub send_errors: BTreeMap<String, u64>,
    /// Distinct messages delivered.
    pub delivered: u64,
    /// Acknowledged by the server, never delivered to the other bystander.
    pub lost: u64,
    pub duplicates: u64,
    /// Send → delivery, microseconds.
    pub latency: Percentiles,
}

/// The legitimate user's logins of one phase.
pub struct LoginLedger {
    pub attempts: u64,
    pub ok: u64,
    pub rate_limited: u64,
    /// Other HTTP answers by status (401 here means the correct password was refused).
    pub other_status: BTreeMap<String, u64>,
    /// No answer (connect failure, timeout), by message.
    pub errors: BTreeMap<String, u64>,
    /// Request → answer (any answer), microseconds; a fresh TLS connection included.
    pub latency: Hist,
}

impl Default for LoginLedger {
    fn default() -> Self {
        LoginLedger {
            attempts: 0,
            ok: 0,
            rate_limited: 0,
            other_status: BTreeMap::new(),
            errors: BTreeMap::new(),
            latency: new_hist(),
        }
    }
}

impl LoginLedger {
    pub fn add(&mut self, outcome: Result<u16, String>, latency_us: u64) {
        self.attempts += 1;
        match outcome {
            Ok(status) => {
                record_us(&mut self.latency, latency_us);
                match status {
                    200 => self.ok += 1,
                    429 => self.rate_limited += 1,
                    s => *self.other_status.entry(s.to_string()).or_default() += 1,
                }
            }
            Err(e) => *self.errors.entry(e).or_default() += 1,
        }
    }

    pub fn summary(&self) -> LoginSummary {
        LoginSummary {
            attempts: self.attempts,
            ok: self.ok,
            rate_limited: self.rate_limited,
            other_status: self.other_status.clone(),
            errors: self.errors.clone(),
            success_rate: if self.attempts == 0 {
                0.0
            } else {
                self.ok as f64 / self.attempts as f64
            },
            latency: percentiles(&self.latency),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LoginSummary {
    pub attempts: u64,
    pub ok: u64,
    pub rate_limited: u64,
    pub other_status: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
    /// ok / attempts.
    pub success_rate: f64,
    pub latency: Percentiles,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PhaseResult {
    pub name: String,
    pub secs: f64,
    pub bystander: ChatSummary,
    pub login: LoginSummary,
    /// The attacker's own counts (null in the quiet phase).
    pub attacker: Option<FloodResult>,
    pub attacker_error: Option<String>,
    /// /proc/loadavg (1-minute) at the phase's start and end: on a shared machine, a quiet
    /// phase is only quiet if this is low.
    pub load_avg_start: f64,
    pub load_avg_end: f64,
}

/// The 1-minute load average (0 if unreadable).
pub fn load_avg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct BystanderResult {
    pub attack: String,
    /// "ws" or "wt": the bystanders' and the send flooder's sockets.
    pub transport: String,
    pub phase_secs: f64,
    pub chat_rate_per_member: f64,
    pub chat_bytes: usize,
    pub login_every_ms: u64,
    pub user_from: String,
    pub attacker_from: Vec<String>,
    pub login_flood_conns: usize,
    pub send_flood_inflight: usize,
    pub send_flood_bytes: usize,
    pub users: BTreeMap<String, String>,
    /// Times a bystander's socket closed during the run.
    pub bystander_disconnects: u64,
    pub phases: Vec<PhaseResult>,
    /// attack p99 / quiet p99 of the bystanders' delivery latency (null without both).
    pub p99_ratio: Option<f64>,
}

struct Account {
    name: String,
    token: String,
    user: UserId,
}

/// Registers (retrying on 429 within a bound) and logs in.
async fn account(http: &HttpApi, name: &str) -> Result<Account, AttackError> {
    let setup = |e: String| AttackError::Setup(format!("{name}: {e}"));
    for attempt in 0.. {
        match http.register(name, PASSWORD).await {
            Ok(_) => break,
            Err(tern_sdk::Error::Api(f)) if f.status == 429 && attempt < 4 => {
                let wait = f.retry_after.unwrap_or(Duration::from_secs(5));
                tracing::info!(?wait, "registration rate-limited; waiting");
                tokio::time::sleep(wait.min(Duration::from_secs(65))).await;
            }
            Err(e) => return Err(setup(format!("register: {e}"))),
        }
    }
    let mut http = http.clone();
    let login = http
        .login(name, PASSWORD)
        .await
        .map_err(|e| setup(format!("login: {e}")))?;
    Ok(Account {
        name: name.into(),
        token: login.token,
        user: login.user_id,
    })
}

type Ledgers = Arc<Mutex<Vec<ChatLedger>>>;

async fn receive(
    mut events: EventStream,
    me: UserId,
    ledgers: Ledgers,
    sender: ConnectionSender,
    disconnects: Arc<Mutex<u64>>,
) {
    let mut unacked = 0usize;
    while let Some(ev) = events.next_event().await {
        match ev {
            Event::Deliver(m) => {
                let now = unix_now_ns();
                if m.sender_user == me {
                    continue;
                }
                if let Some((phase, number, sent)) = decode_chat(&m.payload)
                    && let Some(l) = lock(&ledgers).get_mut(phase as usize)
                {
                    l.delivery(number, now.saturating_sub(sent) / 1000);
                }
                unacked += 1;
                if unacked >= 64 {
                    unacked = 0;
                    let _ = sender.ack(m.conversation, m.seq).await;
                }
            }
            Event::Closed(_) => {
                *lock(&disconnects) += 1;
                return;
            }
            _ => {}
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn chat_sender(
    sender: ConnectionSender,
    conversation: ConversationId,
    phase: u8,
    direction: u64,
    rate: f64,
    bytes: usize,
    end: tokio::time::Instant,
    ledgers: Ledgers,
    sends: &mut tokio::task::JoinSet<()>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut counter = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::time::sleep_until(end) => return,
        }
        if tokio::time::Instant::now() >= end {
            return;
        }
        counter += 1;
        let number = (direction << 56) | ((phase as u64) << 48) | counter;
        let payload = encode_chat(phase, number, unix_now_ns(), bytes);
        lock(&ledgers)[phase as usize].sent += 1;
        let (s, l) = (sender.clone(), ledgers.clone());
        sends.spawn(async move {
            let r = s
                .send(conversation, rand::random(), "loadgen", payload)
                .await;
            let mut l = lock(&l);
            match r {
                Ok(_) => {
                    l[phase as usize].acked.insert(number);
                }
                Err(e) => {
                    *l[phase as usize]
                        .send_errors
                        .entry(e.to_string())
                        .or_default() += 1
                }
            }
        });
    }
}

pub async fn run(target: &AttackTarget, a: &BystanderArgs) -> anyhow::Result<Outcome> {
    require_loopback("--user-from", a.user_from)?;
    for ip in &a.attacker_from.0 {
        require_loopback("--attacker-from", *ip)?;
    }
    // The server keys login limits by address: an attacker sharing the user's address would
    // measure the (intended) lockout of that address, not whether the owner is spared.
    if a.attacker_from.0.contains(&a.user_from) {
        return Err(AttackError::Usage(format!(
            "--attacker-from must not include --user-from ({})",
            a.user_from
        ))
        .into());
    }
    let phase = bounded_duration("--phase", a.phase)?;
    bounded_duration("--drain", a.drain)?;
    if !(0.1..=1000.0).contains(&a.chat_rate) {
        return Err(AttackError::Usage("--chat-rate must be within 0.1..=1000".into()).into());
    }
    bounded("--chat-bytes", a.chat_bytes, CHAT_HEADER_LEN, 60_000)?;
    bounded("--login-flood-conns", a.login_flood_conns, 1, 10_000)?;
    bounded("--send-flood-inflight", a.send_flood_inflight, 1, 100_000)?;
    if a.login_every < Duration::from_millis(10) {
        return Err(AttackError::Usage("--login-every must be at least 10ms".into()).into());
    }

    // Setup: five fresh accounts and two 1:1 conversations.
    let suffix = format!("{:08x}", rand::random::<u32>());
    let name = |role: &str| format!("{}-{suffix}-{role}", a.user_prefix);
    let http = HttpApi::new(&target.sdk).map_err(|e| AttackError::Setup(e.to_string()))?;
    let alice = account(&http, &name("a")).await?;
    let bob = account(&http, &name("b")).await?;
    let victim = account(&http, &name("user")).await?;
    let flooder = account(&http, &name("flooder")).await?;
    let sink = account(&http, &name("sink")).await?;
    let chat = http
        .clone()
        .with_token(alice.token.clone())
        .create_direct(&bob.name)
        .await
        .map_err(|e| AttackError::Setup(format!("bystander conversation: {e}")))?
        .conversation_id;
    let flood_conv = http
        .clone()
        .with_token(flooder.token.clone())
        .create_direct(&sink.name)
        .await
        .map_err(|e| AttackError::Setup(format!("flood conversation: {e}")))?
        .conversation_id;

    let config = target.sdk.clone().with_transport(a.transport.sdk());
    let ledgers: Ledgers = Arc::new(Mutex::new(
        (0..PHASES.len()).map(|_| ChatLedger::default()).collect(),
    ));
    let logins: Arc<Mutex<Vec<LoginLedger>>> = Arc::new(Mutex::new(
        (0..PHASES.len()).map(|_| LoginLedger::default()).collect(),
    ));
    let disconnects = Arc::new(Mutex::new(0u64));
    let mut members = Vec::new();
    let mut receivers = Vec::new();
    for acc in [&alice, &bob] {
        let conn = Connection::connect(&config, &acc.token, DeviceId(rand::random()), &[])
            .await
            .map_err(|e| AttackError::Setup(format!("bystander connect: {e}")))?;
        let (sender, events) = conn.split();
        receivers.push(tokio::spawn(receive(
            events,
            acc.user,
            ledgers.clone(),
            sender.clone(),
            disconnects.clone(),
        )));
        members.push(sender);
    }
    let rss = RssSampler::start(&a.common.server_pid, a.common.sample_every);

    let phases = if a.attack == crate::cli::AttackMix::None {
        1
    } else {
        2
    };
    let mut results = Vec::new();
    for (pi, pname) in PHASES.iter().enumerate().take(phases) {
        tracing::info!(phase = pname, "phase starts");
        let t0 = Instant::now();
        let load_avg_start = load_avg();
        let end = tokio::time::Instant::now() + phase;
        let attacker = if pi == 1 {
            Some(start_attacker(a, &victim.name, &flooder.token, flood_conv)?)
        } else {
            None
        };
        // The legitimate user's logins.
        let login_task = {
            let (t, ledgers, from, every) =
                (target.clone(), logins.clone(), a.user_from, a.login_every);
            let request = Arc::new(super::raw::login_request(
                &target.authority,
                &victim.name,
                PASSWORD,
                true,
            ));
            tokio::spawn(async move {
                let mut attempts = tokio::task::JoinSet::new();
                let mut tick = tokio::time::interval(every);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = tokio::time::sleep_until(end) => break,
                    }
                    let (t, l, req) = (t.clone(), ledgers.clone(), request.clone());
                    attempts.spawn(async move {
                        let started = Instant::now();
                        let r = super::raw::request_once(&t, from, &req, LOGIN_TIMEOUT).await;
                        let us = started.elapsed().as_micros() as u64;
                        lock(&l)[pi].add(r.map(|r| r.status), us);
                    });
                }
                while attempts.join_next().await.is_some() {}
            })
        };
        let (s0, s1) = (members[0].clone(), members[1].clone());
        let (l0, l1) = (ledgers.clone(), ledgers.clone());
        let mut sends0 = tokio::task::JoinSet::new();
        let mut sends1 = tokio::task::JoinSet::new();
        tokio::join!(
            chat_sender(
                s0,
                chat,
                pi as u8,
                0,
                a.chat_rate,
                a.chat_bytes,
                end,
                l0,
                &mut sends0
            ),
            chat_sender(
                s1,
                chat,
                pi as u8,
                1,
                a.chat_rate,
                a.chat_bytes,
                end,
                l1,
                &mut sends1
            ),
        );
        let _ = login_task.await;
        let (attacker_result, attacker_error) = match attacker {
            Some(child) => match finish_attacker(child, phase).await {
                Ok(r) => (Some(r), None),
                Err(e) => (None, Some(e)),
            },
            None => (None, None),
        };
        // In-flight bystander sends of this phase settle before the next phase starts.
        let settle = async {
            while sends0.join_next().await.is_some() {}
            while sends1.join_next().await.is_some() {}
        };
        let _ = tokio::time::timeout(a.drain, settle).await;
        results.push(PhaseResult {
            name: pname.to_string(),
            secs: t0.elapsed().as_secs_f64(),
            attacker: attacker_result,
            attacker_error,
            load_avg_start,
            load_avg_end: load_avg(),
            ..PhaseResult::default()
        });
    }
    // Deliveries still on their way: wait until every acknowledged message arrived, or --drain.
    let drain_end = tokio::time::Instant::now() + a.drain;
    while tokio::time::Instant::now() < drain_end {
        let missing: usize = lock(&ledgers)
            .iter()
            .map(|l| l.acked.difference(&l.delivered).count())
            .sum();
        if missing == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rss = rss.map(RssSampler::finish);
    for r in &receivers {
        r.abort();
    }
    for (pi, r) in results.iter_mut().enumerate() {
        r.bystander = lock(&ledgers)[pi].summary();
        r.login = lock(&logins)[pi].summary();
    }
    let p99_ratio = (results.len() == 2 && results[0].bystander.latency.p99_us > 0).then(|| {
        results[1].bystander.latency.p99_us as f64 / results[0].bystander.latency.p99_us as f64
    });
    let users = [
        ("bystander_a", &alice),
        ("bystander_b", &bob),
        ("legitimate_user", &victim),
        ("flooder", &flooder),
        ("flood_peer", &sink),
    ]
    .into_iter()
    .map(|(role, acc)| (role.to_string(), acc.name.clone()))
    .collect();
    let result = BystanderResult {
        attack: format!("{:?}", a.attack).to_lowercase(),
        transport: a.transport.flag().into(),
        phase_secs: phase.as_secs_f64(),
        chat_rate_per_member: a.chat_rate,
        chat_bytes: a.chat_bytes,
        login_every_ms: a.login_every.as_millis() as u64,
        user_from: a.user_from.to_string(),
        attacker_from: a.attacker_from.0.iter().map(|i| i.to_string()).collect(),
        login_flood_conns: a.login_flood_conns,
        send_flood_inflight: a.send_flood_inflight,
        send_flood_bytes: a.send_flood_bytes,
        users,
        bystander_disconnects: *lock(&disconnects),
        phases: results,
        p99_ratio,
    };
    Ok(Outcome {
        summary: summary(&result),
        result: serde_json::to_value(&result)?,
        rss,
        healthz: None,
    })
}

pub fn summary(r: &BystanderResult) -> String {
    let mut s = String::new();
    for p in &r.phases {
        let b = &p.bystander;
        let l = &p.login;
        s += &format!(
            "  {:<6} (load avg {:.1} → {:.1}) bystander delivery p50 {} p90 {} p99 {} max {} ({} delivered of {} acked, lost {}, dup {}, send errors {})\n",
            p.name,
            p.load_avg_start,
            p.load_avg_end,
            fmt_us(b.latency.p50_us),
            fmt_us(b.latency.p90_us),
            fmt_us(b.latency.p99_us),
            fmt_us(b.latency.max_us),
            b.delivered,
            b.acked,
            b.lost,
            b.duplicates,
            b.send_errors.values().sum::<u64>(),
        );
        s += &format!(
            "         legitimate login: {}/{} ok ({:.0}%), 429: {}, other: {:?}, errors: {}; latency p50 {} p99 {}\n",
            l.ok,
            l.attempts,
            l.success_rate * 100.0,
            l.rate_limited,
            l.other_status,
            l.errors.values().sum::<u64>(),
            fmt_us(l.latency.p50_us),
            fmt_us(l.latency.p99_us),
        );
        if let Some(at) = &p.attacker {
            if let Some(lf) = &at.logins {
                s += &format!(
                    "         attacker logins: {} tried over {} conns, answers {:?}, errors {}\n",
                    lf.tried,
                    lf.conns,
                    lf.by_status,
                    lf.errors.values().sum::<u64>()
                );
            }
            if let Some(sf) = &at.sends {
                s += &format!(
                    "         attacker sends: {} tried, {} acked ({:.0}/s), refused {:?}, closed {:?}, timeouts {}\n",
                    sf.tried, sf.acked, sf.acked_per_sec, sf.refused, sf.closed, sf.timeouts
                );
            }
        }
        if let Some(e) = &p.attacker_error {
            s += &format!("         attacker FAILED: {e}\n");
        }
    }
    if let Some(x) = r.p99_ratio {
        s += &format!("  bystander p99 attack/quiet: {x:.2}x\n");
    }
    s
}

struct Attacker {
    child: tokio::process::Child,
    report: PathBuf,
    _dir: TempDir,
}

/// A temporary directory removed on drop (std only: tempfile is a dev-dependency).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn start_attacker(
    a: &BystanderArgs,
    victim: &str,
    flooder_token: &str,
    conversation: ConversationId,
) -> Result<Attacker, AttackError> {
    let dir = std::env::temp_dir().join(format!(
        "tern-attack-{}-{:x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).map_err(|e| AttackError::Setup(format!("temp dir: {e}")))?;
    let dir = TempDir(dir);
    let report = dir.0.join("flood.json");
    let exe = match &a.attacker_exe {
        Some(p) => p.clone(),
        None => {
            std::env::current_exe().map_err(|e| AttackError::Setup(format!("own path: {e}")))?
        }
    };
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args(["attack", "flood", "--server", &a.common.server]);
    for h in &a.common.cert_hash {
        cmd.args(["--cert-hash", h]);
    }
    if let Some(f) = &a.common.ca_file {
        cmd.arg("--ca-file").arg(f);
    }
    cmd.arg("--duration")
        .arg(format!("{}ms", a.phase.as_millis()))
        .arg("--report")
        .arg(&report);
    let from: Vec<String> = a.attacker_from.0.iter().map(|i| i.to_string()).collect();
    cmd.args(["--from", &from.join(",")]);
    if a.attack.logins() {
        cmd.args(["--logins-for", victim]);
        cmd.args(["--login-conns", &a.login_flood_conns.to_string()]);
    }
    if a.attack.sends() {
        cmd.args(["--transport", a.transport.flag()]);
        cmd.args(["--send-conversation", &conversation.to_string()]);
        cmd.args(["--inflight", &a.send_flood_inflight.to_string()]);
        cmd.args(["--bytes", &a.send_flood_bytes.to_string()]);
        cmd.env(FLOOD_TOKEN_ENV, flooder_token);
    }
    cmd.stdout(std::process::Stdio::null()).kill_on_drop(true);
    let child = cmd
        .spawn()
        .map_err(|e| AttackError::Setup(format!("starting the attacker: {e}")))?;
    Ok(Attacker {
        child,
        report,
        _dir: dir,
    })
}

async fn finish_attacker(mut at: Attacker, phase: Duration) -> Result<FloodResult, String> {
    // The attacker stops by itself after the phase; a margin for its last answers, then kill.
    let status = match tokio::time::timeout(phase + Duration::from_secs(60), at.child.wait()).await
    {
        Ok(s) => s.map_err(|e| format!("waiting for the attacker: {e}"))?,
        Err(_) => {
            let _ = at.child.kill().await;
            return Err("the attacker did not stop; killed".into());
        }
    };
    if !status.success() {
        return Err(format!("the attacker exited with {status}"));
    }
    let text = std::fs::read_to_string(&at.report).map_err(|e| format!("attacker report: {e}"))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    serde_json::from_value(v["result"].clone()).map_err(|e| format!("attacker report: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_payload_round_trip() {
        let p = encode_chat(1, 42, 7_000, 128);
        assert_eq!(p.len(), 128);
        assert_eq!(decode_chat(&p), Some((1, 42, 7_000)));
        assert_eq!(decode_chat(b"flood-payload-that-is-long-enough"), None);
        assert_eq!(encode_chat(0, 1, 1, 3).len(), CHAT_HEADER_LEN);
    }
}
