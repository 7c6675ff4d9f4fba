//! The outbox's rules: messages composed (possibly offline) and not yet acknowledged by the
//! server, in compose order, within explicit limits.
//!
//! Every entry carries the `client_msg_id` chosen when it was composed (random, persisted with
//! the entry), so a resend after a reconnect or an app restart reuses the same id and the server
//! stores the message once (it deduplicates by `(conversation, sender, client_msg_id)`).
//! Entries are sent one at a time, oldest first ([`Outbox::front`]), so every conversation keeps
//! compose order.
//!
//! Storage sits behind [`OutboxStore`] (load all, append, remove by id), implemented by the
//! driver: the native SDK has a crash-safe file log, a browser would use IndexedDB, and
//! [`MemoryStore`] keeps nothing.

use std::collections::VecDeque;
use std::convert::Infallible;

use tern_wire::ids::ConversationId;

pub use tern_outbox_log::PendingSend;

/// How much the outbox may hold. When either limit is reached, composing fails with
/// [`OutboxError::Full`] and nothing already queued is touched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxLimits {
    pub max_entries: usize,
    /// Sum of payload and content-type bytes over all entries.
    pub max_bytes: usize,
}

impl OutboxLimits {
    /// An app offline for a long time still fits a day of heavy chatting; beyond that the user
    /// should see that nothing is going out.
    pub const DEFAULT_MAX_ENTRIES: usize = 10_000;
    /// Bounds the memory mirror and the log file on small devices.
    pub const DEFAULT_MAX_BYTES: usize = 64 * 1024 * 1024;
}

impl Default for OutboxLimits {
    fn default() -> Self {
        OutboxLimits {
            max_entries: Self::DEFAULT_MAX_ENTRIES,
            max_bytes: Self::DEFAULT_MAX_BYTES,
        }
    }
}

/// Where the outbox persists. Calls are made in this order: one `load` when the outbox opens,
/// then `append`s and `remove`s as entries come and go. `append` must be durable when it
/// returns; `remove` may be lazy (a lost remove only causes a resend, which the server
/// deduplicates).
pub trait OutboxStore {
    type Error;
    /// Every live entry, in append order.
    fn load(&mut self) -> Result<Vec<PendingSend>, Self::Error>;
    fn append(&mut self, entry: &PendingSend) -> Result<(), Self::Error>;
    fn remove(&mut self, client_msg_id: u128) -> Result<(), Self::Error>;
}

/// Keeps nothing beyond the process: for tests and apps that do not want persistence.
#[derive(Debug, Default, Clone, Copy)]
pub struct MemoryStore;

impl OutboxStore for MemoryStore {
    type Error = Infallible;
    fn load(&mut self) -> Result<Vec<PendingSend>, Infallible> {
        Ok(Vec::new())
    }
    fn append(&mut self, _entry: &PendingSend) -> Result<(), Infallible> {
        Ok(())
    }
    fn remove(&mut self, _client_msg_id: u128) -> Result<(), Infallible> {
        Ok(())
    }
}

/// Why an entry was not queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutboxError<E> {
    /// One of the [`OutboxLimits`] is reached.
    #[error(
        "outbox full: {pending} messages ({pending_bytes} bytes) waiting to be sent, limits are \
         {max_entries} messages and {max_bytes} bytes; a {entry_bytes}-byte message does not fit"
    )]
    Full {
        pending: usize,
        pending_bytes: usize,
        entry_bytes: usize,
        max_entries: usize,
        max_bytes: usize,
    },
    /// The entry cannot be represented (a content type longer than 65535 bytes).
    #[error("{0}")]
    Invalid(&'static str),
    /// The store failed.
    #[error("outbox store: {0}")]
    Store(E),
}

/// Pending sends in compose order, mirrored in memory and persisted through an [`OutboxStore`].
pub struct Outbox<S: OutboxStore> {
    store: S,
    entries: VecDeque<PendingSend>,
    bytes: usize,
    limits: OutboxLimits,
}

impl<S: OutboxStore> std::fmt::Debug for Outbox<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("entries", &self.entries.len())
            .field("bytes", &self.bytes)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Outbox<MemoryStore> {
    /// An outbox that does not survive the process.
    pub fn in_memory(limits: OutboxLimits) -> Self {
        Self::from_loaded(MemoryStore, Vec::new(), limits)
    }
}

impl<S: OutboxStore> Outbox<S> {
    /// Loads whatever `store` holds. Entries beyond `limits` (limits lowered since) are kept:
    /// nothing queued is ever dropped, only new entries are refused.
    pub fn open(mut store: S, limits: OutboxLimits) -> Result<Self, S::Error> {
        let loaded = store.load()?;
        Ok(Self::from_loaded(store, loaded, limits))
    }

