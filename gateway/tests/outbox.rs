//! The SDK's persistent outbox against the real `tern` binary over real TLS, every scenario over
//! both transports: offline compose, app restart, send-once under retries and crashes, limits,
//! permanent rejections, and reconnecting with backoff.

mod common;

use std::time::Duration;

use common::*;
use tern_sdk::tern_wire::ids::{ConversationId, DeviceId};
use tern_sdk::tern_wire::msg::{ErrorCode, Notice, ServerMessage};
use tern_sdk::{
    BackoffPolicy, Client, ClientEvent, Config, Error, HistoryQuery, Outbox, OutboxLimits,
    TransportPref,
};

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
    offline_compose_is_sent_once_in_order_when_the_server_returns,
    composed_messages_survive_an_app_restart_and_are_sent_once,
    resending_after_a_lost_removal_stores_nothing_twice,
    killing_the_server_mid_send_loses_and_duplicates_nothing,
    a_full_outbox_refuses_new_messages_and_keeps_the_queued_ones,
    a_permanent_rejection_is_reported_and_does_not_block_the_rest,
    a_revoked_token_stops_reconnecting,
    going_away_delays_the_reconnect_and_the_outbox_follows,
);

/// How long a client may take to come back once the server is up again.
const RECONNECT: Duration = Duration::from_secs(45);

/// Short timeouts and a fast backoff, so tests stay quick while still exercising the schedule.
fn client_config(server: &TestServer, transport: TransportPref) -> Config {
    let mut config = server.config(transport);
    config.connect_timeout = Duration::from_secs(3);
    config.request_timeout = Duration::from_secs(5);
    config.reconnect = BackoffPolicy {
        base: Duration::from_millis(100),
        cap: Duration::from_secs(1),
        reset_after: Duration::from_secs(10),
    };
    config
}

fn offline_client(
    server: &TestServer,
    transport: TransportPref,
    user: &TestUser,
    device: DeviceId,
    outbox: Outbox,
) -> Client {
    Client::new(
        client_config(server, transport),
        user.token.clone(),
        device,
        &[],
        outbox,
    )
}

async fn run_until_connected(client: &mut Client) {
    tokio::time::timeout(RECONNECT, client.run_until_connected())
        .await
        .expect("reconnected in time")
        .expect("reconnected");
}

/// `(client_msg_id, text)` of every stored message of `conversation`, in seq order, checking
/// that seqs are gapless from 1.
async fn stored(user: &TestUser, conversation: ConversationId) -> Vec<(u128, String)> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = user
            .http
            .history(
                conversation,
                HistoryQuery {
                    after: Some(after),
                    limit: Some(500),
                    ..HistoryQuery::default()
                },
            )
            .await
            .expect("history");
        if page.messages.is_empty() {
            break;
        }
        for view in &page.messages {
            let m = tern_sdk::message_from_view(conversation, view).expect("message");
            assert_eq!(m.seq, out.len() as u64 + 1, "gapless seqs");
            out.push((
                m.client_msg_id,
                String::from_utf8(m.payload).expect("utf-8"),
            ));
        }
        after = page.messages.last().map_or(after, |m| m.seq);
    }
    out
}

/// What a fresh device of `user` gets replayed: `(client_msg_id, text)` in seq order.
async fn replayed(
    server: &TestServer,
    transport: TransportPref,
    user: &TestUser,
) -> Vec<(u128, String)> {
    let (conn, messages) = connect_synced(server, transport, user, DeviceId::random()).await;
    conn.close().await;
    messages
        .into_iter()
        .map(|m| {
            (
                m.client_msg_id,
                String::from_utf8(m.payload).expect("utf-8"),
            )
        })
        .collect()
}

