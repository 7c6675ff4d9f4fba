//! The app's local message search (issue 14), on top of [`tern_search`]: which decrypted
//! messages become index rows, where a native app keeps the index, and the background
//! backfill of older history ([`backfill`]).
//!
//! The app owns the index ([`LocalIndex`]) and feeds it what it decrypted: live messages
//! ([`LocalIndex::add_decrypted`] from `ClientEvent::Message` / `Decrypted`), its own sent
//! messages, history pages it showed, and the backfill. Only plaintext bodies are indexed
//! ([`searchable_text`]): text messages and a file message's name and caption. Ciphertext and
//! messages that could not be decrypted never reach it (they are `Err` on the decrypt path,
//! and their content type is not a plaintext one).
//!
//! Every conversation with rows also has a backfill checkpoint: live and shown messages
//! record their seq in it, so the backfill does not fetch them again, and
//! [`LocalIndex::retain_conversations`] can find every conversation the index knows.

pub mod backfill;

use std::path::{Path, PathBuf};

use tern_search::{Checkpoint, IndexedMessage, SearchHit, SearchIndex, SearchQuery, SeqRange};
use tern_wire::ids::{ConversationId, UserId};
use tern_wire::msg::Message;
use uuid::Uuid;

use crate::connection::SendReceipt;
use crate::e2e::TEXT_CONTENT_TYPE;
use crate::error::{Error, Result};
use crate::files::file_body_of;

pub use tern_search;

