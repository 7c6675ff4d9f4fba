//! What every response of the client listener carries, and which web origins may use the
//! server:
//!
//! - security headers on every response (API, app, errors, WebSocket upgrades): HSTS,
//!   `nosniff`, no referrer, no framing; everything outside `/api` (the app's HTML, and its
//!   scripts, since a service worker or worker takes its policy from its own script's response)
//!   gets the strict Content-Security-Policy (no inline script, wasm allowed, Trusted Types),
//!   the API a CSP that allows nothing;
//! - `Cache-Control: no-store` on everything under `/api` (tokens, keys, messages: nothing of
//!   it belongs in a cache), unless a handler chose otherwise;
//! - CORS for the configured origins (`cors_origins`, default none: same-origin only), preflights
//!   answered here (204, or a JSON 403 naming the refused origin);
//! - every error in the API's `{"error": {"code", "message"}}` shape, whoever produced it
//!   (axum's 405 and rejections, hyper's body limits);
//! - [`OriginPolicy`]: the `Origin` check of the WebSocket upgrade and the WebTransport CONNECT.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Preflight answers may be cached by the browser this long (seconds): the allow-list changes
/// only with a restart.
const PREFLIGHT_MAX_AGE: &str = "600";
/// An error body longer than this is not quoted into the JSON message (axum's rejections are
/// one line).
const MAX_QUOTED_ERROR_BYTES: usize = 1024;
/// Methods the API routes use (HEAD and PATCH: resumable uploads).
const API_METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE";
/// Request headers a page may send: the bearer token, JSON bodies, an upload's offset and a
/// download's range.
const API_REQUEST_HEADERS: &str = "authorization, content-type, upload-offset, range";
/// Response headers a page may read beyond the CORS-safelisted ones (an upload's offset and
/// length decide where a resumed upload goes on; a range answer says what it holds).
const API_EXPOSED_HEADERS: &str = "retry-after, www-authenticate, etag, upload-offset, upload-length, content-range, accept-ranges";

/// The security headers sent on every response (also the ones hyper or the io_uring driver
/// write themselves): name, value.
pub const STATIC_HEADERS: [(&str, &str); 4] = [
    // No includeSubDomains: the server cannot know what else runs under its parent domain.
    ("strict-transport-security", "max-age=31536000"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
];
/// The CSP of the API's answers (JSON, errors, upgrades) and of what hyper or the io_uring
/// driver write themselves: nothing of it is ever rendered or run.
pub const CSP_NOT_HTML: &str = "default-src 'none'; frame-ancestors 'none'";

/// Adds [`STATIC_HEADERS`] and the non-HTML CSP to a response built outside the router.
pub fn add_static_headers(headers: &mut HeaderMap) {
    for (name, value) in STATIC_HEADERS {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP_NOT_HTML),
    );
}

/// The same headers as raw `Name: value\r\n` lines, for responses the io_uring driver writes:
/// (every response, all but a localhost Host's): HSTS goes in the second.
pub fn static_header_lines() -> (String, String) {
    let mut lines = String::new();
    let mut hsts = String::new();
    for (name, value) in STATIC_HEADERS {
        let line = format!("{name}: {value}\r\n");
        if name == "strict-transport-security" {
            hsts = line;
        } else {
            lines.push_str(&line);
        }
    }
    lines.push_str(&format!("content-security-policy: {CSP_NOT_HTML}\r\n"));
    (lines, hsts)
}

/// The CSP of the app's HTML. `connect-src` names the public authority's `https` (API,
/// WebTransport) and `wss` (WebSocket) origins besides `'self'`, so a page loaded under
/// another name of the same server (localhost vs 127.0.0.1) still reaches the advertised URLs.
/// `trusted-types tern`: the page may create one Trusted Types policy, named `tern`, for the
/// script URLs of its service worker and workers (`navigator.serviceWorker.register` and
/// `new Worker` are Trusted Types sinks; with `'none'` neither could ever be called); no
/// other policy, and no string reaches an HTML or script sink.
pub fn app_csp(authority: &str) -> String {
    format!(
        "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; \
         img-src 'self' blob: data:; connect-src 'self' https://{authority} wss://{authority}; \
         worker-src 'self'; manifest-src 'self'; object-src 'none'; base-uri 'none'; \
         form-action 'self'; frame-ancestors 'none'; require-trusted-types-for 'script'; \
         trusted-types tern"
    )
}

