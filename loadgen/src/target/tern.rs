//! Tern through its public SDK only: [`HttpApi`] for accounts and conversations, one
//! [`Connection`] per simulated user (WebSocket or WebTransport) for traffic.
//!
//! * **Setup** registers users and creates conversations once and caches tokens and
//!   conversation ids in a state file (argon2id makes registration cost tens of ms per user, so
//!   10,000 users take minutes). A later run with the same server address and population reuses
//!   the file if the server still accepts its tokens; an interrupted setup resumes where it
//!   stopped.
//! * **Connect** resolves after `SyncComplete`. It passes explicit resume cursors: the
//!   conversations' last seq at setup for a first connection (so history from earlier runs is
//!   not replayed), the last seq received for a reconnection (so the replay is exactly what was
//!   missed). Replayed messages are buffered until `SyncComplete` and handed out first.
//! * **Receiving** acknowledges deliveries the way a real client does, coalesced: after every
//!   [`ACK_EVERY`] messages or [`ACK_INTERVAL`] after the first unacknowledged one.
//! * **Sending** derives the idempotency key from the payload header, so a retry after a
//!   timeout or a reconnection can never store a message twice.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use tern_sdk::e2e::OutgoingCost;
use tern_sdk::tern_wire::ids::{ConversationId, DeviceId, UserId};
use tern_sdk::tern_wire::msg::Cursor;
use tern_sdk::{
    Config, Connection, ConnectionSender, Error as SdkError, Event, EventStream, HistoryQuery,
    HttpApi, TransportPref, Trust,
};
use tokio::sync::{mpsc, oneshot};

use super::tern_e2e::{self, DeviceCrypto, Item};
use super::{
    Connected, ConversationRef, HistoryEntry, Inbound, MessageSender, Population, SendOutcome,
    Target, TargetError, UserSpec,
};
use crate::payload::Header;

/// Acknowledge after this many deliveries...
pub const ACK_EVERY: usize = 64;
/// ...or this long after the first unacknowledged one.
pub const ACK_INTERVAL: Duration = Duration::from_secs(1);
/// Deliveries queued between the connection's pump and the scenario's receiver.
const INBOUND_QUEUE: usize = 256;
/// Every simulated user has this password (the accounts exist only for load tests).
const PASSWORD: &str = "tern-loadgen-password";
/// State file format version.
const STATE_VERSION: u32 = 1;
/// Save the state file after this many new users or conversations (a crash loses at most this
/// much registration work).
const CHECKPOINT_EVERY: usize = 250;
/// Content type of load-test messages (server-visible; the payload is opaque to it).
const CONTENT_TYPE: &str = "loadgen";
/// Messages per history request of `--verify-history` (the HTTP API allows 1..=500).
const HISTORY_PAGE: u32 = 500;

/// Which transport a [`TernTarget`] connects with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TernTransport {
    WebSocket,
    WebTransport,
}

#[derive(Debug, Clone)]
pub struct TernOptions {
    /// `host:port`.
    pub server: String,
    pub trust: Trust,
    pub transport: TernTransport,
    /// Where setup state is cached; `None` registers a fresh population every run.
    pub state_dir: Option<PathBuf>,
    /// Registrations (and other setup requests) in flight at once.
    pub setup_concurrency: usize,
    /// Transport + TLS + Hello/Welcome.
    pub connect_timeout: Duration,
    /// Welcome → SyncComplete (the resume replay).
    pub sync_timeout: Duration,
    /// How long a send waits for its SendAck.
    pub request_timeout: Duration,
    /// `--e2e`: every device encrypts (Olm/Megolm) and its outbound sessions rotate after this
    /// many messages. `None`: plaintext.
    pub e2e_rotation_messages: Option<u32>,
}

impl TernOptions {
    pub fn new(server: impl Into<String>, trust: Trust, transport: TernTransport) -> TernOptions {
        TernOptions {
            server: server.into(),
            trust,
            transport,
            state_dir: None,
            setup_concurrency: 8,
            connect_timeout: Duration::from_secs(30),
            sync_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
            e2e_rotation_messages: None,
        }
    }
}

/// What other processes need from setup (see [`Target::export_state`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Exported {
    device_seed: u64,
    /// Conversation key → the seq to resume after on a user's first connection.
    start: HashMap<String, u64>,
    /// `--e2e`: conversation key → its members' user ids (what each device encrypts for).
    #[serde(default)]
    members: HashMap<String, Vec<UserId>>,
}

