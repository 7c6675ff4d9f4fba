//! The web app served at `/` by the real `tern` binary (issue 12, part 2): from `web_dir`, with
//! content types, caching, precompressed siblings, the SPA fallback, nothing outside the app's
//! directory, and a page saying how to build the app when there is none. Real TLS on loopback;
//! the HTTP edge runs on both I/O drivers.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{TestServer, https};
use reqwest::header;
use rustls::pki_types::ServerName;
use tern_sdk::TransportPref;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;

const DRIVERS: [&str; 2] = ["epoll", "uring"];

const INDEX: &str = "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
    <title>Tern test app</title><script type=\"module\" src=\"/assets/app-1a2b3c4d.js\"></script>\
    </head><body><div id=\"root\"></div></body></html>";
const APP_JS: &str = "console.log('tern test app');";
/// Not real gzip: the server must send the sibling's bytes as they are, never recompress.
const APP_JS_GZ: &[u8] = b"\x1f\x8b precompressed sibling";
const WASM: &[u8] = b"\0asm\x01\0\0\0";

/// A built app as Vite lays it out, plus a secret beside it that must never be served.
fn fake_dist(root: &Path) -> PathBuf {
    let dist = root.join("dist");
    std::fs::create_dir_all(dist.join("assets")).expect("mkdir");
    std::fs::write(dist.join("index.html"), INDEX).expect("write");
    std::fs::write(dist.join("assets/app-1a2b3c4d.js"), APP_JS).expect("write");
    std::fs::write(dist.join("assets/app-1a2b3c4d.js.gz"), APP_JS_GZ).expect("write");
    std::fs::write(dist.join("assets/tern_core_wasm_bg-9F8e7d6c.wasm"), WASM).expect("write");
    std::fs::write(
        dist.join("sw.js"),
        "self.addEventListener('fetch', () => {});",
    )
    .expect("write");
    std::fs::write(dist.join("manifest.webmanifest"), "{\"name\":\"Tern\"}").expect("write");
    std::fs::write(root.join("secret.txt"), "not part of the app").expect("write");
    #[cfg(unix)]
    std::os::unix::fs::symlink(root.join("secret.txt"), dist.join("escape.txt")).expect("symlink");
    dist
}

async fn start(io: &str, dist: &Path) -> TestServer {
    let io_line = format!("io = \"{io}\"");
    let web_line = format!("web_dir = {:?}", dist.display().to_string());
    TestServer::start_with(&[&io_line, &web_line]).await
}

fn url(server: &TestServer, path: &str) -> String {
    format!("https://{}{path}", server.addr)
}

fn header_of(response: &reqwest::Response, name: header::HeaderName) -> String {
    response
        .headers()
        .get(&name)
        .map(|v| v.to_str().expect("ascii header").to_owned())
        .unwrap_or_default()
}