    /// An outbox over entries the driver loaded itself (a store whose reads are asynchronous,
    /// like IndexedDB): `store.load` is not called. Same rules as [`Outbox::open`].
    pub fn from_loaded(store: S, loaded: Vec<PendingSend>, limits: OutboxLimits) -> Self {
        let bytes = loaded.iter().map(PendingSend::size).sum();
        Outbox {
            store,
            entries: loaded.into(),
            bytes,
            limits,
        }
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    /// Queues a new message under a fresh id and returns the id. `fresh_id` is the driver's
    /// source of random ids (called again while it returns an id already queued); `now_ms` is
    /// the wall-clock compose time recorded with the entry.
    pub fn compose(
        &mut self,
        conversation: ConversationId,
        content_type: &str,
        payload: Vec<u8>,
        now_ms: u64,
        mut fresh_id: impl FnMut() -> u128,
    ) -> Result<u128, OutboxError<S::Error>> {
        let client_msg_id = loop {
            let id = fresh_id();
            if !self.contains(id) {
                break id;
            }
        };
        self.enqueue(PendingSend {
            client_msg_id,
            conversation,
            content_type: content_type.to_string(),
            payload,
            created_ms: now_ms,
        })?;
        Ok(client_msg_id)
    }

    /// Queues a message with a caller-chosen id (persisted before this returns). An id already
    /// queued is left as it is (returns `Ok`): the first copy is what will be sent.
    pub fn enqueue(&mut self, entry: PendingSend) -> Result<(), OutboxError<S::Error>> {
        if self.contains(entry.client_msg_id) {
            return Ok(());
        }
        if entry.content_type.len() > u16::MAX as usize {
            return Err(OutboxError::Invalid("content type longer than 65535 bytes"));
        }
        let size = entry.size();
        if self.entries.len() >= self.limits.max_entries
            || self.bytes.saturating_add(size) > self.limits.max_bytes
        {
            return Err(OutboxError::Full {
                pending: self.entries.len(),
                pending_bytes: self.bytes,
                entry_bytes: size,
                max_entries: self.limits.max_entries,
                max_bytes: self.limits.max_bytes,
            });
        }
        self.store.append(&entry).map_err(OutboxError::Store)?;
        self.bytes += size;
        self.entries.push_back(entry);
        Ok(())
    }

    /// Removes an entry (after its SendAck, or a permanent rejection). The in-memory entry is
    /// gone even when the store fails (it is then sent again after a restart, which the server
    /// deduplicates); the store error is returned for logging.
    pub fn remove(&mut self, client_msg_id: u128) -> Result<Option<PendingSend>, S::Error> {
        let Some(pos) = self
            .entries
            .iter()
            .position(|e| e.client_msg_id == client_msg_id)
        else {
            return Ok(None);
        };
        let Some(entry) = self.entries.remove(pos) else {
            return Ok(None);
        };
        self.bytes -= entry.size();
        self.store.remove(client_msg_id)?;
        Ok(Some(entry))
    }

    /// A `SendAck` arrived for `client_msg_id` in `conversation` (possibly the late ack of a
    /// send whose caller gave up): the message is stored, so its entry leaves the outbox. An
    /// id queued for another conversation is not this message and stays.
    pub fn on_acked(
        &mut self,
        conversation: ConversationId,
        client_msg_id: u128,
    ) -> Result<Option<PendingSend>, S::Error> {
        if self
            .get(client_msg_id)
            .is_some_and(|e| e.conversation == conversation)
        {
            self.remove(client_msg_id)
        } else {
            Ok(None)
        }
    }

    pub fn contains(&self, client_msg_id: u128) -> bool {
        self.get(client_msg_id).is_some()
    }

    pub fn get(&self, client_msg_id: u128) -> Option<&PendingSend> {
        self.entries
            .iter()
            .find(|e| e.client_msg_id == client_msg_id)
    }

    /// The oldest entry: the next to send.
    pub fn front(&self) -> Option<&PendingSend> {
        self.entries.front()
    }

    /// Entries in compose order.
    pub fn iter(&self) -> impl Iterator<Item = &PendingSend> {
        self.entries.iter()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes counted against [`OutboxLimits::max_bytes`].
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn limits(&self) -> OutboxLimits {
        self.limits
    }

    pub fn set_limits(&mut self, limits: OutboxLimits) {
        self.limits = limits;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C1: ConversationId = ConversationId(1);
    const C2: ConversationId = ConversationId(2);

    /// A store that keeps a log of calls and can be told to fail.
    #[derive(Default)]
    struct Recording {
        loaded: Vec<PendingSend>,
        calls: Vec<String>,
        fail: bool,
    }

    impl OutboxStore for Recording {
        type Error = &'static str;
        fn load(&mut self) -> Result<Vec<PendingSend>, &'static str> {
            self.calls.push("load".into());
            Ok(std::mem::take(&mut self.loaded))
        }
        fn append(&mut self, entry: &PendingSend) -> Result<(), &'static str> {
            if self.fail {
                return Err("disk full");
            }
            self.calls.push(format!("append {}", entry.client_msg_id));
            Ok(())
        }
        fn remove(&mut self, id: u128) -> Result<(), &'static str> {
            if self.fail {
                return Err("disk gone");
            }
            self.calls.push(format!("remove {id}"));
            Ok(())
        }
    }

