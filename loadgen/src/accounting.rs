//! Exact delivery accounting: every expected (message, recipient) pair is checked.
//!
//! Senders record which counters the server acknowledged (and which sends failed for good) per
//! (conversation, sender): a [`SentTable`]. Receivers record what arrived per (conversation,
//! sender) in a [`ReceiverLedger`], noticing duplicates and order violations as they happen.
//! At the end the merged sent table is compared with every ledger ([`account`]): an acknowledged
//! message that did not reach a member (other than its sender) is lost.
//!
//! Both sides store counters as [`RangeSet`]s. Counters are dense per (sender, conversation), so
//! a run without loss keeps one range per pair however long it lasts.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::payload::Header;

/// A set of u64 as sorted, disjoint, non-adjacent half-open ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RangeSet {
    ranges: Vec<(u64, u64)>,
}

impl RangeSet {
    pub fn new() -> RangeSet {
        RangeSet::default()
    }

    /// Adds `x`; false if it was already there.
    pub fn insert(&mut self, x: u64) -> bool {
        // Index of the first range starting after x.
        let i = self.ranges.partition_point(|r| r.0 <= x);
        if i > 0 {
            let (_, end) = self.ranges[i - 1];
            if x < end {
                return false;
            }
            if x == end {
                self.ranges[i - 1].1 = end + 1;
                if i < self.ranges.len() && self.ranges[i].0 == end + 1 {
                    self.ranges[i - 1].1 = self.ranges[i].1;
                    self.ranges.remove(i);
                }
                return true;
            }
        }
        if i < self.ranges.len() && self.ranges[i].0 == x + 1 {
            self.ranges[i].0 = x;
            return true;
        }
        self.ranges.insert(i, (x, x + 1));
        true
    }

    pub fn contains(&self, x: u64) -> bool {
        let i = self.ranges.partition_point(|r| r.0 <= x);
        i > 0 && x < self.ranges[i - 1].1
    }

    /// Number of elements.
    pub fn len(&self) -> u64 {
        self.ranges.iter().map(|(s, e)| e - s).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn max(&self) -> Option<u64> {
        self.ranges.last().map(|r| r.1 - 1)
    }

    /// Number of elements in both sets.
    pub fn intersection_len(&self, other: &RangeSet) -> u64 {
        let (mut i, mut j, mut n) = (0, 0, 0);
        while i < self.ranges.len() && j < other.ranges.len() {
            let (a0, a1) = self.ranges[i];
            let (b0, b1) = other.ranges[j];
            let lo = a0.max(b0);
            let hi = a1.min(b1);
            if lo < hi {
                n += hi - lo;
            }
            if a1 < b1 {
                i += 1;
            } else {
                j += 1;
            }
        }
        n
    }

    /// Up to `limit` elements of `self` missing from `other`, ascending.
    pub fn missing_from(&self, other: &RangeSet, limit: usize) -> Vec<u64> {
        let mut out = Vec::new();
        for &(s, e) in &self.ranges {
            for x in s..e {
                if out.len() >= limit {
                    return out;
                }
                if !other.contains(x) {
                    out.push(x);
                }
            }
        }
        out
    }

    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }
}

/// What the server acknowledged for one (conversation, sender), and what failed for good.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentEntry {
    pub acked: RangeSet,
    /// Sends that never got an acknowledgement (errors until the give-up deadline). The server
    /// may still have stored them, so their arrival is neither required nor an error.
    pub failed: RangeSet,
    /// (counter, seq) of acknowledged sends, for targets whose acknowledgement carries the
    /// stored seq (Tern); checked against the stored history by `--verify-history`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seqs: Vec<(u64, u64)>,
}

/// Sent messages of a set of senders, keyed by (conversation index, sender user index).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SentTable {
    pub entries: HashMap<(u32, u32), SentEntry>,
}

/// One row of a [`SentTable`] on the wire (JSON has no tuple keys).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentRow {
    pub conversation: u32,
    pub sender: u32,
    pub acked: RangeSet,
    pub failed: RangeSet,
    /// See [`SentEntry::seqs`]; left out when sending the table back to the workers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seqs: Vec<(u64, u64)>,
}

impl SentTable {
    pub fn entry(&mut self, conversation: u32, sender: u32) -> &mut SentEntry {
        self.entries.entry((conversation, sender)).or_default()
    }

