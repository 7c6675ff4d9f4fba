//! [`KeyStore`] on the embedded store's fjall database, in keyspaces of its own.
//!
//! # Layout
//!
//! Integers and ids big-endian as in [`super::embedded`]. `lp(x)` is one length byte then `x`
//! (key blobs are at most [`MAX_KEY_BLOB_BYTES`] < 256).
//!
//! | keyspace               | key                                        | value                                  |
//! |------------------------|--------------------------------------------|----------------------------------------|
//! | `key_devices`          | user (16), device (16)                     | created_ms (8), last_seen_ms (8)       |
//! | `key_identities`       | device (16)                                | user (16), lp(identity), lp(signing), lp(signature), lp(fallback) |
//! | `key_one_time`         | device (16), n (8)                         | key blob                               |
//! | `key_inbox`            | device (16), inbox_id (8)                  | from_user (16), from_device (16), created_ms (8), payload |
//! | `key_counters`         | tag (3), id (16)                           | u64 (8)                                |
//! | `key_backups`          | user (16)                                  | version length (1), version, meta      |
//! | `key_backup_sessions`  | user (16), conversation (16), session id, 0x00 | data                               |
//!
//! Counters: `otk` next one-time key number of a device, `inb` next inbox id of a device (never
//! reset, so inbox ids only grow), `inc` entries in a device's inbox, `bkc` backup entries of a
//! user. Session ids never contain NUL (refused), so the terminator keeps them in byte order.
//!
//! # Atomicity
//!
//! Every call runs under one process-local mutex and writes at most one fjall batch (all or
//! nothing). The mutex makes the one-time key pop a true pop: two claims never read the same
//! first key.
//!
//! # Durability: group commit
//!
//! A call returns only once everything it wrote, and everything it read, is on disk. The
//! batch is committed to the journal under the mutex without an fsync; after the mutex is
//! released the call waits in [`GroupSync`] until one `persist(SyncAll)` covers its write
//! generation. Concurrent calls share one fsync: a cold start (every device publishes, a group's
//! first messages claim keys and store key shares) would otherwise queue one fsync per request
//! behind the mutex (measured: ~500 requests/s at most, and a 10,000-device cold start took over
//! a minute). Nobody learns of a write before it is durable: a reader waits for the generation
//! it saw too, so a crash can only drop writes whose callers got no answer.

use std::ops::Bound;
use std::sync::{Arc, Condvar, Mutex};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use tern_wire::ids::{ConversationId, DeviceId, UserId};
use tern_wire::limits::MAX_KEY_BLOB_BYTES;
use tern_wire::msg::DeviceKeys;

use super::embedded::EmbeddedStore;
use super::keys::{
    BackupMeta, BackupPutOutcome, BackupSession, DeviceEntry, InboxEntry, InboxPush, KeyStore,
    MAX_BACKUP_SESSION_ID_BYTES, MAX_BACKUP_VERSION_BYTES, PublishOutcome, PublishedKeys,
};
use super::{StoreError, StoreResult};

/// Key material kept in the embedded store's database. Cheap to share behind an `Arc`.
pub struct EmbeddedKeys {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EmbeddedKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedKeys").finish_non_exhaustive()
    }
}

struct Inner {
    db: Database,
    devices: Keyspace,
    identities: Keyspace,
    one_time: Keyspace,
    inbox: Keyspace,
    counters: Keyspace,
    backups: Keyspace,
    backup_sessions: Keyspace,
    /// Held across every call (reads included, so they never see half a batch).
    lock: Mutex<()>,
    sync: GroupSync,
}

/// Group commit of the journal: write generations counted under the store mutex, one fsync for
/// every generation written before it started.
#[derive(Default)]
struct GroupSync {
    state: Mutex<SyncState>,
    synced: Condvar,
}

#[derive(Default)]
struct SyncState {
    /// Batches committed to the journal (under the store mutex, so in commit order).
    written: u64,
    /// Every generation up to this one is on disk.
    durable: u64,
    /// A caller is running the fsync now; the others wait for it.
    syncing: bool,
}

