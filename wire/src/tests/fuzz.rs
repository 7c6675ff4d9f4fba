//! Fuzz-ish robustness: thousands of random and mutated inputs must never panic, and whatever
//! does decode must re-encode to something that decodes to the same message.
//!
//! Deterministic (fixed seeds) so a failure reproduces; raise `ROUNDS` locally for a longer run.

use super::{Rng, Sample, all_samples};
use crate::framing::{FrameDecoder, frame_into};
use crate::{Limits, WireError, decode_client, decode_server};

const ROUNDS: usize = 20_000;

/// Decodes both ways; anything that decodes must survive a re-encode unchanged.
fn check(bytes: &[u8], limits: &Limits) -> (bool, bool) {
    let c = decode_client(bytes, limits);
    if let Ok(m) = &c {
        assert_eq!(
            decode_client(&crate::encode_client(m), &Limits::default()).as_ref(),
            Ok(m)
        );
    }
    let s = decode_server(bytes, limits);
    if let Ok(m) = &s {
        assert_eq!(
            decode_server(&crate::encode_server(m), &Limits::default()).as_ref(),
            Ok(m)
        );
    }
    // One direction at most: a valid envelope is either a client or a server message.
    assert!(!(c.is_ok() && s.is_ok()));
    (c.is_ok(), s.is_ok())
}

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..=rng.below(4) {
        match rng.below(8) {
            // Flip bits in one byte.
            0 | 1 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] ^= 1 << rng.below(8);
            }
            // Overwrite a byte with an interesting value.
            2 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] = [0x00, 0x01, 0x7f, 0x80, 0xfe, 0xff][rng.below(6)];
            }
            // Overwrite a 32-bit word (offsets, lengths) with an extreme value.
            3 if b.len() >= 4 => {
                let i = rng.below(b.len() - 3) & !3;
                let v: u32 = [
                    0,
                    1,
                    4,
                    0x7fff_ffff,
                    0x8000_0000,
                    0xffff_ffff,
                    rng.next_u64() as u32,
                ][rng.below(7)];
                b[i..i + 4].copy_from_slice(&v.to_le_bytes());
            }
            // Truncate.
            4 => {
                let n = rng.below(b.len() + 1);
                b.truncate(n);
            }
            // Insert random bytes.
            5 => {
                let i = rng.below(b.len() + 1);
                let n = 1 + rng.below(8);
                let extra = rng.bytes(n);
                b.splice(i..i, extra);
            }
            // Delete a range.
            6 if !b.is_empty() => {
                let i = rng.below(b.len());
                let n = 1 + rng.below((b.len() - i).min(8));
                b.drain(i..i + n);
            }
            // Duplicate a range (creates plausible-looking tables in odd places).
            _ if !b.is_empty() => {
                let i = rng.below(b.len());
                let n = 1 + rng.below((b.len() - i).min(16));
                let chunk = b[i..i + n].to_vec();
                let at = rng.below(b.len() + 1);
                b.splice(at..at, chunk);
            }
            _ => {}
        }
    }
    b
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(1);
    let limits = Limits::default();
    for _ in 0..ROUNDS {
        let n = rng.below(200);
        let mut bytes = rng.bytes(n);
        // Half the time, get past the identifier check so the verifier is exercised.
        if bytes.len() >= 8 && rng.below(2) == 0 {
            bytes[4..8].copy_from_slice(b"TERN");
            // Make the root offset point inside the buffer.
            let root = (rng.below(bytes.len()) as u32) & !3;
            bytes[0..4].copy_from_slice(&root.to_le_bytes());
        }
        check(&bytes, &limits);
    }
}

