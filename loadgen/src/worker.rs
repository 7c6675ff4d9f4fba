//! A worker: connects its slice of users and plays their part of each phase.
//!
//! Runs on one current-thread tokio runtime inside a `LocalSet` (a multi-thread runtime
//! measured ~8x worse QUIC round trips here), so its state is plain `Rc`/`RefCell`. Per user
//! there are two tasks:
//! * the **connection task** connects (at the user's slot of the ramp), reads every inbound
//!   message into the user's ledger and the latency histograms, and reconnects when the
//!   connection ends (on purpose in the reconnect scenario, or not);
//! * the **sender task** takes the user's scheduled sends in order, one at a time, and retries
//!   a send until it is acknowledged or its give-up time passes (Tern sends are idempotent, so a
//!   retry never stores twice). A send that starts late because the previous one was slow keeps
//!   its scheduled time: the delay shows in its latency.
//!
//! One dispatcher task per phase walks the global schedule and hands this worker's entries to
//! the users at their scheduled times.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, Semaphore, mpsc};

use crate::accounting::{
    Arrival, ArrivalCounts, LossSample, ReceiverLedger, SentEntry, SentIndex, SentRow, SentTable,
    Tally, account,
};
use crate::histo::{self, Hist};
use crate::payload::{HEADER_LEN, Header};
use crate::phase_stats::TrafficStats;
use crate::protocol::{
    ConnectResult, FinalResult, FromWorker, PhaseStats, Progress, ToWorker, TrafficSpec, WorkerPlan,
};
use crate::schedule;
use crate::target::{ConversationRef, Inbound, MessageSender, Target, TargetError, UserSpec};
use crate::util::Clock;

/// Distinct error messages kept per worker; more are counted under one "other" entry.
const MAX_ERROR_KINDS: usize = 40;
/// Lost (message, recipient) examples reported per worker.
const LOSS_SAMPLES: usize = 20;
/// How long shutdown waits for connections to close gracefully.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Progress report period.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);

type Sender = Rc<Box<dyn MessageSender>>;

struct Job {
    conversation: u32,
    scheduled_unix_ns: u64,
    give_up: Instant,
    /// Sent in the warm-up phase (kept out of the measured statistics).
    warmup: bool,
}

struct UserRt {
    spec: UserSpec,
    global: u32,
    source: IpAddr,
    refs: HashMap<u32, ConversationRef>,
    sender: RefCell<Option<Sender>>,
    conn_changed: Notify,
    queue: RefCell<VecDeque<Job>>,
    queue_wake: Notify,
    counters: RefCell<HashMap<u32, u64>>,
    sent: RefCell<HashMap<u32, SentEntry>>,
    ledger: RefCell<ReceiverLedger>,
    /// Set when the scenario drops this connection on purpose, then reset to the moment the
    /// old connection is fully closed: the reconnection is measured from there (the graceful
    /// local close is not the server's time to resume, and a real client learns of a dead path
    /// at some arbitrary point anyway).
    dropped_at: Cell<Option<Instant>>,
}

#[derive(Default)]
struct Counters {
    progress: Progress,
    send_errors: u64,
    ack_duplicates: u64,
    reconnects: u64,
    reconnect_failed_attempts: u64,
    dropped: u64,
    drop_skipped: u64,
    connect_succeeded: u64,
    users_failed: u64,
}

struct Hists {
    connect: Hist,
    reconnect: Hist,
    /// Deliveries and send→acks, split into warm-up and measured.
    traffic: TrafficStats,
}

struct Worker {
    plan: WorkerPlan,
    target: std::sync::Arc<dyn Target>,
    clock: Clock,
    out: mpsc::UnboundedSender<FromWorker>,
    users: Vec<Rc<UserRt>>,
    local_of: HashMap<u32, usize>,
    counters: RefCell<Counters>,
    hists: RefCell<Hists>,
    errors: RefCell<HashMap<String, u64>>,
    connect_sem: Semaphore,
    stopping: Cell<bool>,
    /// Sends of the current phase not yet settled, and whether its dispatcher is done.
    outstanding: Cell<u64>,
    dispatch_done: Cell<bool>,
    phase: Cell<u32>,
    /// `--debug-sabotage duplicate-send`: still to do (once per run, worker 0 only).
    sabotage_pending: Cell<bool>,
}

