//! The high-level session: a [`Connection`] plus delivery bookkeeping ([`SyncState`]), resume
//! with cursors, de-duplication, gap filling and coalesced Acks.
//!
//! Messages come out of [`Client::next_event`] in seq order per conversation, each exactly once
//! across reconnects (as long as the app persists [`Client::cursors`] between runs).
//!
//! Acks: a message is acknowledged to the server (advancing this device's stored cursor) only
//! after the app has taken it from `next_event` *and* come back for the next event (or called
//! [`Client::flush_acks`] / [`Client::close`]). A crash while handling a message therefore
//! replays it on the next run instead of losing it.
//!
//! ## Outbox
//!
//! Every send goes through the [`Outbox`] first: [`Client::compose`] (and [`Client::send`],
//! which composes and then sends) persists the message with a fresh random `client_msg_id`
//! before any network I/O, and the entry is removed only after its `SendAck` (or a permanent
//! rejection). A `Client` can be built offline ([`Client::new`]) and composed into with no
//! connection at all; with a file outbox ([`Outbox::open_file`]) the entries survive an app
//! restart. Pending entries are sent one at a time, oldest first (so every conversation keeps
//! compose order), with their original ids (the server deduplicates, so a resend of a message
//! that was stored but whose ack was lost creates nothing new):
//! * by [`Client::run_until_connected`] once resume replay is over (`SyncComplete`);
//! * by [`Client::next_event`] whenever the connection is synced and entries are pending;
//! * by [`Client::send`] / [`Client::flush_outbox`] right away (older entries first).
//!
//! Outcomes: the receipt of [`Client::send`]'s own message is its return value; every other
//! outbox entry that gets acknowledged surfaces as `ClientEvent::Other(ServerMessage::SendAck)`
//! (with its `client_msg_id`). A permanent rejection (forbidden, not found, invalid, too large)
//! removes the entry, surfaces as `ClientEvent::Error { fatal: false, .. }` whose message names
//! the id, and is kept in structured form for [`Client::take_rejected`]. Transient failures
//! (timeout, connection lost, rate limited, server shutting down) keep the entry; it is retried
//! on the next connection (rate limited: after a backoff delay on the same connection).
//!
//! ## Reconnecting
//!
//! [`Client::run_until_connected`] reconnects with exponential backoff and full jitter
//! ([`crate::Backoff`], parameters in [`Config::reconnect`]), waits at least the `retry_after_ms`
//! of a `GoingAway` notice, resumes from the cursors, then drains the outbox. It gives up only
//! on errors retrying cannot fix (token revoked or unknown, unsupported version, bad
//! configuration).

use std::time::Duration;

use tern_core::files::file_refs;
use tern_core::protocol::delivery::{Delivered, Delivery, Popped};
use tern_core::protocol::drain::{Drain, SendFailed};
use tern_core::protocol::failure::{Failure, error_code_from_str};
use tern_core::protocol::reconnect::{Reconnect, connect_failure_is_permanent};
use tern_wire::ids::{ConversationId, DeviceId};
use tern_wire::msg::{Cursor, ErrorCode, Message, Notice, ServerMessage};
use tokio::time::Instant;

use crate::backoff::Backoff;

/// How often the key backup is asked again for one conversation's missing keys (bounds the
/// HTTPS traffic of a device that keeps receiving messages it has no key for).
const BACKUP_REFETCH: Duration = Duration::from_secs(60);
use crate::config::Config;
use crate::connection::{Connection, Event, HistoryPage, SendReceipt};
use crate::e2e::{CryptoNotice, E2e, UndecryptableMessage};
use crate::error::{CloseReason, Error, Result};
use crate::outbox::{Outbox, OutboxLimits, PendingSend};

pub use tern_core::protocol::delivery::SkipReason;
pub use tern_core::protocol::drain::Rejected;

/// What the app sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// A message, in seq order within its conversation, never twice.
    Message(Message),
    /// Resume replay is over: what follows is live.
    SyncComplete,
    /// Seqs `from_seq..=to_seq` of `conversation` will not be surfaced.
    Skipped {
        conversation: ConversationId,
        from_seq: u64,
        to_seq: u64,
        reason: SkipReason,
    },
    Notice(Notice),
    Error {
        code: ErrorCode,
        message: String,
        fatal: bool,
    },
    /// Presence, typing, invitations, conversation changes, ...
    Other(ServerMessage),
    /// The connection ended; call [`Client::reconnect`] (unless the reason says the token is
    /// no longer valid).
    Disconnected(CloseReason),
    /// End-to-end encryption on ([`Client::set_e2e`]): a message (in its seq order) that could
    /// not be decrypted, and why. It is retried when its key arrives ([`ClientEvent::Decrypted`]).
    Undecryptable(UndecryptableMessage),
    /// A message surfaced earlier as [`ClientEvent::Undecryptable`] whose key has arrived.
    Decrypted(Message),
    /// Trust warnings (a contact's identity changed) and refused keys.
    Crypto(CryptoNotice),
}

