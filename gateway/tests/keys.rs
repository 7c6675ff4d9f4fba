//! End-to-end key service (issue 11) against the real `tern` binary, with raw protocol frames:
//! the key directory (publish, query, claim, fallback, claim cap), who may see whose keys, the
//! durable per-device inbox (offline storage, delivery before the resume replay, ack, full),
//! device-list changes pushed to contacts, device revocation, and the key backup over HTTPS.

mod common;

use common::*;
use tern_sdk::tern_wire::api::{BackupSessionView, KeyBackup, PutBackupSessions};
use tern_sdk::tern_wire::ids::{ConversationId, DeviceId, UserId};
use tern_sdk::tern_wire::msg::{
    ClaimTarget, ClientMessage, DeviceKeys, ErrorCode, KeyShareItem, ServerMessage,
};
use tern_sdk::{CloseReason, Connection, Error, Event, TransportPref};

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
    publish_query_claim_fallback_and_the_claim_cap,
    strangers_are_forbidden_and_message_requests_are_not,
    inbox_is_stored_offline_delivered_before_replay_and_acked_away,
    a_full_inbox_is_reported_per_device,
    identity_publish_is_pushed_to_contacts,
    device_revocation_removes_keys_closes_the_device_and_revokes_its_token,
    key_answers_fit_the_frame_and_name_the_rest,
);

fn keys(user: UserId, device: DeviceId, tag: u8, otks: u8, fallback: bool) -> DeviceKeys {
    DeviceKeys {
        identity_key: vec![tag; 32],
        signing_key: vec![tag ^ 0x55; 32],
        signature: vec![tag ^ 0xaa; 64],
        one_time_keys: (0..otks).map(|i| vec![tag, i, 0x07, 0x07]).collect(),
        fallback_key: if fallback { vec![0xfb; 100] } else { vec![] },
        ..DeviceKeys::empty(user, device)
    }
}

async fn publish(conn: &Connection, keys: DeviceKeys) -> Result<ServerMessage, Error> {
    conn.request(|request_id| ClientMessage::PublishKeys { request_id, keys })
        .await
}

async fn claim(conn: &Connection, user: UserId) -> Result<Vec<DeviceKeys>, Error> {
    match conn
        .request(|request_id| ClientMessage::ClaimKeys {
            request_id,
            user,
            devices: vec![],
        })
        .await?
    {
        ServerMessage::KeyBundle { devices, .. } => Ok(devices),
        other => panic!("expected a key bundle, got {other:?}"),
    }
}

async fn query(conn: &Connection, users: Vec<UserId>) -> Result<Vec<DeviceKeys>, Error> {
    match conn
        .request(|request_id| ClientMessage::QueryKeys { request_id, users })
        .await?
    {
        ServerMessage::KeyBundle { devices, .. } => Ok(devices),
        other => panic!("expected a key bundle, got {other:?}"),
    }
}

/// A raw `KeyBundle` answer: (devices, unanswered users).
async fn bundle(
    conn: &Connection,
    build: impl Fn(u64) -> ClientMessage,
) -> Result<(Vec<DeviceKeys>, Vec<UserId>), Error> {
    match conn.request(build).await? {
        ServerMessage::KeyBundle {
            devices,
            unanswered,
            ..
        } => Ok((devices, unanswered)),
        other => panic!("expected a key bundle, got {other:?}"),
    }
}

async fn send_shares(conn: &Connection, shares: Vec<KeyShareItem>) -> Result<Vec<DeviceId>, Error> {
    match conn
        .request(|request_id| ClientMessage::SendKeyShares { request_id, shares })
        .await?
    {
        ServerMessage::KeySharesStored { full, .. } => Ok(full),
        other => panic!("expected KeySharesStored, got {other:?}"),
    }
}

fn share(to_user: UserId, to_device: DeviceId, tag: u8) -> KeyShareItem {
    KeyShareItem {
        to_user,
        to_device,
        payload: vec![tag; 64],
    }
}

fn code_of(e: Error) -> ErrorCode {
    match e {
        Error::Server { code, .. } => code,
        other => panic!("expected a server error, got {other}"),
    }
}

