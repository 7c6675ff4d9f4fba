//! Server side of RFC 6455 on in-memory bytes, on tungstenite's frame layer (header parsing
//! and frame formatting); this module only assembles messages and applies the limits.
//!
//! It holds no buffer of its own while idle: the unparsed bytes live in the connection's
//! `plain_in` (released when empty) and a fragmented message in `partial`.

use std::io::Cursor;

use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::{CloseFrame, Frame, FrameHeader};

use crate::WsEvent;

pub const CLOSE_PROTOCOL: u16 = 1002;
pub const CLOSE_TOO_BIG: u16 = 1009;

/// The outcome of parsing (at most) one frame.
#[derive(Debug)]
pub enum Step {
    /// Not a whole frame yet.
    NeedMore,
    /// A frame was consumed and nothing is to be reported (fragment, pong).
    Nothing,
    Event(WsEvent),
    /// Answer with a pong carrying this payload.
    Ping(Vec<u8>),
    /// The peer sent a close frame (with this code, if any).
    Close(Option<u16>),
    /// Report this event, then close with this code; nothing more is read.
    Fatal(WsEvent, u16),
}

pub struct WsCodec {
    /// Text flag and bytes of a fragmented message being assembled.
    partial: Option<(bool, Vec<u8>)>,
    frame_limit: usize,
    max_message: usize,
}

fn malformed(text: impl Into<String>) -> Step {
    Step::Fatal(WsEvent::Malformed(text.into()), CLOSE_PROTOCOL)
}

impl WsCodec {
    pub fn new(frame_limit: usize, max_message: usize) -> Self {
        Self {
            partial: None,
            frame_limit,
            max_message,
        }
    }

    /// Parses one frame from the front of `input`; returns the bytes consumed.
    pub fn step(&mut self, input: &[u8]) -> (usize, Step) {
        let mut cursor = Cursor::new(input);
        let (header, length) = match FrameHeader::parse(&mut cursor) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => return (0, Step::NeedMore),
            Err(error) => return (0, malformed(error.to_string())),
        };
        let header_len = cursor.position() as usize;
        if header.rsv1 || header.rsv2 || header.rsv3 {
            return (0, malformed("reserved bits set without an extension"));
        }
        let Some(mask) = header.mask else {
            return (0, malformed("unmasked frame from the client"));
        };
        match header.opcode {
            OpCode::Control(Control::Reserved(_)) | OpCode::Data(Data::Reserved(_)) => {
                return (0, malformed("reserved opcode"));
            }
            OpCode::Control(_) if !header.is_final || length > 125 => {
                return (0, malformed("fragmented or oversized control frame"));
            }
            OpCode::Data(Data::Continue) if self.partial.is_none() => {
                return (0, malformed("continuation frame without a message"));
            }
            OpCode::Data(Data::Text | Data::Binary) if self.partial.is_some() => {
                return (0, malformed("new message inside a fragmented one"));
            }
            OpCode::Data(_) => {
                let before = self.partial.as_ref().map_or(0, |(_, bytes)| bytes.len());
                let total = (before as u64).saturating_add(length);
                if total > self.max_message as u64 {
                    let size = usize::try_from(total).unwrap_or(usize::MAX);
                    return (0, Step::Fatal(WsEvent::TooLarge { size }, CLOSE_TOO_BIG));
                }
            }
            OpCode::Control(_) => {}
        }
        let length = length as usize;
        if input.len() - header_len < length {
            return (0, Step::NeedMore);
        }
        let consumed = header_len + length;
        let payload = &input[header_len..consumed];
        let step = match header.opcode {
            OpCode::Data(data) => {
                let text = match data {
                    Data::Text => true,
                    Data::Binary => false,
                    _ => self.partial.as_ref().is_some_and(|(text, _)| *text),
                };
                let mut message = match self.partial.take() {
                    Some((_, mut bytes)) => {
                        let start = bytes.len();
                        bytes.extend_from_slice(payload);
                        unmask(&mut bytes[start..], mask);
                        bytes
                    }
                    None => {
                        let mut bytes = payload.to_vec();
                        unmask(&mut bytes, mask);
                        bytes
                    }
                };
                if !header.is_final {
                    self.partial = Some((text, message));
                    Step::Nothing
                } else if text {
                    Step::Event(WsEvent::Malformed(
                        "text messages are not part of the protocol".into(),
                    ))
                } else if message.len() > self.frame_limit {
                    Step::Event(WsEvent::TooLarge {
                        size: message.len(),
                    })
                } else {
                    message.shrink_to_fit();
                    Step::Event(WsEvent::Frame(message))
                }
            }
            OpCode::Control(Control::Ping) => {
                let mut bytes = payload.to_vec();
                unmask(&mut bytes, mask);
                Step::Ping(bytes)
            }
            OpCode::Control(Control::Pong) => Step::Nothing,
            OpCode::Control(_) => {
                let mut bytes = payload.to_vec();
                unmask(&mut bytes, mask);
                let code = (bytes.len() >= 2).then(|| u16::from_be_bytes([bytes[0], bytes[1]]));
                Step::Close(code)
            }
        };
        (consumed, step)
    }
}

fn unmask(bytes: &mut [u8], mask: [u8; 4]) {
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

/// The header of an unmasked final binary frame of `len` bytes.
pub fn binary_header(len: usize) -> ([u8; 14], usize) {
    let header = FrameHeader {
        is_final: true,
        rsv1: false,
        rsv2: false,
        rsv3: false,
        opcode: OpCode::Data(Data::Binary),
        mask: None,
    };
    let mut out = [0u8; 14];
    let mut cursor = Cursor::new(&mut out[..]);
    header
        .format(len as u64, &mut cursor)
        .expect("a frame header fits in 14 bytes");
    let n = cursor.position() as usize;
    (out, n)
}

pub fn pong(payload: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 2);
    Frame::pong(payload)
        .format(&mut out)
        .expect("writing to a Vec");
    out
}

/// A close frame; `reason` is cut to 120 bytes on a character boundary.
pub fn close(code: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(120);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let frame = Frame::close(Some(CloseFrame {
        code: code.into(),
        reason: reason[..end].into(),
    }));
    let mut out = Vec::with_capacity(frame.len());
    frame.format(&mut out).expect("writing to a Vec");
    out
}
