//! Centrifugo v6 peer (`bench/peers/centrifugo`), spoken directly: its JSON client protocol
//! (protocol v2) over one secure WebSocket at `/connection/websocket`.
//!
//! Wire summary (each WebSocket text frame holds one or more JSON objects separated by `\n`):
//! - client → `{"id":1,"connect":{"name":..}}`; server → `{"id":1,"connect":{"client":ID,"ping":s,"pong":true,..}}`
//! - client → `{"id":N,"subscribe":{"channel":..}}` per conversation (sent in one frame);
//!   server → `{"id":N,"subscribe":{..}}` or `{"id":N,"error":{"code":..,"message":..}}`
//! - client → `{"id":N,"publish":{"channel":..,"data":{"p":b64}}}`; server → `{"id":N,"publish":{}}`
//!   once the publication went to the broker (memory engine: to every subscriber's queue)
//! - server → `{"push":{"channel":..,"pub":{"data":{"p":b64},"info":{"client":ID,..}}}}`
//! - server → `{}` (ping) every `ping` seconds; client → `{}` (pong). An unrequested pong gets
//!   the connection closed, so pongs answer pings only.
//!
//! Centrifugo delivers a publication to every subscriber including the publisher; the echo is
//! recognised by the publication's `info.client` (the connection id from the connect reply) and
//! not reported, so accounting sees the same "everyone but the sender" as Tern and Socket.IO.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use super::socketio::{
    CONNECT_TIMEOUT, INBOUND_CAPACITY, Pending, WsSink, WsStream, await_reply, close_connection,
    next_text, open_websocket, specs_by_index, websocket_tls, write_text,
};
use super::{
    Connected, ConversationRef, Inbound, MessageSender, Population, SendOutcome, Target,
    TargetError, UserSpec,
};

/// Extra silence tolerated beyond the announced ping interval before the connection counts as
/// dead (centrifuge-js uses the same 10 s margin).
const PING_MARGIN: Duration = Duration::from_secs(10);
/// Used until the connect reply says otherwise; Centrifugo's default is 25 s.
const DEFAULT_PING: Duration = Duration::from_secs(25);

/// Centrifugo server from `bench/peers/centrifugo`.
pub struct CentrifugoTarget {
    server: String,
    tls: Arc<rustls::ClientConfig>,
}

impl CentrifugoTarget {
    pub fn new(server: String, tls: Arc<rustls::ClientConfig>) -> Self {
        CentrifugoTarget {
            server,
            tls: websocket_tls(&tls),
        }
    }
}

#[async_trait::async_trait]
impl Target for CentrifugoTarget {
    fn name(&self) -> String {
        "centrifugo".into()
    }

    async fn setup(&self, population: &Population) -> Result<Vec<UserSpec>, TargetError> {
        // Channels exist while someone is subscribed; insecure mode needs no accounts.
        Ok(specs_by_index(population))
    }

    async fn connect(&self, user: &UserSpec, source: IpAddr) -> Result<Connected, TargetError> {
        tokio::time::timeout(CONNECT_TIMEOUT, self.connect_inner(user, source))
            .await
            .map_err(|_| {
                TargetError::Timeout(format!("centrifugo connect took over {CONNECT_TIMEOUT:?}"))
            })?
    }
}

/// One line of a server frame (a `Reply`). Unknown fields are ignored; only what the benchmark
/// uses is decoded, borrowing from the frame where possible.
#[derive(serde::Deserialize)]
struct Reply<'a> {
    #[serde(default)]
    id: u64,
    error: Option<ReplyError>,
    #[serde(borrow)]
    push: Option<Push<'a>>,
    connect: Option<ConnectResult>,
    subscribe: Option<serde::de::IgnoredAny>,
    publish: Option<serde::de::IgnoredAny>,
}

#[derive(serde::Deserialize)]
struct ReplyError {
    #[serde(default)]
    code: u32,
    #[serde(default)]
    message: String,
}

