//! One conversation's sequencer state inside the engine core.

use std::collections::{HashMap, HashSet, VecDeque};

use tern_wire::ids::{MessageId, UserId};
use tern_wire::msg::Message;

use super::SendRequest;
use crate::rate::TokenBucket;

/// `(sender, client_msg_id)`: the idempotency key of a send within one conversation.
pub(super) type ClientKey = (UserId, u128);

pub(super) enum ConversationState {
    /// The driver is loading members and the last seq; sends wait here in arrival order.
    Loading {
        waiting: Vec<SendRequest>,
        reload: bool,
    },
    /// Boxed: a loaded conversation is far larger than a loading one.
    Ready(Box<Loaded>),
}

/// What a duplicate acknowledgement needs from the original message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Original {
    pub seq: u64,
    pub message_id: MessageId,
    pub timestamp_ms: u64,
}

impl Original {
    pub fn of(message: &Message) -> Self {
        Original {
            seq: message.seq,
            message_id: message.message_id,
            timestamp_ms: message.timestamp_ms,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Check {
    /// No store lookup started.
    NotStarted,
    Pending,
    /// The store answered; `stored_original` holds what it found.
    Done,
}

pub(super) struct Intake {
    pub request: SendRequest,
    pub sender: UserId,
    pub check: Check,
    pub stored_original: Option<Original>,
}

impl Intake {
    pub fn new(request: SendRequest, sender: UserId) -> Self {
        Intake {
            request,
            sender,
            check: Check::NotStarted,
            stored_original: None,
        }
    }

    pub fn key(&self) -> ClientKey {
        (self.sender, self.request.client_msg_id)
    }
}

/// What the head of the intake queue may do now.
pub(super) enum HeadDecision {
    /// Already stored (committed in memory or found in the store): acknowledge as duplicate.
    Duplicate(Original),
    /// Sequenced but not durable yet: attach to the pending commit of this seq.
    AttachTo(u64),
    /// Not seen before: give it the next seq.
    New,
    /// A store lookup must answer first.
    Wait,
}

pub(super) struct Loaded {
    pub members: Vec<UserId>,
    member_set: HashSet<UserId>,
    /// The seq the next new message gets.
    pub next_seq: u64,
    /// Highest durable seq.
    pub committed_seq: u64,
    pub intake: VecDeque<Intake>,
    /// Sequenced, not yet durable.
    pub uncommitted: HashMap<ClientKey, u64>,
    /// Recently committed keys, bounded by `window`; complete for every seq above `complete_after`.
    recent: HashMap<ClientKey, Original>,
    recent_order: VecDeque<ClientKey>,
    window: usize,
    /// Keys of messages with seq <= this may exist only in the store.
    complete_after: u64,
    /// The conversation's send rate limit (all members together).
    pub sends: TokenBucket,
    /// `(seq, sender)` of the newest delivered messages, ascending, at most `window`: who to
    /// tell when a delivery mark moves over them.
    recent_senders: VecDeque<(u64, UserId)>,
    /// Each member's delivery mark as far as this core has seen acknowledgements since the
    /// load (the store keeps the durable maximum); at most one entry per member.
    marks: HashMap<UserId, u64>,
    /// The newest timestamp given to a message of this conversation (stored or sequenced):
    /// the next one is at least this, so timestamps never decrease along seqs (the store's
    /// `first_seq_at` binary-searches on it).
    pub last_timestamp_ms: u64,
}

impl Loaded {
    pub fn new(members: Vec<UserId>, last_seq: u64, window: usize, sends: TokenBucket) -> Self {
        assert!(window > 0, "dedupe window must hold at least one key");
        let member_set = members.iter().copied().collect();
        Loaded {
            members,
            member_set,
            next_seq: last_seq + 1,
            committed_seq: last_seq,
            intake: VecDeque::new(),
            uncommitted: HashMap::new(),
            recent: HashMap::new(),
            recent_order: VecDeque::new(),
            window,
            complete_after: last_seq,
            sends,
            recent_senders: VecDeque::new(),
            marks: HashMap::new(),
            last_timestamp_ms: 0,
        }
    }

    pub fn is_member(&self, user: &UserId) -> bool {
        self.member_set.contains(user)
    }

    pub fn set_members(&mut self, members: Vec<UserId>) {
        self.member_set = members.iter().copied().collect();
        self.members = members;
        let member_set = &self.member_set;
        self.marks.retain(|user, _| member_set.contains(user));
    }

    /// Notes who sent the message with `seq` as it is delivered (seqs arrive in order).
    pub fn record_sender(&mut self, seq: u64, sender: UserId) {
        if self
            .recent_senders
            .back()
            .is_some_and(|(last, _)| *last >= seq)
        {
            return;
        }
        self.recent_senders.push_back((seq, sender));
        while self.recent_senders.len() > self.window {
            self.recent_senders.pop_front();
        }
    }

    /// Raises `user`'s delivery mark to `seq` (capped at the durable end) and returns who to
    /// tell: the other members who sent a message the mark newly covers, or every other member
    /// when that range is older than the sender memory. `None` when the mark did not move or
    /// `user` is not a member.
    pub fn raise_mark(&mut self, user: UserId, seq: u64) -> Option<Vec<UserId>> {
        let seq = seq.min(self.committed_seq);
        if !self.member_set.contains(&user) {
            return None;
        }
        let mark = self.marks.entry(user).or_insert(0);
        if seq <= *mark {
            return None;
        }
        let from = *mark + 1;
        *mark = seq;
        debug_assert!(self.marks.len() <= self.members.len());
        let remembered = self
            .recent_senders
            .front()
            .is_some_and(|(oldest, _)| *oldest <= from);
        let mut tell: Vec<UserId> = if remembered {
            let start = self.recent_senders.partition_point(|(s, _)| *s < from);
            self.recent_senders
                .range(start..)
                .take_while(|(s, _)| *s <= seq)
                .map(|(_, sender)| *sender)
                .collect()
        } else {
            self.members.clone()
        };
        tell.sort_unstable();
        tell.dedup();
        tell.retain(|u| *u != user && self.member_set.contains(u));
        Some(tell)
    }

    /// Records a durable message's key; evicting the oldest moves `complete_after` up, so later
    /// sends with an evicted key are checked against the store instead.
    pub fn remember(&mut self, key: ClientKey, original: Original) {
        if self.recent.insert(key, original).is_none() {
            self.recent_order.push_back(key);
        }
        while self.recent_order.len() > self.window {
            if let Some(old) = self.recent_order.pop_front()
                && let Some(evicted) = self.recent.remove(&old)
            {
                self.complete_after = self.complete_after.max(evicted.seq);
            }
        }
    }

    fn needs_store_check(&self, key: &ClientKey) -> bool {
        self.complete_after > 0
            && !self.recent.contains_key(key)
            && !self.uncommitted.contains_key(key)
    }

    /// Starts store lookups for queued sends whose key memory cannot answer, so they run in
    /// parallel; returns the keys to look up. The decision at the head is re-made in `decide_head`.
    pub fn start_lookups(&mut self) -> Vec<ClientKey> {
        let mut keys = Vec::new();
        let mut asked: HashSet<ClientKey> = self
            .intake
            .iter()
            .filter(|i| i.check == Check::Pending)
            .map(Intake::key)
            .collect();
        for i in 0..self.intake.len() {
            let key = self.intake[i].key();
            if self.intake[i].check != Check::NotStarted || !self.needs_store_check(&key) {
                continue;
            }
            if asked.insert(key) {
                keys.push(key);
            }
            self.intake[i].check = Check::Pending;
        }
        keys
    }

    pub fn lookup_answered(&mut self, key: ClientKey, found: Option<Original>) {
        for item in self
            .intake
            .iter_mut()
            .filter(|i| i.key() == key && i.check == Check::Pending)
        {
            item.check = Check::Done;
            item.stored_original = found;
        }
    }

    /// The authoritative duplicate decision for the head of the queue, made at the moment it is
    /// sequenced. Memory is consulted first; a store answer is trusted only for keys memory cannot
    /// know, and stays valid because any later commit of the same key would come from a send
    /// ahead in this queue, which is still in `uncommitted` or `recent` (the window is larger
    /// than the queue limit; see `EngineLimits::validate`).
    pub fn decide_head(&self) -> HeadDecision {
        let Some(head) = self.intake.front() else {
            return HeadDecision::Wait;
        };
        let key = head.key();
        if let Some(original) = self.recent.get(&key) {
            return HeadDecision::Duplicate(*original);
        }
        if let Some(seq) = self.uncommitted.get(&key) {
            return HeadDecision::AttachTo(*seq);
        }
        if !self.needs_store_check(&key) {
            return HeadDecision::New;
        }
        match (head.check, head.stored_original) {
            (Check::Done, Some(original)) => HeadDecision::Duplicate(original),
            (Check::Done, None) => HeadDecision::New,
            _ => HeadDecision::Wait,
        }
    }
}
