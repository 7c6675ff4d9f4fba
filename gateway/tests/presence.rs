//! Presence and typing against the real server, over both transports.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tern_sdk::tern_wire::ids::{ConversationId, DeviceId, UserId};
use tern_sdk::tern_wire::msg::{ClientMessage, PresenceStatus, ServerMessage};
use tern_sdk::{Connection, Event, TransportPref};

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
    presence_follows_connections_with_a_grace_period_and_reaches_only_contacts,
    typing_reaches_members_expires_and_is_rate_limited,
);

const GRACE_MS: u64 = 600;
const TYPING_TIMEOUT_MS: u64 = 800;

async fn start() -> TestServer {
    TestServer::start_with(&[
        &format!("presence_grace_ms = {GRACE_MS}"),
        &format!("typing_timeout_ms = {TYPING_TIMEOUT_MS}"),
    ])
    .await
}

/// Waits for `user`'s presence with `status`, skipping other events; returns `last_seen_ms`.
/// Any other presence of `user` on the way fails the test.
async fn expect_presence(conn: &mut Connection, user: UserId, status: PresenceStatus) -> u64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = tokio::time::timeout(left, conn.next_event())
            .await
            .unwrap_or_else(|_| panic!("no {status:?} presence for {user:?} in time"))
            .expect("connection open");
        if let Event::Other(ServerMessage::Presence {
            user: u,
            status: s,
            last_seen_ms,
        }) = event
            && u == user
        {
            assert_eq!(s, status, "unexpected presence of {user:?}");
            return last_seen_ms;
        }
    }
}

/// Reads events for `window`; fails if a presence of `user` arrives.
async fn expect_no_presence(conn: &mut Connection, user: UserId, window: Duration) {
    let deadline = Instant::now() + window;
    while let Ok(event) = tokio::time::timeout_at(deadline.into(), conn.next_event()).await {
        if let Some(Event::Other(ServerMessage::Presence {
            user: u, status, ..
        })) = &event
        {
            assert_ne!(*u, user, "unexpected presence {status:?} of {user:?}");
        }
        assert!(event.is_some(), "connection closed");
    }
}

/// Typing events of `user` in `conversation` seen during `window`.
async fn typing_events(
    conn: &mut Connection,
    conversation: ConversationId,
    user: UserId,
    window: Duration,
) -> Vec<bool> {
    let deadline = Instant::now() + window;
    let mut seen = Vec::new();
    while let Ok(event) = tokio::time::timeout_at(deadline.into(), conn.next_event()).await {
        match event {
            Some(Event::Other(ServerMessage::Typing {
                conversation: c,
                user: u,
                active,
            })) if c == conversation && u == user => seen.push(active),
            Some(_) => {}
            None => panic!("connection closed"),
        }
    }
    seen
}

/// Waits for the next typing event of `user` in `conversation`.
async fn expect_typing(
    conn: &mut Connection,
    conversation: ConversationId,
    user: UserId,
    active: bool,
    within: Duration,
) {
    let deadline = Instant::now() + within;
    loop {
        let event = tokio::time::timeout_at(deadline.into(), conn.next_event())
            .await
            .unwrap_or_else(|_| panic!("no Typing {{ active: {active} }} in time"))
            .expect("connection open");
        if let Event::Other(ServerMessage::Typing {
            conversation: c,
            user: u,
            active: a,
        }) = event
            && c == conversation
            && u == user
        {
            assert_eq!(a, active, "typing state");
            return;
        }
    }
}

