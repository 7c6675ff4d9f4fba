//! One authenticated real-time connection: Hello/Welcome, then a reader task and a writer task.
//!
//! * The **reader task** decodes every frame. Replies to requests (`SendAck`, `HistoryPage`,
//!   `Pong`, request errors, ...) go straight to the waiting caller, matched by `request_id`
//!   (or ping nonce); everything else is queued as an [`Event`].
//! * The **writer task** owns the sending half, so a caller that gives up (timeout, dropped
//!   future) can never leave half a frame on the stream: a frame is either queued whole or not
//!   at all.
//!
//! Queues are bounded ([`EVENT_QUEUE`], [`OUTGOING_QUEUE`]). When the application stops calling
//! [`Connection::next_event`] and the event queue fills up, the reader stops reading: TCP/QUIC
//! flow control pushes back on the server, which eventually drops the connection as a slow
//! consumer. Nothing is lost (resume from the cursor), but replies queue behind events too, so a
//! caller awaiting `send()` while nobody drains events for a long time will time out.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tern_core::protocol::handshake;
use tern_core::protocol::requests::{Requests, Routed, Waiter};
use tern_wire::ids::{ConversationId, DeviceId, MessageId, UserId};
use tern_wire::msg::{
    ClientMessage, ConversationInfo, Cursor, DeliveryMark, ErrorCode, FileRef, Message, Notice,
    ReactionCount, ServerMessage,
};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::error::{CloseReason, Error, Result};
use crate::http::HistoryQuery;
use crate::transport::{FrameReader, FrameWriter, Transport, TransportKind};

/// Server events buffered between the reader task and [`Connection::next_event`].
pub const EVENT_QUEUE: usize = 1024;
/// Frames buffered between callers and the writer task.
pub const OUTGOING_QUEUE: usize = 256;
/// How long [`Connection::close`] waits for the goodbye to be written.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// What the server said in `Welcome`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    pub version: u16,
    pub user: UserId,
    pub device: DeviceId,
    pub server_time_ms: u64,
    pub max_frame_bytes: u32,
    /// This device's unclaimed one-time keys on the server.
    pub one_time_keys_left: u32,
}

/// A durable send: the server stored the message as `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendReceipt {
    pub conversation: ConversationId,
    pub client_msg_id: u128,
    pub seq: u64,
    pub message_id: MessageId,
    pub timestamp_ms: u64,
    /// The server had this `client_msg_id` already (a retry): no new message was created.
    pub duplicate: bool,
}

/// A page of history over the socket, ascending by seq.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    pub conversation: ConversationId,
    pub messages: Vec<Message>,
    /// Reactions to the page's messages, aggregated per (seq, emoji).
    pub reactions: Vec<ReactionCount>,
    /// More exists in the paging direction (either side for an around page).
    pub has_more: bool,
    /// Older messages exist than the page's first (around pages; scrolling back = has_more).
    pub has_more_before: bool,
    /// Newer messages exist than the page's last (around pages; reading forward = has_more).
    pub has_more_after: bool,
}

/// Something the server sent that was not a reply to one of our requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Deliver(Message),
    /// Resume replay is done; live traffic follows.
    SyncComplete,
    Notice(Notice),
    /// An error not matched to a waiting request (e.g. for a fire-and-forget frame). A fatal one
    /// is followed by `Closed`.
    Error {
        request_id: u64,
        code: ErrorCode,
        message: String,
        fatal: bool,
    },
    /// Presence, typing, invitations, conversation changes, ...
    Other(ServerMessage),
    /// The last event: the connection is gone.
    Closed(CloseReason),
}

enum Outgoing {
    Frame(Vec<u8>),
    /// Unreliable: a WebTransport datagram where available (see `FrameWriter::send_datagram`).
    Datagram(Vec<u8>),
    Close(oneshot::Sender<()>),
}

#[derive(Default)]
struct SharedState {
    /// The core's request table: ids, waiters (a oneshot each) and deadlines. Deadlines are
    /// enforced here by a timer per request (`tokio::time::timeout`, same duration).
    requests: Requests<oneshot::Sender<ServerMessage>>,
    closed: Option<CloseReason>,
}