#[derive(Default)]
struct Shared {
    exported: Exported,
    /// Per user: the highest seq handed to the scenario per conversation, where a reconnection
    /// resumes.
    cursors: HashMap<usize, Arc<Mutex<HashMap<ConversationId, u64>>>>,
    /// `--e2e`: per user, the device's crypto state (kept across reconnections: a new one
    /// would be a reinstalled device with new keys).
    crypto: HashMap<usize, DeviceCrypto>,
}

pub struct TernTarget {
    opts: TernOptions,
    config: Config,
    shared: Mutex<Shared>,
}

impl TernTarget {
    pub fn new(opts: TernOptions) -> Result<TernTarget, TargetError> {
        let mut config = Config::new(&opts.server, opts.trust.clone())
            .map_err(|e| TargetError::Setup(e.to_string()))?
            .with_transport(match opts.transport {
                TernTransport::WebSocket => TransportPref::WebSocket,
                TernTransport::WebTransport => TransportPref::WebTransport,
            })
            .with_client_name(format!("tern-loadgen/{}", env!("CARGO_PKG_VERSION")));
        config.connect_timeout = opts.connect_timeout;
        config.request_timeout = opts.request_timeout;
        Ok(TernTarget {
            opts,
            config,
            shared: Mutex::new(Shared::default()),
        })
    }

    /// The TLS settings of this target (shared with the peers' adapters so that one set of
    /// `--cert-hash`/`--ca-file` flags serves every target).
    pub fn config(&self) -> &Config {
        &self.config
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        // Poisoning only means a panic elsewhere mid-update of plain maps; keep going.
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn http(&self) -> Result<HttpApi, TargetError> {
        HttpApi::new(&self.config).map_err(|e| TargetError::Setup(e.to_string()))
    }

    fn device(&self, user: usize) -> DeviceId {
        let seed = self.lock().exported.device_seed;
        DeviceId(((seed as u128) << 64) | user as u128)
    }

    /// `--e2e`: what the last send of `user` cost (the rotation measurement reads it).
    pub async fn last_outgoing_cost(&self, user: usize) -> Option<OutgoingCost> {
        tern_e2e::last_cost(self.device(user))
    }

    /// `--e2e`: the device crypto of `user`, made on its first connection.
    fn crypto_of(
        &self,
        user: &UserSpec,
        welcome: &tern_sdk::Welcome,
        rotation_messages: u32,
    ) -> Result<DeviceCrypto, TargetError> {
        let mut sh = self.lock();
        if let Some(c) = sh.crypto.get(&user.index) {
            return Ok(c.clone());
        }
        let mut members = Vec::with_capacity(user.conversations.len());
        for c in &user.conversations {
            let (Ok(id), Some(users)) = (
                c.key.parse::<ConversationId>(),
                sh.exported.members.get(&c.key),
            ) else {
                return Err(TargetError::Connect(format!(
                    "e2e: members of conversation {} are not known",
                    c.key
                )));
            };
            members.push((id, users.clone()));
        }
        let crypto = tern_e2e::new_device(
            welcome,
            tern_e2e::crypto_config(rotation_messages),
            &members,
        )?;
        sh.crypto.insert(user.index, crypto.clone());
        Ok(crypto)
    }

    fn cursors_of(&self, user: &UserSpec) -> Arc<Mutex<HashMap<ConversationId, u64>>> {
        let mut sh = self.lock();
        if let Some(c) = sh.cursors.get(&user.index) {
            return c.clone();
        }
        let mut initial = HashMap::new();
        for c in &user.conversations {
            if let Ok(id) = c.key.parse::<ConversationId>() {
                initial.insert(id, sh.exported.start.get(&c.key).copied().unwrap_or(0));
            }
        }
        let c = Arc::new(Mutex::new(initial));
        sh.cursors.insert(user.index, c.clone());
        c
    }
}

#[async_trait::async_trait]
impl Target for TernTarget {
    fn name(&self) -> String {
        match self.opts.transport {
            TernTransport::WebSocket => "tern-ws".into(),
            TernTransport::WebTransport => "tern-wt".into(),
        }
    }

