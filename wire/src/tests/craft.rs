//! Hand-built invalid envelopes, below the level the codec's encoder allows (it cannot produce
//! most of these). Used by the invalid vectors and the limits tests.

use flatbuffers::{FlatBufferBuilder, UnionWIPOffset, WIPOffset};

use crate::generated as fb;
use crate::samples;

use super::Rng;

/// Which decoder an invalid input is meant for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Direction {
    Client,
    Server,
}

impl Direction {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Direction::Client => "client",
            Direction::Server => "server",
        }
    }
}

/// The expected outcome of decoding an invalid input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ErrorKind {
    FrameTooLarge,
    Malformed,
    WrongDirection,
}

impl ErrorKind {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            ErrorKind::FrameTooLarge => "frame_too_large",
            ErrorKind::Malformed => "malformed",
            ErrorKind::WrongDirection => "wrong_direction",
        }
    }

    pub(super) fn of(e: &crate::WireError) -> Self {
        match e {
            crate::WireError::FrameTooLarge { .. } => ErrorKind::FrameTooLarge,
            crate::WireError::Malformed(_) => ErrorKind::Malformed,
            crate::WireError::WrongDirection => ErrorKind::WrongDirection,
        }
    }
}

pub(super) struct Invalid {
    pub name: &'static str,
    /// The decoder the bytes are given to (`client` = `decode_client`, i.e. as the server).
    pub direction: Direction,
    pub bytes: Vec<u8>,
    pub error: ErrorKind,
    /// A smaller frame limit for this case (keeps the "too large" vectors small).
    pub max_frame_bytes: Option<usize>,
    pub reason: &'static str,
}

