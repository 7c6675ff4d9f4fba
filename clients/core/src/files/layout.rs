//! Sizes and offsets of the encrypted file format v1: padding, chunk boundaries, the exact
//! encrypted length. Pure arithmetic, shared by the encryptor, the decryptor, the SDK's resume
//! and the server-facing declared size.

use std::ops::Range;

use super::FileError;

/// First byte of every encrypted file object.
pub const FORMAT_VERSION: u8 = 1;
/// Bytes of the random nonce prefix: XChaCha20's 24-byte nonce minus the 5 bytes STREAM
/// (`StreamBE32`) appends (a 32-bit big-endian chunk counter and the last-chunk flag).
pub const NONCE_PREFIX_LEN: usize = 19;
/// The object header: version byte ‖ nonce prefix. Also the AAD of every chunk, so a chunk
/// cannot be moved into another file or under another version byte.
pub const HEADER_LEN: usize = 1 + NONCE_PREFIX_LEN;
/// Padded plaintext bytes per chunk (the last chunk may be shorter, never empty).
pub const CHUNK_PLAINTEXT_LEN: usize = 64 * 1024;
/// The Poly1305 tag after every chunk.
pub const TAG_LEN: usize = 16;
/// Bytes of a full encrypted chunk.
pub const CHUNK_CIPHERTEXT_LEN: usize = CHUNK_PLAINTEXT_LEN + TAG_LEN;
/// Smallest padded size: even a 1-byte file looks like 256 bytes.
pub const MIN_PADDED_LEN: u64 = 256;
/// Largest plaintext this format accepts: 1 TiB. Far above any server's upload limit and far
/// below what the 32-bit STREAM counter allows (2^32 chunks of 64 KiB = 256 TiB), so no size
/// computation here can overflow a u64.
pub const MAX_FILE_SIZE: u64 = 1 << 40;

const CHUNK: u64 = CHUNK_PLAINTEXT_LEN as u64;

/// Padmé (Nikitin et al., "Reducing Metadata Leakage from Encrypted Files and Communication
/// with PURBs", 2019): rounds `size` up so that only its top O(log log n) bits may be non-zero:
/// the padded size leaks O(log log n) bits of the size, for at most 12 % overhead. Sizes
/// below [`MIN_PADDED_LEN`] are padded to it. Valid for sizes up to [`MAX_FILE_SIZE`] (larger ones
/// saturate).
pub fn padded_len(size: u64) -> u64 {
    let len = size.max(MIN_PADDED_LEN);
    // len >= 256, so both logarithms are defined and last_bits >= 4.
    let exponent = u64::from(63 - len.leading_zeros());
    let significant = u64::from(63 - exponent.leading_zeros()) + 1;
    let mask = (1u64 << (exponent - significant)) - 1;
    len.checked_add(mask).map_or(u64::MAX, |l| l & !mask)
}

/// Chunks of a file of `size` plaintext bytes (at least one: the padded length is never 0).
pub fn chunk_count(size: u64) -> u64 {
    padded_len(size).div_ceil(CHUNK)
}

/// The exact number of bytes of the encrypted object: header, padded plaintext, one tag per
/// chunk. This is the size an upload declares.
pub fn encrypted_len(size: u64) -> u64 {
    let padded = padded_len(size);
    HEADER_LEN as u64 + padded + TAG_LEN as u64 * padded.div_ceil(CHUNK)
}

/// Where the chunks of one file are: the arithmetic of one size, checked once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    size: u64,
    padded: u64,
    chunks: u64,
}

impl Layout {
    /// The layout of a `size`-byte file; above [`MAX_FILE_SIZE`] is `TooLarge`.
    pub fn new(size: u64) -> Result<Layout, FileError> {
        if size > MAX_FILE_SIZE {
            return Err(FileError::TooLarge {
                size,
                max: MAX_FILE_SIZE,
            });
        }
        Ok(Layout {
            size,
            padded: padded_len(size),
            chunks: chunk_count(size),
        })
    }

    /// Plaintext bytes of the file.
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn padded_len(&self) -> u64 {
        self.padded
    }

    pub fn chunk_count(&self) -> u64 {
        self.chunks
    }

    pub fn encrypted_len(&self) -> u64 {
        encrypted_len(self.size)
    }

    pub fn is_last(&self, index: u64) -> bool {
        index + 1 == self.chunks
    }

    /// The STREAM position of chunk `index`, or `ChunkOutOfRange`.
    pub(crate) fn position(&self, index: u64) -> Result<u32, FileError> {
        if index >= self.chunks {
            return Err(FileError::ChunkOutOfRange {
                index,
                chunks: self.chunks,
            });
        }
        // chunks <= MAX_FILE_SIZE / 64 KiB + 1 = 2^24 + 1: always fits.
        u32::try_from(index).map_err(|_| FileError::ChunkOutOfRange {
            index,
            chunks: self.chunks,
        })
    }

    /// Padded plaintext bytes of chunk `index` (64 KiB except maybe the last).
    pub fn chunk_padded_len(&self, index: u64) -> usize {
        let start = index.saturating_mul(CHUNK);
        self.padded.saturating_sub(start).min(CHUNK) as usize
    }

    /// Ciphertext bytes of chunk `index` (its padded plaintext plus the tag).
    pub fn chunk_cipher_len(&self, index: u64) -> usize {
        self.chunk_padded_len(index) + TAG_LEN
    }

    /// The bytes of the FILE (unpadded) that chunk `index` carries: empty for a chunk of
    /// padding only, shorter than 64 KiB for the chunk where the file ends.
    pub fn chunk_file_range(&self, index: u64) -> Range<u64> {
        let start = index.saturating_mul(CHUNK).min(self.size);
        let end = index.saturating_add(1).saturating_mul(CHUNK).min(self.size);
        start..end
    }

    /// Offset of chunk `index` in the encrypted object.
    pub fn chunk_cipher_offset(&self, index: u64) -> u64 {
        HEADER_LEN as u64 + index.saturating_mul(CHUNK_CIPHERTEXT_LEN as u64)
    }

    /// The chunk holding byte `offset` of the encrypted object and where in that chunk it is
    /// (`None` inside the header or at/after the end). An upload resumed at a server offset
    /// re-encrypts that chunk (encryption is deterministic for a given key, nonce and
    /// plaintext) and sends it from the byte within.
    pub fn chunk_at(&self, offset: u64) -> Option<(u64, usize)> {
        if offset >= self.encrypted_len() {
            return None;
        }
        let body = offset.checked_sub(HEADER_LEN as u64)?;
        let index = body / CHUNK_CIPHERTEXT_LEN as u64;
        (index < self.chunks).then(|| (index, (body % CHUNK_CIPHERTEXT_LEN as u64) as usize))
    }
}
