//! The web app at `/`: static files from `--web-dir` (read from disk on every request, so a
//! rebuilt app is served without a restart), else the copy embedded at build time
//! (`build.rs` embeds `clients/web/dist` when it exists), else a small page saying how to build
//! it.
//!
//! - Paths are decoded, and anything that could leave the app's root (`..`, dot files,
//!   backslashes, NUL, symlinks out of the directory) is not found.
//! - SPA fallback: a GET for an unknown path whose `Accept` names `text/html` gets `index.html`
//!   (the app routes on the client); other unknown paths get the API's JSON 404.
//! - Caching: hashed assets (`assets/<name>-<hash>.<ext>`, what Vite emits) are
//!   `public, max-age=31536000, immutable`; everything else (`index.html`, `sw.js`, the
//!   manifest) is `no-cache` with an `ETag`, so a deploy is seen on the next load.
//! - A precompressed sibling (`<file>.gz`) is sent with `Content-Encoding: gzip` when the
//!   client accepts gzip; every answer says `Vary: Accept-Encoding`.
//! - Content types from the extension (`application/wasm` matters: browsers refuse to
//!   stream-compile wasm served as anything else).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/web_assets.rs"));
}

/// Largest file served from `--web-dir` (each request reads the file whole into memory): the
/// wasm core is a few MB; anything far above that is not part of a web app.
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;
/// `Cache-Control` of content-hashed assets: their name changes whenever their bytes do.
pub const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// `Cache-Control` of everything else: stored, but revalidated (ETag) before every use.
pub const REVALIDATE: &str = "no-cache";
/// Shortest hash in a hashed asset's name (Vite's default is 8 characters).
const MIN_HASH_CHARS: usize = 8;

/// Where the app comes from (`web_dir`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebSource {
    /// The embedded copy when the binary has one, else the build instructions (the default).
    Auto,
    /// Files from this directory.
    Dir(PathBuf),
    /// No app: `/` explains that it is switched off (an API-only server).
    Off,
}

#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("web_dir {0}: {1}")]
    Dir(PathBuf, std::io::Error),
    #[error("web_dir {0} has no index.html (build the app: scripts/build-web.sh)")]
    NoIndex(PathBuf),
}

enum Files {
    Dir(PathBuf),
    /// Path → (bytes, ETag).
    Embedded(HashMap<&'static str, (&'static [u8], HeaderValue)>),
    None {
        off: bool,
    },
}

/// One file found: its bytes and validator.
struct Found {
    bytes: Body,
    etag: Option<HeaderValue>,
}

pub struct WebApp {
    files: Files,
}

impl WebApp {
    pub fn new(source: &WebSource) -> Result<Arc<WebApp>, WebError> {
        let files = match source {
            WebSource::Off => Files::None { off: true },
            WebSource::Dir(dir) => {
                let root = dir
                    .canonicalize()
                    .map_err(|e| WebError::Dir(dir.clone(), e))?;
                if !root.join("index.html").is_file() {
                    return Err(WebError::NoIndex(dir.clone()));
                }
                Files::Dir(root)
            }
            WebSource::Auto if embedded::EMBEDDED.iter().any(|(p, _)| *p == "index.html") => {
                let table = embedded::EMBEDDED
                    .iter()
                    .map(|(path, bytes)| (*path, (*bytes, content_etag(bytes))))
                    .collect();
                Files::Embedded(table)
            }
            WebSource::Auto => Files::None { off: false },
        };
        Ok(Arc::new(WebApp { files }))
    }

    /// What the banner says about the app (after "web app: https://<authority>/").
    pub fn describe(&self) -> String {
        match &self.files {
            Files::Dir(dir) => format!("from {}", dir.display()),
            Files::Embedded(table) => format!("embedded, {} files", table.len()),
            Files::None { off: true } => "off (web_dir = \"off\")".into(),
            Files::None { off: false } => {
                "not built into this binary: scripts/build-web.sh, then rebuild or --web-dir".into()
            }
        }
    }

    /// Whether an app is served (not the build instructions).
    pub fn has_app(&self) -> bool {
        !matches!(self.files, Files::None { .. })
    }

