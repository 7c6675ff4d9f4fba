//! Byte formats of encrypted messages, key shares and the plaintext content structure.
//!
//! * Message: `content_type = "e2e.megolm.v1"`, payload = JSON
//!   `{"v":1,"session_id":"<vodozemac session id>","ciphertext":"<base64 MegolmMessage>"}`.
//!   JSON (not a compact binary) so a debugging human and the browser can read the envelope;
//!   the ciphertext dominates the size either way.
//! * Plaintext inside: [`Content`], JSON `{"v":1,"conversation":"<uuid>","sender_user":"<uuid>",
//!   "sender_device":"<uuid>","body":{"type":"text","text":".."}}`. On decrypt the
//!   conversation and sender fields must equal the server-asserted message fields.
//! * Key share payload (to one device, carried by the server's per-device inbox):
//!   byte 0 = kind. `0x01` = Olm: byte 1 = Olm message type (0 pre-key, 1 normal), the rest is
//!   the Olm ciphertext of a [`SharePlaintext`] JSON. `0x02` = withheld: the rest is a plaintext
//!   JSON [`Withheld`] (not secret: it only says "you will not get this key, because ...").

use serde::{Deserialize, Serialize};
use tern_wire::ids::{ConversationId, DeviceId, UserId};

/// The server-visible content type of an end-to-end encrypted message.
pub const MEGOLM_CONTENT_TYPE: &str = "e2e.megolm.v1";
/// The only content/payload version this core writes and reads.
pub const FORMAT_VERSION: u32 = 1;

pub(crate) const SHARE_KIND_OLM: u8 = 0x01;
pub(crate) const SHARE_KIND_WITHHELD: u8 = 0x02;

/// The message payload envelope.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct MegolmPayload {
    pub v: u32,
    pub session_id: String,
    pub ciphertext: String,
}

/// Versioned plaintext content of a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Content {
    pub v: u32,
    pub conversation: ConversationId,
    pub sender_user: UserId,
    pub sender_device: DeviceId,
    pub body: Body,
}

/// What a message says. Only `text` exists now; the type names `file` (an encrypted file
/// reference with its key), `edit` (replaces an earlier message by id) and `reply` (quotes a
/// message id) are reserved for the next versions. A body type this core does not know is
/// reported as [`super::Undecryptable::Unsupported`], never shown as empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Body {
    Text {
        text: String,
    },
    /// Any other application content: its own content type (hidden from the server, which
    /// only sees `e2e.megolm.v1`) and bytes, base64 in the JSON.
    Data {
        content_type: String,
        data: String,
    },
}

impl Body {
    pub fn text(text: impl Into<String>) -> Self {
        Body::Text { text: text.into() }
    }
}

/// The Megolm session id of an encrypted message payload (to park a message until its key
/// arrives), or `None` when the payload is not a Megolm envelope.
pub fn session_id_of(payload: &[u8]) -> Option<String> {
    let p: MegolmPayload = serde_json::from_slice(payload).ok()?;
    (p.v == FORMAT_VERSION).then_some(p.session_id)
}

/// The secret inside an Olm key share.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum SharePlaintext {
    RoomKey {
        v: u32,
        conversation: ConversationId,
        session_id: String,
        /// vodozemac `SessionKey`, base64.
        session_key: String,
        sender_user: UserId,
        sender_device: DeviceId,
        /// The intended recipient: a share re-encrypted to another device by a malicious
        /// member is refused.
        recipient_user: UserId,
        recipient_device: DeviceId,
        first_index: u32,
    },
}

/// A plaintext "you will not get this key" notice.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename = "withheld")]
pub(crate) struct Withheld {
    pub conversation: ConversationId,
    pub session_id: String,
    pub reason: String,
}