#[derive(serde::Deserialize)]
struct ConnectResult {
    #[serde(default)]
    client: String,
    /// Server ping interval in seconds (0: no pings).
    #[serde(default)]
    ping: u64,
}

#[derive(serde::Deserialize)]
struct Push<'a> {
    #[serde(borrow, default)]
    channel: Option<Cow<'a, str>>,
    #[serde(borrow, rename = "pub")]
    publication: Option<Publication<'a>>,
    unsubscribe: Option<serde::de::IgnoredAny>,
    disconnect: Option<PushDisconnect>,
}

#[derive(serde::Deserialize)]
struct Publication<'a> {
    #[serde(borrow)]
    data: Option<PubData<'a>>,
    #[serde(borrow)]
    info: Option<ClientInfo<'a>>,
}

#[derive(serde::Deserialize)]
struct PubData<'a> {
    #[serde(borrow)]
    p: Cow<'a, str>,
}

#[derive(serde::Deserialize)]
struct ClientInfo<'a> {
    #[serde(borrow, default)]
    client: Cow<'a, str>,
}

#[derive(serde::Deserialize)]
struct PushDisconnect {
    #[serde(default)]
    code: u32,
    #[serde(default)]
    reason: String,
}

/// Ids below this are used by the handshake (connect = 1, subscribes from 2); publishes start
/// here so their replies can never be mistaken for handshake replies. Command ids are uint32 in
/// Centrifugo's protocol (a larger one gets the connection closed with 3501 "bad request"),
/// which leaves room for about 4.29 billion publishes per connection.
const FIRST_PUBLISH_ID: u64 = 1 << 24;

