//! The index end to end on real SQLCipher files: what is found, what is not, and what the
//! file on disk reveals.

use std::path::Path;

use tern_search::{
    Checkpoint, IndexedMessage, MAX_ADD_BATCH, MAX_SEARCH_LIMIT, SearchError, SearchHit,
    SearchIndex, SearchQuery, SeqRange, StorePage, delete_index_files,
};
use uuid::Uuid;

const KEY: [u8; 32] = [0x5a; 32];

fn id(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

const ALICE: u128 = 0xa;
const BOB: u128 = 0xb;

fn msg(conversation: u128, seq: u64, sender: u128, sent_at_ms: u64, text: &str) -> IndexedMessage {
    IndexedMessage {
        conversation: id(conversation),
        seq,
        sender: id(sender),
        sender_name: if sender == ALICE {
            "alice".into()
        } else {
            "bob".into()
        },
        sent_at_ms,
        text: text.into(),
    }
}

fn search(index: &SearchIndex, text: &str) -> Vec<SearchHit> {
    index.search(&SearchQuery::text(text, 50)).expect("search")
}

fn seqs(hits: &[SearchHit]) -> Vec<u64> {
    hits.iter().map(|h| h.seq).collect()
}

fn highlighted(hit: &SearchHit) -> Vec<&str> {
    hit.snippet
        .iter()
        .filter(|p| p.highlight)
        .map(|p| p.text.as_str())
        .collect()
}

fn sample() -> SearchIndex {
    let mut index = SearchIndex::open_in_memory().expect("open");
    index
        .add(&[
            msg(
                1,
                1,
                ALICE,
                1_000,
                "Shall we meet at the café near the station?",
            ),
            msg(
                1,
                2,
                BOB,
                2_000,
                "Yes, the cafe at 6. Bring the umbrella ☔",
            ),
            msg(1, 3, ALICE, 3_000, "明日東京都に行きます"),
            msg(2, 1, BOB, 4_000, "Quarterly report attached 📎 see page 3"),
            msg(
                2,
                2,
                ALICE,
                5_000,
                "The report looks good, reporting upstream now",
            ),
            msg(2, 3, BOB, 6_000, "🎉🎉🎉"),
        ])
        .expect("add");
    index
}

#[test]
fn a_keyword_present_in_a_message_is_found() {
    let index = sample();
    let hits = search(&index, "umbrella");
    assert_eq!(seqs(&hits), [2]);
    let hit = &hits[0];
    assert_eq!(
        (hit.conversation, hit.sender, hit.sender_name.as_str()),
        (id(1), id(BOB), "bob")
    );
    assert_eq!(hit.sent_at_ms, 2_000);
    assert_eq!(highlighted(hit), ["umbrella"]);
    let text: String = hit.snippet.iter().map(|p| p.text.as_str()).collect();
    assert_eq!(text, "Yes, the cafe at 6. Bring the umbrella ☔");
    assert!(search(&index, "absent ").is_empty());
}

#[test]
fn filters_by_conversation_sender_and_date_combine_with_the_text() {
    let index = sample();
    let q = |conversation: Option<u128>, sender: Option<u128>, since, until| SearchQuery {
        text: "the ".into(),
        conversation: conversation.map(id),
        sender: sender.map(id),
        since_ms: since,
        until_ms: until,
        limit: 50,
    };
    let run = |q: SearchQuery| {
        let mut s = seqs(&index.search(&q).expect("search"));
        s.sort_unstable();
        s
    };
    assert_eq!(run(q(None, None, None, None)).len(), 3);
    assert_eq!(run(q(Some(1), None, None, None)), [1, 2]);
    assert_eq!(run(q(None, Some(BOB), None, None)), [2]);
    assert_eq!(run(q(None, Some(ALICE), None, None)), [1, 2]); // (1,1) and (2,2)
    assert_eq!(run(q(None, None, Some(2_000), None)), [2, 2]); // (1,2) and (2,2)
    assert_eq!(run(q(None, None, None, Some(1_999))), [1]);
    assert_eq!(run(q(None, None, Some(2_000), Some(2_000))), [2]);
    assert_eq!(run(q(Some(2), Some(ALICE), Some(4_000), Some(9_000))), [2]);
    assert!(run(q(Some(2), Some(BOB), None, None)).is_empty());
    let bad = index.search(&q(None, None, Some(5), Some(4)));
    assert!(matches!(bad, Err(SearchError::InvalidDateRange { .. })));
    // Beyond what SQLite stores: nothing that late exists, and an open end stays open.
    assert!(run(q(None, None, Some(u64::MAX), None)).is_empty());
    assert_eq!(run(q(None, None, None, Some(u64::MAX))).len(), 3);
}

#[test]
fn accents_match_both_ways_and_highlight_the_original() {
    let index = sample();
    for query in ["cafe ", "café ", "CAFÉ ", "cafe\u{301} "] {
        let mut hits = search(&index, query);
        hits.sort_by_key(|h| h.seq);
        assert_eq!(seqs(&hits), [1, 2], "{query}");
        assert_eq!(highlighted(&hits[0]), ["café"], "{query}");
        assert_eq!(highlighted(&hits[1]), ["cafe"], "{query}");
    }
    let mut index = SearchIndex::open_in_memory().expect("open");
    index
        .add(&[msg(1, 1, ALICE, 1, "Crème brûlée à São Paulo")])
        .expect("add");
    assert_eq!(seqs(&search(&index, "creme brulee sao paulo ")), [1]);
    assert_eq!(highlighted(&search(&index, "sao ")[0]), ["São"]);
}

#[test]
fn a_cjk_word_is_found_inside_a_longer_run() {
    let index = sample();
    for query in ["東京", "東京都", "行きます", "東京 行き"] {
        let hits = search(&index, query);
        assert_eq!(seqs(&hits), [3], "{query}");
    }
    let hits = search(&index, "東京");
    assert_eq!(highlighted(&hits[0]), ["東京"]);
    let text: String = hits[0].snippet.iter().map(|p| p.text.as_str()).collect();
    assert_eq!(
        text, "明日東京都に行きます",
        "snippet is the original, not the segmented form"
    );
    assert!(
        search(&index, "京東").is_empty(),
        "characters must be adjacent and in order"
    );
    assert!(search(&index, "大阪").is_empty());

    let mut index = SearchIndex::open_in_memory().expect("open");
    index
        .add(&[
            msg(1, 1, ALICE, 1, "我们明天去北京大学"),
            msg(1, 2, ALICE, 2, "서울특별시에 갑니다"),
            msg(1, 3, ALICE, 3, "iPhone15を買った"),
        ])
        .expect("add");
    assert_eq!(seqs(&search(&index, "北京")), [1]);
    assert_eq!(seqs(&search(&index, "서울")), [2]);
    assert_eq!(seqs(&search(&index, "iphone15")), [3]);
    assert_eq!(seqs(&search(&index, "買った")), [3]);
}

#[test]
fn the_last_word_is_prefix_matched() {
    let index = sample();
    let mut hits = search(&index, "repor");
    hits.sort_by_key(|h| (h.conversation, h.seq));
    assert_eq!(seqs(&hits), [1, 2]);
    assert_eq!(highlighted(&hits[1]), ["report", "reporting"]);
    assert_eq!(seqs(&search(&index, "quarterly repo")), [1]);
    assert!(
        search(&index, "repo ").is_empty(),
        "a finished word is not a prefix"
    );
    assert!(
        search(&index, "repo quarterly").is_empty(),
        "only the last word is a prefix"
    );
    assert_eq!(seqs(&search(&index, "umbr")), [2]);
}

#[test]
fn hostile_query_text_neither_errors_nor_injects() {
    let index = sample();
    let hostile = [
        "\"",
        "\"\"",
        "\"report",
        "report\"",
        "*",
        "report*",
        "*report",
        "NEAR(report good)",
        "NEAR",
        "report NEAR/2 good",
        "-report",
        "report -good",
        "body:report",
        "messages_fts:x",
        ":",
        "^report",
        "report AND",
        "OR",
        "NOT report",
        "(report",
        "report)",
        "{body}: report",
        "'",
        "'; DROP TABLE messages; --",
        "\\",
        "\0",
        "report\0good",
        "+",
        "%",
        "_",
        "🎉",
        "👍🏽 report",
        "\u{200b}",
        "\u{202e}report",
        "x\u{301}\u{301}\u{301}",
        "",
        "   ",
        "🏳️‍🌈",
        "\u{fffd}",
        "\u{10ffff}",
        "AND OR NOT NEAR",
    ];
    for text in hostile {
        let hits = index
            .search(&SearchQuery::text(text, 10))
            .unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert!(hits.len() <= 10, "{text:?}");
    }
    // Operators are words or separators: these find exactly what the plain words find.
    assert_eq!(
        search(&index, "report\"").len(),
        search(&index, "report").len()
    );
    assert_eq!(
        seqs(&search(&index, "NEAR(report good)")),
        Vec::<u64>::new()
    ); // "near" is a word
    assert_eq!(seqs(&search(&index, "report -good")), [2]);
    assert_eq!(index.message_count().expect("count"), 6, "nothing dropped");
}

#[test]
fn emoji_in_messages_are_harmless() {
    let index = sample();
    assert!(
        search(&index, "🎉").is_empty(),
        "emoji are not tokens: nothing to look up"
    );
    let hits = search(&index, "umbrella ☔");
    assert_eq!(seqs(&hits), [2]);
}

#[test]
fn limits_are_enforced_with_clear_errors() {
    let mut index = sample();
    for limit in [0, MAX_SEARCH_LIMIT + 1] {
        let r = index.search(&SearchQuery::text("report", limit));
        assert!(
            matches!(r, Err(SearchError::InvalidLimit { .. })),
            "{limit}"
        );
    }
    assert!(
        index
            .search(&SearchQuery::text("report", MAX_SEARCH_LIMIT))
            .is_ok()
    );
    let long = "a".repeat(tern_search::MAX_QUERY_CHARS + 1);
    assert!(matches!(
        index.search(&SearchQuery::text(long, 5)),
        Err(SearchError::QueryTooLong { .. })
    ));
    let batch: Vec<_> = (0..=MAX_ADD_BATCH as u64)
        .map(|s| msg(3, s + 1, ALICE, s, "x"))
        .collect();
    assert!(matches!(
        index.add(&batch),
        Err(SearchError::BatchTooLarge { .. })
    ));
    assert!(matches!(
        index.add(&[msg(3, u64::MAX, ALICE, 1, "x")]),
        Err(SearchError::OutOfRange { field: "seq", .. })
    ));
    let mut many = SearchIndex::open_in_memory().expect("open");
    let batch: Vec<_> = (0..300)
        .map(|s| msg(1, s + 1, ALICE, s, "same words"))
        .collect();
    many.add(&batch).expect("add");
    assert_eq!(
        many.search(&SearchQuery::text("same", 200))
            .expect("search")
            .len(),
        200
    );
}

#[test]
fn ranked_by_relevance_then_newest_first() {
    let mut index = SearchIndex::open_in_memory().expect("open");
    index
        .add(&[
            msg(1, 1, ALICE, 1_000, "deploy"),
            msg(1, 2, ALICE, 3_000, "deploy"),
            msg(1, 3, ALICE, 2_000, "deploy"),
            msg(
                1,
                4,
                ALICE,
                500,
                "deploy deploy deploy tonight after the long meeting",
            ),
            msg(
                1,
                5,
                ALICE,
                9_000,
                "we talked about many things today and one was deploy",
            ),
        ])
        .expect("add");
    let hits = search(&index, "deploy ");
    assert!(hits.windows(2).all(|w| w[0].rank <= w[1].rank), "{hits:?}");
    // The three identical texts rank equally: newest first among them.
    let equal: Vec<u64> = hits
        .iter()
        .filter(|h| [1, 2, 3].contains(&h.seq))
        .map(|h| h.seq)
        .collect();
    assert_eq!(equal, [2, 3, 1]);
    assert_eq!(
        hits.last().map(|h| h.seq),
        Some(5),
        "one mention in a long text ranks last"
    );
}

#[test]
fn adding_again_is_idempotent_and_replaces_changed_rows() {
    let mut index = sample();
    index
        .add(&[msg(
            1,
            2,
            BOB,
            2_000,
            "Yes, the cafe at 6. Bring the umbrella ☔",
        )])
        .expect("same");
    assert_eq!(index.message_count().expect("count"), 6);
    assert_eq!(seqs(&search(&index, "umbrella")), [2]);
    index
        .add(&[msg(1, 2, BOB, 2_500, "Actually bring a raincoat")])
        .expect("edit");
    assert_eq!(index.message_count().expect("count"), 6);
    assert!(
        search(&index, "umbrella").is_empty(),
        "the old text left the index"
    );
    let hits = search(&index, "raincoat");
    assert_eq!((seqs(&hits), hits[0].sent_at_ms), (vec![2], 2_500));
}

#[test]
fn removing_a_conversation_drops_its_rows_and_checkpoint() {
    let mut index = sample();
    index
        .set_backfill_checkpoint(
            id(2),
            &Checkpoint::from_ranges(vec![SeqRange { lo: 1, hi: 3 }]),
        )
        .expect("checkpoint");
    assert_eq!(index.remove_conversation(id(2)).expect("remove"), 3);
    assert!(search(&index, "report").is_empty());
    assert_eq!(seqs(&search(&index, "umbrella")), [2]);
    assert_eq!(index.backfill_checkpoint(id(2)).expect("read"), None);
    assert_eq!(index.remove_conversation(id(2)).expect("again"), 0);
}

fn file_bytes(path: &Path) -> Vec<u8> {
    let mut all = std::fs::read(path).expect("db file");
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    if let Ok(more) = std::fs::read(&wal) {
        all.extend(more);
    }
    all
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn the_file_on_disk_is_encrypted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("search.db");
    let marker = "zanzibarmarker";
    let mut index = SearchIndex::open(&path, &KEY).expect("open");
    let batch: Vec<_> = (1..=200)
        .map(|s| {
            msg(
                1,
                s,
                ALICE,
                s,
                &format!("message {s} about {marker} and bob@example.org"),
            )
        })
        .collect();
    index.add(&batch).expect("add");
    // Both before and after the WAL is folded into the file.
    for bytes in [file_bytes(&path), {
        index.checkpoint_wal().expect("checkpoint");
        file_bytes(&path)
    }] {
        assert!(bytes.len() > 4096);
        for needle in [
            marker.as_bytes(),
            b"example.org",
            b"alice",
            b"SQLite format 3",
            b"messages_fts",
        ] {
            assert!(
                !contains(&bytes, needle),
                "{:?} in the file",
                String::from_utf8_lossy(needle)
            );
        }
    }
    // The control: the same rows in plain SQLite show the marker, so the check can fail.
    let plain_path = dir.path().join("plain.db");
    let conn = rusqlite_free_plain_copy(&plain_path, marker);
    drop(conn);
    assert!(contains(
        &std::fs::read(&plain_path).expect("plain"),
        marker.as_bytes()
    ));
}

/// A plain (unkeyed) index through the same public API: `from_connection` without a key.
fn rusqlite_free_plain_copy(path: &Path, marker: &str) -> SearchIndex {
    let conn = rusqlite::Connection::open(path).expect("open plain");
    let mut plain = SearchIndex::from_connection(conn, None).expect("plain index");
    plain
        .add(&[msg(1, 1, ALICE, 1, &format!("about {marker}"))])
        .expect("add");
    plain
}

#[test]
fn a_wrong_key_fails_to_open_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("search.db");
    let mut index = SearchIndex::open(&path, &KEY).expect("open");
    index
        .add(&[msg(1, 1, ALICE, 1, "secret plans")])
        .expect("add");
    drop(index);
    let mut wrong = KEY;
    wrong[31] ^= 1;
    let err = SearchIndex::open(&path, &wrong)
        .err()
        .expect("wrong key must fail");
    assert!(matches!(err, SearchError::WrongKey), "{err:?}");
    assert!(err.to_string().contains("wrong key"), "{err}");
    // A plain SQLite file is not an index either.
    let plain_path = dir.path().join("plain.db");
    drop(rusqlite_free_plain_copy(&plain_path, "x"));
    let err = SearchIndex::open(&plain_path, &KEY)
        .err()
        .expect("plain file must fail");
    assert!(matches!(err, SearchError::WrongKey), "{err:?}");
    // And the right key still works afterwards.
    let index = SearchIndex::open(&path, &KEY).expect("reopen");
    assert_eq!(seqs(&search(&index, "plans")), [1]);
}

