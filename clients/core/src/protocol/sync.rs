//! Sans-IO delivery bookkeeping: per-conversation cursors, de-duplication and gap detection.
//!
//! The server gives each conversation a gapless seq. This state machine turns whatever arrives
//! (live and replayed `Deliver`s, history pages, our own `SendAck`s) into an in-order stream of
//! messages, each surfaced exactly once:
//!
//! * `cursor` = highest seq such that every seq up to it has been surfaced (or was our own send,
//!   or was explicitly skipped). Anything at or below it is a duplicate.
//! * Anything above `cursor + 1` is held back in a buffer; the hole below it is a [`Gap`] that the
//!   driver fills with History, then feeds back through [`SyncState::on_history`].
//! * Our own sends are never delivered back to the sending device, so their seqs are recorded as
//!   placeholders ([`SyncState::on_own_send`]); otherwise they would look like gaps.
//!
//! A conversation we have no cursor for takes its first observed seq as the baseline: the
//! server replays from the cursor it stored for this device, which only advances on our Acks,
//! so its first replayed message is exactly where this device left off.

use std::collections::{BTreeMap, HashMap};

use tern_wire::ids::ConversationId;
use tern_wire::msg::{Cursor, Message};

/// Held-back (out-of-order) entries per conversation. Beyond this, new out-of-order messages
/// are dropped: they sit above the cursor, so the gap filling re-fetches them later; nothing is
/// lost, memory stays bounded.
pub const MAX_BUFFERED_PER_CONVERSATION: usize = 4096;

/// A hole: seqs in `after + 1 .. before` are missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    pub conversation: ConversationId,
    /// The cursor: everything up to here was surfaced.
    pub after: u64,
    /// The lowest held-back seq.
    pub before: u64,
}

impl Gap {
    /// Number of missing seqs.
    pub fn len(&self) -> u64 {
        self.before.saturating_sub(self.after).saturating_sub(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug)]
enum Slot {
    Message(Message),
    /// Our own message: known, never surfaced.
    Own,
}

#[derive(Debug, Default)]
struct ConvState {
    /// `None` until the first observation sets the baseline.
    cursor: Option<u64>,
    buffer: BTreeMap<u64, Slot>,
}

/// Output of a state change: messages now ready, in seq order, and the cursor movement.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Advance {
    pub messages: Vec<Message>,
    /// The conversation's cursor after the change, if it moved.
    pub cursor: Option<u64>,
}

/// Per-conversation cursors and held-back messages.
#[derive(Debug, Default)]
pub struct SyncState {
    convs: HashMap<ConversationId, ConvState>,
    /// `SyncComplete` seen on the current connection: resume replay is over.
    synced: bool,
}

impl SyncState {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts from known cursors (e.g. persisted by the app).
    pub fn with_cursors(cursors: &[Cursor]) -> Self {
        let mut s = Self::new();
        for c in cursors {
            let e = s.convs.entry(c.conversation).or_default();
            e.cursor = Some(e.cursor.map_or(c.seq, |old| old.max(c.seq)));
        }
        s
    }

    pub fn cursor(&self, conversation: ConversationId) -> Option<u64> {
        self.convs.get(&conversation).and_then(|c| c.cursor)
    }

    /// All known cursors (for Hello/Resume and for persisting).
    pub fn cursors(&self) -> Vec<Cursor> {
        let mut v: Vec<Cursor> = self
            .convs
            .iter()
            .filter_map(|(id, c)| {
                c.cursor.map(|seq| Cursor {
                    conversation: *id,
                    seq,
                })
            })
            .collect();
        v.sort_by_key(|c| c.conversation);
        v
    }

    /// A new connection started: replay will follow until `SyncComplete`.
    pub fn on_connect(&mut self) {
        self.synced = false;
    }

    /// Resume replay is complete. Conversations that only saw our own sends so far take the
    /// lowest of them as their baseline.
    pub fn on_sync_complete(&mut self) -> Vec<(ConversationId, Advance)> {
        self.synced = true;
        let mut out = Vec::new();
        for (id, conv) in self.convs.iter_mut() {
            if conv.cursor.is_none()
                && let Some((&first, _)) = conv.buffer.first_key_value()
            {
                conv.cursor = Some(first - 1);
                let adv = drain(conv);
                if adv.cursor.is_some() {
                    out.push((*id, adv));
                }
            }
        }
        out
    }

