//! `--e2e` for the Tern target: every simulated device holds a real [`E2e`] (Olm/Megolm through
//! the SDK's driver, state in memory), so the load generator pays what a real client pays and
//! the server carries only ciphertext.
//!
//! * **Keys**: a device publishes its identity, one-time and fallback keys right after it
//!   connects (before `connect` resolves, so every key is in the directory before traffic
//!   starts), and tops up one-time keys on later connections.
//! * **Sending**: [`encrypt`] runs the SDK's shared-state send flow (device-list queries, one-time key
//!   claims, Olm key shares on a conversation's first message and on every rotation), then
//!   the caller sends the Megolm payload.
//! * **Receiving**: [`crypto_stage`] sits between the connection's events and the target's pump:
//!   key shares go to [`E2e::on_key_share`] (and the inbox is acknowledged with
//!   `AckKeyShares`), messages to [`E2e::decrypt`]. A share from a device this one has not
//!   looked up yet triggers a device-list query, after which the waiting messages are retried.
//!   What comes out is a decrypted message or an undecryptable one with its reason: never a
//!   silent drop. Messages still waiting for a key when the connection ends are reported as
//!   undecryptable too.
//!
//! The device's [`E2e`] sits behind an async mutex shared by the sender and the stage. The
//! sender holds it only for the machine's synchronous steps, never across its key requests;
//! the stage never waits for it while events queue
//! up (it keeps reading them into a bounded backlog), so a reply the sender waits for can never
//! be stuck behind a full event queue.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use tern_sdk::e2e::{
    CryptoConfig, CryptoEvent, CryptoNotice, OutgoingCost, Undecryptable, UndecryptableMessage,
    is_encrypted_content_type,
};
use tern_sdk::tern_wire::ids::{ConversationId, MessageId, UserId};
use tern_sdk::tern_wire::msg::{ClientMessage, Message, ServerMessage};
use tern_sdk::{ConnectionSender, E2e, Event, EventStream};
use tokio::sync::{Mutex, mpsc};

use super::TargetError;

/// Events read ahead while the device's crypto state is busy with a send. Beyond this the stage
/// waits for the state (the connection's own queue then absorbs the rest).
const MAX_BACKLOG: usize = 4_096;
/// Items queued from the stage to the pump.
const STAGE_QUEUE: usize = 256;
/// A message whose key has not come this long after it is reported undecryptable (`NoKeyYet`)
/// and stops holding back its conversation. Below the runs' default drain (5 s), so it is
/// counted before the accounting; far above a normal late key (milliseconds).
const KEY_WAIT_LIMIT: std::time::Duration = std::time::Duration::from_secs(3);

/// One device's crypto state, shared by its sender and its receive stage.
pub type DeviceCrypto = Arc<Mutex<E2e>>;

/// The tunables a run uses: the SDK defaults except what the scenario sets.
pub fn crypto_config(rotation_messages: u32) -> CryptoConfig {
    CryptoConfig {
        rotation_messages,
        ..CryptoConfig::default()
    }
}

fn crypto_err(what: &str, e: tern_sdk::Error) -> TargetError {
    TargetError::Connect(format!("e2e {what}: {e}"))
}

/// A new in-memory device for the user the server welcomed, knowing its conversations' members.
pub fn new_device(
    welcome: &tern_sdk::Welcome,
    config: CryptoConfig,
    members: &[(ConversationId, Vec<UserId>)],
) -> Result<DeviceCrypto, TargetError> {
    let mut e2e = E2e::in_memory(welcome.user, welcome.device, config)
        .map_err(|e| crypto_err("device state", e))?;
    for (conversation, users) in members {
        e2e.set_members(*conversation, users.clone());
    }
    Ok(Arc::new(Mutex::new(e2e)))
}