#[test]
fn the_index_and_checkpoints_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("search.db");
    let checkpoint = Checkpoint::from_ranges(vec![SeqRange { lo: 40, hi: 90 }]);
    {
        let mut index = SearchIndex::open(&path, &KEY).expect("open");
        index
            .add(&[msg(1, 90, ALICE, 1, "remember the milk")])
            .expect("add");
        index
            .store_page(&StorePage {
                conversation: id(2),
                messages: vec![msg(2, 7, BOB, 2, "older page text")],
                checkpoint: checkpoint.clone(),
            })
            .expect("store page");
    } // dropped without any explicit close: a process exit
    let index = SearchIndex::open(&path, &KEY).expect("reopen");
    assert_eq!(seqs(&search(&index, "milk")), [90]);
    assert_eq!(seqs(&search(&index, "older page")), [7]);
    assert_eq!(
        index.backfill_checkpoint(id(2)).expect("read"),
        Some(checkpoint.clone())
    );
    assert_eq!(index.backfill_checkpoint(id(1)).expect("read"), None);
    assert_eq!(
        index.backfill_checkpoints().expect("all"),
        vec![(id(2), checkpoint)]
    );
}

#[test]
fn clear_empties_it_and_destroy_deletes_the_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("search.db");
    let mut index = SearchIndex::open(&path, &KEY).expect("open");
    index
        .add(&[msg(1, 1, ALICE, 1, "logout soon")])
        .expect("add");
    index
        .set_backfill_checkpoint(
            id(1),
            &Checkpoint::from_ranges(vec![SeqRange { lo: 1, hi: 1 }]),
        )
        .expect("checkpoint");
    index.clear().expect("clear");
    assert!(search(&index, "logout").is_empty());
    assert_eq!(index.message_count().expect("count"), 0);
    assert!(index.backfill_checkpoints().expect("all").is_empty());
    // Still usable after a clear (a new login on the same device).
    index
        .add(&[msg(1, 2, ALICE, 2, "fresh start")])
        .expect("add");
    assert_eq!(seqs(&search(&index, "fresh")), [2]);
    drop(index);
    let index = SearchIndex::open(&path, &KEY).expect("reopen");
    assert!(
        search(&index, "logout").is_empty(),
        "gone after a restart too"
    );
    index.destroy().expect("destroy");
    let left: Vec<_> = std::fs::read_dir(dir.path()).expect("dir").collect();
    assert!(left.is_empty(), "{left:?}");
    delete_index_files(&path).expect("deleting nothing is fine");
}