    async fn setup(&self, population: &Population) -> Result<Vec<UserSpec>, TargetError> {
        let http = self.http()?;
        let fingerprint = crate::population::fingerprint(population);
        let path = self.opts.state_dir.as_ref().map(|d| {
            d.join(format!(
                "tern-{}-{fingerprint}.json",
                sanitize(&self.opts.server)
            ))
        });
        let mut state = match &path {
            Some(p) => load_state(p, &self.opts.server, &fingerprint, population),
            None => None,
        };
        if let Some(st) = &state
            && !tokens_still_accepted(&http, st).await?
        {
            tracing::info!(
                "cached setup state is not valid on this server any more; starting over"
            );
            state = None;
        }
        let mut state =
            state.unwrap_or_else(|| SetupState::fresh(&self.opts.server, &fingerprint, population));
        let conc = self.opts.setup_concurrency.max(1);

        register_users(&http, &mut state, path.as_deref(), conc).await?;
        create_conversations(&http, &mut state, population, path.as_deref(), conc).await?;
        let start = last_seqs(&http, &mut state, population, path.as_deref(), conc).await?;
        let mut members = HashMap::new();
        if self.opts.e2e_rotation_messages.is_some() {
            fill_user_ids(&http, &mut state, conc).await?;
            for (ci, users) in population.conversations.iter().enumerate() {
                let Some(key) = &state.conversations[ci] else {
                    continue;
                };
                let ids: Option<Vec<UserId>> = users
                    .iter()
                    .map(|&u| state.users[u].as_ref().and_then(|c| c.user_id))
                    .collect();
                let ids = ids.ok_or_else(|| {
                    TargetError::Setup(format!("conversation {ci}: a member has no user id"))
                })?;
                members.insert(key.clone(), ids);
            }
        }
        if let Some(p) = &path {
            save_state(p, &state)?;
        }

        let mut specs: Vec<UserSpec> = (0..population.users)
            .map(|i| {
                let cred = state.users[i].as_ref();
                UserSpec {
                    index: i,
                    name: cred.map(|c| c.name.clone()).unwrap_or_default(),
                    token: cred.map(|c| c.token.clone()),
                    conversations: Vec::new(),
                }
            })
            .collect();
        for (ci, members) in population.conversations.iter().enumerate() {
            let Some(id) = &state.conversations[ci] else {
                return Err(TargetError::Setup(format!(
                    "conversation {ci} was not created"
                )));
            };
            for &u in members {
                specs[u].conversations.push(ConversationRef {
                    index: ci,
                    key: id.clone(),
                });
            }
        }
        let mut sh = self.lock();
        sh.exported = Exported {
            device_seed: state.device_seed,
            start,
            members,
        };
        sh.cursors.clear();
        sh.crypto.clear();
        Ok(specs)
    }

    async fn connect(&self, user: &UserSpec, source: IpAddr) -> Result<Connected, TargetError> {
        let token = user
            .token
            .as_deref()
            .ok_or_else(|| TargetError::Connect(format!("user {} has no token", user.index)))?;
        let mut config = self.config.clone();
        config.bind_address = (!source.is_unspecified()).then_some(source);
        let cursors = self.cursors_of(user);
        let resume: Vec<Cursor> = lock(&cursors)
            .iter()
            .map(|(&conversation, &seq)| Cursor { conversation, seq })
            .collect();
        let conn = Connection::connect(&config, token, self.device(user.index), &resume)
            .await
            .map_err(|e| match e {
                SdkError::Timeout(what) => TargetError::Timeout(what.to_string()),
                other => TargetError::Connect(other.to_string()),
            })?;
        let (tx, mut events) = conn.split();
        let replay = match wait_for_sync(&mut events, self.opts.sync_timeout).await {
            Ok(r) => r,
            Err(e) => {
                tx.close().await;
                return Err(e);
            }
        };
        let (source, crypto) = match self.opts.e2e_rotation_messages {
            None => (Source::Plain { events, replay }, None),
            Some(rotation) => {
                let prepared = match self.crypto_of(user, tx.welcome(), rotation) {
                    Ok(crypto) => tern_e2e::publish(&crypto, &tx).await.map(|()| crypto),
                    Err(e) => Err(e),
                };
                let crypto = match prepared {
                    Ok(c) => c,
                    Err(e) => {
                        tx.close().await;
                        return Err(e);
                    }
                };
                let stage = tern_e2e::crypto_stage(crypto.clone(), tx.clone(), events, replay);
                (Source::Crypto(stage), Some(crypto))
            }
        };
        let mut index_of = HashMap::new();
        let mut id_of = HashMap::new();
        for c in &user.conversations {
            if let Ok(id) = c.key.parse::<ConversationId>() {
                index_of.insert(id, c.index);
                id_of.insert(c.index, id);
            }
        }
        let (in_tx, in_rx) = mpsc::channel(INBOUND_QUEUE);
        let (flush_tx, flush_rx) = mpsc::channel(1);
        tokio::spawn(pump(Pump {
            source,
            inbound: in_tx,
            tx: tx.clone(),
            index_of,
            cursors,
            flush: flush_rx,
        }));
        Ok(Connected {
            sender: Box::new(TernSender {
                tx,
                id_of,
                flush: flush_tx,
                crypto,
            }),
            inbound: in_rx,
        })
    }

