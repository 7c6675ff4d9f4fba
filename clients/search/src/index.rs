//! [`SearchIndex`]: the database handle and every operation on it.

#[cfg(not(target_arch = "wasm32"))]
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};
use uuid::Uuid;

use crate::backfill::{Checkpoint, StorePage};
use crate::query::{self, ParsedQuery};
use crate::snippet::snippet;
use crate::text::{segment_for_index, truncate_bytes};
use crate::{
    IndexedMessage, MAX_ADD_BATCH, MAX_INDEXED_TEXT_BYTES, MAX_SEARCH_LIMIT, SearchError,
    SearchHit, SearchQuery, schema,
};

/// Row ids are time-ordered: a message's id is its `sent_at_ms` rounded down to a slot of
/// [`SLOT_MS`] plus a counter within the slot. FTS5 then walks its matches newest first for
/// free (`ORDER BY rowid DESC` is its native order) and a date range is a rowid range it seeks
/// to. Coarser slots would shrink FTS5's rowid deltas further but crowd more messages into a
/// slot; 1,024 ms keeps the deltas at ~3 bytes for chat-paced messages.
const SLOT_MS: u64 = 1024;
/// The latest storable timestamp (ids stay below `i64::MAX`).
const MAX_SENT_AT_MS: u64 = (i64::MAX as u64 & !(SLOT_MS - 1)) - SLOT_MS;

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
SELECT m.conversation, m.seq, m.sender, m.sender_name, m.sent_at_ms, m.body, top.rank
FROM top JOIN messages AS m ON m.id = top.id
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
SELECT m.conversation, m.seq, m.sender, m.sender_name, m.sent_at_ms, m.body, top.rank
FROM top JOIN messages AS m ON m.id = top.id
ORDER BY top.rank, m.sent_at_ms DESC, top.id DESC";

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
        // so the last transactions before a power cut may go.
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")?;
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
        let id = conversation.as_bytes().as_slice();
        tx.execute(
            "DELETE FROM messages_fts WHERE rowid IN (SELECT id FROM messages WHERE conversation = ?1)",
            [id],
        )?;
        let removed = tx.execute("DELETE FROM messages WHERE conversation = ?1", [id])?;
        tx.execute("DELETE FROM backfill WHERE conversation = ?1", [id])?;
        tx.commit()?;
        Ok(removed as u64)
    }

    /// Empties the index (logout) and gives the space back. Native clients that are done with
    /// the file should then [`destroy`](Self::destroy) it.
    pub fn clear(&mut self) -> Result<(), SearchError> {
        let tx = self.conn.transaction()?;
        tx.execute_batch(
            "DELETE FROM messages;
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
        if query.limit == 0 || query.limit > MAX_SEARCH_LIMIT {
            return Err(SearchError::InvalidLimit {
                limit: query.limit,
                max: MAX_SEARCH_LIMIT,
            });
        }
        if let (Some(since_ms), Some(until_ms)) = (query.since_ms, query.until_ms)
            && since_ms > until_ms
        {
            return Err(SearchError::InvalidDateRange { since_ms, until_ms });
        }
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
                self.last_id_for(until)?,
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

    /// The highest row id a message sent at or before `until_ms` can have: the end of its slot,
    /// unless a slot ever overflowed (then ids may run ahead of time and only the exact
    /// timestamp filter applies).
    fn last_id_for(&self, until_ms: u64) -> Result<i64, SearchError> {
        let spilled: Option<i64> = self
            .conn
            .query_row(
                "SELECT value FROM search_meta WHERE name = 'slot_spilled'",
                [],
                |row| row.get(0),
            )
            .optional()?;
        Ok(if spilled.is_some() {
            i64::MAX
        } else {
            slot_start(until_ms) + (SLOT_MS as i64 - 1)
        })
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

    /// Merges the FTS index into one segment and folds the WAL into the file: smaller and a
    /// little faster afterwards; optional (FTS5 merges incrementally as it goes).
    pub fn optimize(&mut self) -> Result<(), SearchError> {
        self.conn
            .execute_batch("INSERT INTO messages_fts (messages_fts) VALUES ('optimize');")?;
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

fn check_batch(len: usize) -> Result<(), SearchError> {
    if len > MAX_ADD_BATCH {
        return Err(SearchError::BatchTooLarge {
            len,
            max: MAX_ADD_BATCH,
        });
    }
    Ok(())
}

fn insert_all(tx: &Transaction<'_>, messages: &[IndexedMessage]) -> Result<(), SearchError> {
    let mut find = tx.prepare_cached(
        "SELECT id, sender, sender_name, sent_at_ms, body FROM messages
         WHERE conversation = ?1 AND seq = ?2",
    )?;
    let mut delete = tx.prepare_cached("DELETE FROM messages WHERE id = ?1")?;
    let mut fts_delete = tx.prepare_cached("DELETE FROM messages_fts WHERE rowid = ?1")?;
    for m in messages {
        let seq = to_i64("seq", m.seq)?;
        if m.sent_at_ms > MAX_SENT_AT_MS {
            return Err(SearchError::OutOfRange {
                field: "sent_at_ms",
                value: m.sent_at_ms,
            });
        }
        let body = truncate_bytes(&m.text, MAX_INDEXED_TEXT_BYTES);
        let conversation = m.conversation.as_bytes().as_slice();
        let existing = find
            .query_row(params![conversation, seq], |row| {
                let same = row.get::<_, Vec<u8>>(1)? == m.sender.as_bytes()
                    && row.get::<_, String>(2)? == m.sender_name
                    && row.get::<_, i64>(3)?.unsigned_abs() == m.sent_at_ms
                    && row.get::<_, String>(4)? == body;
                Ok((row.get::<_, i64>(0)?, same))
            })
            .optional()?;
        match existing {
            Some((_, true)) => continue,
            // Changed (an edit, a corrected timestamp): a new row, so the id's time order holds.
            Some((id, false)) => {
                fts_delete.execute([id])?;
                delete.execute([id])?;
            }
            None => {}
        }
        insert_one(tx, m, body)?;
    }
    Ok(())
}

fn insert_one(tx: &Transaction<'_>, m: &IndexedMessage, body: &str) -> Result<(), SearchError> {
    let id = allocate_id(tx, m.sent_at_ms)?;
    tx.prepare_cached(
        "INSERT INTO messages (id, conversation, seq, sender, sender_name, sent_at_ms, body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        id,
        m.conversation.as_bytes().as_slice(),
        to_i64("seq", m.seq)?,
        m.sender.as_bytes().as_slice(),
        m.sender_name,
        to_i64("sent_at_ms", m.sent_at_ms)?,
        body,
    ])?;
    let scope = format!(
        "{} {}",
        query::conversation_token(m.conversation),
        query::sender_token(m.sender)
    );
    tx.prepare_cached("INSERT INTO messages_fts (rowid, body, scope) VALUES (?1, ?2, ?3)")?
        .execute(params![id, segment_for_index(body), scope])?;
    Ok(())
}

/// The next free id in the message's time slot. A full slot (1,024 messages within about a
/// second) spills to the next free id after it and records that it did, which turns off the
/// rowid upper bound of date filters for good (see `last_id_for`).
fn allocate_id(tx: &Transaction<'_>, sent_at_ms: u64) -> Result<i64, SearchError> {
    let first = slot_start(sent_at_ms);
    let last = first + (SLOT_MS as i64 - 1);
    let id: i64 = tx
        .prepare_cached(
            "SELECT coalesce(max(id) + 1, ?1) FROM messages WHERE id BETWEEN ?1 AND ?2",
        )?
        .query_row([first, last], |row| row.get(0))?;
    if id <= last {
        return Ok(id);
    }
    tx.execute(
        "INSERT INTO search_meta (name, value) VALUES ('slot_spilled', 1) ON CONFLICT DO NOTHING",
        [],
    )?;
    let id: i64 = tx
        .prepare_cached("SELECT max(id) + 1 FROM messages WHERE id >= ?1")?
        .query_row([first], |row| row.get(0))?;
    Ok(id)
}

/// The first row id of the slot holding `ms` (callers keep `ms <= MAX_SENT_AT_MS`).
fn slot_start(ms: u64) -> i64 {
    i64::try_from(ms & !(SLOT_MS - 1)).unwrap_or(i64::MAX - SLOT_MS as i64)
}

fn write_checkpoint(
    tx: &Transaction<'_>,
    conversation: Uuid,
    checkpoint: &Checkpoint,
) -> Result<(), SearchError> {
    let json = serde_json::to_string(checkpoint).map_err(|_| SearchError::Corrupt("checkpoint"))?;
    tx.execute(
        "INSERT INTO backfill (conversation, checkpoint) VALUES (?1, ?2)
         ON CONFLICT (conversation) DO UPDATE SET checkpoint = excluded.checkpoint",
        params![conversation.as_bytes().as_slice(), json],
    )?;
    Ok(())
}

fn parse_checkpoint(json: &str) -> Result<Checkpoint, SearchError> {
    let stored: Checkpoint =
        serde_json::from_str(json).map_err(|_| SearchError::Corrupt("backfill checkpoint"))?;
    // Normalised again on the way in: a hand-edited or older row cannot break the planner.
    Ok(Checkpoint::from_ranges(stored.ranges().to_vec()))
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

fn to_i64(field: &'static str, value: u64) -> Result<i64, SearchError> {
    i64::try_from(value).map_err(|_| SearchError::OutOfRange { field, value })
}

fn from_i64(value: i64) -> Result<u64, SearchError> {
    u64::try_from(value).map_err(|_| SearchError::Corrupt("negative seq or timestamp"))
}
