//! Consent against the real server, over both transports: group creation invites (nobody is
//! added, invitees see nothing before accepting), unknown member ids are refused, a 1:1 is a
//! message request (delivered, but no presence either way until accepted), blocks stop 1:1
//! messages, invitations and presence both ways until lifted, non-members get exactly the answer
//! a missing conversation gets, and group names refuse invisible and control characters.

mod common;

use std::time::{Duration, Instant};

use common::*;
use reqwest::StatusCode;
use tern_sdk::tern_wire::ids::{ConversationId, DeviceId, UserId};
use tern_sdk::tern_wire::msg::{
    ClientMessage, ConversationInfo, ConversationKind, PresenceStatus, ServerMessage,
};
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
    group_creation_invites_and_invitees_see_nothing_before_accepting,
    unknown_member_ids_refuse_group_creation,
    a_direct_request_delivers_but_shares_no_presence_until_accepted,
    blocking_stops_direct_messages_invitations_and_presence_until_unblocked,
    non_members_get_exactly_the_answer_a_missing_conversation_gets,
    group_names_with_invisible_or_control_characters_are_refused,
);

const GRACE_MS: u64 = 300;
/// How long "nothing arrives" is watched for.
const QUIET: Duration = Duration::from_millis(400);

async fn start() -> TestServer {
    TestServer::start_with(&[&format!("presence_grace_ms = {GRACE_MS}")]).await
}

/// Waits for `user`'s presence with `status`, skipping other events.
async fn expect_presence(conn: &mut Connection, user: UserId, status: PresenceStatus) {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = tokio::time::timeout(left, conn.next_event())
            .await
            .unwrap_or_else(|_| panic!("no {status:?} presence for {user:?} in time"))
            .expect("connection open");
        if let Event::Other(ServerMessage::Presence {
            user: u, status: s, ..
        }) = event
            && u == user
            && s == status
        {
            return;
        }
    }
}

/// Reads events for `window`; fails on any presence of `user` or any delivery in `conversation`.
async fn expect_nothing_of(
    conn: &mut Connection,
    user: UserId,
    conversation: Option<ConversationId>,
    window: Duration,
) {
    let deadline = Instant::now() + window;
    while let Ok(event) = tokio::time::timeout_at(deadline.into(), conn.next_event()).await {
        match event {
            Some(Event::Other(ServerMessage::Presence {
                user: u, status, ..
            })) => assert_ne!(u, user, "unexpected presence {status:?} of {user:?}"),
            Some(Event::Deliver(m)) => assert_ne!(
                Some(m.conversation),
                conversation,
                "unexpected delivery {m:?}"
            ),
            Some(Event::Closed(reason)) => panic!("connection closed: {reason:?}"),
            Some(_) => {}
            None => panic!("connection closed"),
        }
    }
}

/// Discards whatever arrives during `window`.
async fn drain(conn: &mut Connection, window: Duration) {
    let deadline = Instant::now() + window;
    while let Ok(event) = tokio::time::timeout_at(deadline.into(), conn.next_event()).await {
        assert!(event.is_some(), "connection closed");
    }
}

/// The next `Invitation` to `conversation`, skipping other events.
async fn expect_invitation(conn: &mut Connection, conversation: ConversationId) -> UserId {
    loop {
        match next(conn).await {
            Event::Other(ServerMessage::Invitation {
                conversation: c,
                inviter,
                ..
            }) if c == conversation => return inviter,
            Event::Closed(reason) => panic!("closed: {reason:?}"),
            _ => {}
        }
    }
}

async fn create_group(
    conn: &Connection,
    name: &str,
    members: Vec<UserId>,
) -> Result<ConversationInfo, Error> {
    match conn
        .request(|request_id| ClientMessage::CreateConversation {
            request_id,
            kind: ConversationKind::Group,
            name: name.to_owned(),
            description: String::new(),
            members,
        })
        .await?
    {
        ServerMessage::Conversation { info, .. } => Ok(info),
        other => panic!("unexpected answer to CreateConversation: {other:?}"),
    }
}

