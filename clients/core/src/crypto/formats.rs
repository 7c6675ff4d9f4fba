//! Byte formats of encrypted messages, key shares and the plaintext content structure.
//!
//! * Message v2 (written): `content_type = "e2e.megolm.v2"`, payload = binary
//!   `[0x02][32-byte session id][MegolmMessage bytes]`. The session id is the raw Ed25519
//!   public key whose unpadded base64 vodozemac calls the session id (anything that does not
//!   decode to exactly 32 bytes and re-encode to the same string is refused). Plaintext
//!   inside: [`CONTENT_V2`] then the postcard encoding of (conversation, sender user, sender
//!   device as 16 raw bytes each, [`Body`] as a varint tag + its fields), see
//!   [`encode_content_v2`].
//! * Message v1 (still read, for stored history; written only by tests):
//!   `content_type = "e2e.megolm.v1"`, payload = JSON
//!   `{"v":1,"session_id":"<vodozemac session id>","ciphertext":"<base64 MegolmMessage>"}`,
//!   plaintext = JSON [`Content`] `{"v":1,"conversation":"<uuid>","sender_user":"<uuid>",
//!   "sender_device":"<uuid>","body":{"type":"text","text":".."}}`.
//!
//!   Why binary now: every byte of the payload is stored, fsynced and fanned out by the
//!   server to every member device, so the envelope, not the cipher, set the server's cost per
//!   encrypted message. v1 turned a 128-byte text into 634 bytes (JSON content with three
//!   UUID strings inside the encryption, then the Megolm message as base64 inside a JSON
//!   envelope; `Data` bodies base64 once more); v2 carries it in 303 (the Megolm message for
//!   the padded 180-byte content plus 33 bytes, see `envelope_tests.rs`), so the ciphertext
//!   dominates only now that the envelope is compact. A human debugging an envelope uses
//!   [`session_id_of`] instead of reading JSON.
//!
//!   On decrypt the conversation and sender fields of the content must equal the
//!   server-asserted message fields (both versions), and the content version must match the
//!   envelope version (a v1 envelope never carries v2 content or back).
//! * Key share payload (to one device, carried by the server's per-device inbox):
//!   byte 0 = kind. `0x01` = Olm: byte 1 = Olm message type (0 pre-key, 1 normal), the rest is
//!   the Olm ciphertext of a [`SharePlaintext`] JSON. `0x02` = withheld: the rest is a plaintext
//!   JSON [`Withheld`] (not secret: it only says "you will not get this key, because ...").
//!   Key shares are per device and rare (once per session and device), so they stay JSON.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD as B64, STANDARD_NO_PAD as B64_NO_PAD};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use tern_wire::ids::{ConversationId, DeviceId, MessageId, UserId};
use vodozemac::megolm::MegolmMessage;

use crate::files::{FILE_CONTENT_TYPE, FileBody};

use super::Undecryptable;

/// The content type this core writes for an end-to-end encrypted message (binary v2).
pub const MEGOLM_CONTENT_TYPE: &str = "e2e.megolm.v2";
/// The content type of the first (JSON) format: still decrypted, never written.
pub const MEGOLM_CONTENT_TYPE_V1: &str = "e2e.megolm.v1";
/// The version of the key share plaintext and of the v1 message JSON (envelope and content).
pub const FORMAT_VERSION: u32 = 1;
/// First byte of a v2 message payload (checked against the content type: a mismatch is
/// `Tampered`, a future format gets its own content type).
pub const ENVELOPE_V2: u8 = 0x02;
/// First byte of a v2 plaintext content (inside the Megolm encryption).
pub const CONTENT_V2: u8 = 0x02;
/// Bytes of a v2 payload before the Megolm message: the version byte and the session id.
pub const ENVELOPE_V2_HEADER_LEN: usize = 1 + SESSION_ID_LEN;
/// A Megolm session id is an Ed25519 public key.
const SESSION_ID_LEN: usize = 32;

pub(crate) const SHARE_KIND_OLM: u8 = 0x01;
pub(crate) const SHARE_KIND_WITHHELD: u8 = 0x02;

/// True for every content type this core decrypts (v1 history and v2): use it, not an
/// equality with [`MEGOLM_CONTENT_TYPE`], wherever a message is recognised as encrypted.
pub fn is_encrypted_content_type(content_type: &str) -> bool {
    content_type == MEGOLM_CONTENT_TYPE || content_type == MEGOLM_CONTENT_TYPE_V1
}

