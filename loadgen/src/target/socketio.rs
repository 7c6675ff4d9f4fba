//! Socket.IO 4 peer (`bench/peers/socketio/server.js`), spoken directly: Engine.IO v4 over one
//! secure WebSocket, Socket.IO v5 packets inside it. No Socket.IO client library: the loadgen owns
//! every socket so all targets are measured through the same TCP/TLS/WebSocket stack.
//!
//! Wire summary (Engine.IO v4 / Socket.IO v5, text frames only, one packet per frame):
//! - server → `0{"sid":..,"pingInterval":ms,"pingTimeout":ms,..}` (Engine.IO OPEN)
//! - client → `40{"user":..,"rooms":[..]}` (Socket.IO CONNECT to "/" with the auth payload);
//!   server → `40{"sid":..}` once joined to every room, or `44{"message":..}` (CONNECT_ERROR)
//! - server → `2` (PING) every pingInterval; client → `3` (PONG) within pingTimeout
//! - client → `42<id>["send",{"room":..,"payload":b64}]` (EVENT asking for an ack);
//!   server → `43<id>[{"ok":true}]` (ACK, sent after the broadcast was handed to the room)
//! - server → `42["msg",{"room":..,"payload":b64}]`, never to the sender (`socket.to(room)`)
//!
//! The helpers shared with the Centrifugo adapter (TCP from a given source address, TLS with
//! the ring provider, the WebSocket handshake, the pending-reply table) live here as well.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use super::{
    Connected, ConversationRef, Inbound, MessageSender, Population, SendOutcome, Target,
    TargetError, UserSpec,
};

/// Deliveries buffered per connection before the reader stops reading the socket (backpressure,
/// never loss). Channel blocks are allocated lazily, so an idle connection pays nothing for it.
pub(super) const INBOUND_CAPACITY: usize = 1024;
/// Bounds the TCP connect + TLS + WebSocket handshake + protocol handshake of one connection, so
/// a wedged server shows up as a failed connect instead of a hung scenario.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// A send whose acknowledgement has not come after this long fails; the scenario counts it.
pub(super) const ACK_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `close` waits for the server to finish the closing handshake before dropping the
/// connection.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Largest inbound WebSocket message: generous for the benchmark's payloads (a few hundred
/// bytes), small enough that a misbehaving server cannot make the loadgen allocate without
/// bound.
const MAX_INBOUND_MESSAGE: usize = 1 << 20;

pub(super) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
pub(super) type WsSink = SplitSink<Ws, Message>;
pub(super) type WsStream = SplitStream<Ws>;