    /// A `Deliver` (live or replayed).
    pub fn on_deliver(&mut self, msg: Message) -> Advance {
        if msg.seq == 0 {
            return Advance::default(); // seqs start at 1; nothing sane to do with 0
        }
        let conv = self.convs.entry(msg.conversation).or_default();
        if conv.cursor.is_none() {
            // Baseline; any held-back own sends below it are already known to the app.
            conv.cursor = Some(msg.seq - 1);
            conv.buffer = conv.buffer.split_off(&msg.seq);
        }
        insert(conv, msg.seq, Slot::Message(msg));
        drain(conv)
    }

    /// Our own `SendAck` for `seq` (the server does not deliver it back to this device).
    pub fn on_own_send(&mut self, conversation: ConversationId, seq: u64) -> Advance {
        if seq == 0 {
            return Advance::default();
        }
        let synced = self.synced;
        let conv = self.convs.entry(conversation).or_default();
        if conv.cursor.is_none() && synced {
            // Replay had nothing for this conversation, so everything before is already seen.
            conv.cursor = Some(seq - 1);
        }
        insert(conv, seq, Slot::Own);
        if conv.cursor.is_none() {
            return Advance::default(); // wait for a replayed message or SyncComplete
        }
        drain(conv)
    }

    /// Messages fetched by History for a gap (any order, may overlap what we have).
    /// Returns what became ready, and whether the gap shrank at all: `false` means the server has
    /// nothing for the range, and the caller should [`skip_gap`](Self::skip_gap).
    pub fn on_history(
        &mut self,
        conversation: ConversationId,
        messages: Vec<Message>,
    ) -> (Advance, bool) {
        let Some(conv) = self.convs.get_mut(&conversation) else {
            return (Advance::default(), false);
        };
        let Some(cursor) = conv.cursor else {
            return (Advance::default(), false);
        };
        let gap_end = conv.buffer.first_key_value().map_or(u64::MAX, |(k, _)| *k);
        let mut progressed = false;
        for m in messages {
            if m.conversation != conversation {
                continue;
            }
            if m.seq > cursor && m.seq < gap_end {
                progressed = true;
            }
            insert(conv, m.seq, Slot::Message(m));
        }
        (drain(conv), progressed)
    }

    /// The first gap of any conversation (a conversation with held-back entries).
    pub fn next_gap(&self) -> Option<Gap> {
        self.convs.iter().find_map(|(id, c)| gap_of(*id, c))
    }

    pub fn gap(&self, conversation: ConversationId) -> Option<Gap> {
        self.convs
            .get(&conversation)
            .and_then(|c| gap_of(conversation, c))
    }

    /// Gives up on the current gap of `conversation` (the server cannot fill it): moves the
    /// cursor to just below the held-back entries and surfaces them. Returns the skipped range
    /// (inclusive) and what became ready.
    pub fn skip_gap(&mut self, conversation: ConversationId) -> Option<((u64, u64), Advance)> {
        let conv = self.convs.get_mut(&conversation)?;
        let gap = gap_of(conversation, conv)?;
        conv.cursor = Some(gap.before - 1);
        let mut adv = drain(conv);
        adv.cursor.get_or_insert(gap.before - 1);
        Some(((gap.after + 1, gap.before - 1), adv))
    }

    /// The server skipped `from..=to` on resume (BacklogTruncated): the cursor moves past it.
    pub fn skip_to(&mut self, conversation: ConversationId, to: u64) -> Advance {
        let conv = self.convs.entry(conversation).or_default();
        match conv.cursor {
            Some(c) if c >= to => return Advance::default(),
            _ => {}
        }
        conv.cursor = Some(to);
        conv.buffer = conv.buffer.split_off(&(to.saturating_add(1)));
        let mut adv = drain(conv);
        adv.cursor.get_or_insert(to);
        adv
    }
}

fn gap_of(id: ConversationId, c: &ConvState) -> Option<Gap> {
    let cursor = c.cursor?;
    let (&first, _) = c.buffer.first_key_value()?;
    // drain() guarantees first > cursor + 1 whenever the buffer is not empty.
    Some(Gap {
        conversation: id,
        after: cursor,
        before: first,
    })
}