/// State shared by the connection handle and its tasks. A std mutex: critical sections are a
/// map insert/remove, never held across an await.
struct Shared {
    state: Mutex<SharedState>,
    /// Zero of the `now_ms` clock of the request deadlines.
    epoch: Instant,
    /// Wakes the reader when something else (writer failure, missed heartbeat, local close)
    /// ended the connection while it is parked in a read.
    stop_reader: Notify,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            state: Mutex::default(),
            epoch: Instant::now(),
            stop_reader: Notify::new(),
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, SharedState> {
        // A poisoned lock only means a panic elsewhere mid-insert; the map is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn register(&self, key: Waiter, timeout: Duration) -> Result<oneshot::Receiver<ServerMessage>> {
        let deadline_ms = (self.epoch.elapsed() + timeout).as_millis() as u64;
        let mut st = self.lock();
        if let Some(reason) = &st.closed {
            return Err(Error::Closed(reason.clone()));
        }
        let (tx, rx) = oneshot::channel();
        st.requests.register(key, tx, deadline_ms);
        Ok(rx)
    }

    fn unregister(&self, key: Waiter) {
        self.lock().requests.unregister(key);
    }

    /// Hands a reply to its waiter; gives the message back when nobody waits for it.
    /// (Which messages are replies: `tern_core::protocol::requests::reply_key`.)
    fn route(&self, msg: ServerMessage) -> Option<ServerMessage> {
        let routed = self.lock().requests.on_reply(msg);
        match routed {
            // A waiter that gave up (timeout) dropped its receiver: the late reply is discarded
            // rather than surfaced as an event nobody expects.
            Routed::Reply(tx, msg) => {
                let _ = tx.send(msg);
                None
            }
            Routed::Event(msg) => Some(msg),
        }
    }

    /// Marks the connection closed; dropping the waiters' senders wakes them with the reason,
    /// and the reader stops (emitting `Closed` with the first reason recorded).
    fn close(&self, reason: CloseReason) {
        {
            let mut st = self.lock();
            if st.closed.is_none() {
                st.closed = Some(reason);
            }
            st.requests.drain();
        }
        // notify_one stores a permit if the reader is not waiting right now: never lost.
        self.stop_reader.notify_one();
    }

    /// Request ids and ping nonces (one counter: both only need to be unique).
    fn next_id(&self) -> u64 {
        self.lock().requests.next_id()
    }

    fn reason(&self) -> Option<CloseReason> {
        self.lock().closed.clone()
    }
}

/// Removes a pending waiter when the request future ends for any reason (answered, timed out,
/// cancelled), so abandoned requests do not accumulate.
struct PendingGuard<'a> {
    shared: &'a Shared,
    key: Waiter,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.shared.unregister(self.key);
    }
}

/// An authenticated connection. See the module docs for the task and queue structure.
///
/// [`Connection::split`] separates it into a [`ConnectionSender`] (cloneable, usable from many
/// tasks at once) and an [`EventStream`], for applications that send and receive in different
/// tasks.
pub struct Connection {
    sender: ConnectionSender,
    events: EventStream,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("welcome", &self.sender.welcome)
            .field("kind", &self.sender.kind)
            .finish_non_exhaustive()
    }
}

/// The sending half of a [`Connection`]: requests, sends, acks, pings. Cheap to clone; every
/// method takes `&self`, so many tasks can send at once (frames are queued whole, in call order,
/// to the one writer task).
#[derive(Clone)]
pub struct ConnectionSender {
    out: mpsc::Sender<Outgoing>,
    shared: Arc<Shared>,
    welcome: Arc<Welcome>,
    kind: TransportKind,
    request_timeout: Duration,
    max_out_frame: usize,
    tasks: Arc<Tasks>,
}

impl std::fmt::Debug for ConnectionSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionSender")
            .field("welcome", &self.welcome)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// The receiving half of a [`Connection`]: server events in arrival order.
pub struct EventStream {
    events: mpsc::Receiver<Event>,
    // Keeps the tasks alive while only the receiving half remains.
    _tasks: Arc<Tasks>,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream").finish_non_exhaustive()
    }
}

impl EventStream {
    /// The next server event; `None` after `Event::Closed` has been returned.
    /// Cancel-safe (an mpsc receive).
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// The next event if one is already queued (never waits).
    pub fn try_next_event(&mut self) -> Option<Event> {
        self.events.try_recv().ok()
    }
}

/// The connection's tasks, shared by both halves. When the last half is dropped the connection
/// ends: the reader may be parked in a read, so it is stopped here; the heartbeat holds a sender,
/// which would keep the writer alive, so it is stopped too. The writer then ends by itself once
/// every `out` sender is gone, closing the transport on the way.
struct Tasks {
    shared: Arc<Shared>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
    heartbeat: Option<JoinHandle<()>>,
}