/// Which web origins may use the server: its own (`https://<public authority>`, and for a
/// loopback server without a configured authority every loopback name of its port) and the
/// configured `cors_origins`. Native clients send no `Origin` and are always let through.
#[derive(Debug, Clone, Default)]
pub struct OriginPolicy {
    own: Vec<String>,
    cors: Vec<String>,
}

impl OriginPolicy {
    /// `authority` is what clients are told to use; `loopback_port` is set when the server
    /// listens on loopback without a configured authority (then `localhost`, `127.0.0.1` and
    /// `[::1]` are the same server to a browser).
    pub fn new(authority: &str, loopback_port: Option<u16>, cors: &[String]) -> OriginPolicy {
        let mut own = vec![normalize(&format!("https://{authority}"))];
        if let Some(port) = loopback_port {
            for host in ["localhost", "127.0.0.1", "[::1]"] {
                own.push(normalize(&format!("https://{host}:{port}")));
            }
        }
        own.dedup();
        OriginPolicy {
            own,
            cors: cors.iter().map(|o| normalize(o)).collect(),
        }
    }

    /// Whether a request with this `Origin` (absent: a native client) may open a socket.
    pub fn socket_allowed(&self, origin: Option<&str>) -> bool {
        match origin {
            None => true,
            Some(origin) => self.is_listed(origin),
        }
    }

    /// The server's own origin or a configured one.
    pub fn is_listed(&self, origin: &str) -> bool {
        let origin = normalize(origin);
        self.own.contains(&origin) || self.cors.contains(&origin)
    }
}

/// Whether a `Host` header names `localhost` (or a `*.localhost` name), any port.
fn is_localhost(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        // An IPv6 literal: never a name.
        Some(_) => return false,
        None => host.split(':').next().unwrap_or(host),
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost")
}

/// Lower-case, without the default port (browsers omit `:443`), without a trailing slash.
pub fn normalize(origin: &str) -> String {
    let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
    match origin.strip_suffix(":443") {
        Some(stripped) if origin.starts_with("https://") => stripped.to_owned(),
        _ => match origin.strip_suffix(":80") {
            Some(stripped) if origin.starts_with("http://") => stripped.to_owned(),
            _ => origin,
        },
    }
}

/// Checks a configured origin: `scheme://host[:port]`, scheme https (or http, for a page on a
/// development server), nothing after the authority.
pub fn valid_origin(origin: &str) -> bool {
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false;
    };
    (scheme == "https" || scheme == "http")
        && !rest.is_empty()
        && !rest.contains(['/', '?', '#', '@', ' ', '*'])
        && rest.parse::<axum::http::uri::Authority>().is_ok()
}

/// What the middleware needs.
pub struct ResponsePolicy {
    pub origins: Arc<OriginPolicy>,
    pub app_csp: HeaderValue,
}

fn is_api(path: &str) -> bool {
    path == "/api" || path.starts_with("/api/")
}

/// The client listener's middleware: preflights, then the router, then the headers above.
pub async fn client_responses(
    State(policy): State<Arc<ResponsePolicy>>,
    request: Request,
    next: Next,
) -> Response {
    let api = is_api(request.uri().path());
    let localhost = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .is_some_and(is_localhost);
    let origin = request
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut response = if request.method() == Method::OPTIONS {
        preflight(&policy.origins, api, origin.as_deref())
    } else {
        let response = next.run(request).await;
        json_errors(response).await
    };
    let headers = response.headers_mut();
    for (name, value) in STATIC_HEADERS {
        headers.insert(name, HeaderValue::from_static(value));
    }
    if localhost {
        // HSTS binds a host name on every port: sent for "localhost" it would force every
        // other http://localhost development server of the user's browser onto https for a
        // year. (IP literals are fine: browsers ignore HSTS for them, RFC 6797 8.1.)
        headers.remove("strict-transport-security");
    }
    // The app's files all get its policy: the page's comes from its HTML, but a service worker
    // (sw.js) or a worker runs under the CSP of its own script's response, and needs
    // connect-src 'self' to fetch the app shell. An HTML answer under /api (none today) would
    // still get the page policy, never a looser one.
    let html = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("text/html"));
    let csp = if html || !api {
        policy.app_csp.clone()
    } else {
        HeaderValue::from_static(CSP_NOT_HTML)
    };
    headers.insert(header::CONTENT_SECURITY_POLICY, csp);
    if api {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(origin) = &origin
            && policy.origins.is_listed(origin)
            && let Ok(value) = HeaderValue::from_str(origin)
        {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
            headers.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static(API_EXPOSED_HEADERS),
            );
        }
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
    }
    response
}