/// The next `n` outbox acknowledgements the client surfaces: `(client_msg_id, duplicate)`.
async fn outbox_acks(client: &mut Client, n: usize) -> Vec<(u128, bool)> {
    let mut acks = Vec::new();
    while acks.len() < n {
        match tokio::time::timeout(WAIT, client.next_event())
            .await
            .expect("event in time")
        {
            Some(ClientEvent::Other(ServerMessage::SendAck {
                client_msg_id,
                duplicate,
                ..
            })) => acks.push((client_msg_id, duplicate)),
            Some(ClientEvent::Disconnected(reason)) => panic!("disconnected: {reason}"),
            Some(_) => {}
            None => panic!("no connection while waiting for acks"),
        }
    }
    acks
}

fn compose_texts(client: &mut Client, conversation: ConversationId, texts: &[&str]) -> Vec<u128> {
    texts
        .iter()
        .map(|t| {
            client
                .compose(conversation, "text", text(t))
                .expect("compose")
        })
        .collect()
}

fn expected(ids: &[u128], texts: &[&str]) -> Vec<(u128, String)> {
    ids.iter()
        .zip(texts)
        .map(|(id, t)| (*id, t.to_string()))
        .collect()
}

/// (a) Composed with the server down, sent once and in order after it comes back.
async fn offline_compose_is_sent_once_in_order_when_the_server_returns(transport: TransportPref) {
    let mut server = TestServer::start().await;
    let (alice, bob, conversation) = alice_and_bob(&server).await;
    server.kill9().await;

    let mut client = offline_client(
        &server,
        transport,
        &alice,
        DeviceId::random(),
        Outbox::in_memory(OutboxLimits::default()),
    );
    let texts = ["one", "two", "three"];
    let ids = compose_texts(&mut client, conversation, &texts);
    assert_eq!(client.outbox().len(), 3);
    // With nothing listening the client keeps trying (and the outbox stays intact).
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), client.run_until_connected())
            .await
            .is_err(),
        "cannot connect to a dead server"
    );
    assert!(!client.is_connected());
    assert_eq!(
        client
            .outbox()
            .iter()
            .map(|e| e.client_msg_id)
            .collect::<Vec<_>>(),
        ids
    );

    // The server comes back while the client is backing off.
    let ((), connected) = tokio::join!(
        async {
            tokio::time::sleep(Duration::from_millis(700)).await;
            server.restart().await;
        },
        tokio::time::timeout(RECONNECT, client.run_until_connected()),
    );
    connected
        .expect("reconnected in time")
        .expect("reconnected");
    assert!(client.outbox().is_empty(), "everything acknowledged");
    let acks = outbox_acks(&mut client, 3).await;
    assert_eq!(
        acks,
        ids.iter().map(|id| (*id, false)).collect::<Vec<_>>(),
        "acknowledged in compose order, each created once"
    );

    assert_eq!(stored(&alice, conversation).await, expected(&ids, &texts));
    assert_eq!(
        replayed(&server, transport, &bob).await,
        expected(&ids, &texts),
        "the peer gets each message once, in compose order"
    );
    client.close().await;
}

/// (b) Composed offline, the app is closed and started again: the new client sends the
/// persisted entries, with their original ids, exactly once.
async fn composed_messages_survive_an_app_restart_and_are_sent_once(transport: TransportPref) {
    let mut server = TestServer::start().await;
    let (alice, bob, conversation) = alice_and_bob(&server).await;
    server.kill9().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("outbox");
    let device = DeviceId::random();

    let texts = ["before", "the", "restart"];
    let ids = {
        let outbox = Outbox::open_file(&path, OutboxLimits::default()).expect("outbox");
        let mut client = offline_client(&server, transport, &alice, device, outbox);
        let ids = compose_texts(&mut client, conversation, &texts);
        // The app goes away without ever having connected.
        drop(client);
        ids
    };

    let outbox = Outbox::open_file(&path, OutboxLimits::default()).expect("reopen outbox");
    assert_eq!(
        outbox
            .iter()
            .map(|e| (
                e.client_msg_id,
                String::from_utf8(e.payload.clone()).expect("utf-8")
            ))
            .collect::<Vec<_>>(),
        expected(&ids, &texts),
        "the restarted app finds its messages, ids and order"
    );
    let mut client = offline_client(&server, transport, &alice, device, outbox);
    server.restart().await;
    run_until_connected(&mut client).await;
    assert!(client.outbox().is_empty());
    assert_eq!(
        outbox_acks(&mut client, 3).await,
        ids.iter().map(|id| (*id, false)).collect::<Vec<_>>()
    );
    client.close().await;

    // The removals are persisted: a third start sends nothing again.
    let outbox = Outbox::open_file(&path, OutboxLimits::default()).expect("reopen outbox");
    assert!(
        outbox.is_empty(),
        "acknowledged entries are gone from the file"
    );

    assert_eq!(stored(&alice, conversation).await, expected(&ids, &texts));
    assert_eq!(
        replayed(&server, transport, &bob).await,
        expected(&ids, &texts)
    );
}

