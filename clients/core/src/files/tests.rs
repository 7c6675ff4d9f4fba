use sha2::{Digest, Sha256};

use super::encrypt::stream;
use super::*;

use chacha20poly1305::aead::stream::StreamPrimitive;

/// A small deterministic generator (xorshift64*): test data and piece sizes without a
/// dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn key() -> FileKey {
    FileKey::from_parts([7; 32], [9; NONCE_PREFIX_LEN])
}

/// The whole object of `plain`, chunk by chunk in order, and the digest the encryptor found.
fn encrypt_all(key: FileKey, plain: &[u8]) -> (Vec<u8>, [u8; 32]) {
    let mut enc = FileEncryptor::new(key, plain.len() as u64).expect("size");
    let mut object = enc.header().to_vec();
    for i in 0..enc.layout().chunk_count() {
        let r = enc.layout().chunk_file_range(i);
        object.extend(
            enc.encrypt_chunk(i, &plain[r.start as usize..r.end as usize])
                .expect("chunk"),
        );
    }
    (object, enc.digest().expect("in-order pass"))
}

fn sha(plain: &[u8]) -> [u8; 32] {
    Sha256::digest(plain).into()
}

/// Decrypts `object` pushed in `pieces` (sizes cycled), returning the plaintext or the first
/// error (from push or finish).
fn decrypt(
    object: &[u8],
    size: u64,
    digest: [u8; 32],
    pieces: &[usize],
) -> Result<Vec<u8>, FileError> {
    let mut dec = FileDecryptor::new(*key().key_bytes(), size, digest)?;
    let mut out = Vec::new();
    let mut rest = object;
    let mut i = 0;
    while !rest.is_empty() {
        let n = pieces[i % pieces.len()].clamp(1, rest.len());
        out.extend(dec.push(&rest[..n])?);
        rest = &rest[n..];
        i += 1;
    }
    assert_eq!(dec.consumed(), object.len() as u64);
    dec.finish()?;
    Ok(out)
}

fn whole(object: &[u8], size: u64, digest: [u8; 32]) -> Result<Vec<u8>, FileError> {
    decrypt(object, size, digest, &[usize::MAX])
}

#[test]
fn padme_values_and_bounds() {
    for (size, padded) in [
        (0, 256),
        (1, 256),
        (255, 256),
        (256, 256),
        (257, 272),
        (65_535, 65_536),
        (65_536, 65_536),
        (65_537, 67_584),
        (10_000_000, 10_223_616),
    ] {
        assert_eq!(padded_len(size), padded, "size {size}");
    }
    let mut rng = Rng(1);
    for _ in 0..10_000 {
        let size = rng.below(1 << 32);
        let padded = padded_len(size);
        assert!(padded >= size.max(MIN_PADDED_LEN), "{size}");
        // Padmé's bound: at most 12 % overhead above the minimum.
        if size >= MIN_PADDED_LEN {
            assert!(padded * 100 <= size * 112, "{size} -> {padded}");
        }
        assert_eq!(padded_len(padded), padded, "a bucket is its own padding");
    }
    assert_eq!(padded_len(MAX_FILE_SIZE), MAX_FILE_SIZE);
    assert!(Layout::new(MAX_FILE_SIZE + 1).is_err());
}

#[test]
fn nearby_sizes_have_the_same_encrypted_size() {
    assert_eq!(encrypted_len(1_000_000), encrypted_len(1_000_100));
    assert_eq!(encrypted_len(10_000_000), encrypted_len(10_001_000));
    assert_eq!(encrypted_len(0), encrypted_len(200));
    assert_eq!(encrypted_len(65_537), encrypted_len(67_000));
    // 10,000 sizes from 1 KB to 10 MB fall into a few hundred buckets: Padmé keeps at most
    // 2^(floor(log2 E) + 1) sizes per doubling 2^E .. 2^(E+1) (16 below 64 KiB, then 32).
    let buckets: std::collections::BTreeSet<u64> =
        (1..=10_000u64).map(|k| padded_len(k * 1000)).collect();
    assert!(buckets.len() <= 14 * 32, "{} buckets", buckets.len());
    for e in 10..24u32 {
        let in_octave = buckets
            .iter()
            .filter(|&&b| b > 1 << e && b <= 1 << (e + 1))
            .count();
        assert!(in_octave <= 32, "2^{e}: {in_octave}");
    }
}

