//! Storage behind one narrow trait.
//!
//! The engine never talks to a database directly: it calls [`Store`]. Every backend must pass
//! the conformance suite in [`conformance`], which is written as plain async functions taking a
//! fresh store so that other backends (ScyllaDB) run the very same checks.
//!
//! Durability contract: when [`Store::commit`] returns `Ok`, every message and cursor in the
//! batch survives a crash (`kill -9`, power loss within what fsync promises). Account, token and
//! conversation writes are durable when their call returns too.

pub mod conformance;
pub mod embedded;
pub mod embedded_keys;
pub mod embedded_reactions;
pub mod files;
pub mod files_embedded;
pub mod keys;
pub mod reactions;

use tern_wire::ids::{ConversationId, DeviceId, UserId};
use tern_wire::msg::{ConversationKind, DeliveryMark, MemberRole, Message};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("already exists: {0}")]
    AlreadyExists(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("storage backend failed: {0}")]
    Backend(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub id: UserId,
    /// As the user typed it at registration.
    pub username: String,
    /// PHC string (argon2id). Never leaves the server.
    pub password_hash: String,
    pub created_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// SHA-256 of the bearer token; the token itself is never stored.
    pub token_hash: [u8; 32],
    pub user: UserId,
    pub created_ms: u64,
    pub expires_ms: u64,
}

/// Who a device id belongs to: the user, and the token that registered (last bound) it.
/// A device id travels in every `Deliver` (`sender_device`), so it is no secret: this record is
/// what stops another user from connecting as that device and moving its cursors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceRecord {
    pub device: DeviceId,
    pub user: UserId,
    /// SHA-256 of the token the device is bound to.
    pub token_hash: [u8; 32],
    pub bound_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationRecord {
    pub id: ConversationId,
    pub kind: ConversationKind,
    pub name: String,
    pub description: String,
    pub created_by: UserId,
    pub created_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberRecord {
    pub user: UserId,
    pub role: MemberRole,
}

/// A pending invitation of `user` into a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvitationRecord {
    pub conversation: ConversationId,
    pub user: UserId,
    pub inviter: UserId,
    pub created_ms: u64,
}

/// A cursor update: `device` (of `user`) has everything in `conversation` up to `seq`. The
/// store also raises the user's delivery mark (the maximum over the user's devices).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CursorUpdate {
    pub user: UserId,
    pub device: DeviceId,
    pub conversation: ConversationId,
    pub seq: u64,
}

/// One group commit: messages (already sequenced) and cursor updates, made durable together.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitBatch {
    pub messages: Vec<Message>,
    pub cursors: Vec<CursorUpdate>,
}

/// Which end of the range a history page is taken from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryFrom {
    /// The newest `limit` messages of the range (scrolling back from the present).
    Newest,
    /// The oldest `limit` messages of the range (catching up from a cursor, or from the start).
    Oldest,
}

/// Which page of history to read: messages with `after_seq < seq < before_seq` (and, when
/// `sender` is set, sent by that user), at most `limit` of them, from the given end of that
/// range, always returned in ascending seq order.
///
/// `max_bytes` bounds the page by size too: reading from the chosen end, the store stops after
/// the first message that brings the sum of [`message_cost`] over `max_bytes`. That message is
/// included, so a page whose cost exceeds `max_bytes` tells the caller it was cut by size (and
/// the first message is always returned, however large). `u64::MAX` means no byte bound.
///
/// No form may scan from the start of a conversation: the seq bounds are key ranges, a sender
/// is a key range of a `(conversation, sender, seq)` index written in the same batch as the
/// message, and a time range becomes seq bounds through [`Store::first_seq_at`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryQuery {
    pub conversation: ConversationId,
    /// Exclusive upper bound; 0 means none.
    pub before_seq: u64,
    /// Exclusive lower bound; 0 means none (seqs start at 1).
    pub after_seq: u64,
    pub limit: u32,
    pub from: HistoryFrom,
    pub max_bytes: u64,
    /// Only messages this user sent; `None`: anyone's.
    pub sender: Option<UserId>,
}

/// The context of one message: up to `limit` messages around `seq` (see
/// [`Store::history_around`]). `before_seq` caps the page like [`HistoryQuery::before_seq`]
/// (a former member's departure), `sender` filters like [`HistoryQuery::sender`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AroundQuery {
    pub conversation: ConversationId,
    /// The message the page is centred on; need not exist (or match `sender`).
    pub seq: u64,
    pub limit: u32,
    /// Exclusive upper bound; 0 means none.
    pub before_seq: u64,
    /// Split evenly between the two sides (each side is bounded like a [`HistoryQuery`]).
    pub max_bytes: u64,
    pub sender: Option<UserId>,
}

