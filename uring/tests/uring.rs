//! End-to-end tests over real sockets on 127.0.0.1.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Server, eventually, start};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};

const LIMIT: Duration = Duration::from_secs(60);

async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("test timed out")
}

async fn next_binary(ws: &mut common::Client) -> Vec<u8> {
    loop {
        match ws.next().await.expect("stream ended").expect("read failed") {
            Message::Binary(bytes) => return bytes.to_vec(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

async fn echo_once(ws: &mut common::Client, payload: &[u8]) {
    ws.send(Message::binary(payload.to_vec())).await.unwrap();
    let got = next_binary(ws).await;
    assert!(
        got == payload,
        "echo mismatch: sent {} bytes {:?}.., got {} bytes {:?}..",
        payload.len(),
        &payload[..payload.len().min(16)],
        got.len(),
        &got[..got.len().min(16)]
    );
}

#[test]
fn probe_succeeds_here() {
    tern_uring::probe().unwrap();
}

#[tokio::test]
async fn many_connections_echo() {
    let server = std::sync::Arc::new(start(|_| {}));
    bounded(async {
        let mut tasks = Vec::new();
        for i in 0..200u32 {
            let server = server.clone();
            tasks.push(tokio::spawn(async move {
                let mut ws = server.connect().await;
                for j in 0..5u32 {
                    let payload = format!("conn {i} msg {j}").into_bytes();
                    echo_once(&mut ws, &payload).await;
                }
                ws
            }));
        }
        let mut clients = Vec::new();
        for task in tasks {
            clients.push(task.await.unwrap());
        }
        assert_eq!(server.stat(|s| &s.connections_open), 200);
        assert_eq!(server.stat(|s| &s.websocket_upgrades), 200);
        // Sends are batched: fewer submissions than send entries.
        let submissions = server.stat(|s| &s.submissions);
        let sqes = server.stat(|s| &s.sqes);
        assert!(
            submissions < sqes,
            "{submissions} submissions for {sqes} sqes"
        );
        for mut ws in clients {
            ws.close(None).await.unwrap();
        }
        assert!(eventually(10, || server.stat(|s| &s.connections_open) == 0).await);
    })
    .await;
}

#[tokio::test]
async fn large_fragmented_ping_and_burst() {
    let server = start(|_| {});
    bounded(async {
        let mut ws = server.connect().await;
        // 1 MiB message.
        let big: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
        echo_once(&mut ws, &big).await;
        // Fragmented message: three frames.
        for (i, (part, opcode, fin)) in [
            (&b"frag-"[..], OpCode::Data(Data::Binary), false),
            (&b"ment"[..], OpCode::Data(Data::Continue), false),
            (&b"ed"[..], OpCode::Data(Data::Continue), true),
        ]
        .into_iter()
        .enumerate()
        {
            let _ = i;
            ws.send(Message::Frame(Frame::message(part.to_vec(), opcode, fin)))
                .await
                .unwrap();
        }
        assert_eq!(next_binary(&mut ws).await, b"frag-mented");
        // Ping → pong.
        ws.send(Message::Ping(b"hello?".to_vec().into()))
            .await
            .unwrap();
        match ws.next().await.unwrap().unwrap() {
            Message::Pong(payload) => assert_eq!(&payload[..], b"hello?"),
            other => panic!("unexpected {other:?}"),
        }
        // 1,000 messages client → server → client, in order.
        for i in 0u32..1000 {
            ws.feed(Message::binary(i.to_be_bytes().to_vec()))
                .await
                .unwrap();
        }
        ws.flush().await.unwrap();
        for i in 0u32..1000 {
            assert_eq!(next_binary(&mut ws).await, i.to_be_bytes());
        }
        // 1,000 messages server → client, in order.
        ws.send(Message::binary(b"burst".to_vec())).await.unwrap();
        for i in 0u32..1000 {
            assert_eq!(next_binary(&mut ws).await, i.to_be_bytes());
        }
    })
    .await;
}

#[tokio::test]
async fn text_is_malformed_and_close_code_reaches_client() {
    let server = start(|_| {});
    bounded(async {
        let mut ws = server.connect().await;
        ws.send(Message::text("hi")).await.unwrap();
        match ws.next().await.unwrap().unwrap() {
            Message::Close(Some(frame)) => {
                assert_eq!(frame.code, CloseCode::Unsupported);
                assert!(frame.reason.starts_with("malformed"), "{}", frame.reason);
            }
            other => panic!("unexpected {other:?}"),
        }
        // The client's close reply completes the handshake; then the stream ends.
        assert!(ws.next().await.is_none_or(|r| r.is_err()));

        let mut ws = server.connect().await;
        ws.send(Message::binary(b"close-me".to_vec()))
            .await
            .unwrap();
        match ws.next().await.unwrap().unwrap() {
            Message::Close(Some(frame)) => {
                assert_eq!(u16::from(frame.code), 4001);
                assert_eq!(frame.reason.as_str(), "bye now");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(eventually(10, || server.stat(|s| &s.connections_open) == 0).await);
    })
    .await;
}

#[tokio::test]
async fn oversized_messages() {
    let server = start(|_| {});
    bounded(async {
        let mut ws = server.connect().await;
        // Above frame_limit, within max_message_bytes: reported, connection keeps working.
        let size = common::FRAME_LIMIT + 10;
        ws.send(Message::binary(vec![1u8; size])).await.unwrap();
        assert_eq!(
            next_binary(&mut ws).await,
            format!("toolarge {size}").into_bytes()
        );
        echo_once(&mut ws, b"still here").await;
        // Beyond max_message_bytes: reported, then the connection is closed.
        let size = 2 * common::FRAME_LIMIT + 10;
        let _ = ws.send(Message::binary(vec![1u8; size])).await;
        assert_eq!(
            next_binary(&mut ws).await,
            format!("toolarge {size}").into_bytes()
        );
        match ws.next().await {
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    })
    .await;
}

#[tokio::test]
async fn http_bridge() {
    let server = start(|_| {});
    bounded(async {
        let mut tls = server.tls().await;
        tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let mut response = Vec::new();
        tls.read_to_end(&mut response).await.unwrap();
        let response = String::from_utf8(response).unwrap();
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(
            response.ends_with("you asked: GET /healthz HTTP/1.1"),
            "{response}"
        );
        assert_eq!(server.stat(|s| &s.http_bridged), 1);

        // A request head that is too big: 431 from the driver itself.
        let mut tls = server.tls().await;
        let mut head = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
        head.extend(std::iter::repeat_n(b'a', 20 * 1024));
        let _ = tls.write_all(&head).await;
        let mut response = Vec::new();
        let _ = tls.read_to_end(&mut response).await;
        assert!(
            response.starts_with(b"HTTP/1.1 431"),
            "{}",
            String::from_utf8_lossy(&response)
        );

        // Not HTTP at all: 400.
        let mut tls = server.tls().await;
        tls.write_all(b"\x01\x02garbage\r\n\r\n").await.unwrap();
        let mut response = Vec::new();
        let _ = tls.read_to_end(&mut response).await;
        assert!(
            response.starts_with(b"HTTP/1.1 400"),
            "{}",
            String::from_utf8_lossy(&response)
        );
        assert!(eventually(10, || server.stat(|s| &s.connections_open) == 0).await);
    })
    .await;
}

#[tokio::test]
async fn plain_http_gets_no_answer() {
    let server = start(|_| {});
    bounded(async {
        let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let _ = tcp.read_to_end(&mut got).await; // EOF or reset
        assert!(got.is_empty(), "answered {got:?}");
        assert!(eventually(10, || server.stat(|s| &s.connections_open) == 0).await);
        assert_eq!(server.stat(|s| &s.tls_failures), 1);
    })
    .await;
}

#[tokio::test]
async fn vanishing_client_mid_frame() {
    let server = start(|_| {});
    bounded(async {
        let mut other = server.connect().await;
        let mut ws = server.connect().await;
        echo_once(&mut ws, b"hello").await;
        // Header of a masked 4096-byte binary frame, then 10 bytes of it, then gone.
        let tls = ws.get_mut();
        tls.write_all(&[0x82, 0xFE, 0x10, 0x00, 1, 2, 3, 4])
            .await
            .unwrap();
        tls.write_all(&[0u8; 10]).await.unwrap();
        tls.flush().await.unwrap();
        drop(ws);
        echo_once(&mut other, b"still serving").await;
        assert!(eventually(10, || server.stat(|s| &s.connections_open) == 1).await);
        assert!(
            eventually(10, || server.echo.sessions_ended.load(Ordering::SeqCst)
                == 1)
            .await
        );
        echo_once(&mut other, b"and again").await;
    })
    .await;
}

#[tokio::test]
async fn slow_reader_blocks_only_its_session() {
    let server = start(|_| {});
    bounded(async {
        let mut slow = server.connect().await;
        let mut fast = server.connect().await;
        slow.send(Message::binary(b"flood".to_vec())).await.unwrap();
        // The flooding session fills the budget and the socket buffers, then `send` waits.
        let mut last = 0;
        let mut stable = 0;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = server.echo.flood_sent.load(Ordering::SeqCst);
            if now == last && now > 0 {
                stable += 1;
                if stable == 5 {
                    break;
                }
            } else {
                stable = 0;
            }
            last = now;
        }
        assert_eq!(stable, 5, "flood never blocked: {last} bytes");
        assert!(last < 64 * 1024 * 1024, "flood buffered {last} bytes");
        eprintln!("flood blocked after {last} bytes accepted by send");
        // The other connection is unaffected.
        for i in 0..20u32 {
            echo_once(&mut fast, format!("fast {i}").as_bytes()).await;
        }
        // Reading resumes the flood.
        let resumed = tokio::time::timeout(Duration::from_secs(20), async {
            while server.echo.flood_sent.load(Ordering::SeqCst) <= last {
                let _ = next_binary(&mut slow).await;
            }
        })
        .await;
        assert!(resumed.is_ok(), "flood did not resume");
        drop(slow);
        echo_once(&mut fast, b"done").await;
    })
    .await;
}

#[tokio::test]
async fn inbound_backpressure_pauses_reading() {
    // The session stops reading for a while: the driver must stop reading its socket (not
    // buffer), and everything arrives in order afterwards.
    let server = start(|config| config.inbound_queue = 4);
    bounded(async {
        let ws = server.connect().await;
        let (mut write, mut read) = ws.split();
        write
            .send(Message::binary(b"stall".to_vec()))
            .await
            .unwrap();
        const COUNT: u32 = 100;
        let writer = async move {
            for i in 0..COUNT {
                let mut payload = vec![9u8; 32 * 1024];
                payload[..4].copy_from_slice(&i.to_be_bytes());
                write.send(Message::binary(payload)).await.unwrap();
            }
            write
        };
        let reader = async move {
            for i in 0..COUNT {
                let bytes = loop {
                    match read.next().await.unwrap().unwrap() {
                        Message::Binary(bytes) => break bytes,
                        _ => continue,
                    }
                };
                assert_eq!(bytes.len(), 32 * 1024);
                assert_eq!(&bytes[..4], &i.to_be_bytes(), "out of order");
            }
            read
        };
        let (write, read) = tokio::join!(writer, reader);
        assert!(server.stat(|s| &s.read_pauses) > 0, "reading never paused");
        let mut ws = write.reunite(read).unwrap();
        echo_once(&mut ws, b"after").await;
    })
    .await;
}

#[tokio::test]
async fn idle_connections_hold_no_receive_buffer() {
    let server = start(|config| config.recv_buffers = 64);
    bounded(async {
        let mut clients = Vec::new();
        // More idle connections than provided buffers.
        for _ in 0..150 {
            let mut ws = server.connect().await;
            echo_once(&mut ws, b"warm").await;
            clients.push(ws);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(server.stat(|s| &s.connections_open), 150);
        assert_eq!(server.stat(|s| &s.recv_buffers_held), 0);
        // Every connection still works: buffers were never pinned by idle connections.
        for ws in clients.iter_mut() {
            echo_once(ws, b"again").await;
        }
    })
    .await;
}

#[tokio::test]
async fn handshake_timeout_cuts_slowloris() {
    let server = start(|config| config.handshake_timeout = Duration::from_millis(300));
    bounded(async {
        let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        tcp.write_all(&[0x16, 0x03, 0x01]).await.unwrap(); // the start of a ClientHello
        let mut got = Vec::new();
        let _ = tcp.read_to_end(&mut got).await;
        assert!(got.is_empty());
        assert_eq!(server.stat(|s| &s.handshake_timeouts), 1);
        // TLS done but no request head.
        let _tls = server.tls().await;
        assert!(eventually(5, || server.stat(|s| &s.handshake_timeouts) == 2).await);
        assert!(eventually(5, || server.stat(|s| &s.connections_open) == 0).await);
    })
    .await;
}

#[tokio::test]
async fn max_connections_and_shutdown() {
    let server = start(|config| config.max_connections = 2);
    let addr = server.addr;
    let mut a = server.connect().await;
    let _b = server.connect().await;
    // The third is accepted and closed at once.
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let refused = server
        .connector()
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await;
    assert!(refused.is_err());
    assert_eq!(server.stat(|s| &s.refused), 1);
    echo_once(&mut a, b"ok").await;
    // Shutdown: stop accepting; the open sessions are not closed by their owners here, so the
    // driver cuts them after the grace period and returns.
    let started = std::time::Instant::now();
    tokio::task::spawn_blocking(move || server.stop())
        .await
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[test]
fn serve_future_is_send() {
    fn assert_send<T: Send>(_: &T) {}
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let server: Server = start(|_| {});
    let _ = server;
    let key = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let tls = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![key.cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.signing_key.serialize_der().into()),
    )
    .unwrap();
    struct Nop;
    impl tern_uring::Handler for Nop {
        fn websocket(&self, _: std::net::SocketAddr, _: tern_uring::WsConnection) {}
        fn http(&self, _: std::net::SocketAddr, _: tokio::io::DuplexStream) {}
    }
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let future = tern_uring::serve(
        listener,
        tern_uring::UringConfig::new(std::sync::Arc::new(tls), "/ws", 1024),
        std::sync::Arc::new(Nop),
        rx,
    );
    assert_send(&future);
    fn assert_send_type<T: Send>() {}
    assert_send_type::<tern_uring::WsReceiver>();
    assert_send_type::<tern_uring::WsSender>();
}

/// RFC 6455 7.4.1: 1005, 1006 and 1015 are never sent in a close frame. A peer that closes with
/// one gets 1000 back, not its own code (before, the driver echoed any code in 1000..=4999).
#[tokio::test]
async fn reserved_close_codes_are_not_echoed() {
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    let server = start(|_| {});
    bounded(async {
        for reserved in [1006u16, 1015] {
            let mut ws = server.connect().await;
            let frame = Frame::close(Some(CloseFrame {
                code: CloseCode::from(reserved),
                reason: "".into(),
            }));
            ws.send(Message::Frame(frame)).await.unwrap();
            let echoed = loop {
                match ws.next().await {
                    Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
                    Some(Ok(_)) => continue,
                    other => panic!("expected the server's close frame, got {other:?}"),
                }
            };
            assert_eq!(
                echoed,
                Some(1000),
                "close code {reserved} was answered with {echoed:?}"
            );
        }
    })
    .await;
}
