//! The sender's side: a fresh key per file, chunks encrypted by index.

use chacha20poly1305::aead::generic_array::GenericArray;
use chacha20poly1305::aead::stream::{NewStream, StreamBE32, StreamPrimitive};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305};
use sha2::{Digest, Sha256};
use zeroize::Zeroize;

use super::FileError;
use super::layout::{FORMAT_VERSION, HEADER_LEN, Layout, NONCE_PREFIX_LEN};

/// The STREAM primitive of format v1.
pub(crate) type Stream = StreamBE32<XChaCha20Poly1305>;

/// `version ‖ nonce prefix`.
pub(crate) fn header_of(nonce_prefix: &[u8; NONCE_PREFIX_LEN]) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[0] = FORMAT_VERSION;
    header[1..].copy_from_slice(nonce_prefix);
    header
}

pub(crate) fn stream(key: &[u8; 32], nonce_prefix: &[u8; NONCE_PREFIX_LEN]) -> Stream {
    let aead = XChaCha20Poly1305::new(GenericArray::from_slice(key));
    Stream::from_aead(aead, GenericArray::from_slice(nonce_prefix))
}

/// The secret of one file: a random 32-byte key and a random 19-byte nonce prefix. Only the
/// key travels (inside the end-to-end encrypted message); the prefix is in the object header.
#[derive(Clone)]
pub struct FileKey {
    key: [u8; 32],
    nonce_prefix: [u8; NONCE_PREFIX_LEN],
}

impl Drop for FileKey {
    fn drop(&mut self) {
        self.key.zeroize();
        self.nonce_prefix.zeroize();
    }
}

impl std::fmt::Debug for FileKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileKey(..)")
    }
}

impl FileKey {
    /// A fresh key and nonce prefix from the platform's CSPRNG (the browser's
    /// `crypto.getRandomValues` on wasm32).
    pub fn generate() -> Result<FileKey, FileError> {
        let mut key = [0u8; 32];
        let mut nonce_prefix = [0u8; NONCE_PREFIX_LEN];
        getrandom::fill(&mut key).map_err(|e| FileError::Random(e.to_string()))?;
        getrandom::fill(&mut nonce_prefix).map_err(|e| FileError::Random(e.to_string()))?;
        Ok(FileKey { key, nonce_prefix })
    }

    /// A key from its parts (tests, fixtures, a resumed upload that kept them).
    pub fn from_parts(key: [u8; 32], nonce_prefix: [u8; NONCE_PREFIX_LEN]) -> FileKey {
        FileKey { key, nonce_prefix }
    }

    pub fn key_bytes(&self) -> &[u8; 32] {
        &self.key
    }

    pub fn nonce_prefix(&self) -> &[u8; NONCE_PREFIX_LEN] {
        &self.nonce_prefix
    }

    /// The 20 header bytes every object of this key starts with.
    pub fn header(&self) -> [u8; HEADER_LEN] {
        header_of(&self.nonce_prefix)
    }

    /// Encrypts chunk `index` of a `size`-byte file whose bytes in that chunk are `file_bytes`
    /// (exactly [`Layout::chunk_file_range`]: shorter than 64 KiB where the file ends, empty
    /// for a chunk of padding only); the zero padding is added here. Deterministic, so a
    /// resumed upload re-encrypts any chunk to the same bytes.
    pub fn encrypt_chunk(
        &self,
        size: u64,
        index: u64,
        file_bytes: &[u8],
    ) -> Result<Vec<u8>, FileError> {
        encrypt_chunk_with(
            &stream(&self.key, &self.nonce_prefix),
            &self.header(),
            &Layout::new(size)?,
            index,
            file_bytes,
        )
    }
}

fn encrypt_chunk_with(
    stream: &Stream,
    header: &[u8; HEADER_LEN],
    layout: &Layout,
    index: u64,
    file_bytes: &[u8],
) -> Result<Vec<u8>, FileError> {
    let position = layout.position(index)?;
    let range = layout.chunk_file_range(index);
    let expected = (range.end - range.start) as usize;
    if file_bytes.len() != expected {
        return Err(FileError::ChunkLength {
            index,
            expected,
            got: file_bytes.len(),
        });
    }
    let padded = layout.chunk_padded_len(index);
    let mut buffer = Vec::with_capacity(layout.chunk_cipher_len(index));
    buffer.extend_from_slice(file_bytes);
    buffer.resize(padded, 0);
    stream
        .encrypt_in_place(position, layout.is_last(index), header, &mut buffer)
        .map_err(|_| FileError::Encrypt)?;
    Ok(buffer)
}

/// Encrypts one file chunk by chunk. Chunks may come in any order and any number of times
/// (an upload resumed from the server's offset re-encrypts from that chunk); the SHA-256 of
/// the file is fed by the first in-order pass, so [`FileEncryptor::digest`] is known once
/// every chunk was encrypted once, in order, from chunk 0.
pub struct FileEncryptor {
    key: FileKey,
    stream: Stream,
    layout: Layout,
    hasher: Sha256,
    /// Chunks whose file bytes went into `hasher` (always the prefix 0..hashed).
    hashed: u64,
}

impl std::fmt::Debug for FileEncryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileEncryptor")
            .field("layout", &self.layout)
            .field("hashed", &self.hashed)
            .finish_non_exhaustive()
    }
}

impl FileEncryptor {
    /// An encryptor for a `size`-byte file under a fresh key.
    pub fn generate(size: u64) -> Result<FileEncryptor, FileError> {
        FileEncryptor::new(FileKey::generate()?, size)
    }

    pub fn new(key: FileKey, size: u64) -> Result<FileEncryptor, FileError> {
        let layout = Layout::new(size)?;
        let stream = stream(&key.key, &key.nonce_prefix);
        Ok(FileEncryptor {
            key,
            stream,
            layout,
            hasher: Sha256::new(),
            hashed: 0,
        })
    }

    pub fn key(&self) -> &FileKey {
        &self.key
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn header(&self) -> [u8; HEADER_LEN] {
        self.key.header()
    }

    /// Encrypts chunk `index` (see [`FileKey::encrypt_chunk`] for what `file_bytes` is).
    pub fn encrypt_chunk(&mut self, index: u64, file_bytes: &[u8]) -> Result<Vec<u8>, FileError> {
        let chunk = encrypt_chunk_with(
            &self.stream,
            &self.key.header(),
            &self.layout,
            index,
            file_bytes,
        )?;
        if index == self.hashed {
            self.hasher.update(file_bytes);
            self.hashed += 1;
        }
        Ok(chunk)
    }

    /// The chunks the in-order hash pass has covered (encrypt chunk `hashed_chunks()` next to
    /// advance it).
    pub fn hashed_chunks(&self) -> u64 {
        self.hashed
    }

    /// The SHA-256 of the file, once every chunk was encrypted in order from 0.
    pub fn digest(&self) -> Option<[u8; 32]> {
        (self.hashed == self.layout.chunk_count()).then(|| self.hasher.clone().finalize().into())
    }
}
