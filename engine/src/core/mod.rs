//! The sans-IO engine core: sessions, per-conversation sequencers, group commit and fan-out.
//!
//! [`EngineCore`] owns no sockets, no disk and no clock. The driver feeds it [`Input`]s (with
//! the current time) and executes the [`Action`]s it returns: load a conversation, look up a
//! client message id, commit a batch, send a frame to a connection, close a connection. This is
//! what lets the simulation tests run the exact production logic with seeded schedules and
//! injected crashes.
//!
//! Invariants (asserted in code):
//! - each conversation has one sequencer; `seq` is gapless and strictly increasing;
//! - a message is delivered and acknowledged only after the batch holding it is durable;
//! - at most one commit is in flight; everything that arrives meanwhile joins the next batch
//!   (group commit), so one fsync covers many messages;
//! - a `(conversation, sender, client_msg_id)` triple is sequenced at most once: retries while
//!   the first copy is queued, in flight or stored are answered with the original seq;
//! - a device's sends to one conversation are sequenced in the order they arrived.

mod conversation;

use std::collections::HashMap;
use std::sync::Arc;

use tern_wire::ids::{ConversationId, DeviceId, MessageId, UserId};
use tern_wire::msg::{DeliveryMark, ErrorCode, FileRef, Message, ServerMessage};

use crate::limits::{EngineLimits, InvalidLimits};
use crate::rate::{BucketMap, TokenBucket};
use crate::store::{CommitBatch, CursorUpdate};
use conversation::{ConversationState, HeadDecision, Intake, Loaded, Original};

/// Identifies one live connection (a device session) within this engine.
pub type ConnId = u64;
/// Identifies one commit batch handed to the driver.
pub type BatchId = u64;

/// A send request as it arrives from a connection, already decoded and size-checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendRequest {
    pub conn: ConnId,
    pub request_id: u64,
    pub conversation: ConversationId,
    pub client_msg_id: u128,
    pub content_type: String,
    pub payload: Vec<u8>,
    pub files: Vec<FileRef>,
}

/// What the conversation looks like when the driver has loaded it from storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationSnapshot {
    pub members: Vec<UserId>,
    pub last_seq: u64,
    /// `timestamp_ms` of the newest stored message (0: none). Messages sequenced from now on
    /// are never stamped earlier, whatever the clock says after a restart or a shard move:
    /// history by time relies on timestamps being non-decreasing per conversation.
    pub last_timestamp_ms: u64,
    /// Stored messages from the `landed_from` seq the load asked for, ascending: written by a
    /// commit that reported failure, so never delivered live.
    pub landed: Vec<Message>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// An authenticated device connected. `token_hash` lets logout find its connections.
    Connected {
        conn: ConnId,
        user: UserId,
        device: DeviceId,
        token_hash: [u8; 32],
    },
    Disconnected {
        conn: ConnId,
    },
    Send(SendRequest),
    /// The device has everything up to `seq` in `conversation`.
    Ack {
        conn: ConnId,
        conversation: ConversationId,
        seq: u64,
    },
    /// Answer to [`Action::Load`]; `None` when the conversation does not exist.
    Loaded {
        conversation: ConversationId,
        snapshot: Option<ConversationSnapshot>,
    },
    /// Loading failed (storage error): pending sends get an error, the next send retries.
    LoadFailed {
        conversation: ConversationId,
    },
    /// Answer to [`Action::Lookup`]: the message stored earlier under that client id, if any.
    LookedUp {
        conversation: ConversationId,
        sender: UserId,
        client_msg_id: u128,
        found: Option<Message>,
    },
    /// Answer to [`Action::Commit`].
    Committed {
        batch: BatchId,
        ok: bool,
    },
    /// The stored member list changed (already durable): fan-out and checks use it from now on.
    MembersChanged {
        conversation: ConversationId,
        members: Vec<UserId>,
    },
    /// Deliver an event to every online device of these users.
    Notify {
        users: Vec<UserId>,
        message: Arc<ServerMessage>,
    },
    /// Deliver each message to every online connection of its device (key-share inbox pushes).
    NotifyDevices {
        messages: Vec<(DeviceId, Arc<ServerMessage>)>,
    },
    /// A token was revoked: close every connection authenticated with it.
    TokenRevoked {
        token_hash: [u8; 32],
    },
    /// Every token of the user was revoked ("log out everywhere"): close all their connections.
    UserRevoked {
        user: UserId,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Load {
        conversation: ConversationId,
        /// Read the stored messages from this seq on into the snapshot's `landed`: a failed
        /// commit may have reached the disk anyway (e.g. the fsync failed after the write).
        landed_from: Option<u64>,
    },
    Lookup {
        conversation: ConversationId,
        sender: UserId,
        client_msg_id: u128,
    },
    Commit {
        batch: BatchId,
        data: CommitBatch,
    },
    /// Send one message to each listed connection (encode once, share the bytes).
    Deliver {
        conns: Vec<ConnId>,
        message: Arc<ServerMessage>,
    },
    /// Send an error (fatal or not) or other reply to one connection.
    Reply {
        conn: ConnId,
        message: ServerMessage,
    },
    /// Close the connection after sending `code`/`reason` as a fatal error.
    Close {
        conn: ConnId,
        code: ErrorCode,
        reason: String,
    },
}

