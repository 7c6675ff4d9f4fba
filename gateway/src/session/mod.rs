//! One device session, the same on every transport: Hello and authentication, resume replay,
//! then requests in and live traffic out until either side ends it.
//!
//! Transports (WebSocket, WebTransport) only move whole frames: they implement [`FrameRecv`]
//! and [`FrameSend`], and everything a client can observe is decided here, once.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tern_engine::accounts::{Accounts, hash_token};
use tern_engine::conversations::{Conversations, HistoryRequest};
use tern_engine::core::{Input, SendRequest};
use tern_engine::driver::{CloseSignal, ConnSink, EngineHandle, Outbound, Tracking, now_ms};
use tern_engine::metrics::EngineMetrics;
use tern_engine::reactions::Reactions;
use tern_engine::service::ServiceError;
use tern_engine::store::TokenRecord;
use tern_engine::store::{HistoryQuery, Store};
use tern_wire::Limits;
use tern_wire::ids::{ConversationId, DeviceId, UserId};
use tern_wire::msg::{
    ClientMessage, ConversationKind, Cursor, ErrorCode, Notice, PROTOCOL_VERSION, PresenceStatus,
    ServerMessage,
};
use tokio::sync::mpsc;

use crate::metrics::{GatewayMetrics, Transport};

mod inbox;
mod keys;
pub mod limits;
mod membership;
mod messaging;
mod requests;
mod resume;

/// How long a new connection may take to send its Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages read from the store per page during resume replay.
const REPLAY_PAGE: u32 = 256;
/// Bytes (as `store::message_cost` counts them) read from the store per replay page: bounds
/// the memory one resuming session holds (256 messages of 60 KB would be 15 MB).
const REPLAY_PAGE_BYTES: u64 = 1024 * 1024;
/// Room in a `HistoryPage` frame for everything but its messages and reactions (envelope,
/// request id, conversation, vector headers; measured below 256 bytes in `paging`'s tests).
const PAGE_HEADROOM_BYTES: usize = 1024;
/// Most conversations a Hello or Resume may list.
const MAX_RESUME_CURSORS: usize = 10_000;
/// Longest a single frame write may wait for the peer to take data.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the final error frame and close may take before the transport is just dropped.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(3);
/// What `GoingAway` suggests clients wait before reconnecting (a restart takes about this long).
const GOING_AWAY_RETRY_MS: u32 = 1_000;

/// What a transport reports when asked for the next frame.
#[derive(Debug)]
pub enum Received {
    Frame(Vec<u8>),
    /// The peer sent a frame over the limit; it was not buffered.
    TooLarge {
        size: usize,
    },
    /// The transport's own framing was violated (e.g. a text WebSocket message).
    Malformed(String),
    /// The peer closed or the connection broke.
    Closed,
}

pub trait FrameRecv: Send {
    /// Cancel-safe: dropping the future loses no frame.
    fn recv(&mut self) -> impl Future<Output = Received> + Send;
}

pub trait FrameSend: Send {
    fn send(&mut self, frame: &[u8]) -> impl Future<Output = Result<(), TransportClosed>> + Send;
    /// Sends one envelope as an unreliable datagram if the transport has them (WebTransport);
    /// `false` means it was not sent and should go as a frame.
    fn send_datagram(&mut self, _frame: &[u8]) -> bool {
        false
    }
    /// Ends the connection with a reason the client can read.
    fn close(&mut self, code: ErrorCode, reason: &str) -> impl Future<Output = ()> + Send;
}

#[derive(Debug, thiserror::Error)]
#[error("transport closed")]
pub struct TransportClosed;

