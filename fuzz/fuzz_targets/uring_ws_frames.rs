//! The io_uring driver's WebSocket message assembly (`tern_uring::ws::WsCodec`) on arbitrary
//! bytes split at arbitrary points, driven the way the driver drives it.
//!
//! Input layout: byte 0 picks the mode, bytes 1-2 the limits, byte 3 seeds the chunk sizes.
//! Mode even: the rest is raw client bytes. Mode odd: the rest describes well-formed masked
//! frames (fragmented binary messages with interleaved pings and pongs), which this target
//! encodes by hand and whose expected events it knows.
//!
//! Properties: nothing panics; a step that consumes nothing is `NeedMore` or `Fatal` (else the
//! driver would spin); consumed bytes are within the input; while waiting for more, the buffered
//! bytes stay below one header plus `max_message` (the buffer is bounded); every delivered
//! frame is within `frame_limit`, every `TooLarge` is above it; pings carry at most 125 bytes;
//! nothing is read after `Fatal` or `Close`. For well-formed input the events are exactly the
//! messages that were sent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_uring::WsEvent;
use tern_uring::ws::{CLOSE_PROTOCOL, CLOSE_TOO_BIG, Step, WsCodec};

/// Longest WebSocket frame header: 2 + 8 (length) + 4 (mask).
const MAX_HEADER: usize = 14;

#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Event(WsEvent),
    Ping(Vec<u8>),
    Close(Option<u16>),
    Fatal(WsEvent, u16),
}

fuzz_target!(|data: &[u8]| {
    let [mode, limit, extra, chunk_seed, rest @ ..] = data else {
        return;
    };
    // Small limits so that both are reached by small inputs.
    let frame_limit = usize::from(*limit);
    let max_message = frame_limit + usize::from(*extra);
    if mode & 1 == 0 {
        run(rest, *chunk_seed, frame_limit, max_message);
    } else {
        let (stream, expected) = well_formed(rest, frame_limit, max_message);
        let seen = run(&stream, *chunk_seed, frame_limit, max_message);
        assert_eq!(seen, expected);
    }
});

/// Feeds `stream` in pseudo-random chunks like the driver's `ws_input`; returns what was seen.
fn run(stream: &[u8], chunk_seed: u8, frame_limit: usize, max_message: usize) -> Vec<Seen> {
    let mut codec = WsCodec::new(frame_limit, max_message);
    let mut buffered: Vec<u8> = Vec::new();
    let mut seen = Vec::new();
    let mut rest = stream;
    let mut seed = u32::from(chunk_seed);
    'read: while !rest.is_empty() {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let n = ((seed >> 16) as usize % 61 + 1).min(rest.len());
        buffered.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        loop {
            let (used, step) = codec.step(&buffered);
            assert!(
                used <= buffered.len(),
                "consumed {used} of {}",
                buffered.len()
            );
            if used == 0 {
                assert!(
                    matches!(step, Step::NeedMore | Step::Fatal(..)),
                    "a step that consumes nothing must wait or fail: {step:?}"
                );
            }
            buffered.drain(..used);
            match step {
                Step::NeedMore => {
                    assert!(
                        buffered.len() < MAX_HEADER + max_message.max(125),
                        "{} bytes buffered waiting for a frame (max_message {max_message})",
                        buffered.len()
                    );
                    continue 'read;
                }
                Step::Nothing => {}
                Step::Event(event) => {
                    match &event {
                        WsEvent::Frame(bytes) => assert!(bytes.len() <= frame_limit),
                        WsEvent::TooLarge { size } => assert!(*size > frame_limit),
                        WsEvent::Malformed(_) => {}
                        WsEvent::Closed => panic!("the codec never reports Closed"),
                    }
                    seen.push(Seen::Event(event));
                }
                Step::Ping(payload) => {
                    assert!(payload.len() <= 125);
                    seen.push(Seen::Ping(payload));
                }
                Step::Close(code) => {
                    seen.push(Seen::Close(code));
                    break 'read;
                }
                Step::Fatal(event, code) => {
                    match &event {
                        WsEvent::TooLarge { size } => {
                            assert!(*size > max_message);
                            assert_eq!(code, CLOSE_TOO_BIG);
                        }
                        WsEvent::Malformed(_) => assert_eq!(code, CLOSE_PROTOCOL),
                        other => panic!("unexpected fatal event {other:?}"),
                    }
                    seen.push(Seen::Fatal(event, code));
                    break 'read;
                }
            }
        }
    }
    seen
}

/// Reads a description of frames from `desc` and returns their masked encoding and the events
/// the codec must produce for them.
fn well_formed(mut desc: &[u8], frame_limit: usize, max_message: usize) -> (Vec<u8>, Vec<Seen>) {
    let mut stream = Vec::new();
    let mut expected = Vec::new();
    let mut next = || -> Option<u8> {
        let (first, rest) = desc.split_first()?;
        desc = rest;
        Some(*first)
    };
    while let Some(op) = next() {
        let len = usize::from(next().unwrap_or(0));
        let fill = next().unwrap_or(0);
        let mask = [op, fill, len as u8, 0x5a];
        match op % 4 {
            // A binary message in 1 + op/4 % 4 fragments, a ping between each.
            0 | 1 => {
                // Sizes up to 255 + 200 (a 16-bit length header from 126 on), so that they meet
                // both limits (at most 255 and 510).
                let total = len + usize::from(op) % 3 * 100;
                let message: Vec<u8> = (0..total).map(|i| fill.wrapping_add(i as u8)).collect();
                let pieces = 1 + usize::from(op / 4) % 4;
                let step = total.div_ceil(pieces).max(1);
                let chunks: Vec<&[u8]> = if total == 0 {
                    vec![&[][..]]
                } else {
                    message.chunks(step).collect()
                };
                let mut assembled = 0usize;
                for (i, chunk) in chunks.iter().enumerate() {
                    let first = i == 0;
                    let last = i + 1 == chunks.len();
                    let opcode = if first { 0x2 } else { 0x0 };
                    encode(&mut stream, last, opcode, chunk, mask);
                    assembled += chunk.len();
                    if assembled > max_message {
                        expected.push(Seen::Fatal(
                            WsEvent::TooLarge { size: assembled },
                            CLOSE_TOO_BIG,
                        ));
                        return (stream, expected);
                    }
                    if !last {
                        encode(&mut stream, true, 0x9, &[fill; 3], mask);
                        expected.push(Seen::Ping(vec![fill; 3]));
                    }
                }
                expected.push(Seen::Event(if total > frame_limit {
                    WsEvent::TooLarge { size: total }
                } else {
                    WsEvent::Frame(message)
                }));
            }
            2 => {
                let payload = vec![fill; len % 126];
                encode(&mut stream, true, 0x9, &payload, mask);
                expected.push(Seen::Ping(payload));
            }
            _ => {
                if len % 8 == 0 {
                    let code = u16::from_be_bytes([op, fill]);
                    encode(&mut stream, true, 0x8, &code.to_be_bytes(), mask);
                    expected.push(Seen::Close(Some(code)));
                    return (stream, expected);
                }
                encode(&mut stream, true, 0xA, &vec![fill; len % 126], mask);
            }
        }
    }
    (stream, expected)
}

/// One client frame (masked), written independently of tungstenite's formatter.
fn encode(out: &mut Vec<u8>, fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    out.push(if fin { 0x80 } else { 0 } | opcode);
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n @ 126..=0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
}
