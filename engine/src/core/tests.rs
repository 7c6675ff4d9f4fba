//! Unit tests of the sans-IO core: exact inputs, exact actions.

use super::*;

const ALICE: UserId = UserId::from_u128(1);
const BOB: UserId = UserId::from_u128(2);
const MALLORY: UserId = UserId::from_u128(3);
const CONV: ConversationId = ConversationId::from_u128(100);

fn core() -> EngineCore {
    EngineCore::new(EngineLimits::default(), 7).expect("default limits are valid")
}

fn connect(core: &mut EngineCore, conn: ConnId, user: UserId) {
    let device = DeviceId::from_u128(1000 + conn as u128);
    assert!(
        core.handle(
            Input::Connected {
                conn,
                user,
                device,
                token_hash: [conn as u8; 32]
            },
            1
        )
        .is_empty()
    );
}

fn send(conn: ConnId, request_id: u64, client_msg_id: u128) -> Input {
    Input::Send(SendRequest {
        conn,
        request_id,
        conversation: CONV,
        client_msg_id,
        content_type: "text".into(),
        payload: vec![1, 2, 3],
        files: vec![],
    })
}

fn loaded(last_seq: u64) -> Input {
    Input::Loaded {
        conversation: CONV,
        snapshot: Some(ConversationSnapshot {
            members: vec![ALICE, BOB],
            last_seq,
            last_timestamp_ms: 0,
            landed: vec![],
        }),
    }
}

fn commit_of(actions: &[Action]) -> (BatchId, CommitBatch) {
    actions
        .iter()
        .find_map(|a| match a {
            Action::Commit { batch, data } => Some((*batch, data.clone())),
            _ => None,
        })
        .expect("a commit action")
}

fn acks(actions: &[Action]) -> Vec<(ConnId, u64, bool)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Reply {
                conn,
                message: ServerMessage::SendAck { seq, duplicate, .. },
            } => Some((*conn, *seq, *duplicate)),
            _ => None,
        })
        .collect()
}

#[test]
fn send_is_acked_and_delivered_only_after_commit() {
    let mut core = core();
    connect(&mut core, 1, ALICE);
    connect(&mut core, 2, BOB);
    connect(&mut core, 3, ALICE); // Alice's second device
    assert_eq!(
        core.handle(send(1, 9, 42), 10),
        vec![Action::Load {
            conversation: CONV,
            landed_from: None
        }]
    );
    let actions = core.handle(loaded(0), 11);
    let (batch, data) = commit_of(&actions);
    assert_eq!(data.messages.len(), 1);
    assert_eq!(data.messages[0].seq, 1);
    assert!(
        acks(&actions).is_empty(),
        "nothing is acknowledged before it is durable"
    );
    let actions = core.handle(Input::Committed { batch, ok: true }, 12);
    assert_eq!(acks(&actions), vec![(1, 1, false)]);
    let delivered: Vec<ConnId> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Deliver { conns, .. } => Some(conns.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    let mut delivered = delivered;
    delivered.sort();
    assert_eq!(
        delivered,
        vec![2, 3],
        "every other device of every member, not the sender's connection"
    );
}

#[test]
fn sends_arriving_during_a_commit_share_the_next_batch() {
    let mut core = core();
    connect(&mut core, 1, ALICE);
    core.handle(send(1, 1, 1), 1);
    let (first, _) = commit_of(&core.handle(loaded(0), 1));
    for i in 2..=5 {
        let actions = core.handle(send(1, i, i as u128), 2);
        assert!(
            !actions.iter().any(|a| matches!(a, Action::Commit { .. })),
            "one commit in flight at a time"
        );
    }
    let actions = core.handle(
        Input::Committed {
            batch: first,
            ok: true,
        },
        3,
    );
    let (_, second) = commit_of(&actions);
    let seqs: Vec<u64> = second.messages.iter().map(|m| m.seq).collect();
    assert_eq!(
        seqs,
        vec![2, 3, 4, 5],
        "gapless and in arrival order, in one group commit"
    );
}

#[test]
fn retries_are_idempotent_while_queued_in_flight_and_after_commit() {
    let mut core = core();
    connect(&mut core, 1, ALICE);
    core.handle(send(1, 1, 77), 1);
    let (batch, _) = commit_of(&core.handle(loaded(0), 1));
    // Retry while in flight: no new message, acknowledged with the same seq.
    let actions = core.handle(send(1, 2, 77), 2);
    assert!(actions.is_empty());
    let actions = core.handle(Input::Committed { batch, ok: true }, 3);
    assert_eq!(acks(&actions), vec![(1, 1, false), (1, 1, true)]);
    // Retry after commit.
    let actions = core.handle(send(1, 3, 77), 4);
    assert_eq!(acks(&actions), vec![(1, 1, true)]);
    assert_eq!(core.uncommitted_messages(), 0);
}

#[test]
fn ids_older_than_memory_are_checked_in_the_store_in_order() {
    let mut core = core();
    connect(&mut core, 1, ALICE);
    core.handle(send(1, 1, 5), 1);
    core.handle(send(1, 2, 6), 1);
    // The conversation already has 10 stored messages: memory cannot answer for old ids.
    let actions = core.handle(loaded(10), 1);
    let lookups: Vec<u128> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Lookup { client_msg_id, .. } => Some(*client_msg_id),
            _ => None,
        })
        .collect();
    assert_eq!(lookups, vec![5, 6]);
    // The second answer arrives first: nothing may be sequenced out of order.
    let actions = core.handle(
        Input::LookedUp {
            conversation: CONV,
            sender: ALICE,
            client_msg_id: 6,
            found: None,
        },
        2,
    );
    assert!(actions.is_empty());
    let stored = Message {
        conversation: CONV,
        seq: 4,
        message_id: MessageId(9),
        sender_user: ALICE,
        sender_device: DeviceId(1001),
        client_msg_id: 5,
        timestamp_ms: 0,
        content_type: "text".into(),
        payload: vec![],
        files: vec![],
    };
    let actions = core.handle(
        Input::LookedUp {
            conversation: CONV,
            sender: ALICE,
            client_msg_id: 5,
            found: Some(stored),
        },
        3,
    );
    assert_eq!(
        acks(&actions),
        vec![(1, 4, true)],
        "the stored original answers the retry"
    );
    let (_, batch) = commit_of(&actions);
    assert_eq!(
        batch
            .messages
            .iter()
            .map(|m| (m.seq, m.client_msg_id))
            .collect::<Vec<_>>(),
        vec![(11, 6)]
    );
}

