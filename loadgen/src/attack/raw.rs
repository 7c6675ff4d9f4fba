//! A raw client: TCP from a chosen loopback source address, TLS as the SDK does it (with the
//! ALPN an attack wants), and just enough HTTP/1.1 to send a request and read its answer.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::AttackTarget;

/// Largest response head read (status line and headers).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Largest response body read; the API's error and login answers are far smaller.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// A TCP connection from `source` (port chosen by the OS) to the server.
pub async fn tcp_from(source: IpAddr, server: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = match source {
        IpAddr::V4(_) => TcpSocket::new_v4()?,
        IpAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.bind(SocketAddr::new(source, 0))?;
    let stream = socket.connect(server).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// TCP + TLS handshake from `source`, within `timeout`. Errors are messages (they are counted
/// by message in the reports).
pub async fn tls_from(
    target: &AttackTarget,
    tls: Arc<rustls::ClientConfig>,
    source: IpAddr,
    timeout: Duration,
) -> Result<TlsStream<TcpStream>, String> {
    let server_name = server_name(target)?;
    let connect = async {
        let tcp = tcp_from(source, target.addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        TlsConnector::from(tls)
            .connect(server_name, tcp)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))
    };
    tokio::time::timeout(timeout, connect)
        .await
        .map_err(|_| "connect: timed out".to_string())?
}

fn server_name(target: &AttackTarget) -> Result<ServerName<'static>, String> {
    let host = target
        .authority
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
        .unwrap_or(&target.authority);
    ServerName::try_from(host.to_string()).map_err(|e| format!("server name {host:?}: {e}"))
}

/// An answer read by [`read_response`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    /// The connection can carry another request (HTTP/1.1 without `Connection: close`, with a
    /// Content-Length).
    pub reusable: bool,
}

/// A parsed response head: (head length including the blank line, status, content length,
/// connection close requested or body length unknown).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub len: usize,
    pub status: u16,
    pub content_length: Option<usize>,
    pub close: bool,
}

/// Parses a response head from the start of `buf`; `Ok(None)` while it is incomplete.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, String> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > MAX_HEAD_BYTES {
            return Err("response head too large".into());
        }
        return Ok(None);
    };
    let text = std::str::from_utf8(&buf[..end]).map_err(|_| "response head is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(format!(
            "not an HTTP/1 response: {:?}",
            truncate(status_line)
        ));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {:?}", truncate(status_line)))?;
    let mut content_length = None;
    let mut close = version == "HTTP/1.0";
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| format!("bad content-length {value:?}"))?,
            );
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Not needed by these tools: read no body and do not reuse the connection.
            close = true;
        }
    }
    Ok(Some(Head {
        len: end + 4,
        status,
        content_length,
        close: close || content_length.is_none(),
    }))
}

fn truncate(s: &str) -> String {
    s.chars().take(60).collect()
}

/// Reads one response. `buf` carries bytes read past it (none for these request/response tools,
/// but kept correct).
pub async fn read_response<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> Result<Response, String> {
    let mut chunk = [0u8; 8192];
    let head = loop {
        if let Some(h) = parse_head(buf)? {
            break h;
        }
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("closed by the server before an answer".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let body_len = head.content_length.unwrap_or(0).min(MAX_BODY_BYTES);
    while buf.len() < head.len + body_len {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read body: {e}"))?;
        if n == 0 {
            return Err("closed by the server mid-body".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf[head.len..head.len + body_len].to_vec();
    buf.drain(..head.len + body_len);
    Ok(Response {
        status: head.status,
        body,
        reusable: !head.close,
    })
}

pub fn get_request(authority: &str, path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n").into_bytes()
}

/// `POST /api/v1/login` with a JSON body; keep-alive unless `close`.
pub fn login_request(authority: &str, username: &str, password: &str, close: bool) -> Vec<u8> {
    let body = serde_json::json!({ "username": username, "password": password }).to_string();
    format!(
        "POST /api/v1/login HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n{}\r\n{body}",
        body.len(),
        if close { "Connection: close\r\n" } else { "" }
    )
    .into_bytes()
}

/// The head of a POST whose body the caller sends (or never finishes).
pub fn post_head(authority: &str, path: &str, content_length: usize) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\n\
         Content-Length: {content_length}\r\n\r\n"
    )
    .into_bytes()
}

/// One request on a fresh connection from `source`, answer within `timeout` (connect included).
pub async fn request_once(
    target: &AttackTarget,
    source: IpAddr,
    request: &[u8],
    timeout: Duration,
) -> Result<Response, String> {
    let exchange = async {
        let mut tls = tls_from(target, target.tls.clone(), source, timeout).await?;
        tls.write_all(request)
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut buf = Vec::new();
        read_response(&mut tls, &mut buf).await
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| "timed out".to_string())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads() {
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Le").unwrap(), None);
        let h = parse_head(b"HTTP/1.1 429 Too Many\r\ncontent-length: 12\r\n\r\n{\"x\":1}")
            .unwrap()
            .unwrap();
        assert_eq!(
            (h.status, h.content_length, h.close),
            (429, Some(12), false)
        );
        let h = parse_head(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.close);
        assert!(parse_head(b"\x00\x00\x12\x04\x00\x00\x00\x00\x00\r\n\r\n").is_err());
    }

    #[tokio::test]
    async fn reads_keep_alive_responses_in_sequence() {
        let wire = b"HTTP/1.1 401 No\r\nContent-Length: 3\r\n\r\nabcHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec();
        let mut r = wire.as_slice();
        let mut buf = Vec::new();
        let a = read_response(&mut r, &mut buf).await.unwrap();
        let b = read_response(&mut r, &mut buf).await.unwrap();
        assert_eq!(
            (a.status, a.body.as_slice(), a.reusable),
            (401, &b"abc"[..], true)
        );
        assert_eq!((b.status, b.body.as_slice()), (200, &b"ok"[..]));
        assert!(read_response(&mut r, &mut buf).await.is_err());
    }
}
