//! Groups end to end against the real `tern` binary, each scenario over both transports: unique
//! names, invitations, owner-only member management, removal cutting a member off (live, in
//! history and on resume), leaving, roles, and fan-out to a 1,000-member group.

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt as _;
use reqwest::StatusCode;
use tern_sdk::tern_wire::api::{ConversationView, InvitationList, InvitationView};
use tern_sdk::tern_wire::ids::{ConversationId, DeviceId, UserId};
use tern_sdk::tern_wire::msg::{
    ClientMessage, ConversationInfo, ConversationKind, Cursor, MemberRole, ServerMessage,
};
use tern_sdk::{Connection, Error, Event, HistoryQuery, TransportPref};

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
    duplicate_group_names_are_refused_across_case_and_normalisation,
    invite_is_live_listed_and_accepting_joins,
    declining_tells_the_inviter,
    joining_needs_an_invitation,
    only_the_owner_manages_members,
    a_removed_member_receives_and_reads_nothing_after_removal,
    members_leave_and_the_owner_only_last,
    member_list_has_roles_and_direct_adds,
    a_message_reaches_a_thousand_member_group,
);

/// A server that lets one address register many users (the tests all come from 127.0.0.1).
async fn server() -> TestServer {
    TestServer::start_with(&[
        "login_attempts_per_address = 1000000",
        "registrations_per_address = 1000000",
        "registrations_per_window = 1000000",
    ])
    .await
}

/// The next non-message event that matches, skipping deliveries and other events.
async fn expect_other<T>(
    conn: &mut Connection,
    mut pick: impl FnMut(ServerMessage) -> Option<T>,
) -> T {
    loop {
        match next(conn).await {
            Event::Other(message) => {
                if let Some(found) = pick(message) {
                    return found;
                }
            }
            Event::Closed(reason) => panic!("connection closed: {reason:?}"),
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
            description: "a test group".to_owned(),
            members,
        })
        .await?
    {
        ServerMessage::Conversation { info, .. } => Ok(info),
        other => panic!("unexpected answer to CreateConversation: {other:?}"),
    }
}

async fn invite(
    conn: &Connection,
    conversation: ConversationId,
    user: UserId,
) -> Result<ServerMessage, Error> {
    conn.request(|request_id| ClientMessage::Invite {
        request_id,
        conversation,
        user,
    })
    .await
}

async fn accept(conn: &Connection, conversation: ConversationId) -> Result<ServerMessage, Error> {
    conn.request(|request_id| ClientMessage::AcceptInvite {
        request_id,
        conversation,
    })
    .await
}

async fn remove(
    conn: &Connection,
    conversation: ConversationId,
    user: UserId,
) -> Result<ServerMessage, Error> {
    conn.request(|request_id| ClientMessage::RemoveMember {
        request_id,
        conversation,
        user,
    })
    .await
}

async fn leave(conn: &Connection, conversation: ConversationId) -> Result<ServerMessage, Error> {
    conn.request(|request_id| ClientMessage::Leave {
        request_id,
        conversation,
    })
    .await
}

#[track_caller]
fn assert_code<T: std::fmt::Debug>(result: Result<T, Error>, code: &str) {
    match result {
        Err(e) => assert_eq!(e.code(), Some(code), "{e}"),
        Ok(v) => panic!("expected {code}, got {v:?}"),
    }
}

async fn invitations(server: &TestServer, who: &TestUser) -> Vec<InvitationView> {
    let response = https(server)
        .get(format!("https://{}/api/v1/invitations", server.addr))
        .bearer_auth(&who.token)
        .send()
        .await
        .expect("GET /invitations");
    assert_eq!(response.status(), StatusCode::OK);
    response
        .json::<InvitationList>()
        .await
        .expect("invitation list")
        .invitations
}

