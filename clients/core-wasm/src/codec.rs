//! Frames in and out: ClientMessage JSON → a verified envelope, server envelopes →
//! ServerMessage JSON, the Hello / Welcome handshake, reply matching, and the WebTransport
//! stream's length prefix.
//!
//! JSON is tern-wire's serde form (`{"type": "send", ...}`, ids as UUID strings, bytes as hex,
//! `client_msg_id` as 32 hex digits); frames are `Uint8Array`s. The page never builds or reads
//! FlatBuffers itself.

use serde_json::{Value, json};
use tern_core::protocol::handshake;
use tern_core::protocol::requests::{Waiter, reply_key};
use tern_wire::Limits;
use tern_wire::framing;
use tern_wire::ids::DeviceId;
use tern_wire::msg::{ClientMessage, Cursor, ServerMessage};
use wasm_bindgen::prelude::*;

use crate::js::{JsResult, err, fail, from_json, parse, to_json};

/// Decoding limits for a frame size the page passes (`undefined`: the protocol default).
fn limits(max_frame_bytes: Option<u32>) -> JsResult<Limits> {
    match max_frame_bytes {
        None => Ok(Limits::default()),
        Some(0) => Err(fail("maxFrameBytes must be at least 1")),
        Some(max) => Ok(Limits::for_frame_size(max as usize)),
    }
}

/// The `type` of a message JSON value, for error messages.
fn type_of(v: &Value) -> &str {
    v.get("type").and_then(Value::as_str).unwrap_or("(no type)")
}

/// Encodes a ClientMessage (JSON) into the envelope to send. Fails when the JSON is not a
/// client message, when the frame is larger than `max_frame_bytes` (the smaller of the page's
/// limit and the Welcome's `max_frame_bytes`: see `checkWelcome`), and when the server's
/// verifier would refuse the frame (e.g. a key blob over its size bound): the same decoder
/// the server runs checks the bytes before they leave.
#[wasm_bindgen(js_name = encodeClient)]
pub fn encode_client(json: &str, max_frame_bytes: u32) -> JsResult<Vec<u8>> {
    let value: Value = from_json(json, "client message")?;
    let kind = type_of(&value).to_string();
    let msg: ClientMessage = serde_json::from_value(value)
        .map_err(|e| fail(format!("invalid client message JSON ({kind}): {e}")))?;
    let limits = limits(Some(max_frame_bytes))?;
    let frame = tern_wire::encode_client(&msg);
    if frame.len() > limits.max_frame_bytes {
        return Err(fail(format!(
            "frame too large: the {kind} message encodes to {} bytes, the limit is {} bytes",
            frame.len(),
            limits.max_frame_bytes
        )));
    }
    tern_wire::decode_client(&frame, &limits).map_err(|e| {
        fail(format!(
            "the {kind} frame would be refused by the server: {e}"
        ))
    })?;
    Ok(frame)
}

/// Decodes one envelope from the server into ServerMessage JSON. Every check of the native
/// client runs (size, identifier, verifier limits, direction, meaning); a bad frame throws
/// (the page should then close the connection, as the native SDK does).
#[wasm_bindgen(js_name = decodeServer)]
pub fn decode_server(frame: &[u8], max_frame_bytes: Option<u32>) -> JsResult<String> {
    let msg = tern_wire::decode_server(frame, &limits(max_frame_bytes)?)
        .map_err(|e| fail(format!("undecodable server frame: {e}")))?;
    to_json(&msg)
}

/// The Hello (ClientMessage JSON) that opens every connection: our protocol version range,
/// the token, the device id and resume cursors (`[{conversation, seq}]`, may be `[]`).
#[wasm_bindgen]
pub fn hello(token: &str, device: &str, client_name: &str, cursors_json: &str) -> JsResult<String> {
    let device: DeviceId = parse(device, "device id")?;
    let cursors: Vec<Cursor> = from_json(cursors_json, "cursors")?;
    if token.is_empty() {
        return Err(fail("the token is empty: log in first"));
    }
    to_json(&handshake::hello(token, device, client_name, &cursors))
}

/// Checks the server's first answer (ServerMessage JSON, from `decodeServer`). A Welcome with a
/// version we speak returns `{version, user, device, server_time_ms, max_frame_bytes,
/// one_time_keys_left, max_out_frame}` where `max_out_frame` is the largest frame the page may
/// send (its own `local_max_frame_bytes`, lowered to the server's). Throws for an `error`
/// (message `hello refused: <code>: <message>`; judge it with `isPermanentConnectFailure`),
/// an unsupported version, or any other message.
#[wasm_bindgen(js_name = checkWelcome)]
pub fn check_welcome(server_json: &str, local_max_frame_bytes: u32) -> JsResult<String> {
    let msg: ServerMessage = from_json(server_json, "server message")?;
    match msg {
        ServerMessage::Welcome {
            version,
            user,
            device,
            server_time_ms,
            max_frame_bytes,
            one_time_keys_left,
        } => {
            handshake::check_version(version).map_err(fail)?;
            let max_out = handshake::max_out_frame(local_max_frame_bytes as usize, max_frame_bytes);
            Ok(json!({
                "version": version,
                "user": user,
                "device": device,
                "server_time_ms": server_time_ms,
                "max_frame_bytes": max_frame_bytes,
                "one_time_keys_left": one_time_keys_left,
                "max_out_frame": max_out,
            })
            .to_string())
        }
        ServerMessage::Error { code, message, .. } => {
            Err(fail(format!("hello refused: {}: {message}", code.as_str())))
        }
        other => Err(fail(format!(
            "expected welcome, got {}",
            other.variant_name()
        ))),
    }
}

