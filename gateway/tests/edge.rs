//! The edge as a hostile client meets it (issue 10, findings 1, 2 and part of 8): connection
//! budgets per address and in total, a deadline on every phase of a connection, HTTP/1.1 only,
//! metrics off the client port, transport URLs from configuration, private files, no log line
//! per hostile handshake. Real `tern` binary, real TLS sockets on loopback, small configured
//! limits so that every test is short; the TCP ones run on both I/O drivers.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use common::{TestServer, https, metric};
use rustls::pki_types::ServerName;
use tern_sdk::TransportPref;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Both TCP drivers (a driver the kernel does not allow would fail the server's start loudly).
const DRIVERS: [&str; 2] = ["epoll", "uring"];
/// Far beyond every short deadline configured below, far below "never".
const CLOSED_WITHIN: Duration = Duration::from_secs(8);

async fn start(io: &str, lines: &[&str]) -> TestServer {
    let io_line = format!("io = \"{io}\"");
    let mut config = vec![io_line.as_str()];
    config.extend_from_slice(lines);
    TestServer::start_with(&config).await
}

fn client_tls(server: &TestServer, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut config = (*server.config(TransportPref::WebSocket).tls().tcp).clone();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

async fn tcp_from(source: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(to).await
}

/// A finished TLS handshake from `source` (ALPN http/1.1), or the error that ended it.
async fn tls_from(
    server: &TestServer,
    source: IpAddr,
    to: SocketAddr,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = tcp_from(source, to).await?;
    let connector = TlsConnector::from(client_tls(server, &[b"http/1.1"]));
    let name = ServerName::try_from("localhost").expect("name");
    tokio::time::timeout(common::WAIT, connector.connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::other("handshake hung"))?
}

async fn tls(server: &TestServer) -> TlsStream<TcpStream> {
    tls_from(server, [127, 0, 0, 1].into(), server.addr)
        .await
        .expect("TLS handshake")
}

/// Whether the peer closed (EOF or error) within [`CLOSED_WITHIN`]; what it sent before.
async fn closed_in_time<S: AsyncRead + Unpin>(stream: &mut S) -> (bool, Vec<u8>) {
    let mut seen = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    };
    let closed = tokio::time::timeout(CLOSED_WITHIN, read).await.is_ok();
    (closed, seen)
}

/// A GET over an open connection; the response head and body as text (up to `Content-Length`).
async fn get<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, path: &str, host: &str) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(common::WAIT, stream.read(&mut buf))
            .await
            .expect("response in time")
            .expect("read");
        assert!(n > 0, "closed before a full response: {response:?}");
        response.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&response).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if body.len() >= length {
                return text;
            }
        }
    }
}

async fn healthz_ok(server: &TestServer, stream: &mut TlsStream<TcpStream>) -> bool {
    get(stream, "/healthz", &server.addr.to_string())
        .await
        .starts_with("HTTP/1.1 200")
}

