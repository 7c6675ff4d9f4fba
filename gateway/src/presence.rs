//! Presence (online / away / offline with last-seen) and typing indicators: ephemeral state,
//! never persisted.
//!
//! Design: one task (on shard 0's runtime) owns all of it and is reached only through a bounded
//! command queue, so no lock is taken anywhere and there is exactly one place that knows whether
//! a user is online. Presence changes are rare (connect, disconnect, away) and typing is rate
//! limited per device before anything else happens, so one task is far from a bottleneck at the
//! scale one process serves; the command type is shard-agnostic, so splitting the task by user
//! hash later changes only [`PresenceService`]'s routing. Store reads (contacts, members) run in
//! spawned tasks whose results come back as commands: the owner task never waits on disk.
//!
//! Sessions get events through their own small bounded queue (`try_send`; a full queue drops
//! the event: typing is unreliable by design and presence is re-sent on every change and on
//! every connect). Typing goes out as a WebTransport datagram where the session has them.
//!
//! Bounds: devices are bounded by connections; `last_seen` of offline users and typing
//! indicators have fixed caps (the oldest / an arbitrary entry is evicted); every typing
//! indicator expires after `typing_timeout`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tern_engine::conversations::{accepted_contacts, engine_members};
use tern_engine::driver::now_ms;
use tern_engine::store::Store;
use tern_wire::ids::{ConversationId, UserId};
use tern_wire::msg::{PresenceStatus, ServerMessage};
use tokio::sync::mpsc;

use crate::metrics::GatewayMetrics;

/// Commands queued to the presence task before senders wait (connect/disconnect) or drop
/// (typing, away).
const COMMAND_QUEUE: usize = 8192;
/// Events queued to one session; beyond this they are dropped.
pub const SESSION_EVENTS: usize = 256;
/// Offline users whose last-seen time is remembered.
const MAX_LAST_SEEN: usize = 100_000;
/// Typing indicators alive at once.
const MAX_TYPING: usize = 65_536;
/// Typing updates one device may send per `RATE_WINDOW`; excess is dropped silently.
const TYPING_PER_WINDOW: u32 = 5;
const RATE_WINDOW: Duration = Duration::from_secs(1);
/// How often grace periods and typing expiries are checked.
const TICK: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy)]
pub struct PresenceConfig {
    /// A user whose last device disconnected stays online this long (a reconnect within it
    /// does not flap).
    pub grace: Duration,
    /// A typing indicator not refreshed for this long ends (`Typing { active: false }`).
    pub typing_timeout: Duration,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        PresenceConfig {
            grace: Duration::from_secs(5),
            typing_timeout: Duration::from_secs(5),
        }
    }
}

/// One encoded server envelope for a session. `datagram`: may go as a WebTransport datagram.
#[derive(Debug, Clone)]
pub struct PresenceEvent {
    pub bytes: Bytes,
    pub datagram: bool,
}

enum Command {
    Connect {
        user: UserId,
        conn: u64,
        events: mpsc::Sender<PresenceEvent>,
    },
    Disconnect {
        user: UserId,
        conn: u64,
    },
    SetAway {
        user: UserId,
        conn: u64,
        away: bool,
    },
    Typing {
        user: UserId,
        conn: u64,
        conversation: ConversationId,
        active: bool,
    },
    /// Result of a contact lookup: send `user`'s current presence to `contacts` (if
    /// `announce`) and the contacts' presence to `conn` (if given).
    Contacts {
        user: UserId,
        contacts: Vec<UserId>,
        announce: bool,
        snapshot_to: Option<u64>,
    },
    /// Who may see `user`'s presence changed (an accepted request or invitation, an unblock):
    /// announce `user` to its contacts and send its devices their presence.
    Refresh {
        user: UserId,
    },
    /// Result of a membership lookup for a typing update.
    TypingChecked {
        user: UserId,
        conversation: ConversationId,
        active: bool,
        members: Option<Arc<[UserId]>>,
    },
}

/// Cloneable handle to the presence task.
#[derive(Clone)]
pub struct PresenceService {
    commands: mpsc::Sender<Command>,
}