impl Tasks {
    fn abort_all(&self) {
        self.reader.abort();
        self.writer.abort();
        if let Some(h) = &self.heartbeat {
            h.abort();
        }
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        self.reader.abort();
        if let Some(h) = &self.heartbeat {
            h.abort();
        }
        self.shared.close(CloseReason::Local);
    }
}

impl Connection {
    /// Connects (per `config.transport`), sends `Hello` and waits for `Welcome`.
    ///
    /// `cursors` are resume positions; conversations not listed resume after the cursor the
    /// server stored for this device.
    pub async fn connect(
        config: &Config,
        token: &str,
        device: DeviceId,
        cursors: &[Cursor],
    ) -> Result<Connection> {
        let transport = Transport::connect(config).await?;
        Self::handshake(transport, config, token, device, cursors).await
    }

    /// Runs Hello/Welcome on an already connected transport and starts the tasks.
    pub async fn handshake(
        mut transport: Transport,
        config: &Config,
        token: &str,
        device: DeviceId,
        cursors: &[Cursor],
    ) -> Result<Connection> {
        match Self::hello(&mut transport, config, token, device, cursors).await {
            Ok(welcome) => Ok(Self::start(transport, config, welcome)),
            Err(e) => {
                let _ = transport.close().await;
                Err(e)
            }
        }
    }

    async fn hello(
        transport: &mut Transport,
        config: &Config,
        token: &str,
        device: DeviceId,
        cursors: &[Cursor],
    ) -> Result<Welcome> {
        let hello = handshake::hello(token, device, &config.client_name, cursors);
        transport.send_message(&hello).await?;
        let limits = tern_wire::Limits::for_frame_size(config.max_frame_bytes);
        let answer = tokio::time::timeout(config.connect_timeout, transport.recv_message(&limits))
            .await
            .map_err(|_| Error::Timeout("Welcome"))??;
        match answer {
            Some(ServerMessage::Welcome {
                version,
                user,
                device,
                server_time_ms,
                max_frame_bytes,
                one_time_keys_left,
            }) => {
                handshake::check_version(version).map_err(Error::Protocol)?;
                Ok(Welcome {
                    version,
                    user,
                    device,
                    server_time_ms,
                    max_frame_bytes,
                    one_time_keys_left,
                })
            }
            Some(ServerMessage::Error {
                code,
                message,
                fatal,
                retry_after_ms,
                ..
            }) => Err(Error::server(code, message, fatal, retry_after_ms)),
            Some(other) => Err(Error::Protocol(format!(
                "expected Welcome, got {}",
                variant_name(&other)
            ))),
            None => Err(Error::Closed(CloseReason::ClosedByServer)),
        }
    }

    fn start(transport: Transport, config: &Config, welcome: Welcome) -> Connection {
        let kind = transport.kind();
        let (writer, reader) = transport.into_split();
        let shared = Arc::new(Shared::default());
        let (out_tx, out_rx) = mpsc::channel(OUTGOING_QUEUE);
        let (ev_tx, ev_rx) = mpsc::channel(EVENT_QUEUE);
        let limits = tern_wire::Limits::for_frame_size(config.max_frame_bytes);
        let reader = tokio::spawn(read_loop(reader, limits, shared.clone(), ev_tx));
        let writer = tokio::spawn(write_loop(writer, out_rx, shared.clone()));
        let heartbeat = config.heartbeat_interval.map(|every| {
            tokio::spawn(heartbeat_loop(
                out_tx.clone(),
                shared.clone(),
                every,
                config.request_timeout,
            ))
        });
        let max_out_frame =
            handshake::max_out_frame(config.max_frame_bytes, welcome.max_frame_bytes);
        let tasks = Arc::new(Tasks {
            shared: shared.clone(),
            reader,
            writer,
            heartbeat,
        });
        Connection {
            sender: ConnectionSender {
                out: out_tx,
                shared,
                welcome: Arc::new(welcome),
                kind,
                request_timeout: config.request_timeout,
                max_out_frame,
                tasks: tasks.clone(),
            },
            events: EventStream {
                events: ev_rx,
                _tasks: tasks,
            },
        }
    }

    /// Separates the sending half (cloneable) from the event stream. The connection stays up
    /// while either half exists; dropping both ends it, like dropping the `Connection`.
    pub fn split(self) -> (ConnectionSender, EventStream) {
        (self.sender, self.events)
    }

    /// The sending half, for sharing with other tasks while keeping the event stream here.
    pub fn sender(&self) -> &ConnectionSender {
        &self.sender
    }

