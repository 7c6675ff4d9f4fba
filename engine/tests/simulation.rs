//! Deterministic simulation of the sans-IO engine core.
//!
//! One seed fixes everything: the users, devices and conversations, the engine limits, the fault
//! rates, and the schedule of every step. The world around the real [`EngineCore`] is simulated:
//!
//! - a **durable store** (conversations, members, messages by seq, the client-id index, cursors)
//!   that executes the core's `Load`/`Lookup`/`Commit` actions the way `driver.rs` does, except
//!   that each operation runs at a moment the schedule picks (so independent operations complete
//!   in any order) and may fail: a load fails, a commit fails before writing, or a commit fails
//!   *after* writing (fsync reported an error but the batch reached the disk);
//! - the **driver**: the command queue (FIFO from all sessions), the results queue (drained first,
//!   as the real `biased` select does), and each connection's bounded frame queue, whose overflow
//!   closes the connection as a slow consumer;
//! - **sessions** (`gateway/src/session.rs`): register first, then replay everything after the
//!   cursor from the durable store, then forward live frames, dropping `Deliver`s with a seq at or
//!   below what was already sent; `Ack`s are clamped to what was sent;
//! - **devices** (the SDK): send with client message ids, retry unacked sends with the same id
//!   after every reconnect and after retryable errors, send deliberate duplicates, de-duplicate by
//!   seq, hold back out-of-order messages, detect and fill gaps from history, acknowledge;
//! - **faults**: network disconnects, half-open connections whose session keeps running without a
//!   reader, slow readers, and store crashes (in-flight commits applied completely or dropped,
//!   the core, the queues and every connection lost, a fresh core started on the durable state).
//!
//! Invariants are checked after every step (see `Sim::check_step` and the checks at the points
//! where state changes); the final phase stops all faults, reconnects every device and runs until
//! quiescent, then checks convergence.
//!
//! `TERN_SIM_SEEDS=n` runs seeds `0..n` (default 1000), `TERN_SIM_SEED=s` runs exactly one seed
//! with a trace of the last events on failure, `TERN_SIM_STEPS=n` sets the chaos steps per seed
//! (default: 200..=1500 chosen by the seed).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tern_engine::core::{
    Action, BatchId, ConnId, ConversationSnapshot, EngineCore, Input, SendRequest,
};
use tern_engine::limits::EngineLimits;
use tern_engine::store::CommitBatch;
use tern_wire::ids::{ConversationId, DeviceId, MessageId, UserId};
use tern_wire::msg::{ErrorCode, Message, ServerMessage};

const REPRO: &str = "cargo test -p tern-engine --test simulation";

// ---------------------------------------------------------------------------------------------
// Randomness: SplitMix64, so a seed means the same schedule forever (no dependency on the
// stream of a particular `rand` version).

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed ^ 0x7E57_5EED_0000_0000)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        assert!(n > 0);
        (self.next_u64() % n as u64) as usize
    }

    /// Inclusive range.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64) * (1.0 / (1u64 << 53) as f64) < p
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

/// FNV-1a over 64-bit words: the trace hash.
fn fnv(mut h: u64, words: &[u64]) -> u64 {
    for w in words {
        for b in w.to_le_bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01B3);
        }
    }
    h
}

// ---------------------------------------------------------------------------------------------
// The durable store model.

#[derive(Debug, Clone)]
struct DurableConv {
    members: Vec<UserId>,
    /// `messages[i]` has seq `i + 1`.
    messages: Vec<Message>,
    by_client: BTreeMap<(UserId, u128), u64>,
}

/// What survives a crash.
#[derive(Debug, Clone, Default)]
struct Durable {
    convs: BTreeMap<ConversationId, DurableConv>,
    cursors: BTreeMap<(DeviceId, ConversationId), u64>,
}

impl Durable {
    fn message(&self, c: ConversationId, seq: u64) -> Option<&Message> {
        let i = (seq as usize).checked_sub(1)?;
        self.convs.get(&c)?.messages.get(i)
    }

    fn last_seq(&self, c: ConversationId) -> u64 {
        self.convs.get(&c).map_or(0, |v| v.messages.len() as u64)
    }

    fn snapshot(
        &self,
        c: ConversationId,
        landed_from: Option<u64>,
    ) -> Option<ConversationSnapshot> {
        self.convs.get(&c).map(|v| ConversationSnapshot {
            members: v.members.clone(),
            last_seq: v.messages.len() as u64,
            last_timestamp_ms: v.messages.last().map_or(0, |m| m.timestamp_ms),
            landed: landed_from.map_or_else(Vec::new, |from| {
                v.messages
                    .iter()
                    .filter(|m| m.seq >= from)
                    .cloned()
                    .collect()
            }),
        })
    }

    fn by_client_id(&self, c: ConversationId, sender: UserId, cmid: u128) -> Option<Message> {
        let conv = self.convs.get(&c)?;
        let seq = conv.by_client.get(&(sender, cmid))?;
        conv.messages.get(*seq as usize - 1).cloned()
    }

    /// Messages with `seq > after`, ascending (resume replay and gap filling).
    fn after(&self, c: ConversationId, after: u64, before: Option<u64>) -> Vec<Message> {
        let Some(conv) = self.convs.get(&c) else {
            return Vec::new();
        };
        let end = before.map_or(conv.messages.len(), |b| {
            (b as usize - 1).min(conv.messages.len())
        });
        let start = (after as usize).min(end);
        conv.messages[start..end].to_vec()
    }

    fn cursor(&self, d: DeviceId, c: ConversationId) -> u64 {
        self.cursors.get(&(d, c)).copied().unwrap_or(0)
    }

    /// Applies one batch atomically, refusing anything a correct sequencer never produces.
    fn apply(&mut self, batch: &CommitBatch) -> Result<(), String> {
        // Validate everything first: a batch is applied completely or not at all.
        let mut next: BTreeMap<ConversationId, u64> = BTreeMap::new();
        let mut keys: BTreeSet<(ConversationId, UserId, u128)> = BTreeSet::new();
        for m in &batch.messages {
            let Some(conv) = self.convs.get(&m.conversation) else {
                return Err(format!(
                    "commit into unknown conversation {:?}",
                    m.conversation
                ));
            };
            let expected = next
                .entry(m.conversation)
                .or_insert(conv.messages.len() as u64 + 1);
            if m.seq != *expected {
                return Err(format!(
                    "commit of {:?} seq {} but the store expects seq {} (gap or overwrite)",
                    m.conversation, m.seq, expected
                ));
            }
            *expected += 1;
            if !conv.members.contains(&m.sender_user) {
                return Err(format!(
                    "commit of a message by non-member {:?}",
                    m.sender_user
                ));
            }
            let key = (m.sender_user, m.client_msg_id);
            if let Some(seq) = conv.by_client.get(&key) {
                return Err(format!(
                    "duplicate: {:?} client id {} already stored as seq {}, committed again as seq {}",
                    m.conversation, m.client_msg_id, seq, m.seq
                ));
            }
            if !keys.insert((m.conversation, key.0, key.1)) {
                return Err(format!(
                    "duplicate client id {} within one batch",
                    m.client_msg_id
                ));
            }
        }
        for m in &batch.messages {
            let conv = self.convs.get_mut(&m.conversation).expect("validated");
            conv.by_client
                .insert((m.sender_user, m.client_msg_id), m.seq);
            conv.messages.push(m.clone());
        }
        for c in &batch.cursors {
            let v = self.cursors.entry((c.device, c.conversation)).or_insert(0);
            *v = (*v).max(c.seq);
        }
        Ok(())
    }
}

/// What a `SendAck` promised: checked against the durable store after every crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AckRecord {
    sender: UserId,
    client_msg_id: u128,
    message_id: MessageId,
    timestamp_ms: u64,
}

