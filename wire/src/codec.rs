//! Owned messages ([`crate::msg`]) to and from FlatBuffers envelopes.
//!
//! Decoding is the security boundary of the protocol, so it runs in a fixed order and never
//! trusts anything it has not checked:
//!
//! 1. **size**: longer than [`Limits::max_frame_bytes`] → [`WireError::FrameTooLarge`], before any
//!    byte is read;
//! 2. **identity and structure**: the file identifier must be `TERN`, then the FlatBuffers
//!    verifier runs with [`Limits::verifier_options`] (bounds, alignment, UTF-8, required fields,
//!    depth, table count, apparent size) → [`WireError::Malformed`];
//! 3. **direction**: a server message given to [`decode_client`] (or the reverse) →
//!    [`WireError::WrongDirection`];
//! 4. **meaning**: conversion to owned types rejects what the verifier lets through: an empty
//!    (`NONE`) or unknown body, unknown or `Unspecified` enum values → [`WireError::Malformed`].
//!
//! Nothing here panics on any input: generated accessors are only called on verified buffers
//! (the FlatBuffers contract under which they cannot fail), and everything else is matched, not
//! unwrapped. The fuzz tests (`src/tests/fuzz.rs`) hammer that claim.
//!
//! Encoding is canonical: the same message always yields the same bytes (the shared test vectors
//! rely on it). Empty strings and vectors are omitted (readers treat absent as empty), which
//! keeps small frames such as typing and presence small. Encoding does not enforce the peer's
//! frame limit: a sender must check the length (e.g. a `Send` whose payload fills a frame turns
//! into a `Deliver` that is larger by the extra ids and fields, so the engine should size-check
//! the `Deliver` it would fan out before accepting the `Send`).
//!
//! The encoders panic only if a message exceeds the 2 GiB FlatBuffers buffer limit.

use flatbuffers::{FlatBufferBuilder, ForwardsUOffset, Vector, WIPOffset};

use crate::error::WireError;
use crate::generated as fb;
use crate::ids::{ConversationId, DeviceId, MessageId, UserId};
use crate::limits::{
    Limits, MAX_ACK_INBOX_IDS, MAX_CLAIM_BATCH_DEVICES, MAX_CLAIM_BATCH_TARGETS, MAX_CLAIM_DEVICES,
    MAX_DELIVERY_MARKS, MAX_KEY_BLOB_BYTES, MAX_KEY_SHARE_PAYLOAD_BYTES,
    MAX_KEY_SHARES_PER_REQUEST, MAX_ONE_TIME_KEYS_PER_PUBLISH, MAX_QUERY_KEYS_USERS,
};
use crate::msg::{
    ClaimTarget, ClientMessage, ConversationInfo, ConversationKind, Cursor, DeliveryMark,
    DeviceKeys, ErrorCode, FileRef, KeyShareItem, Member, MemberRole, Message, Notice,
    PresenceStatus, ReactionCount, ServerMessage,
};

/// A builder's first allocation: enough for every small control message without regrowth.
const INITIAL_CAPACITY: usize = 256;

// ---------------------------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------------------------

/// Encodes a client message as one envelope (with the `TERN` file identifier).
pub fn encode_client(msg: &ClientMessage) -> Vec<u8> {
    let mut fbb = FlatBufferBuilder::with_capacity(INITIAL_CAPACITY);
    encode_client_into(&mut fbb, msg).to_vec()
}

/// Encodes a server message as one envelope (with the `TERN` file identifier).
pub fn encode_server(msg: &ServerMessage) -> Vec<u8> {
    let mut fbb = FlatBufferBuilder::with_capacity(INITIAL_CAPACITY);
    encode_server_into(&mut fbb, msg).to_vec()
}

/// Like [`encode_client`], but reuses `fbb` (which is reset first) and borrows the result from
/// it, avoiding an allocation per message on hot paths.
pub fn encode_client_into<'b>(fbb: &'b mut FlatBufferBuilder<'_>, msg: &ClientMessage) -> &'b [u8] {
    fbb.reset();
    let (ty, body) = build_client(fbb, msg);
    finish(fbb, ty, body)
}

/// Like [`encode_server`], but reuses `fbb` (which is reset first) and borrows the result from
/// it. Meant for fan-out: one builder per shard, one encode per delivered message.
pub fn encode_server_into<'b>(fbb: &'b mut FlatBufferBuilder<'_>, msg: &ServerMessage) -> &'b [u8] {
    fbb.reset();
    let (ty, body) = build_server(fbb, msg);
    finish(fbb, ty, body)
}

/// Decodes one envelope received by the server. See the module docs for the order of checks.
pub fn decode_client(bytes: &[u8], limits: &Limits) -> Result<ClientMessage, WireError> {
    let env = verify(bytes, limits)?;
    read_client(&env)
}

/// Decodes one envelope received by a client. See the module docs for the order of checks.
pub fn decode_server(bytes: &[u8], limits: &Limits) -> Result<ServerMessage, WireError> {
    let env = verify(bytes, limits)?;
    read_server(&env)
}

// ---------------------------------------------------------------------------------------------
// Verification
// ---------------------------------------------------------------------------------------------

/// Size check, identifier check, then the FlatBuffers verifier with `limits`.
fn verify<'a>(bytes: &'a [u8], limits: &Limits) -> Result<fb::Envelope<'a>, WireError> {
    if bytes.len() > limits.max_frame_bytes {
        return Err(WireError::FrameTooLarge {
            size: bytes.len(),
            max: limits.max_frame_bytes,
        });
    }
    // Root offset (4 bytes) then the 4-byte identifier. Checked by hand because the generated
    // `envelope_buffer_has_identifier` asserts (panics) on short input.
    match bytes.get(4..8) {
        None => {
            return Err(WireError::malformed(format!(
                "{} bytes is too short for an envelope",
                bytes.len()
            )));
        }
        Some(ident) if ident != fb::ENVELOPE_IDENTIFIER.as_bytes() => {
            return Err(WireError::malformed(
                "wrong file identifier (expected \"TERN\")",
            ));
        }
        Some(_) => {}
    }
    let opts = limits.verifier_options();
    Ok(fb::root_as_envelope_with_opts(&opts, bytes)?)
}

/// Why a body the direction-specific reader did not handle was rejected.
fn unexpected_body(ty: fb::Body) -> WireError {
    if ty == fb::Body::NONE {
        WireError::malformed("envelope body is NONE")
    } else if ty.variant_name().is_none() {
        WireError::malformed(format!("unknown message type {}", ty.0))
    } else {
        // A known message the reader did not handle: it belongs to the other direction.
        WireError::WrongDirection
    }
}

/// The union accessor returns `None` only if the type does not match, which the caller has just
/// checked; still, never unwrap.
fn present<T>(body: Option<T>) -> Result<T, WireError> {
    body.ok_or_else(|| WireError::malformed("envelope body does not match its type"))
}

// ---------------------------------------------------------------------------------------------
// Encoding helpers
// ---------------------------------------------------------------------------------------------

type Fbb<'f> = FlatBufferBuilder<'f>;
type Union = WIPOffset<flatbuffers::UnionWIPOffset>;
type TableVec<'f, T> = Option<WIPOffset<Vector<'f, ForwardsUOffset<T>>>>;

fn finish<'b>(fbb: &'b mut Fbb<'_>, body_type: fb::Body, body: Union) -> &'b [u8] {
    let env = fb::Envelope::create(
        fbb,
        &fb::EnvelopeArgs {
            body_type,
            body: Some(body),
        },
    );
    fbb.finish(env, Some(fb::ENVELOPE_IDENTIFIER));
    fbb.finished_data()
}

