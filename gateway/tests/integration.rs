//! End-to-end tests against the real `tern` binary over real TLS, each run over both transports.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use sha2::Digest as _;

use common::*;
use futures_util::future::join_all;
use tern_sdk::tern_wire::ids::DeviceId;
use tern_sdk::tern_wire::msg::{ClientMessage, Cursor, ErrorCode, PROTOCOL_VERSION, ServerMessage};
use tern_sdk::{CloseReason, Connection, Error, Event, HistoryQuery, Transport, TransportPref};

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
    register_login_and_logout_revokes_live_connections,
    wrong_password_is_refused_without_a_session,
    brute_force_login_is_rate_limited,
    direct_conversation_delivers_persists_and_shows_in_history,
    group_of_five_delivers_to_every_online_member,
    offline_member_gets_missed_messages_in_order,
    resending_a_client_message_id_yields_one_message,
    acknowledged_messages_survive_kill_9,
    bad_frames_get_an_error_and_a_close_while_others_keep_working,
    non_members_can_neither_read_nor_write,
    a_new_device_replays_a_long_history_from_the_start,
    shutdown_tells_clients_to_go_away_and_restart_resumes,
    members_on_different_shards_talk_through_conversations_on_both_shards,
    resume_past_the_backlog_limit_is_truncated_and_history_has_the_rest,
    a_slow_consumer_is_disconnected_and_resumes_without_loss_while_others_are_unaffected,
);

fn expect_fatal(event: Event, code: ErrorCode) {
    match event {
        Event::Error {
            code: got,
            fatal: true,
            ..
        } => assert_eq!(got, code),
        Event::Closed(CloseReason::Fatal { code: got, .. }) => assert_eq!(got, code),
        other => panic!("expected fatal {code:?}, got {other:?}"),
    }
}

/// Reads events until the connection reports it closed; returns the fatal code seen, if any.
async fn closed_with(conn: &mut Connection) -> Option<ErrorCode> {
    let mut fatal = None;
    loop {
        match tokio::time::timeout(WAIT, conn.next_event())
            .await
            .expect("close in time")
        {
            Some(Event::Error {
                code, fatal: true, ..
            }) => fatal = Some(code),
            Some(Event::Closed(CloseReason::Fatal { code, .. })) => return Some(code),
            Some(Event::Closed(_)) | None => return fatal,
            Some(_) => {}
        }
    }
}

async fn register_login_and_logout_revokes_live_connections(transport: TransportPref) {
    let server = TestServer::start().await;
    let mut alice = user(&server, "alice").await;
    assert_eq!(alice.http.me().await.expect("me").username, "alice");
    let (mut live, _) = connect_synced(&server, transport, &alice, DeviceId::random()).await;
    live.ping().await.expect("ping before logout");

    alice.http.logout().await.expect("logout");
    assert_eq!(
        closed_with(&mut live).await,
        Some(ErrorCode::TokenRevoked),
        "the live connection is closed"
    );

    // The revoked token can neither connect nor call the API.
    let error = Connection::connect(
        &server.config(transport),
        &alice.token,
        DeviceId::random(),
        &[],
    )
    .await
    .expect_err("revoked token must not connect");
    assert_eq!(error.code(), Some("unauthenticated"), "{error}");
    let stale = server.http().with_token(alice.token.clone());
    let error = stale.me().await.expect_err("revoked token must not read");
    assert!(
        matches!(&error, Error::Api(f) if f.status == 401),
        "{error}"
    );
}

async fn wrong_password_is_refused_without_a_session(transport: TransportPref) {
    let server = TestServer::start().await;
    let mut http = server.http();
    http.register("bob", PASSWORD).await.expect("register");
    let error = http
        .login("bob", "not the password")
        .await
        .expect_err("wrong password");
    assert!(
        matches!(&error, Error::Api(f) if f.status == 401 && f.code == "unauthenticated"),
        "{error}"
    );
    assert!(http.token().is_none(), "no session was created");
    let response = https(&server)
        .get(format!("https://{}/api/v1/me", server.addr))
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), 401, "no token, no access");
    // A made-up token does not open a socket either.
    let error = Connection::connect(
        &server.config(transport),
        "made-up-token",
        DeviceId::random(),
        &[],
    )
    .await
    .expect_err("invalid token");
    assert_eq!(error.code(), Some("unauthenticated"), "{error}");
    // Registering the same name again (in another case) is a conflict.
    let error = http.register("BOB", PASSWORD).await.expect_err("duplicate");
    assert!(
        matches!(&error, Error::Api(f) if f.status == 409),
        "{error}"
    );
}

