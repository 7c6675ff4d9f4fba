//! Owned, validated protocol messages.
//!
//! These are the types the engine, gateway and clients work with. Only `codec` turns them into or
//! out of FlatBuffers bytes; nothing else in the project defines bytes on the wire.
//!
//! Every message has a `request_id` where the client needs to match an answer to a request
//! (0 means "no answer expected / not a reply").
//!
//! Each type mirrors a table or enum of `wire/schema/tern.fbs`; adding a variant or field here
//! means adding it there too (the codec's exhaustive matches and the vector tests insist).
//!
//! The serde form is for tooling and test vectors, not the wire: messages are internally tagged
//! (`{"type": "send", ...}`, variant names in snake_case), ids are UUID strings, byte strings are
//! lowercase hex, `client_msg_id` is 32 hex digits (a `u128` overflows JSON numbers in most
//! parsers), and enums are snake_case strings (`ErrorCode` matches [`ErrorCode::as_str`]).

use serde::{Deserialize, Serialize};

use crate::ids::{ConversationId, DeviceId, MessageId, UserId};
use crate::serde_hex;

/// The protocol version this build speaks. Hello carries a `[min, max]` range; the server picks
/// the highest version both sides support.
pub const PROTOCOL_VERSION: u16 = 1;

/// Stable error codes. Numbers never change meaning; new codes are only appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u16)]
pub enum ErrorCode {
    /// Something the server did not expect went wrong; retry later.
    Internal = 1,
    /// The frame failed FlatBuffers verification or made no sense.
    MalformedFrame = 2,
    /// The frame exceeded the configured maximum size.
    FrameTooLarge = 3,
    /// No version in the client's range is supported.
    UnsupportedVersion = 4,
    /// The first frame was not a valid Hello, or the token is unknown/expired.
    Unauthenticated = 5,
    /// The token was revoked (logout) while the connection was open.
    TokenRevoked = 6,
    /// The caller is authenticated but not allowed (e.g. not a member).
    Forbidden = 7,
    /// The referenced conversation, user or message does not exist.
    NotFound = 8,
    /// Too many requests; back off.
    RateLimited = 9,
    /// A field was out of range or invalid.
    InvalidArgument = 10,
    /// The request conflicts with existing state (e.g. name taken).
    Conflict = 11,
    /// The connection's send queue overflowed; resume from the cursor.
    SlowConsumer = 12,
    /// The server is shutting down.
    ServerShutdown = 13,
    /// A limit (members, payload size, ...) was exceeded.
    LimitExceeded = 14,
    /// The request is valid protocol but this server version does not implement it yet.
    Unsupported = 15,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 15] = [
        ErrorCode::Internal,
        ErrorCode::MalformedFrame,
        ErrorCode::FrameTooLarge,
        ErrorCode::UnsupportedVersion,
        ErrorCode::Unauthenticated,
        ErrorCode::TokenRevoked,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::RateLimited,
        ErrorCode::InvalidArgument,
        ErrorCode::Conflict,
        ErrorCode::SlowConsumer,
        ErrorCode::ServerShutdown,
        ErrorCode::LimitExceeded,
        ErrorCode::Unsupported,
    ];

    pub fn from_u16(v: u16) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| *c as u16 == v)
    }

    /// The stable string form, used in JSON errors of the HTTP API too.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Internal => "internal",
            ErrorCode::MalformedFrame => "malformed_frame",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::TokenRevoked => "token_revoked",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::Conflict => "conflict",
            ErrorCode::SlowConsumer => "slow_consumer",
            ErrorCode::ServerShutdown => "server_shutdown",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::Unsupported => "unsupported",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum ConversationKind {
    Direct = 1,
    Group = 2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum MemberRole {
    Member = 1,
    Owner = 2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum PresenceStatus {
    Offline = 0,
    Online = 1,
    Away = 2,
}

/// A position in one conversation: everything up to and including `seq` has been seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Cursor {
    pub conversation: ConversationId,
    pub seq: u64,
}

/// A device of `user` has every message of the conversation up to `seq`: the highest
/// acknowledged cursor over the user's devices, which senders show as "delivered".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DeliveryMark {
    pub user: UserId,
    pub seq: u64,
}