/// (c) The messages were stored and acknowledged, but the app crashed before the removals
/// reached the disk (simulated by restoring the outbox file as it was before sending), and the
/// server restarted meanwhile (no in-memory dedupe state). The resend creates nothing new.
async fn resending_after_a_lost_removal_stores_nothing_twice(transport: TransportPref) {
    let mut server = TestServer::start().await;
    let (alice, bob, conversation) = alice_and_bob(&server).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("outbox");
    let device = DeviceId::random();
    let texts = ["sent", "only", "once"];

    let outbox = Outbox::open_file(&path, OutboxLimits::default()).expect("outbox");
    let mut client = offline_client(&server, transport, &alice, device, outbox);
    let ids = compose_texts(&mut client, conversation, &texts);
    let snapshot = std::fs::read(&path).expect("read outbox");
    run_until_connected(&mut client).await;
    assert_eq!(
        outbox_acks(&mut client, 3).await,
        ids.iter().map(|id| (*id, false)).collect::<Vec<_>>()
    );
    assert!(client.outbox().is_empty());
    drop(client); // crash: no close
    std::fs::write(&path, &snapshot).expect("restore outbox");
    server.kill9().await;
    server.restart().await;

    let outbox = Outbox::open_file(&path, OutboxLimits::default()).expect("outbox");
    assert_eq!(
        outbox.len(),
        3,
        "the restored outbox still holds the sent messages"
    );
    let mut client = offline_client(&server, transport, &alice, device, outbox);
    run_until_connected(&mut client).await;
    assert!(client.outbox().is_empty());
    assert_eq!(
        outbox_acks(&mut client, 3).await,
        ids.iter().map(|id| (*id, true)).collect::<Vec<_>>(),
        "the server recognises every resend as a duplicate"
    );
    client.close().await;

    assert_eq!(stored(&alice, conversation).await, expected(&ids, &texts));
    assert_eq!(
        replayed(&server, transport, &bob).await,
        expected(&ids, &texts)
    );
}

/// (c') The server is killed while the outbox is being sent: some messages were stored with
/// their acks lost, some never arrived. After the restart the outbox finishes, and the
/// conversation holds every message exactly once, in compose order.
async fn killing_the_server_mid_send_loses_and_duplicates_nothing(transport: TransportPref) {
    const N: usize = 200;
    let mut server = TestServer::start().await;
    let (alice, bob, conversation) = alice_and_bob(&server).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("outbox");
    let outbox = Outbox::open_file(&path, OutboxLimits::default()).expect("outbox");
    let mut client = offline_client(&server, transport, &alice, DeviceId::random(), outbox);
    run_until_connected(&mut client).await;
    let (mut bob_conn, _) = connect_synced(&server, transport, &bob, DeviceId::random()).await;

    let texts: Vec<String> = (0..N).map(|i| format!("message {i}")).collect();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let ids = compose_texts(&mut client, conversation, &texts);
    // kill -9 as soon as the peer sees the fifth message: the client is mid-stream by then.
    let (flushed, ()) = tokio::join!(
        tokio::time::timeout(RECONNECT, client.flush_outbox()),
        async {
            for _ in 0..5 {
                next_message(&mut bob_conn).await;
            }
            server.kill9().await;
        }
    );
    let flushed = flushed.expect("flush ends in time");
    assert!(
        flushed.is_err(),
        "the server died before all {N} were acknowledged"
    );
    let left = client.outbox().len();
    assert!(left > 0 && left <= N - 4, "{left} left");
    // Whatever is left is a suffix of the compose order.
    assert_eq!(
        client
            .outbox()
            .iter()
            .map(|e| e.client_msg_id)
            .collect::<Vec<_>>(),
        ids[N - left..]
    );

    server.restart().await;
    run_until_connected(&mut client).await;
    assert!(client.outbox().is_empty());
    client.close().await;
    assert_eq!(
        stored(&alice, conversation).await,
        expected(&ids, &texts),
        "every message once, in compose order"
    );
}

