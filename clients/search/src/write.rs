//! The write side: adding messages (idempotent on (conversation, seq)) and checkpoints.

use std::collections::HashMap;

use rusqlite::{OptionalExtension, Transaction, params};
use uuid::Uuid;

use crate::backfill::Checkpoint;
use crate::ids::{MAX_SENT_AT_MS, allocate_id};
use crate::query;
use crate::text::{segment_for_index, truncate_bytes};
use crate::{IndexedMessage, MAX_ADD_BATCH, MAX_INDEXED_TEXT_BYTES, SearchError};

pub(crate) fn check_batch(len: usize) -> Result<(), SearchError> {
    if len > MAX_ADD_BATCH {
        return Err(SearchError::BatchTooLarge {
            len,
            max: MAX_ADD_BATCH,
        });
    }
    Ok(())
}

pub(crate) fn insert_all(
    tx: &Transaction<'_>,
    messages: &[IndexedMessage],
) -> Result<(), SearchError> {
    let mut find = tx.prepare_cached(
        "SELECT id, sender, sender_name, sent_at_ms, body FROM messages
         WHERE conversation = ?1 AND seq = ?2",
    )?;
    let mut delete = tx.prepare_cached("DELETE FROM messages WHERE id = ?1")?;
    let mut fts_delete = tx.prepare_cached("DELETE FROM messages_fts WHERE rowid = ?1")?;
    let mut keys = Keys::default();
    for m in messages {
        let seq = to_i64("seq", m.seq)?;
        if m.sent_at_ms > MAX_SENT_AT_MS {
            return Err(SearchError::OutOfRange {
                field: "sent_at_ms",
                value: m.sent_at_ms,
            });
        }
        let body = truncate_bytes(&m.text, MAX_INDEXED_TEXT_BYTES);
        let conversation = keys.get(tx, Table::Conversations, m.conversation)?;
        let sender = keys.get(tx, Table::Senders, m.sender)?;
        let existing = find
            .query_row(params![conversation, seq], |row| {
                let same = row.get::<_, i64>(1)? == sender
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
        insert_one(tx, m, body, conversation, sender)?;
    }
    Ok(())
}

/// The two tables that give UUIDs small integer keys: a message row then stores a byte or
/// two for each instead of a 16-byte blob, and so does the (conversation, seq) index.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Table {
    Conversations,
    Senders,
}

impl Table {
    fn name(self) -> &'static str {
        match self {
            Table::Conversations => "conversations",
            Table::Senders => "senders",
        }
    }
}

/// The integer key of a UUID, if it has one.
pub(crate) fn key_of(
    conn: &rusqlite::Connection,
    table: Table,
    uuid: Uuid,
) -> Result<Option<i64>, SearchError> {
    let sql = format!("SELECT id FROM {} WHERE uuid = ?1", table.name());
    Ok(conn
        .prepare_cached(&sql)?
        .query_row([uuid.as_bytes().as_slice()], |row| row.get(0))
        .optional()?)
}

/// Keys looked up or created during one batch, remembered for its other messages.
#[derive(Default)]
struct Keys {
    known: HashMap<(Table, Uuid), i64>,
}

impl Keys {
    fn get(&mut self, tx: &Transaction<'_>, table: Table, uuid: Uuid) -> Result<i64, SearchError> {
        if let Some(id) = self.known.get(&(table, uuid)) {
            return Ok(*id);
        }
        let id = match key_of(tx, table, uuid)? {
            Some(id) => id,
            None => {
                let sql = format!("INSERT INTO {} (uuid) VALUES (?1)", table.name());
                tx.prepare_cached(&sql)?
                    .execute([uuid.as_bytes().as_slice()])?;
                tx.last_insert_rowid()
            }
        };
        self.known.insert((table, uuid), id);
        Ok(id)
    }
}

fn insert_one(
    tx: &Transaction<'_>,
    m: &IndexedMessage,
    body: &str,
    conversation: i64,
    sender: i64,
) -> Result<(), SearchError> {
    let id = allocate_id(tx, m.sent_at_ms)?;
    tx.prepare_cached(
        "INSERT INTO messages (id, conversation, seq, sender, sender_name, sent_at_ms, body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        id,
        conversation,
        to_i64("seq", m.seq)?,
        sender,
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

pub(crate) fn write_checkpoint(
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

pub(crate) fn parse_checkpoint(json: &str) -> Result<Checkpoint, SearchError> {
    let stored: Checkpoint =
        serde_json::from_str(json).map_err(|_| SearchError::Corrupt("backfill checkpoint"))?;
    // Normalised again on the way in: a hand-edited or older row cannot break the planner.
    Ok(Checkpoint::from_ranges(stored.ranges().to_vec()))
}

pub(crate) fn to_i64(field: &'static str, value: u64) -> Result<i64, SearchError> {
    i64::try_from(value).map_err(|_| SearchError::OutOfRange { field, value })
}
