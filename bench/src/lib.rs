//! Shared fixtures for Tern's criterion benchmarks (`benches/`): sample messages and a
//! [`Rig`] that drives the sans-IO [`EngineCore`] the way the tokio driver does, with the store
//! replaced by instant answers.
//!
//! The rig answers `Load` with the conversation's snapshot and `Lookup` with "not stored" on the
//! spot, keeps the `Commit` it was handed in flight until [`Rig::commit`] reports it durable, and
//! hands every other action (`Reply`, `Deliver`, `Close`) to the caller. So a benchmark sees the
//! core's own cost plus the cost of building and dropping the actions, and nothing of the store.

use std::collections::{HashMap, VecDeque};

use tern_engine::core::{
    Action, BatchId, ConnId, ConversationSnapshot, EngineCore, Input, SendRequest,
};
use tern_engine::limits::EngineLimits;
use tern_wire::ids::{ConversationId, DeviceId, MessageId, UserId};
use tern_wire::msg::{ClientMessage, Message, ServerMessage};

/// A typical chat message: a short text after end-to-end encryption.
pub const TYPICAL_PAYLOAD: usize = 200;
/// The largest payload the engine accepts (`EngineLimits::default().max_payload_bytes`).
pub const FULL_PAYLOAD: usize = 60 * 1024;
/// A fixed "now" (2023-11-14) so every run sequences the same ids.
pub const NOW_MS: u64 = 1_700_000_000_000;

const CONTENT_TYPE: &str = "e2e.megolm";

/// `len` bytes that look like ciphertext (no runs a compressor or allocator could exploit).
pub fn payload(len: usize) -> Vec<u8> {
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// The `Send` a client writes for a message with a `payload_len`-byte payload.
pub fn send_message(payload_len: usize) -> ClientMessage {
    ClientMessage::Send {
        request_id: 42,
        conversation: ConversationId::from_u128(0x0193_0000_0000_7000_8000_0000_0000_0001),
        client_msg_id: 0x0193_0000_0000_7000_8000_0000_0000_1234,
        content_type: CONTENT_TYPE.into(),
        payload: payload(payload_len),
        files: vec![],
    }
}

/// The `Deliver` the server fans out for that same message once it is sequenced.
pub fn deliver_message(payload_len: usize) -> ServerMessage {
    ServerMessage::Deliver {
        message: Message {
            conversation: ConversationId::from_u128(0x0193_0000_0000_7000_8000_0000_0000_0001),
            seq: 123_456,
            message_id: MessageId::from_u128(0x0193_0000_0000_7abc_8def_0000_0000_5678),
            sender_user: UserId::from_u128(7),
            sender_device: DeviceId::from_u128(8),
            client_msg_id: 0x0193_0000_0000_7000_8000_0000_0000_1234,
            timestamp_ms: NOW_MS,
            content_type: CONTENT_TYPE.into(),
            payload: payload(payload_len),
            files: vec![],
        },
    }
}

/// Shape of the world a [`Rig`] builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RigConfig {
    /// Conversations the sends are spread over, round robin.
    pub conversations: usize,
    /// Members per conversation, each with one connected device. Member 0 sends.
    pub members: usize,
    /// Conversations already hold messages when loaded (`last_seq > 0`), as every conversation
    /// does after a restart. Then the core cannot rule out from memory that a new
    /// `client_msg_id` is a retry of an old message, and asks the store (`Lookup`) for every
    /// send. Without history nothing is looked up until a conversation's dedupe window is full.
    pub history: bool,
    /// Payload bytes of every send.
    pub payload: usize,
}

/// The sans-IO core plus instant store answers; see the crate docs.
pub struct Rig {
    core: EngineCore,
    config: RigConfig,
    /// Members of each conversation, what `Load` is answered with.
    members: HashMap<ConversationId, Vec<UserId>>,
    conversation_ids: Vec<ConversationId>,
    payload: Vec<u8>,
    in_flight: Option<BatchId>,
    pending: VecDeque<Input>,
    next_conversation: usize,
    next_id: u64,
    /// Sends handed to the core so far.
    pub sent: u64,
    /// `Lookup`s the core asked for (each answered "not stored").
    pub lookups: u64,
    /// Batches reported durable.
    pub commits: u64,
}

