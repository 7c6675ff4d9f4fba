//! What a browser page meets at the server (issue 12, part 7): security headers on every
//! response, `no-store` on tokens, CORS for configured origins only, every error in the API's
//! JSON shape, an OpenAPI document listing what the server answers, the `Origin` check on the
//! WebSocket upgrade and the WebTransport CONNECT. Real `tern` binary, real TLS on loopback;
//! everything on the TCP edge runs on both I/O drivers.

mod common;

use std::sync::Arc;

use common::{TestServer, https};
use reqwest::header;
use rustls::pki_types::ServerName;
use tern_sdk::TransportPref;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;

const DRIVERS: [&str; 2] = ["epoll", "uring"];
const LISTED: &str = "https://app.example.com";
const EVIL: &str = "https://evil.example";

async fn start(io: &str, extra: &[&str]) -> TestServer {
    let io_line = format!("io = \"{io}\"");
    let mut lines = vec![io_line.as_str()];
    lines.extend_from_slice(extra);
    TestServer::start_with(&lines).await
}

fn url(server: &TestServer, path: &str) -> String {
    format!("https://{}{path}", server.addr)
}

fn header_of(headers: &reqwest::header::HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .map(|v| v.to_str().expect("ascii").to_owned())
        .unwrap_or_default()
}

/// One raw request over a fresh TLS connection; the response's head (lower-cased names) and
/// body. `extra` are whole header lines.
async fn raw(server: &TestServer, method: &str, path: &str, extra: &[&str]) -> (String, String) {
    let host = format!("Host: {}", server.addr);
    let mut lines = vec![host.as_str()];
    lines.extend_from_slice(extra);
    raw_with_host(server, method, path, &lines).await
}