    pub fn rows(&self) -> Vec<SentRow> {
        let mut rows: Vec<SentRow> = self
            .entries
            .iter()
            .map(|(&(conversation, sender), e)| SentRow {
                conversation,
                sender,
                acked: e.acked.clone(),
                failed: e.failed.clone(),
                seqs: e.seqs.clone(),
            })
            .collect();
        rows.sort_by_key(|r| (r.conversation, r.sender));
        rows
    }

    /// Adds rows (from one worker) to the table. Workers own disjoint senders, so a key seen
    /// twice only happens if the caller merges the same worker twice; the sets are unioned.
    pub fn merge_rows(&mut self, rows: Vec<SentRow>) {
        for r in rows {
            let e = self.entry(r.conversation, r.sender);
            if e.acked.is_empty() && e.failed.is_empty() {
                e.acked = r.acked;
                e.failed = r.failed;
                e.seqs = r.seqs;
            } else {
                e.seqs.extend(r.seqs);
                for &(s, end) in r.acked.ranges() {
                    for x in s..end {
                        e.acked.insert(x);
                    }
                }
                for &(s, end) in r.failed.ranges() {
                    for x in s..end {
                        e.failed.insert(x);
                    }
                }
            }
        }
    }

    /// Acknowledged messages per conversation.
    pub fn acked_per_conversation(&self) -> HashMap<u32, u64> {
        let mut out = HashMap::new();
        for (&(c, _), e) in &self.entries {
            *out.entry(c).or_insert(0) += e.acked.len();
        }
        out
    }
}

/// Per-arrival counters of one or many receivers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArrivalCounts {
    /// Every message that arrived, whatever it was.
    pub arrivals: u64,
    /// First arrivals of this run's messages from others (what `delivered` is counted from).
    pub unique: u64,
    /// Arrivals of a message this receiver already had under another seq (or, for targets
    /// without seqs, at all): the message was stored or fanned out twice.
    pub duplicates: u64,
    /// Arrivals of a (conversation, seq) this receiver already had, e.g. live and again in the
    /// resume replay after a reconnection: dropped by the client as a real client would, and
    /// counted here. Not a failure.
    #[serde(default)]
    pub client_dedupes: u64,
    /// Arrivals whose counter is below one already received from the same sender in the same
    /// conversation (the sender's order was not kept).
    pub out_of_order: u64,
    /// Arrivals whose server seq is not above the previous one in that conversation (Tern only).
    pub seq_regressions: u64,
    /// The receiver's own messages (Tern replays them on resume; Centrifugo echoes them).
    pub own: u64,
    /// Messages of another run (left on the server by an earlier run): ignored.
    pub stale: u64,
    /// Payloads without a valid header.
    pub malformed: u64,
    /// Messages for a conversation the receiver is not in, or whose header names another
    /// conversation than the one they arrived in.
    pub misrouted: u64,
    /// `--e2e`: messages that could not be decrypted (each reason is in the run's errors).
    #[serde(default)]
    pub undecryptable: u64,
    /// `--e2e`: messages that arrived before their key and were decrypted when it came.
    /// Not a failure (their latency includes the wait).
    #[serde(default)]
    pub late_keys: u64,
}

impl ArrivalCounts {
    pub fn add(&mut self, o: &ArrivalCounts) {
        self.arrivals += o.arrivals;
        self.unique += o.unique;
        self.duplicates += o.duplicates;
        self.client_dedupes += o.client_dedupes;
        self.out_of_order += o.out_of_order;
        self.seq_regressions += o.seq_regressions;
        self.own += o.own;
        self.stale += o.stale;
        self.malformed += o.malformed;
        self.misrouted += o.misrouted;
        self.undecryptable += o.undecryptable;
        self.late_keys += o.late_keys;
    }
}

/// What one arrival was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// First arrival of a message from another member: count it, measure its latency.
    New(Header),
    Duplicate,
    /// A (conversation, seq) already seen: dropped like a client dedupes by seq.
    ClientDedupe,
    Own,
    Stale,
    Malformed,
    Misrouted,
}

#[derive(Debug, Default, Clone)]
struct Stream {
    got: RangeSet,
}

/// Everything one receiver (user) got, per (conversation, sender).
#[derive(Debug, Clone)]
pub struct ReceiverLedger {
    me: u32,
    run: u32,
    /// Conversation indexes this user is a member of, sorted.
    member_of: Vec<u32>,
    streams: HashMap<(u32, u32), Stream>,
    last_seq: HashMap<u32, u64>,
    /// Seqs seen per conversation (targets with seqs only): what client-side dedupe uses.
    seen_seqs: HashMap<u32, RangeSet>,
    pub counts: ArrivalCounts,
}

