//! The conformance suite every [`Store`] backend must pass.
//!
//! Plain async functions, compiled into the library rather than `cfg(test)`, so that each
//! backend's test crate runs the very same checks:
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use tern_engine::store::conformance::run_all;
//! use tern_engine::store::embedded::EmbeddedStore;
//! let dir = std::env::temp_dir().join("tern-conformance-example");
//! let counter = std::sync::atomic::AtomicU32::new(0);
//! run_all(|| async {
//!     let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
//!     EmbeddedStore::open(&dir.join(n.to_string())).expect("a fresh store")
//! })
//! .await;
//! # Ok(())
//! # }
//! ```
//!
//! Each `check_*` takes a fresh, empty store, exercises one behaviour of the [`Store`] contract
//! and panics with a message saying what broke. The concurrency checks spawn tokio tasks, so run
//! the suite on a multi-thread runtime to get real parallelism (a current-thread runtime still
//! passes, it only interleaves less).
//!
//! Behaviour the trait leaves open (the history page-size cap, what `limit == 0` returns, the
//! order of `members`) is not pinned here, so backends can differ on it.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;

use tern_wire::ids::{ConversationId, DeviceId, MessageId, UserId};
use tern_wire::msg::{ConversationKind, DeliveryMark, DeviceKeys, FileRef, MemberRole, Message};

use super::{
    AroundQuery, CommitBatch, ConversationRecord, CursorUpdate, DeviceRecord, HistoryFrom,
    HistoryQuery, InvitationRecord, MemberRecord, Store, StoreError, StoreResult, TokenRecord,
    UserRecord, message_cost,
};

/// The user whose devices move cursors in checks that are not about delivery marks.
const CURSOR_USER: UserId = UserId(0x0c05_0000_0000_4000_8000_0000_0000_0001);

/// Runs every check, each on a store freshly made by `make`.
pub async fn run_all<S: Store, F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    check_users(make().await).await;
    check_duplicate_usernames(make().await).await;
    check_concurrent_usernames(make().await).await;
    check_tokens(make().await).await;
    check_tokens_of_user(make().await).await;
    check_devices(make().await).await;
    check_device_bind_race(make().await).await;
    check_conversations(make().await).await;
    check_direct_pairs(make().await).await;
    check_direct_pair_race(make().await).await;
    check_history(make().await).await;
    check_history_around(make().await).await;
    check_history_by_time(make().await).await;
    check_history_by_sender(make().await).await;
    check_last_seq(make().await).await;
    check_client_ids(make().await).await;
    check_cursors(make().await).await;
    check_concurrent_cursors(make().await).await;
    check_delivery_marks(make().await).await;
    check_large_batch(make().await).await;
    check_payloads(make().await).await;
    check_concurrent_commits(make().await).await;
    check_group_names(make().await).await;
    check_group_name_race(make().await).await;
    check_invitations(make().await).await;
    check_invitation_race(make().await).await;
    check_membership_changes(make().await).await;
    check_stored_bytes(make().await).await;
    check_bulk_invitations(make().await).await;
    check_blocks(make().await).await;
}

/// Committed payload bytes are counted per sender, atomically with the commit, once per
/// message (a retried commit of stored messages adds nothing).
pub async fn check_stored_bytes<S: Store>(store: S) {
    let alice = UserId::random();
    let bob = UserId::random();
    let conv = ConversationId::random();
    assert_eq!(
        ok(store.stored_bytes(alice).await, "stored_bytes"),
        0,
        "store conformance: a user who sent nothing has 0 stored bytes"
    );
    let mut a = msgs(conv, alice, 1..=3);
    for (i, m) in a.iter_mut().enumerate() {
        m.payload = vec![7; 100 * (i + 1)];
    }
    let mut b = msg(conv, 4, bob, 9);
    b.payload = vec![1; 1000];
    let mut first = a.clone();
    first.push(b.clone());
    ok(store.commit(batch(first)).await, "commit");
    assert_eq!(
        ok(store.stored_bytes(alice).await, "stored_bytes"),
        600,
        "store conformance: stored_bytes must sum the sender's payloads of a commit"
    );
    assert_eq!(
        ok(store.stored_bytes(bob).await, "stored_bytes"),
        1000,
        "store conformance: stored_bytes is per sender"
    );
    // A retried batch with stored messages and one new one counts only the new one.
    let mut c = msg(conv, 5, alice, 10);
    c.payload = vec![2; 50];
    let mut again = a.clone();
    again.push(c);
    ok(store.commit(batch(again)).await, "commit (retry)");
    assert_eq!(
        ok(store.stored_bytes(alice).await, "stored_bytes"),
        650,
        "store conformance: re-committed messages must not be counted twice"
    );
    // Concurrent commits (engine shards) must not lose increments.
    let store = std::sync::Arc::new(store);
    let mut tasks = Vec::new();
    for k in 0..8u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let conv = ConversationId::random();
            for s in 1..=5 {
                let mut m = msg(conv, s, alice, u128::from(k * 100 + s));
                m.payload = vec![3; 10];
                ok(store.commit(batch(vec![m])).await, "concurrent commit");
            }
        }));
    }
    for t in tasks {
        t.await.expect("commit task");
    }
    assert_eq!(
        ok(store.stored_bytes(alice).await, "stored_bytes"),
        650 + 8 * 5 * 10,
        "store conformance: concurrent commits lost a stored_bytes increment"
    );
}

// ---------------------------------------------------------------------------------------------
// helpers

#[track_caller]
fn ok<T>(r: StoreResult<T>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("store conformance: {what}: unexpected error: {e}"),
    }
}

#[track_caller]
fn already_exists<T: Debug>(r: StoreResult<T>, what: &str) {
    match r {
        Err(StoreError::AlreadyExists(_)) => {}
        other => panic!("store conformance: {what}: expected AlreadyExists, got {other:?}"),
    }
}

fn user(username: &str) -> UserRecord {
    UserRecord {
        id: UserId::random(),
        username: username.to_owned(),
        password_hash: format!("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA${username}"),
        created_ms: 1_700_000_000_000,
    }
}

fn token(user: UserId, first_byte: u8) -> TokenRecord {
    let mut token_hash: [u8; 32] = rand::random();
    token_hash[0] = first_byte;
    TokenRecord {
        token_hash,
        user,
        created_ms: 1_700_000_000_000,
        expires_ms: 1_700_086_400_000,
    }
}

fn group(created_by: UserId) -> ConversationRecord {
    ConversationRecord {
        id: ConversationId::random(),
        kind: ConversationKind::Group,
        name: "team".to_owned(),
        description: "the team's room".to_owned(),
        created_by,
        created_ms: 1_700_000_000_000,
    }
}

/// The neighbour id: keys that differ only in their last byte catch prefix scans that leak
/// into the next conversation or user.
fn next_conversation(c: ConversationId) -> ConversationId {
    ConversationId(c.0.wrapping_add(1))
}

/// A deterministic message, so a test can rebuild the exact expected content.
fn msg(conversation: ConversationId, seq: u64, sender: UserId, client_msg_id: u128) -> Message {
    Message {
        conversation,
        seq,
        message_id: MessageId((conversation.0 << 64) ^ u128::from(seq)),
        sender_user: sender,
        sender_device: DeviceId(sender.0 ^ 0xd),
        client_msg_id,
        timestamp_ms: 1_700_000_000_000 + seq,
        content_type: "e2e.megolm".to_owned(),
        payload: format!("{conversation}/{seq}").into_bytes(),
        files: Vec::new(),
    }
}

/// Messages `seqs` of a conversation from one sender, client ids `1_000_000 + seq`.
fn msgs(
    conversation: ConversationId,
    sender: UserId,
    seqs: std::ops::RangeInclusive<u64>,
) -> Vec<Message> {
    seqs.map(|s| msg(conversation, s, sender, 1_000_000 + u128::from(s)))
        .collect()
}

fn batch(messages: Vec<Message>) -> CommitBatch {
    CommitBatch {
        messages,
        cursors: Vec::new(),
    }
}

fn cursors(cursors: Vec<CursorUpdate>) -> CommitBatch {
    CommitBatch {
        messages: Vec::new(),
        cursors,
    }
}

fn seqs(messages: &[Message]) -> Vec<u64> {
    messages.iter().map(|m| m.seq).collect()
}

async fn history<S: Store>(
    store: &S,
    conversation: ConversationId,
    before_seq: u64,
    after_seq: u64,
    limit: u32,
) -> Vec<Message> {
    // The suite's pages: scrolling back with only `before_seq`, catching up with `after_seq`.
    let from = if after_seq != 0 {
        HistoryFrom::Oldest
    } else {
        HistoryFrom::Newest
    };
    let q = HistoryQuery {
        conversation,
        before_seq,
        after_seq,
        limit,
        from,
        max_bytes: u64::MAX,
        sender: None,
    };
    ok(store.history(q).await, &format!("history({q:?})"))
}

/// The whole conversation, read newest first in pages (of whatever size the backend caps them
/// at), checking that every page is ascending and ends right below the previous one.
async fn read_all<S: Store>(store: &S, conversation: ConversationId) -> Vec<Message> {
    let mut pages: Vec<Vec<Message>> = Vec::new();
    loop {
        let before = match pages.last().and_then(|p| p.first()) {
            None => 0,
            Some(m) if m.seq <= 1 => break,
            Some(m) => m.seq,
        };
        let page = history(store, conversation, before, 0, 1000).await;
        if page.is_empty() {
            break;
        }
        assert!(
            page.windows(2).all(|w| w[0].seq < w[1].seq)
                && (before == 0 || page[page.len() - 1].seq < before),
            "store conformance: history page before seq {before} is not ascending below it: {:?}",
            seqs(&page)
        );
        pages.push(page);
    }
    pages.into_iter().rev().flatten().collect()
}

// ---------------------------------------------------------------------------------------------
// accounts

/// Users are found by id and by name, the name compared case-insensitively.
pub async fn check_users<S: Store>(store: S) {
    let alice = user("Alice");
    let emile = user("Émile");
    ok(store.create_user(alice.clone()).await, "create_user(Alice)");
    ok(store.create_user(emile.clone()).await, "create_user(Émile)");

    assert_eq!(
        ok(store.user_by_id(alice.id).await, "user_by_id"),
        Some(alice.clone()),
        "store conformance: user_by_id must return the record exactly as created"
    );
    for name in ["Alice", "alice", "ALICE", "aLiCe"] {
        assert_eq!(
            ok(store.user_by_name(name).await, "user_by_name"),
            Some(alice.clone()),
            "store conformance: user_by_name({name:?}) must find \"Alice\" (case-insensitive)"
        );
    }
    for name in ["Émile", "émile", "ÉMILE"] {
        assert_eq!(
            ok(store.user_by_name(name).await, "user_by_name"),
            Some(emile.clone()),
            "store conformance: user_by_name({name:?}) must find \"Émile\" (Unicode case-insensitive)"
        );
    }
    for name in ["Alic", "Alice2", " alice", "bob"] {
        assert_eq!(
            ok(store.user_by_name(name).await, "user_by_name"),
            None,
            "store conformance: user_by_name({name:?}) must not match any user"
        );
    }
    assert_eq!(
        ok(store.user_by_id(UserId::random()).await, "user_by_id"),
        None,
        "store conformance: user_by_id of an unknown id must be None"
    );
}

/// A username taken in any letter case is rejected, and the rejected call leaves no trace.
pub async fn check_duplicate_usernames<S: Store>(store: S) {
    let carol = user("Carol");
    ok(store.create_user(carol.clone()).await, "create_user(Carol)");
    for name in ["Carol", "carol", "CAROL", "cArOl"] {
        let dup = user(name);
        already_exists(
            store.create_user(dup.clone()).await,
            &format!("create_user({name:?}) after \"Carol\""),
        );
        assert_eq!(
            ok(store.user_by_id(dup.id).await, "user_by_id"),
            None,
            "store conformance: a rejected create_user({name:?}) must not store the user"
        );
    }
    let arger = user("Ärger");
    ok(store.create_user(arger.clone()).await, "create_user(Ärger)");
    already_exists(
        store.create_user(user("ärger")).await,
        "create_user(\"ärger\") after \"Ärger\"",
    );
    assert_eq!(
        ok(store.user_by_name("carol").await, "user_by_name"),
        Some(carol),
        "store conformance: the first \"Carol\" must still own the name after rejected duplicates"
    );
}

/// Concurrent registrations of one name (in different cases): exactly one wins.
pub async fn check_concurrent_usernames<S: Store>(store: S) {
    let store = Arc::new(store);
    let mut tasks = tokio::task::JoinSet::new();
    for variant in 0u32..16 {
        // Each of the 16 tasks uses another case pattern of "dave".
        let name: String = "dave"
            .chars()
            .enumerate()
            .map(|(i, c)| {
                if variant & (1 << i) != 0 {
                    c.to_ascii_uppercase()
                } else {
                    c
                }
            })
            .collect();
        let store = Arc::clone(&store);
        tasks.spawn(async move {
            let u = user(&name);
            (u.id, store.create_user(u).await)
        });
    }
    let mut winners = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (id, result) =
            joined.unwrap_or_else(|e| panic!("store conformance: create_user task failed: {e}"));
        match result {
            Ok(()) => winners.push(id),
            Err(StoreError::AlreadyExists(_)) => {}
            Err(e) => panic!("store conformance: concurrent create_user: unexpected error: {e}"),
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "store conformance: 16 concurrent create_user of \"dave\" in different cases must have exactly one winner"
    );
    let found = ok(store.user_by_name("DAVE").await, "user_by_name");
    assert_eq!(
        found.map(|u| u.id),
        Some(winners[0]),
        "store conformance: the winner of concurrent create_user must own the name"
    );
}