#[derive(Debug, Clone)]
struct ConnInfo {
    user: UserId,
    device: DeviceId,
    token_hash: [u8; 32],
}

/// A message waiting for its batch to become durable, with who to acknowledge.
#[derive(Debug, Clone)]
struct PendingAck {
    conn: ConnId,
    request_id: u64,
}

#[derive(Debug, Default)]
struct Batch {
    messages: Vec<Message>,
    /// `acks[i]` are the connections waiting for `messages[i]` (the original and any retries).
    acks: Vec<Vec<PendingAck>>,
    cursors: Vec<CursorUpdate>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.messages.is_empty() && self.cursors.is_empty()
    }
}

pub struct EngineCore {
    limits: EngineLimits,
    conns: HashMap<ConnId, ConnInfo>,
    user_conns: HashMap<UserId, Vec<ConnId>>,
    conversations: HashMap<ConversationId, ConversationState>,
    next_batch: Batch,
    in_flight: Option<(BatchId, Batch)>,
    next_batch_id: BatchId,
    /// Random bits for message ids come from the driver's seed so simulations reproduce.
    rng_state: u64,
    last_timestamp_ms: u64,
    /// Conversations dropped after a failed commit → the first seq of that commit. The next load
    /// delivers whatever of it reached the disk (nothing acknowledged or delivered it).
    unconfirmed: HashMap<ConversationId, u64>,
    /// Send rate limit per user (of the conversations this core owns).
    user_sends: BucketMap<UserId>,
}