impl ReceiverLedger {
    pub fn new(me: u32, run: u32, mut member_of: Vec<u32>) -> ReceiverLedger {
        member_of.sort_unstable();
        member_of.dedup();
        ReceiverLedger {
            me,
            run,
            member_of,
            streams: HashMap::new(),
            last_seq: HashMap::new(),
            seen_seqs: HashMap::new(),
            counts: ArrivalCounts::default(),
        }
    }

    /// Records one arrival in `conversation` (index) with the target's `seq` if it has one.
    ///
    /// With seqs, an arrival whose (conversation, seq) was seen before is a client-side dedupe
    /// (the same stored message delivered twice, e.g. live and in a resume replay); a message
    /// (sender, counter) arriving again under a *different* seq is a duplicate: it was stored
    /// twice.
    pub fn on_message(&mut self, conversation: usize, seq: Option<u64>, payload: &[u8]) -> Arrival {
        self.counts.arrivals += 1;
        let h = match Header::decode(payload) {
            Ok(h) => h,
            Err(_) => {
                self.counts.malformed += 1;
                return Arrival::Malformed;
            }
        };
        if h.run != self.run {
            self.counts.stale += 1;
            return Arrival::Stale;
        }
        if h.conversation as usize != conversation
            || self.member_of.binary_search(&h.conversation).is_err()
        {
            self.counts.misrouted += 1;
            return Arrival::Misrouted;
        }
        if let Some(seq) = seq
            && !self
                .seen_seqs
                .entry(h.conversation)
                .or_default()
                .insert(seq)
        {
            self.counts.client_dedupes += 1;
            return Arrival::ClientDedupe;
        }
        let own = h.sender == self.me;
        if !own
            && self
                .streams
                .get(&(h.conversation, h.sender))
                .is_some_and(|st| st.got.contains(h.counter))
        {
            self.counts.duplicates += 1;
            return Arrival::Duplicate;
        }
        if let Some(seq) = seq {
            match self.last_seq.get_mut(&h.conversation) {
                Some(last) if seq <= *last => self.counts.seq_regressions += 1,
                Some(last) => *last = seq,
                None => {
                    self.last_seq.insert(h.conversation, seq);
                }
            }
        }
        if own {
            self.counts.own += 1;
            return Arrival::Own;
        }
        let stream = self.streams.entry((h.conversation, h.sender)).or_default();
        if stream.got.max().is_some_and(|m| h.counter < m) {
            self.counts.out_of_order += 1;
        }
        stream.got.insert(h.counter);
        self.counts.unique += 1;
        Arrival::New(h)
    }

    pub fn user(&self) -> u32 {
        self.me
    }
}

/// The outcome of comparing ledgers with the sent table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// (acknowledged message, member other than its sender) pairs.
    pub expected: u64,
    /// Of those, how many arrived (at least once).
    pub delivered: u64,
    /// expected − delivered.
    pub lost: u64,
    /// Arrivals of messages whose send failed (no acknowledgement): allowed, not expected.
    pub unconfirmed_delivered: u64,
    /// Arrivals of messages that were never sent (counter unknown to the sender): corruption.
    pub phantom: u64,
}

impl Tally {
    pub fn add(&mut self, o: &Tally) {
        self.expected += o.expected;
        self.delivered += o.delivered;
        self.lost += o.lost;
        self.unconfirmed_delivered += o.unconfirmed_delivered;
        self.phantom += o.phantom;
    }
}

/// One lost (message, recipient), for the report (a handful, to start debugging from).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LossSample {
    pub receiver: u32,
    pub conversation: u32,
    pub sender: u32,
    pub counter: u64,
}

/// The sent table indexed by conversation, built once for many [`account`] calls.
pub struct SentIndex<'a> {
    by_conversation: HashMap<u32, Vec<(u32, &'a SentEntry)>>,
}