    pub fn welcome(&self) -> &Welcome {
        self.sender.welcome()
    }

    pub fn transport_kind(&self) -> TransportKind {
        self.sender.transport_kind()
    }

    /// Why the connection ended, once it has.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.sender.close_reason()
    }

    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// The next server event; `None` after `Event::Closed` has been returned.
    /// Cancel-safe (an mpsc receive).
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.next_event().await
    }

    /// Sends a message and waits until the server has stored it (its `SendAck`).
    ///
    /// Retrying with the same `client_msg_id` is safe: the server answers `duplicate: true`
    /// with the original seq instead of storing it twice.
    pub async fn send(
        &self,
        conversation: ConversationId,
        client_msg_id: u128,
        content_type: &str,
        payload: Vec<u8>,
    ) -> Result<SendReceipt> {
        self.sender
            .send(conversation, client_msg_id, content_type, payload)
            .await
    }

    /// [`Connection::send`] naming uploaded files (see [`ConnectionSender::send_with_files`]).
    pub async fn send_with_files(
        &self,
        conversation: ConversationId,
        client_msg_id: u128,
        content_type: &str,
        payload: Vec<u8>,
        files: Vec<FileRef>,
    ) -> Result<SendReceipt> {
        self.sender
            .send_with_files(conversation, client_msg_id, content_type, payload, files)
            .await
    }

    /// Advances this device's stored cursor (fire-and-forget).
    pub async fn ack(&self, conversation: ConversationId, seq: u64) -> Result<()> {
        self.sender.ack(conversation, seq).await
    }

    /// Re-runs resume after these positions; replay and `SyncComplete` arrive as events.
    pub async fn resume(&self, cursors: &[Cursor]) -> Result<()> {
        self.sender.resume(cursors).await
    }

    /// History over the socket: seq in `(after_seq, before_seq)`, 0 meaning unbounded.
    pub async fn history(
        &self,
        conversation: ConversationId,
        before_seq: u64,
        after_seq: u64,
        limit: u32,
    ) -> Result<HistoryPage> {
        self.sender
            .history(conversation, before_seq, after_seq, limit)
            .await
    }

    /// Any form of history page over the socket (see [`HistoryQuery`]).
    pub async fn history_query(
        &self,
        conversation: ConversationId,
        query: HistoryQuery,
    ) -> Result<HistoryPage> {
        self.sender.history_query(conversation, query).await
    }

    /// The context of message `seq`: up to `limit` messages around it (see
    /// [`HistoryQuery::around`]).
    pub async fn history_around(
        &self,
        conversation: ConversationId,
        seq: u64,
        limit: u32,
    ) -> Result<HistoryPage> {
        self.history_query(conversation, HistoryQuery::around(seq, limit))
            .await
    }

    /// Round trip to the server.
    pub async fn ping(&self) -> Result<Duration> {
        self.sender.ping().await
    }

    /// See [`ConnectionSender::delivery_marks`].
    pub async fn delivery_marks(&self, conversation: ConversationId) -> Result<Vec<DeliveryMark>> {
        self.sender.delivery_marks(conversation).await
    }

    /// See [`ConnectionSender::accept_invite`].
    pub async fn accept_invite(&self, conversation: ConversationId) -> Result<ConversationInfo> {
        self.sender.accept_invite(conversation).await
    }

    /// See [`ConnectionSender::decline_invite`].
    pub async fn decline_invite(&self, conversation: ConversationId) -> Result<()> {
        self.sender.decline_invite(conversation).await
    }

    /// See [`ConnectionSender::block`].
    pub async fn block(&self, user: UserId, blocked: bool) -> Result<()> {
        self.sender.block(user, blocked).await
    }

    /// Sends a request built with a fresh `request_id` and waits for the reply that carries it.
    /// An `Error` reply becomes `Error::Server`. The building block for requests this type has
    /// no dedicated method for (CreateConversation, Invite, React, ClaimKeys, ...).
    pub async fn request(&self, build: impl FnOnce(u64) -> ClientMessage) -> Result<ServerMessage> {
        self.sender.request(build).await
    }

    /// Encodes and queues a message without waiting for any answer (Typing, SetPresence, ...).
    pub async fn send_message(&self, msg: &ClientMessage) -> Result<()> {
        self.sender.send_message(msg).await
    }

    /// See [`ConnectionSender::typing`].
    pub async fn typing(&self, conversation: ConversationId, active: bool) -> Result<()> {
        self.sender.typing(conversation, active).await
    }

    /// Flushes queued frames, closes the transport gracefully and stops the tasks.
    pub async fn close(self) {
        self.sender.close().await;
    }
}

