//! Error types of the crypto machine.

use tern_wire::ids::{ConversationId, DeviceId, UserId};

/// Failures of the machine's own operations (not of a single incoming message: those are
/// [`Undecryptable`] reasons, reported per message and never fatal).
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("the crypto state could not be opened: wrong pickle key or corrupted bytes")]
    BadPickle,
    #[error("unsupported crypto state version {0}")]
    PickleVersion(u32),
    #[error("the system random number generator failed")]
    Random,
    #[error("invalid device keys for {user}/{device}: {reason}")]
    InvalidKeys {
        user: UserId,
        device: DeviceId,
        reason: &'static str,
    },
    #[error("user {user} lists {count} devices, more than the {max} this client caches")]
    TooManyDevices {
        user: UserId,
        count: usize,
        max: usize,
    },
    #[error("conversation {conversation} has {count} members, more than {max}")]
    TooManyMembers {
        conversation: ConversationId,
        count: usize,
        max: usize,
    },
    #[error("wrong backup passphrase")]
    WrongPassphrase,
    #[error("malformed backup metadata: {0}")]
    BadBackupMeta(&'static str),
    #[error("no backup key: create or unlock a backup first")]
    NoBackup,
    #[error("content too large: {size} bytes, at most {max}")]
    TooLarge { size: usize, max: usize },
    #[error("conversation {0} was not prepared (call prepare with its members first)")]
    UnknownConversation(ConversationId),
    #[error("invalid crypto config: {0}")]
    BadConfig(&'static str),
    #[error("key derivation failed: {0}")]
    Kdf(String),
    #[error("serialization failed: {0}")]
    Serde(String),
    #[error("crypto store: {0}")]
    Store(String),
    /// A send's device lists were still stale after this many queries (a directory fault).
    #[error("device lists stay stale after repeated queries ({queries})")]
    DeviceListsStuck { queries: usize },
}

/// Why a message could not be decrypted. Never silent: the driver shows the reason and
/// retries on [`super::CryptoEvent::RoomKeyReceived`] for `NoKeyYet`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Undecryptable {
    /// The Megolm session key has not arrived (yet): wait for a key share or restore a backup.
    #[error("the key for this message has not arrived yet")]
    NoKeyYet,
    /// The sender's device told us it will not share the key, with its reason.
    #[error("the sender withheld the key: {0}")]
    Withheld(String),
    /// The key came from a device whose identity does not match the directory (or the device
    /// is unknown to the directory, or blocked).
    #[error("the key came from an untrusted or unknown device")]
    UntrustedDevice,
    /// Authentication failed: ciphertext, signature, or sender fields do not match.
    #[error("the message was tampered with")]
    Tampered,
    /// The same Megolm index was seen before with another message id.
    #[error("replayed message index")]
    Replayed,
    /// The session or the content belongs to another conversation.
    #[error("the message belongs to another conversation")]
    WrongConversation,
    /// Unknown content type, payload version or body type.
    #[error("unsupported message format")]
    Unsupported,
}
