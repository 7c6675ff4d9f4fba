//! [`ReactionStore`] on the embedded store's fjall database, in keyspaces of its own.
//!
//! # Layout
//!
//! Integers big-endian as in [`super::embedded`]; an emoji in a key is one length byte then its
//! UTF-8 bytes (at most [`MAX_REACTION_EMOJI_BYTES`]), so no emoji key is a prefix of another.
//!
//! | keyspace          | key                                                 | value           |
//! |-------------------|-----------------------------------------------------|-----------------|
//! | `reactions`       | conversation (16), seq (8), emoji (1+n), user (16)  | empty           |
//! | `reaction_counts` | conversation (16), seq (8), emoji (1+n)             | count (u32, 4)  |
//! | `reaction_users`  | conversation (16), seq (8), user (16), emoji (1+n)  | empty           |
//!
//! `reactions` lists who reacted with what (aggregation reads it per `(seq, emoji)`);
//! `reaction_counts` holds the exact count per `(seq, emoji)` (history reads counts without
//! scanning every user, and the distinct-emoji limit is a bounded prefix count);
//! `reaction_users` answers "how many reactions does this user have on this message" for the
//! per-user limit.
//!
//! # Atomicity
//!
//! An addition or removal writes all three keyspaces in one fjall batch committed with
//! `PersistMode::SyncAll` (journal fsynced before the memtables see it: all or nothing, durable
//! on return). The read-check-write (present? limits? count) runs under one process-local mutex,
//! so concurrent reactions cannot both pass a limit or lose a count update. Reads of the
//! aggregation use a snapshot, so they never see half of a batch.

use std::sync::{Arc, Mutex};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Readable};
use tern_wire::ids::{ConversationId, UserId};
use tern_wire::msg::ReactionCount;

use super::embedded::EmbeddedStore;
use super::reactions::{
    AddOutcome, MAX_REACTION_EMOJI_BYTES, ReactionKey, ReactionReadLimits, ReactionStore,
    ReactionWriteLimits,
};
use super::{StoreError, StoreResult};

/// Reactions kept in the embedded store's database. Cheap to share behind an `Arc`.
pub struct EmbeddedReactions {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EmbeddedReactions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedReactions").finish_non_exhaustive()
    }
}

struct Inner {
    db: Database,
    reactions: Keyspace,
    counts: Keyspace,
    by_user: Keyspace,
    /// Held across every read-check-write.
    write_lock: Mutex<()>,
}

fn backend(e: fjall::Error) -> StoreError {
    StoreError::Backend(format!("fjall (reactions): {e}"))
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("reactions: malformed {what}"))
}

impl EmbeddedReactions {
    /// Opens (creating if needed) the reaction keyspaces in `store`'s database. Blocks briefly
    /// (keyspace creation): call it at start-up.
    pub fn open(store: &EmbeddedStore) -> StoreResult<EmbeddedReactions> {
        let db = store.database();
        let keyspace = |name: &str| {
            db.keyspace(name, KeyspaceCreateOptions::default)
                .map_err(backend)
        };
        let inner = Inner {
            reactions: keyspace("reactions")?,
            counts: keyspace("reaction_counts")?,
            by_user: keyspace("reaction_users")?,
            db: db.clone(),
            write_lock: Mutex::new(()),
        };
        Ok(EmbeddedReactions {
            inner: Arc::new(inner),
        })
    }

    async fn run<T, F>(&self, f: F) -> StoreResult<T>
    where
        F: FnOnce(&Inner) -> StoreResult<T> + Send + 'static,
        T: Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| StoreError::Backend(format!("storage task did not complete: {e}")))?
    }
}

// ---------------------------------------------------------------------------------------------
// keys

