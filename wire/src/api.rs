//! JSON shapes of the HTTPS API under `/api/v1`, shared by the gateway and the clients.
//!
//! With the `openapi` feature they also describe themselves for the generated OpenAPI document.

use serde::{Deserialize, Serialize};

use crate::ids::{ConversationId, DeviceId, MessageId, UserId};

#[cfg(feature = "openapi")]
use utoipa::ToSchema;

/// `POST /register` and `POST /login` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct UserView {
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Uuid))]
    pub user_id: UserId,
    pub username: String,
}

/// `POST /login` answer. The token goes in `Authorization: Bearer` and in the `Hello` frame.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct LoginResponse {
    pub token: String,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Uuid))]
    pub user_id: UserId,
    pub username: String,
    pub expires_at_ms: u64,
}

/// `POST /conversations/direct` body: the other person, by username.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct CreateDirect {
    pub peer: String,
}

/// `POST /conversations/group` body. The creator is the owner and, at first, the only member:
/// every listed user is invited and joins by accepting. An unknown username refuses the
/// creation (404). Names are unique per owner (ignoring case, normalisation and look-alikes)
/// and may not hold control, format (bidi, zero-width) or line-separator characters.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct CreateGroup {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Usernames to invite.
    pub members: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct MemberView {
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Uuid))]
    pub user_id: UserId,
    pub username: String,
    /// "owner" or "member".
    pub role: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ConversationView {
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Uuid))]
    pub conversation_id: ConversationId,
    /// "direct" or "group".
    pub kind: String,
    pub name: String,
    pub description: String,
    pub members: Vec<MemberView>,
    pub last_seq: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ConversationList {
    pub conversations: Vec<ConversationView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct FileRefView {
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Uuid))]
    pub file_id: MessageId,
    pub size: u64,
    pub content_type: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct MessageView {
    pub seq: u64,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Uuid))]
    pub message_id: MessageId,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Uuid))]
    pub sender_user: UserId,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Uuid))]
    pub sender_device: DeviceId,
    /// The client's idempotency key, as 32 lowercase hex digits.
    pub client_msg_id: String,
    pub timestamp_ms: u64,
    pub content_type: String,
    /// The opaque payload, standard base64.
    pub payload_b64: String,
    pub files: Vec<FileRefView>,
}

/// `GET /conversations/{id}/messages?before=&after=&around=&since_ms=&until_ms=&sender=&limit=`
/// answer, ascending by seq.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct HistoryPageView {
    pub messages: Vec<MessageView>,
    /// Reactions to the page's messages, one entry per (seq, emoji).
    #[serde(default)]
    pub reactions: Vec<ReactionView>,
    /// More exists in the paging direction (older when scrolling back, newer when reading
    /// forward, either side of an around page).
    pub has_more: bool,
    /// Older messages exist than the page's first (around pages; scrolling back: = has_more).
    #[serde(default)]
    pub has_more_before: bool,
    /// Newer messages exist than the page's last (around pages; reading forward: = has_more).
    #[serde(default)]
    pub has_more_after: bool,
}

/// The reactions with one emoji to one message.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ReactionView {
    pub seq: u64,
    pub emoji: String,
    /// Exact number of users who reacted so.
    pub count: u32,
    /// Who reacted (possibly capped: `count` stays exact).
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub users: Vec<UserId>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct CertificateHash {
    /// Always "sha-256".
    pub algorithm: String,
    /// Lowercase hex of the DER certificate's SHA-256.
    pub value: String,
    /// "current" (served now) or "next" (served from the next rotation on: pin both, and a
    /// connection made after the switch still matches).
    #[serde(default = "current_role")]
    pub role: String,
    /// Validity of a self-signed certificate, Unix ms (absent for operator certificates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after_ms: Option<u64>,
}

fn current_role() -> String {
    "current".into()
}

/// `GET /transport` answer: where to connect, and which certificates to pin for WebTransport.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct TransportInfo {
    pub webtransport_url: String,
    pub websocket_url: String,
    pub certificate_hashes: Vec<CertificateHash>,
    pub protocol_version: u16,
    pub max_frame_bytes: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ErrorBody {
    /// Stable machine-readable code, e.g. "invalid_argument", "unauthenticated", "rate_limited".
    pub code: String,
    pub message: String,
}