impl AroundQuery {
    /// How many messages of a `limit` page lie after the seq: `(limit - 1) / 2`. The rest, at
    /// most `limit - (limit - 1) / 2`, are the seq itself and the messages before it, so the
    /// older side gets the odd one when `limit` is even (scrolling back is the likelier next
    /// step) and the page never holds more than `limit` messages.
    pub fn after_count(limit: u32) -> u32 {
        limit.saturating_sub(1) / 2
    }
}

/// A page from [`Store::history_around`], ascending by seq.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AroundPage {
    pub messages: Vec<Message>,
    /// Messages exist (within the query's bounds) older than the page's oldest.
    pub has_more_before: bool,
    /// Messages exist (within the query's bounds) newer than the page's newest.
    pub has_more_after: bool,
}

/// Bytes a message is counted as when pages are bounded by size: its variable-length fields
/// plus a fixed allowance for ids, numbers and encoding overhead. An estimate that is never
/// below a message's FlatBuffers size inside a `HistoryPage` (checked in the wire tests of the
/// session's paging), so callers can budget frames with it.
pub fn message_cost(m: &Message) -> u64 {
    /// Ids (message, sender, device: 48 bytes), seq, timestamps, client id, vtables and
    /// offsets, with room to spare.
    const FIXED: u64 = 256;
    /// A file reference's id, size and offsets, besides its content type.
    const PER_FILE: u64 = 64;
    let files: u64 = m
        .files
        .iter()
        .map(|f| PER_FILE + f.content_type.len() as u64)
        .sum();
    FIXED + m.payload.len() as u64 + m.content_type.len() as u64 + files
}

impl HistoryQuery {
    /// The oldest `limit` messages after `after_seq`: what resume and gap filling read.
    pub fn after(conversation: ConversationId, after_seq: u64, limit: u32) -> Self {
        HistoryQuery {
            conversation,
            before_seq: 0,
            after_seq,
            limit,
            from: HistoryFrom::Oldest,
            max_bytes: u64::MAX,
            sender: None,
        }
    }

    /// The newest `limit` messages before `before_seq` (0: the newest of all).
    pub fn before(conversation: ConversationId, before_seq: u64, limit: u32) -> Self {
        HistoryQuery {
            conversation,
            before_seq,
            after_seq: 0,
            limit,
            from: HistoryFrom::Newest,
            max_bytes: u64::MAX,
            sender: None,
        }
    }

    /// The same page, bounded by size as well (see [`HistoryQuery::max_bytes`]).
    pub fn with_max_bytes(self, max_bytes: u64) -> Self {
        HistoryQuery { max_bytes, ..self }
    }

    /// The same page, only messages of `sender`.
    pub fn from_sender(self, sender: UserId) -> Self {
        HistoryQuery {
            sender: Some(sender),
            ..self
        }
    }
}

/// A side of an around page read with one more than it keeps: the extra one only says
/// whether more exists. `newest_first`: the side below the seq (its far end is its oldest).
fn trim_side(mut side: Vec<Message>, keep: usize, newest_first: bool) -> (Vec<Message>, bool) {
    let more = side.len() > keep;
    if more {
        if newest_first {
            side.drain(..side.len() - keep);
        } else {
            side.truncate(keep);
        }
    }
    (side, more)
}

