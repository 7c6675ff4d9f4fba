//! [`SearchIndex`]: the database handle and every operation on it.

#[cfg(not(target_arch = "wasm32"))]
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, Row, params};
use uuid::Uuid;

use crate::backfill::{Checkpoint, StorePage};
use crate::ids::{MAX_SENT_AT_MS, last_id_for, slot_start};
use crate::query::{self, ParsedQuery};
use crate::snippet::snippet;
use crate::write::{
    Table, check_batch, insert_all, key_of, parse_checkpoint, to_i64, write_checkpoint,
};
use crate::{IndexedMessage, MAX_SEARCH_LIMIT, SearchError, SearchHit, SearchQuery, schema};

/// A search ranks at most this many matches: the newest ones that pass the filters. A word in
/// every other message would otherwise cost a bm25 score and a row lookup per match (hundreds
/// of thousands at a million messages) for the sake of 20 results; with the bound every query
/// costs at most this many, and a rarer word (fewer matches) is ranked over all its matches.
pub const MAX_RANKED_MATCHES: u32 = 2000;

/// Without a date filter FTS5 alone finds the candidates (words, conversation and sender
/// tokens, newest first) and scores them; ties go to the newer id (ids are time-ordered), so
/// no row is read before the best `limit` are known, and only their rows are.
const SEARCH_SQL: &str = "
WITH candidates AS MATERIALIZED (
    SELECT rowid AS id, bm25(messages_fts, 1.0, 0.0) AS rank
    FROM messages_fts
    WHERE messages_fts MATCH ?1
    ORDER BY rowid DESC
    LIMIT ?2
),
top AS MATERIALIZED (
    SELECT id, rank FROM candidates ORDER BY rank, id DESC LIMIT ?3
)
SELECT c.uuid, m.seq, s.uuid, m.sender_name, m.sent_at_ms, m.body, top.rank
FROM top JOIN messages AS m ON m.id = top.id
JOIN conversations AS c ON c.id = m.conversation
JOIN senders AS s ON s.id = m.sender
ORDER BY top.rank, m.sent_at_ms DESC, top.id DESC";

/// With a date filter FTS5 seeks to the rowid range of the slots and each match's row is
/// checked for the exact timestamps before it counts as a candidate (CROSS JOIN: FTS5 drives
/// the loop, never `messages`).
const SEARCH_DATES_SQL: &str = "
WITH candidates AS MATERIALIZED (
    SELECT m.id AS id, bm25(messages_fts, 1.0, 0.0) AS rank
    FROM messages_fts CROSS JOIN messages AS m ON m.id = messages_fts.rowid
    WHERE messages_fts MATCH ?1
      AND messages_fts.rowid BETWEEN ?4 AND ?5
      AND m.sent_at_ms BETWEEN ?6 AND ?7
    ORDER BY messages_fts.rowid DESC
    LIMIT ?2
),
top AS MATERIALIZED (
    SELECT id, rank FROM candidates ORDER BY rank, id DESC LIMIT ?3
)
SELECT c.uuid, m.seq, s.uuid, m.sender_name, m.sent_at_ms, m.body, top.rank
FROM top JOIN messages AS m ON m.id = top.id
JOIN conversations AS c ON c.id = m.conversation
JOIN senders AS s ON s.id = m.sender
ORDER BY top.rank, m.sent_at_ms DESC, top.id DESC";

/// The native page cache, in KiB (an upper bound: SQLite fills it as pages are read).
#[cfg(not(target_arch = "wasm32"))]
const NATIVE_CACHE_KIB: u32 = 32 * 1024;

/// A client's search index. One per account; not shared between threads (SQLite connection).
pub struct SearchIndex {
    conn: Connection,
    #[cfg(not(target_arch = "wasm32"))]
    path: Option<PathBuf>,
}

