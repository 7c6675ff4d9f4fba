//! `--verify-history`: after the drain, every conversation's stored history is read back in
//! full and compared with what the senders were told (the merged [`SentTable`]):
//!
//! * every acknowledged (sender, counter) is stored exactly once, under the seq its
//!   acknowledgement named;
//! * seqs are gapless and increasing from 1 (the whole conversation, earlier runs included);
//! * no (sender user, idempotency key) and no (sender, counter) is stored twice;
//! * nothing of this run is stored that was never sent.
//!
//! The checking is sans-IO ([`check_conversation`]); reading the pages is the target's
//! ([`crate::target::Target::history_page`]).

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::accounting::SentEntry;
use crate::payload::Header;
use crate::target::HistoryEntry;

/// The report's `history` section (null without `--verify-history`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistorySection {
    /// Conversations whose history was read.
    pub conversations: u64,
    /// Stored messages read (all runs).
    pub messages: u64,
    /// Of those, messages of this run.
    pub this_run: u64,
    /// Acknowledged messages not found in the history. Must be 0.
    pub acknowledged_missing: u64,
    /// Stored messages whose (sender, counter) or (sender user, idempotency key) was already
    /// stored in that conversation. Must be 0.
    pub duplicates: u64,
    /// Places where a seq is not the previous one + 1 (the first must be 1). Must be 0.
    pub seq_gaps: u64,
    /// Acknowledged messages stored under another seq than their acknowledgement named.
    /// Must be 0.
    pub seq_mismatch: u64,
    /// Messages of this run stored in another conversation than their header names, or that
    /// were never sent (neither acknowledged nor failed). Must be 0.
    pub unexpected: u64,
    /// Sends that never got an acknowledgement but were stored (allowed).
    pub unacknowledged_stored: u64,
    /// Conversations whose history could not be read (after retries). Must be 0.
    pub read_errors: u64,
    /// Up to 20 acknowledged messages missing from the history.
    pub missing_samples: Vec<MissingSample>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissingSample {
    pub conversation: u32,
    pub sender: u32,
    pub counter: u64,
}

/// Samples of missing messages kept.
pub const MISSING_SAMPLES: usize = 20;

impl HistorySection {
    /// What makes the run fail, as (count, description).
    pub fn problems(&self) -> Vec<(u64, &'static str)> {
        vec![
            (
                self.acknowledged_missing,
                "acknowledged messages missing from the stored history",
            ),
            (self.duplicates, "messages stored twice in the history"),
            (self.seq_gaps, "gaps in the stored seqs"),
            (
                self.seq_mismatch,
                "acknowledged messages stored under another seq than acknowledged",
            ),
            (
                self.unexpected,
                "stored messages of this run that were never sent or are misplaced",
            ),
            (
                self.read_errors,
                "conversations whose history could not be read",
            ),
        ]
    }

    pub fn add(&mut self, o: &HistorySection) {
        self.conversations += o.conversations;
        self.messages += o.messages;
        self.this_run += o.this_run;
        self.acknowledged_missing += o.acknowledged_missing;
        self.duplicates += o.duplicates;
        self.seq_gaps += o.seq_gaps;
        self.seq_mismatch += o.seq_mismatch;
        self.unexpected += o.unexpected;
        self.unacknowledged_stored += o.unacknowledged_stored;
        self.read_errors += o.read_errors;
        for s in &o.missing_samples {
            if self.missing_samples.len() < MISSING_SAMPLES {
                self.missing_samples.push(s.clone());
            }
        }
    }
}