#[test]
fn a_common_word_is_ranked_among_its_newest_matches_only() {
    let mut index = SearchIndex::open_in_memory().expect("open");
    let n = u64::from(tern_search::MAX_RANKED_MATCHES) + 500;
    let batch: Vec<_> = (1..=n)
        .map(|s| {
            // The oldest 500 would rank best (three mentions), but are beyond the bound.
            let text = if s <= 500 {
                "alpha alpha alpha"
            } else {
                "alpha and some other words"
            };
            msg(1, s, ALICE, s * 60_000, text)
        })
        .collect();
    index.add(&batch).expect("add");
    // And a few in another conversation, older than all of them.
    let other: Vec<_> = (1..=10)
        .map(|s| msg(2, s, BOB, s, "alpha elsewhere"))
        .collect();
    index.add(&other).expect("add");
    let hits = index
        .search(&SearchQuery::text("alpha ", 20))
        .expect("search");
    assert_eq!(hits.len(), 20);
    assert!(
        hits.iter().all(|h| h.seq > 500 && h.conversation == id(1)),
        "{:?}",
        seqs(&hits)
    );
    // Filters apply before the bound: the other conversation's old matches are all found.
    let in_other = SearchQuery {
        conversation: Some(id(2)),
        ..SearchQuery::text("alpha ", 20)
    };
    assert_eq!(index.search(&in_other).expect("search").len(), 10);
    let from_bob = SearchQuery {
        sender: Some(id(BOB)),
        ..SearchQuery::text("alpha ", 20)
    };
    assert_eq!(index.search(&from_bob).expect("search").len(), 10);
    // A date filter reaches the old ones directly.
    let old = SearchQuery {
        until_ms: Some(500 * 60_000),
        ..SearchQuery::text("alpha ", 20)
    };
    let hits = index.search(&old).expect("search");
    assert_eq!(hits.len(), 20);
    assert!(hits.iter().all(|h| h.seq <= 500));
}