fn message_prefix(conversation: ConversationId, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(16 + 8 + 1 + MAX_REACTION_EMOJI_BYTES + 16);
    k.extend_from_slice(&conversation.to_be_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn push_emoji(k: &mut Vec<u8>, emoji: &str) -> StoreResult<()> {
    let bytes = emoji.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_REACTION_EMOJI_BYTES {
        return Err(StoreError::Backend(format!(
            "reaction emoji must be 1..={MAX_REACTION_EMOJI_BYTES} bytes, got {}",
            bytes.len()
        )));
    }
    k.push(bytes.len() as u8);
    k.extend_from_slice(bytes);
    Ok(())
}

/// `reaction_counts` key, and the prefix of the `reactions` keys of one `(seq, emoji)`.
fn count_key(conversation: ConversationId, seq: u64, emoji: &str) -> StoreResult<Vec<u8>> {
    let mut k = message_prefix(conversation, seq);
    push_emoji(&mut k, emoji)?;
    Ok(k)
}

fn reaction_key(key: &ReactionKey) -> StoreResult<Vec<u8>> {
    let mut k = count_key(key.conversation, key.seq, &key.emoji)?;
    k.extend_from_slice(&key.user.to_be_bytes());
    Ok(k)
}

fn user_prefix(conversation: ConversationId, seq: u64, user: UserId) -> Vec<u8> {
    let mut k = message_prefix(conversation, seq);
    k.extend_from_slice(&user.to_be_bytes());
    k
}

fn by_user_key(key: &ReactionKey) -> StoreResult<Vec<u8>> {
    let mut k = user_prefix(key.conversation, key.seq, key.user);
    push_emoji(&mut k, &key.emoji)?;
    Ok(k)
}

fn decode_count(bytes: &[u8]) -> StoreResult<u32> {
    <[u8; 4]>::try_from(bytes)
        .map(u32::from_be_bytes)
        .map_err(|_| corrupt("count"))
}

/// `(seq, emoji)` of a `reaction_counts` key.
fn parse_count_key(key: &[u8]) -> StoreResult<(u64, String)> {
    let seq = key
        .get(16..24)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| corrupt("count key"))?;
    let len = *key.get(24).ok_or_else(|| corrupt("count key"))? as usize;
    let emoji = key
        .get(25..)
        .filter(|e| e.len() == len)
        .ok_or_else(|| corrupt("count key"))?;
    let emoji = std::str::from_utf8(emoji).map_err(|_| corrupt("emoji"))?;
    Ok((seq, emoji.to_owned()))
}

/// The user at the end of a `reactions` key.
fn user_of_reaction_key(key: &[u8]) -> StoreResult<UserId> {
    let tail = key
        .len()
        .checked_sub(16)
        .and_then(|start| key.get(start..))
        .ok_or_else(|| corrupt("reaction key"))?;
    <[u8; 16]>::try_from(tail)
        .map(|b| UserId(u128::from_be_bytes(b)))
        .map_err(|_| corrupt("reaction key"))
}

// ---------------------------------------------------------------------------------------------
// operations

impl Inner {
    fn batch(&self) -> fjall::OwnedWriteBatch {
        self.db.batch().durability(Some(PersistMode::SyncAll))
    }

    fn count_of(&self, key: &[u8]) -> StoreResult<u32> {
        match self.counts.get(key).map_err(backend)? {
            Some(v) => decode_count(&v),
            None => Ok(0),
        }
    }

    fn add(&self, key: &ReactionKey, limits: ReactionWriteLimits) -> StoreResult<AddOutcome> {
        let rkey = reaction_key(key)?;
        let ckey = count_key(key.conversation, key.seq, &key.emoji)?;
        let ukey = by_user_key(key)?;
        let _guard = self
            .write_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Under the lock every earlier write is complete: read the keyspaces directly.
        if self.reactions.get(&rkey).map_err(backend)?.is_some() {
            return Ok(AddOutcome::AlreadyPresent);
        }
        let count = self.count_of(&ckey)?;
        if count == 0 {
            // A new emoji on this message: bounded count of the distinct ones so far.
            let prefix = message_prefix(key.conversation, key.seq);
            let distinct = self
                .counts
                .prefix(&prefix)
                .take(limits.max_emoji_per_message)
                .count();
            if distinct >= limits.max_emoji_per_message {
                return Ok(AddOutcome::TooManyEmoji);
            }
        }
        let mine = self
            .by_user
            .prefix(user_prefix(key.conversation, key.seq, key.user))
            .take(limits.max_per_user_per_message)
            .count();
        if mine >= limits.max_per_user_per_message {
            return Ok(AddOutcome::TooManyForUser);
        }
        let mut batch = self.batch();
        batch.insert(&self.reactions, rkey, []);
        batch.insert(&self.counts, ckey, (count + 1).to_be_bytes());
        batch.insert(&self.by_user, ukey, []);
        batch.commit().map_err(backend)?;
        Ok(AddOutcome::Added)
    }

    fn remove(&self, key: &ReactionKey) -> StoreResult<bool> {
        let rkey = reaction_key(key)?;
        let ckey = count_key(key.conversation, key.seq, &key.emoji)?;
        let ukey = by_user_key(key)?;
        let _guard = self
            .write_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if self.reactions.get(&rkey).map_err(backend)?.is_none() {
            return Ok(false);
        }
        let count = self.count_of(&ckey)?;
        let mut batch = self.batch();
        batch.remove(&self.reactions, rkey);
        if count <= 1 {
            batch.remove(&self.counts, ckey);
        } else {
            batch.insert(&self.counts, ckey, (count - 1).to_be_bytes());
        }
        batch.remove(&self.by_user, ukey);
        batch.commit().map_err(backend)?;
        Ok(true)
    }

    fn aggregate(
        &self,
        conversation: ConversationId,
        first_seq: u64,
        last_seq: u64,
        limits: ReactionReadLimits,
    ) -> StoreResult<Vec<ReactionCount>> {
        if first_seq > last_seq {
            return Ok(Vec::new());
        }
        let lo = message_prefix(conversation, first_seq);
        // Emoji length bytes are at most MAX_REACTION_EMOJI_BYTES < 0xFF: every key of
        // `last_seq` sorts below this.
        let mut hi = message_prefix(conversation, last_seq);
        hi.push(0xFF);
        let snapshot = self.db.snapshot();
        let mut budget = limits.max_users_total;
        let mut out = Vec::new();
        for kv in snapshot.range(&self.counts, lo..=hi) {
            let (k, v) = kv.into_inner().map_err(backend)?;
            let (seq, emoji) = parse_count_key(&k)?;
            let count = decode_count(&v)?;
            let take = limits.max_users_per_emoji.min(budget);
            let mut users = Vec::with_capacity(take.min(count as usize));
            for kv in snapshot.prefix(&self.reactions, &k).take(take) {
                users.push(user_of_reaction_key(&kv.key().map_err(backend)?)?);
            }
            budget -= users.len();
            out.push(ReactionCount {
                seq,
                emoji,
                count,
                users,
            });
        }
        Ok(out)
    }
}

#[async_trait::async_trait]
impl ReactionStore for EmbeddedReactions {
    async fn add_reaction(
        &self,
        key: ReactionKey,
        limits: ReactionWriteLimits,
    ) -> StoreResult<AddOutcome> {
        self.run(move |s| s.add(&key, limits)).await
    }

    async fn remove_reaction(&self, key: ReactionKey) -> StoreResult<bool> {
        self.run(move |s| s.remove(&key)).await
    }

    async fn reactions(
        &self,
        conversation: ConversationId,
        first_seq: u64,
        last_seq: u64,
        limits: ReactionReadLimits,
    ) -> StoreResult<Vec<ReactionCount>> {
        self.run(move |s| s.aggregate(conversation, first_seq, last_seq, limits))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRITE: ReactionWriteLimits = ReactionWriteLimits {
        max_emoji_per_message: 3,
        max_per_user_per_message: 2,
    };
    const READ: ReactionReadLimits = ReactionReadLimits {
        max_users_per_emoji: 10,
        max_users_total: 100,
    };

    fn key(c: ConversationId, seq: u64, user: u128, emoji: &str) -> ReactionKey {
        ReactionKey {
            conversation: c,
            seq,
            user: UserId(user),
            emoji: emoji.to_owned(),
        }
    }

    #[tokio::test]
    async fn add_remove_aggregate_limits_and_persistence() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = ConversationId(7);
        let other = ConversationId(8);
        {
            let store = EmbeddedStore::open(dir.path()).expect("open");
            let r = EmbeddedReactions::open(&store).expect("reactions");
            assert_eq!(
                r.add_reaction(key(c, 1, 2, "👍"), WRITE).await.unwrap(),
                AddOutcome::Added
            );
            assert_eq!(
                r.add_reaction(key(c, 1, 2, "👍"), WRITE).await.unwrap(),
                AddOutcome::AlreadyPresent
            );
            assert_eq!(
                r.add_reaction(key(c, 1, 1, "👍"), WRITE).await.unwrap(),
                AddOutcome::Added
            );
            assert_eq!(
                r.add_reaction(key(c, 1, 1, "🎉"), WRITE).await.unwrap(),
                AddOutcome::Added
            );
            // Per-user limit: user 1 has two on seq 1.
            assert_eq!(
                r.add_reaction(key(c, 1, 1, "😀"), WRITE).await.unwrap(),
                AddOutcome::TooManyForUser
            );
            assert_eq!(
                r.add_reaction(key(c, 1, 3, "😀"), WRITE).await.unwrap(),
                AddOutcome::Added
            );
            // Distinct-emoji limit: three on seq 1 already; an existing one is still fine.
            assert_eq!(
                r.add_reaction(key(c, 1, 4, "🔥"), WRITE).await.unwrap(),
                AddOutcome::TooManyEmoji
            );
            assert_eq!(
                r.add_reaction(key(c, 1, 4, "🎉"), WRITE).await.unwrap(),
                AddOutcome::Added
            );
            // Neighbours that must not show up.
            r.add_reaction(key(c, 3, 1, "👍"), WRITE).await.unwrap();
            r.add_reaction(key(other, 1, 1, "👍"), WRITE).await.unwrap();
            assert!(r.remove_reaction(key(c, 1, 3, "😀")).await.unwrap());
            assert!(!r.remove_reaction(key(c, 1, 3, "😀")).await.unwrap());
            assert!(!r.remove_reaction(key(c, 2, 3, "😀")).await.unwrap());
        }
        // Reopened: everything persisted.
        let store = EmbeddedStore::open(dir.path()).expect("reopen");
        let r = EmbeddedReactions::open(&store).expect("reactions");
        let got = r.reactions(c, 1, 2, READ).await.unwrap();
        // Bytes order: 🎉 (F0 9F 8E 89) before 👍 (F0 9F 91 8D).
        assert_eq!(
            got,
            vec![
                ReactionCount {
                    seq: 1,
                    emoji: "🎉".into(),
                    count: 2,
                    users: vec![UserId(1), UserId(4)],
                },
                ReactionCount {
                    seq: 1,
                    emoji: "👍".into(),
                    count: 2,
                    users: vec![UserId(1), UserId(2)],
                },
            ]
        );
        assert_eq!(r.reactions(c, 3, 3, READ).await.unwrap().len(), 1);
        assert_eq!(r.reactions(c, 1, u64::MAX, READ).await.unwrap().len(), 3);
        assert!(r.reactions(c, 2, 1, READ).await.unwrap().is_empty());
        // Users listed are bounded, counts stay exact.
        let tight = ReactionReadLimits {
            max_users_per_emoji: 1,
            max_users_total: 1,
        };
        let got = r.reactions(c, 1, 1, tight).await.unwrap();
        assert_eq!(got[0].users.len(), 1);
        assert_eq!(got[0].count, 2);
        assert!(got[1].users.is_empty());
        assert_eq!(got[1].count, 2);
        // Removing the last reaction of an emoji frees its slot on the message.
        assert!(r.remove_reaction(key(c, 1, 1, "🎉")).await.unwrap());
        assert!(r.remove_reaction(key(c, 1, 4, "🎉")).await.unwrap());
        assert_eq!(
            r.add_reaction(key(c, 1, 4, "🔥"), WRITE).await.unwrap(),
            AddOutcome::Added
        );
    }

    #[tokio::test]
    async fn oversized_emoji_is_refused_not_a_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(dir.path()).expect("open");
        let r = EmbeddedReactions::open(&store).expect("reactions");
        let long = "x".repeat(MAX_REACTION_EMOJI_BYTES + 1);
        assert!(
            r.add_reaction(key(ConversationId(1), 1, 1, &long), WRITE)
                .await
                .is_err()
        );
        assert!(
            r.add_reaction(key(ConversationId(1), 1, 1, ""), WRITE)
                .await
                .is_err()
        );
    }
}