impl EngineCore {
    pub fn new(limits: EngineLimits, seed: u64) -> Result<Self, InvalidLimits> {
        limits.validate()?;
        let user_sends = BucketMap::new(limits.user_sends, limits.max_user_buckets);
        Ok(EngineCore {
            user_sends,
            limits,
            conns: HashMap::new(),
            user_conns: HashMap::new(),
            conversations: HashMap::new(),
            next_batch: Batch::default(),
            in_flight: None,
            next_batch_id: 1,
            rng_state: seed | 1,
            last_timestamp_ms: 0,
            unconfirmed: HashMap::new(),
        })
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Conversations this core holds (loading or loaded).
    pub fn conversation_count(&self) -> usize {
        self.conversations.len()
    }

    /// Messages sequenced but not yet durable (queued or in flight).
    pub fn uncommitted_messages(&self) -> usize {
        self.next_batch.messages.len()
            + self.in_flight.as_ref().map_or(0, |(_, b)| b.messages.len())
    }

    pub fn is_connected(&self, conn: ConnId) -> bool {
        self.conns.contains_key(&conn)
    }

    /// Feeds one input at time `now_ms` (Unix milliseconds) and returns what to do.
    pub fn handle(&mut self, input: Input, now_ms: u64) -> Vec<Action> {
        let mut out = Vec::new();
        self.last_timestamp_ms = self.last_timestamp_ms.max(now_ms);
        match input {
            Input::Connected {
                conn,
                user,
                device,
                token_hash,
            } => {
                let previous = self.conns.insert(
                    conn,
                    ConnInfo {
                        user,
                        device,
                        token_hash,
                    },
                );
                assert!(
                    previous.is_none(),
                    "connection id {conn} reused while connected"
                );
                self.user_conns.entry(user).or_default().push(conn);
            }
            Input::Disconnected { conn } => self.remove_conn(conn),
            Input::Send(req) => self.on_send(req, &mut out),
            Input::Ack {
                conn,
                conversation,
                seq,
            } => self.on_ack(conn, conversation, seq, &mut out),
            Input::Loaded {
                conversation,
                snapshot,
            } => self.on_loaded(conversation, snapshot, &mut out),
            Input::LoadFailed { conversation } => {
                if let Some(ConversationState::Loading { waiting, .. }) =
                    self.conversations.remove(&conversation)
                {
                    for req in waiting {
                        self.reply_error(
                            &mut out,
                            &req,
                            ErrorCode::Internal,
                            "storage unavailable, retry",
                        );
                    }
                }
            }
            Input::LookedUp {
                conversation,
                sender,
                client_msg_id,
                found,
            } => {
                if let Some(ConversationState::Ready(conv)) =
                    self.conversations.get_mut(&conversation)
                {
                    conv.lookup_answered((sender, client_msg_id), found.as_ref().map(Original::of));
                }
                self.drain_intake(conversation, &mut out);
            }
            Input::Committed { batch, ok } => self.on_committed(batch, ok, &mut out),
            Input::MembersChanged {
                conversation,
                members,
            } => match self.conversations.get_mut(&conversation) {
                Some(ConversationState::Ready(conv)) => conv.set_members(members),
                Some(ConversationState::Loading { reload, .. }) => *reload = true,
                None => {}
            },
            Input::Notify { users, message } => {
                let conns: Vec<ConnId> = users.iter().flat_map(|u| self.conns_of(*u)).collect();
                if !conns.is_empty() {
                    out.push(Action::Deliver { conns, message });
                }
            }
            Input::NotifyDevices { messages } => {
                let mut by_device: HashMap<DeviceId, Vec<ConnId>> = HashMap::new();
                let wanted: std::collections::HashSet<DeviceId> =
                    messages.iter().map(|(d, _)| *d).collect();
                for (id, info) in &self.conns {
                    if wanted.contains(&info.device) {
                        by_device.entry(info.device).or_default().push(*id);
                    }
                }
                for (device, message) in messages {
                    if let Some(conns) = by_device.get(&device) {
                        out.push(Action::Deliver {
                            conns: conns.clone(),
                            message,
                        });
                    }
                }
            }
            Input::TokenRevoked { token_hash } => {
                let revoked: Vec<ConnId> = self
                    .conns
                    .iter()
                    .filter(|(_, c)| c.token_hash == token_hash)
                    .map(|(id, _)| *id)
                    .collect();
                for conn in revoked {
                    self.remove_conn(conn);
                    out.push(Action::Close {
                        conn,
                        code: ErrorCode::TokenRevoked,
                        reason: "session ended".into(),
                    });
                }
            }
            Input::UserRevoked { user } => {
                for conn in self.conns_of(user) {
                    self.remove_conn(conn);
                    out.push(Action::Close {
                        conn,
                        code: ErrorCode::TokenRevoked,
                        reason: "logged out everywhere".into(),
                    });
                }
            }
        }
        self.maybe_commit(&mut out);
        out
    }

    /// Stores the device's cursor (with the next commit) and tells the senders of the messages
    /// it newly covers that they are delivered. Only a loaded conversation knows its members
    /// and senders; for others the mark reaches senders when they ask (`GetDelivered`).
    fn on_ack(
        &mut self,
        conn: ConnId,
        conversation: ConversationId,
        seq: u64,
        out: &mut Vec<Action>,
    ) {
        let Some(info) = self.conns.get(&conn) else {
            return;
        };
        let user = info.user;
        self.next_batch.cursors.push(CursorUpdate {
            user,
            device: info.device,
            conversation,
            seq,
        });
        let Some(ConversationState::Ready(conv)) = self.conversations.get_mut(&conversation) else {
            return;
        };
        let Some(tell) = conv.raise_mark(user, seq) else {
            return;
        };
        let seq = seq.min(conv.committed_seq);
        let conns: Vec<ConnId> = tell.iter().flat_map(|u| self.conns_of(*u)).collect();
        if !conns.is_empty() {
            out.push(Action::Deliver {
                conns,
                message: Arc::new(ServerMessage::Delivered {
                    request_id: 0,
                    conversation,
                    marks: vec![DeliveryMark { user, seq }],
                }),
            });
        }
    }

    fn conns_of(&self, user: UserId) -> Vec<ConnId> {
        self.user_conns.get(&user).cloned().unwrap_or_default()
    }

    fn remove_conn(&mut self, conn: ConnId) {
        if let Some(info) = self.conns.remove(&conn)
            && let Some(list) = self.user_conns.get_mut(&info.user)
        {
            list.retain(|c| *c != conn);
            if list.is_empty() {
                self.user_conns.remove(&info.user);
            }
        }
    }

    fn reply_error(
        &self,
        out: &mut Vec<Action>,
        req: &SendRequest,
        code: ErrorCode,
        message: &str,
    ) {
        out.push(Action::Reply {
            conn: req.conn,
            message: ServerMessage::error(req.request_id, code, message, false),
        });
    }

    fn on_send(&mut self, req: SendRequest, out: &mut Vec<Action>) {
        let Some(info) = self.conns.get(&req.conn) else {
            return; // the connection went away before its frame was processed
        };
        let sender = info.user;
        if req.payload.len() > self.limits.max_payload_bytes {
            return self.reply_error(out, &req, ErrorCode::LimitExceeded, "payload too large");
        }
        if req.content_type.len() > self.limits.max_content_type_bytes {
            return self.reply_error(
                out,
                &req,
                ErrorCode::InvalidArgument,
                "content type too long",
            );
        }
        if req.files.len() > self.limits.max_files_per_message {
            return self.reply_error(
                out,
                &req,
                ErrorCode::LimitExceeded,
                "too many file references",
            );
        }
        // Refused before anything is queued or loaded; the conversation's own limit is checked
        // once membership is known (a non-member must not drain it).
        let now = self.last_timestamp_ms;
        if let Err(retry) = self.user_sends.try_take(sender, now, 1) {
            out.push(Action::Reply {
                conn: req.conn,
                message: ServerMessage::rate_limited(
                    req.request_id,
                    "too many messages from this user, retry later",
                    retry.ms,
                ),
            });
            return;
        }
        let conversation = req.conversation;
        match self.conversations.get_mut(&conversation) {
            None => {
                self.conversations.insert(
                    conversation,
                    ConversationState::Loading {
                        waiting: vec![req],
                        reload: false,
                    },
                );
                out.push(Action::Load {
                    conversation,
                    landed_from: self.unconfirmed.get(&conversation).copied(),
                });
            }
            Some(ConversationState::Loading { waiting, .. }) => {
                if waiting.len() >= self.limits.max_queued_sends_per_conversation {
                    return self.reply_error(
                        out,
                        &req,
                        ErrorCode::RateLimited,
                        "conversation is busy, retry",
                    );
                }
                waiting.push(req);
            }
            Some(ConversationState::Ready(conv)) => {
                if !conv.is_member(&sender) {
                    return self.reply_error(
                        out,
                        &req,
                        ErrorCode::NotFound,
                        "no such conversation",
                    );
                }
                if conv.intake.len() >= self.limits.max_queued_sends_per_conversation {
                    return self.reply_error(
                        out,
                        &req,
                        ErrorCode::RateLimited,
                        "conversation is busy, retry",
                    );
                }
                if let Err(retry) = conv.sends.try_take(now, 1) {
                    self.user_sends.refund(sender, 1);
                    out.push(conversation_rate_limited(&req, retry.ms));
                    return;
                }
                conv.intake.push_back(Intake::new(req, sender));
                self.drain_intake(conversation, out);
            }
        }
    }

    fn on_loaded(
        &mut self,
        conversation: ConversationId,
        snapshot: Option<ConversationSnapshot>,
        out: &mut Vec<Action>,
    ) {
        let Some(ConversationState::Loading { waiting, reload }) =
            self.conversations.remove(&conversation)
        else {
            return;
        };
        if reload {
            // Members changed while this snapshot was being read: it may be stale, read again.
            self.conversations.insert(
                conversation,
                ConversationState::Loading {
                    waiting,
                    reload: false,
                },
            );
            out.push(Action::Load {
                conversation,
                landed_from: self.unconfirmed.get(&conversation).copied(),
            });
            return;
        }
        let landed_from = self.unconfirmed.remove(&conversation);
        let Some(snapshot) = snapshot else {
            for req in waiting {
                self.reply_error(out, &req, ErrorCode::NotFound, "no such conversation");
            }
            return;
        };
        let now = self.last_timestamp_ms;
        let mut conv = Loaded::new(
            snapshot.members,
            snapshot.last_seq,
            self.limits.dedupe_window,
            TokenBucket::new(self.limits.conversation_sends, now),
        );
        conv.last_timestamp_ms = snapshot.last_timestamp_ms;
        // Delivered before anything sequenced from now on, so every device sees them in order.
        for message in snapshot.landed {
            let Some(from) = landed_from else { break };
            assert!(
                message.seq >= from && message.seq <= snapshot.last_seq,
                "landed messages lie in the range that was asked for"
            );
            let key = (message.sender_user, message.client_msg_id);
            conv.remember(key, Original::of(&message));
            conv.record_sender(message.seq, message.sender_user);
            let recipients: Vec<ConnId> = conv
                .members
                .iter()
                .flat_map(|u| self.user_conns.get(u).into_iter().flatten().copied())
                .collect();
            if !recipients.is_empty() {
                out.push(Action::Deliver {
                    conns: recipients,
                    message: Arc::new(ServerMessage::Deliver { message }),
                });
            }
        }
        for req in waiting {
            let Some(info) = self.conns.get(&req.conn) else {
                continue;
            };
            if !conv.is_member(&info.user) {
                self.reply_error(out, &req, ErrorCode::NotFound, "no such conversation");
                continue;
            }
            if let Err(retry) = conv.sends.try_take(now, 1) {
                self.user_sends.refund(info.user, 1);
                out.push(conversation_rate_limited(&req, retry.ms));
                continue;
            }
            conv.intake.push_back(Intake::new(req, info.user));
        }
        self.conversations
            .insert(conversation, ConversationState::Ready(Box::new(conv)));
        self.drain_intake(conversation, out);
    }

    /// Sequences queued sends in arrival order, as far as duplicate checks allow.
    fn drain_intake(&mut self, conversation: ConversationId, out: &mut Vec<Action>) {
        let Some(ConversationState::Ready(conv)) = self.conversations.get_mut(&conversation) else {
            return;
        };
        // Store lookups for every queued send memory cannot answer run in parallel.
        for (sender, client_msg_id) in conv.start_lookups() {
            out.push(Action::Lookup {
                conversation,
                sender,
                client_msg_id,
            });
        }
        loop {
            let decision = conv.decide_head();
            if matches!(decision, HeadDecision::Wait) {
                // Duplicates acknowledged above re-entered the window and may have evicted the
                // keys of sends still queued: those need a store lookup now, or they wait forever.
                for (sender, client_msg_id) in conv.start_lookups() {
                    out.push(Action::Lookup {
                        conversation,
                        sender,
                        client_msg_id,
                    });
                }
                break;
            }
            let Some(item) = conv.intake.pop_front() else {
                break;
            };
            let key = item.key();
            let ack = PendingAck {
                conn: item.request.conn,
                request_id: item.request.request_id,
            };
            match decision {
                HeadDecision::Wait => unreachable!("handled above"),
                HeadDecision::Duplicate(original) => {
                    conv.remember(key, original);
                    out.push(Action::Reply {
                        conn: ack.conn,
                        message: send_ack(ack.request_id, conversation, key.1, original, true),
                    });
                }
                HeadDecision::AttachTo(seq) => {
                    attach_ack(
                        &mut self.next_batch,
                        self.in_flight.as_mut(),
                        conversation,
                        seq,
                        ack,
                    );
                }
                HeadDecision::New => {
                    let Some(info) = self.conns.get(&item.request.conn) else {
                        continue; // the sender vanished before sequencing: nothing was promised
                    };
                    if !conv.is_member(&item.sender) {
                        // Removed while the send was queued.
                        out.push(Action::Reply {
                            conn: ack.conn,
                            message: ServerMessage::error(
                                ack.request_id,
                                ErrorCode::NotFound,
                                "no such conversation",
                                false,
                            ),
                        });
                        continue;
                    }
                    let seq = conv.next_seq;
                    conv.next_seq += 1;
                    // Non-decreasing per conversation (see `Loaded::last_timestamp_ms`).
                    let timestamp_ms = self.last_timestamp_ms.max(conv.last_timestamp_ms);
                    conv.last_timestamp_ms = timestamp_ms;
                    self.rng_state = splitmix64(self.rng_state);
                    let message = Message {
                        conversation,
                        seq,
                        message_id: message_id_v7(timestamp_ms, self.rng_state),
                        sender_user: item.sender,
                        sender_device: info.device,
                        client_msg_id: item.request.client_msg_id,
                        timestamp_ms,
                        content_type: item.request.content_type,
                        payload: item.request.payload,
                        files: item.request.files,
                    };
                    conv.uncommitted.insert(key, seq);
                    self.next_batch.messages.push(message);
                    self.next_batch.acks.push(vec![ack]);
                }
            }
        }
    }

    fn maybe_commit(&mut self, out: &mut Vec<Action>) {
        if self.in_flight.is_some() || self.next_batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.next_batch);
        let id = self.next_batch_id;
        self.next_batch_id += 1;
        let data = CommitBatch {
            messages: batch.messages.clone(),
            cursors: batch.cursors.clone(),
        };
        self.in_flight = Some((id, batch));
        out.push(Action::Commit { batch: id, data });
    }