/// Everything sessions share.
pub struct SessionContext {
    /// Uploaded files: a Send naming files is checked against them (`messaging.rs`).
    pub files: Arc<crate::files::FileService>,
    pub accounts: Arc<Accounts>,
    pub conversations: Arc<Conversations>,
    pub reactions: Arc<Reactions>,
    /// End-to-end key directory, device inboxes and device list.
    pub keys: Arc<tern_engine::keys::Keys>,
    pub engine: EngineHandle,
    /// Presence and typing (see `presence.rs`).
    pub presence: crate::presence::PresenceService,
    pub store: Arc<dyn Store>,
    pub limits: Limits,
    pub engine_metrics: Arc<EngineMetrics>,
    pub metrics: Arc<GatewayMetrics>,
    pub idle_timeout: Duration,
    pub send_queue_frames: usize,
    /// Most messages replayed per conversation on resume; older ones are announced with
    /// `BacklogTruncated` and stay available through History.
    pub resume_backlog: u64,
    /// Flips to true when the server shuts down: sessions say `GoingAway` and close.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// Per-device send and request rate limits, and the per-user storage quota.
    pub device_limits: limits::DeviceLimits,
    /// Which web origins may open a session (the `Origin` of the upgrade or CONNECT).
    pub origins: Arc<crate::headers::OriginPolicy>,
}

/// Why a session ended, and what the client is told.
struct End {
    code: Option<ErrorCode>,
    reason: String,
}

impl End {
    fn quiet() -> Self {
        End {
            code: None,
            reason: String::new(),
        }
    }
    fn fatal(code: ErrorCode, reason: impl Into<String>) -> Self {
        End {
            code: Some(code),
            reason: reason.into(),
        }
    }
}

struct Session<'a, R, W> {
    ctx: &'a SessionContext,
    transport: Transport,
    rx: R,
    tx: W,
    user: UserId,
    device: DeviceId,
    /// When the token this session authenticated with expires: the session ends then.
    token_expires_ms: u64,
    /// Highest seq sent to this device per conversation: drops live copies of replayed messages.
    delivered: HashMap<ConversationId, u64>,
    frames: mpsc::Receiver<Outbound>,
    /// Presence and typing events for this device (ephemeral, never tracked).
    presence_events: mpsc::Receiver<crate::presence::PresenceEvent>,
    /// Rate limits and the quota estimate of this connection.
    rate: limits::DeviceRate,
    /// Highest seq acknowledged per conversation: repeated or older acks are not forwarded.
    acked: HashMap<ConversationId, u64>,
    /// Key-share inbox entries written to this device and not acknowledged yet.
    inbox: inbox::InboxDelivery,
}

pub async fn run<R: FrameRecv, W: FrameSend>(
    ctx: Arc<SessionContext>,
    transport: Transport,
    mut rx: R,
    mut tx: W,
) {
    let metrics = ctx.metrics.clone();
    let _open = OpenSession::new(&metrics, transport);
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, rx.recv()).await {
        Ok(received) => received,
        Err(_) => {
            refuse(
                &mut tx,
                &metrics,
                transport,
                End::fatal(ErrorCode::Unauthenticated, "no Hello in time"),
            )
            .await;
            return;
        }
    };
    match authenticate(&ctx, transport, hello).await {
        Err(end) => refuse(&mut tx, &metrics, transport, end).await,
        Ok((token, device, cursors)) => {
            run_authenticated(&ctx, transport, rx, tx, token, device, cursors).await;
        }
    }
}

/// Counts a session as open (by transport and by shard) for as long as it lives.
struct OpenSession {
    transport: prometheus_client::metrics::gauge::Gauge,
    shard: prometheus_client::metrics::gauge::Gauge,
}

impl OpenSession {
    fn new(metrics: &GatewayMetrics, transport: Transport) -> Self {
        let labels = crate::metrics::ShardLabels {
            shard: crate::shard::current() as u32,
        };
        let open = OpenSession {
            transport: metrics.of(transport).connections.clone(),
            shard: metrics.shard_connections.get_or_create(&labels).clone(),
        };
        open.transport.inc();
        open.shard.inc();
        open
    }
}

impl Drop for OpenSession {
    fn drop(&mut self) {
        self.transport.dec();
        self.shard.dec();
    }
}

async fn refuse<W: FrameSend>(
    tx: &mut W,
    metrics: &GatewayMetrics,
    transport: Transport,
    end: End,
) {
    if let Some(code) = end.code {
        let frame =
            tern_wire::encode_server(&ServerMessage::error(0, code, end.reason.clone(), true));
        let goodbye = async {
            if tx.send(&frame).await.is_ok() {
                metrics.of(transport).frames_out.inc();
            }
            tx.close(code, &end.reason).await;
        };
        let _ = tokio::time::timeout(GOODBYE_TIMEOUT, goodbye).await;
    }
}