#[test]
fn round_trips_at_the_edges() {
    let mut rng = Rng(2);
    for size in [0usize, 1, 255, 256, 65_535, 65_536, 65_537, 10_000_000] {
        let plain = rng.bytes(size);
        let (object, digest) = encrypt_all(key(), &plain);
        assert_eq!(digest, sha(&plain));
        assert_eq!(
            object.len() as u64,
            encrypted_len(size as u64),
            "size {size}"
        );
        assert_eq!(
            whole(&object, size as u64, digest).expect("decrypts"),
            plain,
            "size {size}"
        );
    }
}

#[test]
fn streams_in_random_pieces() {
    let mut rng = Rng(3);
    for size in [0usize, 300, 65_536 * 3 + 17, 400_000] {
        let plain = rng.bytes(size);
        let (object, digest) = encrypt_all(key(), &plain);
        for _ in 0..5 {
            let pieces: Vec<usize> = (0..64)
                .map(|_| 1 + rng.below(100_000) as usize)
                .chain([1, 19, 20, 21, 65_552])
                .collect();
            assert_eq!(
                decrypt(&object, size as u64, digest, &pieces).expect("ok"),
                plain
            );
        }
        // Byte by byte (the slowest HTTP stream possible).
        if size < 100_000 {
            assert_eq!(
                decrypt(&object, size as u64, digest, &[1]).expect("ok"),
                plain
            );
        }
    }
}

#[test]
fn chunks_by_index_are_deterministic_and_resume_anywhere() {
    let mut rng = Rng(4);
    let plain = rng.bytes(65_536 * 4 + 999);
    let size = plain.len() as u64;
    let (object, digest) = encrypt_all(key(), &plain);
    let layout = Layout::new(size).expect("layout");
    let mut enc = FileEncryptor::new(key(), size).expect("size");
    // Out of order: no digest yet, and chunks past the in-order pass are not hashed.
    let r = layout.chunk_file_range(2);
    let c2 = enc
        .encrypt_chunk(2, &plain[r.start as usize..r.end as usize])
        .expect("c2");
    let off = layout.chunk_cipher_offset(2) as usize;
    assert_eq!(c2, object[off..off + layout.chunk_cipher_len(2)]);
    assert_eq!(enc.hashed_chunks(), 0);
    assert_eq!(enc.digest(), None);
    // The server's offset can fall anywhere: the chunk holding it, re-encrypted, continues
    // the object byte for byte.
    for offset in [
        20u64,
        21,
        65_571,
        65_572,
        65_573,
        200_000,
        object.len() as u64 - 1,
    ] {
        let (index, within) = layout.chunk_at(offset).expect("inside");
        let r = layout.chunk_file_range(index);
        let chunk = key()
            .encrypt_chunk(size, index, &plain[r.start as usize..r.end as usize])
            .expect("chunk");
        assert_eq!(
            chunk[within..],
            object[offset as usize..layout.chunk_cipher_offset(index) as usize + chunk.len()]
        );
    }
    assert_eq!(layout.chunk_at(19), None);
    assert_eq!(layout.chunk_at(object.len() as u64), None);
    // A resumed pass that starts over from chunk 0 yields the digest.
    for i in 0..layout.chunk_count() {
        let r = layout.chunk_file_range(i);
        enc.encrypt_chunk(i, &plain[r.start as usize..r.end as usize])
            .expect("chunk");
    }
    assert_eq!(enc.digest(), Some(digest));
    // Wrong lengths and indexes are refused, never padded or cut silently.
    assert!(matches!(
        enc.encrypt_chunk(0, &plain[..100]),
        Err(FileError::ChunkLength { index: 0, .. })
    ));
    assert!(matches!(
        enc.encrypt_chunk(layout.chunk_count(), &[]),
        Err(FileError::ChunkOutOfRange { .. })
    ));
}

#[test]
fn fresh_keys_differ() {
    let a = FileKey::generate().expect("random");
    let b = FileKey::generate().expect("random");
    assert_ne!(a.key_bytes(), b.key_bytes());
    assert_ne!(a.nonce_prefix(), b.nonce_prefix());
    assert_eq!(a.header()[0], FORMAT_VERSION);
    assert_eq!(&a.header()[1..], a.nonce_prefix());
}