/// Publishes the device's keys when it has new ones (first connection, one-time keys low).
pub async fn publish(crypto: &DeviceCrypto, tx: &ConnectionSender) -> Result<(), TargetError> {
    publish_with(crypto, tx, tx.welcome().one_time_keys_left)
        .await
        .map_err(|e| crypto_err("publishing keys", e))
}

/// Publishes new keys for a server count of `left` unclaimed one-time keys, with the state
/// locked only to make and to mark them (never across the round trip).
async fn publish_with(
    crypto: &DeviceCrypto,
    tx: &ConnectionSender,
    left: u32,
) -> tern_sdk::Result<()> {
    let Some(keys) = crypto.lock().await.machine_mut().keys_to_publish(left) else {
        return Ok(());
    };
    let keys = tern_sdk::e2e::wire_from_published(&keys);
    tern_sdk::e2e::request_patiently(tx, |request_id| ClientMessage::PublishKeys {
        request_id,
        keys: keys.clone(),
    })
    .await?;
    crypto.lock().await.machine_mut().mark_keys_published();
    Ok(())
}

fn send_err(what: &str, e: impl std::fmt::Display) -> TargetError {
    TargetError::Send(format!("e2e {what}: {e}"))
}

/// Looks up `users`' device lists: the requests go out WITHOUT the device's crypto state
/// locked (only applying the answers locks it), so decryption never waits for a round trip.
async fn query_users(
    crypto: &DeviceCrypto,
    tx: &ConnectionSender,
    users: &[UserId],
) -> Result<(), TargetError> {
    let lists = tern_sdk::e2e::fetch_device_lists(tx, users)
        .await
        .map_err(|e| send_err("query", e))?;
    crypto
        .lock()
        .await
        .apply_device_lists(lists)
        .map_err(|e| send_err("device list", e))
}

/// Encrypts one send; returns the content type and payload to send, and what it cost: the
/// SDK's [`tern_sdk::e2e::encrypt_outgoing_shared`], which locks the device's state only for
/// the machine's own (synchronous) steps, never across a round trip (under a cold-start burst
/// every device's first message to a 50-member group claims 49 keys, and holding the state
/// for that made every delivery to the device wait for its own slow send).
pub async fn encrypt(
    crypto: &DeviceCrypto,
    tx: &ConnectionSender,
    conversation: ConversationId,
    content_type: &str,
    payload: &[u8],
) -> Result<(String, Vec<u8>, OutgoingCost), TargetError> {
    let (content_type, payload, cost) = tern_sdk::e2e::encrypt_outgoing_shared(
        crypto.as_ref(),
        tx,
        conversation,
        content_type,
        payload,
    )
    .await
    .map_err(|e| send_err("encrypt", e))?;
    LAST_COST
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(tx.welcome().device, cost);
    Ok((content_type, payload, cost))
}

/// What each device's last send cost (`tern-loadgen rotation` reads it).
static LAST_COST: std::sync::LazyLock<
    std::sync::Mutex<HashMap<tern_sdk::tern_wire::ids::DeviceId, OutgoingCost>>,
> = std::sync::LazyLock::new(Default::default);

/// What the last send of `device` cost.
pub fn last_cost(device: tern_sdk::tern_wire::ids::DeviceId) -> Option<OutgoingCost> {
    LAST_COST
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&device)
        .copied()
}

/// What the stage hands to the pump.
#[derive(Debug)]
pub enum Item {
    /// A readable message (decrypted; `late_key`: it had to wait for its key).
    Deliver { message: Message, late_key: bool },
    /// A message that cannot be read, and why.
    Undecryptable { message: Message, reason: String },
}

impl Item {
    fn message(&self) -> &Message {
        match self {
            Item::Deliver { message, .. } | Item::Undecryptable { message, .. } => message,
        }
    }
}

/// One step of a handled batch, in server order: an item, or a message that waits for its key
/// (later items of its conversation are held back behind it, so each conversation stays in
/// seq order as a client shows it; their latency then includes the wait).
enum Step {
    Out(Item),
    Hold(ConversationId, MessageId),
}