// ---------------------------------------------------------------------------------------------
// sessions

/// Tokens are stored, read back exactly, and deleted once.
pub async fn check_tokens<S: Store>(store: S) {
    let owner = UserId::random();
    let t1 = token(owner, 0x00);
    let t2 = token(owner, 0xff);
    ok(store.put_token(t1.clone()).await, "put_token");
    ok(store.put_token(t2.clone()).await, "put_token");
    assert_eq!(
        ok(store.token(&t1.token_hash).await, "token"),
        Some(t1.clone()),
        "store conformance: token() must return the record exactly as put"
    );
    assert_eq!(
        ok(store.token(&[7u8; 32]).await, "token"),
        None,
        "store conformance: token() of an unknown hash must be None"
    );
    assert!(
        ok(store.delete_token(&t1.token_hash).await, "delete_token"),
        "store conformance: delete_token of a stored token must return true"
    );
    assert_eq!(
        ok(store.token(&t1.token_hash).await, "token"),
        None,
        "store conformance: a deleted token must be gone"
    );
    assert!(
        !ok(store.delete_token(&t1.token_hash).await, "delete_token"),
        "store conformance: deleting a token the second time must return false"
    );
    assert_eq!(
        ok(store.token(&t2.token_hash).await, "token"),
        Some(t2),
        "store conformance: deleting one token must leave the user's other tokens alone"
    );
}

/// "Log out everywhere": every token of one user goes, other users' tokens stay, and a token
/// deleted alone is not reported again.
pub async fn check_tokens_of_user<S: Store>(store: S) {
    let owner = UserId::random();
    let other = UserId::random();
    let mine: Vec<TokenRecord> = (0..5u8).map(|i| token(owner, i * 50)).collect();
    let theirs = token(other, 0x80);
    for t in &mine {
        ok(store.put_token(t.clone()).await, "put_token");
    }
    ok(store.put_token(theirs.clone()).await, "put_token");
    assert!(ok(
        store.delete_token(&mine[0].token_hash).await,
        "delete_token"
    ));
    let mut deleted = ok(store.delete_tokens_of(owner).await, "delete_tokens_of");
    deleted.sort();
    let mut expected: Vec<[u8; 32]> = mine[1..].iter().map(|t| t.token_hash).collect();
    expected.sort();
    assert_eq!(
        deleted, expected,
        "store conformance: delete_tokens_of must return exactly the user's remaining tokens"
    );
    for t in &mine {
        assert_eq!(
            ok(store.token(&t.token_hash).await, "token"),
            None,
            "store conformance: delete_tokens_of must delete every token of the user"
        );
    }
    assert_eq!(
        ok(store.token(&theirs.token_hash).await, "token"),
        Some(theirs.clone()),
        "store conformance: delete_tokens_of must leave other users' tokens alone"
    );
    assert!(
        ok(store.delete_tokens_of(owner).await, "delete_tokens_of").is_empty(),
        "store conformance: a second delete_tokens_of finds nothing"
    );
    // A token put after the sweep is a new session and counts.
    let later = token(owner, 0x11);
    ok(store.put_token(later.clone()).await, "put_token");
    assert_eq!(
        ok(store.delete_tokens_of(owner).await, "delete_tokens_of"),
        vec![later.token_hash],
        "store conformance: tokens put after a sweep are found by the next one"
    );
    assert!(
        ok(
            store.delete_tokens_of(UserId::random()).await,
            "delete_tokens_of"
        )
        .is_empty(),
        "store conformance: a user without tokens has nothing to delete"
    );
}

fn device_record(device: DeviceId, user: UserId, token_hash: [u8; 32]) -> DeviceRecord {
    DeviceRecord {
        device,
        user,
        token_hash,
        bound_ms: 1_700_000_000_000,
    }
}

/// Device bindings are a compare-and-set on the bound token hash.
pub async fn check_devices<S: Store>(store: S) {
    let device = DeviceId::random();
    let user = UserId::random();
    assert_eq!(
        ok(store.device(device).await, "device"),
        None,
        "store conformance: an unknown device has no record"
    );
    let first = device_record(device, user, [1; 32]);
    assert!(
        !ok(store.bind_device(first, Some([9; 32])).await, "bind_device"),
        "store conformance: bind_device expecting a binding must fail on an unbound device"
    );
    assert!(
        ok(store.bind_device(first, None).await, "bind_device"),
        "store conformance: bind_device of an unbound device expecting none must succeed"
    );
    assert_eq!(
        ok(store.device(device).await, "device"),
        Some(first),
        "store conformance: device() must return the record exactly as bound"
    );
    assert!(
        !ok(
            store
                .bind_device(device_record(device, UserId::random(), [2; 32]), None)
                .await,
            "bind_device"
        ),
        "store conformance: bind_device expecting no record must fail once one exists"
    );
    let second = device_record(device, user, [2; 32]);
    assert!(
        !ok(
            store.bind_device(second, Some([3; 32])).await,
            "bind_device"
        ),
        "store conformance: bind_device with the wrong expected token must fail"
    );
    assert_eq!(ok(store.device(device).await, "device"), Some(first));
    assert!(
        ok(
            store.bind_device(second, Some([1; 32])).await,
            "bind_device"
        ),
        "store conformance: bind_device with the current token as expected must succeed"
    );
    assert_eq!(ok(store.device(device).await, "device"), Some(second));
    let neighbour = DeviceId(device.0 ^ 1);
    assert_eq!(
        ok(store.device(neighbour).await, "device"),
        None,
        "store conformance: binding one device must not bind its neighbour"
    );
    assert_eq!(
        ok(
            store.unbind_device(device, UserId::random()).await,
            "unbind_device"
        ),
        None,
        "store conformance: unbind_device must not remove another user's binding"
    );
    assert_eq!(ok(store.device(device).await, "device"), Some(second));
    assert_eq!(
        ok(store.unbind_device(device, user).await, "unbind_device"),
        Some(second),
        "store conformance: unbind_device returns the removed binding"
    );
    assert_eq!(ok(store.device(device).await, "device"), None);
    assert_eq!(
        ok(store.unbind_device(device, user).await, "unbind_device"),
        None,
        "store conformance: unbinding twice finds nothing"
    );
}

/// Of concurrent first bindings of one device, exactly one wins.
pub async fn check_device_bind_race<S: Store>(store: S) {
    let store = Arc::new(store);
    let device = DeviceId::random();
    let mut tasks = Vec::new();
    for i in 0..8u8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let record = device_record(device, UserId::random(), [i; 32]);
            (record, store.bind_device(record, None).await)
        }));
    }
    let mut winners = Vec::new();
    for task in tasks {
        let (record, won) = task.await.expect("bind task");
        if ok(won, "bind_device") {
            winners.push(record);
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "store conformance: exactly one concurrent first binding must win"
    );
    assert_eq!(
        ok(store.device(device).await, "device"),
        Some(winners[0]),
        "store conformance: the stored binding is the winner's"
    );
}

// ---------------------------------------------------------------------------------------------
// conversations

/// Conversations and their memberships, seen from both sides.
pub async fn check_conversations<S: Store>(store: S) {
    let (a, b, c, d) = (
        UserId::random(),
        UserId::random(),
        UserId::random(),
        UserId::random(),
    );
    let g1 = group(a);
    let members1 = vec![
        MemberRecord {
            user: a,
            role: MemberRole::Owner,
        },
        MemberRecord {
            user: b,
            role: MemberRole::Member,
        },
        MemberRecord {
            user: c,
            role: MemberRole::Member,
        },
    ];
    ok(
        store
            .create_conversation(g1.clone(), members1.clone())
            .await,
        "create_conversation",
    );
    // The neighbour id holds a different member: it must not leak into g1's lists.
    let g2 = ConversationRecord {
        id: next_conversation(g1.id),
        name: "next door".to_owned(),
        ..group(d)
    };
    ok(
        store
            .create_conversation(
                g2.clone(),
                vec![MemberRecord {
                    user: d,
                    role: MemberRole::Owner,
                }],
            )
            .await,
        "create_conversation",
    );
    let direct = ConversationRecord {
        kind: ConversationKind::Direct,
        name: String::new(),
        description: String::new(),
        ..group(a)
    };
    let direct_members = vec![
        MemberRecord {
            user: a,
            role: MemberRole::Member,
        },
        MemberRecord {
            user: d,
            role: MemberRole::Member,
        },
    ];
    ok(
        store
            .create_conversation(direct.clone(), direct_members)
            .await,
        "create_conversation",
    );

    assert_eq!(
        ok(store.conversation(g1.id).await, "conversation"),
        Some(g1.clone()),
        "store conformance: conversation() must return the record exactly as created"
    );
    assert_eq!(
        ok(store.conversation(direct.id).await, "conversation"),
        Some(direct.clone()),
        "store conformance: conversation() must return a direct conversation exactly as created"
    );
    assert_eq!(
        ok(
            store.conversation(ConversationId::random()).await,
            "conversation"
        ),
        None,
        "store conformance: conversation() of an unknown id must be None"
    );

    let mut got = ok(store.members(g1.id).await, "members");
    got.sort_by_key(|m| m.user);
    let mut want = members1;
    want.sort_by_key(|m| m.user);
    assert_eq!(
        got, want,
        "store conformance: members() must list exactly the members created, with roles"
    );
    assert!(
        ok(store.members(ConversationId::random()).await, "members").is_empty(),
        "store conformance: members() of an unknown conversation must be empty"
    );

    for (conv, u, want) in [
        (g1.id, a, true),
        (g1.id, b, true),
        (g1.id, c, true),
        (g1.id, d, false),
        (g2.id, d, true),
        (g2.id, a, false),
        (direct.id, d, true),
        (direct.id, b, false),
        (ConversationId::random(), a, false),
    ] {
        assert_eq!(
            ok(store.is_member(conv, u).await, "is_member"),
            want,
            "store conformance: is_member({conv}, {u}) must be {want}"
        );
    }

    for (u, want) in [
        (a, vec![g1.id, direct.id]),
        (b, vec![g1.id]),
        (c, vec![g1.id]),
        (d, vec![g2.id, direct.id]),
        (UserId::random(), vec![]),
    ] {
        let got: BTreeSet<ConversationId> = ok(store.conversations_of(u).await, "conversations_of")
            .into_iter()
            .collect();
        let want: BTreeSet<ConversationId> = want.into_iter().collect();
        assert_eq!(
            got, want,
            "store conformance: conversations_of({u}) is wrong"
        );
    }
}

/// A pair has at most one 1:1 conversation, whichever order the pair is given in.
pub async fn check_direct_pairs<S: Store>(store: S) {
    let (a, b, c) = (UserId::random(), UserId::random(), UserId::random());
    let (ab, other) = (ConversationId::random(), ConversationId::random());
    assert_eq!(
        ok(store.direct_conversation(a, b).await, "direct_conversation"),
        None,
        "store conformance: a pair without a direct conversation must give None"
    );
    ok(
        store.set_direct_conversation(a, b, ab).await,
        "set_direct_conversation",
    );
    for (x, y) in [(a, b), (b, a)] {
        assert_eq!(
            ok(store.direct_conversation(x, y).await, "direct_conversation"),
            Some(ab),
            "store conformance: direct_conversation must find the pair in either order"
        );
    }
    already_exists(
        store.set_direct_conversation(a, b, other).await,
        "set_direct_conversation again",
    );
    already_exists(
        store.set_direct_conversation(b, a, other).await,
        "set_direct_conversation again, reversed",
    );
    assert_eq!(
        ok(store.direct_conversation(b, a).await, "direct_conversation"),
        Some(ab),
        "store conformance: a rejected set_direct_conversation must not replace the pair's conversation"
    );
    for (x, y) in [(a, c), (c, b)] {
        assert_eq!(
            ok(store.direct_conversation(x, y).await, "direct_conversation"),
            None,
            "store conformance: another pair must not see a's and b's conversation"
        );
    }
    ok(
        store.set_direct_conversation(c, a, other).await,
        "set_direct_conversation of another pair",
    );
    assert_eq!(
        ok(store.direct_conversation(a, c).await, "direct_conversation"),
        Some(other),
        "store conformance: each pair has its own direct conversation"
    );
}

/// Many concurrent set_direct_conversation for one pair (both orders): exactly one succeeds.
pub async fn check_direct_pair_race<S: Store>(store: S) {
    let store = Arc::new(store);
    let (a, b) = (UserId::random(), UserId::random());
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..32 {
        let store = Arc::clone(&store);
        tasks.spawn(async move {
            let id = ConversationId::random();
            let (x, y) = if i % 2 == 0 { (a, b) } else { (b, a) };
            (id, store.set_direct_conversation(x, y, id).await)
        });
    }
    let mut winners = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (id, result) = joined.unwrap_or_else(|e| {
            panic!("store conformance: set_direct_conversation task failed: {e}")
        });
        match result {
            Ok(()) => winners.push(id),
            Err(StoreError::AlreadyExists(_)) => {}
            Err(e) => panic!(
                "store conformance: concurrent set_direct_conversation: unexpected error: {e}"
            ),
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "store conformance: 32 concurrent set_direct_conversation for one pair must have exactly one winner"
    );
    assert_eq!(
        ok(store.direct_conversation(a, b).await, "direct_conversation"),
        Some(winners[0]),
        "store conformance: the pair must map to the winner's conversation"
    );
}

