//! Length-prefixed framing for stream transports (the WebTransport bidirectional stream).
//!
//! A stream is a sequence of frames, each `u32 little-endian length ++ envelope bytes`.
//! WebSocket does not use this: one binary WebSocket message carries exactly one envelope.
//!
//! Length headers come from the peer, so [`FrameDecoder`] validates each one as soon as its 4
//! bytes arrive: an oversized length is reported without waiting for, or buffering, the body, and
//! memory is never reserved on the strength of a header.

use crate::error::WireError;

/// Bytes in the length header in front of every envelope.
pub const LENGTH_PREFIX_BYTES: usize = 4;

/// After the decoder has handed out everything it buffered, it keeps at most this much capacity,
/// so a connection that once received a large frame does not pin that memory while idle.
const IDLE_CAPACITY: usize = 4 * 1024;

/// Frames one envelope: a fresh `Vec` holding the length header and the bytes.
///
/// # Panics
/// If `envelope` is longer than `u32::MAX` bytes, which no envelope is (FlatBuffers buffers are
/// capped at 2 GiB, and [`crate::Limits`] at far less).
pub fn frame(envelope: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(LENGTH_PREFIX_BYTES + envelope.len());
    frame_into(envelope, &mut out);
    out
}

/// Appends one framed envelope to `out` (to batch several frames into one write).
/// An empty envelope is framed as-is, although receivers reject it as malformed.
///
/// # Panics
/// As [`frame`].
pub fn frame_into(envelope: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(envelope.len()).expect("envelope longer than u32::MAX bytes");
    out.reserve(LENGTH_PREFIX_BYTES + envelope.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(envelope);
}

/// Splits a byte stream back into envelopes (sans-IO: the driver pushes what it read and pulls
/// frames out).
///
/// ```
/// use tern_wire::framing::{frame, FrameDecoder};
/// let mut dec = FrameDecoder::new(64 * 1024);
/// let bytes = frame(b"envelope");
/// dec.push(&bytes[..3]);
/// assert_eq!(dec.next_frame().unwrap(), None); // incomplete
/// dec.push(&bytes[3..]);
/// assert_eq!(dec.next_frame().unwrap().as_deref(), Some(&b"envelope"[..]));
/// ```
///
/// Errors are sticky: once a bad length header is seen, the frames before it are still returned,
/// then every call returns the error and further input is discarded (the stream has lost sync
/// and must be closed).
///
/// Memory: the decoder holds at most one incomplete frame (at most `4 + max_frame_bytes` bytes)
/// plus the complete frames pushed but not yet taken. Drivers should drain [`next_frame`] after
/// every [`push`], which keeps the buffer at one frame.
///
/// [`next_frame`]: FrameDecoder::next_frame
/// [`push`]: FrameDecoder::push
#[derive(Debug)]
pub struct FrameDecoder {
    max_frame_bytes: usize,
    buf: Vec<u8>,
    /// Start of the first frame not yet returned by `next_frame`.
    read: usize,
    /// End of the last complete, validated frame: `buf[read..scanned]` is whole frames.
    scanned: usize,
    /// The bad header found at `scanned`, returned once the frames before it are taken.
    error: Option<WireError>,
}

impl FrameDecoder {
    /// A decoder that rejects frames longer than `max_frame_bytes` (normally
    /// [`crate::Limits::max_frame_bytes`]).
    pub fn new(max_frame_bytes: usize) -> Self {
        Self {
            max_frame_bytes,
            buf: Vec::new(),
            read: 0,
            scanned: 0,
            error: None,
        }
    }

    /// Feeds bytes read from the stream. Never fails: problems surface from
    /// [`FrameDecoder::next_frame`] in stream order.
    pub fn push(&mut self, data: &[u8]) {
        if self.error.is_some() || data.is_empty() {
            return;
        }
        self.compact();
        self.buf.extend_from_slice(data);
        self.scan();
    }

    /// The next complete envelope, `Ok(None)` if more bytes are needed, or the stream's error.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, WireError> {
        if self.read < self.scanned {
            // `scan` validated this header and found the whole body.
            let frame = read_header(&self.buf[self.read..])
                .and_then(|len| {
                    let start = self.read + LENGTH_PREFIX_BYTES;
                    self.buf.get(start..start + len)
                })
                .map(<[u8]>::to_vec)
                .ok_or_else(|| WireError::malformed("frame decoder lost track of its buffer"))?;
            self.read += LENGTH_PREFIX_BYTES + frame.len();
            if self.read == self.buf.len() {
                self.reset_buffer();
            }
            return Ok(Some(frame));
        }
        match &self.error {
            Some(e) => Err(e.clone()),
            None => Ok(None),
        }
    }

    /// Bytes currently buffered (complete frames not yet taken plus a partial frame).
    pub fn buffered_len(&self) -> usize {
        self.buf.len() - self.read
    }

    /// Validates every header that is now complete, stopping at the first incomplete frame.
    fn scan(&mut self) {
        while let Some(len) = read_header(&self.buf[self.scanned..]) {
            let bad = if len == 0 {
                Some(WireError::malformed("zero-length frame"))
            } else if len > self.max_frame_bytes {
                Some(WireError::FrameTooLarge {
                    size: len,
                    max: self.max_frame_bytes,
                })
            } else {
                None
            };
            if let Some(e) = bad {
                // Drop the bad header and everything after it: nothing there can be trusted.
                self.buf.truncate(self.scanned);
                self.error = Some(e);
                return;
            }
            let end = self
                .scanned
                .saturating_add(LENGTH_PREFIX_BYTES)
                .saturating_add(len);
            if end > self.buf.len() {
                return;
            }
            self.scanned = end;
        }
    }

    /// Moves unread bytes to the front so the buffer does not grow with the stream's history.
    fn compact(&mut self) {
        if self.read > 0 {
            self.buf.drain(..self.read);
            self.scanned -= self.read;
            self.read = 0;
        }
    }

    fn reset_buffer(&mut self) {
        self.buf.clear();
        self.buf.shrink_to(IDLE_CAPACITY);
        self.read = 0;
        self.scanned = 0;
    }
}

