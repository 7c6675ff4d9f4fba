//! Raw frame transports: WebSocket (one binary message per envelope) and WebTransport (one
//! bidirectional stream of u32-LE length-prefixed envelopes).
//!
//! This layer moves opaque frames; it neither encodes nor checks them, so tests can push
//! malformed or oversized frames at a server. [`crate::Connection`] adds the protocol on top.

use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tern_wire::framing::FrameDecoder;
use tern_wire::msg::{ClientMessage, ServerMessage};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::config::{Config, TransportPref};
use crate::error::{Error, Result};

/// Which transport a connection runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    WebTransport,
    WebSocket,
}

impl std::fmt::Display for TransportKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TransportKind::WebTransport => "WebTransport",
            TransportKind::WebSocket => "WebSocket",
        })
    }
}

type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Bytes read from the QUIC stream per call. Small on purpose: an idle connection should hold
/// little memory, and frames are typically far below this.
const WT_READ_CHUNK: usize = 4 * 1024;

/// How long `close()` waits for the peer to acknowledge the last bytes (a final Ack frame)
/// before closing the QUIC connection, which would discard anything unacknowledged.
const WT_FINISH_GRACE: Duration = Duration::from_millis(500);

/// QUIC keep-alive and idle timeout: a server that vanished without closing (crash, host or
/// network gone) is noticed within the idle timeout rather than never.
const WT_KEEP_ALIVE: Duration = Duration::from_secs(10);
const WT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A connected transport: a writer half and a reader half, usable together or split.
pub struct Transport {
    writer: FrameWriter,
    reader: FrameReader,
}

/// The sending half.
pub struct FrameWriter {
    inner: WriterInner,
}

enum WriterInner {
    Ws(SplitSink<WsStream, WsMessage>),
    Wt {
        send: wtransport::SendStream,
        conn: wtransport::Connection,
        // The endpoint owns the UDP socket; kept alive for the life of the session.
        _endpoint: wtransport::Endpoint<wtransport::endpoint::endpoint_side::Client>,
    },
    Closed,
}

/// The receiving half.
pub struct FrameReader {
    inner: ReaderInner,
}

enum ReaderInner {
    Ws(SplitStream<WsStream>),
    Wt {
        recv: wtransport::RecvStream,
        decoder: FrameDecoder,
        buf: Box<[u8]>,
        /// Datagrams (one envelope each, e.g. `Typing`) arrive on the connection, not the stream.
        conn: wtransport::Connection,
    },
}

