//! Who reads which history: members everything, former members up to their departure in
//! every form, anybody else nothing; what is refused as a misuse.

use std::sync::Arc;

use tern_wire::ids::{ConversationId, DeviceId, MessageId, UserId};
use tern_wire::msg::{ConversationKind, ErrorCode, MemberRole, Message};

use super::{HistoryRequest, min_bound};
use crate::conversations::{ConversationLimits, Conversations};
use crate::driver::{EngineConfig, spawn_engine};
use crate::metrics::EngineMetrics;
use crate::paging::{PageBudget, PageCost};
use crate::store::embedded::EmbeddedStore;
use crate::store::{CommitBatch, ConversationRecord, MemberRecord, Store};

const BASE_MS: u64 = 1_700_000_000_000;
const WIDE: PageBudget = PageBudget {
    max_bytes: u64::MAX,
    cost: PageCost::WIRE,
};

struct Fixture {
    conversations: Conversations,
    store: Arc<EmbeddedStore>,
    conversation: ConversationId,
    alice: UserId,
    bob: UserId,
    _dir: tempfile::TempDir,
}

/// Seq `s` sent by Bob when `s % 4 == 0`, else by Alice, stamped `BASE_MS + 10 * s`.
fn message(conversation: ConversationId, seq: u64, alice: UserId, bob: UserId) -> Message {
    let sender = if seq % 4 == 0 { bob } else { alice };
    Message {
        conversation,
        seq,
        message_id: MessageId(u128::from(seq)),
        sender_user: sender,
        sender_device: DeviceId(sender.0),
        client_msg_id: u128::from(seq),
        timestamp_ms: BASE_MS + 10 * seq,
        content_type: "text".into(),
        payload: vec![7; 40],
        files: vec![],
    }
}

/// A group of Alice and Bob with `n` messages.
async fn fixture(n: u64) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(EmbeddedStore::open(dir.path()).expect("store"));
    let engine = spawn_engine(
        store.clone(),
        EngineConfig::default(),
        Arc::new(EngineMetrics::new()),
    )
    .expect("engine");
    let (alice, bob) = (UserId::random(), UserId::random());
    let conversation = ConversationId::random();
    store
        .create_conversation(
            ConversationRecord {
                id: conversation,
                kind: ConversationKind::Group,
                name: "g".into(),
                description: String::new(),
                created_by: alice,
                created_ms: 1,
            },
            vec![
                MemberRecord {
                    user: alice,
                    role: MemberRole::Owner,
                },
                MemberRecord {
                    user: bob,
                    role: MemberRole::Member,
                },
            ],
        )
        .await
        .expect("create");
    let messages = (1..=n)
        .map(|s| message(conversation, s, alice, bob))
        .collect();
    store
        .commit(CommitBatch {
            messages,
            cursors: vec![],
        })
        .await
        .expect("commit");
    let conversations = Conversations::new(store.clone(), engine, ConversationLimits::default());
    Fixture {
        conversations,
        store,
        conversation,
        alice,
        bob,
        _dir: dir,
    }
}

fn seqs(page: &super::HistoryPage) -> Vec<u64> {
    page.messages.iter().map(|m| m.seq).collect()
}

/// Every form, as (name, request).
fn forms() -> Vec<(&'static str, HistoryRequest)> {
    vec![
        ("newest", HistoryRequest::seqs(0, 0, 500)),
        ("after", HistoryRequest::seqs(0, 1, 500)),
        (
            "around",
            HistoryRequest {
                around_seq: 60,
                limit: 500,
                ..HistoryRequest::default()
            },
        ),
        (
            "by time",
            HistoryRequest {
                since_ms: BASE_MS,
                until_ms: BASE_MS + 10_000,
                limit: 500,
                ..HistoryRequest::default()
            },
        ),
        (
            "by sender",
            HistoryRequest {
                sender: Some(UserId(0)),
                limit: 500,
                ..HistoryRequest::default()
            },
        ),
    ]
}

#[tokio::test]
async fn a_former_member_reads_nothing_after_the_departure_in_any_form() {
    let f = fixture(40).await;
    let departed_at = f
        .store
        .remove_member(f.conversation, f.bob)
        .await
        .expect("remove")
        .expect("was a member");
    assert_eq!(departed_at, 40);
    // Written after Bob left.
    let later = (41..=80)
        .map(|s| message(f.conversation, s, f.alice, f.bob))
        .collect();
    f.store
        .commit(CommitBatch {
            messages: later,
            cursors: vec![],
        })
        .await
        .expect("commit");
    for (name, mut request) in forms() {
        if request.sender.is_some() {
            request.sender = Some(f.bob);
        }
        let member = f
            .conversations
            .history_page(f.alice, f.conversation, request, WIDE)
            .await
            .expect("member");
        assert!(
            member.messages.iter().any(|m| m.seq > 40),
            "{name}: a member reads past 40"
        );
        let former = f
            .conversations
            .history_page(f.bob, f.conversation, request, WIDE)
            .await
            .expect("former member");
        assert!(
            !former.messages.is_empty(),
            "{name}: up to 40 stays readable"
        );
        assert!(
            former.messages.iter().all(|m| m.seq <= 40),
            "{name}: nothing after the departure, got {:?}",
            seqs(&former)
        );
        assert!(
            !former.has_more_after,
            "{name}: nothing newer exists for a former member"
        );
    }
    // Around a seq after the departure: the newest of what Bob may read.
    let page = f
        .conversations
        .history_page(
            f.bob,
            f.conversation,
            HistoryRequest {
                around_seq: 70,
                limit: 5,
                ..HistoryRequest::default()
            },
            WIDE,
        )
        .await
        .expect("around");
    assert_eq!(seqs(&page), vec![38, 39, 40]);
}