/// Checks one conversation's full history (ascending by seq, as read) against the sends of
/// this run to it: `sent` maps a sender's user index to its entry.
pub fn check_conversation(
    conversation: u32,
    run: u32,
    history: &[HistoryEntry],
    sent: &HashMap<u32, &SentEntry>,
) -> HistorySection {
    let mut out = HistorySection {
        conversations: 1,
        ..Default::default()
    };
    let acked_seq: HashMap<(u32, u64), u64> = sent
        .iter()
        .flat_map(|(&s, e)| e.seqs.iter().map(move |&(c, q)| ((s, c), q)))
        .collect();
    let mut by_key: HashSet<(&str, u128)> = HashSet::new();
    let mut by_counter: HashSet<(u32, u64)> = HashSet::new();
    let mut prev = 0u64;
    for m in history {
        out.messages += 1;
        if m.seq != prev + 1 {
            out.seq_gaps += 1;
        }
        prev = prev.max(m.seq);
        let key_repeated = !by_key.insert((m.sender_user.as_str(), m.client_msg_id));
        let h = match Header::decode(&m.payload) {
            Ok(h) if h.run == run => h,
            // Another run's or not a load-test message: only the seq and key checks apply.
            _ => {
                if key_repeated {
                    out.duplicates += 1;
                }
                continue;
            }
        };
        out.this_run += 1;
        let counter_repeated = !by_counter.insert((h.sender, h.counter));
        if key_repeated || counter_repeated {
            out.duplicates += 1;
            continue;
        }
        if h.conversation != conversation {
            out.unexpected += 1;
            continue;
        }
        let entry = sent.get(&h.sender);
        if entry.is_some_and(|e| e.acked.contains(h.counter)) {
            if let Some(&q) = acked_seq.get(&(h.sender, h.counter))
                && q != m.seq
            {
                out.seq_mismatch += 1;
            }
        } else if entry.is_some_and(|e| e.failed.contains(h.counter)) {
            out.unacknowledged_stored += 1;
        } else {
            out.unexpected += 1;
        }
    }
    let mut senders: Vec<(&u32, &&SentEntry)> = sent.iter().collect();
    senders.sort_by_key(|(s, _)| **s);
    for (&s, e) in senders {
        for &(start, end) in e.acked.ranges() {
            for counter in start..end {
                if !by_counter.contains(&(s, counter)) {
                    out.acknowledged_missing += 1;
                    if out.missing_samples.len() < MISSING_SAMPLES {
                        out.missing_samples.push(MissingSample {
                            conversation,
                            sender: s,
                            counter,
                        });
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: u64, run: u32, sender: u32, conversation: u32, counter: u64) -> HistoryEntry {
        let h = Header {
            run,
            sender,
            conversation,
            counter,
            scheduled_unix_ns: 1,
        };
        HistoryEntry {
            seq,
            sender_user: format!("user-{sender}"),
            client_msg_id: h.client_msg_id(),
            payload: h.encode(40),
        }
    }

    fn entry(acked: &[(u64, u64)], failed: &[u64]) -> SentEntry {
        let mut e = SentEntry::default();
        for &(c, q) in acked {
            e.acked.insert(c);
            e.seqs.push((c, q));
        }
        for &c in failed {
            e.failed.insert(c);
        }
        e
    }

    #[test]
    fn a_clean_history_passes() {
        let a = entry(&[(0, 2), (1, 3)], &[]);
        let b = entry(&[(0, 4)], &[1]);
        let sent: HashMap<u32, &SentEntry> = [(1, &a), (2, &b)].into_iter().collect();
        let h = vec![
            msg(1, 8, 1, 0, 0), // an earlier run: ignored but in the seq sequence
            msg(2, 9, 1, 0, 0),
            msg(3, 9, 1, 0, 1),
            msg(4, 9, 2, 0, 0),
            msg(5, 9, 2, 0, 1), // failed send that was stored anyway: allowed
        ];
        let r = check_conversation(0, 9, &h, &sent);
        assert!(r.problems().iter().all(|(n, _)| *n == 0), "{r:?}");
        assert_eq!((r.messages, r.this_run, r.unacknowledged_stored), (5, 4, 1));
    }

    #[test]
    fn every_kind_of_damage_is_counted() {
        let a = entry(&[(0, 1), (1, 2), (2, 3), (3, 4)], &[]);
        let sent: HashMap<u32, &SentEntry> = [(1, &a)].into_iter().collect();
        let mut dup_key = msg(6, 9, 1, 0, 0);
        dup_key.payload = Header {
            run: 9,
            sender: 1,
            conversation: 0,
            counter: 7,
            scheduled_unix_ns: 1,
        }
        .encode(40);
        let h = vec![
            msg(1, 9, 1, 0, 0),
            msg(2, 9, 1, 0, 1),
            // seq 3 missing (gap); counter 2 never stored; counter 3 under the wrong seq.
            msg(5, 9, 1, 0, 3),
            dup_key,             // same idempotency key as seq 1, another counter
            msg(7, 9, 1, 0, 1),  // seq 2 stored again (same counter and key): counted once
            msg(8, 9, 1, 0, 9),  // never sent
            msg(9, 9, 1, 4, 10), // names another conversation
        ];
        let r = check_conversation(0, 9, &h, &sent);
        assert_eq!(r.seq_gaps, 1);
        assert_eq!(r.acknowledged_missing, 1);
        assert_eq!(
            r.missing_samples,
            vec![MissingSample {
                conversation: 0,
                sender: 1,
                counter: 2
            }]
        );
        assert_eq!(r.seq_mismatch, 1);
        assert_eq!(r.duplicates, 2);
        assert_eq!(r.unexpected, 2);
    }
}