/// Events up to `SyncComplete`, in order.
async fn until_synced(conn: &mut Connection) -> Vec<Event> {
    let mut seen = Vec::new();
    loop {
        let event = next(conn).await;
        let done = matches!(event, Event::SyncComplete);
        seen.push(event);
        if done {
            return seen;
        }
    }
}

/// The next `KeyShare` or `DeviceListChanged` event, skipping others.
async fn next_key_event(conn: &mut Connection) -> ServerMessage {
    loop {
        if let Event::Other(
            m @ (ServerMessage::KeyShare { .. } | ServerMessage::DeviceListChanged { .. }),
        ) = next(conn).await
        {
            return m;
        }
    }
}

async fn publish_query_claim_fallback_and_the_claim_cap(transport: TransportPref) {
    let server = TestServer::start_with(&[
        "key_claims_per_target_per_minute = 3",
        "max_one_time_keys_per_device = 6",
    ])
    .await;
    let (alice, bob, _) = alice_and_bob(&server).await;
    let (a1, b1) = (DeviceId::random(), DeviceId::random());
    let (bob_conn, _) = connect_synced(&server, transport, &bob, b1).await;
    assert_eq!(bob_conn.welcome().one_time_keys_left, 0);
    publish(&bob_conn, keys(bob.id, b1, 1, 5, true))
        .await
        .expect("publish");
    // The one-time key limit: 5 stored + 2 > 6, nothing stored, a clear error.
    let over = publish(&bob_conn, keys(bob.id, b1, 1, 2, false)).await;
    assert_eq!(
        code_of(over.expect_err("over the limit")),
        ErrorCode::LimitExceeded
    );
    // Publishing for another device is refused.
    let foreign = publish(&bob_conn, keys(bob.id, DeviceId::random(), 1, 1, false)).await;
    assert_eq!(
        code_of(foreign.expect_err("foreign device")),
        ErrorCode::Forbidden
    );
    bob_conn.close().await;
    let (bob_conn, _) = connect_synced(&server, transport, &bob, b1).await;
    assert_eq!(bob_conn.welcome().one_time_keys_left, 5);

    let (alice_conn, _) = connect_synced(&server, transport, &alice, a1).await;
    let found = query(&alice_conn, vec![bob.id]).await.expect("query");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].device, b1);
    assert_eq!(found[0].identity_key, vec![1; 32]);
    assert!(found[0].one_time_keys.is_empty() && found[0].fallback_key.is_empty());
    let mut claimed = std::collections::BTreeSet::new();
    for _ in 0..3 {
        let got = claim(&alice_conn, bob.id).await.expect("claim");
        assert_eq!(got.len(), 1);
        assert_eq!(
            got[0].one_time_keys.len(),
            1,
            "a one-time key while under the cap"
        );
        assert!(got[0].fallback_key.is_empty());
        assert!(
            claimed.insert(got[0].one_time_keys[0].clone()),
            "each key once"
        );
    }
    // Over the per-(claimer, target) cap: the fallback key, the remaining keys untouched.
    let capped = claim(&alice_conn, bob.id).await.expect("claim");
    assert!(capped[0].one_time_keys.is_empty());
    assert_eq!(capped[0].fallback_key, vec![0xfb; 100]);
    bob_conn.close().await;
    let (bob_conn, _) = connect_synced(&server, transport, &bob, b1).await;
    assert_eq!(bob_conn.welcome().one_time_keys_left, 2);
    // Bob claiming his own keys (another of his devices would): not capped by Alice's count.
    let own = claim(&bob_conn, bob.id).await.expect("claim own");
    assert_eq!(own[0].one_time_keys.len(), 1);
    let own = claim(&bob_conn, bob.id).await.expect("claim own");
    assert_eq!(own[0].one_time_keys.len(), 1);
    // Exhausted: the fallback key, which is not consumed.
    for _ in 0..2 {
        let got = claim(&bob_conn, bob.id).await.expect("claim");
        assert!(got[0].one_time_keys.is_empty());
        assert_eq!(got[0].fallback_key, vec![0xfb; 100]);
    }
}