/// POST with an optional JSON body; returns the status and the body text.
async fn post(
    server: &TestServer,
    who: &TestUser,
    path: &str,
    body: Option<serde_json::Value>,
) -> (StatusCode, String) {
    let mut request = https(server)
        .post(format!("https://{}/api/v1{path}", server.addr))
        .bearer_auth(&who.token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("POST");
    let status = response.status();
    (status, response.text().await.unwrap_or_default())
}

fn member_ids(info: &ConversationInfo) -> Vec<UserId> {
    let mut ids: Vec<UserId> = info.members.iter().map(|m| m.user).collect();
    ids.sort();
    ids
}

async fn duplicate_group_names_are_refused_across_case_and_normalisation(transport: TransportPref) {
    let server = server().await;
    let alice = user(&server, "alice").await;
    let bob = user(&server, "bob").await;
    let (alice_conn, _) = connect_synced(&server, transport, &alice, DeviceId::random()).await;
    let (bob_conn, _) = connect_synced(&server, transport, &bob, DeviceId::random()).await;
    let info = create_group(&alice_conn, "Café", vec![])
        .await
        .expect("first group");
    assert_eq!(info.name, "Café");
    // Names are unique per owner: the same name in another case, fully composed upper case,
    // decomposed (e + combining acute), full-width, or with a Cyrillic look-alike "а".
    for taken in [
        "Café",
        "CAFÉ",
        "cafe\u{301}",
        "  café  ",
        "ＣＡＦＥ\u{301}",
        "C\u{0430}fé",
    ] {
        assert_code(create_group(&alice_conn, taken, vec![]).await, "conflict");
    }
    // Over HTTP too, with 409.
    let (status, body) = post(
        &server,
        &alice,
        "/conversations/group",
        Some(serde_json::json!({"name": "CAFE\u{301}", "description": "", "members": []})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body.contains("conflict"), "{body}");
    // Another owner may use the name: nobody squats a name for others.
    create_group(&bob_conn, "CAFÉ", vec![])
        .await
        .expect("another owner's Café");
    // A different name is fine; and concurrent creations of one new name have one winner.
    create_group(&alice_conn, "Cafe", vec![])
        .await
        .expect("different name");
    let results = futures_util::future::join_all((0..8).map(|i| {
        create_group(
            &alice_conn,
            if i % 3 == 0 { "Race" } else { "RACE" },
            vec![],
        )
    }))
    .await;
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
    for r in results.into_iter().filter(|r| r.is_err()) {
        assert_code(r, "conflict");
    }
}

async fn invite_is_live_listed_and_accepting_joins(transport: TransportPref) {
    let server = server().await;
    let alice = user(&server, "alice").await;
    let bob = user(&server, "bob").await;
    let (mut alice_conn, _) = connect_synced(&server, transport, &alice, DeviceId::random()).await;
    let (mut bob_conn, _) = connect_synced(&server, transport, &bob, DeviceId::random()).await;
    let info = create_group(&alice_conn, "Book club", vec![])
        .await
        .expect("group");
    let group = info.conversation;
    // A message before bob joins: he may read history (members read all of it).
    alice_conn
        .send(group, 1, "text", text("before"))
        .await
        .expect("send");
    assert!(matches!(
        invite(&alice_conn, group, bob.id).await,
        Ok(ServerMessage::Ok { .. })
    ));
    let (conversation, inviter, name) = expect_other(&mut bob_conn, |m| match m {
        ServerMessage::Invitation {
            conversation,
            inviter,
            name,
        } => Some((conversation, inviter, name)),
        _ => None,
    })
    .await;
    assert_eq!(
        (conversation, inviter, name.as_str()),
        (group, alice.id, "Book club")
    );
    let listed = invitations(&server, &bob).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].conversation_id, group);
    assert_eq!(listed[0].inviter, "alice");
    assert_eq!(listed[0].name, "Book club");
    // Not yet a member: no reading, no sending.
    assert_code(bob_conn.history(group, 0, 0, 10).await, "not_found");
    match accept(&bob_conn, group).await.expect("accept") {
        ServerMessage::Conversation { info, .. } => {
            assert_eq!(member_ids(&info), {
                let mut v = vec![alice.id, bob.id];
                v.sort();
                v
            });
        }
        other => panic!("unexpected answer to AcceptInvite: {other:?}"),
    }
    // Alice is told about the change (after the announcement of the creation).
    let created = expect_other(&mut alice_conn, |m| match m {
        ServerMessage::Conversation { info, .. } if info.conversation == group => Some(info),
        _ => None,
    })
    .await;
    assert_eq!(created.members.len(), 1);
    let update = expect_other(&mut alice_conn, |m| match m {
        ServerMessage::Conversation { info, .. } if info.conversation == group => Some(info),
        _ => None,
    })
    .await;
    assert!(update.members.iter().any(|m| m.user == bob.id));
    assert!(
        invitations(&server, &bob).await.is_empty(),
        "accepted invitations are gone"
    );
    // Bob sees the group and receives new messages live.
    let listed = bob.http.conversations().await.expect("conversations");
    assert!(
        listed
            .iter()
            .any(|c: &ConversationView| c.conversation_id == group)
    );
    alice_conn
        .send(group, 2, "text", text("welcome"))
        .await
        .expect("send");
    let m = next_message(&mut bob_conn).await;
    assert_eq!(
        (m.conversation, m.payload.as_slice()),
        (group, b"welcome".as_slice())
    );
    bob_conn
        .send(group, 1, "text", text("thanks"))
        .await
        .expect("bob can post");
    let m = next_message(&mut alice_conn).await;
    assert_eq!(m.payload, b"thanks");
    let page = bob_conn.history(group, 0, 0, 10).await.expect("history");
    assert_eq!(page.messages.len(), 3);
    // Accepting twice: the invitation is used up.
    assert_code(accept(&bob_conn, group).await, "not_found");
    // Inviting a member is a conflict.
    assert_code(invite(&alice_conn, group, bob.id).await, "conflict");
}

