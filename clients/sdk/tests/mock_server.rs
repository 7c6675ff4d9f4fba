//! The SDK against a scripted in-process server: real TLS (pinned self-signed certificate), real
//! WebSocket and WebTransport, the real codec. Each test plays the server side step by step, so
//! it controls ordering exactly (gaps, duplicates, interleaved replies, fatal errors).

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tern_sdk::tern_wire::ids::{ConversationId, DeviceId, MessageId, UserId};
use tern_sdk::tern_wire::msg::{
    ClientMessage, Cursor, ErrorCode, Message, PROTOCOL_VERSION, ServerMessage,
};
use tern_sdk::tern_wire::{self, Limits};
use tern_sdk::{
    Client, ClientEvent, CloseReason, Config, Connection, Error, Event, Transport, TransportKind,
    TransportPref, Trust,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;

const C: ConversationId = ConversationId(0xC0);
const ALICE: UserId = UserId(0xA);
const BOB: UserId = UserId(0xB);
const DEV: DeviceId = DeviceId(0xD);

struct MockServer {
    tcp: TcpListener,
    tls: tokio_rustls::TlsAcceptor,
    wt: Option<wtransport::Endpoint<wtransport::endpoint::endpoint_side::Server>>,
    port: u16,
    pin: [u8; 32],
}

enum Peer {
    Ws(Box<WebSocketStream<tokio_rustls::server::TlsStream<TcpStream>>>),
    Wt {
        send: wtransport::SendStream,
        recv: wtransport::RecvStream,
        decoder: tern_wire::framing::FrameDecoder,
        _conn: wtransport::Connection,
    },
}

impl MockServer {
    async fn start(with_wt: bool) -> MockServer {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("keygen");
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .expect("params")
            .self_signed(&key)
            .expect("self-sign");
        let der: CertificateDer<'static> = cert.der().clone();
        let pin = tern_sdk::certificate_sha256(der.as_ref());
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));

        let mut server_tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], key_der.clone_key())
        .expect("cert");
        server_tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind tcp");
        let port = tcp.local_addr().expect("addr").port();

        let wt = if with_wt {
            let identity = wtransport::Identity::new(
                wtransport::tls::CertificateChain::single(
                    wtransport::tls::Certificate::from_der(der.to_vec()).expect("wt cert"),
                ),
                wtransport::tls::PrivateKey::from_der_pkcs8(key.serialize_der()),
            );
            let config = wtransport::ServerConfig::builder()
                .with_bind_address(([127, 0, 0, 1], port).into())
                .with_identity(identity)
                .build();
            Some(wtransport::Endpoint::server(config).expect("bind udp"))
        } else {
            None
        };
        MockServer {
            tcp,
            tls: tokio_rustls::TlsAcceptor::from(Arc::new(server_tls)),
            wt,
            port,
            pin,
        }
    }

    fn config(&self, transport: TransportPref) -> Config {
        let mut c = Config::new(
            &format!("127.0.0.1:{}", self.port),
            Trust::PinnedSha256(vec![self.pin]),
        )
        .expect("config")
        .with_transport(transport);
        c.request_timeout = Duration::from_secs(5);
        c.connect_timeout = Duration::from_secs(5);
        c.webtransport_timeout = Duration::from_millis(500);
        // Scripted servers do not expect stray Pings; the heartbeat has its own test.
        c.heartbeat_interval = None;
        c
    }

    async fn accept_ws(&self) -> Peer {
        let (tcp, _) = self.tcp.accept().await.expect("accept");
        let tls = self.tls.accept(tcp).await.expect("tls accept");
        let ws = tokio_tungstenite::accept_async(tls)
            .await
            .expect("ws accept");
        Peer::Ws(Box::new(ws))
    }

    async fn accept_wt(&self) -> Peer {
        let endpoint = self.wt.as_ref().expect("wt enabled");
        let request = endpoint.accept().await.await.expect("incoming session");
        assert_eq!(request.path(), "/api/v1/wt");
        let conn = request.accept().await.expect("session");
        let (send, recv) = conn.accept_bi().await.expect("bi stream");
        Peer::Wt {
            send,
            recv,
            decoder: tern_wire::framing::FrameDecoder::new(64 * 1024),
            _conn: conn,
        }
    }
}