fn id(v: u128) -> fb::Id128 {
    fb::Id128::new((v >> 64) as u64, v as u64)
}

fn uid(v: UserId) -> fb::Id128 {
    id(v.as_u128())
}
fn did(v: DeviceId) -> fb::Id128 {
    id(v.as_u128())
}
fn cid(v: ConversationId) -> fb::Id128 {
    id(v.as_u128())
}
fn mid(v: MessageId) -> fb::Id128 {
    id(v.as_u128())
}

fn string<'f>(fbb: &mut Fbb<'f>, s: &str) -> Option<WIPOffset<&'f str>> {
    (!s.is_empty()).then(|| fbb.create_string(s))
}

fn bytes<'f>(fbb: &mut Fbb<'f>, b: &[u8]) -> Option<WIPOffset<Vector<'f, u8>>> {
    (!b.is_empty()).then(|| fbb.create_vector(b))
}

fn device_id_vec<'f>(
    fbb: &mut Fbb<'f>,
    ids: &[DeviceId],
) -> Option<WIPOffset<Vector<'f, fb::Id128>>> {
    if ids.is_empty() {
        return None;
    }
    let ids: Vec<fb::Id128> = ids.iter().map(|d| did(*d)).collect();
    Some(fbb.create_vector(&ids))
}

fn key_share_item<'f>(fbb: &mut Fbb<'f>, k: &KeyShareItem) -> WIPOffset<fb::KeyShareItem<'f>> {
    let payload = bytes(fbb, &k.payload);
    let (to_user, to_device) = (uid(k.to_user), did(k.to_device));
    fb::KeyShareItem::create(
        fbb,
        &fb::KeyShareItemArgs {
            to_user: Some(&to_user),
            to_device: Some(&to_device),
            payload,
        },
    )
}

fn claim_target<'f>(fbb: &mut Fbb<'f>, t: &ClaimTarget) -> WIPOffset<fb::ClaimTarget<'f>> {
    let devices = device_id_vec(fbb, &t.devices);
    let user = uid(t.user);
    fb::ClaimTarget::create(
        fbb,
        &fb::ClaimTargetArgs {
            user: Some(&user),
            devices,
        },
    )
}

fn id_vec<'f>(fbb: &mut Fbb<'f>, ids: &[UserId]) -> Option<WIPOffset<Vector<'f, fb::Id128>>> {
    if ids.is_empty() {
        return None;
    }
    let ids: Vec<fb::Id128> = ids.iter().map(|u| uid(*u)).collect();
    Some(fbb.create_vector(&ids))
}

/// Builds each item as a table, then the vector of offsets to them (children must be finished
/// before their parent starts, so this cannot be done in one pass).
fn table_vec<'f, T, I>(
    fbb: &mut Fbb<'f>,
    items: &[I],
    mut build: impl FnMut(&mut Fbb<'f>, &I) -> WIPOffset<T>,
) -> TableVec<'f, T> {
    if items.is_empty() {
        return None;
    }
    let offsets: Vec<WIPOffset<T>> = items.iter().map(|i| build(fbb, i)).collect();
    Some(fbb.create_vector(&offsets))
}

fn cursor<'f>(fbb: &mut Fbb<'f>, c: &Cursor) -> WIPOffset<fb::Cursor<'f>> {
    let conversation = cid(c.conversation);
    fb::Cursor::create(
        fbb,
        &fb::CursorArgs {
            conversation: Some(&conversation),
            seq: c.seq,
        },
    )
}

fn delivery_mark<'f>(fbb: &mut Fbb<'f>, m: &DeliveryMark) -> WIPOffset<fb::DeliveryMark<'f>> {
    let user = uid(m.user);
    fb::DeliveryMark::create(
        fbb,
        &fb::DeliveryMarkArgs {
            user: Some(&user),
            seq: m.seq,
        },
    )
}

fn file_ref<'f>(fbb: &mut Fbb<'f>, f: &FileRef) -> WIPOffset<fb::FileRef<'f>> {
    let content_type = string(fbb, &f.content_type);
    let file_id = mid(f.file_id);
    fb::FileRef::create(
        fbb,
        &fb::FileRefArgs {
            file_id: Some(&file_id),
            size: f.size,
            content_type,
        },
    )
}

fn message<'f>(fbb: &mut Fbb<'f>, m: &Message) -> WIPOffset<fb::Message<'f>> {
    let content_type = string(fbb, &m.content_type);
    let payload = bytes(fbb, &m.payload);
    let files = table_vec(fbb, &m.files, file_ref);
    let (conversation, message_id) = (cid(m.conversation), mid(m.message_id));
    let (sender_user, sender_device, client_msg_id) = (
        uid(m.sender_user),
        did(m.sender_device),
        id(m.client_msg_id),
    );
    fb::Message::create(
        fbb,
        &fb::MessageArgs {
            conversation: Some(&conversation),
            seq: m.seq,
            message_id: Some(&message_id),
            sender_user: Some(&sender_user),
            sender_device: Some(&sender_device),
            client_msg_id: Some(&client_msg_id),
            timestamp_ms: m.timestamp_ms,
            content_type,
            payload,
            files,
        },
    )
}

fn member<'f>(fbb: &mut Fbb<'f>, m: &Member) -> WIPOffset<fb::Member<'f>> {
    let username = string(fbb, &m.username);
    let user = uid(m.user);
    fb::Member::create(
        fbb,
        &fb::MemberArgs {
            user: Some(&user),
            username,
            role: role_to_fb(m.role),
        },
    )
}

fn conversation_info<'f>(
    fbb: &mut Fbb<'f>,
    c: &ConversationInfo,
) -> WIPOffset<fb::ConversationInfo<'f>> {
    let name = string(fbb, &c.name);
    let description = string(fbb, &c.description);
    let members = table_vec(fbb, &c.members, member);
    let conversation = cid(c.conversation);
    fb::ConversationInfo::create(
        fbb,
        &fb::ConversationInfoArgs {
            conversation: Some(&conversation),
            kind: kind_to_fb(c.kind),
            name,
            description,
            members,
            last_seq: c.last_seq,
        },
    )
}

fn reaction_count<'f>(fbb: &mut Fbb<'f>, r: &ReactionCount) -> WIPOffset<fb::ReactionCount<'f>> {
    let emoji = string(fbb, &r.emoji);
    let users = id_vec(fbb, &r.users);
    fb::ReactionCount::create(
        fbb,
        &fb::ReactionCountArgs {
            seq: r.seq,
            emoji,
            count: r.count,
            users,
        },
    )
}

fn byte_string<'f>(fbb: &mut Fbb<'f>, b: &[u8]) -> WIPOffset<fb::Bytes<'f>> {
    let data = bytes(fbb, b);
    fb::Bytes::create(fbb, &fb::BytesArgs { data })
}

fn device_keys<'f>(fbb: &mut Fbb<'f>, k: &DeviceKeys) -> WIPOffset<fb::DeviceKeys<'f>> {
    let identity_key = bytes(fbb, &k.identity_key);
    let signed_prekey = bytes(fbb, &k.signed_prekey);
    let one_time_keys = table_vec(fbb, &k.one_time_keys, |fbb, b| byte_string(fbb, b));
    let signing_key = bytes(fbb, &k.signing_key);
    let fallback_key = bytes(fbb, &k.fallback_key);
    let signature = bytes(fbb, &k.signature);
    let (user, device) = (uid(k.user), did(k.device));
    fb::DeviceKeys::create(
        fbb,
        &fb::DeviceKeysArgs {
            user: Some(&user),
            device: Some(&device),
            identity_key,
            signed_prekey,
            one_time_keys,
            signing_key,
            fallback_key,
            signature,
        },
    )
}