/// Turns what the transport delivered into a verified client message, or the reason to end
/// the session (every failure here is fatal: the stream can no longer be trusted).
fn decode_received(
    ctx: &SessionContext,
    transport: Transport,
    received: Received,
) -> Result<ClientMessage, End> {
    let bytes = match received {
        Received::Frame(bytes) => bytes,
        Received::TooLarge { size } => {
            return Err(End::fatal(
                ErrorCode::FrameTooLarge,
                format!(
                    "frame of {size} bytes exceeds the limit of {} bytes",
                    ctx.limits.max_frame_bytes
                ),
            ));
        }
        Received::Malformed(why) => return Err(End::fatal(ErrorCode::MalformedFrame, why)),
        Received::Closed => return Err(End::quiet()),
    };
    ctx.metrics.of(transport).frames_in.inc();
    tern_wire::decode_client(&bytes, &ctx.limits).map_err(|e| End::fatal(e.code(), e.to_string()))
}

type Authenticated = (TokenRecord, DeviceId, Vec<Cursor>);

async fn authenticate(
    ctx: &SessionContext,
    transport: Transport,
    first: Received,
) -> Result<Authenticated, End> {
    let message = decode_received(ctx, transport, first)?;
    let ClientMessage::Hello {
        min_version,
        max_version,
        token,
        device,
        cursors,
        ..
    } = message
    else {
        return Err(End::fatal(
            ErrorCode::Unauthenticated,
            "the first frame must be Hello",
        ));
    };
    if min_version > PROTOCOL_VERSION || max_version < 1 || min_version > max_version {
        return Err(End::fatal(
            ErrorCode::UnsupportedVersion,
            format!("this server speaks protocol version {PROTOCOL_VERSION}"),
        ));
    }
    if cursors.len() > MAX_RESUME_CURSORS {
        return Err(End::fatal(
            ErrorCode::LimitExceeded,
            "too many resume cursors",
        ));
    }
    let record = ctx
        .accounts
        .authenticate(&token)
        .await
        .map_err(|e| End::fatal(e.code, e.message))?;
    debug_assert_eq!(record.token_hash, hash_token(&token));
    // The device must be this user's (and this session's): refused before anything of the
    // device's state (cursors, live registration) is touched.
    ctx.accounts
        .bind_device(device, &record)
        .await
        .map_err(|e| End::fatal(e.code, e.message))?;
    Ok((record, device, cursors))
}

#[allow(clippy::too_many_arguments)]
async fn run_authenticated<R: FrameRecv, W: FrameSend>(
    ctx: &SessionContext,
    transport: Transport,
    rx: R,
    tx: W,
    token: TokenRecord,
    device: DeviceId,
    cursors: Vec<Cursor>,
) {
    let user = token.user;
    let (sink, frames_rx, close_rx) = ConnSink::new(ctx.send_queue_frames);
    let Ok(conn) = ctx
        .engine
        .connect(user, device, token.token_hash, sink)
        .await
    else {
        let mut tx = tx;
        refuse(
            &mut tx,
            &ctx.metrics,
            transport,
            End::fatal(ErrorCode::ServerShutdown, "server is shutting down"),
        )
        .await;
        return;
    };
    // A logout (or log out everywhere) between authentication and registration found no
    // connection to close; checking the token again now that we are registered closes that
    // gap: any revocation from here on finds this connection.
    match ctx
        .accounts
        .token_is_live(&token.token_hash, now_ms())
        .await
    {
        Ok(true) => {}
        live => {
            ctx.engine.disconnect(conn).await;
            let end = match live {
                Ok(_) => End::fatal(ErrorCode::TokenRevoked, "session ended"),
                Err(e) => End::fatal(e.code, e.message),
            };
            let mut tx = tx;
            refuse(&mut tx, &ctx.metrics, transport, end).await;
            return;
        }
    }
    let presence_events = ctx.presence.connect(user, conn).await;
    let mut session = Session {
        ctx,
        transport,
        rx,
        tx,
        user,
        device,
        token_expires_ms: token.expires_ms,
        delivered: HashMap::new(),
        frames: frames_rx,
        presence_events,
        rate: limits::DeviceRate::new(&ctx.device_limits),
        acked: HashMap::new(),
        inbox: inbox::InboxDelivery::default(),
    };
    let end = session.serve(conn, cursors, close_rx).await;
    ctx.presence.disconnect(user, conn).await;
    ctx.engine.disconnect(conn).await;
    // Frames still queued will never be written.
    ctx.engine_metrics
        .send_queue_frames
        .dec_by(session.frames.len() as i64);
    session.frames.close();
    if let Some(code) = end.code {
        let frame =
            tern_wire::encode_server(&ServerMessage::error(0, code, end.reason.clone(), true));
        // Best effort and bounded: a client that stopped reading (a slow consumer) cannot take
        // the reason; it finds the connection closed and resumes from its cursor.
        let goodbye = async {
            let _ = session.write(&frame).await;
            session.tx.close(code, &end.reason).await;
        };
        let _ = tokio::time::timeout(GOODBYE_TIMEOUT, goodbye).await;
    }
}

