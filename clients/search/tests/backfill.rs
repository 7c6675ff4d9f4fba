//! The backfill planner driving a real encrypted index across a restart: pages and their
//! checkpoints stored together, the walk resumed from the file, everything searchable at the end.

use tern_search::{
    Backfill, BackfillConfig, FetchedPage, IndexedMessage, PageRequest, SearchIndex, SearchQuery,
};
use uuid::Uuid;

const KEY: [u8; 32] = [0x33; 32];
const NEWEST: u64 = 1234;

fn message(conversation: Uuid, seq: u64) -> IndexedMessage {
    IndexedMessage {
        conversation,
        seq,
        sender: Uuid::from_u128(7),
        sender_name: "carol".into(),
        sent_at_ms: 1_700_000_000_000 + seq * 90_000,
        text: format!("entry number{seq} of the log"),
    }
}

/// The server's answer to "before X, limit N" for a conversation whose seqs 1..=NEWEST exist.
fn serve(r: PageRequest) -> FetchedPage {
    let hi = r.before_seq - 1;
    let lo = hi.saturating_sub(u64::from(r.limit) - 1).max(1);
    FetchedPage {
        conversation: r.conversation,
        before_seq: r.before_seq,
        lowest_seq: Some(lo),
        has_more: lo > 1,
        messages: (lo..=hi).map(|s| message(r.conversation, s)).collect(),
    }
}

fn planner(index: &SearchIndex, conversations: &[Uuid]) -> Backfill {
    let mut b = Backfill::new(BackfillConfig {
        page_limit: 100,
        max_in_flight: 2,
    })
    .expect("config");
    let stored = index.backfill_checkpoints().expect("checkpoints");
    for c in conversations {
        let cp = stored
            .iter()
            .find(|(id, _)| id == c)
            .map(|(_, cp)| cp.clone());
        b.set_conversation(*c, NEWEST, cp);
    }
    b
}

/// Runs up to `steps` polls; returns how many pages were stored.
fn run(index: &mut SearchIndex, b: &mut Backfill, steps: usize) -> usize {
    let mut pages = 0;
    for _ in 0..steps {
        let requests = b.poll();
        if requests.is_empty() {
            break;
        }
        for r in requests {
            let store = b.page_fetched(serve(r)).expect("page").expect("known");
            index.store_page(&store).expect("store");
            pages += 1;
        }
    }
    pages
}

fn found(index: &SearchIndex, seq: u64) -> bool {
    let q = SearchQuery::text(format!("number{seq} "), 5);
    index
        .search(&q)
        .expect("search")
        .iter()
        .any(|h| h.seq == seq)
}

#[test]
fn backfill_resumes_from_the_file_after_a_restart_and_stops_at_seq_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("search.db");
    let conversations = [Uuid::from_u128(1), Uuid::from_u128(2)];

    let mut index = SearchIndex::open(&path, &KEY).expect("open");
    let mut b = planner(&index, &conversations);
    assert_eq!(
        run(&mut index, &mut b, 3),
        6,
        "two conversations, three rounds"
    );
    assert!(found(&index, NEWEST) && !found(&index, 1));
    drop(b);
    drop(index); // the process ends mid-backfill

    let mut index = SearchIndex::open(&path, &KEY).expect("reopen");
    let mut b = planner(&index, &conversations);
    let first = b.poll();
    assert_eq!(first.len(), 2);
    assert!(
        first.iter().all(|r| r.before_seq == NEWEST + 1 - 300),
        "{first:?}"
    );
    for r in first {
        b.page_failed(r.conversation, r.before_seq);
    }
    // 1234 messages = 13 pages each; 3 were done before the restart.
    assert_eq!(run(&mut index, &mut b, 100), 20);
    assert!(b.is_complete());
    assert!(b.poll().is_empty());
    assert_eq!(index.message_count().expect("count"), 2 * NEWEST);
    assert!(found(&index, 1) && found(&index, 617) && found(&index, NEWEST));
    for c in conversations {
        let cp = index.backfill_checkpoint(c).expect("read").expect("stored");
        assert!(cp.is_complete(NEWEST));
    }
}