    fn entry(id: u128, conversation: ConversationId, len: usize) -> PendingSend {
        PendingSend {
            client_msg_id: id,
            conversation,
            content_type: "t".into(),
            payload: vec![0; len],
            created_ms: 0,
        }
    }

    fn ids<S: OutboxStore>(o: &Outbox<S>) -> Vec<u128> {
        o.iter().map(|e| e.client_msg_id).collect()
    }

    #[test]
    fn compose_order_fresh_ids_and_store_calls() {
        let mut o = Outbox::open(Recording::default(), OutboxLimits::default()).expect("open");
        // The id source repeats itself: a queued id is never reused.
        let mut next = [7u128, 7, 7, 8, 9].into_iter();
        let a = o.compose(C1, "text", b"a".to_vec(), 100, || next.next().unwrap_or(0));
        let b = o.compose(C2, "text", b"b".to_vec(), 101, || next.next().unwrap_or(0));
        assert_eq!((a, b), (Ok(7), Ok(8)));
        assert_eq!(
            o.front().map(|e| (e.client_msg_id, e.created_ms)),
            Some((7, 100))
        );
        assert_eq!(o.remove(7), Ok(Some(entry_with(7, C1, "text", b"a", 100))));
        assert_eq!(o.remove(7), Ok(None));
        assert_eq!(ids(&o), vec![8]);
        assert_eq!(
            o.store().calls,
            vec!["load", "append 7", "append 8", "remove 7"]
        );
    }

    fn entry_with(
        id: u128,
        conversation: ConversationId,
        ct: &str,
        payload: &[u8],
        created_ms: u64,
    ) -> PendingSend {
        PendingSend {
            client_msg_id: id,
            conversation,
            content_type: ct.into(),
            payload: payload.to_vec(),
            created_ms,
        }
    }

    #[test]
    fn limits_refuse_new_entries_and_keep_queued_ones() {
        let limits = OutboxLimits {
            max_entries: 3,
            max_bytes: 20,
        };
        let mut o = Outbox::in_memory(limits);
        o.enqueue(entry(1, C1, 4)).expect("a"); // 5 bytes
        o.enqueue(entry(2, C1, 4)).expect("b"); // 10
        assert_eq!(
            o.enqueue(entry(3, C1, 11)),
            Err(OutboxError::Full {
                pending: 2,
                pending_bytes: 10,
                entry_bytes: 12,
                max_entries: 3,
                max_bytes: 20,
            })
        );
        o.enqueue(entry(4, C1, 4)).expect("c");
        let err = o.enqueue(entry(5, C1, 0)).expect_err("full");
        assert!(matches!(err, OutboxError::Full { pending: 3, .. }));
        assert!(err.to_string().contains("outbox full"), "{err}");
        assert_eq!(ids(&o), vec![1, 2, 4]);
        o.remove(1).expect("remove");
        o.enqueue(entry(5, C1, 0)).expect("room again");
        assert_eq!(ids(&o), vec![2, 4, 5]);
        assert_eq!(o.bytes(), 5 + 5 + 1);
        // Lowering the limits keeps everything queued.
        o.set_limits(OutboxLimits {
            max_entries: 1,
            max_bytes: 1,
        });
        assert_eq!(o.len(), 3);
    }

    #[test]
    fn duplicates_invalid_entries_and_store_failures() {
        let mut o = Outbox::in_memory(OutboxLimits::default());
        let e = entry(42, C1, 1);
        o.enqueue(e.clone()).expect("enqueue");
        o.enqueue(e.clone()).expect("again");
        assert_eq!(o.len(), 1);
        let mut long = entry(43, C1, 0);
        long.content_type = "x".repeat(65536);
        assert!(matches!(o.enqueue(long), Err(OutboxError::Invalid(_))));

        let mut o = Outbox::open(Recording::default(), OutboxLimits::default()).expect("open");
        o.enqueue(entry(1, C1, 1)).expect("a");
        let mut failing = Outbox {
            store: Recording {
                fail: true,
                ..Recording::default()
            },
            entries: o.entries.clone(),
            bytes: o.bytes,
            limits: o.limits,
        };
        // A failed append queues nothing; a failed remove still forgets the entry.
        assert_eq!(
            failing.enqueue(entry(2, C1, 1)),
            Err(OutboxError::Store("disk full"))
        );
        assert_eq!(failing.remove(1), Err("disk gone"));
        assert!(failing.is_empty() && failing.bytes() == 0);
    }

    #[test]
    fn acks_remove_only_the_matching_conversation() {
        let mut o = Outbox::in_memory(OutboxLimits::default());
        o.enqueue(entry(1, C1, 1)).expect("a");
        assert_eq!(o.on_acked(C2, 1), Ok(None), "same id, other conversation");
        assert!(o.contains(1));
        assert!(matches!(o.on_acked(C1, 1), Ok(Some(_))));
        assert!(o.is_empty());
        assert_eq!(o.on_acked(C1, 1), Ok(None));
    }
}