impl CentrifugoTarget {
    async fn connect_inner(
        &self,
        user: &UserSpec,
        source: IpAddr,
    ) -> Result<Connected, TargetError> {
        let ws = open_websocket(
            &self.server,
            "/connection/websocket",
            source,
            self.tls.clone(),
        )
        .await?;
        let (mut sink, mut stream) = ws.split();
        let handshake_err = |e: String| TargetError::Connect(format!("centrifugo handshake: {e}"));

        let connect = serde_json::json!({"id": 1, "connect": {"name": "tern-loadgen"}});
        sink.send(Message::text(connect.to_string()))
            .await
            .map_err(|e| handshake_err(e.to_string()))?;

        // Every reply expected before the connection is ready: the connect, then one per
        // subscription. Pings may interleave and must be answered.
        let mut client_id: Option<String> = None;
        let mut ping = DEFAULT_PING;
        let mut awaiting: HashMap<u64, usize> = HashMap::new();
        let mut subscribed = 0usize;
        let mut early: Vec<Inbound> = Vec::new();
        let channels: HashMap<String, usize> = user
            .conversations
            .iter()
            .map(|c| (c.key.clone(), c.index))
            .collect();
        let channel_by_id: HashMap<u64, &ConversationRef> = user
            .conversations
            .iter()
            .enumerate()
            .map(|(i, c)| (i as u64 + 2, c))
            .collect();
        if channel_by_id.len() as u64 + 2 >= FIRST_PUBLISH_ID {
            return Err(handshake_err(
                "too many conversations for one connection".into(),
            ));
        }
        while client_id.is_none() || subscribed < user.conversations.len() {
            let text = next_text(&mut stream, ping + PING_MARGIN)
                .await
                .map_err(handshake_err)?;
            for line in text.as_str().split('\n').filter(|l| !l.is_empty()) {
                let reply: Reply<'_> = serde_json::from_str(line)
                    .map_err(|e| handshake_err(format!("bad reply {line:?}: {e}")))?;
                if let Some(error) = reply.error {
                    let what = match channel_by_id.get(&reply.id) {
                        Some(c) => format!("subscribe {}", c.key),
                        None => format!("command {}", reply.id),
                    };
                    return Err(handshake_err(format!(
                        "{what} refused: {} {}",
                        error.code, error.message
                    )));
                }
                if reply.id == 0 && reply.push.is_none() {
                    // Server ping.
                    sink.send(Message::text("{}"))
                        .await
                        .map_err(|e| handshake_err(e.to_string()))?;
                } else if let Some(result) = reply.connect {
                    if result.client.is_empty() {
                        return Err(handshake_err("connect reply without a client id".into()));
                    }
                    if result.ping > 0 {
                        ping = Duration::from_secs(result.ping);
                    }
                    client_id = Some(result.client);
                    // Subscribe to every conversation in one frame (newline-separated
                    // commands), ids 2.. in the user's conversation order.
                    if !user.conversations.is_empty() {
                        let mut batch = String::new();
                        for (id, conversation) in &channel_by_id {
                            let command = serde_json::json!({
                                "id": id,
                                "subscribe": {"channel": conversation.key},
                            });
                            if !batch.is_empty() {
                                batch.push('\n');
                            }
                            let _ = write!(batch, "{command}");
                            awaiting.insert(*id, conversation.index);
                        }
                        sink.send(Message::text(batch))
                            .await
                            .map_err(|e| handshake_err(e.to_string()))?;
                    }
                } else if reply.subscribe.is_some() && awaiting.remove(&reply.id).is_some() {
                    subscribed += 1;
                } else if let Some(push) = reply.push {
                    // A publication on a channel subscribed while other subscriptions are still
                    // pending: kept, and handed over first once the connection is ready.
                    let own = client_id.as_deref().unwrap_or_default();
                    let arrived = Instant::now();
                    match handle_push(push, &channels, own).map_err(handshake_err)? {
                        Line::Message {
                            conversation,
                            payload,
                        } => early.push(Inbound {
                            conversation,
                            seq: None,
                            payload,
                            arrived,
                            undecryptable: None,
                            late_key: false,
                        }),
                        Line::Closed(why) => return Err(handshake_err(why)),
                        Line::Ping | Line::Other => {}
                    }
                } else {
                    return Err(handshake_err(format!("unexpected reply {line:?}")));
                }
            }
        }
        let client_id = client_id.unwrap_or_default();
        let sink = Arc::new(tokio::sync::Mutex::new(sink));
        let pending = Arc::new(Pending::new(FIRST_PUBLISH_ID));
        let (inbound_tx, inbound) = mpsc::channel(INBOUND_CAPACITY);
        let reader = tokio::spawn(read_centrifugo(
            stream,
            ReaderState {
                sink: sink.clone(),
                pending: pending.clone(),
                channels,
                client_id,
                inbound: inbound_tx,
                idle: ping + PING_MARGIN,
                user: user.name.clone(),
                early,
            },
        ));
        Ok(Connected {
            sender: Box::new(CentrifugoSender {
                sink,
                pending,
                reader: Mutex::new(Some(reader)),
            }),
            inbound,
        })
    }
}

struct CentrifugoSender {
    sink: Arc<tokio::sync::Mutex<WsSink>>,
    pending: Arc<Pending>,
    reader: Mutex<Option<JoinHandle<()>>>,
}

#[derive(serde::Serialize)]
struct PublishCommand<'a> {
    id: u64,
    publish: PublishRequest<'a>,
}

#[derive(serde::Serialize)]
struct PublishRequest<'a> {
    channel: &'a str,
    data: PublishData<'a>,
}

#[derive(serde::Serialize)]
struct PublishData<'a> {
    p: &'a str,
}