impl ConnectionSender {
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    pub fn transport_kind(&self) -> TransportKind {
        self.kind
    }

    /// Why the connection ended, once it has.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.shared.reason()
    }

    pub fn is_closed(&self) -> bool {
        self.shared.reason().is_some()
    }

    /// Sends a message and waits until the server has stored it (its `SendAck`).
    ///
    /// Retrying with the same `client_msg_id` is safe: the server answers `duplicate: true`
    /// with the original seq instead of storing it twice.
    pub async fn send(
        &self,
        conversation: ConversationId,
        client_msg_id: u128,
        content_type: &str,
        payload: Vec<u8>,
    ) -> Result<SendReceipt> {
        self.send_with_files(
            conversation,
            client_msg_id,
            content_type,
            payload,
            Vec::new(),
        )
        .await
    }

    /// [`ConnectionSender::send`] with the uploads the message refers to: the server refuses
    /// the message unless each is a finished upload of this user in this conversation (with
    /// that size and type), and keeps a named upload from expiring.
    pub async fn send_with_files(
        &self,
        conversation: ConversationId,
        client_msg_id: u128,
        content_type: &str,
        payload: Vec<u8>,
        files: Vec<FileRef>,
    ) -> Result<SendReceipt> {
        let reply = self
            .request(|request_id| ClientMessage::Send {
                request_id,
                conversation,
                client_msg_id,
                content_type: content_type.to_string(),
                payload,
                files,
            })
            .await?;
        match reply {
            ServerMessage::SendAck {
                conversation: c,
                client_msg_id: id,
                seq,
                message_id,
                timestamp_ms,
                duplicate,
                ..
            } => {
                if c != conversation || id != client_msg_id {
                    return Err(Error::Protocol("SendAck for a different message".into()));
                }
                Ok(SendReceipt {
                    conversation,
                    client_msg_id,
                    seq,
                    message_id,
                    timestamp_ms,
                    duplicate,
                })
            }
            other => Err(Error::Protocol(format!(
                "expected SendAck, got {}",
                variant_name(&other)
            ))),
        }
    }

    /// Advances this device's stored cursor (fire-and-forget).
    pub async fn ack(&self, conversation: ConversationId, seq: u64) -> Result<()> {
        self.send_message(&ClientMessage::Ack { conversation, seq })
            .await
    }

    /// Re-runs resume after these positions; replay and `SyncComplete` arrive as events.
    pub async fn resume(&self, cursors: &[Cursor]) -> Result<()> {
        self.send_message(&ClientMessage::Resume {
            cursors: cursors.to_vec(),
        })
        .await
    }

    /// History over the socket: seq in `(after_seq, before_seq)`, 0 meaning unbounded.
    /// Every member's delivery mark in `conversation` (how far a device of each user has
    /// acknowledged). Live changes arrive as `Event::Other(ServerMessage::Delivered { .. })` for
    /// the messages this user sent.
    pub async fn delivery_marks(&self, conversation: ConversationId) -> Result<Vec<DeliveryMark>> {
        let reply = self
            .request(|request_id| ClientMessage::GetDelivered {
                request_id,
                conversation,
            })
            .await?;
        match reply {
            ServerMessage::Delivered {
                conversation: c,
                marks,
                ..
            } if c == conversation => Ok(marks),
            other => Err(Error::Protocol(format!(
                "expected Delivered for the conversation, got {}",
                variant_name(&other)
            ))),
        }
    }

    pub async fn history(
        &self,
        conversation: ConversationId,
        before_seq: u64,
        after_seq: u64,
        limit: u32,
    ) -> Result<HistoryPage> {
        let query = HistoryQuery {
            before: Some(before_seq),
            after: Some(after_seq),
            limit: Some(limit),
            ..HistoryQuery::default()
        };
        self.history_query(conversation, query).await
    }

    /// Any form of history page (see [`HistoryQuery`]; `None` and 0 both mean unset).
    pub async fn history_query(
        &self,
        conversation: ConversationId,
        query: HistoryQuery,
    ) -> Result<HistoryPage> {
        let reply = self
            .request(|request_id| ClientMessage::History {
                request_id,
                conversation,
                before_seq: query.before.unwrap_or(0),
                after_seq: query.after.unwrap_or(0),
                limit: query.limit.unwrap_or(0),
                around_seq: query.around.unwrap_or(0),
                since_ms: query.since_ms.unwrap_or(0),
                until_ms: query.until_ms.unwrap_or(0),
                sender: query.sender,
            })
            .await?;
        match reply {
            ServerMessage::HistoryPage {
                conversation: c,
                mut messages,
                reactions,
                has_more,
                has_more_before,
                has_more_after,
                ..
            } => {
                if c != conversation {
                    return Err(Error::Protocol(
                        "HistoryPage for a different conversation".into(),
                    ));
                }
                messages.retain(|m| m.conversation == conversation);
                messages.sort_by_key(|m| m.seq);
                Ok(HistoryPage {
                    conversation,
                    messages,
                    reactions,
                    has_more,
                    has_more_before,
                    has_more_after,
                })
            }
            other => Err(Error::Protocol(format!(
                "expected HistoryPage, got {}",
                variant_name(&other)
            ))),
        }
    }

    /// Accepts a group invitation or a 1:1 message request; answers the conversation.
    pub async fn accept_invite(&self, conversation: ConversationId) -> Result<ConversationInfo> {
        match self
            .request(|request_id| ClientMessage::AcceptInvite {
                request_id,
                conversation,
            })
            .await?
        {
            ServerMessage::Conversation { info, .. } => Ok(info),
            other => Err(Error::Protocol(format!(
                "expected Conversation, got {}",
                variant_name(&other)
            ))),
        }
    }

    /// Declines a group invitation or a 1:1 message request.
    pub async fn decline_invite(&self, conversation: ConversationId) -> Result<()> {
        self.request_ok(|request_id| ClientMessage::DeclineInvite {
            request_id,
            conversation,
        })
        .await
    }

    /// Blocks (`blocked: true`) or unblocks `user`.
    pub async fn block(&self, user: UserId, blocked: bool) -> Result<()> {
        self.request_ok(|request_id| ClientMessage::Block {
            request_id,
            user,
            blocked,
        })
        .await
    }

    async fn request_ok(&self, build: impl FnOnce(u64) -> ClientMessage) -> Result<()> {
        match self.request(build).await? {
            ServerMessage::Ok { .. } => Ok(()),
            other => Err(Error::Protocol(format!(
                "expected Ok, got {}",
                variant_name(&other)
            ))),
        }
    }

    /// Round trip to the server.
    pub async fn ping(&self) -> Result<Duration> {
        let nonce = self.shared.next_id();
        let key = Waiter::Pong(nonce);
        let rx = self.shared.register(key, self.request_timeout)?;
        let _guard = PendingGuard {
            shared: &self.shared,
            key,
        };
        let start = Instant::now();
        self.send_message(&ClientMessage::Ping { nonce }).await?;
        match tokio::time::timeout(self.request_timeout, rx).await {
            Err(_) => Err(Error::Timeout("Pong")),
            Ok(Err(_)) => Err(self.closed_error()),
            Ok(Ok(_)) => Ok(start.elapsed()),
        }
    }

    /// Sends a request built with a fresh `request_id` and waits for the reply that carries it.
    /// An `Error` reply becomes `Error::Server`. The building block for requests this type has
    /// no dedicated method for (CreateConversation, Invite, React, ClaimKeys, ...).
    pub async fn request(&self, build: impl FnOnce(u64) -> ClientMessage) -> Result<ServerMessage> {
        let request_id = self.shared.next_id();
        let key = Waiter::Request(request_id);
        let rx = self.shared.register(key, self.request_timeout)?;
        let _guard = PendingGuard {
            shared: &self.shared,
            key,
        };
        self.send_message(&build(request_id)).await?;
        match tokio::time::timeout(self.request_timeout, rx).await {
            Err(_) => Err(Error::Timeout("reply")),
            Ok(Err(_)) => Err(self.closed_error()),
            Ok(Ok(ServerMessage::Error {
                code,
                message,
                fatal,
                retry_after_ms,
                ..
            })) => Err(Error::server(code, message, fatal, retry_after_ms)),
            Ok(Ok(reply)) => Ok(reply),
        }
    }

    /// Encodes and queues a message without waiting for any answer (Typing, SetPresence, ...).
    pub async fn send_message(&self, msg: &ClientMessage) -> Result<()> {
        let frame = tern_wire::encode_client(msg);
        if frame.len() > self.max_out_frame {
            return Err(Error::FrameTooLarge {
                size: frame.len(),
                max: self.max_out_frame,
            });
        }
        if let Some(reason) = self.shared.reason() {
            return Err(Error::Closed(reason));
        }
        self.out
            .send(Outgoing::Frame(frame))
            .await
            .map_err(|_| self.closed_error())
    }

    /// Tells the conversation's other members this user is (or stopped) typing. Unreliable: a
    /// WebTransport datagram when the connection has them, a normal frame on WebSocket. The
    /// server expires a typing indicator that is not refreshed within a few seconds.
    pub async fn typing(&self, conversation: ConversationId, active: bool) -> Result<()> {
        let frame = tern_wire::encode_client(&ClientMessage::Typing {
            conversation,
            active,
        });
        if let Some(reason) = self.shared.reason() {
            return Err(Error::Closed(reason));
        }
        self.out
            .send(Outgoing::Datagram(frame))
            .await
            .map_err(|_| self.closed_error())
    }

    /// Flushes queued frames, closes the transport gracefully and stops the tasks. Other clones
    /// of this sender see the connection closed (`CloseReason::Local`); the event stream ends
    /// with `Event::Closed`.
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.out.send(Outgoing::Close(tx)).await.is_ok() {
            let _ = tokio::time::timeout(CLOSE_GRACE, rx).await;
        }
        self.shared.close(CloseReason::Local);
        self.tasks.abort_all();
    }

    fn closed_error(&self) -> Error {
        Error::Closed(self.shared.reason().unwrap_or(CloseReason::Local))
    }
}