impl<R: FrameRecv, W: FrameSend> Session<'_, R, W> {
    async fn write(&mut self, frame: &[u8]) -> Result<(), End> {
        // A peer that takes no data for this long has vanished or stopped reading.
        match tokio::time::timeout(WRITE_TIMEOUT, self.tx.send(frame)).await {
            Ok(Ok(())) => {}
            Ok(Err(TransportClosed)) => return Err(End::quiet()),
            Err(_) => {
                return Err(End::fatal(
                    ErrorCode::SlowConsumer,
                    "the connection took no data for too long",
                ));
            }
        }
        self.ctx.metrics.of(self.transport).frames_out.inc();
        Ok(())
    }

    async fn reply(&mut self, message: &ServerMessage) -> Result<(), End> {
        self.write(&tern_wire::encode_server(message)).await
    }

    /// Writes an engine frame unless it is a live copy of a message already sent.
    async fn write_outbound(&mut self, frame: Outbound) -> Result<(), End> {
        self.ctx.engine_metrics.send_queue_frames.dec();
        match frame.tracking {
            Tracking::Deliver(conversation, seq) => {
                let high = self.delivered.entry(conversation).or_insert(0);
                if seq <= *high {
                    return Ok(());
                }
                *high = seq;
            }
            Tracking::OwnSend(conversation, seq) => {
                let high = self.delivered.entry(conversation).or_insert(0);
                *high = (*high).max(seq);
            }
            Tracking::KeyShare(inbox_id) => {
                // Live pushes may reach this session out of id order (senders on different
                // shards): a lower id arriving after a higher one is still new. Duplicates are
                // copies of drained or already written entries.
                if !self.inbox.live(inbox_id) {
                    return Ok(());
                }
            }
            Tracking::None => {}
        }
        self.write(&frame.bytes).await
    }

    async fn serve(&mut self, conn: u64, cursors: Vec<Cursor>, close: Arc<CloseSignal>) -> End {
        let keys = &self.ctx.keys;
        let one_time_keys_left = match keys
            .device_connected(self.user, self.device, now_ms())
            .await
        {
            Ok(()) => keys.one_time_keys_left(self.device).await,
            Err(e) => Err(e),
        };
        let one_time_keys_left = match one_time_keys_left {
            Ok(left) => left,
            Err(e) => return End::fatal(e.code, e.message),
        };
        let welcome = ServerMessage::Welcome {
            version: PROTOCOL_VERSION,
            user: self.user,
            device: self.device,
            server_time_ms: now_ms(),
            max_frame_bytes: self.ctx.limits.max_frame_bytes as u32,
            one_time_keys_left,
        };
        if let Err(end) = self.reply(&welcome).await {
            return end;
        }
        // Key shares first: the resume replay may carry messages encrypted with them.
        if let Err(end) = self.send_inbox().await {
            return end;
        }
        if let Err(end) = self.resume(&cursors, true).await {
            return end;
        }
        let mut shutdown = self.ctx.shutdown.clone();
        // A socket must not outlive its credential: at the token's expiry the session ends
        // with an error that says so (the client logs in again and reconnects).
        let expiry = tokio::time::sleep(Duration::from_millis(
            self.token_expires_ms.saturating_sub(now_ms()),
        ));
        tokio::pin!(expiry);
        loop {
            // After a rate-limit refusal the device's frames wait (in its socket) until then.
            let paused = self.rate.paused_until;
            tokio::select! {
                () = &mut expiry => {
                    return End::fatal(ErrorCode::Unauthenticated, "token expired; log in again");
                }
                () = tokio::time::sleep_until(paused.unwrap_or_else(std::time::Instant::now).into()), if paused.is_some() => {
                    self.rate.paused_until = None;
                }
                () = stopping(&mut shutdown) => {
                    let notice = ServerMessage::Notice { notice: Notice::GoingAway { retry_after_ms: GOING_AWAY_RETRY_MS } };
                    if let Err(end) = self.reply(&notice).await {
                        return end;
                    }
                    return End::fatal(ErrorCode::ServerShutdown, "server is shutting down; reconnect later");
                }
                reason = close.closed() => {
                    return End::fatal(reason.code, reason.message.clone());
                }
                frame = self.frames.recv() => {
                    let Some(frame) = frame else {
                        // The engine dropped our queue: it closed us (the reason was sent
                        // first) or it stopped.
                        return match close.reason() {
                            Some(reason) => End::fatal(reason.code, reason.message.clone()),
                            None => End::fatal(ErrorCode::ServerShutdown, "server is shutting down"),
                        };
                    };
                    // A client that stops reading blocks this write; the engine then overflows
                    // our queue and closes us, which must end the session even mid-write.
                    tokio::select! {
                        written = self.write_outbound(frame) => {
                            if let Err(end) = written {
                                return end;
                            }
                        }
                        reason = close.closed() => {
                            return End::fatal(reason.code, reason.message.clone());
                        }
                    }
                }
                Some(event) = self.presence_events.recv() => {
                    if let Err(end) = self.write_presence(event).await {
                        return end;
                    }
                }
                received = tokio::time::timeout(self.ctx.idle_timeout, self.rx.recv()), if paused.is_none() => {
                    let received = match received {
                        Ok(received) => received,
                        // Silent for longer than any live client (they ping every ~20 s): the
                        // peer is gone, so there is nobody to explain this to.
                        Err(_) => return End::quiet(),
                    };
                    if let Err(end) = self.on_received(conn, received).await {
                        return end;
                    }
                }
            }
        }
    }

    /// Writes a presence or typing event: typing as a datagram where the transport has them.
    async fn write_presence(&mut self, event: crate::presence::PresenceEvent) -> Result<(), End> {
        if event.datagram && self.tx.send_datagram(&event.bytes) {
            self.ctx.metrics.datagrams_out.inc();
            return Ok(());
        }
        self.write(&event.bytes).await
    }

    async fn on_received(&mut self, conn: u64, received: Received) -> Result<(), End> {
        let message = decode_received(self.ctx, self.transport, received)?;
        self.dispatch(conn, message).await
    }
}