    fn on_committed(&mut self, id: BatchId, ok: bool, out: &mut Vec<Action>) {
        let Some((in_flight_id, batch)) = self.in_flight.take() else {
            panic!("commit result for batch {id} with no batch in flight");
        };
        assert_eq!(
            in_flight_id, id,
            "commit results must arrive for the batch in flight"
        );
        if !ok {
            self.on_commit_failed(batch, out);
            return;
        }
        for (message, acks) in batch.messages.into_iter().zip(batch.acks) {
            let conversation = message.conversation;
            let Some(ConversationState::Ready(conv)) = self.conversations.get_mut(&conversation)
            else {
                panic!("committed message for conversation {conversation} that is not loaded");
            };
            let key = (message.sender_user, message.client_msg_id);
            conv.uncommitted.remove(&key);
            assert_eq!(
                message.seq,
                conv.committed_seq + 1,
                "seq must be gapless and committed in order"
            );
            conv.committed_seq = message.seq;
            let original = Original::of(&message);
            for (i, ack) in acks.iter().enumerate() {
                out.push(Action::Reply {
                    conn: ack.conn,
                    message: send_ack(ack.request_id, conversation, key.1, original, i > 0),
                });
            }
            let originator = acks.first().map(|a| a.conn);
            let recipients: Vec<ConnId> = conv
                .members
                .iter()
                .flat_map(|u| self.user_conns.get(u).into_iter().flatten().copied())
                .filter(|c| Some(*c) != originator)
                .collect();
            conv.remember(key, original);
            conv.record_sender(message.seq, message.sender_user);
            if !recipients.is_empty() {
                out.push(Action::Deliver {
                    conns: recipients,
                    message: Arc::new(ServerMessage::Deliver { message }),
                });
            }
        }
    }