impl From<Delivered<ClientEvent>> for ClientEvent {
    fn from(d: Delivered<ClientEvent>) -> Self {
        match d {
            Delivered::Message(m) => ClientEvent::Message(m),
            Delivered::SyncComplete => ClientEvent::SyncComplete,
            Delivered::Skipped {
                conversation,
                from_seq,
                to_seq,
                reason,
            } => ClientEvent::Skipped {
                conversation,
                from_seq,
                to_seq,
                reason,
            },
            Delivered::Other(e) => e,
        }
    }
}

/// A resumable session for one user and device.
pub struct Client {
    config: Config,
    token: String,
    device: DeviceId,
    conn: Option<Connection>,
    /// The core's cursors, de-duplication, gaps, app queue and ack bookkeeping.
    delivery: Delivery<ClientEvent>,
    outbox: Outbox,
    /// The core's outbox drain gate and rejection record.
    drain: Drain,
    /// The core's reconnect schedule (backoff, uptime, GoingAway hint).
    reconnect: Reconnect,
    /// Zero of the `now_ms` clock handed to the core (monotonic; tokio's, so paused test time
    /// applies).
    epoch: Instant,
    /// End-to-end encryption (see [`Client::set_e2e`]); `None` sends payloads as given.
    e2e: Option<E2e>,
    /// When each conversation's backed-up keys were last fetched for waiting messages.
    backup_fetched: std::collections::HashMap<ConversationId, Instant>,
}

impl Client {
    /// A client that has not connected yet (no I/O): compose into `outbox` offline, then call
    /// [`Client::run_until_connected`] (or [`Client::reconnect`]). `cursors` are what the app
    /// persisted (may be empty).
    pub fn new(
        config: Config,
        token: impl Into<String>,
        device: DeviceId,
        cursors: &[Cursor],
        outbox: Outbox,
    ) -> Client {
        let backoff = Backoff::random(config.reconnect);
        Client {
            config,
            token: token.into(),
            device,
            conn: None,
            delivery: Delivery::new(cursors),
            outbox,
            drain: Drain::new(),
            reconnect: Reconnect::new(backoff),
            epoch: Instant::now(),
            e2e: None,
            backup_fetched: std::collections::HashMap::new(),
        }
    }

    /// Milliseconds since this client was created: the core's clock.
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The instant of a core `now_ms` value.
    fn instant_at(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }

    /// Connects once and resumes after `cursors`, with an in-memory outbox (use
    /// [`Client::new`] with [`Outbox::open_file`] for one that survives restarts).
    pub async fn connect(
        config: Config,
        token: impl Into<String>,
        device: DeviceId,
        cursors: &[Cursor],
    ) -> Result<Client> {
        let outbox = Outbox::in_memory(OutboxLimits::default());
        let mut client = Client::new(config, token, device, cursors, outbox);
        client.reconnect().await?;
        Ok(client)
    }

    /// (Re)connects once, resuming after the cursors of everything seen so far. Messages
    /// already queued for the app stay queued; replayed copies are de-duplicated. The outbox is
    /// drained by [`Client::next_event`] after `SyncComplete` (or call
    /// [`Client::flush_outbox`]).
    pub async fn reconnect(&mut self) -> Result<()> {
        self.flush_acks().await;
        if let Some(old) = self.conn.take() {
            old.close().await;
            self.reconnect.on_disconnected(self.now_ms());
        }
        self.delivery.on_connect();
        let cursors = self.delivery.resume_cursors();
        let conn = Connection::connect(&self.config, &self.token, self.device, &cursors).await?;
        if let Some(e2e) = self.e2e.as_mut()
            && let Err(e) = e2e
                .publish_keys(&conn, conn.welcome().one_time_keys_left)
                .await
        {
            // Retried on the next connection; until then contacts cannot start new sessions
            // with this device (existing ones keep working).
            tracing::warn!(error = %e, "could not publish this device's keys");
        }
        self.conn = Some(conn);
        self.drain.on_connected();
        self.reconnect.on_connected(self.now_ms());
        Ok(())
    }