/// A reference to an uploaded (client-encrypted) file. The decryption key travels inside the
/// end-to-end encrypted payload, never here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    pub file_id: MessageId,
    pub size: u64,
    pub content_type: String,
}

/// A stored, sequenced message as delivered to devices and returned in history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub conversation: ConversationId,
    pub seq: u64,
    /// Time-ordered id (UUIDv7 layout): unique across the server.
    pub message_id: MessageId,
    pub sender_user: UserId,
    pub sender_device: DeviceId,
    #[serde(with = "serde_hex::u128")]
    pub client_msg_id: u128,
    /// Server receive time, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// Server-visible content type, e.g. "text", "e2e.megolm", "file". Not the content itself.
    pub content_type: String,
    /// Opaque to the server: end-to-end ciphertext in production.
    #[serde(with = "serde_hex::bytes")]
    pub payload: Vec<u8>,
    pub files: Vec<FileRef>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub user: UserId,
    pub username: String,
    pub role: MemberRole,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationInfo {
    pub conversation: ConversationId,
    pub kind: ConversationKind,
    pub name: String,
    pub description: String,
    pub members: Vec<Member>,
    /// Highest seq assigned so far (0 when empty).
    pub last_seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReactionCount {
    pub seq: u64,
    pub emoji: String,
    pub count: u32,
    pub users: Vec<UserId>,
}

/// One device's public keys in the end-to-end key directory (opaque to the server).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceKeys {
    pub user: UserId,
    pub device: DeviceId,
    #[serde(with = "serde_hex::bytes")]
    pub identity_key: Vec<u8>,
    #[serde(with = "serde_hex::bytes")]
    pub signed_prekey: Vec<u8>,
    /// On publish: the one-time keys uploaded. On claim: at most one, consumed by the claim.
    #[serde(with = "serde_hex::bytes_vec")]
    pub one_time_keys: Vec<Vec<u8>>,
    /// Ed25519 public key (32 bytes).
    #[serde(default, with = "serde_hex::bytes")]
    pub signing_key: Vec<u8>,
    /// A signed key blob. On publish non-empty replaces the stored one; on claim set only when no
    /// one-time key was left (the fallback is not consumed).
    #[serde(default, with = "serde_hex::bytes")]
    pub fallback_key: Vec<u8>,
    /// Ed25519 signature over the canonical device-keys bytes (made and checked by clients).
    #[serde(default, with = "serde_hex::bytes")]
    pub signature: Vec<u8>,
}

impl DeviceKeys {
    /// Keys with only the ids set (everything else empty).
    pub fn empty(user: UserId, device: DeviceId) -> Self {
        Self {
            user,
            device,
            identity_key: Vec::new(),
            signed_prekey: Vec::new(),
            one_time_keys: Vec::new(),
            signing_key: Vec::new(),
            fallback_key: Vec::new(),
            signature: Vec::new(),
        }
    }
}

/// One opaque key share addressed to one device's durable inbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyShareItem {
    pub to_user: UserId,
    pub to_device: DeviceId,
    #[serde(with = "serde_hex::bytes")]
    pub payload: Vec<u8>,
}

/// One user's devices in a `ClaimKeysBatch` (named explicitly: the server bounds its answer by
/// the frame size before it consumes a key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimTarget {
    pub user: UserId,
    pub devices: Vec<DeviceId>,
}