    /// Nothing in a failed batch was acknowledged or delivered, so its seqs can be handed out
    /// again: drop the affected conversations (reloaded from storage on next use) and tell the
    /// senders to retry. Retries are idempotent if a part of the batch did reach the disk.
    fn on_commit_failed(&mut self, batch: Batch, out: &mut Vec<Action>) {
        let mut affected: Vec<ConversationId> =
            batch.messages.iter().map(|m| m.conversation).collect();
        // Queued messages of those conversations were sequenced after the failed ones.
        let queued = std::mem::take(&mut self.next_batch);
        let mut keep = Batch {
            cursors: queued.cursors,
            ..Batch::default()
        };
        let mut failed_acks: Vec<PendingAck> = batch.acks.into_iter().flatten().collect();
        for (message, acks) in queued.messages.into_iter().zip(queued.acks) {
            if affected.contains(&message.conversation) {
                failed_acks.extend(acks);
            } else {
                keep.messages.push(message);
                keep.acks.push(acks);
            }
        }
        // Cursors of the failed batch are retried with the next one (they only move forward).
        keep.cursors.extend(batch.cursors);
        self.next_batch = keep;
        for ack in failed_acks {
            out.push(Action::Reply {
                conn: ack.conn,
                message: ServerMessage::error(
                    ack.request_id,
                    ErrorCode::Internal,
                    "storage write failed, retry",
                    false,
                ),
            });
        }
        affected.sort();
        affected.dedup();
        for conversation in affected {
            if let Some(ConversationState::Ready(conv)) = self.conversations.remove(&conversation) {
                let first = conv.committed_seq + 1;
                let entry = self.unconfirmed.entry(conversation).or_insert(first);
                *entry = (*entry).min(first);
                for item in conv.intake {
                    out.push(Action::Reply {
                        conn: item.request.conn,
                        message: ServerMessage::error(
                            item.request.request_id,
                            ErrorCode::Internal,
                            "storage write failed, retry",
                            false,
                        ),
                    });
                }
            }
        }
    }
}

