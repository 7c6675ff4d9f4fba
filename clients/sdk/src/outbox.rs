//! The persistent outbox: messages composed (possibly offline) and not yet acknowledged by the
//! server, in compose order.
//!
//! Every entry carries the `client_msg_id` chosen when it was composed (random, persisted with
//! the entry), so a resend after a reconnect or an app restart reuses the same id and the server
//! stores the message once (it deduplicates by `(conversation, sender, client_msg_id)`).
//!
//! The ordering, limit and retry rules are the client core's ([`tern_core::protocol::outbox`]);
//! this module is the native driver side: the [`OutboxStore`] trait with SDK errors, the
//! crash-safe [`FileStore`], and [`Outbox`], the core's outbox over a boxed store with random
//! ids and wall-clock compose times.
//!
//! Storage sits behind [`OutboxStore`] (load all, append, remove by id) so other platforms can
//! plug their own (a browser: IndexedDB). Two implementations ship: [`MemoryStore`] (nothing
//! survives the process) and [`FileStore`] (native, crash-safe; format below).
//!
//! ## `FileStore` format and crash safety
//!
//! An append-only, checksummed log; its byte format (and the pure replay) is in the
//! [`tern_outbox_log`] crate, so the parser builds and fuzzes without the SDK's network stack.
//!
//! * An add is one `write` of the whole record followed by `fdatasync`; [`Outbox::compose`]
//!   returns only after that, so an entry the app was told about is on disk.
//! * A crash mid-append leaves a torn record at the tail: its length runs past the end of the
//!   file or its checksum does not match. Loading stops at the first such record and drops it
//!   and anything after it (only the tail can be torn: a failed append is cut off again with
//!   `set_len` before anything else is written, and when even that fails the store refuses
//!   further writes).
//! * Removes are appended without `fdatasync`: losing one in a crash only means the entry is
//!   sent again, which the server answers as a duplicate.
//! * Loading compacts: the live entries are written to `<file>.tmp`, fsynced, renamed over the
//!   log and the directory is fsynced, so a crash during compaction leaves either the old or the
//!   new file, both valid. When the outbox becomes empty the log is truncated back to the magic.
//!
//! One process at a time may use a file (there is no lock).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use tern_core::protocol::outbox as rules;
use tern_outbox_log::{MAGIC, encode_add, encode_log, encode_record, encode_remove};
use tern_wire::ids::ConversationId;

use crate::error::{Error, Result};

pub use tern_core::protocol::outbox::{MemoryStore, OutboxLimits, PendingSend};

/// Where the outbox persists. Calls are made in this order: one `load` when the outbox opens,
/// then `append`s and `remove`s as entries come and go. `append` must be durable when it
/// returns; `remove` may be lazy (a lost remove only causes a resend, which the server
/// deduplicates).
pub trait OutboxStore: Send {
    /// Every live entry, in append order.
    fn load(&mut self) -> Result<Vec<PendingSend>>;
    fn append(&mut self, entry: &PendingSend) -> Result<()>;
    fn remove(&mut self, client_msg_id: u128) -> Result<()>;
}

impl OutboxStore for MemoryStore {
    fn load(&mut self) -> Result<Vec<PendingSend>> {
        Ok(Vec::new())
    }
    fn append(&mut self, _entry: &PendingSend) -> Result<()> {
        Ok(())
    }
    fn remove(&mut self, _client_msg_id: u128) -> Result<()> {
        Ok(())
    }
}

/// The native crash-safe store: an append-only, checksummed log (see the module docs).
#[derive(Debug)]
pub struct FileStore {
    path: PathBuf,
    file: Option<File>,
    /// Current length of the valid log.
    len: u64,
    /// Live entries in the log (adds minus removes), to know when it can be truncated.
    live: usize,
    /// A failed append could not be cut off again: refuse writes until reopened.
    poisoned: bool,
    /// Bytes dropped from the tail by the last load (a torn or corrupt record).
    dropped_bytes: u64,
}