impl<'a> SentIndex<'a> {
    pub fn new(table: &'a SentTable) -> SentIndex<'a> {
        let mut by_conversation: HashMap<u32, Vec<(u32, &SentEntry)>> = HashMap::new();
        for (&(c, s), e) in &table.entries {
            by_conversation.entry(c).or_default().push((s, e));
        }
        SentIndex { by_conversation }
    }
}

/// Compares one receiver's ledger with what was sent to its conversations. Adds up to
/// `sample_limit - samples.len()` lost pairs to `samples`.
pub fn account(
    ledger: &ReceiverLedger,
    sent: &SentIndex<'_>,
    samples: &mut Vec<LossSample>,
    sample_limit: usize,
) -> Tally {
    let mut t = Tally::default();
    let empty = RangeSet::new();
    for &c in &ledger.member_of {
        let Some(senders) = sent.by_conversation.get(&c) else {
            continue;
        };
        for &(s, entry) in senders {
            if s == ledger.me {
                continue;
            }
            let got = ledger
                .streams
                .get(&(c, s))
                .map(|st| &st.got)
                .unwrap_or(&empty);
            let expected = entry.acked.len();
            let delivered = got.intersection_len(&entry.acked);
            t.expected += expected;
            t.delivered += delivered;
            t.lost += expected - delivered;
            t.unconfirmed_delivered += got.intersection_len(&entry.failed);
            if expected > delivered && samples.len() < sample_limit {
                for counter in entry.acked.missing_from(got, sample_limit - samples.len()) {
                    samples.push(LossSample {
                        receiver: ledger.me,
                        conversation: c,
                        sender: s,
                        counter,
                    });
                }
            }
        }
    }
    // Whatever arrived that neither set explains was never sent.
    for (&(c, s), st) in &ledger.streams {
        if s == ledger.me {
            continue;
        }
        let (acked, failed) = sent
            .by_conversation
            .get(&c)
            .and_then(|v| v.iter().find(|(sender, _)| *sender == s))
            .map(|(_, e)| (&e.acked, &e.failed))
            .unwrap_or((&empty, &empty));
        t.phantom +=
            st.got.len() - st.got.intersection_len(acked) - st.got.intersection_len(failed);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(run: u32, sender: u32, conversation: u32, counter: u64) -> Vec<u8> {
        Header {
            run,
            sender,
            conversation,
            counter,
            scheduled_unix_ns: 1,
        }
        .encode(48)
    }

    #[test]
    fn range_set_inserts_merge() {
        let mut r = RangeSet::new();
        assert!(r.insert(5));
        assert!(r.insert(7));
        assert!(!r.insert(5));
        assert_eq!(r.ranges(), &[(5, 6), (7, 8)]);
        assert!(r.insert(6)); // bridges both
        assert_eq!(r.ranges(), &[(5, 8)]);
        assert!(r.insert(4));
        assert!(r.insert(8));
        assert_eq!(r.ranges(), &[(4, 9)]);
        assert!(r.insert(0));
        assert_eq!(r.len(), 6);
        assert!(r.contains(0) && r.contains(8) && !r.contains(9) && !r.contains(3));
        assert_eq!(r.max(), Some(8));
        let mut o = RangeSet::new();
        for x in [1, 2, 3, 4, 5, 20] {
            o.insert(x);
        }
        assert_eq!(r.intersection_len(&o), 2);
        assert_eq!(o.missing_from(&r, 10), vec![1, 2, 3, 20]);
        assert_eq!(o.missing_from(&r, 2), vec![1, 2]);
    }

    #[test]
    fn range_set_matches_a_naive_set() {
        let mut rng = crate::util::SplitMix64::new(3);
        let mut r = RangeSet::new();
        let mut naive = std::collections::BTreeSet::new();
        for _ in 0..5000 {
            let x = rng.below(300);
            assert_eq!(r.insert(x), naive.insert(x));
        }
        assert_eq!(r.len(), naive.len() as u64);
        for w in r.ranges().windows(2) {
            assert!(w[0].1 < w[1].0, "disjoint and non-adjacent");
        }
    }

    #[test]
    fn ledger_detects_duplicates_order_and_foreign_messages() {
        let mut l = ReceiverLedger::new(1, 9, vec![0, 3]);
        assert!(matches!(
            l.on_message(0, Some(1), &payload(9, 2, 0, 0)),
            Arrival::New(_)
        ));
        assert!(matches!(
            l.on_message(0, Some(3), &payload(9, 2, 0, 2)),
            Arrival::New(_)
        ));
        // Counter 1 after 2: out of order (and its seq 2 after 3 goes backwards).
        assert!(matches!(
            l.on_message(0, Some(2), &payload(9, 2, 0, 1)),
            Arrival::New(_)
        ));
        assert_eq!(
            l.on_message(0, Some(4), &payload(9, 2, 0, 1)),
            Arrival::Duplicate
        );
        assert_eq!(l.on_message(0, Some(5), &payload(9, 1, 0, 0)), Arrival::Own);
        assert_eq!(l.on_message(0, None, &payload(8, 2, 0, 7)), Arrival::Stale);
        assert_eq!(l.on_message(0, None, b"nope"), Arrival::Malformed);
        // Header says conversation 3 but it arrived in 0; conversation 5 is not ours.
        assert_eq!(
            l.on_message(0, None, &payload(9, 2, 3, 0)),
            Arrival::Misrouted
        );
        assert_eq!(
            l.on_message(5, None, &payload(9, 2, 5, 0)),
            Arrival::Misrouted
        );
        let c = l.counts;
        assert_eq!(c.arrivals, 9);
        assert_eq!(c.unique, 3);
        assert_eq!(c.duplicates, 1);
        assert_eq!(c.out_of_order, 1);
        assert_eq!(c.seq_regressions, 1);
        assert_eq!(c.own, 1);
        assert_eq!(c.stale, 1);
        assert_eq!(c.malformed, 1);
        assert_eq!(c.misrouted, 2);
    }

    #[test]
    fn same_seq_is_a_client_dedupe_another_seq_a_duplicate() {
        let mut l = ReceiverLedger::new(1, 9, vec![0]);
        assert!(matches!(
            l.on_message(0, Some(1), &payload(9, 2, 0, 0)),
            Arrival::New(_)
        ));
        assert!(matches!(
            l.on_message(0, Some(2), &payload(9, 1, 0, 0)),
            Arrival::Own
        ));
        // Live, then again in a resume replay: the same stored message twice.
        assert_eq!(
            l.on_message(0, Some(1), &payload(9, 2, 0, 0)),
            Arrival::ClientDedupe
        );
        assert_eq!(
            l.on_message(0, Some(2), &payload(9, 1, 0, 0)),
            Arrival::ClientDedupe
        );
        // The same message stored twice (another seq): a real duplicate.
        assert_eq!(
            l.on_message(0, Some(3), &payload(9, 2, 0, 0)),
            Arrival::Duplicate
        );
        let c = l.counts;
        assert_eq!(
            (c.unique, c.own, c.client_dedupes, c.duplicates),
            (1, 1, 2, 1)
        );
        assert_eq!(c.seq_regressions, 0);
    }

    #[test]
    fn account_finds_loss_unconfirmed_and_phantoms() {
        let mut sent = SentTable::default();
        for x in 0..10 {
            sent.entry(0, 2).acked.insert(x);
        }
        sent.entry(0, 2).failed.insert(10);
        for x in 0..4 {
            sent.entry(0, 1).acked.insert(x); // the receiver's own: not expected
        }
        sent.entry(7, 2).acked.insert(0); // a conversation the receiver is not in
        let mut l = ReceiverLedger::new(1, 9, vec![0]);
        for x in [0, 1, 2, 4, 5, 6, 7, 8, 10, 11] {
            l.on_message(0, None, &payload(9, 2, 0, x));
        }
        let index = SentIndex::new(&sent);
        let mut samples = Vec::new();
        let t = account(&l, &index, &mut samples, 5);
        assert_eq!(
            t,
            Tally {
                expected: 10,
                delivered: 8,
                lost: 2,
                unconfirmed_delivered: 1,
                phantom: 1,
            }
        );
        assert_eq!(
            samples.iter().map(|s| s.counter).collect::<Vec<_>>(),
            vec![3, 9]
        );
        assert!(samples.iter().all(|s| s.receiver == 1 && s.sender == 2));
    }

    #[test]
    fn sent_rows_round_trip() {
        let mut t = SentTable::default();
        t.entry(1, 2).acked.insert(0);
        t.entry(1, 2).acked.insert(1);
        t.entry(1, 2).seqs = vec![(0, 5), (1, 7)];
        t.entry(3, 4).failed.insert(9);
        let json = serde_json::to_string(&t.rows()).unwrap();
        let rows: Vec<SentRow> = serde_json::from_str(&json).unwrap();
        let mut back = SentTable::default();
        back.merge_rows(rows);
        assert_eq!(back, t);
        assert_eq!(back.acked_per_conversation().get(&1), Some(&2));
    }
}