impl Peer {
    async fn recv_frame(&mut self) -> Option<Vec<u8>> {
        match self {
            Peer::Ws(ws) => loop {
                match ws.next().await? {
                    Ok(WsMessage::Binary(b)) => return Some(b.to_vec()),
                    Ok(WsMessage::Close(_)) | Err(_) => return None,
                    Ok(_) => continue,
                }
            },
            Peer::Wt { recv, decoder, .. } => loop {
                if let Some(f) = decoder.next_frame().expect("client framing") {
                    return Some(f);
                }
                let mut buf = [0u8; 4096];
                match recv.read(&mut buf).await {
                    Ok(Some(n)) => decoder.push(&buf[..n]),
                    _ => return None,
                }
            },
        }
    }

    async fn recv(&mut self) -> ClientMessage {
        let frame = self.recv_frame().await.expect("client frame");
        tern_wire::decode_client(&frame, &Limits::default()).expect("decodes")
    }

    /// The next frame that is not an Ack (acks are coalesced and their timing is incidental).
    async fn recv_non_ack(&mut self) -> ClientMessage {
        loop {
            match self.recv().await {
                ClientMessage::Ack { .. } => continue,
                other => return other,
            }
        }
    }

    async fn send_raw(&mut self, frame: Vec<u8>) {
        match self {
            Peer::Ws(ws) => ws
                .send(WsMessage::Binary(frame.into()))
                .await
                .expect("ws send"),
            Peer::Wt { send, .. } => send
                .write_all(&tern_wire::framing::frame(&frame))
                .await
                .expect("wt send"),
        }
    }

    async fn send(&mut self, msg: ServerMessage) {
        self.send_raw(tern_wire::encode_server(&msg)).await;
    }

    async fn close(&mut self) {
        match self {
            Peer::Ws(ws) => {
                let _ = ws.send(WsMessage::Close(None)).await;
                let _ = SinkExt::close(ws.as_mut()).await;
            }
            Peer::Wt { send, _conn, .. } => {
                // Closing the session at once would discard the unacknowledged tail of the
                // stream (e.g. the fatal Error just sent): finish first, as a server must.
                let _ = tokio::time::timeout(Duration::from_secs(1), send.finish()).await;
                _conn.close(wtransport::VarInt::from_u32(0), b"");
            }
        }
    }

    /// Expects Hello, answers Welcome; returns the Hello's cursors.
    async fn welcome(&mut self) -> Vec<Cursor> {
        match self.recv().await {
            ClientMessage::Hello {
                min_version,
                max_version,
                token,
                device,
                cursors,
                ..
            } => {
                assert_eq!((min_version, max_version), (1, PROTOCOL_VERSION));
                assert_eq!(token, "tok");
                assert_eq!(device, DEV);
                self.send(ServerMessage::Welcome {
                    version: 1,
                    user: ALICE,
                    device: DEV,
                    server_time_ms: 1,
                    max_frame_bytes: 64 * 1024,
                    one_time_keys_left: 0,
                })
                .await;
                cursors
            }
            other => panic!("expected Hello, got {other:?}"),
        }
    }
}

fn msg(seq: u64, from: UserId) -> Message {
    Message {
        conversation: C,
        seq,
        message_id: MessageId(seq as u128),
        sender_user: from,
        sender_device: DeviceId(0xE),
        client_msg_id: 1000 + seq as u128,
        timestamp_ms: 1_700_000_000_000 + seq,
        content_type: "text".into(),
        payload: format!("m{seq}").into_bytes(),
        files: vec![],
    }
}

fn ack_for(request_id: u64, client_msg_id: u128, seq: u64) -> ServerMessage {
    ServerMessage::SendAck {
        request_id,
        conversation: C,
        client_msg_id,
        seq,
        message_id: MessageId(seq as u128),
        timestamp_ms: 5,
        duplicate: false,
    }
}

