//! The embedded backend, and the default: [`Store`] on fjall, a pure-Rust LSM tree in one local
//! directory, so a single `tern` binary runs with zero set-up.
//!
//! # Layout
//!
//! One fjall keyspace per kind of record. Integers in keys are big-endian, so the byte order
//! fjall sorts by is numeric order and a range scan over a conversation's messages returns them
//! by ascending `seq` (and a reverse scan finds the last one without reading the rest).
//!
//! | keyspace             | key                                                  | value               |
//! |----------------------|------------------------------------------------------|---------------------|
//! | `users`              | user id (16)                                         | user record         |
//! | `usernames`          | lowercased username (UTF-8)                          | user id (16)        |
//! | `tokens`             | SHA-256 of the token (32)                            | token record        |
//! | `user_tokens`        | user id (16), SHA-256 of the token (32)              | empty               |
//! | `devices`            | device id (16)                                       | device record       |
//! | `conversations`      | conversation id (16)                                 | conversation record |
//! | `members`            | conversation id (16), user id (16)                   | member record       |
//! | `user_conversations` | user id (16), conversation id (16)                   | empty               |
//! | `direct_pairs`       | min(a, b) (16), max(a, b) (16)                       | conversation id (16)|
//! | `group_names`        | normalised group name (UTF-8)                        | conversation id (16)|
//! | `invitations`        | conversation id (16), user id (16)                   | invitation record   |
//! | `user_invitations`   | user id (16), conversation id (16)                   | empty               |
//! | `departures`         | conversation id (16), user id (16)                   | seq (8)             |
//! | `messages`           | conversation id (16), seq (8)                        | message record      |
//! | `sender_seqs`        | conversation id (16), sender (16), seq (8)           | empty               |
//! | `client_ids`         | conversation id (16), sender (16), client msg id (16)| seq (8)             |
//! | `cursors`            | device id (16), conversation id (16)                 | seq (8)             |
//! | `delivered`          | conversation id (16), user id (16)                   | seq (8)             |
//! | `meta`               | `layout`                                             | layout version (1)  |
//!
//! `delivered` (delivery marks) appeared after layout 2 without a layout bump: an older directory
//! opens with it empty, and marks start with the first acknowledgement after the upgrade.
//!
//! Layout 2 added `user_tokens` (log out everywhere) and `devices` (device binding); opening a
//! layout-1 directory builds `user_tokens` from `tokens` once, then records layout 2.
//!
//! Layout 3 added `sender_seqs` (history by sender), written by `commit` in the same batch as
//! the message. Opening an older directory builds it from `messages` once, before the store is
//! returned (so before anything can commit): one sequential pass, in batches of
//! [`BACKFILL_BATCH`] entries, logged at start, every [`BACKFILL_LOG_EVERY`] messages and at
//! the end; then layout 3 is recorded. A crash in between redoes the pass on the next open
//! (the entries are idempotent). A build that knows only layout 2 refuses a layout-3 directory
//! instead of committing messages the index would miss.
//!
//! History by time needs no index: timestamps are non-decreasing per conversation (the
//! sequencer's invariant), so `first_seq_at` binary-searches over seqs with point reads.
//!
//! Records are a private, versioned encoding: one format-version byte, then postcard of a private
//! serde struct that mirrors the public record (the public types carry no serde, so the disk
//! format cannot change by accident when they do). Index values that are a plain id or seq are
//! fixed-width big-endian bytes. Anything that does not decode is reported as
//! [`StoreError::Corrupt`], never a panic.
//!
//! # Durability and atomicity
//!
//! Every write is a single fjall write batch committed with [`PersistMode::SyncAll`]. fjall
//! writes the batch to its journal and fsyncs it *before* applying it to the memtables, so a
//! write is never visible to a reader before it is durable, and journal recovery drops a batch
//! that was torn by a crash (each batch carries an end marker and checksum): a batch is all or
//! nothing. [`Store::commit`] is the group-commit point: all messages, their client-id index
//! entries and the cursor updates of one call share one batch and so one fsync.
//!
//! # Threads
//!
//! fjall calls block (disk reads, fsync, write stalls while compaction catches up), so every
//! call runs on tokio's blocking pool via `spawn_blocking`; shard runtimes never block on disk.
//! fjall serializes all writers on its journal anyway, so the process-local mutexes around the
//! few check-then-write operations (unique usernames and pairs, forward-only cursors) cost no
//! write parallelism. A failed fsync poisons the fjall database: every later write fails with
//! [`StoreError::Backend`] and the process should restart and recover from the journal.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Readable};
use serde::{Deserialize, Serialize};
use tern_wire::ids::{ConversationId, DeviceId, MessageId, UserId};
use tern_wire::msg::{ConversationKind, DeliveryMark, FileRef, MemberRole, Message};

use super::{
    CommitBatch, ConversationRecord, DeviceRecord, HistoryFrom, HistoryQuery, InvitationRecord,
    MemberRecord, Store, StoreError, StoreResult, TokenRecord, UserRecord,
};

/// The most messages one [`Store::history`] call returns, whatever `limit` asks for: a page is
/// built in memory and sent as one frame, so its size must stay bounded.
pub const MAX_HISTORY_LIMIT: u32 = 1000;

/// Longest username (in bytes, after lowercasing) the username index accepts. fjall keys are
/// limited to 64 KiB and panic beyond it; real names are validated far shorter by the engine.
pub const MAX_USERNAME_BYTES: usize = 1024;

/// First byte of every encoded record. A new record layout gets a new number, and readers
/// keep decoding the old ones.
const RECORD_V1: u8 = 1;

/// Version of the keyspace layout as a whole, stored under `meta/layout`. Opening a directory
/// written with a layout this build does not know fails instead of misreading it.
const LAYOUT_VERSION: u8 = 3;
/// The layout before `user_tokens` and `devices`; upgraded in place on open.
const LAYOUT_VERSION_1: u8 = 1;
/// The layout before `sender_seqs`; upgraded in place on open.
const LAYOUT_VERSION_2: u8 = 2;
/// Index entries per write batch while `sender_seqs` is built for an older directory: bounds
/// the memory of the upgrade whatever the number of messages.
pub const BACKFILL_BATCH: usize = 10_000;
/// Progress is logged every this many messages during that upgrade.
const BACKFILL_LOG_EVERY: u64 = 1_000_000;
const LAYOUT_KEY: &[u8] = b"layout";

/// Tuning knobs of [`EmbeddedStore::open_with`]. `None` keeps fjall's default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EmbeddedOptions {
    /// Block cache capacity in bytes (fjall recommends ~20-25% of memory).
    pub cache_bytes: Option<u64>,
    /// Background flush and compaction threads (fjall's default is min(cores, 4)). Values below
    /// 1 are raised to 1.
    pub worker_threads: Option<usize>,
}

/// The embedded store. Cheap to share behind an `Arc`; one per data directory and process
/// (fjall locks the directory, so a second open of the same path fails until the first store
/// is dropped).
///
/// Dropping it closes the database, which waits for fjall's background threads and persists
/// the journal: drop it where a short block is acceptable (shutdown), not on a hot path.
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").finish_non_exhaustive()
    }
}

struct Inner {
    db: Database,
    users: Keyspace,
    usernames: Keyspace,
    tokens: Keyspace,
    user_tokens: Keyspace,
    devices: Keyspace,
    conversations: Keyspace,
    members: Keyspace,
    user_conversations: Keyspace,
    direct_pairs: Keyspace,
    group_names: Keyspace,
    invitations: Keyspace,
    user_invitations: Keyspace,
    departures: Keyspace,
    /// `blocker ++ blocked` → empty.
    blocks: Keyspace,
    /// `blocked ++ blocker` → empty (who blocks a user, for presence).
    blocked_by: Keyspace,
    messages: Keyspace,
    /// `conversation ++ sender ++ seq` → empty: history by sender without a scan.
    sender_seqs: Keyspace,
    client_ids: Keyspace,
    cursors: Keyspace,
    /// `conversation ++ user` → the highest cursor of the user's devices (delivery mark).
    delivered: Keyspace,
    /// User id → payload bytes stored (u64 big-endian): the storage quota's counter.
    usage: Keyspace,
    /// Held across every check-then-write on accounts, tokens, conversations, direct pairs,
    /// group names, invitations and memberships, so two concurrent calls cannot both see
    /// "free" and both write (duplicate usernames or group names, two 1:1 conversations for one
    /// pair, a token deleted "twice", one invitation accepted and declined).
    meta_lock: Mutex<()>,
    /// Held across the read-max-write of cursors and the read-add-write of usage counters in
    /// `commit`, so concurrent commits (engine shards) cannot move a cursor backwards or lose a
    /// usage increment. Taken once per group commit, not per message.
    cursor_lock: Mutex<()>,
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store in the directory `path` with default options.
    ///
    /// Blocks while fjall recovers its journal: call it at start-up or from a blocking context.
    pub fn open(path: &Path) -> StoreResult<EmbeddedStore> {
        Self::open_with(path, EmbeddedOptions::default())
    }