// ---------------------------------------------------------------------------------------------
// messages

/// History pages: newest below `before_seq`, oldest above `after_seq`, always ascending.
pub async fn check_history<S: Store>(store: S) {
    let conv = ConversationId::random();
    let neighbour = next_conversation(conv);
    let sender = UserId::random();
    let all = msgs(conv, sender, 1..=50);
    // Interleave commits of the neighbour so its keys sit right after ours.
    for (i, chunk) in all.chunks(10).enumerate() {
        ok(store.commit(batch(chunk.to_vec())).await, "commit");
        let n = i as u64 * 6;
        ok(
            store
                .commit(batch(msgs(neighbour, sender, n + 1..=n + 6)))
                .await,
            "commit",
        );
    }

    assert_eq!(
        history(&store, conv, 0, 0, 100).await,
        all,
        "store conformance: history(0, 0, 100) must return all 50 messages, ascending, exactly as committed"
    );
    let r = |lo: u64, hi: u64| (lo..=hi).collect::<Vec<u64>>();
    let cases: [(u64, u64, u32, Vec<u64>); 17] = [
        (0, 0, 10, r(41, 50)),
        (0, 0, 1, vec![50]),
        (20, 0, 5, r(15, 19)),
        (20, 0, 100, r(1, 19)),
        (5, 0, 10, r(1, 4)),
        (51, 0, 1, vec![50]),
        (u64::MAX, 0, 3, r(48, 50)),
        (1, 0, 10, vec![]),
        (0, 20, 5, r(21, 25)),
        (0, 45, 10, r(46, 50)),
        (0, 50, 10, vec![]),
        (0, u64::MAX, 3, vec![]),
        (15, 10, 100, r(11, 14)),
        (30, 10, 3, r(11, 13)),
        (11, 10, 10, vec![]),
        (10, 20, 10, vec![]),
        (u64::MAX, 1, 2, r(2, 3)),
    ];
    for (before, after, limit, want) in cases {
        let page = history(&store, conv, before, after, limit).await;
        assert_eq!(
            seqs(&page),
            want,
            "store conformance: history(before_seq={before}, after_seq={after}, limit={limit}) returned the wrong page"
        );
        assert!(
            page.iter()
                .all(|m| m.seq.checked_sub(1).and_then(|i| all.get(i as usize)) == Some(m)),
            "store conformance: history(before_seq={before}, after_seq={after}) returned altered messages"
        );
    }

    // Explicit ends of the range: the oldest page from the very start, and with both bounds.
    let explicit = [
        (HistoryQuery::after(conv, 0, 5), r(1, 5)),
        (HistoryQuery::after(conv, 48, 5), r(49, 50)),
        (HistoryQuery::before(conv, 0, 3), r(48, 50)),
        (
            HistoryQuery {
                before_seq: 30,
                after_seq: 10,
                limit: 3,
                from: HistoryFrom::Newest,
                conversation: conv,
                max_bytes: u64::MAX,
                sender: None,
            },
            r(27, 29),
        ),
        (
            HistoryQuery {
                before_seq: 30,
                after_seq: 10,
                limit: 3,
                from: HistoryFrom::Oldest,
                conversation: conv,
                max_bytes: u64::MAX,
                sender: None,
            },
            r(11, 13),
        ),
    ];
    for (query, want) in explicit {
        let page = ok(store.history(query).await, "history");
        assert_eq!(
            seqs(&page),
            want,
            "store conformance: {query:?} returned the wrong page"
        );
    }

    // Pages bounded by bytes stop after the message that crosses the bound, from either end,
    // and always hold at least one message.
    let cost = |seqs: std::ops::RangeInclusive<u64>| -> u64 {
        seqs.map(|s| message_cost(&all[s as usize - 1])).sum()
    };
    let bounded = [
        // Oldest first: 1..=3 cost exactly cost(1..=3), not over it, so 4 crosses.
        (
            HistoryQuery::after(conv, 0, 100).with_max_bytes(cost(1..=3)),
            r(1, 4),
        ),
        (
            HistoryQuery::after(conv, 0, 100).with_max_bytes(cost(1..=3) - 1),
            r(1, 3),
        ),
        (
            HistoryQuery::after(conv, 45, 100).with_max_bytes(1),
            r(46, 46),
        ),
        (
            HistoryQuery::after(conv, 0, 2).with_max_bytes(cost(1..=10)),
            r(1, 2),
        ),
        (
            HistoryQuery::before(conv, 0, 100).with_max_bytes(cost(48..=50)),
            r(47, 50),
        ),
        (
            HistoryQuery::before(conv, 20, 100).with_max_bytes(0),
            r(19, 19),
        ),
        (
            HistoryQuery::before(conv, 0, 100).with_max_bytes(u64::MAX),
            r(1, 50),
        ),
    ];
    for (query, want) in bounded {
        let page = ok(store.history(query).await, "history");
        assert_eq!(
            seqs(&page),
            want,
            "store conformance: {query:?} (bounded by bytes) returned the wrong page"
        );
    }

    // Re-committing identical messages (a retried group commit) must not duplicate anything.
    ok(
        store.commit(batch(all[..10].to_vec())).await,
        "commit (repeat)",
    );
    assert_eq!(
        history(&store, conv, 0, 0, 100).await,
        all,
        "store conformance: re-committing identical messages must not change history"
    );

    let empty = group(sender);
    ok(
        store.create_conversation(empty.clone(), vec![]).await,
        "create_conversation",
    );
    assert!(
        history(&store, empty.id, 0, 0, 100).await.is_empty(),
        "store conformance: history of a conversation without messages must be empty"
    );
    assert!(
        history(&store, ConversationId::random(), 0, 0, 100)
            .await
            .is_empty(),
        "store conformance: history of an unknown conversation must be empty"
    );
}

/// The context of a message: `limit - (limit - 1) / 2` messages at or below the seq, the rest
/// above it, each side cut at its end away from the seq; whether more exists on either side;
/// a cap (a former member's departure) that nothing passes; a sender filter; byte bounds.
pub async fn check_history_around<S: Store>(store: S) {
    let conv = ConversationId::random();
    let sender = UserId::random();
    let all = msgs(conv, sender, 1..=50);
    ok(store.commit(batch(all.clone())).await, "commit");
    ok(
        store
            .commit(batch(msgs(next_conversation(conv), sender, 1..=60)))
            .await,
        "commit (neighbour)",
    );
    let r = |lo: u64, hi: u64| (lo..=hi).collect::<Vec<u64>>();
    let query = |seq: u64, limit: u32, before_seq: u64| AroundQuery {
        conversation: conv,
        seq,
        limit,
        before_seq,
        max_bytes: u64::MAX,
        sender: None,
    };
    // (seq, limit, cap, page, more before, more after)
    let cases: [(u64, u32, u64, Vec<u64>, bool, bool); 13] = [
        (25, 11, 0, r(20, 30), true, true),
        (25, 10, 0, r(20, 29), true, true),
        (25, 1, 0, vec![25], true, true),
        (25, 2, 0, r(24, 25), true, true),
        (1, 11, 0, r(1, 6), false, true),
        (2, 11, 0, r(1, 7), false, true),
        (50, 11, 0, r(45, 50), true, false),
        (49, 11, 0, r(44, 50), true, false),
        // A seq past the end is centred on nothing: the newest of what lies below it.
        (60, 11, 0, r(45, 50), true, false),
        (u64::MAX, 11, 0, r(45, 50), true, false),
        (25, 200, 0, r(1, 50), false, false),
        // Capped below 27 (a departure at 26): nothing above it, on either side.
        (25, 11, 27, r(20, 26), true, false),
        (30, 11, 27, r(21, 26), true, false),
    ];
    for (seq, limit, cap, want, before, after) in cases {
        let q = query(seq, limit, cap);
        let page = ok(store.history_around(q).await, "history_around");
        assert_eq!(
            (
                seqs(&page.messages),
                page.has_more_before,
                page.has_more_after
            ),
            (want, before, after),
            "store conformance: {q:?} returned the wrong page (seqs, more before, more after)"
        );
        assert!(
            page.messages
                .iter()
                .all(|m| all.get(m.seq as usize - 1) == Some(m)),
            "store conformance: {q:?} returned altered messages"
        );
    }
    for q in [
        AroundQuery {
            conversation: ConversationId::random(),
            ..query(1, 11, 0)
        },
        query(25, 11, 1),
    ] {
        let page = ok(store.history_around(q).await, "history_around");
        assert!(
            page.messages.is_empty() && !page.has_more_before && !page.has_more_after,
            "store conformance: {q:?} must be an empty page with nothing more, got {:?}",
            seqs(&page.messages)
        );
    }
    // Byte bounds: each side gets half; one message of cost c per half fits exactly, the next
    // crosses and ends the side, which says more may exist.
    let c = message_cost(&all[24]);
    let q = AroundQuery {
        max_bytes: 2 * c,
        ..query(25, 11, 0)
    };
    let page = ok(store.history_around(q).await, "history_around");
    assert_eq!(
        (
            seqs(&page.messages),
            page.has_more_before,
            page.has_more_after
        ),
        (r(24, 27), true, true),
        "store conformance: {q:?} (bounded by bytes) returned the wrong page"
    );
    // Only one sender's messages, centred on a seq of another sender.
    let conv2 = ConversationId::random();
    let (alice, bob) = (UserId::random(), UserId::random());
    let mixed: Vec<Message> = (1..=30)
        .map(|s| {
            msg(
                conv2,
                s,
                if s % 3 == 0 { bob } else { alice },
                u128::from(s),
            )
        })
        .collect();
    ok(store.commit(batch(mixed)).await, "commit (two senders)");
    let q = AroundQuery {
        conversation: conv2,
        sender: Some(bob),
        ..query(16, 5, 0)
    };
    let page = ok(store.history_around(q).await, "history_around");
    assert_eq!(
        (
            seqs(&page.messages),
            page.has_more_before,
            page.has_more_after
        ),
        (vec![9, 12, 15, 18, 21], true, true),
        "store conformance: {q:?} (one sender) returned the wrong page"
    );
}

/// `first_seq_at` finds where a time range starts and ends, with several messages per
/// millisecond, before the first and after the last message, per conversation.
pub async fn check_history_by_time<S: Store>(store: S) {
    const BASE: u64 = 1_700_000_000_000;
    let conv = ConversationId::random();
    let sender = UserId::random();
    // Three messages per timestamp: seqs 1-3 at BASE, 4-6 at BASE + 10, ... 28-30 at BASE + 90.
    let stamped = |conversation: ConversationId, seq: u64, ts: u64| Message {
        timestamp_ms: ts,
        ..msg(conversation, seq, sender, u128::from(seq))
    };
    let all: Vec<Message> = (1..=30)
        .map(|s| stamped(conv, s, BASE + (s - 1) / 3 * 10))
        .collect();
    // Committed in several batches, interleaved with a neighbour living at other times.
    for (i, chunk) in all.chunks(7).enumerate() {
        ok(store.commit(batch(chunk.to_vec())).await, "commit");
        let n = i as u64 * 4;
        let neighbour: Vec<Message> = (n + 1..=n + 4)
            .map(|s| stamped(next_conversation(conv), s, BASE + 5 + s))
            .collect();
        ok(store.commit(batch(neighbour)).await, "commit (neighbour)");
    }
    let cases = [
        (0, 1),
        (BASE, 1),
        (BASE + 1, 4),
        (BASE + 10, 4),
        (BASE + 15, 7),
        (BASE + 89, 28),
        (BASE + 90, 28),
        (BASE + 91, 31),
        (u64::MAX, 31),
    ];
    for (ts, want) in cases {
        assert_eq!(
            ok(store.first_seq_at(conv, ts).await, "first_seq_at"),
            want,
            "store conformance: first_seq_at({ts}) is the first seq stamped at or after it"
        );
    }
    for ts in [0, BASE, u64::MAX] {
        assert_eq!(
            ok(
                store.first_seq_at(ConversationId::random(), ts).await,
                "first_seq_at"
            ),
            1,
            "store conformance: first_seq_at of an empty conversation is 1 (last_seq + 1)"
        );
    }
    // A time range [since, until] as a page: seqs first_seq_at(since)..first_seq_at(until + 1).
    let (since, until) = (BASE + 10, BASE + 20);
    let lo = ok(store.first_seq_at(conv, since).await, "first_seq_at");
    let hi = ok(store.first_seq_at(conv, until + 1).await, "first_seq_at");
    let page = ok(
        store
            .history(HistoryQuery {
                before_seq: hi,
                ..HistoryQuery::after(conv, lo - 1, 100)
            })
            .await,
        "history",
    );
    assert_eq!(
        page,
        all[3..9].to_vec(),
        "store conformance: the messages stamped within [{since}, {until}] are seqs 4..=9"
    );
}

