use std::collections::{BTreeMap, BTreeSet, HashMap};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;

fn conv(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

fn msg(conversation: Uuid, seq: u64) -> IndexedMessage {
    IndexedMessage {
        conversation,
        seq,
        sender: conv(99),
        sender_name: "bob".into(),
        sent_at_ms: seq * 1000,
        text: format!("message {seq}"),
    }
}

/// A full page of `limit` consecutive messages just below `before`.
fn full_page(c: Uuid, before: u64, limit: u64) -> FetchedPage {
    let lo = before.saturating_sub(limit).max(1);
    FetchedPage {
        conversation: c,
        before_seq: before,
        lowest_seq: Some(lo),
        has_more: lo > 1,
        messages: (lo..before).map(|s| msg(c, s)).collect(),
    }
}

fn planner(page_limit: u32, max_in_flight: usize) -> Backfill {
    Backfill::new(BackfillConfig {
        page_limit,
        max_in_flight,
    })
    .expect("config")
}

#[test]
fn checkpoint_ranges_merge_and_find_the_highest_gap() {
    let mut c = Checkpoint::default();
    assert_eq!(c.highest_missing(10), Some(10));
    c.insert(SeqRange { lo: 6, hi: 10 });
    assert_eq!(c.highest_missing(10), Some(5));
    assert_eq!(c.highest_missing(12), Some(12));
    c.insert(SeqRange { lo: 1, hi: 3 });
    assert_eq!(c.highest_missing(10), Some(5));
    c.insert(SeqRange { lo: 4, hi: 5 });
    assert_eq!(c.ranges(), &[SeqRange { lo: 1, hi: 10 }]);
    assert!(c.is_complete(10));
    assert!(!c.is_complete(11));
    assert!(Checkpoint::default().is_complete(0));
    let c = Checkpoint::from_ranges(vec![
        SeqRange { lo: 20, hi: 30 },
        SeqRange { lo: 5, hi: 1 },
        SeqRange { lo: 25, hi: 40 },
        SeqRange { lo: 2, hi: 4 },
    ]);
    assert_eq!(
        c.ranges(),
        &[SeqRange { lo: 2, hi: 4 }, SeqRange { lo: 20, hi: 40 }]
    );
    assert_eq!(c.highest_missing(40), Some(19));
}

#[test]
fn checkpoint_keeps_a_bounded_number_of_ranges() {
    let mut c = Checkpoint::default();
    for i in 0..(MAX_RANGES as u64 + 10) {
        c.insert(SeqRange {
            lo: i * 10,
            hi: i * 10 + 1 + i % 3,
        });
    }
    assert_eq!(c.ranges().len(), MAX_RANGES);
    assert!(c.ranges().windows(2).all(|w| w[0].hi + 1 < w[1].lo));
}

#[test]
fn walks_down_to_seq_one_and_stops() {
    let c = conv(1);
    let mut b = planner(100, 2);
    b.set_conversation(c, 450, None);
    let mut befores = Vec::new();
    loop {
        let reqs = b.poll();
        if reqs.is_empty() {
            break;
        }
        assert_eq!(reqs.len(), 1, "one request per conversation at a time");
        let r = reqs[0];
        assert_eq!(r.limit, 100);
        befores.push(r.before_seq);
        let store = b
            .page_fetched(full_page(c, r.before_seq, 100))
            .expect("page")
            .expect("known");
        assert!(store.messages.iter().all(|m| m.seq < r.before_seq));
    }
    assert_eq!(befores, [451, 351, 251, 151, 51]);
    assert!(b.is_complete());
    assert!(b.poll().is_empty());
}

#[test]
fn resumes_from_the_stored_checkpoint_and_fills_new_messages_first() {
    let c = conv(1);
    let mut b = planner(100, 1);
    b.set_conversation(c, 450, None);
    let mut stored = None;
    for _ in 0..2 {
        let r = b.poll()[0];
        stored = Some(
            b.page_fetched(full_page(c, r.before_seq, 100))
                .expect("ok")
                .expect("known"),
        );
    }
    let stored = stored.expect("two pages").checkpoint;
    assert_eq!(stored.ranges(), &[SeqRange { lo: 251, hi: 450 }]);

    // Restart: a new planner from the stored checkpoint; 30 messages arrived meanwhile.
    let mut b = planner(100, 1);
    b.set_conversation(c, 480, Some(stored));
    let r = b.poll()[0];
    assert_eq!(r.before_seq, 481, "the new messages first");
    let store = b
        .page_fetched(full_page(c, 481, 100))
        .expect("ok")
        .expect("known");
    // The page reached down into what was indexed: only the 30 new ones are stored again.
    assert_eq!(store.messages.len(), 30);
    assert_eq!(store.checkpoint.ranges(), &[SeqRange { lo: 251, hi: 480 }]);
    assert_eq!(b.poll()[0].before_seq, 251, "then on from where it stopped");
}

#[test]
fn live_messages_are_not_fetched_again() {
    let c = conv(1);
    let mut b = planner(100, 1);
    b.set_conversation(
        c,
        100,
        Some(Checkpoint::from_ranges(vec![SeqRange { lo: 1, hi: 100 }])),
    );
    assert!(b.is_complete());
    for seq in 101..=105 {
        b.indexed_live(c, seq).expect("known");
    }
    assert!(b.is_complete());
    assert!(b.poll().is_empty());
    assert_eq!(b.indexed_live(conv(2), 1), None);
}

#[test]
fn budget_bounds_requests_in_flight_across_conversations() {
    let mut b = planner(50, 2);
    for i in 0..5 {
        b.set_conversation(conv(i), 1000, None);
    }
    let first = b.poll();
    assert_eq!(first.len(), 2);
    assert!(b.poll().is_empty(), "budget used up");
    b.page_failed(first[0].conversation, first[0].before_seq);
    let next = b.poll();
    assert_eq!(next.len(), 1);
    assert_ne!(
        next[0].conversation, first[1].conversation,
        "not the one still in flight"
    );
}

#[test]
fn inconsistent_or_unrequested_pages_are_refused() {
    let c = conv(1);
    let mut b = planner(10, 1);
    b.set_conversation(c, 100, None);
    assert_eq!(
        b.page_fetched(full_page(c, 50, 10)),
        Err(BackfillError::UnexpectedPage { before_seq: 50 })
    );
    let r = b.poll()[0];
    let mut page = full_page(c, r.before_seq, 10);
    page.messages.push(msg(conv(2), 95));
    assert!(matches!(
        b.page_fetched(page),
        Err(BackfillError::BadPage { .. })
    ));
    assert!(b.poll().is_empty(), "paused after a bad page");
    b.set_conversation(c, 100, None);
    let r = b.poll()[0];
    let empty = FetchedPage {
        conversation: c,
        before_seq: r.before_seq,
        lowest_seq: None,
        has_more: true,
        messages: Vec::new(),
    };
    assert!(matches!(
        b.page_fetched(empty),
        Err(BackfillError::BadPage { .. })
    ));
    assert!(
        Backfill::new(BackfillConfig {
            page_limit: 0,
            max_in_flight: 1
        })
        .is_err()
    );
    assert!(
        Backfill::new(BackfillConfig {
            page_limit: 1001,
            max_in_flight: 1
        })
        .is_err()
    );
    assert!(
        Backfill::new(BackfillConfig {
            page_limit: 10,
            max_in_flight: 0
        })
        .is_err()
    );
}

#[test]
fn a_removed_conversation_ignores_its_late_page() {
    let c = conv(1);
    let mut b = planner(10, 1);
    b.set_conversation(c, 100, None);
    let r = b.poll()[0];
    b.remove_conversation(c);
    assert_eq!(b.page_fetched(full_page(c, r.before_seq, 10)), Ok(None));
    assert!(b.poll().is_empty());
}

/// A conversation on the simulated server: which seqs exist (deleted ones do not) and which
/// of them the client can decrypt.
struct SimConversation {
    seqs: BTreeMap<u64, bool>,
}

impl SimConversation {
    fn page(&self, id: Uuid, before: u64, limit: u32) -> FetchedPage {
        let got: Vec<(u64, bool)> = self
            .seqs
            .range(..before)
            .rev()
            .take(limit as usize)
            .map(|(s, d)| (*s, *d))
            .collect();
        let lowest = got.last().map(|(s, _)| *s);
        FetchedPage {
            conversation: id,
            before_seq: before,
            lowest_seq: lowest,
            has_more: lowest.is_some_and(|l| self.seqs.range(..l).next().is_some()),
            messages: got
                .iter()
                .filter(|(_, d)| *d)
                .map(|(s, _)| msg(id, *s))
                .collect(),
        }
    }

    fn grow(&mut self, rng: &mut ChaCha8Rng, n: u64) {
        let top = self.seqs.keys().next_back().copied().unwrap_or(0);
        for s in top + 1..=top + n {
            self.seqs.insert(s, rng.random_bool(0.95));
        }
    }

    fn newest(&self) -> u64 {
        self.seqs.keys().next_back().copied().unwrap_or(0)
    }
}

/// Seeded runs: random conversations with holes and undecryptable messages, failing fetches,
/// restarts from the stored checkpoints and new messages arriving. Every decryptable message
/// must end up indexed, within a bounded number of steps, and the planner must then be idle.
#[test]
fn seeded_simulation_indexes_everything_despite_failures_and_restarts() {
    for seed in 0..150u64 {
        simulate(seed);
    }
}

fn simulate(seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let config = BackfillConfig {
        page_limit: rng.random_range(1..=120),
        max_in_flight: rng.random_range(1..=4),
    };
    let mut server: Vec<(Uuid, SimConversation)> = (0..rng.random_range(1..=5u128))
        .map(|i| {
            let mut c = SimConversation {
                seqs: BTreeMap::new(),
            };
            let n = rng.random_range(0..=600);
            c.grow(&mut rng, n);
            // Holes: deleted or never visible to this user.
            let holes: Vec<u64> = c
                .seqs
                .keys()
                .copied()
                .filter(|_| rng.random_bool(0.1))
                .collect();
            for h in holes {
                c.seqs.remove(&h);
            }
            (conv(i), c)
        })
        .collect();
    let mut indexed: BTreeSet<(Uuid, u64)> = BTreeSet::new();
    let mut stored: HashMap<Uuid, Checkpoint> = HashMap::new();
    let mut b = Backfill::new(config).expect("config");
    for (id, c) in &server {
        b.set_conversation(*id, c.newest(), None);
    }
    let mut steps = 0;
    loop {
        steps += 1;
        assert!(steps < 20_000, "seed {seed}: no progress");
        let reqs = b.poll();
        if reqs.is_empty() && b.is_complete() {
            break;
        }
        assert!(reqs.len() <= config.max_in_flight, "seed {seed}");
        for r in reqs {
            assert!(
                r.limit == config.page_limit && r.before_seq >= 2,
                "seed {seed}: {r:?}"
            );
            if rng.random_bool(0.15) {
                b.page_failed(r.conversation, r.before_seq);
                continue;
            }
            let c = &server
                .iter()
                .find(|(id, _)| *id == r.conversation)
                .expect("known")
                .1;
            let page = c.page(r.conversation, r.before_seq, r.limit);
            let store = b
                .page_fetched(page)
                .expect("consistent page")
                .expect("known");
            indexed.extend(store.messages.iter().map(|m| (m.conversation, m.seq)));
            stored.insert(store.conversation, store.checkpoint);
        }
        if rng.random_bool(0.05) {
            // New messages arrive (and are indexed live, or not: both must work).
            let i = rng.random_range(0..server.len());
            let (id, c) = &mut server[i];
            let n = rng.random_range(1..=30);
            c.grow(&mut rng, n);
            if rng.random_bool(0.5) {
                let newest = c.newest();
                if let Some(cp) = b.indexed_live(*id, newest) {
                    if c.seqs[&newest] {
                        indexed.insert((*id, newest));
                    }
                    stored.insert(*id, cp);
                }
            }
            b.set_conversation(*id, c.newest(), None);
        }
        if rng.random_bool(0.05) {
            // Restart: in-flight requests are lost, checkpoints come back from the database.
            b = Backfill::new(config).expect("config");
            for (id, c) in &server {
                b.set_conversation(*id, c.newest(), stored.get(id).cloned());
            }
        }
    }
    for (id, c) in &server {
        for (seq, decryptable) in &c.seqs {
            assert_eq!(
                indexed.contains(&(*id, *seq)),
                *decryptable,
                "seed {seed}: {id} seq {seq}"
            );
        }
    }
}