#[tokio::test]
async fn one_address_holds_at_most_its_budget_and_others_still_connect() {
    for io in DRIVERS {
        let server = start(io, &["max_connections_per_address = 4"]).await;
        let attacker: IpAddr = [127, 0, 0, 1].into();
        let mut held = Vec::new();
        for _ in 0..4 {
            let mut stream = tls_from(&server, attacker, server.addr)
                .await
                .expect("within budget");
            assert!(healthz_ok(&server, &mut stream).await);
            held.push(stream);
        }
        // The fifth from the same address is closed before the handshake completes (or right
        // after, before anything is served).
        let refused = match tls_from(&server, attacker, server.addr).await {
            Err(_) => true,
            Ok(mut stream) => closed_in_time(&mut stream).await.0,
        };
        assert!(
            refused,
            "{io}: a fifth connection from one address is refused"
        );
        // Another address is not affected.
        let mut other = tls_from(&server, [127, 0, 0, 2].into(), server.addr)
            .await
            .expect("another address connects");
        assert!(healthz_ok(&server, &mut other).await, "{io}");
        // A closed connection gives its place back.
        drop(held.pop());
        let mut again = None;
        for _ in 0..50 {
            if let Ok(mut stream) = tls_from(&server, attacker, server.addr).await
                && tokio::time::timeout(Duration::from_secs(2), get(&mut stream, "/healthz", "x"))
                    .await
                    .is_ok()
            {
                again = Some(stream);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(again.is_some(), "{io}: the released place is usable again");
        let refused = metric(
            &server,
            "tern_connections_refused_total{listener=\"client\",reason=\"per_address\"}",
        )
        .await;
        assert!(refused >= 1.0, "{io}: refusals are counted ({refused})");
    }
}

#[tokio::test]
async fn at_the_global_budget_connections_are_shed_and_healthz_still_answers() {
    for io in DRIVERS {
        let server = start(io, &["max_connections = 6"]).await;
        let mut held = Vec::new();
        for i in 0..6u8 {
            // Spread over addresses so that only the global budget is in play.
            let stream = tls_from(&server, [127, 0, 1, i + 1].into(), server.addr)
                .await
                .expect("within the global budget");
            held.push(stream);
        }
        let refused = match tls_from(&server, [127, 0, 2, 1].into(), server.addr).await {
            Err(_) => true,
            Ok(mut stream) => closed_in_time(&mut stream).await.0,
        };
        assert!(
            refused,
            "{io}: past the global budget a connection is closed"
        );
        // The operations listener has a budget of its own: health checks keep working.
        let ops = server.ops_addr.expect("operations listener");
        let health = https(&server)
            .get(format!("https://{ops}/healthz"))
            .send()
            .await
            .expect("healthz on the operations listener");
        assert_eq!(health.status(), 200, "{io}");
        let shed = metric(
            &server,
            "tern_connections_refused_total{listener=\"client\",reason=\"global\"}",
        )
        .await;
        assert!(shed >= 1.0, "{io}: shed connections are counted ({shed})");
        assert!(
            !server.log().contains("Too many open files"),
            "{io}: accept never runs out of descriptors"
        );
    }
}

/// Short deadlines for the slowloris tests: each variant must be closed by its own.
const SHORT_DEADLINES: [&str; 4] = [
    "tls_handshake_timeout_ms = 1000",
    "http_head_timeout_ms = 1000",
    "http_body_timeout_ms = 1500",
    "http_write_timeout_ms = 1000",
];

#[tokio::test]
async fn a_connection_that_never_starts_tls_is_closed() {
    for io in DRIVERS {
        let server = start(io, &SHORT_DEADLINES).await;
        let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
        let (closed, _) = closed_in_time(&mut tcp).await;
        assert!(
            closed,
            "{io}: silent TCP connection closed at the TLS deadline"
        );
    }
}

#[tokio::test]
async fn a_tls_connection_that_never_sends_a_request_is_closed() {
    for io in DRIVERS {
        let server = start(io, &SHORT_DEADLINES).await;
        let mut stream = tls(&server).await;
        let (closed, sent) = closed_in_time(&mut stream).await;
        assert!(
            closed,
            "{io}: idle TLS connection closed at the head deadline"
        );
        assert!(
            !String::from_utf8_lossy(&sent).starts_with("HTTP/1.1 2"),
            "{io}"
        );
    }
}

#[tokio::test]
async fn a_request_head_dribbled_line_by_line_is_cut_off() {
    for io in DRIVERS {
        let server = start(io, &SHORT_DEADLINES).await;
        let mut stream = tls(&server).await;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
            .await
            .expect("write");
        // One header line every 300 ms, never the end of the head: each line arrives well within
        // any per-read timeout, only a deadline on the whole head ends it.
        let dribble = async {
            for i in 0..40 {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let line = format!("X-Slow-{i}: 1\r\n");
                if stream.write_all(line.as_bytes()).await.is_err() {
                    return true;
                }
                let mut buf = [0u8; 1024];
                if let Ok(read) =
                    tokio::time::timeout(Duration::from_millis(1), stream.read(&mut buf)).await
                {
                    // EOF or an error: closed. Bytes: an answer (431/408 are fine, 200 is not).
                    match read {
                        Ok(0) | Err(_) => return true,
                        Ok(n) => assert!(
                            !String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
                            "{io}: an unfinished head is never served"
                        ),
                    }
                }
            }
            false
        };
        assert!(
            tokio::time::timeout(CLOSED_WITHIN, dribble)
                .await
                .unwrap_or(false),
            "{io}: the head deadline closed the connection"
        );
    }
}

#[tokio::test]
async fn a_body_sent_one_byte_at_a_time_is_cut_off() {
    for io in DRIVERS {
        let server = start(io, &SHORT_DEADLINES).await;
        let mut stream = tls(&server).await;
        stream
            .write_all(
                b"POST /api/v1/login HTTP/1.1\r\nHost: localhost\r\n\
                  Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{",
            )
            .await
            .expect("write head");
        let (reader, mut writer) = tokio::io::split(stream);
        let dribble = tokio::spawn(async move {
            for _ in 0..200 {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if writer.write_all(b" ").await.is_err() {
                    break;
                }
            }
        });
        let mut reader = reader;
        let (closed, answer) = closed_in_time(&mut reader).await;
        dribble.abort();
        assert!(closed, "{io}: the body deadline closed the connection");
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
            "{io}: a late body gets 408 or nothing: {answer}"
        );
    }
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    for io in DRIVERS {
        let server = start(io, &SHORT_DEADLINES).await;
        let mut stream = tls(&server).await;
        assert!(healthz_ok(&server, &mut stream).await, "{io}");
        let (closed, _) = closed_in_time(&mut stream).await;
        assert!(closed, "{io}: keep-alive idle ends at the head deadline");
    }
}

#[tokio::test]
async fn a_client_that_asks_and_never_reads_is_closed() {
    for io in DRIVERS {
        let server = start(io, &SHORT_DEADLINES).await;
        // A tiny receive window, and thousands of pipelined requests for a large document: the
        // server's writes stall once the socket buffers are full.
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("rcvbuf");
        let tcp = socket.connect(server.addr).await.expect("connect");
        let connector = TlsConnector::from(client_tls(&server, &[b"http/1.1"]));
        let stream = connector
            .connect(ServerName::try_from("localhost").expect("name"), tcp)
            .await
            .expect("TLS");
        let (mut reader, mut writer) = tokio::io::split(stream);
        let pipelined = tokio::spawn(async move {
            let request = b"GET /api/v1/openapi.json HTTP/1.1\r\nHost: localhost\r\n\r\n";
            for _ in 0..3_000 {
                if writer.write_all(request).await.is_err() {
                    break;
                }
            }
            // Keeps the write half (and so the connection) open.
            tokio::time::sleep(CLOSED_WITHIN * 2).await;
        });
        // Read nothing until the server reports a stalled write it gave up on...
        let series = "tern_edge_timeouts_total{phase=\"http_write\"}";
        let mut stalled = false;
        for _ in 0..100 {
            if metric(&server, series).await >= 1.0 {
                stalled = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(stalled, "{io}: the server gave up on a stalled write");
        // ...then drain: a closed connection ends after what was already buffered.
        let drained = async {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match reader.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        };
        let closed = tokio::time::timeout(CLOSED_WITHIN, drained).await.is_ok();
        pipelined.abort();
        assert!(
            closed,
            "{io}: a stalled response write closed the connection"
        );
    }
}

/// The HTTP/2 connection preface and an empty SETTINGS frame.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

#[tokio::test]
async fn http2_by_prior_knowledge_is_not_spoken() {
    for io in DRIVERS {
        let server = start(io, &[]).await;
        // No ALPN at all: the client claims to know the server speaks h2.
        let tcp = TcpStream::connect(server.addr).await.expect("connect");
        let connector = TlsConnector::from(client_tls(&server, &[]));
        let mut stream = connector
            .connect(ServerName::try_from("localhost").expect("name"), tcp)
            .await
            .expect("TLS without ALPN");
        stream.write_all(H2_PREFACE).await.expect("preface");
        let (closed, answer) = closed_in_time(&mut stream).await;
        assert!(closed, "{io}: the connection is closed");
        // An h2 server answers with its own SETTINGS frame: 3 bytes length, type 0x4.
        let h2_settings = answer.len() >= 9 && answer[3] == 0x4;
        assert!(
            !h2_settings,
            "{io}: the server must not answer HTTP/2: {answer:?}"
        );
    }
}

#[tokio::test]
async fn metrics_are_not_served_on_the_client_port() {
    for io in DRIVERS {
        let server = start(io, &[]).await;
        let mut stream = tls(&server).await;
        let answer = get(&mut stream, "/metrics", &server.addr.to_string()).await;
        assert!(answer.starts_with("HTTP/1.1 404"), "{io}: {answer}");
        assert!(!answer.contains("tern_"), "{io}: nothing leaks");
        // They are on the operations listener (TLS, the same certificate).
        let ops = server.ops_addr.expect("operations listener");
        let mut ops_stream = tls_from(&server, [127, 0, 0, 1].into(), ops)
            .await
            .expect("operations TLS");
        let answer = get(&mut ops_stream, "/metrics", &ops.to_string()).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{io}: {answer}");
        assert!(answer.contains("tern_connections"), "{io}");
    }
}

#[tokio::test]
async fn the_operations_listener_speaks_no_plaintext() {
    let server = start("epoll", &[]).await;
    let ops = server.ops_addr.expect("operations listener");
    let mut tcp = TcpStream::connect(ops).await.expect("connect");
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let (closed, answer) = closed_in_time(&mut tcp).await;
    assert!(closed);
    assert!(
        !answer.starts_with(b"HTTP/"),
        "no plaintext answer: {answer:?}"
    );
}

#[tokio::test]
async fn transport_urls_ignore_a_forged_host_header() {
    for io in DRIVERS {
        let server = start(io, &[]).await;
        let mut stream = tls(&server).await;
        let answer = get(&mut stream, "/api/v1/transport", "evil.example:443").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{io}: {answer}");
        assert!(!answer.contains("evil.example"), "{io}: {answer}");
        assert!(
            answer.contains(&format!("wss://{}/api/v1/ws", server.addr)),
            "{io}: {answer}"
        );
    }
    // A configured public name is what clients are told.
    let server = start("epoll", &["public_authority = \"chat.example.com:443\""]).await;
    let mut stream = tls(&server).await;
    let answer = get(&mut stream, "/api/v1/transport", "evil.example:443").await;
    assert!(
        answer.contains("https://chat.example.com:443/api/v1/wt"),
        "{answer}"
    );
    assert!(!answer.contains("evil.example"), "{answer}");
}

#[cfg(unix)]
#[tokio::test]
async fn the_data_directory_and_store_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let server = TestServer::start().await;
    // Write something to the store.
    let _alice = common::user(&server, "alice").await;
    let mut pending = vec![server.data_dir.clone()];
    let mut checked = 0;
    while let Some(path) = pending.pop() {
        let meta = std::fs::symlink_metadata(&path).expect("metadata");
        let mode = meta.permissions().mode() & 0o777;
        assert_eq!(
            mode & 0o077,
            0,
            "{} is mode {mode:o}: group/other must have no access",
            path.display()
        );
        checked += 1;
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).expect("read dir") {
                pending.push(entry.expect("entry").path());
            }
        }
    }
    assert!(checked > 5, "the store wrote files ({checked} checked)");
}

