//! Resource limits applied to every incoming frame before anything reads it.
//!
//! A peer controls every byte of a frame, and FlatBuffers lets one table be referenced from many
//! places (the buffer is a DAG, not a tree). Without limits a 64 KiB frame could make the
//! verifier walk, and the decoder copy, gigabytes: e.g. 16,000 vector entries all pointing at
//! one 60 KiB payload. The limits below bound both the verifier's work and the size of the owned
//! message the decoder builds to a small multiple of the frame size.

use flatbuffers::VerifierOptions;

/// Limits for decoding one frame. [`Limits::default`] is what the server and clients use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted frame (envelope bytes, without the 4-byte stream length prefix).
    /// Checked before anything else looks at the bytes.
    pub max_frame_bytes: usize,
    /// Deepest nesting of tables the verifier will follow.
    ///
    /// Default 8. The deepest path in today's schema is 4 tables (`Envelope` → `ServerHistoryPage`
    /// → `Message` → `FileRef`, or `Envelope` → `ServerKeyBundle` → `DeviceKeys` → `Bytes`), and
    /// the schema has no recursive types, so verification can never go deeper than that no matter
    /// what the bytes say. The limit is a tripwire for the day a recursive type is added (e.g. a
    /// quoted reply); 8 leaves room for the schema to grow, and the test vectors, which decode
    /// every message with the default limits, fail if the schema outgrows it.
    pub max_depth: usize,
    /// Most tables the verifier will visit in one frame, counting a shared table once per
    /// reference.
    ///
    /// Default 8192 = 64 KiB / 8. Every table an honest encoder writes costs at least 8 bytes of
    /// its own (a 4-byte vtable offset, plus the 4-byte offset that refers to it from its parent,
    /// a vector or the root), so no honest 64 KiB frame holds more than 8192 tables. Anything
    /// above that must reuse tables, which only an attacker (amplifying decode work) would do.
    pub max_tables: usize,
}

impl Limits {
    /// 64 KiB: far above any chat message (payloads are ciphertext of text; files go through
    /// the object store, not frames), small enough that a per-connection buffer is cheap.
    pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 * 1024;

    /// Bytes of a frame an honest table needs at minimum (see [`Limits::max_tables`]).
    pub const MIN_BYTES_PER_TABLE: usize = 8;

    /// The verifier's "apparent size" (bytes it reads, counting shared data once per
    /// reference) may be at most this many times the frame size.
    ///
    /// An honest frame reads each byte once, except vtables, which FlatBuffers deduplicates and
    /// the verifier re-reads for every table sharing them. The worst honest case is a long
    /// vector of tiny tables sharing one vtable, which measures about 2.8x the frame size (see
    /// the `honest_worst_case_fits_default_limits` test); 4x leaves margin while keeping the work
    /// for, and the owned output of, a 64 KiB frame under 256 KiB.
    pub const APPARENT_SIZE_FACTOR: usize = 4;

    /// Limits for a given maximum frame size, with `max_tables` scaled to match and the default
    /// depth.
    pub fn for_frame_size(max_frame_bytes: usize) -> Self {
        Self {
            max_frame_bytes,
            max_depth: 8,
            max_tables: (max_frame_bytes / Self::MIN_BYTES_PER_TABLE).max(1),
        }
    }

    /// The largest apparent size the verifier accepts (see [`Limits::APPARENT_SIZE_FACTOR`]).
    pub fn max_apparent_size(&self) -> usize {
        self.max_frame_bytes
            .saturating_mul(Self::APPARENT_SIZE_FACTOR)
    }

    /// The FlatBuffers verifier options these limits translate to.
    pub fn verifier_options(&self) -> VerifierOptions {
        VerifierOptions {
            max_depth: self.max_depth,
            max_tables: self.max_tables,
            max_apparent_size: self.max_apparent_size(),
            // Strings must be properly terminated: other-language readers (C, C++) rely on it.
            ignore_missing_null_terminator: false,
        }
    }
}

/// End-to-end key material bounds, checked by the decoder (a frame breaking one is malformed).
///
/// A key blob (identity, signing, one-time or fallback key, signature) is at most this long.
/// 128 B: the largest real one is a signed key blob (32-byte Curve25519 key + 64-byte Ed25519
/// signature + a few bytes of framing); anything larger is not a key and would only bloat the
/// directory every contact downloads.
pub const MAX_KEY_BLOB_BYTES: usize = 128;
/// One key share payload: an Olm-encrypted Megolm session key is well under 1 KiB; 8 KiB leaves
/// room for future fields while bounding a device inbox to 10,000 x 8 KiB = 80 MiB worst case.
pub const MAX_KEY_SHARE_PAYLOAD_BYTES: usize = 8 * 1024;
/// Shares in one `SendKeyShares`: one per member device of a large group's rotation burst
/// (1,000 members x 2 devices); a 64 KiB frame holds fewer anyway, so this bounds the work of
/// frames from larger-frame configurations.
pub const MAX_KEY_SHARES_PER_REQUEST: usize = 2_000;
/// Users in one `QueryKeys`: the members of one large group.
pub const MAX_QUERY_KEYS_USERS: usize = 1_000;
/// One-time keys in one `PublishKeys` (the server keeps at most 100 per device).
pub const MAX_ONE_TIME_KEYS_PER_PUBLISH: usize = 100;
/// Devices named in one `ClaimKeys` (a user with more devices is claimed with an empty list).
pub const MAX_CLAIM_DEVICES: usize = 100;

impl Default for Limits {
    /// 64 KiB frames, depth 8, 8192 tables.
    fn default() -> Self {
        Self::for_frame_size(Self::DEFAULT_MAX_FRAME_BYTES)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let l = Limits::default();
        assert_eq!(l.max_frame_bytes, 65_536);
        assert_eq!(l.max_depth, 8);
        assert_eq!(l.max_tables, 8192);
        let o = l.verifier_options();
        assert_eq!(o.max_depth, 8);
        assert_eq!(o.max_tables, 8192);
        assert_eq!(o.max_apparent_size, 4 * 65_536);
        assert!(!o.ignore_missing_null_terminator);
    }

    #[test]
    fn scaled_and_saturating() {
        assert_eq!(Limits::for_frame_size(0).max_tables, 1);
        assert_eq!(Limits::for_frame_size(1 << 20).max_tables, 131_072);
        assert_eq!(
            Limits::for_frame_size(usize::MAX).max_apparent_size(),
            usize::MAX
        );
    }
}