/// A three-chunk file and its object, for the tamper tests.
fn sample() -> (Vec<u8>, Vec<u8>, [u8; 32], Layout) {
    let mut plain = Rng(5).bytes(65_536 * 2 + 5_000);
    // Not zero: declaring the file one byte shorter must leave a non-zero "padding" byte.
    *plain.last_mut().expect("not empty") = 0xff;
    let (object, digest) = encrypt_all(key(), &plain);
    let layout = Layout::new(plain.len() as u64).expect("layout");
    assert_eq!(layout.chunk_count(), 3);
    (plain, object, digest, layout)
}

#[test]
fn every_flipped_bit_fails() {
    let (plain, object, digest, layout) = sample();
    let size = plain.len() as u64;
    let mut flips = vec![0usize, 1, 10, 19];
    for i in 0..layout.chunk_count() {
        let start = layout.chunk_cipher_offset(i) as usize;
        let len = layout.chunk_cipher_len(i);
        // First byte, a middle byte, the first and last tag byte of every chunk.
        flips.extend([start, start + len / 2, start + len - 16, start + len - 1]);
    }
    for at in flips {
        for bit in [0u8, 7] {
            let mut bad = object.clone();
            bad[at] ^= 1 << bit;
            let got = decrypt(&bad, size, digest, &[4096]);
            match at {
                0 => assert_eq!(got, Err(FileError::UnsupportedVersion(1 ^ (1 << bit)))),
                _ => assert!(
                    matches!(got, Err(FileError::Tampered { .. })),
                    "flip at {at}: {got:?}"
                ),
            }
        }
    }
}

#[test]
fn reordered_dropped_truncated_or_extended_objects_fail() {
    let (plain, object, digest, layout) = sample();
    let size = plain.len() as u64;
    let chunk = |i: u64| {
        let s = layout.chunk_cipher_offset(i) as usize;
        &object[s..s + layout.chunk_cipher_len(i)]
    };
    let header = &object[..HEADER_LEN];

    // Chunks 0 and 1 swapped (same length): the counter in the nonce catches it.
    let swapped = [header, chunk(1), chunk(0), chunk(2)].concat();
    assert_eq!(
        whole(&swapped, size, digest),
        Err(FileError::Tampered { chunk: 0 })
    );
    // A chunk repeated in place of its successor.
    let repeated = [header, chunk(0), chunk(0), chunk(2)].concat();
    assert_eq!(
        whole(&repeated, size, digest),
        Err(FileError::Tampered { chunk: 1 })
    );

    // The last chunk dropped: every remaining chunk is authentic, finish says truncated.
    let dropped = [header, chunk(0), chunk(1)].concat();
    assert!(matches!(
        whole(&dropped, size, digest),
        Err(FileError::Truncated { .. })
    ));
    // Cut mid-chunk, after the header, inside the header, empty.
    for cut in [object.len() - 1, object.len() - 17, 70_000, 20, 5, 0] {
        let got = whole(&object[..cut], size, digest);
        assert!(
            matches!(got, Err(FileError::Truncated { .. })),
            "cut {cut}: {got:?}"
        );
    }
    // Bytes appended after the last chunk, in the same push or a later one.
    let mut longer = object.clone();
    longer.push(0);
    assert_eq!(whole(&longer, size, digest), Err(FileError::TrailingBytes));
    let mut dec = FileDecryptor::new(*key().key_bytes(), size, digest).expect("new");
    dec.push(&object).expect("the object itself");
    assert_eq!(dec.push(&[1, 2, 3]), Err(FileError::TrailingBytes));
    assert_eq!(dec.push(&[]), Err(FileError::Failed));
    assert_eq!(dec.finish(), Err(FileError::Failed));

    // The object of a smaller file under the same key, presented as this one: its last chunk
    // carries the last flag at the wrong position or length.
    let (short, short_digest) = encrypt_all(key(), &plain[..65_536 + 10]);
    assert!(whole(&short, size, digest).is_err());
    assert!(whole(&short, size, short_digest).is_err());
    // A wrong key or a wrong hash.
    let mut dec = FileDecryptor::new([8; 32], size, digest).expect("new");
    assert_eq!(dec.push(&object), Err(FileError::Tampered { chunk: 0 }));
    let mut wrong = digest;
    wrong[0] ^= 1;
    assert_eq!(whole(&object, size, wrong), Err(FileError::HashMismatch));
    // Declared one byte shorter: the padding is not zero where the "file" ends.
    assert_eq!(whole(&object, size - 1, digest), Err(FileError::BadPadding));
}

