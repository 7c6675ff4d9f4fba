//! The receiver's side: ciphertext in pieces of any size (as it streams from HTTP), every
//! chunk authenticated as soon as it is complete, truncation and trailing bytes detected.

use chacha20poly1305::aead::stream::StreamPrimitive;
use sha2::{Digest, Sha256};
use zeroize::Zeroize;

use super::FileError;
use super::encrypt::{Stream, stream};
use super::layout::{FORMAT_VERSION, HEADER_LEN, Layout, NONCE_PREFIX_LEN};

/// Decrypts one file of a known size, key and hash (all three from the end-to-end encrypted
/// [`super::FileBody`]): push ciphertext as it arrives, write out the plaintext it returns,
/// and trust that output only once [`FileDecryptor::finish`] succeeded (it checks the last
/// chunk was there and the SHA-256). After any error every further call fails too.
pub struct FileDecryptor {
    key: [u8; 32],
    layout: Layout,
    sha256: [u8; 32],
    /// The header while it is being collected, then the AAD of every chunk.
    header: Vec<u8>,
    stream: Option<Stream>,
    /// The chunk being collected (at most one full encrypted chunk).
    chunk: Vec<u8>,
    /// Chunks authenticated so far.
    index: u64,
    hasher: Sha256,
    /// Ciphertext bytes taken (header included): where a resumed download continues.
    consumed: u64,
    failed: bool,
}

impl Drop for FileDecryptor {
    fn drop(&mut self) {
        self.key.zeroize();
    }
}

impl std::fmt::Debug for FileDecryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileDecryptor")
            .field("layout", &self.layout)
            .field("index", &self.index)
            .field("consumed", &self.consumed)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl FileDecryptor {
    /// A decryptor for a file of `size` plaintext bytes whose SHA-256 is `sha256`.
    pub fn new(key: [u8; 32], size: u64, sha256: [u8; 32]) -> Result<FileDecryptor, FileError> {
        let layout = Layout::new(size)?;
        Ok(FileDecryptor {
            key,
            layout,
            sha256,
            header: Vec::with_capacity(HEADER_LEN),
            stream: None,
            chunk: Vec::with_capacity(layout.chunk_cipher_len(0)),
            index: 0,
            hasher: Sha256::new(),
            consumed: 0,
            failed: false,
        })
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Ciphertext bytes taken so far: a download that broke off asks for the rest from here
    /// (an HTTP Range request) and keeps pushing into the same decryptor.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// Takes the next ciphertext bytes; returns the plaintext of every chunk they completed
    /// (authenticated, padding checked and removed). Holds at most one chunk (64 KiB + 16)
    /// besides the output.
    pub fn push(&mut self, mut bytes: &[u8]) -> Result<Vec<u8>, FileError> {
        if self.failed {
            return Err(FileError::Failed);
        }
        let mut out = Vec::new();
        while !bytes.is_empty() {
            if let Err(e) = self.step(&mut bytes, &mut out) {
                self.failed = true;
                return Err(e);
            }
        }
        Ok(out)
    }

    /// Consumes a prefix of `bytes` (the header, or up to the end of the current chunk).
    fn step(&mut self, bytes: &mut &[u8], out: &mut Vec<u8>) -> Result<(), FileError> {
        if self.stream.is_none() {
            let take = (HEADER_LEN - self.header.len()).min(bytes.len());
            self.header.extend_from_slice(&bytes[..take]);
            self.advance(bytes, take);
            if self.header.len() == HEADER_LEN {
                if self.header[0] != FORMAT_VERSION {
                    return Err(FileError::UnsupportedVersion(self.header[0]));
                }
                let mut prefix = [0u8; NONCE_PREFIX_LEN];
                prefix.copy_from_slice(&self.header[1..]);
                self.stream = Some(stream(&self.key, &prefix));
            }
            return Ok(());
        }
        if self.index == self.layout.chunk_count() {
            return Err(FileError::TrailingBytes);
        }
        let want = self.layout.chunk_cipher_len(self.index);
        let take = (want - self.chunk.len()).min(bytes.len());
        self.chunk.extend_from_slice(&bytes[..take]);
        self.advance(bytes, take);
        if self.chunk.len() == want {
            self.open_chunk(out)?;
        }
        Ok(())
    }

    fn advance(&mut self, bytes: &mut &[u8], n: usize) {
        *bytes = &bytes[n..];
        self.consumed += n as u64;
    }

    /// Authenticates the collected chunk, checks its padding, hashes and emits its file bytes.
    fn open_chunk(&mut self, out: &mut Vec<u8>) -> Result<(), FileError> {
        let index = self.index;
        let position = self.layout.position(index)?;
        let stream = self.stream.as_ref().ok_or(FileError::Failed)?;
        stream
            .decrypt_in_place(
                position,
                self.layout.is_last(index),
                &self.header,
                &mut self.chunk,
            )
            .map_err(|_| FileError::Tampered { chunk: index })?;
        let range = self.layout.chunk_file_range(index);
        let file_len = (range.end - range.start) as usize;
        if self.chunk[file_len..].iter().any(|&b| b != 0) {
            return Err(FileError::BadPadding);
        }
        self.hasher.update(&self.chunk[..file_len]);
        out.extend_from_slice(&self.chunk[..file_len]);
        self.chunk.clear();
        self.index += 1;
        Ok(())
    }

    /// The end of the ciphertext: fails when the object stopped short (no last chunk, a chunk
    /// cut off, even a missing header) or the plaintext's SHA-256 is not the one the sender
    /// put into the end-to-end encrypted message.
    pub fn finish(mut self) -> Result<(), FileError> {
        if self.failed {
            return Err(FileError::Failed);
        }
        if self.index != self.layout.chunk_count() {
            return Err(FileError::Truncated {
                got: self.consumed,
                expected: self.layout.encrypted_len(),
            });
        }
        let digest: [u8; 32] = std::mem::take(&mut self.hasher).finalize().into();
        if digest != self.sha256 {
            return Err(FileError::HashMismatch);
        }
        Ok(())
    }
}