/// History of one sender: its messages only, by seq, from either end, within seq bounds,
/// bounded by bytes, never a neighbouring conversation's or a neighbouring user id's.
pub async fn check_history_by_sender<S: Store>(store: S) {
    let conv = ConversationId::random();
    let (alice, bob, carol) = (UserId::random(), UserId::random(), UserId::random());
    let bob_next = UserId(bob.0.wrapping_add(1));
    let sender_of = |s: u64| match s {
        41.. => bob_next,
        _ if s % 3 == 0 => bob,
        _ => alice,
    };
    let all: Vec<Message> = (1..=45)
        .map(|s| msg(conv, s, sender_of(s), u128::from(s)))
        .collect();
    for chunk in all.chunks(8) {
        ok(store.commit(batch(chunk.to_vec())).await, "commit");
    }
    ok(
        store
            .commit(batch(msgs(next_conversation(conv), bob, 1..=20)))
            .await,
        "commit (neighbour)",
    );
    let bobs = |q: HistoryQuery| q.from_sender(bob);
    let cases: [(HistoryQuery, Vec<u64>); 10] = [
        (
            bobs(HistoryQuery::before(conv, 0, 5)),
            vec![27, 30, 33, 36, 39],
        ),
        (bobs(HistoryQuery::after(conv, 0, 3)), vec![3, 6, 9]),
        (bobs(HistoryQuery::before(conv, 10, 100)), vec![3, 6, 9]),
        (bobs(HistoryQuery::before(conv, 9, 100)), vec![3, 6]),
        (bobs(HistoryQuery::after(conv, 39, 100)), vec![]),
        (
            bobs(HistoryQuery {
                before_seq: 20,
                ..HistoryQuery::after(conv, 10, 2)
            }),
            vec![12, 15],
        ),
        (
            bobs(HistoryQuery::before(conv, 0, 100).with_max_bytes(0)),
            vec![39],
        ),
        (
            HistoryQuery::before(conv, 0, 100).from_sender(carol),
            vec![],
        ),
        (
            HistoryQuery::after(conv, 0, 100).from_sender(bob_next),
            (41..=45).collect(),
        ),
        (
            HistoryQuery::after(conv, 0, 4).from_sender(alice),
            vec![1, 2, 4, 5],
        ),
    ];
    for (q, want) in cases {
        let page = ok(store.history(q).await, "history");
        assert_eq!(
            seqs(&page),
            want,
            "store conformance: {q:?} (by sender) returned the wrong page"
        );
        assert!(
            page.iter().all(|m| all.get(m.seq as usize - 1) == Some(m)),
            "store conformance: {q:?} returned altered messages"
        );
    }
    // A retried commit adds no second index entry.
    ok(
        store.commit(batch(all[..8].to_vec())).await,
        "commit (repeat)",
    );
    assert_eq!(
        seqs(&ok(
            store.history(bobs(HistoryQuery::after(conv, 0, 100))).await,
            "history"
        )),
        (1..=13).map(|i| i * 3).collect::<Vec<u64>>(),
        "store conformance: re-committing must not duplicate a sender's messages"
    );
}

/// last_seq is the highest stored seq, per conversation, 0 when empty.
pub async fn check_last_seq<S: Store>(store: S) {
    let x = ConversationId::random();
    let (y, z) = (next_conversation(x), ConversationId(x.0.wrapping_sub(1)));
    let top = ConversationId(u128::MAX);
    let sender = UserId::random();
    for c in [x, y, z, top] {
        assert_eq!(
            ok(store.last_seq(c).await, "last_seq"),
            0,
            "store conformance: last_seq of an empty conversation must be 0"
        );
    }
    ok(store.commit(batch(msgs(x, sender, 1..=7))).await, "commit");
    ok(store.commit(batch(msgs(y, sender, 1..=3))).await, "commit");
    ok(
        store.commit(batch(msgs(top, sender, 1..=2))).await,
        "commit",
    );
    for (c, want) in [(x, 7), (y, 3), (z, 0), (top, 2)] {
        assert_eq!(
            ok(store.last_seq(c).await, "last_seq"),
            want,
            "store conformance: last_seq({c}) must be {want} (neighbouring conversations must not mix)"
        );
    }
    // Past 255 and 65,535: a byte-order mistake in keys shows up here. (The store does not
    // require gapless seqs; the sequencer guarantees them.)
    ok(
        store.commit(batch(msgs(x, sender, 8..=300))).await,
        "commit",
    );
    ok(
        store.commit(batch(msgs(x, sender, 65_530..=65_540))).await,
        "commit",
    );
    assert_eq!(
        ok(store.last_seq(x).await, "last_seq"),
        65_540,
        "store conformance: last_seq must be the numeric, not byte-wise, maximum"
    );
    assert_eq!(
        seqs(&history(&store, x, 0, 0, 3).await),
        vec![65_538, 65_539, 65_540],
        "store conformance: the newest page must follow numeric seq order"
    );
    assert_eq!(
        seqs(&history(&store, x, 257, 253, 10).await),
        vec![254, 255, 256],
        "store conformance: pages must follow numeric seq order across byte boundaries"
    );
}