impl Rig {
    /// Connects every device and loads every conversation (one send each, committed), so the
    /// core is warm: conversations `Ready`, nothing queued or in flight.
    pub fn new(config: RigConfig) -> Self {
        assert!(config.conversations > 0 && config.members > 0);
        // The benchmarks measure sequencing and fan-out, not the flood limits: every send of a
        // run happens at one instant, so the send buckets are made too large to run dry.
        let unlimited = tern_engine::rate::BucketConfig::new(1 << 40, 1 << 30);
        let limits = EngineLimits {
            user_sends: unlimited,
            conversation_sends: unlimited,
            ..EngineLimits::default()
        };
        let core = EngineCore::new(limits, 7).expect("limits are valid");
        let mut rig = Rig {
            core,
            config,
            members: HashMap::with_capacity(config.conversations),
            conversation_ids: Vec::with_capacity(config.conversations),
            payload: payload(config.payload),
            in_flight: None,
            pending: VecDeque::new(),
            next_conversation: 0,
            next_id: 1,
            sent: 0,
            lookups: 0,
            commits: 0,
        };
        let mut out = Vec::new();
        for c in 0..config.conversations {
            let conversation = ConversationId::from_u128(1 << 64 | c as u128);
            let mut members = Vec::with_capacity(config.members);
            for m in 0..config.members {
                let conn = Self::conn_of(&config, c, m);
                let user = UserId::from_u128(conn as u128);
                members.push(user);
                rig.feed(
                    Input::Connected {
                        conn,
                        user,
                        device: DeviceId::from_u128(1 << 64 | conn as u128),
                        token_hash: [0; 32],
                    },
                    &mut out,
                );
            }
            rig.members.insert(conversation, members);
            rig.conversation_ids.push(conversation);
        }
        for _ in 0..config.conversations {
            rig.send(&mut out);
        }
        while rig.in_flight.is_some() {
            rig.commit(&mut out);
        }
        rig
    }

    /// The connection of member `member` of conversation `conversation` (also its user id).
    pub fn conn_of(config: &RigConfig, conversation: usize, member: usize) -> ConnId {
        (conversation * config.members + member + 1) as ConnId
    }

    pub fn config(&self) -> &RigConfig {
        &self.config
    }

    pub fn core(&self) -> &EngineCore {
        &self.core
    }

    /// Whether a commit is in flight.
    pub fn committing(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Sends one message from member 0 of the next conversation (round robin). If no commit is
    /// in flight it starts one at once; otherwise the message joins the next group commit.
    pub fn send(&mut self, out: &mut Vec<Action>) {
        let c = self.next_conversation;
        self.next_conversation = (c + 1) % self.conversation_ids.len();
        let id = self.next_id;
        self.next_id += 1;
        self.sent += 1;
        let request = SendRequest {
            conn: Self::conn_of(&self.config, c, 0),
            request_id: id,
            conversation: self.conversation_ids[c],
            client_msg_id: id as u128,
            content_type: CONTENT_TYPE.into(),
            payload: self.payload.clone(),
            files: vec![],
        };
        self.feed(Input::Send(request), out);
    }

    /// Reports the batch in flight durable: its `SendAck`s and `Deliver`s land in `out`, and
    /// whatever queued meanwhile goes in flight as the next batch.
    pub fn commit(&mut self, out: &mut Vec<Action>) {
        let batch = self.in_flight.take().expect("a commit in flight");
        self.commits += 1;
        self.feed(Input::Committed { batch, ok: true }, out);
    }

    /// Messages each conversation has sequenced at most (sends are spread round robin).
    pub fn busiest_conversation_messages(&self) -> u64 {
        self.sent.div_ceil(self.conversation_ids.len() as u64)
    }

    /// Feeds one input, answers `Load`/`Lookup` on the spot (feeding the answers back), records
    /// the `Commit`, and pushes every other action to `out`.
    pub fn feed(&mut self, input: Input, out: &mut Vec<Action>) {
        self.pending.push_back(input);
        while let Some(input) = self.pending.pop_front() {
            for action in self.core.handle(input, NOW_MS) {
                match action {
                    Action::Load { conversation, .. } => {
                        let members = self.members[&conversation].clone();
                        let last_seq = u64::from(self.config.history);
                        self.pending.push_back(Input::Loaded {
                            conversation,
                            snapshot: Some(ConversationSnapshot {
                                members,
                                last_seq,
                                last_timestamp_ms: 0,
                                landed: vec![],
                            }),
                        });
                    }
                    Action::Lookup {
                        conversation,
                        sender,
                        client_msg_id,
                    } => {
                        self.lookups += 1;
                        self.pending.push_back(Input::LookedUp {
                            conversation,
                            sender,
                            client_msg_id,
                            found: None,
                        });
                    }
                    Action::Commit { batch, data } => {
                        assert!(
                            self.in_flight.replace(batch).is_none(),
                            "one commit in flight at a time"
                        );
                        drop(data);
                    }
                    other => out.push(other),
                }
            }
        }
    }
}

/// What a list of actions amounts to, for sanity checks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub acks: usize,
    pub delivers: usize,
    /// Connections all `Deliver`s together reach.
    pub recipients: usize,
    /// Anything else (errors, closes): a benchmark that sees one is measuring the wrong thing.
    pub other: usize,
}

