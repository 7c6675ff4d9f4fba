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
/// Marks in one `Delivered`: one per member of the largest group (a mark is 16 + 8 bytes plus
/// table overhead, so 1,000 fit a 64 KiB frame with room to spare).
pub const MAX_DELIVERY_MARKS: usize = 1_000;
/// Users in one `QueryKeys`: the members of one large group.
pub const MAX_QUERY_KEYS_USERS: usize = 1_000;
/// One-time keys in one `PublishKeys` (the server keeps at most 100 per device).
pub const MAX_ONE_TIME_KEYS_PER_PUBLISH: usize = 100;
/// Devices named in one `ClaimKeys` (a user with more devices is claimed with an empty list).
pub const MAX_CLAIM_DEVICES: usize = 100;

/// Inbox ids in one `AckKeyShares`: a connect-time drain is sent in pages of 256, and clients
/// acknowledge after each batch they persisted.
pub const MAX_ACK_INBOX_IDS: usize = 2_000;
/// Targets (users) in one `ClaimKeysBatch`: the members of one large group.
pub const MAX_CLAIM_BATCH_TARGETS: usize = 1_000;
/// Devices in one `ClaimKeysBatch`: two per member of a 1,000-member group. The answer is
/// bounded by the frame separately ([`key_bundle_device_bytes`]): the server claims what fits.
pub const MAX_CLAIM_BATCH_DEVICES: usize = 2_000;

/// Fixed bytes of an encoded `KeyBundle` frame: envelope, request id, the two vector headers and
/// alignment. An upper bound (checked by the tests against the real encoder).
pub const KEY_BUNDLE_FIXED_BYTES: usize = 96;
/// Bytes one user id adds to a `KeyBundle`'s `unanswered` list (a 16-byte struct, no padding).
pub const KEY_BUNDLE_UNANSWERED_USER_BYTES: usize = 16;

/// An upper bound of the bytes `keys` adds to an encoded `KeyBundle`: what the server adds up
/// to keep an answer inside one frame. Per device: its offset in the vector (4), a vtable
/// (4 + 2 x 8 fields) and the table (4 + two 16-byte ids + 6 offsets), alignment (8); per byte
/// field its length prefix and padding (4 + 3, plus 1 for the alignment of what follows); per
/// one-time key an offset, a `Bytes` table with its own vtable and the vector. Generous by a few
/// bytes per field, never short (tests encode random and worst-case bundles).
pub fn key_bundle_device_bytes(keys: &crate::msg::DeviceKeys) -> usize {
    const PER_DEVICE: usize = 4 + 20 + 4 + 32 + 24 + 8;
    const PER_FIELD: usize = 8;
    const PER_ONE_TIME_KEY: usize = 4 + 8 + 8 + 8;
    let fields = [
        &keys.identity_key,
        &keys.signed_prekey,
        &keys.signing_key,
        &keys.fallback_key,
        &keys.signature,
    ];
    PER_DEVICE
        + fields.iter().map(|f| f.len() + PER_FIELD).sum::<usize>()
        + PER_FIELD
        + keys
            .one_time_keys
            .iter()
            .map(|k| k.len() + PER_ONE_TIME_KEY)
            .sum::<usize>()
}

/// [`key_bundle_device_bytes`] of a claimed device before the server knows its keys: every
/// field at its decode limit ([`MAX_KEY_BLOB_BYTES`]) and one one-time key. What a claim
/// reserves per device so it never consumes a key it cannot send.
pub const MAX_CLAIMED_DEVICE_BYTES: usize =
    (4 + 20 + 4 + 32 + 24 + 8) + 6 * 8 + 5 * MAX_KEY_BLOB_BYTES + (MAX_KEY_BLOB_BYTES + 28);

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
