//! WebTransport (HTTP/3 over QUIC): one bidirectional stream per session carrying
//! length-prefixed envelopes.

use std::sync::Arc;
use std::time::Duration;

use tern_wire::framing::FrameDecoder;
use tern_wire::msg::ErrorCode;
use wtransport::endpoint::endpoint_side::Server;
use wtransport::{Connection, Endpoint, RecvStream, SendStream, VarInt};

use crate::metrics::Transport;
use crate::session::{self, FrameRecv, FrameSend, Received, SessionContext, TransportClosed};

pub const WT_PATH: &str = "/api/v1/wt";
/// How long a client has, after the session is accepted, to open its stream.
const STREAM_TIMEOUT: Duration = Duration::from_secs(10);
const READ_CHUNK: usize = 4 * 1024;
/// How long the final frames may take to be acknowledged before the session is closed anyway.
/// With [`PEER_CLOSE_TIMEOUT`] it stays inside the session's 3 s goodbye.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long a peer that has the final frames gets to read them and close the session itself
/// before the close capsule (which makes browsers drop unread stream data) is sent.
const READ_GRACE: Duration = Duration::from_millis(300);
/// How long the peer has to close the connection after the close capsule (one round trip of
/// a slow mobile link) before the server closes it.
const PEER_CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// HTTP/3's H3_NO_ERROR: the only code the server puts in the QUIC (HTTP/3) error space.
/// Tern's codes travel in the WebTransport close capsule and the `Error` frame.
const H3_NO_ERROR: u32 = 0x100;

/// Ends a session the way browsers can see: the CLOSE_WEBTRANSPORT_SESSION capsule with Tern's
/// code and reason (`WebTransport.closed` resolves with them), then waits for the peer to close
/// the connection in answer; only a peer that does not is closed on, with H3_NO_ERROR.
async fn end_session(connection: &Connection, code: ErrorCode, reason: &str) {
    connection.close_session(code as u32, reason);
    if tokio::time::timeout(PEER_CLOSE_TIMEOUT, connection.closed())
        .await
        .is_err()
    {
        connection.close(VarInt::from_u32(H3_NO_ERROR), b"");
    }
}

/// Accepts QUIC connections: each asks the shared budget for a place before its handshake
/// (refused: QUIC CONNECTION_REFUSED, no handshake state kept), and must have finished the
/// handshake and sent its WebTransport CONNECT within `connect_timeout`, else it is dropped —
/// which closes it, since the future owns the only handles to the connection.
pub async fn accept_loop(
    endpoint: Endpoint<Server>,
    ctx: Arc<SessionContext>,
    admission: Arc<crate::edge::Admission>,
    connect_timeout: Duration,
) {
    loop {
        let incoming = endpoint.accept().await;
        let Ok(admitted) = admission.admit(incoming.remote_address().ip()) else {
            incoming.refuse();
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let _admitted = admitted;
            let request = match tokio::time::timeout(connect_timeout, incoming).await {
                Ok(Ok(request)) => request,
                Ok(Err(error)) => {
                    tracing::debug!(%error, "webtransport handshake failed");
                    return;
                }
                Err(_) => {
                    ctx.metrics.quic_connect_timeouts.inc();
                    return;
                }
            };
            if request.path() != WT_PATH {
                request.not_found().await;
                return;
            }
            // Browsers always send the page's origin on the CONNECT; native clients none.
            if !ctx.origins.socket_allowed(request.origin()) {
                tracing::debug!(origin = ?request.origin(), "webtransport session from a refused origin");
                request.forbidden().await;
                return;
            }
            let connection = match request.accept().await {
                Ok(connection) => connection,
                Err(error) => {
                    tracing::debug!(%error, "webtransport session failed");
                    return;
                }
            };
            let (send, recv) = match tokio::time::timeout(STREAM_TIMEOUT, connection.accept_bi())
                .await
            {
                Ok(Ok(streams)) => streams,
                _ => {
                    end_session(&connection, ErrorCode::MalformedFrame, "no stream opened").await;
                    return;
                }
            };
            let limit = ctx.limits.max_frame_bytes;
            let recv = WtRecv {
                connection: connection.clone(),
                metrics: ctx.metrics.clone(),
                recv,
                decoder: FrameDecoder::new(limit),
                buf: vec![0; READ_CHUNK],
            };
            let send = WtSend { send, connection };
            session::run(ctx, Transport::WebTransport, recv, send).await;
        });
    }
}

struct WtRecv {
    /// Datagrams (one envelope each, e.g. `Typing`) arrive on the connection.
    connection: Connection,
    metrics: Arc<crate::metrics::GatewayMetrics>,
    recv: RecvStream,
    decoder: FrameDecoder,
    buf: Vec<u8>,
}

impl FrameRecv for WtRecv {
    async fn recv(&mut self) -> Received {
        loop {
            match self.decoder.next_frame() {
                Ok(Some(frame)) => return Received::Frame(frame),
                Ok(None) => {}
                Err(tern_wire::WireError::FrameTooLarge { size, .. }) => {
                    return Received::TooLarge { size };
                }
                Err(error) => return Received::Malformed(error.to_string()),
            }
            // Both are cancel-safe: an unread datagram stays queued, an unfinished read
            // consumed nothing.
            tokio::select! {
                read = self.recv.read(&mut self.buf) => match read {
                    Ok(Some(n)) => self.decoder.push(&self.buf[..n]),
                    Ok(None) | Err(_) => return Received::Closed,
                },
                datagram = self.connection.receive_datagram() => match datagram {
                    Ok(datagram) => {
                        self.metrics.datagrams_in.inc();
                        return Received::Frame(datagram.payload().to_vec());
                    }
                    Err(_) => return Received::Closed,
                },
            }
        }
    }
}

struct WtSend {
    send: SendStream,
    connection: Connection,
}

impl FrameSend for WtSend {
    async fn send(&mut self, frame: &[u8]) -> Result<(), TransportClosed> {
        let framed = tern_wire::framing::frame(frame);
        self.send
            .write_all(&framed)
            .await
            .map_err(|_| TransportClosed)
    }

    fn send_datagram(&mut self, frame: &[u8]) -> bool {
        self.connection
            .max_datagram_size()
            .is_some_and(|max| frame.len() <= max)
            && self.connection.send_datagram(frame).is_ok()
    }

    async fn close(&mut self, code: ErrorCode, reason: &str) {
        // finish() completes when the peer acknowledged the data (the error frame); bounded so a
        // vanished peer cannot hold the session open. Closing the QUIC connection right after
        // (as before) let Chromium drop frames it had received but the page had not read yet.
        let _ = tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, self.send.finish()).await;
        // Acknowledged is not read: a browser that gets the close capsule aborts its streams and
        // drops what the page has not read yet. A client that reads the fatal Error closes the
        // session itself; one that does not gets the capsule after this grace.
        if tokio::time::timeout(READ_GRACE, self.connection.closed())
            .await
            .is_ok()
        {
            return;
        }
        end_session(&self.connection, code, reason).await;
    }
}