#[test]
fn mutated_envelopes_never_panic() {
    let seeds: Vec<Vec<u8>> = all_samples().iter().map(|(_, s)| s.encode()).collect();
    let mut rng = Rng(2);
    let limits = Limits::default();
    let (mut decoded, mut rejected) = (0usize, 0usize);
    for _ in 0..ROUNDS {
        let seed = &seeds[rng.below(seeds.len())];
        let bytes = mutate(&mut rng, seed);
        let (c, s) = check(&bytes, &limits);
        if c || s {
            decoded += 1;
        } else {
            rejected += 1;
        }
    }
    // Sanity: the mutations are neither all harmless nor all fatal (both paths are exercised).
    assert!(decoded > ROUNDS / 50, "decoded {decoded}");
    assert!(rejected > ROUNDS / 50, "rejected {rejected}");
}

#[test]
fn mutated_envelopes_with_tight_limits_never_panic() {
    let seeds: Vec<Vec<u8>> = all_samples().iter().map(|(_, s)| s.encode()).collect();
    let mut rng = Rng(3);
    for _ in 0..ROUNDS / 4 {
        let limits = Limits {
            max_frame_bytes: rng.below(600),
            max_depth: rng.below(6),
            max_tables: rng.below(10),
        };
        let seed = &seeds[rng.below(seeds.len())];
        let bytes = mutate(&mut rng, seed);
        check(&bytes, &limits);
    }
}

#[test]
fn frame_decoder_survives_random_streams() {
    let envelopes: Vec<Vec<u8>> = all_samples().iter().map(|(_, s)| s.encode()).collect();
    let mut rng = Rng(4);
    for _ in 0..500 {
        // A valid stream, maybe corrupted, fed in random chunk sizes.
        let mut stream = Vec::new();
        let mut sent = Vec::new();
        for _ in 0..rng.below(20) {
            let e = &envelopes[rng.below(envelopes.len())];
            frame_into(e, &mut stream);
            sent.push(e.clone());
        }
        let corrupt = rng.below(3) == 0 && !stream.is_empty();
        if corrupt {
            stream = mutate(&mut rng, &stream);
        }
        let max = 1 + rng.below(2048);
        let mut dec = FrameDecoder::new(max);
        let mut got = Vec::new();
        let mut err = None;
        let mut at = 0;
        while at < stream.len() && err.is_none() {
            let n = 1 + rng.below(300);
            let end = (at + n).min(stream.len());
            dec.push(&stream[at..end]);
            at = end;
            loop {
                match dec.next_frame() {
                    Ok(Some(f)) => {
                        assert!(!f.is_empty() && f.len() <= max);
                        let _ = decode_client(&f, &Limits::default());
                        let _ = decode_server(&f, &Limits::default());
                        got.push(f);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        assert!(matches!(
                            e,
                            WireError::FrameTooLarge { .. } | WireError::Malformed(_)
                        ));
                        err = Some(e);
                        break;
                    }
                }
            }
            assert!(
                dec.buffered_len() < 4 + max,
                "after draining, at most one partial frame"
            );
        }
        if !corrupt {
            // Uncorrupted: exactly the frames sent, up to the first one over the limit.
            let fitting: Vec<Vec<u8>> = sent
                .iter()
                .take_while(|e| e.len() <= max)
                .cloned()
                .collect();
            assert_eq!(got, fitting);
            assert_eq!(err.is_some(), fitting.len() < sent.len());
        }
    }
}

#[test]
fn strict_prefixes_are_rejected_unless_only_padding_is_lost() {
    let limits = Limits::default();
    for (name, s) in all_samples() {
        let bytes = s.encode();
        for n in 0..bytes.len() {
            let prefix = &bytes[..n];
            // The builder may end a buffer with alignment padding after its first string's NUL;
            // losing only that is harmless. Losing anything else must be caught.
            let same = match &s {
                Sample::Client(m) => decode_client(prefix, &limits).map(|d| d == *m),
                Sample::Server(m) => decode_server(prefix, &limits).map(|d| d == *m),
            };
            assert!(
                matches!(same, Ok(true) | Err(_)),
                "{name}: prefix of {n} bytes decoded differently"
            );
            if same.is_ok() {
                assert!(
                    bytes.len() - n < 4,
                    "{name}: {} bytes lost without notice",
                    bytes.len() - n
                );
            }
        }
    }
}