impl GroupSync {
    /// One more batch committed (call under the store mutex).
    fn committed(&self) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.written += 1;
    }

    /// The newest generation a reader may have seen (call under the store mutex).
    fn seen(&self) -> u64 {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).written
    }

    /// Returns once generation `generation` is durable: runs the fsync itself when nobody
    /// else is, else waits for the one in progress (and for another if it started too early).
    fn wait_durable(
        &self,
        generation: u64,
        persist: impl Fn() -> fjall::Result<()>,
    ) -> StoreResult<()> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if st.durable >= generation {
                return Ok(());
            }
            if st.syncing {
                st = self.synced.wait(st).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            st.syncing = true;
            let target = st.written;
            drop(st);
            let result = persist();
            st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            st.syncing = false;
            if result.is_ok() {
                st.durable = st.durable.max(target);
            }
            debug_assert!(st.durable <= st.written);
            self.synced.notify_all();
            result.map_err(backend)?;
        }
    }
}

fn backend(e: fjall::Error) -> StoreError {
    StoreError::Backend(format!("fjall (keys): {e}"))
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("keys: malformed {what}"))
}

fn invalid(why: String) -> StoreError {
    StoreError::Backend(format!("keys: {why}"))
}

impl EmbeddedKeys {
    /// Opens (creating if needed) the key keyspaces in `store`'s database. Call at start-up.
    pub fn open(store: &EmbeddedStore) -> StoreResult<EmbeddedKeys> {
        let db = store.database();
        let keyspace = |name: &str| {
            db.keyspace(name, KeyspaceCreateOptions::default)
                .map_err(backend)
        };
        let inner = Inner {
            devices: keyspace("key_devices")?,
            identities: keyspace("key_identities")?,
            one_time: keyspace("key_one_time")?,
            inbox: keyspace("key_inbox")?,
            counters: keyspace("key_counters")?,
            backups: keyspace("key_backups")?,
            backup_sessions: keyspace("key_backup_sessions")?,
            db: db.clone(),
            lock: Mutex::new(()),
            sync: GroupSync::default(),
        };
        Ok(EmbeddedKeys {
            inner: Arc::new(inner),
        })
    }

    async fn run<T, F>(&self, f: F) -> StoreResult<T>
    where
        F: FnOnce(&Inner) -> StoreResult<T> + Send + 'static,
        T: Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let (result, generation) = {
                let _guard = inner.lock.lock().unwrap_or_else(|p| p.into_inner());
                let result = f(&inner);
                (result, inner.sync.seen())
            };
            inner
                .sync
                .wait_durable(generation, || inner.db.persist(PersistMode::SyncAll))?;
            result
        })
        .await
        .map_err(|e| StoreError::Backend(format!("storage task did not complete: {e}")))?
    }
}

// ---------------------------------------------------------------------------------------------
// keys and values

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        k.extend_from_slice(p);
    }
    k
}

fn device_key(user: UserId, device: DeviceId) -> Vec<u8> {
    cat(&[&user.to_be_bytes(), &device.to_be_bytes()])
}

fn numbered(device: DeviceId, n: u64) -> Vec<u8> {
    cat(&[&device.to_be_bytes(), &n.to_be_bytes()])
}

fn counter_key(tag: &[u8; 3], id: u128) -> Vec<u8> {
    cat(&[tag, &id.to_be_bytes()])
}

fn session_key(user: UserId, conversation: ConversationId, session_id: &str) -> Vec<u8> {
    cat(&[
        &user.to_be_bytes(),
        &conversation.to_be_bytes(),
        session_id.as_bytes(),
        &[0],
    ])
}

fn u64_at(bytes: &[u8], at: usize, what: &str) -> StoreResult<u64> {
    bytes
        .get(at..at + 8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| corrupt(what))
}

fn u128_at(bytes: &[u8], at: usize, what: &str) -> StoreResult<u128> {
    bytes
        .get(at..at + 16)
        .and_then(|b| <[u8; 16]>::try_from(b).ok())
        .map(u128::from_be_bytes)
        .ok_or_else(|| corrupt(what))
}