fn reason_text(reason: &Undecryptable) -> String {
    let short = match reason {
        Undecryptable::NoKeyYet => "NoKeyYet",
        Undecryptable::Withheld(_) => "Withheld",
        Undecryptable::UntrustedDevice => "UntrustedDevice",
        Undecryptable::Tampered => "Tampered",
        Undecryptable::Replayed => "Replayed",
        Undecryptable::WrongConversation => "WrongConversation",
        Undecryptable::Unsupported => "Unsupported",
        #[allow(unreachable_patterns)]
        _ => "other",
    };
    format!("{short}: {reason}")
}

/// Per-connection receive state.
struct Stage {
    crypto: DeviceCrypto,
    tx: ConnectionSender,
    out: mpsc::Sender<Item>,
    /// Messages the E2e keeps for a retry (no key yet, sender device not looked up yet).
    waiting: HashMap<MessageId, (Message, std::time::Instant)>,
    /// Messages already reported undecryptable after [`KEY_WAIT_LIMIT`]: a key arriving later
    /// does not deliver them a second time.
    given_up: std::collections::HashSet<MessageId>,
    /// Per conversation, in server order: messages waiting (`None`) and the items held behind
    /// them.
    order: HashMap<ConversationId, VecDeque<(MessageId, Option<Item>)>>,
    late_tx: mpsc::UnboundedSender<Vec<Result<Message, UndecryptableMessage>>>,
}

/// Starts the receive stage of one connection: decrypts what `events` (after the resume
/// `replay`) carries and sends [`Item`]s to the returned receiver, which closes when the
/// connection has ended and every item is out.
pub fn crypto_stage(
    crypto: DeviceCrypto,
    tx: ConnectionSender,
    events: EventStream,
    replay: VecDeque<Event>,
) -> mpsc::Receiver<Item> {
    let (out, rx) = mpsc::channel(STAGE_QUEUE);
    let (late_tx, late_rx) = mpsc::unbounded_channel();
    let stage = Stage {
        crypto,
        tx,
        out,
        waiting: HashMap::new(),
        given_up: std::collections::HashSet::new(),
        order: HashMap::new(),
        late_tx,
    };
    tokio::spawn(stage.run(events, replay, late_rx));
    rx
}

/// What one batch of events asks for after it was handled under the lock.
#[derive(Default)]
struct Outcome {
    items: Vec<Step>,
    query: BTreeSet<UserId>,
    inbox_ack: Vec<ClientMessage>,
    /// The server said claims left this many one-time keys: publish more.
    keys_low: Option<u32>,
}