async fn next_message(client: &mut Client) -> Message {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), client.next_event())
            .await
            .expect("event in time")
        {
            Some(ClientEvent::Message(m)) => return m,
            Some(ClientEvent::SyncComplete) => continue,
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

async fn connection_roundtrip(kind: TransportPref, expect: TransportKind) {
    let server = MockServer::start(kind != TransportPref::WebSocket).await;
    let config = server.config(kind);
    let server_side = async {
        let mut peer = if expect == TransportKind::WebTransport {
            server.accept_wt().await
        } else {
            server.accept_ws().await
        };
        let cursors = peer.welcome().await;
        assert_eq!(
            cursors,
            vec![Cursor {
                conversation: C,
                seq: 4
            }]
        );
        // Send: reply with an unrelated ack and a Deliver first, then the real ack.
        let (request_id, client_msg_id) = match peer.recv().await {
            ClientMessage::Send {
                request_id,
                client_msg_id,
                content_type,
                payload,
                ..
            } => {
                assert_eq!(content_type, "text");
                assert_eq!(payload, b"hello");
                (request_id, client_msg_id)
            }
            other => panic!("expected Send, got {other:?}"),
        };
        assert_ne!(request_id, 0);
        peer.send(ack_for(request_id + 100, 1, 1)).await;
        peer.send(ServerMessage::Deliver {
            message: msg(5, BOB),
        })
        .await;
        peer.send(ack_for(request_id, client_msg_id, 6)).await;
        // Ping.
        match peer.recv().await {
            ClientMessage::Ping { nonce } => peer.send(ServerMessage::Pong { nonce }).await,
            other => panic!("expected Ping, got {other:?}"),
        }
        // History over the socket, answered with an error.
        match peer.recv().await {
            ClientMessage::History {
                request_id,
                conversation,
                ..
            } => {
                assert_eq!(conversation, C);
                peer.send(ServerMessage::error(
                    request_id,
                    ErrorCode::Forbidden,
                    "not a member",
                    false,
                ))
                .await;
            }
            other => panic!("expected History, got {other:?}"),
        }
        match peer.recv().await {
            ClientMessage::Ack { conversation, seq } => assert_eq!((conversation, seq), (C, 5)),
            other => panic!("expected Ack, got {other:?}"),
        }
        peer.send(ServerMessage::error(
            0,
            ErrorCode::TokenRevoked,
            "logged out",
            true,
        ))
        .await;
        peer.close().await;
    };
    let client_side = async {
        let mut conn = Connection::connect(
            &config,
            "tok",
            DEV,
            &[Cursor {
                conversation: C,
                seq: 4,
            }],
        )
        .await
        .expect("connect");
        assert_eq!(conn.transport_kind(), expect);
        assert_eq!(conn.welcome().user, ALICE);
        let receipt = conn
            .send(C, 77, "text", b"hello".to_vec())
            .await
            .expect("send");
        assert_eq!(receipt.seq, 6);
        assert!(!receipt.duplicate);
        conn.ping().await.expect("pong");
        match conn.history(C, 0, 0, 10).await {
            Err(Error::Server {
                code: ErrorCode::Forbidden,
                fatal: false,
                ..
            }) => {}
            other => panic!("expected Forbidden, got {other:?}"),
        }
        conn.ack(C, 5).await.expect("ack");
        // Events: the unmatched ack, the delivery, then the fatal error and the close.
        match conn.next_event().await {
            Some(Event::Other(ServerMessage::SendAck { request_id, .. })) => {
                assert!(request_id > 100)
            }
            other => panic!("unexpected {other:?}"),
        }
        match conn.next_event().await {
            Some(Event::Deliver(m)) => assert_eq!(m.seq, 5),
            other => panic!("unexpected {other:?}"),
        }
        match conn.next_event().await {
            Some(Event::Error {
                code: ErrorCode::TokenRevoked,
                fatal: true,
                ..
            }) => {}
            other => panic!("unexpected {other:?}"),
        }
        match conn.next_event().await {
            Some(Event::Closed(CloseReason::Fatal {
                code: ErrorCode::TokenRevoked,
                ..
            })) => {}
            other => panic!("unexpected {other:?}"),
        }
        assert!(conn.next_event().await.is_none());
        match conn.send(C, 78, "text", b"late".to_vec()).await {
            Err(e) => assert!(e.is_auth(), "{e}"),
            Ok(r) => panic!("sent on a closed connection: {r:?}"),
        }
    };
    tokio::time::timeout(Duration::from_secs(20), async {
        tokio::join!(server_side, client_side)
    })
    .await
    .expect("test finished in time");
}

#[tokio::test]
async fn websocket_connection_roundtrip() {
    connection_roundtrip(TransportPref::WebSocket, TransportKind::WebSocket).await;
}

#[tokio::test]
async fn webtransport_connection_roundtrip() {
    connection_roundtrip(TransportPref::WebTransport, TransportKind::WebTransport).await;
}

#[tokio::test]
async fn auto_prefers_webtransport() {
    connection_roundtrip(TransportPref::Auto, TransportKind::WebTransport).await;
}

#[tokio::test]
async fn auto_falls_back_to_websocket_without_udp_listener() {
    let server = MockServer::start(false).await;
    let config = server.config(TransportPref::Auto);
    let server_side = async {
        let mut peer = server.accept_ws().await;
        peer.welcome().await;
    };
    let client_side = async {
        let conn = Connection::connect(&config, "tok", DEV, &[])
            .await
            .expect("connect");
        assert_eq!(conn.transport_kind(), TransportKind::WebSocket);
        conn
    };
    let ((), conn) = tokio::join!(server_side, client_side);
    conn.close().await;
}

#[tokio::test]
async fn wrong_pin_is_refused() {
    let server = MockServer::start(false).await;
    let config = Config::new(
        &format!("127.0.0.1:{}", server.port),
        Trust::PinnedSha256(vec![[9u8; 32]]),
    )
    .expect("config")
    .with_transport(TransportPref::WebSocket);
    let server_side = async {
        let (tcp, _) = server.tcp.accept().await.expect("accept");
        assert!(
            server.tls.accept(tcp).await.is_err(),
            "client must abort the handshake"
        );
    };
    let client_side = async {
        let err = Connection::connect(&config, "tok", DEV, &[])
            .await
            .expect_err("must not connect");
        assert!(
            err.to_string().contains("not pinned") || format!("{err:?}").contains("not pinned"),
            "{err:?}"
        );
    };
    tokio::join!(server_side, client_side);
}

#[tokio::test]
async fn hello_rejected_is_an_auth_error() {
    let server = MockServer::start(false).await;
    let config = server.config(TransportPref::WebSocket);
    let server_side = async {
        let mut peer = server.accept_ws().await;
        let _ = peer.recv().await;
        peer.send(ServerMessage::error(
            0,
            ErrorCode::Unauthenticated,
            "bad token",
            true,
        ))
        .await;
        peer.close().await;
    };
    let client_side = async {
        let err = Connection::connect(&config, "tok", DEV, &[])
            .await
            .expect_err("rejected");
        assert!(err.is_auth(), "{err:?}");
    };
    tokio::join!(server_side, client_side);
}

#[tokio::test]
async fn undecodable_server_frame_closes_with_protocol_reason() {
    let server = MockServer::start(false).await;
    let config = server.config(TransportPref::WebSocket);
    let server_side = async {
        let mut peer = server.accept_ws().await;
        peer.welcome().await;
        peer.send_raw(vec![1, 2, 3, 4, 5, 6, 7, 8]).await;
        // Keep the socket open until the client hangs up.
        while peer.recv_frame().await.is_some() {}
    };
    let client_side = async {
        let mut conn = Connection::connect(&config, "tok", DEV, &[])
            .await
            .expect("connect");
        match conn.next_event().await {
            Some(Event::Closed(CloseReason::Protocol(_))) => {}
            other => panic!("unexpected {other:?}"),
        }
        conn.close().await;
    };
    tokio::join!(server_side, client_side);
}

#[tokio::test]
async fn raw_transport_sends_hand_made_frames() {
    let server = MockServer::start(true).await;
    let config = server.config(TransportPref::WebTransport);
    let server_side = async {
        let mut peer = server.accept_wt().await;
        // An honest frame, then raw bytes announcing a frame far over the limit.
        assert!(matches!(
            peer.recv().await,
            ClientMessage::Ping { nonce: 1 }
        ));
        if let Peer::Wt { recv, decoder, .. } = &mut peer {
            // The bad header may already sit in the decoder (read together with the Ping).
            loop {
                match decoder.next_frame() {
                    Err(tern_wire::WireError::FrameTooLarge { .. }) => break,
                    Ok(None) => {
                        let mut buf = [0u8; 64];
                        let n = recv.read(&mut buf).await.expect("read").expect("bytes");
                        decoder.push(&buf[..n]);
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
    };
    let client_side = async {
        let mut t = Transport::connect(&config).await.expect("transport");
        assert_eq!(t.kind(), TransportKind::WebTransport);
        t.send_message(&ClientMessage::Ping { nonce: 1 })
            .await
            .expect("ping");
        t.send_raw(&u32::MAX.to_le_bytes()).await.expect("raw");
        t
    };
    let ((), mut t) = tokio::join!(server_side, client_side);
    let _ = t.close().await;
}

/// Client: replay with a gap filled through History, de-duplication, own sends, Acks, and a
/// reconnect that resumes from the cursors.
#[tokio::test]
async fn client_fills_gaps_dedups_and_resumes() {
    let server = MockServer::start(false).await;
    let config = server.config(TransportPref::WebSocket);
    let server_side = async {
        let mut peer = server.accept_ws().await;
        assert_eq!(
            peer.welcome().await,
            vec![Cursor {
                conversation: C,
                seq: 2
            }]
        );
        peer.send(ServerMessage::Deliver {
            message: msg(3, BOB),
        })
        .await;
        peer.send(ServerMessage::Deliver {
            message: msg(6, BOB),
        })
        .await; // 4 and 5 missing
        match peer.recv_non_ack().await {
            ClientMessage::History {
                request_id,
                conversation,
                before_seq,
                after_seq,
                limit,
                around_seq: 0,
                since_ms: 0,
                until_ms: 0,
                sender: None,
            } => {
                assert_eq!((conversation, after_seq, before_seq), (C, 3, 6));
                assert!(limit >= 2);
                peer.send(ServerMessage::HistoryPage {
                    request_id,
                    conversation: C,
                    messages: vec![msg(5, BOB), msg(4, BOB)],
                    reactions: vec![],
                    has_more: false,
                    has_more_before: false,
                    has_more_after: false,
                })
                .await;
            }
            other => panic!("expected History, got {other:?}"),
        }
        peer.send(ServerMessage::Deliver {
            message: msg(5, BOB),
        })
        .await; // duplicate
        peer.send(ServerMessage::SyncComplete).await;
        // Own send gets seq 7; the next delivery (8) must not look like a gap.
        match peer.recv_non_ack().await {
            ClientMessage::Send {
                request_id,
                client_msg_id,
                ..
            } => peer.send(ack_for(request_id, client_msg_id, 7)).await,
            other => panic!("expected Send, got {other:?}"),
        }
        peer.send(ServerMessage::Deliver {
            message: msg(8, BOB),
        })
        .await;
        // Acks: eventually the cursor reaches 8.
        loop {
            match peer.recv().await {
                ClientMessage::Ack { conversation, seq } if conversation == C && seq == 8 => break,
                ClientMessage::Ack { .. } => continue,
                other => panic!("expected Ack, got {other:?}"),
            }
        }
        // Connection drops; the client resumes after 8.
        peer.close().await;
        let mut peer = server.accept_ws().await;
        assert_eq!(
            peer.welcome().await,
            vec![Cursor {
                conversation: C,
                seq: 8
            }]
        );
        peer.send(ServerMessage::Deliver {
            message: msg(8, BOB),
        })
        .await; // replayed duplicate
        peer.send(ServerMessage::Deliver {
            message: msg(9, BOB),
        })
        .await;
        peer.send(ServerMessage::SyncComplete).await;
        while peer.recv_frame().await.is_some() {}
    };
    let client_side = async {
        let mut client = Client::connect(
            config.clone(),
            "tok",
            DEV,
            &[Cursor {
                conversation: C,
                seq: 2,
            }],
        )
        .await
        .expect("connect");
        let got: Vec<u64> = [
            next_message(&mut client).await,
            next_message(&mut client).await,
            next_message(&mut client).await,
            next_message(&mut client).await,
        ]
        .iter()
        .map(|m| m.seq)
        .collect();
        assert_eq!(got, vec![3, 4, 5, 6]);
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(5), client.next_event())
                .await
                .expect("event"),
            Some(ClientEvent::SyncComplete)
        );
        let receipt = client
            .send(C, "text", b"mine".to_vec())
            .await
            .expect("send");
        assert_eq!(receipt.seq, 7);
        assert_eq!(next_message(&mut client).await.seq, 8);
        // Asking for the next event acks 8; the server then drops us.
        match tokio::time::timeout(Duration::from_secs(5), client.next_event())
            .await
            .expect("event")
        {
            Some(ClientEvent::Disconnected(CloseReason::ClosedByServer)) => {}
            other => panic!("expected Disconnected, got {other:?}"),
        }
        assert_eq!(
            client.cursors(),
            vec![Cursor {
                conversation: C,
                seq: 8
            }]
        );
        assert!(client.next_event().await.is_none());
        client.reconnect().await.expect("reconnect");
        assert_eq!(next_message(&mut client).await.seq, 9);
        client.close().await;
    };
    tokio::time::timeout(Duration::from_secs(20), async {
        tokio::join!(server_side, client_side)
    })
    .await
    .expect("test finished in time");
}

#[tokio::test]
async fn unfillable_gap_is_reported_and_skipped() {
    let server = MockServer::start(false).await;
    let config = server.config(TransportPref::WebSocket);
    let server_side = async {
        let mut peer = server.accept_ws().await;
        peer.welcome().await;
        peer.send(ServerMessage::Deliver {
            message: msg(10, BOB),
        })
        .await;
        peer.send(ServerMessage::Deliver {
            message: msg(13, BOB),
        })
        .await;
        match peer.recv_non_ack().await {
            ClientMessage::History { request_id, .. } => {
                peer.send(ServerMessage::HistoryPage {
                    request_id,
                    conversation: C,
                    messages: vec![],
                    reactions: vec![],
                    has_more: false,
                    has_more_before: false,
                    has_more_after: false,
                })
                .await
            }
            other => panic!("expected History, got {other:?}"),
        }
        while peer.recv_frame().await.is_some() {}
    };
    let client_side = async {
        let mut client = Client::connect(config, "tok", DEV, &[])
            .await
            .expect("connect");
        assert_eq!(next_message(&mut client).await.seq, 10);
        match client.next_event().await {
            Some(ClientEvent::Skipped {
                conversation,
                from_seq: 11,
                to_seq: 12,
                ..
            }) => assert_eq!(conversation, C),
            other => panic!("expected Skipped, got {other:?}"),
        }
        assert_eq!(next_message(&mut client).await.seq, 13);
        client.close().await;
    };
    tokio::time::timeout(Duration::from_secs(20), async {
        tokio::join!(server_side, client_side)
    })
    .await
    .expect("test finished in time");
}

#[tokio::test]
async fn heartbeat_detects_a_silent_server() {
    let server = MockServer::start(false).await;
    let mut config = server.config(TransportPref::WebSocket);
    config.heartbeat_interval = Some(Duration::from_millis(100));
    config.request_timeout = Duration::from_millis(300);
    let server_side = async {
        let mut peer = server.accept_ws().await;
        peer.welcome().await;
        // Answer the first two pings, then go silent (but keep the socket open).
        for _ in 0..2 {
            match peer.recv().await {
                ClientMessage::Ping { nonce } => peer.send(ServerMessage::Pong { nonce }).await,
                other => panic!("expected Ping, got {other:?}"),
            }
        }
        while peer.recv_frame().await.is_some() {}
    };
    let client_side = async {
        let mut conn = Connection::connect(&config, "tok", DEV, &[])
            .await
            .expect("connect");
        let started = std::time::Instant::now();
        match conn.next_event().await {
            Some(Event::Closed(CloseReason::Transport(why))) => {
                assert!(why.contains("heartbeat"), "{why}")
            }
            other => panic!("unexpected {other:?}"),
        }
        // Two answered pings (~200 ms), then one unanswered (100 ms + 300 ms).
        assert!(
            started.elapsed() >= Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
        conn.close().await;
    };
    tokio::time::timeout(Duration::from_secs(20), async {
        tokio::join!(server_side, client_side)
    })
    .await
    .expect("test finished in time");
}

#[tokio::test]
async fn late_send_ack_is_not_a_gap() {
    let server = MockServer::start(false).await;
    let mut config = server.config(TransportPref::WebSocket);
    config.request_timeout = Duration::from_millis(300);
    let server_side = async {
        let mut peer = server.accept_ws().await;
        peer.welcome().await;
        peer.send(ServerMessage::Deliver {
            message: msg(1, BOB),
        })
        .await;
        peer.send(ServerMessage::SyncComplete).await;
        let (request_id, client_msg_id) = match peer.recv_non_ack().await {
            ClientMessage::Send {
                request_id,
                client_msg_id,
                ..
            } => (request_id, client_msg_id),
            other => panic!("expected Send, got {other:?}"),
        };
        tokio::time::sleep(Duration::from_millis(500)).await; // the client gives up meanwhile
        peer.send(ack_for(request_id, client_msg_id, 2)).await;
        peer.send(ServerMessage::Deliver {
            message: msg(3, BOB),
        })
        .await;
        // No History request may follow: only Acks until the client hangs up.
        while let Some(frame) = peer.recv_frame().await {
            let m = tern_wire::decode_client(&frame, &Limits::default()).expect("decodes");
            assert!(matches!(m, ClientMessage::Ack { .. }), "unexpected {m:?}");
        }
    };
    let client_side = async {
        let mut client = Client::connect(config, "tok", DEV, &[])
            .await
            .expect("connect");
        assert_eq!(next_message(&mut client).await.seq, 1);
        assert_eq!(client.next_event().await, Some(ClientEvent::SyncComplete));
        match client.send(C, "text", b"slow".to_vec()).await {
            Err(Error::Timeout(_)) => {}
            other => panic!("expected a timeout, got {other:?}"),
        }
        match client.next_event().await {
            Some(ClientEvent::Other(ServerMessage::SendAck { seq: 2, .. })) => {}
            other => panic!("expected the late SendAck, got {other:?}"),
        }
        assert_eq!(next_message(&mut client).await.seq, 3);
        assert_eq!(
            client.cursors(),
            vec![Cursor {
                conversation: C,
                seq: 3
            }]
        );
        client.close().await;
    };
    tokio::time::timeout(Duration::from_secs(20), async {
        tokio::join!(server_side, client_side)
    })
    .await
    .expect("test finished in time");
}

/// `bind_address` picks the source address, and a split connection sends from several tasks
/// while its event stream is read elsewhere.
async fn split_with_bind_address(kind: TransportPref) {
    let server = MockServer::start(kind == TransportPref::WebTransport).await;
    let mut config = server.config(kind);
    let source: std::net::IpAddr = "127.0.0.2".parse().expect("ip");
    config.bind_address = Some(source);
    let server_side = async {
        let (mut peer, remote) = if kind == TransportPref::WebTransport {
            let endpoint = server.wt.as_ref().expect("wt enabled");
            let request = endpoint.accept().await.await.expect("incoming session");
            let conn = request.accept().await.expect("session");
            let remote = conn.remote_address().ip();
            let (send, recv) = conn.accept_bi().await.expect("bi stream");
            let peer = Peer::Wt {
                send,
                recv,
                decoder: tern_wire::framing::FrameDecoder::new(64 * 1024),
                _conn: conn,
            };
            (peer, remote)
        } else {
            let (tcp, remote) = server.tcp.accept().await.expect("accept");
            let tls = server.tls.accept(tcp).await.expect("tls accept");
            let ws = tokio_tungstenite::accept_async(tls)
                .await
                .expect("ws accept");
            (Peer::Ws(Box::new(ws)), remote.ip())
        };
        assert_eq!(remote, source, "the connection comes from the bind address");
        peer.welcome().await;
        // Two sends from two tasks: answer both, with a delivery in between.
        let mut ids = Vec::new();
        while ids.len() < 2 {
            match peer.recv_non_ack().await {
                ClientMessage::Send {
                    request_id,
                    client_msg_id,
                    ..
                } => ids.push((request_id, client_msg_id)),
                ClientMessage::Ping { nonce } => peer.send(ServerMessage::Pong { nonce }).await,
                other => panic!("expected Send, got {other:?}"),
            }
        }
        peer.send(ServerMessage::Deliver {
            message: msg(5, BOB),
        })
        .await;
        for (i, (request_id, client_msg_id)) in ids.into_iter().enumerate() {
            peer.send(ack_for(request_id, client_msg_id, 6 + i as u64))
                .await;
        }
        match peer.recv_non_ack().await {
            ClientMessage::Ping { nonce } => peer.send(ServerMessage::Pong { nonce }).await,
            other => panic!("expected Ping, got {other:?}"),
        }
        peer.close().await;
    };
    let client_side = async {
        let conn = Connection::connect(&config, "tok", DEV, &[])
            .await
            .expect("connect");
        let (sender, mut events) = conn.split();
        let other = sender.clone();
        let first = tokio::spawn(async move { other.send(C, 1, "text", b"a".to_vec()).await });
        let second = sender.send(C, 2, "text", b"b".to_vec());
        let (first, second) = tokio::join!(first, second);
        let mut seqs = vec![
            first.expect("task").expect("first send").seq,
            second.expect("second send").seq,
        ];
        seqs.sort();
        assert_eq!(seqs, vec![6, 7]);
        match events.next_event().await {
            Some(Event::Deliver(m)) => assert_eq!(m.seq, 5),
            other => panic!("unexpected {other:?}"),
        }
        sender.ack(C, 5).await.expect("ack");
        sender.ping().await.expect("pong");
        match events.next_event().await {
            Some(Event::Closed(CloseReason::ClosedByServer)) => {}
            other => panic!("unexpected {other:?}"),
        }
        assert!(sender.is_closed());
        assert!(sender.send(C, 3, "text", b"late".to_vec()).await.is_err());
    };
    tokio::time::timeout(Duration::from_secs(20), async {
        tokio::join!(server_side, client_side)
    })
    .await
    .expect("test finished in time");
}

#[tokio::test]
async fn websocket_split_with_bind_address() {
    split_with_bind_address(TransportPref::WebSocket).await;
}

#[tokio::test]
async fn webtransport_split_with_bind_address() {
    split_with_bind_address(TransportPref::WebTransport).await;
}

/// Dropping both halves ends the connection: the server sees it close.
#[tokio::test]
async fn dropping_both_halves_closes() {
    let server = MockServer::start(false).await;
    let config = server.config(TransportPref::WebSocket);
    let server_side = async {
        let mut peer = server.accept_ws().await;
        peer.welcome().await;
        assert!(peer.recv_frame().await.is_none(), "closed after the drop");
    };
    let client_side = async {
        let conn = Connection::connect(&config, "tok", DEV, &[])
            .await
            .expect("connect");
        let (sender, events) = conn.split();
        let clone = sender.clone();
        drop(sender);
        drop(events);
        // A clone keeps the connection; dropping it too ends it.
        assert!(!clone.is_closed());
        drop(clone);
    };
    tokio::time::timeout(Duration::from_secs(20), async {
        tokio::join!(server_side, client_side)
    })
    .await
    .expect("test finished in time");
}