/// The TLS client config the peers get: the loadgen's trust settings with ALPN set to
/// `http/1.1`. The shared config may advertise `h3` (WebTransport); Node and Go refuse a
/// handshake whose ALPN list has nothing they speak, and a WebSocket upgrade is HTTP/1.1.
pub(super) fn websocket_tls(tls: &rustls::ClientConfig) -> Arc<rustls::ClientConfig> {
    let mut config = tls.clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Opens `wss://{server}{path}` over a TCP connection bound to `source` (spreading connections
/// over 127.0.0.0/8 avoids ephemeral-port exhaustion). Same buffer settings for every peer:
/// a 4 KiB read buffer and no write buffering (each frame is written out as it is sent).
pub(super) async fn open_websocket(
    server: &str,
    path: &str,
    source: IpAddr,
    tls: Arc<rustls::ClientConfig>,
) -> Result<Ws, TargetError> {
    let addr = resolve(server, source).await?;
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| TargetError::Connect(format!("socket: {e}")))?;
    socket
        .bind(SocketAddr::new(source, 0))
        .map_err(|e| TargetError::Connect(format!("bind {source}: {e}")))?;
    let stream = socket
        .connect(addr)
        .await
        .map_err(|e| TargetError::Connect(format!("tcp connect {addr}: {e}")))?;
    // Small frames both ways; Nagle would add delivery latency that is not the server's.
    stream
        .set_nodelay(true)
        .map_err(|e| TargetError::Connect(format!("nodelay: {e}")))?;
    let config = WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_message_size(Some(MAX_INBOUND_MESSAGE))
        .max_frame_size(Some(MAX_INBOUND_MESSAGE));
    let url = format!("wss://{server}{path}");
    let (ws, _response) = tokio_tungstenite::client_async_tls_with_config(
        url,
        stream,
        Some(config),
        Some(Connector::Rustls(tls)),
    )
    .await
    .map_err(|e| TargetError::Connect(format!("websocket handshake: {e}")))?;
    Ok(ws)
}

/// The server's address in the same family as `source` (a socket bound to an IPv4 source
/// cannot reach an IPv6 server).
async fn resolve(server: &str, source: IpAddr) -> Result<SocketAddr, TargetError> {
    if let Ok(addr) = server.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let addrs = tokio::net::lookup_host(server)
        .await
        .map_err(|e| TargetError::Connect(format!("resolve {server}: {e}")))?;
    let mut first = None;
    for addr in addrs {
        if addr.is_ipv4() == source.is_ipv4() {
            return Ok(addr);
        }
        first.get_or_insert(addr);
    }
    first.ok_or_else(|| TargetError::Connect(format!("{server} resolves to no address")))
}

/// Users and conversations exist only by name on the peers (no accounts): user `u{i}`,
/// conversation `c{i}` (a Socket.IO room or a Centrifugo channel).
pub(super) fn specs_by_index(population: &Population) -> Vec<UserSpec> {
    let mut users: Vec<UserSpec> = (0..population.users)
        .map(|index| UserSpec {
            index,
            name: format!("u{index}"),
            token: None,
            conversations: Vec::new(),
        })
        .collect();
    for (index, members) in population.conversations.iter().enumerate() {
        for &member in members {
            if let Some(user) = users.get_mut(member) {
                user.conversations.push(ConversationRef {
                    index,
                    key: format!("c{index}"),
                });
            }
        }
    }
    users
}

/// Sends waiting for their acknowledgement, by request id. The reader resolves them; once the
/// reader has ended (`closed`), every waiting and every later send fails at once instead of
/// waiting for a reply that cannot come.
pub(super) struct Pending {
    inner: Mutex<PendingInner>,
    next_id: AtomicU64,
}

struct PendingInner {
    closed: Option<String>,
    waiting: HashMap<u64, oneshot::Sender<Result<(), String>>>,
}

impl Pending {
    pub(super) fn new(first_id: u64) -> Self {
        Pending {
            inner: Mutex::new(PendingInner {
                closed: None,
                waiting: HashMap::new(),
            }),
            next_id: AtomicU64::new(first_id),
        }
    }

    /// Allocates an id and the receiver its reply will arrive on.
    pub(super) fn register(
        &self,
    ) -> Result<(u64, oneshot::Receiver<Result<(), String>>), TargetError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let mut inner = self.lock();
        if let Some(reason) = &inner.closed {
            return Err(TargetError::Send(format!("connection closed: {reason}")));
        }
        inner.waiting.insert(id, tx);
        Ok((id, rx))
    }

    pub(super) fn forget(&self, id: u64) {
        self.lock().waiting.remove(&id);
    }

    /// Delivers a reply; false if nothing waited for that id.
    pub(super) fn resolve(&self, id: u64, result: Result<(), String>) -> bool {
        match self.lock().waiting.remove(&id) {
            Some(tx) => {
                // The sender may have given up (timeout); nothing to do then.
                let _ = tx.send(result);
                true
            }
            None => false,
        }
    }

    pub(super) fn close(&self, reason: &str) {
        let waiting = {
            let mut inner = self.lock();
            inner.closed.get_or_insert_with(|| reason.to_owned());
            std::mem::take(&mut inner.waiting)
        };
        for (_, tx) in waiting {
            let _ = tx.send(Err(format!("connection closed: {reason}")));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PendingInner> {
        // A panic while holding this lock leaves the map consistent (single inserts/removes),
        // so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Writes one text frame through the shared sink.
pub(super) async fn write_text(
    sink: &tokio::sync::Mutex<WsSink>,
    text: String,
) -> Result<(), String> {
    sink.lock()
        .await
        .send(Message::text(text))
        .await
        .map_err(|e| e.to_string())
}

/// Waits for the reply to request `id`, within [`ACK_TIMEOUT`].
pub(super) async fn await_reply(
    pending: &Pending,
    id: u64,
    rx: oneshot::Receiver<Result<(), String>>,
) -> Result<(), TargetError> {
    match tokio::time::timeout(ACK_TIMEOUT, rx).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(reason))) => Err(TargetError::Send(reason)),
        Ok(Err(_)) => Err(TargetError::Send("connection closed".into())),
        Err(_) => {
            pending.forget(id);
            Err(TargetError::Timeout(format!(
                "no acknowledgement within {ACK_TIMEOUT:?}"
            )))
        }
    }
}

/// Sends a close frame, then gives the reader [`CLOSE_GRACE`] to see the server's close before
/// dropping the connection.
pub(super) async fn close_connection(
    sink: &tokio::sync::Mutex<WsSink>,
    reader: &Mutex<Option<JoinHandle<()>>>,
) {
    {
        let mut sink = sink.lock().await;
        // Already closed by the peer is fine: closing is all we wanted.
        let _ = tokio::time::timeout(CLOSE_GRACE, sink.close()).await;
    }
    let handle = reader.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(mut handle) = handle
        && tokio::time::timeout(CLOSE_GRACE, &mut handle)
            .await
            .is_err()
    {
        handle.abort();
    }
}

/// Reads the next text frame, answering WebSocket-level pings on the way (tungstenite queues the
/// pong itself) and skipping frames that carry no protocol text.
pub(super) async fn next_text(
    stream: &mut WsStream,
    idle: Duration,
) -> Result<tokio_tungstenite::tungstenite::Utf8Bytes, String> {
    loop {
        let message = match tokio::time::timeout(idle, stream.next()).await {
            Err(_) => return Err(format!("nothing received for {idle:?}")),
            Ok(None) => return Err("connection ended".into()),
            Ok(Some(Err(e))) => return Err(e.to_string()),
            Ok(Some(Ok(message))) => message,
        };
        match message {
            Message::Text(text) => return Ok(text),
            Message::Close(frame) => {
                return Err(match frame {
                    Some(frame) => format!("closed by server: {} {}", frame.code, frame.reason),
                    None => "closed by server".into(),
                });
            }
            Message::Binary(_) => return Err("unexpected binary frame".into()),
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Socket.IO
// ---------------------------------------------------------------------------------------------

/// Socket.IO 4 server from `bench/peers/socketio`.
pub struct SocketIoTarget {
    server: String,
    tls: Arc<rustls::ClientConfig>,
}

impl SocketIoTarget {
    pub fn new(server: String, tls: Arc<rustls::ClientConfig>) -> Self {
        SocketIoTarget {
            server,
            tls: websocket_tls(&tls),
        }
    }
}

#[async_trait::async_trait]
impl Target for SocketIoTarget {
    fn name(&self) -> String {
        "socketio".into()
    }

    async fn setup(&self, population: &Population) -> Result<Vec<UserSpec>, TargetError> {
        // Rooms exist by being joined; there is nothing to create on the server.
        Ok(specs_by_index(population))
    }

    async fn connect(&self, user: &UserSpec, source: IpAddr) -> Result<Connected, TargetError> {
        tokio::time::timeout(CONNECT_TIMEOUT, self.connect_inner(user, source))
            .await
            .map_err(|_| {
                TargetError::Timeout(format!("socket.io connect took over {CONNECT_TIMEOUT:?}"))
            })?
    }
}

/// Engine.IO OPEN packet fields we use.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct OpenPacket {
    ping_interval: u64,
    ping_timeout: u64,
}

#[derive(serde::Serialize)]
struct ConnectAuth<'a> {
    user: &'a str,
    rooms: Vec<&'a str>,
}

#[derive(serde::Serialize)]
struct SendBody<'a> {
    room: &'a str,
    payload: &'a str,
}

#[derive(serde::Deserialize)]
struct MsgBody<'a> {
    #[serde(borrow)]
    room: Cow<'a, str>,
    #[serde(borrow)]
    payload: Cow<'a, str>,
}

