//! Storage of message reactions, behind its own narrow trait so that reactions can evolve (and
//! other backends implement them) without touching the main [`Store`](super::Store) trait.
//!
//! Durability contract: when [`ReactionStore::add_reaction`] or
//! [`ReactionStore::remove_reaction`] returns `Ok`, the change survives a crash, and it was
//! applied atomically (the reaction and every index and counter that describes it together).
//!
//! The store knows nothing of membership or of which seqs exist: the caller
//! ([`crate::reactions::Reactions`]) checks those first. The store enforces the per-message
//! limits, because only it can check them atomically with the write.

use tern_wire::ids::{ConversationId, UserId};
use tern_wire::msg::ReactionCount;

use super::StoreResult;

/// Longest emoji sequence (in UTF-8 bytes) any backend must store. The service validates far
/// more than length; this only bounds keys.
pub const MAX_REACTION_EMOJI_BYTES: usize = 64;

/// One user's reaction to one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReactionKey {
    pub conversation: ConversationId,
    pub seq: u64,
    pub user: UserId,
    pub emoji: String,
}

/// Limits checked atomically with an addition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReactionWriteLimits {
    /// Distinct emoji on one message (over all users).
    pub max_emoji_per_message: usize,
    /// Distinct emoji one user may put on one message.
    pub max_per_user_per_message: usize,
}

/// What an addition did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddOutcome {
    /// Stored now.
    Added,
    /// The user had already reacted with that emoji: nothing changed.
    AlreadyPresent,
    /// Refused, nothing written: the message already carries the most distinct emoji.
    TooManyEmoji,
    /// Refused, nothing written: the user already has the most reactions on this message.
    TooManyForUser,
}

/// Bounds of one aggregation read ([`ReactionStore::reactions`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReactionReadLimits {
    /// Users listed per `(seq, emoji)`; `count` stays exact beyond it.
    pub max_users_per_emoji: usize,
    /// Users listed over the whole answer; once spent, later entries list no users (their
    /// `count` stays exact).
    pub max_users_total: usize,
}

#[async_trait::async_trait]
pub trait ReactionStore: Send + Sync + 'static {
    /// Adds the reaction unless present or over a limit (see [`AddOutcome`]).
    async fn add_reaction(
        &self,
        key: ReactionKey,
        limits: ReactionWriteLimits,
    ) -> StoreResult<AddOutcome>;
    /// Removes the reaction. Returns whether there was one (removing a missing one is a no-op).
    async fn remove_reaction(&self, key: ReactionKey) -> StoreResult<bool>;
    /// Aggregated reactions to the messages `first_seq..=last_seq` of a conversation, ordered
    /// by seq then emoji (bytes); each entry's users in user-id order.
    async fn reactions(
        &self,
        conversation: ConversationId,
        first_seq: u64,
        last_seq: u64,
        limits: ReactionReadLimits,
    ) -> StoreResult<Vec<ReactionCount>>;
}
