//! The wire decoder on arbitrary bytes: `decode_client` and `decode_server` (size, identifier,
//! verifier, direction, meaning) and the stream `FrameDecoder` fed in arbitrary chunks.
//!
//! Properties: nothing panics; whatever decodes re-encodes to an envelope that decodes to the
//! same value; the chunked stream decoder returns exactly what a one-shot reference reading of
//! the same bytes returns, never a frame above its limit, and buffers at most one frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_wire::framing::LENGTH_PREFIX_BYTES;
use tern_wire::{FrameDecoder, Limits, WireError, decode_client, decode_server};

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    envelope_round_trips(data, &limits);
    // A small frame limit as well, so the size check and `FrameTooLarge` are exercised.
    envelope_round_trips(data, &Limits::for_frame_size(64));
    stream_matches_reference(data);
});

fn envelope_round_trips(data: &[u8], limits: &Limits) {
    if let Ok(msg) = decode_client(data, limits) {
        let encoded = tern_wire::encode_client(&msg);
        let again = decode_client(&encoded, &reencode_limits(&encoded, limits))
            .unwrap_or_else(|e| panic!("re-encoded {msg:?} does not decode: {e}"));
        assert_eq!(again, msg, "client message changed in a round trip");
    }
    if let Ok(msg) = decode_server(data, limits) {
        let encoded = tern_wire::encode_server(&msg);
        let again = decode_server(&encoded, &reencode_limits(&encoded, limits))
            .unwrap_or_else(|e| panic!("re-encoded {msg:?} does not decode: {e}"));
        assert_eq!(again, msg, "server message changed in a round trip");
    }
}

/// An input may share tables (a DAG) that the encoder writes out once per reference, so the
/// re-encoding can be larger than the input (bounded by the apparent-size limit).
fn reencode_limits(encoded: &[u8], limits: &Limits) -> Limits {
    Limits::for_frame_size(encoded.len().max(limits.max_frame_bytes))
}

/// Input layout: byte 0 picks the frame limit, byte 1 seeds the chunk sizes, the rest is the
/// stream.
fn stream_matches_reference(data: &[u8]) {
    let [limit_byte, chunk_seed, stream @ ..] = data else {
        return;
    };
    let max_frame = usize::from(*limit_byte) * 4 + 1;
    let (want_frames, want_error) = reference(stream, max_frame);

    let mut decoder = FrameDecoder::new(max_frame);
    let mut frames = Vec::new();
    let mut error = None;
    let mut rest = stream;
    let mut seed = u32::from(*chunk_seed);
    while !rest.is_empty() {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let n = ((seed >> 16) as usize % 37 + 1).min(rest.len());
        decoder.push(&rest[..n]);
        rest = &rest[n..];
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    assert!(
                        !frame.is_empty() && frame.len() <= max_frame,
                        "frame above limit"
                    );
                    frames.push(frame);
                }
                Ok(None) => break,
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        if error.is_some() {
            break;
        }
        assert!(
            decoder.buffered_len() < LENGTH_PREFIX_BYTES + max_frame,
            "decoder buffers {} bytes with a {max_frame}-byte limit after draining",
            decoder.buffered_len()
        );
    }
    assert_eq!(frames, want_frames);
    assert_eq!(error, want_error);
}

/// The framing rule read straight off the whole stream.
fn reference(mut stream: &[u8], max_frame: usize) -> (Vec<Vec<u8>>, Option<WireError>) {
    let mut frames = Vec::new();
    while let Some((len, rest)) = stream.split_first_chunk::<4>() {
        let len = u32::from_le_bytes(*len) as usize;
        if len == 0 {
            return (
                frames,
                Some(WireError::Malformed("zero-length frame".into())),
            );
        }
        if len > max_frame {
            let error = WireError::FrameTooLarge {
                size: len,
                max: max_frame,
            };
            return (frames, Some(error));
        }
        let Some(body) = rest.get(..len) else {
            break;
        };
        frames.push(body.to_vec());
        stream = &rest[len..];
    }
    (frames, None)
}