impl Transport {
    /// Connects per `config.transport`; `Auto` tries WebTransport for at most
    /// `config.webtransport_timeout`, then WebSocket.
    pub async fn connect(config: &Config) -> Result<Transport> {
        match config.transport {
            TransportPref::WebSocket => Self::connect_websocket(config).await,
            TransportPref::WebTransport => Self::connect_webtransport(config).await,
            TransportPref::Auto => {
                match tokio::time::timeout(
                    config.webtransport_timeout,
                    Self::connect_webtransport(config),
                )
                .await
                {
                    Ok(Ok(t)) => Ok(t),
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "WebTransport failed; falling back to WebSocket");
                        Self::connect_websocket(config).await
                    }
                    Err(_) => {
                        tracing::debug!("WebTransport timed out; falling back to WebSocket");
                        Self::connect_websocket(config).await
                    }
                }
            }
        }
    }

    /// Secure WebSocket to `wss://HOST:PORT/api/v1/ws`.
    pub async fn connect_websocket(config: &Config) -> Result<Transport> {
        // The defaults (128 KiB write buffer, 64 KiB read buffer) cost ~134 KB per connection;
        // envelopes are small and flushed one by one, so a 4 KiB read buffer and no write
        // buffering are enough.
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(4 * 1024)
            .write_buffer_size(0)
            .max_message_size(Some(config.max_frame_bytes))
            .max_frame_size(Some(config.max_frame_bytes));
        let connector = Connector::Rustls(config.tls().tcp.clone());
        let connect = async {
            match config.bind_address {
                None => {
                    tokio_tungstenite::connect_async_tls_with_config(
                        config.websocket_url(),
                        Some(ws_config),
                        true, // small frames: disable Nagle so they leave at once
                        Some(connector),
                    )
                    .await
                }
                Some(local) => {
                    let tcp = connect_tcp_from(local, config.authority()).await?;
                    tokio_tungstenite::client_async_tls_with_config(
                        config.websocket_url(),
                        tcp,
                        Some(ws_config),
                        Some(connector),
                    )
                    .await
                }
            }
        };
        let (ws, _response) = tokio::time::timeout(config.connect_timeout, connect)
            .await
            .map_err(|_| Error::Timeout("WebSocket connect"))??;
        let (sink, stream) = ws.split();
        Ok(Transport {
            writer: FrameWriter {
                inner: WriterInner::Ws(sink),
            },
            reader: FrameReader {
                inner: ReaderInner::Ws(stream),
            },
        })
    }

    /// WebTransport session at `https://HOST:PORT/api/v1/wt`, then one bidirectional stream.
    pub async fn connect_webtransport(config: &Config) -> Result<Transport> {
        let wt_err =
            |what: &str, e: &dyn std::fmt::Display| Error::WebTransport(format!("{what}: {e}"));
        let build = |bind_v4: bool| -> Result<wtransport::ClientConfig> {
            let b = wtransport::ClientConfig::builder();
            let b = if let Some(local) = config.bind_address {
                b.with_bind_address(std::net::SocketAddr::new(local, 0))
            } else if bind_v4 {
                b.with_bind_address(std::net::SocketAddr::from(([0, 0, 0, 0], 0)))
            } else {
                b.with_bind_default()
            };
            Ok(b.with_custom_tls((*config.tls().quic).clone())
                .keep_alive_interval(Some(WT_KEEP_ALIVE))
                .max_idle_timeout(Some(WT_IDLE_TIMEOUT))
                .map_err(|e| wt_err("idle timeout", &e))?
                .build())
        };
        // Dual-stack first; hosts with IPv6 disabled cannot bind [::], so retry on IPv4 only.
        // An explicit bind address is used as given (no fallback).
        let endpoint = match wtransport::Endpoint::client(build(false)?) {
            Ok(e) => e,
            Err(e) if config.bind_address.is_some() => return Err(wt_err("bind", &e)),
            Err(_) => wtransport::Endpoint::client(build(true)?).map_err(|e| wt_err("bind", &e))?,
        };
        let session = async {
            let conn = endpoint
                .connect(config.webtransport_url())
                .await
                .map_err(|e| wt_err("connect", &e))?;
            let opening = conn
                .open_bi()
                .await
                .map_err(|e| wt_err("open stream", &e))?;
            let (send, recv) = opening.await.map_err(|e| wt_err("open stream", &e))?;
            Ok::<_, Error>((conn, send, recv))
        };
        let (conn, send, recv) = tokio::time::timeout(config.connect_timeout, session)
            .await
            .map_err(|_| Error::Timeout("WebTransport connect"))??;
        let reader_conn = conn.clone();
        Ok(Transport {
            writer: FrameWriter {
                inner: WriterInner::Wt {
                    send,
                    conn,
                    _endpoint: endpoint,
                },
            },
            reader: FrameReader {
                inner: ReaderInner::Wt {
                    recv,
                    decoder: FrameDecoder::new(config.max_frame_bytes),
                    buf: vec![0u8; WT_READ_CHUNK].into_boxed_slice(),
                    conn: reader_conn,
                },
            },
        })
    }

    pub fn kind(&self) -> TransportKind {
        self.reader.kind()
    }

    /// Sends one frame (adds the length prefix on WebTransport). No size check. The frame must
    /// not be empty (use [`Transport::send_raw`] to send an empty or hand-made frame).
    pub async fn send_frame(&mut self, frame: &[u8]) -> Result<()> {
        self.writer.send_frame(frame).await
    }

    /// Writes bytes exactly as given: one WebSocket binary message, or raw stream bytes on
    /// WebTransport (no length prefix). For tests of the server's framing checks.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.writer.send_raw(bytes).await
    }

    /// The next frame; `Ok(None)` when the peer closed cleanly.
    pub async fn recv_frame(&mut self) -> Result<Option<Vec<u8>>> {
        self.reader.recv_frame().await
    }

    /// Encodes and sends a client message.
    pub async fn send_message(&mut self, msg: &ClientMessage) -> Result<()> {
        self.send_frame(&tern_wire::encode_client(msg)).await
    }

    /// Receives and decodes the next server message; `Ok(None)` on clean close.
    pub async fn recv_message(
        &mut self,
        limits: &tern_wire::Limits,
    ) -> Result<Option<ServerMessage>> {
        match self.recv_frame().await? {
            Some(frame) => Ok(Some(tern_wire::decode_server(&frame, limits)?)),
            None => Ok(None),
        }
    }

    /// Closes gracefully (WebSocket close handshake; WebTransport stream finish + session close).
    pub async fn close(&mut self) -> Result<()> {
        self.writer.close().await
    }

    pub fn into_split(self) -> (FrameWriter, FrameReader) {
        (self.writer, self.reader)
    }
}

/// TCP connection to `authority` (`host:port`) from the local address `local` (any port).
/// Tries every resolved address of `local`'s family in turn, like `TcpStream::connect` does.
async fn connect_tcp_from(
    local: std::net::IpAddr,
    authority: &str,
) -> std::result::Result<TcpStream, tungstenite::Error> {
    let mut last_err = None;
    for remote in tokio::net::lookup_host(authority).await? {
        if remote.is_ipv4() != local.is_ipv4() {
            continue;
        }
        let socket = if remote.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.bind(std::net::SocketAddr::new(local, 0))?;
        match socket.connect(remote).await {
            Ok(stream) => {
                // Small frames: disable Nagle so they leave at once.
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err
        .unwrap_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::AddrNotAvailable,
                format!("{authority} has no address of the bind address's family ({local})"),
            )
        })
        .into())
}