    /// Reconnects until it works, then waits for the end of resume replay (bounded by the
    /// request timeout) and sends the outbox. Between attempts it sleeps per the backoff
    /// schedule (at least a `GoingAway`'s `retry_after_ms`); the schedule resets when the
    /// previous connection stayed up for [`crate::BackoffPolicy::reset_after`].
    ///
    /// Returns an error only when retrying cannot help: the token is revoked or unknown
    /// ([`Error::is_auth`]), the server speaks no version of ours, or the configuration is
    /// bad. Wrap it in a timeout to bound it otherwise. Events seen meanwhile stay queued for
    /// [`Client::next_event`].
    pub async fn run_until_connected(&mut self) -> Result<()> {
        if let Some(conn) = self.conn.as_ref().filter(|c| !c.is_closed()) {
            // A path can die silently (a QUIC peer killed without a word): check it answers
            // before trusting it; a dead one is replaced like a closed one.
            match conn.ping().await {
                Ok(_) => {
                    if let Err(e) = self.wait_synced().await {
                        tracing::debug!(error = %e, "no SyncComplete");
                    }
                    if let Err(e) = self.flush_outbox().await {
                        tracing::debug!(error = %e, "outbox not fully sent");
                    }
                    if self.is_connected() {
                        return Ok(());
                    }
                }
                Err(e) => tracing::debug!(error = %e, "connection does not answer; replacing it"),
            }
        }
        self.reconnect.begin(self.now_ms());
        loop {
            let delay = self.reconnect.next_attempt_delay();
            if !delay.is_zero() {
                tracing::debug!(
                    ?delay,
                    attempt = self.reconnect.backoff().attempt(),
                    "reconnecting after"
                );
                tokio::time::sleep(delay).await;
            }
            match self.reconnect().await {
                Ok(()) => {}
                Err(e) if connect_failure_is_permanent(&failure_of(&e)) => return Err(e),
                Err(e) => {
                    tracing::debug!(error = %e, "reconnect failed");
                    continue;
                }
            }
            // Replay first (so our own seqs do not look like gaps), then the outbox.
            if let Err(e) = self.wait_synced().await {
                tracing::debug!(error = %e, "no SyncComplete");
            }
            match self.flush_outbox().await {
                Ok(_) => return Ok(()),
                Err(e) if self.is_connected() => {
                    // Still connected (rate limited, a slow ack): the entries stay queued and
                    // are retried on this connection or the next.
                    tracing::debug!(error = %e, "outbox not fully sent");
                    return Ok(());
                }
                // Lost again: next attempt (a revoked token fails the Hello and ends the loop).
                Err(e) => tracing::debug!(error = %e, "connection lost while sending the outbox"),
            }
        }
    }

    /// Pumps events (queued for the app) until this connection's `SyncComplete`.
    async fn wait_synced(&mut self) -> Result<()> {
        let deadline = Instant::now() + self.config.request_timeout;
        while !self.delivery.is_synced() {
            let conn = self
                .conn
                .as_mut()
                .ok_or(Error::Closed(CloseReason::Local))?;
            let event = tokio::time::timeout_at(deadline, conn.next_event())
                .await
                .map_err(|_| Error::Timeout("SyncComplete"))?;
            match event {
                Some(event) => self.on_event(event),
                None => self.conn = None,
            }
        }
        Ok(())
    }

    /// Turns on end-to-end encryption: every outbox entry is encrypted for the members'
    /// devices right before it is sent (the outbox keeps the plaintext on this device only),
    /// every Megolm message is decrypted before the app sees it, key shares are taken from
    /// the device's inbox, and this device's keys are published on (re)connect. Call before
    /// connecting.
    pub fn set_e2e(&mut self, e2e: E2e) {
        self.e2e = Some(e2e);
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// An HTTPS API client for this client's server and token.
    pub fn http_api(&self) -> Result<crate::HttpApi> {
        Ok(crate::HttpApi::new(&self.config)?.with_token(self.token.clone()))
    }

    pub fn e2e(&self) -> Option<&E2e> {
        self.e2e.as_ref()
    }

    pub fn e2e_mut(&mut self) -> Option<&mut E2e> {
        self.e2e.as_mut()
    }

    /// The pending sends.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    pub fn outbox_mut(&mut self) -> &mut Outbox {
        &mut self.outbox
    }

    /// Replaces the reconnect schedule (e.g. a seeded one in tests).
    pub fn set_backoff(&mut self, backoff: Backoff) {
        self.reconnect.set_backoff(backoff);
    }