/// (d) A full outbox refuses new messages with a clear error and keeps what it holds.
async fn a_full_outbox_refuses_new_messages_and_keeps_the_queued_ones(transport: TransportPref) {
    let mut server = TestServer::start().await;
    let (alice, bob, conversation) = alice_and_bob(&server).await;
    server.kill9().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("outbox");
    let limits = OutboxLimits {
        max_entries: 3,
        max_bytes: 100,
    };
    let outbox = Outbox::open_file(&path, limits).expect("outbox");
    let mut client = offline_client(&server, transport, &alice, DeviceId::random(), outbox);

    let a = client
        .compose(conversation, "text", vec![b'a'; 40])
        .expect("44 bytes fit");
    // 44 + 64 > 100: refused by size.
    match client.compose(conversation, "text", vec![b'b'; 60]) {
        Err(e @ Error::OutboxFull { .. }) => {
            assert!(e.to_string().contains("outbox full"), "{e}");
        }
        other => panic!("expected OutboxFull, got {other:?}"),
    }
    let c = client
        .compose(conversation, "text", vec![b'c'; 20])
        .expect("fits");
    let d = client
        .compose(conversation, "text", vec![b'd'; 20])
        .expect("fits");
    // Three entries: refused by count, also through `send` (which never reaches the network).
    match client.send(conversation, "text", text("e")).await {
        Err(Error::OutboxFull {
            pending: 3,
            max_entries: 3,
            ..
        }) => {}
        other => panic!("expected OutboxFull, got {other:?}"),
    }
    assert_eq!(
        client
            .outbox()
            .iter()
            .map(|e| e.client_msg_id)
            .collect::<Vec<_>>(),
        vec![a, c, d],
        "nothing queued was lost"
    );
    drop(client);

    // Still there after a restart, and sent once the server is back.
    let outbox = Outbox::open_file(&path, limits).expect("outbox");
    let mut client = offline_client(&server, transport, &alice, DeviceId::random(), outbox);
    server.restart().await;
    run_until_connected(&mut client).await;
    assert!(client.outbox().is_empty());
    // Room again: a live send goes straight through.
    let receipt = client
        .send(conversation, "text", text("after"))
        .await
        .expect("send");
    assert_eq!(receipt.seq, 4);
    client.close().await;

    let want = vec![
        (a, "a".repeat(40)),
        (c, "c".repeat(20)),
        (d, "d".repeat(20)),
        (receipt.client_msg_id, "after".to_string()),
    ];
    assert_eq!(stored(&alice, conversation).await, want);
    assert_eq!(replayed(&server, transport, &bob).await, want);
}