async fn read_loop(
    mut reader: FrameReader,
    limits: tern_wire::Limits,
    shared: Arc<Shared>,
    events: mpsc::Sender<Event>,
) {
    // A fatal Error is followed by the server closing; report the error, not the close.
    let mut fatal: Option<CloseReason> = None;
    let reason = loop {
        let read = tokio::select! {
            read = reader.recv_frame() => read,
            // Ended elsewhere (writer failure, heartbeat, close): report that reason.
            () = shared.stop_reader.notified() => break shared.reason().unwrap_or(CloseReason::Local),
        };
        let frame = match read {
            Ok(Some(frame)) => frame,
            Ok(None) => break fatal.take().unwrap_or(CloseReason::ClosedByServer),
            Err(e) => {
                break fatal.take().unwrap_or_else(|| match e {
                    Error::Protocol(p) => CloseReason::Protocol(p),
                    Error::Wire(w) => CloseReason::Protocol(w.to_string()),
                    other => CloseReason::Transport(other.to_string()),
                });
            }
        };
        let msg = match tern_wire::decode_server(&frame, &limits) {
            Ok(m) => m,
            Err(e) => break CloseReason::Protocol(format!("undecodable frame: {e}")),
        };
        if let ServerMessage::Error {
            code,
            message,
            fatal: true,
            ..
        } = &msg
        {
            fatal = Some(CloseReason::Fatal {
                code: *code,
                message: message.clone(),
            });
        }
        let Some(msg) = shared.route(msg) else {
            continue;
        };
        let event = match msg {
            ServerMessage::Deliver { message } => Event::Deliver(message),
            ServerMessage::SyncComplete => Event::SyncComplete,
            ServerMessage::Notice { notice } => Event::Notice(notice),
            ServerMessage::Error {
                request_id,
                code,
                message,
                fatal,
                ..
            } => Event::Error {
                request_id,
                code,
                message,
                fatal,
            },
            other => Event::Other(other),
        };
        if events.send(event).await.is_err() {
            break CloseReason::Local; // the Connection was dropped
        }
    };
    shared.close(reason.clone());
    let _ = events.send(Event::Closed(reason)).await;
}