/// `OPTIONS`: a CORS preflight for a listed origin is 204 with what it may do; for any other
/// origin a JSON 403 that says why; without an `Origin` (not a browser) 204 with `Allow`.
fn preflight(origins: &OriginPolicy, api: bool, origin: Option<&str>) -> Response {
    let allow = if api {
        "GET, POST, PUT, DELETE, OPTIONS"
    } else {
        "GET, HEAD, OPTIONS"
    };
    match origin {
        Some(origin) if api && origins.is_listed(origin) => {
            let mut response = StatusCode::NO_CONTENT.into_response();
            let headers = response.headers_mut();
            if let Ok(value) = HeaderValue::from_str(origin) {
                headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
            }
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static(API_METHODS),
            );
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static(API_REQUEST_HEADERS),
            );
            headers.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static(PREFLIGHT_MAX_AGE),
            );
            response
        }
        Some(origin) => crate::http::error_response(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "origin {} may not use this server's API from a page (not in cors_origins)",
                origin.chars().take(200).collect::<String>()
            ),
        ),
        None => {
            let mut response = StatusCode::NO_CONTENT.into_response();
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
            response
        }
    }
}

/// The API's error code for an HTTP status nobody gave one.
fn code_of(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => "invalid_argument",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "invalid_argument",
        StatusCode::UNAUTHORIZED => "unauthenticated",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::REQUEST_TIMEOUT => "request_timeout",
        StatusCode::CONFLICT => "conflict",
        StatusCode::PAYLOAD_TOO_LARGE => "limit_exceeded",
        StatusCode::TOO_MANY_REQUESTS => "rate_limited",
        StatusCode::NOT_IMPLEMENTED => "unsupported",
        StatusCode::SERVICE_UNAVAILABLE => "server_shutdown",
        _ => "internal",
    }
}

/// Rewrites an error response that is not JSON (axum's 405 with an empty body, its plain-text
/// rejections) into the API's error shape, keeping status and headers (`Allow`, `Retry-After`).
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = match axum::body::to_bytes(body, MAX_QUOTED_ERROR_BYTES).await {
        Ok(bytes) if !bytes.is_empty() => String::from_utf8_lossy(&bytes).trim().to_owned(),
        _ => status.canonical_reason().unwrap_or("error").to_lowercase(),
    };
    let message = if status == StatusCode::METHOD_NOT_ALLOWED {
        let allowed = parts
            .headers
            .get(header::ALLOW)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        format!("method not allowed here (allowed: {allowed})")
    } else {
        text
    };
    let body = serde_json::json!({ "error": { "code": code_of(status), "message": message } });
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_compared_normalized() {
        let policy = OriginPolicy::new(
            "127.0.0.1:4433",
            Some(4433),
            &["https://app.example.com:443/".into()],
        );
        assert!(policy.socket_allowed(None));
        assert!(policy.socket_allowed(Some("https://127.0.0.1:4433")));
        assert!(policy.socket_allowed(Some("https://LOCALHOST:4433")));
        assert!(policy.socket_allowed(Some("https://[::1]:4433")));
        assert!(policy.socket_allowed(Some("https://app.example.com")));
        assert!(!policy.socket_allowed(Some("http://127.0.0.1:4433")));
        assert!(!policy.socket_allowed(Some("https://localhost:4434")));
        assert!(!policy.socket_allowed(Some("https://evil.example")));
        assert!(!policy.socket_allowed(Some("null")));
    }

    #[test]
    fn localhost_hosts_are_recognised() {
        for host in [
            "localhost",
            "localhost:4433",
            "LOCALHOST.:1",
            "app.localhost:8443",
        ] {
            assert!(is_localhost(host), "{host}");
        }
        for host in [
            "127.0.0.1:4433",
            "[::1]:4433",
            "chat.example.com",
            "localhost.example",
        ] {
            assert!(!is_localhost(host), "{host}");
        }
    }

    #[test]
    fn configured_origins_are_checked() {
        for good in [
            "https://a.example",
            "http://localhost:5173",
            "https://[::1]:8443",
        ] {
            assert!(valid_origin(good), "{good}");
        }
        for bad in [
            "*",
            "a.example",
            "https://a.example/path",
            "ftp://a.example",
            "https://",
            "https://u@a.example",
        ] {
            assert!(!valid_origin(bad), "{bad}");
        }
    }
}