/// Messages a client sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// First frame on every connection: version range, token, and optional resume cursors.
    Hello {
        min_version: u16,
        max_version: u16,
        token: String,
        device: DeviceId,
        client_name: String,
        /// Resume after these positions; conversations not listed resume after the cursor the
        /// server stored for this device.
        cursors: Vec<Cursor>,
    },
    Send {
        request_id: u64,
        conversation: ConversationId,
        #[serde(with = "serde_hex::u128")]
        client_msg_id: u128,
        content_type: String,
        #[serde(with = "serde_hex::bytes")]
        payload: Vec<u8>,
        files: Vec<FileRef>,
    },
    /// The device has everything up to `seq`: advances its stored cursor.
    Ack {
        conversation: ConversationId,
        seq: u64,
    },
    /// Re-run resume after these positions (same rules as in Hello).
    Resume {
        cursors: Vec<Cursor>,
    },
    History {
        request_id: u64,
        conversation: ConversationId,
        /// Messages with seq strictly less than this (0 = no upper bound).
        before_seq: u64,
        /// Messages with seq strictly greater than this. When non-zero the page is the oldest
        /// `limit` such messages (catching up); when 0 it is the newest `limit` messages below
        /// `before_seq` (scrolling back). Pages are always in ascending seq order.
        after_seq: u64,
        limit: u32,
        /// Non-zero: the page is centred on this seq, `limit - (limit - 1) / 2` messages at or
        /// below it and `(limit - 1) / 2` above (not with before/after/since/until).
        #[serde(default)]
        around_seq: u64,
        /// Non-zero: only messages the server stamped at or after this (Unix ms); the page is
        /// then the oldest of the range.
        #[serde(default)]
        since_ms: u64,
        /// Non-zero: only messages the server stamped at or before this (Unix ms).
        #[serde(default)]
        until_ms: u64,
        /// Only this user's messages.
        #[serde(default)]
        sender: Option<UserId>,
    },
    CreateConversation {
        request_id: u64,
        kind: ConversationKind,
        name: String,
        description: String,
        members: Vec<UserId>,
    },
    Invite {
        request_id: u64,
        conversation: ConversationId,
        user: UserId,
    },
    AcceptInvite {
        request_id: u64,
        conversation: ConversationId,
    },
    DeclineInvite {
        request_id: u64,
        conversation: ConversationId,
    },
    AddMember {
        request_id: u64,
        conversation: ConversationId,
        user: UserId,
    },
    RemoveMember {
        request_id: u64,
        conversation: ConversationId,
        user: UserId,
    },
    Leave {
        request_id: u64,
        conversation: ConversationId,
    },
    SetPresence {
        status: PresenceStatus,
    },
    Typing {
        conversation: ConversationId,
        active: bool,
    },
    React {
        request_id: u64,
        conversation: ConversationId,
        seq: u64,
        emoji: String,
        add: bool,
    },
    PublishKeys {
        request_id: u64,
        keys: DeviceKeys,
    },
    ClaimKeys {
        request_id: u64,
        user: UserId,
        /// Empty: every device of `user`.
        #[serde(default)]
        devices: Vec<DeviceId>,
    },
    /// A device-to-device key share (e.g. an Olm-encrypted Megolm session key), opaque.
    KeyShare {
        to_user: UserId,
        to_device: DeviceId,
        #[serde(with = "serde_hex::bytes")]
        payload: Vec<u8>,
    },
    Ping {
        nonce: u64,
    },
    /// Blocks (`blocked: true`) or unblocks `user`; answered with `Ok`.
    Block {
        request_id: u64,
        user: UserId,
        blocked: bool,
    },
    /// Identity keys of every device of `users` (no one-time or fallback keys); answered with
    /// `KeyBundle`.
    QueryKeys {
        request_id: u64,
        users: Vec<UserId>,
    },
    /// The delivery marks of every member of `conversation` (members only); answered with
    /// `Delivered` carrying the same request id.
    GetDelivered {
        request_id: u64,
        conversation: ConversationId,
    },
    /// Stores key shares in recipient device inboxes; answered with `KeySharesStored`.
    SendKeyShares {
        request_id: u64,
        shares: Vec<KeyShareItem>,
    },
    /// Deletes this device's inbox entries: exactly `ids` when not empty (what the device
    /// handled and persisted), else those `<= up_to` this connection delivered. No answer.
    AckKeyShares {
        up_to: u64,
        #[serde(default)]
        ids: Vec<u64>,
    },
    /// One-time keys of several users' devices at once (a large group's first message);
    /// answered with `KeyBundle`, whose `unanswered` names targets not claimed (frame full).
    ClaimKeysBatch {
        request_id: u64,
        targets: Vec<ClaimTarget>,
    },
}