/// Polls a counter until it reaches `at_least` (bounded).
async fn counter_reaches(server: &TestServer, series: &str, at_least: f64) -> f64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let value = metric(server, series).await;
        if value >= at_least || Instant::now() > deadline {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn presence_follows_connections_with_a_grace_period_and_reaches_only_contacts(
    transport: TransportPref,
) {
    let server = start().await;
    let (alice, bob, _conversation) = alice_and_bob(&server).await;
    let carol = user(&server, "carol").await; // shares no conversation with alice

    let (mut bob_conn, _) = connect_synced(&server, transport, &bob, DeviceId::random()).await;
    let (mut carol_conn, _) = connect_synced(&server, transport, &carol, DeviceId::random()).await;

    // Alice comes online: her contact sees it, a stranger does not.
    let alice_device = DeviceId::random();
    let (alice_conn, _) = connect_synced(&server, transport, &alice, alice_device).await;
    expect_presence(&mut bob_conn, alice.id, PresenceStatus::Online).await;
    expect_no_presence(&mut carol_conn, alice.id, Duration::from_millis(300)).await;

    // A quick reconnect within the grace period does not flap.
    alice_conn.close().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (alice_conn, _) = connect_synced(&server, transport, &alice, alice_device).await;
    expect_no_presence(&mut bob_conn, alice.id, Duration::from_millis(GRACE_MS * 2)).await;

    // Away and back.
    alice_conn
        .send_message(&ClientMessage::SetPresence {
            status: PresenceStatus::Away,
        })
        .await
        .expect("set away");
    expect_presence(&mut bob_conn, alice.id, PresenceStatus::Away).await;

    // A device connecting later gets the presence of its contacts.
    let (mut bob_second, _) = connect_synced(&server, transport, &bob, DeviceId::random()).await;
    expect_presence(&mut bob_second, alice.id, PresenceStatus::Away).await;

    alice_conn
        .send_message(&ClientMessage::SetPresence {
            status: PresenceStatus::Online,
        })
        .await
        .expect("set online");
    expect_presence(&mut bob_conn, alice.id, PresenceStatus::Online).await;
    expect_presence(&mut bob_second, alice.id, PresenceStatus::Online).await;

    // Gone for good: offline after the grace period, with when she was last seen.
    let left_at = now_ms();
    alice_conn.close().await;
    let started = Instant::now();
    let last_seen = expect_presence(&mut bob_conn, alice.id, PresenceStatus::Offline).await;
    assert!(
        started.elapsed() >= Duration::from_millis(GRACE_MS - 100),
        "offline only after the grace period ({:?})",
        started.elapsed()
    );
    assert!(
        last_seen + 1_000 >= left_at && last_seen <= now_ms(),
        "last seen {last_seen} near the disconnect at {left_at}"
    );
    expect_presence(&mut bob_second, alice.id, PresenceStatus::Offline).await;
    expect_no_presence(&mut carol_conn, alice.id, Duration::from_millis(200)).await;
}

async fn typing_reaches_members_expires_and_is_rate_limited(transport: TransportPref) {
    let server = start().await;
    let (alice, bob, conversation) = alice_and_bob(&server).await;
    let carol = user(&server, "carol").await; // not a member

    let (alice_conn, _) = connect_synced(&server, transport, &alice, DeviceId::random()).await;
    let (mut bob_conn, _) = connect_synced(&server, transport, &bob, DeviceId::random()).await;
    let (carol_conn, _) = connect_synced(&server, transport, &carol, DeviceId::random()).await;

    // Started reaches the other member; stopped too.
    alice_conn.typing(conversation, true).await.expect("typing");
    expect_typing(&mut bob_conn, conversation, alice.id, true, WAIT).await;
    alice_conn
        .typing(conversation, false)
        .await
        .expect("typing");
    expect_typing(&mut bob_conn, conversation, alice.id, false, WAIT).await;

    // Over WebTransport both directions were datagrams; over WebSocket there are none.
    match transport {
        TransportPref::WebTransport => {
            let datagrams_in = counter_reaches(&server, "tern_datagrams_in_total", 2.0).await;
            let datagrams_out = counter_reaches(&server, "tern_datagrams_out_total", 2.0).await;
            assert!(
                datagrams_in >= 2.0,
                "typing came as datagrams: {datagrams_in}"
            );
            assert!(
                datagrams_out >= 2.0,
                "typing went as datagrams: {datagrams_out}"
            );
        }
        _ => {
            assert_eq!(metric(&server, "tern_datagrams_in_total").await, 0.0);
            assert_eq!(metric(&server, "tern_datagrams_out_total").await, 0.0);
        }
    }

    // Expires on its own: the server says stopped when no refresh comes.
    tokio::time::sleep(Duration::from_millis(1_100)).await; // a fresh rate window
    let started = Instant::now();
    alice_conn.typing(conversation, true).await.expect("typing");
    expect_typing(&mut bob_conn, conversation, alice.id, true, WAIT).await;
    expect_typing(
        &mut bob_conn,
        conversation,
        alice.id,
        false,
        Duration::from_millis(TYPING_TIMEOUT_MS * 5),
    )
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(TYPING_TIMEOUT_MS - 100),
        "expired only after the timeout ({:?})",
        started.elapsed()
    );
    assert!(metric(&server, "tern_typing_expired_total").await >= 1.0);

    // Non-members cannot send typing: silently ignored (nothing reaches members).
    let dropped_before = metric(&server, "tern_typing_dropped_total").await;
    carol_conn.typing(conversation, true).await.expect("typing");
    let seen = typing_events(
        &mut bob_conn,
        conversation,
        carol.id,
        Duration::from_millis(500),
    )
    .await;
    assert!(seen.is_empty(), "a non-member's typing was delivered");
    assert!(
        counter_reaches(&server, "tern_typing_dropped_total", dropped_before + 1.0).await
            > dropped_before,
        "the non-member's typing was dropped"
    );
    assert!(!carol_conn.is_closed(), "ignored, not fatal");

    // A flood is cut to the per-device rate (5 per second).
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let dropped_before = metric(&server, "tern_typing_dropped_total").await;
    for _ in 0..50 {
        alice_conn.typing(conversation, true).await.expect("typing");
    }
    let seen = typing_events(
        &mut bob_conn,
        conversation,
        alice.id,
        Duration::from_millis(700),
    )
    .await;
    let started: usize = seen.iter().filter(|a| **a).count();
    assert!(
        (1..=10).contains(&started),
        "the flood was rate limited: {started} of 50 delivered"
    );
    let dropped =
        counter_reaches(&server, "tern_typing_dropped_total", dropped_before + 30.0).await;
    assert!(
        dropped - dropped_before >= 30.0,
        "excess typing dropped: {}",
        dropped - dropped_before
    );
    assert!(!alice_conn.is_closed(), "a flood is dropped, not fatal");
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}