/// A message the server refuses for good (not a member) is removed and reported with its id;
/// the messages around it are still sent, in order.
async fn a_permanent_rejection_is_reported_and_does_not_block_the_rest(transport: TransportPref) {
    let server = TestServer::start().await;
    let (alice, _bob, conversation) = alice_and_bob(&server).await;
    let carol = user(&server, "carol").await;
    let foreign = carol
        .http
        .create_direct("bob")
        .await
        .expect("dm")
        .conversation_id;
    let mut client = offline_client(
        &server,
        transport,
        &alice,
        DeviceId::random(),
        Outbox::in_memory(OutboxLimits::default()),
    );
    let first = client
        .compose(conversation, "text", text("first"))
        .expect("compose");
    let bad = client
        .compose(foreign, "text", text("not mine"))
        .expect("compose");
    let last = client
        .compose(conversation, "text", text("last"))
        .expect("compose");
    run_until_connected(&mut client).await;
    assert!(
        client.outbox().is_empty(),
        "the rejected entry is not retried"
    );
    let rejected = client.take_rejected();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(rejected[0].client_msg_id, bad);
    assert_eq!(rejected[0].conversation, foreign);
    assert!(
        matches!(rejected[0].code, ErrorCode::Forbidden | ErrorCode::NotFound),
        "{rejected:?}"
    );
    // The app also sees it in its event stream, between the two acks.
    let mut seen = Vec::new();
    while seen.len() < 3 {
        match tokio::time::timeout(WAIT, client.next_event())
            .await
            .expect("event in time")
        {
            Some(ClientEvent::Other(ServerMessage::SendAck { client_msg_id, .. })) => {
                seen.push(format!("ack {client_msg_id:032x}"))
            }
            Some(ClientEvent::Error {
                message,
                fatal: false,
                ..
            }) => {
                assert!(message.contains(&format!("{bad:032x}")), "{message}");
                seen.push("rejected".into());
            }
            Some(ClientEvent::SyncComplete) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        seen,
        vec![
            format!("ack {first:032x}"),
            "rejected".to_string(),
            format!("ack {last:032x}")
        ]
    );
    client.close().await;
    assert_eq!(
        stored(&alice, conversation).await,
        vec![(first, "first".to_string()), (last, "last".to_string())]
    );
}

/// Retrying cannot fix a revoked token: `run_until_connected` says so instead of looping, and
/// the outbox keeps its messages for after the next login.
async fn a_revoked_token_stops_reconnecting(transport: TransportPref) {
    let server = TestServer::start().await;
    let (mut alice, _bob, conversation) = alice_and_bob(&server).await;
    let token = alice.token.clone();
    alice.http.logout().await.expect("logout");
    let mut client = offline_client(
        &server,
        transport,
        &TestUser { token, ..alice },
        DeviceId::random(),
        Outbox::in_memory(OutboxLimits::default()),
    );
    client
        .compose(conversation, "text", text("kept"))
        .expect("compose");
    let err = tokio::time::timeout(RECONNECT, client.run_until_connected())
        .await
        .expect("gives up in time")
        .expect_err("a revoked token cannot connect");
    assert!(err.is_auth(), "{err}");
    assert_eq!(client.outbox().len(), 1);
}

/// A graceful shutdown says `GoingAway { retry_after_ms }`: the client waits at least that long
/// before reconnecting (even though the server is back sooner), then sends what was composed
/// meanwhile.
async fn going_away_delays_the_reconnect_and_the_outbox_follows(transport: TransportPref) {
    let mut server = TestServer::start().await;
    let (alice, _bob, conversation) = alice_and_bob(&server).await;
    let mut client = offline_client(
        &server,
        transport,
        &alice,
        DeviceId::random(),
        Outbox::in_memory(OutboxLimits::default()),
    );
    run_until_connected(&mut client).await;
    server.terminate().await;
    let mut retry_after = None;
    loop {
        match tokio::time::timeout(WAIT, client.next_event())
            .await
            .expect("event in time")
        {
            Some(ClientEvent::Notice(Notice::GoingAway { retry_after_ms })) => {
                retry_after = Some(Duration::from_millis(retry_after_ms.into()))
            }
            Some(ClientEvent::Disconnected(_)) | None => break,
            Some(_) => {}
        }
    }
    let retry_after = retry_after.expect("told to go away");
    let id = client
        .compose(conversation, "text", text("while away"))
        .expect("compose");
    server.restart().await;
    let started = std::time::Instant::now();
    run_until_connected(&mut client).await;
    assert!(
        started.elapsed() >= retry_after,
        "reconnected after {:?}, asked to wait {retry_after:?}",
        started.elapsed()
    );
    assert!(client.outbox().is_empty());
    client.close().await;
    assert_eq!(
        stored(&alice, conversation).await,
        vec![(id, "while away".to_string())]
    );
}