#[test]
fn non_members_are_refused_and_nothing_is_stored() {
    let mut core = core();
    connect(&mut core, 1, MALLORY);
    core.handle(send(1, 1, 1), 1);
    let actions = core.handle(loaded(0), 1);
    // Answered like a missing conversation: existence is not disclosed.
    assert!(matches!(
        actions.as_slice(),
        [Action::Reply {
            message: ServerMessage::Error {
                code: ErrorCode::NotFound,
                ..
            },
            ..
        }]
    ));
}

#[test]
fn a_failed_commit_reuses_no_seq_and_reports_every_waiting_sender() {
    let mut core = core();
    connect(&mut core, 1, ALICE);
    core.handle(send(1, 1, 1), 1);
    let (batch, _) = commit_of(&core.handle(loaded(0), 1));
    core.handle(send(1, 2, 2), 2);
    let actions = core.handle(Input::Committed { batch, ok: false }, 3);
    let errors = actions
        .iter()
        .filter(|a| {
            matches!(
                a,
                Action::Reply {
                    message: ServerMessage::Error {
                        code: ErrorCode::Internal,
                        ..
                    },
                    ..
                }
            )
        })
        .count();
    assert_eq!(errors, 2, "the failed message and the one queued behind it");
    // The next send reloads the conversation from storage, asking for whatever of the failed
    // commit reached the disk anyway.
    assert_eq!(
        core.handle(send(1, 3, 1), 4),
        vec![Action::Load {
            conversation: CONV,
            landed_from: Some(1)
        }]
    );
}