async fn brute_force_login_is_rate_limited(_transport: TransportPref) {
    let server = TestServer::start().await;
    let mut http = server.http();
    http.register("carol", PASSWORD).await.expect("register");
    let mut limited = None;
    for attempt in 0..10 {
        match http.login("carol", &format!("guess-{attempt}")).await {
            Err(Error::Api(f)) if f.status == 401 => {}
            Err(Error::Api(f)) if f.status == 429 => {
                limited = Some((attempt, f));
                break;
            }
            other => panic!("unexpected login result: {other:?}"),
        }
    }
    let (attempt, failure) = limited.expect("brute force must be stopped");
    assert_eq!(attempt, 5, "five failures are allowed per window");
    assert_eq!(failure.code, "rate_limited");
    let retry_after = failure.retry_after.expect("429 carries Retry-After");
    assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(60));
    // Even the right password is refused while limited: the attacker learns nothing.
    let error = http
        .login("carol", PASSWORD)
        .await
        .expect_err("still limited");
    assert!(
        matches!(&error, Error::Api(f) if f.status == 429),
        "{error}"
    );
}

async fn direct_conversation_delivers_persists_and_shows_in_history(transport: TransportPref) {
    let server = TestServer::start().await;
    let alice = user(&server, "alice").await;
    let bob = user(&server, "bob").await;
    let created = alice.http.create_direct("bob").await.expect("dm");
    let again = bob
        .http
        .create_direct("alice")
        .await
        .expect("dm from the other side");
    assert_eq!(
        created.conversation_id, again.conversation_id,
        "one 1:1 conversation per pair"
    );
    let conversation = created.conversation_id;

    let (alice_conn, _) = connect_synced(&server, transport, &alice, DeviceId::random()).await;
    let (mut bob_conn, _) = connect_synced(&server, transport, &bob, DeviceId::random()).await;
    let payload = "hello bob 👋 — ünïcödé".as_bytes().to_vec();
    let receipt = alice_conn
        .send(conversation, 1, "text", payload.clone())
        .await
        .expect("send");
    assert_eq!(receipt.seq, 1);
    assert!(!receipt.duplicate);
    let got = next_message(&mut bob_conn).await;
    assert_eq!(
        (got.conversation, got.seq, &got.payload),
        (conversation, 1, &payload)
    );
    assert_eq!(got.sender_user, alice.id);
    assert_eq!(got.message_id, receipt.message_id);

    // History over HTTPS and over the socket agree, and the list shows the conversation.
    let page = bob
        .http
        .history(conversation, HistoryQuery::default())
        .await
        .expect("history");
    assert_eq!(page.messages.len(), 1);
    assert_eq!(page.messages[0].seq, 1);
    let over_socket = bob_conn
        .history(conversation, 0, 0, 50)
        .await
        .expect("socket history");
    assert_eq!(over_socket.messages, vec![got]);
    let listed = bob.http.conversations().await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].conversation_id, conversation);
    assert_eq!(listed[0].last_seq, 1);
}

async fn group_of_five_delivers_to_every_online_member(transport: TransportPref) {
    let server = TestServer::start().await;
    let names = ["ann", "ben", "cat", "dan", "eve"];
    let mut users = Vec::new();
    for name in names {
        users.push(user(&server, name).await);
    }
    let others: Vec<&TestUser> = users[1..].iter().collect();
    let group_id = group_with_members(&users[0], "Five of us", &others).await;
    let group = users[0]
        .http
        .conversations()
        .await
        .expect("list")
        .into_iter()
        .find(|c| c.conversation_id == group_id)
        .expect("group");
    assert_eq!(group.members.len(), 5);
    let mut conns = Vec::new();
    for u in &users {
        conns.push(
            connect_synced(&server, transport, u, DeviceId::random())
                .await
                .0,
        );
    }
    // Ann's second device receives her own message too.
    let (mut ann_phone, _) =
        connect_synced(&server, transport, &users[0], DeviceId::random()).await;
    let receipt = conns[0]
        .send(group.conversation_id, 7, "text", text("hi all"))
        .await
        .expect("send");
    for conn in conns.iter_mut().skip(1) {
        let got = next_message(conn).await;
        assert_eq!(
            (got.seq, got.payload.as_slice()),
            (receipt.seq, b"hi all".as_slice())
        );
    }
    assert_eq!(next_message(&mut ann_phone).await.seq, receipt.seq);
    assert_quiet(&mut conns[0]).await;
}

async fn offline_member_gets_missed_messages_in_order(transport: TransportPref) {
    let server = TestServer::start().await;
    let (alice, bob, conversation) = alice_and_bob(&server).await;
    let bob_device = DeviceId::random();
    // Bob reads the first message, acknowledges it, and goes offline.
    let (alice_conn, _) = connect_synced(&server, transport, &alice, DeviceId::random()).await;
    let (mut bob_conn, _) = connect_synced(&server, transport, &bob, bob_device).await;
    alice_conn
        .send(conversation, 1, "text", text("m1"))
        .await
        .expect("send");
    let first = next_message(&mut bob_conn).await;
    // Acknowledging beyond what was delivered only moves the cursor to what was delivered.
    bob_conn
        .ack(conversation, first.seq + 1000)
        .await
        .expect("ack");
    bob_conn
        .ping()
        .await
        .expect("the ack was processed before the ping's answer");
    bob_conn.close().await;

    for i in 2..=21u128 {
        alice_conn
            .send(conversation, i, "text", text(&format!("m{i}")))
            .await
            .expect("send while bob is away");
    }
    // The stored cursor (seq 1) decides where the replay starts.
    let (mut bob_conn, replayed) = connect_synced(&server, transport, &bob, bob_device).await;
    let seqs: Vec<u64> = replayed.iter().map(|m| m.seq).collect();
    assert_eq!(
        seqs,
        (2..=21).collect::<Vec<u64>>(),
        "everything missed, in order, nothing twice"
    );
    assert_eq!(replayed[0].payload, text("m2"));
    // Then live traffic.
    alice_conn
        .send(conversation, 22, "text", text("live"))
        .await
        .expect("send");
    assert_eq!(next_message(&mut bob_conn).await.seq, 22);

    // A client-given cursor overrides the stored one.
    let cursors = [Cursor {
        conversation,
        seq: 20,
    }];
    let mut conn = Connection::connect(
        &server.config(transport),
        &bob.token,
        DeviceId::random(),
        &cursors,
    )
    .await
    .expect("connect with cursor");
    assert_eq!(next_message(&mut conn).await.seq, 21);
    assert_eq!(next_message(&mut conn).await.seq, 22);
    assert!(matches!(next(&mut conn).await, Event::SyncComplete));
}