impl SearchIndex {
    /// Opens (or creates) the index file at `path`, encrypted with `key` (SQLCipher, raw
    /// 256-bit key). A wrong key is [`SearchError::WrongKey`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(path: &Path, key: &[u8; 32]) -> Result<Self, SearchError> {
        let conn = Connection::open(path)?;
        schema::apply_key(&conn, key)?;
        // WAL: a search never waits behind a backfill batch; NORMAL: an index can be rebuilt,
        // so the last transactions before a power cut may go. A larger page cache than
        // SQLite's 2 MiB: every page read from disk is decrypted and authenticated, and a
        // search touches one FTS5 size record per ranked candidate.
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA cache_size = -{NATIVE_CACHE_KIB};"
        ))?;
        let mut index = Self::init(conn)?;
        index.path = Some(path.to_owned());
        Ok(index)
    }

    /// An index that lives only as long as this value (tests; a client that keeps nothing).
    pub fn open_in_memory() -> Result<Self, SearchError> {
        Self::init(Connection::open_in_memory()?)
    }

    /// Wraps a connection opened by the caller, e.g. the web worker's on the OPFS VFS. With a
    /// key it is keyed first (so it must be fresh: no statement run on it yet); the schema is
    /// created or checked. Journal mode and other pragmas are the caller's.
    pub fn from_connection(conn: Connection, key: Option<&[u8; 32]>) -> Result<Self, SearchError> {
        if let Some(key) = key {
            schema::apply_key(&conn, key)?;
        }
        Self::init(conn)
    }

    fn init(conn: Connection) -> Result<Self, SearchError> {
        schema::ensure(&conn)?;
        Ok(SearchIndex {
            conn,
            #[cfg(not(target_arch = "wasm32"))]
            path: None,
        })
    }

    /// Indexes `messages` in one transaction. Re-adding a (conversation, seq) replaces it (an
    /// identical copy is skipped), so feeding a message twice is harmless.
    pub fn add(&mut self, messages: &[IndexedMessage]) -> Result<(), SearchError> {
        check_batch(messages.len())?;
        let tx = self.conn.transaction()?;
        insert_all(&tx, messages)?;
        tx.commit()?;
        Ok(())
    }

    /// A backfill page and its conversation's new checkpoint, in one transaction: after a
    /// crash the checkpoint never claims a page that was not stored.
    pub fn store_page(&mut self, page: &StorePage) -> Result<(), SearchError> {
        check_batch(page.messages.len())?;
        let tx = self.conn.transaction()?;
        insert_all(&tx, &page.messages)?;
        write_checkpoint(&tx, page.conversation, &page.checkpoint)?;
        tx.commit()?;
        Ok(())
    }

    /// Drops every message of a conversation (the user left it) and its backfill checkpoint.
    /// Returns how many messages were removed.
    pub fn remove_conversation(&mut self, conversation: Uuid) -> Result<u64, SearchError> {
        let tx = self.conn.transaction()?;
        let mut removed = 0;
        if let Some(key) = key_of(&tx, Table::Conversations, conversation)? {
            tx.execute(
                "DELETE FROM messages_fts WHERE rowid IN (SELECT id FROM messages WHERE conversation = ?1)",
                [key],
            )?;
            removed = tx.execute("DELETE FROM messages WHERE conversation = ?1", [key])?;
            tx.execute("DELETE FROM conversations WHERE id = ?1", [key])?;
        }
        tx.execute(
            "DELETE FROM backfill WHERE conversation = ?1",
            [conversation.as_bytes().as_slice()],
        )?;
        tx.commit()?;
        Ok(removed as u64)
    }

    /// Empties the index (logout) and gives the space back. Native clients that are done with
    /// the file should then [`destroy`](Self::destroy) it.
    pub fn clear(&mut self) -> Result<(), SearchError> {
        let tx = self.conn.transaction()?;
        tx.execute_batch(
            "DELETE FROM messages;
             DELETE FROM conversations;
             DELETE FROM senders;
             DELETE FROM backfill;
             INSERT INTO messages_fts (messages_fts) VALUES ('delete-all');",
        )?;
        tx.commit()?;
        self.conn.execute_batch("VACUUM;")?;
        Ok(())
    }

    /// Closes the index and deletes its files (logout on a native client).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn destroy(self) -> Result<(), SearchError> {
        let path = self.path.clone();
        self.conn.close().map_err(|(_, e)| e)?;
        match path {
            Some(path) => delete_index_files(&path),
            None => Ok(()),
        }
    }

    /// Ranked hits for `query`, best first (bm25, then newest), at most `query.limit`.
    pub fn search(&self, query: &SearchQuery) -> Result<Vec<SearchHit>, SearchError> {
        check_query(query)?;
        let parsed = query::parse(&query.text)?;
        // No word with a letter or digit (empty, emoji, punctuation): nothing to look up.
        // Nothing is stored after MAX_SENT_AT_MS either.
        let since = query.since_ms.unwrap_or(0);
        if parsed.is_empty() || since > MAX_SENT_AT_MS {
            return Ok(Vec::new());
        }
        let until = query.until_ms.unwrap_or(u64::MAX).min(MAX_SENT_AT_MS);
        let scope: Vec<String> = query
            .conversation
            .map(query::conversation_token)
            .into_iter()
            .chain(query.sender.map(query::sender_token))
            .collect();
        let expression = parsed.to_match_expression(&scope);
        let mut stmt;
        let mut rows = if query.since_ms.is_none() && query.until_ms.is_none() {
            stmt = self.conn.prepare_cached(SEARCH_SQL)?;
            stmt.query(params![expression, MAX_RANKED_MATCHES, query.limit])?
        } else {
            stmt = self.conn.prepare_cached(SEARCH_DATES_SQL)?;
            stmt.query(params![
                expression,
                MAX_RANKED_MATCHES,
                query.limit,
                slot_start(since),
                last_id_for(&self.conn, until)?,
                to_i64("since_ms", since)?,
                to_i64("until_ms", until)?,
            ])?
        };
        let mut hits = Vec::new();
        while let Some(row) = rows.next()? {
            hits.push(hit_from_row(row, &parsed)?);
        }
        Ok(hits)
    }

    /// The stored backfill checkpoint of a conversation, if any.
    pub fn backfill_checkpoint(
        &self,
        conversation: Uuid,
    ) -> Result<Option<Checkpoint>, SearchError> {
        let json: Option<String> = self
            .conn
            .query_row(
                "SELECT checkpoint FROM backfill WHERE conversation = ?1",
                [conversation.as_bytes().as_slice()],
                |row| row.get(0),
            )
            .optional()?;
        json.map(|j| parse_checkpoint(&j)).transpose()
    }

    /// Every stored checkpoint (a client restarting its backfill loads them all at once).
    pub fn backfill_checkpoints(&self) -> Result<Vec<(Uuid, Checkpoint)>, SearchError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT conversation, checkpoint FROM backfill")?;
        let mut rows = stmt.query([])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let conversation = uuid_at(row, 0)?;
            let json: String = row.get(1)?;
            out.push((conversation, parse_checkpoint(&json)?));
        }
        Ok(out)
    }

    pub fn set_backfill_checkpoint(
        &mut self,
        conversation: Uuid,
        checkpoint: &Checkpoint,
    ) -> Result<(), SearchError> {
        let tx = self.conn.transaction()?;
        write_checkpoint(&tx, conversation, checkpoint)?;
        tx.commit()?;
        Ok(())
    }

    /// How many messages the index holds.
    pub fn message_count(&self) -> Result<u64, SearchError> {
        let n: i64 = self
            .conn
            .query_row("SELECT count(*) FROM messages", [], |row| row.get(0))?;
        Ok(n.unsigned_abs())
    }

    /// Merges the FTS index into one segment, rewrites the file without the freed pages
    /// (VACUUM) and folds the WAL into it: smaller and a little faster afterwards. Optional and
    /// slow on a large index (FTS5 merges incrementally as it goes anyway): maintenance, not
    /// something to run per batch.
    pub fn optimize(&mut self) -> Result<(), SearchError> {
        self.conn.execute_batch(
            "INSERT INTO messages_fts (messages_fts) VALUES ('optimize'); VACUUM;",
        )?;
        self.checkpoint_wal()
    }

    /// Folds the WAL (if any) into the main file, so its size is the index's size.
    pub fn checkpoint_wal(&mut self) -> Result<(), SearchError> {
        self.conn
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
        Ok(())
    }
}