impl Tally {
    pub fn of(actions: &[Action]) -> Self {
        let mut t = Tally::default();
        for action in actions {
            match action {
                Action::Reply {
                    message:
                        ServerMessage::SendAck {
                            duplicate: false, ..
                        },
                    ..
                } => t.acks += 1,
                Action::Deliver { conns, message }
                    if matches!(**message, ServerMessage::Deliver { .. }) =>
                {
                    t.delivers += 1;
                    t.recipients += conns.len();
                }
                _ => t.other += 1,
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_wire::Limits;

    fn config(conversations: usize, members: usize, history: bool) -> RigConfig {
        RigConfig {
            conversations,
            members,
            history,
            payload: TYPICAL_PAYLOAD,
        }
    }

    #[test]
    fn samples_round_trip() {
        let send = send_message(TYPICAL_PAYLOAD);
        let bytes = tern_wire::encode_client(&send);
        assert_eq!(
            tern_wire::decode_client(&bytes, &Limits::default()),
            Ok(send)
        );
        for len in [TYPICAL_PAYLOAD, FULL_PAYLOAD] {
            let deliver = deliver_message(len);
            let bytes = tern_wire::encode_server(&deliver);
            assert!(bytes.len() <= Limits::default().max_frame_bytes);
            assert_eq!(
                tern_wire::decode_server(&bytes, &Limits::default()),
                Ok(deliver)
            );
        }
    }

    #[test]
    fn group_commit_acks_and_delivers_every_message() {
        for conversations in [1, 5] {
            let mut rig = Rig::new(config(conversations, 3, false));
            assert!(!rig.committing());
            let mut out = Vec::new();
            // The first send goes in flight alone, the next 64 share the next batch.
            for _ in 0..65 {
                rig.send(&mut out);
            }
            assert!(out.is_empty(), "nothing is acknowledged before commit");
            rig.commit(&mut out);
            let t = Tally::of(&out);
            assert_eq!((t.acks, t.delivers, t.recipients, t.other), (1, 1, 2, 0));
            out.clear();
            rig.commit(&mut out);
            let t = Tally::of(&out);
            assert_eq!(
                (t.acks, t.delivers, t.recipients, t.other),
                (64, 64, 128, 0)
            );
            assert!(!rig.committing());
            assert_eq!(rig.lookups, 0);
        }
    }

    #[test]
    fn history_means_one_lookup_per_send_and_fresh_conversations_none() {
        let mut rig = Rig::new(config(2, 2, true));
        let before = rig.lookups;
        let mut out = Vec::new();
        for _ in 0..10 {
            rig.send(&mut out);
            rig.commit(&mut out);
        }
        assert_eq!(rig.lookups - before, 10);
        assert_eq!(Tally::of(&out).acks, 10);

        // Without history, lookups start once a conversation's dedupe window is full.
        let window = EngineLimits::default().dedupe_window as u64;
        let mut rig = Rig::new(config(1, 2, false));
        while rig.busiest_conversation_messages() < window {
            rig.send(&mut out);
            rig.commit(&mut out);
            out.clear();
        }
        assert_eq!(rig.lookups, 0);
        for _ in 0..2 {
            rig.send(&mut out);
            rig.commit(&mut out);
        }
        assert_eq!(rig.lookups, 1, "the first send after the first eviction");
    }
}