async fn strangers_are_forbidden_and_message_requests_are_not(transport: TransportPref) {
    let server = TestServer::start().await;
    let (_alice, bob, _) = alice_and_bob(&server).await;
    let carol = user(&server, "carol").await;
    let dave = user(&server, "dave").await;
    let (b1, c1, d1) = (DeviceId::random(), DeviceId::random(), DeviceId::random());
    let (bob_conn, _) = connect_synced(&server, transport, &bob, b1).await;
    publish(&bob_conn, keys(bob.id, b1, 2, 3, true))
        .await
        .expect("publish");
    let (carol_conn, _) = connect_synced(&server, transport, &carol, c1).await;
    let refused = |r: Result<Vec<DeviceKeys>, Error>| code_of(r.expect_err("refused"));
    assert_eq!(
        refused(query(&carol_conn, vec![bob.id]).await),
        ErrorCode::Forbidden
    );
    assert_eq!(
        refused(claim(&carol_conn, bob.id).await),
        ErrorCode::Forbidden
    );
    let shares = send_shares(&carol_conn, vec![share(bob.id, b1, 1)]).await;
    assert_eq!(code_of(shares.expect_err("refused")), ErrorCode::Forbidden);
    // A query listing a stranger among allowed users is refused as a whole.
    let mixed = query(&carol_conn, vec![carol.id, bob.id]).await;
    assert_eq!(refused(mixed), ErrorCode::Forbidden);
    // Her own keys are always hers to read.
    assert!(
        query(&carol_conn, vec![carol.id])
            .await
            .expect("own")
            .is_empty()
    );
    // A pending 1:1 message request (not accepted yet) lets both ends set up encryption.
    carol.http.create_direct("bob").await.expect("request");
    assert_eq!(claim(&carol_conn, bob.id).await.expect("claim").len(), 1);
    // Dave still shares nothing with Bob.
    let (dave_conn, _) = connect_synced(&server, transport, &dave, d1).await;
    assert_eq!(
        refused(claim(&dave_conn, bob.id).await),
        ErrorCode::Forbidden
    );
    // A share to a device Bob does not have is not_found.
    let bogus = send_shares(&carol_conn, vec![share(bob.id, DeviceId::random(), 1)]).await;
    assert_eq!(
        code_of(bogus.expect_err("unknown device")),
        ErrorCode::NotFound
    );
}