    /// Outbox entries the server rejected for good since the last call (at most the latest
    /// 1024).
    pub fn take_rejected(&mut self) -> Vec<Rejected> {
        self.drain.take_rejected()
    }

    pub fn is_connected(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| !c.is_closed())
    }

    /// The live connection, for requests this type has no method for.
    pub fn connection(&self) -> Option<&Connection> {
        self.conn.as_ref()
    }

    pub fn device(&self) -> DeviceId {
        self.device
    }

    /// Cursors of what the app has taken, to persist and pass to the next `connect`.
    pub fn cursors(&self) -> Vec<Cursor> {
        self.delivery.cursors()
    }

    /// Puts a message in the outbox (persisted when this returns) without any network I/O and
    /// returns its `client_msg_id`. Works offline; the message is sent when the outbox is next
    /// drained (see the module docs). Fails with [`Error::OutboxFull`] when the outbox is at
    /// its limits and with [`Error::FrameTooLarge`] when the payload cannot fit in a frame.
    pub fn compose(
        &mut self,
        conversation: ConversationId,
        content_type: &str,
        payload: Vec<u8>,
    ) -> Result<u128> {
        self.check_size(&payload)?;
        self.outbox.compose(conversation, content_type, payload)
    }

    fn check_size(&self, payload: &[u8]) -> Result<()> {
        if payload.len() > self.config.max_frame_bytes {
            return Err(Error::FrameTooLarge {
                size: payload.len(),
                max: self.config.max_frame_bytes,
            });
        }
        Ok(())
    }

    /// Composes (see [`Client::compose`]) and sends right away, older outbox entries first,
    /// waiting for the durable `SendAck`.
    ///
    /// An error other than [`Error::OutboxFull`], [`Error::FrameTooLarge`] or a permanent
    /// [`Error::Server`] rejection means the message **is queued** and will be sent after
    /// reconnecting (no connection, timeout, connection lost, rate limited).
    pub async fn send(
        &mut self,
        conversation: ConversationId,
        content_type: &str,
        payload: Vec<u8>,
    ) -> Result<SendReceipt> {
        let client_msg_id = self.compose(conversation, content_type, payload)?;
        self.send_pending(client_msg_id).await
    }

    /// Like [`Client::send`] with a caller-chosen idempotency key (an id already in the outbox
    /// is not queued twice). Our own messages are not delivered back to this device; their
    /// seqs are recorded so they do not look like gaps.
    pub async fn send_with_id(
        &mut self,
        conversation: ConversationId,
        client_msg_id: u128,
        content_type: &str,
        payload: Vec<u8>,
    ) -> Result<SendReceipt> {
        self.check_size(&payload)?;
        self.outbox.enqueue(PendingSend {
            client_msg_id,
            conversation,
            content_type: content_type.to_string(),
            payload,
            created_ms: crate::outbox::unix_ms(),
        })?;
        self.send_pending(client_msg_id).await
    }

    /// Sends the outbox up to and including `client_msg_id` and returns its receipt.
    async fn send_pending(&mut self, client_msg_id: u128) -> Result<SendReceipt> {
        match self.drain_outbox(Some(client_msg_id)).await? {
            Some(receipt) => Ok(receipt),
            // Removed meanwhile (a late ack of an earlier copy reported it as stored).
            None => Err(Error::Protocol(format!(
                "message {client_msg_id:032x} left the outbox before it was sent"
            ))),
        }
    }

    /// Sends every pending outbox entry now, oldest first, on the current connection, and
    /// returns how many were acknowledged. Stops at the first transient failure (the entry and
    /// everything after it stay queued); permanently rejected entries are removed and reported.
    pub async fn flush_outbox(&mut self) -> Result<usize> {
        let before = self.outbox.len();
        self.drain_outbox(None).await?;
        Ok(before.saturating_sub(self.outbox.len()))
    }

    /// Sends outbox entries oldest first until the outbox is empty or `target` was sent.
    /// Entries other than `target` that get acknowledged are surfaced as `SendAck` events.
    async fn drain_outbox(&mut self, target: Option<u128>) -> Result<Option<SendReceipt>> {
        while let Some(mut entry) = self.outbox.front().cloned() {
            let id = entry.client_msg_id;
            let conn = match self.conn.as_ref() {
                Some(c) if !c.is_closed() => c,
                Some(c) => {
                    return Err(Error::Closed(
                        c.close_reason().unwrap_or(CloseReason::Local),
                    ));
                }
                None => return Err(Error::Closed(CloseReason::Local)),
            };
            let sent = match self.e2e.as_mut() {
                None => {
                    let files = file_refs(&entry.content_type, &entry.payload);
                    conn.send_with_files(
                        entry.conversation,
                        id,
                        &entry.content_type,
                        std::mem::take(&mut entry.payload),
                        files,
                    )
                    .await
                }
                Some(e2e) => encrypt_and_send(e2e, conn, &self.config, &self.token, &entry).await,
            };
            if let Some(e2e) = self.e2e.as_mut() {
                for n in e2e.take_notices() {
                    self.delivery.push(ClientEvent::Crypto(n));
                }
            }
            match sent {
                Ok(receipt) => {
                    self.remove_from_outbox(id);
                    self.delivery.on_own_send(receipt.conversation, receipt.seq);
                    if target == Some(id) {
                        return Ok(Some(receipt));
                    }
                    self.push_event(ClientEvent::Other(ServerMessage::SendAck {
                        request_id: 0,
                        conversation: receipt.conversation,
                        client_msg_id: id,
                        seq: receipt.seq,
                        message_id: receipt.message_id,
                        timestamp_ms: receipt.timestamp_ms,
                        duplicate: receipt.duplicate,
                    }));
                }
                Err(e) => {
                    let now_ms = self.now_ms();
                    let verdict = self.drain.on_send_failed(
                        &entry,
                        &failure_of(&e),
                        e.to_string(),
                        self.reconnect.backoff_mut(),
                        now_ms,
                    );
                    match verdict {
                        SendFailed::Rejected(rejected) => {
                            self.remove_from_outbox(id);
                            tracing::warn!(?rejected, "outbox entry rejected; dropped");
                            self.push_event(ClientEvent::Error {
                                code: rejected.code,
                                message: format!(
                                    "message {id:032x} to {} was rejected and removed from the \
                                     outbox: {e}",
                                    entry.conversation
                                ),
                                fatal: false,
                            });
                            if target == Some(id) {
                                return Err(e);
                            }
                        }
                        // Kept; the gate says when the next automatic drain may run.
                        SendFailed::Retry(_) => return Err(e),
                    }
                }
            }
        }
        Ok(None)
    }

    fn remove_from_outbox(&mut self, client_msg_id: u128) {
        let removed = self.outbox.remove(client_msg_id);
        self.log_store_failure(removed);
    }

    fn log_store_failure(&self, result: Result<Option<PendingSend>>) {
        if let Err(e) = result {
            // The entry is gone from memory; on disk it may linger and be resent after a
            // restart, which the server answers as a duplicate.
            tracing::warn!(error = %e, "could not persist an outbox removal");
        }
    }

    /// History over the socket (does not touch cursors).
    pub async fn history(
        &self,
        conversation: ConversationId,
        before_seq: u64,
        after_seq: u64,
        limit: u32,
    ) -> Result<HistoryPage> {
        let conn = self
            .conn
            .as_ref()
            .ok_or(Error::Closed(CloseReason::Local))?;
        conn.history(conversation, before_seq, after_seq, limit)
            .await
    }

    /// Any form of history page over the socket (see [`crate::HistoryQuery`]; does not touch
    /// cursors). Payloads are as stored, like [`Client::history`]'s.
    pub async fn history_query(
        &self,
        conversation: ConversationId,
        query: crate::HistoryQuery,
    ) -> Result<HistoryPage> {
        let conn = self
            .conn
            .as_ref()
            .ok_or(Error::Closed(CloseReason::Local))?;
        conn.history_query(conversation, query).await
    }

    /// The context of message `seq` (a search hit): up to `limit` messages around it.
    pub async fn history_around(
        &self,
        conversation: ConversationId,
        seq: u64,
        limit: u32,
    ) -> Result<HistoryPage> {
        self.history_query(conversation, crate::HistoryQuery::around(seq, limit))
            .await
    }

    /// The next event. `None` when there is no connection and nothing queued: call
    /// [`Client::reconnect`].
    ///
    /// Cancel-safe at every await point: state is updated before each await, and an
    /// interrupted gap fill is simply retried on the next call.
    pub async fn next_event(&mut self) -> Option<ClientEvent> {
        loop {
            self.flush_acks().await;
            match self.delivery.pop() {
                Popped::Event(ev) => return Some(self.decrypted(ev.into())),
                Popped::AckOnly => continue,
                Popped::Empty => {}
            }
            // No connection and nothing queued: the caller has to reconnect.
            self.conn.as_ref()?;
            if self.resolve_unknown_senders().await || self.recover_from_backup().await {
                continue;
            }
            self.publish_if_low().await;
            if self.delivery.is_synced()
                && !self.outbox.is_empty()
                && self.drain.may_drain(self.now_ms())
            {
                if let Err(e) = self.drain_outbox(None).await {
                    tracing::debug!(error = %e, "outbox drain interrupted");
                }
                continue;
            }
            if self.delivery.has_gap() {
                if let Err(e) = self.fill_gaps().await {
                    // Transport trouble: the Closed event follows from the connection; the gap
                    // stays and is filled by replay after reconnecting.
                    tracing::debug!(error = %e, "gap fill interrupted");
                } else {
                    continue;
                }
            }
            let retry_at = match self.drain.retry_at() {
                Some(t) if !self.outbox.is_empty() => Some(self.instant_at(t)),
                _ => None,
            };
            let conn = self.conn.as_mut()?;
            let event = match retry_at {
                Some(t) => tokio::select! {
                    e = conn.next_event() => e,
                    () = tokio::time::sleep_until(t) => continue,
                },
                None => conn.next_event().await,
            };
            let Some(event) = event else {
                self.conn = None;
                continue;
            };
            self.on_event(event);
        }
    }

    /// Sends Acks for everything the app has taken (coalesced: one per conversation).
    pub async fn flush_acks(&mut self) {
        let Some(conn) = self.conn.as_ref() else {
            return;
        };
        let acks = self
            .e2e
            .as_mut()
            .map(E2e::take_inbox_ack)
            .unwrap_or_default();
        for ack in acks {
            if conn.send_message(&ack).await.is_err() {
                return; // not acknowledged: the inbox resends it, handled again idempotently
            }
        }
        for (conv, seq) in self.delivery.acks_due() {
            if conn.ack(conv, seq).await.is_err() {
                return; // closed: the next connection resumes from the same cursors
            }
            self.delivery.on_ack_sent(conv, seq);
        }
    }

    /// Flushes Acks and closes the connection gracefully.
    pub async fn close(mut self) {
        // Whatever the app has taken counts as seen.
        self.flush_acks().await;
        if let Some(conn) = self.conn.take() {
            conn.close().await;
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Deliver(m) => self.delivery.on_deliver(m),
            Event::SyncComplete => self.delivery.on_sync_complete(),
            Event::Notice(Notice::BacklogTruncated {
                conversation,
                from_seq,
                to_seq,
            }) => self
                .delivery
                .on_backlog_truncated(conversation, from_seq, to_seq),
            Event::Notice(n) => {
                if let Notice::GoingAway { retry_after_ms } = n {
                    self.reconnect.on_going_away(retry_after_ms);
                }
                self.push_event(ClientEvent::Notice(n))
            }
            Event::Error {
                code,
                message,
                fatal,
                ..
            } => self.push_event(ClientEvent::Error {
                code,
                message,
                fatal,
            }),
            Event::Other(ServerMessage::SendAck {
                conversation,
                seq,
                request_id,
                client_msg_id,
                message_id,
                timestamp_ms,
                duplicate,
            }) => {
                // The ack of a send whose caller gave up (timeout): the message is stored all
                // the same. Record its seq so it is not mistaken for a gap, take it out of the
                // outbox, and surface the ack so the app learns the send succeeded.
                let removed = self.outbox.on_acked(conversation, client_msg_id);
                self.log_store_failure(removed);
                self.delivery.on_own_send(conversation, seq);
                self.push_event(ClientEvent::Other(ServerMessage::SendAck {
                    request_id,
                    conversation,
                    client_msg_id,
                    seq,
                    message_id,
                    timestamp_ms,
                    duplicate,
                }));
            }
            Event::Other(m) => {
                if let Some(e2e) = self.e2e.as_mut() {
                    match e2e.on_server_message(&m) {
                        Ok((key_share, ready)) => {
                            let notices = e2e.take_notices();
                            for r in ready {
                                self.push_event(match r {
                                    Ok(m) => ClientEvent::Decrypted(m),
                                    Err(u) => ClientEvent::Undecryptable(u),
                                });
                            }
                            for n in notices {
                                self.push_event(ClientEvent::Crypto(n));
                            }
                            if key_share {
                                return;
                            }
                        }
                        // Not persisted, so a key share is not acknowledged: the inbox sends
                        // it again on the next connection.
                        Err(e) => tracing::warn!(error = %e, "crypto state not updated"),
                    }
                }
                self.push_event(ClientEvent::Other(m))
            }
            Event::Closed(reason) => {
                self.conn = None;
                self.reconnect.on_disconnected(self.now_ms());
                self.push_event(ClientEvent::Disconnected(reason));
            }
        }
    }

    /// Fetches missing ranges with History until no gap is left (or one proves unfillable).
    async fn fill_gaps(&mut self) -> Result<()> {
        while let Some(fetch) = self.delivery.next_gap_fetch() {
            let conn = self
                .conn
                .as_ref()
                .ok_or(Error::Closed(CloseReason::Local))?;
            let messages = match conn
                .history(
                    fetch.conversation,
                    fetch.before_seq,
                    fetch.after_seq,
                    fetch.limit,
                )
                .await
            {
                Ok(page) => page.messages,
                // The server refused (not a member any more, not found): the core skips the
                // range rather than block the conversation forever.
                Err(Error::Server { .. }) => Vec::new(),
                Err(e) => return Err(e),
            };
            self.delivery.on_history(fetch.conversation, messages);
        }
        Ok(())
    }

    /// A Megolm message becomes its plaintext, or `Undecryptable` with the reason.
    fn decrypted(&mut self, event: ClientEvent) -> ClientEvent {
        match (event, self.e2e.as_mut()) {
            (ClientEvent::Message(m), Some(e2e)) => match e2e.decrypt(&m) {
                Ok(plain) => ClientEvent::Message(plain),
                Err(u) => ClientEvent::Undecryptable(u),
            },
            (event, _) => event,
        }
    }

    /// Messages waiting for a key in a conversation whose backed-up keys were not fetched in
    /// the last [`BACKUP_REFETCH`]: fetch them (only when this device has the backup
    /// unlocked). True when something became readable.
    async fn recover_from_backup(&mut self) -> bool {
        let Some(e2e) = self.e2e.as_mut() else {
            return false;
        };
        if e2e.machine().backup_version().is_none() {
            return false;
        }
        let now = Instant::now();
        let due: Vec<ConversationId> = e2e
            .conversations_waiting()
            .into_iter()
            .filter(|c| {
                self.backup_fetched
                    .get(c)
                    .is_none_or(|t| now.duration_since(*t) >= BACKUP_REFETCH)
            })
            .collect();
        if due.is_empty() {
            return false;
        }
        let api = match crate::HttpApi::new(&self.config) {
            Ok(api) => api.with_token(&self.token),
            Err(_) => return false,
        };
        let mut ready = Vec::new();
        for conversation in due {
            self.backup_fetched.insert(conversation, now);
            match e2e.recover_from_backup(&api, conversation).await {
                Ok(r) => ready.extend(r),
                Err(e) => tracing::debug!(error = %e, "key backup not reachable"),
            }
        }
        let found = !ready.is_empty();
        for r in ready {
            self.push_event(match r {
                Ok(m) => ClientEvent::Decrypted(m),
                Err(u) => ClientEvent::Undecryptable(u),
            });
        }
        found
    }

    /// Tops up one-time keys when the server said claims left few (after an error, the next
    /// notice or the next connection's Welcome count tries again).
    async fn publish_if_low(&mut self) {
        let (Some(e2e), Some(conn)) = (self.e2e.as_mut(), self.conn.as_ref()) else {
            return;
        };
        if !e2e.one_time_keys_low() {
            return;
        }
        if let Err(e) = e2e.publish_if_low(conn).await {
            tracing::debug!(error = %e, "one-time key top-up failed; retried later");
        }
    }

    /// Looks up devices that sent keys or messages before we knew them; true when it did.
    async fn resolve_unknown_senders(&mut self) -> bool {
        let (Some(e2e), Some(conn)) = (self.e2e.as_mut(), self.conn.as_ref()) else {
            return false;
        };
        if !e2e.has_unknown_senders() {
            return false;
        }
        let ready = match e2e.resolve_unknown_senders(conn).await {
            Ok(ready) => ready,
            Err(e) => {
                tracing::debug!(error = %e, "device lookup failed; retried later");
                return false;
            }
        };
        let notices = e2e.take_notices();
        for r in ready {
            self.push_event(match r {
                Ok(m) => ClientEvent::Decrypted(m),
                Err(u) => ClientEvent::Undecryptable(u),
            });
        }
        for n in notices {
            self.push_event(ClientEvent::Crypto(n));
        }
        true
    }

    fn push_event(&mut self, event: ClientEvent) {
        // (Outbox outcomes and server events share the one queue the app reads.)
        self.delivery.push(event);
    }
}