#[tokio::test]
async fn an_ip_address_as_sni_is_not_logged_per_handshake() {
    let server = start("epoll", &[]).await;
    // A real ClientHello for a 9-letter name, with the name replaced by an IPv4 literal of the
    // same length: rustls clients never send IP addresses as SNI, hostile ones do.
    let mut client = rustls::ClientConnection::new(
        client_tls(&server, &[b"http/1.1"]),
        ServerName::try_from("abcdefghi").expect("name"),
    )
    .expect("client");
    let mut hello = Vec::new();
    client.write_tls(&mut hello).expect("client hello");
    let at = hello
        .windows(9)
        .position(|w| w == b"abcdefghi")
        .expect("SNI in the hello");
    hello[at..at + 9].copy_from_slice(b"127.0.0.1");
    for _ in 0..20 {
        let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
        tcp.write_all(&hello).await.expect("hello");
        let mut first = [0u8; 1];
        let read = tokio::time::timeout(common::WAIT, tcp.read_exact(&mut first)).await;
        assert!(
            matches!(read, Ok(Ok(_))) && first[0] == 0x16,
            "the server parsed the hello and answered with a handshake record"
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = server.log();
    assert!(
        !log.contains("SNI"),
        "hostile handshakes must not each write a log line:\n{}",
        log.lines()
            .filter(|l| l.contains("SNI"))
            .take(3)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

mod quic {
    use super::*;
    use wtransport::quinn;

    fn endpoint(server: &TestServer) -> quinn::Endpoint {
        let tls = (*server.config(TransportPref::WebTransport).tls().quic).clone();
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic crypto");
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        // The client keeps the connection alive itself: only the server can end it.
        transport.keep_alive_interval(Some(Duration::from_millis(500)));
        config.transport_config(Arc::new(transport));
        let mut endpoint =
            quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
        endpoint.set_default_client_config(config);
        endpoint
    }

    async fn handshake(endpoint: &quinn::Endpoint, server: &TestServer) -> quinn::Connection {
        endpoint
            .connect(server.addr, "localhost")
            .expect("connect")
            .await
            .expect("QUIC handshake")
    }

    #[tokio::test]
    async fn a_quic_connection_without_connect_is_closed_at_its_deadline() {
        let server = TestServer::start_with(&["quic_connect_timeout_ms = 1000"]).await;
        let endpoint = endpoint(&server);
        // QUIC handshake done, then never a WebTransport CONNECT (no HTTP/3 stream at all).
        let connection = handshake(&endpoint, &server).await;
        let closed = tokio::time::timeout(CLOSED_WITHIN, connection.closed()).await;
        assert!(closed.is_ok(), "the server closed the connection");
        assert!(metric(&server, "tern_quic_connect_timeouts_total").await >= 1.0);
    }

    #[tokio::test]
    async fn quic_connections_count_against_the_per_address_budget() {
        let server = TestServer::start_with(&["max_connections_per_address = 2"]).await;
        let endpoint = endpoint(&server);
        let _first = handshake(&endpoint, &server).await;
        let _second = handshake(&endpoint, &server).await;
        let third = endpoint
            .connect(server.addr, "localhost")
            .expect("connect")
            .await;
        assert!(
            matches!(third, Err(quinn::ConnectionError::ConnectionClosed(_))),
            "the third QUIC connection from one address is refused: {third:?}"
        );
    }
}
