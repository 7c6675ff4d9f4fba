use std::collections::BTreeSet;

use super::{Sample, all_samples};
use crate::generated as fb;
use crate::ids::{ConversationId, DeviceId, MessageId, UserId};
use crate::msg::{
    ClientMessage, ConversationInfo, ConversationKind, DeviceKeys, ErrorCode, FileRef, Member,
    MemberRole, Message, Notice, PresenceStatus, ReactionCount, ServerMessage,
};
use crate::{FlatBufferBuilder, Limits, WireError, decode_client, decode_server, samples};

fn body_type(bytes: &[u8]) -> fb::Body {
    fb::root_as_envelope(bytes)
        .expect("valid envelope")
        .body_type()
}

fn round_trip_client(m: &ClientMessage) {
    let bytes = crate::encode_client(m);
    assert_eq!(
        decode_client(&bytes, &Limits::default()).as_ref(),
        Ok(m),
        "{m:?}"
    );
    assert_eq!(
        decode_server(&bytes, &Limits::default()),
        Err(WireError::WrongDirection)
    );
}

fn round_trip_server(m: &ServerMessage) {
    let bytes = crate::encode_server(m);
    assert_eq!(
        decode_server(&bytes, &Limits::default()).as_ref(),
        Ok(m),
        "{m:?}"
    );
    assert_eq!(
        decode_client(&bytes, &Limits::default()),
        Err(WireError::WrongDirection)
    );
}

#[test]
fn every_sample_round_trips_and_is_rejected_the_other_way() {
    for (_, s) in all_samples() {
        match &s {
            Sample::Client(m) => round_trip_client(m),
            Sample::Server(m) => round_trip_server(m),
        }
    }
}

#[test]
fn encoding_is_deterministic_and_builder_reuse_matches() {
    let mut fbb = FlatBufferBuilder::with_capacity(16);
    for (name, s) in all_samples() {
        let fresh = s.encode();
        assert_eq!(fresh, s.encode(), "{name}");
        let reused = match &s {
            Sample::Client(m) => crate::encode_client_into(&mut fbb, m).to_vec(),
            Sample::Server(m) => crate::encode_server_into(&mut fbb, m).to_vec(),
        };
        assert_eq!(
            fresh, reused,
            "{name}: a reused builder must produce the same bytes"
        );
        assert_eq!(&fresh[4..8], b"TERN", "{name}");
    }
}

/// The guard against a message variant without a sample (and so without a test vector): the
/// encoder's exhaustive match forces every variant onto a schema union member, and this checks
/// the samples produce every union member.
#[test]
fn samples_cover_every_union_member() {
    let mut bodies = BTreeSet::new();
    let mut notices = BTreeSet::new();
    for (_, s) in all_samples() {
        let bytes = s.encode();
        let env = fb::root_as_envelope(&bytes).expect("valid");
        bodies.insert(env.body_type().0);
        if let Some(n) = env.body_as_server_notice() {
            notices.insert(n.notice_type().0);
        }
    }
    let all_bodies: BTreeSet<u8> = fb::Body::ENUM_VALUES
        .iter()
        .map(|b| b.0)
        .filter(|b| *b != 0)
        .collect();
    let all_notices: BTreeSet<u8> = fb::Notice::ENUM_VALUES
        .iter()
        .map(|n| n.0)
        .filter(|n| *n != 0)
        .collect();
    let missing: Vec<_> = all_bodies
        .difference(&bodies)
        .filter_map(|b| fb::Body(*b).variant_name())
        .collect();
    assert!(
        missing.is_empty(),
        "no sample in samples.rs for {missing:?}"
    );
    assert_eq!(bodies, all_bodies);
    assert_eq!(
        notices, all_notices,
        "some notice has no sample in samples.rs"
    );
}

#[test]
fn directions_use_their_union_ranges() {
    for (name, s) in all_samples() {
        let ty = body_type(&s.encode()).0;
        match s {
            Sample::Client(_) => assert!((1..64).contains(&ty), "{name}: {ty}"),
            Sample::Server(_) => assert!((64..128).contains(&ty), "{name}: {ty}"),
        }
    }
}

