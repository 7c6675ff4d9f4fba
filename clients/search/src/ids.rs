//! Message row ids: time-ordered, so that FTS5's native rowid order is newest first.
//!
//! A message's id is its slot (`sent_at_ms` divided by [`SLOT_MS`]) times [`PER_SLOT`], plus a
//! counter within the slot. FTS5 then walks its matches newest first for free (`ORDER BY rowid
//! DESC` is its native order) and a date range is a rowid range it seeks to. The slot size is
//! a trade: FTS5 stores each posting's rowid as a varint delta from the previous one, so dense
//! ids keep the index small (a minute-wide slot of 256 ids puts a word's occurrences a few
//! hundred messages apart 2 bytes apart, where millisecond ids took 4), while a wider slot or
//! fewer ids per slot orders less precisely and fills up sooner.

use rusqlite::{Connection, OptionalExtension, Transaction};

use crate::SearchError;

/// Milliseconds per slot (about a minute).
const SLOT_MS: u64 = 1 << 16;
/// Ids per slot. A full slot (256 messages in one minute) spills, see [`allocate_id`].
const PER_SLOT: i64 = 1 << 8;
/// The latest storable timestamp (SQLite integers are signed).
pub(crate) const MAX_SENT_AT_MS: u64 = i64::MAX as u64;

/// The first id of the slot holding `ms` (`ms <= MAX_SENT_AT_MS`, so this cannot overflow).
pub(crate) fn slot_start(ms: u64) -> i64 {
    i64::try_from(ms / SLOT_MS).unwrap_or(0) * PER_SLOT
}

/// The next free id in the message's time slot. A full slot spills to the next free id after
/// it and records how far past its slot an id went, which widens the rowid upper bound of
/// date filters by that much (see [`last_id_for`]).
pub(crate) fn allocate_id(tx: &Transaction<'_>, sent_at_ms: u64) -> Result<i64, SearchError> {
    let first = slot_start(sent_at_ms);
    let last = first + (PER_SLOT - 1);
    let id: i64 = tx
        .prepare_cached(
            "SELECT coalesce(max(id) + 1, ?1) FROM messages WHERE id BETWEEN ?1 AND ?2",
        )?
        .query_row([first, last], |row| row.get(0))?;
    if id <= last {
        return Ok(id);
    }
    // The first free id after the slot: later slots hold a few ids each, so this stays close
    // (the largest id + 1 would put an old message after every newer one).
    let id: i64 = tx
        .prepare_cached(
            "SELECT m.id + 1 FROM messages AS m
             WHERE m.id >= ?1 AND NOT EXISTS (SELECT 1 FROM messages WHERE id = m.id + 1)
             ORDER BY m.id LIMIT 1",
        )?
        .query_row([last], |row| row.get(0))?;
    tx.execute(
        "INSERT INTO search_meta (name, value) VALUES ('max_spill', ?1)
         ON CONFLICT (name) DO UPDATE SET value = max(value, excluded.value)",
        [id - last],
    )?;
    Ok(id)
}

/// The highest id a message sent at or before `until_ms` can have: the end of its slot, plus
/// the farthest any id ever spilled past its own slot.
pub(crate) fn last_id_for(conn: &Connection, until_ms: u64) -> Result<i64, SearchError> {
    let spill: i64 = conn
        .query_row(
            "SELECT value FROM search_meta WHERE name = 'max_spill'",
            [],
            |row| row.get(0),
        )
        .optional()?
        .unwrap_or(0);
    Ok(slot_start(until_ms)
        .saturating_add(PER_SLOT - 1)
        .saturating_add(spill))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_time_and_slots_do_not_overlap() {
        assert_eq!(slot_start(0), 0);
        assert_eq!(slot_start(SLOT_MS - 1), 0);
        assert_eq!(slot_start(SLOT_MS), PER_SLOT);
        assert!(slot_start(1_700_000_000_000) < slot_start(1_700_000_065_536));
        assert_eq!(
            slot_start(MAX_SENT_AT_MS),
            (i64::MAX / SLOT_MS as i64) * PER_SLOT
        );
    }

    fn take(tx: &Transaction<'_>, ms: u64) -> i64 {
        let id = allocate_id(tx, ms).expect("allocate");
        tx.execute(
            "INSERT INTO messages (id, conversation, seq, sender, sender_name, sent_at_ms, body)
             VALUES (?1, 1, ?1, 1, '', ?2, '')",
            rusqlite::params![id, ms as i64],
        )
        .expect("insert");
        id
    }

    #[test]
    fn a_full_slot_spills_just_past_its_end_and_date_bounds_follow() {
        let mut conn = Connection::open_in_memory().expect("open");
        crate::schema::ensure(&conn).expect("schema");
        let tx = conn.transaction().expect("tx");
        let old = 10 * SLOT_MS;
        let newer = take(&tx, 500 * SLOT_MS);
        let ids: Vec<i64> = (0..PER_SLOT + 3).map(|_| take(&tx, old)).collect();
        let last = slot_start(old) + PER_SLOT - 1;
        assert_eq!(
            ids[..PER_SLOT as usize],
            (slot_start(old)..=last).collect::<Vec<_>>()[..]
        );
        assert_eq!(
            ids[PER_SLOT as usize..],
            [last + 1, last + 2, last + 3],
            "not after {newer}"
        );
        assert_eq!(last_id_for(&tx, old).expect("bound"), last + 3);
        // The next slot's own messages go after the spilled ones.
        assert_eq!(take(&tx, old + SLOT_MS), last + 4);
    }
}