async fn a_new_device_replays_a_long_history_from_the_start(transport: TransportPref) {
    let server = TestServer::start().await;
    let (alice, bob, conversation) = alice_and_bob(&server).await;
    let (conn, _) = connect_synced(&server, transport, &alice, DeviceId::random()).await;
    // More than one replay page (256), sent in concurrent waves.
    let total = 600u128;
    for wave in 0..(total / 50) {
        let sends =
            (0..50u128).map(|i| conn.send(conversation, wave * 50 + i + 1, "text", text("x")));
        for result in join_all(sends).await {
            result.expect("send");
        }
    }
    let (_bob_conn, replayed) = connect_synced(&server, transport, &bob, DeviceId::random()).await;
    let seqs: Vec<u64> = replayed.iter().map(|m| m.seq).collect();
    assert_eq!(
        seqs,
        (1..=total as u64).collect::<Vec<_>>(),
        "a device with no cursor gets everything, in order"
    );
}

async fn shutdown_tells_clients_to_go_away_and_restart_resumes(transport: TransportPref) {
    let mut server = TestServer::start().await;
    let (alice, bob, conversation) = alice_and_bob(&server).await;
    let bob_device = DeviceId::random();
    let (mut bob_conn, _) = connect_synced(&server, transport, &bob, bob_device).await;
    server.terminate().await;
    let mut going_away = false;
    let mut fatal = None;
    loop {
        match tokio::time::timeout(WAIT, bob_conn.next_event())
            .await
            .expect("close in time")
        {
            Some(Event::Notice(tern_sdk::tern_wire::msg::Notice::GoingAway { retry_after_ms })) => {
                assert!(retry_after_ms > 0);
                going_away = true;
            }
            Some(Event::Error {
                code, fatal: true, ..
            }) => fatal = Some(code),
            Some(Event::Closed(CloseReason::Fatal { code, .. })) => {
                fatal = Some(code);
                break;
            }
            Some(Event::Closed(_)) | None => break,
            Some(_) => {}
        }
    }
    assert!(going_away, "clients are told to come back later");
    assert_eq!(fatal, Some(ErrorCode::ServerShutdown));
    server.restart().await;
    let (alice_conn, _) = connect_synced(&server, transport, &alice, DeviceId::random()).await;
    alice_conn
        .send(conversation, 1, "text", text("after restart"))
        .await
        .expect("send");
    let (_, replayed) = connect_synced(&server, transport, &bob, bob_device).await;
    assert_eq!(replayed.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![1]);
}

async fn resending_a_client_message_id_yields_one_message(transport: TransportPref) {
    let server = TestServer::start().await;
    let (alice, _bob, conversation) = alice_and_bob(&server).await;
    let (conn, _) = connect_synced(&server, transport, &alice, DeviceId::random()).await;
    let id = 0xfeed_beef_u128;
    // Concurrent copies (in flight together) and a later retry all map to one message.
    let copies = join_all((0..3).map(|_| conn.send(conversation, id, "text", text("once")))).await;
    let receipts: Vec<_> = copies.into_iter().map(|r| r.expect("send")).collect();
    assert!(
        receipts
            .iter()
            .all(|r| r.seq == receipts[0].seq && r.message_id == receipts[0].message_id)
    );
    assert_eq!(
        receipts.iter().filter(|r| !r.duplicate).count(),
        1,
        "exactly one copy created the message"
    );
    let retry = conn
        .send(conversation, id, "text", text("once"))
        .await
        .expect("retry");
    assert!(retry.duplicate);
    assert_eq!(retry.seq, receipts[0].seq);
    // After a restart (no in-memory state) a retry is still recognised.
    drop(conn);
    let mut server = server;
    server.restart().await;
    let (conn, _) = connect_synced(&server, transport, &alice, DeviceId::random()).await;
    let retry = conn
        .send(conversation, id, "text", text("once"))
        .await
        .expect("retry after restart");
    assert!(retry.duplicate);
    assert_eq!(retry.seq, receipts[0].seq);
    let page = alice
        .http
        .history(conversation, HistoryQuery::default())
        .await
        .expect("history");
    assert_eq!(page.messages.len(), 1);
}

