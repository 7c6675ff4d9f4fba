//! The app-facing side of delivery: what is ready for the app, in order, and which cursors may
//! be acknowledged to the server.
//!
//! Wraps [`SyncState`] (cursors, de-duplication, gaps) with the queue the app reads and the
//! acknowledgement rule: a message is acknowledged to the server (advancing this device's
//! stored cursor) only after the app has taken it from the queue ([`Delivery::pop`]), so a
//! crash while handling a message replays it on the next run instead of losing it. Acks are
//! coalesced: one per conversation, for the highest seq taken ([`Delivery::acks_due`]).
//!
//! Events of the driver's own (notices, errors, presence, disconnects) share the one queue
//! (`E`), so the app sees everything in arrival order.

use std::collections::{HashMap, VecDeque};

use tern_wire::ids::ConversationId;
use tern_wire::msg::{Cursor, Message};

use super::sync::{Advance, Gap, SyncState};

/// Largest History page asked for while filling a gap: big enough that a typical reconnect gap
/// is one round trip, small enough to bound one reply's memory.
pub const GAP_FETCH_LIMIT: u64 = 200;

/// Why a range of messages will not be surfaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// The server skipped them on resume (too far behind); fetch with history if wanted.
    BacklogTruncated,
    /// History had nothing for the range (or refused it, e.g. no longer a member).
    Unavailable,
}

/// What the queue surfaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivered<E> {
    /// A message, in seq order within its conversation, never twice.
    Message(Message),
    /// Resume replay is over: what follows is live.
    SyncComplete,
    /// Seqs `from_seq..=to_seq` of `conversation` will not be surfaced.
    Skipped {
        conversation: ConversationId,
        from_seq: u64,
        to_seq: u64,
        reason: SkipReason,
    },
    /// One of the driver's own events.
    Other(E),
}

/// The result of [`Delivery::pop`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Popped<E> {
    Event(Delivered<E>),
    /// Nothing to show (the cursor moved over own sends or skipped seqs), but an ack became due.
    AckOnly,
    Empty,
}

/// A History request that fills (part of) a gap: seqs in `(after_seq, before_seq)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GapFetch {
    pub conversation: ConversationId,
    pub before_seq: u64,
    pub after_seq: u64,
    pub limit: u32,
}

/// Queued output: an optional event plus the cursor it lets us acknowledge once the app has
/// taken it.
#[derive(Debug)]
struct Ready<E> {
    event: Option<Delivered<E>>,
    ack: Option<(ConversationId, u64)>,
}

/// Cursors, the app's queue and the ack bookkeeping of one device.
#[derive(Debug)]
pub struct Delivery<E> {
    sync: SyncState,
    ready: VecDeque<Ready<E>>,
    /// Highest seq per conversation the app has taken (what persisted cursors should be).
    app_cursor: HashMap<ConversationId, u64>,
    /// Highest seq per conversation acknowledged to the server.
    acked: HashMap<ConversationId, u64>,
    /// `SyncComplete` seen on the current connection.
    synced: bool,
}

impl<E> Delivery<E> {
    /// Starts from the cursors the app persisted (may be empty).
    pub fn new(cursors: &[Cursor]) -> Self {
        Delivery {
            sync: SyncState::with_cursors(cursors),
            ready: VecDeque::new(),
            app_cursor: cursors.iter().map(|c| (c.conversation, c.seq)).collect(),
            acked: cursors.iter().map(|c| (c.conversation, c.seq)).collect(),
            synced: false,
        }
    }

    /// A new connection is being made: resume replay follows until `SyncComplete`.
    pub fn on_connect(&mut self) {
        self.synced = false;
        self.sync.on_connect();
    }

    /// `SyncComplete` seen on the current connection.
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// Where to resume (everything seen, taken by the app or not: replayed copies of queued
    /// messages would only be de-duplicated).
    pub fn resume_cursors(&self) -> Vec<Cursor> {
        self.sync.cursors()
    }

    /// Cursors of what the app has taken, to persist and pass to the next run.
    pub fn cursors(&self) -> Vec<Cursor> {
        let mut v: Vec<Cursor> = self
            .app_cursor
            .iter()
            .map(|(c, s)| Cursor {
                conversation: *c,
                seq: *s,
            })
            .collect();
        v.sort_by_key(|c| c.conversation);
        v
    }

    /// Queues one of the driver's own events.
    pub fn push(&mut self, event: E) {
        self.push_delivered(Delivered::Other(event));
    }