#[test]
fn sample_names_are_unique() {
    let names: Vec<String> = all_samples().into_iter().map(|(n, _)| n).collect();
    let unique: BTreeSet<&String> = names.iter().collect();
    assert_eq!(unique.len(), names.len());
}

#[test]
fn enums_match_the_schema_by_name_and_number() {
    for code in ErrorCode::ALL {
        assert_eq!(
            fb::ErrorCode(code as u16).variant_name(),
            Some(format!("{code:?}").as_str())
        );
    }
    // Every schema error code except Unspecified exists in Rust.
    for c in fb::ErrorCode::ENUM_VALUES
        .iter()
        .filter(|c| **c != fb::ErrorCode::Unspecified)
    {
        assert!(ErrorCode::from_u16(c.0).is_some(), "{c:?}");
    }
    for k in [ConversationKind::Direct, ConversationKind::Group] {
        assert_eq!(
            fb::ConversationKind(k as u8).variant_name(),
            Some(format!("{k:?}").as_str())
        );
    }
    for r in [MemberRole::Member, MemberRole::Owner] {
        assert_eq!(
            fb::MemberRole(r as u8).variant_name(),
            Some(format!("{r:?}").as_str())
        );
    }
    for s in [
        PresenceStatus::Offline,
        PresenceStatus::Online,
        PresenceStatus::Away,
    ] {
        assert_eq!(
            fb::PresenceStatus(s as u8).variant_name(),
            Some(format!("{s:?}").as_str())
        );
    }
    assert_eq!(fb::ConversationKind::ENUM_VALUES.len(), 3);
    assert_eq!(fb::MemberRole::ENUM_VALUES.len(), 3);
    assert_eq!(fb::PresenceStatus::ENUM_VALUES.len(), 3);
}

#[test]
fn every_error_code_round_trips() {
    for code in ErrorCode::ALL {
        round_trip_server(&ServerMessage::error(
            1,
            code,
            code.as_str(),
            code == ErrorCode::ServerShutdown,
        ));
    }
}

#[test]
fn id_halves_follow_the_uuid_layout() {
    let m = ClientMessage::Ack {
        conversation: ConversationId(0x0011_2233_4455_6677_8899_aabb_ccdd_eeff),
        seq: 1,
    };
    let bytes = crate::encode_client(&m);
    let env = fb::root_as_envelope(&bytes).expect("valid");
    let ack = env.body_as_client_ack().expect("ack");
    assert_eq!(ack.conversation().hi(), 0x0011_2233_4455_6677);
    assert_eq!(ack.conversation().lo(), 0x8899_aabb_ccdd_eeff);
}

#[test]
fn extreme_scalars_round_trip() {
    round_trip_client(&ClientMessage::Send {
        request_id: u64::MAX,
        conversation: ConversationId(u128::MAX),
        client_msg_id: u128::MAX,
        content_type: "x".into(),
        payload: vec![0],
        files: vec![FileRef {
            file_id: MessageId(u128::MAX),
            size: u64::MAX,
            content_type: String::new(),
        }],
    });
    round_trip_client(&ClientMessage::Hello {
        min_version: u16::MAX,
        max_version: 0,
        token: "\0embedded nul\0".into(),
        device: DeviceId(1),
        client_name: String::new(),
        cursors: vec![],
    });
    round_trip_server(&ServerMessage::Welcome {
        version: u16::MAX,
        user: UserId(0),
        device: DeviceId(u128::MAX),
        server_time_ms: u64::MAX,
        max_frame_bytes: u32::MAX,
        one_time_keys_left: u32::MAX,
    });
    round_trip_server(&ServerMessage::Reaction {
        conversation: ConversationId(1 << 64),
        seq: u64::MAX,
        user: UserId((1 << 64) - 1),
        emoji: String::new(),
        add: true,
    });
    round_trip_server(&ServerMessage::Notice {
        notice: Notice::GoingAway {
            retry_after_ms: u32::MAX,
        },
    });
}