#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    // ---- accounts ----
    /// Fails with `AlreadyExists` when the username is taken (compared case-insensitively).
    async fn create_user(&self, user: UserRecord) -> StoreResult<()>;
    /// Case-insensitive lookup.
    async fn user_by_name(&self, username: &str) -> StoreResult<Option<UserRecord>>;
    async fn user_by_id(&self, id: UserId) -> StoreResult<Option<UserRecord>>;

    // ---- sessions ----
    async fn put_token(&self, token: TokenRecord) -> StoreResult<()>;
    async fn token(&self, token_hash: &[u8; 32]) -> StoreResult<Option<TokenRecord>>;
    /// Returns whether a token was deleted.
    async fn delete_token(&self, token_hash: &[u8; 32]) -> StoreResult<bool>;
    /// Deletes every token of `user` ("log out everywhere") and returns their hashes. Tokens
    /// put after the call started may survive; every token put before it returned is gone.
    async fn delete_tokens_of(&self, user: UserId) -> StoreResult<Vec<[u8; 32]>>;

    // ---- devices ----
    async fn device(&self, device: DeviceId) -> StoreResult<Option<DeviceRecord>>;
    /// Compare-and-set: stores `record` only when the device's current binding has the token
    /// hash `expected` (`None`: the device has no record yet). Returns whether it was written;
    /// of concurrent calls with the same expectation at most one gets `true`.
    async fn bind_device(
        &self,
        record: DeviceRecord,
        expected: Option<[u8; 32]>,
    ) -> StoreResult<bool>;
    /// Removes the device's binding when it belongs to `user` and returns it (the caller
    /// revokes its token); `None`, writing nothing, when unbound or another user's.
    async fn unbind_device(
        &self,
        device: DeviceId,
        user: UserId,
    ) -> StoreResult<Option<DeviceRecord>>;

    // ---- conversations ----
    /// Creates the conversation and all its memberships atomically.
    async fn create_conversation(
        &self,
        conversation: ConversationRecord,
        members: Vec<MemberRecord>,
    ) -> StoreResult<()>;
    async fn conversation(&self, id: ConversationId) -> StoreResult<Option<ConversationRecord>>;
    async fn members(&self, id: ConversationId) -> StoreResult<Vec<MemberRecord>>;
    async fn is_member(&self, id: ConversationId, user: UserId) -> StoreResult<bool>;
    /// Conversations the user belongs to, in no particular order.
    async fn conversations_of(&self, user: UserId) -> StoreResult<Vec<ConversationId>>;
    /// The 1:1 conversation between two users, if one exists (order of the pair does not matter).
    async fn direct_conversation(
        &self,
        a: UserId,
        b: UserId,
    ) -> StoreResult<Option<ConversationId>>;
    /// Records the 1:1 conversation of a pair. Fails with `AlreadyExists` (returning nothing)
    /// when the pair already has one; the caller then reads it with `direct_conversation`.
    async fn set_direct_conversation(
        &self,
        a: UserId,
        b: UserId,
        id: ConversationId,
    ) -> StoreResult<()>;

    // ---- groups: unique names, invitations, membership changes ----
    /// Like [`Store::create_conversation`], and atomically claims `name_key` (the normalised
    /// group name) in the group-name index. Fails with `AlreadyExists` when the key is taken,
    /// writing nothing: of two concurrent creations with one key exactly one succeeds.
    async fn create_named_group(
        &self,
        conversation: ConversationRecord,
        members: Vec<MemberRecord>,
        name_key: String,
    ) -> StoreResult<()>;
    /// The group that holds `name_key` in the group-name index.
    async fn group_by_name(&self, name_key: &str) -> StoreResult<Option<ConversationId>>;
    /// Stores (or replaces) the pending invitation of `invitation.user`.
    async fn put_invitation(&self, invitation: InvitationRecord) -> StoreResult<()>;
    async fn invitation(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> StoreResult<Option<InvitationRecord>>;
    /// Stores (or replaces) several pending invitations durably in one write (group creation
    /// invites every listed user at once: one fsync, not one per invitee).
    async fn put_invitations(&self, invitations: Vec<InvitationRecord>) -> StoreResult<()>;
    /// Pending invitations of a user, in no particular order.
    async fn invitations_of(&self, user: UserId) -> StoreResult<Vec<InvitationRecord>>;
    /// Removes the invitation and returns it; of concurrent calls exactly one gets `Some`.
    async fn take_invitation(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> StoreResult<Option<InvitationRecord>>;
    /// Atomically: removes the pending invitation and makes the user a member (with the given
    /// role), clearing any departure record. Returns the invitation, or `None` (writing
    /// nothing) when there was none. Of concurrent calls exactly one gets `Some`.
    async fn accept_invitation(
        &self,
        conversation: ConversationId,
        member: MemberRecord,
    ) -> StoreResult<Option<InvitationRecord>>;
    /// Adds a member directly (also removing a pending invitation and any departure record).
    /// Returns false, writing nothing, when the user already is a member; `NotFound` when the
    /// conversation does not exist.
    async fn add_member(
        &self,
        conversation: ConversationId,
        member: MemberRecord,
    ) -> StoreResult<bool>;
    /// Ends a membership (removal or leaving): `is_member` is false and `conversations_of`
    /// omits the conversation from now on, and a departure record keeps the highest seq stored
    /// at that moment. Returns that seq, or `None` (writing nothing) when the user was not a
    /// member.
    async fn remove_member(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> StoreResult<Option<u64>>;
    /// The seq recorded when the user's membership ended (if it did and they did not rejoin):
    /// the last message they may read.
    async fn departure(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> StoreResult<Option<u64>>;

    // ---- blocks (directed: `blocker` blocks `blocked`) ----
    /// Records (`on`) or lifts a block. Returns whether anything changed. Durable on return.
    async fn set_block(&self, blocker: UserId, blocked: UserId, on: bool) -> StoreResult<bool>;
    async fn is_blocked(&self, blocker: UserId, blocked: UserId) -> StoreResult<bool>;
    /// The users `blocker` blocks, in no particular order.
    async fn blocks_of(&self, blocker: UserId) -> StoreResult<Vec<UserId>>;
    /// The users who block `user`, in no particular order.
    async fn blockers_of(&self, user: UserId) -> StoreResult<Vec<UserId>>;

    // ---- messages ----
    /// Durably stores a batch (one fsync for the whole batch on the embedded backend).
    /// Messages must have unique `(conversation, seq)`; an existing key is overwritten with
    /// identical content only (the sequencer guarantees it). Atomically with the messages, each
    /// sender's [`Store::stored_bytes`] grows by the payload bytes of its messages.
    async fn commit(&self, batch: CommitBatch) -> StoreResult<()>;
    /// Payload bytes of every message the user has sent, as counted by committed batches
    /// (the storage quota). 0 for a user who never sent anything.
    async fn stored_bytes(&self, user: UserId) -> StoreResult<u64>;
    /// Highest stored seq of the conversation (0 when empty).
    async fn last_seq(&self, conversation: ConversationId) -> StoreResult<u64>;
    /// The message a sender stored under `client_msg_id`, if any (idempotent retries).
    async fn message_by_client_id(
        &self,
        conversation: ConversationId,
        sender: UserId,
        client_msg_id: u128,
    ) -> StoreResult<Option<Message>>;
    /// One page of messages in ascending seq order, as described by [`HistoryQuery`].
    async fn history(&self, query: HistoryQuery) -> StoreResult<Vec<Message>>;
    /// The first seq whose message has `timestamp_ms >= timestamp_ms` (the server's clock), or
    /// `last_seq + 1` when there is none: a time range `[since, until]` is the seq range
    /// `first_seq_at(since) <= seq < first_seq_at(until + 1)`. Exact because the sequencer
    /// stamps messages with non-decreasing timestamps per conversation (`core::Loaded`), so a
    /// backend may binary-search over seqs (O(log n) point reads, no index).
    async fn first_seq_at(
        &self,
        conversation: ConversationId,
        timestamp_ms: u64,
    ) -> StoreResult<u64>;
    /// The context of a message (see [`AroundQuery`]): the newest `limit - after` messages at or
    /// below `seq` and the oldest `after = AroundQuery::after_count(limit)` above it, ascending,
    /// each side bounded by `max_bytes / 2` like a [`HistoryQuery`]. No side is filled up when
    /// the other one is short (a page near either end of the conversation is smaller). Two
    /// reads; nothing a backend needs to implement.
    async fn history_around(&self, q: AroundQuery) -> StoreResult<AroundPage> {
        let after = AroundQuery::after_count(q.limit);
        let before = q.limit.saturating_sub(after);
        let half = q.max_bytes / 2;
        // Inclusive of `seq`; capped by the caller's bound (a departure).
        let upto = match q.seq.checked_add(1) {
            Some(s) if q.before_seq == 0 || s < q.before_seq => s,
            _ if q.before_seq == 0 => 0,
            _ => q.before_seq,
        };
        let older = if before == 0 {
            Vec::new()
        } else {
            let query = HistoryQuery {
                conversation: q.conversation,
                before_seq: upto,
                after_seq: 0,
                limit: before.saturating_add(1),
                from: HistoryFrom::Newest,
                max_bytes: half,
                sender: q.sender,
            };
            self.history(query).await?
        };
        let (mut messages, mut has_more_before) = trim_side(older, before as usize, true);
        // A side over its half of the bytes was cut by size: more may exist beyond it.
        has_more_before |= messages.iter().map(message_cost).sum::<u64>() > half;
        // Nothing lies above u64::MAX, nor above the cap.
        let newer = if q.seq == u64::MAX
            || (q.before_seq != 0 && q.seq.saturating_add(1) >= q.before_seq)
        {
            Vec::new()
        } else {
            let query = HistoryQuery {
                conversation: q.conversation,
                before_seq: q.before_seq,
                after_seq: q.seq,
                limit: after.saturating_add(1),
                from: HistoryFrom::Oldest,
                max_bytes: half,
                sender: q.sender,
            };
            self.history(query).await?
        };
        let (newer, mut has_more_after) = trim_side(newer, after as usize, false);
        has_more_after |= newer.iter().map(message_cost).sum::<u64>() > half;
        messages.extend(newer);
        Ok(AroundPage {
            messages,
            has_more_before,
            has_more_after,
        })
    }

    // ---- cursors ----
    async fn cursor(&self, device: DeviceId, conversation: ConversationId) -> StoreResult<u64>;
    /// Every user's delivery mark in `conversation` (the highest committed cursor over the
    /// user's devices), in user id order; users who never acknowledged anything are absent.
    /// Former members' marks may be included: callers filter by the member list.
    async fn delivery_marks(&self, conversation: ConversationId) -> StoreResult<Vec<DeliveryMark>>;
}