async fn acknowledged_messages_survive_kill_9(transport: TransportPref) {
    let mut server = TestServer::start().await;
    let (alice, _bob, conversation) = alice_and_bob(&server).await;
    let (conn, _) = connect_synced(&server, transport, &alice, DeviceId::random()).await;
    let mut acked = BTreeMap::new();
    // Waves of concurrent sends; the server is killed while the fourth wave is in flight.
    for wave in 0..4u128 {
        let sends = join_all((0..25u128).map(|i| {
            let id = wave * 1000 + i;
            let conn = &conn;
            async move {
                (
                    id,
                    conn.send(conversation, id, "text", text(&format!("msg {id}")))
                        .await,
                )
            }
        }));
        let results = if wave == 3 {
            let (results, ()) = tokio::join!(sends, async {
                tokio::time::sleep(Duration::from_millis(2)).await;
                server.kill9().await;
            });
            results
        } else {
            sends.await
        };
        for (id, result) in results {
            if let Ok(receipt) = result {
                acked.insert(id, receipt.seq);
            }
        }
    }
    assert!(acked.len() >= 75, "the first three waves were acknowledged");
    drop(conn);
    server.restart().await;
    let mut stored = Vec::new();
    let mut after = 0;
    loop {
        let page = alice
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
            .expect("history after restart");
        if page.messages.is_empty() {
            break;
        }
        after = page.messages.last().map(|m| m.seq).unwrap_or(after);
        stored.extend(page.messages);
    }
    let seqs: Vec<u64> = stored.iter().map(|m| m.seq).collect();
    assert_eq!(
        seqs,
        (1..=stored.len() as u64).collect::<Vec<_>>(),
        "gapless after the crash"
    );
    let stored_ids: Vec<String> = stored.iter().map(|m| m.client_msg_id.clone()).collect();
    let unique: HashSet<&String> = stored_ids.iter().collect();
    assert_eq!(unique.len(), stored_ids.len(), "no message stored twice");
    for (id, seq) in &acked {
        let hex = format!("{id:032x}");
        let found = stored
            .iter()
            .find(|m| m.client_msg_id == hex)
            .unwrap_or_else(|| panic!("acked message {id} lost"));
        assert_eq!(found.seq, *seq, "stored under the acknowledged seq");
    }
}

async fn bad_frames_get_an_error_and_a_close_while_others_keep_working(transport: TransportPref) {
    let server = TestServer::start().await;
    let (alice, bob, conversation) = alice_and_bob(&server).await;
    let (alice_conn, _) = connect_synced(&server, transport, &alice, DeviceId::random()).await;
    let (mut bob_conn, _) = connect_synced(&server, transport, &bob, DeviceId::random()).await;
    let config = server.config(transport);
    let limits = tern_sdk::tern_wire::Limits::default();

    let cases: Vec<(&str, Vec<u8>, ErrorCode)> = vec![
        (
            "garbage",
            b"this is not a flatbuffer at all".to_vec(),
            ErrorCode::MalformedFrame,
        ),
        (
            "oversized",
            vec![0u8; limits.max_frame_bytes + 1],
            ErrorCode::FrameTooLarge,
        ),
        (
            "unauthenticated",
            tern_sdk::tern_wire::encode_client(&ClientMessage::Ping { nonce: 1 }),
            ErrorCode::Unauthenticated,
        ),
        (
            "server message from a client",
            tern_sdk::tern_wire::encode_server(&ServerMessage::SyncComplete),
            ErrorCode::MalformedFrame,
        ),
    ];
    for (name, frame, expected) in cases {
        let mut raw = Transport::connect(&config).await.expect("raw connect");
        raw.send_frame(&frame)
            .await
            .unwrap_or_else(|e| panic!("{name}: send: {e}"));
        let reply = raw
            .recv_message(&limits)
            .await
            .unwrap_or_else(|e| panic!("{name}: read: {e}"));
        match reply {
            Some(ServerMessage::Error {
                code, fatal: true, ..
            }) => assert_eq!(code, expected, "{name}"),
            other => panic!("{name}: expected a fatal error, got {other:?}"),
        }
        // Then the server closes the connection.
        let after = tokio::time::timeout(WAIT, raw.recv_frame())
            .await
            .expect("closed in time");
        assert!(
            !matches!(after, Ok(Some(_))),
            "{name}: nothing follows the fatal error"
        );
    }

    // A malformed frame after a good Hello also ends only that connection.
    let mut raw = Transport::connect(&config).await.expect("raw connect");
    raw.send_message(&ClientMessage::Hello {
        min_version: 1,
        max_version: PROTOCOL_VERSION,
        token: bob.token.clone(),
        device: DeviceId::random(),
        client_name: "raw".into(),
        cursors: vec![],
    })
    .await
    .expect("hello");
    assert!(matches!(
        raw.recv_message(&limits).await,
        Ok(Some(ServerMessage::Welcome { .. }))
    ));
    raw.send_frame(&[0xff; 64]).await.expect("send garbage");
    let mut saw_error = false;
    while let Ok(Ok(Some(message))) = tokio::time::timeout(WAIT, raw.recv_message(&limits)).await {
        if let ServerMessage::Error {
            code: ErrorCode::MalformedFrame,
            fatal: true,
            ..
        } = message
        {
            saw_error = true;
        }
    }
    assert!(
        saw_error,
        "the malformed frame was reported before the close"
    );

    // A payload that fits the frame but not the payload limit is refused without a close.
    let error = alice_conn
        .send(conversation, 98, "text", vec![7; 61 * 1024])
        .await
        .expect_err("payload too large");
    assert_eq!(error.code(), Some("limit_exceeded"), "{error}");

    // Everyone else is unaffected.
    let receipt = alice_conn
        .send(conversation, 99, "text", text("still here"))
        .await
        .expect("send");
    let got = next_message(&mut bob_conn).await;
    assert_eq!(got.seq, receipt.seq);
}

