//! Server history against the real `tern` binary over real TLS (issue 14): pages around a seq,
//! by time and by sender, over the socket (both transports) and HTTPS; only for members, and
//! for a removed member never past the removal; bounded pages refused past the limit.

mod common;

use common::*;
use tern_sdk::tern_wire::api::HistoryPageView;
use tern_sdk::tern_wire::ids::{ConversationId, UserId};
use tern_sdk::tern_wire::msg::{ClientMessage, Message, ServerMessage};
use tern_sdk::{Connection, Error, HistoryPage, HistoryQuery, HttpApi, TransportPref};

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
    an_around_page_holds_the_messages_before_and_after_a_seq,
    pages_by_time_and_by_sender_hold_exactly_those_messages,
    a_non_member_gets_nothing_in_any_form,
    a_removed_member_reads_nothing_after_the_removal_in_any_form,
    pages_past_the_limit_and_misused_forms_are_refused,
);

/// A server that lets one address register several users.
async fn server() -> TestServer {
    TestServer::start_with(&[
        "login_attempts_per_address = 1000000",
        "registrations_per_address = 1000000",
        "registrations_per_window = 1000000",
    ])
    .await
}

fn seqs(messages: &[Message]) -> Vec<u64> {
    messages.iter().map(|m| m.seq).collect()
}

fn view_seqs(page: &HistoryPageView) -> Vec<u64> {
    page.messages.iter().map(|m| m.seq).collect()
}

fn range(lo: u64, hi: u64) -> Vec<u64> {
    (lo..=hi).collect()
}

/// Sends `n` messages as `conn`, client ids from `first_id`, each acknowledged.
async fn send_n(conn: &Connection, conversation: ConversationId, first_id: u128, n: u128) {
    for id in first_id..first_id + n {
        conn.send(conversation, id, "text", text(&format!("message {id}")))
            .await
            .expect("send");
    }
}

async fn socket(conn: &Connection, conversation: ConversationId, q: HistoryQuery) -> HistoryPage {
    conn.history_query(conversation, q)
        .await
        .unwrap_or_else(|e| panic!("socket history {q:?}: {e}"))
}

async fn http(api: &HttpApi, conversation: ConversationId, q: HistoryQuery) -> HistoryPageView {
    api.history(conversation, q)
        .await
        .unwrap_or_else(|e| panic!("HTTPS history {q:?}: {e}"))
}

fn assert_code<T: std::fmt::Debug>(result: Result<T, Error>, code: &str, what: &str) {
    match result {
        Err(e) => assert_eq!(e.code(), Some(code), "{what}: {e}"),
        Ok(v) => panic!("{what}: expected {code}, got {v:?}"),
    }
}

fn assert_status<T: std::fmt::Debug>(result: Result<T, Error>, status: u16, what: &str) {
    match result {
        Err(Error::Api(f)) => assert_eq!(f.status, status, "{what}: {}", f.message),
        other => panic!("{what}: expected HTTP {status}, got {other:?}"),
    }
}

async fn an_around_page_holds_the_messages_before_and_after_a_seq(transport: TransportPref) {
    let server = server().await;
    let (alice, bob, conversation) = alice_and_bob(&server).await;
    let (alice_conn, _) = connect_synced(&server, transport, &alice, random_device()).await;
    send_n(&alice_conn, conversation, 1, 60).await;
    let (bob_conn, _) = connect_synced(&server, transport, &bob, random_device()).await;

    // 11 around 30: 5 before it, it, 5 after it; both sides have more.
    let page = socket(&bob_conn, conversation, HistoryQuery::around(30, 11)).await;
    assert_eq!(seqs(&page.messages), range(25, 35));
    assert!(page.has_more && page.has_more_before && page.has_more_after);
    let full = bob_conn
        .history(conversation, 0, 0, 100)
        .await
        .expect("all");
    assert_eq!(
        page.messages,
        full.messages[24..35].to_vec(),
        "an around page holds the stored messages unchanged"
    );
    // An even limit: the older side gets the odd one.
    let page = socket(&bob_conn, conversation, HistoryQuery::around(30, 10)).await;
    assert_eq!(seqs(&page.messages), range(25, 34));
    // Seq 1 has nothing before it; the newest nothing after it.
    let page = socket(&bob_conn, conversation, HistoryQuery::around(1, 11)).await;
    assert_eq!(seqs(&page.messages), range(1, 6));
    assert!(!page.has_more_before && page.has_more_after);
    let page = socket(&bob_conn, conversation, HistoryQuery::around(60, 11)).await;
    assert_eq!(seqs(&page.messages), range(55, 60));
    assert!(page.has_more_before && !page.has_more_after);
    // A seq that does not exist (yet): the newest of what lies below it.
    let page = socket(&bob_conn, conversation, HistoryQuery::around(1000, 11)).await;
    assert_eq!(seqs(&page.messages), range(55, 60));
    // The same over HTTPS.
    let page = bob
        .http
        .history_around(conversation, 30, 11)
        .await
        .expect("https around");
    assert_eq!(view_seqs(&page), range(25, 35));
    assert!(page.has_more && page.has_more_before && page.has_more_after);
    let page = http(&bob.http, conversation, HistoryQuery::around(60, 5)).await;
    assert_eq!(view_seqs(&page), range(58, 60));
    assert!(page.has_more_before && !page.has_more_after);
}