/// [`raw`] with the `Host` line among `extra`.
async fn raw_with_host(
    server: &TestServer,
    method: &str,
    path: &str,
    extra: &[&str],
) -> (String, String) {
    let config = (*server.config(TransportPref::WebSocket).tls().tcp).clone();
    let connector = TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    let mut tls = connector.connect(name, tcp).await.expect("TLS");
    let mut request = format!("{method} {path} HTTP/1.1\r\n");
    for line in extra {
        request.push_str(line);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    tls.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    // Up to the end of the head (an upgrade keeps the connection open), then what follows
    // within a short while.
    loop {
        let n = tokio::time::timeout(common::WAIT, tls.read(&mut buf))
            .await
            .expect("response in time")
            .unwrap_or(0);
        if n == 0 {
            break;
        }
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
            if head.starts_with("HTTP/1.1 101") || body.len() >= length {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&response).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (head.to_ascii_lowercase(), body.to_owned())
}

fn upgrade_lines(origin: Option<&str>) -> Vec<String> {
    let mut lines = vec![
        "Upgrade: websocket".to_owned(),
        "Connection: Upgrade".to_owned(),
        "Sec-WebSocket-Version: 13".to_owned(),
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==".to_owned(),
    ];
    if let Some(origin) = origin {
        lines.push(format!("Origin: {origin}"));
    }
    lines
}

fn assert_security_headers(head: &str, what: &str) {
    for line in [
        "strict-transport-security: max-age=31536000",
        "x-content-type-options: nosniff",
        "referrer-policy: no-referrer",
        "x-frame-options: deny",
    ] {
        assert!(head.contains(line), "{what}: missing {line:?} in\n{head}");
    }
    assert!(
        head.contains("frame-ancestors 'none'"),
        "{what}: no CSP frame-ancestors in\n{head}"
    );
}

fn assert_error_shape(body: &str, code: &str, what: &str) {
    let value: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {body:?}"));
    assert_eq!(value["error"]["code"], code, "{what}: {body}");
    assert!(
        value["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{what}: no message: {body}"
    );
}

#[tokio::test]
async fn every_response_carries_the_security_headers_and_api_answers_are_not_stored() {
    for io in DRIVERS {
        let server = start(io, &[]).await;
        let ws_lines = upgrade_lines(None);
        let ws_lines: Vec<&str> = ws_lines.iter().map(String::as_str).collect();
        let probes: Vec<(&str, &str, Vec<&str>, &str)> = vec![
            ("GET", "/", vec![], "the app (or its instructions)"),
            ("GET", "/api/v1/transport", vec![], "API JSON"),
            ("GET", "/api/v1/nope", vec![], "API 404"),
            ("GET", "/api/v1/login", vec![], "405"),
            ("GET", "/healthz", vec![], "health"),
            ("GET", "/api/v1/ws", ws_lines.clone(), "WebSocket upgrade"),
        ];
        for (method, path, extra, what) in probes {
            let (head, _) = raw(&server, method, path, &extra).await;
            assert_security_headers(&head, &format!("{io} {what}"));
            if path.starts_with("/api") && !head.starts_with("http/1.1 101") {
                assert!(
                    head.contains("cache-control: no-store"),
                    "{io} {what}: API answers are not stored:\n{head}"
                );
            }
        }
        // Not for "localhost": HSTS would bind every port of it in the user's browser.
        let host = format!("Host: localhost:{}", server.addr.port());
        let config = (*server.config(TransportPref::WebSocket).tls().tcp).clone();
        let mut tls = TlsConnector::from(Arc::new(config))
            .connect(
                ServerName::try_from("localhost").expect("name"),
                tokio::net::TcpStream::connect(server.addr)
                    .await
                    .expect("tcp"),
            )
            .await
            .expect("TLS");
        let request =
            format!("GET /api/v1/transport HTTP/1.1\r\n{host}\r\nConnection: close\r\n\r\n");
        tls.write_all(request.as_bytes()).await.expect("write");
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(common::WAIT, tls.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
        assert!(answer.starts_with("http/1.1 200"), "{io}: {answer}");
        assert!(
            answer.contains("x-content-type-options: nosniff"),
            "{io}: {answer}"
        );
        assert!(
            !answer.contains("strict-transport-security"),
            "{io}: no HSTS for localhost: {answer}"
        );

        // Nor on the WebSocket upgrade from a localhost page (the io_uring driver writes it).
        let lines = upgrade_lines(None);
        let mut lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        lines.push(&host);
        let (head, _) = raw_with_host(&server, "GET", "/api/v1/ws", &lines).await;
        assert!(head.starts_with("http/1.1 101"), "{io}: {head}");
        assert!(
            head.contains("x-content-type-options: nosniff"),
            "{io}: {head}"
        );
        assert!(
            !head.contains("strict-transport-security"),
            "{io}: no HSTS on a localhost upgrade: {head}"
        );

        // The page's HTML gets the strict policy.
        let (head, _) = raw(&server, "GET", "/", &["Accept: text/html"]).await;
        for directive in [
            "default-src 'self'",
            "script-src 'self' 'wasm-unsafe-eval'",
            "style-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "require-trusted-types-for 'script'",
            &format!("connect-src 'self' https://{0} wss://{0}", server.addr),
        ] {
            assert!(
                head.contains(directive),
                "{io}: CSP lacks {directive:?}:\n{head}"
            );
        }
        assert!(!head.contains("unsafe-inline"), "{io}: {head}");

        // The login answer carries the token: never stored by any cache.
        let client = https(&server);
        let credentials = serde_json::json!({"username": "carol", "password": common::PASSWORD});
        let registered = client
            .post(url(&server, "/api/v1/register"))
            .json(&credentials)
            .send()
            .await
            .expect("register");
        assert_eq!(registered.status(), 201);
        let login = client
            .post(url(&server, "/api/v1/login"))
            .json(&credentials)
            .send()
            .await
            .expect("login");
        assert_eq!(login.status(), 200);
        assert_eq!(
            header_of(login.headers(), "cache-control"),
            "no-store",
            "{io}"
        );
        assert_eq!(
            header_of(login.headers(), "strict-transport-security"),
            "max-age=31536000"
        );
    }
}

#[tokio::test]
async fn preflights_answer_listed_origins_and_refuse_others_with_a_reason() {
    for io in DRIVERS {
        let cors = format!("cors_origins = [\"{LISTED}\"]");
        let server = start(io, &[&cors]).await;
        let preflight = |origin: &'static str| {
            let origin_line = format!("Origin: {origin}");
            let server = &server;
            async move {
                raw(
                    server,
                    "OPTIONS",
                    "/api/v1/login",
                    &[
                        &origin_line,
                        "Access-Control-Request-Method: POST",
                        "Access-Control-Request-Headers: content-type",
                    ],
                )
                .await
            }
        };
        let (head, _) = preflight(LISTED).await;
        assert!(head.starts_with("http/1.1 204"), "{io}: {head}");
        assert!(
            head.contains(&format!("access-control-allow-origin: {LISTED}")),
            "{io}: {head}"
        );
        assert!(head.contains("access-control-allow-methods: get, head, post, put, patch, delete"));
        assert!(head.contains(
            "access-control-allow-headers: authorization, content-type, upload-offset, range"
        ));
        assert_security_headers(&head, "preflight");

        let (head, body) = preflight(EVIL).await;
        assert!(head.starts_with("http/1.1 403"), "{io}: {head}");
        assert!(
            !head.contains("access-control-allow-origin"),
            "{io}: {head}"
        );
        assert_error_shape(&body, "forbidden", "refused preflight");
        assert!(
            body.contains("cors_origins"),
            "the refusal says why: {body}"
        );

        // The actual request from the listed origin may be read by its page; others' not.
        let client = https(&server);
        let listed = client
            .get(url(&server, "/api/v1/transport"))
            .header(header::ORIGIN, LISTED)
            .send()
            .await
            .expect("GET");
        assert_eq!(
            header_of(listed.headers(), "access-control-allow-origin"),
            LISTED
        );
        let other = client
            .get(url(&server, "/api/v1/transport"))
            .header(header::ORIGIN, EVIL)
            .send()
            .await
            .expect("GET");
        assert_eq!(
            header_of(other.headers(), "access-control-allow-origin"),
            ""
        );
    }
    // The default allow-list is empty: same origin only.
    let server = TestServer::start().await;
    let (head, body) = raw(
        &server,
        "OPTIONS",
        "/api/v1/login",
        &[
            &format!("Origin: {LISTED}"),
            "Access-Control-Request-Method: POST",
        ],
    )
    .await;
    assert!(head.starts_with("http/1.1 403"), "{head}");
    assert_error_shape(&body, "forbidden", "default preflight");
}

#[tokio::test]
async fn every_error_has_the_documented_shape_and_status_is_in_the_openapi_document() {
    let server = TestServer::start().await;
    let client = https(&server);
    let alice = common::user(&server, "alice").await;
    let bearer = format!("Bearer {}", alice.token);

    // Statuses produced outside the handlers: axum's 405, query and path rejections.
    let (head, body) = raw(&server, "GET", "/api/v1/login", &[]).await;
    assert!(head.starts_with("http/1.1 405"), "{head}");
    assert!(head.contains("allow: post"), "{head}");
    assert_error_shape(&body, "method_not_allowed", "405");
    let id = uuid_like();
    let bad_query = client
        .get(url(
            &server,
            &format!("/api/v1/conversations/{id}/messages?limit=many"),
        ))
        .header(header::AUTHORIZATION, &bearer)
        .send()
        .await
        .expect("GET");
    assert_eq!(bad_query.status(), 400);
    assert_error_shape(
        &bad_query.text().await.expect("body"),
        "invalid_argument",
        "bad query",
    );
    let (head, body) = raw(&server, "DELETE", "/", &[]).await;
    assert!(
        head.starts_with("http/1.1 404") || head.starts_with("http/1.1 405"),
        "{head}"
    );
    assert_error_shape(&body, body_code(&head), "DELETE /");

    // What the server answers, the document lists.
    let doc: serde_json::Value = client
        .get(url(&server, "/api/v1/openapi.json"))
        .send()
        .await
        .expect("openapi")
        .json()
        .await
        .expect("json");
    let documented = |path: &str, method: &str, status: u16| {
        doc["paths"][path][method]["responses"]
            .get(status.to_string())
            .is_some()
    };
    let probes: Vec<(&str, String, &str, Option<&str>, u16)> = vec![
        (
            "/api/v1/conversations",
            "/api/v1/conversations".into(),
            "get",
            None,
            401,
        ),
        (
            "/api/v1/conversations/{id}/messages",
            "/api/v1/conversations/not-a-uuid/messages".into(),
            "get",
            Some(bearer.as_str()),
            400,
        ),
        (
            "/api/v1/conversations/{id}/messages",
            format!("/api/v1/conversations/{id}/messages"),
            "get",
            None,
            401,
        ),
        (
            "/api/v1/invitations",
            "/api/v1/invitations".into(),
            "get",
            None,
            401,
        ),
        ("/api/v1/me", "/api/v1/me".into(), "get", None, 401),
    ];
    for (template, path, method, auth, expected) in probes {
        let mut request = client.get(url(&server, &path));
        if let Some(auth) = auth {
            request = request.header(header::AUTHORIZATION, auth);
        }
        let response = request.send().await.expect("probe");
        assert_eq!(response.status().as_u16(), expected, "{path}");
        assert!(
            documented(template, method, expected),
            "{method} {template} answers {expected} but the OpenAPI document does not list it"
        );
    }
    // Every bearer route documents 401; every route with an id in its path documents 400.
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            let responses = &op["responses"];
            if op.get("security").is_some() {
                assert!(
                    responses.get("401").is_some(),
                    "{method} {path}: a bearer route without 401"
                );
            }
            if path.contains("{id}") {
                assert!(
                    responses.get("400").is_some(),
                    "{method} {path}: an id route without 400"
                );
            }
        }
    }
}

fn body_code(head: &str) -> &'static str {
    if head.starts_with("http/1.1 405") {
        "method_not_allowed"
    } else {
        "not_found"
    }
}