    /// Opens (creating if needed) the store in the directory `path`.
    pub fn open_with(path: &Path, options: EmbeddedOptions) -> StoreResult<EmbeddedStore> {
        let mut builder = Database::builder(path);
        if let Some(bytes) = options.cache_bytes {
            builder = builder.cache_size(bytes);
        }
        if let Some(n) = options.worker_threads {
            // fjall asserts n >= 1; a zero from a config file must not panic.
            builder = builder.worker_threads(n.max(1));
        }
        let db = builder.open().map_err(backend)?;
        let keyspace = |name: &str| {
            db.keyspace(name, KeyspaceCreateOptions::default)
                .map_err(backend)
        };
        let meta = keyspace("meta")?;
        let inner = Inner {
            users: keyspace("users")?,
            usernames: keyspace("usernames")?,
            tokens: keyspace("tokens")?,
            user_tokens: keyspace("user_tokens")?,
            devices: keyspace("devices")?,
            conversations: keyspace("conversations")?,
            members: keyspace("members")?,
            user_conversations: keyspace("user_conversations")?,
            direct_pairs: keyspace("direct_pairs")?,
            group_names: keyspace("group_names")?,
            invitations: keyspace("invitations")?,
            user_invitations: keyspace("user_invitations")?,
            departures: keyspace("departures")?,
            blocks: keyspace("blocks")?,
            blocked_by: keyspace("blocked_by")?,
            messages: keyspace("messages")?,
            sender_seqs: keyspace("sender_seqs")?,
            client_ids: keyspace("client_ids")?,
            cursors: keyspace("cursors")?,
            delivered: keyspace("delivered")?,
            usage: keyspace("usage")?,
            db: db.clone(),
            meta_lock: Mutex::new(()),
            cursor_lock: Mutex::new(()),
        };
        match meta.get(LAYOUT_KEY).map_err(backend)? {
            Some(v) if v.as_ref() == [LAYOUT_VERSION] => {}
            Some(v) if v.as_ref() == [LAYOUT_VERSION_1] || v.as_ref() == [LAYOUT_VERSION_2] => {
                if v.as_ref() == [LAYOUT_VERSION_1] {
                    inner.index_tokens_by_user()?;
                }
                inner.index_messages_by_sender()?;
                let mut batch = inner.batch();
                batch.insert(&meta, LAYOUT_KEY, [LAYOUT_VERSION]);
                batch.commit().map_err(backend)?;
            }
            Some(v) => {
                return Err(StoreError::Corrupt(format!(
                    "data directory has layout version {:?}, this build reads {LAYOUT_VERSION}",
                    v.as_ref()
                )));
            }
            None => {
                let mut batch = inner.batch();
                batch.insert(&meta, LAYOUT_KEY, [LAYOUT_VERSION]);
                batch.commit().map_err(backend)?;
            }
        }
        Ok(EmbeddedStore {
            inner: Arc::new(inner),
        })
    }

    /// The fjall database, for stores kept beside this one in their own keyspaces
    /// (`embedded_reactions`).
    pub(crate) fn database(&self) -> Database {
        self.inner.db.clone()
    }

    /// Runs `f` on tokio's blocking pool: fjall may block on disk and fsync.
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

impl Inner {
    /// A write batch that fsyncs the journal before it is applied (see the module docs).
    fn batch(&self) -> fjall::OwnedWriteBatch {
        self.db.batch().durability(Some(PersistMode::SyncAll))
    }

    /// A consistent view for reads. Plain keyspace reads see the newest version of each key,
    /// including a batch that is halfway applied to the memtables; a snapshot only sees batches
    /// that were applied whole, so readers never observe half of an atomic write (a conversation
    /// without its members, a page missing part of a commit). The check-then-write paths read
    /// the keyspaces directly instead: under their lock every earlier write is complete.
    fn read(&self) -> fjall::Snapshot {
        self.db.snapshot()
    }
}

/// The guarded data is `()`, so a panic while holding the lock leaves nothing inconsistent
/// behind: recover the guard instead of propagating the poison.
fn lock(m: &Mutex<()>) -> MutexGuard<'_, ()> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn backend(e: fjall::Error) -> StoreError {
    match e {
        // Errors that mean "the bytes on disk are not what fjall wrote".
        fjall::Error::Decompress(_)
        | fjall::Error::InvalidTrailer
        | fjall::Error::InvalidTag(_)
        | fjall::Error::InvalidVersion(_)
        | fjall::Error::JournalRecovery(_) => StoreError::Corrupt(format!("fjall: {e}")),
        _ => StoreError::Backend(format!("fjall: {e}")),
    }
}

// ---------------------------------------------------------------------------------------------
// keys

fn cat2(a: [u8; 16], b: [u8; 16]) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..16].copy_from_slice(&a);
    k[16..].copy_from_slice(&b);
    k
}

fn message_key(conversation: ConversationId, seq: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..16].copy_from_slice(&conversation.to_be_bytes());
    k[16..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// `sender_seqs` key: conversation, sender, seq (big-endian, so a sender's messages sort by seq).
fn sender_key(conversation: ConversationId, sender: UserId, seq: u64) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..16].copy_from_slice(&conversation.to_be_bytes());
    k[16..32].copy_from_slice(&sender.to_be_bytes());
    k[32..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// The seq in a `sender_seqs` key.
fn seq_of_sender_key(key: &[u8]) -> StoreResult<u64> {
    match key.get(32..) {
        Some(tail) if key.len() == 40 => exact_u64(tail, "sender index key"),
        _ => Err(StoreError::Corrupt(format!(
            "sender index key: expected 40 bytes, got {}",
            key.len()
        ))),
    }
}

fn client_id_key(conversation: ConversationId, sender: UserId, client_msg_id: u128) -> [u8; 48] {
    let mut k = [0u8; 48];
    k[..16].copy_from_slice(&conversation.to_be_bytes());
    k[16..32].copy_from_slice(&sender.to_be_bytes());
    k[32..].copy_from_slice(&client_msg_id.to_be_bytes());
    k
}

/// The pair in canonical order, so (a, b) and (b, a) share one key.
fn direct_key(a: UserId, b: UserId) -> [u8; 32] {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    cat2(lo.to_be_bytes(), hi.to_be_bytes())
}

/// The username index key. `to_lowercase` is Unicode-aware ("Élodie" and "ÉLODIE" collide);
/// it is not full case folding ("ß" and "SS" stay distinct), which is fine for a uniqueness key.
fn username_key(username: &str) -> StoreResult<Vec<u8>> {
    let folded = username.to_lowercase().into_bytes();
    if folded.is_empty() || folded.len() > MAX_USERNAME_BYTES {
        // fjall panics on empty or oversized keys; refuse before it sees them.
        return Err(StoreError::Backend(format!(
            "username must be 1..={MAX_USERNAME_BYTES} bytes, got {}",
            folded.len()
        )));
    }
    Ok(folded)
}

/// The second id of a two-id key (`members`, `user_conversations`).
fn second_id(key: &[u8], what: &str) -> StoreResult<u128> {
    match key.get(16..) {
        Some(tail) if key.len() == 32 => exact_u128(tail, what),
        _ => Err(StoreError::Corrupt(format!(
            "{what}: expected 32 bytes, got {}",
            key.len()
        ))),
    }
}

fn exact_u128(bytes: &[u8], what: &str) -> StoreResult<u128> {
    <[u8; 16]>::try_from(bytes)
        .map(u128::from_be_bytes)
        .map_err(|_| StoreError::Corrupt(format!("{what}: expected 16 bytes, got {}", bytes.len())))
}

fn exact_u64(bytes: &[u8], what: &str) -> StoreResult<u64> {
    <[u8; 8]>::try_from(bytes)
        .map(u64::from_be_bytes)
        .map_err(|_| StoreError::Corrupt(format!("{what}: expected 8 bytes, got {}", bytes.len())))
}

/// The seq in a `messages` key (conversation 16 bytes, seq 8 bytes).
fn seq_of_message_key(key: &[u8]) -> StoreResult<u64> {
    match key.get(16..) {
        Some(tail) if key.len() == 24 => exact_u64(tail, "message key"),
        _ => Err(StoreError::Corrupt(format!(
            "message key: expected 24 bytes, got {}",
            key.len()
        ))),
    }
}

// ---------------------------------------------------------------------------------------------
// records: private serde mirrors, borrowed so encoding copies nothing twice

#[derive(Serialize, Deserialize)]
struct UserV1<'a> {
    #[serde(borrow)]
    username: Cow<'a, str>,
    #[serde(borrow)]
    password_hash: Cow<'a, str>,
    created_ms: u64,
}

#[derive(Serialize, Deserialize)]
struct TokenV1 {
    user: u128,
    created_ms: u64,
    expires_ms: u64,
}

#[derive(Serialize, Deserialize)]
struct DeviceV1 {
    user: u128,
    token_hash: [u8; 32],
    bound_ms: u64,
}

#[derive(Serialize, Deserialize)]
struct ConversationV1<'a> {
    kind: u8,
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow)]
    description: Cow<'a, str>,
    created_by: u128,
    created_ms: u64,
}

#[derive(Serialize, Deserialize)]
struct MemberV1 {
    role: u8,
}

#[derive(Serialize, Deserialize)]
struct InvitationV1 {
    inviter: u128,
    created_ms: u64,
}

#[derive(Serialize, Deserialize)]
struct FileV1<'a> {
    file_id: u128,
    size: u64,
    #[serde(borrow)]
    content_type: Cow<'a, str>,
}

