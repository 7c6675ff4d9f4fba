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
//! Design room for the offline outbox (later): [`Client::send_with_id`] takes the idempotency key
//! from the caller, so an outbox can persist `(client_msg_id, payload)` before sending and retry
//! after reconnects without creating duplicates.

use std::collections::{HashMap, VecDeque};

use tern_wire::ids::{ConversationId, DeviceId};
use tern_wire::msg::{Cursor, ErrorCode, Message, Notice, ServerMessage};

use crate::config::Config;
use crate::connection::{Connection, Event, HistoryPage, SendReceipt};
use crate::error::{CloseReason, Error, Result};
use crate::sync::{Advance, SyncState};

/// Page size for gap filling.
const GAP_FETCH_LIMIT: u64 = 200;

/// Why a range of messages will not be surfaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// The server skipped them on resume (too far behind); fetch with history if wanted.
    BacklogTruncated,
    /// History had nothing for the range (or refused it, e.g. no longer a member).
    Unavailable,
}

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
}

/// Queued output: an optional event plus the cursor it lets us acknowledge once the app has
/// taken it.
struct Ready {
    event: Option<ClientEvent>,
    ack: Option<(ConversationId, u64)>,
}

/// A resumable session for one user and device.
pub struct Client {
    config: Config,
    token: String,
    device: DeviceId,
    conn: Option<Connection>,
    sync: SyncState,
    ready: VecDeque<Ready>,
    /// Highest seq per conversation the app has taken (what persisted cursors should be).
    app_cursor: HashMap<ConversationId, u64>,
    /// Highest seq per conversation acknowledged to the server.
    acked: HashMap<ConversationId, u64>,
}

impl Client {
    /// Connects and resumes after `cursors` (what the app persisted; may be empty).
    pub async fn connect(
        config: Config,
        token: impl Into<String>,
        device: DeviceId,
        cursors: &[Cursor],
    ) -> Result<Client> {
        let mut client = Client {
            config,
            token: token.into(),
            device,
            conn: None,
            sync: SyncState::with_cursors(cursors),
            ready: VecDeque::new(),
            app_cursor: cursors.iter().map(|c| (c.conversation, c.seq)).collect(),
            acked: cursors.iter().map(|c| (c.conversation, c.seq)).collect(),
        };
        client.reconnect().await?;
        Ok(client)
    }

    /// (Re)connects, resuming after the cursors of everything seen so far. Messages already
    /// queued for the app stay queued; replayed copies are de-duplicated.
    pub async fn reconnect(&mut self) -> Result<()> {
        self.flush_acks().await;
        if let Some(old) = self.conn.take() {
            old.close().await;
        }
        let cursors = self.sync.cursors();
        let conn = Connection::connect(&self.config, &self.token, self.device, &cursors).await?;
        self.sync.on_connect();
        self.conn = Some(conn);
        Ok(())
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
        let mut v: Vec<Cursor> = self
            .app_cursor
            .iter()
            .map(|(c, s)| Cursor {
                conversation: *c,
                seq: *s,
            })
            .collect();
        v.sort_by_key(|c| c.conversation);
        v
    }

    /// Sends with a fresh idempotency key; see [`Client::send_with_id`].
    pub async fn send(
        &mut self,
        conversation: ConversationId,
        content_type: &str,
        payload: Vec<u8>,
    ) -> Result<SendReceipt> {
        let client_msg_id = uuid::Uuid::now_v7().as_u128();
        self.send_with_id(conversation, client_msg_id, content_type, payload)
            .await
    }