/// Invariants over durable state alone: gapless seqs, no client id stored twice, every
/// acknowledged message present with the acknowledged identity, cursors within the stored range.
fn check_durable(
    durable: &Durable,
    acked: &BTreeMap<(ConversationId, u64), AckRecord>,
) -> Result<(), String> {
    for (c, conv) in &durable.convs {
        let mut seen = BTreeMap::new();
        for (i, m) in conv.messages.iter().enumerate() {
            if m.seq != i as u64 + 1 || m.conversation != *c {
                return Err(format!(
                    "durable {c:?}: position {} holds seq {}",
                    i + 1,
                    m.seq
                ));
            }
            if let Some(first) = seen.insert((m.sender_user, m.client_msg_id), m.seq) {
                return Err(format!(
                    "durable {c:?}: client id {} of {:?} stored twice (seq {first} and {})",
                    m.client_msg_id, m.sender_user, m.seq
                ));
            }
        }
        if seen != conv.by_client {
            return Err(format!(
                "durable {c:?}: client-id index disagrees with messages"
            ));
        }
    }
    for ((c, seq), rec) in acked {
        let Some(m) = durable.message(*c, *seq) else {
            return Err(format!(
                "acknowledged message {c:?} seq {seq} is not durable (lost)"
            ));
        };
        let got = AckRecord {
            sender: m.sender_user,
            client_msg_id: m.client_msg_id,
            message_id: m.message_id,
            timestamp_ms: m.timestamp_ms,
        };
        if got != *rec {
            return Err(format!(
                "acknowledged message {c:?} seq {seq} changed: acked {rec:?}, stored {got:?}"
            ));
        }
    }
    for ((d, c), seq) in &durable.cursors {
        if *seq > durable.last_seq(*c) {
            return Err(format!(
                "cursor of {d:?} in {c:?} at {seq}, beyond the last seq"
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The driver's view: pending store operations and queues.

#[derive(Debug, Clone)]
enum Op {
    Load(ConversationId, Option<u64>),
    Lookup(ConversationId, UserId, u128),
    Commit(BatchId, CommitBatch),
}

enum Command {
    Register {
        conn: ConnId,
        user: UserId,
        device: DeviceId,
    },
    Input(Input),
}

/// One device session in the gateway.
struct Session {
    device: usize,
    /// The driver's bounded frame queue for this connection.
    queue: VecDeque<Arc<ServerMessage>>,
    /// The engine has processed the registration.
    registered: bool,
    /// Cursors the device sent in Hello (`None`: the server's stored cursors are used).
    hello: Option<BTreeMap<ConversationId, u64>>,
    /// Conversations still to replay, with the seq to replay after; `None` before replay starts.
    replay: Option<Vec<(ConversationId, u64)>>,
    live: bool,
    /// Highest seq sent to the device per conversation.
    delivered: BTreeMap<ConversationId, u64>,
    /// The engine closed the connection (slow consumer).
    closing: Option<ErrorCode>,
    /// The device is gone but the session has not noticed (half-open connection).
    zombie: bool,
}

// ---------------------------------------------------------------------------------------------
// Devices (the SDK model).

#[derive(Debug, Clone)]
struct Intent {
    conversation: ConversationId,
    client_msg_id: u128,
    payload: Vec<u8>,
    seq: Option<u64>,
    needs_send: bool,
}

#[derive(Debug, Default)]
struct ClientConv {
    /// Everything up to here was surfaced (or is our own send).
    cursor: u64,
    /// Held-back seqs above `cursor + 1`.
    buffer: BTreeSet<u64>,
    /// Cursor last acknowledged to the server.
    acked: u64,
}

struct Device {
    id: DeviceId,
    user: UserId,
    convs: Vec<ConversationId>,
    conn: Option<ConnId>,
    /// SyncComplete seen on `conn`.
    live: bool,
    slow: bool,
    sync: BTreeMap<ConversationId, ClientConv>,
    intents: Vec<Intent>,
    by_key: BTreeMap<(ConversationId, u128), usize>,
    /// In-flight requests on the current connection.
    requests: BTreeMap<u64, usize>,
    next_request: u64,
    next_cmid: u64,
}

impl Device {
    fn has_gap(&self) -> bool {
        self.sync.values().any(|c| !c.buffer.is_empty())
    }
    fn ack_due(&self) -> bool {
        self.sync.values().any(|c| c.cursor > c.acked)
    }
}

#[derive(Debug, Clone)]
struct Rates {
    crash: f64,
    load_fail: f64,
    commit_fail: f64,
    commit_ambiguous: f64,
    disconnect: u32,
    zombie: f64,
    slow_toggle: u32,
    dup_send: u32,
    omit_hello_cursors: f64,
}

#[derive(Debug, Default, Clone)]
struct Stats {
    steps: u64,
    crashes: u64,
    commits: u64,
    commit_failures: u64,
    ambiguous_commits: u64,
    crash_applied: u64,
    crash_dropped: u64,
    load_failures: u64,
    lookups: u64,
    messages: u64,
    sends: u64,
    duplicate_acks: u64,
    client_dedupes: u64,
    gaps_filled: u64,
    slow_consumer_closes: u64,
    zombies: u64,
    disconnects: u64,
    retryable_errors: u64,
    quiesce_steps: u64,
    receipts: u64,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        self.steps += o.steps;
        self.crashes += o.crashes;
        self.commits += o.commits;
        self.commit_failures += o.commit_failures;
        self.ambiguous_commits += o.ambiguous_commits;
        self.crash_applied += o.crash_applied;
        self.crash_dropped += o.crash_dropped;
        self.load_failures += o.load_failures;
        self.lookups += o.lookups;
        self.messages += o.messages;
        self.sends += o.sends;
        self.duplicate_acks += o.duplicate_acks;
        self.client_dedupes += o.client_dedupes;
        self.gaps_filled += o.gaps_filled;
        self.slow_consumer_closes += o.slow_consumer_closes;
        self.zombies += o.zombies;
        self.disconnects += o.disconnects;
        self.retryable_errors += o.retryable_errors;
        self.quiesce_steps += o.quiesce_steps;
        self.receipts += o.receipts;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Act {
    Engine,
    ExecOp,
    Replay,
    Drain,
    SessionEnd,
    Reap,
    Connect,
    SendNew,
    SendDup,
    Flush,
    AckCursors,
    GapFill,
    Disconnect,
    ToggleSlow,
}

// ---------------------------------------------------------------------------------------------
// The world.

struct Sim {
    /// Odd seeds leave connected devices connected through the quiet phase: they must converge
    /// from live traffic alone (e.g. a failed commit that reached the disk is delivered when
    /// the conversation reloads), not only through a reconnect's replay.
    keep_online: bool,
    rng: Rng,
    trace: u64,
    log: Option<VecDeque<String>>,
    step: u64,
    now_ms: u64,
    limits: EngineLimits,
    queue_cap: usize,
    rates: Rates,
    faults: bool,
    core: EngineCore,
    durable: Durable,
    devices: Vec<Device>,
    ops: Vec<Op>,
    results: VecDeque<Input>,
    commands: VecDeque<Command>,
    sinks: BTreeSet<ConnId>,
    sessions: BTreeMap<ConnId, Session>,
    next_conn: ConnId,
    /// The batch the core has handed out and not yet heard back about.
    commit_outstanding: Option<BatchId>,
    acked: BTreeMap<(ConversationId, u64), AckRecord>,
    /// Seqs stored without a `Committed { ok: true }` reaching a core: nobody was told live.
    silent: BTreeSet<(ConversationId, u64)>,
    /// The highest seq any device of a user acknowledged per conversation: a receipt may never
    /// claim more.
    user_acks: BTreeMap<(ConversationId, UserId), u64>,
    stats: Stats,
}

type SimResult = Result<(), String>;

impl Sim {
    fn new(seed: u64, verbose: bool) -> Sim {
        let mut rng = Rng::new(seed);
        let queued = rng.range(2, 8) as usize;
        let limits = EngineLimits {
            max_queued_sends_per_conversation: queued,
            dedupe_window: queued + rng.range(1, 8) as usize,
            ..EngineLimits::default()
        };
        let queue_cap = rng.range(4, 32) as usize;
        let stormy = rng.chance(0.5);
        let f = if stormy { 2.0 } else { 1.0 };
        let rates = Rates {
            crash: 0.002 * f,
            load_fail: 0.05 * f,
            commit_fail: 0.04 * f,
            commit_ambiguous: 0.03 * f,
            disconnect: (10.0 * f) as u32,
            zombie: 0.3,
            slow_toggle: (10.0 * f) as u32,
            dup_send: 20,
            omit_hello_cursors: 0.3,
        };
        // Users, devices, conversations.
        let n_users = rng.range(3, 6) as usize;
        let users: Vec<UserId> = (1..=n_users as u128).map(UserId::from_u128).collect();
        let mut durable = Durable::default();
        let mut conv_members: Vec<(ConversationId, Vec<UserId>)> = Vec::new();
        let n_direct = rng.range(1, 3);
        let mut pairs = BTreeSet::new();
        for _ in 0..n_direct {
            let a = rng.below(n_users);
            let b = (a + 1 + rng.below(n_users - 1)) % n_users;
            if pairs.insert((a.min(b), a.max(b))) {
                conv_members.push((
                    ConversationId::from_u128(100 + conv_members.len() as u128),
                    vec![users[a.min(b)], users[a.max(b)]],
                ));
            }
        }
        for _ in 0..rng.range(1, 2) {
            let size = rng.range(3, n_users as u64) as usize;
            let mut members: Vec<UserId> = users.clone();
            while members.len() > size {
                members.remove(rng.below(members.len()));
            }
            conv_members.push((
                ConversationId::from_u128(100 + conv_members.len() as u128),
                members,
            ));
        }
        for (c, members) in &conv_members {
            durable.convs.insert(
                *c,
                DurableConv {
                    members: members.clone(),
                    messages: Vec::new(),
                    by_client: BTreeMap::new(),
                },
            );
        }
        let mut devices = Vec::new();
        for u in &users {
            let n = if rng.chance(0.4) { 2 } else { 1 };
            for _ in 0..n {
                let convs: Vec<ConversationId> = conv_members
                    .iter()
                    .filter(|(_, m)| m.contains(u))
                    .map(|(c, _)| *c)
                    .collect();
                devices.push(Device {
                    id: DeviceId::from_u128(1000 + devices.len() as u128),
                    user: *u,
                    sync: convs.iter().map(|c| (*c, ClientConv::default())).collect(),
                    convs,
                    conn: None,
                    live: false,
                    slow: false,
                    intents: Vec::new(),
                    by_key: BTreeMap::new(),
                    requests: BTreeMap::new(),
                    next_request: 1,
                    next_cmid: 1,
                });
            }
        }
        let core_seed = rng.next_u64();
        Sim {
            keep_online: seed % 2 == 1
                || std::env::var("TERN_SIM_KEEP_ONLINE").is_ok_and(|v| v == "1"),
            rng,
            trace: 0xCBF2_9CE4_8422_2325,
            log: verbose.then(VecDeque::new),
            step: 0,
            now_ms: 1_700_000_000_000,
            core: EngineCore::new(limits.clone(), core_seed).expect("limits are valid"),
            limits,
            queue_cap,
            rates,
            faults: true,
            durable,
            devices,
            ops: Vec::new(),
            results: VecDeque::new(),
            commands: VecDeque::new(),
            sinks: BTreeSet::new(),
            sessions: BTreeMap::new(),
            next_conn: 1,
            commit_outstanding: None,
            acked: BTreeMap::new(),
            silent: BTreeSet::new(),
            user_acks: BTreeMap::new(),
            stats: Stats::default(),
        }
    }

    fn t(&mut self, words: &[u64]) {
        self.trace = fnv(self.trace, words);
    }

    fn log(&mut self, f: impl FnOnce() -> String) {
        if let Some(log) = &mut self.log {
            if log.len() >= 400 {
                log.pop_front();
            }
            log.push_back(format!("[{}] {}", self.step, f()));
        }
    }

    // ---- the driver ----

    fn engine_step(&mut self) -> SimResult {
        // The driver drains store results first (`biased` select), but a command may already be
        // in progress when a result arrives.
        let command_first = !self.commands.is_empty() && self.rng.chance(0.1);
        if !self.results.is_empty() && !command_first {
            let input = self.results.pop_front().expect("non-empty");
            return self.drive(input);
        }
        match self.commands.pop_front() {
            Some(Command::Register { conn, user, device }) => {
                self.sinks.insert(conn);
                if let Some(s) = self.sessions.get_mut(&conn) {
                    s.registered = true;
                }
                self.drive(Input::Connected {
                    conn,
                    user,
                    device,
                    token_hash: [0; 32],
                })
            }
            Some(Command::Input(input)) => {
                if let Input::Disconnected { conn } = &input {
                    self.sinks.remove(conn);
                }
                self.drive(input)
            }
            None => Ok(()),
        }
    }

    /// `Driver::step`: one input, then the follow-ups its actions produce.
    fn drive(&mut self, input: Input) -> SimResult {
        let mut stack = vec![input];
        while let Some(input) = stack.pop() {
            let sig = input_sig(&input);
            self.t(&sig);
            self.log(|| format!("input {}", brief_input(&input)));
            if let Input::Committed { batch, .. } = &input {
                if self.commit_outstanding != Some(*batch) {
                    return Err(format!("Committed for batch {batch} that is not in flight"));
                }
                self.commit_outstanding = None;
            }
            let actions = self.core.handle(input, self.now_ms);
            for action in actions {
                self.execute(action, &mut stack)?;
            }
        }
        Ok(())
    }

    fn execute(&mut self, action: Action, follow: &mut Vec<Input>) -> SimResult {
        let sig = action_sig(&action);
        self.t(&sig);
        self.log(|| format!("action {}", brief_action(&action)));
        match action {
            Action::Load {
                conversation,
                landed_from,
            } => self.ops.push(Op::Load(conversation, landed_from)),
            Action::Lookup {
                conversation,
                sender,
                client_msg_id,
            } => {
                self.stats.lookups += 1;
                self.ops
                    .push(Op::Lookup(conversation, sender, client_msg_id));
            }
            Action::Commit { batch, data } => {
                if let Some(b) = self.commit_outstanding {
                    return Err(format!("commit {batch} issued while {b} is in flight"));
                }
                self.commit_outstanding = Some(batch);
                self.ops.push(Op::Commit(batch, data));
            }
            Action::Deliver { conns, message } => {
                if let ServerMessage::Deliver { message: m } = &*message {
                    // Deliver only what is durable, exactly as stored.
                    match self.durable.message(m.conversation, m.seq) {
                        Some(stored) if stored == m => {}
                        Some(_) => {
                            return Err(format!(
                                "delivered {:?} seq {} differs from the stored message",
                                m.conversation, m.seq
                            ));
                        }
                        None => {
                            return Err(format!(
                                "delivered {:?} seq {} which is not durable",
                                m.conversation, m.seq
                            ));
                        }
                    }
                }
                for conn in conns {
                    self.push(conn, message.clone(), follow);
                }
            }
            Action::Reply { conn, message } => {
                if let ServerMessage::SendAck {
                    conversation,
                    client_msg_id,
                    seq,
                    message_id,
                    timestamp_ms,
                    ..
                } = &message
                {
                    let Some(m) = self.durable.message(*conversation, *seq) else {
                        return Err(format!(
                            "SendAck for {conversation:?} seq {seq} which is not durable"
                        ));
                    };
                    let rec = AckRecord {
                        sender: m.sender_user,
                        client_msg_id: *client_msg_id,
                        message_id: *message_id,
                        timestamp_ms: *timestamp_ms,
                    };
                    let stored = AckRecord {
                        sender: m.sender_user,
                        client_msg_id: m.client_msg_id,
                        message_id: m.message_id,
                        timestamp_ms: m.timestamp_ms,
                    };
                    if rec != stored {
                        return Err(format!(
                            "SendAck for {conversation:?} seq {seq} says {rec:?}, store has {stored:?}"
                        ));
                    }
                    if let Some(s) = self.sessions.get(&conn)
                        && self.devices[s.device].user != m.sender_user
                    {
                        return Err(format!("SendAck of someone else's message to conn {conn}"));
                    }
                    if let Some(prev) = self.acked.insert((*conversation, *seq), rec)
                        && prev != rec
                    {
                        return Err(format!(
                            "{conversation:?} seq {seq} acknowledged as {prev:?} and as {rec:?}"
                        ));
                    }
                }
                self.push(conn, Arc::new(message), follow);
            }
            Action::Close { conn, code, .. } => self.close(conn, code),
        }
        Ok(())
    }

    /// `Driver::push`: a full queue closes the connection as a slow consumer.
    fn push(&mut self, conn: ConnId, message: Arc<ServerMessage>, follow: &mut Vec<Input>) {
        if !self.sinks.contains(&conn) {
            return;
        }
        let Some(s) = self.sessions.get_mut(&conn) else {
            // The session ended: its receiver is gone.
            self.sinks.remove(&conn);
            follow.push(Input::Disconnected { conn });
            return;
        };
        if s.queue.len() >= self.queue_cap {
            self.stats.slow_consumer_closes += 1;
            self.close(conn, ErrorCode::SlowConsumer);
            follow.push(Input::Disconnected { conn });
        } else {
            s.queue.push_back(message);
        }
    }

    fn close(&mut self, conn: ConnId, code: ErrorCode) {
        if self.sinks.remove(&conn)
            && let Some(s) = self.sessions.get_mut(&conn)
        {
            s.closing = Some(code);
        }
    }

    fn exec_op(&mut self) -> SimResult {
        let i = self.rng.below(self.ops.len());
        let op = self.ops.remove(i);
        match op {
            Op::Load(c, landed_from) => {
                let input = if self.faults && self.rng.chance(self.rates.load_fail) {
                    self.stats.load_failures += 1;
                    Input::LoadFailed { conversation: c }
                } else {
                    Input::Loaded {
                        conversation: c,
                        snapshot: self.durable.snapshot(c, landed_from),
                    }
                };
                self.results.push_back(input);
            }
            Op::Lookup(c, sender, cmid) => {
                // The driver retries failed lookups until the store answers: only delay.
                self.results.push_back(Input::LookedUp {
                    conversation: c,
                    sender,
                    client_msg_id: cmid,
                    found: self.durable.by_client_id(c, sender, cmid),
                });
            }
            Op::Commit(batch, data) => {
                let roll = if self.faults {
                    self.rng.next_u64() as f64 / u64::MAX as f64
                } else {
                    1.0
                };
                let ok = if roll < self.rates.commit_fail {
                    self.stats.commit_failures += 1;
                    false
                } else if roll < self.rates.commit_fail + self.rates.commit_ambiguous {
                    // Written, but reported as failed (fsync error after the write).
                    self.stats.ambiguous_commits += 1;
                    self.durable.apply(&data)?;
                    for m in &data.messages {
                        self.silent.insert((m.conversation, m.seq));
                    }
                    self.stats.messages += data.messages.len() as u64;
                    false
                } else {
                    self.stats.commits += 1;
                    self.durable.apply(&data)?;
                    self.stats.messages += data.messages.len() as u64;
                    true
                };
                self.check_cursors(&data)?;
                self.t(&[77, batch, ok as u64]);
                self.results.push_back(Input::Committed { batch, ok });
            }
        }
        Ok(())
    }

    /// A stored cursor never passes what the device itself has taken.
    fn check_cursors(&self, data: &CommitBatch) -> SimResult {
        for c in &data.cursors {
            let stored = self.durable.cursor(c.device, c.conversation);
            let Some(d) = self.devices.iter().find(|d| d.id == c.device) else {
                return Err(format!("cursor of unknown device {:?}", c.device));
            };
            let Some(cc) = d.sync.get(&c.conversation) else {
                return Err(format!(
                    "cursor of {:?} for foreign conversation {:?}",
                    c.device, c.conversation
                ));
            };
            if stored > cc.cursor {
                return Err(format!(
                    "stored cursor {stored} of {:?} in {:?} is ahead of the device ({})",
                    c.device, c.conversation, cc.cursor
                ));
            }
        }
        Ok(())
    }

    /// The server process dies: in-flight commits land completely or not at all, everything
    /// volatile is lost, and a fresh core starts on the durable state.
    fn crash(&mut self) -> SimResult {
        self.stats.crashes += 1;
        self.log(|| "CRASH".into());
        for op in std::mem::take(&mut self.ops) {
            if let Op::Commit(_, data) = op {
                if self.rng.chance(0.5) {
                    self.stats.crash_applied += 1;
                    self.durable.apply(&data)?;
                    for m in &data.messages {
                        self.silent.insert((m.conversation, m.seq));
                    }
                    self.stats.messages += data.messages.len() as u64;
                } else {
                    self.stats.crash_dropped += 1;
                }
            }
        }
        self.results.clear();
        self.commands.clear();
        self.sinks.clear();
        self.commit_outstanding = None;
        let conns: Vec<ConnId> = self.sessions.keys().copied().collect();
        for conn in conns {
            let s = self.sessions.remove(&conn).expect("listed");
            if self.devices[s.device].conn == Some(conn) {
                self.client_closed(s.device);
            }
        }
        let seed = self.rng.next_u64();
        self.t(&[99, seed]);
        self.core = EngineCore::new(self.limits.clone(), seed).expect("limits are valid");
        check_durable(&self.durable, &self.acked)
    }

    // ---- sessions ----

    fn connect(&mut self, d: usize) {
        let conn = self.next_conn;
        self.next_conn += 1;
        let dev = &mut self.devices[d];
        dev.conn = Some(conn);
        dev.live = false;
        let hello = if self.rng.chance(self.rates.omit_hello_cursors) {
            None
        } else {
            Some(dev.sync.iter().map(|(c, s)| (*c, s.cursor)).collect())
        };
        self.t(&[10, d as u64, conn, hello.is_some() as u64]);
        self.log(|| format!("device {d} connects as conn {conn}"));
        self.sessions.insert(
            conn,
            Session {
                device: d,
                queue: VecDeque::new(),
                registered: false,
                hello,
                replay: None,
                live: false,
                delivered: BTreeMap::new(),
                closing: None,
                zombie: false,
            },
        );
        let dev = &self.devices[d];
        self.commands.push_back(Command::Register {
            conn,
            user: dev.user,
            device: dev.id,
        });
    }

    /// One conversation of the resume replay (or its start, or SyncComplete).
    fn replay_step(&mut self, conn: ConnId) -> SimResult {
        let s = self.sessions.get_mut(&conn).expect("chosen");
        let d = s.device;
        let dev = &self.devices[d];
        if s.replay.is_none() {
            let targets = dev
                .convs
                .iter()
                .map(|c| {
                    let after = match &s.hello {
                        Some(h) => h.get(c).copied().unwrap_or(0),
                        None => self.durable.cursor(dev.id, *c),
                    };
                    (*c, after)
                })
                .rev()
                .collect();
            s.replay = Some(targets);
            return Ok(());
        }
        let next = s.replay.as_mut().expect("started").pop();
        match next {
            Some((c, after)) => {
                let after = after.max(s.delivered.get(&c).copied().unwrap_or(0));
                let page = self.durable.after(c, after, None);
                let last = page.last().map_or(after, |m| m.seq);
                s.delivered.insert(c, last);
                self.t(&[20, conn, after, last]);
                for m in page {
                    self.write_to_client(conn, &ServerMessage::Deliver { message: m })?;
                }
            }
            None => {
                s.live = true;
                self.t(&[21, conn]);
                self.write_to_client(conn, &ServerMessage::SyncComplete)?;
            }
        }
        Ok(())
    }

    /// `Session::write_outbound` for up to a few queued frames.
    fn drain(&mut self, conn: ConnId) -> SimResult {
        let n = self.rng.range(1, 4);
        for _ in 0..n {
            let s = self.sessions.get_mut(&conn).expect("chosen");
            let Some(frame) = s.queue.pop_front() else {
                break;
            };
            if !write_filter(&mut s.delivered, &frame) {
                self.t(&[30, conn, 0]);
                continue;
            }
            self.t(&[30, conn, 1]);
            self.write_to_client(conn, &frame)?;
            if !self.sessions.contains_key(&conn) {
                break;
            }
        }
        Ok(())
    }

    /// The session ends after the engine closed it: it may still write some queued frames.
    fn session_end_step(&mut self, conn: ConnId) -> SimResult {
        let s = self.sessions.get_mut(&conn).expect("chosen");
        if s.live && !s.zombie {
            let n = self.rng.range(0, s.queue.len() as u64);
            for _ in 0..n {
                let s = self.sessions.get_mut(&conn).expect("still there");
                let frame = s.queue.pop_front().expect("counted");
                if write_filter(&mut s.delivered, &frame) {
                    self.write_to_client(conn, &frame)?;
                }
            }
        }
        self.end_session(conn);
        Ok(())
    }

    fn end_session(&mut self, conn: ConnId) {
        self.t(&[40, conn]);
        self.log(|| format!("session {conn} ends"));
        if let Some(s) = self.sessions.remove(&conn) {
            self.commands
                .push_back(Command::Input(Input::Disconnected { conn }));
            if self.devices[s.device].conn == Some(conn) {
                self.client_closed(s.device);
            }
        }
    }

    /// The network drops: the device notices at once; the session either does too or keeps
    /// running half-open until it times out (reaped) or overflows.
    fn disconnect(&mut self, d: usize) {
        let conn = self.devices[d].conn.expect("online");
        self.stats.disconnects += 1;
        self.client_closed(d);
        if self.rng.chance(self.rates.zombie) {
            self.stats.zombies += 1;
            self.t(&[41, conn]);
            if let Some(s) = self.sessions.get_mut(&conn) {
                s.zombie = true;
            }
        } else {
            self.end_session(conn);
        }
    }

    fn write_to_client(&mut self, conn: ConnId, message: &ServerMessage) -> SimResult {
        let d = self.sessions.get(&conn).expect("session").device;
        if self.devices[d].conn != Some(conn) {
            return Ok(()); // half-open: the device is not listening any more
        }
        self.client_receive(d, message)
    }

    // ---- devices ----

    fn client_closed(&mut self, d: usize) {
        let dev = &mut self.devices[d];
        dev.conn = None;
        dev.live = false;
        dev.requests.clear();
        for i in &mut dev.intents {
            if i.seq.is_none() {
                i.needs_send = true;
            }
        }
    }

    fn client_receive(&mut self, d: usize, message: &ServerMessage) -> SimResult {
        match message {
            ServerMessage::Deliver { message: m } => {
                let dev = &self.devices[d];
                if !dev.convs.contains(&m.conversation) {
                    return Err(format!(
                        "device {d} got a message of foreign conversation {:?}",
                        m.conversation
                    ));
                }
                if self.durable.message(m.conversation, m.seq) != Some(m) {
                    return Err(format!(
                        "device {d} got {:?} seq {} that differs from the store",
                        m.conversation, m.seq
                    ));
                }
                self.client_take(d, m.conversation, m.seq)
            }
            ServerMessage::SendAck {
                request_id,
                conversation,
                client_msg_id,
                seq,
                message_id,
                duplicate,
                ..
            } => {
                let dev = &mut self.devices[d];
                dev.requests.remove(request_id);
                let Some(&i) = dev.by_key.get(&(*conversation, *client_msg_id)) else {
                    return Err(format!("device {d} got an ack for a send it never made"));
                };
                let intent = &mut dev.intents[i];
                match intent.seq {
                    Some(s) if s != *seq => {
                        return Err(format!(
                            "device {d}: client id {client_msg_id} acked as seq {s} and as seq {seq} (stored twice)"
                        ));
                    }
                    _ => intent.seq = Some(*seq),
                }
                intent.needs_send = false;
                if *duplicate {
                    self.stats.duplicate_acks += 1;
                }
                let intent = intent.clone();
                let user = dev.user;
                let m = self
                    .durable
                    .message(*conversation, *seq)
                    .ok_or_else(|| format!("device {d}: acked seq {seq} is not durable"))?;
                if m.sender_user != user
                    || m.client_msg_id != *client_msg_id
                    || m.payload != intent.payload
                    || m.message_id != *message_id
                {
                    return Err(format!(
                        "device {d}: ack of client id {client_msg_id} points at a different stored message"
                    ));
                }
                self.client_take(d, *conversation, *seq)
            }
            ServerMessage::Error {
                request_id, code, ..
            } => {
                let dev = &mut self.devices[d];
                let Some(i) = dev.requests.remove(request_id) else {
                    return Err(format!("device {d}: error {code:?} for unknown request"));
                };
                match code {
                    ErrorCode::Internal | ErrorCode::RateLimited => {
                        self.stats.retryable_errors += 1;
                        let intent = &mut dev.intents[i];
                        if intent.seq.is_none() {
                            intent.needs_send = true;
                        }
                        Ok(())
                    }
                    other => Err(format!("device {d}: unexpected error {other:?}")),
                }
            }
            ServerMessage::Delivered {
                request_id: 0,
                conversation,
                marks,
            } => {
                self.stats.receipts += 1;
                let me = self.devices[d].user;
                for mark in marks {
                    let acked = self
                        .user_acks
                        .get(&(*conversation, mark.user))
                        .copied()
                        .unwrap_or(0);
                    if mark.user == me
                        || mark.seq > acked
                        || mark.seq > self.durable.last_seq(*conversation)
                    {
                        return Err(format!(
                            "device {d}: receipt {mark:?} in {conversation:?} claims more than was \
                             acknowledged ({acked}) or stored, or is the device's own"
                        ));
                    }
                }
                Ok(())
            }
            ServerMessage::SyncComplete => {
                self.devices[d].live = true;
                // The SDK resends every unacknowledged send after a reconnect.
                self.flush(d);
                Ok(())
            }
            other => Err(format!("device {d}: unexpected frame {other:?}")),
        }
    }

    /// Takes seq `seq` of `c` (delivered, replayed, filled, or our own ack): de-duplicates,
    /// holds back out-of-order seqs and checks that every hole is explained.
    fn client_take(&mut self, d: usize, c: ConversationId, seq: u64) -> SimResult {
        let cc = self.devices[d].sync.get_mut(&c).expect("member");
        if seq <= cc.cursor || !cc.buffer.insert(seq) {
            self.stats.client_dedupes += 1;
            self.t(&[50, d as u64, seq, 0]);
            return Ok(());
        }
        self.trace = fnv(self.trace, &[50, d as u64, seq, 1]);
        while cc.buffer.remove(&(cc.cursor + 1)) {
            cc.cursor += 1;
        }
        if let Some(&lowest) = cc.buffer.first() {
            // A hole on a connection is only possible for messages stored by a commit that
            // reported failure: nobody was told about them live.
            for missing in cc.cursor + 1..lowest {
                if !self.silent.contains(&(c, missing)) {
                    return Err(format!(
                        "device {d} has a gap in {c:?}: seq {missing} missing below {lowest} \
                         (cursor {}), and it was acknowledged/delivered normally",
                        cc.cursor
                    ));
                }
            }
        }
        Ok(())
    }

    fn send(&mut self, d: usize, i: usize) {
        let dev = &mut self.devices[d];
        let conn = dev.conn.expect("online");
        let request_id = dev.next_request;
        dev.next_request += 1;
        dev.requests.insert(request_id, i);
        let intent = &mut dev.intents[i];
        intent.needs_send = false;
        self.stats.sends += 1;
        let req = SendRequest {
            conn,
            request_id,
            conversation: intent.conversation,
            client_msg_id: intent.client_msg_id,
            content_type: "text".into(),
            payload: intent.payload.clone(),
            files: vec![],
        };
        self.trace = fnv(self.trace, &[60, d as u64, i as u64, request_id]);
        self.commands.push_back(Command::Input(Input::Send(req)));
    }

    fn send_new(&mut self, d: usize) {
        let dev = &mut self.devices[d];
        let c = dev.convs[self.rng.below(dev.convs.len())];
        let n = dev.next_cmid;
        dev.next_cmid += 1;
        // Unique per device (the SDK draws random ids); the engine keys by (sender, id).
        let cmid = ((d as u128 + 1) << 64) | n as u128;
        let payload = format!("d{d}m{n}").into_bytes();
        dev.intents.push(Intent {
            conversation: c,
            client_msg_id: cmid,
            payload,
            seq: None,
            needs_send: false,
        });
        let i = dev.intents.len() - 1;
        dev.by_key.insert((c, cmid), i);
        self.send(d, i);
        // A concurrent duplicate right behind it, now and then.
        if self.rng.below(100) < 5 {
            self.send(d, i);
        }
    }

    fn flush(&mut self, d: usize) {
        let pending: Vec<usize> = (0..self.devices[d].intents.len())
            .filter(|i| self.devices[d].intents[*i].needs_send)
            .collect();
        for i in pending {
            self.send(d, i);
        }
    }

    /// Acks go through the session, which clamps them to what it sent.
    fn ack_cursors(&mut self, d: usize) {
        let conn = self.devices[d].conn.expect("online");
        let Some(s) = self.sessions.get(&conn) else {
            return;
        };
        let mut inputs = Vec::new();
        let user = self.devices[d].user;
        for (c, cc) in &mut self.devices[d].sync {
            if cc.cursor > cc.acked {
                cc.acked = cc.cursor;
                if let Some(sent) = s.delivered.get(c) {
                    let seq = cc.cursor.min(*sent);
                    let user_ack = self.user_acks.entry((*c, user)).or_insert(0);
                    *user_ack = (*user_ack).max(seq);
                    inputs.push(Input::Ack {
                        conn,
                        conversation: *c,
                        seq,
                    });
                }
            }
        }
        for input in inputs {
            self.commands.push_back(Command::Input(input));
        }
    }

    /// History request for the lowest hole of each conversation with one.
    fn gap_fill(&mut self, d: usize) -> SimResult {
        let holes: Vec<(ConversationId, u64, u64)> = self.devices[d]
            .sync
            .iter()
            .filter_map(|(c, cc)| cc.buffer.first().map(|lo| (*c, cc.cursor, *lo)))
            .collect();
        for (c, after, before) in holes {
            self.stats.gaps_filled += 1;
            for m in self.durable.after(c, after, Some(before)) {
                self.client_take(d, c, m.seq)?;
            }
        }
        Ok(())
    }

    // ---- the schedule ----

    fn enabled(&self, quiet: bool) -> Vec<(u32, Act)> {
        let mut acts = Vec::with_capacity(16);
        if !self.commands.is_empty() || !self.results.is_empty() {
            acts.push((30, Act::Engine));
        }
        if !self.ops.is_empty() {
            acts.push((25, Act::ExecOp));
        }
        let mut replay = false;
        let mut drain = false;
        let mut ending = false;
        let mut zombie = false;
        for s in self.sessions.values() {
            replay |= s.registered && !s.live && !s.zombie && s.closing.is_none();
            drain |= s.live
                && !s.zombie
                && s.closing.is_none()
                && !s.queue.is_empty()
                && !self.devices[s.device].slow;
            ending |= s.closing.is_some();
            zombie |= s.zombie && s.closing.is_none();
        }
        if replay {
            acts.push((12, Act::Replay));
        }
        if drain {
            acts.push((15, Act::Drain));
        }
        if ending {
            acts.push((8, Act::SessionEnd));
        }
        if zombie {
            acts.push((if quiet { 8 } else { 1 }, Act::Reap));
        }
        let (mut offline, mut live, mut flush, mut ack, mut gap) =
            (false, false, false, false, false);
        for dev in &self.devices {
            offline |= dev.conn.is_none();
            if dev.live {
                live = true;
                flush |= dev.intents.iter().any(|i| i.needs_send);
                ack |= dev.ack_due();
                gap |= dev.has_gap();
            }
        }
        if offline {
            acts.push((if quiet { 8 } else { 4 }, Act::Connect));
        }
        if flush {
            acts.push((5, Act::Flush));
        }
        if ack {
            acts.push((5, Act::AckCursors));
        }
        if gap {
            acts.push((3, Act::GapFill));
        }
        if !quiet {
            if live {
                acts.push((12, Act::SendNew));
                acts.push((self.rates.dup_send / 10, Act::SendDup));
                acts.push((self.rates.disconnect / 10, Act::Disconnect));
            }
            acts.push((self.rates.slow_toggle / 10, Act::ToggleSlow));
        }
        acts.retain(|(w, _)| *w > 0);
        acts
    }

    fn pick_device(&mut self, f: impl Fn(&Device) -> bool) -> Option<usize> {
        let ds: Vec<usize> = (0..self.devices.len())
            .filter(|d| f(&self.devices[*d]))
            .collect();
        (!ds.is_empty()).then(|| self.rng.pick(&ds))
    }

    fn pick_session(&mut self, f: impl Fn(&Session, &[Device]) -> bool) -> Option<ConnId> {
        let cs: Vec<ConnId> = self
            .sessions
            .iter()
            .filter(|(_, s)| f(s, &self.devices))
            .map(|(c, _)| *c)
            .collect();
        (!cs.is_empty()).then(|| self.rng.pick(&cs))
    }

    /// One scheduled step; returns false when nothing was enabled.
    fn one_step(&mut self, quiet: bool) -> Result<bool, String> {
        self.step += 1;
        self.stats.steps += 1;
        self.now_ms += self.rng.range(0, 3);
        if !quiet && self.rng.chance(self.rates.crash) {
            self.crash()?;
            return Ok(true);
        }
        let acts = self.enabled(quiet);
        if acts.is_empty() {
            return Ok(false);
        }
        let total: u32 = acts.iter().map(|(w, _)| *w).sum();
        let mut r = self.rng.below(total as usize) as u32;
        let act = acts
            .iter()
            .find(|(w, _)| {
                if r < *w {
                    true
                } else {
                    r -= *w;
                    false
                }
            })
            .expect("weights cover the range")
            .1;
        self.t(&[1, act as u64]);
        match act {
            Act::Engine => self.engine_step()?,
            Act::ExecOp => self.exec_op()?,
            Act::Replay => {
                let conn = self
                    .pick_session(|s, _| {
                        s.registered && !s.live && !s.zombie && s.closing.is_none()
                    })
                    .expect("enabled");
                self.replay_step(conn)?;
            }
            Act::Drain => {
                let conn = self
                    .pick_session(|s, ds| {
                        s.live
                            && !s.zombie
                            && s.closing.is_none()
                            && !s.queue.is_empty()
                            && !ds[s.device].slow
                    })
                    .expect("enabled");
                self.drain(conn)?;
            }
            Act::SessionEnd => {
                let conn = self
                    .pick_session(|s, _| s.closing.is_some())
                    .expect("enabled");
                self.session_end_step(conn)?;
            }
            Act::Reap => {
                let conn = self
                    .pick_session(|s, _| s.zombie && s.closing.is_none())
                    .expect("enabled");
                self.end_session(conn);
            }
            Act::Connect => {
                let d = self.pick_device(|d| d.conn.is_none()).expect("enabled");
                self.connect(d);
            }
            Act::SendNew => {
                if let Some(d) = self.pick_device(|d| d.live && !d.convs.is_empty()) {
                    self.send_new(d);
                }
            }
            Act::SendDup => {
                let d = self.pick_device(|d| d.live).expect("enabled");
                if !self.devices[d].intents.is_empty() {
                    // Prefer recent sends: they are the likeliest to be in flight.
                    let n = self.devices[d].intents.len();
                    let i = n - 1 - self.rng.below(n.min(4));
                    self.send(d, i);
                }
            }
            Act::Flush => {
                let d = self
                    .pick_device(|d| d.live && d.intents.iter().any(|i| i.needs_send))
                    .expect("enabled");
                self.flush(d);
            }
            Act::AckCursors => {
                let d = self
                    .pick_device(|d| d.live && d.ack_due())
                    .expect("enabled");
                self.ack_cursors(d);
            }
            Act::GapFill => {
                let d = self
                    .pick_device(|d| d.live && d.has_gap())
                    .expect("enabled");
                self.gap_fill(d)?;
            }
            Act::Disconnect => {
                let d = self.pick_device(|d| d.conn.is_some()).expect("enabled");
                self.disconnect(d);
            }
            Act::ToggleSlow => {
                let d = self.rng.below(self.devices.len());
                self.devices[d].slow = !self.devices[d].slow;
            }
        }
        self.check_step()?;
        Ok(true)
    }

    /// Cheap invariants after every step (the expensive durable scan runs after crashes, at the
    /// end, and where the state it covers changes: commits are validated as they are applied).
    fn check_step(&self) -> SimResult {
        if self.core.uncommitted_messages() > 0 && self.commit_outstanding.is_none() {
            return Err("messages sequenced but no commit in flight".into());
        }
        for s in self.sessions.values() {
            if s.queue.len() > self.queue_cap {
                return Err("a connection queue exceeded its bound".into());
            }
        }
        Ok(())
    }

    fn run(&mut self, chaos_steps: u64) -> SimResult {
        for _ in 0..chaos_steps {
            self.one_step(false)?;
        }
        check_durable(&self.durable, &self.acked)?;
        // Quiescent phase: no more faults; every device reconnects and catches up.
        self.faults = false;
        self.log(|| "QUIESCE".into());
        // Odd seeds (or `TERN_SIM_KEEP_ONLINE=1`) leave connected devices connected.
        let keep_online = self.keep_online;
        for d in 0..self.devices.len() {
            self.devices[d].slow = false;
            if keep_online && self.devices[d].live {
                continue;
            }
            if let Some(conn) = self.devices[d].conn {
                self.client_closed(d);
                self.end_session(conn);
            }
        }
        let mut steps = 0u64;
        while self.one_step(true)? {
            steps += 1;
            self.stats.quiesce_steps += 1;
            if steps > 200_000 {
                return Err("no convergence after 200000 fault-free steps".into());
            }
        }
        self.check_final()
    }

    fn check_final(&self) -> SimResult {
        check_durable(&self.durable, &self.acked)?;
        let mut owners: BTreeMap<(ConversationId, UserId, u128), usize> = BTreeMap::new();
        for (d, dev) in self.devices.iter().enumerate() {
            if !dev.live {
                return Err(format!("device {d} is not connected at the end"));
            }
            for c in &dev.convs {
                let cc = &dev.sync[c];
                let last = self.durable.last_seq(*c);
                if cc.cursor != last || !cc.buffer.is_empty() {
                    return Err(format!(
                        "device {d} did not converge in {c:?}: has 1..={} (held {:?}), store has 1..={last}",
                        cc.cursor, cc.buffer
                    ));
                }
            }
            for (i, intent) in dev.intents.iter().enumerate() {
                let Some(seq) = intent.seq else {
                    return Err(format!(
                        "device {d}: send {} was never acknowledged",
                        intent.client_msg_id
                    ));
                };
                let m = self
                    .durable
                    .message(intent.conversation, seq)
                    .ok_or("acked send not durable")?;
                if m.client_msg_id != intent.client_msg_id || m.payload != intent.payload {
                    return Err(format!("device {d}: send {i} acked at the wrong seq"));
                }
                owners.insert((intent.conversation, dev.user, intent.client_msg_id), d);
            }
        }
        for (c, conv) in &self.durable.convs {
            for m in &conv.messages {
                if !owners.contains_key(&(*c, m.sender_user, m.client_msg_id)) {
                    return Err(format!("{c:?} seq {} was stored but nobody sent it", m.seq));
                }
            }
        }
        if !self.ops.is_empty() || self.core.uncommitted_messages() > 0 {
            return Err("work left over at the end".into());
        }
        Ok(())
    }
}

/// `Session::write_outbound`: drops live copies of what was already sent.
fn write_filter(delivered: &mut BTreeMap<ConversationId, u64>, frame: &ServerMessage) -> bool {
    match frame {
        ServerMessage::Deliver { message } => {
            let high = delivered.entry(message.conversation).or_insert(0);
            if message.seq <= *high {
                return false;
            }
            *high = message.seq;
        }
        ServerMessage::SendAck {
            conversation, seq, ..
        } => {
            let high = delivered.entry(*conversation).or_insert(0);
            *high = (*high).max(*seq);
        }
        _ => {}
    }
    true
}

fn input_sig(input: &Input) -> [u64; 4] {
    match input {
        Input::Connected { conn, device, .. } => [1, *conn, device.0 as u64, 0],
        Input::Disconnected { conn } => [2, *conn, 0, 0],
        Input::Send(r) => [3, r.conn, r.request_id, r.client_msg_id as u64],
        Input::Ack {
            conn,
            conversation,
            seq,
        } => [4, *conn, conversation.0 as u64, *seq],
        Input::Loaded {
            conversation,
            snapshot,
        } => [
            5,
            conversation.0 as u64,
            snapshot.as_ref().map_or(u64::MAX, |s| s.last_seq),
            0,
        ],
        Input::LoadFailed { conversation } => [6, conversation.0 as u64, 0, 0],
        Input::LookedUp {
            client_msg_id,
            found,
            ..
        } => [
            7,
            *client_msg_id as u64,
            found.as_ref().map_or(0, |m| m.seq),
            0,
        ],
        Input::Committed { batch, ok } => [8, *batch, *ok as u64, 0],
        _ => [9, 0, 0, 0],
    }
}

fn action_sig(action: &Action) -> [u64; 4] {
    match action {
        Action::Load {
            conversation,
            landed_from,
        } => [11, conversation.0 as u64, landed_from.unwrap_or(0), 0],
        Action::Lookup { client_msg_id, .. } => [12, *client_msg_id as u64, 0, 0],
        Action::Commit { batch, data } => [
            13,
            *batch,
            data.messages.len() as u64,
            data.messages.iter().fold(0, |h, m| {
                fnv(h, &[m.seq, m.message_id.0 as u64, m.client_msg_id as u64])
            }),
        ],
        Action::Deliver { conns, message } => {
            let seq = match &**message {
                ServerMessage::Deliver { message } => message.seq,
                _ => 0,
            };
            [14, conns.iter().fold(0, |h, c| fnv(h, &[*c])), seq, 0]
        }
        Action::Reply { conn, message } => match message {
            ServerMessage::SendAck {
                request_id,
                seq,
                duplicate,
                ..
            } => [15, *conn, *request_id, *seq * 2 + *duplicate as u64],
            ServerMessage::Error {
                request_id, code, ..
            } => [16, *conn, *request_id, *code as u64],
            _ => [17, *conn, 0, 0],
        },
        Action::Close { conn, .. } => [18, *conn, 0, 0],
    }
}

fn brief_input(input: &Input) -> String {
    match input {
        Input::Send(r) => format!(
            "Send conn {} req {} conv {} cmid {:x}",
            r.conn, r.request_id, r.conversation.0, r.client_msg_id
        ),
        Input::Loaded {
            conversation,
            snapshot,
        } => format!(
            "Loaded conv {} last_seq {:?}",
            conversation.0,
            snapshot.as_ref().map(|s| s.last_seq)
        ),
        Input::LookedUp {
            conversation,
            client_msg_id,
            found,
            ..
        } => format!(
            "LookedUp conv {} cmid {:x} -> {:?}",
            conversation.0,
            client_msg_id,
            found.as_ref().map(|m| m.seq)
        ),
        other => format!("{other:?}"),
    }
}

fn brief_action(action: &Action) -> String {
    match action {
        Action::Commit { batch, data } => format!(
            "Commit {batch}: {:?} cursors {}",
            data.messages
                .iter()
                .map(|m| (m.conversation.0, m.seq, m.client_msg_id))
                .collect::<Vec<_>>(),
            data.cursors.len()
        ),
        Action::Deliver { conns, message } => match &**message {
            ServerMessage::Deliver { message } => format!(
                "Deliver conv {} seq {} to {conns:?}",
                message.conversation.0, message.seq
            ),
            other => format!("Deliver {other:?} to {conns:?}"),
        },
        Action::Reply { conn, message } => match message {
            ServerMessage::SendAck {
                request_id,
                conversation,
                seq,
                duplicate,
                ..
            } => format!(
                "SendAck conn {conn} req {request_id} conv {} seq {seq} dup {duplicate}",
                conversation.0
            ),
            ServerMessage::Error {
                request_id, code, ..
            } => format!("Error conn {conn} req {request_id} {code:?}"),
            other => format!("Reply conn {conn} {other:?}"),
        },
        other => format!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Running seeds.

struct Outcome {
    trace: u64,
    stats: Stats,
}

fn chaos_steps(seed: u64) -> u64 {
    match std::env::var("TERN_SIM_STEPS") {
        Ok(v) => v.parse().expect("TERN_SIM_STEPS is a number"),
        Err(_) => Rng::new(seed ^ 0xABCD).range(200, 1500),
    }
}

/// Runs one seed; `Err` carries the failure message (with the reproduction command).
fn run_seed(seed: u64, verbose: bool) -> Result<Outcome, String> {
    let steps = chaos_steps(seed);
    let result = catch_unwind(AssertUnwindSafe(|| {
        let mut sim = Sim::new(seed, verbose);
        let r = sim.run(steps);
        (r, sim.step, sim.trace, sim.stats.clone(), sim.log.take())
    }));
    let repro = format!("reproduce: TERN_SIM_SEED={seed} {REPRO}");
    match result {
        Ok((Ok(()), _, trace, stats, _)) => Ok(Outcome { trace, stats }),
        Ok((Err(e), step, _, _, log)) => {
            let tail = log
                .map(|l| l.into_iter().collect::<Vec<_>>().join("\n"))
                .unwrap_or_default();
            Err(format!(
                "simulation seed {seed} failed at step {step}: {e}\n{repro}\n{tail}"
            ))
        }
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(format!("simulation seed {seed} panicked: {msg}\n{repro}"))
        }
    }
}

#[test]
fn simulation_seeds() {
    if let Ok(seed) = std::env::var("TERN_SIM_SEED") {
        let seed: u64 = seed.parse().expect("TERN_SIM_SEED is a number");
        match run_seed(seed, true) {
            Ok(o) => eprintln!("seed {seed}: ok, trace {:016x}, {:?}", o.trace, o.stats),
            Err(e) => panic!("{e}"),
        }
        return;
    }
    let count: u64 = std::env::var("TERN_SIM_SEEDS")
        .map(|v| v.parse().expect("TERN_SIM_SEEDS is a number"))
        .unwrap_or(1000);
    let first: u64 = std::env::var("TERN_SIM_FIRST_SEED")
        .map(|v| v.parse().expect("TERN_SIM_FIRST_SEED is a number"))
        .unwrap_or(0);
    let started = Instant::now();
    let next = AtomicU64::new(first);
    let failures: Mutex<Vec<(u64, String)>> = Mutex::new(Vec::new());
    let total = Mutex::new(Stats::default());
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    // Quiet the default panic printing from seeds whose panics are caught and reported.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= first + count {
                        break;
                    }
                    match run_seed(seed, false) {
                        Ok(o) => total.lock().expect("lock").add(&o.stats),
                        Err(e) => failures.lock().expect("lock").push((seed, e)),
                    }
                }
            });
        }
    });
    std::panic::set_hook(hook);
    let stats = total.into_inner().expect("lock");
    eprintln!(
        "{count} seeds in {:.1?} on {threads} threads: {stats:?}",
        started.elapsed()
    );
    let mut failures = failures.into_inner().expect("lock");
    failures.sort_by_key(|(s, _)| *s);
    if let Some((_, first_failure)) = failures.first() {
        let seeds: Vec<u64> = failures.iter().map(|(s, _)| *s).collect();
        panic!(
            "{} of {count} seeds failed: {seeds:?}\nfirst failure:\n{first_failure}",
            failures.len()
        );
    }
}