fn push_lp(out: &mut Vec<u8>, blob: &[u8]) -> StoreResult<()> {
    if blob.len() > MAX_KEY_BLOB_BYTES {
        return Err(invalid(format!(
            "key blob of {} bytes exceeds {MAX_KEY_BLOB_BYTES}",
            blob.len()
        )));
    }
    out.push(blob.len() as u8);
    out.extend_from_slice(blob);
    Ok(())
}

fn read_lp<'a>(bytes: &'a [u8], at: &mut usize) -> StoreResult<&'a [u8]> {
    let len = *bytes.get(*at).ok_or_else(|| corrupt("identity"))? as usize;
    let blob = bytes
        .get(*at + 1..*at + 1 + len)
        .ok_or_else(|| corrupt("identity"))?;
    *at += 1 + len;
    Ok(blob)
}

/// A device's stored identity and fallback key.
struct Identity {
    user: UserId,
    identity_key: Vec<u8>,
    signing_key: Vec<u8>,
    signature: Vec<u8>,
    fallback_key: Vec<u8>,
}

fn encode_identity(i: &Identity) -> StoreResult<Vec<u8>> {
    let mut v = i.user.to_be_bytes().to_vec();
    push_lp(&mut v, &i.identity_key)?;
    push_lp(&mut v, &i.signing_key)?;
    push_lp(&mut v, &i.signature)?;
    push_lp(&mut v, &i.fallback_key)?;
    Ok(v)
}

fn decode_identity(bytes: &[u8]) -> StoreResult<Identity> {
    let user = UserId(u128_at(bytes, 0, "identity")?);
    let mut at = 16;
    let identity_key = read_lp(bytes, &mut at)?.to_vec();
    let signing_key = read_lp(bytes, &mut at)?.to_vec();
    let signature = read_lp(bytes, &mut at)?.to_vec();
    let fallback_key = read_lp(bytes, &mut at)?.to_vec();
    Ok(Identity {
        user,
        identity_key,
        signing_key,
        signature,
        fallback_key,
    })
}

fn identity_keys(device: DeviceId, i: &Identity) -> DeviceKeys {
    DeviceKeys {
        identity_key: i.identity_key.clone(),
        signing_key: i.signing_key.clone(),
        signature: i.signature.clone(),
        ..DeviceKeys::empty(i.user, device)
    }
}