fn error_code_to_fb(c: ErrorCode) -> fb::ErrorCode {
    fb::ErrorCode(c as u16)
}
fn kind_to_fb(k: ConversationKind) -> fb::ConversationKind {
    fb::ConversationKind(k as u8)
}
fn role_to_fb(r: MemberRole) -> fb::MemberRole {
    fb::MemberRole(r as u8)
}
fn status_to_fb(s: PresenceStatus) -> fb::PresenceStatus {
    fb::PresenceStatus(s as u8)
}

fn build_client(fbb: &mut Fbb<'_>, msg: &ClientMessage) -> (fb::Body, Union) {
    match msg {
        ClientMessage::Hello {
            min_version,
            max_version,
            token,
            device,
            client_name,
            cursors,
        } => {
            let token = string(fbb, token);
            let client_name = string(fbb, client_name);
            let cursors = table_vec(fbb, cursors, cursor);
            let device = did(*device);
            let args = fb::ClientHelloArgs {
                min_version: *min_version,
                max_version: *max_version,
                token,
                device: Some(&device),
                client_name,
                cursors,
            };
            (
                fb::Body::ClientHello,
                fb::ClientHello::create(fbb, &args).as_union_value(),
            )
        }
        ClientMessage::Send {
            request_id,
            conversation,
            client_msg_id,
            content_type,
            payload,
            files,
        } => {
            let content_type = string(fbb, content_type);
            let payload = bytes(fbb, payload);
            let files = table_vec(fbb, files, file_ref);
            let (conversation, client_msg_id) = (cid(*conversation), id(*client_msg_id));
            let args = fb::ClientSendArgs {
                request_id: *request_id,
                conversation: Some(&conversation),
                client_msg_id: Some(&client_msg_id),
                content_type,
                payload,
                files,
            };
            (
                fb::Body::ClientSend,
                fb::ClientSend::create(fbb, &args).as_union_value(),
            )
        }
        ClientMessage::Ack { conversation, seq } => {
            let conversation = cid(*conversation);
            let args = fb::ClientAckArgs {
                conversation: Some(&conversation),
                seq: *seq,
            };
            (
                fb::Body::ClientAck,
                fb::ClientAck::create(fbb, &args).as_union_value(),
            )
        }
        ClientMessage::Resume { cursors } => {
            let cursors = table_vec(fbb, cursors, cursor);
            let args = fb::ClientResumeArgs { cursors };
            (
                fb::Body::ClientResume,
                fb::ClientResume::create(fbb, &args).as_union_value(),
            )
        }
        ClientMessage::History {
            request_id,
            conversation,
            before_seq,
            after_seq,
            limit,
            around_seq,
            since_ms,
            until_ms,
            sender,
        } => {
            let conversation = cid(*conversation);
            let sender = sender.map(uid);
            let args = fb::ClientHistoryArgs {
                request_id: *request_id,
                conversation: Some(&conversation),
                before_seq: *before_seq,
                after_seq: *after_seq,
                limit: *limit,
                around_seq: *around_seq,
                since_ms: *since_ms,
                until_ms: *until_ms,
                sender: sender.as_ref(),
            };
            (
                fb::Body::ClientHistory,
                fb::ClientHistory::create(fbb, &args).as_union_value(),
            )
        }
        ClientMessage::CreateConversation {
            request_id,
            kind,
            name,
            description,
            members,
        } => {
            let name = string(fbb, name);
            let description = string(fbb, description);
            let members = id_vec(fbb, members);
            let args = fb::ClientCreateConversationArgs {
                request_id: *request_id,
                kind: kind_to_fb(*kind),
                name,
                description,
                members,
            };
            let body = fb::ClientCreateConversation::create(fbb, &args);
            (fb::Body::ClientCreateConversation, body.as_union_value())
        }
        ClientMessage::Invite {
            request_id,
            conversation,
            user,
        } => {
            let (conversation, user) = (cid(*conversation), uid(*user));
            let args = fb::ClientInviteArgs {
                request_id: *request_id,
                conversation: Some(&conversation),
                user: Some(&user),
            };
            (
                fb::Body::ClientInvite,
                fb::ClientInvite::create(fbb, &args).as_union_value(),
            )
        }
        ClientMessage::AcceptInvite {
            request_id,
            conversation,
        } => {
            let conversation = cid(*conversation);
            let args = fb::ClientAcceptInviteArgs {
                request_id: *request_id,
                conversation: Some(&conversation),
            };
            (
                fb::Body::ClientAcceptInvite,
                fb::ClientAcceptInvite::create(fbb, &args).as_union_value(),
            )
        }
        ClientMessage::DeclineInvite {
            request_id,
            conversation,
        } => {
            let conversation = cid(*conversation);
            let args = fb::ClientDeclineInviteArgs {
                request_id: *request_id,
                conversation: Some(&conversation),
            };
            (
                fb::Body::ClientDeclineInvite,
                fb::ClientDeclineInvite::create(fbb, &args).as_union_value(),
            )
        }
        ClientMessage::AddMember {
            request_id,
            conversation,
            user,
        } => {
            let (conversation, user) = (cid(*conversation), uid(*user));
            let args = fb::ClientAddMemberArgs {
                request_id: *request_id,
                conversation: Some(&conversation),
                user: Some(&user),
            };
            (
                fb::Body::ClientAddMember,
                fb::ClientAddMember::create(fbb, &args).as_union_value(),
            )
        }
        ClientMessage::RemoveMember {
            request_id,
            conversation,
            user,
        } => {
            let (conversation, user) = (cid(*conversation), uid(*user));
            let args = fb::ClientRemoveMemberArgs {
                request_id: *request_id,
                conversation: Some(&conversation),
                user: Some(&user),
            };
            (
                fb::Body::ClientRemoveMember,
                fb::ClientRemoveMember::create(fbb, &args).as_union_value(),
            )
        }
        ClientMessage::Leave {
            request_id,
            conversation,
        } => {
            let conversation = cid(*conversation);
            let args = fb::ClientLeaveArgs {
                request_id: *request_id,
                conversation: Some(&conversation),
            };
            (
                fb::Body::ClientLeave,
                fb::ClientLeave::create(fbb, &args).as_union_value(),
            )
        }
        ClientMessage::SetPresence { status } => {
            let args = fb::ClientSetPresenceArgs {
                status: status_to_fb(*status),
            };
            (
                fb::Body::ClientSetPresence,
                fb::ClientSetPresence::create(fbb, &args).as_union_value(),
            )
        }
        ClientMessage::Typing {
            conversation,
            active,
        } => {
            let conversation = cid(*conversation);
            let args = fb::ClientTypingArgs {
                conversation: Some(&conversation),
                active: *active,
            };
            (
                fb::Body::ClientTyping,
                fb::ClientTyping::create(fbb, &args).as_union_value(),
            )
        }
        ClientMessage::React {
            request_id,
            conversation,
            seq,
            emoji,
            add,
        } => {
            let emoji = string(fbb, emoji);
            let conversation = cid(*conversation);
            let args = fb::ClientReactArgs {
                request_id: *request_id,
                conversation: Some(&conversation),
                seq: *seq,
                emoji,
                add: *add,
            };
            (
                fb::Body::ClientReact,
                fb::ClientReact::create(fbb, &args).as_union_value(),
            )
        }
        ClientMessage::PublishKeys { request_id, keys } => {
            let keys = device_keys(fbb, keys);
            let args = fb::ClientPublishKeysArgs {
                request_id: *request_id,
                keys: Some(keys),
            };
            (
                fb::Body::ClientPublishKeys,
                fb::ClientPublishKeys::create(fbb, &args).as_union_value(),
            )
        }
        ClientMessage::ClaimKeys {
            request_id,
            user,
            devices,
        } => {
            let devices = device_id_vec(fbb, devices);
            let user = uid(*user);
            let args = fb::ClientClaimKeysArgs {
                request_id: *request_id,
                user: Some(&user),
                devices,
            };
            (
                fb::Body::ClientClaimKeys,
                fb::ClientClaimKeys::create(fbb, &args).as_union_value(),
            )
        }
        ClientMessage::KeyShare {
            to_user,
            to_device,
            payload,
        } => {
            let payload = bytes(fbb, payload);
            let (to_user, to_device) = (uid(*to_user), did(*to_device));
            let args = fb::ClientKeyShareArgs {
                to_user: Some(&to_user),
                to_device: Some(&to_device),
                payload,
            };
            (
                fb::Body::ClientKeyShare,
                fb::ClientKeyShare::create(fbb, &args).as_union_value(),
            )
        }
        ClientMessage::Ping { nonce } => {
            let args = fb::ClientPingArgs { nonce: *nonce };
            (
                fb::Body::ClientPing,
                fb::ClientPing::create(fbb, &args).as_union_value(),
            )
        }
        ClientMessage::Block {
            request_id,
            user,
            blocked,
        } => {
            let user = uid(*user);
            let args = fb::ClientBlockArgs {
                request_id: *request_id,
                user: Some(&user),
                blocked: *blocked,
            };
            (
                fb::Body::ClientBlock,
                fb::ClientBlock::create(fbb, &args).as_union_value(),
            )
        }
        ClientMessage::QueryKeys { request_id, users } => {
            let users = id_vec(fbb, users);
            let args = fb::ClientQueryKeysArgs {
                request_id: *request_id,
                users,
            };
            (
                fb::Body::ClientQueryKeys,
                fb::ClientQueryKeys::create(fbb, &args).as_union_value(),
            )
        }
        ClientMessage::SendKeyShares { request_id, shares } => {
            let shares = table_vec(fbb, shares, key_share_item);
            let args = fb::ClientSendKeySharesArgs {
                request_id: *request_id,
                shares,
            };
            (
                fb::Body::ClientSendKeyShares,
                fb::ClientSendKeyShares::create(fbb, &args).as_union_value(),
            )
        }
        ClientMessage::ClaimKeysBatch {
            request_id,
            targets,
        } => {
            let targets = table_vec(fbb, targets, claim_target);
            let args = fb::ClientClaimKeysBatchArgs {
                request_id: *request_id,
                targets,
            };
            (
                fb::Body::ClientClaimKeysBatch,
                fb::ClientClaimKeysBatch::create(fbb, &args).as_union_value(),
            )
        }
        ClientMessage::GetDelivered {
            request_id,
            conversation,
        } => {
            let conversation = cid(*conversation);
            let args = fb::ClientGetDeliveredArgs {
                request_id: *request_id,
                conversation: Some(&conversation),
            };
            (
                fb::Body::ClientGetDelivered,
                fb::ClientGetDelivered::create(fbb, &args).as_union_value(),
            )
        }
        ClientMessage::AckKeyShares { up_to, ids } => {
            let ids = (!ids.is_empty()).then(|| fbb.create_vector(ids));
            let args = fb::ClientAckKeySharesArgs { up_to: *up_to, ids };
            (
                fb::Body::ClientAckKeyShares,
                fb::ClientAckKeyShares::create(fbb, &args).as_union_value(),
            )
        }
    }
}

