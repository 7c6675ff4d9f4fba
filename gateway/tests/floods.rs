//! Floods (issue 10, findings 5 and 6): send rate limits per device, per user and per
//! conversation, the per-user storage quota, the per-device request limit, and history pages
//! that stay within the frame limit (socket) and a byte budget (HTTPS). Real server, real TLS,
//! every scenario over both transports; small limits are configured so that tests stay short.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use futures_util::future::join_all;
use tern_sdk::tern_wire::api::HistoryPageView;
use tern_sdk::tern_wire::ids::{ConversationId, DeviceId};
use tern_sdk::tern_wire::msg::{ErrorCode, Message, ServerMessage};
use tern_sdk::{Connection, Error, SendReceipt, TransportPref};

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
    a_flooding_device_is_refused_with_retry_after_and_loses_nothing_accepted,
    two_devices_of_one_user_share_the_user_limit,
    a_conversation_is_limited_across_its_members,
    the_storage_quota_refuses_with_limit_exceeded_and_survives_restart,
    history_pages_of_large_messages_fit_the_frame_limit_and_the_http_budget,
    a_request_flood_is_rate_limited,
);

/// Result of one send in a flood: accepted with its receipt, or refused with a retry-after.
enum Outcome {
    Accepted(SendReceipt),
    RateLimited(Duration),
}

/// Sends `n` messages at once (client ids `base + i`) and sorts the answers.
async fn flood(
    conn: &Connection,
    conversation: ConversationId,
    base: u128,
    n: u128,
    payload: usize,
) -> Vec<(u128, Outcome)> {
    let sends = (0..n).map(|i| async move {
        let id = base + i;
        let outcome = match conn
            .send(conversation, id, "text", vec![b'x'; payload])
            .await
        {
            Ok(receipt) => Outcome::Accepted(receipt),
            Err(Error::Server {
                code: ErrorCode::RateLimited,
                fatal: false,
                retry_after,
                ..
            }) => {
                Outcome::RateLimited(retry_after.expect("a rate-limit refusal says when to retry"))
            }
            Err(e) => panic!("send {id}: expected an ack or RateLimited, got {e}"),
        };
        (id, outcome)
    });
    join_all(sends).await
}

fn accepted(outcomes: &[(u128, Outcome)]) -> BTreeMap<u64, u128> {
    outcomes
        .iter()
        .filter_map(|(id, o)| match o {
            Outcome::Accepted(r) => Some((r.seq, *id)),
            Outcome::RateLimited(_) => None,
        })
        .collect()
}

fn refused(outcomes: &[(u128, Outcome)]) -> Vec<Duration> {
    outcomes
        .iter()
        .filter_map(|(_, o)| match o {
            Outcome::RateLimited(d) => Some(*d),
            Outcome::Accepted(_) => None,
        })
        .collect()
}

/// Reads `count` deliveries and checks they are exactly the accepted seqs with their ids.
async fn receives_exactly(conn: &mut Connection, want: &BTreeMap<u64, u128>) {
    let mut got = BTreeMap::new();
    while got.len() < want.len() {
        let m = next_message(conn).await;
        assert!(
            got.insert(m.seq, m.client_msg_id).is_none(),
            "seq {} delivered twice",
            m.seq
        );
    }
    assert_eq!(&got, want, "the peer gets exactly the accepted messages");
    assert_quiet(conn).await;
}

async fn a_flooding_device_is_refused_with_retry_after_and_loses_nothing_accepted(
    transport: TransportPref,
) {
    let server =
        TestServer::start_with(&["device_send_burst = 20", "device_sends_per_sec = 20"]).await;
    let (alice, bob, conversation) = alice_and_bob(&server).await;
    let (alice_conn, _) = connect_synced(&server, transport, &alice, DeviceId::random()).await;
    let (mut bob_conn, _) = connect_synced(&server, transport, &bob, DeviceId::random()).await;

    let outcomes = flood(&alice_conn, conversation, 1, 60, 16).await;
    let ok = accepted(&outcomes);
    let refusals = refused(&outcomes);
    assert!(
        ok.len() >= 20,
        "the burst is accepted whole ({} accepted)",
        ok.len()
    );
    assert!(!refusals.is_empty(), "sends past the burst are refused");
    assert!(
        refusals
            .iter()
            .all(|d| *d > Duration::ZERO && *d <= Duration::from_secs(1))
    );
    // Accepted sends are sequenced gaplessly (refused ones took no seq) and all delivered once.
    assert_eq!(
        ok.keys().copied().collect::<Vec<_>>(),
        (1..=ok.len() as u64).collect::<Vec<_>>()
    );
    receives_exactly(&mut bob_conn, &ok).await;

    // After the advertised wait, sending works again, on the same connection.
    tokio::time::sleep(*refusals.iter().max().expect("refusals")).await;
    let receipt = alice_conn
        .send(conversation, 1_000, "text", text("after the refill"))
        .await
        .expect("a send after the refill is accepted");
    assert_eq!(receipt.seq, ok.len() as u64 + 1);
    assert_eq!(next_message(&mut bob_conn).await.client_msg_id, 1_000);
    assert!(metric(&server, "tern_rate_limited_total").await >= 1.0);
}