impl FrameWriter {
    /// Sends one frame. Not cancel-safe on WebTransport (a dropped future can leave a partial
    /// frame on the stream); `Connection` only calls it from its writer task.
    pub async fn send_frame(&mut self, frame: &[u8]) -> Result<()> {
        match &mut self.inner {
            WriterInner::Ws(sink) => {
                Ok(sink.send(WsMessage::Binary(frame.to_vec().into())).await?)
            }
            WriterInner::Wt { send, .. } => {
                let framed = tern_wire::framing::frame(frame);
                send.write_all(&framed)
                    .await
                    .map_err(|e| Error::WebTransport(format!("write: {e}")))
            }
            WriterInner::Closed => Err(Error::Closed(crate::error::CloseReason::Local)),
        }
    }

    /// Sends one envelope unreliably: as a WebTransport datagram (no length prefix) when the
    /// transport has datagrams and it fits, else as an ordinary frame. For ephemeral messages
    /// such as `Typing`.
    pub async fn send_datagram(&mut self, frame: &[u8]) -> Result<()> {
        if let WriterInner::Wt { conn, .. } = &self.inner
            && conn
                .max_datagram_size()
                .is_some_and(|max| frame.len() <= max)
        {
            return conn
                .send_datagram(frame)
                .map_err(|e| Error::WebTransport(format!("datagram: {e}")));
        }
        self.send_frame(frame).await
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        match &mut self.inner {
            WriterInner::Ws(sink) => {
                Ok(sink.send(WsMessage::Binary(bytes.to_vec().into())).await?)
            }
            WriterInner::Wt { send, .. } => send
                .write_all(bytes)
                .await
                .map_err(|e| Error::WebTransport(format!("write: {e}"))),
            WriterInner::Closed => Err(Error::Closed(crate::error::CloseReason::Local)),
        }
    }

    pub async fn close(&mut self) -> Result<()> {
        match std::mem::replace(&mut self.inner, WriterInner::Closed) {
            WriterInner::Ws(mut sink) => match sink.close().await {
                Ok(())
                | Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    Ok(())
                }
                Err(e) => Err(e.into()),
            },
            WriterInner::Wt {
                mut send,
                conn,
                _endpoint,
            } => {
                // finish() completes once the peer has acknowledged everything written, so a
                // last Ack is not lost to the immediate connection close below.
                let _ = tokio::time::timeout(WT_FINISH_GRACE, send.finish()).await;
                conn.close(wtransport::VarInt::from_u32(0), b"bye");
                Ok(())
            }
            WriterInner::Closed => Ok(()),
        }
    }
}

impl FrameReader {
    pub fn kind(&self) -> TransportKind {
        match self.inner {
            ReaderInner::Ws(_) => TransportKind::WebSocket,
            ReaderInner::Wt { .. } => TransportKind::WebTransport,
        }
    }

    /// The next frame; `Ok(None)` when the peer closed cleanly. Cancel-safe: bytes already read
    /// stay in the decoder, and a WebSocket message is only taken once complete.
    pub async fn recv_frame(&mut self) -> Result<Option<Vec<u8>>> {
        match &mut self.inner {
            ReaderInner::Ws(stream) => loop {
                match stream.next().await {
                    None => return Ok(None),
                    Some(Ok(WsMessage::Binary(b))) => return Ok(Some(b.to_vec())),
                    Some(Ok(WsMessage::Text(_))) => {
                        return Err(Error::Protocol(
                            "text WebSocket message (envelopes are binary)".into(),
                        ));
                    }
                    // tungstenite answers pings itself; pongs and raw frames carry nothing for us.
                    Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_))) => {
                        continue;
                    }
                    Some(Ok(WsMessage::Close(_))) => return Ok(None),
                    Some(Err(
                        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed,
                    )) => {
                        return Ok(None);
                    }
                    Some(Err(e)) => return Err(e.into()),
                }
            },
            ReaderInner::Wt {
                recv,
                decoder,
                buf,
                conn,
            } => loop {
                if let Some(frame) = decoder.next_frame()? {
                    return Ok(Some(frame));
                }
                // Both are cancel-safe: an unread datagram stays queued, a stream read that
                // did not complete consumed nothing.
                tokio::select! {
                    read = recv.read(buf) => match read {
                        Ok(Some(n)) => decoder.push(&buf[..n]),
                        Ok(None) => return Ok(None),
                        Err(e) => return Err(Error::WebTransport(format!("read: {e}"))),
                    },
                    datagram = conn.receive_datagram() => {
                        if let Ok(datagram) = datagram {
                            return Ok(Some(datagram.payload().to_vec()));
                        }
                        // The connection is gone; the stream read reports how.
                    }
                }
            },
        }
    }
}