impl PresenceService {
    /// Starts the presence task on `runtime`.
    pub fn spawn(
        store: Arc<dyn Store>,
        config: PresenceConfig,
        metrics: Arc<GatewayMetrics>,
        runtime: &tokio::runtime::Handle,
    ) -> PresenceService {
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let state = State {
            config,
            store,
            metrics,
            commands: tx.downgrade(),
            users: HashMap::new(),
            in_grace: HashSet::new(),
            last_seen: HashMap::new(),
            typing: HashMap::new(),
        };
        runtime.spawn(state.run(rx));
        PresenceService { commands: tx }
    }

    /// A device is authenticated: returns its event queue. Waits if the task is busy (rare).
    pub async fn connect(&self, user: UserId, conn: u64) -> mpsc::Receiver<PresenceEvent> {
        let (events, rx) = mpsc::channel(SESSION_EVENTS);
        let _ = self
            .commands
            .send(Command::Connect { user, conn, events })
            .await;
        rx
    }

    pub async fn disconnect(&self, user: UserId, conn: u64) {
        let _ = self.commands.send(Command::Disconnect { user, conn }).await;
    }

    /// The users whose contacts changed (accept, unblock): presence is exchanged anew.
    pub async fn relations_changed(&self, users: &[UserId]) {
        for &user in users {
            let _ = self.commands.send(Command::Refresh { user }).await;
        }
    }

    /// Never waits: a dropped request under overload is acceptable for presence hints.
    pub fn set_away(&self, user: UserId, conn: u64, away: bool) {
        let _ = self
            .commands
            .try_send(Command::SetAway { user, conn, away });
    }

    /// Never waits; dropped when the task is overloaded (typing is unreliable by design).
    pub fn typing(&self, user: UserId, conn: u64, conversation: ConversationId, active: bool) {
        let _ = self.commands.try_send(Command::Typing {
            user,
            conn,
            conversation,
            active,
        });
    }
}

struct Device {
    events: mpsc::Sender<PresenceEvent>,
    away: bool,
    window_start: Instant,
    in_window: u32,
}

#[derive(Default)]
struct UserState {
    devices: HashMap<u64, Device>,
    /// What contacts were last told.
    announced: Option<PresenceStatus>,
    /// Set while the user has no device: when the grace period ends.
    offline_at: Option<Instant>,
}

struct Typing {
    expires: Instant,
    members: Arc<[UserId]>,
}

struct State {
    config: PresenceConfig,
    store: Arc<dyn Store>,
    metrics: Arc<GatewayMetrics>,
    commands: mpsc::WeakSender<Command>,
    /// Users with a device connected or inside their grace period.
    users: HashMap<UserId, UserState>,
    /// Users inside their grace period (what the tick scans, instead of every user).
    in_grace: HashSet<UserId>,
    /// Offline users' last-seen time (ms since the epoch). Bounded by `MAX_LAST_SEEN`.
    last_seen: HashMap<UserId, u64>,
    /// Live typing indicators. Bounded by `MAX_TYPING`, each expires.
    typing: HashMap<(ConversationId, UserId), Typing>,
}

