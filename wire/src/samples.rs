//! Deterministic sample messages: at least one per client message, server message and notice.
//!
//! They are the source of the shared test vectors (`wire/vectors/vectors.json`) and make handy
//! fixtures for other crates' tests. Values are chosen to catch encoding mistakes: the two
//! halves of every id differ (a swapped `hi`/`lo` shows), strings include non-ASCII text, and
//! every number stays below 2^53 so JavaScript clients can compare the JSON exactly.
//!
//! Coverage is enforced, not hoped for: a test checks that encoding these samples produces every
//! member of the schema's `Body` and `Notice` unions, and the encoder's exhaustive `match` forces
//! every new message variant to get a union member.

use crate::ids::{ConversationId, DeviceId, MessageId, UserId};
use crate::msg::{
    ClaimTarget, ClientMessage, ConversationInfo, ConversationKind, Cursor, DeliveryMark,
    DeviceKeys, ErrorCode, FileRef, KeyShareItem, Member, MemberRole, Message, Notice,
    PROTOCOL_VERSION, PresenceStatus, ReactionCount, ServerMessage,
};

pub const ALICE: UserId = UserId(0x0a11_ce00_0000_4000_8000_0000_0000_0001);
pub const BOB: UserId = UserId(0x0b0b_0000_0000_4000_8000_0000_0000_0002);
pub const CAROL: UserId = UserId(0x0ca7_0100_0000_4000_8000_0000_0000_0003);
pub const ALICE_PHONE: DeviceId = DeviceId(0xde71_ce00_0000_4000_8000_0000_0000_00a1);
pub const BOB_LAPTOP: DeviceId = DeviceId(0xde71_ce00_0000_4000_8000_0000_0000_00b1);
pub const GROUP: ConversationId = ConversationId(0xc0c0_0000_0000_4000_8000_0000_0000_0001);
pub const DIRECT: ConversationId = ConversationId(0xc0c0_0000_0000_4000_8000_0000_0000_0002);
/// UUIDv7 layout: 48-bit millisecond timestamp first.
pub const MESSAGE_1: MessageId = MessageId(0x0193_0b6f_4a00_7000_8000_0000_0000_0001);
pub const MESSAGE_2: MessageId = MessageId(0x0193_0b6f_4a01_7000_8000_0000_0000_0002);
pub const FILE_1: MessageId = MessageId(0x0193_0b6f_4900_7000_8000_0000_0000_00f1);
/// Every byte distinct, so byte-order mistakes show.
pub const CLIENT_MSG_ID: u128 = 0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10;
/// 2024-11-12T09:56:08.512Z.
pub const T0_MS: u64 = 1_731_405_368_512;

fn file() -> FileRef {
    FileRef {
        file_id: FILE_1,
        size: 1_048_576,
        content_type: "image/png".into(),
    }
}

fn cursors() -> Vec<Cursor> {
    vec![
        Cursor {
            conversation: GROUP,
            seq: 41,
        },
        Cursor {
            conversation: DIRECT,
            seq: 0,
        },
    ]
}

pub fn message_1() -> Message {
    Message {
        conversation: GROUP,
        seq: 42,
        message_id: MESSAGE_1,
        sender_user: ALICE,
        sender_device: ALICE_PHONE,
        client_msg_id: CLIENT_MSG_ID,
        timestamp_ms: T0_MS,
        content_type: "e2e.megolm".into(),
        payload: vec![0x00, 0x01, 0x7f, 0x80, 0xfe, 0xff],
        files: vec![file()],
    }
}

fn message_2() -> Message {
    Message {
        conversation: GROUP,
        seq: 43,
        message_id: MESSAGE_2,
        sender_user: BOB,
        sender_device: BOB_LAPTOP,
        client_msg_id: 7,
        timestamp_ms: T0_MS + 1,
        content_type: "text".into(),
        payload: "Grüße 👋".as_bytes().to_vec(),
        files: vec![],
    }
}

fn alice_keys() -> DeviceKeys {
    DeviceKeys {
        user: ALICE,
        device: ALICE_PHONE,
        identity_key: vec![0x1d; 32],
        signed_prekey: vec![0x5e; 64],
        one_time_keys: vec![vec![0x01; 32], vec![0x02; 32], vec![]],
        signing_key: vec![0x5a; 32],
        fallback_key: vec![0xfb; 100],
        signature: vec![0x51; 64],
    }
}