/// The message envelope formats. v1 is decoded for history; only tests write it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WireFormat {
    #[cfg(test)]
    V1,
    V2,
}

impl WireFormat {
    pub(crate) fn content_type(self) -> &'static str {
        match self {
            #[cfg(test)]
            WireFormat::V1 => MEGOLM_CONTENT_TYPE_V1,
            WireFormat::V2 => MEGOLM_CONTENT_TYPE,
        }
    }
}

/// The v1 JSON message payload envelope.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct MegolmPayload {
    pub v: u32,
    pub session_id: String,
    pub ciphertext: String,
}

/// A message payload taken apart (either version).
pub(crate) struct Envelope {
    /// Which version it came in: the content inside must be of the same one.
    pub version: u32,
    pub session_id: String,
    pub megolm: MegolmMessage,
}

/// The 32 raw bytes of a vodozemac session id, or `None` when it is not exactly the unpadded
/// base64 of 32 bytes.
pub(crate) fn session_id_bytes(session_id: &str) -> Option<[u8; SESSION_ID_LEN]> {
    let bytes = B64_NO_PAD.decode(session_id).ok()?;
    let raw: [u8; SESSION_ID_LEN] = bytes.try_into().ok()?;
    // Canonical only: one session id, one byte string (no trailing-bit variants).
    (B64_NO_PAD.encode(raw) == session_id).then_some(raw)
}

/// Builds a message payload in `format` (v2 refuses a session id that is not 32 bytes).
pub(crate) fn encode_envelope(
    format: WireFormat,
    session_id: &str,
    megolm: &MegolmMessage,
) -> Result<Vec<u8>, super::CryptoError> {
    match format {
        #[cfg(test)]
        WireFormat::V1 => serde_json::to_vec(&MegolmPayload {
            v: FORMAT_VERSION,
            session_id: session_id.to_owned(),
            ciphertext: B64.encode(megolm.to_bytes()),
        })
        .map_err(|e| super::CryptoError::Serde(e.to_string())),
        WireFormat::V2 => encode_envelope_v2(session_id, &megolm.to_bytes()),
    }
}

/// `[ENVELOPE_V2][session id, 32 bytes][megolm bytes]`.
pub(crate) fn encode_envelope_v2(
    session_id: &str,
    megolm_bytes: &[u8],
) -> Result<Vec<u8>, super::CryptoError> {
    let raw = session_id_bytes(session_id).ok_or_else(|| {
        super::CryptoError::Serde(format!(
            "session id {session_id:?} is not the base64 of {SESSION_ID_LEN} bytes"
        ))
    })?;
    let mut payload = Vec::with_capacity(ENVELOPE_V2_HEADER_LEN + megolm_bytes.len());
    payload.push(ENVELOPE_V2);
    payload.extend_from_slice(&raw);
    payload.extend_from_slice(megolm_bytes);
    Ok(payload)
}

/// Takes a message payload apart. Unknown content type or v1 version: `Unsupported`; bytes
/// that do not parse (truncated, garbage, wrong version byte): `Tampered`.
pub(crate) fn decode_envelope(
    content_type: &str,
    payload: &[u8],
) -> Result<Envelope, Undecryptable> {
    if content_type == MEGOLM_CONTENT_TYPE {
        let (session_id, megolm) = split_v2(payload).ok_or(Undecryptable::Tampered)?;
        let megolm = MegolmMessage::from_bytes(megolm).map_err(|_| Undecryptable::Tampered)?;
        Ok(Envelope {
            version: 2,
            session_id,
            megolm,
        })
    } else if content_type == MEGOLM_CONTENT_TYPE_V1 {
        let envelope: MegolmPayload =
            serde_json::from_slice(payload).map_err(|_| Undecryptable::Tampered)?;
        if envelope.v != FORMAT_VERSION {
            return Err(Undecryptable::Unsupported);
        }
        let megolm = B64
            .decode(&envelope.ciphertext)
            .ok()
            .and_then(|b| MegolmMessage::from_bytes(&b).ok())
            .ok_or(Undecryptable::Tampered)?;
        Ok(Envelope {
            version: FORMAT_VERSION,
            session_id: envelope.session_id,
            megolm,
        })
    } else {
        Err(Undecryptable::Unsupported)
    }
}