#[derive(serde::Deserialize)]
struct AckBody {
    ok: bool,
    #[serde(default)]
    error: Option<String>,
}

impl SocketIoTarget {
    async fn connect_inner(
        &self,
        user: &UserSpec,
        source: IpAddr,
    ) -> Result<Connected, TargetError> {
        let ws = open_websocket(
            &self.server,
            "/socket.io/?EIO=4&transport=websocket",
            source,
            self.tls.clone(),
        )
        .await?;
        let (mut sink, mut stream) = ws.split();
        let handshake_err = |e: String| TargetError::Connect(format!("socket.io handshake: {e}"));

        // Engine.IO OPEN. Its ping settings tell how long silence may last before the
        // connection counts as dead.
        let open = next_text(&mut stream, CONNECT_TIMEOUT)
            .await
            .map_err(handshake_err)?;
        let open: OpenPacket = open
            .strip_prefix('0')
            .and_then(|json| serde_json::from_str(json).ok())
            .ok_or_else(|| handshake_err(format!("expected an OPEN packet, got {open:?}")))?;
        let idle = Duration::from_millis(open.ping_interval.saturating_add(open.ping_timeout));

        // Socket.IO CONNECT with the rooms to join; the server acknowledges only after joining.
        let auth = ConnectAuth {
            user: &user.name,
            rooms: user.conversations.iter().map(|c| c.key.as_str()).collect(),
        };
        let auth = serde_json::to_string(&auth).map_err(|e| handshake_err(e.to_string()))?;
        sink.send(Message::text(format!("40{auth}")))
            .await
            .map_err(|e| handshake_err(e.to_string()))?;
        loop {
            let text = next_text(&mut stream, idle).await.map_err(handshake_err)?;
            match text.as_str() {
                "2" => sink
                    .send(Message::text("3"))
                    .await
                    .map_err(|e| handshake_err(e.to_string()))?,
                t if t.starts_with("40") => break,
                t if t.starts_with("44") => {
                    return Err(handshake_err(format!("server refused: {}", &t[2..])));
                }
                other => return Err(handshake_err(format!("unexpected packet {other:?}"))),
            }
        }

        let rooms: HashMap<String, usize> = user
            .conversations
            .iter()
            .map(|c| (c.key.clone(), c.index))
            .collect();
        let sink = Arc::new(tokio::sync::Mutex::new(sink));
        let pending = Arc::new(Pending::new(0));
        let (inbound_tx, inbound) = mpsc::channel(INBOUND_CAPACITY);
        let reader = tokio::spawn(read_socketio(
            stream,
            sink.clone(),
            pending.clone(),
            rooms,
            inbound_tx,
            idle,
            user.name.clone(),
        ));
        Ok(Connected {
            sender: Box::new(SocketIoSender {
                sink,
                pending,
                reader: Mutex::new(Some(reader)),
            }),
            inbound,
        })
    }
}