async fn inbox_is_stored_offline_delivered_before_replay_and_acked_away(transport: TransportPref) {
    let server = TestServer::start().await;
    let (alice, bob, dm) = alice_and_bob(&server).await;
    let (a1, b1, b2) = (DeviceId::random(), DeviceId::random(), DeviceId::random());
    // Bob's device exists (bound) but is offline.
    connect_synced(&server, transport, &bob, b1)
        .await
        .0
        .close()
        .await;
    let (alice_conn, _) = connect_synced(&server, transport, &alice, a1).await;
    let full = send_shares(
        &alice_conn,
        vec![share(bob.id, b1, 1), share(bob.id, b1, 2)],
    )
    .await
    .expect("stored");
    assert!(full.is_empty());
    // The legacy single KeyShare is a batch of one (no answer).
    alice_conn
        .send_message(&ClientMessage::KeyShare {
            to_user: bob.id,
            to_device: b1,
            payload: vec![3; 64],
        })
        .await
        .expect("send");
    alice_conn
        .send(dm, 1, "text", text("needs the key"))
        .await
        .expect("send");

    let mut bob_conn = connect(&server, transport, &bob, b1).await;
    let events = until_synced(&mut bob_conn).await;
    let order: Vec<String> = events
        .iter()
        .map(|e| match e {
            Event::Other(ServerMessage::KeyShare {
                payload,
                inbox_id,
                from_user,
                from_device,
            }) => {
                assert_eq!((*from_user, *from_device), (alice.id, a1));
                format!("share{}#{inbox_id}", payload[0])
            }
            Event::Deliver(_) => "message".into(),
            Event::SyncComplete => "sync".into(),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        order,
        vec!["share1#1", "share2#2", "share3#3", "message", "sync"],
        "pending shares come before the resume replay"
    );
    // Live while online: stored and pushed.
    send_shares(&alice_conn, vec![share(bob.id, b1, 4)])
        .await
        .expect("stored");
    match next_key_event(&mut bob_conn).await {
        ServerMessage::KeyShare {
            inbox_id, payload, ..
        } => {
            assert_eq!((inbox_id, payload[0]), (4, 4));
        }
        other => panic!("expected a key share, got {other:?}"),
    }
    // A share to Bob's own other device is allowed (Bob to himself).
    connect_synced(&server, transport, &bob, b2)
        .await
        .0
        .close()
        .await;
    assert!(
        send_shares(&bob_conn, vec![share(bob.id, b2, 9)])
            .await
            .expect("own")
            .is_empty()
    );
    // Ack up to 3: only 4 is redelivered after reconnecting.
    bob_conn
        .send_message(&ClientMessage::AckKeyShares {
            up_to: 3,
            ids: vec![],
        })
        .await
        .expect("ack");
    // A ping round trip orders the ack before the close.
    bob_conn
        .request(|request_id| ClientMessage::History {
            request_id,
            conversation: dm,
            before_seq: 0,
            after_seq: 0,
            limit: 1,
            around_seq: 0,
            since_ms: 0,
            until_ms: 0,
            sender: None,
        })
        .await
        .expect("round trip");
    bob_conn.close().await;
    let mut bob_conn = connect(&server, transport, &bob, b1).await;
    let ids: Vec<u64> = until_synced(&mut bob_conn)
        .await
        .into_iter()
        .filter_map(|e| match e {
            Event::Other(ServerMessage::KeyShare { inbox_id, .. }) => Some(inbox_id),
            _ => None,
        })
        .collect();
    assert_eq!(ids, vec![4], "acknowledged shares are deleted");
    // Two more while online; the exact form acknowledges 4 and 6 only: 5 survives.
    send_shares(&alice_conn, vec![share(bob.id, b1, 5)])
        .await
        .expect("stored");
    send_shares(&alice_conn, vec![share(bob.id, b1, 6)])
        .await
        .expect("stored");
    for _ in 0..2 {
        next_key_event(&mut bob_conn).await;
    }
    bob_conn
        .send_message(&ClientMessage::AckKeyShares {
            up_to: 6,
            ids: vec![4, 6],
        })
        .await
        .expect("ack");
    bob_conn
        .request(|request_id| ClientMessage::History {
            request_id,
            conversation: dm,
            before_seq: 0,
            after_seq: 0,
            limit: 1,
            around_seq: 0,
            since_ms: 0,
            until_ms: 0,
            sender: None,
        })
        .await
        .expect("round trip");
    bob_conn.close().await;
    let mut bob_conn = connect(&server, transport, &bob, b1).await;
    let ids: Vec<u64> = until_synced(&mut bob_conn)
        .await
        .into_iter()
        .filter_map(|e| match e {
            Event::Other(ServerMessage::KeyShare { inbox_id, .. }) => Some(inbox_id),
            _ => None,
        })
        .collect();
    assert_eq!(ids, vec![5], "exactly the listed ids are deleted");
}

async fn a_full_inbox_is_reported_per_device(transport: TransportPref) {
    let server = TestServer::start_with(&["max_inbox_entries_per_device = 2"]).await;
    let (alice, bob, _) = alice_and_bob(&server).await;
    let (a1, b1, b2) = (DeviceId::random(), DeviceId::random(), DeviceId::random());
    connect_synced(&server, transport, &bob, b1)
        .await
        .0
        .close()
        .await;
    connect_synced(&server, transport, &bob, b2)
        .await
        .0
        .close()
        .await;
    let (alice_conn, _) = connect_synced(&server, transport, &alice, a1).await;
    let full = send_shares(
        &alice_conn,
        vec![
            share(bob.id, b1, 1),
            share(bob.id, b1, 2),
            share(bob.id, b1, 3),
            share(bob.id, b2, 4),
        ],
    )
    .await
    .expect("answered");
    assert_eq!(full, vec![b1], "only the full device is listed");
    let mut bob_conn = connect(&server, transport, &bob, b2).await;
    let shares: Vec<u8> = until_synced(&mut bob_conn)
        .await
        .into_iter()
        .filter_map(|e| match e {
            Event::Other(ServerMessage::KeyShare { payload, .. }) => Some(payload[0]),
            _ => None,
        })
        .collect();
    assert_eq!(shares, vec![4], "the other device's share was stored");
}

async fn identity_publish_is_pushed_to_contacts(transport: TransportPref) {
    let server = TestServer::start().await;
    let (alice, bob, _) = alice_and_bob(&server).await;
    let carol = user(&server, "carol").await;
    let (a1, a2, b1, c1) = (
        DeviceId::random(),
        DeviceId::random(),
        DeviceId::random(),
        DeviceId::random(),
    );
    let (mut bob_conn, _) = connect_synced(&server, transport, &bob, b1).await;
    let (mut alice_other, _) = connect_synced(&server, transport, &alice, a2).await;
    let (mut carol_conn, _) = connect_synced(&server, transport, &carol, c1).await;
    let (alice_conn, _) = connect_synced(&server, transport, &alice, a1).await;
    publish(&alice_conn, keys(alice.id, a1, 5, 1, true))
        .await
        .expect("publish");
    for conn in [&mut bob_conn, &mut alice_other] {
        assert_eq!(
            next_key_event(conn).await,
            ServerMessage::DeviceListChanged { user: alice.id }
        );
    }
    // Only one-time keys: no identity change, nothing pushed. A reinstall (new identity) is.
    publish(
        &alice_conn,
        DeviceKeys {
            one_time_keys: vec![vec![1, 2, 3]],
            ..DeviceKeys::empty(alice.id, a1)
        },
    )
    .await
    .expect("top up");
    publish(&alice_conn, keys(alice.id, a1, 6, 0, false))
        .await
        .expect("reinstall");
    assert_eq!(
        next_key_event(&mut bob_conn).await,
        ServerMessage::DeviceListChanged { user: alice.id }
    );
    // Bob saw exactly the two identity changes, a stranger none.
    assert_quiet(&mut bob_conn).await;
    match tokio::time::timeout(
        std::time::Duration::from_millis(300),
        carol_conn.next_event(),
    )
    .await
    {
        Err(_) => {}
        Ok(Some(Event::Other(ServerMessage::DeviceListChanged { user }))) => {
            panic!("a stranger was told about {user}'s devices")
        }
        Ok(_) => {}
    }
}

async fn device_revocation_removes_keys_closes_the_device_and_revokes_its_token(
    transport: TransportPref,
) {
    let server = TestServer::start().await;
    let (alice, bob, _) = alice_and_bob(&server).await;
    let (a1, b1) = (DeviceId::random(), DeviceId::random());
    let (mut bob_conn, _) = connect_synced(&server, transport, &bob, b1).await;
    publish(&bob_conn, keys(bob.id, b1, 7, 2, true))
        .await
        .expect("publish");
    let (mut alice_conn, _) = connect_synced(&server, transport, &alice, a1).await;
    // Bob manages devices from another session (his phone's token is the one revoked).
    let mut manager = server.http();
    manager.login("bob", PASSWORD).await.expect("second login");
    let devices = manager.devices().await.expect("list");
    let listed = devices
        .iter()
        .find(|d| d.device_id == b1)
        .expect("b1 listed");
    assert!(listed.has_keys);
    assert!(listed.last_seen_ms > 0);
    assert!(!listed.identity_key.is_empty());
    // Alice cannot revoke Bob's device: it is not hers (404, nothing happens).
    let theirs = alice.http.revoke_device(b1).await.expect_err("not hers");
    assert!(
        matches!(&theirs, Error::Api(f) if f.status == 404),
        "{theirs}"
    );
    assert_eq!(
        query(&alice_conn, vec![bob.id]).await.expect("query").len(),
        1
    );

    manager.revoke_device(b1).await.expect("revoke");
    // The device's live connection is closed as revoked.
    let mut code = None;
    loop {
        match tokio::time::timeout(WAIT, bob_conn.next_event())
            .await
            .expect("closed in time")
        {
            Some(Event::Closed(CloseReason::Fatal { code: c, .. })) => {
                code = code.or(Some(c));
                break;
            }
            Some(Event::Error {
                code: c,
                fatal: true,
                ..
            }) => code = Some(c),
            Some(Event::Closed(_)) | None => break,
            Some(_) => {}
        }
    }
    assert_eq!(code, Some(ErrorCode::TokenRevoked));
    assert_eq!(
        next_key_event(&mut alice_conn).await,
        ServerMessage::DeviceListChanged { user: bob.id }
    );
    assert!(
        query(&alice_conn, vec![bob.id])
            .await
            .expect("query")
            .is_empty(),
        "keys gone"
    );
    assert!(claim(&alice_conn, bob.id).await.expect("claim").is_empty());
    let me = bob
        .http
        .me()
        .await
        .expect_err("the device's token is revoked");
    assert!(matches!(&me, Error::Api(f) if f.status == 401), "{me}");
    assert!(
        manager
            .devices()
            .await
            .expect("list")
            .iter()
            .all(|d| d.device_id != b1)
    );
    assert!(matches!(manager.revoke_device(b1).await, Err(Error::Api(f)) if f.status == 404));
}

/// The key backup over HTTPS (no socket involved, so one transport-independent test).
#[tokio::test]
async fn key_backup_is_versioned_paged_bounded_and_private() {
    use base64::Engine as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let server = TestServer::start().await;
    let alice = user(&server, "alice").await;
    let bob = user(&server, "bob").await;
    let status = |r: Result<(), Error>| match r {
        Err(Error::Api(f)) => f.status,
        Ok(()) => 200,
        Err(other) => panic!("{other}"),
    };
    assert_eq!(
        status(alice.http.key_backup().await.map(|_| ())),
        404,
        "none yet"
    );
    let v1 = KeyBackup {
        version: "v1".into(),
        meta: b64(b"salt+params"),
    };
    alice.http.put_key_backup(&v1).await.expect("create");
    assert_eq!(alice.http.key_backup().await.expect("get"), v1);
    // Bob never reads Alice's backup: his own is absent, and no path names another user.
    assert_eq!(status(bob.http.key_backup().await.map(|_| ())), 404);
    assert_eq!(
        status(bob.http.backup_sessions(None, None, None).await.map(|_| ())),
        404
    );
    let c1 = ConversationId(0x0193_0000_0000_7000_8000_0000_0000_0001);
    let c2 = ConversationId(0x0193_0000_0000_7000_8000_0000_0000_0002);
    let entry = |c: ConversationId, sid: &str| BackupSessionView {
        conversation: c,
        session_id: sid.into(),
        data: b64(sid.as_bytes()),
    };
    let put = |version: &str, sessions: Vec<BackupSessionView>| PutBackupSessions {
        version: version.into(),
        sessions,
    };
    let stored = alice
        .http
        .put_backup_sessions(&put(
            "v1",
            vec![entry(c1, "a"), entry(c1, "b"), entry(c2, "a")],
        ))
        .await
        .expect("store");
    assert_eq!(stored.total, 3);
    let stale = alice
        .http
        .put_backup_sessions(&put("v0", vec![entry(c1, "z")]))
        .await;
    assert!(matches!(stale, Err(Error::Api(f)) if f.status == 409));
    // Paging over everything, then one conversation.
    let first = alice
        .http
        .backup_sessions(None, None, Some(2))
        .await
        .expect("page");
    assert_eq!(first.sessions.len(), 2);
    let after = first.next_after.expect("more");
    let rest = alice
        .http
        .backup_sessions(None, Some(&after), Some(2))
        .await
        .expect("page");
    assert_eq!(rest.sessions, vec![entry(c2, "a")]);
    assert_eq!(rest.next_after, None);
    let only = alice
        .http
        .backup_sessions(Some(c1), None, None)
        .await
        .expect("c1");
    assert_eq!(only.sessions, vec![entry(c1, "a"), entry(c1, "b")]);
    assert!(
        bob.http
            .put_key_backup(&KeyBackup {
                version: "b".into(),
                meta: String::new()
            })
            .await
            .is_ok()
    );
    assert!(
        bob.http
            .backup_sessions(None, None, None)
            .await
            .expect("bob")
            .sessions
            .is_empty(),
        "another user's entries are never listed"
    );
    // Limits give clear errors: a too-large blob, too many sessions, a bad version.
    let big = BackupSessionView {
        data: b64(&vec![0; 8 * 1024 + 1]),
        ..entry(c1, "big")
    };
    let r = alice.http.put_backup_sessions(&put("v1", vec![big])).await;
    assert!(
        matches!(&r, Err(Error::Api(f)) if f.status == 413 && f.code == "limit_exceeded"),
        "{r:?}"
    );
    let many: Vec<_> = (0..1_001).map(|i| entry(c1, &format!("s{i}"))).collect();
    let r = alice.http.put_backup_sessions(&put("v1", many)).await;
    assert!(matches!(&r, Err(Error::Api(f)) if f.status == 413), "{r:?}");
    let r = alice
        .http
        .put_key_backup(&KeyBackup {
            version: "x".repeat(65),
            meta: String::new(),
        })
        .await;
    assert!(matches!(&r, Err(Error::Api(f)) if f.status == 400), "{r:?}");
    // A new version starts empty.
    alice
        .http
        .put_key_backup(&KeyBackup {
            version: "v2".into(),
            meta: String::new(),
        })
        .await
        .expect("new version");
    assert!(
        alice
            .http
            .backup_sessions(None, None, None)
            .await
            .expect("v2")
            .sessions
            .is_empty()
    );
    // Every endpoint needs a token.
    let anonymous = server.http();
    assert!(matches!(
        anonymous.devices().await,
        Err(Error::Config(_)) | Err(Error::Api(_))
    ));
    let raw = https(&server)
        .get(format!("https://{}/api/v1/keys/backup", server.addr))
        .send()
        .await
        .expect("request");
    assert_eq!(raw.status().as_u16(), 401);
}

/// A large group's keys in few requests: `QueryKeys` and `ClaimKeysBatch` answers stay inside
/// the server's frame (8 KiB here, every key field at its 128-byte limit) and name the users
/// they left out, whose one-time keys a claim did not consume; the SDK's fetches ask again
/// until every user is answered.
async fn key_answers_fit_the_frame_and_name_the_rest(transport: TransportPref) {
    const MEMBERS: usize = 16;
    const FRAME: usize = 8 * 1024;
    let server = TestServer::start_with(&[
        &format!("max_frame_bytes = {FRAME}"),
        "login_attempts_per_address = 1000",
        "registrations_per_address = 1000",
        "registrations_per_window = 1000",
    ])
    .await;
    let alice = user(&server, "alice").await;
    let carol = user(&server, "carol").await;
    let mut members = Vec::new();
    for i in 0..MEMBERS {
        members.push(user(&server, &format!("member{i:02}")).await);
    }
    let refs: Vec<&TestUser> = members.iter().collect();
    group_with_members(&alice, "big keys", &refs).await;
    // Every member device publishes maximal keys and exactly one one-time key.
    let mut devices = Vec::new();
    for (i, m) in members.iter().enumerate() {
        let d = DeviceId::random();
        let (conn, _) = connect_synced(&server, transport, m, d).await;
        let tag = i as u8 + 1;
        let k = DeviceKeys {
            identity_key: vec![tag; 128],
            signed_prekey: vec![tag; 128],
            signing_key: vec![tag; 128],
            signature: vec![tag; 128],
            fallback_key: vec![0xfb; 128],
            one_time_keys: vec![vec![tag; 128]],
            ..DeviceKeys::empty(m.id, d)
        };
        publish(&conn, k).await.expect("publish");
        conn.close().await;
        devices.push((m.id, d));
    }
    let order: Vec<UserId> = members.iter().map(|m| m.id).collect();
    let (alice_conn, _) = connect_synced(&server, transport, &alice, DeviceId::random()).await;

    // Query: a head of the request is answered, the tail is named, and nothing is lost.
    let (found, rest) = bundle(&alice_conn, |request_id| ClientMessage::QueryKeys {
        request_id,
        users: order.clone(),
    })
    .await
    .expect("query");
    assert!(!rest.is_empty(), "16 maximal devices do not fit 8 KiB");
    assert!(!found.is_empty());
    let answered: Vec<UserId> = found.iter().map(|d| d.user).collect();
    assert_eq!(
        answered,
        order[..answered.len()],
        "answered in request order"
    );
    assert_eq!(rest, order[answered.len()..], "the rest, in order");
    let (again, none) = bundle(&alice_conn, |request_id| ClientMessage::QueryKeys {
        request_id,
        users: rest.clone(),
    })
    .await
    .expect("query the rest");
    assert!(none.is_empty() || none.len() < rest.len());
    assert!(again.iter().all(|d| rest.contains(&d.user)));

    // A claim for all sixteen: some are claimed, the others are named and keep their key.
    let targets: Vec<ClaimTarget> = devices
        .iter()
        .map(|(user, d)| ClaimTarget {
            user: *user,
            devices: vec![*d],
        })
        .collect();
    let (claimed, unclaimed) = bundle(&alice_conn, |request_id| ClientMessage::ClaimKeysBatch {
        request_id,
        targets: targets.clone(),
    })
    .await
    .expect("claim batch");
    assert!(
        !claimed.is_empty() && !unclaimed.is_empty(),
        "{} / {}",
        claimed.len(),
        unclaimed.len()
    );
    assert_eq!(claimed.len() + unclaimed.len(), MEMBERS);
    for c in &claimed {
        assert_eq!(c.one_time_keys.len(), 1, "a one-time key, not the fallback");
        assert!(!unclaimed.contains(&c.user));
    }
    let retry: Vec<ClaimTarget> = targets
        .iter()
        .filter(|t| unclaimed.contains(&t.user))
        .cloned()
        .collect();
    let (late, _) = bundle(&alice_conn, |request_id| ClientMessage::ClaimKeysBatch {
        request_id,
        targets: retry.clone(),
    })
    .await
    .expect("claim the rest");
    assert!(!late.is_empty());
    for c in &late {
        assert_eq!(
            c.one_time_keys.len(),
            1,
            "an unanswered target's one-time key was not consumed"
        );
    }

    // The SDK's fetches follow `unanswered` until everyone is answered.
    let lists = tern_sdk::e2e::fetch_device_lists(alice_conn.sender(), &order)
        .await
        .expect("fetch lists");
    assert_eq!(lists.len(), MEMBERS);
    assert!(
        lists.values().all(|l| l.len() == 1),
        "every member's device"
    );
    let bundles = tern_sdk::e2e::fetch_claims(alice_conn.sender(), &devices)
        .await
        .expect("fetch claims");
    let mut got: Vec<(UserId, DeviceId)> = bundles.iter().map(|b| (b.user, b.device)).collect();
    got.sort();
    let mut want = devices.clone();
    want.sort();
    assert_eq!(got, want, "one bundle per device (fallback keys now)");

    // Every target names its devices; a stranger among the targets refuses the batch.
    let empty = bundle(&alice_conn, |request_id| ClientMessage::ClaimKeysBatch {
        request_id,
        targets: vec![ClaimTarget {
            user: members[0].id,
            devices: vec![],
        }],
    })
    .await;
    assert_eq!(
        code_of(empty.expect_err("no devices")),
        ErrorCode::InvalidArgument
    );
    let stranger = bundle(&alice_conn, |request_id| ClientMessage::ClaimKeysBatch {
        request_id,
        targets: vec![
            targets[0].clone(),
            ClaimTarget {
                user: carol.id,
                devices: vec![DeviceId::random()],
            },
        ],
    })
    .await;
    assert_eq!(
        code_of(stranger.expect_err("stranger")),
        ErrorCode::Forbidden
    );
}