#[async_trait::async_trait]
impl MessageSender for CentrifugoSender {
    async fn send(
        &self,
        conversation: &ConversationRef,
        payload: Vec<u8>,
    ) -> Result<SendOutcome, TargetError> {
        // Publication data must be JSON in the JSON protocol: the opaque bytes go in as base64.
        let payload = base64::engine::general_purpose::STANDARD.encode(payload);
        let (id, rx) = self.pending.register()?;
        if id > u64::from(u32::MAX) {
            self.pending.forget(id);
            return Err(TargetError::Send(
                "command ids exhausted on this connection".into(),
            ));
        }
        let command = PublishCommand {
            id,
            publish: PublishRequest {
                channel: &conversation.key,
                data: PublishData { p: &payload },
            },
        };
        let text = match serde_json::to_string(&command) {
            Ok(text) => text,
            Err(e) => {
                self.pending.forget(id);
                return Err(TargetError::Send(e.to_string()));
            }
        };
        if let Err(e) = write_text(&self.sink, text).await {
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

struct ReaderState {
    sink: Arc<tokio::sync::Mutex<WsSink>>,
    pending: Arc<Pending>,
    channels: HashMap<String, usize>,
    client_id: String,
    inbound: mpsc::Sender<Inbound>,
    idle: Duration,
    user: String,
    /// Deliveries that arrived during the handshake, forwarded before anything else.
    early: Vec<Inbound>,
}

/// What one line of a server frame asks the reader to do.
#[derive(Debug, PartialEq)]
enum Line {
    Ping,
    Message {
        conversation: usize,
        payload: Vec<u8>,
    },
    Other,
    Closed(String),
}

/// The connection's reader: answers pings, resolves publish replies, forwards publications from
/// other connections. Ends (closing the inbound stream and failing waiting sends) when the
/// connection ends, the server disconnects it, or it goes silent past ping + margin.
async fn read_centrifugo(mut stream: WsStream, mut state: ReaderState) {
    for message in std::mem::take(&mut state.early) {
        let _ = state.inbound.send(message).await;
    }
    let reason = 'read: loop {
        let text = match next_text(&mut stream, state.idle).await {
            Ok(text) => text,
            Err(reason) => break reason,
        };
        let arrived = Instant::now();
        for line in text.as_str().split('\n').filter(|l| !l.is_empty()) {
            match handle_line(line, &state.channels, &state.client_id, &state.pending) {
                Ok(Line::Ping) => {
                    if let Err(e) = write_text(&state.sink, "{}".into()).await {
                        break 'read format!("pong failed: {e}");
                    }
                }
                Ok(Line::Message {
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
                    // Backpressure, never a drop; a consumer that went away only stops
                    // deliveries while publish replies keep flowing.
                    let _ = state.inbound.send(message).await;
                }
                Ok(Line::Other) => {}
                Ok(Line::Closed(why)) => break 'read why,
                Err(e) => tracing::warn!(user = %state.user, line, "centrifugo: {e}"),
            }
        }
    };
    tracing::debug!(user = %state.user, "centrifugo connection ended: {reason}");
    state.pending.close(&reason);
}

fn handle_line(
    line: &str,
    channels: &HashMap<String, usize>,
    own_client: &str,
    pending: &Pending,
) -> Result<Line, String> {
    let reply: Reply<'_> = serde_json::from_str(line).map_err(|e| format!("bad reply: {e}"))?;
    if reply.id > 0 {
        let result = match reply.error {
            Some(error) => Err(format!("error {}: {}", error.code, error.message)),
            None if reply.publish.is_some() => Ok(()),
            None => Err("reply without a publish result".into()),
        };
        if !pending.resolve(reply.id, result) {
            tracing::debug!(id = reply.id, "centrifugo reply for no waiting command");
        }
        return Ok(Line::Other);
    }
    match reply.push {
        Some(push) => handle_push(push, channels, own_client),
        // `{}`: protocol v2 ping.
        None => Ok(Line::Ping),
    }
}

/// A server push: a publication from another connection, our own echo, or the server ending
/// the connection or a subscription.
fn handle_push(
    push: Push<'_>,
    channels: &HashMap<String, usize>,
    own_client: &str,
) -> Result<Line, String> {
    if let Some(disconnect) = push.disconnect {
        return Ok(Line::Closed(format!(
            "disconnected by server: {} {}",
            disconnect.code, disconnect.reason
        )));
    }
    let channel = push.channel.as_deref().unwrap_or_default();
    if push.unsubscribe.is_some() {
        // The server dropped a subscription (e.g. the client fell behind): what follows in
        // that conversation is lost, so end the connection loudly rather than go on silently.
        return Ok(Line::Closed(format!(
            "unsubscribed by server from {channel}"
        )));
    }
    let Some(publication) = push.publication else {
        return Ok(Line::Other); // join/leave/message pushes: not used by the benchmark
    };
    if publication
        .info
        .as_ref()
        .is_some_and(|info| info.client == own_client)
    {
        return Ok(Line::Other); // our own publication echoed back
    }
    let conversation = *channels
        .get(channel)
        .ok_or_else(|| format!("publication in a channel not subscribed: {channel:?}"))?;
    let data = publication.data.ok_or("publication without data")?;
    let payload = base64::engine::general_purpose::STANDARD
        .decode(data.p.as_bytes())
        .map_err(|e| format!("payload is not base64: {e}"))?;
    Ok(Line::Message {
        conversation,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channels() -> HashMap<String, usize> {
        HashMap::from([("c3".to_string(), 3usize)])
    }

    #[test]
    fn forwards_publications_from_others_and_drops_the_echo() {
        let pending = Pending::new(FIRST_PUBLISH_ID);
        let other = r#"{"push":{"channel":"c3","pub":{"data":{"p":"aGk="},"info":{"user":"","client":"B"}}}}"#;
        assert_eq!(
            handle_line(other, &channels(), "A", &pending),
            Ok(Line::Message {
                conversation: 3,
                payload: b"hi".to_vec()
            })
        );
        let echo = r#"{"push":{"channel":"c3","pub":{"data":{"p":"aGk="},"info":{"client":"A"}}}}"#;
        assert_eq!(
            handle_line(echo, &channels(), "A", &pending),
            Ok(Line::Other)
        );
    }

    #[test]
    fn resolves_publish_replies_and_errors() {
        let pending = Pending::new(FIRST_PUBLISH_ID);
        let (id, mut rx) = pending.register().expect("open");
        let ok = format!(r#"{{"id":{id},"publish":{{}}}}"#);
        assert_eq!(
            handle_line(&ok, &channels(), "A", &pending),
            Ok(Line::Other)
        );
        assert_eq!(rx.try_recv().expect("resolved"), Ok(()));

        let (id, mut rx) = pending.register().expect("open");
        let err = format!(r#"{{"id":{id},"error":{{"code":103,"message":"permission denied"}}}}"#);
        assert!(handle_line(&err, &channels(), "A", &pending).is_ok());
        assert!(rx.try_recv().expect("resolved").is_err());
    }

    #[test]
    fn pings_disconnects_and_garbage() {
        let pending = Pending::new(FIRST_PUBLISH_ID);
        assert_eq!(
            handle_line("{}", &channels(), "A", &pending),
            Ok(Line::Ping)
        );
        assert!(matches!(
            handle_line(
                r#"{"push":{"disconnect":{"code":3008,"reason":"slow"}}}"#,
                &channels(),
                "A",
                &pending
            ),
            Ok(Line::Closed(_))
        ));
        for line in [
            "",
            "{",
            "[]",
            "null",
            r#"{"id":"x"}"#,
            r#"{"push":{"channel":"c9","pub":{"data":{"p":""}}}}"#,
            r#"{"push":{"channel":"c3","pub":{"data":{"p":"!"}}}}"#,
            r#"{"push":{"channel":"c3","pub":{}}}"#,
            r#"{"id":18446744073709551615,"publish":{}}"#,
            r#"{"id":-1}"#,
        ] {
            let _ = handle_line(line, &channels(), "A", &pending);
        }
    }
}