/// The text a decrypted message contributes to the index, `None` for anything that is not a
/// plaintext body (ciphertext, other content types, invalid UTF-8, empty text).
pub fn searchable_text(m: &Message) -> Option<String> {
    if let Some(file) = file_body_of(m) {
        let text = [file.name.as_str(), file.caption.as_str()]
            .iter()
            .filter(|s| !s.trim().is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join("\n");
        return (!text.is_empty()).then_some(text);
    }
    if m.content_type != TEXT_CONTENT_TYPE {
        return None;
    }
    let text = std::str::from_utf8(&m.payload).ok()?;
    (!text.trim().is_empty()).then(|| text.to_owned())
}

/// The index row of a decrypted message (see [`searchable_text`]).
pub fn indexed_message(m: &Message, sender_name: &str) -> Option<IndexedMessage> {
    Some(IndexedMessage {
        conversation: conversation_uuid(m.conversation),
        seq: m.seq,
        sender: user_uuid(m.sender_user),
        sender_name: sender_name.to_owned(),
        sent_at_ms: m.timestamp_ms,
        text: searchable_text(m)?,
    })
}

pub fn conversation_uuid(c: ConversationId) -> Uuid {
    Uuid::from_u128(c.0)
}

pub fn user_uuid(u: UserId) -> Uuid {
    Uuid::from_u128(u.0)
}

/// One account's index in a native app's data directory: `<dir>/<user>.db` (SQLCipher,
/// encrypted with a random 32-byte key) and `<dir>/<user>.key` (that key, 0600, created on first
/// use), in a 0700 directory. Whoever can read both as this OS user can read what the index
/// holds: the same boundary as the device's crypto state beside it.
pub struct LocalIndex {
    index: SearchIndex,
    files: IndexFiles,
}

/// Where one account's index and its key live.
#[derive(Debug, Clone)]
pub struct IndexFiles {
    pub db: PathBuf,
    pub key: PathBuf,
}

impl IndexFiles {
    pub fn new(dir: &Path, user: UserId) -> Self {
        IndexFiles {
            db: dir.join(format!("{user}.db")),
            key: dir.join(format!("{user}.key")),
        }
    }

    /// Deletes the index (database, WAL, shared memory) and then its key. Missing files are
    /// fine. The key goes last: a crash in between leaves a key without an index, never an
    /// index nobody can delete knowingly.
    pub fn delete(&self) -> Result<()> {
        tern_search::delete_index_files(&self.db)?;
        match std::fs::remove_file(&self.key) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether anything of the index is on disk.
    pub fn exist(&self) -> bool {
        self.db.exists() || self.key.exists()
    }
}

impl LocalIndex {
    /// Opens (or creates) the index of `user` under `dir`.
    pub fn open(dir: &Path, user: UserId) -> Result<LocalIndex> {
        create_private_dir(dir)?;
        let files = IndexFiles::new(dir, user);
        let key = crate::e2e::load_or_create_pickle_key(&files.key)?;
        let index = SearchIndex::open(&files.db, &key)?;
        Ok(LocalIndex { index, files })
    }

    /// An index kept in memory only (tests, an app that keeps nothing on disk).
    pub fn in_memory() -> Result<LocalIndex> {
        Ok(LocalIndex {
            index: SearchIndex::open_in_memory()?,
            files: IndexFiles {
                db: PathBuf::new(),
                key: PathBuf::new(),
            },
        })
    }

    pub fn index(&self) -> &SearchIndex {
        &self.index
    }

    pub fn index_mut(&mut self) -> &mut SearchIndex {
        &mut self.index
    }

    /// Indexes the decrypted messages among `messages` (see [`searchable_text`]) and records
    /// their seqs in their conversations' checkpoints. Returns how many rows were written.
    pub fn add_decrypted(
        &mut self,
        messages: &[Message],
        name_of: &dyn Fn(UserId) -> String,
    ) -> Result<usize> {
        let rows: Vec<IndexedMessage> = messages
            .iter()
            .filter_map(|m| indexed_message(m, &name_of(m.sender_user)))
            .collect();
        for chunk in rows.chunks(tern_search::MAX_ADD_BATCH) {
            self.index.add(chunk)?;
        }
        let mut conversations: Vec<Uuid> = rows.iter().map(|r| r.conversation).collect();
        conversations.sort_unstable();
        conversations.dedup();
        for c in conversations {
            let mut checkpoint = self.index.backfill_checkpoint(c)?.unwrap_or_default();
            for r in rows.iter().filter(|r| r.conversation == c) {
                checkpoint.insert(SeqRange {
                    lo: r.seq,
                    hi: r.seq,
                });
            }
            self.index.set_backfill_checkpoint(c, &checkpoint)?;
        }
        Ok(rows.len())
    }

    /// Indexes a message this device sent (it is never delivered back to the sender's own
    /// device): the plaintext it sent, under the seq and time of its receipt.
    pub fn add_sent(
        &mut self,
        receipt: &SendReceipt,
        me: UserId,
        my_name: &str,
        content_type: &str,
        payload: &[u8],
    ) -> Result<usize> {
        let message = Message {
            conversation: receipt.conversation,
            seq: receipt.seq,
            message_id: receipt.message_id,
            sender_user: me,
            // Not stored in the index; the device is irrelevant to a search row.
            sender_device: tern_wire::ids::DeviceId(0),
            client_msg_id: receipt.client_msg_id,
            timestamp_ms: receipt.timestamp_ms,
            content_type: content_type.to_owned(),
            payload: payload.to_vec(),
            files: Vec::new(),
        };
        self.add_decrypted(&[message], &|_| my_name.to_owned())
    }

    /// Drops a conversation's rows and checkpoint (the user left it or was removed).
    pub fn forget_conversation(&mut self, conversation: ConversationId) -> Result<u64> {
        Ok(self
            .index
            .remove_conversation(conversation_uuid(conversation))?)
    }

    /// Drops every conversation the index knows that is not in `current` (the server's list
    /// of the user's conversations: one the user left or was removed from is no longer in
    /// it). Returns the conversations dropped.
    pub fn retain_conversations(&mut self, current: &[ConversationId]) -> Result<Vec<Uuid>> {
        let keep: Vec<Uuid> = current.iter().map(|c| conversation_uuid(*c)).collect();
        let known: Vec<(Uuid, Checkpoint)> = self.index.backfill_checkpoints()?;
        let mut dropped = Vec::new();
        for (c, _) in known {
            if !keep.contains(&c) {
                self.index.remove_conversation(c)?;
                dropped.push(c);
            }
        }
        Ok(dropped)
    }

    /// Ranked hits, best first.
    pub fn search(&self, query: &SearchQuery) -> Result<Vec<SearchHit>> {
        Ok(self.index.search(query)?)
    }

    /// Logout: empties the index, closes it and deletes its files and key.
    pub fn destroy(self) -> Result<()> {
        let LocalIndex { mut index, files } = self;
        index.clear()?;
        index.destroy()?;
        if files.key.as_os_str().is_empty() {
            return Ok(());
        }
        files.delete()
    }
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    if !dir.is_dir() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(())
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    Ok(())
}

impl From<tern_search::SearchError> for Error {
    fn from(e: tern_search::SearchError) -> Self {
        Error::Search(e)
    }
}

#[cfg(test)]
mod tests;