    /// A `Deliver` (live or replayed).
    pub fn on_deliver(&mut self, msg: Message) {
        let conversation = msg.conversation;
        let adv = self.sync.on_deliver(msg);
        self.push_advance(conversation, adv);
    }

    /// Resume replay is over.
    pub fn on_sync_complete(&mut self) {
        self.synced = true;
        for (conversation, adv) in self.sync.on_sync_complete() {
            self.push_advance(conversation, adv);
        }
        self.push_delivered(Delivered::SyncComplete);
    }

    /// The server skipped `from_seq..=to_seq` on resume (too far behind).
    pub fn on_backlog_truncated(
        &mut self,
        conversation: ConversationId,
        from_seq: u64,
        to_seq: u64,
    ) {
        let adv = self.sync.skip_to(conversation, to_seq);
        self.push_delivered(Delivered::Skipped {
            conversation,
            from_seq,
            to_seq,
            reason: SkipReason::BacklogTruncated,
        });
        self.push_advance(conversation, adv);
    }

    /// Our own message was stored as `seq` (its `SendAck`).
    pub fn on_own_send(&mut self, conversation: ConversationId, seq: u64) {
        let adv = self.sync.on_own_send(conversation, seq);
        self.push_advance(conversation, adv);
    }

    /// The first gap to fill, as a History request.
    pub fn next_gap_fetch(&self) -> Option<GapFetch> {
        self.sync.next_gap().map(|gap: Gap| GapFetch {
            conversation: gap.conversation,
            before_seq: gap.before,
            after_seq: gap.after,
            limit: gap.len().clamp(1, GAP_FETCH_LIMIT) as u32,
        })
    }

    pub fn has_gap(&self) -> bool {
        self.sync.next_gap().is_some()
    }

    /// The answer to a [`GapFetch`] (empty when the server refused: not a member any more,
    /// not found). A page that does not shrink the gap means the server cannot fill it: the
    /// range is skipped rather than blocking the conversation forever.
    pub fn on_history(&mut self, conversation: ConversationId, messages: Vec<Message>) {
        let (adv, progressed) = self.sync.on_history(conversation, messages);
        self.push_advance(conversation, adv);
        if !progressed && let Some(((from, to), adv)) = self.sync.skip_gap(conversation) {
            self.push_delivered(Delivered::Skipped {
                conversation,
                from_seq: from,
                to_seq: to,
                reason: SkipReason::Unavailable,
            });
            self.push_advance(conversation, adv);
        }
    }

    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// The app takes the next entry; what it completes becomes acknowledgeable.
    pub fn pop(&mut self) -> Popped<E> {
        let Some(r) = self.ready.pop_front() else {
            return Popped::Empty;
        };
        if let Some((conversation, seq)) = r.ack {
            let e = self.app_cursor.entry(conversation).or_insert(0);
            *e = (*e).max(seq);
        }
        match r.event {
            Some(event) => Popped::Event(event),
            None => Popped::AckOnly,
        }
    }

    /// Acks to send: per conversation, the highest seq the app took, when above what was
    /// acknowledged. Call [`Delivery::on_ack_sent`] for each one that went out.
    pub fn acks_due(&self) -> Vec<(ConversationId, u64)> {
        let mut due: Vec<(ConversationId, u64)> = self
            .app_cursor
            .iter()
            .filter(|(c, seq)| **seq > self.acked.get(*c).copied().unwrap_or(0))
            .map(|(c, seq)| (*c, *seq))
            .collect();
        due.sort_unstable();
        due
    }

    pub fn on_ack_sent(&mut self, conversation: ConversationId, seq: u64) {
        let e = self.acked.entry(conversation).or_insert(0);
        *e = (*e).max(seq);
    }

    fn push_delivered(&mut self, event: Delivered<E>) {
        self.ready.push_back(Ready {
            event: Some(event),
            ack: None,
        });
    }

