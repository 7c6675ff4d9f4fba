//! `HttpApi` against a canned HTTPS/1.1 responder: pinned TLS through reqwest, request shapes,
//! bearer token handling and typed errors (code, status, Retry-After).

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tern_sdk::tern_wire::ids::ConversationId;
use tern_sdk::{Config, Error, HistoryQuery, HttpApi, Trust};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

struct Request {
    head: String,
    body: String,
}

/// Serves one canned response per connection, in order, and reports each request.
async fn serve(
    responses: Vec<String>,
) -> (
    String,
    [u8; 32],
    tokio::sync::mpsc::UnboundedReceiver<Request>,
) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("keygen");
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    let pin = tern_sdk::certificate_sha256(cert.der());
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
    .expect("cert");
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        for resp in responses {
            let (tcp, _) = listener.accept().await.expect("accept");
            let mut s = acceptor.accept(tcp).await.expect("tls");
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // Read the head, then Content-Length bytes of body.
            let (head, body) = loop {
                let n = s.read(&mut chunk).await.expect("read");
                assert!(n > 0, "client hung up early");
                buf.extend_from_slice(&chunk[..n]);
                if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..pos]).to_string();
                    let len = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    while buf.len() < pos + 4 + len {
                        let n = s.read(&mut chunk).await.expect("read body");
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    break (
                        head,
                        String::from_utf8_lossy(&buf[pos + 4..pos + 4 + len]).to_string(),
                    );
                }
            };
            let _ = tx.send(Request { head, body });
            s.write_all(resp.as_bytes()).await.expect("write");
            s.shutdown().await.expect("shutdown");
        }
    });
    (addr, pin, rx)
}

fn response(status: &str, extra_headers: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{extra_headers}\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn api_calls_shapes_and_errors() {
    let uid = "0191e3a0-0000-7000-8000-000000000001";
    let (addr, pin, mut requests) = serve(vec![
        response(
            "201 Created",
            "",
            &format!(r#"{{"user_id":"{uid}","username":"alice"}}"#),
        ),
        response(
            "200 OK",
            "",
            &format!(r#"{{"token":"T0K","user_id":"{uid}","username":"alice","expires_at_ms":5}}"#),
        ),
        response(
            "200 OK",
            "",
            &format!(r#"{{"user_id":"{uid}","username":"alice"}}"#),
        ),
        response(
            "429 Too Many Requests",
            "Retry-After: 7\r\n",
            r#"{"error":{"code":"rate_limited","message":"slow down"}}"#,
        ),
        response("200 OK", "", r#"{"messages":[],"has_more":false}"#),
        response(
            "200 OK",
            "",
            r#"{"messages":[],"has_more":true,"has_more_before":true,"has_more_after":false}"#,
        ),
        response("200 OK", "", r#"{"messages":[],"has_more":false}"#),
        response("204 No Content", "", ""),
    ])
    .await;
    let config = Config::new(&addr, Trust::PinnedSha256(vec![pin])).expect("config");
    let mut api = HttpApi::new(&config).expect("api");

    let user = api.register("alice", "pw").await.expect("register");
    assert_eq!(user.username, "alice");
    let r = requests.recv().await.expect("request");
    assert!(
        r.head.starts_with("POST /api/v1/register HTTP/1.1"),
        "{}",
        r.head
    );
    assert!(!r.head.to_ascii_lowercase().contains("authorization"));
    assert_eq!(r.body, r#"{"username":"alice","password":"pw"}"#);

    let login = api.login("alice", "pw").await.expect("login");
    assert_eq!(login.token, "T0K");
    assert_eq!(api.token(), Some("T0K"));
    requests.recv().await.expect("request");

    api.me().await.expect("me");
    let r = requests.recv().await.expect("request");
    assert!(r.head.starts_with("GET /api/v1/me "), "{}", r.head);
    assert!(
        r.head
            .to_ascii_lowercase()
            .contains("authorization: bearer t0k"),
        "{}",
        r.head
    );

    match api.user_by_name("bob smith").await {
        Err(Error::Api(f)) => {
            assert_eq!(f.status, 429);
            assert_eq!(f.code, "rate_limited");
            assert_eq!(f.retry_after, Some(Duration::from_secs(7)));
        }
        other => panic!("expected 429, got {other:?}"),
    }
    let r = requests.recv().await.expect("request");
    assert!(
        r.head.starts_with("GET /api/v1/users/bob%20smith "),
        "{}",
        r.head
    );

    let page = api
        .history(
            ConversationId(1),
            HistoryQuery {
                before: Some(10),
                limit: Some(20),
                ..HistoryQuery::default()
            },
        )
        .await
        .expect("history");
    assert!(page.messages.is_empty());
    let r = requests.recv().await.expect("request");
    assert!(
        r.head.starts_with("GET /api/v1/conversations/00000000-0000-0000-0000-000000000001/messages?before=10&limit=20 "),
        "{}",
        r.head
    );

    // The other forms: around a seq (with the two side flags), by time and sender.
    let page = api
        .history_around(ConversationId(1), 42, 9)
        .await
        .expect("around");
    assert!(page.has_more_before && !page.has_more_after);
    let r = requests.recv().await.expect("request");
    assert!(
        r.head.starts_with("GET /api/v1/conversations/00000000-0000-0000-0000-000000000001/messages?around=42&limit=9 "),
        "{}",
        r.head
    );
    let sender = tern_sdk::tern_wire::ids::UserId(2);
    api.history(
        ConversationId(1),
        HistoryQuery {
            sender: Some(sender),
            ..HistoryQuery::between(Some(5), Some(6), 7)
        },
    )
    .await
    .expect("by time and sender");
    let r = requests.recv().await.expect("request");
    assert!(
        r.head.starts_with("GET /api/v1/conversations/00000000-0000-0000-0000-000000000001/messages?since_ms=5&until_ms=6&sender=00000000-0000-0000-0000-000000000002&limit=7 "),
        "{}",
        r.head
    );

    api.logout().await.expect("logout");
    assert_eq!(api.token(), None);
    let r = requests.recv().await.expect("request");
    assert!(r.head.starts_with("POST /api/v1/logout "), "{}", r.head);
}

#[tokio::test]
async fn not_logged_in_is_a_local_error() {
    let config = Config::new("127.0.0.1:9", Trust::PinnedSha256(vec![[0u8; 32]])).expect("config");
    let api = HttpApi::new(&config).expect("api");
    match api.me().await {
        Err(Error::Config(m)) => assert!(m.contains("not logged in")),
        other => panic!("unexpected {other:?}"),
    }
}