struct SocketIoSender {
    sink: Arc<tokio::sync::Mutex<WsSink>>,
    pending: Arc<Pending>,
    reader: Mutex<Option<JoinHandle<()>>>,
}

#[async_trait::async_trait]
impl MessageSender for SocketIoSender {
    async fn send(
        &self,
        conversation: &ConversationRef,
        payload: Vec<u8>,
    ) -> Result<SendOutcome, TargetError> {
        let payload = base64::engine::general_purpose::STANDARD.encode(payload);
        let body = SendBody {
            room: &conversation.key,
            payload: &payload,
        };
        let body = serde_json::to_string(&body).map_err(|e| TargetError::Send(e.to_string()))?;
        let (id, rx) = self.pending.register()?;
        if let Err(e) = write_text(&self.sink, format!("42{id}[\"send\",{body}]")).await {
            self.pending.forget(id);
            return Err(TargetError::Send(e));
        }
        await_reply(&self.pending, id, rx)
            .await
            .map(|()| SendOutcome::default())
    }

    async fn close(&self) {
        close_connection(&self.sink, &self.reader).await;
    }
}

/// The connection's reader: answers Engine.IO pings, resolves acknowledgements, forwards
/// `msg` events. Ends (closing the inbound stream and failing waiting sends) when the
/// connection ends or the server goes silent past pingInterval + pingTimeout.
async fn read_socketio(
    mut stream: WsStream,
    sink: Arc<tokio::sync::Mutex<WsSink>>,
    pending: Arc<Pending>,
    rooms: HashMap<String, usize>,
    inbound: mpsc::Sender<Inbound>,
    idle: Duration,
    user: String,
) {
    let reason = loop {
        let text = match next_text(&mut stream, idle).await {
            Ok(text) => text,
            Err(reason) => break reason,
        };
        let arrived = Instant::now();
        match handle_socketio_packet(&text, &rooms, &pending) {
            Ok(Packet::Ping) => {
                if let Err(e) = write_text(&sink, "3".into()).await {
                    break format!("pong failed: {e}");
                }
            }
            Ok(Packet::Message {
                conversation,
                payload,
            }) => {
                let message = Inbound {
                    conversation,
                    seq: None,
                    payload,
                    arrived,
                    undecryptable: None,
                    late_key: false,
                };
                // Waits while the consumer is behind (backpressure, never a drop). A consumer
                // that went away only stops deliveries; acknowledgements keep flowing.
                let _ = inbound.send(message).await;
            }
            Ok(Packet::Other) => {}
            Ok(Packet::Closed(why)) => break why,
            Err(e) => {
                tracing::warn!(user = %user, packet = %text.as_str(), "socket.io: {e}");
            }
        }
    };
    tracing::debug!(user = %user, "socket.io connection ended: {reason}");
    pending.close(&reason);
}