/// Named client messages; every variant at least once.
pub fn client_messages() -> Vec<(&'static str, ClientMessage)> {
    vec![
        (
            "hello",
            ClientMessage::Hello {
                min_version: 1,
                max_version: PROTOCOL_VERSION,
                token: "tok_3q2+7w==".into(),
                device: ALICE_PHONE,
                client_name: "tern-cli/0.1.0".into(),
                cursors: cursors(),
            },
        ),
        (
            "hello_minimal",
            ClientMessage::Hello {
                min_version: 1,
                max_version: 1,
                token: String::new(),
                device: DeviceId(0),
                client_name: String::new(),
                cursors: vec![],
            },
        ),
        (
            "send",
            ClientMessage::Send {
                request_id: 1,
                conversation: GROUP,
                client_msg_id: CLIENT_MSG_ID,
                content_type: "e2e.megolm".into(),
                payload: vec![0x00, 0x01, 0x7f, 0x80, 0xfe, 0xff],
                files: vec![file()],
            },
        ),
        (
            "send_empty",
            ClientMessage::Send {
                request_id: 0,
                conversation: DIRECT,
                client_msg_id: 0,
                content_type: String::new(),
                payload: vec![],
                files: vec![],
            },
        ),
        (
            "ack",
            ClientMessage::Ack {
                conversation: GROUP,
                seq: 43,
            },
        ),
        ("resume", ClientMessage::Resume { cursors: cursors() }),
        (
            "history",
            ClientMessage::History {
                request_id: 2,
                conversation: GROUP,
                before_seq: 42,
                after_seq: 0,
                limit: 50,
                around_seq: 0,
                since_ms: 0,
                until_ms: 0,
                sender: None,
            },
        ),
        (
            "history_around",
            ClientMessage::History {
                request_id: 4,
                conversation: GROUP,
                before_seq: 0,
                after_seq: 0,
                limit: 21,
                around_seq: 42,
                since_ms: 0,
                until_ms: 0,
                sender: None,
            },
        ),
        (
            "history_by_time_and_sender",
            ClientMessage::History {
                request_id: 5,
                conversation: GROUP,
                before_seq: 0,
                after_seq: 0,
                limit: 50,
                around_seq: 0,
                since_ms: 1_700_000_000_000,
                until_ms: 1_700_086_400_000,
                sender: Some(BOB),
            },
        ),
        (
            "create_conversation",
            ClientMessage::CreateConversation {
                request_id: 3,
                kind: ConversationKind::Group,
                name: "Zoë's team 🚀".into(),
                description: "Planning".into(),
                members: vec![BOB, CAROL],
            },
        ),
        (
            "create_conversation_direct",
            ClientMessage::CreateConversation {
                request_id: 4,
                kind: ConversationKind::Direct,
                name: String::new(),
                description: String::new(),
                members: vec![BOB],
            },
        ),
        (
            "invite",
            ClientMessage::Invite {
                request_id: 5,
                conversation: GROUP,
                user: CAROL,
            },
        ),
        (
            "accept_invite",
            ClientMessage::AcceptInvite {
                request_id: 6,
                conversation: GROUP,
            },
        ),
        (
            "decline_invite",
            ClientMessage::DeclineInvite {
                request_id: 7,
                conversation: GROUP,
            },
        ),
        (
            "add_member",
            ClientMessage::AddMember {
                request_id: 8,
                conversation: GROUP,
                user: CAROL,
            },
        ),
        (
            "remove_member",
            ClientMessage::RemoveMember {
                request_id: 9,
                conversation: GROUP,
                user: CAROL,
            },
        ),
        (
            "leave",
            ClientMessage::Leave {
                request_id: 10,
                conversation: GROUP,
            },
        ),
        (
            "set_presence",
            ClientMessage::SetPresence {
                status: PresenceStatus::Away,
            },
        ),
        (
            "set_presence_offline",
            ClientMessage::SetPresence {
                status: PresenceStatus::Offline,
            },
        ),
        (
            "typing",
            ClientMessage::Typing {
                conversation: GROUP,
                active: true,
            },
        ),
        (
            "react",
            ClientMessage::React {
                request_id: 11,
                conversation: GROUP,
                seq: 42,
                emoji: "👍".into(),
                add: true,
            },
        ),
        (
            "publish_keys",
            ClientMessage::PublishKeys {
                request_id: 12,
                keys: alice_keys(),
            },
        ),
        (
            "claim_keys",
            ClientMessage::ClaimKeys {
                request_id: 13,
                user: BOB,
                devices: vec![],
            },
        ),
        (
            "claim_keys_devices",
            ClientMessage::ClaimKeys {
                request_id: 14,
                user: BOB,
                devices: vec![BOB_LAPTOP],
            },
        ),
        (
            "get_delivered",
            ClientMessage::GetDelivered {
                request_id: 25,
                conversation: GROUP,
            },
        ),
        (
            "claim_keys_batch",
            ClientMessage::ClaimKeysBatch {
                request_id: 15,
                targets: vec![
                    ClaimTarget {
                        user: BOB,
                        devices: vec![BOB_LAPTOP],
                    },
                    ClaimTarget {
                        user: ALICE,
                        devices: vec![ALICE_PHONE],
                    },
                ],
            },
        ),
        (
            "key_share",
            ClientMessage::KeyShare {
                to_user: BOB,
                to_device: BOB_LAPTOP,
                payload: vec![0xee; 48],
            },
        ),
        (
            "ping",
            ClientMessage::Ping {
                nonce: 9_007_199_254_740_991,
            },
        ),
        (
            "block",
            ClientMessage::Block {
                request_id: 20,
                user: CAROL,
                blocked: true,
            },
        ),
        (
            "unblock",
            ClientMessage::Block {
                request_id: 21,
                user: CAROL,
                blocked: false,
            },
        ),
        (
            "query_keys",
            ClientMessage::QueryKeys {
                request_id: 22,
                users: vec![BOB, CAROL],
            },
        ),
        (
            "send_key_shares",
            ClientMessage::SendKeyShares {
                request_id: 23,
                shares: vec![
                    KeyShareItem {
                        to_user: BOB,
                        to_device: BOB_LAPTOP,
                        payload: vec![0xee; 48],
                    },
                    KeyShareItem {
                        to_user: ALICE,
                        to_device: ALICE_PHONE,
                        payload: vec![0xef; 16],
                    },
                ],
            },
        ),
        (
            "ack_key_shares",
            ClientMessage::AckKeyShares {
                up_to: 17,
                ids: vec![],
            },
        ),
        (
            "ack_key_shares_ids",
            ClientMessage::AckKeyShares {
                up_to: 17,
                ids: vec![12, 17],
            },
        ),
    ]
}