/// `(code, message)` of a failed request.
fn refusal<T: std::fmt::Debug>(result: Result<T, Error>) -> (String, String) {
    match result {
        Err(Error::Server { code, message, .. }) => (format!("{code:?}"), message),
        other => panic!("expected a server error, got {other:?}"),
    }
}

async fn group_creation_invites_and_invitees_see_nothing_before_accepting(
    transport: TransportPref,
) {
    let server = start().await;
    let alice = user(&server, "alice").await;
    let bob = user(&server, "bob").await;
    let carol = user(&server, "carol").await;
    let (mut bob_conn, _) = connect_synced(&server, transport, &bob, DeviceId::random()).await;
    let (alice_conn, _) = connect_synced(&server, transport, &alice, DeviceId::random()).await;
    let info = create_group(&alice_conn, "Book club", vec![bob.id, carol.id])
        .await
        .expect("group");
    let group = info.conversation;
    assert_eq!(
        info.members.iter().map(|m| m.user).collect::<Vec<_>>(),
        vec![alice.id],
        "creation adds nobody but the owner"
    );
    assert_eq!(expect_invitation(&mut bob_conn, group).await, alice.id);
    let listed = bob.http.invitations().await.expect("invitations");
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].conversation_id, listed[0].name.as_str()),
        (group, "Book club")
    );
    assert_eq!(carol.http.invitations().await.expect("list").len(), 1);
    // Before accepting: no messages, no history, no presence either way, not listed.
    alice_conn
        .send(group, 1, "text", text("before"))
        .await
        .expect("send");
    expect_nothing_of(&mut bob_conn, alice.id, Some(group), QUIET).await;
    assert_eq!(
        bob_conn
            .history(group, 0, 0, 10)
            .await
            .err()
            .and_then(|e| e.code().map(str::to_owned)),
        Some("not_found".to_owned())
    );
    assert!(bob.http.conversations().await.expect("list").is_empty());
    let (mut bob_second, _) = connect_synced(&server, transport, &bob, DeviceId::random()).await;
    expect_nothing_of(&mut bob_second, alice.id, None, QUIET).await;
    alice_conn.close().await;
    let (mut alice_conn, _) = connect_synced(&server, transport, &alice, DeviceId::random()).await;
    expect_nothing_of(&mut alice_conn, bob.id, None, QUIET).await;
    // Accepting joins: presence flows both ways, and new messages arrive.
    let joined = bob_conn.accept_invite(group).await.expect("accept");
    assert!(joined.members.iter().any(|m| m.user == bob.id));
    expect_presence(&mut bob_conn, alice.id, PresenceStatus::Online).await;
    expect_presence(&mut alice_conn, bob.id, PresenceStatus::Online).await;
    let receipt = alice_conn
        .send(group, 2, "text", text("welcome"))
        .await
        .expect("send");
    let m = next_message(&mut bob_conn).await;
    assert_eq!((m.conversation, m.seq), (group, receipt.seq));
    // Carol, still only invited, got nothing.
    let (mut carol_conn, replayed) =
        connect_synced(&server, transport, &carol, DeviceId::random()).await;
    assert!(replayed.is_empty(), "{replayed:?}");
    expect_nothing_of(&mut carol_conn, alice.id, Some(group), QUIET).await;
}

async fn unknown_member_ids_refuse_group_creation(transport: TransportPref) {
    let server = start().await;
    let alice = user(&server, "alice").await;
    let bob = user(&server, "bob").await;
    let (alice_conn, _) = connect_synced(&server, transport, &alice, DeviceId::random()).await;
    let ghost = UserId::random();
    let error = create_group(&alice_conn, "Ghosts", vec![bob.id, ghost])
        .await
        .expect_err("unknown member");
    assert_eq!(error.code(), Some("not_found"), "{error}");
    // Nothing was created: no group, no invitation.
    assert!(alice.http.conversations().await.expect("list").is_empty());
    assert!(bob.http.invitations().await.expect("list").is_empty());
    // The name is still free.
    create_group(&alice_conn, "Ghosts", vec![bob.id])
        .await
        .expect("same name, real members");
}