#[test]
fn empty_collections_and_strings_round_trip() {
    round_trip_client(&ClientMessage::Resume { cursors: vec![] });
    round_trip_client(&ClientMessage::CreateConversation {
        request_id: 0,
        kind: ConversationKind::Direct,
        name: String::new(),
        description: String::new(),
        members: vec![],
    });
    round_trip_client(&ClientMessage::PublishKeys {
        request_id: 0,
        keys: DeviceKeys {
            one_time_keys: vec![vec![], vec![], vec![1]],
            ..DeviceKeys::empty(UserId(1), DeviceId(2))
        },
    });
    round_trip_client(&ClientMessage::SendKeyShares {
        request_id: 0,
        shares: vec![],
    });
    round_trip_client(&ClientMessage::QueryKeys {
        request_id: 0,
        users: vec![],
    });
    round_trip_server(&ServerMessage::KeySharesStored {
        request_id: 0,
        full: vec![],
    });
    round_trip_client(&ClientMessage::KeyShare {
        to_user: UserId(1),
        to_device: DeviceId(2),
        payload: vec![],
    });
    round_trip_server(&ServerMessage::KeyBundle {
        request_id: 0,
        devices: vec![],
        unanswered: vec![],
    });
    round_trip_server(&ServerMessage::Conversation {
        request_id: 0,
        info: ConversationInfo {
            conversation: ConversationId(3),
            kind: ConversationKind::Group,
            name: String::new(),
            description: String::new(),
            members: vec![Member {
                user: UserId(4),
                username: String::new(),
                role: MemberRole::Member,
            }],
            last_seq: 0,
        },
    });
    round_trip_server(&ServerMessage::HistoryPage {
        request_id: 0,
        conversation: ConversationId(0),
        messages: vec![Message {
            conversation: ConversationId(0),
            seq: 0,
            message_id: MessageId(0),
            sender_user: UserId(0),
            sender_device: DeviceId(0),
            client_msg_id: 0,
            timestamp_ms: 0,
            content_type: String::new(),
            payload: vec![],
            files: vec![],
        }],
        reactions: vec![ReactionCount {
            seq: 0,
            emoji: String::new(),
            count: 0,
            users: vec![],
        }],
        has_more: false,
        has_more_before: false,
        has_more_after: false,
    });
    round_trip_server(&ServerMessage::Error {
        request_id: 0,
        code: ErrorCode::Internal,
        message: String::new(),
        fatal: false,
        retry_after_ms: 0,
    });
}

/// The largest `Send` payload that fits the limit decodes; one more byte is `FrameTooLarge`.
#[test]
fn max_size_payload_and_strings() {
    let limits = Limits::default();
    let send = |n: usize| ClientMessage::Send {
        request_id: 1,
        conversation: samples::GROUP,
        client_msg_id: 1,
        content_type: "text".into(),
        payload: vec![0x5a; n],
        files: vec![],
    };
    let mut n = limits.max_frame_bytes - 200;
    while crate::encode_client(&send(n + 1)).len() <= limits.max_frame_bytes {
        n += 1;
    }
    let fits = crate::encode_client(&send(n));
    assert!(fits.len() <= limits.max_frame_bytes && fits.len() > limits.max_frame_bytes - 8);
    assert_eq!(decode_client(&fits, &limits), Ok(send(n)));
    let over = crate::encode_client(&send(n + 1));
    assert_eq!(
        decode_client(&over, &limits),
        Err(WireError::FrameTooLarge {
            size: over.len(),
            max: limits.max_frame_bytes
        })
    );

    // A maximal non-ASCII string survives intact (UTF-8 verified, not truncated).
    let name: String = "Zoë🚀".repeat(7_000);
    assert!(name.len() > 50_000);
    round_trip_server(&ServerMessage::Invitation {
        conversation: samples::GROUP,
        inviter: samples::ALICE,
        name,
    });
    // A string longer than the limit is refused by size, before verification.
    let long = ServerMessage::Error {
        request_id: 1,
        code: ErrorCode::Internal,
        message: "x".repeat(limits.max_frame_bytes),
        fatal: true,
        retry_after_ms: 0,
    };
    assert!(matches!(
        decode_server(&crate::encode_server(&long), &limits),
        Err(WireError::FrameTooLarge { .. })
    ));
}