/// Server-initiated notices that are not errors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Notice {
    /// Resume skipped messages `from_seq..=to_seq`; fetch them with History when needed.
    BacklogTruncated {
        conversation: ConversationId,
        from_seq: u64,
        to_seq: u64,
    },
    /// The connection could not keep up and will be closed; resume from the cursor.
    SlowConsumer,
    /// The server is going away; reconnect after the delay.
    GoingAway { retry_after_ms: u32 },
}

/// Messages the server sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    Welcome {
        version: u16,
        user: UserId,
        device: DeviceId,
        server_time_ms: u64,
        max_frame_bytes: u32,
        /// This device's unclaimed one-time keys (clients top up below 50).
        #[serde(default)]
        one_time_keys_left: u32,
    },
    SendAck {
        request_id: u64,
        conversation: ConversationId,
        #[serde(with = "serde_hex::u128")]
        client_msg_id: u128,
        seq: u64,
        message_id: MessageId,
        timestamp_ms: u64,
        /// True when this client_msg_id had been stored before: no new message was created.
        duplicate: bool,
    },
    Deliver {
        message: Message,
    },
    /// Resume replay for the listed conversations is complete; live traffic follows.
    SyncComplete,
    HistoryPage {
        request_id: u64,
        conversation: ConversationId,
        messages: Vec<Message>,
        reactions: Vec<ReactionCount>,
        has_more: bool,
        /// Older messages exist than the page's first (around pages; scrolling back = has_more).
        #[serde(default)]
        has_more_before: bool,
        /// Newer messages exist than the page's last (around pages; reading forward = has_more).
        #[serde(default)]
        has_more_after: bool,
    },
    /// A conversation the user belongs to was created or changed (also the answer to requests).
    Conversation {
        request_id: u64,
        info: ConversationInfo,
    },
    Invitation {
        conversation: ConversationId,
        inviter: UserId,
        name: String,
    },
    InviteDeclined {
        conversation: ConversationId,
        user: UserId,
    },
    MemberRemoved {
        conversation: ConversationId,
        user: UserId,
    },
    Presence {
        user: UserId,
        status: PresenceStatus,
        last_seen_ms: u64,
    },
    Typing {
        conversation: ConversationId,
        user: UserId,
        active: bool,
    },
    Reaction {
        conversation: ConversationId,
        seq: u64,
        user: UserId,
        emoji: String,
        add: bool,
    },
    KeyBundle {
        request_id: u64,
        devices: Vec<DeviceKeys>,
        /// Users of the request the server did not answer because the frame was full (for a
        /// claim: none of their keys was consumed). Ask again for them.
        #[serde(default)]
        unanswered: Vec<UserId>,
    },
    KeyShare {
        from_user: UserId,
        from_device: DeviceId,
        #[serde(with = "serde_hex::bytes")]
        payload: Vec<u8>,
        /// Per-device increasing id; acknowledge with `AckKeyShares`.
        #[serde(default)]
        inbox_id: u64,
    },
    /// Generic success answer for requests with no other result.
    Ok {
        request_id: u64,
    },
    Error {
        request_id: u64,
        code: ErrorCode,
        message: String,
        fatal: bool,
        /// For `RateLimited`: how long to wait before retrying; 0 when the server does not say.
        #[serde(default)]
        retry_after_ms: u32,
    },
    Notice {
        notice: Notice,
    },
    Pong {
        nonce: u64,
    },
    /// Answer to `SendKeyShares`: recipient devices whose inbox was full (those shares were not
    /// stored; all others were).
    KeySharesStored {
        request_id: u64,
        full: Vec<DeviceId>,
    },
    /// `user` published new identity keys for a device or revoked one: re-query its devices.
    DeviceListChanged {
        user: UserId,
    },
    /// Claims left this device with `left` unclaimed one-time keys: publish more.
    OneTimeKeysLow {
        left: u32,
    },
    /// Delivery marks of `conversation`. Pushed live (request id 0) to the senders of the
    /// messages a mark newly covers, with only the marks that moved; the answer to
    /// `GetDelivered` carries every member's mark.
    Delivered {
        request_id: u64,
        conversation: ConversationId,
        marks: Vec<DeliveryMark>,
    },
}