async fn a_direct_request_delivers_but_shares_no_presence_until_accepted(transport: TransportPref) {
    let server = start().await;
    let alice = user(&server, "alice").await;
    let bob = user(&server, "bob").await;
    let (mut bob_conn, _) = connect_synced(&server, transport, &bob, DeviceId::random()).await;
    let (mut alice_conn, _) = connect_synced(&server, transport, &alice, DeviceId::random()).await;
    let dm = alice
        .http
        .create_direct("bob")
        .await
        .expect("open 1:1")
        .conversation_id;
    // Devices connecting now get no presence of the other either.
    let (mut alice_second, _) =
        connect_synced(&server, transport, &alice, DeviceId::random()).await;
    expect_nothing_of(&mut alice_second, bob.id, None, QUIET).await;
    let (mut bob_second, _) = connect_synced(&server, transport, &bob, DeviceId::random()).await;
    expect_nothing_of(&mut bob_second, alice.id, None, QUIET).await;
    // Bob sees it as a request, and gets the messages.
    assert_eq!(expect_invitation(&mut bob_conn, dm).await, alice.id);
    let requests = bob.http.invitations().await.expect("invitations");
    assert_eq!(
        requests
            .iter()
            .map(|i| (i.conversation_id, i.inviter.as_str()))
            .collect::<Vec<_>>(),
        vec![(dm, "alice")]
    );
    let receipt = alice_conn
        .send(dm, 1, "text", text("hi bob"))
        .await
        .expect("send");
    let m = next_message(&mut bob_conn).await;
    assert_eq!((m.conversation, m.seq), (dm, receipt.seq));
    // No presence either way, live or on connect.
    expect_nothing_of(&mut bob_conn, alice.id, None, QUIET).await;
    expect_nothing_of(&mut alice_conn, bob.id, None, Duration::from_millis(50)).await;
    // Accepting the request: presence both ways, and the request is gone.
    bob_conn
        .accept_invite(dm)
        .await
        .expect("accept the request");
    expect_presence(&mut bob_conn, alice.id, PresenceStatus::Online).await;
    expect_presence(&mut alice_conn, bob.id, PresenceStatus::Online).await;
    assert!(bob.http.invitations().await.expect("list").is_empty());
    let back = bob_conn
        .send(dm, 1, "text", text("hi"))
        .await
        .expect("send");
    let m = next_message(&mut alice_conn).await;
    assert_eq!(m.seq, back.seq);
}