/// An envelope around whatever `build` makes, with full control over the union fields.
/// `body_type: None` leaves the type field absent; `force_type` writes it even when NONE.
pub(super) fn envelope(
    body_type: Option<fb::Body>,
    build: impl FnOnce(&mut FlatBufferBuilder<'static>) -> Option<WIPOffset<UnionWIPOffset>>,
) -> Vec<u8> {
    let mut fbb = FlatBufferBuilder::new();
    let body = build(&mut fbb);
    let start = fbb.start_table();
    if let Some(body) = body {
        fbb.push_slot_always(fb::Envelope::VT_BODY, body);
    }
    if let Some(ty) = body_type {
        fbb.push_slot_always(fb::Envelope::VT_BODY_TYPE, ty);
    }
    let env = fbb.end_table(start);
    fbb.finish(env, Some(fb::ENVELOPE_IDENTIFIER));
    fbb.finished_data().to_vec()
}

fn ping(fbb: &mut FlatBufferBuilder<'static>) -> Option<WIPOffset<UnionWIPOffset>> {
    Some(fb::ClientPing::create(fbb, &fb::ClientPingArgs { nonce: 1 }).as_union_value())
}

fn id(v: u128) -> fb::Id128 {
    fb::Id128::new((v >> 64) as u64, v as u64)
}

fn encoded_client(name: &str) -> Vec<u8> {
    let (_, m) = samples::client_messages()
        .into_iter()
        .find(|(n, _)| *n == name)
        .expect("sample exists");
    crate::encode_client(&m)
}

pub(super) fn invalid_inputs() -> Vec<Invalid> {
    let hello = encoded_client("hello");
    let send = encoded_client("send");
    let ping_bytes = crate::encode_client(&crate::ClientMessage::Ping { nonce: 1 });
    let pong_bytes = crate::encode_server(&crate::ServerMessage::Pong { nonce: 1 });
    let mut rng = Rng(0x7e57);

    let mut wrong_ident = ping_bytes.clone();
    wrong_ident[4..8].copy_from_slice(b"TERX");
    let mut garbage_with_ident = rng.bytes(64);
    garbage_with_ident[4..8].copy_from_slice(b"TERN");

    let invalid_utf8 = {
        let mut bytes = envelope(Some(fb::Body::ServerInvitation), |fbb| {
            let name = fbb.create_string("\u{1}\u{1}");
            let (c, u) = (id(samples::GROUP.0), id(samples::ALICE.0));
            let args = fb::ServerInvitationArgs {
                conversation: Some(&c),
                inviter: Some(&u),
                name: Some(name),
            };
            Some(fb::ServerInvitation::create(fbb, &args).as_union_value())
        });
        let at = bytes
            .windows(2)
            .position(|w| w == [1, 1])
            .expect("placeholder present");
        bytes[at..at + 2].copy_from_slice(&[0xff, 0xfe]);
        bytes
    };

    let v = |name, direction, bytes, error, reason| Invalid {
        name,
        direction,
        bytes,
        error,
        max_frame_bytes: None,
        reason,
    };
    use Direction::{Client, Server};
    use ErrorKind::{FrameTooLarge, Malformed, WrongDirection};
    vec![
        v("empty", Client, vec![], Malformed, "zero bytes"),
        v(
            "too_short",
            Client,
            ping_bytes[..6].to_vec(),
            Malformed,
            "shorter than root offset + identifier",
        ),
        v(
            "truncated_half",
            Client,
            hello[..hello.len() / 2].to_vec(),
            Malformed,
            "valid hello cut in half",
        ),
        v(
            "truncated_tail",
            Client,
            send[..send.len() - 4].to_vec(),
            Malformed,
            "valid send minus its last 4 bytes (more than alignment padding can account for)",
        ),
        v("garbage", Client, rng.bytes(64), Malformed, "random bytes"),
        v(
            "garbage_with_identifier",
            Server,
            garbage_with_ident,
            Malformed,
            "random bytes with a TERN identifier",
        ),
        v(
            "wrong_identifier",
            Client,
            wrong_ident,
            Malformed,
            "valid ping with identifier TERX",
        ),
        v(
            "root_offset_out_of_bounds",
            Client,
            vec![0xff, 0xff, 0, 0, b'T', b'E', b'R', b'N'],
            Malformed,
            "root offset points past the end",
        ),
        Invalid {
            max_frame_bytes: Some(hello.len() - 1),
            ..v(
                "too_large",
                Client,
                hello.clone(),
                FrameTooLarge,
                "valid hello, one byte over the limit",
            )
        },
        Invalid {
            max_frame_bytes: Some(64),
            ..v(
                "too_large_garbage",
                Server,
                vec![0xff; 65],
                FrameTooLarge,
                "size is checked before anything else",
            )
        },
        v(
            "body_none",
            Client,
            envelope(None, |_| None),
            Malformed,
            "envelope without a body",
        ),
        v(
            "body_none_explicit",
            Server,
            envelope(Some(fb::Body::NONE), ping),
            Malformed,
            "body_type NONE written explicitly, with a table",
        ),
        v(
            "body_value_without_type",
            Client,
            envelope(None, ping),
            Malformed,
            "body table but no body_type",
        ),
        v(
            "unknown_client_body_type",
            Client,
            envelope(Some(fb::Body(63)), ping),
            Malformed,
            "body_type 63 (client range, unassigned)",
        ),
        v(
            "unknown_server_body_type",
            Server,
            envelope(Some(fb::Body(200)), ping),
            Malformed,
            "body_type 200 (unassigned)",
        ),
        v(
            "server_message_to_server",
            Client,
            pong_bytes,
            WrongDirection,
            "a pong sent by a client",
        ),
        v(
            "client_message_to_client",
            Server,
            ping_bytes,
            WrongDirection,
            "a ping sent by a server",
        ),
        v(
            "missing_required_id",
            Client,
            envelope(Some(fb::Body::ClientAck), |fbb| {
                let start = fbb.start_table();
                fbb.push_slot::<u64>(fb::ClientAck::VT_SEQ, 5, 0);
                Some(fbb.end_table(start).as_union_value())
            }),
            Malformed,
            "ack without its required conversation id",
        ),
        v(
            "unknown_error_code",
            Server,
            envelope(Some(fb::Body::ServerError), |fbb| {
                let args = fb::ServerErrorArgs {
                    code: fb::ErrorCode(999),
                    ..Default::default()
                };
                Some(fb::ServerError::create(fbb, &args).as_union_value())
            }),
            Malformed,
            "error code 999",
        ),
        v(
            "unspecified_error_code",
            Server,
            envelope(Some(fb::Body::ServerError), |fbb| {
                let args = fb::ServerErrorArgs {
                    request_id: 1,
                    ..Default::default()
                };
                Some(fb::ServerError::create(fbb, &args).as_union_value())
            }),
            Malformed,
            "error without a code (0 = Unspecified)",
        ),
        v(
            "unspecified_conversation_kind",
            Client,
            envelope(Some(fb::Body::ClientCreateConversation), |fbb| {
                let args = fb::ClientCreateConversationArgs {
                    request_id: 1,
                    ..Default::default()
                };
                Some(fb::ClientCreateConversation::create(fbb, &args).as_union_value())
            }),
            Malformed,
            "create_conversation without a kind",
        ),
        v(
            "unknown_presence_status",
            Client,
            envelope(Some(fb::Body::ClientSetPresence), |fbb| {
                let args = fb::ClientSetPresenceArgs {
                    status: fb::PresenceStatus(7),
                };
                Some(fb::ClientSetPresence::create(fbb, &args).as_union_value())
            }),
            Malformed,
            "presence status 7",
        ),
        v(
            "invalid_utf8",
            Server,
            invalid_utf8,
            Malformed,
            "invitation name is not UTF-8",
        ),
        v(
            "notice_missing",
            Server,
            envelope(Some(fb::Body::ServerNotice), |fbb| {
                let start = fbb.start_table();
                Some(fbb.end_table(start).as_union_value())
            }),
            Malformed,
            "notice envelope without its required notice",
        ),
        v(
            "unknown_notice_type",
            Server,
            envelope(Some(fb::Body::ServerNotice), |fbb| {
                let slow = fb::SlowConsumer::create(fbb, &fb::SlowConsumerArgs {});
                let args = fb::ServerNoticeArgs {
                    notice_type: fb::Notice(9),
                    notice: Some(slow.as_union_value()),
                };
                Some(fb::ServerNotice::create(fbb, &args).as_union_value())
            }),
            Malformed,
            "notice type 9",
        ),
    ]
}