    /// Queues ready messages; the cursor they complete is acknowledged once the app took them.
    fn push_advance(&mut self, conversation: ConversationId, adv: Advance) {
        let Some(cursor) = adv.cursor else { return };
        let n = adv.messages.len();
        for (i, m) in adv.messages.into_iter().enumerate() {
            let ack = if i + 1 == n { cursor } else { m.seq };
            self.ready.push_back(Ready {
                event: Some(Delivered::Message(m)),
                ack: Some((conversation, ack)),
            });
        }
        if n == 0 {
            // Cursor moved over own sends or skipped seqs only: nothing to show, still ackable.
            self.ready.push_back(Ready {
                event: None,
                ack: Some((conversation, cursor)),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_wire::ids::{DeviceId, MessageId, UserId};

    const C: ConversationId = ConversationId(1);

    fn msg(seq: u64) -> Message {
        Message {
            conversation: C,
            seq,
            message_id: MessageId(seq as u128),
            sender_user: UserId(9),
            sender_device: DeviceId(9),
            client_msg_id: seq as u128,
            timestamp_ms: 0,
            content_type: "text".into(),
            payload: vec![],
            files: vec![],
        }
    }

    fn start() -> Delivery<&'static str> {
        let mut d = Delivery::new(&[Cursor {
            conversation: C,
            seq: 2,
        }]);
        d.on_connect();
        d
    }

    #[test]
    fn acks_only_what_the_app_took_coalesced() {
        let mut d = start();
        d.on_deliver(msg(3));
        d.on_deliver(msg(4));
        assert!(d.acks_due().is_empty(), "nothing taken yet");
        assert_eq!(d.pop(), Popped::Event(Delivered::Message(msg(3))));
        assert_eq!(d.acks_due(), vec![(C, 3)]);
        assert_eq!(d.pop(), Popped::Event(Delivered::Message(msg(4))));
        assert_eq!(d.acks_due(), vec![(C, 4)], "one ack per conversation");
        d.on_ack_sent(C, 4);
        assert!(d.acks_due().is_empty());
        assert_eq!(d.pop(), Popped::Empty);
        assert_eq!(
            d.cursors(),
            vec![Cursor {
                conversation: C,
                seq: 4
            }]
        );
        // The cursor to resume from covers what is queued but not taken.
        d.on_deliver(msg(5));
        assert_eq!(
            d.resume_cursors(),
            vec![Cursor {
                conversation: C,
                seq: 5
            }]
        );
        assert_eq!(
            d.cursors(),
            vec![Cursor {
                conversation: C,
                seq: 4
            }]
        );
    }

    #[test]
    fn own_sends_are_ack_only_and_events_keep_arrival_order() {
        let mut d = start();
        d.push("presence");
        d.on_own_send(C, 3);
        d.on_sync_complete();
        assert!(d.is_synced());
        assert_eq!(d.pop(), Popped::Event(Delivered::Other("presence")));
        assert_eq!(d.pop(), Popped::AckOnly);
        assert_eq!(d.acks_due(), vec![(C, 3)]);
        assert_eq!(d.pop(), Popped::Event(Delivered::SyncComplete));
        d.on_connect();
        assert!(!d.is_synced());
    }

    #[test]
    fn gaps_are_fetched_and_unfillable_ones_skipped() {
        let mut d = start();
        d.on_deliver(msg(10));
        let fetch = d.next_gap_fetch().expect("gap 3..=9");
        assert_eq!(
            fetch,
            GapFetch {
                conversation: C,
                before_seq: 10,
                after_seq: 2,
                limit: 7
            }
        );
        d.on_history(C, vec![msg(8), msg(9)]);
        assert_eq!(d.next_gap_fetch().map(|f| f.before_seq), Some(8));
        // The server has nothing (or refused): skipped, and what was held back comes out.
        d.on_history(C, vec![]);
        assert!(!d.has_gap());
        assert_eq!(
            d.pop(),
            Popped::Event(Delivered::Skipped {
                conversation: C,
                from_seq: 3,
                to_seq: 7,
                reason: SkipReason::Unavailable
            })
        );
        let seqs: Vec<u64> = std::iter::from_fn(|| match d.pop() {
            Popped::Event(Delivered::Message(m)) => Some(m.seq),
            _ => None,
        })
        .collect();
        assert_eq!(seqs, vec![8, 9, 10]);
        assert_eq!(d.acks_due(), vec![(C, 10)]);
    }

    #[test]
    fn backlog_truncation_is_reported_then_acked() {
        let mut d = start();
        d.on_backlog_truncated(C, 3, 100);
        assert!(matches!(
            d.pop(),
            Popped::Event(Delivered::Skipped {
                reason: SkipReason::BacklogTruncated,
                ..
            })
        ));
        assert_eq!(d.pop(), Popped::AckOnly);
        assert_eq!(d.acks_due(), vec![(C, 100)]);
    }

    #[test]
    fn large_gaps_are_fetched_a_page_at_a_time() {
        let mut d = start();
        d.on_deliver(msg(5000));
        assert_eq!(
            d.next_gap_fetch().map(|f| f.limit),
            Some(GAP_FETCH_LIMIT as u32)
        );
    }
}
