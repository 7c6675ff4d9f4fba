//! Delivery receipts ("delivered") end to end against the real `tern` binary, over both
//! transports: an acknowledgement by a recipient's device reaches the sender live, the marks
//! can be asked for after a reconnect or a restart, and only members see them.

mod common;

use std::time::Duration;

use common::*;
use tern_sdk::tern_wire::ids::{ConversationId, DeviceId};
use tern_sdk::tern_wire::msg::{DeliveryMark, ErrorCode, ServerMessage};
use tern_sdk::{Connection, Error, Event, TransportPref};

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
    an_ack_reaches_every_device_of_the_sender_live,
    marks_survive_a_reconnect_and_a_restart,
    only_members_read_marks,
    group_marks_are_per_member_and_go_to_the_sender_only,
);

/// The next live `Delivered` push (request id 0), skipping everything else.
async fn next_receipt(conn: &mut Connection) -> (ConversationId, Vec<DeliveryMark>) {
    loop {
        match next(conn).await {
            Event::Other(ServerMessage::Delivered {
                request_id: 0,
                conversation,
                marks,
            }) => return (conversation, marks),
            Event::Deliver(_) | Event::SyncComplete | Event::Other(_) => {}
            other => panic!("expected a receipt, got {other:?}"),
        }
    }
}

/// Asserts no `Delivered` push arrives for a short while.
async fn assert_no_receipt(conn: &mut Connection) {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(400);
    loop {
        match tokio::time::timeout_at(deadline, conn.next_event()).await {
            Err(_) => return,
            Ok(Some(Event::Other(r @ ServerMessage::Delivered { .. }))) => {
                panic!("expected no receipt, got {r:?}")
            }
            Ok(Some(Event::Closed(reason))) => panic!("connection closed: {reason:?}"),
            Ok(None) => panic!("connection closed"),
            Ok(Some(_)) => {}
        }
    }
}

async fn an_ack_reaches_every_device_of_the_sender_live(transport: TransportPref) {
    let server = TestServer::start().await;
    let (alice, bob, conversation) = alice_and_bob(&server).await;
    let (alice_phone, _) = connect_synced(&server, transport, &alice, DeviceId::random()).await;
    let (mut alice_laptop, _) =
        connect_synced(&server, transport, &alice, DeviceId::random()).await;
    let (mut bob_conn, _) = connect_synced(&server, transport, &bob, DeviceId::random()).await;
    for i in 1..=2u128 {
        alice_phone
            .send(conversation, i, "text", text("hello"))
            .await
            .expect("send");
    }
    assert_eq!(next_message(&mut bob_conn).await.seq, 1);
    assert_eq!(next_message(&mut bob_conn).await.seq, 2);
    // Alice's laptop got her messages too; skip them.
    next_message(&mut alice_laptop).await;
    next_message(&mut alice_laptop).await;
    let mut alice_phone = alice_phone;
    assert_no_receipt(&mut alice_phone).await;

    bob_conn.ack(conversation, 1).await.expect("ack");
    let want = (
        conversation,
        vec![DeliveryMark {
            user: bob.id,
            seq: 1,
        }],
    );
    assert_eq!(next_receipt(&mut alice_phone).await, want);
    assert_eq!(next_receipt(&mut alice_laptop).await, want);
    // An ack past what Bob was sent counts only up to what he has.
    bob_conn.ack(conversation, 99).await.expect("ack");
    let want = (
        conversation,
        vec![DeliveryMark {
            user: bob.id,
            seq: 2,
        }],
    );
    assert_eq!(next_receipt(&mut alice_phone).await, want);
    assert_eq!(next_receipt(&mut alice_laptop).await, want);
    assert_no_receipt(&mut bob_conn).await;
}