#[derive(Serialize, Deserialize)]
struct MessageV1<'a> {
    message_id: u128,
    sender_user: u128,
    sender_device: u128,
    client_msg_id: u128,
    timestamp_ms: u64,
    #[serde(borrow)]
    content_type: Cow<'a, str>,
    /// `&[u8]` goes through serde's bytes path: postcard writes length + raw bytes and reads
    /// them back as one slice instead of byte by byte.
    payload: &'a [u8],
    #[serde(borrow)]
    files: Vec<FileV1<'a>>,
}

fn encode<T: Serialize>(record: &T, what: &str) -> StoreResult<Vec<u8>> {
    let out = postcard::to_extend(record, vec![RECORD_V1])
        .map_err(|e| StoreError::Backend(format!("encoding {what}: {e}")))?;
    if u32::try_from(out.len()).is_err() {
        // fjall panics on values of 4 GiB or more.
        return Err(StoreError::Backend(format!(
            "{what} too large to store: {} bytes",
            out.len()
        )));
    }
    Ok(out)
}

fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8], what: &str) -> StoreResult<T> {
    match bytes.split_first() {
        Some((&RECORD_V1, body)) => {
            let (value, rest) = postcard::take_from_bytes::<T>(body)
                .map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))?;
            if !rest.is_empty() {
                return Err(StoreError::Corrupt(format!(
                    "{what}: {} unexpected trailing bytes",
                    rest.len()
                )));
            }
            Ok(value)
        }
        Some((version, _)) => Err(StoreError::Corrupt(format!(
            "{what}: unknown record format {version}"
        ))),
        None => Err(StoreError::Corrupt(format!("{what}: empty record"))),
    }
}

fn kind_from_u8(v: u8) -> StoreResult<ConversationKind> {
    match v {
        1 => Ok(ConversationKind::Direct),
        2 => Ok(ConversationKind::Group),
        _ => Err(StoreError::Corrupt(format!(
            "conversation record: unknown kind {v}"
        ))),
    }
}

fn role_from_u8(v: u8) -> StoreResult<MemberRole> {
    match v {
        1 => Ok(MemberRole::Member),
        2 => Ok(MemberRole::Owner),
        _ => Err(StoreError::Corrupt(format!(
            "member record: unknown role {v}"
        ))),
    }
}

fn encode_user(u: &UserRecord) -> StoreResult<Vec<u8>> {
    encode(
        &UserV1 {
            username: Cow::Borrowed(&u.username),
            password_hash: Cow::Borrowed(&u.password_hash),
            created_ms: u.created_ms,
        },
        "user record",
    )
}

fn decode_user(id: UserId, bytes: &[u8]) -> StoreResult<UserRecord> {
    let r: UserV1 = decode(bytes, "user record")?;
    Ok(UserRecord {
        id,
        username: r.username.into_owned(),
        password_hash: r.password_hash.into_owned(),
        created_ms: r.created_ms,
    })
}

fn encode_token(t: &TokenRecord) -> StoreResult<Vec<u8>> {
    encode(
        &TokenV1 {
            user: t.user.as_u128(),
            created_ms: t.created_ms,
            expires_ms: t.expires_ms,
        },
        "token record",
    )
}

fn decode_token(token_hash: [u8; 32], bytes: &[u8]) -> StoreResult<TokenRecord> {
    let r: TokenV1 = decode(bytes, "token record")?;
    Ok(TokenRecord {
        token_hash,
        user: UserId(r.user),
        created_ms: r.created_ms,
        expires_ms: r.expires_ms,
    })
}

fn encode_device(d: &DeviceRecord) -> StoreResult<Vec<u8>> {
    encode(
        &DeviceV1 {
            user: d.user.as_u128(),
            token_hash: d.token_hash,
            bound_ms: d.bound_ms,
        },
        "device record",
    )
}

fn decode_device(device: DeviceId, bytes: &[u8]) -> StoreResult<DeviceRecord> {
    let r: DeviceV1 = decode(bytes, "device record")?;
    Ok(DeviceRecord {
        device,
        user: UserId(r.user),
        token_hash: r.token_hash,
        bound_ms: r.bound_ms,
    })
}

/// `user_tokens` key: user id, then the token hash.
fn user_token_key(user: UserId, token_hash: [u8; 32]) -> [u8; 48] {
    let mut k = [0u8; 48];
    k[..16].copy_from_slice(&user.to_be_bytes());
    k[16..].copy_from_slice(&token_hash);
    k
}

fn encode_conversation(c: &ConversationRecord) -> StoreResult<Vec<u8>> {
    encode(
        &ConversationV1 {
            kind: c.kind as u8,
            name: Cow::Borrowed(&c.name),
            description: Cow::Borrowed(&c.description),
            created_by: c.created_by.as_u128(),
            created_ms: c.created_ms,
        },
        "conversation record",
    )
}

fn decode_conversation(id: ConversationId, bytes: &[u8]) -> StoreResult<ConversationRecord> {
    let r: ConversationV1 = decode(bytes, "conversation record")?;
    Ok(ConversationRecord {
        id,
        kind: kind_from_u8(r.kind)?,
        name: r.name.into_owned(),
        description: r.description.into_owned(),
        created_by: UserId(r.created_by),
        created_ms: r.created_ms,
    })
}

fn encode_member(role: MemberRole) -> StoreResult<Vec<u8>> {
    encode(&MemberV1 { role: role as u8 }, "member record")
}

fn decode_member(bytes: &[u8]) -> StoreResult<MemberRole> {
    let r: MemberV1 = decode(bytes, "member record")?;
    role_from_u8(r.role)
}

fn encode_invitation(i: &InvitationRecord) -> StoreResult<Vec<u8>> {
    encode(
        &InvitationV1 {
            inviter: i.inviter.0,
            created_ms: i.created_ms,
        },
        "invitation",
    )
}

fn decode_invitation(
    conversation: ConversationId,
    user: UserId,
    bytes: &[u8],
) -> StoreResult<InvitationRecord> {
    let v: InvitationV1 = decode(bytes, "invitation")?;
    Ok(InvitationRecord {
        conversation,
        user,
        inviter: UserId(v.inviter),
        created_ms: v.created_ms,
    })
}

/// The group-name index key: the engine normalises names; this only bounds the key for fjall.
fn group_name_key(name_key: &str) -> StoreResult<Vec<u8>> {
    let bytes = name_key.as_bytes().to_vec();
    if bytes.is_empty() || bytes.len() > MAX_USERNAME_BYTES {
        return Err(StoreError::Backend(format!(
            "group name key must be 1..={MAX_USERNAME_BYTES} bytes, got {}",
            bytes.len()
        )));
    }
    Ok(bytes)
}

fn encode_message(m: &Message) -> StoreResult<Vec<u8>> {
    encode(
        &MessageV1 {
            message_id: m.message_id.as_u128(),
            sender_user: m.sender_user.as_u128(),
            sender_device: m.sender_device.as_u128(),
            client_msg_id: m.client_msg_id,
            timestamp_ms: m.timestamp_ms,
            content_type: Cow::Borrowed(&m.content_type),
            payload: &m.payload,
            files: m
                .files
                .iter()
                .map(|f| FileV1 {
                    file_id: f.file_id.as_u128(),
                    size: f.size,
                    content_type: Cow::Borrowed(&f.content_type),
                })
                .collect(),
        },
        "message record",
    )
}

fn decode_message(conversation: ConversationId, seq: u64, bytes: &[u8]) -> StoreResult<Message> {
    let r: MessageV1 = decode(bytes, "message record")?;
    Ok(Message {
        conversation,
        seq,
        message_id: MessageId(r.message_id),
        sender_user: UserId(r.sender_user),
        sender_device: DeviceId(r.sender_device),
        client_msg_id: r.client_msg_id,
        timestamp_ms: r.timestamp_ms,
        content_type: r.content_type.into_owned(),
        payload: r.payload.to_vec(),
        files: r
            .files
            .into_iter()
            .map(|f| FileRef {
                file_id: MessageId(f.file_id),
                size: f.size,
                content_type: f.content_type.into_owned(),
            })
            .collect(),
    })
}

/// A history page being read from one end: stops at `limit` messages or after the message
/// that crosses `max_bytes` (see `HistoryQuery::max_bytes`).
struct Page {
    conversation: ConversationId,
    out: Vec<Message>,
    limit: usize,
    cost: u64,
    max_bytes: u64,
}

impl Page {
    fn new(q: HistoryQuery, limit: usize) -> Page {
        Page {
            conversation: q.conversation,
            out: Vec::with_capacity(limit.min(64)),
            limit,
            cost: 0,
            max_bytes: q.max_bytes,
        }
    }

    /// Adds a stored message; returns whether to read on.
    fn push(&mut self, seq: u64, bytes: &[u8]) -> StoreResult<bool> {
        let m = decode_message(self.conversation, seq, bytes)?;
        self.cost = self.cost.saturating_add(super::message_cost(&m));
        self.out.push(m);
        Ok(self.out.len() < self.limit && self.cost <= self.max_bytes)
    }

    /// The page ascending by seq (`oldest`: it was read forward).
    fn finish(mut self, oldest: bool) -> Vec<Message> {
        if !oldest {
            self.out.reverse();
        }
        self.out
    }
}