impl FileStore {
    /// Does no I/O yet; the file is read (and created) by `load`.
    pub fn new(path: impl Into<PathBuf>) -> FileStore {
        FileStore {
            path: path.into(),
            file: None,
            len: 0,
            live: 0,
            poisoned: false,
            dropped_bytes: 0,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes the last `load` dropped as a torn or corrupt tail (0 when the log was clean).
    pub fn dropped_bytes(&self) -> u64 {
        self.dropped_bytes
    }

    fn file(&mut self) -> Result<&mut File> {
        if self.poisoned {
            return Err(Error::Io(std::io::Error::other(format!(
                "outbox file {} is in an unknown state after a failed write; reopen it",
                self.path.display()
            ))));
        }
        self.file
            .as_mut()
            .ok_or_else(|| Error::Io(std::io::Error::other("outbox store used before load")))
    }

    /// Appends one record; on failure cuts the file back to its previous length so a partial
    /// record can never sit in front of later ones.
    fn write_record(&mut self, body: &[u8], sync: bool) -> Result<()> {
        let record = encode_record(body);
        let start = self.len;
        let file = self.file()?;
        let written = file
            .seek(SeekFrom::Start(start))
            .and_then(|_| file.write_all(&record))
            .and_then(|_| if sync { file.sync_data() } else { Ok(()) });
        match written {
            Ok(()) => {
                self.len = start + record.len() as u64;
                Ok(())
            }
            Err(e) => {
                let file = self.file.as_mut().expect("checked above");
                if file.set_len(start).and_then(|_| file.sync_data()).is_err() {
                    self.poisoned = true;
                }
                Err(Error::Io(e))
            }
        }
    }

    /// Writes `entries` to a fresh log next to the current one and renames it over it.
    fn rewrite(&mut self, entries: &[PendingSend]) -> Result<()> {
        let tmp = tmp_path(&self.path);
        let data = encode_log(entries);
        {
            let mut f = File::create(&tmp)?;
            f.write_all(&data)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        sync_dir(&self.path);
        let file = OpenOptions::new().read(true).write(true).open(&self.path)?;
        self.file = Some(file);
        self.len = data.len() as u64;
        self.live = entries.len();
        self.poisoned = false;
        Ok(())
    }
}

impl OutboxStore for FileStore {
    fn load(&mut self) -> Result<Vec<PendingSend>> {
        let mut data = Vec::new();
        match File::open(&self.path) {
            Ok(mut f) => {
                f.read_to_end(&mut data)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::Io(e)),
        }
        // Missing, or torn while being created, is an empty outbox: nothing was ever
        // acknowledged in it.
        let parsed = tern_outbox_log::parse(&data).map_err(|_| not_an_outbox(&self.path))?;
        let (entries, valid_len) = (parsed.entries, parsed.valid_len);
        self.dropped_bytes = (data.len() - valid_len.max(MAGIC.len()).min(data.len())) as u64;
        if self.dropped_bytes > 0 {
            tracing::warn!(
                path = %self.path.display(),
                dropped_bytes = self.dropped_bytes,
                "outbox log had a torn or corrupt tail; dropped it"
            );
        }
        self.rewrite(&entries)?;
        Ok(entries)
    }

    fn append(&mut self, entry: &PendingSend) -> Result<()> {
        self.write_record(&encode_add(entry), true)?;
        self.live += 1;
        Ok(())
    }

    fn remove(&mut self, client_msg_id: u128) -> Result<()> {
        self.live = self.live.saturating_sub(1);
        if self.live == 0 {
            // Nothing left: cut the log back to the magic (either outcome of a crash during
            // the truncation is valid).
            let file = self.file()?;
            file.set_len(MAGIC.len() as u64)?;
            self.len = MAGIC.len() as u64;
            return Ok(());
        }
        self.write_record(&encode_remove(client_msg_id), false)
    }
}

fn not_an_outbox(path: &Path) -> Error {
    Error::Config(format!(
        "{} exists but is not an outbox file (bad magic); refusing to overwrite it",
        path.display()
    ))
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Makes a rename durable. Best effort: not every platform can open a directory.
fn sync_dir(path: &Path) {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Any [`OutboxStore`] as the core's store.
struct BoxedStore(Box<dyn OutboxStore>);

impl rules::OutboxStore for BoxedStore {
    type Error = Error;
    fn load(&mut self) -> Result<Vec<PendingSend>> {
        self.0.load()
    }
    fn append(&mut self, entry: &PendingSend) -> Result<()> {
        self.0.append(entry)
    }
    fn remove(&mut self, client_msg_id: u128) -> Result<()> {
        self.0.remove(client_msg_id)
    }
}

fn outbox_error(e: rules::OutboxError<Error>) -> Error {
    match e {
        rules::OutboxError::Full {
            pending,
            pending_bytes,
            entry_bytes,
            max_entries,
            max_bytes,
        } => Error::OutboxFull {
            pending,
            pending_bytes,
            entry_bytes,
            max_entries,
            max_bytes,
        },
        rules::OutboxError::Invalid(why) => Error::Config(why.into()),
        rules::OutboxError::Store(e) => e,
    }
}

/// Pending sends in compose order, mirrored in memory and persisted through an [`OutboxStore`]
/// (the core's [`tern_rules::Outbox`] with random ids and wall-clock compose times).
pub struct Outbox {
    inner: rules::Outbox<BoxedStore>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

impl Outbox {
    /// Loads whatever `store` holds. Entries beyond `limits` (limits lowered since) are kept:
    /// nothing queued is ever dropped, only new entries are refused.
    pub fn open(store: impl OutboxStore + 'static, limits: OutboxLimits) -> Result<Outbox> {
        let inner = rules::Outbox::open(BoxedStore(Box::new(store)), limits)?;
        Ok(Outbox { inner })
    }

    /// A crash-safe outbox in `path` (created when missing).
    pub fn open_file(path: impl Into<PathBuf>, limits: OutboxLimits) -> Result<Outbox> {
        Self::open(FileStore::new(path), limits)
    }

    /// An outbox that does not survive the process.
    pub fn in_memory(limits: OutboxLimits) -> Outbox {
        Outbox {
            inner: rules::Outbox::from_loaded(
                BoxedStore(Box::new(MemoryStore)),
                Vec::new(),
                limits,
            ),
        }
    }

    /// Queues a new message with a fresh random `client_msg_id` (persisted before this
    /// returns) and returns the id.
    pub fn compose(
        &mut self,
        conversation: ConversationId,
        content_type: &str,
        payload: Vec<u8>,
    ) -> Result<u128> {
        self.inner
            .compose(conversation, content_type, payload, unix_ms(), || {
                uuid::Uuid::new_v4().as_u128()
            })
            .map_err(outbox_error)
    }

    /// Queues a message with a caller-chosen id. An id already queued is left as it is
    /// (returns `Ok`): the first copy is what will be sent.
    pub fn enqueue(&mut self, entry: PendingSend) -> Result<()> {
        self.inner.enqueue(entry).map_err(outbox_error)
    }

    /// Removes an entry (after its SendAck, or a permanent rejection). The in-memory entry is
    /// gone even when the store fails (the entry is then sent again after a restart, which the
    /// server deduplicates); the store error is returned for logging.
    pub fn remove(&mut self, client_msg_id: u128) -> Result<Option<PendingSend>> {
        self.inner.remove(client_msg_id)
    }

    /// A `SendAck` for `client_msg_id` in `conversation`: removes the entry when it is that
    /// message (see [`tern_rules::Outbox::on_acked`]).
    pub fn on_acked(
        &mut self,
        conversation: ConversationId,
        client_msg_id: u128,
    ) -> Result<Option<PendingSend>> {
        self.inner.on_acked(conversation, client_msg_id)
    }

    pub fn contains(&self, client_msg_id: u128) -> bool {
        self.inner.contains(client_msg_id)
    }

    pub fn get(&self, client_msg_id: u128) -> Option<&PendingSend> {
        self.inner.get(client_msg_id)
    }

    /// The oldest entry: the next to send.
    pub fn front(&self) -> Option<&PendingSend> {
        self.inner.front()
    }

    /// Entries in compose order.
    pub fn iter(&self) -> impl Iterator<Item = &PendingSend> {
        self.inner.iter()
    }

    pub fn len(&self) -> usize {
        self.inner.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// Bytes counted against [`OutboxLimits::max_bytes`].
    pub fn bytes(&self) -> usize {
        self.inner.bytes()
    }

    pub fn limits(&self) -> OutboxLimits {
        self.inner.limits()
    }

    pub fn set_limits(&mut self, limits: OutboxLimits) {
        self.inner.set_limits(limits);
    }
}

/// Wall-clock milliseconds (the compose time recorded with an entry).
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_outbox_log::{ADD_FIXED, RECORD_HEADER};

    const C1: ConversationId = ConversationId(1);
    const C2: ConversationId = ConversationId(2);

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "tern-outbox-test-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&d).expect("mkdir");
        d
    }

    fn ids(o: &Outbox) -> Vec<u128> {
        o.iter().map(|e| e.client_msg_id).collect()
    }

    #[test]
    fn file_roundtrip_keeps_order_ids_and_contents() {
        let d = dir();
        let path = d.join("outbox");
        let mut o = Outbox::open_file(&path, OutboxLimits::default()).expect("open");
        let a = o.compose(C1, "text", b"one".to_vec()).expect("a");
        let b = o.compose(C2, "image/png", vec![0, 1, 2, 255]).expect("b");
        let c = o.compose(C1, "text", Vec::new()).expect("c");
        let before: Vec<PendingSend> = o.iter().cloned().collect();
        drop(o);
        let o = Outbox::open_file(&path, OutboxLimits::default()).expect("reopen");
        assert_eq!(ids(&o), vec![a, b, c]);
        assert_eq!(o.iter().cloned().collect::<Vec<_>>(), before);
        assert_eq!(o.bytes(), 3 + 4 + 4 + 9 + 4);
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn remove_persists_and_keeps_the_rest_in_order() {
        let d = dir();
        let path = d.join("outbox");
        let mut o = Outbox::open_file(&path, OutboxLimits::default()).expect("open");
        let all: Vec<u128> = (0..5)
            .map(|i| o.compose(C1, "text", vec![i]).expect("compose"))
            .collect();
        assert_eq!(
            o.remove(all[1]).expect("remove").expect("present").payload,
            vec![1]
        );
        assert_eq!(o.remove(all[1]).expect("again"), None);
        o.remove(all[3]).expect("remove");
        drop(o);
        let mut o = Outbox::open_file(&path, OutboxLimits::default()).expect("reopen");
        assert_eq!(ids(&o), vec![all[0], all[2], all[4]]);
        // Emptying truncates the log to the magic; new entries still append fine.
        for id in [all[0], all[2], all[4]] {
            o.remove(id).expect("remove");
        }
        assert_eq!(
            std::fs::metadata(&path).expect("meta").len(),
            MAGIC.len() as u64
        );
        let x = o.compose(C2, "text", b"x".to_vec()).expect("x");
        drop(o);
        let o = Outbox::open_file(&path, OutboxLimits::default()).expect("reopen");
        assert_eq!(ids(&o), vec![x]);
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn torn_or_corrupt_tail_is_dropped_without_panicking() {
        let d = dir();
        let path = d.join("outbox");
        let mut o = Outbox::open_file(&path, OutboxLimits::default()).expect("open");
        let a = o.compose(C1, "text", b"first".to_vec()).expect("a");
        let b = o.compose(C1, "text", b"second".to_vec()).expect("b");
        drop(o);
        let full = std::fs::read(&path).expect("read");
        let last_record = RECORD_HEADER + ADD_FIXED + 4 + 6;
        let first_end = full.len() - last_record;
        // Every truncation inside the last record drops exactly that record.
        for cut in first_end..full.len() {
            std::fs::write(&path, &full[..cut]).expect("write");
            let o = Outbox::open_file(&path, OutboxLimits::default()).expect("open torn");
            assert_eq!(ids(&o), vec![a], "cut at {cut}");
        }
        // A flipped bit in the last record: checksum mismatch, dropped.
        let mut flipped = full.clone();
        let at = full.len() - 2;
        flipped[at] ^= 0x40;
        std::fs::write(&path, &flipped).expect("write");
        let mut store = FileStore::new(&path);
        let loaded = store.load().expect("load");
        assert_eq!(
            loaded.iter().map(|e| e.client_msg_id).collect::<Vec<_>>(),
            vec![a]
        );
        assert_eq!(store.dropped_bytes(), last_record as u64);
        // Loading compacted the file: a reload is clean and appends land after the good part.
        drop(store);
        let mut o = Outbox::open_file(&path, OutboxLimits::default()).expect("reopen");
        let c = o.compose(C1, "text", b"third".to_vec()).expect("c");
        drop(o);
        let o = Outbox::open_file(&path, OutboxLimits::default()).expect("reopen");
        assert_eq!(ids(&o), vec![a, c]);
        assert!(!o.contains(b));
        // Garbage lengths and random bytes never panic.
        let mut garbage = MAGIC.to_vec();
        garbage.extend_from_slice(&[0xff; 40]);
        std::fs::write(&path, &garbage).expect("write");
        assert!(
            Outbox::open_file(&path, OutboxLimits::default())
                .expect("open")
                .is_empty()
        );
        // A torn magic is an empty outbox; a foreign file is refused, not overwritten.
        std::fs::write(&path, &MAGIC[..3]).expect("write");
        assert!(
            Outbox::open_file(&path, OutboxLimits::default())
                .expect("open")
                .is_empty()
        );
        std::fs::write(&path, b"not an outbox at all").expect("write");
        assert!(matches!(
            Outbox::open_file(&path, OutboxLimits::default()),
            Err(Error::Config(_))
        ));
        assert_eq!(std::fs::read(&path).expect("read"), b"not an outbox at all");
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn limits_refuse_new_entries_and_keep_queued_ones() {
        let d = dir();
        let path = d.join("outbox");
        let limits = OutboxLimits {
            max_entries: 3,
            max_bytes: 20,
        };
        let mut o = Outbox::open_file(&path, limits).expect("open");
        let a = o.compose(C1, "t", vec![0; 4]).expect("a"); // 5 bytes
        let b = o.compose(C1, "t", vec![0; 4]).expect("b"); // 10
        // Too many bytes for what is left.
        match o.compose(C1, "t", vec![0; 11]) {
            Err(Error::OutboxFull {
                pending: 2,
                pending_bytes: 10,
                entry_bytes: 12,
                max_bytes: 20,
                ..
            }) => {}
            other => panic!("expected OutboxFull, got {other:?}"),
        }
        let c = o.compose(C1, "t", vec![0; 4]).expect("c");
        // Too many entries.
        let err = o.compose(C1, "t", Vec::new()).expect_err("full");
        assert!(matches!(
            err,
            Error::OutboxFull {
                pending: 3,
                max_entries: 3,
                ..
            }
        ));
        assert!(err.to_string().contains("outbox full"), "{err}");
        assert_eq!(ids(&o), vec![a, b, c]);
        // Freed space is usable again.
        o.remove(a).expect("remove");
        let e = o.compose(C1, "t", Vec::new()).expect("room again");
        drop(o);
        let o = Outbox::open_file(&path, limits).expect("reopen");
        assert_eq!(ids(&o), vec![b, c, e]);
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn explicit_ids_are_kept_and_not_duplicated() {
        let mut o = Outbox::in_memory(OutboxLimits::default());
        let e = PendingSend {
            client_msg_id: 42,
            conversation: C1,
            content_type: "text".into(),
            payload: b"x".to_vec(),
            created_ms: 7,
        };
        o.enqueue(e.clone()).expect("enqueue");
        o.enqueue(e.clone()).expect("again");
        assert_eq!(o.len(), 1);
        assert_eq!(o.front(), Some(&e));
    }
}