#[test]
fn same_seed_same_trace() {
    for seed in [3, 17, 4242] {
        let a = run_seed(seed, false).unwrap_or_else(|e| panic!("{e}"));
        let b = run_seed(seed, false).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.trace, b.trace, "seed {seed} is not deterministic");
        assert_eq!(a.stats.steps, b.stats.steps);
    }
    let a = run_seed(1, false).unwrap_or_else(|e| panic!("{e}"));
    let b = run_seed(2, false).unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(
        a.trace, b.trace,
        "different seeds must give different traces"
    );
}

/// Runs a seed to the end and hands back the world, for the checker tests.
fn finished_world(seed: u64) -> Sim {
    let mut sim = Sim::new(seed, false);
    sim.run(600).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    assert!(!sim.acked.is_empty(), "seed {seed} acknowledged nothing");
    sim
}

#[test]
fn checker_reports_a_lost_acknowledged_message() {
    let mut sim = finished_world(5);
    let (c, seq) = *sim.acked.keys().next_back().expect("acked");
    let conv = sim.durable.convs.get_mut(&c).expect("conv");
    conv.messages.truncate(seq as usize - 1);
    conv.by_client.retain(|_, s| *s < seq);
    let err = check_durable(&sim.durable, &sim.acked).expect_err("must be caught");
    assert!(err.contains("not durable"), "{err}");
    assert!(sim.check_final().is_err());
}