/// Runs a worker until `Shutdown` (or its command channel closes).
pub async fn run(
    plan: WorkerPlan,
    mut commands: mpsc::UnboundedReceiver<ToWorker>,
    out: mpsc::UnboundedSender<FromWorker>,
) {
    let w = match Worker::new(plan, out.clone()) {
        Ok(w) => Rc::new(w),
        Err(e) => {
            let _ = out.send(FromWorker::Failed {
                message: e.to_string(),
            });
            return;
        }
    };
    let _ = out.send(FromWorker::Hello {
        pid: std::process::id(),
    });
    let ticker = tokio::task::spawn_local(progress_ticker(w.clone()));
    while let Some(cmd) = commands.recv().await {
        match cmd {
            ToWorker::Connect { start_unix_ns } => w.start_connecting(start_unix_ns),
            ToWorker::Traffic(spec) => {
                w.phase.set(spec.phase);
                w.hists.borrow_mut().traffic.phase_started(
                    spec.warmup,
                    spec.start_unix_ns,
                    spec.schedule.duration_ns,
                );
                w.dispatch_done.set(false);
                tokio::task::spawn_local(dispatch(w.clone(), spec));
            }
            ToWorker::EndPhase { phase } => w.end_phase(phase),
            ToWorker::Collect => {
                let rows = w.sent_rows();
                let _ = w.out.send(FromWorker::Sent { rows });
            }
            ToWorker::Account { rows } => {
                let result = w.account(rows);
                let _ = w.out.send(FromWorker::Final(Box::new(result)));
            }
            ToWorker::Shutdown => break,
        }
    }
    w.shutdown().await;
    ticker.abort();
    let _ = out.send(FromWorker::Bye);
}

async fn progress_ticker(w: Rc<Worker>) {
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        w.send_progress();
    }
}

impl Worker {
    fn new(
        plan: WorkerPlan,
        out: mpsc::UnboundedSender<FromWorker>,
    ) -> Result<Worker, TargetError> {
        let target = plan.target.build()?;
        target.import_state(plan.target_state.clone())?;
        let run = plan.run_id;
        let mut users = Vec::with_capacity(plan.users.len());
        let mut local_of = HashMap::with_capacity(plan.users.len());
        for (local, spec) in plan.users.iter().enumerate() {
            let global = spec.index as u32;
            let source = if plan.source_addrs.is_empty() {
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            } else {
                plan.source_addrs[spec.index % plan.source_addrs.len()]
            };
            let refs: HashMap<u32, ConversationRef> = spec
                .conversations
                .iter()
                .map(|c| (c.index as u32, c.clone()))
                .collect();
            let member_of = refs.keys().copied().collect();
            users.push(Rc::new(UserRt {
                spec: spec.clone(),
                global,
                source,
                refs,
                sender: RefCell::new(None),
                conn_changed: Notify::new(),
                queue: RefCell::new(VecDeque::new()),
                queue_wake: Notify::new(),
                counters: RefCell::new(HashMap::new()),
                sent: RefCell::new(HashMap::new()),
                ledger: RefCell::new(ReceiverLedger::new(global, run, member_of)),
                dropped_at: Cell::new(None),
            }));
            local_of.insert(global, local);
        }
        let conc = plan.connect_concurrency.max(1);
        Ok(Worker {
            target,
            clock: Clock::new(),
            out,
            users,
            local_of,
            counters: RefCell::new(Counters::default()),
            hists: RefCell::new(Hists {
                connect: histo::new_hist(),
                reconnect: histo::new_hist(),
                traffic: TrafficStats::new(),
            }),
            errors: RefCell::new(HashMap::new()),
            connect_sem: Semaphore::new(conc),
            stopping: Cell::new(false),
            outstanding: Cell::new(0),
            dispatch_done: Cell::new(true),
            phase: Cell::new(0),
            sabotage_pending: Cell::new(plan.sabotage_duplicate_send && plan.index == 0),
            plan,
        })
    }

