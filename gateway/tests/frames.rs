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

/// Sessions over WebTransport a page opens in a row, each ended by an oversized frame.
const SESSIONS: usize = 60;

/// An oversized frame over WebTransport: the `Error` frame arrives every time, then the
/// session ends with the WebTransport close capsule carrying Tern's code and reason (what a
/// browser's `WebTransport.closed` reports), and the server leaves closing the QUIC connection
/// to the client: no Tern code in the HTTP/3 (QUIC application) error space.
#[tokio::test]
async fn webtransport_sessions_end_with_the_close_capsule_after_the_error_frame() {
    use wtransport::error::ConnectionError;
    let server = TestServer::start().await;
    let limits = tern_sdk::tern_wire::Limits::default();
    let tls = (*server.config(TransportPref::WebTransport).tls().quic).clone();
    let config = wtransport::ClientConfig::builder()
        .with_bind_address("127.0.0.1:0".parse().expect("addr"))
        .with_custom_tls(tls)
        .build();
    let endpoint = wtransport::Endpoint::client(config).expect("endpoint");
    let url = format!("https://{}/api/v1/wt", server.addr);
    let mut errors = 0;
    for round in 0..SESSIONS {
        let connection = tokio::time::timeout(common::WAIT, endpoint.connect(&url))
            .await
            .expect("connect in time")
            .expect("connect");
        let (mut send, mut recv) = connection
            .open_bi()
            .await
            .expect("open")
            .await
            .expect("stream");
        // A length prefix far above the limit, and a first chunk of the body.
        let mut framed = (OVERSIZED as u32).to_le_bytes().to_vec();
        framed.extend_from_slice(&[0u8; 4096]);
        let _ = send.write_all(&framed).await;
        let mut decoder = tern_sdk::tern_wire::framing::FrameDecoder::new(limits.max_frame_bytes);
        let mut buf = vec![0u8; 4096];
        let frame = tokio::time::timeout(common::WAIT, async {
            loop {
                if let Ok(Some(frame)) = decoder.next_frame() {
                    return Some(frame);
                }
                match recv.read(&mut buf).await {
                    Ok(Some(n)) => decoder.push(&buf[..n]),
                    _ => return None,
                }
            }
        })
        .await
        .expect("the stream ends in time");
        if let Some(frame) = frame {
            match tern_sdk::tern_wire::decode_server(&frame, &limits) {
                Ok(ServerMessage::Error {
                    code: ErrorCode::FrameTooLarge,
                    ..
                }) => errors += 1,
                other => panic!("round {round}: expected frame_too_large, got {other:?}"),
            }
        }
        // The session's end as the application sees it: Tern's code and reason.
        let ended = tokio::time::timeout(common::WAIT, connection.accept_uni())
            .await
            .expect("the session ends in time");
        match ended {
            Err(ConnectionError::ApplicationClosed(close)) => {
                assert_eq!(
                    close.code().into_inner(),
                    ErrorCode::FrameTooLarge as u64,
                    "round {round}"
                );
                let reason = String::from_utf8_lossy(close.reason()).to_string();
                assert!(
                    reason.contains("exceeds the limit"),
                    "round {round}: {reason:?}"
                );
            }
            other => {
                panic!("round {round}: expected the session closed by the server, got {other:?}")
            }
        }
        // The client closed the QUIC connection in answer to the capsule: the server never
        // put a Tern code in the QUIC error space.
        let closed = tokio::time::timeout(common::WAIT, connection.closed())
            .await
            .expect("closed in time");
        assert!(
            matches!(closed, ConnectionError::LocallyClosed),
            "round {round}: the QUIC connection was closed by the server: {closed:?}"
        );
    }
    assert_eq!(errors, SESSIONS, "every session got its Error frame");
}