/// Detects dead connections: a TCP or QUIC path can die silently (NAT timeout, network switch,
/// server host gone) and a connection that only reads would never notice. A Ping every
/// `every`, unanswered within `timeout`, closes the connection so the app can resume elsewhere.
async fn heartbeat_loop(
    out: mpsc::Sender<Outgoing>,
    shared: Arc<Shared>,
    every: Duration,
    timeout: Duration,
) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let nonce = shared.next_id();
        let key = Waiter::Pong(nonce);
        let Ok(rx) = shared.register(key, timeout) else {
            return;
        };
        let ping = tern_wire::encode_client(&ClientMessage::Ping { nonce });
        if out.send(Outgoing::Frame(ping)).await.is_err() {
            return;
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return, // closed meanwhile
            Err(_) => {
                shared.unregister(key);
                shared.close(CloseReason::Transport(format!(
                    "no answer to a heartbeat within {}s",
                    timeout.as_secs()
                )));
                return;
            }
        }
    }
}

async fn write_loop(
    mut writer: FrameWriter,
    mut rx: mpsc::Receiver<Outgoing>,
    shared: Arc<Shared>,
) {
    while let Some(out) = rx.recv().await {
        match out {
            Outgoing::Frame(frame) => {
                if let Err(e) = writer.send_frame(&frame).await {
                    shared.close(CloseReason::Transport(e.to_string()));
                    return;
                }
            }
            Outgoing::Datagram(frame) => {
                // Unreliable by design: a datagram that cannot be sent is simply lost.
                if let Err(e) = writer.send_datagram(&frame).await {
                    tracing::debug!(error = %e, "datagram not sent");
                }
            }
            Outgoing::Close(done) => {
                let _ = writer.close().await;
                let _ = done.send(());
                return;
            }
        }
    }
    // Every handle is gone: say goodbye properly instead of just dropping the socket.
    let _ = writer.close().await;
}

