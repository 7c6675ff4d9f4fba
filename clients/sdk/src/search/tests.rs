use tern_core::files::{FILE_CONTENT_TYPE, FileBody};
use tern_search::SearchQuery;
use tern_wire::ids::{DeviceId, MessageId};

use super::*;
use crate::e2e::MEGOLM_CONTENT_TYPE;

const CONV: ConversationId = ConversationId(7);
const ALICE: UserId = UserId(1);

fn message(seq: u64, content_type: &str, payload: &[u8]) -> Message {
    Message {
        conversation: CONV,
        seq,
        message_id: MessageId(u128::from(seq)),
        sender_user: ALICE,
        sender_device: DeviceId(2),
        client_msg_id: u128::from(seq),
        timestamp_ms: 1_000 + seq,
        content_type: content_type.into(),
        payload: payload.to_vec(),
        files: vec![],
    }
}

fn file(name: &str, caption: &str) -> Vec<u8> {
    FileBody {
        file_id: MessageId(9),
        key: [1; 32],
        sha256: [2; 32],
        name: name.into(),
        mime: "application/pdf".into(),
        size: 10,
        caption: caption.into(),
    }
    .to_json()
}

fn names(_: UserId) -> String {
    "alice".into()
}

fn query(text: &str) -> SearchQuery {
    SearchQuery::text(text, 10)
}

/// A fresh directory under the system temp dir (removed by the test).
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tern-sdk-search-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn only_plaintext_bodies_become_rows() {
    assert_eq!(
        searchable_text(&message(1, TEXT_CONTENT_TYPE, "hello zebra".as_bytes())).as_deref(),
        Some("hello zebra")
    );
    let f = message(
        2,
        FILE_CONTENT_TYPE,
        &file("report-q3.pdf", "the zebra numbers"),
    );
    assert_eq!(
        searchable_text(&f).as_deref(),
        Some("report-q3.pdf\nthe zebra numbers")
    );
    let f = message(3, FILE_CONTENT_TYPE, &file("photo.jpg", ""));
    assert_eq!(searchable_text(&f).as_deref(), Some("photo.jpg"));
    // Ciphertext (a message that was never decrypted), other types, broken text: nothing.
    assert_eq!(
        searchable_text(&message(4, MEGOLM_CONTENT_TYPE, b"zebra-looking bytes")),
        None
    );
    assert_eq!(
        searchable_text(&message(5, "application/x-other", b"zebra")),
        None
    );
    assert_eq!(
        searchable_text(&message(6, TEXT_CONTENT_TYPE, &[0xff, 0xfe])),
        None
    );
    assert_eq!(searchable_text(&message(7, TEXT_CONTENT_TYPE, b"  ")), None);
    // A "file" whose body is not a file body is not indexed as text either.
    assert_eq!(
        searchable_text(&message(8, FILE_CONTENT_TYPE, b"zebra")),
        None
    );
}

#[test]
fn added_messages_are_found_and_checkpointed() {
    let mut index = LocalIndex::in_memory().expect("index");
    let messages = vec![
        message(3, TEXT_CONTENT_TYPE, "the zebra crossing".as_bytes()),
        message(4, MEGOLM_CONTENT_TYPE, b"zebra"),
        message(5, FILE_CONTENT_TYPE, &file("zebra.pdf", "")),
    ];
    assert_eq!(index.add_decrypted(&messages, &names).expect("add"), 2);
    let hits = index.search(&query("zebra")).expect("search");
    let mut seqs: Vec<u64> = hits.iter().map(|h| h.seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, [3, 5], "the ciphertext row is not there");
    assert!(hits.iter().all(|h| h.sender_name == "alice"));
    let checkpoint = index
        .index()
        .backfill_checkpoint(conversation_uuid(CONV))
        .expect("checkpoint")
        .expect("stored");
    assert!(checkpoint.covers(3) && checkpoint.covers(5));
    assert!(
        !checkpoint.covers(4),
        "an unindexed seq is left to the backfill"
    );
}

#[test]
fn conversations_no_longer_listed_are_dropped() {
    let mut index = LocalIndex::in_memory().expect("index");
    let mut other = message(1, TEXT_CONTENT_TYPE, b"walrus in the other one");
    other.conversation = ConversationId(8);
    index
        .add_decrypted(
            &[message(1, TEXT_CONTENT_TYPE, b"walrus here"), other],
            &names,
        )
        .expect("add");
    assert_eq!(index.search(&query("walrus")).expect("search").len(), 2);
    let dropped = index.retain_conversations(&[CONV]).expect("retain");
    assert_eq!(dropped, [conversation_uuid(ConversationId(8))]);
    let hits = index.search(&query("walrus")).expect("search");
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].conversation, conversation_uuid(CONV));
    assert_eq!(index.forget_conversation(CONV).expect("forget"), 1);
    assert!(index.search(&query("walrus")).expect("search").is_empty());
}

#[test]
fn the_index_file_survives_a_reopen_and_is_gone_after_destroy() {
    let dir = temp_dir("reopen");
    {
        let mut index = LocalIndex::open(&dir, ALICE).expect("open");
        index
            .add_decrypted(
                &[message(1, TEXT_CONTENT_TYPE, b"MARKER-okapi-plaintext")],
                &names,
            )
            .expect("add");
    }
    let files = IndexFiles::new(&dir, ALICE);
    let db = std::fs::read(&files.db).expect("db file");
    assert!(
        !db.starts_with(b"SQLite format 3"),
        "the header is encrypted"
    );
    for entry in std::fs::read_dir(&dir).expect("dir").flatten() {
        let bytes = std::fs::read(entry.path()).expect("read");
        assert!(
            !bytes.windows(6).any(|w| w == b"MARKER"),
            "{} holds plaintext",
            entry.path().display()
        );
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&files.key), 0o600);
        assert_eq!(mode(&dir), 0o700);
    }
    let index = LocalIndex::open(&dir, ALICE).expect("reopen");
    assert_eq!(index.search(&query("okapi")).expect("search").len(), 1);
    // Another account on the same directory has its own (empty) index.
    let bob = LocalIndex::open(&dir, UserId(2)).expect("bob's");
    assert!(bob.search(&query("okapi")).expect("search").is_empty());
    index.destroy().expect("destroy");
    assert!(!files.exist(), "index and key deleted");
    assert!(
        IndexFiles::new(&dir, UserId(2)).exist(),
        "bob's index is not touched"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_wrong_key_is_refused() {
    let dir = temp_dir("wrong-key");
    drop(LocalIndex::open(&dir, ALICE).expect("open"));
    let files = IndexFiles::new(&dir, ALICE);
    std::fs::write(&files.key, [9u8; 32]).expect("replace key");
    match LocalIndex::open(&dir, ALICE) {
        Err(Error::Search(tern_search::SearchError::WrongKey)) => {}
        Err(e) => panic!("expected WrongKey, got {e}"),
        Ok(_) => panic!("opened with the wrong key"),
    }
    files.delete().expect("delete");
    assert!(!files.exist());
    let _ = std::fs::remove_dir_all(&dir);
}
