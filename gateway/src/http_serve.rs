//! One HTTP/1.1 connection on a TLS-decrypted stream, with a deadline on every phase. Both I/O
//! drivers (and the operations listener) end here for everything that is not their own
//! WebSocket data path.
//!
//! Only HTTP/1.1 is spoken: ALPN offers nothing else, and an HTTP/2 preface sent by "prior
//! knowledge" is a parse error that closes the connection (hyper's http1 server), so nobody can
//! open 200 streams with a body buffered on each.
//!
//! Phases and their limits:
//! - request head: `head_timeout` from the moment hyper waits for a head — right after the TLS
//!   handshake and again whenever a keep-alive connection goes idle after a response — to the
//!   head's last byte (hyper's `header_read_timeout` on a tokio timer). So idle keep-alive and a
//!   header line every 25 s both end at `head_timeout`;
//! - request body: `body_timeout` in total of waiting for the client's bytes, whatever the rate
//!   ([`DeadlineBody`]): the clock runs only while the handler asks for more of the body and none
//!   has arrived, so a trickle is cut off after `body_timeout` however it is spread, while the
//!   time the server itself holds the body back (file transfer pacing) is not charged to the
//!   client; a late body is answered 408 and the connection closed;
//! - response write: `write_timeout` without progress on a write (a client that asks and never
//!   reads must not hold a connection and its response forever) ([`WriteDeadline`]);
//! - buffered bytes: hyper's read buffer is bounded by [`MAX_BUF_BYTES`] and bodies are read with
//!   backpressure (and limited to 1 MiB by the router);
//! - WebSocket: after the upgrade the session's Hello timeout and idle timeout take over.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tower::Service as _;

use crate::edge::AdmissionMetrics;
use crate::http::ClientAddr;

/// hyper's read buffer (request heads; bodies stream through it). The io_uring driver already
/// refuses heads above 16 KiB; this is the same order of magnitude and hyper's minimum is 8 KiB.
pub const MAX_BUF_BYTES: usize = 64 * 1024;
/// Header fields per request (hyper's default is 100).
const MAX_HEADERS: usize = 64;

/// The deadlines of every HTTP connection.
#[derive(Clone)]
pub struct HttpLimits {
    pub head_timeout: Duration,
    pub body_timeout: Duration,
    pub write_timeout: Duration,
    pub metrics: Arc<AdmissionMetrics>,
}

/// Serves HTTP/1.1 (API, metrics, WebSocket upgrades) until the client or a deadline ends it.
pub(crate) async fn serve_http<IO>(
    io: IO,
    peer: SocketAddr,
    router: axum::Router,
    limits: HttpLimits,
) where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let body_timeout = limits.body_timeout;
    let metrics = limits.metrics.clone();
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let (mut parts, body) = request.into_parts();
        parts.extensions.insert(ClientAddr(peer));
        let late = Arc::new(AtomicBool::new(false));
        let body = DeadlineBody::new(body, body_timeout, late.clone());
        let request = Request::from_parts(parts, axum::body::Body::new(body));
        let mut router = router.clone();
        let metrics = metrics.clone();
        async move {
            let response = router.call(request).await;
            if late.load(Ordering::Relaxed) {
                metrics.timeout("http_body");
                return Ok(body_timeout_response());
            }
            response
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.head_timeout)
        .max_buf_size(MAX_BUF_BYTES)
        .max_headers(MAX_HEADERS);
    let io = WriteDeadline::new(io, limits.write_timeout, limits.metrics.clone());
    let connection = builder.serve_connection(io, service).with_upgrades();
    if let Err(error) = connection.await {
        if error.is_timeout() {
            limits.metrics.timeout("http_head");
        }
        tracing::debug!(%peer, %error, "HTTP connection ended with an error");
    }
}