async fn blocking_stops_direct_messages_invitations_and_presence_until_unblocked(
    transport: TransportPref,
) {
    let server = start().await;
    let (alice, bob, dm) = alice_and_bob(&server).await;
    let (mut bob_conn, _) = connect_synced(&server, transport, &bob, DeviceId::random()).await;
    let (mut alice_conn, _) = connect_synced(&server, transport, &alice, DeviceId::random()).await;
    expect_presence(&mut bob_conn, alice.id, PresenceStatus::Online).await;
    expect_presence(&mut alice_conn, bob.id, PresenceStatus::Online).await;
    // A device's snapshot of its contacts is read when it connects and may repeat what the
    // other's announcement already said: let those settle before blocking.
    drain(&mut bob_conn, QUIET).await;
    drain(&mut alice_conn, QUIET).await;

    bob_conn.block(alice.id, true).await.expect("block");
    let blocked = bob.http.blocks().await.expect("block list");
    assert_eq!(
        blocked.iter().map(|u| u.user_id).collect::<Vec<_>>(),
        vec![alice.id]
    );
    // No 1:1 messages either way; reopening is refused like an unknown user.
    let missing = refusal(
        alice_conn
            .send(ConversationId::random(), 1, "text", text("x"))
            .await,
    );
    assert_eq!(
        refusal(alice_conn.send(dm, 1, "text", text("let me in")).await),
        missing,
        "the blocked sender learns nothing more than for a missing conversation"
    );
    assert_eq!(
        refusal(bob_conn.send(dm, 1, "text", text("bye")).await).0,
        "NotFound"
    );
    expect_nothing_of(&mut bob_conn, alice.id, Some(dm), QUIET).await;
    // Reactions in the 1:1 neither (answered like a missing conversation).
    let react = |conversation| {
        alice_conn.request(move |request_id| ClientMessage::React {
            request_id,
            conversation,
            seq: 1,
            emoji: "👍".into(),
            add: true,
        })
    };
    assert_eq!(
        refusal(react(dm).await),
        refusal(react(ConversationId::random()).await)
    );
    let error = alice.http.create_direct("bob").await.expect_err("blocked");
    assert_eq!(error.code(), Some("not_found"), "{error}");
    // No invitations: creation and Invite answer as usual, but bob gets nothing.
    let group = create_group(&alice_conn, "Trap", vec![bob.id])
        .await
        .expect("group without bob");
    assert_eq!(group.members.len(), 1);
    alice_conn
        .request(|request_id| ClientMessage::Invite {
            request_id,
            conversation: group.conversation,
            user: bob.id,
        })
        .await
        .expect("invite answers like any invitation");
    assert!(bob.http.invitations().await.expect("list").is_empty());
    // An invitation made before a block cannot be accepted after it (carol invites alice, then
    // blocks her).
    let carol = user(&server, "carol").await;
    let (carol_conn, _) = connect_synced(&server, transport, &carol, DeviceId::random()).await;
    let before = create_group(&carol_conn, "Earlier", vec![alice.id])
        .await
        .expect("group")
        .conversation;
    carol_conn
        .block(alice.id, true)
        .await
        .expect("carol blocks alice");
    assert_eq!(
        refusal(alice_conn.accept_invite(before).await).0,
        "NotFound",
        "a blocker's earlier invitation is void"
    );
    // No presence either way: reconnects are not shown.
    alice_conn.close().await;
    tokio::time::sleep(Duration::from_millis(GRACE_MS * 2)).await;
    let (mut alice_conn, _) = connect_synced(&server, transport, &alice, DeviceId::random()).await;
    expect_nothing_of(&mut bob_conn, alice.id, None, QUIET).await;
    expect_nothing_of(&mut alice_conn, bob.id, None, Duration::from_millis(50)).await;
    let (mut bob_second, _) = connect_synced(&server, transport, &bob, DeviceId::random()).await;
    expect_nothing_of(&mut bob_second, alice.id, None, QUIET).await;
    expect_nothing_of(&mut alice_conn, bob.id, None, QUIET).await;

    // Unblocking restores all of it (over HTTPS this time).
    bob.http.unblock("alice").await.expect("unblock");
    assert!(bob.http.blocks().await.expect("list").is_empty());
    expect_presence(&mut alice_conn, bob.id, PresenceStatus::Online).await;
    expect_presence(&mut bob_second, alice.id, PresenceStatus::Online).await;
    let receipt = alice_conn
        .send(dm, 2, "text", text("friends again"))
        .await
        .expect("send after unblock");
    let m = next_message(&mut bob_second).await;
    assert_eq!((m.conversation, m.seq), (dm, receipt.seq));
    // And blocking over HTTPS works the same.
    alice.http.block("bob").await.expect("block over HTTPS");
    assert_eq!(
        refusal(bob_second.send(dm, 3, "text", text("?")).await).0,
        "NotFound"
    );
}