impl State {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => self.handle(command),
                    None => return,
                },
                _ = tick.tick() => self.expire(Instant::now()),
            }
        }
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Connect { user, conn, events } => {
                let state = self.users.entry(user).or_default();
                state.offline_at = None;
                self.in_grace.remove(&user);
                state.devices.insert(
                    conn,
                    Device {
                        events,
                        away: false,
                        window_start: Instant::now(),
                        in_window: 0,
                    },
                );
                self.last_seen.remove(&user);
                let announce = self.changed(user);
                self.lookup_contacts(user, announce, Some(conn));
            }
            Command::Disconnect { user, conn } => {
                let Some(state) = self.users.get_mut(&user) else {
                    return;
                };
                state.devices.remove(&conn);
                if state.devices.is_empty() {
                    state.offline_at = Some(Instant::now() + self.config.grace);
                    self.in_grace.insert(user);
                } else if self.changed(user) {
                    // The remaining devices are all away.
                    self.lookup_contacts(user, true, None);
                }
            }
            Command::SetAway { user, conn, away } => {
                let Some(device) = self
                    .users
                    .get_mut(&user)
                    .and_then(|s| s.devices.get_mut(&conn))
                else {
                    return;
                };
                device.away = away;
                if self.changed(user) {
                    self.lookup_contacts(user, true, None);
                }
            }
            Command::Typing {
                user,
                conn,
                conversation,
                active,
            } => {
                let now = Instant::now();
                let Some(device) = self
                    .users
                    .get_mut(&user)
                    .and_then(|s| s.devices.get_mut(&conn))
                else {
                    return;
                };
                if now.duration_since(device.window_start) >= RATE_WINDOW {
                    device.window_start = now;
                    device.in_window = 0;
                }
                if device.in_window >= TYPING_PER_WINDOW {
                    self.metrics.typing_dropped.inc();
                    return;
                }
                device.in_window += 1;
                // A refresh of a live indicator reuses its checked member list (at most one
                // timeout old); anything else checks membership in the store first.
                if let Some(live) = self.typing.get(&(conversation, user)) {
                    let members = live.members.clone();
                    self.typing_checked(user, conversation, active, Some(members));
                    return;
                }
                if !active {
                    // Nothing to stop.
                    return;
                }
                let store = self.store.clone();
                let commands = self.commands.clone();
                tokio::spawn(async move {
                    // The engine's view of the members: a blocked 1:1 has none.
                    let members = match store.conversation(conversation).await {
                        Ok(Some(record)) => match engine_members(&*store, &record).await {
                            Ok(members) if members.contains(&user) => Some(members.into()),
                            _ => None,
                        },
                        _ => None,
                    };
                    if let Some(commands) = commands.upgrade() {
                        let _ = commands
                            .send(Command::TypingChecked {
                                user,
                                conversation,
                                active,
                                members,
                            })
                            .await;
                    }
                });
            }
            Command::TypingChecked {
                user,
                conversation,
                active,
                members,
            } => self.typing_checked(user, conversation, active, members),
            Command::Refresh { user } => {
                let conns: Vec<u64> = self
                    .users
                    .get(&user)
                    .map(|s| s.devices.keys().copied().collect())
                    .unwrap_or_default();
                if conns.is_empty() {
                    if self.last_seen.contains_key(&user) {
                        self.lookup_contacts(user, true, None);
                    }
                } else {
                    // Announce once; every device gets its contacts' presence.
                    for (i, conn) in conns.into_iter().enumerate() {
                        self.lookup_contacts(user, i == 0, Some(conn));
                    }
                }
            }
            Command::Contacts {
                user,
                contacts,
                announce,
                snapshot_to,
            } => {
                if announce {
                    let message = self.presence_of(user);
                    self.deliver(&contacts, &message, false);
                }
                if let Some(conn) = snapshot_to {
                    let Some(device) = self.users.get(&user).and_then(|s| s.devices.get(&conn))
                    else {
                        return;
                    };
                    let events = device.events.clone();
                    for contact in contacts {
                        let known = self.users.contains_key(&contact)
                            || self.last_seen.contains_key(&contact);
                        if known {
                            let message = self.presence_of(contact);
                            let _ = events.try_send(PresenceEvent {
                                bytes: encode(&message),
                                datagram: false,
                            });
                        }
                    }
                }
            }
        }
    }

    fn typing_checked(
        &mut self,
        user: UserId,
        conversation: ConversationId,
        active: bool,
        members: Option<Arc<[UserId]>>,
    ) {
        let Some(members) = members else {
            // Not a member (or the store failed): ignored, like any unreliable hint.
            self.metrics.typing_dropped.inc();
            return;
        };
        let key = (conversation, user);
        if active {
            if self.typing.len() >= MAX_TYPING && !self.typing.contains_key(&key) {
                self.metrics.typing_dropped.inc();
                return;
            }
            self.typing.insert(
                key,
                Typing {
                    expires: Instant::now() + self.config.typing_timeout,
                    members: members.clone(),
                },
            );
        } else {
            self.typing.remove(&key);
        }
        let message = ServerMessage::Typing {
            conversation,
            user,
            active,
        };
        let others: Vec<UserId> = members.iter().copied().filter(|m| *m != user).collect();
        self.deliver(&others, &message, true);
    }

    /// Whether `user`'s effective status differs from what contacts were told (and records it).
    fn changed(&mut self, user: UserId) -> bool {
        let Some(state) = self.users.get_mut(&user) else {
            return false;
        };
        let status = if state.devices.is_empty() && state.offline_at.is_none() {
            PresenceStatus::Offline
        } else if !state.devices.is_empty() && state.devices.values().all(|d| d.away) {
            PresenceStatus::Away
        } else {
            PresenceStatus::Online
        };
        if state.announced == Some(status) {
            return false;
        }
        state.announced = Some(status);
        true
    }

    fn presence_of(&self, user: UserId) -> ServerMessage {
        let now = now_ms();
        match self.users.get(&user) {
            Some(state) => ServerMessage::Presence {
                user,
                status: state.announced.unwrap_or(PresenceStatus::Online),
                last_seen_ms: now,
            },
            None => ServerMessage::Presence {
                user,
                status: PresenceStatus::Offline,
                last_seen_ms: self.last_seen.get(&user).copied().unwrap_or(0),
            },
        }
    }

    fn expire(&mut self, now: Instant) {
        let gone: Vec<UserId> = self
            .in_grace
            .iter()
            .filter(|u| {
                self.users.get(u).is_none_or(|s| {
                    s.devices.is_empty() && s.offline_at.is_some_and(|at| at <= now)
                })
            })
            .copied()
            .collect();
        for user in gone {
            self.in_grace.remove(&user);
            self.users.remove(&user);
            if self.last_seen.len() >= MAX_LAST_SEEN
                && let Some(evict) = self.last_seen.keys().next().copied()
            {
                self.last_seen.remove(&evict);
            }
            // Last seen: when the last device left, not when the grace ended.
            let left_ms = now_ms().saturating_sub(self.config.grace.as_millis() as u64);
            self.last_seen.insert(user, left_ms);
            self.lookup_contacts(user, true, None);
        }
        let expired: Vec<(ConversationId, UserId)> = self
            .typing
            .iter()
            .filter(|(_, t)| t.expires <= now)
            .map(|(k, _)| *k)
            .collect();
        for (conversation, user) in expired {
            if let Some(typing) = self.typing.remove(&(conversation, user)) {
                self.metrics.typing_expired.inc();
                let message = ServerMessage::Typing {
                    conversation,
                    user,
                    active: false,
                };
                let others: Vec<UserId> = typing
                    .members
                    .iter()
                    .copied()
                    .filter(|m| *m != user)
                    .collect();
                self.deliver(&others, &message, true);
            }
        }
    }

    /// Pushes one message to every connected device of `users` (never waits).
    fn deliver(&self, users: &[UserId], message: &ServerMessage, datagram: bool) {
        let mut bytes = None;
        for user in users {
            let Some(state) = self.users.get(user) else {
                continue;
            };
            for device in state.devices.values() {
                let bytes = bytes.get_or_insert_with(|| encode(message)).clone();
                if device
                    .events
                    .try_send(PresenceEvent { bytes, datagram })
                    .is_err()
                {
                    self.metrics.presence_events_dropped.inc();
                }
            }
        }
    }

    /// Reads `user`'s contacts in a task; the answer comes back as `Command::Contacts`.
    fn lookup_contacts(&self, user: UserId, announce: bool, snapshot_to: Option<u64>) {
        let store = self.store.clone();
        let commands = self.commands.clone();
        tokio::spawn(async move {
            let contacts = contacts_of(&*store, user).await;
            if let Some(commands) = commands.upgrade() {
                let _ = commands
                    .send(Command::Contacts {
                        user,
                        contacts,
                        announce,
                        snapshot_to,
                    })
                    .await;
            }
        });
    }
}

/// Users who share a conversation with `user` that both accepted, minus blocks either way
/// (see `tern_engine::conversations::accepted_contacts`). A store failure means no contacts.
async fn contacts_of(store: &dyn Store, user: UserId) -> Vec<UserId> {
    match accepted_contacts(store, user).await {
        Ok(contacts) => contacts,
        Err(e) => {
            tracing::warn!(error = %e, "presence: contacts unavailable");
            Vec::new()
        }
    }
}

fn encode(message: &ServerMessage) -> Bytes {
    Bytes::from(tern_wire::encode_server(message))
}