/// A GET with exactly this request target (no client-side path normalisation), over TLS.
async fn raw_get(server: &TestServer, target: &str) -> String {
    let config = (*server.config(TransportPref::WebSocket).tls().tcp).clone();
    let connector = TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    let mut tls = connector.connect(name, tcp).await.expect("TLS");
    let request = format!(
        "GET {target} HTTP/1.1\r\nHost: {}\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        server.addr
    );
    tls.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    let _ = tokio::time::timeout(common::WAIT, tls.read_to_end(&mut response)).await;
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test]
async fn the_app_is_served_from_web_dir_with_types_caching_and_gzip() {
    for io in DRIVERS {
        let dir = tempfile::tempdir().expect("tempdir");
        let dist = fake_dist(dir.path());
        let server = start(io, &dist).await;
        let client = https(&server);
        let authority = server.addr.to_string();
        assert!(
            server.banner.iter().any(|l| l
                .trim()
                .starts_with(&format!("web app:       https://{authority}/"))),
            "{io}: the banner names the app's URL: {:?}",
            server.banner
        );

        // The page itself: HTML, revalidated on every load, with a validator.
        let index = client.get(url(&server, "/")).send().await.expect("GET /");
        assert_eq!(index.status(), 200, "{io}");
        assert_eq!(
            header_of(&index, header::CONTENT_TYPE),
            "text/html; charset=utf-8"
        );
        assert_eq!(header_of(&index, header::CACHE_CONTROL), "no-cache");
        let etag = header_of(&index, header::ETAG);
        assert!(!etag.is_empty(), "{io}: index.html has an ETag");
        assert_eq!(index.text().await.expect("body"), INDEX);
        let again = client
            .get(url(&server, "/index.html"))
            .header(header::IF_NONE_MATCH, &etag)
            .send()
            .await
            .expect("conditional GET");
        assert_eq!(
            again.status(),
            304,
            "{io}: unchanged page is not sent again"
        );

        // A hashed script: cached for a year; the gzip sibling only when gzip is accepted.
        let plain = client
            .get(url(&server, "/assets/app-1a2b3c4d.js"))
            .send()
            .await
            .expect("GET js");
        assert_eq!(plain.status(), 200);
        assert_eq!(
            header_of(&plain, header::CONTENT_TYPE),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(
            header_of(&plain, header::CACHE_CONTROL),
            "public, max-age=31536000, immutable"
        );
        assert_eq!(header_of(&plain, header::VARY), "Accept-Encoding");
        assert_eq!(header_of(&plain, header::CONTENT_ENCODING), "");
        assert_eq!(plain.text().await.expect("body"), APP_JS);
        let gzipped = client
            .get(url(&server, "/assets/app-1a2b3c4d.js"))
            .header(header::ACCEPT_ENCODING, "br, gzip")
            .send()
            .await
            .expect("GET js gzip");
        assert_eq!(
            header_of(&gzipped, header::CONTENT_ENCODING),
            "gzip",
            "{io}"
        );
        assert_eq!(
            header_of(&gzipped, header::CONTENT_TYPE),
            "text/javascript; charset=utf-8",
            "the sibling is served with the type of what it compresses"
        );
        assert_eq!(header_of(&gzipped, header::VARY), "Accept-Encoding");
        assert_eq!(gzipped.bytes().await.expect("body").as_ref(), APP_JS_GZ);
        let refused = client
            .get(url(&server, "/assets/app-1a2b3c4d.js"))
            .header(header::ACCEPT_ENCODING, "gzip;q=0")
            .send()
            .await
            .expect("GET js no gzip");
        assert_eq!(header_of(&refused, header::CONTENT_ENCODING), "");
        assert_eq!(refused.text().await.expect("body"), APP_JS);

        // Wasm with the type browsers need to stream-compile it.
        let wasm = client
            .get(url(&server, "/assets/tern_core_wasm_bg-9F8e7d6c.wasm"))
            .send()
            .await
            .expect("GET wasm");
        assert_eq!(header_of(&wasm, header::CONTENT_TYPE), "application/wasm");
        assert_eq!(
            header_of(&wasm, header::CACHE_CONTROL),
            "public, max-age=31536000, immutable"
        );
        assert_eq!(wasm.bytes().await.expect("body").as_ref(), WASM);

        // A service worker runs under its own script's CSP: the app's policy, so it may fetch
        // the app shell (a default-src 'none' kept it from ever installing).
        let worker = client
            .get(url(&server, "/sw.js"))
            .send()
            .await
            .expect("GET sw.js");
        let csp = header_of(&worker, header::CONTENT_SECURITY_POLICY);
        assert!(
            csp.contains("connect-src 'self'")
                && csp.contains("script-src 'self' 'wasm-unsafe-eval'"),
            "{io}: sw.js gets the app's policy: {csp:?}"
        );

        // The service worker and the manifest must never be cached without revalidation.
        for (path, kind) in [
            ("/sw.js", "text/javascript; charset=utf-8"),
            ("/manifest.webmanifest", "application/manifest+json"),
        ] {
            let response = client.get(url(&server, path)).send().await.expect("GET");
            assert_eq!(response.status(), 200, "{path}");
            assert_eq!(header_of(&response, header::CONTENT_TYPE), kind, "{path}");
            assert_eq!(
                header_of(&response, header::CACHE_CONTROL),
                "no-cache",
                "{path}"
            );
        }

        // SPA fallback: a client-side route loads the app; a missing file is a JSON 404.
        let route = client
            .get(url(&server, "/c/some-conversation"))
            .header(header::ACCEPT, "text/html,application/xhtml+xml,*/*;q=0.8")
            .send()
            .await
            .expect("GET route");
        assert_eq!(route.status(), 200, "{io}");
        assert_eq!(route.text().await.expect("body"), INDEX);
        let missing = client
            .get(url(&server, "/assets/missing-1a2b3c4d.js"))
            .header(header::ACCEPT, "*/*")
            .send()
            .await
            .expect("GET missing");
        assert_eq!(missing.status(), 404);
        let body: serde_json::Value = missing.json().await.expect("JSON 404");
        assert_eq!(body["error"]["code"], "not_found");
        // An unknown API path is never answered with the app, whatever the client accepts.
        let api = client
            .get(url(&server, "/api/v1/no-such-endpoint"))
            .header(header::ACCEPT, "text/html")
            .send()
            .await
            .expect("GET api");
        assert_eq!(api.status(), 404);
        assert!(header_of(&api, header::CONTENT_TYPE).starts_with("application/json"));

        // Nothing outside the directory: dot-dot (also percent-encoded), symlinks out of it.
        for target in [
            "/../secret.txt",
            "/assets/%2e%2e/%2e%2e/secret.txt",
            "/%2E%2E/secret.txt",
            "/escape.txt",
        ] {
            let response = raw_get(&server, target).await;
            assert!(
                !response.contains("not part of the app"),
                "{io}: {target} must not leave the app's directory:\n{response}"
            );
            assert!(
                response.starts_with("HTTP/1.1 404") || response.starts_with("HTTP/1.1 400"),
                "{io}: {target}: {response}"
            );
        }

        // Served from disk: a rebuilt app is seen without a restart.
        std::fs::write(dist.join("index.html"), "<!doctype html><title>v2</title>").expect("write");
        let rebuilt = client.get(url(&server, "/")).send().await.expect("GET /");
        assert_eq!(
            rebuilt.text().await.expect("body"),
            "<!doctype html><title>v2</title>"
        );
    }
}

#[tokio::test]
async fn without_an_app_the_root_says_what_to_do() {
    // Switched off: the page says so (never a bare 404).
    let server = TestServer::start_with(&["web_dir = \"off\""]).await;
    let client = https(&server);
    let root = client.get(url(&server, "/")).send().await.expect("GET /");
    assert_eq!(root.status(), 200);
    assert_eq!(
        header_of(&root, header::CONTENT_TYPE),
        "text/html; charset=utf-8"
    );
    let text = root.text().await.expect("body");
    assert!(text.contains("switched off"), "{text}");
    assert!(
        server
            .banner
            .iter()
            .any(|l| l.contains("web app:") && l.contains("off")),
        "{:?}",
        server.banner
    );

    // The default: the embedded app when this binary was built with clients/web/dist, else
    // the instructions to build it.
    let server = TestServer::start().await;
    let client = https(&server);
    let root = client.get(url(&server, "/")).send().await.expect("GET /");
    assert_eq!(root.status(), 200);
    assert_eq!(
        header_of(&root, header::CONTENT_TYPE),
        "text/html; charset=utf-8"
    );
    let text = root.text().await.expect("body");
    let line = server
        .banner
        .iter()
        .find(|l| l.contains("web app:"))
        .expect("banner names the web app")
        .clone();
    if line.contains("embedded") {
        assert!(!text.contains("scripts/build-web.sh"), "{text}");
    } else {
        assert!(line.contains("not built"), "{line}");
        assert!(
            text.contains("scripts/build-web.sh") && text.contains("--web-dir"),
            "the page says how to build the app: {text}"
        );
    }
}
