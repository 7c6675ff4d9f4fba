//! The bytes every load-test message carries: a fixed 32-byte header, then padding.
//!
//! ```text
//! offset size  field
//!      0    4  magic "TLG1"
//!      4    4  run id (u32 LE): messages of other runs (left over on the server) are ignored
//!      8    4  sender user index (u32 LE)
//!     12    4  conversation index (u32 LE, index into the population's conversations)
//!     16    8  counter (u64 LE): per (sender, conversation), 0, 1, 2, ... in send order
//!     24    8  scheduled send time, Unix nanoseconds (u64 LE)
//!     32    …  padding up to --payload-bytes (a repeating pattern)
//! ```
//!
//! The counter is per (sender, conversation) rather than per sender, so each receiver can find
//! gaps from the counter alone and each expected message is one integer in a range set.

/// First bytes of every payload.
pub const MAGIC: [u8; 4] = *b"TLG1";
/// Size of the header; also the smallest payload.
pub const HEADER_LEN: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Header {
    pub run: u32,
    pub sender: u32,
    pub conversation: u32,
    pub counter: u64,
    pub scheduled_unix_ns: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("payload of {0} bytes is shorter than the {HEADER_LEN}-byte header")]
    TooShort(usize),
    #[error("payload does not start with the loadgen magic")]
    BadMagic,
}

impl Header {
    /// The header followed by padding to `total_len` bytes (at least the header).
    pub fn encode(&self, total_len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(total_len.max(HEADER_LEN));
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&self.run.to_le_bytes());
        out.extend_from_slice(&self.sender.to_le_bytes());
        out.extend_from_slice(&self.conversation.to_le_bytes());
        out.extend_from_slice(&self.counter.to_le_bytes());
        out.extend_from_slice(&self.scheduled_unix_ns.to_le_bytes());
        // Not zeros: a pattern makes truncation or corruption in transit visible in a dump.
        let mut b = 0u8;
        while out.len() < total_len {
            out.push(b'a' + b);
            b = (b + 1) % 26;
        }
        out
    }

    /// Reads the header; the padding is not inspected (its length is not part of the contract).
    pub fn decode(bytes: &[u8]) -> Result<Header, PayloadError> {
        if bytes.len() < HEADER_LEN {
            return Err(PayloadError::TooShort(bytes.len()));
        }
        if bytes[0..4] != MAGIC {
            return Err(PayloadError::BadMagic);
        }
        let u32_at =
            |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&bytes[i..i + 8]);
            u64::from_le_bytes(a)
        };
        Ok(Header {
            run: u32_at(4),
            sender: u32_at(8),
            conversation: u32_at(12),
            counter: u64_at(16),
            scheduled_unix_ns: u64_at(24),
        })
    }

    /// Tern's idempotency key for this message: retries of the same message reuse it, and the
    /// run id keeps it distinct from earlier runs against the same server (the server dedupes
    /// per conversation and sender, so those two need not be in it).
    pub fn client_msg_id(&self) -> u128 {
        ((self.run as u128) << 96) | ((self.conversation as u128) << 64) | self.counter as u128
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            run: 0xDEAD_BEEF,
            sender: 12_345,
            conversation: 678,
            counter: u64::MAX - 1,
            scheduled_unix_ns: 1_700_000_000_123_456_789,
        }
    }

    #[test]
    fn round_trip_with_and_without_padding() {
        let h = sample();
        for len in [0, HEADER_LEN, HEADER_LEN + 1, 1024] {
            let bytes = h.encode(len);
            assert_eq!(bytes.len(), len.max(HEADER_LEN));
            assert_eq!(Header::decode(&bytes), Ok(h));
        }
    }

    #[test]
    fn fixed_layout() {
        let bytes = sample().encode(HEADER_LEN);
        assert_eq!(&bytes[0..4], b"TLG1");
        assert_eq!(&bytes[4..8], &0xDEAD_BEEFu32.to_le_bytes());
        assert_eq!(&bytes[8..12], &12_345u32.to_le_bytes());
        assert_eq!(&bytes[12..16], &678u32.to_le_bytes());
        assert_eq!(&bytes[16..24], &(u64::MAX - 1).to_le_bytes());
        assert_eq!(&bytes[24..32], &1_700_000_000_123_456_789u64.to_le_bytes());
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(Header::decode(b"short"), Err(PayloadError::TooShort(5)));
        let mut bytes = sample().encode(40);
        bytes[0] = b'X';
        assert_eq!(Header::decode(&bytes), Err(PayloadError::BadMagic));
    }

    #[test]
    fn client_msg_ids_are_distinct_per_message_and_run() {
        let a = sample();
        let b = Header {
            counter: a.counter - 1,
            ..a
        };
        let c = Header {
            run: a.run + 1,
            ..a
        };
        let d = Header {
            conversation: a.conversation + 1,
            ..a
        };
        let ids = [a, b, c, d].map(|h| h.client_msg_id());
        for i in 0..ids.len() {
            for j in i + 1..ids.len() {
                assert_ne!(ids[i], ids[j]);
            }
        }
        // Same message, same id (retries are idempotent).
        assert_eq!(a.client_msg_id(), sample().client_msg_id());
    }
}
