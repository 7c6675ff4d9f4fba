//! Reactions and emoji text end to end against the real `tern` binary, over both transports.

mod common;

use std::time::Duration;

use base64::Engine as _;
use common::*;
use tern_sdk::tern_wire::ids::{ConversationId, DeviceId, UserId};
use tern_sdk::tern_wire::msg::{ClientMessage, ErrorCode, Message, ReactionCount, ServerMessage};
use tern_sdk::{Connection, Error, Event, HistoryQuery, TransportPref};

/// Generates `mod ws` and `mod wt` with one test per scenario, so every scenario runs over both
/// transports.
macro_rules! over_both_transports {
    ($($name:ident),* $(,)?) => {
        mod ws {
            $(#[tokio::test] async fn $name() { super::$name(tern_sdk::TransportPref::WebSocket).await })*
        }
        mod wt {
            $(#[tokio::test] async fn $name() { super::$name(tern_sdk::TransportPref::WebTransport).await })*
        }
    };
}

over_both_transports!(
    emoji_text_round_trips_byte_exact,
    a_reaction_reaches_the_other_member_live_and_adding_twice_counts_once,
    two_users_count_two_and_removal_is_live_and_gone_from_history,
    invalid_emoji_is_refused,
    non_members_cannot_react,
    a_reaction_beyond_the_last_message_is_refused,
    zwj_flag_skin_tone_and_keycap_are_accepted_and_persist_across_restart,
    reactions_per_user_per_message_are_limited,
);

/// A live reaction as `(conversation, seq, user, emoji, add)`.
type Live = (ConversationId, u64, UserId, String, bool);

async fn react(
    conn: &Connection,
    conversation: ConversationId,
    seq: u64,
    emoji: &str,
    add: bool,
) -> Result<(), Error> {
    let reply = tokio::time::timeout(
        WAIT,
        conn.request(|request_id| ClientMessage::React {
            request_id,
            conversation,
            seq,
            emoji: emoji.to_owned(),
            add,
        }),
    )
    .await
    .expect("reply in time")?;
    match reply {
        ServerMessage::Ok { .. } => Ok(()),
        other => panic!("expected Ok, got {other:?}"),
    }
}

fn refused_with(result: Result<(), Error>, code: ErrorCode) {
    match result {
        Err(Error::Server {
            code: got,
            fatal: false,
            ..
        }) => assert_eq!(got, code),
        other => panic!("expected a non-fatal {code:?}, got {other:?}"),
    }
}

/// A history page over the socket with its reactions.
async fn page(
    conn: &Connection,
    conversation: ConversationId,
) -> (Vec<Message>, Vec<ReactionCount>) {
    let reply = tokio::time::timeout(
        WAIT,
        conn.request(|request_id| ClientMessage::History {
            request_id,
            conversation,
            before_seq: 0,
            after_seq: 0,
            limit: 100,
            around_seq: 0,
            since_ms: 0,
            until_ms: 0,
            sender: None,
        }),
    )
    .await
    .expect("history in time")
    .expect("history");
    match reply {
        ServerMessage::HistoryPage {
            conversation: c,
            messages,
            reactions,
            ..
        } => {
            assert_eq!(c, conversation);
            (messages, reactions)
        }
        other => panic!("expected HistoryPage, got {other:?}"),
    }
}

async fn reactions_of(conn: &Connection, conversation: ConversationId) -> Vec<ReactionCount> {
    page(conn, conversation).await.1
}

/// The next live reaction, skipping everything else.
async fn next_reaction(conn: &mut Connection) -> Live {
    loop {
        match next(conn).await {
            Event::Other(ServerMessage::Reaction {
                conversation,
                seq,
                user,
                emoji,
                add,
            }) => return (conversation, seq, user, emoji, add),
            Event::Deliver(_) | Event::SyncComplete | Event::Other(_) => {}
            other => panic!("expected a reaction, got {other:?}"),
        }
    }
}

/// Asserts no reaction arrives for a short while.
async fn assert_no_reaction(conn: &mut Connection) {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(400);
    loop {
        match tokio::time::timeout_at(deadline, conn.next_event()).await {
            Err(_) => return,
            Ok(Some(Event::Other(r @ ServerMessage::Reaction { .. }))) => {
                panic!("expected no reaction, got {r:?}")
            }
            Ok(Some(Event::Closed(reason))) => panic!("connection closed: {reason:?}"),
            Ok(None) => panic!("connection closed"),
            Ok(Some(_)) => {}
        }
    }
}

fn count(seq: u64, emoji: &str, users: &[UserId]) -> ReactionCount {
    let mut users = users.to_vec();
    users.sort();
    ReactionCount {
        seq,
        emoji: emoji.to_owned(),
        count: users.len() as u32,
        users,
    }
}

/// Alice and Bob connected and synced, with one message from Alice (seq 1) that Bob received.
async fn chat_with_one_message(
    server: &TestServer,
    transport: TransportPref,
) -> (TestUser, TestUser, ConversationId, Connection, Connection) {
    let (alice, bob, conversation) = alice_and_bob(server).await;
    let (alice_conn, _) = connect_synced(server, transport, &alice, DeviceId::random()).await;
    let (mut bob_conn, _) = connect_synced(server, transport, &bob, DeviceId::random()).await;
    let receipt = alice_conn
        .send(conversation, 1, "text", text("react to me"))
        .await
        .expect("send");
    assert_eq!(receipt.seq, 1);
    assert_eq!(next_message(&mut bob_conn).await.seq, 1);
    (alice, bob, conversation, alice_conn, bob_conn)
}

async fn emoji_text_round_trips_byte_exact(transport: TransportPref) {
    let server = TestServer::start().await;
    let (alice, bob, conversation) = alice_and_bob(&server).await;
    let (alice_conn, _) = connect_synced(&server, transport, &alice, DeviceId::random()).await;
    let (mut bob_conn, _) = connect_synced(&server, transport, &bob, DeviceId::random()).await;
    let texts: Vec<Vec<u8>> = vec![
        "family 👨‍👩‍👧‍👦 flag 🇫🇷 tone 👍🏽 keycap #️⃣ tag 🏴󠁧󠁢󠁳󠁣󠁴󠁿 rainbow 🏳️‍🌈"
            .as_bytes()
            .to_vec(),
        "e\u{301} (combining) vs é, 中文, עברית, \u{200D}\u{FE0F} alone, 𝔘𝔫𝔦𝔠𝔬𝔡𝔢"
            .as_bytes()
            .to_vec(),
        // Not UTF-8 at all: payloads are opaque bytes.
        vec![0xF0, 0x9F, 0x98, 0x00, 0xFF, 0xC0, 0x80, 0xED, 0xA0, 0x80],
    ];
    for (i, payload) in texts.iter().enumerate() {
        let receipt = alice_conn
            .send(
                conversation,
                i as u128 + 1,
                "text/plain; charset=utf-8",
                payload.clone(),
            )
            .await
            .expect("send");
        let got = next_message(&mut bob_conn).await;
        assert_eq!(got.seq, receipt.seq);
        assert_eq!(&got.payload, payload, "live delivery is byte-exact");
        assert_eq!(got.content_type, "text/plain; charset=utf-8");
    }
    // History over the socket.
    let (messages, _) = page(&bob_conn, conversation).await;
    let got: Vec<Vec<u8>> = messages.into_iter().map(|m| m.payload).collect();
    assert_eq!(got, texts, "socket history is byte-exact");
    // History over HTTPS (base64).
    let view = bob
        .http
        .history(conversation, HistoryQuery::default())
        .await
        .expect("http history");
    let got: Vec<Vec<u8>> = view
        .messages
        .iter()
        .map(|m| {
            base64::engine::general_purpose::STANDARD
                .decode(&m.payload_b64)
                .expect("base64")
        })
        .collect();
    assert_eq!(got, texts, "HTTP history is byte-exact");
    // Resume replay on a fresh device.
    let (_fresh, replayed) = connect_synced(&server, transport, &bob, DeviceId::random()).await;
    let got: Vec<Vec<u8>> = replayed.into_iter().map(|m| m.payload).collect();
    assert_eq!(got, texts, "replay is byte-exact");
}

async fn a_reaction_reaches_the_other_member_live_and_adding_twice_counts_once(
    transport: TransportPref,
) {
    let server = TestServer::start().await;
    let (alice, _bob, conversation, mut alice_conn, mut bob_conn) =
        chat_with_one_message(&server, transport).await;

    react(&alice_conn, conversation, 1, "👍", true)
        .await
        .expect("react");
    let expected = (conversation, 1, alice.id, "👍".to_owned(), true);
    assert_eq!(next_reaction(&mut bob_conn).await, expected);
    // The reacting user's own devices follow too.
    assert_eq!(next_reaction(&mut alice_conn).await, expected);

    // Again: accepted, but nothing changes and nothing is announced.
    react(&alice_conn, conversation, 1, "👍", true)
        .await
        .expect("react twice");
    assert_no_reaction(&mut bob_conn).await;
    assert_eq!(
        reactions_of(&bob_conn, conversation).await,
        vec![count(1, "👍", &[alice.id])]
    );
}

async fn two_users_count_two_and_removal_is_live_and_gone_from_history(transport: TransportPref) {
    let server = TestServer::start().await;
    let (alice, bob, conversation, mut alice_conn, mut bob_conn) =
        chat_with_one_message(&server, transport).await;

    react(&alice_conn, conversation, 1, "🎉", true)
        .await
        .expect("alice reacts");
    assert_eq!(next_reaction(&mut bob_conn).await.2, alice.id);
    react(&bob_conn, conversation, 1, "🎉", true)
        .await
        .expect("bob reacts");
    assert_eq!(
        next_reaction(&mut bob_conn).await,
        (conversation, 1, bob.id, "🎉".to_owned(), true),
        "bob's device sees his own"
    );
    assert_eq!(
        next_reaction(&mut alice_conn).await,
        (conversation, 1, alice.id, "🎉".to_owned(), true),
        "alice first sees her own"
    );
    assert_eq!(
        next_reaction(&mut alice_conn).await,
        (conversation, 1, bob.id, "🎉".to_owned(), true)
    );
    let both = vec![count(1, "🎉", &[alice.id, bob.id])];
    assert_eq!(reactions_of(&alice_conn, conversation).await, both);
    assert_eq!(reactions_of(&bob_conn, conversation).await, both);
    // The SDK's history call carries them too.
    let sdk_page = bob_conn
        .history(conversation, 0, 0, 100)
        .await
        .expect("sdk history");
    assert_eq!(sdk_page.reactions, both);
    // And the HTTPS API's history page.
    let http_page = bob
        .http
        .history(conversation, tern_sdk::HistoryQuery::default())
        .await
        .expect("http history");
    assert_eq!(http_page.reactions.len(), 1);
    assert_eq!(
        (
            http_page.reactions[0].seq,
            http_page.reactions[0].emoji.as_str()
        ),
        (1, "🎉")
    );
    assert_eq!(http_page.reactions[0].count, 2);

    // Alice takes hers back: Bob sees it live, history counts one.
    react(&alice_conn, conversation, 1, "🎉", false)
        .await
        .expect("remove");
    assert_eq!(
        next_reaction(&mut bob_conn).await,
        (conversation, 1, alice.id, "🎉".to_owned(), false)
    );
    assert_eq!(
        reactions_of(&bob_conn, conversation).await,
        vec![count(1, "🎉", &[bob.id])]
    );
    // Removing again (or one never added) is a no-op: Ok, nothing announced.
    react(&alice_conn, conversation, 1, "🎉", false)
        .await
        .expect("remove twice");
    react(&alice_conn, conversation, 1, "😀", false)
        .await
        .expect("remove never added");
    assert_no_reaction(&mut bob_conn).await;
    // Bob's goes too: nothing left.
    react(&bob_conn, conversation, 1, "🎉", false)
        .await
        .expect("bob removes");
    let live = next_reaction(&mut alice_conn).await;
    // Alice may still have her own removal queued first.
    let live = if live.2 == alice.id {
        next_reaction(&mut alice_conn).await
    } else {
        live
    };
    assert_eq!(live, (conversation, 1, bob.id, "🎉".to_owned(), false));
    assert!(reactions_of(&bob_conn, conversation).await.is_empty());
}

async fn invalid_emoji_is_refused(transport: TransportPref) {
    let server = TestServer::start().await;
    let (_alice, _bob, conversation, alice_conn, mut bob_conn) =
        chat_with_one_message(&server, transport).await;
    let hundred_chars = "x".repeat(100);
    let hundred_emoji = "😀".repeat(100);
    for bad in [
        "a",
        "",
        hundred_chars.as_str(),
        hundred_emoji.as_str(),
        "hello",
        "1",
        "👍👍",
        "👍 ",
        "🇫",
    ] {
        refused_with(
            react(&alice_conn, conversation, 1, bad, true).await,
            ErrorCode::InvalidArgument,
        );
    }
    // Removal validates too.
    refused_with(
        react(&alice_conn, conversation, 1, "a", false).await,
        ErrorCode::InvalidArgument,
    );
    assert_no_reaction(&mut bob_conn).await;
    assert!(reactions_of(&bob_conn, conversation).await.is_empty());
    // The connection keeps working.
    react(&alice_conn, conversation, 1, "👍", true)
        .await
        .expect("a valid one after the refusals");
}

async fn non_members_cannot_react(transport: TransportPref) {
    let server = TestServer::start().await;
    let (_alice, _bob, conversation, _alice_conn, mut bob_conn) =
        chat_with_one_message(&server, transport).await;
    let carol = user(&server, "carol").await;
    let (carol_conn, _) = connect_synced(&server, transport, &carol, DeviceId::random()).await;
    refused_with(
        react(&carol_conn, conversation, 1, "👍", true).await,
        ErrorCode::NotFound,
    );
    refused_with(
        react(&carol_conn, conversation, 1, "👍", false).await,
        ErrorCode::NotFound,
    );
    // A conversation that does not exist answers the same.
    refused_with(
        react(&carol_conn, ConversationId::random(), 1, "👍", true).await,
        ErrorCode::NotFound,
    );
    assert_no_reaction(&mut bob_conn).await;
    assert!(reactions_of(&bob_conn, conversation).await.is_empty());
}

async fn a_reaction_beyond_the_last_message_is_refused(transport: TransportPref) {
    let server = TestServer::start().await;
    let (_alice, _bob, conversation, alice_conn, mut bob_conn) =
        chat_with_one_message(&server, transport).await;
    for seq in [0, 2, u64::MAX] {
        refused_with(
            react(&alice_conn, conversation, seq, "👍", true).await,
            ErrorCode::NotFound,
        );
    }
    assert_no_reaction(&mut bob_conn).await;
    assert!(reactions_of(&bob_conn, conversation).await.is_empty());
}

async fn zwj_flag_skin_tone_and_keycap_are_accepted_and_persist_across_restart(
    transport: TransportPref,
) {
    let mut server = TestServer::start().await;
    let (alice, bob, conversation, alice_conn, mut bob_conn) =
        chat_with_one_message(&server, transport).await;
    let accepted = ["👨‍👩‍👧‍👦", "🇫🇷", "👍🏽", "#️⃣"];
    for emoji in accepted {
        react(&alice_conn, conversation, 1, emoji, true)
            .await
            .unwrap_or_else(|e| panic!("{emoji:?} refused: {e}"));
        let live = next_reaction(&mut bob_conn).await;
        assert_eq!(live.3.as_bytes(), emoji.as_bytes(), "emoji is byte-exact");
    }
    let mut expected: Vec<ReactionCount> =
        accepted.iter().map(|e| count(1, e, &[alice.id])).collect();
    expected.sort_by(|a, b| a.emoji.as_bytes().cmp(b.emoji.as_bytes()));
    assert_eq!(reactions_of(&bob_conn, conversation).await, expected);

    drop((alice_conn, bob_conn));
    server.restart().await;
    let (bob_conn, _) = connect_synced(&server, transport, &bob, DeviceId::random()).await;
    assert_eq!(
        reactions_of(&bob_conn, conversation).await,
        expected,
        "reactions are durable"
    );
}

async fn reactions_per_user_per_message_are_limited(transport: TransportPref) {
    let server = TestServer::start().await;
    let (_alice, _bob, conversation, alice_conn, _bob_conn) =
        chat_with_one_message(&server, transport).await;
    let emoji = [
        "😀", "😁", "😂", "🤣", "😃", "😄", "😅", "😆", "😉", "😊", "😋",
    ];
    for e in &emoji[..10] {
        react(&alice_conn, conversation, 1, e, true)
            .await
            .expect("within the limit");
    }
    refused_with(
        react(&alice_conn, conversation, 1, emoji[10], true).await,
        ErrorCode::LimitExceeded,
    );
    // One already present is still fine (idempotent), and removing frees a slot.
    react(&alice_conn, conversation, 1, emoji[0], true)
        .await
        .expect("present one");
    react(&alice_conn, conversation, 1, emoji[0], false)
        .await
        .expect("remove");
    react(&alice_conn, conversation, 1, emoji[10], true)
        .await
        .expect("a slot was freed");
    assert_eq!(reactions_of(&alice_conn, conversation).await.len(), 10);
}