/// (session id, Megolm bytes) of a v2 payload.
fn split_v2(payload: &[u8]) -> Option<(String, &[u8])> {
    let (&version, rest) = payload.split_first()?;
    if version != ENVELOPE_V2 || rest.len() <= SESSION_ID_LEN {
        return None;
    }
    let (session_id, megolm) = rest.split_at(SESSION_ID_LEN);
    Some((B64_NO_PAD.encode(session_id), megolm))
}

/// The Megolm session id of an encrypted message payload, v1 or v2 (to park a message until
/// its key arrives), or `None` when the payload is not a Megolm envelope.
pub fn session_id_of(payload: &[u8]) -> Option<String> {
    if payload.first() == Some(&ENVELOPE_V2) {
        return split_v2(payload).map(|(session_id, _)| session_id);
    }
    let p: MegolmPayload = serde_json::from_slice(payload).ok()?;
    (p.v == FORMAT_VERSION).then_some(p.session_id)
}

/// Versioned plaintext content of a message (`v` = 1 for JSON content, 2 for binary).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Content {
    pub v: u32,
    pub conversation: ConversationId,
    pub sender_user: UserId,
    pub sender_device: DeviceId,
    pub body: Body,
}

/// What a message says: `text`, `data`, or `file` (an uploaded encrypted file with its key,
/// hash, name, type and size, see [`crate::files`]). `edit` (replaces an earlier message by
/// id) and `reply` (quotes a message id) are reserved for the next versions (v2 body tags 3,
/// 4). A body type this core does not know is reported as
/// [`super::Undecryptable::Unsupported`], never shown as empty.
///
/// The serde derive is the v1 JSON form; the v2 binary form is [`BodyV2`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Body {
    Text {
        text: String,
    },
    /// Any other application content: its own content type (hidden from the server, which
    /// only sees `e2e.megolm.v2`) and its bytes (raw in v2, base64 in the v1 JSON).
    Data {
        content_type: String,
        #[serde(with = "base64_bytes")]
        data: Vec<u8>,
    },
    /// A shared file (v2 tag 2). Its JSON form is the only one apps see: content type
    /// [`FILE_CONTENT_TYPE`] with the [`FileBody`] JSON as payload ([`Body::to_content`]).
    File(FileBody),
}

/// Content type of plain text bodies, as apps, the CLI and the web client use it.
pub const TEXT_CONTENT_TYPE: &str = "text";

impl Body {
    pub fn text(text: impl Into<String>) -> Self {
        Body::Text { text: text.into() }
    }

    /// The body an app's `(content_type, payload)` (an outbox entry) becomes inside the
    /// encryption: [`TEXT_CONTENT_TYPE`] with UTF-8 bytes is text, [`FILE_CONTENT_TYPE`]
    /// with a valid [`FileBody`] JSON is a file, anything else is data under its own content
    /// type (which the server never sees).
    pub fn from_content(content_type: &str, payload: &[u8]) -> Self {
        if content_type == FILE_CONTENT_TYPE
            && let Ok(file) = FileBody::from_json(payload)
        {
            return Body::File(file);
        }
        match (content_type, std::str::from_utf8(payload)) {
            (TEXT_CONTENT_TYPE, Ok(text)) => Body::text(text),
            _ => Body::Data {
                content_type: content_type.to_string(),
                data: payload.to_vec(),
            },
        }
    }

    /// The `(content_type, payload)` of a decrypted body (the inverse of
    /// [`Body::from_content`]).
    pub fn to_content(&self) -> (String, Vec<u8>) {
        match self {
            Body::Text { text } => (TEXT_CONTENT_TYPE.to_string(), text.as_bytes().to_vec()),
            Body::Data { content_type, data } => (content_type.clone(), data.clone()),
            Body::File(file) => (FILE_CONTENT_TYPE.to_string(), file.to_json()),
        }
    }
}