    fn send_progress(&self) {
        let p = self.counters.borrow().progress;
        let _ = self.out.send(FromWorker::Progress(p));
    }

    fn note_error(&self, e: &TargetError) {
        let mut msg = e.to_string();
        if msg.len() > 160 {
            let mut cut = 160;
            while !msg.is_char_boundary(cut) {
                cut -= 1;
            }
            msg.truncate(cut);
        }
        let mut errors = self.errors.borrow_mut();
        if !errors.contains_key(&msg) && errors.len() >= MAX_ERROR_KINDS {
            msg = "(other errors)".into();
        }
        *errors.entry(msg).or_insert(0) += 1;
    }

    fn error_list(&self) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = self
            .errors
            .borrow()
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v
    }

    fn start_connecting(self: &Rc<Self>, start_unix_ns: u64) {
        let start = self.clock.instant(start_unix_ns);
        let rate = self.plan.connect_rate;
        for u in &self.users {
            // The global ramp: user i's slot is i / rate after the start, whichever worker it
            // belongs to, so W workers together ramp at the requested rate.
            let offset = if rate > 0.0 && rate.is_finite() {
                Duration::from_secs_f64(u.global as f64 / rate)
            } else {
                Duration::ZERO
            };
            tokio::task::spawn_local(connection_task(self.clone(), u.clone(), start + offset));
            tokio::task::spawn_local(sender_task(self.clone(), u.clone()));
        }
        if self.users.is_empty() {
            self.connect_settled();
        }
    }

    /// Called once per user when its initial connection is up or given up.
    fn connect_settled(&self) {
        let done = {
            let mut c = self.counters.borrow_mut();
            c.progress.connect_settled += 1;
            c.progress.connect_settled >= self.users.len() as u64
        };
        if done {
            let c = self.counters.borrow();
            let result = ConnectResult {
                users: self.users.len() as u64,
                succeeded: c.connect_succeeded,
                failed_attempts: c.progress.connect_failed_attempts,
                users_failed: c.users_failed,
                connect_hist: histo::encode(&self.hists.borrow().connect).unwrap_or_default(),
                errors: self.error_list(),
            };
            drop(c);
            self.send_progress();
            let _ = self.out.send(FromWorker::Connected(result));
        }
    }

    fn on_inbound(&self, u: &UserRt, m: Inbound) {
        if let Some(reason) = &m.undecryptable {
            let mut ledger = u.ledger.borrow_mut();
            ledger.counts.arrivals += 1;
            ledger.counts.undecryptable += 1;
            drop(ledger);
            self.hists.borrow_mut().traffic.undecryptable();
            self.note_error(&TargetError::Receive(format!("undecryptable: {reason}")));
            return;
        }
        if m.late_key {
            u.ledger.borrow_mut().counts.late_keys += 1;
        }
        let arrival = u
            .ledger
            .borrow_mut()
            .on_message(m.conversation, m.seq, &m.payload);
        match arrival {
            Arrival::New(h) => {
                let arrived = self.clock.unix_ns(m.arrived);
                let us = arrived.saturating_sub(h.scheduled_unix_ns) / 1_000;
                self.hists
                    .borrow_mut()
                    .traffic
                    .delivered(h.scheduled_unix_ns, us, m.late_key);
                self.counters.borrow_mut().progress.delivered += 1;
            }
            Arrival::Duplicate => self.counters.borrow_mut().progress.duplicates += 1,
            _ => {}
        }
    }

    fn send_settled(&self) {
        let left = self.outstanding.get().saturating_sub(1);
        self.outstanding.set(left);
        self.maybe_sends_done();
    }

    fn maybe_sends_done(&self) {
        if self.dispatch_done.get() && self.outstanding.get() == 0 {
            // Only once per phase.
            self.dispatch_done.set(false);
            let mut per_conv: HashMap<u32, u64> = HashMap::new();
            for u in &self.users {
                for (&c, e) in u.sent.borrow().iter() {
                    *per_conv.entry(c).or_insert(0) += e.acked.len();
                }
            }
            let mut acked_per_conversation: Vec<(u32, u64)> = per_conv.into_iter().collect();
            acked_per_conversation.sort_unstable();
            let send_failed = self.counters.borrow().progress.send_failed;
            self.send_progress();
            let _ = self.out.send(FromWorker::SendsDone {
                phase: self.phase.get(),
                acked_per_conversation,
                send_failed,
            });
        }
    }

    fn end_phase(&self, phase: u32) {
        let (delivery_hist, send_ack_hist) = self.hists.borrow_mut().traffic.take_phase();
        let stats = PhaseStats {
            phase,
            delivery_hist,
            send_ack_hist,
        };
        let _ = self.out.send(FromWorker::PhaseStats(stats));
    }

    fn drop_connections(&self, users: &[u32]) {
        for g in users {
            let Some(&local) = self.local_of.get(g) else {
                continue;
            };
            let u = self.users[local].clone();
            let current = u.sender.borrow().clone();
            match current {
                Some(s) => {
                    u.dropped_at.set(Some(Instant::now()));
                    self.counters.borrow_mut().dropped += 1;
                    tokio::task::spawn_local(async move { s.close().await });
                }
                None => self.counters.borrow_mut().drop_skipped += 1,
            }
        }
    }

    fn sent_rows(&self) -> Vec<SentRow> {
        let mut rows = Vec::new();
        for u in &self.users {
            for (&c, e) in u.sent.borrow().iter() {
                rows.push(SentRow {
                    conversation: c,
                    sender: u.global,
                    acked: e.acked.clone(),
                    failed: e.failed.clone(),
                    seqs: e.seqs.clone(),
                });
            }
        }
        rows
    }

    fn account(&self, rows: Vec<SentRow>) -> FinalResult {
        let mut table = SentTable::default();
        table.merge_rows(rows);
        let index = SentIndex::new(&table);
        let mut tally = Tally::default();
        let mut counts = ArrivalCounts::default();
        let mut samples: Vec<LossSample> = Vec::new();
        for u in &self.users {
            let ledger = u.ledger.borrow();
            tally.add(&account(&ledger, &index, &mut samples, LOSS_SAMPLES));
            counts.add(&ledger.counts);
        }
        let c = self.counters.borrow();
        let hs = self.hists.borrow();
        let (delivery_hist, send_ack_hist) = hs.traffic.measured();
        FinalResult {
            counts,
            tally,
            loss_samples: samples,
            delivery_hist,
            send_ack_hist,
            connect_hist: histo::encode(&hs.connect).unwrap_or_default(),
            reconnect_hist: histo::encode(&hs.reconnect).unwrap_or_default(),
            sent: c.progress.sent,
            acked: c.progress.acked,
            send_failed: c.progress.send_failed,
            send_errors: c.send_errors,
            ack_duplicates: c.ack_duplicates,
            disconnects: c.progress.disconnects,
            reconnects: c.reconnects,
            reconnect_failed_attempts: c.reconnect_failed_attempts,
            dropped: c.dropped,
            drop_skipped: c.drop_skipped,
            errors: self.error_list(),
            warmup: hs.traffic.warmup_result(),
        }
    }

    async fn shutdown(&self) {
        self.stopping.set(true);
        let mut closing = Vec::new();
        for u in &self.users {
            u.queue_wake.notify_one();
            u.conn_changed.notify_one();
            if let Some(s) = u.sender.borrow().clone() {
                closing.push(tokio::task::spawn_local(async move { s.close().await }));
            }
        }
        let _ = tokio::time::timeout(CLOSE_GRACE, futures_util::future::join_all(closing)).await;
    }
}