async fn non_members_can_neither_read_nor_write(transport: TransportPref) {
    let server = TestServer::start().await;
    let alice = user(&server, "alice").await;
    let _bob = user(&server, "bob").await;
    let mallory = user(&server, "mallory").await;
    let conversation = alice
        .http
        .create_direct("bob")
        .await
        .expect("dm")
        .conversation_id;
    let (mallory_conn, replayed) =
        connect_synced(&server, transport, &mallory, DeviceId::random()).await;
    assert!(replayed.is_empty());
    let error = mallory_conn
        .send(conversation, 1, "text", text("let me in"))
        .await
        .expect_err("not a member");
    // Answered like a missing conversation: the id's existence is not disclosed.
    assert_eq!(error.code(), Some("not_found"), "{error}");
    let error = mallory_conn
        .history(conversation, 0, 0, 10)
        .await
        .expect_err("not a member");
    assert_eq!(error.code(), Some("not_found"), "{error}");
    let error = mallory
        .http
        .history(conversation, HistoryQuery::default())
        .await
        .expect_err("not a member");
    assert!(
        matches!(&error, Error::Api(f) if f.status == 404),
        "{error}"
    );
    // Resuming a foreign conversation yields nothing.
    mallory_conn
        .resume(&[Cursor {
            conversation,
            seq: 0,
        }])
        .await
        .expect("resume");
    let mut conn = mallory_conn;
    assert!(matches!(next(&mut conn).await, Event::SyncComplete));
    let page = alice
        .http
        .history(conversation, HistoryQuery::default())
        .await
        .expect("history");
    assert!(page.messages.is_empty(), "nothing was stored");
    let _ = expect_fatal;
}

#[tokio::test]
async fn login_attempts_are_limited_per_address() {
    let server = TestServer::start_with(&["login_attempts_per_address = 4"]).await;
    let mut http = server.http();
    // Spreading guesses over many usernames does not get around the per-address limit.
    let mut statuses = Vec::new();
    for i in 0..6 {
        match http.login(&format!("nobody{i}"), "whatever-password").await {
            Err(Error::Api(f)) => statuses.push(f.status),
            other => panic!("unexpected login result: {other:?}"),
        }
    }
    assert_eq!(statuses, vec![401, 401, 401, 401, 429, 429]);
    // Registration costs an argon2 hash too, so it counts against the same limit.
    let error = http
        .register("newcomer", PASSWORD)
        .await
        .expect_err("limited");
    assert!(
        matches!(&error, Error::Api(f) if f.status == 429 && f.retry_after.is_some()),
        "{error}"
    );
}

#[tokio::test]
async fn plain_http_gets_no_http_response() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start().await;
    let mut stream = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("tcp connect");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut answer))
        .await
        .expect("closed in time");
    assert!(
        !answer.starts_with(b"HTTP/"),
        "a plaintext request must not get an HTTP answer: {answer:?}"
    );
    assert!(
        !String::from_utf8_lossy(&answer).contains("ok"),
        "no content leaks over plaintext"
    );
}