/// Every API error: `{"error": {"code", "message"}}` with a matching HTTP status.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ApiError {
    pub error: ErrorBody,
}

/// A user named in a group-management request (invite, add).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct UserRef {
    pub username: String,
}

/// A pending invitation into a group.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct InvitationView {
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Uuid))]
    pub conversation_id: ConversationId,
    /// The group's name.
    pub name: String,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Uuid))]
    pub inviter_id: UserId,
    pub inviter: String,
    pub created_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct InvitationList {
    pub invitations: Vec<InvitationView>,
}

/// `GET /blocks`: the users the caller blocks.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct BlockList {
    pub blocked: Vec<UserView>,
}

/// One of the caller's devices (`GET /devices`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct DeviceView {
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Uuid))]
    pub device_id: DeviceId,
    /// First connection (0 when unknown).
    pub created_ms: u64,
    /// Latest connection (0 when unknown).
    pub last_seen_ms: u64,
    /// Whether the device published identity keys.
    pub has_keys: bool,
    /// The Curve25519 identity key, standard base64 (empty without keys).
    pub identity_key: String,
}

/// `GET /devices`: the caller's devices in device-id order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct DeviceList {
    pub devices: Vec<DeviceView>,
}

/// `PUT /keys/backup` body and `GET /keys/backup` answer: the backup's header.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct KeyBackup {
    /// The client's version string (1..=64 bytes); a new one starts an empty backup.
    pub version: String,
    /// Opaque client metadata, standard base64 (at most 4 KiB decoded).
    pub meta: String,
}

/// One encrypted session in the key backup.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct BackupSessionView {
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Uuid))]
    pub conversation: ConversationId,
    /// 1..=128 bytes, no control characters.
    pub session_id: String,
    /// The encrypted session, standard base64 (at most 8 KiB decoded).
    pub data: String,
}

/// `PUT /keys/backup/sessions` body: upserts at most 1,000 sessions under `version`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct PutBackupSessions {
    pub version: String,
    pub sessions: Vec<BackupSessionView>,
}

/// `PUT /keys/backup/sessions` answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct BackupSessionsStored {
    /// Session entries in the backup now.
    pub total: u64,
}

/// `GET /keys/backup/sessions` answer: one page, ordered by (conversation, session id).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct BackupSessionPage {
    pub sessions: Vec<BackupSessionView>,
    /// Pass as `after` (with the same `conversation`) for the next page; absent on the last.
    pub next_after: Option<String>,
}

/// `POST /uploads` body: start a resumable upload of one client-encrypted file into a
/// conversation the caller is a member of.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct UploadCreate {
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Uuid))]
    pub conversation: ConversationId,
    /// The exact number of bytes that will be uploaded (the encrypted length), 1..=max_file_bytes.
    pub size: u64,
    /// The declared type, checked against the server's allow-list before any byte is stored.
    pub content_type: String,
}

/// An upload in progress (`POST /uploads` answer).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct UploadView {
    /// The upload's id, which is also the finished file's id.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Uuid))]
    pub upload_id: MessageId,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Uuid))]
    pub conversation: ConversationId,
    pub size: u64,
    pub content_type: String,
    /// Bytes durably received so far (the next PATCH's `Upload-Offset`).
    pub offset: u64,
    /// The largest body one PATCH may carry.
    pub max_chunk_bytes: u64,
    /// When the upload is deleted if no byte arrives before (Unix ms; each PATCH moves it).
    pub expires_ms: u64,
}

/// A finished upload (`POST /uploads/{id}/finish` answer, and one entry of `FileList`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct FileView {
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Uuid))]
    pub file_id: MessageId,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Uuid))]
    pub conversation: ConversationId,
    pub size: u64,
    pub content_type: String,
    pub created_ms: u64,
}

/// `GET /conversations/{id}/files`: the conversation's files that a message references.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct FileList {
    pub files: Vec<FileView>,
}

/// `POST /files/{id}/url` answer: a short-lived download URL bound to the file and the caller.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct FileUrl {
    /// Path and query, relative to the server (`/api/v1/files/{id}/content?u=&e=&s=`).
    pub url: String,
    /// Unix ms after which the URL gets 403.
    pub expires_ms: u64,
}