async fn two_devices_of_one_user_share_the_user_limit(transport: TransportPref) {
    let server = TestServer::start_with(&["user_send_burst = 10", "user_sends_per_sec = 1"]).await;
    let (alice, bob, conversation) = alice_and_bob(&server).await;
    let (phone, _) = connect_synced(&server, transport, &alice, DeviceId::random()).await;
    let (laptop, _) = connect_synced(&server, transport, &alice, DeviceId::random()).await;
    let (mut bob_conn, _) = connect_synced(&server, transport, &bob, DeviceId::random()).await;

    // 16 sends, each device well under its own limit: the user's bucket (10) refuses some.
    let (a, b) = tokio::join!(
        flood(&phone, conversation, 1, 8, 16),
        flood(&laptop, conversation, 100, 8, 16)
    );
    let mut all: Vec<(u128, Outcome)> = a;
    all.extend(b);
    let ok = accepted(&all);
    assert!(
        ok.len() >= 10,
        "the user's burst is accepted, got {}",
        ok.len()
    );
    assert!(
        !refused(&all).is_empty(),
        "16 sends at once exceed the user's 10"
    );
    // Bob, another user, is not limited by Alice's bucket.
    bob_conn
        .send(conversation, 7, "text", text("bob is fine"))
        .await
        .expect("another user's send is accepted");
    // Bob gets exactly Alice's accepted messages (his own send is acknowledged, not delivered).
    receives_exactly(&mut bob_conn, &ok).await;
}

async fn a_conversation_is_limited_across_its_members(transport: TransportPref) {
    let server = TestServer::start_with(&[
        "conversation_send_burst = 10",
        "conversation_sends_per_sec = 1",
    ])
    .await;
    let (alice, bob, conversation) = alice_and_bob(&server).await;
    let (alice_conn, _) = connect_synced(&server, transport, &alice, DeviceId::random()).await;
    let (bob_conn, _) = connect_synced(&server, transport, &bob, DeviceId::random()).await;
    let (a, b) = tokio::join!(
        flood(&alice_conn, conversation, 1, 8, 16),
        flood(&bob_conn, conversation, 100, 8, 16)
    );
    let mut all = a;
    all.extend(b);
    let ok = accepted(&all);
    assert!(
        ok.len() >= 10,
        "the conversation's burst is accepted, got {}",
        ok.len()
    );
    assert!(
        !refused(&all).is_empty(),
        "16 sends at once exceed the conversation's 10"
    );
    // Another conversation of the same users is not affected.
    let carol = user(&server, "carol").await;
    let other = alice
        .http
        .create_direct(&carol.name)
        .await
        .expect("dm")
        .conversation_id;
    alice_conn
        .send(other, 5_000, "text", text("elsewhere"))
        .await
        .expect("another conversation has its own bucket");
}

async fn the_storage_quota_refuses_with_limit_exceeded_and_survives_restart(
    transport: TransportPref,
) {
    let mut server = TestServer::start_with(&["storage_quota_bytes = 1000"]).await;
    let (alice, _bob, conversation) = alice_and_bob(&server).await;
    let quota_refusal = |result: Result<SendReceipt, Error>| match result {
        Err(Error::Server {
            code: ErrorCode::LimitExceeded,
            fatal: false,
            message,
            ..
        }) => assert!(message.contains("quota"), "a clear message: {message}"),
        other => panic!("expected LimitExceeded, got {other:?}"),
    };
    {
        let (conn, _) = connect_synced(&server, transport, &alice, DeviceId::random()).await;
        for id in 1..=2 {
            conn.send(conversation, id, "text", vec![1; 400])
                .await
                .expect("within the quota");
        }
        quota_refusal(conn.send(conversation, 3, "text", vec![1; 400]).await);
        // Nothing was stored for the refused send; the connection is still usable.
        conn.ping().await.expect("still connected");
    }
    server.restart().await;
    let (conn, replayed) = connect_synced(&server, transport, &alice, DeviceId::random()).await;
    assert_eq!(
        replayed.iter().map(|m| m.client_msg_id).collect::<Vec<_>>(),
        vec![1, 2],
        "the refused message was never stored"
    );
    quota_refusal(conn.send(conversation, 3, "text", vec![1; 400]).await);
    conn.send(conversation, 4, "text", vec![1; 200])
        .await
        .expect("what is left of the quota can still be used");
    quota_refusal(conn.send(conversation, 5, "text", vec![1; 1]).await);
}