#[tokio::test]
async fn operations_endpoints_and_openapi_document() {
    let server = TestServer::start().await;
    let client = https(&server);
    let base = format!("https://{}", server.addr);
    let health = client
        .get(format!("{base}/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);

    let transport: serde_json::Value = client
        .get(format!("{base}/api/v1/transport"))
        .send()
        .await
        .expect("transport")
        .json()
        .await
        .expect("json");
    assert_eq!(
        transport["webtransport_url"],
        format!("https://{}/api/v1/wt", server.addr)
    );
    assert_eq!(
        transport["certificate_hashes"][0]["value"],
        hex::encode(server.cert_hash)
    );
    assert_eq!(transport["certificate_hashes"][0]["algorithm"], "sha-256");

    let openapi: serde_json::Value = client
        .get(format!("{base}/api/v1/openapi.json"))
        .send()
        .await
        .expect("openapi")
        .json()
        .await
        .expect("json");
    for path in [
        "/api/v1/register",
        "/api/v1/login",
        "/api/v1/logout",
        "/api/v1/conversations/{id}/messages",
        "/api/v1/blocks",
        "/api/v1/blocks/{username}",
    ] {
        assert!(
            openapi["paths"].get(path).is_some(),
            "OpenAPI documents {path}"
        );
    }

    // Generate some traffic, then read the metrics.
    let (alice, _bob, conversation) = alice_and_bob(&server).await;
    let (conn, _) = connect_synced(
        &server,
        TransportPref::WebSocket,
        &alice,
        DeviceId::random(),
    )
    .await;
    conn.send(conversation, 1, "text", text("count me"))
        .await
        .expect("send");
    // Metrics are served on the operations listener only (issue 10).
    let ops = server.ops_addr.expect("operations listener");
    let metrics = client
        .get(format!("https://{ops}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for name in [
        "tern_connections{transport=\"ws\"} 1",
        "tern_frames_in_total{transport=\"ws\"}",
        "tern_engine_messages_committed_total 1",
        "tern_storage_commit_seconds_bucket",
        "tern_send_queue_frames",
    ] {
        assert!(metrics.contains(name), "metrics expose {name}:\n{metrics}");
    }

    // Errors are JSON with stable codes.
    let response = client
        .post(format!("{base}/api/v1/register"))
        .body("{not json")
        .header("content-type", "application/json")
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.expect("json error");
    assert_eq!(body["error"]["code"], "invalid_argument");
    let response = client
        .get(format!("{base}/api/v1/nope"))
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn configured_pem_certificate_is_served_and_verified_by_ca() {
    // An operator's CA and a leaf it signed for localhost/127.0.0.1.
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("ca key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test ca");
    let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("leaf key");
    let leaf_params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("leaf params");
    let leaf = leaf_params
        .signed_by(&leaf_key, &issuer)
        .expect("leaf cert");

    let dir = tempfile::tempdir().expect("tempdir");
    let cert_path = dir.path().join("fullchain.pem");
    let key_path = dir.path().join("privkey.pem");
    std::fs::write(&cert_path, format!("{}{}", leaf.pem(), ca_cert.pem())).expect("write cert");
    std::fs::write(&key_path, leaf_key.serialize_pem()).expect("write key");
    let lines = [
        format!("tls_cert = {:?}", cert_path.display().to_string()),
        format!("tls_key = {:?}", key_path.display().to_string()),
    ];
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    let server = TestServer::start_in(dir, &lines).await;
    assert_eq!(
        server.cert_hash,
        <[u8; 32]>::from(sha2::Sha256::digest(leaf.der())),
        "the banner shows the served leaf"
    );
    assert!(
        !server.data_dir.join("tls").exists(),
        "no self-signed certificate is made when one is configured"
    );

    for transport in [TransportPref::WebSocket, TransportPref::WebTransport] {
        let mut config = tern_sdk::Config::new(
            &server.addr.to_string(),
            tern_sdk::Trust::CaPem(ca_cert.pem().into_bytes()),
        )
        .expect("config");
        config.transport = transport;
        let mut http = tern_sdk::HttpApi::new(&config).expect("http");
        let name = format!("dora{}", transport as u8);
        http.register(&name, PASSWORD)
            .await
            .expect("register over CA-verified TLS");
        let login = http.login(&name, PASSWORD).await.expect("login");
        let conn = Connection::connect(&config, &login.token, DeviceId::random(), &[])
            .await
            .expect("connect");
        conn.ping().await.expect("ping");
    }
}

/// Open sessions on each of two shards.
async fn sessions_per_shard(server: &TestServer) -> [f64; 2] {
    [
        metric(server, "tern_shard_connections{shard=\"0\"}").await,
        metric(server, "tern_shard_connections{shard=\"1\"}").await,
    ]
}

/// Connects a device and tells which shard the kernel gave its connection to.
async fn connect_on_some_shard(
    server: &TestServer,
    transport: TransportPref,
    user: &TestUser,
) -> (Connection, usize) {
    let before = sessions_per_shard(server).await;
    let (conn, _) = connect_synced(server, transport, user, DeviceId::random()).await;
    let after = sessions_per_shard(server).await;
    let shard = (0..2)
        .find(|&s| after[s] > before[s])
        .expect("the new session shows on a shard");
    (conn, shard)
}

async fn members_on_different_shards_talk_through_conversations_on_both_shards(
    transport: TransportPref,
) {
    let server = TestServer::start_with(&["shards = 2"]).await;
    let ann = user(&server, "ann").await;
    let ben = user(&server, "ben").await;
    // The kernel spreads connections over the shards by 4-tuple hash: connect Ben's devices
    // until one sits on the other shard than Ann's (each try is a coin flip).
    let (mut ann_conn, ann_shard) = connect_on_some_shard(&server, transport, &ann).await;
    let mut ben_conn = None;
    for _ in 0..40 {
        let (conn, shard) = connect_on_some_shard(&server, transport, &ben).await;
        if shard != ann_shard {
            ben_conn = Some(conn);
            break;
        }
        drop(conn);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut ben_conn = ben_conn.expect("a connection landed on the other shard");
    // Conversations belong to shards by id: make groups until both engine shards sequenced
    // messages, each exchanged both ways between the two connection shards.
    let mut request = 0;
    for attempt in 0..40 {
        let group_id = group_with_members(&ann, &format!("pair {attempt}"), &[&ben]).await;
        request += 1;
        let there = ann_conn
            .send(group_id, request, "text", text("to ben"))
            .await
            .expect("send from ann");
        let got = next_message(&mut ben_conn).await;
        assert_eq!((got.conversation, got.seq), (group_id, there.seq));
        request += 1;
        let back = ben_conn
            .send(group_id, request, "text", text("to ann"))
            .await
            .expect("send from ben");
        let got = next_message(&mut ann_conn).await;
        assert_eq!((got.conversation, got.seq), (group_id, back.seq));
        assert_eq!(back.seq, there.seq + 1);
        let on_shard_0 = metric(&server, "tern_engine_shard_messages_total{shard=\"0\"}").await;
        let on_shard_1 = metric(&server, "tern_engine_shard_messages_total{shard=\"1\"}").await;
        if on_shard_0 > 0.0 && on_shard_1 > 0.0 {
            assert_quiet(&mut ann_conn).await;
            assert_quiet(&mut ben_conn).await;
            return;
        }
    }
    panic!("40 conversations all landed on one engine shard");
}

async fn resume_past_the_backlog_limit_is_truncated_and_history_has_the_rest(
    transport: TransportPref,
) {
    let server = TestServer::start_with(&["resume_backlog_messages = 50"]).await;
    let (alice, bob, conversation) = alice_and_bob(&server).await;
    let (conn, _) = connect_synced(&server, transport, &alice, DeviceId::random()).await;
    let total = 130u64;
    for wave in 0..(total / 10) {
        let sends = (0..10u64).map(|i| {
            let id = u128::from(wave * 10 + i + 1);
            conn.send(conversation, id, "text", text("x"))
        });
        for result in join_all(sends).await {
            result.expect("send");
        }
    }
    // Bob's new device: a notice for the oldest 80, then the newest 50 in order.
    let bob_device = DeviceId::random();
    let mut bob_conn = connect(&server, transport, &bob, bob_device).await;
    let mut truncated = None;
    let mut replayed = Vec::new();
    loop {
        match next(&mut bob_conn).await {
            Event::Notice(tern_sdk::tern_wire::msg::Notice::BacklogTruncated {
                conversation: c,
                from_seq,
                to_seq,
            }) => {
                assert!(replayed.is_empty(), "the notice comes before the replay");
                truncated = Some((c, from_seq, to_seq));
            }
            Event::Deliver(m) => replayed.push(m.seq),
            Event::SyncComplete => break,
            Event::Other(_) => {}
            other => panic!("unexpected event during resume: {other:?}"),
        }
    }
    assert_eq!(truncated, Some((conversation, 1, total - 50)));
    assert_eq!(replayed, ((total - 49)..=total).collect::<Vec<_>>());
    // Nothing was deleted: the skipped range comes from history on demand.
    let page = bob_conn
        .history(conversation, total - 49, 0, 100)
        .await
        .expect("history of the skipped range");
    let seqs: Vec<u64> = page.messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=total - 50).collect::<Vec<_>>());
    // Acknowledging the newest moves the cursor past the gap: the next resume is empty.
    bob_conn.ack(conversation, total).await.expect("ack");
    bob_conn.ping().await.expect("ack processed");
    drop(bob_conn);
    // Cursors are written with the next group commit, asynchronously: poll (bounded) until the
    // device resumes with nothing to replay and no notice.
    for attempt in 0.. {
        let mut again = connect(&server, transport, &bob, bob_device).await;
        let mut quiet = true;
        loop {
            match next(&mut again).await {
                Event::SyncComplete => break,
                Event::Other(_) => {}
                _ => quiet = false,
            }
        }
        if quiet {
            break;
        }
        assert!(attempt < 50, "the acknowledged cursor was stored");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn a_slow_consumer_is_disconnected_and_resumes_without_loss_while_others_are_unaffected(
    transport: TransportPref,
) {
    // Small per-connection queue, big frames: a reader that stops fills the kernel buffers (tens
    // of MB on loopback), then its session's queue, within a few dozen messages.
    let server =
        TestServer::start_with(&["send_queue_frames = 16", "max_frame_bytes = 1048576"]).await;
    let names = ["alice", "bob", "carol"];
    let mut users = Vec::new();
    for name in names {
        users.push(user(&server, name).await);
    }
    let group = group_with_members(&users[0], "slow", &[&users[1], &users[2]]).await;
    let mut config = server.config(transport);
    config.max_frame_bytes = 2 * 1024 * 1024;
    let big = |user: &TestUser, device: DeviceId| {
        let config = config.clone();
        let token = user.token.clone();
        async move {
            let mut conn = Connection::connect(&config, &token, device, &[])
                .await
                .expect("connect");
            let mut replayed = Vec::new();
            loop {
                match next(&mut conn).await {
                    Event::SyncComplete => break,
                    Event::Deliver(m) => replayed.push(m.seq),
                    _ => {}
                }
            }
            (conn, replayed)
        }
    };
    let (alice, _) = big(&users[0], DeviceId::random()).await;
    let (mut carol, _) = big(&users[2], DeviceId::random()).await;
    // Bob's device says Hello and then never reads again.
    let bob_device = DeviceId::random();
    let limits = tern_sdk::tern_wire::Limits::default();
    let mut stalled = Transport::connect(&config).await.expect("raw connect");
    stalled
        .send_message(&ClientMessage::Hello {
            min_version: 1,
            max_version: PROTOCOL_VERSION,
            token: users[1].token.clone(),
            device: bob_device,
            client_name: "stalled".into(),
            cursors: vec![],
        })
        .await
        .expect("hello");
    let mut welcomed = false;
    while let Ok(Some(message)) = stalled.recv_message(&limits).await {
        match message {
            ServerMessage::Welcome { .. } => welcomed = true,
            ServerMessage::SyncComplete => break,
            _ => {}
        }
    }
    assert!(welcomed);

    let total = 60u64;
    let payload = vec![7u8; 1_000_000];
    let carol_reads = tokio::spawn(async move {
        let mut seqs = Vec::new();
        while seqs.len() < total as usize {
            let m = tokio::time::timeout(Duration::from_secs(60), carol.next_event())
                .await
                .expect("carol keeps receiving")
                .expect("carol's connection stays open");
            if let Event::Deliver(m) = m {
                assert_eq!(m.payload.len(), 1_000_000);
                seqs.push(m.seq);
            }
        }
        seqs
    });
    for wave in 0..(total / 10) {
        let sends = (0..10u64).map(|i| {
            let id = u128::from(wave * 10 + i + 1);
            alice.send(group, id, "blob", payload.clone())
        });
        for result in join_all(sends).await {
            result.expect("alice's sends are acknowledged");
        }
    }
    let carol_seqs = carol_reads.await.expect("carol's reader");
    assert_eq!(
        carol_seqs,
        (1..=total).collect::<Vec<_>>(),
        "carol got everything, in order"
    );

    // The server gave up on the stalled connection.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while metric(&server, "tern_engine_slow_consumer_disconnects_total").await < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stalled connection was disconnected as a slow consumer"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(stalled);
    // Bob's device comes back and resumes from its cursor: everything, once, in order.
    let (_bob, replayed) = big(&users[1], bob_device).await;
    assert_eq!(replayed, (1..=total).collect::<Vec<_>>());
}

/// The suite runs once per I/O driver: make sure the one asked for is the one moving the bytes
/// (io_uring counts its sends; epoll has none).
#[tokio::test]
async fn websocket_traffic_goes_through_the_requested_io_driver() {
    let server = TestServer::start().await;
    let (alice, bob, conversation) = alice_and_bob(&server).await;
    let (alice_conn, _) = connect_synced(
        &server,
        TransportPref::WebSocket,
        &alice,
        DeviceId::random(),
    )
    .await;
    let (mut bob_conn, _) =
        connect_synced(&server, TransportPref::WebSocket, &bob, DeviceId::random()).await;
    alice_conn
        .send(conversation, 1, "text", text("which driver?"))
        .await
        .expect("send");
    next_message(&mut bob_conn).await;
    let uring_sends = || async {
        metric(&server, "tern_uring_sends_total{shard=\"0\"}").await
            + metric(&server, "tern_uring_sends_total{shard=\"1\"}").await
    };
    let log_says_uring = || server.log().contains("io=Uring");
    match std::env::var("TERN_TEST_IO").as_deref() {
        Ok("epoll") => {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            assert_eq!(uring_sends().await, 0.0, "epoll: io_uring moved nothing");
            assert!(!log_says_uring());
        }
        Ok("uring") => {
            // The driver's counters are exported once a second.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while uring_sends().await == 0.0 {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "io_uring sent the frames"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            assert!(log_says_uring());
        }
        // The default is epoll (io_uring is opt-in until it wins on CPU too).
        // scripts/test.sh relies on this: the unset run stands in for `--io epoll`.
        Err(_) => {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            assert_eq!(uring_sends().await, 0.0, "the default driver is epoll");
            assert!(!log_says_uring());
        }
        Ok(other) => panic!("unknown TERN_TEST_IO {other:?}"),
    }
}

/// A server killed and restarted answers the old connection's next packet with a QUIC stateless
/// reset the client recognises (the reset secret persists in the data directory), so the client
/// reconnects at once instead of waiting for a timeout.
#[tokio::test]
async fn webtransport_clients_learn_of_a_restart_at_once() {
    let mut server = TestServer::start().await;
    let alice = user(&server, "alice").await;
    let (conn, _) = connect_synced(
        &server,
        TransportPref::WebTransport,
        &alice,
        DeviceId::random(),
    )
    .await;
    server.restart().await;
    // Without a recognised reset the ping would wait for its 10 s request timeout.
    let answer = tokio::time::timeout(Duration::from_secs(5), conn.ping()).await;
    assert!(
        matches!(answer, Ok(Err(_))),
        "the old connection failed fast after the restart: {answer:?}"
    );
}