#[test]
fn a_failed_commit_that_reached_the_disk_is_delivered_on_reload_and_retries_dedupe() {
    let mut core = core();
    connect(&mut core, 1, ALICE);
    connect(&mut core, 2, BOB);
    core.handle(send(1, 1, 1), 1);
    let (batch, data) = commit_of(&core.handle(loaded(0), 1));
    // The write landed but the fsync reported an error.
    core.handle(Input::Committed { batch, ok: false }, 2);
    let landed = data.messages.clone();
    assert_eq!(landed.len(), 1);
    // Alice retries the same client id: the reload finds it on disk.
    assert!(matches!(
        core.handle(send(1, 2, 1), 3).as_slice(),
        [Action::Load {
            landed_from: Some(1),
            ..
        }]
    ));
    let actions = core.handle(
        Input::Loaded {
            conversation: CONV,
            snapshot: Some(ConversationSnapshot {
                members: vec![ALICE, BOB],
                last_seq: 1,
                last_timestamp_ms: 0,
                landed: landed.clone(),
            }),
        },
        4,
    );
    // Bob (and Alice's connection) get it live, and the retry is answered as a duplicate from
    // memory: no lookup, no new seq.
    let delivered: Vec<(Vec<ConnId>, u64)> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Deliver { conns, message } => match &**message {
                ServerMessage::Deliver { message } => Some((conns.clone(), message.seq)),
                _ => None,
            },
            _ => None,
        })
        .collect();
    assert_eq!(delivered.len(), 1);
    assert!(delivered[0].0.contains(&2) && delivered[0].1 == 1);
    assert_eq!(acks(&actions), vec![(1, 1, true)]);
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::Lookup { .. } | Action::Commit { .. }))
    );
}

#[test]
fn revoking_a_token_closes_only_its_connections() {
    let mut core = core();
    connect(&mut core, 1, ALICE);
    connect(&mut core, 2, BOB);
    let actions = core.handle(
        Input::TokenRevoked {
            token_hash: [1; 32],
        },
        1,
    );
    assert_eq!(
        actions,
        vec![Action::Close {
            conn: 1,
            code: ErrorCode::TokenRevoked,
            reason: "session ended".into()
        }]
    );
    assert!(!core.is_connected(1));
    assert!(core.is_connected(2));
}

#[test]
fn revoking_a_user_closes_every_connection_of_that_user_only() {
    let mut core = core();
    connect(&mut core, 1, ALICE);
    connect(&mut core, 2, BOB);
    connect(&mut core, 3, ALICE);
    let mut closed: Vec<ConnId> = core
        .handle(Input::UserRevoked { user: ALICE }, 1)
        .into_iter()
        .filter_map(|a| match a {
            Action::Close { conn, code, .. } => {
                assert_eq!(code, ErrorCode::TokenRevoked);
                Some(conn)
            }
            _ => None,
        })
        .collect();
    closed.sort_unstable();
    assert_eq!(closed, vec![1, 3]);
    assert!(!core.is_connected(1) && !core.is_connected(3));
    assert!(core.is_connected(2));
}

#[test]
fn removed_members_stop_receiving_at_once() {
    let mut core = core();
    connect(&mut core, 1, ALICE);
    connect(&mut core, 2, BOB);
    core.handle(send(1, 1, 1), 1);
    let (batch, _) = commit_of(&core.handle(loaded(0), 1));
    core.handle(Input::Committed { batch, ok: true }, 1);
    core.handle(
        Input::MembersChanged {
            conversation: CONV,
            members: vec![ALICE],
        },
        2,
    );
    let (batch, _) = commit_of(&core.handle(send(1, 2, 2), 3));
    let actions = core.handle(Input::Committed { batch, ok: true }, 4);
    assert!(
        !actions.iter().any(|a| matches!(a, Action::Deliver { .. })),
        "Bob was removed"
    );
}

#[test]
fn limits_are_validated() {
    let limits = EngineLimits {
        dedupe_window: 10,
        max_queued_sends_per_conversation: 10,
        ..EngineLimits::default()
    };
    assert!(EngineCore::new(limits, 1).is_err());
}

fn rate_limited(actions: &[Action]) -> Vec<(ConnId, u64, u32)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Reply {
                conn,
                message:
                    ServerMessage::Error {
                        request_id,
                        code: ErrorCode::RateLimited,
                        retry_after_ms,
                        ..
                    },
            } => Some((*conn, *request_id, *retry_after_ms)),
            _ => None,
        })
        .collect()
}

fn sequenced(actions: &[Action]) -> usize {
    actions
        .iter()
        .map(|a| match a {
            Action::Commit { data, .. } => data.messages.len(),
            _ => 0,
        })
        .sum()
}