/// Removes an index's files (the database and its WAL/SHM/journal), e.g. at logout when the
/// key is gone and the index cannot be opened any more. Missing files are fine.
#[cfg(not(target_arch = "wasm32"))]
pub fn delete_index_files(path: &Path) -> Result<(), SearchError> {
    let mut paths = vec![path.to_owned()];
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        paths.push(PathBuf::from(p));
    }
    for p in paths {
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn check_query(query: &SearchQuery) -> Result<(), SearchError> {
    if query.limit == 0 || query.limit > MAX_SEARCH_LIMIT {
        return Err(SearchError::InvalidLimit {
            limit: query.limit,
            max: MAX_SEARCH_LIMIT,
        });
    }
    match (query.since_ms, query.until_ms) {
        (Some(since_ms), Some(until_ms)) if since_ms > until_ms => {
            Err(SearchError::InvalidDateRange { since_ms, until_ms })
        }
        _ => Ok(()),
    }
}

fn hit_from_row(row: &Row<'_>, parsed: &ParsedQuery) -> Result<SearchHit, SearchError> {
    let text: String = row.get(5)?;
    Ok(SearchHit {
        conversation: uuid_at(row, 0)?,
        seq: from_i64(row.get(1)?)?,
        sender: uuid_at(row, 2)?,
        sender_name: row.get(3)?,
        sent_at_ms: from_i64(row.get(4)?)?,
        rank: row.get(6)?,
        snippet: snippet(&text, parsed),
    })
}

fn uuid_at(row: &Row<'_>, i: usize) -> Result<Uuid, SearchError> {
    let bytes = row
        .get_ref(i)?
        .as_blob()
        .map_err(|_| SearchError::Corrupt("id is not a blob"))?;
    Uuid::from_slice(bytes).map_err(|_| SearchError::Corrupt("id is not 16 bytes"))
}

fn from_i64(value: i64) -> Result<u64, SearchError> {
    u64::try_from(value).map_err(|_| SearchError::Corrupt("negative seq or timestamp"))
}