/// Feeds `each` until it says stop or fails.
fn try_each<I, F>(iter: I, each: &mut F) -> StoreResult<()>
where
    I: Iterator<Item = fjall::Guard>,
    F: FnMut(fjall::Guard) -> StoreResult<bool>,
{
    for kv in iter {
        if !each(kv)? {
            break;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// the trait, each method a blocking body run by `EmbeddedStore::run`

impl Inner {
    fn create_user(&self, user: &UserRecord) -> StoreResult<()> {
        let name_key = username_key(&user.username)?;
        let id_key = user.id.to_be_bytes();
        let value = encode_user(user)?;
        let _guard = lock(&self.meta_lock);
        if self.usernames.contains_key(&name_key).map_err(backend)? {
            return Err(StoreError::AlreadyExists(format!(
                "username {:?}",
                user.username
            )));
        }
        // A reused id would orphan the old account's username entry.
        if self.users.contains_key(id_key).map_err(backend)? {
            return Err(StoreError::AlreadyExists(format!("user {}", user.id)));
        }
        let mut batch = self.batch();
        batch.insert(&self.users, id_key, value);
        batch.insert(&self.usernames, name_key, id_key);
        batch.commit().map_err(backend)
    }

    fn user_by_id(&self, id: UserId) -> StoreResult<Option<UserRecord>> {
        match self
            .read()
            .get(&self.users, id.to_be_bytes())
            .map_err(backend)?
        {
            Some(v) => decode_user(id, &v).map(Some),
            None => Ok(None),
        }
    }

    fn user_by_name(&self, username: &str) -> StoreResult<Option<UserRecord>> {
        // A name the index could never hold is simply not there.
        let Ok(name_key) = username_key(username) else {
            return Ok(None);
        };
        // One snapshot, so a concurrent write cannot pair the index with another record.
        let snap = self.read();
        let Some(id) = snap.get(&self.usernames, name_key).map_err(backend)? else {
            return Ok(None);
        };
        let id = UserId(exact_u128(&id, "username index")?);
        match snap.get(&self.users, id.to_be_bytes()).map_err(backend)? {
            Some(v) => decode_user(id, &v).map(Some),
            None => Err(StoreError::Corrupt(format!(
                "username {username:?} points to missing user {id}"
            ))),
        }
    }

    fn put_token(&self, token: &TokenRecord) -> StoreResult<()> {
        let value = encode_token(token)?;
        // Under the lock so that `delete_tokens_of` never sees the index without the token.
        let _guard = lock(&self.meta_lock);
        let mut batch = self.batch();
        batch.insert(&self.tokens, token.token_hash, value);
        batch.insert(
            &self.user_tokens,
            user_token_key(token.user, token.token_hash),
            [],
        );
        batch.commit().map_err(backend)
    }

    /// Layout 1 → 2: every stored token gets its `user_tokens` entry (one batch).
    fn index_tokens_by_user(&self) -> StoreResult<()> {
        let _guard = lock(&self.meta_lock);
        let mut batch = self.batch();
        for kv in self.tokens.iter() {
            let (k, v) = kv.into_inner().map_err(backend)?;
            let token_hash = <[u8; 32]>::try_from(k.as_ref()).map_err(|_| {
                StoreError::Corrupt(format!("token key: expected 32 bytes, got {}", k.len()))
            })?;
            let record = decode_token(token_hash, &v)?;
            batch.insert(
                &self.user_tokens,
                user_token_key(record.user, token_hash),
                [],
            );
        }
        batch.commit().map_err(backend)
    }

    /// Layout 2 → 3: every stored message gets its `sender_seqs` entry, in bounded batches.
    fn index_messages_by_sender(&self) -> StoreResult<()> {
        tracing::info!(
            "building the history-by-sender index for messages stored before it existed"
        );
        let started = std::time::Instant::now();
        let mut batch = self.batch();
        let (mut in_batch, mut done) = (0usize, 0u64);
        for kv in self.messages.iter() {
            let (k, v) = kv.into_inner().map_err(backend)?;
            let seq = seq_of_message_key(&k)?;
            let conversation = ConversationId(exact_u128(&k[..16], "message key")?);
            let record: MessageV1 = decode(&v, "message record")?;
            batch.insert(
                &self.sender_seqs,
                sender_key(conversation, UserId(record.sender_user), seq),
                [],
            );
            in_batch += 1;
            done += 1;
            if in_batch == BACKFILL_BATCH {
                batch.commit().map_err(backend)?;
                batch = self.batch();
                in_batch = 0;
            }
            if done.is_multiple_of(BACKFILL_LOG_EVERY) {
                tracing::info!(messages = done, "history-by-sender index: progress");
            }
        }
        batch.commit().map_err(backend)?;
        tracing::info!(
            messages = done,
            secs = started.elapsed().as_secs_f64(),
            "history-by-sender index built"
        );
        Ok(())
    }

    fn delete_tokens_of(&self, user: UserId) -> StoreResult<Vec<[u8; 32]>> {
        let _guard = lock(&self.meta_lock);
        let mut hashes = Vec::new();
        for kv in self.user_tokens.prefix(user.to_be_bytes()) {
            let k = kv.key().map_err(backend)?;
            let hash = k
                .get(16..)
                .and_then(|tail| <[u8; 32]>::try_from(tail).ok())
                .filter(|_| k.len() == 48)
                .ok_or_else(|| {
                    StoreError::Corrupt(format!(
                        "user_tokens key: expected 48 bytes, got {}",
                        k.len()
                    ))
                })?;
            hashes.push(hash);
        }
        if hashes.is_empty() {
            return Ok(hashes);
        }
        let mut batch = self.batch();
        for hash in &hashes {
            batch.remove(&self.tokens, *hash);
            batch.remove(&self.user_tokens, user_token_key(user, *hash));
        }
        batch.commit().map_err(backend)?;
        Ok(hashes)
    }

    fn device(&self, device: DeviceId) -> StoreResult<Option<DeviceRecord>> {
        match self
            .read()
            .get(&self.devices, device.to_be_bytes())
            .map_err(backend)?
        {
            Some(v) => decode_device(device, &v).map(Some),
            None => Ok(None),
        }
    }

    fn bind_device(&self, record: &DeviceRecord, expected: Option<[u8; 32]>) -> StoreResult<bool> {
        let key = record.device.to_be_bytes();
        let value = encode_device(record)?;
        let _guard = lock(&self.meta_lock);
        let current = match self.devices.get(key).map_err(backend)? {
            Some(v) => Some(decode_device(record.device, &v)?.token_hash),
            None => None,
        };
        if current != expected {
            return Ok(false);
        }
        let mut batch = self.batch();
        batch.insert(&self.devices, key, value);
        batch.commit().map_err(backend)?;
        Ok(true)
    }

    fn unbind_device(&self, device: DeviceId, user: UserId) -> StoreResult<Option<DeviceRecord>> {
        let key = device.to_be_bytes();
        let _guard = lock(&self.meta_lock);
        let Some(v) = self.devices.get(key).map_err(backend)? else {
            return Ok(None);
        };
        let record = decode_device(device, &v)?;
        if record.user != user {
            return Ok(None);
        }
        let mut batch = self.batch();
        batch.remove(&self.devices, key);
        batch.commit().map_err(backend)?;
        Ok(Some(record))
    }

    fn token(&self, token_hash: [u8; 32]) -> StoreResult<Option<TokenRecord>> {
        match self.read().get(&self.tokens, token_hash).map_err(backend)? {
            Some(v) => decode_token(token_hash, &v).map(Some),
            None => Ok(None),
        }
    }

    fn delete_token(&self, token_hash: [u8; 32]) -> StoreResult<bool> {
        // Under the lock so that of two concurrent deletes exactly one reports `true`.
        let _guard = lock(&self.meta_lock);
        let Some(value) = self.tokens.get(token_hash).map_err(backend)? else {
            return Ok(false);
        };
        let record = decode_token(token_hash, &value)?;
        let mut batch = self.batch();
        batch.remove(&self.tokens, token_hash);
        batch.remove(&self.user_tokens, user_token_key(record.user, token_hash));
        batch.commit().map_err(backend)?;
        Ok(true)
    }

    fn create_conversation(
        &self,
        c: &ConversationRecord,
        members: &[MemberRecord],
    ) -> StoreResult<()> {
        let conv_key = c.id.to_be_bytes();
        let value = encode_conversation(c)?;
        let mut batch = self.batch();
        batch.insert(&self.conversations, conv_key, value);
        for m in members {
            let user_key = m.user.to_be_bytes();
            batch.insert(
                &self.members,
                cat2(conv_key, user_key),
                encode_member(m.role)?,
            );
            batch.insert(&self.user_conversations, cat2(user_key, conv_key), []);
        }
        let _guard = lock(&self.meta_lock);
        // Overwriting an existing conversation would silently merge two member lists.
        if self.conversations.contains_key(conv_key).map_err(backend)? {
            return Err(StoreError::AlreadyExists(format!("conversation {}", c.id)));
        }
        batch.commit().map_err(backend)
    }

    fn conversation(&self, id: ConversationId) -> StoreResult<Option<ConversationRecord>> {
        match self
            .read()
            .get(&self.conversations, id.to_be_bytes())
            .map_err(backend)?
        {
            Some(v) => decode_conversation(id, &v).map(Some),
            None => Ok(None),
        }
    }

    fn members(&self, id: ConversationId) -> StoreResult<Vec<MemberRecord>> {
        let mut out = Vec::new();
        for kv in self.read().prefix(&self.members, id.to_be_bytes()) {
            let (k, v) = kv.into_inner().map_err(backend)?;
            out.push(MemberRecord {
                user: UserId(second_id(&k, "member key")?),
                role: decode_member(&v)?,
            });
        }
        Ok(out)
    }

    fn is_member(&self, id: ConversationId, user: UserId) -> StoreResult<bool> {
        self.read()
            .contains_key(&self.members, cat2(id.to_be_bytes(), user.to_be_bytes()))
            .map_err(backend)
    }

    fn conversations_of(&self, user: UserId) -> StoreResult<Vec<ConversationId>> {
        let mut out = Vec::new();
        for kv in self
            .read()
            .prefix(&self.user_conversations, user.to_be_bytes())
        {
            let k = kv.key().map_err(backend)?;
            out.push(ConversationId(second_id(&k, "user_conversations key")?));
        }
        Ok(out)
    }

    fn direct_conversation(&self, a: UserId, b: UserId) -> StoreResult<Option<ConversationId>> {
        match self
            .read()
            .get(&self.direct_pairs, direct_key(a, b))
            .map_err(backend)?
        {
            Some(v) => Ok(Some(ConversationId(exact_u128(&v, "direct pair")?))),
            None => Ok(None),
        }
    }

    fn set_direct_conversation(&self, a: UserId, b: UserId, id: ConversationId) -> StoreResult<()> {
        let key = direct_key(a, b);
        let _guard = lock(&self.meta_lock);
        if self.direct_pairs.contains_key(key).map_err(backend)? {
            return Err(StoreError::AlreadyExists(format!(
                "direct conversation of {a} and {b}"
            )));
        }
        let mut batch = self.batch();
        batch.insert(&self.direct_pairs, key, id.to_be_bytes());
        batch.commit().map_err(backend)
    }

    fn create_named_group(
        &self,
        c: &ConversationRecord,
        members: &[MemberRecord],
        name_key: &str,
    ) -> StoreResult<()> {
        let key = group_name_key(name_key)?;
        let conv_key = c.id.to_be_bytes();
        let value = encode_conversation(c)?;
        let mut batch = self.batch();
        batch.insert(&self.conversations, conv_key, value);
        for m in members {
            let user_key = m.user.to_be_bytes();
            batch.insert(
                &self.members,
                cat2(conv_key, user_key),
                encode_member(m.role)?,
            );
            batch.insert(&self.user_conversations, cat2(user_key, conv_key), []);
        }
        batch.insert(&self.group_names, key.clone(), conv_key);
        // Check and write under one lock: two creations with one name cannot both see it free.
        let _guard = lock(&self.meta_lock);
        if self.group_names.contains_key(&key).map_err(backend)? {
            return Err(StoreError::AlreadyExists(format!(
                "group name {name_key:?}"
            )));
        }
        if self.conversations.contains_key(conv_key).map_err(backend)? {
            return Err(StoreError::AlreadyExists(format!("conversation {}", c.id)));
        }
        batch.commit().map_err(backend)
    }

    fn group_by_name(&self, name_key: &str) -> StoreResult<Option<ConversationId>> {
        let Ok(key) = group_name_key(name_key) else {
            return Ok(None);
        };
        match self.read().get(&self.group_names, key).map_err(backend)? {
            Some(v) => Ok(Some(ConversationId(exact_u128(&v, "group name index")?))),
            None => Ok(None),
        }
    }

    fn put_invitation(&self, i: &InvitationRecord) -> StoreResult<()> {
        let (conv_key, user_key) = (i.conversation.to_be_bytes(), i.user.to_be_bytes());
        let mut batch = self.batch();
        batch.insert(
            &self.invitations,
            cat2(conv_key, user_key),
            encode_invitation(i)?,
        );
        batch.insert(&self.user_invitations, cat2(user_key, conv_key), []);
        let _guard = lock(&self.meta_lock);
        batch.commit().map_err(backend)
    }

    fn put_invitations(&self, invitations: &[InvitationRecord]) -> StoreResult<()> {
        if invitations.is_empty() {
            return Ok(());
        }
        let mut batch = self.batch();
        for i in invitations {
            let (conv_key, user_key) = (i.conversation.to_be_bytes(), i.user.to_be_bytes());
            batch.insert(
                &self.invitations,
                cat2(conv_key, user_key),
                encode_invitation(i)?,
            );
            batch.insert(&self.user_invitations, cat2(user_key, conv_key), []);
        }
        let _guard = lock(&self.meta_lock);
        batch.commit().map_err(backend)
    }

    fn set_block(&self, blocker: UserId, blocked: UserId, on: bool) -> StoreResult<bool> {
        let (a, b) = (blocker.to_be_bytes(), blocked.to_be_bytes());
        let _guard = lock(&self.meta_lock);
        if self.blocks.contains_key(cat2(a, b)).map_err(backend)? == on {
            return Ok(false);
        }
        let mut batch = self.batch();
        if on {
            batch.insert(&self.blocks, cat2(a, b), []);
            batch.insert(&self.blocked_by, cat2(b, a), []);
        } else {
            batch.remove(&self.blocks, cat2(a, b));
            batch.remove(&self.blocked_by, cat2(b, a));
        }
        batch.commit().map_err(backend)?;
        Ok(true)
    }

    fn is_blocked(&self, blocker: UserId, blocked: UserId) -> StoreResult<bool> {
        self.read()
            .contains_key(
                &self.blocks,
                cat2(blocker.to_be_bytes(), blocked.to_be_bytes()),
            )
            .map_err(backend)
    }

    /// The second ids of every key under `first` in `keyspace` (`blocks` or `blocked_by`).
    fn second_ids(&self, keyspace: &Keyspace, first: UserId) -> StoreResult<Vec<UserId>> {
        let snap = self.read();
        let mut out = Vec::new();
        for kv in snap.prefix(keyspace, first.to_be_bytes()) {
            let k = kv.key().map_err(backend)?;
            out.push(UserId(second_id(&k, "block key")?));
        }
        Ok(out)
    }

    fn invitation_of(
        &self,
        reader: &impl Readable,
        conversation: ConversationId,
        user: UserId,
    ) -> StoreResult<Option<InvitationRecord>> {
        match reader
            .get(
                &self.invitations,
                cat2(conversation.to_be_bytes(), user.to_be_bytes()),
            )
            .map_err(backend)?
        {
            Some(v) => decode_invitation(conversation, user, &v).map(Some),
            None => Ok(None),
        }
    }

    fn invitations_of(&self, user: UserId) -> StoreResult<Vec<InvitationRecord>> {
        let snap = self.read();
        let mut out = Vec::new();
        for kv in snap.prefix(&self.user_invitations, user.to_be_bytes()) {
            let k = kv.key().map_err(backend)?;
            let conversation = ConversationId(second_id(&k, "user_invitations key")?);
            match self.invitation_of(&snap, conversation, user)? {
                Some(i) => out.push(i),
                None => {
                    return Err(StoreError::Corrupt(format!(
                        "invitation index of {user} points to missing invitation in {conversation}"
                    )));
                }
            }
        }
        Ok(out)
    }

    /// Adds the invitation's removal to `batch` if there is one (caller holds `meta_lock`).
    fn remove_invitation_into(
        &self,
        batch: &mut fjall::OwnedWriteBatch,
        conversation: ConversationId,
        user: UserId,
    ) -> StoreResult<Option<InvitationRecord>> {
        let (conv_key, user_key) = (conversation.to_be_bytes(), user.to_be_bytes());
        let found = match self
            .invitations
            .get(cat2(conv_key, user_key))
            .map_err(backend)?
        {
            Some(v) => Some(decode_invitation(conversation, user, &v)?),
            None => None,
        };
        if found.is_some() {
            batch.remove(&self.invitations, cat2(conv_key, user_key));
            batch.remove(&self.user_invitations, cat2(user_key, conv_key));
        }
        Ok(found)
    }

    fn take_invitation(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> StoreResult<Option<InvitationRecord>> {
        let _guard = lock(&self.meta_lock);
        let mut batch = self.batch();
        let found = self.remove_invitation_into(&mut batch, conversation, user)?;
        if found.is_some() {
            batch.commit().map_err(backend)?;
        }
        Ok(found)
    }

    /// Adds the membership writes to `batch` (caller holds `meta_lock`).
    fn join_into(
        &self,
        batch: &mut fjall::OwnedWriteBatch,
        conversation: ConversationId,
        member: MemberRecord,
    ) -> StoreResult<()> {
        let (conv_key, user_key) = (conversation.to_be_bytes(), member.user.to_be_bytes());
        batch.insert(
            &self.members,
            cat2(conv_key, user_key),
            encode_member(member.role)?,
        );
        batch.insert(&self.user_conversations, cat2(user_key, conv_key), []);
        batch.remove(&self.departures, cat2(conv_key, user_key));
        Ok(())
    }

    fn accept_invitation(
        &self,
        conversation: ConversationId,
        member: MemberRecord,
    ) -> StoreResult<Option<InvitationRecord>> {
        let _guard = lock(&self.meta_lock);
        let mut batch = self.batch();
        let Some(found) = self.remove_invitation_into(&mut batch, conversation, member.user)?
        else {
            return Ok(None);
        };
        if !self
            .conversations
            .contains_key(conversation.to_be_bytes())
            .map_err(backend)?
        {
            return Err(StoreError::NotFound(format!("conversation {conversation}")));
        }
        self.join_into(&mut batch, conversation, member)?;
        batch.commit().map_err(backend)?;
        Ok(Some(found))
    }

    fn add_member(&self, conversation: ConversationId, member: MemberRecord) -> StoreResult<bool> {
        let conv_key = conversation.to_be_bytes();
        let _guard = lock(&self.meta_lock);
        if !self.conversations.contains_key(conv_key).map_err(backend)? {
            return Err(StoreError::NotFound(format!("conversation {conversation}")));
        }
        if self
            .members
            .contains_key(cat2(conv_key, member.user.to_be_bytes()))
            .map_err(backend)?
        {
            return Ok(false);
        }
        let mut batch = self.batch();
        self.remove_invitation_into(&mut batch, conversation, member.user)?;
        self.join_into(&mut batch, conversation, member)?;
        batch.commit().map_err(backend)?;
        Ok(true)
    }

    fn remove_member(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> StoreResult<Option<u64>> {
        let (conv_key, user_key) = (conversation.to_be_bytes(), user.to_be_bytes());
        let _guard = lock(&self.meta_lock);
        if !self
            .members
            .contains_key(cat2(conv_key, user_key))
            .map_err(backend)?
        {
            return Ok(None);
        }
        let at = self.last_seq(conversation)?;
        let mut batch = self.batch();
        batch.remove(&self.members, cat2(conv_key, user_key));
        batch.remove(&self.user_conversations, cat2(user_key, conv_key));
        batch.insert(&self.departures, cat2(conv_key, user_key), at.to_be_bytes());
        batch.commit().map_err(backend)?;
        Ok(Some(at))
    }

    fn departure(&self, conversation: ConversationId, user: UserId) -> StoreResult<Option<u64>> {
        match self
            .read()
            .get(
                &self.departures,
                cat2(conversation.to_be_bytes(), user.to_be_bytes()),
            )
            .map_err(backend)?
        {
            Some(v) => exact_u64(&v, "departure").map(Some),
            None => Ok(None),
        }
    }

    fn commit(&self, batch_in: &CommitBatch) -> StoreResult<()> {
        if batch_in.messages.is_empty() && batch_in.cursors.is_empty() {
            return Ok(());
        }
        // Encode before taking any lock: it is the CPU-heavy part of a large batch.
        let mut batch = fjall::OwnedWriteBatch::with_capacity(
            self.db.clone(),
            batch_in.messages.len() * 3 + batch_in.cursors.len(),
        )
        .durability(Some(PersistMode::SyncAll));
        for m in &batch_in.messages {
            batch.insert(
                &self.messages,
                message_key(m.conversation, m.seq),
                encode_message(m)?,
            );
            batch.insert(
                &self.client_ids,
                client_id_key(m.conversation, m.sender_user, m.client_msg_id),
                m.seq.to_be_bytes(),
            );
            // In the message's batch: the index never misses or outlives a message.
            batch.insert(
                &self.sender_seqs,
                sender_key(m.conversation, m.sender_user, m.seq),
                [],
            );
        }
        // Several updates of one cursor (or one user's mark) in a batch collapse to their
        // maximum first.
        let mut wanted: HashMap<[u8; 32], u64> = HashMap::with_capacity(batch_in.cursors.len());
        let mut marks: HashMap<[u8; 32], u64> = HashMap::with_capacity(batch_in.cursors.len());
        for c in &batch_in.cursors {
            let seq = wanted
                .entry(cat2(c.device.to_be_bytes(), c.conversation.to_be_bytes()))
                .or_insert(0);
            *seq = (*seq).max(c.seq);
            let mark = marks
                .entry(cat2(c.conversation.to_be_bytes(), c.user.to_be_bytes()))
                .or_insert(0);
            *mark = (*mark).max(c.seq);
        }
        // Read-max-write must not interleave with another commit's, or a cursor could regress
        // (and a usage increment could be lost).
        let _guard = lock(&self.cursor_lock);
        // Payload bytes per sender. A message already stored (a retried commit) was counted
        // when it first landed.
        let mut added: HashMap<UserId, u64> = HashMap::new();
        for m in &batch_in.messages {
            let known = self
                .messages
                .contains_key(message_key(m.conversation, m.seq))
                .map_err(backend)?;
            if !known {
                *added.entry(m.sender_user).or_insert(0) += m.payload.len() as u64;
            }
        }
        for (user, bytes) in added {
            let stored = match self.usage.get(user.to_be_bytes()).map_err(backend)? {
                Some(v) => exact_u64(&v, "usage")?,
                None => 0,
            };
            batch.insert(
                &self.usage,
                user.to_be_bytes(),
                stored.saturating_add(bytes).to_be_bytes(),
            );
        }
        for (key, seq) in wanted {
            let stored = match self.cursors.get(key).map_err(backend)? {
                Some(v) => exact_u64(&v, "cursor")?,
                None => 0,
            };
            if seq > stored {
                batch.insert(&self.cursors, key, seq.to_be_bytes());
            }
        }
        for (key, seq) in marks {
            let stored = match self.delivered.get(key).map_err(backend)? {
                Some(v) => exact_u64(&v, "delivery mark")?,
                None => 0,
            };
            if seq > stored {
                batch.insert(&self.delivered, key, seq.to_be_bytes());
            }
        }
        batch.commit().map_err(backend)
    }

    fn last_seq(&self, conversation: ConversationId) -> StoreResult<u64> {
        self.last_seq_in(&self.read(), conversation)
    }

    fn last_seq_in(
        &self,
        snap: &fjall::Snapshot,
        conversation: ConversationId,
    ) -> StoreResult<u64> {
        // A reverse scan of the conversation's prefix: one key read, however long the history.
        match snap
            .prefix(&self.messages, conversation.to_be_bytes())
            .next_back()
        {
            Some(kv) => seq_of_message_key(&kv.key().map_err(backend)?),
            None => Ok(0),
        }
    }

    fn message_by_client_id(
        &self,
        conversation: ConversationId,
        sender: UserId,
        client_msg_id: u128,
    ) -> StoreResult<Option<Message>> {
        let snap = self.read();
        let Some(seq) = snap
            .get(
                &self.client_ids,
                client_id_key(conversation, sender, client_msg_id),
            )
            .map_err(backend)?
        else {
            return Ok(None);
        };
        let seq = exact_u64(&seq, "client id index")?;
        // Index and message were written in one batch, so a dangling entry means damage.
        match snap
            .get(&self.messages, message_key(conversation, seq))
            .map_err(backend)?
        {
            Some(v) => decode_message(conversation, seq, &v).map(Some),
            None => Err(StoreError::Corrupt(format!(
                "client id index of {conversation} points to missing seq {seq}"
            ))),
        }
    }

    fn history(&self, q: HistoryQuery) -> StoreResult<Vec<Message>> {
        let limit = q.limit.min(MAX_HISTORY_LIMIT) as usize;
        // Bounds as inclusive seqs; `None` means the range is empty.
        let lo = if q.after_seq == 0 {
            Some(0)
        } else {
            q.after_seq.checked_add(1)
        };
        let hi = if q.before_seq == 0 {
            u64::MAX
        } else {
            q.before_seq - 1
        };
        let Some(lo) = lo.filter(|lo| *lo <= hi) else {
            return Ok(Vec::new());
        };
        if limit == 0 {
            return Ok(Vec::new());
        }
        // A snapshot, so a page never shows half of a concurrent commit.
        let snap = self.read();
        let mut page = Page::new(q, limit);
        let oldest = q.from == HistoryFrom::Oldest;
        match q.sender {
            None => {
                let range = message_key(q.conversation, lo)..=message_key(q.conversation, hi);
                let mut each = |kv: fjall::Guard| -> StoreResult<bool> {
                    let (k, v) = kv.into_inner().map_err(backend)?;
                    page.push(seq_of_message_key(&k)?, &v)
                };
                let iter = snap.range(&self.messages, range);
                if oldest {
                    try_each(iter, &mut each)?;
                } else {
                    try_each(iter.rev(), &mut each)?;
                }
            }
            Some(sender) => {
                // The sender's seqs from its index, each message then read by key.
                let range =
                    sender_key(q.conversation, sender, lo)..=sender_key(q.conversation, sender, hi);
                let mut each = |kv: fjall::Guard| -> StoreResult<bool> {
                    let seq = seq_of_sender_key(&kv.key().map_err(backend)?)?;
                    let v = snap
                        .get(&self.messages, message_key(q.conversation, seq))
                        .map_err(backend)?
                        .ok_or_else(|| {
                            // Index and message were written in one batch.
                            StoreError::Corrupt(format!(
                                "sender index of {} points to missing seq {seq}",
                                q.conversation
                            ))
                        })?;
                    page.push(seq, &v)
                };
                let iter = snap.range(&self.sender_seqs, range);
                if oldest {
                    try_each(iter, &mut each)?;
                } else {
                    try_each(iter.rev(), &mut each)?;
                }
            }
        }
        Ok(page.finish(oldest))
    }

    /// Binary search over seqs for the first message at or after `timestamp_ms`: timestamps
    /// are non-decreasing per conversation, so ~log2(n) point reads (20 for 1,000,000).
    fn first_seq_at(&self, conversation: ConversationId, timestamp_ms: u64) -> StoreResult<u64> {
        let snap = self.read();
        let last = self.last_seq_in(&snap, conversation)?;
        // The answer lies in lo..=hi; hi = last + 1 means "none".
        let (mut lo, mut hi) = (1u64, last.saturating_add(1));
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let v = snap
                .get(&self.messages, message_key(conversation, mid))
                .map_err(backend)?
                .ok_or_else(|| {
                    StoreError::Corrupt(format!(
                        "{conversation} has no seq {mid} below its last seq {last}"
                    ))
                })?;
            let record: MessageV1 = decode(&v, "message record")?;
            if record.timestamp_ms >= timestamp_ms {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        Ok(lo)
    }

    fn stored_bytes(&self, user: UserId) -> StoreResult<u64> {
        match self
            .read()
            .get(&self.usage, user.to_be_bytes())
            .map_err(backend)?
        {
            Some(v) => exact_u64(&v, "usage"),
            None => Ok(0),
        }
    }

    fn delivery_marks(&self, conversation: ConversationId) -> StoreResult<Vec<DeliveryMark>> {
        let mut out = Vec::new();
        for kv in self
            .read()
            .prefix(&self.delivered, conversation.to_be_bytes())
        {
            let (k, v) = kv.into_inner().map_err(backend)?;
            out.push(DeliveryMark {
                user: UserId(second_id(&k, "delivered key")?),
                seq: exact_u64(&v, "delivery mark")?,
            });
        }
        Ok(out)
    }

    fn cursor(&self, device: DeviceId, conversation: ConversationId) -> StoreResult<u64> {
        match self
            .read()
            .get(
                &self.cursors,
                cat2(device.to_be_bytes(), conversation.to_be_bytes()),
            )
            .map_err(backend)?
        {
            Some(v) => exact_u64(&v, "cursor"),
            None => Ok(0),
        }
    }
}

#[async_trait::async_trait]
impl Store for EmbeddedStore {
    async fn create_user(&self, user: UserRecord) -> StoreResult<()> {
        self.run(move |s| s.create_user(&user)).await
    }

    async fn user_by_name(&self, username: &str) -> StoreResult<Option<UserRecord>> {
        let username = username.to_owned();
        self.run(move |s| s.user_by_name(&username)).await
    }

    async fn user_by_id(&self, id: UserId) -> StoreResult<Option<UserRecord>> {
        self.run(move |s| s.user_by_id(id)).await
    }

    async fn put_token(&self, token: TokenRecord) -> StoreResult<()> {
        self.run(move |s| s.put_token(&token)).await
    }

    async fn token(&self, token_hash: &[u8; 32]) -> StoreResult<Option<TokenRecord>> {
        let token_hash = *token_hash;
        self.run(move |s| s.token(token_hash)).await
    }

    async fn delete_token(&self, token_hash: &[u8; 32]) -> StoreResult<bool> {
        let token_hash = *token_hash;
        self.run(move |s| s.delete_token(token_hash)).await
    }

    async fn delete_tokens_of(&self, user: UserId) -> StoreResult<Vec<[u8; 32]>> {
        self.run(move |s| s.delete_tokens_of(user)).await
    }

    async fn device(&self, device: DeviceId) -> StoreResult<Option<DeviceRecord>> {
        self.run(move |s| s.device(device)).await
    }

    async fn bind_device(
        &self,
        record: DeviceRecord,
        expected: Option<[u8; 32]>,
    ) -> StoreResult<bool> {
        self.run(move |s| s.bind_device(&record, expected)).await
    }

    async fn unbind_device(
        &self,
        device: DeviceId,
        user: UserId,
    ) -> StoreResult<Option<DeviceRecord>> {
        self.run(move |s| s.unbind_device(device, user)).await
    }

    async fn create_conversation(
        &self,
        conversation: ConversationRecord,
        members: Vec<MemberRecord>,
    ) -> StoreResult<()> {
        self.run(move |s| s.create_conversation(&conversation, &members))
            .await
    }

    async fn conversation(&self, id: ConversationId) -> StoreResult<Option<ConversationRecord>> {
        self.run(move |s| s.conversation(id)).await
    }

    async fn members(&self, id: ConversationId) -> StoreResult<Vec<MemberRecord>> {
        self.run(move |s| s.members(id)).await
    }

    async fn is_member(&self, id: ConversationId, user: UserId) -> StoreResult<bool> {
        self.run(move |s| s.is_member(id, user)).await
    }

    async fn conversations_of(&self, user: UserId) -> StoreResult<Vec<ConversationId>> {
        self.run(move |s| s.conversations_of(user)).await
    }

    async fn direct_conversation(
        &self,
        a: UserId,
        b: UserId,
    ) -> StoreResult<Option<ConversationId>> {
        self.run(move |s| s.direct_conversation(a, b)).await
    }

    async fn set_direct_conversation(
        &self,
        a: UserId,
        b: UserId,
        id: ConversationId,
    ) -> StoreResult<()> {
        self.run(move |s| s.set_direct_conversation(a, b, id)).await
    }

    async fn create_named_group(
        &self,
        conversation: ConversationRecord,
        members: Vec<MemberRecord>,
        name_key: String,
    ) -> StoreResult<()> {
        self.run(move |s| s.create_named_group(&conversation, &members, &name_key))
            .await
    }

    async fn group_by_name(&self, name_key: &str) -> StoreResult<Option<ConversationId>> {
        let name_key = name_key.to_owned();
        self.run(move |s| s.group_by_name(&name_key)).await
    }

    async fn put_invitation(&self, invitation: InvitationRecord) -> StoreResult<()> {
        self.run(move |s| s.put_invitation(&invitation)).await
    }

    async fn invitation(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> StoreResult<Option<InvitationRecord>> {
        self.run(move |s| s.invitation_of(&s.read(), conversation, user))
            .await
    }

    async fn invitations_of(&self, user: UserId) -> StoreResult<Vec<InvitationRecord>> {
        self.run(move |s| s.invitations_of(user)).await
    }

    async fn put_invitations(&self, invitations: Vec<InvitationRecord>) -> StoreResult<()> {
        self.run(move |s| s.put_invitations(&invitations)).await
    }

    async fn set_block(&self, blocker: UserId, blocked: UserId, on: bool) -> StoreResult<bool> {
        self.run(move |s| s.set_block(blocker, blocked, on)).await
    }

    async fn is_blocked(&self, blocker: UserId, blocked: UserId) -> StoreResult<bool> {
        self.run(move |s| s.is_blocked(blocker, blocked)).await
    }

    async fn blocks_of(&self, blocker: UserId) -> StoreResult<Vec<UserId>> {
        self.run(move |s| s.second_ids(&s.blocks, blocker)).await
    }

    async fn blockers_of(&self, user: UserId) -> StoreResult<Vec<UserId>> {
        self.run(move |s| s.second_ids(&s.blocked_by, user)).await
    }

    async fn take_invitation(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> StoreResult<Option<InvitationRecord>> {
        self.run(move |s| s.take_invitation(conversation, user))
            .await
    }

    async fn accept_invitation(
        &self,
        conversation: ConversationId,
        member: MemberRecord,
    ) -> StoreResult<Option<InvitationRecord>> {
        self.run(move |s| s.accept_invitation(conversation, member))
            .await
    }

    async fn add_member(
        &self,
        conversation: ConversationId,
        member: MemberRecord,
    ) -> StoreResult<bool> {
        self.run(move |s| s.add_member(conversation, member)).await
    }

    async fn remove_member(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> StoreResult<Option<u64>> {
        self.run(move |s| s.remove_member(conversation, user)).await
    }

    async fn departure(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> StoreResult<Option<u64>> {
        self.run(move |s| s.departure(conversation, user)).await
    }

    async fn commit(&self, batch: CommitBatch) -> StoreResult<()> {
        self.run(move |s| s.commit(&batch)).await
    }

    async fn stored_bytes(&self, user: UserId) -> StoreResult<u64> {
        self.run(move |s| s.stored_bytes(user)).await
    }

    async fn last_seq(&self, conversation: ConversationId) -> StoreResult<u64> {
        self.run(move |s| s.last_seq(conversation)).await
    }

    async fn message_by_client_id(
        &self,
        conversation: ConversationId,
        sender: UserId,
        client_msg_id: u128,
    ) -> StoreResult<Option<Message>> {
        self.run(move |s| s.message_by_client_id(conversation, sender, client_msg_id))
            .await
    }

    async fn history(&self, query: HistoryQuery) -> StoreResult<Vec<Message>> {
        self.run(move |s| s.history(query)).await
    }

    async fn first_seq_at(
        &self,
        conversation: ConversationId,
        timestamp_ms: u64,
    ) -> StoreResult<u64> {
        self.run(move |s| s.first_seq_at(conversation, timestamp_ms))
            .await
    }

    async fn cursor(&self, device: DeviceId, conversation: ConversationId) -> StoreResult<u64> {
        self.run(move |s| s.cursor(device, conversation)).await
    }

    async fn delivery_marks(&self, conversation: ConversationId) -> StoreResult<Vec<DeliveryMark>> {
        self.run(move |s| s.delivery_marks(conversation)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Message {
        Message {
            conversation: ConversationId(5),
            seq: 9,
            message_id: MessageId(u128::MAX),
            sender_user: UserId(1),
            sender_device: DeviceId(2),
            client_msg_id: 77,
            timestamp_ms: 1_700_000_000_000,
            content_type: "file".to_owned(),
            payload: (0..=255).collect(),
            files: vec![FileRef {
                file_id: MessageId(3),
                size: 10,
                content_type: "image/png".to_owned(),
            }],
        }
    }

    fn assert_corrupt<T: std::fmt::Debug>(r: StoreResult<T>, what: &str) {
        match r {
            Err(StoreError::Corrupt(_)) => {}
            other => panic!("{what}: expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn records_round_trip() {
        let m = sample();
        let bytes = encode_message(&m).expect("encode");
        assert_eq!(bytes[0], RECORD_V1);
        assert_eq!(
            decode_message(m.conversation, m.seq, &bytes).expect("decode"),
            m
        );
    }

    #[test]
    fn damaged_records_are_corrupt_errors_not_panics() {
        let m = sample();
        let good = encode_message(&m).expect("encode");
        // Every truncation misses a field.
        for n in 0..good.len() {
            assert_corrupt(
                decode_message(m.conversation, m.seq, &good[..n]),
                &format!("truncated to {n}"),
            );
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert_corrupt(
            decode_message(m.conversation, m.seq, &trailing),
            "trailing byte",
        );
        let mut version = good.clone();
        version[0] = 0xee;
        assert_corrupt(
            decode_message(m.conversation, m.seq, &version),
            "unknown version",
        );
        // A length prefix claiming far more bytes than exist must not allocate or panic.
        let huge = [
            RECORD_V1, 1, 1, 1, 1, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ];
        assert_corrupt(decode_message(m.conversation, m.seq, &huge), "huge length");
        // Random damage: any outcome but a panic is acceptable.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut bad = good.clone();
            let at = (x % bad.len() as u64) as usize;
            bad[at] ^= (x >> 32) as u8 | 1;
            let _ = decode_message(m.conversation, m.seq, &bad);
            let _ = decode_user(UserId(1), &bad);
            let _ = decode_conversation(ConversationId(1), &bad);
            let _ = decode_token([0; 32], &bad);
            let _ = decode_member(&bad);
        }
    }

    #[test]
    fn unknown_enum_values_are_corrupt() {
        let conv = encode(
            &ConversationV1 {
                kind: 9,
                name: Cow::Borrowed("x"),
                description: Cow::Borrowed(""),
                created_by: 1,
                created_ms: 2,
            },
            "test",
        )
        .expect("encode");
        assert_corrupt(decode_conversation(ConversationId(1), &conv), "kind 9");
        let member = encode(&MemberV1 { role: 0 }, "test").expect("encode");
        assert_corrupt(decode_member(&member), "role 0");
    }

    #[test]
    fn malformed_keys_and_index_values_are_corrupt() {
        assert_corrupt(seq_of_message_key(&[0; 23]), "short message key");
        assert_corrupt(seq_of_message_key(&[0; 25]), "long message key");
        assert_eq!(
            seq_of_message_key(&message_key(ConversationId(3), 258)).expect("key"),
            258
        );
        assert_corrupt(second_id(&[0; 20], "t"), "short key");
        assert_corrupt(second_id(&[0; 33], "t"), "long key");
        assert_eq!(
            second_id(&cat2([0; 16], 9u128.to_be_bytes()), "t").expect("key"),
            9
        );
        assert_corrupt(exact_u64(&[0; 7], "t"), "short seq");
        assert_corrupt(exact_u128(&[0; 17], "t"), "long id");
    }

    #[test]
    fn usernames_that_cannot_be_keys_are_refused() {
        assert!(username_key("").is_err());
        assert!(username_key(&"a".repeat(MAX_USERNAME_BYTES + 1)).is_err());
        assert_eq!(username_key("ÉLODIE").expect("key"), "élodie".as_bytes());
    }

    #[tokio::test]
    async fn corrupt_bytes_on_disk_surface_as_corrupt() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(dir.path()).expect("open");
        let conv = ConversationId(42);
        let mut m = sample();
        m.conversation = conv;
        m.seq = 1;
        store
            .commit(CommitBatch {
                messages: vec![m.clone()],
                cursors: Vec::new(),
            })
            .await
            .expect("commit");
        // Overwrite the stored record, cursor and user with garbage behind the store's back.
        let inner = &store.inner;
        inner
            .messages
            .insert(message_key(conv, 1), b"\x01\xff".to_vec())
            .expect("insert");
        inner
            .cursors
            .insert(cat2([1; 16], [2; 16]), b"abc".to_vec())
            .expect("insert");
        inner
            .users
            .insert(7u128.to_be_bytes(), b"\x02junk".to_vec())
            .expect("insert");
        let q = HistoryQuery::before(conv, 0, 10);
        assert_corrupt(store.history(q).await, "history");
        assert_corrupt(
            store
                .message_by_client_id(conv, m.sender_user, m.client_msg_id)
                .await,
            "by client id",
        );
        assert_corrupt(
            store
                .cursor(
                    DeviceId(u128::from_be_bytes([1; 16])),
                    ConversationId(u128::from_be_bytes([2; 16])),
                )
                .await,
            "cursor",
        );
        assert_corrupt(store.user_by_id(UserId(7)).await, "user");
    }

    #[test]
    fn unknown_layout_version_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = EmbeddedStore::open(dir.path()).expect("open");
            let meta = store
                .inner
                .db
                .keyspace("meta", KeyspaceCreateOptions::default)
                .expect("meta");
            meta.insert(LAYOUT_KEY, [LAYOUT_VERSION + 1])
                .expect("insert");
        }
        assert_corrupt(EmbeddedStore::open(dir.path()), "layout version");
    }

    #[tokio::test]
    async fn a_layout_2_directory_gets_its_sender_index_on_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conv = ConversationId(77);
        let (alice, bob) = (UserId(1), UserId(2));
        // More than one backfill batch, two senders.
        let messages: Vec<Message> = (1..=(BACKFILL_BATCH as u64 + 5))
            .map(|seq| Message {
                conversation: conv,
                seq,
                sender_user: if seq % 2 == 0 { bob } else { alice },
                client_msg_id: u128::from(seq),
                ..sample()
            })
            .collect();
        {
            // What a layout-2 store holds: the messages, no `sender_seqs` entry, layout 2.
            let store = EmbeddedStore::open(dir.path()).expect("open");
            store
                .commit(CommitBatch {
                    messages: messages.clone(),
                    cursors: Vec::new(),
                })
                .await
                .expect("commit");
            for m in &messages {
                store
                    .inner
                    .sender_seqs
                    .remove(sender_key(conv, m.sender_user, m.seq))
                    .expect("remove index");
            }
            let meta = store
                .inner
                .db
                .keyspace("meta", KeyspaceCreateOptions::default)
                .expect("meta");
            meta.insert(LAYOUT_KEY, [LAYOUT_VERSION_2]).expect("insert");
            let q = HistoryQuery::before(conv, 0, 10).from_sender(bob);
            assert!(store.history(q).await.expect("history").is_empty());
        }
        let store = EmbeddedStore::open(dir.path()).expect("a layout-2 directory opens");
        let q = HistoryQuery::before(conv, 0, 3).from_sender(bob);
        let page = store.history(q).await.expect("history");
        let last_even = (BACKFILL_BATCH as u64 + 5) / 2 * 2;
        assert_eq!(
            page.iter().map(|m| m.seq).collect::<Vec<_>>(),
            vec![last_even - 4, last_even - 2, last_even],
            "messages written before the index existed are found by sender"
        );
        let q = HistoryQuery::after(conv, 0, 2).from_sender(alice);
        let page = store.history(q).await.expect("history");
        assert_eq!(page.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![1, 3]);
        drop(store);
        // Recorded: the next open does not rebuild (and layout 3 stays).
        let store = EmbeddedStore::open(dir.path()).expect("reopen");
        let meta = store
            .inner
            .db
            .keyspace("meta", KeyspaceCreateOptions::default)
            .expect("meta");
        assert_eq!(
            meta.get(LAYOUT_KEY).expect("get").as_deref(),
            Some(&[LAYOUT_VERSION][..])
        );
    }

    #[tokio::test]
    async fn a_layout_1_directory_gets_its_token_index_on_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let user = UserId::random();
        let token = TokenRecord {
            token_hash: [3; 32],
            user,
            created_ms: 1,
            expires_ms: u64::MAX,
        };
        {
            // What a layout-1 store holds: the token, no `user_tokens` entry, layout 1.
            let store = EmbeddedStore::open(dir.path()).expect("open");
            store.put_token(token.clone()).await.expect("put");
            store
                .inner
                .user_tokens
                .remove(user_token_key(user, token.token_hash))
                .expect("remove index");
            let meta = store
                .inner
                .db
                .keyspace("meta", KeyspaceCreateOptions::default)
                .expect("meta");
            meta.insert(LAYOUT_KEY, [LAYOUT_VERSION_1]).expect("insert");
        }
        let store = EmbeddedStore::open(dir.path()).expect("a layout-1 directory opens");
        assert_eq!(
            store.delete_tokens_of(user).await.expect("delete"),
            vec![token.token_hash],
            "tokens written before the index existed are found"
        );
        assert_eq!(store.token(&token.token_hash).await.expect("token"), None);
    }
}