#[test]
fn checker_reports_a_duplicated_message() {
    let mut sim = finished_world(6);
    let (c, _) = *sim.acked.keys().next().expect("acked");
    let conv = sim.durable.convs.get_mut(&c).expect("conv");
    let mut copy = conv.messages[0].clone();
    copy.seq = conv.messages.len() as u64 + 1;
    conv.messages.push(copy.clone());
    let err = check_durable(&sim.durable, &sim.acked).expect_err("must be caught");
    assert!(err.contains("stored twice"), "{err}");
    // The store model itself refuses to commit it.
    let mut fresh = finished_world(6);
    let batch = CommitBatch {
        messages: vec![copy],
        cursors: vec![],
    };
    let err = fresh.durable.apply(&batch).expect_err("must be refused");
    assert!(err.contains("duplicate"), "{err}");
}

#[test]
fn checker_reports_a_changed_acknowledged_message() {
    let mut sim = finished_world(7);
    let (c, seq) = *sim.acked.keys().next().expect("acked");
    let conv = sim.durable.convs.get_mut(&c).expect("conv");
    conv.messages[seq as usize - 1].message_id = MessageId(12345);
    let err = check_durable(&sim.durable, &sim.acked).expect_err("must be caught");
    assert!(err.contains("changed"), "{err}");
}

#[test]
fn checker_reports_a_device_that_missed_a_message() {
    let mut sim = finished_world(8);
    let d = (0..sim.devices.len())
        .find(|d| sim.devices[*d].sync.values().any(|c| c.cursor > 0))
        .expect("a device with messages");
    let cc = sim.devices[d]
        .sync
        .values_mut()
        .find(|c| c.cursor > 0)
        .expect("found");
    cc.cursor -= 1;
    let err = sim.check_final().expect_err("must be caught");
    assert!(err.contains("did not converge"), "{err}");
    // And a hole that no failed commit explains is a gap violation on the spot.
    let mut sim = finished_world(8);
    let (d, c) = (0..sim.devices.len())
        .flat_map(|d| sim.devices[d].convs.iter().map(move |c| (d, *c)))
        .find(|(_, c)| sim.durable.last_seq(*c) >= 2)
        .expect("a conversation with two messages");
    let last = sim.durable.last_seq(c);
    sim.silent.clear();
    sim.devices[d].sync.get_mut(&c).expect("member").cursor = last - 2;
    let err = sim.client_take(d, c, last).expect_err("gap must be caught");
    assert!(err.contains("gap"), "{err}");
}