fn conversation_rate_limited(req: &SendRequest, retry_after_ms: u32) -> Action {
    Action::Reply {
        conn: req.conn,
        message: ServerMessage::rate_limited(
            req.request_id,
            "too many messages in this conversation, retry later",
            retry_after_ms,
        ),
    }
}

fn send_ack(
    request_id: u64,
    conversation: ConversationId,
    client_msg_id: u128,
    original: Original,
    duplicate: bool,
) -> ServerMessage {
    ServerMessage::SendAck {
        request_id,
        conversation,
        client_msg_id,
        seq: original.seq,
        message_id: original.message_id,
        timestamp_ms: original.timestamp_ms,
        duplicate,
    }
}

/// Adds a retry's acknowledgement to the batch holding `seq` (queued or in flight).
fn attach_ack(
    next: &mut Batch,
    in_flight: Option<&mut (BatchId, Batch)>,
    conversation: ConversationId,
    seq: u64,
    ack: PendingAck,
) {
    let batches = std::iter::once(next).chain(in_flight.map(|(_, b)| b));
    for batch in batches {
        if let Some(i) = batch
            .messages
            .iter()
            .position(|m| m.conversation == conversation && m.seq == seq)
        {
            batch.acks[i].push(ack);
            return;
        }
    }
    panic!("uncommitted seq {seq} of {conversation} is in no batch");
}

fn splitmix64(state: u64) -> u64 {
    let mut z = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// UUIDv7 layout: 48-bit Unix milliseconds, version 7, 74 random bits, RFC 4122 variant.
fn message_id_v7(unix_ms: u64, random: u64) -> MessageId {
    let random2 = splitmix64(random);
    let mut v: u128 = ((unix_ms as u128) & 0xFFFF_FFFF_FFFF) << 80;
    v |= 0x7u128 << 76;
    v |= ((random as u128) & 0xFFF) << 64;
    v |= 0b10u128 << 62;
    v |= (random2 as u128) & 0x3FFF_FFFF_FFFF_FFFF;
    MessageId(v)
}

#[cfg(test)]
mod tests;