fn uuid_like() -> String {
    "00000000-0000-4000-8000-000000000001".into()
}

#[tokio::test]
async fn websocket_upgrades_from_foreign_origins_are_refused() {
    for io in DRIVERS {
        let cors = format!("cors_origins = [\"{LISTED}\"]");
        let server = start(io, &[&cors]).await;
        let own = format!("https://{}", server.addr);
        let localhost = format!("https://localhost:{}", server.addr.port());
        for (origin, allowed) in [
            (None, true),
            (Some(own.as_str()), true),
            (Some(localhost.as_str()), true),
            (Some(LISTED), true),
            (Some(EVIL), false),
            (Some("null"), false),
        ] {
            let lines = upgrade_lines(origin);
            let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
            let (head, body) = raw(&server, "GET", "/api/v1/ws", &lines).await;
            if allowed {
                assert!(head.starts_with("http/1.1 101"), "{io} {origin:?}: {head}");
            } else {
                assert!(head.starts_with("http/1.1 403"), "{io} {origin:?}: {head}");
                assert_error_shape(&body, "forbidden", "refused upgrade");
                assert_security_headers(&head, "refused upgrade");
            }
        }
    }
}

#[tokio::test]
async fn webtransport_sessions_from_foreign_origins_are_refused() {
    let cors = format!("cors_origins = [\"{LISTED}\"]");
    let server = TestServer::start_with(&[&cors]).await;
    let own = format!("https://{}", server.addr);
    for (origin, allowed) in [
        (None, true),
        (Some(own.as_str()), true),
        (Some(LISTED), true),
        (Some(EVIL), false),
    ] {
        let tls = (*server.config(TransportPref::WebTransport).tls().quic).clone();
        let config = wtransport::ClientConfig::builder()
            .with_bind_address("127.0.0.1:0".parse().expect("addr"))
            .with_custom_tls(tls)
            .build();
        let endpoint = wtransport::Endpoint::client(config).expect("endpoint");
        let mut options = wtransport::endpoint::ConnectOptions::builder(format!(
            "https://{}/api/v1/wt",
            server.addr
        ));
        if let Some(origin) = origin {
            options = options.add_header("origin", origin);
        }
        let result = tokio::time::timeout(common::WAIT, endpoint.connect(options.build())).await;
        let result = result.expect("an answer in time").map(|_| "a session");
        match (allowed, result) {
            (true, Ok(_)) => {}
            (false, Err(wtransport::error::ConnectingError::SessionRejected)) => {}
            (allowed, other) => panic!("origin {origin:?} (allowed: {allowed}): {other:?}"),
        }
    }
}
