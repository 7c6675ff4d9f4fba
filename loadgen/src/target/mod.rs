//! What the load generator drives: Tern (over WebSocket or WebTransport, through the SDK) and
//! the peers it is compared with (Socket.IO 4, Centrifugo), all behind one interface so that
//! every scenario measures every system the same way.
//!
//! A target is prepared once (`setup`: accounts, conversations/rooms/channels), then connects
//! one device per simulated user. A connection splits into a [`MessageSender`] (sends wait for
//! the server's acknowledgement) and a stream of [`Inbound`] messages filled by the adapter's own
//! reader task, so a user can send on schedule while deliveries keep arriving.

use std::net::IpAddr;
use std::time::Instant;

use tokio::sync::mpsc;

pub mod centrifugo;
pub mod socketio;
pub mod tern;
pub mod tern_e2e;

/// Who the simulated users are and which conversations they share, decided by the scenario.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Population {
    /// Users 0..users.
    pub users: usize,
    /// Each conversation lists the indexes of its members.
    pub conversations: Vec<Vec<usize>>,
}

/// A conversation as the target knows it: an index into `Population::conversations` and the
/// target's own name for it (Tern conversation id, Socket.IO room, Centrifugo channel).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConversationRef {
    pub index: usize,
    pub key: String,
}

/// Everything a connection needs to know about its user after setup.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct UserSpec {
    pub index: usize,
    pub name: String,
    /// Tern bearer token; peers without authentication leave it `None`.
    pub token: Option<String>,
    pub conversations: Vec<ConversationRef>,
}

/// One message received by a connection.
#[derive(Debug)]
pub struct Inbound {
    /// `ConversationRef::index` of the conversation it arrived in.
    pub conversation: usize,
    /// Tern's per-conversation seq when the target has one (for order checks), else `None`.
    pub seq: Option<u64>,
    /// Exactly the payload bytes the sender sent (`--e2e`: after decryption).
    pub payload: Vec<u8>,
    pub arrived: Instant,
    /// `--e2e`: the message could not be decrypted, and why (`payload` is then empty).
    pub undecryptable: Option<String>,
    /// `--e2e`: it arrived before its key and was decrypted when the key came.
    pub late_key: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("connect failed: {0}")]
    Connect(String),
    #[error("send failed: {0}")]
    Send(String),
    #[error("setup failed: {0}")]
    Setup(String),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("receive: {0}")]
    Receive(String),
}

/// What the server said when it acknowledged a send.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SendOutcome {
    /// Tern: the seq the message was stored under; peers without one: `None`.
    pub seq: Option<u64>,
    /// Tern: the server had stored this idempotency key before (a retry of a send whose
    /// acknowledgement was lost, e.g. to a server crash): nothing new was stored.
    pub duplicate: bool,
}

/// One stored message, as a history read returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    pub seq: u64,
    /// The server's id of the sending user (opaque here; compared for equality only).
    pub sender_user: String,
    pub client_msg_id: u128,
    pub payload: Vec<u8>,
}

/// Sends messages for one connected user. `send` resolves when the server acknowledged the
/// message (Tern: durable `SendAck`; Socket.IO: the emit acknowledgement; Centrifugo: the
/// publish reply).
#[async_trait::async_trait]
pub trait MessageSender: Send + Sync {
    async fn send(
        &self,
        conversation: &ConversationRef,
        payload: Vec<u8>,
    ) -> Result<SendOutcome, TargetError>;
    /// Sends `payload` under an explicit idempotency key instead of the one derived from it.
    /// Only the crash test's `--debug-sabotage duplicate-send` uses it (to store one message
    /// twice on purpose and prove the checks notice); targets without keys do not support it.
    async fn send_with_key(
        &self,
        _conversation: &ConversationRef,
        _payload: Vec<u8>,
        _client_msg_id: u128,
    ) -> Result<SendOutcome, TargetError> {
        Err(TargetError::Send(
            "explicit idempotency keys are not supported by this target".into(),
        ))
    }
    /// Closes the connection (the reader ends and the inbound stream closes).
    async fn close(&self);
}

/// A connected user: where to send, and what arrives (bounded; adapters drop nothing: when the
/// queue is full their reader waits, which is the backpressure a real client would apply).
pub struct Connected {
    pub sender: Box<dyn MessageSender>,
    pub inbound: mpsc::Receiver<Inbound>,
}

#[async_trait::async_trait]
pub trait Target: Send + Sync {
    /// Short name used in reports: "tern-ws", "tern-wt", "socketio", "centrifugo".
    fn name(&self) -> String;
    /// Creates whatever the population needs on the server (accounts, conversations), or reuses
    /// it if already there, and returns each user's spec, indexed by user.
    async fn setup(&self, population: &Population) -> Result<Vec<UserSpec>, TargetError>;
    /// Connects one device of `user` from local address `source`; resolves once the connection
    /// is ready to send and receive in all of the user's conversations (joined, subscribed,
    /// resumed).
    async fn connect(&self, user: &UserSpec, source: IpAddr) -> Result<Connected, TargetError>;

    /// Target-specific results of `setup` that connections made by *other processes* need
    /// (worker processes get them through their plan instead of running `setup`). Tern: the
    /// device ids and the resume positions to start from. Default: nothing.
    fn export_state(&self) -> serde_json::Value {
        serde_json::Value::Null
    }

    /// Takes what [`Target::export_state`] produced in the parent process.
    fn import_state(&self, _state: serde_json::Value) -> Result<(), TargetError> {
        Ok(())
    }

    /// One page of a conversation's stored history, read with `token` (a member's): the
    /// newest messages with seq below `before` (0: the newest of all), ascending by seq, and
    /// whether older ones exist. `--verify-history` pages backwards with it (Tern's API reads
    /// forward only from a non-zero `after`; `after=0` means "the newest page").
    async fn history_page(
        &self,
        _token: Option<&str>,
        _conversation: &ConversationRef,
        _before: u64,
    ) -> Result<(Vec<HistoryEntry>, bool), TargetError> {
        Err(TargetError::Setup(format!(
            "{} has no history API for --verify-history",
            self.name()
        )))
    }
}