/// Connects the user at `first_at`, then receives until the run stops, reconnecting whenever
/// the connection ends.
async fn connection_task(w: Rc<Worker>, u: Rc<UserRt>, first_at: Instant) {
    tokio::time::sleep_until(first_at.into()).await;
    let mut initial = true;
    let mut attempt: u32 = 0;
    while !w.stopping.get() {
        let permit = if initial {
            // Bounded in-flight attempts during the ramp; the semaphore is never closed.
            w.connect_sem.acquire().await.ok()
        } else {
            None
        };
        let started = Instant::now();
        let result = w.target.connect(&u.spec, u.source).await;
        drop(permit);
        let connected = match result {
            Ok(c) => c,
            Err(e) => {
                attempt += 1;
                w.note_error(&e);
                if initial {
                    w.counters.borrow_mut().progress.connect_failed_attempts += 1;
                    if attempt >= w.plan.connect_attempts.max(1) {
                        w.counters.borrow_mut().users_failed += 1;
                        w.connect_settled();
                        return;
                    }
                } else {
                    w.counters.borrow_mut().reconnect_failed_attempts += 1;
                }
                // Back off (100 ms doubling, at most 2 s, with jitter: after a server restart
                // every user reconnects at once) so a refusing server is not hammered.
                let backoff = Duration::from_millis(100 * (1u64 << attempt.min(5)))
                    .min(Duration::from_secs(2));
                let jitter = 0.5 + rand::random::<f64>() * 0.5;
                tokio::time::sleep(backoff.mul_f64(jitter)).await;
                continue;
            }
        };
        attempt = 0;
        let took = started.elapsed();
        {
            let mut hs = w.hists.borrow_mut();
            let mut c = w.counters.borrow_mut();
            c.progress.connected += 1;
            if initial {
                histo::record_us(&mut hs.connect, took.as_micros() as u64);
                c.connect_succeeded += 1;
            } else {
                c.reconnects += 1;
                if let Some(at) = u.dropped_at.take() {
                    // Closed → connected with the replay received (Tern: SyncComplete).
                    histo::record_us(&mut hs.reconnect, at.elapsed().as_micros() as u64);
                }
            }
        }
        if initial {
            initial = false;
            w.connect_settled();
        }
        let mut inbound = connected.inbound;
        *u.sender.borrow_mut() = Some(Rc::new(connected.sender));
        u.conn_changed.notify_one();
        while let Some(m) = inbound.recv().await {
            w.on_inbound(&u, m);
        }
        u.sender.borrow_mut().take();
        if u.dropped_at.get().is_some() {
            u.dropped_at.set(Some(Instant::now()));
        }
        let mut c = w.counters.borrow_mut();
        c.progress.connected = c.progress.connected.saturating_sub(1);
        if !w.stopping.get() && u.dropped_at.get().is_none() {
            c.progress.disconnects += 1;
        }
    }
}