/// `Vec<u8>` as a base64 string (the v1 JSON form of `Body::Data`).
mod base64_bytes {
    use super::B64;
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        B64.decode(text.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

/// The v2 binary content after its version byte (postcard: ids as 16 raw bytes, the body as
/// a varint variant tag then its fields, strings and bytes as varint length + bytes).
/// Field and variant ORDER is the format: append new body variants at the end only.
#[derive(Serialize, Deserialize)]
struct ContentV2<'a> {
    conversation: [u8; 16],
    sender_user: [u8; 16],
    sender_device: [u8; 16],
    #[serde(borrow)]
    body: BodyV2<'a>,
}

/// Body tags of v2: 0 text, 1 data, 2 file. Reserved (not decodable yet, so `Unsupported`):
/// 3 edit, 4 reply.
#[derive(Serialize, Deserialize)]
enum BodyV2<'a> {
    Text {
        #[serde(borrow)]
        text: Cow<'a, str>,
    },
    Data {
        #[serde(borrow)]
        content_type: Cow<'a, str>,
        #[serde(borrow)]
        data: Cow<'a, [u8]>,
    },
    /// Fixed arrays are raw bytes in postcard, the size a varint.
    File {
        file_id: [u8; 16],
        key: [u8; 32],
        sha256: [u8; 32],
        #[serde(borrow)]
        name: Cow<'a, str>,
        #[serde(borrow)]
        mime: Cow<'a, str>,
        size: u64,
        #[serde(borrow)]
        caption: Cow<'a, str>,
    },
}

/// Encodes `content` as v2 plaintext: `[CONTENT_V2]` + postcard([`ContentV2`]). (`content.v`
/// is not read: this always writes v2.)
pub(crate) fn encode_content_v2(content: &Content) -> Result<Vec<u8>, super::CryptoError> {
    let body = match &content.body {
        Body::Text { text } => BodyV2::Text {
            text: text.as_str().into(),
        },
        Body::Data { content_type, data } => BodyV2::Data {
            content_type: content_type.as_str().into(),
            data: data.as_slice().into(),
        },
        Body::File(f) => BodyV2::File {
            file_id: f.file_id.to_be_bytes(),
            key: f.key,
            sha256: f.sha256,
            name: f.name.as_str().into(),
            mime: f.mime.as_str().into(),
            size: f.size,
            caption: f.caption.as_str().into(),
        },
    };
    let v2 = ContentV2 {
        conversation: content.conversation.to_be_bytes(),
        sender_user: content.sender_user.to_be_bytes(),
        sender_device: content.sender_device.to_be_bytes(),
        body,
    };
    postcard::to_extend(&v2, vec![CONTENT_V2]).map_err(|e| super::CryptoError::Serde(e.to_string()))
}

/// Decodes v2 plaintext. Wrong version byte, an unknown or reserved body tag, bytes that do
/// not parse, or bytes left over: `Unsupported` (the plaintext is authentic, so whoever wrote
/// it had the key: it is a format this core does not know, not a server's tampering).
pub(crate) fn decode_content_v2(plaintext: &[u8]) -> Result<Content, Undecryptable> {
    let Some((&CONTENT_V2, rest)) = plaintext.split_first() else {
        return Err(Undecryptable::Unsupported);
    };
    let (v2, left): (ContentV2<'_>, _) =
        postcard::take_from_bytes(rest).map_err(|_| Undecryptable::Unsupported)?;
    if !left.is_empty() {
        return Err(Undecryptable::Unsupported);
    }
    let body = match v2.body {
        BodyV2::Text { text } => Body::Text {
            text: text.into_owned(),
        },
        BodyV2::Data { content_type, data } => Body::Data {
            content_type: content_type.into_owned(),
            data: data.into_owned(),
        },
        BodyV2::File {
            file_id,
            key,
            sha256,
            name,
            mime,
            size,
            caption,
        } => {
            let file = FileBody {
                file_id: MessageId::from_be_bytes(file_id),
                key,
                sha256,
                name: name.into_owned(),
                mime: mime.into_owned(),
                size,
                caption: caption.into_owned(),
            };
            // Past the declared limits: not a body this version writes.
            file.validate().map_err(|_| Undecryptable::Unsupported)?;
            Body::File(file)
        }
    };
    Ok(Content {
        v: 2,
        conversation: ConversationId::from_be_bytes(v2.conversation),
        sender_user: UserId::from_be_bytes(v2.sender_user),
        sender_device: DeviceId::from_be_bytes(v2.sender_device),
        body,
    })
}

/// Decodes v1 (JSON) plaintext: `Unsupported` unless it is JSON with `"v":1` and a known body.
pub(crate) fn decode_content_v1(plaintext: &[u8]) -> Result<Content, Undecryptable> {
    let value: serde_json::Value =
        serde_json::from_slice(plaintext).map_err(|_| Undecryptable::Unsupported)?;
    if value.get("v").and_then(|v| v.as_u64()) != Some(u64::from(FORMAT_VERSION)) {
        return Err(Undecryptable::Unsupported);
    }
    serde_json::from_value(value).map_err(|_| Undecryptable::Unsupported)
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