    /// Answers a GET or HEAD outside `/api`; `None` when nothing here matches (the caller
    /// answers its JSON 404).
    pub async fn serve(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Option<Response> {
        if method != Method::GET && method != Method::HEAD {
            return None;
        }
        let wants_html = accepts(headers, "text/html");
        let relative = relative_path(path)?;
        if let Files::None { off } = self.files {
            return (relative == "index.html" || wants_html).then(|| instructions(off));
        }
        let gzip = accepts_gzip(headers);
        if let Some(response) = self.file_response(&relative, gzip, headers).await {
            return Some(response);
        }
        if wants_html {
            return self.file_response("index.html", gzip, headers).await;
        }
        None
    }

    async fn file_response(
        &self,
        relative: &str,
        gzip: bool,
        request: &HeaderMap,
    ) -> Option<Response> {
        let (found, encoded) = match gzip {
            true => match self.find(&format!("{relative}.gz")).await {
                Some(found) => (found, true),
                None => (self.find(relative).await?, false),
            },
            false => (self.find(relative).await?, false),
        };
        let mut response = Response::new(Body::empty());
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(content_type(relative)),
        );
        let cache = if is_hashed_asset(relative) {
            IMMUTABLE
        } else {
            REVALIDATE
        };
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
        headers.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
        if encoded {
            headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        if let Some(etag) = &found.etag {
            headers.insert(header::ETAG, etag.clone());
            if etag_matches(request, etag) {
                *response.status_mut() = StatusCode::NOT_MODIFIED;
                return Some(response);
            }
        }
        *response.body_mut() = found.bytes;
        Some(response)
    }

    async fn find(&self, relative: &str) -> Option<Found> {
        match &self.files {
            Files::Embedded(table) => table.get(relative).map(|(bytes, etag)| Found {
                bytes: Body::from(*bytes),
                etag: Some(etag.clone()),
            }),
            Files::Dir(root) => read_inside(root, relative).await,
            Files::None { .. } => None,
        }
    }
}

/// Reads `relative` under `root`, refusing whatever resolves outside it (a symlink out of the
/// directory) and files above [`MAX_FILE_BYTES`].
async fn read_inside(root: &Path, relative: &str) -> Option<Found> {
    let path = tokio::fs::canonicalize(root.join(relative)).await.ok()?;
    if !path.starts_with(root) {
        return None;
    }
    let meta = tokio::fs::metadata(&path).await.ok()?;
    if !meta.is_file() {
        return None;
    }
    if meta.len() > MAX_FILE_BYTES {
        tracing::warn!(path = %path.display(), size = meta.len(), "web file above the size limit, not served");
        return None;
    }
    let bytes = tokio::fs::read(&path).await.ok()?;
    // Content-addressed, like the embedded copy: the same bytes keep their validator across
    // restarts and copies (mtimes do not).
    Some(Found {
        etag: Some(content_etag(&bytes)),
        bytes: Body::from(bytes),
    })
}

fn content_etag(bytes: &[u8]) -> HeaderValue {
    let digest = Sha256::digest(bytes);
    let value = format!("\"{}\"", hex::encode(&digest[..12]));
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("\"0\""))
}

fn etag_matches(request: &HeaderMap, etag: &HeaderValue) -> bool {
    let Some(wanted) = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let ours = etag.to_str().unwrap_or_default();
    wanted
        .split(',')
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == "*" || t == ours)
}

/// The request path as a path relative to the app's root, or `None` when it is not one the
/// app may have (outside the root, a dot file, undecodable). `/` and `…/` name `index.html`.
pub fn relative_path(path: &str) -> Option<String> {
    let decoded = percent_decode(path.strip_prefix('/')?)?;
    let mut segments = Vec::new();
    for segment in decoded.split('/') {
        if segment.is_empty() {
            continue;
        }
        if segment.starts_with('.') || segment.contains(['\\', '\0', ':']) {
            return None;
        }
        segments.push(segment);
    }
    let mut relative = segments.join("/");
    if relative.is_empty() || decoded.ends_with('/') {
        if !relative.is_empty() {
            relative.push('/');
        }
        relative.push_str("index.html");
    }
    Some(relative)
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `assets/<name>-<hash>.<ext>` (also `.<ext>.gz`): the name changes with the content, so
/// the file can be cached for a year. The hash is at least 8 of Vite's characters
/// (`[A-Za-z0-9_-]`) and has a digit or an upper-case letter (so `assets/my-component.js`,
/// which is not hashed, is not cached forever).
pub fn is_hashed_asset(relative: &str) -> bool {
    let Some(name) = relative.strip_prefix("assets/") else {
        return false;
    };
    let name = name.rsplit('/').next().unwrap_or(name);
    let name = name.strip_suffix(".gz").unwrap_or(name);
    let Some((stem, _ext)) = name.rsplit_once('.') else {
        return false;
    };
    let hash_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    stem.char_indices().any(|(i, c)| {
        let hash = &stem[i + 1..];
        c == '-'
            && i > 0
            && hash.len() >= MIN_HASH_CHARS
            && hash.chars().all(hash_char)
            && hash
                .chars()
                .any(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
    })
}

/// The content type of a file by its extension (`.gz` siblings are served with the type of
/// what they compress).
pub fn content_type(relative: &str) -> &'static str {
    let name = relative.strip_suffix(".gz").unwrap_or(relative);
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("html" | "htm") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("wasm") => "application/wasm",
        Some("json" | "map") => "application/json",
        Some("webmanifest") => "application/manifest+json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        Some("avif") => "image/avif",
        Some("ico") => "image/x-icon",
        Some("woff2") => "font/woff2",
        Some("woff") => "font/woff",
        Some("ttf") => "font/ttf",
        Some("otf") => "font/otf",
        Some("txt") => "text/plain; charset=utf-8",
        Some("xml") => "application/xml",
        _ => "application/octet-stream",
    }
}

