//! Client-side encryption of shared files (format v1). Sans-IO: bytes in, bytes out; the SDK
//! and the web page do the reading, uploading and downloading.
//!
//! ```text
//! object  = header ‖ chunk 0 ‖ chunk 1 ‖ … ‖ chunk n-1
//! header  = 0x01 (version) ‖ nonce prefix (19 random bytes)            20 bytes, the AAD of every chunk
//! chunk i = XChaCha20-Poly1305(key, nonce = prefix ‖ i as u32 BE ‖ last flag, AAD = header,
//!                              padded plaintext[i*64 KiB ..][..64 KiB]) ‖ 16-byte tag
//! padded plaintext = file ‖ zeros up to padded_len(size)  (Padmé, at least 256 bytes)
//! ```
//!
//! The chunk construction is RustCrypto's STREAM (`aead::stream::StreamBE32`): the counter
//! in the nonce makes reordering or dropping a chunk fail authentication, the last-chunk flag
//! makes a cut after any full chunk detectable, and the header as AAD binds every chunk to its
//! version and nonce prefix. A fresh random key per file (32 bytes) travels with the file's
//! name, type, size and SHA-256 only inside the end-to-end encrypted message ([`FileBody`]).
//! The server sees the encrypted length ([`encrypted_len`]), which reveals only the Padmé
//! bucket of the size.
//!
//! Receiving: [`FileDecryptor`] takes the object in pieces of any size, authenticates each
//! chunk as soon as it is complete, checks the padding is zero, and at
//! [`FileDecryptor::finish`] that nothing is missing and the SHA-256 matches. Sending:
//! [`FileEncryptor`] encrypts chunks by index (a resumed upload starts again from any chunk)
//! and hashes the file on its in-order pass.

mod body;
mod decrypt;
mod encrypt;
mod layout;
#[cfg(test)]
mod tests;

pub use body::{FILE_BODY_LIMITS, FILE_CONTENT_TYPE, FileBody, FileBodyLimits, file_refs};
pub use decrypt::FileDecryptor;
pub use encrypt::{FileEncryptor, FileKey};
pub use layout::{
    CHUNK_CIPHERTEXT_LEN, CHUNK_PLAINTEXT_LEN, FORMAT_VERSION, HEADER_LEN, Layout, MAX_FILE_SIZE,
    MIN_PADDED_LEN, NONCE_PREFIX_LEN, TAG_LEN, chunk_count, encrypted_len, padded_len,
};

/// Why a file could not be encrypted or did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    #[error("file of {size} bytes is above the format's limit of {max}")]
    TooLarge { size: u64, max: u64 },
    #[error("encrypted file format version {0} is not supported")]
    UnsupportedVersion(u8),
    /// A chunk failed authentication: modified, reordered, moved from another file, the
    /// header changed, or the wrong key.
    #[error("chunk {chunk} of the file failed authentication (tampered or wrong key)")]
    Tampered { chunk: u64 },
    /// The object ended before its last chunk.
    #[error("the file is truncated: {got} of {expected} encrypted bytes")]
    Truncated { got: u64, expected: u64 },
    #[error("bytes after the file's last chunk")]
    TrailingBytes,
    /// An authentic chunk whose padding is not zero: not written by a conforming sender.
    #[error("the file's padding is not zero")]
    BadPadding,
    #[error("the file's SHA-256 does not match the one in the message")]
    HashMismatch,
    #[error("chunk {index} is out of range (the file has {chunks})")]
    ChunkOutOfRange { index: u64, chunks: u64 },
    #[error("chunk {index} needs {expected} file bytes, got {got}")]
    ChunkLength {
        index: u64,
        expected: usize,
        got: usize,
    },
    #[error("encryption failed")]
    Encrypt,
    #[error("no randomness for a file key: {0}")]
    Random(String),
    #[error("invalid file description: {0}")]
    Invalid(String),
    /// A decryptor that already reported an error takes nothing more.
    #[error("the decryption already failed")]
    Failed,
}