/// The frame length announced at the start of `bytes`, if the whole header is there.
fn read_header(bytes: &[u8]) -> Option<usize> {
    let header: [u8; LENGTH_PREFIX_BYTES] = bytes.get(..LENGTH_PREFIX_BYTES)?.try_into().ok()?;
    usize::try_from(u32::from_le_bytes(header)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(dec: &mut FrameDecoder) -> (Vec<Vec<u8>>, Option<WireError>) {
        let mut frames = Vec::new();
        loop {
            match dec.next_frame() {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => return (frames, None),
                Err(e) => return (frames, Some(e)),
            }
        }
    }

    #[test]
    fn frame_layout_is_u32_le_length_then_bytes() {
        assert_eq!(frame(b"abc"), vec![3, 0, 0, 0, b'a', b'b', b'c']);
        let mut out = vec![9];
        frame_into(&[7; 300], &mut out);
        assert_eq!(&out[..5], &[9, 44, 1, 0, 0]);
        assert_eq!(out.len(), 1 + 4 + 300);
    }

    #[test]
    fn byte_at_a_time_and_batched() {
        let payloads: Vec<Vec<u8>> = (1..=50u8).map(|n| vec![n; usize::from(n) * 7]).collect();
        let mut stream = Vec::new();
        for p in &payloads {
            frame_into(p, &mut stream);
        }
        // One byte at a time, draining after every push.
        let mut dec = FrameDecoder::new(1024);
        let mut got = Vec::new();
        for b in &stream {
            dec.push(std::slice::from_ref(b));
            while let Some(f) = dec.next_frame().unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, payloads);
        assert_eq!(dec.buffered_len(), 0);
        // Everything in one push.
        let mut dec = FrameDecoder::new(1024);
        dec.push(&stream);
        assert_eq!(drain(&mut dec), (payloads, None));
    }

    #[test]
    fn oversized_header_fails_before_the_body_arrives() {
        let mut dec = FrameDecoder::new(100);
        dec.push(&frame(&[1; 100])); // exactly the maximum is fine
        dec.push(&101u32.to_le_bytes()); // header only: no body sent yet
        let (frames, err) = drain(&mut dec);
        assert_eq!(frames, vec![vec![1; 100]]);
        assert_eq!(
            err,
            Some(WireError::FrameTooLarge {
                size: 101,
                max: 100
            })
        );
        // Sticky, and later input is discarded rather than buffered.
        dec.push(&[0; 1000]);
        assert_eq!(dec.buffered_len(), 0);
        assert_eq!(
            dec.next_frame(),
            Err(WireError::FrameTooLarge {
                size: 101,
                max: 100
            })
        );
    }

    #[test]
    fn huge_header_is_not_buffered_or_reserved() {
        let mut dec = FrameDecoder::new(64 * 1024);
        let mut data = u32::MAX.to_le_bytes().to_vec();
        data.extend_from_slice(&[0xab; 10_000]);
        dec.push(&data);
        assert_eq!(dec.buffered_len(), 0);
        assert!(
            dec.buf.capacity() <= data.len(),
            "no reservation from the header"
        );
        assert!(
            matches!(dec.next_frame(), Err(WireError::FrameTooLarge { size, .. }) if size == u32::MAX as usize)
        );
    }

    #[test]
    fn zero_length_frame_is_malformed_after_earlier_frames() {
        let mut dec = FrameDecoder::new(100);
        let mut stream = frame(b"ok");
        stream.extend_from_slice(&[0, 0, 0, 0]);
        stream.extend_from_slice(&frame(b"never"));
        dec.push(&stream);
        let (frames, err) = drain(&mut dec);
        assert_eq!(frames, vec![b"ok".to_vec()]);
        assert!(matches!(err, Some(WireError::Malformed(_))));
    }

    #[test]
    fn partial_header_waits() {
        let mut dec = FrameDecoder::new(100);
        dec.push(&[5, 0]);
        assert_eq!(dec.next_frame(), Ok(None));
        dec.push(&[0, 0, 1, 2, 3, 4]);
        assert_eq!(dec.next_frame(), Ok(None));
        dec.push(&[5]);
        assert_eq!(dec.next_frame(), Ok(Some(vec![1, 2, 3, 4, 5])));
        assert_eq!(dec.next_frame(), Ok(None));
    }

    #[test]
    fn buffer_is_compacted_and_released() {
        let mut dec = FrameDecoder::new(64 * 1024);
        let big = frame(&[3; 60_000]);
        dec.push(&big);
        assert_eq!(dec.next_frame().unwrap().map(|f| f.len()), Some(60_000));
        assert!(
            dec.buf.capacity() <= IDLE_CAPACITY,
            "idle decoder keeps little memory"
        );
        // A long stream drained as it goes never holds more than one frame and a bit.
        let small = frame(&[1; 1000]);
        for _ in 0..1000 {
            dec.push(&small[..700]);
            assert_eq!(dec.next_frame(), Ok(None));
            dec.push(&small[700..]);
            dec.push(&small[..10]);
            assert_eq!(dec.next_frame().unwrap().map(|f| f.len()), Some(1000));
            assert!(dec.buffered_len() <= 10);
            dec.push(&small[10..]);
            assert_eq!(dec.next_frame().unwrap().map(|f| f.len()), Some(1000));
        }
        assert!(dec.buf.capacity() <= IDLE_CAPACITY);
    }
}