#[test]
fn a_user_over_its_send_rate_is_refused_with_retry_after_and_nothing_is_sequenced() {
    let limits = EngineLimits {
        user_sends: crate::rate::BucketConfig::new(3, 10),
        ..EngineLimits::default()
    };
    let mut core = EngineCore::new(limits, 7).expect("valid");
    // Two devices of one user share the user's bucket.
    connect(&mut core, 1, ALICE);
    connect(&mut core, 2, ALICE);
    core.handle(send(1, 1, 1), 1);
    let mut actions = core.handle(loaded(0), 1);
    actions.extend(core.handle(send(2, 2, 2), 1));
    actions.extend(core.handle(send(1, 3, 3), 1));
    let refused = core.handle(send(2, 4, 4), 1);
    assert_eq!(rate_limited(&refused), vec![(2, 4, 100)]);
    assert_eq!(sequenced(&refused), 0, "a refused send is not sequenced");
    // Another user is not affected; after the refill Alice sends again.
    connect(&mut core, 3, BOB);
    assert!(rate_limited(&core.handle(send(3, 5, 5), 1)).is_empty());
    assert!(rate_limited(&core.handle(send(1, 6, 6), 101)).is_empty());
}

#[test]
fn a_conversation_over_its_send_rate_is_refused_but_non_members_cannot_drain_it() {
    let limits = EngineLimits {
        conversation_sends: crate::rate::BucketConfig::new(2, 1),
        ..EngineLimits::default()
    };
    let mut core = EngineCore::new(limits, 7).expect("valid");
    connect(&mut core, 1, ALICE);
    connect(&mut core, 2, BOB);
    connect(&mut core, 3, MALLORY);
    core.handle(send(1, 1, 1), 1);
    core.handle(loaded(0), 1);
    for i in 0..5 {
        let actions = core.handle(send(3, 100 + i, 100 + u128::from(i)), 1);
        assert!(
            rate_limited(&actions).is_empty(),
            "Mallory is forbidden, not counted"
        );
    }
    assert!(rate_limited(&core.handle(send(2, 2, 2), 1)).is_empty());
    assert_eq!(
        rate_limited(&core.handle(send(1, 3, 3), 1)),
        vec![(1, 3, 1000)]
    );
    assert!(rate_limited(&core.handle(send(1, 4, 4), 1001)).is_empty());
}

/// The `Delivered` pushes in `actions`: (connections, marks).
fn receipts(actions: &[Action]) -> Vec<(Vec<ConnId>, Vec<DeliveryMark>)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Deliver { conns, message } => match message.as_ref() {
                ServerMessage::Delivered {
                    request_id: 0,
                    conversation,
                    marks,
                } => {
                    assert_eq!(*conversation, CONV);
                    let mut conns = conns.clone();
                    conns.sort();
                    Some((conns, marks.clone()))
                }
                _ => None,
            },
            _ => None,
        })
        .collect()
}

fn ack(conn: ConnId, seq: u64) -> Input {
    Input::Ack {
        conn,
        conversation: CONV,
        seq,
    }
}

/// Answers every commit in `actions` with success and every store lookup with "not found",
/// and so on for what those answers return.
fn commit_all(core: &mut EngineCore, actions: Vec<Action>) {
    let mut pending = actions;
    while !pending.is_empty() {
        let mut next = Vec::new();
        for action in pending {
            match action {
                Action::Commit { batch, .. } => {
                    next.extend(core.handle(Input::Committed { batch, ok: true }, 5));
                }
                Action::Lookup {
                    conversation,
                    sender,
                    client_msg_id,
                } => next.extend(core.handle(
                    Input::LookedUp {
                        conversation,
                        sender,
                        client_msg_id,
                        found: None,
                    },
                    5,
                )),
                _ => {}
            }
        }
        pending = next;
    }
}

/// Sends `n` messages from `first_sender` (the first one) then Alice (conns 1 and 3; Bob is
/// conn 2), every one committed.
fn sent(n: u64, first_from: ConnId, limits: EngineLimits) -> EngineCore {
    let mut core = EngineCore::new(limits, 7).expect("valid limits");
    connect(&mut core, 1, ALICE);
    connect(&mut core, 2, BOB);
    connect(&mut core, 3, ALICE);
    core.handle(send(first_from, 1, 1), 1);
    let actions = core.handle(loaded(0), 1);
    commit_all(&mut core, actions);
    for i in 2..=n {
        let actions = core.handle(send(1, i, i as u128), 3);
        commit_all(&mut core, actions);
    }
    core
}

fn alice_sent(n: u64) -> EngineCore {
    sent(n, 1, EngineLimits::default())
}