/// Resolves once the server starts shutting down (never, if the sender is gone).
async fn stopping(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    loop {
        // The borrow ends before the await: watch guards must not be held across it.
        if *shutdown.borrow_and_update() {
            return;
        }
        if shutdown.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// `Ok` for a request that succeeded without another answer, else its error.
fn ok_or_error<T>(request_id: u64, result: Result<T, ServiceError>) -> ServerMessage {
    match result {
        Ok(_) => ServerMessage::Ok { request_id },
        Err(e) => service_error(request_id, e),
    }
}

/// Answers a request refused by a rate limit and pauses reading (see `limits`).
impl<R: FrameRecv, W: FrameSend> Session<'_, R, W> {
    async fn refuse_rate(
        &mut self,
        request_id: u64,
        what: &str,
        retry: tern_engine::rate::RetryAfter,
    ) -> Result<(), End> {
        self.ctx.metrics.rate_limited.inc();
        self.rate.pause_reads(retry);
        let answer = ServerMessage::rate_limited(
            request_id,
            format!("{what}; retry in {} ms", retry.ms),
            retry.ms,
        );
        self.reply(&answer).await
    }
}

fn service_error(request_id: u64, e: ServiceError) -> ServerMessage {
    ServerMessage::error(request_id, e.code, e.message, false)
}