#[test]
fn non_zero_padding_fails_even_when_authentic() {
    // A sender that does not follow the format: the padding of its only chunk is not zero.
    let k = key();
    let plain = b"hello".to_vec();
    let layout = Layout::new(plain.len() as u64).expect("layout");
    let mut buf = plain.clone();
    buf.resize(layout.chunk_padded_len(0), 0);
    buf[200] = 1;
    stream(k.key_bytes(), k.nonce_prefix())
        .encrypt_in_place(0, true, &k.header(), &mut buf)
        .expect("encrypt");
    let object = [k.header().to_vec(), buf].concat();
    assert_eq!(whole(&object, 5, sha(&plain)), Err(FileError::BadPadding));
}

#[test]
fn file_body_json_limits_and_refs() {
    let body = FileBody {
        file_id: tern_wire::ids::MessageId::from_u128(0x1234),
        key: [1; 32],
        sha256: [2; 32],
        name: "report.pdf".into(),
        mime: "application/pdf".into(),
        size: 1_000_000,
        caption: String::new(),
    };
    let json = body.to_json();
    let text = String::from_utf8(json.clone()).expect("utf8");
    assert!(
        text.contains("\"file_id\":\"00000000-0000-0000-0000-000000001234\""),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "\"key\":\"{}\"",
            "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="
        )),
        "{text}"
    );
    assert_eq!(FileBody::from_json(&json).expect("parses"), body);
    // The caption may be left out.
    let no_caption = text.replace(",\"caption\":\"\"", "");
    assert_ne!(no_caption, text);
    assert_eq!(
        FileBody::from_json(no_caption.as_bytes()).expect("parses"),
        body
    );
    // The key never shows in Debug output.
    assert!(!format!("{body:?}").contains("AQEB"));
    assert!(!format!("{body:?}").contains("[1, 1"));

    let refs = file_refs(FILE_CONTENT_TYPE, &json);
    assert_eq!(refs.len(), 1);
    assert_eq!(refs[0].file_id, body.file_id);
    assert_eq!(refs[0].size, encrypted_len(1_000_000));
    assert_eq!(refs[0].content_type, "application/pdf");
    assert!(file_refs("text", &json).is_empty());
    assert!(file_refs(FILE_CONTENT_TYPE, b"{}").is_empty());

    let l = FILE_BODY_LIMITS;
    for (mutate, ok) in [
        (
            Box::new(|b: &mut FileBody| b.name = "n".repeat(l.name)) as Box<dyn Fn(&mut FileBody)>,
            true,
        ),
        (
            Box::new(|b: &mut FileBody| b.name = "n".repeat(l.name + 1)),
            false,
        ),
        (
            Box::new(|b: &mut FileBody| b.mime = "m".repeat(l.mime)),
            true,
        ),
        (
            Box::new(|b: &mut FileBody| b.mime = "m".repeat(l.mime + 1)),
            false,
        ),
        (
            Box::new(|b: &mut FileBody| b.caption = "c".repeat(l.caption)),
            true,
        ),
        (
            Box::new(|b: &mut FileBody| b.caption = "c".repeat(l.caption + 1)),
            false,
        ),
        (
            Box::new(|b: &mut FileBody| b.size = MAX_FILE_SIZE + 1),
            false,
        ),
    ] {
        let mut b = body.clone();
        mutate(&mut b);
        assert_eq!(b.validate().is_ok(), ok);
        assert_eq!(FileBody::from_json(&b.to_json()).is_ok(), ok);
    }
    // A key of the wrong length.
    let short_key = text.replace("AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=", "AQEB");
    assert!(FileBody::from_json(short_key.as_bytes()).is_err());
}