#[test]
fn an_ack_tells_the_sender_and_only_the_sender() {
    let mut core = alice_sent(3);
    let actions = core.handle(ack(2, 2), 10);
    assert_eq!(
        receipts(&actions),
        vec![(vec![1, 3], vec![DeliveryMark { user: BOB, seq: 2 }])],
        "every device of the sender learns Bob's mark; Bob's own connection does not"
    );
    let (_, data) = commit_of(&actions);
    assert_eq!(
        data.cursors,
        vec![CursorUpdate {
            user: BOB,
            device: DeviceId::from_u128(1002),
            conversation: CONV,
            seq: 2
        }],
        "the cursor carries its user so the store can keep the mark"
    );
}

#[test]
fn a_mark_that_does_not_move_tells_nobody() {
    let mut core = alice_sent(3);
    assert_eq!(receipts(&core.handle(ack(2, 3), 10)).len(), 1);
    assert!(
        receipts(&core.handle(ack(2, 3), 11)).is_empty(),
        "the same mark again"
    );
    assert!(
        receipts(&core.handle(ack(2, 1), 12)).is_empty(),
        "a lower mark (another device of Bob behind the first)"
    );
}

#[test]
fn a_mark_is_capped_at_the_durable_end() {
    let mut core = alice_sent(2);
    assert_eq!(
        receipts(&core.handle(ack(2, 99), 10)),
        vec![(vec![1, 3], vec![DeliveryMark { user: BOB, seq: 2 }])],
        "nobody can be told a message is delivered before it exists"
    );
}

#[test]
fn acks_of_ones_own_messages_tell_nobody() {
    let mut core = alice_sent(2);
    // Alice's second device acknowledges Alice's messages: no other sender is covered.
    assert!(receipts(&core.handle(ack(3, 2), 10)).is_empty());
}

#[test]
fn a_non_member_cannot_move_a_mark() {
    let mut core = alice_sent(2);
    connect(&mut core, 4, MALLORY);
    assert!(receipts(&core.handle(ack(4, 2), 10)).is_empty());
}

#[test]
fn a_mark_beyond_the_sender_memory_tells_every_other_member() {
    let limits = EngineLimits {
        dedupe_window: 10,
        max_queued_sends_per_conversation: 8,
        ..EngineLimits::default()
    };
    // Bob's message 1, then 19 of Alice's: seq 1 falls out of a 10-entry memory.
    let mut core = sent(20, 2, limits);
    // Alice's second device acks from 0: the range 1..=20 is older than the memory.
    let told = receipts(&core.handle(ack(3, 20), 10));
    assert_eq!(
        told,
        vec![(
            vec![2],
            vec![DeliveryMark {
                user: ALICE,
                seq: 20
            }]
        )],
        "Bob sent message 1, which the memory no longer holds: all other members are told"
    );
}

#[test]
fn timestamps_never_go_back_in_a_conversation_whatever_the_clock() {
    let mut core = core();
    connect(&mut core, 1, ALICE);
    assert_eq!(core.handle(send(1, 1, 1), 10).len(), 1, "a load");
    // The newest stored message was stamped at 5,000: a clock at 20 (a restart after the
    // wall clock stepped back) must not stamp the next one earlier.
    let actions = core.handle(
        Input::Loaded {
            conversation: CONV,
            snapshot: Some(ConversationSnapshot {
                members: vec![ALICE, BOB],
                last_seq: 3,
                last_timestamp_ms: 5_000,
                landed: vec![],
            }),
        },
        20,
    );
    assert!(actions.iter().any(|a| matches!(a, Action::Lookup { .. })));
    // Older messages may hold this client id only in the store: it has none.
    let looked_up = |client_msg_id| Input::LookedUp {
        conversation: CONV,
        sender: ALICE,
        client_msg_id,
        found: None,
    };
    let (batch, data) = commit_of(&core.handle(looked_up(1), 21));
    assert_eq!(
        (data.messages[0].seq, data.messages[0].timestamp_ms),
        (4, 5_000)
    );
    core.handle(Input::Committed { batch, ok: true }, 22);
    // Once the clock passes the stored stamp, it is used again.
    core.handle(send(1, 2, 2), 6_000);
    let (_, data) = commit_of(&core.handle(looked_up(2), 6_001));
    assert_eq!(
        (data.messages[0].seq, data.messages[0].timestamp_ms),
        (5, 6_001)
    );
}