#[test]
fn serde_json_round_trip_and_shapes() {
    for (name, s) in all_samples() {
        match s {
            Sample::Client(m) => {
                let json = serde_json::to_string(&m).expect("serialize");
                assert_eq!(
                    serde_json::from_str::<ClientMessage>(&json).expect(&json),
                    m,
                    "{name}"
                );
            }
            Sample::Server(m) => {
                let json = serde_json::to_string(&m).expect("serialize");
                assert_eq!(
                    serde_json::from_str::<ServerMessage>(&json).expect(&json),
                    m,
                    "{name}"
                );
            }
        }
    }
    let send = serde_json::to_value(ClientMessage::Send {
        request_id: 1,
        conversation: ConversationId(0x0011_2233_4455_6677_8899_aabb_ccdd_eeff),
        client_msg_id: 0xff,
        content_type: "text".into(),
        payload: vec![0xde, 0xad],
        files: vec![],
    })
    .expect("serialize");
    assert_eq!(
        send,
        serde_json::json!({
            "type": "send",
            "request_id": 1,
            "conversation": "00112233-4455-6677-8899-aabbccddeeff",
            "client_msg_id": "000000000000000000000000000000ff",
            "content_type": "text",
            "payload": "dead",
            "files": [],
        })
    );
    for code in ErrorCode::ALL {
        assert_eq!(
            serde_json::to_value(code).expect("serialize"),
            serde_json::json!(code.as_str())
        );
    }
    let unit = serde_json::to_value(ServerMessage::Notice {
        notice: Notice::SlowConsumer,
    })
    .expect("serialize");
    assert_eq!(
        unit,
        serde_json::json!({"type": "notice", "notice": {"type": "slow_consumer"}})
    );
    // Strict on the hex forms.
    let bad_id = r#"{"type":"send","request_id":1,"conversation":"00112233-4455-6677-8899-aabbccddeeff","client_msg_id":"ff","content_type":"","payload":"","files":[]}"#;
    assert!(serde_json::from_str::<ClientMessage>(bad_id).is_err());
    let bad_hex = bad_id
        .replace(r#""ff""#, r#""000000000000000000000000000000ff""#)
        .replace(r#""payload":"""#, r#""payload":"xyz""#);
    assert!(serde_json::from_str::<ClientMessage>(&bad_hex).is_err());
}

#[test]
fn variant_names_match_the_json_tag() {
    for (name, s) in all_samples() {
        let (tag, variant) = match &s {
            Sample::Client(m) => (
                serde_json::to_value(m).expect("ser")["type"].clone(),
                m.variant_name(),
            ),
            Sample::Server(m) => (
                serde_json::to_value(m).expect("ser")["type"].clone(),
                m.variant_name(),
            ),
        };
        assert_eq!(tag, serde_json::json!(variant), "{name}");
        if let Sample::Server(ServerMessage::Notice { notice }) = &s {
            let v = serde_json::to_value(notice).expect("ser");
            assert_eq!(v["type"], serde_json::json!(notice.variant_name()));
        }
    }
}

/// The decoder bounds key material: blobs, payloads and counts one past the limit are malformed,
/// at the limit they decode.
#[test]
fn key_material_bounds_are_checked_in_decode() {
    use crate::limits::{
        MAX_CLAIM_DEVICES, MAX_KEY_BLOB_BYTES, MAX_KEY_SHARE_PAYLOAD_BYTES,
        MAX_KEY_SHARES_PER_REQUEST, MAX_ONE_TIME_KEYS_PER_PUBLISH, MAX_QUERY_KEYS_USERS,
    };
    use crate::msg::KeyShareItem;
    // Frames here exceed 64 KiB when counts are at their maximum; decode with a big frame limit
    // so only the key bounds decide.
    let big = Limits::for_frame_size(1 << 24);
    let decode = |m: &ClientMessage| decode_client(&crate::encode_client(m), &big);
    let publish = |keys: DeviceKeys| ClientMessage::PublishKeys {
        request_id: 1,
        keys,
    };
    let base = DeviceKeys::empty(UserId(1), DeviceId(2));
    for n in [MAX_KEY_BLOB_BYTES, MAX_KEY_BLOB_BYTES + 1] {
        let ok = n <= MAX_KEY_BLOB_BYTES;
        let cases = [
            DeviceKeys {
                identity_key: vec![1; n],
                ..base.clone()
            },
            DeviceKeys {
                signing_key: vec![1; n],
                ..base.clone()
            },
            DeviceKeys {
                fallback_key: vec![1; n],
                ..base.clone()
            },
            DeviceKeys {
                signature: vec![1; n],
                ..base.clone()
            },
            DeviceKeys {
                one_time_keys: vec![vec![1; n]],
                ..base.clone()
            },
        ];
        for keys in cases {
            assert_eq!(decode(&publish(keys)).is_ok(), ok, "blob of {n} bytes");
        }
    }
    for n in [
        MAX_ONE_TIME_KEYS_PER_PUBLISH,
        MAX_ONE_TIME_KEYS_PER_PUBLISH + 1,
    ] {
        let keys = DeviceKeys {
            one_time_keys: vec![vec![1; 32]; n],
            ..base.clone()
        };
        assert_eq!(
            decode(&publish(keys)).is_ok(),
            n <= MAX_ONE_TIME_KEYS_PER_PUBLISH
        );
    }
    let share = |len: usize| KeyShareItem {
        to_user: UserId(1),
        to_device: DeviceId(2),
        payload: vec![7; len],
    };
    for n in [MAX_KEY_SHARE_PAYLOAD_BYTES, MAX_KEY_SHARE_PAYLOAD_BYTES + 1] {
        let ok = n <= MAX_KEY_SHARE_PAYLOAD_BYTES;
        let batch = ClientMessage::SendKeyShares {
            request_id: 1,
            shares: vec![share(n)],
        };
        assert_eq!(decode(&batch).is_ok(), ok, "payload of {n} bytes");
        let single = ClientMessage::KeyShare {
            to_user: UserId(1),
            to_device: DeviceId(2),
            payload: vec![7; n],
        };
        assert_eq!(decode(&single).is_ok(), ok, "single payload of {n} bytes");
    }
    for n in [MAX_KEY_SHARES_PER_REQUEST, MAX_KEY_SHARES_PER_REQUEST + 1] {
        let batch = ClientMessage::SendKeyShares {
            request_id: 1,
            shares: vec![share(1); n],
        };
        assert_eq!(
            decode(&batch).is_ok(),
            n <= MAX_KEY_SHARES_PER_REQUEST,
            "{n} shares"
        );
    }
    for n in [MAX_QUERY_KEYS_USERS, MAX_QUERY_KEYS_USERS + 1] {
        let q = ClientMessage::QueryKeys {
            request_id: 1,
            users: vec![UserId(3); n],
        };
        assert_eq!(decode(&q).is_ok(), n <= MAX_QUERY_KEYS_USERS, "{n} users");
    }
    for n in [MAX_CLAIM_DEVICES, MAX_CLAIM_DEVICES + 1] {
        let c = ClientMessage::ClaimKeys {
            request_id: 1,
            user: UserId(3),
            devices: vec![DeviceId(4); n],
        };
        assert_eq!(decode(&c).is_ok(), n <= MAX_CLAIM_DEVICES, "{n} devices");
    }
}