/// Which pending request a server message (JSON) answers: `"request:<request_id>"`,
/// `"pong:<nonce>"`, or `undefined` when it is not a reply (a push: deliver, presence, …).
/// `request_id` 0 is never a reply.
#[wasm_bindgen(js_name = replyKey)]
pub fn reply_key_of(server_json: &str) -> JsResult<Option<String>> {
    let msg: ServerMessage = from_json(server_json, "server message")?;
    Ok(reply_key(&msg).map(|w| match w {
        Waiter::Request(id) => format!("request:{id}"),
        Waiter::Pong(nonce) => format!("pong:{nonce}"),
    }))
}

/// One envelope with the WebTransport stream's 4-byte little-endian length prefix (WebSocket
/// messages carry one envelope each, unprefixed).
#[wasm_bindgen(js_name = lengthPrefixed)]
pub fn length_prefixed(envelope: &[u8]) -> JsResult<Vec<u8>> {
    if u32::try_from(envelope.len()).is_err() {
        return Err(fail("envelope longer than 4 GiB"));
    }
    Ok(framing::frame(envelope))
}

/// Splits a WebTransport stream back into envelopes: `push` what the stream reader gave,
/// then call `next` until it returns `undefined`. An oversized or broken length header throws
/// (from then on every `next` throws: the stream lost sync and must be closed).
#[wasm_bindgen]
pub struct FrameDecoder {
    inner: framing::FrameDecoder,
}

#[wasm_bindgen]
impl FrameDecoder {
    /// `max_frame_bytes`: the largest envelope accepted (the page's limit).
    #[wasm_bindgen(constructor)]
    pub fn new(max_frame_bytes: u32) -> JsResult<FrameDecoder> {
        let limits = limits(Some(max_frame_bytes))?;
        Ok(FrameDecoder {
            inner: framing::FrameDecoder::new(limits.max_frame_bytes),
        })
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.inner.push(bytes);
    }

    /// The next complete envelope, or `undefined` when more bytes are needed.
    #[wasm_bindgen(js_name = next)]
    pub fn next_frame(&mut self) -> JsResult<Option<Vec<u8>>> {
        self.inner.next_frame().map_err(err)
    }

    /// Bytes held (complete envelopes not taken yet plus a partial one).
    #[wasm_bindgen(js_name = bufferedLen)]
    pub fn buffered_len(&self) -> usize {
        self.inner.buffered_len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_round_trips_and_limits_name_sizes() {
        let send = json!({"type":"send","request_id":3,
            "conversation":"6f3c5d3e-7a71-4a0e-9a53-3a8f1f4f0b11",
            "client_msg_id":"0000000000000000000000000000000a","content_type":"text",
            "payload":"6869","files":[]})
        .to_string();
        let frame = encode_client(&send, 65536).expect("encodes");
        let back = tern_wire::decode_client(&frame, &Limits::default()).expect("decodes");
        assert!(matches!(back, ClientMessage::Send { request_id: 3, .. }));
        let too_small = encode_client(&send, 16).unwrap_err().0;
        assert!(
            too_small.contains("the send message encodes to"),
            "{too_small}"
        );
        assert!(too_small.contains("the limit is 16 bytes"), "{too_small}");
        assert!(encode_client("{\"type\":\"nope\"}", 65536).is_err());
        assert!(encode_client("not json", 65536).is_err());
        assert!(encode_client(&send, 0).is_err());
    }

    #[test]
    fn server_frames_decode_and_garbage_throws() {
        let frame = tern_wire::encode_server(&ServerMessage::Pong { nonce: 7 });
        let json = decode_server(&frame, None).expect("decodes");
        assert_eq!(json, r#"{"type":"pong","nonce":7}"#);
        assert_eq!(reply_key_of(&json), Ok(Some("pong:7".into())));
        assert!(decode_server(&frame[..6], None).is_err());
        assert!(decode_server(b"garbage!garbage!", None).is_err());
        let too_large = decode_server(&frame, Some(4)).unwrap_err().0;
        assert!(
            too_large.contains("exceeds the maximum of 4 bytes"),
            "{too_large}"
        );
        // A client message is not a server message.
        let client = tern_wire::encode_client(&ClientMessage::Ping { nonce: 1 });
        assert!(decode_server(&client, None).is_err());
    }
}