fn build_notice(fbb: &mut Fbb<'_>, notice: &Notice) -> (fb::Notice, Union) {
    match notice {
        Notice::BacklogTruncated {
            conversation,
            from_seq,
            to_seq,
        } => {
            let conversation = cid(*conversation);
            let args = fb::BacklogTruncatedArgs {
                conversation: Some(&conversation),
                from_seq: *from_seq,
                to_seq: *to_seq,
            };
            (
                fb::Notice::BacklogTruncated,
                fb::BacklogTruncated::create(fbb, &args).as_union_value(),
            )
        }
        Notice::SlowConsumer => {
            let body = fb::SlowConsumer::create(fbb, &fb::SlowConsumerArgs {});
            (fb::Notice::SlowConsumer, body.as_union_value())
        }
        Notice::GoingAway { retry_after_ms } => {
            let args = fb::GoingAwayArgs {
                retry_after_ms: *retry_after_ms,
            };
            (
                fb::Notice::GoingAway,
                fb::GoingAway::create(fbb, &args).as_union_value(),
            )
        }
    }
}

fn build_server(fbb: &mut Fbb<'_>, msg: &ServerMessage) -> (fb::Body, Union) {
    match msg {
        ServerMessage::Welcome {
            version,
            user,
            device,
            server_time_ms,
            max_frame_bytes,
            one_time_keys_left,
        } => {
            let (user, device) = (uid(*user), did(*device));
            let args = fb::ServerWelcomeArgs {
                version: *version,
                user: Some(&user),
                device: Some(&device),
                server_time_ms: *server_time_ms,
                max_frame_bytes: *max_frame_bytes,
                one_time_keys_left: *one_time_keys_left,
            };
            (
                fb::Body::ServerWelcome,
                fb::ServerWelcome::create(fbb, &args).as_union_value(),
            )
        }
        ServerMessage::SendAck {
            request_id,
            conversation,
            client_msg_id,
            seq,
            message_id,
            timestamp_ms,
            duplicate,
        } => {
            let (conversation, client_msg_id, message_id) =
                (cid(*conversation), id(*client_msg_id), mid(*message_id));
            let args = fb::ServerSendAckArgs {
                request_id: *request_id,
                conversation: Some(&conversation),
                client_msg_id: Some(&client_msg_id),
                seq: *seq,
                message_id: Some(&message_id),
                timestamp_ms: *timestamp_ms,
                duplicate: *duplicate,
            };
            (
                fb::Body::ServerSendAck,
                fb::ServerSendAck::create(fbb, &args).as_union_value(),
            )
        }
        ServerMessage::Deliver { message: m } => {
            let m = message(fbb, m);
            let args = fb::ServerDeliverArgs { message: Some(m) };
            (
                fb::Body::ServerDeliver,
                fb::ServerDeliver::create(fbb, &args).as_union_value(),
            )
        }
        ServerMessage::SyncComplete => {
            let body = fb::ServerSyncComplete::create(fbb, &fb::ServerSyncCompleteArgs {});
            (fb::Body::ServerSyncComplete, body.as_union_value())
        }
        ServerMessage::HistoryPage {
            request_id,
            conversation,
            messages,
            reactions,
            has_more,
            has_more_before,
            has_more_after,
        } => {
            let messages = table_vec(fbb, messages, message);
            let reactions = table_vec(fbb, reactions, reaction_count);
            let conversation = cid(*conversation);
            let args = fb::ServerHistoryPageArgs {
                request_id: *request_id,
                conversation: Some(&conversation),
                messages,
                reactions,
                has_more: *has_more,
                has_more_before: *has_more_before,
                has_more_after: *has_more_after,
            };
            (
                fb::Body::ServerHistoryPage,
                fb::ServerHistoryPage::create(fbb, &args).as_union_value(),
            )
        }
        ServerMessage::Conversation { request_id, info } => {
            let info = conversation_info(fbb, info);
            let args = fb::ServerConversationArgs {
                request_id: *request_id,
                info: Some(info),
            };
            (
                fb::Body::ServerConversation,
                fb::ServerConversation::create(fbb, &args).as_union_value(),
            )
        }
        ServerMessage::Invitation {
            conversation,
            inviter,
            name,
        } => {
            let name = string(fbb, name);
            let (conversation, inviter) = (cid(*conversation), uid(*inviter));
            let args = fb::ServerInvitationArgs {
                conversation: Some(&conversation),
                inviter: Some(&inviter),
                name,
            };
            (
                fb::Body::ServerInvitation,
                fb::ServerInvitation::create(fbb, &args).as_union_value(),
            )
        }
        ServerMessage::InviteDeclined { conversation, user } => {
            let (conversation, user) = (cid(*conversation), uid(*user));
            let args = fb::ServerInviteDeclinedArgs {
                conversation: Some(&conversation),
                user: Some(&user),
            };
            (
                fb::Body::ServerInviteDeclined,
                fb::ServerInviteDeclined::create(fbb, &args).as_union_value(),
            )
        }
        ServerMessage::MemberRemoved { conversation, user } => {
            let (conversation, user) = (cid(*conversation), uid(*user));
            let args = fb::ServerMemberRemovedArgs {
                conversation: Some(&conversation),
                user: Some(&user),
            };
            (
                fb::Body::ServerMemberRemoved,
                fb::ServerMemberRemoved::create(fbb, &args).as_union_value(),
            )
        }
        ServerMessage::Presence {
            user,
            status,
            last_seen_ms,
        } => {
            let user = uid(*user);
            let args = fb::ServerPresenceArgs {
                user: Some(&user),
                status: status_to_fb(*status),
                last_seen_ms: *last_seen_ms,
            };
            (
                fb::Body::ServerPresence,
                fb::ServerPresence::create(fbb, &args).as_union_value(),
            )
        }
        ServerMessage::Typing {
            conversation,
            user,
            active,
        } => {
            let (conversation, user) = (cid(*conversation), uid(*user));
            let args = fb::ServerTypingArgs {
                conversation: Some(&conversation),
                user: Some(&user),
                active: *active,
            };
            (
                fb::Body::ServerTyping,
                fb::ServerTyping::create(fbb, &args).as_union_value(),
            )
        }
        ServerMessage::Reaction {
            conversation,
            seq,
            user,
            emoji,
            add,
        } => {
            let emoji = string(fbb, emoji);
            let (conversation, user) = (cid(*conversation), uid(*user));
            let args = fb::ServerReactionArgs {
                conversation: Some(&conversation),
                seq: *seq,
                user: Some(&user),
                emoji,
                add: *add,
            };
            (
                fb::Body::ServerReaction,
                fb::ServerReaction::create(fbb, &args).as_union_value(),
            )
        }
        ServerMessage::KeyBundle {
            request_id,
            devices,
            unanswered,
        } => {
            let devices = table_vec(fbb, devices, device_keys);
            let unanswered = id_vec(fbb, unanswered);
            let args = fb::ServerKeyBundleArgs {
                request_id: *request_id,
                devices,
                unanswered,
            };
            (
                fb::Body::ServerKeyBundle,
                fb::ServerKeyBundle::create(fbb, &args).as_union_value(),
            )
        }
        ServerMessage::KeyShare {
            from_user,
            from_device,
            payload,
            inbox_id,
        } => {
            let payload = bytes(fbb, payload);
            let (from_user, from_device) = (uid(*from_user), did(*from_device));
            let args = fb::ServerKeyShareArgs {
                from_user: Some(&from_user),
                from_device: Some(&from_device),
                payload,
                inbox_id: *inbox_id,
            };
            (
                fb::Body::ServerKeyShare,
                fb::ServerKeyShare::create(fbb, &args).as_union_value(),
            )
        }
        ServerMessage::Ok { request_id } => {
            let args = fb::ServerOkArgs {
                request_id: *request_id,
            };
            (
                fb::Body::ServerOk,
                fb::ServerOk::create(fbb, &args).as_union_value(),
            )
        }
        ServerMessage::Error {
            request_id,
            code,
            message,
            fatal,
            retry_after_ms,
        } => {
            let message = string(fbb, message);
            let args = fb::ServerErrorArgs {
                request_id: *request_id,
                code: error_code_to_fb(*code),
                message,
                fatal: *fatal,
                retry_after_ms: *retry_after_ms,
            };
            (
                fb::Body::ServerError,
                fb::ServerError::create(fbb, &args).as_union_value(),
            )
        }
        ServerMessage::Notice { notice } => {
            let (notice_type, notice) = build_notice(fbb, notice);
            let args = fb::ServerNoticeArgs {
                notice_type,
                notice: Some(notice),
            };
            (
                fb::Body::ServerNotice,
                fb::ServerNotice::create(fbb, &args).as_union_value(),
            )
        }
        ServerMessage::Pong { nonce } => {
            let args = fb::ServerPongArgs { nonce: *nonce };
            (
                fb::Body::ServerPong,
                fb::ServerPong::create(fbb, &args).as_union_value(),
            )
        }
        ServerMessage::KeySharesStored { request_id, full } => {
            let full = device_id_vec(fbb, full);
            let args = fb::ServerKeySharesStoredArgs {
                request_id: *request_id,
                full,
            };
            (
                fb::Body::ServerKeySharesStored,
                fb::ServerKeySharesStored::create(fbb, &args).as_union_value(),
            )
        }
        ServerMessage::Delivered {
            request_id,
            conversation,
            marks,
        } => {
            let marks = table_vec(fbb, marks, delivery_mark);
            let conversation = cid(*conversation);
            let args = fb::ServerDeliveredArgs {
                request_id: *request_id,
                conversation: Some(&conversation),
                marks,
            };
            (
                fb::Body::ServerDelivered,
                fb::ServerDelivered::create(fbb, &args).as_union_value(),
            )
        }
        ServerMessage::OneTimeKeysLow { left } => {
            let args = fb::ServerOneTimeKeysLowArgs { left: *left };
            (
                fb::Body::ServerOneTimeKeysLow,
                fb::ServerOneTimeKeysLow::create(fbb, &args).as_union_value(),
            )
        }
        ServerMessage::DeviceListChanged { user } => {
            let user = uid(*user);
            let args = fb::ServerDeviceListChangedArgs { user: Some(&user) };
            (
                fb::Body::ServerDeviceListChanged,
                fb::ServerDeviceListChanged::create(fbb, &args).as_union_value(),
            )
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding helpers (all inputs are verified buffers)
// ---------------------------------------------------------------------------------------------

fn u128_of(x: &fb::Id128) -> u128 {
    (u128::from(x.hi()) << 64) | u128::from(x.lo())
}
fn user_of(x: &fb::Id128) -> UserId {
    UserId(u128_of(x))
}
fn device_of(x: &fb::Id128) -> DeviceId {
    DeviceId(u128_of(x))
}
fn conv_of(x: &fb::Id128) -> ConversationId {
    ConversationId(u128_of(x))
}
fn msg_id_of(x: &fb::Id128) -> MessageId {
    MessageId(u128_of(x))
}

fn string_of(s: Option<&str>) -> String {
    s.unwrap_or_default().to_owned()
}

fn bytes_of(v: Option<Vector<'_, u8>>) -> Vec<u8> {
    v.map(|v| v.bytes().to_vec()).unwrap_or_default()
}

fn users_of(v: Option<Vector<'_, fb::Id128>>) -> Vec<UserId> {
    v.map(|v| v.iter().map(user_of).collect())
        .unwrap_or_default()
}

fn tables_of<'a, T, O>(
    v: Option<Vector<'a, ForwardsUOffset<T>>>,
    convert: impl Fn(T::Inner) -> Result<O, WireError>,
) -> Result<Vec<O>, WireError>
where
    T: flatbuffers::Follow<'a> + 'a,
{
    match v {
        None => Ok(Vec::new()),
        Some(v) => v.iter().map(convert).collect(),
    }
}

fn error_code_of(c: fb::ErrorCode) -> Result<ErrorCode, WireError> {
    ErrorCode::from_u16(c.0)
        .ok_or_else(|| WireError::malformed(format!("unknown error code {}", c.0)))
}

fn kind_of(k: fb::ConversationKind) -> Result<ConversationKind, WireError> {
    match k {
        fb::ConversationKind::Direct => Ok(ConversationKind::Direct),
        fb::ConversationKind::Group => Ok(ConversationKind::Group),
        other => Err(WireError::malformed(format!(
            "unknown conversation kind {}",
            other.0
        ))),
    }
}

fn role_of(r: fb::MemberRole) -> Result<MemberRole, WireError> {
    match r {
        fb::MemberRole::Member => Ok(MemberRole::Member),
        fb::MemberRole::Owner => Ok(MemberRole::Owner),
        other => Err(WireError::malformed(format!(
            "unknown member role {}",
            other.0
        ))),
    }
}

fn status_of(s: fb::PresenceStatus) -> Result<PresenceStatus, WireError> {
    match s {
        fb::PresenceStatus::Offline => Ok(PresenceStatus::Offline),
        fb::PresenceStatus::Online => Ok(PresenceStatus::Online),
        fb::PresenceStatus::Away => Ok(PresenceStatus::Away),
        other => Err(WireError::malformed(format!(
            "unknown presence status {}",
            other.0
        ))),
    }
}

fn cursor_of(c: fb::Cursor<'_>) -> Result<Cursor, WireError> {
    Ok(Cursor {
        conversation: conv_of(c.conversation()),
        seq: c.seq(),
    })
}

fn delivery_mark_of(m: fb::DeliveryMark<'_>) -> Result<DeliveryMark, WireError> {
    Ok(DeliveryMark {
        user: user_of(m.user()),
        seq: m.seq(),
    })
}

fn file_ref_of(f: fb::FileRef<'_>) -> Result<FileRef, WireError> {
    Ok(FileRef {
        file_id: msg_id_of(f.file_id()),
        size: f.size(),
        content_type: string_of(f.content_type()),
    })
}

fn message_of(m: fb::Message<'_>) -> Result<Message, WireError> {
    Ok(Message {
        conversation: conv_of(m.conversation()),
        seq: m.seq(),
        message_id: msg_id_of(m.message_id()),
        sender_user: user_of(m.sender_user()),
        sender_device: device_of(m.sender_device()),
        client_msg_id: u128_of(m.client_msg_id()),
        timestamp_ms: m.timestamp_ms(),
        content_type: string_of(m.content_type()),
        payload: bytes_of(m.payload()),
        files: tables_of(m.files(), file_ref_of)?,
    })
}

fn member_of(m: fb::Member<'_>) -> Result<Member, WireError> {
    Ok(Member {
        user: user_of(m.user()),
        username: string_of(m.username()),
        role: role_of(m.role())?,
    })
}

fn conversation_info_of(c: fb::ConversationInfo<'_>) -> Result<ConversationInfo, WireError> {
    Ok(ConversationInfo {
        conversation: conv_of(c.conversation()),
        kind: kind_of(c.kind())?,
        name: string_of(c.name()),
        description: string_of(c.description()),
        members: tables_of(c.members(), member_of)?,
        last_seq: c.last_seq(),
    })
}

fn reaction_count_of(r: fb::ReactionCount<'_>) -> Result<ReactionCount, WireError> {
    Ok(ReactionCount {
        seq: r.seq(),
        emoji: string_of(r.emoji()),
        count: r.count(),
        users: users_of(r.users()),
    })
}

fn devices_of(v: Option<Vector<'_, fb::Id128>>) -> Vec<DeviceId> {
    v.map(|v| v.iter().map(device_of).collect())
        .unwrap_or_default()
}

/// Fails when a vector has more than `max` entries (checked before anything is copied).
fn bounded_len(what: &str, len: usize, max: usize) -> Result<(), WireError> {
    if len > max {
        return Err(WireError::malformed(format!(
            "{what}: {len} entries exceed the maximum of {max}"
        )));
    }
    Ok(())
}

/// Copies a byte vector that must be at most `max` bytes long.
fn bounded_bytes(what: &str, v: Option<Vector<'_, u8>>, max: usize) -> Result<Vec<u8>, WireError> {
    let len = v.map_or(0, |v| v.len());
    if len > max {
        return Err(WireError::malformed(format!(
            "{what} of {len} bytes exceeds the maximum of {max} bytes"
        )));
    }
    Ok(bytes_of(v))
}

fn key_blob(what: &str, v: Option<Vector<'_, u8>>) -> Result<Vec<u8>, WireError> {
    bounded_bytes(what, v, MAX_KEY_BLOB_BYTES)
}

fn device_keys_of(k: fb::DeviceKeys<'_>) -> Result<DeviceKeys, WireError> {
    let otks = k.one_time_keys();
    bounded_len(
        "one_time_keys",
        otks.map_or(0, |v| v.len()),
        MAX_ONE_TIME_KEYS_PER_PUBLISH,
    )?;
    Ok(DeviceKeys {
        user: user_of(k.user()),
        device: device_of(k.device()),
        identity_key: key_blob("identity_key", k.identity_key())?,
        signed_prekey: key_blob("signed_prekey", k.signed_prekey())?,
        one_time_keys: tables_of(otks, |b| key_blob("one-time key", b.data()))?,
        signing_key: key_blob("signing_key", k.signing_key())?,
        fallback_key: key_blob("fallback_key", k.fallback_key())?,
        signature: key_blob("signature", k.signature())?,
    })
}

fn claim_target_of(t: fb::ClaimTarget<'_>) -> Result<ClaimTarget, WireError> {
    let devices = t.devices();
    bounded_len(
        "claim devices",
        devices.map_or(0, |v| v.len()),
        MAX_CLAIM_DEVICES,
    )?;
    Ok(ClaimTarget {
        user: user_of(t.user()),
        devices: devices_of(devices),
    })
}

fn key_share_item_of(k: fb::KeyShareItem<'_>) -> Result<KeyShareItem, WireError> {
    Ok(KeyShareItem {
        to_user: user_of(k.to_user()),
        to_device: device_of(k.to_device()),
        payload: bounded_bytes(
            "key share payload",
            k.payload(),
            MAX_KEY_SHARE_PAYLOAD_BYTES,
        )?,
    })
}

fn read_client(env: &fb::Envelope<'_>) -> Result<ClientMessage, WireError> {
    let ty = env.body_type();
    Ok(match ty {
        fb::Body::ClientHello => {
            let b = present(env.body_as_client_hello())?;
            ClientMessage::Hello {
                min_version: b.min_version(),
                max_version: b.max_version(),
                token: string_of(b.token()),
                device: device_of(b.device()),
                client_name: string_of(b.client_name()),
                cursors: tables_of(b.cursors(), cursor_of)?,
            }
        }
        fb::Body::ClientSend => {
            let b = present(env.body_as_client_send())?;
            ClientMessage::Send {
                request_id: b.request_id(),
                conversation: conv_of(b.conversation()),
                client_msg_id: u128_of(b.client_msg_id()),
                content_type: string_of(b.content_type()),
                payload: bytes_of(b.payload()),
                files: tables_of(b.files(), file_ref_of)?,
            }
        }
        fb::Body::ClientAck => {
            let b = present(env.body_as_client_ack())?;
            ClientMessage::Ack {
                conversation: conv_of(b.conversation()),
                seq: b.seq(),
            }
        }
        fb::Body::ClientResume => {
            let b = present(env.body_as_client_resume())?;
            ClientMessage::Resume {
                cursors: tables_of(b.cursors(), cursor_of)?,
            }
        }
        fb::Body::ClientHistory => {
            let b = present(env.body_as_client_history())?;
            ClientMessage::History {
                request_id: b.request_id(),
                conversation: conv_of(b.conversation()),
                before_seq: b.before_seq(),
                after_seq: b.after_seq(),
                limit: b.limit(),
                around_seq: b.around_seq(),
                since_ms: b.since_ms(),
                until_ms: b.until_ms(),
                sender: b.sender().map(user_of),
            }
        }
        fb::Body::ClientCreateConversation => {
            let b = present(env.body_as_client_create_conversation())?;
            ClientMessage::CreateConversation {
                request_id: b.request_id(),
                kind: kind_of(b.kind())?,
                name: string_of(b.name()),
                description: string_of(b.description()),
                members: users_of(b.members()),
            }
        }
        fb::Body::ClientInvite => {
            let b = present(env.body_as_client_invite())?;
            ClientMessage::Invite {
                request_id: b.request_id(),
                conversation: conv_of(b.conversation()),
                user: user_of(b.user()),
            }
        }
        fb::Body::ClientAcceptInvite => {
            let b = present(env.body_as_client_accept_invite())?;
            ClientMessage::AcceptInvite {
                request_id: b.request_id(),
                conversation: conv_of(b.conversation()),
            }
        }
        fb::Body::ClientDeclineInvite => {
            let b = present(env.body_as_client_decline_invite())?;
            ClientMessage::DeclineInvite {
                request_id: b.request_id(),
                conversation: conv_of(b.conversation()),
            }
        }
        fb::Body::ClientAddMember => {
            let b = present(env.body_as_client_add_member())?;
            ClientMessage::AddMember {
                request_id: b.request_id(),
                conversation: conv_of(b.conversation()),
                user: user_of(b.user()),
            }
        }
        fb::Body::ClientRemoveMember => {
            let b = present(env.body_as_client_remove_member())?;
            ClientMessage::RemoveMember {
                request_id: b.request_id(),
                conversation: conv_of(b.conversation()),
                user: user_of(b.user()),
            }
        }
        fb::Body::ClientLeave => {
            let b = present(env.body_as_client_leave())?;
            ClientMessage::Leave {
                request_id: b.request_id(),
                conversation: conv_of(b.conversation()),
            }
        }
        fb::Body::ClientSetPresence => {
            let b = present(env.body_as_client_set_presence())?;
            ClientMessage::SetPresence {
                status: status_of(b.status())?,
            }
        }
        fb::Body::ClientTyping => {
            let b = present(env.body_as_client_typing())?;
            ClientMessage::Typing {
                conversation: conv_of(b.conversation()),
                active: b.active(),
            }
        }
        fb::Body::ClientReact => {
            let b = present(env.body_as_client_react())?;
            ClientMessage::React {
                request_id: b.request_id(),
                conversation: conv_of(b.conversation()),
                seq: b.seq(),
                emoji: string_of(b.emoji()),
                add: b.add(),
            }
        }
        fb::Body::ClientPublishKeys => {
            let b = present(env.body_as_client_publish_keys())?;
            ClientMessage::PublishKeys {
                request_id: b.request_id(),
                keys: device_keys_of(b.keys())?,
            }
        }
        fb::Body::ClientClaimKeys => {
            let b = present(env.body_as_client_claim_keys())?;
            let devices = b.devices();
            bounded_len(
                "claim devices",
                devices.map_or(0, |v| v.len()),
                MAX_CLAIM_DEVICES,
            )?;
            ClientMessage::ClaimKeys {
                request_id: b.request_id(),
                user: user_of(b.user()),
                devices: devices_of(devices),
            }
        }
        fb::Body::ClientKeyShare => {
            let b = present(env.body_as_client_key_share())?;
            ClientMessage::KeyShare {
                to_user: user_of(b.to_user()),
                to_device: device_of(b.to_device()),
                payload: bounded_bytes(
                    "key share payload",
                    b.payload(),
                    MAX_KEY_SHARE_PAYLOAD_BYTES,
                )?,
            }
        }
        fb::Body::ClientPing => {
            let b = present(env.body_as_client_ping())?;
            ClientMessage::Ping { nonce: b.nonce() }
        }
        fb::Body::ClientBlock => {
            let b = present(env.body_as_client_block())?;
            ClientMessage::Block {
                request_id: b.request_id(),
                user: user_of(b.user()),
                blocked: b.blocked(),
            }
        }
        fb::Body::ClientQueryKeys => {
            let b = present(env.body_as_client_query_keys())?;
            let users = b.users();
            bounded_len(
                "query users",
                users.map_or(0, |v| v.len()),
                MAX_QUERY_KEYS_USERS,
            )?;
            ClientMessage::QueryKeys {
                request_id: b.request_id(),
                users: users_of(users),
            }
        }
        fb::Body::ClientSendKeyShares => {
            let b = present(env.body_as_client_send_key_shares())?;
            let shares = b.shares();
            bounded_len(
                "key shares",
                shares.map_or(0, |v| v.len()),
                MAX_KEY_SHARES_PER_REQUEST,
            )?;
            ClientMessage::SendKeyShares {
                request_id: b.request_id(),
                shares: tables_of(shares, key_share_item_of)?,
            }
        }
        fb::Body::ClientAckKeyShares => {
            let b = present(env.body_as_client_ack_key_shares())?;
            let ids = b.ids();
            bounded_len(
                "acked inbox ids",
                ids.map_or(0, |v| v.len()),
                MAX_ACK_INBOX_IDS,
            )?;
            ClientMessage::AckKeyShares {
                up_to: b.up_to(),
                ids: ids.map(|v| v.iter().collect()).unwrap_or_default(),
            }
        }
        fb::Body::ClientClaimKeysBatch => {
            let b = present(env.body_as_client_claim_keys_batch())?;
            let targets = b.targets();
            bounded_len(
                "claim targets",
                targets.map_or(0, |v| v.len()),
                MAX_CLAIM_BATCH_TARGETS,
            )?;
            let targets = tables_of(targets, claim_target_of)?;
            let devices: usize = targets.iter().map(|t| t.devices.len()).sum();
            bounded_len("claim devices", devices, MAX_CLAIM_BATCH_DEVICES)?;
            ClientMessage::ClaimKeysBatch {
                request_id: b.request_id(),
                targets,
            }
        }
        fb::Body::ClientGetDelivered => {
            let b = present(env.body_as_client_get_delivered())?;
            ClientMessage::GetDelivered {
                request_id: b.request_id(),
                conversation: conv_of(b.conversation()),
            }
        }
        other => return Err(unexpected_body(other)),
    })
}

fn notice_of(n: fb::ServerNotice<'_>) -> Result<Notice, WireError> {
    Ok(match n.notice_type() {
        fb::Notice::BacklogTruncated => {
            let b = present(n.notice_as_backlog_truncated())?;
            Notice::BacklogTruncated {
                conversation: conv_of(b.conversation()),
                from_seq: b.from_seq(),
                to_seq: b.to_seq(),
            }
        }
        fb::Notice::SlowConsumer => {
            present(n.notice_as_slow_consumer())?;
            Notice::SlowConsumer
        }
        fb::Notice::GoingAway => {
            let b = present(n.notice_as_going_away())?;
            Notice::GoingAway {
                retry_after_ms: b.retry_after_ms(),
            }
        }
        fb::Notice::NONE => return Err(WireError::malformed("notice is NONE")),
        other => {
            return Err(WireError::malformed(format!(
                "unknown notice type {}",
                other.0
            )));
        }
    })
}

fn read_server(env: &fb::Envelope<'_>) -> Result<ServerMessage, WireError> {
    let ty = env.body_type();
    Ok(match ty {
        fb::Body::ServerWelcome => {
            let b = present(env.body_as_server_welcome())?;
            ServerMessage::Welcome {
                version: b.version(),
                user: user_of(b.user()),
                device: device_of(b.device()),
                server_time_ms: b.server_time_ms(),
                max_frame_bytes: b.max_frame_bytes(),
                one_time_keys_left: b.one_time_keys_left(),
            }
        }
        fb::Body::ServerSendAck => {
            let b = present(env.body_as_server_send_ack())?;
            ServerMessage::SendAck {
                request_id: b.request_id(),
                conversation: conv_of(b.conversation()),
                client_msg_id: u128_of(b.client_msg_id()),
                seq: b.seq(),
                message_id: msg_id_of(b.message_id()),
                timestamp_ms: b.timestamp_ms(),
                duplicate: b.duplicate(),
            }
        }
        fb::Body::ServerDeliver => {
            let b = present(env.body_as_server_deliver())?;
            ServerMessage::Deliver {
                message: message_of(b.message())?,
            }
        }
        fb::Body::ServerSyncComplete => {
            present(env.body_as_server_sync_complete())?;
            ServerMessage::SyncComplete
        }
        fb::Body::ServerHistoryPage => {
            let b = present(env.body_as_server_history_page())?;
            ServerMessage::HistoryPage {
                request_id: b.request_id(),
                conversation: conv_of(b.conversation()),
                messages: tables_of(b.messages(), message_of)?,
                reactions: tables_of(b.reactions(), reaction_count_of)?,
                has_more: b.has_more(),
                has_more_before: b.has_more_before(),
                has_more_after: b.has_more_after(),
            }
        }
        fb::Body::ServerConversation => {
            let b = present(env.body_as_server_conversation())?;
            ServerMessage::Conversation {
                request_id: b.request_id(),
                info: conversation_info_of(b.info())?,
            }
        }
        fb::Body::ServerInvitation => {
            let b = present(env.body_as_server_invitation())?;
            ServerMessage::Invitation {
                conversation: conv_of(b.conversation()),
                inviter: user_of(b.inviter()),
                name: string_of(b.name()),
            }
        }
        fb::Body::ServerInviteDeclined => {
            let b = present(env.body_as_server_invite_declined())?;
            ServerMessage::InviteDeclined {
                conversation: conv_of(b.conversation()),
                user: user_of(b.user()),
            }
        }
        fb::Body::ServerMemberRemoved => {
            let b = present(env.body_as_server_member_removed())?;
            ServerMessage::MemberRemoved {
                conversation: conv_of(b.conversation()),
                user: user_of(b.user()),
            }
        }
        fb::Body::ServerPresence => {
            let b = present(env.body_as_server_presence())?;
            ServerMessage::Presence {
                user: user_of(b.user()),
                status: status_of(b.status())?,
                last_seen_ms: b.last_seen_ms(),
            }
        }
        fb::Body::ServerTyping => {
            let b = present(env.body_as_server_typing())?;
            ServerMessage::Typing {
                conversation: conv_of(b.conversation()),
                user: user_of(b.user()),
                active: b.active(),
            }
        }
        fb::Body::ServerReaction => {
            let b = present(env.body_as_server_reaction())?;
            ServerMessage::Reaction {
                conversation: conv_of(b.conversation()),
                seq: b.seq(),
                user: user_of(b.user()),
                emoji: string_of(b.emoji()),
                add: b.add(),
            }
        }
        fb::Body::ServerKeyBundle => {
            let b = present(env.body_as_server_key_bundle())?;
            let unanswered = b.unanswered();
            bounded_len(
                "unanswered users",
                unanswered.map_or(0, |v| v.len()),
                MAX_QUERY_KEYS_USERS.max(MAX_CLAIM_BATCH_TARGETS),
            )?;
            ServerMessage::KeyBundle {
                request_id: b.request_id(),
                devices: tables_of(b.devices(), device_keys_of)?,
                unanswered: users_of(unanswered),
            }
        }
        fb::Body::ServerKeyShare => {
            let b = present(env.body_as_server_key_share())?;
            ServerMessage::KeyShare {
                from_user: user_of(b.from_user()),
                from_device: device_of(b.from_device()),
                payload: bytes_of(b.payload()),
                inbox_id: b.inbox_id(),
            }
        }
        fb::Body::ServerOk => {
            let b = present(env.body_as_server_ok())?;
            ServerMessage::Ok {
                request_id: b.request_id(),
            }
        }
        fb::Body::ServerError => {
            let b = present(env.body_as_server_error())?;
            ServerMessage::Error {
                request_id: b.request_id(),
                code: error_code_of(b.code())?,
                message: string_of(b.message()),
                fatal: b.fatal(),
                retry_after_ms: b.retry_after_ms(),
            }
        }
        fb::Body::ServerNotice => {
            let b = present(env.body_as_server_notice())?;
            ServerMessage::Notice {
                notice: notice_of(b)?,
            }
        }
        fb::Body::ServerPong => {
            let b = present(env.body_as_server_pong())?;
            ServerMessage::Pong { nonce: b.nonce() }
        }
        fb::Body::ServerKeySharesStored => {
            let b = present(env.body_as_server_key_shares_stored())?;
            ServerMessage::KeySharesStored {
                request_id: b.request_id(),
                full: devices_of(b.full()),
            }
        }
        fb::Body::ServerDeviceListChanged => {
            let b = present(env.body_as_server_device_list_changed())?;
            ServerMessage::DeviceListChanged {
                user: user_of(b.user()),
            }
        }
        fb::Body::ServerOneTimeKeysLow => {
            let b = present(env.body_as_server_one_time_keys_low())?;
            ServerMessage::OneTimeKeysLow { left: b.left() }
        }
        fb::Body::ServerDelivered => {
            let b = present(env.body_as_server_delivered())?;
            let marks = b.marks();
            bounded_len(
                "delivery marks",
                marks.map_or(0, |v| v.len()),
                MAX_DELIVERY_MARKS,
            )?;
            ServerMessage::Delivered {
                request_id: b.request_id(),
                conversation: conv_of(b.conversation()),
                marks: tables_of(marks, delivery_mark_of)?,
            }
        }
        other => return Err(unexpected_body(other)),
    })
}