fn validate_session_id(id: &str) -> StoreResult<()> {
    if id.is_empty() || id.len() > MAX_BACKUP_SESSION_ID_BYTES || id.as_bytes().contains(&0) {
        return Err(invalid(format!(
            "backup session id must be 1..={MAX_BACKUP_SESSION_ID_BYTES} bytes without NUL"
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// operations (all run under the lock)

impl Inner {
    /// A batch for [`Inner::commit`]: journaled, made durable by the group commit.
    fn batch(&self) -> fjall::OwnedWriteBatch {
        self.db.batch().durability(None)
    }

    /// Commits `batch` to the journal and counts its generation (the caller's `run` waits for
    /// it to be on disk before answering).
    fn commit(&self, batch: fjall::OwnedWriteBatch) -> StoreResult<()> {
        batch.commit().map_err(backend)?;
        self.sync.committed();
        Ok(())
    }

    fn counter(&self, tag: &[u8; 3], id: u128) -> StoreResult<u64> {
        match self.counters.get(counter_key(tag, id)).map_err(backend)? {
            Some(v) => u64_at(&v, 0, "counter"),
            None => Ok(0),
        }
    }

    fn identity(&self, device: DeviceId) -> StoreResult<Option<Identity>> {
        match self.identities.get(device.to_be_bytes()).map_err(backend)? {
            Some(v) => decode_identity(&v).map(Some),
            None => Ok(None),
        }
    }

    fn device_ids(&self, user: UserId) -> StoreResult<Vec<DeviceId>> {
        let mut out = Vec::new();
        for kv in self.devices.prefix(user.to_be_bytes()) {
            let key = kv.key().map_err(backend)?;
            out.push(DeviceId(u128_at(&key, 16, "device key")?));
        }
        Ok(out)
    }

    fn count_one_time(&self, device: DeviceId) -> u32 {
        self.one_time.prefix(device.to_be_bytes()).count() as u32
    }

    fn note_device(&self, user: UserId, device: DeviceId, now_ms: u64) -> StoreResult<()> {
        let key = device_key(user, device);
        let created = match self.devices.get(&key).map_err(backend)? {
            Some(v) => u64_at(&v, 0, "device entry")?,
            None => now_ms,
        };
        let mut batch = self.batch();
        batch.insert(
            &self.devices,
            key,
            cat(&[&created.to_be_bytes(), &now_ms.to_be_bytes()]),
        );
        self.commit(batch)
    }

    fn devices_of(&self, user: UserId) -> StoreResult<Vec<DeviceEntry>> {
        let mut out = Vec::new();
        for kv in self.devices.prefix(user.to_be_bytes()) {
            let (k, v) = kv.into_inner().map_err(backend)?;
            let device = DeviceId(u128_at(&k, 16, "device key")?);
            let identity_key = self
                .identity(device)?
                .filter(|i| i.user == user)
                .map(|i| i.identity_key)
                .unwrap_or_default();
            out.push(DeviceEntry {
                device,
                created_ms: u64_at(&v, 0, "device entry")?,
                last_seen_ms: u64_at(&v, 8, "device entry")?,
                identity_key,
            });
        }
        Ok(out)
    }

    fn delete_device(&self, user: UserId, device: DeviceId) -> StoreResult<bool> {
        let key = device_key(user, device);
        if self.devices.get(&key).map_err(backend)?.is_none() {
            return Ok(false);
        }
        let mut batch = self.batch();
        batch.remove(&self.devices, key);
        if self.identity(device)?.is_some_and(|i| i.user == user) {
            batch.remove(&self.identities, device.to_be_bytes());
        }
        for kv in self.one_time.prefix(device.to_be_bytes()) {
            batch.remove(&self.one_time, kv.key().map_err(backend)?);
        }
        for kv in self.inbox.prefix(device.to_be_bytes()) {
            batch.remove(&self.inbox, kv.key().map_err(backend)?);
        }
        batch.remove(&self.counters, counter_key(b"inc", device.0));
        // `otk` and `inb` stay: numbers and inbox ids of a reused device id keep growing.
        self.commit(batch)?;
        Ok(true)
    }

    fn publish(
        &self,
        user: UserId,
        device: DeviceId,
        keys: PublishedKeys,
        max_one_time_keys: u32,
    ) -> StoreResult<PublishOutcome> {
        let stored = self.count_one_time(device);
        let total = stored as u64 + keys.one_time_keys.len() as u64;
        if total > u64::from(max_one_time_keys) {
            return Ok(PublishOutcome::TooManyOneTimeKeys {
                stored,
                max: max_one_time_keys,
            });
        }
        let old = self.identity(device)?.filter(|i| i.user == user);
        let has_identity = !keys.identity_key.is_empty();
        let identity_changed = has_identity
            && old.as_ref().is_none_or(|o| {
                o.identity_key != keys.identity_key
                    || o.signing_key != keys.signing_key
                    || o.signature != keys.signature
            });
        let mut batch = self.batch();
        let listed = device_key(user, device);
        if self.devices.get(&listed).map_err(backend)?.is_none() {
            // Published before any connection noted it (tests, tools): list it, times unknown.
            batch.insert(&self.devices, listed, [0u8; 16]);
        }
        let (identity_key, signing_key, signature) = match (&old, has_identity) {
            (_, true) => (keys.identity_key, keys.signing_key, keys.signature),
            (Some(o), false) => (
                o.identity_key.clone(),
                o.signing_key.clone(),
                o.signature.clone(),
            ),
            (None, false) => (Vec::new(), Vec::new(), Vec::new()),
        };
        let fallback_key = if keys.fallback_key.is_empty() {
            old.as_ref()
                .map(|o| o.fallback_key.clone())
                .unwrap_or_default()
        } else {
            keys.fallback_key
        };
        let identity = Identity {
            user,
            identity_key,
            signing_key,
            signature,
            fallback_key,
        };
        batch.insert(
            &self.identities,
            device.to_be_bytes(),
            encode_identity(&identity)?,
        );
        // A reinstall (new identity) invalidates the one-time keys made by the old one.
        let mut left = stored;
        if identity_changed && old.is_some() {
            for kv in self.one_time.prefix(device.to_be_bytes()) {
                batch.remove(&self.one_time, kv.key().map_err(backend)?);
            }
            left = 0;
        }
        let mut next = self.counter(b"otk", device.0)?;
        for blob in &keys.one_time_keys {
            if blob.len() > MAX_KEY_BLOB_BYTES {
                return Err(invalid("one-time key too long".into()));
            }
            batch.insert(&self.one_time, numbered(device, next), blob.as_slice());
            next += 1;
        }
        left += keys.one_time_keys.len() as u32;
        batch.insert(
            &self.counters,
            counter_key(b"otk", device.0),
            next.to_be_bytes(),
        );
        self.commit(batch)?;
        Ok(PublishOutcome::Stored {
            identity_changed,
            one_time_keys_left: left,
        })
    }

    fn query(&self, user: UserId) -> StoreResult<Vec<DeviceKeys>> {
        let mut out = Vec::new();
        for device in self.device_ids(user)? {
            if let Some(i) = self.identity(device)?.filter(|i| i.user == user)
                && !i.identity_key.is_empty()
            {
                out.push(identity_keys(device, &i));
            }
        }
        Ok(out)
    }

    fn claim(
        &self,
        user: UserId,
        devices: Vec<DeviceId>,
        consume: bool,
    ) -> StoreResult<Vec<DeviceKeys>> {
        let all = self.device_ids(user)?;
        let wanted: Vec<DeviceId> = if devices.is_empty() {
            all
        } else {
            all.into_iter().filter(|d| devices.contains(d)).collect()
        };
        let mut out = Vec::new();
        let mut batch = self.batch();
        let mut popped = false;
        for device in wanted {
            let Some(i) = self.identity(device)?.filter(|i| i.user == user) else {
                continue;
            };
            if i.identity_key.is_empty() {
                continue;
            }
            let mut keys = identity_keys(device, &i);
            let first = if consume {
                self.one_time
                    .prefix(device.to_be_bytes())
                    .next()
                    .map(|kv| kv.into_inner().map_err(backend))
                    .transpose()?
            } else {
                None
            };
            match first {
                Some((k, v)) => {
                    batch.remove(&self.one_time, k);
                    keys.one_time_keys = vec![v.to_vec()];
                    popped = true;
                }
                None => keys.fallback_key = i.fallback_key.clone(),
            }
            out.push(keys);
        }
        if popped {
            self.commit(batch)?;
        }
        Ok(out)
    }

    fn push_inbox(
        &self,
        pushes: Vec<InboxPush>,
        now_ms: u64,
        max_entries: u64,
    ) -> StoreResult<Vec<Option<u64>>> {
        use std::collections::HashMap;
        // (next id, count) per device, read once and carried through the batch.
        let mut state: HashMap<DeviceId, (u64, u64)> = HashMap::new();
        let mut out = Vec::with_capacity(pushes.len());
        let mut batch = self.batch();
        for p in pushes {
            let entry = match state.get_mut(&p.to_device) {
                Some(e) => e,
                None => {
                    let next = self.counter(b"inb", p.to_device.0)?.max(1);
                    let count = self.counter(b"inc", p.to_device.0)?;
                    state.entry(p.to_device).or_insert((next, count))
                }
            };
            if entry.1 >= max_entries {
                out.push(None);
                continue;
            }
            let id = entry.0;
            let value = cat(&[
                &p.from_user.to_be_bytes(),
                &p.from_device.to_be_bytes(),
                &now_ms.to_be_bytes(),
                &p.payload,
            ]);
            batch.insert(&self.inbox, numbered(p.to_device, id), value);
            entry.0 += 1;
            entry.1 += 1;
            out.push(Some(id));
        }
        for (device, (next, count)) in state {
            batch.insert(
                &self.counters,
                counter_key(b"inb", device.0),
                next.to_be_bytes(),
            );
            batch.insert(
                &self.counters,
                counter_key(b"inc", device.0),
                count.to_be_bytes(),
            );
        }
        self.commit(batch)?;
        Ok(out)
    }

    fn inbox(&self, device: DeviceId, after: u64, limit: u32) -> StoreResult<Vec<InboxEntry>> {
        let lo = numbered(device, after.saturating_add(1));
        let hi = numbered(device, u64::MAX);
        let mut out = Vec::new();
        if after == u64::MAX {
            return Ok(out);
        }
        for kv in self.inbox.range(lo..=hi).take(limit as usize) {
            let (k, v) = kv.into_inner().map_err(backend)?;
            out.push(InboxEntry {
                inbox_id: u64_at(&k, 16, "inbox key")?,
                from_user: UserId(u128_at(&v, 0, "inbox entry")?),
                from_device: DeviceId(u128_at(&v, 16, "inbox entry")?),
                created_ms: u64_at(&v, 32, "inbox entry")?,
                payload: v.get(40..).ok_or_else(|| corrupt("inbox entry"))?.to_vec(),
            });
        }
        Ok(out)
    }

    /// Removes the entries `keep` rejects; returns how many.
    /// Deletes the listed entries of `device`'s inbox in one batch (and its count).
    fn remove_inbox_ids(&self, device: DeviceId, inbox_ids: &[u64]) -> StoreResult<u64> {
        let mut removed = 0u64;
        let mut batch = self.batch();
        let mut seen = std::collections::BTreeSet::new();
        for id in inbox_ids {
            if !seen.insert(*id) {
                continue;
            }
            let key = numbered(device, *id);
            if self.inbox.get(&key).map_err(backend)?.is_some() {
                batch.remove(&self.inbox, key);
                removed += 1;
            }
        }
        if removed > 0 {
            let count = self.counter(b"inc", device.0)?.saturating_sub(removed);
            batch.insert(
                &self.counters,
                counter_key(b"inc", device.0),
                count.to_be_bytes(),
            );
            self.commit(batch)?;
        }
        Ok(removed)
    }

    fn remove_inbox_where(
        &self,
        device: DeviceId,
        mut drop: impl FnMut(u64, &[u8]) -> StoreResult<bool>,
    ) -> StoreResult<u64> {
        let mut removed = 0u64;
        let mut batch = self.batch();
        for kv in self.inbox.prefix(device.to_be_bytes()) {
            let (k, v) = kv.into_inner().map_err(backend)?;
            if drop(u64_at(&k, 16, "inbox key")?, &v)? {
                batch.remove(&self.inbox, k);
                removed += 1;
            }
        }
        if removed > 0 {
            let count = self.counter(b"inc", device.0)?.saturating_sub(removed);
            batch.insert(
                &self.counters,
                counter_key(b"inc", device.0),
                count.to_be_bytes(),
            );
            self.commit(batch)?;
        }
        Ok(removed)
    }

    fn put_backup(&self, user: UserId, backup: BackupMeta) -> StoreResult<()> {
        if backup.version.len() > MAX_BACKUP_VERSION_BYTES {
            return Err(invalid("backup version too long".into()));
        }
        let old = self.backup(user)?;
        let mut batch = self.batch();
        if old.is_some_and(|o| o.version != backup.version) {
            for kv in self.backup_sessions.prefix(user.to_be_bytes()) {
                batch.remove(&self.backup_sessions, kv.key().map_err(backend)?);
            }
            batch.remove(&self.counters, counter_key(b"bkc", user.0));
        }
        let value = cat(&[
            &[backup.version.len() as u8],
            backup.version.as_bytes(),
            &backup.meta,
        ]);
        batch.insert(&self.backups, user.to_be_bytes(), value);
        self.commit(batch)
    }

    fn backup(&self, user: UserId) -> StoreResult<Option<BackupMeta>> {
        let Some(v) = self.backups.get(user.to_be_bytes()).map_err(backend)? else {
            return Ok(None);
        };
        let len = *v.first().ok_or_else(|| corrupt("backup"))? as usize;
        let version = v.get(1..1 + len).ok_or_else(|| corrupt("backup"))?;
        let version = std::str::from_utf8(version).map_err(|_| corrupt("backup version"))?;
        Ok(Some(BackupMeta {
            version: version.to_owned(),
            meta: v.get(1 + len..).unwrap_or_default().to_vec(),
        }))
    }

    fn put_sessions(
        &self,
        user: UserId,
        version: String,
        sessions: Vec<BackupSession>,
        max_entries: u64,
    ) -> StoreResult<BackupPutOutcome> {
        let Some(current) = self.backup(user)? else {
            return Ok(BackupPutOutcome::NoBackup);
        };
        if current.version != version {
            return Ok(BackupPutOutcome::StaleVersion);
        }
        let mut total = self.counter(b"bkc", user.0)?;
        let mut batch = self.batch();
        let mut seen = std::collections::HashSet::new();
        for s in &sessions {
            validate_session_id(&s.session_id)?;
            let key = session_key(user, s.conversation, &s.session_id);
            let new = self.backup_sessions.get(&key).map_err(backend)?.is_none();
            if seen.insert(key.clone()) && new {
                total += 1;
            }
            batch.insert(&self.backup_sessions, key, s.data.as_slice());
        }
        if total > max_entries {
            return Ok(BackupPutOutcome::TooMany { max: max_entries });
        }
        batch.insert(
            &self.counters,
            counter_key(b"bkc", user.0),
            total.to_be_bytes(),
        );
        self.commit(batch)?;
        Ok(BackupPutOutcome::Stored { total })
    }

    fn sessions(
        &self,
        user: UserId,
        conversation: Option<ConversationId>,
        after: Option<(ConversationId, String)>,
        limit: u32,
    ) -> StoreResult<Vec<BackupSession>> {
        let prefix = match conversation {
            Some(c) => cat(&[&user.to_be_bytes(), &c.to_be_bytes()]),
            None => user.to_be_bytes().to_vec(),
        };
        let lower = match &after {
            Some((c, sid)) => Bound::Excluded(session_key(user, *c, sid)),
            None => Bound::Included(prefix.clone()),
        };
        let mut out = Vec::new();
        for kv in self
            .backup_sessions
            .range::<Vec<u8>, _>((lower, Bound::Unbounded))
        {
            if out.len() >= limit as usize {
                break;
            }
            let (k, v) = kv.into_inner().map_err(backend)?;
            if !k.starts_with(&prefix) {
                break;
            }
            let conv = ConversationId(u128_at(&k, 16, "backup key")?);
            let sid = k
                .get(32..k.len().saturating_sub(1))
                .ok_or_else(|| corrupt("backup key"))?;
            let sid = std::str::from_utf8(sid).map_err(|_| corrupt("backup session id"))?;
            out.push(BackupSession {
                conversation: conv,
                session_id: sid.to_owned(),
                data: v.to_vec(),
            });
        }
        Ok(out)
    }
}

#[async_trait::async_trait]
impl KeyStore for EmbeddedKeys {
    async fn note_device(&self, user: UserId, device: DeviceId, now_ms: u64) -> StoreResult<()> {
        self.run(move |s| s.note_device(user, device, now_ms)).await
    }

    async fn devices_of(&self, user: UserId) -> StoreResult<Vec<DeviceEntry>> {
        self.run(move |s| s.devices_of(user)).await
    }

    async fn delete_device(&self, user: UserId, device: DeviceId) -> StoreResult<bool> {
        self.run(move |s| s.delete_device(user, device)).await
    }

    async fn publish_keys(
        &self,
        user: UserId,
        device: DeviceId,
        keys: PublishedKeys,
        max_one_time_keys: u32,
    ) -> StoreResult<PublishOutcome> {
        self.run(move |s| s.publish(user, device, keys, max_one_time_keys))
            .await
    }

    async fn query_keys(&self, user: UserId) -> StoreResult<Vec<DeviceKeys>> {
        self.run(move |s| s.query(user)).await
    }

    async fn claim_keys(
        &self,
        user: UserId,
        devices: Vec<DeviceId>,
        consume: bool,
    ) -> StoreResult<Vec<DeviceKeys>> {
        self.run(move |s| s.claim(user, devices, consume)).await
    }

    async fn one_time_keys_left(&self, device: DeviceId) -> StoreResult<u32> {
        self.run(move |s| Ok(s.count_one_time(device))).await
    }

    async fn push_inbox(
        &self,
        pushes: Vec<InboxPush>,
        now_ms: u64,
        max_entries: u64,
    ) -> StoreResult<Vec<Option<u64>>> {
        self.run(move |s| s.push_inbox(pushes, now_ms, max_entries))
            .await
    }

    async fn inbox(
        &self,
        device: DeviceId,
        after: u64,
        limit: u32,
    ) -> StoreResult<Vec<InboxEntry>> {
        self.run(move |s| s.inbox(device, after, limit)).await
    }

    async fn ack_inbox(&self, device: DeviceId, inbox_ids: Vec<u64>) -> StoreResult<u64> {
        self.run(move |s| s.remove_inbox_ids(device, &inbox_ids))
            .await
    }

    async fn expire_inbox(&self, device: DeviceId, cutoff_ms: u64) -> StoreResult<u64> {
        self.run(move |s| {
            s.remove_inbox_where(device, |_, v| Ok(u64_at(v, 32, "inbox entry")? < cutoff_ms))
        })
        .await
    }

    async fn put_backup(&self, user: UserId, backup: BackupMeta) -> StoreResult<()> {
        self.run(move |s| s.put_backup(user, backup)).await
    }

    async fn backup(&self, user: UserId) -> StoreResult<Option<BackupMeta>> {
        self.run(move |s| s.backup(user)).await
    }

    async fn put_backup_sessions(
        &self,
        user: UserId,
        version: String,
        sessions: Vec<BackupSession>,
        max_entries: u64,
    ) -> StoreResult<BackupPutOutcome> {
        self.run(move |s| s.put_sessions(user, version, sessions, max_entries))
            .await
    }

    async fn backup_sessions(
        &self,
        user: UserId,
        conversation: Option<ConversationId>,
        after: Option<(ConversationId, String)>,
        limit: u32,
    ) -> StoreResult<Vec<BackupSession>> {
        self.run(move |s| s.sessions(user, conversation, after, limit))
            .await
    }
}

#[cfg(test)]
mod group_sync_tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn concurrent_writers_share_fsyncs_and_each_returns_durable() {
        let sync = Arc::new(GroupSync::default());
        let fsyncs = Arc::new(AtomicU32::new(0));
        let writers: Vec<_> = (0..16)
            .map(|_| {
                let (sync, fsyncs) = (Arc::clone(&sync), Arc::clone(&fsyncs));
                std::thread::spawn(move || {
                    sync.committed();
                    let generation = sync.seen();
                    sync.wait_durable(generation, || {
                        fsyncs.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(20));
                        Ok(())
                    })
                    .expect("durable");
                    let st = sync.state.lock().expect("state");
                    assert!(
                        st.durable >= generation,
                        "returned before its write was synced"
                    );
                })
            })
            .collect();
        for w in writers {
            w.join().expect("writer");
        }
        let n = fsyncs.load(Ordering::SeqCst);
        assert!((1..16).contains(&n), "{n} fsyncs for 16 writers");
        // Nothing new written: no fsync at all.
        sync.wait_durable(sync.seen(), || panic!("no fsync needed"))
            .expect("already durable");
    }

    #[test]
    fn a_failed_fsync_is_reported_and_not_counted_durable() {
        let sync = GroupSync::default();
        sync.committed();
        let failed = sync.wait_durable(1, || {
            Err(fjall::Error::Io(std::io::Error::other("disk gone")))
        });
        assert!(failed.is_err());
        assert_eq!(sync.state.lock().expect("state").durable, 0);
        sync.wait_durable(1, || Ok(())).expect("retried");
        assert_eq!(sync.state.lock().expect("state").durable, 1);
    }
}