/// message_by_client_id finds a message by (conversation, sender, client id) and nothing else.
pub async fn check_client_ids<S: Store>(store: S) {
    let c = ConversationId::random();
    let d = next_conversation(c);
    let (u1, u2) = (UserId::random(), UserId::random());
    let m1 = msg(c, 1, u1, 7);
    let m2 = msg(c, 2, u2, 7);
    let m3 = msg(c, 3, u1, u128::MAX);
    let n1 = msg(d, 1, u1, 9);
    ok(
        store
            .commit(batch(vec![m1.clone(), m2.clone(), m3.clone()]))
            .await,
        "commit",
    );
    ok(store.commit(batch(vec![n1.clone()])).await, "commit");
    for (conv, sender, cid, want) in [
        (c, u1, 7, Some(&m1)),
        (c, u2, 7, Some(&m2)),
        (c, u1, u128::MAX, Some(&m3)),
        (d, u1, 9, Some(&n1)),
        (c, u2, u128::MAX, None),
        (c, u1, 9, None),
        (d, u1, 7, None),
        (c, UserId::random(), 7, None),
        (ConversationId::random(), u1, 7, None),
    ] {
        assert_eq!(
            ok(
                store.message_by_client_id(conv, sender, cid).await,
                "message_by_client_id"
            )
            .as_ref(),
            want,
            "store conformance: message_by_client_id({conv}, {sender}, {cid}) is wrong (found for the right sender only)"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// cursors

/// Cursors start at 0 and only move forward, across commits and within one batch.
pub async fn check_cursors<S: Store>(store: S) {
    let (dev1, dev2) = (DeviceId::random(), DeviceId::random());
    let (c1, c2) = (ConversationId::random(), ConversationId::random());
    let cur = |device, conversation, seq| CursorUpdate {
        user: CURSOR_USER,
        device,
        conversation,
        seq,
    };
    let get = |device, conversation| {
        let store = &store;
        async move { ok(store.cursor(device, conversation).await, "cursor") }
    };
    assert_eq!(
        get(dev1, c1).await,
        0,
        "store conformance: an unknown cursor must be 0"
    );

    ok(
        store.commit(cursors(vec![cur(dev1, c1, 5)])).await,
        "commit",
    );
    assert_eq!(
        get(dev1, c1).await,
        5,
        "store conformance: a committed cursor must be stored"
    );
    ok(
        store.commit(cursors(vec![cur(dev1, c1, 3)])).await,
        "commit",
    );
    assert_eq!(
        get(dev1, c1).await,
        5,
        "store conformance: a cursor must never move backwards"
    );
    ok(
        store
            .commit(cursors(vec![cur(dev1, c1, 9), cur(dev1, c2, 2)]))
            .await,
        "commit",
    );
    assert_eq!(
        get(dev1, c1).await,
        9,
        "store conformance: a cursor must move forwards"
    );
    assert_eq!(
        get(dev1, c2).await,
        2,
        "store conformance: cursors are per conversation"
    );
    assert_eq!(
        get(dev2, c1).await,
        0,
        "store conformance: cursors are per device"
    );
    ok(
        store
            .commit(cursors(vec![cur(dev1, c1, 12), cur(dev1, c1, 11)]))
            .await,
        "commit",
    );
    assert_eq!(
        get(dev1, c1).await,
        12,
        "store conformance: within one batch the highest cursor must win"
    );

    // Cursors committed together with messages.
    let sender = UserId::random();
    let with_msgs = CommitBatch {
        messages: msgs(c2, sender, 1..=3),
        cursors: vec![cur(dev2, c2, 3)],
    };
    ok(store.commit(with_msgs).await, "commit");
    assert_eq!(
        get(dev2, c2).await,
        3,
        "store conformance: cursors in a batch with messages must be stored"
    );
    assert_eq!(ok(store.last_seq(c2).await, "last_seq"), 3);

    ok(
        store.commit(CommitBatch::default()).await,
        "commit of an empty batch",
    );
    assert_eq!(
        get(dev1, c1).await,
        12,
        "store conformance: an empty commit must change nothing"
    );
}

/// Delivery marks: per user and conversation, the highest cursor of any of the user's devices;
/// forward only, and absent for users who never acknowledged.
pub async fn check_delivery_marks<S: Store>(store: S) {
    let (alice, bob) = (UserId(1), UserId(2));
    let (alice_phone, alice_laptop, bob_phone) =
        (DeviceId::random(), DeviceId::random(), DeviceId::random());
    let (c1, c2) = (ConversationId::random(), ConversationId::random());
    let cur = |user, device, conversation, seq| CursorUpdate {
        user,
        device,
        conversation,
        seq,
    };
    let marks = |conversation| {
        let store = &store;
        async move { ok(store.delivery_marks(conversation).await, "delivery_marks") }
    };
    assert_eq!(
        marks(c1).await,
        Vec::<DeliveryMark>::new(),
        "store conformance: a conversation nobody acknowledged has no marks"
    );
    ok(
        store
            .commit(cursors(vec![
                cur(alice, alice_phone, c1, 7),
                cur(alice, alice_laptop, c1, 4),
                cur(bob, bob_phone, c2, 3),
            ]))
            .await,
        "commit",
    );
    assert_eq!(
        marks(c1).await,
        vec![DeliveryMark {
            user: alice,
            seq: 7
        }],
        "store conformance: a mark is the highest cursor over the user's devices, per conversation"
    );
    ok(
        store
            .commit(cursors(vec![
                cur(alice, alice_laptop, c1, 5),
                cur(bob, bob_phone, c1, 2),
            ]))
            .await,
        "commit",
    );
    assert_eq!(
        marks(c1).await,
        vec![
            DeliveryMark {
                user: alice,
                seq: 7
            },
            DeliveryMark { user: bob, seq: 2 },
        ],
        "store conformance: a lower cursor of another device must not lower the mark; marks are \
         in user id order"
    );
    ok(
        store
            .commit(cursors(vec![cur(alice, alice_laptop, c1, 11)]))
            .await,
        "commit",
    );
    assert_eq!(
        marks(c1).await[0],
        DeliveryMark {
            user: alice,
            seq: 11
        },
        "store conformance: any device moving past the mark raises it"
    );
    assert_eq!(
        marks(c2).await,
        vec![DeliveryMark { user: bob, seq: 3 }],
        "store conformance: marks are per conversation"
    );
}

/// Concurrent commits of one cursor: the highest wins, whatever order they land in.
pub async fn check_concurrent_cursors<S: Store>(store: S) {
    let store = Arc::new(store);
    let (device, conversation) = (DeviceId::random(), ConversationId::random());
    let mut tasks = tokio::task::JoinSet::new();
    for seq in [3u64, 16, 1, 9, 12, 2, 15, 4, 8, 11, 5, 14, 6, 10, 7, 13] {
        let store = Arc::clone(&store);
        tasks.spawn(async move {
            store
                .commit(cursors(vec![CursorUpdate {
                    user: CURSOR_USER,
                    device,
                    conversation,
                    seq,
                }]))
                .await
        });
    }
    while let Some(joined) = tasks.join_next().await {
        let result =
            joined.unwrap_or_else(|e| panic!("store conformance: commit task failed: {e}"));
        ok(result, "concurrent cursor commit");
    }
    assert_eq!(
        ok(store.cursor(device, conversation).await, "cursor"),
        16,
        "store conformance: after concurrent cursor commits the highest must be stored"
    );
}

// ---------------------------------------------------------------------------------------------
// batches and payloads

/// 5,000 messages in one commit, all readable in order afterwards.
pub async fn check_large_batch<S: Store>(store: S) {
    let conv = ConversationId::random();
    let sender = UserId::random();
    let mut all = msgs(conv, sender, 1..=5000);
    for m in &mut all {
        // Sizes vary so that records straddle blocks differently.
        m.payload = vec![(m.seq % 251) as u8; (m.seq % 700) as usize];
    }
    ok(
        store.commit(batch(all.clone())).await,
        "commit of 5,000 messages",
    );
    assert_eq!(
        ok(store.last_seq(conv).await, "last_seq"),
        5000,
        "store conformance: last_seq after a 5,000-message commit"
    );
    assert!(
        read_all(&store, conv).await == all,
        "store conformance: paging backwards over a 5,000-message batch must return it exactly"
    );

    // Forward paging with after_seq, from the first message on.
    let mut forward: Vec<Message> = all[..1].to_vec();
    while let Some(after) = forward.last().map(|m| m.seq).filter(|s| *s < 5000) {
        let page = history(&store, conv, 0, after, 1000).await;
        assert!(
            !page.is_empty(),
            "store conformance: history after seq {after} must not be empty"
        );
        assert!(
            page[0].seq == after + 1 && page.windows(2).all(|w| w[0].seq + 1 == w[1].seq),
            "store conformance: a page after seq {after} must be contiguous and start right above it"
        );
        forward.extend(page);
    }
    assert!(
        forward == all,
        "store conformance: paging forwards over 5,000 messages must return them exactly"
    );

    // Asking for more than any page cap: a contiguous newest page, never more than exists.
    let page = history(&store, conv, 0, 0, u32::MAX).await;
    assert!(
        !page.is_empty() && page.len() <= 5000 && page.last().map(|m| m.seq) == Some(5000),
        "store conformance: history with limit u32::MAX must return a newest page (got {} messages)",
        page.len()
    );
    assert!(
        page.windows(2).all(|w| w[0].seq + 1 == w[1].seq),
        "store conformance: a capped page must be contiguous"
    );

    for seq in [1u64, 2500, 5000] {
        let want = &all[seq as usize - 1];
        assert_eq!(
            ok(
                store
                    .message_by_client_id(conv, sender, want.client_msg_id)
                    .await,
                "message_by_client_id"
            )
            .as_ref(),
            Some(want),
            "store conformance: the client id index of a large batch must be complete (seq {seq})"
        );
    }
}

/// Payloads of any bytes (all 256 values, empty, large) and extreme field values round-trip.
pub async fn check_payloads<S: Store>(store: S) {
    let conv = ConversationId::random();
    let sender = UserId(u128::MAX);
    let mut all_bytes = msg(conv, 1, sender, 1);
    all_bytes.payload = (0..=255u8).chain((0..=255u8).rev()).collect();
    let mut empty = msg(conv, 2, sender, 2);
    empty.payload = Vec::new();
    empty.content_type = String::new();
    let mut large = msg(conv, 3, sender, 3);
    large.payload = (0..256 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let mut extreme = msg(conv, 4, UserId(0), u128::MAX);
    extreme.message_id = MessageId(u128::MAX);
    extreme.sender_device = DeviceId(0);
    extreme.timestamp_ms = u64::MAX;
    extreme.content_type = "ünïcødé ✓ \u{0} \u{10FFFF}".to_owned();
    extreme.payload = vec![0; 3];
    extreme.files = vec![
        FileRef {
            file_id: MessageId(u128::MAX),
            size: u64::MAX,
            content_type: "image/png".to_owned(),
        },
        FileRef {
            file_id: MessageId(0),
            size: 0,
            content_type: String::new(),
        },
    ];
    let all = vec![all_bytes, empty, large, extreme];
    ok(store.commit(batch(all.clone())).await, "commit");
    assert!(
        history(&store, conv, 0, 0, 10).await == all,
        "store conformance: payloads with every byte value, empty and 256 KiB payloads, files and extreme values must round-trip exactly"
    );
    for m in &all {
        assert_eq!(
            ok(
                store
                    .message_by_client_id(conv, m.sender_user, m.client_msg_id)
                    .await,
                "message_by_client_id"
            )
            .as_ref(),
            Some(m),
            "store conformance: message_by_client_id must return the message exactly (seq {})",
            m.seq
        );
    }
}

/// Commits to different conversations running concurrently all land, completely and in order.
pub async fn check_concurrent_commits<S: Store>(store: S) {
    const CONVERSATIONS: usize = 8;
    const BATCHES: u64 = 20;
    const PER_BATCH: u64 = 8;
    let store = Arc::new(store);
    let device = DeviceId::random();
    let convs: Vec<ConversationId> = (0..CONVERSATIONS)
        .map(|_| ConversationId::random())
        .collect();
    let sender = UserId::random();
    let mut tasks = tokio::task::JoinSet::new();
    for &conv in &convs {
        let store = Arc::clone(&store);
        tasks.spawn(async move {
            for b in 0..BATCHES {
                let first = b * PER_BATCH + 1;
                let last = first + PER_BATCH - 1;
                let cursor = CursorUpdate {
                    user: CURSOR_USER,
                    device,
                    conversation: conv,
                    seq: last,
                };
                let batch = CommitBatch {
                    messages: msgs(conv, sender, first..=last),
                    cursors: vec![cursor],
                };
                ok(store.commit(batch).await, "concurrent commit");
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.unwrap_or_else(|e| panic!("store conformance: concurrent commit task failed: {e}"));
    }
    let total = BATCHES * PER_BATCH;
    for &conv in &convs {
        assert_eq!(
            ok(store.last_seq(conv).await, "last_seq"),
            total,
            "store conformance: last_seq after concurrent commits"
        );
        assert!(
            read_all(&*store, conv).await == msgs(conv, sender, 1..=total),
            "store conformance: concurrent commits to different conversations must all be stored exactly"
        );
        assert_eq!(
            ok(store.cursor(device, conv).await, "cursor"),
            total,
            "store conformance: cursors committed concurrently must be stored"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// reopening

/// Every kind of record survives closing and reopening the store, and the invariants (unique
/// names and pairs, forward-only cursors, spent tokens) still hold afterwards.
///
/// `reopen` must open the *same* storage each time (e.g. the same directory); the store it
/// returns is dropped before the next call.
pub async fn check_reopen<S: Store, F, Fut>(reopen: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    let alice = user("Alice");
    let emile = user("Émile");
    let kept = token(alice.id, 1);
    let spent = token(alice.id, 2);
    let bob = UserId::random();
    let conv = group(alice.id);
    let members = vec![
        MemberRecord {
            user: alice.id,
            role: MemberRole::Owner,
        },
        MemberRecord {
            user: bob,
            role: MemberRole::Member,
        },
    ];
    let direct = ConversationId::random();
    let device = DeviceId::random();
    let all = msgs(conv.id, alice.id, 1..=25);

    {
        let store = reopen().await;
        ok(store.create_user(alice.clone()).await, "create_user");
        ok(store.create_user(emile.clone()).await, "create_user");
        ok(store.put_token(kept.clone()).await, "put_token");
        ok(store.put_token(spent.clone()).await, "put_token");
        assert!(ok(
            store.delete_token(&spent.token_hash).await,
            "delete_token"
        ));
        ok(
            store
                .create_conversation(conv.clone(), members.clone())
                .await,
            "create_conversation",
        );
        ok(
            store.set_direct_conversation(alice.id, bob, direct).await,
            "set_direct_conversation",
        );
        ok(store.commit(batch(all[..10].to_vec())).await, "commit");
        let second = CommitBatch {
            messages: all[10..20].to_vec(),
            cursors: vec![CursorUpdate {
                user: CURSOR_USER,
                device,
                conversation: conv.id,
                seq: 20,
            }],
        };
        ok(store.commit(second).await, "commit");
    }

    {
        let store = reopen().await;
        let what = "after reopening";
        assert_eq!(
            ok(store.user_by_id(alice.id).await, what),
            Some(alice.clone()),
            "store conformance: user by id lost {what}"
        );
        assert_eq!(
            ok(store.user_by_name("ALICE").await, what),
            Some(alice.clone()),
            "store conformance: username index lost {what}"
        );
        assert_eq!(
            ok(store.user_by_name("émile").await, what),
            Some(emile.clone()),
            "store conformance: username index lost {what}"
        );
        already_exists(
            store.create_user(user("alice")).await,
            "create_user of a taken name after reopening",
        );
        assert_eq!(
            ok(store.token(&kept.token_hash).await, what),
            Some(kept.clone()),
            "store conformance: token lost {what}"
        );
        assert_eq!(
            ok(store.token(&spent.token_hash).await, what),
            None,
            "store conformance: deleted token came back {what}"
        );
        assert!(
            !ok(store.delete_token(&spent.token_hash).await, what),
            "store conformance: deleted token deletable again {what}"
        );
        assert_eq!(
            ok(store.conversation(conv.id).await, what),
            Some(conv.clone()),
            "store conformance: conversation lost {what}"
        );
        let mut got = ok(store.members(conv.id).await, what);
        got.sort_by_key(|m| m.user);
        let mut want = members.clone();
        want.sort_by_key(|m| m.user);
        assert_eq!(got, want, "store conformance: members lost {what}");
        assert!(
            ok(store.is_member(conv.id, bob).await, what),
            "store conformance: membership lost {what}"
        );
        assert_eq!(
            ok(store.conversations_of(bob).await, what),
            vec![conv.id],
            "store conformance: conversations_of lost {what}"
        );
        assert_eq!(
            ok(store.direct_conversation(bob, alice.id).await, what),
            Some(direct),
            "store conformance: direct pair lost {what}"
        );
        already_exists(
            store
                .set_direct_conversation(alice.id, bob, ConversationId::random())
                .await,
            "set_direct_conversation of a taken pair after reopening",
        );
        assert_eq!(
            ok(store.last_seq(conv.id).await, what),
            20,
            "store conformance: last_seq wrong {what}"
        );
        assert!(
            history(&store, conv.id, 0, 0, 100).await == all[..20],
            "store conformance: messages lost or altered {what}"
        );
        assert_eq!(
            ok(
                store
                    .message_by_client_id(conv.id, alice.id, all[14].client_msg_id)
                    .await,
                what
            )
            .as_ref(),
            Some(&all[14]),
            "store conformance: client id index lost {what}"
        );
        assert_eq!(
            ok(store.cursor(device, conv.id).await, what),
            20,
            "store conformance: cursor lost {what}"
        );
        ok(
            store
                .commit(cursors(vec![CursorUpdate {
                    user: CURSOR_USER,
                    device,
                    conversation: conv.id,
                    seq: 4,
                }]))
                .await,
            what,
        );
        assert_eq!(
            ok(store.cursor(device, conv.id).await, what),
            20,
            "store conformance: cursor moved backwards {what}"
        );

        // Keep writing after recovery.
        let third = CommitBatch {
            messages: all[20..].to_vec(),
            cursors: vec![CursorUpdate {
                user: CURSOR_USER,
                device,
                conversation: conv.id,
                seq: 25,
            }],
        };
        ok(store.commit(third).await, "commit after reopening");
    }

    {
        let store = reopen().await;
        let what = "after a second reopen";
        assert_eq!(
            ok(store.last_seq(conv.id).await, what),
            25,
            "store conformance: last_seq wrong {what}"
        );
        assert!(
            history(&store, conv.id, 0, 0, 100).await == all,
            "store conformance: messages lost or altered {what}"
        );
        assert_eq!(
            ok(store.cursor(device, conv.id).await, what),
            25,
            "store conformance: cursor lost {what}"
        );
        let payload_bytes: u64 = all.iter().map(|m| m.payload.len() as u64).sum();
        assert_eq!(
            ok(store.stored_bytes(all[0].sender_user).await, what),
            payload_bytes,
            "store conformance: stored_bytes lost {what}"
        );
        assert_eq!(
            ok(store.user_by_name("alice").await, what),
            Some(alice),
            "store conformance: user lost {what}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// groups: names, invitations, membership changes

fn owner(user: UserId) -> MemberRecord {
    MemberRecord {
        user,
        role: MemberRole::Owner,
    }
}

fn member(user: UserId) -> MemberRecord {
    MemberRecord {
        user,
        role: MemberRole::Member,
    }
}

/// A taken name key refuses a second group and writes nothing of it.
pub async fn check_group_names<S: Store>(store: S) {
    let (a, b) = (UserId::random(), UserId::random());
    let g1 = group(a);
    ok(
        store
            .create_named_group(g1.clone(), vec![owner(a)], "team".to_owned())
            .await,
        "create_named_group",
    );
    assert_eq!(
        ok(store.group_by_name("team").await, "group_by_name"),
        Some(g1.id),
        "store conformance: the name key must map to its group"
    );
    assert_eq!(
        ok(store.conversation(g1.id).await, "conversation"),
        Some(g1.clone()),
        "store conformance: a named group must be stored like any conversation"
    );
    assert_eq!(
        ok(store.members(g1.id).await, "members"),
        vec![owner(a)],
        "store conformance: a named group's members"
    );
    let g2 = group(b);
    already_exists(
        store
            .create_named_group(g2.clone(), vec![owner(b)], "team".to_owned())
            .await,
        "second group with a taken name key",
    );
    assert_eq!(
        ok(store.conversation(g2.id).await, "conversation"),
        None,
        "store conformance: a refused group must not be stored"
    );
    assert!(
        !ok(store.is_member(g2.id, b).await, "is_member"),
        "store conformance: a refused group must store no membership"
    );
    assert_eq!(
        ok(store.conversations_of(b).await, "conversations_of"),
        Vec::<ConversationId>::new(),
        "store conformance: a refused group must not be listed"
    );
    // Keys are compared exactly: normalisation is the caller's job.
    ok(
        store
            .create_named_group(g2.clone(), vec![owner(b)], "team2".to_owned())
            .await,
        "create_named_group with another key",
    );
    assert_eq!(
        ok(store.group_by_name("nope").await, "group_by_name"),
        None,
        "store conformance: an unknown name key"
    );
}

/// Concurrent creations with one name key: exactly one wins.
pub async fn check_group_name_race<S: Store>(store: S) {
    let store = Arc::new(store);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let store = Arc::clone(&store);
        tasks.spawn(async move {
            let a = UserId::random();
            let g = group(a);
            let id = g.id;
            (
                id,
                store
                    .create_named_group(g, vec![owner(a)], "race".to_owned())
                    .await,
            )
        });
    }
    let mut winners = Vec::new();
    let mut losers = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (id, result) = joined
            .unwrap_or_else(|e| panic!("store conformance: create_named_group task failed: {e}"));
        match result {
            Ok(()) => winners.push(id),
            Err(StoreError::AlreadyExists(_)) => losers.push(id),
            Err(e) => panic!("store conformance: concurrent create_named_group: {e}"),
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "store conformance: 32 concurrent creations of one name must have exactly one winner"
    );
    assert_eq!(
        ok(store.group_by_name("race").await, "group_by_name"),
        Some(winners[0]),
        "store conformance: the name maps to the winner"
    );
    for id in losers {
        assert_eq!(
            ok(store.conversation(id).await, "conversation"),
            None,
            "store conformance: a losing creation must store nothing"
        );
    }
}

/// Invitations: put, read, list per user, take, accept (joins atomically), decline.
pub async fn check_invitations<S: Store>(store: S) {
    let (a, b, c) = (UserId::random(), UserId::random(), UserId::random());
    let g = group(a);
    ok(
        store
            .create_named_group(g.clone(), vec![owner(a)], "inv".to_owned())
            .await,
        "create_named_group",
    );
    // A neighbouring group's invitation must not leak into g's.
    let g2 = ConversationRecord {
        id: next_conversation(g.id),
        ..group(a)
    };
    ok(
        store
            .create_named_group(g2.clone(), vec![owner(a)], "inv2".to_owned())
            .await,
        "create_named_group",
    );
    let inv_b = InvitationRecord {
        conversation: g.id,
        user: b,
        inviter: a,
        created_ms: 5,
    };
    let inv_b2 = InvitationRecord {
        conversation: g2.id,
        ..inv_b
    };
    let inv_c = InvitationRecord { user: c, ..inv_b };
    for i in [inv_b, inv_b2, inv_c] {
        ok(store.put_invitation(i).await, "put_invitation");
    }
    // Putting again replaces, it does not duplicate.
    ok(store.put_invitation(inv_b).await, "put_invitation again");
    assert_eq!(
        ok(store.invitation(g.id, b).await, "invitation"),
        Some(inv_b),
        "store conformance: a stored invitation reads back"
    );
    assert_eq!(
        ok(store.invitation(g.id, a).await, "invitation"),
        None,
        "store conformance: no invitation for an uninvited user"
    );
    let mut listed = ok(store.invitations_of(b).await, "invitations_of");
    listed.sort_by_key(|i| i.conversation);
    let mut want = vec![inv_b, inv_b2];
    want.sort_by_key(|i| i.conversation);
    assert_eq!(
        listed, want,
        "store conformance: invitations_of lists each pending invitation once"
    );
    // Accepting joins and removes the invitation.
    assert_eq!(
        ok(store.accept_invitation(g.id, member(b)).await, "accept"),
        Some(inv_b),
        "store conformance: accept returns the invitation"
    );
    assert!(
        ok(store.is_member(g.id, b).await, "is_member"),
        "store conformance: accepting makes a member"
    );
    assert!(
        ok(store.conversations_of(b).await, "conversations_of").contains(&g.id),
        "store conformance: accepting lists the conversation"
    );
    assert_eq!(
        ok(store.invitation(g.id, b).await, "invitation"),
        None,
        "store conformance: an accepted invitation is gone"
    );
    assert_eq!(
        ok(store.invitations_of(b).await, "invitations_of"),
        vec![inv_b2],
        "store conformance: only the other invitation remains"
    );
    // Accepting without an invitation writes nothing.
    let d = UserId::random();
    assert_eq!(
        ok(store.accept_invitation(g.id, member(d)).await, "accept"),
        None,
        "store conformance: accept without an invitation"
    );
    assert!(
        !ok(store.is_member(g.id, d).await, "is_member"),
        "store conformance: accept without an invitation must not join"
    );
    // Declining (take) removes it once.
    assert_eq!(
        ok(store.take_invitation(g.id, c).await, "take_invitation"),
        Some(inv_c),
        "store conformance: take returns the invitation"
    );
    assert_eq!(
        ok(store.take_invitation(g.id, c).await, "take_invitation"),
        None,
        "store conformance: a taken invitation is gone"
    );
    assert!(
        ok(store.invitations_of(c).await, "invitations_of").is_empty(),
        "store conformance: a taken invitation is not listed"
    );
    assert!(
        !ok(store.is_member(g.id, c).await, "is_member"),
        "store conformance: declining does not join"
    );
}

/// Concurrent accepts and takes of one invitation: exactly one gets it.
pub async fn check_invitation_race<S: Store>(store: S) {
    let store = Arc::new(store);
    let (a, b) = (UserId::random(), UserId::random());
    let g = group(a);
    ok(
        store
            .create_named_group(g.clone(), vec![owner(a)], "inv-race".to_owned())
            .await,
        "create_named_group",
    );
    let inv = InvitationRecord {
        conversation: g.id,
        user: b,
        inviter: a,
        created_ms: 1,
    };
    ok(store.put_invitation(inv).await, "put_invitation");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..16 {
        let store = Arc::clone(&store);
        tasks.spawn(async move {
            if i % 2 == 0 {
                (true, store.accept_invitation(g.id, member(b)).await)
            } else {
                (false, store.take_invitation(g.id, b).await)
            }
        });
    }
    let mut winners = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (accepted, result) =
            joined.unwrap_or_else(|e| panic!("store conformance: invitation task failed: {e}"));
        if ok(result, "concurrent accept/take").is_some() {
            winners.push(accepted);
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "store conformance: one invitation is used exactly once"
    );
    assert_eq!(
        ok(store.is_member(g.id, b).await, "is_member"),
        winners[0],
        "store conformance: membership follows whether the winner accepted"
    );
}

/// add_member, remove_member and departure records.
pub async fn check_membership_changes<S: Store>(store: S) {
    let (a, b, c) = (UserId::random(), UserId::random(), UserId::random());
    let g = group(a);
    ok(
        store
            .create_named_group(g.clone(), vec![owner(a)], "members".to_owned())
            .await,
        "create_named_group",
    );
    let missing = ConversationId::random();
    match store.add_member(missing, member(b)).await {
        Err(StoreError::NotFound(_)) => {}
        other => panic!("store conformance: add_member to a missing group: {other:?}"),
    }
    // A pending invitation is consumed by a direct add.
    ok(
        store
            .put_invitation(InvitationRecord {
                conversation: g.id,
                user: b,
                inviter: a,
                created_ms: 1,
            })
            .await,
        "put_invitation",
    );
    assert!(
        ok(store.add_member(g.id, member(b)).await, "add_member"),
        "store conformance: add_member of a new member returns true"
    );
    assert!(
        !ok(store.add_member(g.id, member(b)).await, "add_member again"),
        "store conformance: add_member of a member returns false"
    );
    assert_eq!(
        ok(store.invitation(g.id, b).await, "invitation"),
        None,
        "store conformance: a direct add removes the pending invitation"
    );
    ok(store.add_member(g.id, member(c)).await, "add_member");
    let mut users: Vec<UserId> = ok(store.members(g.id).await, "members")
        .into_iter()
        .map(|m| m.user)
        .collect();
    users.sort();
    let mut want = vec![a, b, c];
    want.sort();
    assert_eq!(users, want, "store conformance: members after adds");
    assert_eq!(
        ok(store.departure(g.id, b).await, "departure"),
        None,
        "store conformance: no departure for a member"
    );
    ok(store.commit(batch(msgs(g.id, a, 1..=3))).await, "commit");
    assert_eq!(
        ok(store.remove_member(g.id, b).await, "remove_member"),
        Some(3),
        "store conformance: remove_member returns the last stored seq"
    );
    assert!(
        !ok(store.is_member(g.id, b).await, "is_member"),
        "store conformance: a removed user is no member"
    );
    assert!(
        !ok(store.conversations_of(b).await, "conversations_of").contains(&g.id),
        "store conformance: a removed user's conversations omit the group"
    );
    assert!(
        ok(store.members(g.id).await, "members")
            .iter()
            .all(|m| m.user != b),
        "store conformance: a removed user is not listed"
    );
    assert_eq!(
        ok(store.departure(g.id, b).await, "departure"),
        Some(3),
        "store conformance: the departure seq is kept"
    );
    assert_eq!(
        ok(store.remove_member(g.id, b).await, "remove_member again"),
        None,
        "store conformance: removing a non-member writes nothing"
    );
    assert_eq!(
        ok(store.departure(g.id, b).await, "departure"),
        Some(3),
        "store conformance: a second removal must not move the departure seq"
    );
    // Leaving an empty conversation records 0.
    let g2 = group(c);
    ok(
        store
            .create_named_group(g2.clone(), vec![owner(c)], "empty".to_owned())
            .await,
        "create_named_group",
    );
    assert_eq!(
        ok(store.remove_member(g2.id, c).await, "remove_member"),
        Some(0),
        "store conformance: departure from an empty conversation"
    );
    // Rejoining clears the departure.
    assert!(
        ok(store.add_member(g.id, member(b)).await, "re-add"),
        "store conformance: a former member can be added again"
    );
    assert_eq!(
        ok(store.departure(g.id, b).await, "departure"),
        None,
        "store conformance: rejoining clears the departure"
    );
    assert!(
        ok(store.conversations_of(b).await, "conversations_of").contains(&g.id),
        "store conformance: a re-added member's conversations list the group"
    );
}

/// `put_invitations`: every invitation stored and indexed per user, like `put_invitation`;
/// an empty list writes nothing and succeeds.
pub async fn check_bulk_invitations<S: Store>(store: S) {
    let a = UserId::random();
    let g = group(a);
    ok(
        store
            .create_named_group(g.clone(), vec![owner(a)], "bulk".to_owned())
            .await,
        "create_named_group",
    );
    ok(
        store.put_invitations(Vec::new()).await,
        "put_invitations([])",
    );
    let invitees: Vec<UserId> = (0..50).map(|_| UserId::random()).collect();
    let invitations: Vec<InvitationRecord> = invitees
        .iter()
        .map(|&user| InvitationRecord {
            conversation: g.id,
            user,
            inviter: a,
            created_ms: 7,
        })
        .collect();
    ok(
        store.put_invitations(invitations.clone()).await,
        "put_invitations",
    );
    for i in &invitations {
        assert_eq!(
            ok(store.invitation(g.id, i.user).await, "invitation"),
            Some(*i),
            "store conformance: a bulk invitation is readable"
        );
        assert_eq!(
            ok(store.invitations_of(i.user).await, "invitations_of"),
            vec![*i],
            "store conformance: a bulk invitation is listed for its user"
        );
        assert!(
            !ok(store.is_member(g.id, i.user).await, "is_member"),
            "store conformance: an invitation does not make a member"
        );
    }
    // Putting again replaces, it does not duplicate.
    ok(
        store.put_invitations(invitations[..1].to_vec()).await,
        "put_invitations again",
    );
    assert_eq!(
        ok(store.invitations_of(invitees[0]).await, "invitations_of").len(),
        1
    );
}

/// Blocks are directed, idempotent, listed both ways, and lifted cleanly.
pub async fn check_blocks<S: Store>(store: S) {
    let (a, b, c) = (UserId::random(), UserId::random(), UserId::random());
    assert!(!ok(store.is_blocked(a, b).await, "is_blocked"));
    assert!(
        ok(store.set_block(a, b, true).await, "set_block"),
        "a new block changes"
    );
    assert!(
        !ok(store.set_block(a, b, true).await, "set_block again"),
        "store conformance: blocking twice changes nothing"
    );
    ok(store.set_block(a, c, true).await, "set_block");
    ok(store.set_block(c, b, true).await, "set_block");
    assert!(ok(store.is_blocked(a, b).await, "is_blocked"));
    assert!(
        !ok(store.is_blocked(b, a).await, "is_blocked reverse"),
        "store conformance: a block is directed"
    );
    let mut blocks = ok(store.blocks_of(a).await, "blocks_of");
    blocks.sort();
    let mut expected = vec![b, c];
    expected.sort();
    assert_eq!(
        blocks, expected,
        "store conformance: blocks_of lists whom a user blocks"
    );
    let mut blockers = ok(store.blockers_of(b).await, "blockers_of");
    blockers.sort();
    let mut expected = vec![a, c];
    expected.sort();
    assert_eq!(
        blockers, expected,
        "store conformance: blockers_of lists who blocks a user"
    );
    assert!(ok(store.blocks_of(b).await, "blocks_of").is_empty());
    assert!(
        ok(store.set_block(a, b, false).await, "unblock"),
        "unblocking changes"
    );
    assert!(
        !ok(store.set_block(a, b, false).await, "unblock again"),
        "store conformance: unblocking twice changes nothing"
    );
    assert!(!ok(
        store.is_blocked(a, b).await,
        "is_blocked after unblock"
    ));
    assert_eq!(ok(store.blocks_of(a).await, "blocks_of"), vec![c]);
    assert_eq!(ok(store.blockers_of(b).await, "blockers_of"), vec![c]);
}

// ---------------------------------------------------------------------------------------------
// Key store (end-to-end key directory, device inbox, key backup)

use super::keys::{
    BackupMeta, BackupPutOutcome, BackupSession, InboxPush, KeyStore, PublishOutcome, PublishedKeys,
};

/// Runs every key-store check, each on a store freshly made by `make`.
pub async fn run_all_keys<K: KeyStore, F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = K>,
{
    check_key_publish_and_query(make().await).await;
    check_key_claim_and_fallback(make().await).await;
    check_key_claim_race(Arc::new(make().await)).await;
    check_key_devices(make().await).await;
    check_key_inbox(make().await).await;
    check_key_backup(make().await).await;
}

fn identity(tag: u8) -> PublishedKeys {
    PublishedKeys {
        identity_key: vec![tag; 32],
        signing_key: vec![tag ^ 0x55; 32],
        signature: vec![tag ^ 0xaa; 64],
        one_time_keys: Vec::new(),
        fallback_key: Vec::new(),
    }
}

fn otks(from: u8, n: u8) -> Vec<Vec<u8>> {
    (from..from + n).map(|i| vec![i; 40]).collect()
}

/// Publish sets, keeps and replaces the identity; one-time keys append up to the limit (over it
/// nothing is written); query returns identity only.
pub async fn check_key_publish_and_query<K: KeyStore>(store: K) {
    let (user, device, other) = (UserId::random(), DeviceId::random(), DeviceId::random());
    let first = PublishedKeys {
        one_time_keys: otks(1, 3),
        fallback_key: vec![0xfb; 100],
        ..identity(1)
    };
    assert_eq!(
        ok(
            store.publish_keys(user, device, first, 5).await,
            "publish_keys"
        ),
        PublishOutcome::Stored {
            identity_changed: true,
            one_time_keys_left: 3
        },
        "key conformance: a first publish is an identity change"
    );
    let more = PublishedKeys {
        one_time_keys: otks(10, 2),
        ..identity(1)
    };
    assert_eq!(
        ok(
            store.publish_keys(user, device, more, 5).await,
            "publish_keys"
        ),
        PublishOutcome::Stored {
            identity_changed: false,
            one_time_keys_left: 5
        },
        "key conformance: the same identity again is no change; one-time keys append"
    );
    let over = PublishedKeys {
        one_time_keys: otks(20, 1),
        ..PublishedKeys::default()
    };
    assert_eq!(
        ok(
            store.publish_keys(user, device, over, 5).await,
            "publish_keys"
        ),
        PublishOutcome::TooManyOneTimeKeys { stored: 5, max: 5 },
        "key conformance: over the one-time key limit nothing is stored"
    );
    assert_eq!(ok(store.one_time_keys_left(device).await, "left"), 5);
    ok(
        store.publish_keys(user, other, identity(2), 5).await,
        "publish_keys",
    );
    let mut got = ok(store.query_keys(user).await, "query_keys");
    got.sort_by_key(|k| k.device);
    let mut want = vec![(device, 1u8), (other, 2u8)];
    want.sort_by_key(|(d, _)| *d);
    assert_eq!(got.len(), 2, "key conformance: query lists every device");
    for (k, (d, tag)) in got.iter().zip(want) {
        assert_eq!(k.device, d);
        assert_eq!(k.user, user);
        assert_eq!(k.identity_key, vec![tag; 32]);
        assert_eq!(k.signing_key, vec![tag ^ 0x55; 32]);
        assert_eq!(k.signature, vec![tag ^ 0xaa; 64]);
        assert!(
            k.one_time_keys.is_empty() && k.fallback_key.is_empty(),
            "key conformance: query returns identity only"
        );
    }
    // A reinstall: new identity replaces the old and its one-time keys.
    assert_eq!(
        ok(
            store.publish_keys(user, device, identity(3), 5).await,
            "publish_keys"
        ),
        PublishOutcome::Stored {
            identity_changed: true,
            one_time_keys_left: 0
        },
        "key conformance: a different identity replaces the stored one"
    );
    let got = ok(store.query_keys(user).await, "query_keys");
    assert!(got.iter().any(|k| k.identity_key == vec![3; 32]));
    assert!(
        ok(store.query_keys(UserId::random()).await, "query_keys").is_empty(),
        "key conformance: an unknown user has no devices"
    );
}

/// Claims pop one one-time key per device (each once), then return the fallback key, which is
/// never consumed; `consume == false` and device filters are honoured.
pub async fn check_key_claim_and_fallback<K: KeyStore>(store: K) {
    let (user, a, b) = (UserId::random(), DeviceId::random(), DeviceId::random());
    let keys = PublishedKeys {
        one_time_keys: otks(1, 2),
        fallback_key: vec![0xfb; 100],
        ..identity(1)
    };
    ok(store.publish_keys(user, a, keys, 100).await, "publish");
    ok(
        store
            .publish_keys(
                user,
                b,
                PublishedKeys {
                    fallback_key: vec![0xfc; 90],
                    ..identity(2)
                },
                100,
            )
            .await,
        "publish",
    );
    let only_a = |v: Vec<DeviceKeys>| v.into_iter().find(|k| k.device == a).expect("device a");
    let no_pop = only_a(ok(store.claim_keys(user, vec![a], false).await, "claim"));
    assert!(no_pop.one_time_keys.is_empty());
    assert_eq!(no_pop.fallback_key, vec![0xfb; 100]);
    assert_eq!(ok(store.one_time_keys_left(a).await, "left"), 2);
    let mut seen = BTreeSet::new();
    for _ in 0..2 {
        let got = ok(store.claim_keys(user, vec![], true).await, "claim");
        assert_eq!(got.len(), 2, "key conformance: claim covers every device");
        let ka = only_a(got.clone());
        assert_eq!(ka.one_time_keys.len(), 1);
        assert!(ka.fallback_key.is_empty());
        assert_eq!(ka.identity_key, vec![1; 32]);
        assert!(
            seen.insert(ka.one_time_keys[0].clone()),
            "a key is claimed once"
        );
        let kb = got.into_iter().find(|k| k.device == b).expect("device b");
        assert!(kb.one_time_keys.is_empty());
        assert_eq!(kb.fallback_key, vec![0xfc; 90]);
    }
    assert_eq!(ok(store.one_time_keys_left(a).await, "left"), 0);
    for _ in 0..2 {
        let ka = only_a(ok(store.claim_keys(user, vec![a], true).await, "claim"));
        assert!(ka.one_time_keys.is_empty());
        assert_eq!(
            ka.fallback_key,
            vec![0xfb; 100],
            "key conformance: the fallback key is returned and not consumed"
        );
    }
    let filtered = ok(store.claim_keys(user, vec![b], true).await, "claim");
    assert_eq!(filtered.len(), 1);
    assert_eq!(filtered[0].device, b);
}

/// 32 concurrent claims of a device holding 10 one-time keys: exactly 10 distinct keys are
/// handed out, the other 22 claims get the fallback key.
pub async fn check_key_claim_race<K: KeyStore>(store: Arc<K>) {
    let (user, device) = (UserId::random(), DeviceId::random());
    let keys = PublishedKeys {
        one_time_keys: otks(1, 10),
        fallback_key: vec![0xfb; 100],
        ..identity(1)
    };
    ok(store.publish_keys(user, device, keys, 100).await, "publish");
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.claim_keys(user, vec![device], true).await })
        })
        .collect();
    let (mut claimed, mut fallbacks) = (Vec::new(), 0);
    for t in tasks {
        let got = ok(t.await.expect("claim task"), "claim");
        assert_eq!(got.len(), 1);
        match got[0].one_time_keys.as_slice() {
            [one] => claimed.push(one.clone()),
            [] => {
                assert_eq!(got[0].fallback_key, vec![0xfb; 100]);
                fallbacks += 1;
            }
            more => panic!("key conformance: a claim returned {} keys", more.len()),
        }
    }
    let distinct: BTreeSet<_> = claimed.iter().cloned().collect();
    assert_eq!(
        claimed.len(),
        10,
        "key conformance: exactly 10 keys claimed"
    );
    assert_eq!(distinct.len(), 10, "key conformance: no key claimed twice");
    assert_eq!(fallbacks, 22);
}

/// The device list records first and last connection; deleting a device removes its keys and
/// inbox, only for its own user.
pub async fn check_key_devices<K: KeyStore>(store: K) {
    let (user, a, b) = (UserId::random(), DeviceId::random(), DeviceId::random());
    ok(store.note_device(user, a, 100).await, "note");
    ok(store.note_device(user, a, 200).await, "note");
    ok(store.note_device(user, b, 150).await, "note");
    let keys = PublishedKeys {
        one_time_keys: otks(1, 2),
        ..identity(7)
    };
    ok(store.publish_keys(user, a, keys, 100).await, "publish");
    let list = ok(store.devices_of(user).await, "devices_of");
    assert_eq!(list.len(), 2);
    let ea = list.iter().find(|d| d.device == a).expect("a listed");
    assert_eq!((ea.created_ms, ea.last_seen_ms), (100, 200));
    assert_eq!(ea.identity_key, vec![7; 32]);
    let eb = list.iter().find(|d| d.device == b).expect("b listed");
    assert!(eb.identity_key.is_empty());
    let push = InboxPush {
        to_device: a,
        from_user: user,
        from_device: b,
        payload: vec![1, 2, 3],
    };
    ok(store.push_inbox(vec![push], 1, 10).await, "push");
    assert!(
        !ok(store.delete_device(UserId::random(), a).await, "delete"),
        "key conformance: another user cannot delete the device"
    );
    assert!(ok(store.delete_device(user, a).await, "delete"));
    assert!(!ok(store.delete_device(user, a).await, "delete"));
    let list = ok(store.devices_of(user).await, "devices_of");
    assert_eq!(list.len(), 1);
    assert!(ok(store.query_keys(user).await, "query").is_empty());
    assert!(ok(store.claim_keys(user, vec![a], true).await, "claim").is_empty());
    assert_eq!(ok(store.one_time_keys_left(a).await, "left"), 0);
    assert!(ok(store.inbox(a, 0, 100).await, "inbox").is_empty());
}

/// The inbox hands out increasing ids, refuses beyond the bound per device, pages, deletes
/// acknowledged and expired entries (freeing room), and keeps ids growing after deletion.
pub async fn check_key_inbox<K: KeyStore>(store: K) {
    let (a, b, from) = (DeviceId::random(), DeviceId::random(), DeviceId::random());
    let user = UserId::random();
    let push = |to: DeviceId, tag: u8| InboxPush {
        to_device: to,
        from_user: user,
        from_device: from,
        payload: vec![tag; 10],
    };
    let ids = ok(
        store
            .push_inbox(
                vec![push(a, 1), push(a, 2), push(b, 3), push(a, 4)],
                1_000,
                3,
            )
            .await,
        "push",
    );
    assert_eq!(ids, vec![Some(1), Some(2), Some(1), Some(3)]);
    let full = ok(
        store
            .push_inbox(vec![push(a, 5), push(b, 6)], 2_000, 3)
            .await,
        "push",
    );
    assert_eq!(
        full,
        vec![None, Some(2)],
        "key conformance: a full inbox refuses"
    );
    let got = ok(store.inbox(a, 0, 100).await, "inbox");
    assert_eq!(
        got.iter().map(|e| e.inbox_id).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(got[1].payload, vec![2; 10]);
    assert_eq!((got[1].from_user, got[1].from_device), (user, from));
    assert_eq!(got[0].created_ms, 1_000);
    let page = ok(store.inbox(a, 1, 1).await, "inbox");
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].inbox_id, 2);
    assert_eq!(
        ok(store.ack_inbox(a, vec![2, 1, 2, 99]).await, "ack"),
        2,
        "key conformance: exactly the listed stored ids are deleted"
    );
    assert_eq!(ok(store.ack_inbox(a, vec![1, 2]).await, "ack"), 0);
    let got = ok(store.inbox(a, 0, 100).await, "inbox");
    assert_eq!(got.iter().map(|e| e.inbox_id).collect::<Vec<_>>(), vec![3]);
    let ids = ok(store.push_inbox(vec![push(a, 7)], 3_000, 3).await, "push");
    assert_eq!(
        ids,
        vec![Some(4)],
        "key conformance: ids keep growing after acks"
    );
    assert_eq!(ok(store.expire_inbox(b, 1_500).await, "expire"), 1);
    let got = ok(store.inbox(b, 0, 100).await, "inbox");
    assert_eq!(got.iter().map(|e| e.inbox_id).collect::<Vec<_>>(), vec![2]);
}

/// Backup: header put/get, a new version drops old entries, upserts count once, stale
/// versions and missing backups refuse, the entry limit refuses as a whole, paging and the
/// conversation filter, and users never see each other's entries.
pub async fn check_key_backup<K: KeyStore>(store: K) {
    let (alice, bob) = (UserId::random(), UserId::random());
    let (c1, c2) = (ConversationId(1), ConversationId(2));
    let entry = |c: ConversationId, sid: &str| BackupSession {
        conversation: c,
        session_id: sid.to_owned(),
        data: sid.as_bytes().to_vec(),
    };
    assert_eq!(ok(store.backup(alice).await, "backup"), None);
    assert_eq!(
        ok(
            store
                .put_backup_sessions(alice, "v1".into(), vec![entry(c1, "s")], 10)
                .await,
            "put sessions"
        ),
        BackupPutOutcome::NoBackup
    );
    let v1 = BackupMeta {
        version: "v1".into(),
        meta: vec![1, 2, 3],
    };
    ok(store.put_backup(alice, v1.clone()).await, "put backup");
    assert_eq!(ok(store.backup(alice).await, "backup"), Some(v1));
    assert_eq!(ok(store.backup(bob).await, "backup"), None);
    let batch = vec![
        entry(c1, "a"),
        entry(c1, "b"),
        entry(c2, "a"),
        entry(c1, "a"),
    ];
    assert_eq!(
        ok(
            store
                .put_backup_sessions(alice, "v1".into(), batch, 10)
                .await,
            "put sessions"
        ),
        BackupPutOutcome::Stored { total: 3 }
    );
    assert_eq!(
        ok(
            store
                .put_backup_sessions(alice, "v0".into(), vec![entry(c1, "z")], 10)
                .await,
            "put sessions"
        ),
        BackupPutOutcome::StaleVersion
    );
    assert_eq!(
        ok(
            store
                .put_backup_sessions(alice, "v1".into(), vec![entry(c2, "x"), entry(c2, "y")], 4)
                .await,
            "put sessions"
        ),
        BackupPutOutcome::TooMany { max: 4 },
        "key conformance: over the entry limit nothing is stored"
    );
    let all = ok(store.backup_sessions(alice, None, None, 100).await, "list");
    let keys: Vec<_> = all
        .iter()
        .map(|s| (s.conversation, s.session_id.as_str()))
        .collect();
    assert_eq!(keys, vec![(c1, "a"), (c1, "b"), (c2, "a")]);
    let page = ok(store.backup_sessions(alice, None, None, 2).await, "list");
    assert_eq!(page.len(), 2);
    let rest = ok(
        store
            .backup_sessions(alice, None, Some((c1, "b".into())), 2)
            .await,
        "list",
    );
    assert_eq!(rest, vec![entry(c2, "a")]);
    let only_c1 = ok(
        store.backup_sessions(alice, Some(c1), None, 100).await,
        "list",
    );
    assert_eq!(only_c1.len(), 2);
    assert!(
        ok(store.backup_sessions(bob, None, None, 100).await, "list").is_empty(),
        "key conformance: another user's entries are never listed"
    );
    // A new version starts empty.
    ok(
        store
            .put_backup(
                alice,
                BackupMeta {
                    version: "v2".into(),
                    meta: vec![],
                },
            )
            .await,
        "put backup",
    );
    assert!(ok(store.backup_sessions(alice, None, None, 100).await, "list").is_empty());
    assert_eq!(
        ok(
            store
                .put_backup_sessions(alice, "v2".into(), vec![entry(c1, "a")], 10)
                .await,
            "put sessions"
        ),
        BackupPutOutcome::Stored { total: 1 }
    );
}

// ---------------------------------------------------------------------------------------------
// File store (upload metadata, quota counter, references, sweeper queries; issue 13)

use super::files::{
    CreateOutcome, DeleteIf, FileStore, FileUsage, UploadLimits, UploadRecord, UploadState,
};

/// Runs every file-store check, each on a store freshly made by `make`.
pub async fn run_all_files<F2: FileStore, F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = F2>,
{
    check_file_lifecycle(make().await).await;
    check_file_limits(make().await).await;
    check_file_sweep_and_listing(make().await).await;
    check_file_quota_race(Arc::new(make().await)).await;
}

fn upload_of(owner: UserId, conversation: ConversationId, size: u64, at: u64) -> UploadRecord {
    UploadRecord {
        id: MessageId::random(),
        owner,
        conversation,
        size,
        content_type: "image/png".into(),
        offset: 0,
        state: UploadState::Staging,
        referenced: false,
        created_ms: at,
        updated_ms: at,
    }
}

const ROOMY: UploadLimits = UploadLimits {
    quota_bytes: 1 << 40,
    max_open: 100,
};

/// Create → progress → finish → reference → delete, with the usage counter following.
pub async fn check_file_lifecycle<F: FileStore>(store: F) {
    let (alice, c) = (UserId::random(), ConversationId::random());
    let r = upload_of(alice, c, 1000, 10);
    assert_eq!(
        ok(store.create_upload(r.clone(), ROOMY).await, "create"),
        CreateOutcome::Created
    );
    assert!(
        matches!(
            store.create_upload(r.clone(), ROOMY).await,
            Err(StoreError::AlreadyExists(_))
        ),
        "a taken id is AlreadyExists"
    );
    assert_eq!(
        ok(store.usage(alice).await, "usage"),
        FileUsage {
            bytes: 1000,
            open: 1
        }
    );
    assert_eq!(ok(store.upload(r.id).await, "upload"), Some(r.clone()));
    assert!(!ok(store.finish_upload(r.id, 20).await, "finish early"));
    assert!(!ok(store.reference(r.id).await, "reference in staging"));
    assert!(!ok(store.set_offset(r.id, 1001, 20).await, "past the size"));
    assert!(ok(store.set_offset(r.id, 400, 20).await, "offset"));
    assert!(ok(store.set_offset(r.id, 1000, 30).await, "offset"));
    let got = ok(store.upload(r.id).await, "upload").expect("present");
    assert_eq!((got.offset, got.updated_ms), (1000, 30));
    assert!(ok(store.finish_upload(r.id, 40).await, "finish"));
    assert!(!ok(store.finish_upload(r.id, 41).await, "finish twice"));
    assert!(!ok(
        store.set_offset(r.id, 10, 50).await,
        "offset once finished"
    ));
    let got = ok(store.upload(r.id).await, "upload").expect("present");
    assert_eq!((got.state, got.updated_ms), (UploadState::Finished, 40));
    assert_eq!(
        ok(store.usage(alice).await, "usage"),
        FileUsage {
            bytes: 1000,
            open: 0
        },
        "a finished upload still counts its bytes, not an open slot"
    );
    assert!(
        ok(store.delete_upload(r.id, DeleteIf::Staging).await, "delete").is_none(),
        "a finished file is not deleted as staging"
    );
    assert!(ok(store.reference(r.id).await, "reference"));
    assert!(ok(store.reference(r.id).await, "reference is idempotent"));
    assert!(
        ok(
            store
                .delete_upload(r.id, DeleteIf::UnreferencedSince(u64::MAX))
                .await,
            "delete"
        )
        .is_none(),
        "a referenced file is never swept"
    );
    let deleted = ok(store.delete_upload(r.id, DeleteIf::Always).await, "delete");
    assert_eq!(deleted.map(|d| d.id), Some(r.id));
    assert_eq!(ok(store.upload(r.id).await, "upload"), None);
    assert_eq!(ok(store.usage(alice).await, "usage"), FileUsage::default());
    assert!(ok(store.conversation_files(c, 10).await, "list").is_empty());
    assert!(!ok(
        store.set_offset(r.id, 1, 1).await,
        "offset of a deleted upload"
    ));
}

/// The quota counts declared sizes of open and finished uploads; the open-upload limit counts
/// staging ones; refusals write nothing; deletions give both back.
pub async fn check_file_limits<F: FileStore>(store: F) {
    let (alice, bob, c) = (UserId::random(), UserId::random(), ConversationId::random());
    let limits = UploadLimits {
        quota_bytes: 1000,
        max_open: 2,
    };
    let a = upload_of(alice, c, 600, 1);
    assert_eq!(
        ok(store.create_upload(a.clone(), limits).await, "create"),
        CreateOutcome::Created
    );
    let over = upload_of(alice, c, 401, 1);
    assert_eq!(
        ok(store.create_upload(over.clone(), limits).await, "create"),
        CreateOutcome::QuotaExceeded { used: 600 }
    );
    assert_eq!(ok(store.upload(over.id).await, "upload"), None);
    let huge = upload_of(alice, c, u64::MAX, 1);
    assert_eq!(
        ok(store.create_upload(huge, limits).await, "create"),
        CreateOutcome::QuotaExceeded { used: 600 },
        "no overflow"
    );
    let b = upload_of(alice, c, 400, 1);
    assert_eq!(
        ok(store.create_upload(b.clone(), limits).await, "create"),
        CreateOutcome::Created,
        "exactly the quota fits"
    );
    let third = upload_of(alice, c, 0, 1);
    assert_eq!(
        ok(store.create_upload(third, limits).await, "create"),
        CreateOutcome::TooManyOpen
    );
    // Another user has a quota of their own.
    assert_eq!(
        ok(
            store
                .create_upload(upload_of(bob, c, 1000, 1), limits)
                .await,
            "create"
        ),
        CreateOutcome::Created
    );
    ok(store.set_offset(b.id, 400, 2).await, "offset");
    ok(store.finish_upload(b.id, 3).await, "finish");
    // One open slot free again, but no bytes.
    assert_eq!(
        ok(
            store.create_upload(upload_of(alice, c, 1, 4), limits).await,
            "create"
        ),
        CreateOutcome::QuotaExceeded { used: 1000 }
    );
    ok(store.delete_upload(a.id, DeleteIf::Staging).await, "delete").expect("deleted");
    assert_eq!(
        ok(store.usage(alice).await, "usage"),
        FileUsage {
            bytes: 400,
            open: 0
        }
    );
    assert_eq!(
        ok(
            store
                .create_upload(upload_of(alice, c, 600, 5), limits)
                .await,
            "create"
        ),
        CreateOutcome::Created
    );
}

/// Sweeper queries find exactly the expired staging uploads and unreferenced finished files;
/// conditional deletes lose to newer progress; listings show referenced files only.
pub async fn check_file_sweep_and_listing<F: FileStore>(store: F) {
    let (alice, c, other) = (
        UserId::random(),
        ConversationId::random(),
        ConversationId::random(),
    );
    let idle = upload_of(alice, c, 10, 100);
    let fresh = upload_of(alice, c, 10, 500);
    let done = upload_of(alice, c, 10, 100);
    let kept = upload_of(alice, c, 10, 100);
    let elsewhere = upload_of(alice, other, 10, 100);
    for r in [&idle, &fresh, &done, &kept, &elsewhere] {
        ok(store.create_upload(r.clone(), ROOMY).await, "create");
    }
    for (r, at) in [(&done, 150), (&kept, 160), (&elsewhere, 170)] {
        ok(store.set_offset(r.id, 10, at).await, "offset");
        assert!(ok(store.finish_upload(r.id, at).await, "finish"));
    }
    assert!(ok(store.reference(kept.id).await, "reference"));
    assert!(ok(store.reference(elsewhere.id).await, "reference"));
    let ids = |v: Vec<UploadRecord>| v.into_iter().map(|r| r.id).collect::<BTreeSet<_>>();
    assert_eq!(
        ids(ok(store.sweepable(200, 200, 100).await, "sweepable")),
        BTreeSet::from([idle.id, done.id])
    );
    assert_eq!(
        ids(ok(store.sweepable(200, 150, 100).await, "sweepable")),
        BTreeSet::from([idle.id]),
        "the bound is exclusive"
    );
    assert_eq!(
        ok(store.sweepable(u64::MAX, u64::MAX, 1).await, "limit").len(),
        1
    );
    // Progress after the sweep read it: the conditional delete refuses.
    ok(store.set_offset(idle.id, 5, 300).await, "offset");
    assert!(
        ok(
            store
                .delete_upload(idle.id, DeleteIf::StagingIdleSince(200))
                .await,
            "delete"
        )
        .is_none()
    );
    assert!(
        ok(
            store
                .delete_upload(done.id, DeleteIf::UnreferencedSince(200))
                .await,
            "delete"
        )
        .is_some()
    );
    assert_eq!(
        ids(ok(store.sweepable(250, 250, 100).await, "sweepable")),
        BTreeSet::new()
    );
    let listed = ok(store.conversation_files(c, 10).await, "list");
    assert_eq!(
        listed.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![kept.id]
    );
    assert_eq!(listed[0].state, UploadState::Finished);
    assert!(listed[0].referenced);
    assert_eq!(
        ok(store.conversation_files(other, 10).await, "list").len(),
        1
    );
    // The newest `limit`, oldest first.
    let mut later = Vec::new();
    for at in [1000u64, 2000, 3000] {
        let r = upload_of(alice, c, 1, at);
        ok(store.create_upload(r.clone(), ROOMY).await, "create");
        ok(store.set_offset(r.id, 1, at).await, "offset");
        ok(store.finish_upload(r.id, at).await, "finish");
        ok(store.reference(r.id).await, "reference");
        later.push(r.id);
    }
    let listed = ok(store.conversation_files(c, 2).await, "list");
    assert_eq!(
        listed.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![later[1], later[2]]
    );
}

/// Concurrent creations never pass the quota together.
pub async fn check_file_quota_race<F: FileStore>(store: Arc<F>) {
    let (alice, c) = (UserId::random(), ConversationId::random());
    let limits = UploadLimits {
        quota_bytes: 1000,
        max_open: 1000,
    };
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                store
                    .create_upload(upload_of(alice, c, 100, 1), limits)
                    .await
            })
        })
        .collect();
    let mut created = 0;
    for t in tasks {
        if let Ok(Ok(CreateOutcome::Created)) = t.await {
            created += 1;
        }
    }
    assert_eq!(
        created, 10,
        "exactly the quota's worth of uploads is created"
    );
    assert_eq!(
        ok(store.usage(alice).await, "usage"),
        FileUsage {
            bytes: 1000,
            open: 10
        }
    );
}