enum Packet {
    Ping,
    Message {
        conversation: usize,
        payload: Vec<u8>,
    },
    Other,
    Closed(String),
}

/// Decodes one Engine.IO packet (and the Socket.IO packet inside a MESSAGE). Acks are resolved
/// here; everything the reader must act on is returned.
fn handle_socketio_packet(
    text: &str,
    rooms: &HashMap<String, usize>,
    pending: &Pending,
) -> Result<Packet, String> {
    let mut chars = text.chars();
    match chars.next() {
        Some('2') => return Ok(Packet::Ping),
        Some('1') => return Ok(Packet::Closed("engine.io CLOSE".into())),
        Some('6') | Some('3') => return Ok(Packet::Other), // NOOP, stray PONG
        Some('4') => {}
        _ => return Err("unknown engine.io packet".into()),
    }
    // Socket.IO packet: <type>[<namespace>,][<ack id>]<json>. Everything here is on the main
    // namespace "/", which the encoding omits; binary packets (5, 6) are never used because
    // payloads travel as base64 strings.
    let sio = &text[1..];
    let (kind, rest) = sio.split_at_checked(1).ok_or("empty socket.io packet")?;
    match kind {
        "2" => {
            // EVENT from the server: only "msg" is expected, without an ack id.
            let (event, body): (Cow<'_, str>, MsgBody<'_>) =
                serde_json::from_str(rest).map_err(|e| format!("bad event: {e}"))?;
            if event != "msg" {
                return Err(format!("unexpected event {event:?}"));
            }
            let conversation = *rooms
                .get(body.room.as_ref())
                .ok_or_else(|| format!("message for a room not joined: {}", body.room))?;
            let payload = base64::engine::general_purpose::STANDARD
                .decode(body.payload.as_bytes())
                .map_err(|e| format!("payload is not base64: {e}"))?;
            Ok(Packet::Message {
                conversation,
                payload,
            })
        }
        "3" => {
            // ACK: <id>[<args>]
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            let id: u64 = rest[..digits].parse().map_err(|_| "ack without an id")?;
            let (body,): (AckBody,) =
                serde_json::from_str(&rest[digits..]).map_err(|e| format!("bad ack: {e}"))?;
            let result = if body.ok {
                Ok(())
            } else {
                Err(body.error.unwrap_or_else(|| "refused".into()))
            };
            if !pending.resolve(id, result) {
                // Late ack for a send that already timed out; the scenario counted it then.
                tracing::debug!(id, "socket.io ack for no waiting send");
            }
            Ok(Packet::Other)
        }
        "1" => Ok(Packet::Closed("socket.io DISCONNECT".into())),
        "4" => Ok(Packet::Closed(format!("socket.io CONNECT_ERROR {rest}"))),
        _ => Err(format!("unexpected socket.io packet type {kind}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rooms() -> HashMap<String, usize> {
        HashMap::from([("c7".to_string(), 7usize)])
    }

    #[test]
    fn decodes_a_message_event() {
        let pending = Pending::new(0);
        let packet = handle_socketio_packet(
            r#"42["msg",{"room":"c7","payload":"aGVsbG8="}]"#,
            &rooms(),
            &pending,
        );
        match packet {
            Ok(Packet::Message {
                conversation,
                payload,
            }) => {
                assert_eq!(conversation, 7);
                assert_eq!(payload, b"hello");
            }
            _ => panic!("expected a message"),
        }
    }

    #[test]
    fn resolves_acks_by_id() {
        let pending = Pending::new(41);
        let (id, mut rx) = pending.register().expect("open");
        assert_eq!(id, 41);
        let packet = handle_socketio_packet(r#"4341[{"ok":true}]"#, &rooms(), &pending);
        assert!(matches!(packet, Ok(Packet::Other)));
        assert_eq!(rx.try_recv().expect("resolved"), Ok(()));

        let (id, mut rx) = pending.register().expect("open");
        let text = format!(r#"43{id}[{{"ok":false,"error":"not a member"}}]"#);
        assert!(handle_socketio_packet(&text, &rooms(), &pending).is_ok());
        assert_eq!(rx.try_recv().expect("resolved"), Err("not a member".into()));
    }

    #[test]
    fn rejects_malformed_input_without_panicking() {
        let pending = Pending::new(0);
        for text in [
            "",
            "4",
            "42",
            "42[",
            "43",
            "43x[]",
            "43[]",
            r#"42["msg",{"room":"c9","payload":""}]"#,
            r#"42["msg",{"room":"c7","payload":"!!"}]"#,
            "9",
            "4é",
            "43999999999999999999999[]",
        ] {
            let _ = handle_socketio_packet(text, &rooms(), &pending);
        }
        assert!(matches!(
            handle_socketio_packet("2", &rooms(), &pending),
            Ok(Packet::Ping)
        ));
    }

    #[test]
    fn closed_pending_fails_new_and_waiting_sends() {
        let pending = Pending::new(0);
        let (_, mut rx) = pending.register().expect("open");
        pending.close("gone");
        assert!(rx.try_recv().expect("failed").is_err());
        assert!(pending.register().is_err());
    }

    #[test]
    fn specs_name_rooms_by_conversation_index() {
        let population = Population {
            users: 3,
            conversations: vec![vec![0, 1], vec![1, 2]],
        };
        let specs = specs_by_index(&population);
        assert_eq!(specs[1].conversations.len(), 2);
        assert_eq!(specs[1].conversations[1].key, "c1");
        assert_eq!(specs[2].name, "u2");
    }
}