async fn declining_tells_the_inviter(transport: TransportPref) {
    let server = server().await;
    let alice = user(&server, "alice").await;
    let bob = user(&server, "bob").await;
    let (mut alice_conn, _) = connect_synced(&server, transport, &alice, DeviceId::random()).await;
    let (mut bob_conn, _) = connect_synced(&server, transport, &bob, DeviceId::random()).await;
    let group = create_group(&alice_conn, "Chess", vec![])
        .await
        .expect("group")
        .conversation;
    invite(&alice_conn, group, bob.id).await.expect("invite");
    expect_other(&mut bob_conn, |m| {
        matches!(m, ServerMessage::Invitation { .. }).then_some(())
    })
    .await;
    let answer = bob_conn
        .request(|request_id| ClientMessage::DeclineInvite {
            request_id,
            conversation: group,
        })
        .await
        .expect("decline");
    assert!(matches!(answer, ServerMessage::Ok { .. }), "{answer:?}");
    let (conversation, who) = expect_other(&mut alice_conn, |m| match m {
        ServerMessage::InviteDeclined { conversation, user } => Some((conversation, user)),
        _ => None,
    })
    .await;
    assert_eq!((conversation, who), (group, bob.id));
    assert!(invitations(&server, &bob).await.is_empty());
    assert_code(accept(&bob_conn, group).await, "not_found");
    // Over HTTP: invite again, decline with POST .../invitations/decline.
    let (status, body) = post(
        &server,
        &alice,
        &format!("/conversations/{group}/invitations"),
        Some(serde_json::json!({"username": "bob"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = post(
        &server,
        &bob,
        &format!("/conversations/{group}/invitations/decline"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    expect_other(&mut alice_conn, |m| {
        matches!(m, ServerMessage::InviteDeclined { .. }).then_some(())
    })
    .await;
    let (status, _) = post(
        &server,
        &bob,
        &format!("/conversations/{group}/invitations/decline"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        alice.http.conversations().await.expect("list")[0]
            .members
            .len()
            == 1
    );
}

async fn joining_needs_an_invitation(transport: TransportPref) {
    let server = server().await;
    let alice = user(&server, "alice").await;
    let bob = user(&server, "bob").await;
    let carol = user(&server, "carol").await;
    let (alice_conn, _) = connect_synced(&server, transport, &alice, DeviceId::random()).await;
    let (bob_conn, _) = connect_synced(&server, transport, &bob, DeviceId::random()).await;
    let group = create_group(&alice_conn, "Private", vec![])
        .await
        .expect("group")
        .conversation;
    assert_code(accept(&bob_conn, group).await, "not_found");
    // An invitation for carol does not let bob in.
    invite(&alice_conn, group, carol.id)
        .await
        .expect("invite carol");
    assert_code(accept(&bob_conn, group).await, "not_found");
    let (status, _) = post(
        &server,
        &bob,
        &format!("/conversations/{group}/invitations/accept"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // A random conversation id too.
    assert_code(
        accept(&bob_conn, ConversationId::random()).await,
        "not_found",
    );
    // Sends from a non-member are answered like a missing conversation.
    assert_code(
        bob_conn.send(group, 1, "text", text("hi")).await,
        "not_found",
    );
    assert_code(bob_conn.history(group, 0, 0, 10).await, "not_found");
    // Carol's invitation over HTTP works.
    let (status, body) = post(
        &server,
        &carol,
        &format!("/conversations/{group}/invitations/accept"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("carol"), "{body}");
}

async fn only_the_owner_manages_members(transport: TransportPref) {
    let server = server().await;
    let alice = user(&server, "alice").await;
    let bob = user(&server, "bob").await;
    let carol = user(&server, "carol").await;
    let mallory = user(&server, "mallory").await;
    let (alice_conn, _) = connect_synced(&server, transport, &alice, DeviceId::random()).await;
    let (bob_conn, _) = connect_synced(&server, transport, &bob, DeviceId::random()).await;
    let (mallory_conn, _) = connect_synced(&server, transport, &mallory, DeviceId::random()).await;
    let group = group_with_members(&alice, "Owners only", &[&bob, &carol]).await;
    // A member who is not the owner: forbidden.
    assert_code(invite(&bob_conn, group, mallory.id).await, "forbidden");
    assert_code(remove(&bob_conn, group, carol.id).await, "forbidden");
    assert_code(remove(&bob_conn, group, alice.id).await, "forbidden");
    assert_code(
        bob_conn
            .request(|request_id| ClientMessage::AddMember {
                request_id,
                conversation: group,
                user: mallory.id,
            })
            .await,
        "forbidden",
    );
    // A non-member: the group is not disclosed.
    assert_code(invite(&mallory_conn, group, mallory.id).await, "not_found");
    assert_code(remove(&mallory_conn, group, bob.id).await, "not_found");
    let (status, _) = post(
        &server,
        &bob,
        &format!("/conversations/{group}/invitations"),
        Some(serde_json::json!({"username": "mallory"})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let response = https(&server)
        .delete(format!(
            "https://{}/api/v1/conversations/{group}/members/carol",
            server.addr
        ))
        .bearer_auth(&bob.token)
        .send()
        .await
        .expect("DELETE");
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(invitations(&server, &mallory).await.is_empty());
    let info = alice.http.conversations().await.expect("list");
    assert_eq!(info[0].members.len(), 3, "nothing changed");
    // Members cannot be managed in a 1:1 conversation.
    let dm = alice
        .http
        .create_direct("bob")
        .await
        .expect("dm")
        .conversation_id;
    assert_code(invite(&alice_conn, dm, carol.id).await, "invalid_argument");
}

async fn a_removed_member_receives_and_reads_nothing_after_removal(transport: TransportPref) {
    let server = server().await;
    let alice = user(&server, "alice").await;
    let bob = user(&server, "bob").await;
    let carol = user(&server, "carol").await;
    let (mut alice_conn, _) = connect_synced(&server, transport, &alice, DeviceId::random()).await;
    let bob_device = DeviceId::random();
    let (mut bob_conn, _) = connect_synced(&server, transport, &bob, bob_device).await;
    let (mut carol_conn, _) = connect_synced(&server, transport, &carol, DeviceId::random()).await;
    let group = group_with_members(&alice, "Cut off", &[&bob, &carol]).await;
    for i in 1..=3u128 {
        alice_conn
            .send(group, i, "text", text(&format!("before {i}")))
            .await
            .expect("send");
    }
    for _ in 0..3 {
        assert_eq!(next_message(&mut bob_conn).await.conversation, group);
        next_message(&mut carol_conn).await;
    }
    assert!(matches!(
        remove(&alice_conn, group, bob.id).await,
        Ok(ServerMessage::Ok { .. })
    ));
    // Bob and the remaining members are told.
    for conn in [&mut bob_conn, &mut carol_conn, &mut alice_conn] {
        let (conversation, who) = expect_other(conn, |m| match m {
            ServerMessage::MemberRemoved { conversation, user } => Some((conversation, user)),
            _ => None,
        })
        .await;
        assert_eq!((conversation, who), (group, bob.id));
    }
    // Sent after the removal: carol gets it, bob gets nothing.
    alice_conn
        .send(group, 4, "text", text("after"))
        .await
        .expect("send");
    assert_eq!(next_message(&mut carol_conn).await.payload, b"after");
    assert_quiet(&mut bob_conn).await;
    assert_code(
        bob_conn.send(group, 9, "text", text("still here?")).await,
        "not_found",
    );
    // History for bob stops at the removal (seq 3), with and without bounds.
    let page = bob_conn
        .history(group, 0, 0, 50)
        .await
        .expect("history up to removal");
    assert_eq!(
        page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert!(!page.has_more);
    let page = bob_conn
        .history(group, 0, 3, 50)
        .await
        .expect("history after removal");
    assert!(page.messages.is_empty(), "{:?}", page.messages);
    let page = bob_conn.history(group, 100, 0, 50).await.expect("history");
    assert_eq!(page.messages.len(), 3);
    let page = bob
        .http
        .history(group, HistoryQuery::default())
        .await
        .expect("http history");
    assert_eq!(page.messages.iter().map(|m| m.seq).max(), Some(3));
    // Resume from 0 (explicit cursor) and a fresh connection replay nothing of the group.
    bob_conn
        .resume(&[Cursor {
            conversation: group,
            seq: 0,
        }])
        .await
        .expect("resume");
    loop {
        match next(&mut bob_conn).await {
            Event::SyncComplete => break,
            Event::Deliver(m) => panic!("resume delivered {m:?} after removal"),
            _ => {}
        }
    }
    drop(bob_conn);
    let (mut bob_again, replayed) =
        connect_synced(&server, transport, &bob, DeviceId::random()).await;
    assert!(
        replayed.iter().all(|m| m.conversation != group),
        "{replayed:?}"
    );
    alice_conn
        .send(group, 5, "text", text("later"))
        .await
        .expect("send");
    assert_eq!(next_message(&mut carol_conn).await.payload, b"later");
    assert_quiet(&mut bob_again).await;
    assert!(
        bob.http
            .conversations()
            .await
            .expect("list")
            .iter()
            .all(|c| c.conversation_id != group)
    );
    // The member list no longer has bob; removing him again is not_found.
    let info = alice.http.conversations().await.expect("list");
    let view = info
        .iter()
        .find(|c| c.conversation_id == group)
        .expect("group");
    assert!(view.members.iter().all(|m| m.username != "bob"));
    assert_code(remove(&alice_conn, group, bob.id).await, "not_found");
}

async fn members_leave_and_the_owner_only_last(transport: TransportPref) {
    let server = server().await;
    let alice = user(&server, "alice").await;
    let bob = user(&server, "bob").await;
    let (mut alice_conn, _) = connect_synced(&server, transport, &alice, DeviceId::random()).await;
    let (mut bob_conn, _) = connect_synced(&server, transport, &bob, DeviceId::random()).await;
    let group = group_with_members(&alice, "Leavers", &[&bob]).await;
    // The owner cannot leave while others remain.
    assert_code(leave(&alice_conn, group).await, "conflict");
    alice_conn
        .send(group, 1, "text", text("one"))
        .await
        .expect("send");
    next_message(&mut bob_conn).await;
    assert!(matches!(
        leave(&bob_conn, group).await,
        Ok(ServerMessage::Ok { .. })
    ));
    let (_, who) = expect_other(&mut alice_conn, |m| match m {
        ServerMessage::MemberRemoved { conversation, user } => Some((conversation, user)),
        _ => None,
    })
    .await;
    assert_eq!(who, bob.id);
    expect_other(&mut bob_conn, |m| {
        matches!(m, ServerMessage::MemberRemoved { .. }).then_some(())
    })
    .await;
    alice_conn
        .send(group, 2, "text", text("two"))
        .await
        .expect("send");
    assert_quiet(&mut bob_conn).await;
    let page = bob_conn
        .history(group, 0, 0, 10)
        .await
        .expect("history to departure");
    assert_eq!(
        page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![1]
    );
    assert_code(leave(&bob_conn, group).await, "not_found");
    // Alone now, the owner may leave (over HTTP).
    let (status, body) = post(
        &server,
        &alice,
        &format!("/conversations/{group}/leave"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert!(alice.http.conversations().await.expect("list").is_empty());
}

async fn member_list_has_roles_and_direct_adds(transport: TransportPref) {
    let server = server().await;
    let alice = user(&server, "alice").await;
    let bob = user(&server, "bob").await;
    let carol = user(&server, "carol").await;
    let (alice_conn, _) = connect_synced(&server, transport, &alice, DeviceId::random()).await;
    let (mut carol_conn, _) = connect_synced(&server, transport, &carol, DeviceId::random()).await;
    let info = create_group(&alice_conn, "Roles", vec![bob.id])
        .await
        .expect("group");
    let group = info.conversation;
    let role_of = |info: &ConversationInfo, user: UserId| {
        info.members.iter().find(|m| m.user == user).map(|m| m.role)
    };
    // Creation invites: the owner alone is in.
    assert_eq!(role_of(&info, alice.id), Some(MemberRole::Owner));
    assert_eq!(info.members.len(), 1);
    accept_all(group, &[&bob]).await;
    // AddMember no longer adds anyone directly: it invites, and carol joins by accepting.
    let answer = alice_conn
        .request(|request_id| ClientMessage::AddMember {
            request_id,
            conversation: group,
            user: carol.id,
        })
        .await
        .expect("add");
    let ServerMessage::Conversation { info, .. } = answer else {
        panic!("{answer:?}")
    };
    assert_eq!(
        role_of(&info, carol.id),
        None,
        "not a member before accepting"
    );
    assert_eq!(role_of(&info, bob.id), Some(MemberRole::Member));
    expect_other(&mut carol_conn, |m| match m {
        ServerMessage::Invitation { conversation, .. } if conversation == group => Some(()),
        _ => None,
    })
    .await;
    let joined = carol_conn
        .accept_invite(group)
        .await
        .expect("carol accepts");
    assert_eq!(role_of(&joined, carol.id), Some(MemberRole::Member));
    let pushed = expect_other(&mut carol_conn, |m| match m {
        ServerMessage::Conversation { info, .. } if info.conversation == group => Some(info),
        _ => None,
    })
    .await;
    assert_eq!(member_ids(&pushed), member_ids(&joined));
    assert_code(
        alice_conn
            .request(|request_id| ClientMessage::AddMember {
                request_id,
                conversation: group,
                user: carol.id,
            })
            .await,
        "conflict",
    );
    // Over HTTP the list carries usernames and roles.
    let views = bob.http.conversations().await.expect("list");
    let view = views
        .iter()
        .find(|c| c.conversation_id == group)
        .expect("group");
    let mut roles: Vec<(String, String)> = view
        .members
        .iter()
        .map(|m| (m.username.clone(), m.role.clone()))
        .collect();
    roles.sort();
    assert_eq!(
        roles,
        vec![
            ("alice".to_owned(), "owner".to_owned()),
            ("bob".to_owned(), "member".to_owned()),
            ("carol".to_owned(), "member".to_owned())
        ]
    );
}

/// 1,000 members: the owner and 999 others, all invited at creation and accepting. 50 members are online on
/// their own devices and must each get the message live exactly once; 20 others who were
/// offline read it from history; the member list of the group has all 1,000.
async fn a_message_reaches_a_thousand_member_group(transport: TransportPref) {
    const MEMBERS: usize = 1_000;
    const ONLINE: usize = 50;
    const OFFLINE_CHECKED: usize = 20;
    let run = async {
        let server = server().await;
        let owner = user(&server, "owner").await;
        // Registration runs argon2id; a few at a time keeps the server's hash queue in bounds.
        let http = server.http();
        let names: Vec<String> = (1..MEMBERS).map(|i| format!("m{i:04}")).collect();
        let ids: Vec<UserId> = futures_util::stream::iter(names.iter().cloned())
            .map(|name| {
                let http = http.clone();
                async move {
                    let mut tries = 0;
                    loop {
                        match http.register(&name, PASSWORD).await {
                            Ok(view) => return view.user_id,
                            Err(e) if e.code() == Some("rate_limited") && tries < 100 => {
                                tries += 1;
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                            Err(e) => panic!("register {name}: {e}"),
                        }
                    }
                }
            })
            .buffered(8)
            .collect()
            .await;
        let (creating_conn, _) =
            connect_synced(&server, transport, &owner, DeviceId::random()).await;
        let info = create_group(&creating_conn, "Everyone", ids.clone())
            .await
            .expect("1,000-member group");
        assert_eq!(info.members.len(), 1, "creation invites, it adds nobody");
        let group = info.conversation;
        // Offline while 999 join: each join announces the whole member list to every online
        // member, and this test reads no events until its send.
        creating_conn.close().await;
        // Everyone accepts (logging in runs argon2id: a few at a time).
        futures_util::stream::iter(names.iter().cloned())
            .map(|name| {
                let mut member_http = server.http();
                async move {
                    let mut tries = 0;
                    loop {
                        match member_http.login(&name, PASSWORD).await {
                            Ok(_) => break,
                            Err(e) if e.code() == Some("rate_limited") && tries < 100 => {
                                tries += 1;
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                            Err(e) => panic!("login {name}: {e}"),
                        }
                    }
                    member_http
                        .accept_invitation(group)
                        .await
                        .unwrap_or_else(|e| panic!("{name} accepts: {e}"));
                }
            })
            .buffer_unordered(8)
            .collect::<Vec<_>>()
            .await;
        let (mut owner_conn, _) =
            connect_synced(&server, transport, &owner, DeviceId::random()).await;
        let mut sample = Vec::new();
        for i in 0..ONLINE + OFFLINE_CHECKED {
            // Spread over the whole member list.
            let name = &names[i * (MEMBERS - 1) / (ONLINE + OFFLINE_CHECKED)];
            let mut member_http = server.http();
            let login = member_http.login(name, PASSWORD).await.expect("login");
            sample.push(TestUser {
                name: name.clone(),
                http: member_http,
                token: login.token,
                id: login.user_id,
            });
        }
        let mut conns = Vec::new();
        for member in &sample[..ONLINE] {
            let (conn, _) = connect_synced(&server, transport, member, DeviceId::random()).await;
            conns.push(conn);
        }
        let receipt = owner_conn
            .send(group, 1, "text", text("hello everyone"))
            .await
            .expect("send");
        let delivered = futures_util::future::join_all(conns.iter_mut().map(|conn| async move {
            let m = next_message(conn).await;
            assert_quiet(conn).await;
            m
        }))
        .await;
        for m in &delivered {
            assert_eq!(
                (m.conversation, m.seq, m.payload.as_slice()),
                (group, receipt.seq, b"hello everyone".as_slice())
            );
        }
        for member in &sample[ONLINE..] {
            let page = member
                .http
                .history(group, HistoryQuery::default())
                .await
                .expect("history");
            assert_eq!(page.messages.len(), 1, "{}", member.name);
            assert_eq!(page.messages[0].seq, receipt.seq, "{}", member.name);
        }
        let views = sample[ONLINE].http.conversations().await.expect("list");
        assert_eq!(views[0].members.len(), MEMBERS);
        assert_quiet(&mut owner_conn).await;
    };
    tokio::time::timeout(Duration::from_secs(600), run)
        .await
        .expect("the 1,000-member scenario finished in time");
}