async fn pages_by_time_and_by_sender_hold_exactly_those_messages(transport: TransportPref) {
    let server = server().await;
    let (alice, bob, conversation) = alice_and_bob(&server).await;
    let (alice_conn, _) = connect_synced(&server, transport, &alice, random_device()).await;
    let (bob_conn, _) = connect_synced(&server, transport, &bob, random_device()).await;
    // Alice sends 1-10, Bob 11-15, Alice 16-20 (with pauses, so the times spread out).
    send_n(&alice_conn, conversation, 1, 10).await;
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    send_n(&bob_conn, conversation, 1, 5).await;
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    send_n(&alice_conn, conversation, 11, 5).await;
    let all = bob_conn
        .history(conversation, 0, 0, 100)
        .await
        .expect("all")
        .messages;
    assert_eq!(seqs(&all), range(1, 20));

    // By sender: only Bob's, from either end, over both APIs.
    let bobs = HistoryQuery::from_sender(bob.id, 100);
    let page = socket(&alice_conn, conversation, bobs).await;
    assert_eq!(seqs(&page.messages), range(11, 15));
    assert!(page.messages.iter().all(|m| m.sender_user == bob.id));
    assert_eq!(
        view_seqs(&http(&alice.http, conversation, bobs).await),
        range(11, 15)
    );
    let newest_two = HistoryQuery::from_sender(alice.id, 2);
    let page = socket(&bob_conn, conversation, newest_two).await;
    assert_eq!(seqs(&page.messages), vec![19, 20]);
    assert!(page.has_more);
    let stranger = HistoryQuery::from_sender(UserId::random(), 10);
    assert!(
        socket(&bob_conn, conversation, stranger)
            .await
            .messages
            .is_empty()
    );

    // By time: exactly the messages the server stamped within [since, until].
    let (since, until) = (all[8].timestamp_ms, all[14].timestamp_ms);
    let want: Vec<u64> = all
        .iter()
        .filter(|m| m.timestamp_ms >= since && m.timestamp_ms <= until)
        .map(|m| m.seq)
        .collect();
    assert!(want.contains(&9) && want.contains(&15));
    let between = HistoryQuery::between(Some(since), Some(until), 100);
    let page = socket(&alice_conn, conversation, between).await;
    assert_eq!(seqs(&page.messages), want);
    assert!(!page.has_more);
    assert_eq!(
        view_seqs(&http(&alice.http, conversation, between).await),
        want
    );
    // Reading forward from `since` in small pages: the oldest first, more after.
    let page = socket(
        &alice_conn,
        conversation,
        HistoryQuery::between(Some(since), None, 2),
    )
    .await;
    assert_eq!(seqs(&page.messages), want[..2].to_vec());
    assert!(page.has_more && page.has_more_after);
    // Time and sender together; a range after the last message is empty.
    let bob_between = HistoryQuery {
        sender: Some(bob.id),
        ..between
    };
    let page = socket(&alice_conn, conversation, bob_between).await;
    let want_bob: Vec<u64> = want
        .iter()
        .copied()
        .filter(|s| (11..=15).contains(s))
        .collect();
    assert_eq!(seqs(&page.messages), want_bob);
    let later = HistoryQuery::between(Some(all[19].timestamp_ms + 1), None, 10);
    assert!(
        socket(&alice_conn, conversation, later)
            .await
            .messages
            .is_empty()
    );
}

/// Every new form, as a (name, query) list.
fn forms(sender: UserId) -> Vec<(&'static str, HistoryQuery)> {
    vec![
        ("around", HistoryQuery::around(5, 11)),
        (
            "by time",
            HistoryQuery::between(Some(1), Some(u64::MAX - 1), 50),
        ),
        ("by sender", HistoryQuery::from_sender(sender, 50)),
        ("newest", HistoryQuery::default()),
    ]
}

async fn a_non_member_gets_nothing_in_any_form(transport: TransportPref) {
    let server = server().await;
    let (alice, _bob, conversation) = alice_and_bob(&server).await;
    let carol = user(&server, "carol").await;
    let (alice_conn, _) = connect_synced(&server, transport, &alice, random_device()).await;
    send_n(&alice_conn, conversation, 1, 10).await;
    let (carol_conn, _) = connect_synced(&server, transport, &carol, random_device()).await;
    for (name, q) in forms(alice.id) {
        assert_code(
            carol_conn.history_query(conversation, q).await,
            "not_found",
            name,
        );
        // The same answer as for a conversation that does not exist.
        assert_code(
            carol_conn.history_query(ConversationId::random(), q).await,
            "not_found",
            name,
        );
        assert_status(carol.http.history(conversation, q).await, 404, name);
    }
}