impl ServerMessage {
    pub fn error(
        request_id: u64,
        code: ErrorCode,
        message: impl Into<String>,
        fatal: bool,
    ) -> Self {
        ServerMessage::Error {
            request_id,
            code,
            message: message.into(),
            fatal,
            retry_after_ms: 0,
        }
    }

    /// A non-fatal `RateLimited` answer that says when to retry.
    pub fn rate_limited(request_id: u64, message: impl Into<String>, retry_after_ms: u32) -> Self {
        ServerMessage::Error {
            request_id,
            code: ErrorCode::RateLimited,
            message: message.into(),
            fatal: false,
            retry_after_ms: retry_after_ms.max(1),
        }
    }
}

impl ClientMessage {
    /// The variant's name in snake_case, as in the JSON `type` tag (for logs and metrics).
    pub fn variant_name(&self) -> &'static str {
        match self {
            ClientMessage::Hello { .. } => "hello",
            ClientMessage::Send { .. } => "send",
            ClientMessage::Ack { .. } => "ack",
            ClientMessage::Resume { .. } => "resume",
            ClientMessage::History { .. } => "history",
            ClientMessage::CreateConversation { .. } => "create_conversation",
            ClientMessage::Invite { .. } => "invite",
            ClientMessage::AcceptInvite { .. } => "accept_invite",
            ClientMessage::DeclineInvite { .. } => "decline_invite",
            ClientMessage::AddMember { .. } => "add_member",
            ClientMessage::RemoveMember { .. } => "remove_member",
            ClientMessage::Leave { .. } => "leave",
            ClientMessage::SetPresence { .. } => "set_presence",
            ClientMessage::Typing { .. } => "typing",
            ClientMessage::React { .. } => "react",
            ClientMessage::PublishKeys { .. } => "publish_keys",
            ClientMessage::ClaimKeys { .. } => "claim_keys",
            ClientMessage::KeyShare { .. } => "key_share",
            ClientMessage::Ping { .. } => "ping",
            ClientMessage::Block { .. } => "block",
            ClientMessage::QueryKeys { .. } => "query_keys",
            ClientMessage::SendKeyShares { .. } => "send_key_shares",
            ClientMessage::AckKeyShares { .. } => "ack_key_shares",
            ClientMessage::ClaimKeysBatch { .. } => "claim_keys_batch",
            ClientMessage::GetDelivered { .. } => "get_delivered",
        }
    }
}

impl Notice {
    /// The variant's name in snake_case, as in the JSON `type` tag.
    pub fn variant_name(&self) -> &'static str {
        match self {
            Notice::BacklogTruncated { .. } => "backlog_truncated",
            Notice::SlowConsumer => "slow_consumer",
            Notice::GoingAway { .. } => "going_away",
        }
    }
}

impl ServerMessage {
    /// The variant's name in snake_case, as in the JSON `type` tag (for logs and metrics).
    pub fn variant_name(&self) -> &'static str {
        match self {
            ServerMessage::Welcome { .. } => "welcome",
            ServerMessage::SendAck { .. } => "send_ack",
            ServerMessage::Deliver { .. } => "deliver",
            ServerMessage::SyncComplete => "sync_complete",
            ServerMessage::HistoryPage { .. } => "history_page",
            ServerMessage::Conversation { .. } => "conversation",
            ServerMessage::Invitation { .. } => "invitation",
            ServerMessage::InviteDeclined { .. } => "invite_declined",
            ServerMessage::MemberRemoved { .. } => "member_removed",
            ServerMessage::Presence { .. } => "presence",
            ServerMessage::Typing { .. } => "typing",
            ServerMessage::Reaction { .. } => "reaction",
            ServerMessage::KeyBundle { .. } => "key_bundle",
            ServerMessage::KeyShare { .. } => "key_share",
            ServerMessage::Ok { .. } => "ok",
            ServerMessage::Error { .. } => "error",
            ServerMessage::Notice { .. } => "notice",
            ServerMessage::Pong { .. } => "pong",
            ServerMessage::KeySharesStored { .. } => "key_shares_stored",
            ServerMessage::DeviceListChanged { .. } => "device_list_changed",
            ServerMessage::OneTimeKeysLow { .. } => "one_time_keys_low",
            ServerMessage::Delivered { .. } => "delivered",
        }
    }
}