async fn non_members_get_exactly_the_answer_a_missing_conversation_gets(transport: TransportPref) {
    let server = start().await;
    let alice = user(&server, "alice").await;
    let _bob = user(&server, "bob").await;
    let dm = alice
        .http
        .create_direct("bob")
        .await
        .expect("dm")
        .conversation_id;
    let mallory = user(&server, "mallory").await;
    let (alice_conn, _) = connect_synced(&server, transport, &alice, DeviceId::random()).await;
    let group = create_group(&alice_conn, "Hidden", vec![])
        .await
        .expect("group")
        .conversation;
    alice_conn
        .send(group, 1, "text", text("secret"))
        .await
        .expect("send");
    let (conn, _) = connect_synced(&server, transport, &mallory, DeviceId::random()).await;
    let missing = ConversationId::random();
    let mut n = 0u128;
    for existing in [dm, group] {
        n += 10;
        let answers = |target: ConversationId, n: u128| {
            let conn = &conn;
            let victim = alice.id;
            async move {
                vec![
                    (
                        "send",
                        refusal(conn.send(target, n, "text", text("x")).await),
                    ),
                    ("history", refusal(conn.history(target, 0, 0, 10).await)),
                    (
                        "react",
                        refusal(
                            conn.request(|request_id| ClientMessage::React {
                                request_id,
                                conversation: target,
                                seq: 1,
                                emoji: "👍".into(),
                                add: true,
                            })
                            .await,
                        ),
                    ),
                    (
                        "invite",
                        refusal(
                            conn.request(|request_id| ClientMessage::Invite {
                                request_id,
                                conversation: target,
                                user: victim,
                            })
                            .await,
                        ),
                    ),
                    (
                        "remove_member",
                        refusal(
                            conn.request(|request_id| ClientMessage::RemoveMember {
                                request_id,
                                conversation: target,
                                user: victim,
                            })
                            .await,
                        ),
                    ),
                    (
                        "leave",
                        refusal(
                            conn.request(|request_id| ClientMessage::Leave {
                                request_id,
                                conversation: target,
                            })
                            .await,
                        ),
                    ),
                    ("accept", refusal(conn.accept_invite(target).await)),
                    ("decline", refusal(conn.decline_invite(target).await)),
                ]
            }
        };
        let for_existing = answers(existing, n).await;
        let for_missing = answers(missing, n + 1).await;
        assert_eq!(for_existing, for_missing, "conversation {existing}");
        for (what, (code, _)) in &for_existing {
            assert_eq!(code, "NotFound", "{what}");
        }
    }
    // Over HTTPS as well: same status and body.
    let https = https(&server);
    let body_of = |id: ConversationId| {
        let https = https.clone();
        let url = format!("https://{}/api/v1/conversations/{id}/messages", server.addr);
        let token = mallory.token.clone();
        async move {
            let response = https.get(url).bearer_auth(token).send().await.expect("GET");
            (response.status(), response.text().await.unwrap_or_default())
        }
    };
    let (status, body) = body_of(group).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!((status, body), body_of(missing).await);
}

async fn group_names_with_invisible_or_control_characters_are_refused(transport: TransportPref) {
    let server = start().await;
    let alice = user(&server, "alice").await;
    let (alice_conn, _) = connect_synced(&server, transport, &alice, DeviceId::random()).await;
    for bad in [
        "evil\u{202E}gpj.exe", // right-to-left override
        "a\u{2066}b\u{2069}",  // isolates
        "zero\u{200B}width",   // zero-width space
        "join\u{200D}er",      // zero-width joiner
        "\u{FEFF}bom",         // byte order mark
        "line\u{2028}sep",     // line separator
        "para\u{2029}sep",     // paragraph separator
        "bell\u{7}",           // control
        "two\nlines",          // a newline in a name
        "\u{3164}",            // Hangul filler (renders as nothing)
    ] {
        let error = create_group(&alice_conn, bad, vec![]).await.expect_err(bad);
        assert_eq!(error.code(), Some("invalid_argument"), "{bad:?}: {error}");
        let error = alice.http.create_group(bad, "", &[]).await.expect_err(bad);
        assert_eq!(
            error.code(),
            Some("invalid_argument"),
            "{bad:?} over HTTPS: {error}"
        );
    }
    // Descriptions refuse them too (a newline is fine there).
    let response = alice
        .http
        .create_group("Fine", "line\u{2028}sep", &[])
        .await
        .expect_err("description");
    assert_eq!(response.code(), Some("invalid_argument"), "{response}");
    alice
        .http
        .create_group("Fine", "two\nlines", &[])
        .await
        .expect("a newline in a description");
    assert!(
        alice
            .http
            .conversations()
            .await
            .expect("list")
            .iter()
            .all(|c| c.name == "Fine"),
        "none of the bad names was created"
    );
    // Look-alikes collide for one owner: Latin "paypal" and one with a Cyrillic "а".
    create_group(&alice_conn, "paypal", vec![])
        .await
        .expect("paypal");
    let error = create_group(&alice_conn, "p\u{0430}ypal", vec![])
        .await
        .expect_err("look-alike");
    assert_eq!(error.code(), Some("conflict"), "{error}");
}