    /// Sends and waits for the durable `SendAck`. Our own messages are not delivered back to
    /// this device; their seqs are recorded so they do not look like gaps.
    pub async fn send_with_id(
        &mut self,
        conversation: ConversationId,
        client_msg_id: u128,
        content_type: &str,
        payload: Vec<u8>,
    ) -> Result<SendReceipt> {
        let conn = self
            .conn
            .as_ref()
            .ok_or(Error::Closed(CloseReason::Local))?;
        let receipt = conn
            .send(conversation, client_msg_id, content_type, payload)
            .await?;
        let adv = self.sync.on_own_send(conversation, receipt.seq);
        self.push_advance(conversation, adv);
        Ok(receipt)
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

    /// The next event. `None` when there is no connection and nothing queued: call
    /// [`Client::reconnect`].
    ///
    /// Cancel-safe at every await point: state is updated before each await, and an
    /// interrupted gap fill is simply retried on the next call.
    pub async fn next_event(&mut self) -> Option<ClientEvent> {
        loop {
            self.flush_acks().await;
            if let Some(r) = self.ready.pop_front() {
                if let Some((conv, seq)) = r.ack {
                    let e = self.app_cursor.entry(conv).or_insert(0);
                    *e = (*e).max(seq);
                }
                match r.event {
                    Some(ev) => return Some(ev),
                    None => continue,
                }
            }
            // No connection and nothing queued: the caller has to reconnect.
            self.conn.as_ref()?;
            if self.sync.next_gap().is_some() {
                if let Err(e) = self.fill_gaps().await {
                    // Transport trouble: the Closed event follows from the connection; the gap
                    // stays and is filled by replay after reconnecting.
                    tracing::debug!(error = %e, "gap fill interrupted");
                } else {
                    continue;
                }
            }
            let conn = self.conn.as_mut()?;
            let Some(event) = conn.next_event().await else {
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
        for (conv, seq) in self.app_cursor.iter() {
            let done = self.acked.get(conv).copied().unwrap_or(0);
            if *seq > done {
                if conn.ack(*conv, *seq).await.is_err() {
                    return; // closed: the next connection resumes from the same cursors
                }
                self.acked.insert(*conv, *seq);
            }
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
            Event::Deliver(m) => {
                let conv = m.conversation;
                let adv = self.sync.on_deliver(m);
                self.push_advance(conv, adv);
            }
            Event::SyncComplete => {
                for (conv, adv) in self.sync.on_sync_complete() {
                    self.push_advance(conv, adv);
                }
                self.push_event(ClientEvent::SyncComplete);
            }
            Event::Notice(Notice::BacklogTruncated {
                conversation,
                from_seq,
                to_seq,
            }) => {
                let adv = self.sync.skip_to(conversation, to_seq);
                self.push_event(ClientEvent::Skipped {
                    conversation,
                    from_seq,
                    to_seq,
                    reason: SkipReason::BacklogTruncated,
                });
                self.push_advance(conversation, adv);
            }
            Event::Notice(n) => self.push_event(ClientEvent::Notice(n)),
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
                // the same. Record its seq so it is not mistaken for a gap, and surface the ack
                // so the app (later: the outbox) learns the send succeeded.
                let adv = self.sync.on_own_send(conversation, seq);
                self.push_advance(conversation, adv);
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
            Event::Other(m) => self.push_event(ClientEvent::Other(m)),
            Event::Closed(reason) => {
                self.conn = None;
                self.push_event(ClientEvent::Disconnected(reason));
            }
        }
    }

    /// Fetches missing ranges with History until no gap is left (or one proves unfillable).
    async fn fill_gaps(&mut self) -> Result<()> {
        while let Some(gap) = self.sync.next_gap() {
            let conn = self
                .conn
                .as_ref()
                .ok_or(Error::Closed(CloseReason::Local))?;
            let limit = gap.len().clamp(1, GAP_FETCH_LIMIT) as u32;
            let page = match conn
                .history(gap.conversation, gap.before, gap.after, limit)
                .await
            {
                Ok(page) => page,
                // The server refused (not a member any more, not found): skip rather than
                // block the conversation forever.
                Err(Error::Server { .. }) => HistoryPage {
                    conversation: gap.conversation,
                    messages: vec![],
                    has_more: false,
                },
                Err(e) => return Err(e),
            };
            let (adv, progressed) = self.sync.on_history(gap.conversation, page.messages);
            self.push_advance(gap.conversation, adv);
            if !progressed && let Some(((from, to), adv)) = self.sync.skip_gap(gap.conversation) {
                self.push_event(ClientEvent::Skipped {
                    conversation: gap.conversation,
                    from_seq: from,
                    to_seq: to,
                    reason: SkipReason::Unavailable,
                });
                self.push_advance(gap.conversation, adv);
            }
        }
        Ok(())
    }

    fn push_event(&mut self, event: ClientEvent) {
        self.ready.push_back(Ready {
            event: Some(event),
            ack: None,
        });
    }

    /// Queues ready messages; the cursor they complete is acknowledged once the app took them.
    fn push_advance(&mut self, conv: ConversationId, adv: Advance) {
        let Some(cursor) = adv.cursor else { return };
        let n = adv.messages.len();
        for (i, m) in adv.messages.into_iter().enumerate() {
            let ack = if i + 1 == n { cursor } else { m.seq };
            self.ready.push_back(Ready {
                event: Some(ClientEvent::Message(m)),
                ack: Some((conv, ack)),
            });
        }
        if n == 0 {
            // Cursor moved over own sends or skipped seqs only: nothing to show, still ackable.
            self.ready.push_back(Ready {
                event: None,
                ack: Some((conv, cursor)),
            });
        }
    }
}