fn insert(conv: &mut ConvState, seq: u64, slot: Slot) {
    if conv.cursor.is_some_and(|c| seq <= c) {
        return; // duplicate of something surfaced
    }
    if conv.buffer.contains_key(&seq) {
        // Keep the first copy; but a real message never replaces an own placeholder, and an
        // own placeholder never replaces a message (either way it is known).
        return;
    }
    if conv.buffer.len() >= MAX_BUFFERED_PER_CONVERSATION {
        let next = conv.cursor.map(|c| c + 1);
        // Always accept the one seq that unblocks progress; drop the rest (refetched later).
        if Some(seq) != next {
            return;
        }
    }
    conv.buffer.insert(seq, slot);
}

/// Surfaces the contiguous run after the cursor.
fn drain(conv: &mut ConvState) -> Advance {
    let mut adv = Advance::default();
    let Some(mut cursor) = conv.cursor else {
        return adv;
    };
    while let Some(entry) = conv.buffer.first_entry() {
        if *entry.key() != cursor + 1 {
            break;
        }
        cursor += 1;
        if let Slot::Message(m) = entry.remove() {
            adv.messages.push(m);
        }
    }
    if Some(cursor) != conv.cursor {
        conv.cursor = Some(cursor);
        adv.cursor = Some(cursor);
    }
    adv
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_wire::ids::{DeviceId, MessageId, UserId};

    const C: ConversationId = ConversationId(1);
    const D: ConversationId = ConversationId(2);

    fn msg(conv: ConversationId, seq: u64) -> Message {
        Message {
            conversation: conv,
            seq,
            message_id: MessageId(seq as u128),
            sender_user: UserId(9),
            sender_device: DeviceId(9),
            client_msg_id: seq as u128,
            timestamp_ms: 0,
            content_type: "text".into(),
            payload: format!("m{seq}").into_bytes(),
            files: vec![],
        }
    }

    fn seqs(a: &Advance) -> Vec<u64> {
        a.messages.iter().map(|m| m.seq).collect()
    }

    #[test]
    fn in_order_and_duplicates() {
        let mut s = SyncState::with_cursors(&[Cursor {
            conversation: C,
            seq: 0,
        }]);
        assert_eq!(seqs(&s.on_deliver(msg(C, 1))), vec![1]);
        assert_eq!(seqs(&s.on_deliver(msg(C, 2))), vec![2]);
        let dup = s.on_deliver(msg(C, 2));
        assert!(dup.messages.is_empty() && dup.cursor.is_none());
        assert_eq!(seqs(&s.on_deliver(msg(C, 1))), Vec::<u64>::new());
        assert_eq!(s.cursor(C), Some(2));
        assert_eq!(s.next_gap(), None);
    }

    #[test]
    fn gap_is_detected_held_back_and_filled_by_history() {
        let mut s = SyncState::with_cursors(&[Cursor {
            conversation: C,
            seq: 3,
        }]);
        let a = s.on_deliver(msg(C, 7));
        assert!(a.messages.is_empty(), "7 must wait for 4..=6");
        assert_eq!(
            s.gap(C),
            Some(Gap {
                conversation: C,
                after: 3,
                before: 7
            })
        );
        assert_eq!(s.gap(C).map(|g| g.len()), Some(3));
        // A duplicate of the held-back one changes nothing.
        assert!(s.on_deliver(msg(C, 7)).messages.is_empty());
        // History returns part of the range (newest first, overlapping).
        let (a, progressed) = s.on_history(C, vec![msg(C, 6), msg(C, 5), msg(C, 7)]);
        assert!(progressed);
        assert!(a.messages.is_empty());
        assert_eq!(
            s.gap(C),
            Some(Gap {
                conversation: C,
                after: 3,
                before: 5
            })
        );
        let (a, progressed) = s.on_history(C, vec![msg(C, 3), msg(C, 4)]);
        assert!(progressed);
        assert_eq!(seqs(&a), vec![4, 5, 6, 7]);
        assert_eq!(a.cursor, Some(7));
        assert_eq!(s.next_gap(), None);
    }

    #[test]
    fn unfillable_gap_is_skipped() {
        let mut s = SyncState::with_cursors(&[Cursor {
            conversation: C,
            seq: 1,
        }]);
        s.on_deliver(msg(C, 4));
        s.on_deliver(msg(C, 5));
        let (_, progressed) = s.on_history(C, vec![]);
        assert!(!progressed);
        let ((from, to), a) = s.skip_gap(C).expect("gap");
        assert_eq!((from, to), (2, 3));
        assert_eq!(seqs(&a), vec![4, 5]);
        assert_eq!(s.cursor(C), Some(5));
    }

    #[test]
    fn own_sends_are_not_gaps() {
        let mut s = SyncState::with_cursors(&[Cursor {
            conversation: C,
            seq: 2,
        }]);
        let a = s.on_own_send(C, 3);
        assert!(a.messages.is_empty());
        assert_eq!(a.cursor, Some(3));
        assert_eq!(seqs(&s.on_deliver(msg(C, 4))), vec![4]);
        // Own ack arriving after a later delivery: 5 waits, then both advance.
        assert!(s.on_deliver(msg(C, 6)).messages.is_empty());
        let a = s.on_own_send(C, 5);
        assert_eq!(seqs(&a), vec![6]);
        assert_eq!(s.cursor(C), Some(6));
        // The own message replayed later (e.g. after reconnect) is a duplicate.
        assert!(s.on_deliver(msg(C, 5)).messages.is_empty());
    }

    #[test]
    fn unknown_conversation_baselines_on_first_delivery() {
        let mut s = SyncState::new();
        s.on_connect();
        assert_eq!(seqs(&s.on_deliver(msg(D, 50))), vec![50]);
        assert_eq!(s.cursor(D), Some(50));
        assert_eq!(
            s.cursors(),
            vec![Cursor {
                conversation: D,
                seq: 50
            }]
        );
    }

    #[test]
    fn own_send_before_sync_complete_waits_for_baseline() {
        let mut s = SyncState::new();
        s.on_connect();
        assert_eq!(s.on_own_send(C, 10), Advance::default());
        assert_eq!(s.cursor(C), None);
        // Replay then delivers 8 and 9: baseline 7, own 10 is passed over.
        assert_eq!(seqs(&s.on_deliver(msg(C, 8))), vec![8]);
        let a = s.on_deliver(msg(C, 9));
        assert_eq!(seqs(&a), vec![9]);
        assert_eq!(s.cursor(C), Some(10));

        // Another conversation with only an own send: SyncComplete baselines it.
        s.on_own_send(D, 4);
        let adv = s.on_sync_complete();
        assert_eq!(adv.len(), 1);
        assert_eq!(s.cursor(D), Some(4));
        // After sync, an own send in a new conversation baselines immediately.
        let e = ConversationId(3);
        assert_eq!(s.on_own_send(e, 1).cursor, Some(1));
    }

    #[test]
    fn backlog_truncation_moves_cursor() {
        let mut s = SyncState::with_cursors(&[Cursor {
            conversation: C,
            seq: 2,
        }]);
        s.on_deliver(msg(C, 105));
        let a = s.skip_to(C, 100);
        assert_eq!(a.cursor, Some(100));
        assert!(a.messages.is_empty());
        assert_eq!(
            s.gap(C),
            Some(Gap {
                conversation: C,
                after: 100,
                before: 105
            })
        );
        assert_eq!(s.skip_to(C, 50), Advance::default());
    }

    #[test]
    fn buffer_is_bounded_but_progress_seq_always_fits() {
        let mut s = SyncState::with_cursors(&[Cursor {
            conversation: C,
            seq: 0,
        }]);
        for seq in 2..(2 + MAX_BUFFERED_PER_CONVERSATION as u64 + 10) {
            s.on_deliver(msg(C, seq));
        }
        let a = s.on_deliver(msg(C, 1));
        assert_eq!(a.messages.len(), 1 + MAX_BUFFERED_PER_CONVERSATION);
        // Nothing is held back any more; the dropped seqs are above the cursor, so they are
        // accepted when they come again (replay, or history for the gap a later one opens).
        assert_eq!(s.next_gap(), None);
        let next = MAX_BUFFERED_PER_CONVERSATION as u64 + 2;
        assert_eq!(seqs(&s.on_deliver(msg(C, next))), vec![next]);
    }

    #[test]
    fn conversations_are_independent() {
        let mut s = SyncState::with_cursors(&[
            Cursor {
                conversation: C,
                seq: 0,
            },
            Cursor {
                conversation: D,
                seq: 0,
            },
        ]);
        s.on_deliver(msg(C, 3));
        assert_eq!(seqs(&s.on_deliver(msg(D, 1))), vec![1]);
        assert_eq!(s.next_gap().map(|g| g.conversation), Some(C));
    }
}