/// Named server messages; every variant and every notice at least once.
pub fn server_messages() -> Vec<(&'static str, ServerMessage)> {
    vec![
        (
            "welcome",
            ServerMessage::Welcome {
                version: PROTOCOL_VERSION,
                user: ALICE,
                device: ALICE_PHONE,
                server_time_ms: T0_MS,
                max_frame_bytes: 65_536,
                one_time_keys_left: 37,
            },
        ),
        (
            "send_ack",
            ServerMessage::SendAck {
                request_id: 1,
                conversation: GROUP,
                client_msg_id: CLIENT_MSG_ID,
                seq: 42,
                message_id: MESSAGE_1,
                timestamp_ms: T0_MS,
                duplicate: false,
            },
        ),
        (
            "send_ack_duplicate",
            ServerMessage::SendAck {
                request_id: 1,
                conversation: GROUP,
                client_msg_id: CLIENT_MSG_ID,
                seq: 42,
                message_id: MESSAGE_1,
                timestamp_ms: T0_MS,
                duplicate: true,
            },
        ),
        (
            "deliver",
            ServerMessage::Deliver {
                message: message_1(),
            },
        ),
        ("sync_complete", ServerMessage::SyncComplete),
        (
            "history_page",
            ServerMessage::HistoryPage {
                request_id: 2,
                conversation: GROUP,
                messages: vec![message_1(), message_2()],
                reactions: vec![
                    ReactionCount {
                        seq: 42,
                        emoji: "👍".into(),
                        count: 2,
                        users: vec![BOB, CAROL],
                    },
                    ReactionCount {
                        seq: 43,
                        emoji: "🎉".into(),
                        count: 1,
                        users: vec![ALICE],
                    },
                ],
                has_more: true,
                has_more_before: false,
                has_more_after: false,
            },
        ),
        (
            "history_page_around",
            ServerMessage::HistoryPage {
                request_id: 4,
                conversation: GROUP,
                messages: vec![message_1(), message_2()],
                reactions: vec![],
                has_more: true,
                has_more_before: true,
                has_more_after: false,
            },
        ),
        (
            "history_page_empty",
            ServerMessage::HistoryPage {
                request_id: 3,
                conversation: DIRECT,
                messages: vec![],
                reactions: vec![],
                has_more: false,
                has_more_before: false,
                has_more_after: false,
            },
        ),
        (
            "conversation",
            ServerMessage::Conversation {
                request_id: 3,
                info: ConversationInfo {
                    conversation: GROUP,
                    kind: ConversationKind::Group,
                    name: "Zoë's team 🚀".into(),
                    description: "Planning".into(),
                    members: vec![
                        Member {
                            user: ALICE,
                            username: "alice".into(),
                            role: MemberRole::Owner,
                        },
                        Member {
                            user: BOB,
                            username: "bob".into(),
                            role: MemberRole::Member,
                        },
                    ],
                    last_seq: 43,
                },
            },
        ),
        (
            "invitation",
            ServerMessage::Invitation {
                conversation: GROUP,
                inviter: ALICE,
                name: "Zoë's team 🚀".into(),
            },
        ),
        (
            "invite_declined",
            ServerMessage::InviteDeclined {
                conversation: GROUP,
                user: CAROL,
            },
        ),
        (
            "member_removed",
            ServerMessage::MemberRemoved {
                conversation: GROUP,
                user: CAROL,
            },
        ),
        (
            "presence",
            ServerMessage::Presence {
                user: BOB,
                status: PresenceStatus::Online,
                last_seen_ms: T0_MS,
            },
        ),
        (
            "typing",
            ServerMessage::Typing {
                conversation: GROUP,
                user: BOB,
                active: false,
            },
        ),
        (
            "reaction",
            ServerMessage::Reaction {
                conversation: GROUP,
                seq: 42,
                user: BOB,
                emoji: "👍".into(),
                add: false,
            },
        ),
        (
            "key_bundle",
            ServerMessage::KeyBundle {
                request_id: 13,
                devices: vec![
                    DeviceKeys {
                        one_time_keys: vec![vec![0x01; 32]],
                        fallback_key: vec![],
                        ..alice_keys()
                    },
                    DeviceKeys {
                        user: ALICE,
                        device: DeviceId(0xde71_ce00_0000_4000_8000_0000_0000_00a2),
                        identity_key: vec![0x2d; 32],
                        signed_prekey: vec![0x6e; 64],
                        one_time_keys: vec![],
                        signing_key: vec![0x6a; 32],
                        fallback_key: vec![0xfc; 100],
                        signature: vec![0x61; 64],
                    },
                ],
                unanswered: vec![],
            },
        ),
        (
            "key_bundle_unanswered",
            ServerMessage::KeyBundle {
                request_id: 15,
                devices: vec![DeviceKeys {
                    one_time_keys: vec![vec![0x01; 32]],
                    fallback_key: vec![],
                    ..alice_keys()
                }],
                unanswered: vec![BOB],
            },
        ),
        (
            "key_share",
            ServerMessage::KeyShare {
                from_user: ALICE,
                from_device: ALICE_PHONE,
                payload: vec![0xee; 48],
                inbox_id: 17,
            },
        ),
        ("ok", ServerMessage::Ok { request_id: 10 }),
        (
            "error",
            ServerMessage::Error {
                request_id: 5,
                code: ErrorCode::Forbidden,
                message: "not a member".into(),
                fatal: false,
                retry_after_ms: 0,
            },
        ),
        (
            "error_rate_limited",
            ServerMessage::rate_limited(6, "device send rate exceeded", 250),
        ),
        (
            "error_fatal",
            ServerMessage::error(
                0,
                ErrorCode::FrameTooLarge,
                "frame of 70000 bytes exceeds 65536",
                true,
            ),
        ),
        (
            "notice_backlog_truncated",
            ServerMessage::Notice {
                notice: Notice::BacklogTruncated {
                    conversation: GROUP,
                    from_seq: 1,
                    to_seq: 9_000,
                },
            },
        ),
        (
            "notice_slow_consumer",
            ServerMessage::Notice {
                notice: Notice::SlowConsumer,
            },
        ),
        (
            "notice_going_away",
            ServerMessage::Notice {
                notice: Notice::GoingAway {
                    retry_after_ms: 5_000,
                },
            },
        ),
        (
            "pong",
            ServerMessage::Pong {
                nonce: 9_007_199_254_740_991,
            },
        ),
        (
            "key_shares_stored",
            ServerMessage::KeySharesStored {
                request_id: 23,
                full: vec![BOB_LAPTOP],
            },
        ),
        (
            "device_list_changed",
            ServerMessage::DeviceListChanged { user: ALICE },
        ),
        (
            "one_time_keys_low",
            ServerMessage::OneTimeKeysLow { left: 24 },
        ),
        (
            "delivered",
            ServerMessage::Delivered {
                request_id: 0,
                conversation: GROUP,
                marks: vec![
                    DeliveryMark { user: BOB, seq: 42 },
                    DeliveryMark {
                        user: CAROL,
                        seq: 9_007_199_254_740_991,
                    },
                ],
            },
        ),
    ]
}