/// 408 with `Connection: close`: hyper then closes instead of reading the rest of the body.
fn body_timeout_response() -> Response<axum::body::Body> {
    let mut response = Response::new(axum::body::Body::from(
        "{\"error\":{\"code\":\"request_timeout\",\"message\":\"the request body took too long\"}}",
    ));
    *response.status_mut() = StatusCode::REQUEST_TIMEOUT;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    crate::headers::add_static_headers(headers);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[derive(Debug, thiserror::Error)]
#[error("request body not received in time")]
pub struct BodyTimeout;

/// A request body that fails once the client has kept the handler waiting for `timeout` in
/// total, and flags that so the response can say 408 and close. Waiting is the time from a poll
/// that found no bytes to the poll that got some: a handler that reads at once never starts the
/// clock (and costs no timer), one that paces its reads is not charged for its own pauses.
pub struct DeadlineBody<B = Incoming> {
    inner: B,
    /// What is left of the timeout.
    budget: Duration,
    /// When the current wait for the client began (the body is polled and pending).
    waiting_since: Option<tokio::time::Instant>,
    /// Armed the first time the body is not ready, reset at the start of every wait.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    late: Arc<AtomicBool>,
}

impl<B> DeadlineBody<B> {
    fn new(inner: B, timeout: Duration, late: Arc<AtomicBool>) -> Self {
        DeadlineBody {
            inner,
            budget: timeout,
            waiting_since: None,
            sleep: None,
            late,
        }
    }
}

impl<B> Body for DeadlineBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            if let Some(since) = this.waiting_since.take() {
                this.budget = this.budget.saturating_sub(since.elapsed());
            }
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if this.waiting_since.is_none() {
            let now = tokio::time::Instant::now();
            this.waiting_since = Some(now);
            let deadline = now + this.budget;
            match &mut this.sleep {
                Some(sleep) => sleep.as_mut().reset(deadline),
                None => this.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        if let Some(sleep) = &mut this.sleep
            && sleep.as_mut().poll(cx).is_ready()
        {
            this.late.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err(Box::new(BodyTimeout))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// An I/O stream whose writes fail once one has made no progress for `limit`: the clock starts
/// when a write (or flush) first returns `Pending` and stops when one completes. Reads pass
/// through (their deadlines are hyper's head timer and [`DeadlineBody`]). After a WebSocket
/// upgrade on the epoll path the session writes through it too, with the same meaning.
pub struct WriteDeadline<IO> {
    io: IO,
    limit: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
    metrics: Arc<AdmissionMetrics>,
}

impl<IO> WriteDeadline<IO> {
    fn new(io: IO, limit: Duration, metrics: Arc<AdmissionMetrics>) -> Self {
        WriteDeadline {
            io,
            limit,
            stalled: None,
            metrics,
        }
    }

    /// Called when the inner write is pending: `Ready(Err)` once the stall outlasted the limit.
    fn stall(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Error> {
        let limit = self.limit;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.metrics.timeout("http_write");
                Poll::Ready(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the client stopped reading",
                ))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn progress<T>(
        &mut self,
        result: Poll<std::io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<T>> {
        match result {
            Poll::Ready(done) => {
                self.stalled = None;
                Poll::Ready(done)
            }
            Poll::Pending => self.stall(cx).map(Err),
        }
    }
}

impl<IO: hyper::rt::Read + Unpin> hyper::rt::Read for WriteDeadline<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: hyper::rt::Write + Unpin> hyper::rt::Write for WriteDeadline<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.io).poll_write(cx, buf);
        self.progress(result, cx)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let result = Pin::new(&mut self.io).poll_flush(cx);
        self.progress(result, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let result = Pin::new(&mut self.io).poll_shutdown(cx);
        self.progress(result, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.progress(result, cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body whose frames come from a channel: the test decides when bytes arrive.
    struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

    impl Body for ChannelBody {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
        }
    }

    async fn next(body: &mut DeadlineBody<ChannelBody>) -> Option<Result<Bytes, String>> {
        std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx))
            .await
            .map(|f| {
                f.map(|f| f.into_data().unwrap_or_default())
                    .map_err(|e| e.to_string())
            })
    }

    // Real time (tokio's paused clock needs its test-util feature, which would rebuild tokio
    // and everything above it for the tests): the margins are wide, so a loaded machine only
    // makes the waits longer, which these assertions allow.

    #[tokio::test]
    async fn a_trickle_is_cut_off_after_the_timeout_in_total() {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let late = Arc::new(AtomicBool::new(false));
        let timeout = Duration::from_millis(300);
        let mut body = DeadlineBody::new(ChannelBody(rx), timeout, late.clone());
        // One byte every 50 ms: each wait is short, together they pass the timeout.
        let sender = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if tx.send(Bytes::from_static(b"x")).await.is_err() {
                    break;
                }
            }
        });
        let start = std::time::Instant::now();
        let mut got = 0;
        let end = loop {
            match next(&mut body).await {
                Some(Ok(b)) => got += b.len(),
                other => break other,
            }
        };
        sender.abort();
        assert!(matches!(end, Some(Err(_))), "cut off: {end:?}");
        assert!(late.load(Ordering::Relaxed), "flagged for the 408");
        assert!(got < 6, "at most 300 ms of 50 ms bytes: {got}");
        assert!(start.elapsed() >= timeout);
    }

    #[tokio::test]
    async fn pauses_of_the_reader_are_not_charged_to_the_client() {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let late = Arc::new(AtomicBool::new(false));
        let mut body = DeadlineBody::new(ChannelBody(rx), Duration::from_millis(300), late.clone());
        for _ in 0..5 {
            tx.send(Bytes::from_static(b"0123456789"))
                .await
                .expect("send");
        }
        // The last piece comes 900 ms in: after the reader's pauses, so it waits once, for
        // at most 150 ms (less if the machine is slow).
        let sender = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(900)).await;
            tx.send(Bytes::from_static(b"end")).await.expect("send");
        });
        // A paced reader: 150 ms between pieces, 750 ms in all, far past the 300 ms timeout
        // counted from the start (what an earlier version did, which then cut such uploads
        // off with a 408); but the client kept it waiting only at the end.
        let mut got = 0;
        while let Some(piece) = next(&mut body).await {
            got += piece.expect("never late").len();
            if got < 50 {
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        }
        sender.await.expect("sender");
        assert_eq!(got, 53);
        assert!(!late.load(Ordering::Relaxed));
    }

    #[tokio::test]
    async fn waits_add_up_across_pieces() {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let late = Arc::new(AtomicBool::new(false));
        let mut body = DeadlineBody::new(ChannelBody(rx), Duration::from_millis(300), late.clone());
        // The client makes the reader wait 200 ms, the reader pauses 500 ms, then the client
        // is 2 s late: the second wait ends when the first's 200 ms and it reach 300 ms.
        let sender = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            tx.send(Bytes::from_static(b"a")).await.expect("send");
            tokio::time::sleep(Duration::from_millis(2_000)).await;
            let _ = tx.send(Bytes::from_static(b"b")).await;
        });
        assert_eq!(next(&mut body).await, Some(Ok(Bytes::from_static(b"a"))));
        tokio::time::sleep(Duration::from_millis(500)).await;
        let start = std::time::Instant::now();
        assert!(matches!(next(&mut body).await, Some(Err(_))), "cut off");
        assert!(
            start.elapsed() < Duration::from_millis(1_500),
            "before the late piece: {:?}",
            start.elapsed()
        );
        assert!(late.load(Ordering::Relaxed));
        sender.abort();
    }
}