async fn remove(conn: &Connection, conversation: ConversationId, user: UserId) {
    let reply = conn
        .request(|request_id| ClientMessage::RemoveMember {
            request_id,
            conversation,
            user,
        })
        .await
        .expect("remove");
    assert!(matches!(reply, ServerMessage::Ok { .. }), "{reply:?}");
}

async fn a_removed_member_reads_nothing_after_the_removal_in_any_form(transport: TransportPref) {
    let server = server().await;
    let alice = user(&server, "alice").await;
    let bob = user(&server, "bob").await;
    let carol = user(&server, "carol").await;
    let group = group_with_members(&alice, "history", &[&bob, &carol]).await;
    let (alice_conn, _) = connect_synced(&server, transport, &alice, random_device()).await;
    send_n(&alice_conn, group, 1, 10).await;
    let (bob_conn, _) = connect_synced(&server, transport, &bob, random_device()).await;
    remove(&alice_conn, group, bob.id).await;
    send_n(&alice_conn, group, 11, 10).await;
    let (carol_conn, _) = connect_synced(&server, transport, &carol, random_device()).await;

    for (name, q) in forms(alice.id) {
        // A member reads past the removal; Bob never does, over either API.
        let page = socket(&carol_conn, group, q).await;
        assert!(
            seqs(&page.messages).iter().any(|s| *s > 10) || name == "around",
            "{name}: {:?}",
            seqs(&page.messages)
        );
        let page = socket(&bob_conn, group, q).await;
        assert!(!page.messages.is_empty(), "{name}: up to the removal stays");
        assert!(
            page.messages.iter().all(|m| m.seq <= 10),
            "{name}: nothing after the removal, got {:?}",
            seqs(&page.messages)
        );
        assert!(!page.has_more_after, "{name}");
        let view = http(&bob.http, group, q).await;
        assert!(
            view.messages.iter().all(|m| m.seq <= 10) && !view.messages.is_empty(),
            "{name} over HTTPS: {:?}",
            view_seqs(&view)
        );
    }
    // Around a seq after the removal: the newest Bob may read, nothing newer.
    let page = socket(&bob_conn, group, HistoryQuery::around(15, 5)).await;
    assert_eq!(seqs(&page.messages), range(8, 10));
    assert!(page.has_more_before && !page.has_more_after);
    // Carol around 15 sees both sides.
    let page = socket(&carol_conn, group, HistoryQuery::around(15, 5)).await;
    assert_eq!(seqs(&page.messages), range(13, 17));
}

async fn pages_past_the_limit_and_misused_forms_are_refused(transport: TransportPref) {
    let server = server().await;
    let (alice, _bob, conversation) = alice_and_bob(&server).await;
    let (alice_conn, _) = connect_synced(&server, transport, &alice, random_device()).await;
    send_n(&alice_conn, conversation, 1, 3).await;
    let refused = [
        (
            "limit 501",
            HistoryQuery {
                limit: Some(501),
                ..HistoryQuery::default()
            },
        ),
        ("around, limit 501", HistoryQuery::around(2, 501)),
        (
            "by sender, limit 501",
            HistoryQuery::from_sender(alice.id, 501),
        ),
        (
            "around with before",
            HistoryQuery {
                before: Some(3),
                ..HistoryQuery::around(2, 5)
            },
        ),
        (
            "around with since",
            HistoryQuery {
                since_ms: Some(1),
                ..HistoryQuery::around(2, 5)
            },
        ),
        (
            "since after until",
            HistoryQuery::between(Some(10), Some(9), 5),
        ),
    ];
    for (what, q) in refused {
        assert_code(
            alice_conn.history_query(conversation, q).await,
            "invalid_argument",
            what,
        );
        assert_status(alice.http.history(conversation, q).await, 400, what);
    }
    // The largest page is fine, and a malformed sender is a 400 (not a silent "anyone").
    let page = socket(
        &alice_conn,
        conversation,
        HistoryQuery {
            limit: Some(500),
            ..HistoryQuery::default()
        },
    )
    .await;
    assert_eq!(seqs(&page.messages), range(1, 3));
    let response = https(&server)
        .get(format!(
            "https://{}/api/v1/conversations/{conversation}/messages?sender=nobody",
            server.addr
        ))
        .bearer_auth(&alice.token)
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), 400);
}

fn random_device() -> tern_sdk::tern_wire::ids::DeviceId {
    tern_sdk::tern_wire::ids::DeviceId::random()
}