impl Stage {
    async fn run(
        mut self,
        mut events: EventStream,
        mut backlog: VecDeque<Event>,
        mut late_rx: mpsc::UnboundedReceiver<Vec<Result<Message, UndecryptableMessage>>>,
    ) {
        let mut closed = false;
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if closed && backlog.is_empty() {
                break;
            }
            let crypto = self.crypto.clone();
            tokio::select! {
                biased;
                Some(late) = late_rx.recv() => {
                    let items = self.finish(late, true);
                    if !self.emit(items.into_iter().map(Step::Out).collect()).await {
                        return;
                    }
                }
                mut e2e = crypto.lock(), if !backlog.is_empty() => {
                    let outcome = self.handle(&mut e2e, &mut backlog);
                    drop(e2e);
                    if !self.apply(outcome).await {
                        return;
                    }
                }
                _ = tick.tick(), if !self.waiting.is_empty() => {
                    let expired = self.expire_waiting();
                    if !self.emit(expired).await {
                        return;
                    }
                }
                ev = events.next_event(), if !closed && backlog.len() < MAX_BACKLOG => {
                    match ev {
                        None | Some(Event::Closed(_)) => closed = true,
                        Some(ev) => backlog.push_back(ev),
                    }
                }
            }
        }
        // Queries still running may yet resolve some waiting messages: give them a moment,
        // then report what never became readable.
        let grace = tokio::time::sleep(std::time::Duration::from_secs(2));
        tokio::pin!(grace);
        while !self.waiting.is_empty() {
            tokio::select! {
                Some(late) = late_rx.recv() => {
                    let items = self.finish(late, true);
                    if !self.emit(items.into_iter().map(Step::Out).collect()).await {
                        return;
                    }
                }
                () = &mut grace => break,
            }
        }
        let leftover: Vec<Step> = self
            .waiting
            .drain()
            .map(|(_, (message, _))| {
                Step::Out(Item::Undecryptable {
                    message,
                    reason: "NoKeyYet: still waiting for its key when the connection ended".into(),
                })
            })
            .collect();
        self.emit(leftover).await;
    }

    /// Handles the backlog with the state locked (no awaits).
    fn handle(&mut self, e2e: &mut E2e, backlog: &mut VecDeque<Event>) -> Outcome {
        let mut outcome = Outcome::default();
        while let Some(ev) = backlog.pop_front() {
            match ev {
                Event::Deliver(m) => {
                    if !is_encrypted_content_type(&m.content_type) {
                        // Every device of an --e2e run encrypts: plaintext here is a failure.
                        outcome.items.push(Step::Out(Item::Undecryptable {
                            reason: format!("not encrypted (content type {:?})", m.content_type),
                            message: m,
                        }));
                        continue;
                    }
                    match e2e.decrypt(&m) {
                        Ok(plain) => outcome.items.push(Step::Out(Item::Deliver {
                            message: plain,
                            late_key: false,
                        })),
                        Err(u) => match u.reason {
                            Undecryptable::NoKeyYet | Undecryptable::UntrustedDevice => {
                                if u.reason == Undecryptable::UntrustedDevice {
                                    outcome.query.insert(m.sender_user);
                                }
                                outcome.items.push(Step::Hold(m.conversation, m.message_id));
                                self.waiting
                                    .insert(m.message_id, (m, std::time::Instant::now()));
                            }
                            reason => outcome.items.push(Step::Out(Item::Undecryptable {
                                message: *u.message,
                                reason: reason_text(&reason),
                            })),
                        },
                    }
                }
                Event::Other(ServerMessage::KeyShare {
                    from_user,
                    from_device,
                    payload,
                    inbox_id,
                }) => match e2e.on_key_share(from_user, from_device, &payload, inbox_id) {
                    Ok(ready) => outcome
                        .items
                        .extend(self.finish(ready, true).into_iter().map(Step::Out)),
                    Err(e) => tracing::warn!(error = %e, "e2e: key share not kept"),
                },
                Event::Other(ServerMessage::DeviceListChanged { user }) => {
                    e2e.on_device_list_changed(user);
                }
                Event::Other(ServerMessage::OneTimeKeysLow { left }) => {
                    outcome.keys_low = Some(left);
                }
                Event::Other(ServerMessage::MemberRemoved { conversation, user }) => {
                    if let Err(e) = e2e.on_member_removed(conversation, user) {
                        tracing::warn!(error = %e, "e2e: member removal not recorded");
                    }
                }
                _ => {}
            }
        }
        for notice in e2e.take_notices() {
            match notice {
                CryptoNotice::Key(CryptoEvent::UnknownDevice { user, .. }) => {
                    outcome.query.insert(user);
                }
                other => tracing::warn!(?other, "e2e notice"),
            }
        }
        outcome.inbox_ack = e2e.take_inbox_ack();
        outcome
    }

    /// Messages that waited longer than [`KEY_WAIT_LIMIT`], reported undecryptable.
    fn expire_waiting(&mut self) -> Vec<Step> {
        let now = std::time::Instant::now();
        let expired: Vec<MessageId> = self
            .waiting
            .iter()
            .filter(|(_, (_, since))| now.duration_since(*since) >= KEY_WAIT_LIMIT)
            .map(|(id, _)| *id)
            .collect();
        let mut steps = Vec::new();
        for id in expired {
            if let Some((message, _)) = self.waiting.remove(&id) {
                self.given_up.insert(id);
                steps.push(Step::Out(Item::Undecryptable {
                    message,
                    reason: format!("NoKeyYet: no key within {KEY_WAIT_LIMIT:?}"),
                }));
            }
        }
        steps
    }

    /// Turns decrypt results of waiting messages into items.
    fn finish(
        &mut self,
        results: Vec<Result<Message, UndecryptableMessage>>,
        late_key: bool,
    ) -> Vec<Item> {
        results
            .into_iter()
            .filter(|r| {
                let id = match r {
                    Ok(m) => m.message_id,
                    Err(u) => u.message.message_id,
                };
                !self.given_up.contains(&id)
            })
            .map(|r| match r {
                Ok(message) => {
                    self.waiting.remove(&message.message_id);
                    Item::Deliver { message, late_key }
                }
                Err(u) => {
                    self.waiting.remove(&u.message.message_id);
                    Item::Undecryptable {
                        reason: reason_text(&u.reason),
                        message: *u.message,
                    }
                }
            })
            .collect()
    }

    async fn apply(&mut self, outcome: Outcome) -> bool {
        for ack in &outcome.inbox_ack {
            // Fire-and-forget like the server's protocol; a lost ack only means the entries
            // come again on the next Hello (and are ignored as known sessions).
            let _ = self.tx.send_message(ack).await;
        }
        if let Some(left) = outcome.keys_low {
            let (crypto, tx) = (self.crypto.clone(), self.tx.clone());
            tokio::spawn(async move {
                if let Err(e) = publish_with(&crypto, &tx, left).await {
                    tracing::warn!(error = %e, "e2e: one-time key top-up failed");
                }
            });
        }
        if !outcome.query.is_empty() {
            let users: Vec<UserId> = outcome.query.into_iter().collect();
            tokio::spawn(query_then_retry(
                self.crypto.clone(),
                self.tx.clone(),
                users,
                self.late_tx.clone(),
            ));
        }
        self.emit(outcome.items).await
    }

    /// Sends what is not held back, in each conversation's server order.
    async fn emit(&mut self, steps: Vec<Step>) -> bool {
        let mut ready = Vec::new();
        for step in steps {
            match step {
                Step::Hold(conversation, id) => {
                    self.order
                        .entry(conversation)
                        .or_default()
                        .push_back((id, None));
                }
                Step::Out(item) => {
                    let conversation = item.message().conversation;
                    let id = item.message().message_id;
                    let Some(queue) = self.order.get_mut(&conversation) else {
                        ready.push(item);
                        continue;
                    };
                    match queue.iter_mut().find(|(m, _)| *m == id) {
                        Some(slot) => slot.1 = Some(item),
                        None => queue.push_back((id, Some(item))),
                    }
                    while queue.front().is_some_and(|(_, item)| item.is_some()) {
                        if let Some((_, Some(item))) = queue.pop_front() {
                            ready.push(item);
                        }
                    }
                    if queue.is_empty() {
                        self.order.remove(&conversation);
                    }
                }
            }
        }
        for item in ready {
            if self.out.send(item).await.is_err() {
                return false;
            }
        }
        true
    }
}

/// Looks up `users`' devices (a key share came from a device not in the directory yet), then
/// retries the messages that waited for them.
async fn query_then_retry(
    crypto: DeviceCrypto,
    tx: ConnectionSender,
    users: Vec<UserId>,
    late: mpsc::UnboundedSender<Vec<Result<Message, UndecryptableMessage>>>,
) {
    if let Err(e) = query_users(&crypto, &tx, &users).await {
        tracing::warn!(error = %e, "e2e: device-list query failed");
        return;
    }
    let ready = crypto.lock().await.retry_waiting();
    if !ready.is_empty() {
        let _ = late.send(ready);
    }
}