async fn marks_survive_a_reconnect_and_a_restart(transport: TransportPref) {
    let mut server = TestServer::start().await;
    let (alice, bob, conversation) = alice_and_bob(&server).await;
    let (alice_conn, _) = connect_synced(&server, transport, &alice, DeviceId::random()).await;
    let (mut bob_conn, _) = connect_synced(&server, transport, &bob, DeviceId::random()).await;
    assert_eq!(
        alice_conn
            .delivery_marks(conversation)
            .await
            .expect("marks"),
        vec![],
        "nobody has acknowledged anything yet"
    );
    for i in 1..=3u128 {
        alice_conn
            .send(conversation, i, "text", text("m"))
            .await
            .expect("send");
    }
    for _ in 0..3 {
        next_message(&mut bob_conn).await;
    }
    alice_conn.close().await;
    // Alice is offline when Bob's device acknowledges.
    bob_conn.ack(conversation, 3).await.expect("ack");
    let (alice_conn, _) = connect_synced(&server, transport, &alice, DeviceId::random()).await;
    let want = vec![DeliveryMark {
        user: bob.id,
        seq: 3,
    }];
    let marks = wait_for_marks(&alice_conn, conversation, &want).await;
    assert_eq!(marks, want, "the mark set while Alice was away");
    alice_conn.close().await;
    bob_conn.close().await;

    server.restart().await;
    let (alice_conn, _) = connect_synced(&server, transport, &alice, DeviceId::random()).await;
    assert_eq!(
        alice_conn
            .delivery_marks(conversation)
            .await
            .expect("marks"),
        want,
        "marks are durable"
    );
}

/// Asks for the marks until they equal `want` (the ack is fire-and-forget: it lands with the
/// next group commit), at most a few seconds.
async fn wait_for_marks(
    conn: &Connection,
    conversation: ConversationId,
    want: &[DeliveryMark],
) -> Vec<DeliveryMark> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let marks = conn.delivery_marks(conversation).await.expect("marks");
        if marks == want || tokio::time::Instant::now() > deadline {
            return marks;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn only_members_read_marks(transport: TransportPref) {
    let server = TestServer::start().await;
    let (_alice, _bob, conversation) = alice_and_bob(&server).await;
    let mallory = user(&server, "mallory").await;
    let (mallory_conn, _) = connect_synced(&server, transport, &mallory, DeviceId::random()).await;
    match mallory_conn.delivery_marks(conversation).await {
        Err(Error::Server {
            code: ErrorCode::NotFound,
            fatal: false,
            ..
        }) => {}
        other => panic!("a stranger must get NotFound, got {other:?}"),
    }
    match mallory_conn.delivery_marks(ConversationId::random()).await {
        Err(Error::Server {
            code: ErrorCode::NotFound,
            ..
        }) => {}
        other => panic!("an unknown conversation must be NotFound, got {other:?}"),
    }
    // Mallory acknowledging a conversation she is not in moves nothing.
    mallory_conn.ack(conversation, 1).await.expect("ack");
    assert!(mallory_conn.ping().await.is_ok(), "the connection stays up");
}

async fn group_marks_are_per_member_and_go_to_the_sender_only(transport: TransportPref) {
    let server = TestServer::start().await;
    let owner = user(&server, "owner").await;
    let bob = user(&server, "bob").await;
    let carol = user(&server, "carol").await;
    let group = group_with_members(&owner, "receipts", &[&bob, &carol]).await;
    let (owner_conn, _) = connect_synced(&server, transport, &owner, DeviceId::random()).await;
    let (mut bob_conn, _) = connect_synced(&server, transport, &bob, DeviceId::random()).await;
    let (mut carol_conn, _) = connect_synced(&server, transport, &carol, DeviceId::random()).await;
    let mut owner_conn = owner_conn;
    owner_conn
        .send(group, 1, "text", text("to the group"))
        .await
        .expect("send");
    assert_eq!(next_message(&mut bob_conn).await.seq, 1);
    assert_eq!(next_message(&mut carol_conn).await.seq, 1);
    bob_conn.ack(group, 1).await.expect("ack");
    assert_eq!(
        next_receipt(&mut owner_conn).await,
        (
            group,
            vec![DeliveryMark {
                user: bob.id,
                seq: 1
            }]
        )
    );
    assert_no_receipt(&mut carol_conn).await;
    carol_conn.ack(group, 1).await.expect("ack");
    assert_eq!(
        next_receipt(&mut owner_conn).await,
        (
            group,
            vec![DeliveryMark {
                user: carol.id,
                seq: 1
            }]
        )
    );
    assert_no_receipt(&mut bob_conn).await;
    // The store answers in user id order.
    let mut want = vec![
        DeliveryMark {
            user: bob.id,
            seq: 1,
        },
        DeliveryMark {
            user: carol.id,
            seq: 1,
        },
    ];
    want.sort_by_key(|m| m.user);
    let marks = wait_for_marks(&owner_conn, group, &want).await;
    assert_eq!(marks, want, "one mark per member who acknowledged");
}