/// For error messages only.
fn variant_name(m: &ServerMessage) -> &'static str {
    match m {
        ServerMessage::Welcome { .. } => "Welcome",
        ServerMessage::SendAck { .. } => "SendAck",
        ServerMessage::Deliver { .. } => "Deliver",
        ServerMessage::SyncComplete => "SyncComplete",
        ServerMessage::HistoryPage { .. } => "HistoryPage",
        ServerMessage::Conversation { .. } => "Conversation",
        ServerMessage::Invitation { .. } => "Invitation",
        ServerMessage::InviteDeclined { .. } => "InviteDeclined",
        ServerMessage::MemberRemoved { .. } => "MemberRemoved",
        ServerMessage::Presence { .. } => "Presence",
        ServerMessage::Typing { .. } => "Typing",
        ServerMessage::Reaction { .. } => "Reaction",
        ServerMessage::KeyBundle { .. } => "KeyBundle",
        ServerMessage::KeyShare { .. } => "KeyShare",
        ServerMessage::Ok { .. } => "Ok",
        ServerMessage::Error { .. } => "Error",
        ServerMessage::Notice { .. } => "Notice",
        ServerMessage::Pong { .. } => "Pong",
        ServerMessage::KeySharesStored { .. } => "KeySharesStored",
        ServerMessage::DeviceListChanged { .. } => "DeviceListChanged",
        ServerMessage::OneTimeKeysLow { .. } => "OneTimeKeysLow",
        ServerMessage::Delivered { .. } => "Delivered",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(10);

    fn ack(request_id: u64) -> ServerMessage {
        ServerMessage::SendAck {
            request_id,
            conversation: ConversationId(1),
            client_msg_id: 1,
            seq: 1,
            message_id: MessageId(1),
            timestamp_ms: 0,
            duplicate: false,
        }
    }

    #[test]
    fn replies_route_to_waiters_and_others_pass_through() {
        let shared = Shared::default();
        let mut rx = shared.register(Waiter::Request(5), T).expect("open");
        assert_eq!(shared.route(ack(5)), None);
        assert_eq!(rx.try_recv().expect("routed"), ack(5));
        // Unmatched reply and non-replies become events.
        assert_eq!(shared.route(ack(6)), Some(ack(6)));
        assert_eq!(
            shared.route(ServerMessage::SyncComplete),
            Some(ServerMessage::SyncComplete)
        );
        // request_id 0 errors are never routed.
        let _rx0 = shared.register(Waiter::Request(0), T).expect("open");
        let err = ServerMessage::error(0, ErrorCode::Internal, "x", false);
        assert_eq!(shared.route(err.clone()), Some(err));
    }

    #[test]
    fn close_fails_waiters_and_new_requests() {
        let shared = Shared::default();
        let mut rx = shared.register(Waiter::Pong(1), T).expect("open");
        shared.close(CloseReason::ClosedByServer);
        assert!(rx.try_recv().is_err());
        match shared.register(Waiter::Request(2), T) {
            Err(Error::Closed(CloseReason::ClosedByServer)) => {}
            other => panic!("unexpected {other:?}"),
        }
        // The first reason sticks.
        shared.close(CloseReason::Local);
        assert_eq!(shared.reason(), Some(CloseReason::ClosedByServer));
    }

    #[test]
    fn guard_unregisters() {
        let shared = Shared::default();
        let _rx = shared.register(Waiter::Request(3), T).expect("open");
        drop(PendingGuard {
            shared: &shared,
            key: Waiter::Request(3),
        });
        assert!(shared.lock().requests.is_empty());
    }
}
