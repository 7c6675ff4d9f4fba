//! Message row ids: time-ordered, so that FTS5's native rowid order is newest first.

use rusqlite::Transaction;

use crate::SearchError;

/// Row ids are time-ordered: a message's id is its `sent_at_ms` rounded down to a slot of
/// [`SLOT_MS`] plus a counter within the slot. FTS5 then walks its matches newest first for
/// free (`ORDER BY rowid DESC` is its native order) and a date range is a rowid range it seeks
/// to. Coarser slots would shrink FTS5's rowid deltas further but crowd more messages into a
/// slot; 1,024 ms keeps the deltas at ~3 bytes for chat-paced messages.
pub(crate) const SLOT_MS: u64 = 1024;
/// The latest storable timestamp (ids stay below `i64::MAX`).
pub(crate) const MAX_SENT_AT_MS: u64 = (i64::MAX as u64 & !(SLOT_MS - 1)) - SLOT_MS;

/// The next free id in the message's time slot. A full slot (1,024 messages within about a
/// second) spills to the next free id after it and records that it did, which turns off the
/// rowid upper bound of date filters for good (see `last_id_for`).
pub(crate) fn allocate_id(tx: &Transaction<'_>, sent_at_ms: u64) -> Result<i64, SearchError> {
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
pub(crate) fn slot_start(ms: u64) -> i64 {
    i64::try_from(ms & !(SLOT_MS - 1)).unwrap_or(i64::MAX - SLOT_MS as i64)
}
