//! Secure WebSocket transport: one binary WebSocket message per envelope.

use std::sync::Arc;

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::response::Response;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tern_wire::msg::ErrorCode;

use crate::metrics::Transport;
use crate::session::{self, FrameRecv, FrameSend, Received, SessionContext, TransportClosed};

/// tungstenite reads into a buffer of this size; its 128 KiB default costs that much per
/// connection, idle or not.
const READ_BUFFER_BYTES: usize = 4 * 1024;

pub async fn upgrade(
    State(ctx): State<Arc<SessionContext>>,
    headers: axum::http::HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    // A page of another site must not ride on a user's network position (or, later, cookies):
    // only the server's own origin, the configured ones and native clients (no Origin).
    let origin = headers
        .get(axum::http::header::ORIGIN)
        .map(|v| v.to_str().unwrap_or("(not text)"));
    if !ctx.origins.socket_allowed(origin) {
        return refused_origin(origin.unwrap_or_default());
    }
    let limit = ctx.limits.max_frame_bytes;
    ws.read_buffer_size(READ_BUFFER_BYTES)
        // 0 writes each message straight through instead of keeping a 128 KiB write buffer.
        .write_buffer_size(0)
        // Frames up to twice the limit are read so the session can answer FrameTooLarge with a
        // clear error; beyond that tungstenite refuses them itself.
        .max_message_size(limit * 2)
        .max_frame_size(limit * 2)
        .on_upgrade(move |socket| async move {
            let (sink, stream) = socket.split();
            session::run(
                ctx,
                Transport::WebSocket,
                WsRecv { stream, limit },
                WsSend { sink },
            )
            .await;
        })
}

/// The answer to an upgrade from an origin that may not open sessions (also on the io_uring
/// path, whose driver hands such upgrades to the router instead of upgrading them).
pub fn refused_origin(origin: &str) -> Response {
    crate::http::error_response(
        axum::http::StatusCode::FORBIDDEN,
        "forbidden",
        format!(
            "origin {} may not open a session here (not the server's own origin, not in cors_origins)",
            origin.chars().take(200).collect::<String>()
        ),
    )
}

struct WsRecv {
    stream: SplitStream<WebSocket>,
    limit: usize,
}

impl FrameRecv for WsRecv {
    async fn recv(&mut self) -> Received {
        loop {
            return match self.stream.next().await {
                Some(Ok(Message::Binary(bytes))) if bytes.len() > self.limit => {
                    Received::TooLarge { size: bytes.len() }
                }
                Some(Ok(Message::Binary(bytes))) => Received::Frame(bytes.to_vec()),
                Some(Ok(Message::Text(_))) => {
                    Received::Malformed("text messages are not part of the protocol".into())
                }
                // tungstenite answers pings itself.
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(Message::Close(_))) | None => Received::Closed,
                Some(Err(error)) => match too_large(error) {
                    Ok(size) => Received::TooLarge { size },
                    Err(error) => {
                        tracing::debug!(%error, "websocket read failed");
                        Received::Closed
                    }
                },
            };
        }
    }
}

/// The size tungstenite refused a frame or message for: the length its header declared (or the
/// message's total so far), which is the real size the client sent, not the limit.
fn too_large(error: axum::Error) -> Result<usize, Box<dyn std::error::Error + Send + Sync>> {
    let inner = error.into_inner();
    match inner.downcast::<tungstenite::Error>() {
        Ok(boxed) => match *boxed {
            tungstenite::Error::Capacity(tungstenite::error::CapacityError::MessageTooLong {
                size,
                ..
            }) => Ok(size),
            other => Err(Box::new(other)),
        },
        Err(other) => Err(other),
    }
}

struct WsSend {
    sink: SplitSink<WebSocket, Message>,
}

impl FrameSend for WsSend {
    async fn send(&mut self, frame: &[u8]) -> Result<(), TransportClosed> {
        self.sink
            .send(Message::Binary(bytes::Bytes::copy_from_slice(frame)))
            .await
            .map_err(|_| TransportClosed)
    }

    async fn close(&mut self, code: ErrorCode, reason: &str) {
        let frame = CloseFrame {
            code: close_code_for(code),
            reason: close_reason(reason).into(),
        };
        let _ = self.sink.send(Message::Close(Some(frame))).await;
        let _ = self.sink.close().await;
    }
}

/// The WebSocket close code a session end maps to (the same on both I/O drivers).
pub fn close_code_for(code: ErrorCode) -> u16 {
    match code {
        ErrorCode::FrameTooLarge => close_code::SIZE,
        ErrorCode::MalformedFrame => close_code::PROTOCOL,
        ErrorCode::ServerShutdown => close_code::AWAY,
        ErrorCode::Internal => close_code::ERROR,
        _ => close_code::POLICY,
    }
}

/// Close reasons are limited to 123 bytes by the WebSocket protocol: cut at a char boundary.
pub fn close_reason(reason: &str) -> &str {
    let mut end = reason.len().min(120);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}