/// Sends the user's scheduled messages in order.
async fn sender_task(w: Rc<Worker>, u: Rc<UserRt>) {
    loop {
        let job = loop {
            if w.stopping.get() {
                return;
            }
            if let Some(j) = u.queue.borrow_mut().pop_front() {
                break j;
            }
            u.queue_wake.notified().await;
        };
        send_one(&w, &u, job).await;
        w.send_settled();
    }
}

async fn send_one(w: &Worker, u: &UserRt, job: Job) {
    let counter = {
        let mut counters = u.counters.borrow_mut();
        let c = counters.entry(job.conversation).or_insert(0);
        let v = *c;
        *c += 1;
        v
    };
    let header = Header {
        run: w.plan.run_id,
        sender: u.global,
        conversation: job.conversation,
        counter,
        scheduled_unix_ns: job.scheduled_unix_ns,
    };
    let payload = header.encode(w.plan.payload_bytes.max(HEADER_LEN));
    let Some(conv_ref) = u.refs.get(&job.conversation) else {
        // The schedule only picks the user's own conversations; count it as failed if not.
        give_up_send(w, u, &job, counter);
        return;
    };
    let give_up = tokio::time::Instant::from_std(job.give_up);
    loop {
        if w.stopping.get() || Instant::now() >= job.give_up {
            break;
        }
        let current = u.sender.borrow().clone();
        let Some(sender) = current else {
            // Not connected (yet, or reconnecting): wait for a connection or the deadline.
            tokio::select! {
                () = u.conn_changed.notified() => {}
                () = tokio::time::sleep_until(give_up) => {}
            }
            continue;
        };
        let started = Instant::now();
        match tokio::time::timeout_at(give_up, sender.send(conv_ref, payload.clone())).await {
            Ok(Ok(outcome)) => {
                let us = started.elapsed().as_micros() as u64;
                w.hists
                    .borrow_mut()
                    .traffic
                    .acked(job.warmup, counter == 0, us);
                {
                    let mut sent = u.sent.borrow_mut();
                    let entry = sent.entry(job.conversation).or_default();
                    entry.acked.insert(counter);
                    if let Some(seq) = outcome.seq {
                        entry.seqs.push((counter, seq));
                    }
                }
                {
                    let mut c = w.counters.borrow_mut();
                    c.progress.acked += 1;
                    if outcome.duplicate {
                        c.ack_duplicates += 1;
                    }
                }
                if w.sabotage_pending.replace(false) {
                    sabotage_duplicate(w, &sender, conv_ref, &header, payload).await;
                }
                return;
            }
            Ok(Err(e)) => {
                w.note_error(&e);
                w.counters.borrow_mut().send_errors += 1;
                // Usually the connection is going away; give the reconnection a moment.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(_) => break,
        }
    }
    give_up_send(w, u, &job, counter);
}

/// Records a send that was never acknowledged (its arrival is allowed but not expected).
fn give_up_send(w: &Worker, u: &UserRt, job: &Job, counter: u64) {
    u.sent
        .borrow_mut()
        .entry(job.conversation)
        .or_default()
        .failed
        .insert(counter);
    w.counters.borrow_mut().progress.send_failed += 1;
    w.hists.borrow_mut().traffic.send_failed(job.warmup);
}

/// `--debug-sabotage duplicate-send` (test only): stores an acknowledged message a second time
/// under another idempotency key, so the receivers get it under two seqs and the history holds
/// it twice; the run must then fail. Proves the duplicate checks work end to end.
async fn sabotage_duplicate(
    w: &Worker,
    sender: &Sender,
    conv_ref: &ConversationRef,
    header: &Header,
    payload: Vec<u8>,
) {
    let key = header.client_msg_id() ^ (1u128 << 127);
    match sender.send_with_key(conv_ref, payload, key).await {
        Ok(o) => tracing::warn!(
            sender = header.sender,
            conversation = header.conversation,
            counter = header.counter,
            seq = ?o.seq,
            "debug sabotage: stored one acknowledged message a second time"
        ),
        Err(e) => w.note_error(&e),
    }
}

/// Walks the global schedule and queues this worker's sends at their times; performs the drop
/// of the reconnect scenario at its time.
async fn dispatch(w: Rc<Worker>, spec: TrafficSpec) {
    let start = w.clock.instant(spec.start_unix_ns);
    let give_up = w.clock.instant(spec.give_up_unix_ns);
    let mut drop = spec.drop.clone();
    let eligible = &w.plan.eligible;
    for e in schedule::iter(spec.schedule, eligible.len()) {
        if let Some(d) = &drop
            && e.at_ns >= d.at_ns
        {
            tokio::time::sleep_until((start + Duration::from_nanos(d.at_ns)).into()).await;
            w.drop_connections(&d.users);
            drop = None;
        }
        let (user, conversation) = eligible[e.pick];
        let Some(&local) = w.local_of.get(&user) else {
            continue;
        };
        let at = start + Duration::from_nanos(e.at_ns);
        if at > Instant::now() {
            tokio::time::sleep_until(at.into()).await;
        }
        if w.stopping.get() {
            break;
        }
        let u = &w.users[local];
        u.queue.borrow_mut().push_back(Job {
            conversation,
            scheduled_unix_ns: spec.start_unix_ns + e.at_ns,
            give_up,
            warmup: spec.warmup,
        });
        w.outstanding.set(w.outstanding.get() + 1);
        w.counters.borrow_mut().progress.sent += 1;
        w.hists.borrow_mut().traffic.dispatched(spec.warmup);
        u.queue_wake.notify_one();
    }
    if let Some(d) = drop {
        tokio::time::sleep_until((start + Duration::from_nanos(d.at_ns)).into()).await;
        w.drop_connections(&d.users);
    }
    // The phase lasts its full duration even if this worker's last send came earlier.
    tokio::time::sleep_until((start + Duration::from_nanos(spec.schedule.duration_ns)).into())
        .await;
    w.dispatch_done.set(true);
    w.maybe_sends_done();
}