/// Encrypts one outbox entry for its conversation's member devices (looking the members up
/// over HTTPS when no `Conversation` frame told us yet) and sends it with its client id.
async fn encrypt_and_send(
    e2e: &mut E2e,
    conn: &Connection,
    config: &Config,
    token: &str,
    entry: &PendingSend,
) -> Result<SendReceipt> {
    if e2e.members(entry.conversation).is_none() {
        let api = crate::HttpApi::new(config)?.with_token(token);
        for c in api.conversations().await? {
            e2e.set_members(
                c.conversation_id,
                c.members.iter().map(|m| m.user_id).collect(),
            );
        }
    }
    let (content_type, payload) = e2e
        .encrypt_outgoing(
            conn,
            entry.conversation,
            &entry.content_type,
            &entry.payload,
        )
        .await?;
    // The uploads a file message names, from the entry itself (so an outbox log written
    // before files existed reads as before, and a file message resent after a restart still
    // names its upload).
    conn.send_with_files(
        entry.conversation,
        entry.client_msg_id,
        &content_type,
        payload,
        file_refs(&entry.content_type, &entry.payload),
    )
    .await
}

/// The core's view of an SDK error, for its retry and rejection rules.
pub(crate) fn failure_of(e: &Error) -> Failure {
    match e {
        Error::Server {
            code,
            fatal,
            retry_after,
            ..
        } => Failure::Answered {
            code: *code,
            fatal: *fatal,
            retry_after_ms: retry_after.map(|d| d.as_millis() as u64),
        },
        Error::Closed(CloseReason::Fatal { code, .. }) => Failure::Coded(*code),
        Error::Api(f) => error_code_from_str(&f.code).map_or(Failure::Transient, Failure::Coded),
        Error::FrameTooLarge { .. } => Failure::FrameTooLarge,
        Error::Config(_) | Error::Tls(_) => Failure::Setup,
        _ => Failure::Transient,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_core::protocol::drain::rejection_code;

    /// The rules live in the core; this checks the SDK's errors reach them as before.
    #[test]
    fn permanent_and_transient_send_failures() {
        let server = |code, fatal| Error::server(code, String::new(), fatal, 0);
        let rejection = |e: &Error| rejection_code(&failure_of(e));
        let permanent = |e: &Error| connect_failure_is_permanent(&failure_of(e));
        for code in [
            ErrorCode::Forbidden,
            ErrorCode::NotFound,
            ErrorCode::InvalidArgument,
            ErrorCode::LimitExceeded,
            ErrorCode::FrameTooLarge,
        ] {
            assert_eq!(rejection(&server(code, false)), Some(code));
        }
        for code in [
            ErrorCode::RateLimited,
            ErrorCode::Internal,
            ErrorCode::ServerShutdown,
            ErrorCode::SlowConsumer,
            ErrorCode::TokenRevoked,
            ErrorCode::Unauthenticated,
        ] {
            assert_eq!(rejection(&server(code, false)), None, "{code:?}");
        }
        // A fatal error closes the connection: the message itself was not judged.
        assert_eq!(rejection(&server(ErrorCode::MalformedFrame, true)), None);
        assert_eq!(rejection(&Error::Timeout("x")), None);
        assert_eq!(rejection(&Error::Closed(CloseReason::ClosedByServer)), None);
        assert_eq!(
            rejection(&Error::FrameTooLarge { size: 2, max: 1 }),
            Some(ErrorCode::FrameTooLarge)
        );
        assert!(permanent(&server(ErrorCode::Unauthenticated, true)));
        assert!(!permanent(&Error::Timeout("Welcome")));
        assert!(
            permanent(&server(ErrorCode::Forbidden, true)),
            "a device bound elsewhere stays bound: no reconnect loop"
        );
        assert!(permanent(&server(ErrorCode::UnsupportedVersion, true)));
        assert!(permanent(&Error::Config("bad".into())));
        assert!(permanent(&Error::Closed(CloseReason::Fatal {
            code: ErrorCode::TokenRevoked,
            message: String::new(),
        })));
        assert!(!permanent(&Error::Closed(CloseReason::Fatal {
            code: ErrorCode::SlowConsumer,
            message: String::new(),
        })));
        let api = |code: &str| {
            Error::Api(crate::error::ApiFailure {
                status: 401,
                code: code.into(),
                message: String::new(),
                retry_after: None,
            })
        };
        assert!(permanent(&api("unauthenticated")));
        assert!(!permanent(&api("http_502")));
        // The server's retry-after reaches the rate-limit rule.
        assert_eq!(
            failure_of(&Error::server(
                ErrorCode::RateLimited,
                String::new(),
                false,
                250
            ))
            .retry_after_ms(),
            Some(250)
        );
    }
}