#[tokio::test]
async fn a_non_member_gets_not_found_for_every_form() {
    let f = fixture(20).await;
    let stranger = UserId::random();
    for (name, request) in forms() {
        let refused = f
            .conversations
            .history_page(stranger, f.conversation, request, WIDE)
            .await
            .expect_err(name);
        assert_eq!(refused.code, ErrorCode::NotFound, "{name}");
        // The same answer as for a conversation that does not exist.
        let missing = f
            .conversations
            .history_page(f.alice, ConversationId::random(), request, WIDE)
            .await
            .expect_err(name);
        assert_eq!(missing, refused, "{name}");
    }
}

#[tokio::test]
async fn each_form_returns_its_page() {
    let f = fixture(100).await;
    let read = |request: HistoryRequest| {
        let c = &f.conversations;
        async move {
            c.history_page(f.alice, f.conversation, request, WIDE)
                .await
                .expect("page")
        }
    };
    let around = read(HistoryRequest {
        around_seq: 50,
        limit: 9,
        ..HistoryRequest::default()
    })
    .await;
    assert_eq!(seqs(&around), (46..=54).collect::<Vec<_>>());
    assert!(around.has_more && around.has_more_before && around.has_more_after);
    // Seqs 30..=35 are stamped BASE + 300 ..= BASE + 350; reading forward from since.
    let by_time = read(HistoryRequest {
        since_ms: BASE_MS + 300,
        until_ms: BASE_MS + 350,
        limit: 4,
        ..HistoryRequest::default()
    })
    .await;
    assert_eq!(seqs(&by_time), vec![30, 31, 32, 33]);
    assert!(by_time.has_more && by_time.has_more_after);
    let until_only = read(HistoryRequest {
        until_ms: BASE_MS + 355,
        limit: 3,
        ..HistoryRequest::default()
    })
    .await;
    assert_eq!(seqs(&until_only), vec![33, 34, 35]);
    let by_sender = read(HistoryRequest {
        sender: Some(f.bob),
        before_seq: 50,
        limit: 3,
        ..HistoryRequest::default()
    })
    .await;
    assert_eq!(seqs(&by_sender), vec![40, 44, 48]);
    let combined = read(HistoryRequest {
        sender: Some(f.bob),
        since_ms: BASE_MS + 100,
        until_ms: BASE_MS + 200,
        limit: 100,
        ..HistoryRequest::default()
    })
    .await;
    assert_eq!(seqs(&combined), vec![12, 16, 20]);
    assert!(!combined.has_more);
    let empty = read(HistoryRequest {
        since_ms: BASE_MS + 5_000,
        limit: 10,
        ..HistoryRequest::default()
    })
    .await;
    assert!(empty.messages.is_empty() && !empty.has_more);
}

#[tokio::test]
async fn misuse_and_oversized_pages_are_refused() {
    let f = fixture(5).await;
    let max = ConversationLimits::default().max_history_page;
    let refused = [
        HistoryRequest {
            around_seq: 3,
            before_seq: 4,
            ..HistoryRequest::default()
        },
        HistoryRequest {
            around_seq: 3,
            since_ms: 1,
            ..HistoryRequest::default()
        },
        HistoryRequest {
            since_ms: 10,
            until_ms: 9,
            ..HistoryRequest::default()
        },
        HistoryRequest::seqs(0, 0, max + 1),
        HistoryRequest {
            around_seq: 3,
            limit: u32::MAX,
            ..HistoryRequest::default()
        },
    ];
    for request in refused {
        let e = f
            .conversations
            .history_page(f.alice, f.conversation, request, WIDE)
            .await
            .expect_err("refused");
        assert_eq!(e.code, ErrorCode::InvalidArgument, "{request:?}");
    }
    let page = f
        .conversations
        .history_page(
            f.alice,
            f.conversation,
            HistoryRequest::seqs(0, 0, max),
            WIDE,
        )
        .await
        .expect("the largest page");
    assert_eq!(page.messages.len(), 5);
}

#[test]
fn bounds_combine_to_the_tighter_one() {
    assert_eq!(min_bound(0, 0), 0);
    assert_eq!(min_bound(0, 7), 7);
    assert_eq!(min_bound(7, 0), 7);
    assert_eq!(min_bound(9, 7), 7);
}