#[test]
fn many_messages_in_one_millisecond_are_all_kept_and_filtered_exactly() {
    let mut index = SearchIndex::open_in_memory().expect("open");
    let at = 1_700_000_000_000;
    let crowd: Vec<_> = (1..=1100)
        .map(|s| msg(1, s, ALICE, at, "crowded instant"))
        .collect();
    index.add(&crowd).expect("add");
    index
        .add(&[msg(1, 2000, ALICE, at + 1, "crowded later")])
        .expect("add");
    assert_eq!(index.message_count().expect("count"), 1101);
    let q = |since, until| SearchQuery {
        since_ms: since,
        until_ms: until,
        conversation: Some(id(1)),
        ..SearchQuery::text("crowded ", 200)
    };
    assert_eq!(
        index.search(&q(Some(at), Some(at))).expect("search").len(),
        200
    );
    let later = index.search(&q(Some(at + 1), None)).expect("search");
    assert_eq!(seqs(&later), [2000]);
    // The slot held 1,024: the rest spilled past it, and an "until" filter must still see
    // them (and still leave out what came later).
    let until = seqs(&index.search(&q(None, Some(at))).expect("search"));
    assert_eq!(until.len(), 200);
    assert!(until.iter().any(|s| (1025..=1100).contains(s)), "{until:?}");
    assert!(!until.contains(&2000));
}
