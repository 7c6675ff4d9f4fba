//! How a session ends on a bad frame, as a browser page sees it (issue 12, part 7): the
//! `frame_too_large` error names the size the client really sent, and over WebTransport the
//! final `Error` frame reaches the client every time before the session ends. Real `tern`
//! binary, real TLS/QUIC on loopback; WebSocket on both I/O drivers.

mod common;

use common::TestServer;
use tern_sdk::tern_wire::msg::{ErrorCode, ServerMessage};
use tern_sdk::{Transport, TransportPref};

/// More than twice the default 64 KiB frame limit: the WebSocket stack refuses it while
/// reading the header (the case that used to report a placeholder size).
const OVERSIZED: usize = 200_000;

async fn first_error(server: &TestServer, transport: TransportPref, size: usize) -> ServerMessage {
    let config = server.config(transport);
    let limits = tern_sdk::tern_wire::Limits::default();
    let mut raw = Transport::connect(&config).await.expect("raw connect");
    // The server may answer and close before the whole frame is written: a failed write is
    // fine, the answer must still arrive.
    let _ = raw.send_frame(&vec![0u8; size]).await;
    tokio::time::timeout(common::WAIT, raw.recv_message(&limits))
        .await
        .expect("an answer in time")
        .unwrap_or_else(|e| panic!("{transport:?} {size}: read: {e}"))
        .unwrap_or_else(|| panic!("{transport:?} {size}: an error frame before the close"))
}

#[tokio::test]
async fn frame_too_large_reports_the_size_the_client_sent() {
    for (io, transport) in [
        ("epoll", TransportPref::WebSocket),
        ("uring", TransportPref::WebSocket),
        ("epoll", TransportPref::WebTransport),
    ] {
        let io_line = format!("io = \"{io}\"");
        let server = TestServer::start_with(&[&io_line]).await;
        for size in [65_537, OVERSIZED] {
            match first_error(&server, transport, size).await {
                ServerMessage::Error {
                    code: ErrorCode::FrameTooLarge,
                    message,
                    fatal: true,
                    ..
                } => assert!(
                    message.contains(&format!("{size} bytes")),
                    "{io} {transport:?}: the error names the real size {size}: {message:?}"
                ),
                other => {
                    panic!("{io} {transport:?} {size}: expected frame_too_large, got {other:?}")
                }
            }
        }
    }
}