    fn export_state(&self) -> serde_json::Value {
        serde_json::to_value(&self.lock().exported).unwrap_or(serde_json::Value::Null)
    }

    fn import_state(&self, state: serde_json::Value) -> Result<(), TargetError> {
        let exported: Exported = serde_json::from_value(state)
            .map_err(|e| TargetError::Setup(format!("bad exported Tern state: {e}")))?;
        let mut sh = self.lock();
        sh.exported = exported;
        sh.cursors.clear();
        Ok(())
    }

    async fn history_page(
        &self,
        token: Option<&str>,
        conversation: &ConversationRef,
        before: u64,
    ) -> Result<(Vec<HistoryEntry>, bool), TargetError> {
        let fail = |e: String| TargetError::Setup(format!("history of {}: {e}", conversation.key));
        let token = token.ok_or_else(|| fail("no token".into()))?;
        let id: ConversationId = conversation
            .key
            .parse()
            .map_err(|e| fail(format!("bad conversation id: {e}")))?;
        let http = self.http()?.with_token(token.to_string());
        let page = with_retry(|| {
            let http = http.clone();
            async move {
                http.history(
                    id,
                    HistoryQuery {
                        before: (before > 0).then_some(before),
                        limit: Some(HISTORY_PAGE),
                        ..Default::default()
                    },
                )
                .await
            }
        })
        .await
        .map_err(|e| fail(e.to_string()))?;
        let mut out = Vec::with_capacity(page.messages.len());
        for v in &page.messages {
            let m = tern_sdk::message_from_view(id, v).map_err(|e| fail(e.to_string()))?;
            out.push(HistoryEntry {
                seq: m.seq,
                sender_user: m.sender_user.to_string(),
                client_msg_id: m.client_msg_id,
                payload: m.payload,
            });
        }
        Ok((out, page.has_more))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Collects the resume replay until `SyncComplete`: deliveries and the other server pushes
/// among them (with `--e2e` the device's key shares come first and are needed).
async fn wait_for_sync(
    events: &mut EventStream,
    timeout: Duration,
) -> Result<VecDeque<Event>, TargetError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut replay = VecDeque::new();
    loop {
        let ev = tokio::time::timeout_at(deadline, events.next_event())
            .await
            .map_err(|_| TargetError::Timeout("SyncComplete".into()))?;
        match ev {
            Some(ev @ (Event::Deliver(_) | Event::Other(_))) => replay.push_back(ev),
            Some(Event::SyncComplete) => return Ok(replay),
            Some(Event::Closed(reason)) => {
                return Err(TargetError::Connect(format!(
                    "closed before SyncComplete: {reason}"
                )));
            }
            None => return Err(TargetError::Connect("closed before SyncComplete".into())),
            // A fatal error is followed by Closed, which carries the reason.
            Some(_) => {}
        }
    }
}

/// Where a pump's messages come from: the connection itself, or (`--e2e`) its crypto stage.
enum Source {
    Plain {
        events: EventStream,
        replay: VecDeque<Event>,
    },
    Crypto(mpsc::Receiver<Item>),
}

impl Source {
    /// The next message; `None` once the connection has ended. Cancel-safe.
    async fn next(&mut self) -> Option<Item> {
        match self {
            Source::Plain { events, replay } => loop {
                let ev = match replay.pop_front() {
                    Some(ev) => Some(ev),
                    None => events.next_event().await,
                };
                match ev {
                    Some(Event::Deliver(message)) => {
                        return Some(Item::Deliver {
                            message,
                            late_key: false,
                        });
                    }
                    Some(Event::Closed(_)) | None => return None,
                    Some(_) => {}
                }
            },
            Source::Crypto(items) => items.recv().await,
        }
    }
}

struct Pump {
    source: Source,
    inbound: mpsc::Sender<Inbound>,
    tx: ConnectionSender,
    index_of: HashMap<ConversationId, usize>,
    cursors: Arc<Mutex<HashMap<ConversationId, u64>>>,
    flush: mpsc::Receiver<oneshot::Sender<()>>,
}

/// Moves deliveries from the connection to the scenario and acknowledges them, coalesced.
/// Ends when the connection closes or the scenario drops its receiver.
async fn pump(mut p: Pump) {
    let mut unacked: HashMap<ConversationId, u64> = HashMap::new();
    let mut unacked_count = 0usize;
    let mut ack_due: Option<tokio::time::Instant> = None;
    loop {
        let next = {
            tokio::select! {
                item = p.source.next() => item,
                () = sleep_until_opt(ack_due) => {
                    flush_acks(&p.tx, &mut unacked).await;
                    unacked_count = 0;
                    ack_due = None;
                    continue;
                }
                req = p.flush.recv() => {
                    flush_acks(&p.tx, &mut unacked).await;
                    unacked_count = 0;
                    ack_due = None;
                    if let Some(done) = req {
                        let _ = done.send(());
                    }
                    continue;
                }
            }
        };
        let (m, late_key, undecryptable) = match next {
            Some(Item::Deliver { message, late_key }) => (message, late_key, None),
            Some(Item::Undecryptable { message, reason }) => (message, false, Some(reason)),
            None => break,
        };
        let conversation = m.conversation;
        let seq = m.seq;
        let item = Inbound {
            // A conversation this user is not in shows up as misrouted in the accounting.
            conversation: p.index_of.get(&conversation).copied().unwrap_or(usize::MAX),
            seq: Some(seq),
            payload: if undecryptable.is_some() {
                Vec::new()
            } else {
                m.payload
            },
            arrived: Instant::now(),
            undecryptable,
            late_key,
        };
        if p.inbound.send(item).await.is_err() {
            break;
        }
        {
            let mut cursors = lock(&p.cursors);
            let c = cursors.entry(conversation).or_insert(0);
            *c = (*c).max(seq);
        }
        let u = unacked.entry(conversation).or_insert(0);
        *u = (*u).max(seq);
        unacked_count += 1;
        if unacked_count >= ACK_EVERY {
            flush_acks(&p.tx, &mut unacked).await;
            unacked_count = 0;
            ack_due = None;
        } else if ack_due.is_none() {
            ack_due = Some(tokio::time::Instant::now() + ACK_INTERVAL);
        }
    }
    // Best effort: the connection may already be gone, and the resume cursor is kept locally.
    flush_acks(&p.tx, &mut unacked).await;
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn flush_acks(tx: &ConnectionSender, unacked: &mut HashMap<ConversationId, u64>) {
    for (conversation, seq) in unacked.drain() {
        if tx.ack(conversation, seq).await.is_err() {
            return;
        }
    }
}

struct TernSender {
    tx: ConnectionSender,
    id_of: HashMap<usize, ConversationId>,
    flush: mpsc::Sender<oneshot::Sender<()>>,
    /// `--e2e`: the device's crypto state.
    crypto: Option<DeviceCrypto>,
}

impl TernSender {
    fn conversation_id(
        &self,
        conversation: &ConversationRef,
    ) -> Result<ConversationId, TargetError> {
        match self.id_of.get(&conversation.index) {
            Some(id) => Ok(*id),
            None => conversation
                .key
                .parse()
                .map_err(|e| TargetError::Send(format!("bad conversation key: {e}"))),
        }
    }
}

#[async_trait::async_trait]
impl MessageSender for TernSender {
    async fn send(
        &self,
        conversation: &ConversationRef,
        payload: Vec<u8>,
    ) -> Result<SendOutcome, TargetError> {
        // Same message → same key, so retries are idempotent; a payload without a loadgen
        // header (never sent by the scenarios) gets a random one.
        let client_msg_id = Header::decode(&payload)
            .map(|h| h.client_msg_id())
            .unwrap_or_else(|_| uuid::Uuid::new_v4().as_u128());
        self.send_with_key(conversation, payload, client_msg_id)
            .await
    }

    async fn send_with_key(
        &self,
        conversation: &ConversationRef,
        payload: Vec<u8>,
        client_msg_id: u128,
    ) -> Result<SendOutcome, TargetError> {
        let id = self.conversation_id(conversation)?;
        let (content_type, payload) = match &self.crypto {
            None => (CONTENT_TYPE.to_string(), payload),
            Some(crypto) => {
                let (content_type, payload, _cost) =
                    tern_e2e::encrypt(crypto, &self.tx, id, CONTENT_TYPE, &payload).await?;
                (content_type, payload)
            }
        };
        self.tx
            .send(id, client_msg_id, &content_type, payload)
            .await
            .map(|r| SendOutcome {
                seq: Some(r.seq),
                duplicate: r.duplicate,
            })
            .map_err(|e| match e {
                SdkError::Timeout(what) => TargetError::Timeout(what.to_string()),
                other => TargetError::Send(other.to_string()),
            })
    }

    async fn close(&self) {
        // Acknowledge what was received first, so the server's cursor for this device is
        // current (a later run or a real client would resume from it).
        let (done_tx, done_rx) = oneshot::channel();
        if self.flush.send(done_tx).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(1), done_rx).await;
        }
        self.tx.close().await;
    }
}

// ---------------------------------------------------------------------------------------------
// Setup state

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Cred {
    name: String,
    token: String,
    /// Filled at registration (older state files: by `GET /me` when `--e2e` needs it).
    #[serde(default)]
    user_id: Option<UserId>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SetupState {
    version: u32,
    server: String,
    fingerprint: String,
    /// Username prefix, random per state: a fresh state never collides with older accounts.
    prefix: String,
    device_seed: u64,
    users: Vec<Option<Cred>>,
    conversations: Vec<Option<String>>,
}

impl SetupState {
    fn fresh(server: &str, fingerprint: &str, p: &Population) -> SetupState {
        let r: u64 = rand::random();
        SetupState {
            version: STATE_VERSION,
            server: server.to_string(),
            fingerprint: fingerprint.to_string(),
            prefix: format!("lg{:08x}", r as u32),
            device_seed: rand::random(),
            users: vec![None; p.users],
            conversations: vec![None; p.conversations.len()],
        }
    }

    fn username(&self, i: usize) -> String {
        format!("{}-{i}", self.prefix)
    }
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn load_state(path: &Path, server: &str, fingerprint: &str, p: &Population) -> Option<SetupState> {
    let bytes = std::fs::read(path).ok()?;
    let st: SetupState = match serde_json::from_slice(&bytes) {
        Ok(st) => st,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable setup state");
            return None;
        }
    };
    (st.version == STATE_VERSION
        && st.server == server
        && st.fingerprint == fingerprint
        && st.users.len() == p.users
        && st.conversations.len() == p.conversations.len())
    .then_some(st)
}

fn save_state(path: &Path, st: &SetupState) -> Result<(), TargetError> {
    let err =
        |e: std::io::Error| TargetError::Setup(format!("cannot write {}: {e}", path.display()));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let json = serde_json::to_vec(st).map_err(|e| TargetError::Setup(e.to_string()))?;
    // Write then rename: an interrupted save never leaves a truncated file behind.
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, json).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

fn is_unauthenticated(e: &SdkError) -> bool {
    matches!(e, SdkError::Api(f) if f.status == 401 || f.code == "unauthenticated")
}

/// Checks a spread-out sample of cached tokens with `GET /me`. A rejected token means the
/// server's data is not the one the state was made for (new data dir, tokens expired).
async fn tokens_still_accepted(http: &HttpApi, st: &SetupState) -> Result<bool, TargetError> {
    let with_token: Vec<&Cred> = st.users.iter().flatten().collect();
    if with_token.is_empty() {
        return Ok(true);
    }
    let n = with_token.len();
    let mut picks: Vec<usize> = (0..8).map(|k| k * (n - 1) / 7).collect();
    picks.dedup();
    for i in picks {
        let cred = with_token[i];
        let authed = http.clone().with_token(cred.token.clone());
        match with_retry(|| {
            let authed = authed.clone();
            async move { authed.me().await }
        })
        .await
        {
            Ok(me) if me.username == cred.name => {}
            Ok(_) => return Ok(false),
            Err(e) if is_unauthenticated(&e) => return Ok(false),
            Err(e) => return Err(TargetError::Setup(format!("checking cached tokens: {e}"))),
        }
    }
    Ok(true)
}

/// Runs an API call, waiting out `429 Too Many Requests` (the per-address login limit) as often
/// as the server asks, up to ten minutes in total.
async fn with_retry<T, F, Fut>(mut call: F) -> tern_sdk::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = tern_sdk::Result<T>>,
{
    let give_up = Instant::now() + Duration::from_secs(600);
    loop {
        match call().await {
            Err(SdkError::Api(f)) if f.status == 429 && Instant::now() < give_up => {
                let wait = f.retry_after.unwrap_or(Duration::from_secs(1));
                tracing::warn!(
                    wait_s = wait.as_secs(),
                    "rate limited during setup; waiting (raise login_attempts_per_address, registrations_per_address, registrations_per_window)"
                );
                tokio::time::sleep(wait.max(Duration::from_millis(100))).await;
            }
            other => return other,
        }
    }
}

/// Learns the user id of every cached credential that lacks one (`GET /me`).
async fn fill_user_ids(
    http: &HttpApi,
    st: &mut SetupState,
    conc: usize,
) -> Result<(), TargetError> {
    let jobs: Vec<_> = st
        .users
        .iter()
        .enumerate()
        .filter_map(|(i, c)| c.as_ref().filter(|c| c.user_id.is_none()).map(|c| (i, c)))
        .map(|(i, c)| {
            let authed = http.clone().with_token(c.token.clone());
            async move {
                let r = with_retry(|| {
                    let authed = authed.clone();
                    async move { authed.me().await }
                })
                .await;
                (i, r)
            }
        })
        .collect();
    let mut results = futures_util::stream::iter(jobs).buffer_unordered(conc);
    while let Some((i, r)) = results.next().await {
        let me = r.map_err(|e| TargetError::Setup(format!("user {i}: GET /me: {e}")))?;
        if let Some(c) = st.users[i].as_mut() {
            c.user_id = Some(me.user_id);
        }
    }
    Ok(())
}

/// Every invitee accepts `conversation` (a group invitation or a 1:1 request), many at once:
/// a group of 100 is joined in parallel. An invitation already used up (an earlier run)
/// counts as accepted.
async fn accept_invitations(
    conversation: tern_sdk::tern_wire::ids::ConversationId,
    invitees: Vec<HttpApi>,
) -> tern_sdk::Result<()> {
    /// Accepts in flight per conversation (each is one HTTPS request).
    const PARALLEL_ACCEPTS: usize = 32;
    let results: Vec<tern_sdk::Result<()>> = futures_util::stream::iter(invitees)
        .map(|http| async move {
            match with_retry(|| http.accept_invitation(conversation)).await {
                Ok(_) => Ok(()),
                Err(e) if e.code() == Some("not_found") => Ok(()),
                Err(e) => Err(e),
            }
        })
        .buffer_unordered(PARALLEL_ACCEPTS)
        .collect()
        .await;
    results.into_iter().collect()
}

async fn register_one(http: HttpApi, name: String) -> Result<Cred, TargetError> {
    let fail = |what: &str, e: SdkError| TargetError::Setup(format!("{what} {name}: {e}"));
    match with_retry(|| {
        let http = http.clone();
        let name = name.clone();
        async move { http.register(&name, PASSWORD).await }
    })
    .await
    {
        Ok(_) => {}
        // Registered by an earlier, interrupted setup whose token was not saved: log in.
        Err(SdkError::Api(f)) if f.code == "conflict" => {}
        Err(e) => return Err(fail("registering", e)),
    }
    let login = with_retry(|| {
        let mut http = http.clone();
        let name = name.clone();
        async move { http.login(&name, PASSWORD).await }
    })
    .await
    .map_err(|e| fail("logging in", e))?;
    Ok(Cred {
        name,
        token: login.token,
        user_id: Some(login.user_id),
    })
}

async fn register_users(
    http: &HttpApi,
    st: &mut SetupState,
    path: Option<&Path>,
    conc: usize,
) -> Result<(), TargetError> {
    let missing: Vec<usize> = (0..st.users.len())
        .filter(|&i| st.users[i].is_none())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    tracing::info!(
        users = missing.len(),
        "registering users (argon2id: this takes a while)"
    );
    let started = Instant::now();
    let jobs: Vec<_> = missing
        .into_iter()
        .map(|i| {
            let http = http.clone();
            let name = st.username(i);
            async move { (i, register_one(http, name).await) }
        })
        .collect();
    let mut results = futures_util::stream::iter(jobs).buffer_unordered(conc);
    let mut since_save = 0usize;
    let mut done = 0usize;
    let mut first_err = None;
    while let Some((i, r)) = results.next().await {
        match r {
            Ok(cred) => {
                st.users[i] = Some(cred);
                done += 1;
                since_save += 1;
                if since_save >= CHECKPOINT_EVERY {
                    since_save = 0;
                    if let Some(p) = path {
                        save_state(p, st)?;
                    }
                    tracing::info!(done, elapsed_s = started.elapsed().as_secs(), "registered");
                }
            }
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    if let Some(p) = path {
        save_state(p, st)?;
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

async fn create_conversations(
    http: &HttpApi,
    st: &mut SetupState,
    p: &Population,
    path: Option<&Path>,
    conc: usize,
) -> Result<(), TargetError> {
    let missing: Vec<usize> = (0..p.conversations.len())
        .filter(|&c| st.conversations[c].is_none())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    tracing::info!(conversations = missing.len(), "creating conversations");
    let mut jobs = Vec::with_capacity(missing.len());
    for c in missing {
        let members = &p.conversations[c];
        let creator = st.users[members[0]]
            .clone()
            .ok_or_else(|| TargetError::Setup(format!("user {} not registered", members[0])))?;
        let others: Vec<String> = members[1..].iter().map(|&u| st.username(u)).collect();
        // Group names are unique per server: the run's prefix keeps two setups on one data
        // directory (the matrix's tern-ws and tern-wt targets) from colliding on "loadgen 3000".
        let group_name = format!("loadgen {} {c}", st.prefix);
        let mut invitees = Vec::with_capacity(members.len() - 1);
        for &u in &members[1..] {
            let cred = st.users[u]
                .clone()
                .ok_or_else(|| TargetError::Setup(format!("user {u} not registered")))?;
            invitees.push(http.clone().with_token(cred.token));
        }
        let http = http.clone().with_token(creator.token);
        jobs.push(async move {
            let r = with_retry(|| {
                let http = http.clone();
                let others = others.clone();
                let group_name = group_name.clone();
                async move {
                    if others.len() == 1 {
                        http.create_direct(&others[0]).await
                    } else {
                        http.create_group(&group_name, "", &others).await
                    }
                }
            })
            .await;
            let r = match r {
                Ok(view) => accept_invitations(view.conversation_id, invitees)
                    .await
                    .map(|()| view),
                Err(e) => Err(e),
            };
            (c, r)
        });
    }
    let mut results = futures_util::stream::iter(jobs).buffer_unordered(conc);
    let mut since_save = 0usize;
    let mut first_err = None;
    while let Some((c, r)) = results.next().await {
        match r {
            Ok(view) => {
                st.conversations[c] = Some(view.conversation_id.to_string());
                since_save += 1;
                if since_save >= CHECKPOINT_EVERY {
                    since_save = 0;
                    if let Some(path) = path {
                        save_state(path, st)?;
                    }
                }
            }
            Err(e) => {
                first_err.get_or_insert(TargetError::Setup(format!(
                    "creating conversation {c}: {e}"
                )));
            }
        }
    }
    if let Some(path) = path {
        save_state(path, st)?;
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Each conversation's last seq now: where first connections resume, so that history left by
/// earlier runs is not replayed. One `GET /conversations` per distinct first member. A cached
/// conversation the server no longer knows is created again.
async fn last_seqs(
    http: &HttpApi,
    st: &mut SetupState,
    p: &Population,
    path: Option<&Path>,
    conc: usize,
) -> Result<HashMap<String, u64>, TargetError> {
    let mut by_first: HashMap<usize, Vec<usize>> = HashMap::new();
    for (c, members) in p.conversations.iter().enumerate() {
        by_first.entry(members[0]).or_default().push(c);
    }
    let mut jobs = Vec::new();
    for (user, convs) in by_first {
        let cred = st.users[user]
            .clone()
            .ok_or_else(|| TargetError::Setup(format!("user {user} not registered")))?;
        let http = http.clone().with_token(cred.token);
        jobs.push(async move {
            let r = with_retry(|| {
                let http = http.clone();
                async move { http.conversations().await }
            })
            .await;
            (convs, r)
        });
    }
    let mut out = HashMap::new();
    let mut lost = Vec::new();
    let mut results = futures_util::stream::iter(jobs).buffer_unordered(conc);
    while let Some((convs, r)) = results.next().await {
        let list = r.map_err(|e| TargetError::Setup(format!("listing conversations: {e}")))?;
        let seqs: HashMap<String, u64> = list
            .into_iter()
            .map(|v| (v.conversation_id.to_string(), v.last_seq))
            .collect();
        for c in convs {
            let Some(key) = st.conversations[c].clone() else {
                continue;
            };
            match seqs.get(&key) {
                Some(&seq) => {
                    out.insert(key, seq);
                }
                None => lost.push(c),
            }
        }
    }
    drop(results);
    if !lost.is_empty() {
        tracing::warn!(
            count = lost.len(),
            "cached conversations unknown to the server; creating them again"
        );
        for &c in &lost {
            st.conversations[c] = None;
        }
        create_conversations(http, st, p, path, conc).await?;
        for c in lost {
            if let Some(key) = &st.conversations[c] {
                out.insert(key.clone(), 0);
            }
        }
    }
    Ok(out)
}