/// Whether `Accept` lists `media` (or a wildcard for it) with a non-zero quality.
fn accepts(headers: &HeaderMap, media: &str) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';');
            let name = parts.next().unwrap_or_default().trim();
            name.eq_ignore_ascii_case(media) && !zero_quality(parts)
        })
}

fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';');
            let name = parts.next().unwrap_or_default().trim();
            (name.eq_ignore_ascii_case("gzip") || name.eq_ignore_ascii_case("x-gzip"))
                && !zero_quality(parts)
        })
}

fn zero_quality<'a>(mut params: impl Iterator<Item = &'a str>) -> bool {
    params.any(|p| {
        let p = p.trim();
        p.strip_prefix("q=")
            .and_then(|q| q.trim().parse::<f32>().ok())
            .is_some_and(|q| q <= 0.0)
    })
}

/// `/` of a server without an app: what to do, never a bare 404.
fn instructions(off: bool) -> Response {
    let body = if off {
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Tern</title></head>\
         <body><h1>Tern is running</h1><p>The web app is switched off on this server \
         (<code>web_dir = \"off\"</code>). Clients use the API at <code>/api/v1</code> \
         (<a href=\"/api/v1/openapi.json\">OpenAPI</a>).</p></body></html>\n"
    } else {
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Tern</title></head>\
         <body><h1>Tern is running, but this binary has no web app</h1>\
         <p>Build the app with <code>scripts/build-web.sh</code> (it writes \
         <code>clients/web/dist</code>), then either rebuild <code>tern</code> (the build embeds \
         <code>clients/web/dist</code>) or start it with \
         <code>tern serve --web-dir clients/web/dist</code>.</p>\
         <p>The API is at <code>/api/v1</code> (<a href=\"/api/v1/openapi.json\">OpenAPI</a>).</p>\
         </body></html>\n"
    };
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, REVALIDATE),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_root() {
        assert_eq!(relative_path("/").as_deref(), Some("index.html"));
        assert_eq!(relative_path("/a/b.js").as_deref(), Some("a/b.js"));
        assert_eq!(relative_path("/docs/").as_deref(), Some("docs/index.html"));
        assert_eq!(relative_path("/a%20b.js").as_deref(), Some("a b.js"));
        for bad in [
            "/../etc/passwd",
            "/assets/%2e%2e/%2e%2e/x",
            "/.git/config",
            "/a\\b",
            "/a%00",
            "/%zz",
            "/c:/x",
        ] {
            assert_eq!(relative_path(bad), None, "{bad}");
        }
    }

    #[test]
    fn hashed_assets_are_recognised() {
        for hashed in [
            "assets/app-1a2b3c4d.js",
            "assets/index-D-xYz_12.js",
            "assets/tern_core_wasm_bg-Bx7k9QaZ.wasm",
            "assets/app-1a2b3c4d.js.gz",
        ] {
            assert!(is_hashed_asset(hashed), "{hashed}");
        }
        for plain in [
            "index.html",
            "sw.js",
            "app-1a2b3c4d.js",
            "assets/my-component.js",
            "assets/logo.svg",
            "assets/-12345678.js",
        ] {
            assert!(!is_hashed_asset(plain), "{plain}");
        }
    }

    #[test]
    fn content_types() {
        assert_eq!(content_type("a.wasm"), "application/wasm");
        assert_eq!(content_type("a.js.gz"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type("x"), "application/octet-stream");
    }
}
