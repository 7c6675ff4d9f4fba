//! What a file message says (inside the end-to-end encryption) and what the server is told
//! about it (the Send frame's `FileRef`).

use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use tern_wire::ids::MessageId;
use tern_wire::msg::FileRef;

use super::FileError;
use super::layout::{MAX_FILE_SIZE, encrypted_len};

/// The app content type of a file message in the outbox (and of a decrypted one): its payload
/// is the JSON [`FileBody`]. Inside the encryption it becomes the binary `Body::File`; the
/// server only ever sees `e2e.megolm.v2` plus the [`FileRef`] naming the upload.
pub const FILE_CONTENT_TYPE: &str = "tern.file";

/// Declared limits of a [`FileBody`]'s strings, in bytes (UTF-8). Small on purpose: they ride
/// in every member device's copy of the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileBodyLimits {
    /// A file name (no path): 255 is what common file systems allow.
    pub name: usize,
    /// A MIME type: RFC 6838 allows 127 characters for type and subtype each; one side is
    /// ample for anything real, and the server's allow-list decides anyway.
    pub mime: usize,
    /// A caption shown with the file: a paragraph, not a document.
    pub caption: usize,
}

pub const FILE_BODY_LIMITS: FileBodyLimits = FileBodyLimits {
    name: 255,
    mime: 127,
    caption: 4 * 1024,
};

/// A file attached to a message: where it is (`file_id`, the server's upload id) and
/// everything needed to decrypt and check it. Never leaves the end-to-end encryption (the
/// outbox keeps it on the sender's own disk like any message text).
///
/// JSON form (the outbox payload under [`FILE_CONTENT_TYPE`], and what the web page builds):
/// `{"file_id":"<uuid>","key":"<base64 of 32 bytes>","sha256":"<base64 of 32 bytes>",
/// "name":"a.pdf","mime":"application/pdf","size":1234,"caption":""}` (`caption` optional).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileBody {
    pub file_id: MessageId,
    #[serde(with = "b64_32")]
    pub key: [u8; 32],
    /// SHA-256 of the plaintext file (unpadded).
    #[serde(with = "b64_32")]
    pub sha256: [u8; 32],
    pub name: String,
    pub mime: String,
    /// Plaintext bytes.
    pub size: u64,
    #[serde(default)]
    pub caption: String,
}

impl std::fmt::Debug for FileBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileBody")
            .field("file_id", &self.file_id)
            .field("name", &self.name)
            .field("mime", &self.mime)
            .field("size", &self.size)
            .field("caption", &self.caption)
            .finish_non_exhaustive()
    }
}

impl FileBody {
    /// Checks the declared limits ([`FILE_BODY_LIMITS`], [`MAX_FILE_SIZE`]).
    pub fn validate(&self) -> Result<(), FileError> {
        let l = FILE_BODY_LIMITS;
        for (field, len, max) in [
            ("name", self.name.len(), l.name),
            ("mime", self.mime.len(), l.mime),
            ("caption", self.caption.len(), l.caption),
        ] {
            if len > max {
                return Err(FileError::Invalid(format!(
                    "{field} is {len} bytes (max {max})"
                )));
            }
        }
        if self.size > MAX_FILE_SIZE {
            return Err(FileError::TooLarge {
                size: self.size,
                max: MAX_FILE_SIZE,
            });
        }
        Ok(())
    }

    /// The outbox payload (JSON).
    pub fn to_json(&self) -> Vec<u8> {
        // A struct of strings, numbers and fixed arrays always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses and validates the JSON form.
    pub fn from_json(json: &[u8]) -> Result<FileBody, FileError> {
        let body: FileBody =
            serde_json::from_slice(json).map_err(|e| FileError::Invalid(e.to_string()))?;
        body.validate()?;
        Ok(body)
    }

    /// Bytes of the encrypted object (what the upload declared).
    pub fn encrypted_len(&self) -> u64 {
        encrypted_len(self.size)
    }

    /// What the Send frame tells the server: the upload, its encrypted size and the type it
    /// was declared with (the server checks both against the finished upload).
    pub fn file_ref(&self) -> FileRef {
        FileRef {
            file_id: self.file_id,
            size: self.encrypted_len(),
            content_type: self.mime.clone(),
        }
    }
}

/// The files an outbox entry `(content_type, payload)` names, for its Send frame: one for a
/// valid [`FILE_CONTENT_TYPE`] entry, none otherwise.
pub fn file_refs(content_type: &str, payload: &[u8]) -> Vec<FileRef> {
    if content_type != FILE_CONTENT_TYPE {
        return Vec::new();
    }
    FileBody::from_json(payload)
        .map(|b| vec![b.file_ref()])
        .unwrap_or_default()
}

/// `[u8; 32]` as standard padded base64.
mod b64_32 {
    use super::B64;
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        let bytes = B64
            .decode(text.as_bytes())
            .map_err(serde::de::Error::custom)?;
        bytes
            .try_into()
            .map_err(|_| serde::de::Error::custom("expected 32 bytes"))
    }
}