async fn history_pages_of_large_messages_fit_the_frame_limit_and_the_http_budget(
    transport: TransportPref,
) {
    const COUNT: u64 = 500;
    const PAYLOAD: usize = 60 * 1024;
    // Sending 30 MB takes the per-device byte budget well past its defaults.
    let server = TestServer::start_with(&[
        "device_send_bytes_burst = 67108864",
        "device_send_bytes_per_sec = 67108864",
    ])
    .await;
    let (alice, bob, conversation) = alice_and_bob(&server).await;
    let (alice_conn, _) = connect_synced(&server, transport, &alice, DeviceId::random()).await;
    let payload = |seq: u64| {
        let mut p = vec![(seq % 251) as u8; PAYLOAD];
        p[..8].copy_from_slice(&seq.to_be_bytes());
        p
    };
    for chunk in (1..=COUNT).collect::<Vec<_>>().chunks(50) {
        let sends = chunk
            .iter()
            .map(|&i| alice_conn.send(conversation, u128::from(i), "bin", payload(i)));
        for r in join_all(sends).await {
            r.expect("send");
        }
    }
    let check = |messages: &[Message]| {
        assert_eq!(
            messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
            (1..=COUNT).collect::<Vec<_>>(),
            "concatenated pages are every message once, in order"
        );
        assert!(messages.iter().all(|m| m.payload == payload(m.seq)));
    };

    // Socket: scroll back from the newest with the largest page size allowed.
    let (bob_conn, _) = connect_synced(&server, transport, &bob, DeviceId::random()).await;
    let max_frame = bob_conn.welcome().max_frame_bytes as usize;
    let mut pages: Vec<Vec<Message>> = Vec::new();
    let mut before = 0;
    loop {
        let page = bob_conn
            .history(conversation, before, 0, 500)
            .await
            .expect("history page");
        let frame = tern_sdk::tern_wire::encode_server(&ServerMessage::HistoryPage {
            request_id: u64::MAX,
            conversation,
            messages: page.messages.clone(),
            reactions: page.reactions.clone(),
            has_more: page.has_more,
            has_more_before: false,
            has_more_after: false,
        });
        assert!(
            frame.len() <= max_frame,
            "a history page of {} bytes exceeds the frame limit {max_frame}",
            frame.len()
        );
        assert!(!page.messages.is_empty(), "every page makes progress");
        before = page.messages[0].seq;
        pages.push(page.messages);
        if !page.has_more {
            break;
        }
        assert!(pages.len() <= COUNT as usize, "paging terminates");
    }
    assert!(pages.len() > 1, "500 large messages do not fit one page");
    let all: Vec<Message> = pages.into_iter().rev().flatten().collect();
    check(&all);

    // Forward paging (catching up from a cursor) fits too.
    let page = bob_conn
        .history(conversation, 0, 10, 500)
        .await
        .expect("forward page");
    assert_eq!(page.messages[0].seq, 11);
    assert!(page.has_more);

    // HTTPS: every JSON body within the default budget (1 MiB), same messages in order.
    let client = https(&server);
    let mut pages: Vec<Vec<u64>> = Vec::new();
    let mut before = 0;
    loop {
        let url = format!(
            "https://{}/api/v1/conversations/{conversation}/messages?limit=500&before={before}",
            server.addr
        );
        let body = client
            .get(url)
            .bearer_auth(&bob.token)
            .send()
            .await
            .expect("history request")
            .error_for_status()
            .expect("history status")
            .bytes()
            .await
            .expect("body");
        assert!(
            body.len() <= 1 << 20,
            "an HTTPS history body of {} bytes exceeds the budget",
            body.len()
        );
        let page: HistoryPageView = serde_json::from_slice(&body).expect("json page");
        assert!(!page.messages.is_empty());
        before = page.messages[0].seq;
        pages.push(page.messages.iter().map(|m| m.seq).collect());
        if !page.has_more {
            break;
        }
        assert!(pages.len() <= COUNT as usize, "paging terminates");
    }
    let seqs: Vec<u64> = pages.into_iter().rev().flatten().collect();
    assert_eq!(seqs, (1..=COUNT).collect::<Vec<_>>());
}

async fn a_request_flood_is_rate_limited(transport: TransportPref) {
    let server =
        TestServer::start_with(&["device_request_burst = 10", "device_requests_per_sec = 5"]).await;
    let (alice, _bob, conversation) = alice_and_bob(&server).await;
    let (conn, _) = connect_synced(&server, transport, &alice, DeviceId::random()).await;
    conn.send(conversation, 1, "text", text("hello"))
        .await
        .expect("send");
    let pages = join_all((0..40).map(|_| conn.history(conversation, 0, 0, 10))).await;
    let mut ok = 0;
    let mut limited = BTreeSet::new();
    for page in pages {
        match page {
            Ok(page) => {
                assert_eq!(page.messages.len(), 1);
                ok += 1;
            }
            Err(Error::Server {
                code: ErrorCode::RateLimited,
                fatal: false,
                retry_after: Some(wait),
                ..
            }) => {
                limited.insert(wait);
            }
            Err(e) => panic!("expected a page or RateLimited, got {e}"),
        }
    }
    assert!(ok >= 10, "the burst is served ({ok})");
    assert!(
        !limited.is_empty(),
        "a flood of history requests is refused"
    );
    // Sends have their own buckets: a request flood does not stop messages.
    conn.send(conversation, 2, "text", text("still sending"))
        .await
        .expect("sends are limited separately");
    tokio::time::sleep(*limited.iter().max().expect("refusals")).await;
    conn.history(conversation, 0, 0, 10)
        .await
        .expect("served again after the wait");
}
