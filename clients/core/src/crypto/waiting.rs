//! Messages that cannot be decrypted *yet*, kept (bounded) and retried when what they miss
//! arrives: their Megolm key (a key share, or the backup), or their sender device in the
//! directory (a key from a device not looked up yet is stored, but its messages stay
//! `UntrustedDevice` until a device-list query shows that device).
//!
//! Sans-IO over a [`CryptoMachine`] the driver passes in: the native SDK and the web client
//! keep one of these per device and feed it every encrypted message and key share.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use tern_wire::ids::{ConversationId, DeviceId, UserId};
use tern_wire::msg::Message;

use super::formats::session_id_of;
use super::{CryptoEvent, CryptoMachine, Decrypted, Undecryptable};

/// Messages kept for a retry while their key has not arrived. Beyond this the oldest
/// session's messages are dropped (they can still be decrypted from history later): bounds a
/// flood of undecryptable messages.
pub const MAX_WAITING_FOR_KEYS: usize = 10_000;

/// A message and what decrypting it gave.
pub type Outcome = (Message, Result<Decrypted, Undecryptable>);

/// What a key share did: the machine's events (minus `RoomKeyReceived`, which is handled
/// here) and the waiting messages it settled.
#[derive(Debug, Default)]
pub struct ShareOutcome {
    pub events: Vec<CryptoEvent>,
    pub settled: Vec<Outcome>,
}

/// The waiting messages of one device, by Megolm session id, oldest session first.
#[derive(Debug)]
pub struct WaitingForKeys {
    by_session: BTreeMap<String, Vec<Message>>,
    order: VecDeque<String>,
    count: usize,
    max: usize,
    /// Senders whose device must be looked up (`UntrustedDevice`, `UnknownDevice`).
    to_query: BTreeSet<UserId>,
}

impl Default for WaitingForKeys {
    fn default() -> Self {
        Self::new(MAX_WAITING_FOR_KEYS)
    }
}

/// Worth waiting for: the key, or the sender device in the directory.
fn may_settle_later(u: &Undecryptable) -> bool {
    matches!(u, Undecryptable::NoKeyYet | Undecryptable::UntrustedDevice)
}

impl WaitingForKeys {
    /// At most `max` messages kept (at least 1).
    pub fn new(max: usize) -> Self {
        WaitingForKeys {
            by_session: BTreeMap::new(),
            order: VecDeque::new(),
            count: 0,
            max: max.max(1),
            to_query: BTreeSet::new(),
        }
    }

    /// Decrypts `message`. `NoKeyYet` and `UntrustedDevice` results are also kept for a retry
    /// (and the sender of an `UntrustedDevice` queued for a lookup: [`Self::take_to_query`]).
    pub fn decrypt(
        &mut self,
        machine: &mut CryptoMachine,
        message: &Message,
    ) -> Result<Decrypted, Undecryptable> {
        let result = machine.decrypt(message);
        if let Err(u) = &result
            && may_settle_later(u)
        {
            if *u == Undecryptable::UntrustedDevice {
                self.to_query.insert(message.sender_user);
            }
            self.keep(message.clone());
        }
        result
    }

    /// A key share from the inbox: the machine processes it, and the messages waiting on a
    /// session it delivered are tried again. Those that still miss something keep waiting;
    /// the rest are returned as settled (decrypted, or failed for good with a reason).
    pub fn on_key_share(
        &mut self,
        machine: &mut CryptoMachine,
        from_user: UserId,
        from_device: DeviceId,
        payload: &[u8],
        now_ms: u64,
    ) -> ShareOutcome {
        let mut out = ShareOutcome::default();
        for event in machine.on_key_share(from_user, from_device, payload, now_ms) {
            match &event {
                CryptoEvent::RoomKeyReceived { session_id, .. } => {
                    let messages = self.take_session(session_id);
                    out.settled.extend(self.retry(machine, messages, false));
                }
                other => {
                    if let CryptoEvent::UnknownDevice { user, .. } = other {
                        self.to_query.insert(*user);
                    }
                    out.events.push(event);
                }
            }
        }
        out
    }

    /// After the device lists of `users` were applied: retries the messages they sent. A
    /// message still `UntrustedDevice` after the lookup is settled (the directory does not
    /// vouch for its device); `NoKeyYet` keeps waiting.
    pub fn retry_senders(&mut self, machine: &mut CryptoMachine, users: &[UserId]) -> Vec<Outcome> {
        let sessions: Vec<String> = self
            .by_session
            .iter()
            .filter(|(_, ms)| ms.iter().any(|m| users.contains(&m.sender_user)))
            .map(|(s, _)| s.clone())
            .collect();
        let mut settled = Vec::new();
        for session in sessions {
            let messages = self.take_session(&session);
            settled.extend(self.retry(machine, messages, true));
        }
        settled
    }

    /// Retries every waiting message (e.g. after a backup import).
    pub fn retry_all(&mut self, machine: &mut CryptoMachine) -> Vec<Outcome> {
        let all = std::mem::take(&mut self.by_session);
        self.order.clear();
        self.count = 0;
        all.into_values()
            .flat_map(|messages| self.retry(machine, messages, false))
            .collect()
    }

    /// Senders to look up (their device lists queried, then [`Self::retry_senders`]).
    pub fn take_to_query(&mut self) -> Vec<UserId> {
        std::mem::take(&mut self.to_query).into_iter().collect()
    }

    pub fn has_unknown_senders(&self) -> bool {
        !self.to_query.is_empty()
    }

    /// Conversations with waiting messages (where a backup fetch may help), sorted.
    pub fn conversations(&self) -> Vec<ConversationId> {
        let set: BTreeSet<ConversationId> = self
            .by_session
            .values()
            .flatten()
            .map(|m| m.conversation)
            .collect();
        set.into_iter().collect()
    }

    /// Messages waiting.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Tries `messages` again; what may still settle later is kept (by `decrypt`), except
    /// `UntrustedDevice` right after a lookup of its sender (`after_lookup`): that is final.
    fn retry(
        &mut self,
        machine: &mut CryptoMachine,
        messages: Vec<Message>,
        after_lookup: bool,
    ) -> Vec<Outcome> {
        let mut settled = Vec::new();
        for m in messages {
            let result = machine.decrypt(&m);
            match &result {
                Err(Undecryptable::NoKeyYet) => self.keep(m),
                Err(Undecryptable::UntrustedDevice) if !after_lookup => {
                    self.to_query.insert(m.sender_user);
                    self.keep(m);
                }
                _ => settled.push((m, result)),
            }
        }
        settled
    }

    fn take_session(&mut self, session: &str) -> Vec<Message> {
        let messages = self.by_session.remove(session).unwrap_or_default();
        if !messages.is_empty() {
            self.count -= messages.len();
            self.order.retain(|s| s != session);
        }
        messages
    }

    fn keep(&mut self, message: Message) {
        // A message whose payload names no session cannot be retried by key; it was reported.
        let Some(session) = session_id_of(&message.payload) else {
            return;
        };
        if self
            .by_session
            .get(&session)
            .is_some_and(|l| l.iter().any(|m| m.message_id == message.message_id))
        {
            return;
        }
        if self.count >= self.max
            && let Some(oldest) = self.order.pop_front()
            && let Some(dropped) = self.by_session.remove(&oldest)
        {
            self.count -= dropped.len();
        }
        let list = self.by_session.entry(session.clone()).or_default();
        if list.is_empty() {
            self.order.push_back(session);
        }
        list.push(message);
        self.count += 1;
    }
}
