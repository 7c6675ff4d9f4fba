//! The byte format of the SDK's crash-safe outbox log, as pure functions (no I/O).
//!
//! The SDK's `FileStore` does the file handling (appends, fsync, compaction); everything that
//! turns entries into bytes and bytes back into entries lives here, dependency-light, so the
//! parser can be fuzzed on its own.
//!
//! An append-only log. The file starts with the 8-byte magic `TERNOBX1`, then records:
//!
//! ```text
//! len: u32 LE (body length) | check: 8 bytes = SHA-256(len || body)[..8] | body
//! body = 0x01 client_msg_id u128 LE | conversation u128 LE | created_ms u64 LE
//!             | content_type_len u16 LE | content_type | payload_len u32 LE | payload   (add)
//!      | 0x02 client_msg_id u128 LE                                                     (remove)
//! ```
//!
//! Replay stops at the first record that is torn (runs past the end), fails its checksum or does
//! not decode, and drops it and everything after it: only the tail of the log can be torn.

use std::collections::HashSet;

use sha2::Digest as _;
use tern_wire::ids::ConversationId;

/// First bytes of every outbox log.
pub const MAGIC: &[u8; 8] = b"TERNOBX1";
pub const KIND_ADD: u8 = 1;
pub const KIND_REMOVE: u8 = 2;
/// Record header: length and checksum.
pub const RECORD_HEADER: usize = 4 + 8;
/// Fixed part of an add body: kind, id, conversation, created, content-type length, payload
/// length.
pub const ADD_FIXED: usize = 1 + 16 + 16 + 8 + 2 + 4;
/// Larger records can only be corruption (payloads are far below this).
pub const MAX_RECORD: usize = 256 * 1024 * 1024;

/// One message waiting to be acknowledged by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingSend {
    pub client_msg_id: u128,
    pub conversation: ConversationId,
    pub content_type: String,
    pub payload: Vec<u8>,
    /// Unix milliseconds, when composed.
    pub created_ms: u64,
}

impl PendingSend {
    /// What the entry counts against the outbox's byte limit.
    pub fn size(&self) -> usize {
        self.payload.len() + self.content_type.len()
    }
}

/// One decoded record body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Add(PendingSend),
    Remove(u128),
}

/// The file does not start with [`MAGIC`] (nor with a torn prefix of it): not an outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotAnOutbox;

/// What replaying a log found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedLog {
    /// Live entries (adds minus removes) in append order.
    pub entries: Vec<PendingSend>,
    /// Length of the valid prefix of the input, magic included (never more than the input).
    pub valid_len: usize,
    /// Records in the valid prefix.
    pub records: usize,
}

/// The first 8 bytes of SHA-256 over the length header and the body.
pub fn checksum(len: &[u8; 4], body: &[u8]) -> [u8; 8] {
    let mut h = sha2::Sha256::new();
    h.update(len);
    h.update(body);
    let digest = h.finalize();
    let mut out = [0u8; 8];
    out.copy_from_slice(&digest[..8]);
    out
}

/// Frames one body as a record (length, checksum, body).
pub fn encode_record(body: &[u8]) -> Vec<u8> {
    let len = (body.len() as u32).to_le_bytes();
    let mut out = Vec::with_capacity(RECORD_HEADER + body.len());
    out.extend_from_slice(&len);
    out.extend_from_slice(&checksum(&len, body));
    out.extend_from_slice(body);
    out
}

/// The body of an add record. The SDK refuses content types above `u16::MAX` bytes before
/// they get here.
pub fn encode_add(e: &PendingSend) -> Vec<u8> {
    let ct = e.content_type.as_bytes();
    let ct = &ct[..ct.len().min(u16::MAX as usize)];
    let mut b = Vec::with_capacity(ADD_FIXED + ct.len() + e.payload.len());
    b.push(KIND_ADD);
    b.extend_from_slice(&e.client_msg_id.to_le_bytes());
    b.extend_from_slice(&e.conversation.as_u128().to_le_bytes());
    b.extend_from_slice(&e.created_ms.to_le_bytes());
    b.extend_from_slice(&(ct.len() as u16).to_le_bytes());
    b.extend_from_slice(ct);
    b.extend_from_slice(&(e.payload.len() as u32).to_le_bytes());
    b.extend_from_slice(&e.payload);
    b
}

/// The body of a remove record.
pub fn encode_remove(client_msg_id: u128) -> Vec<u8> {
    let mut body = Vec::with_capacity(1 + 16);
    body.push(KIND_REMOVE);
    body.extend_from_slice(&client_msg_id.to_le_bytes());
    body
}

/// A whole log holding exactly `entries` (what compaction writes).
pub fn encode_log(entries: &[PendingSend]) -> Vec<u8> {
    let mut data = MAGIC.to_vec();
    for e in entries {
        data.extend_from_slice(&encode_record(&encode_add(e)));
    }
    data
}

/// A tiny bounds-checked reader: every accessor fails instead of panicking.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
}

/// Decodes one record body; `None` for anything that is not exactly what we write.
pub fn decode_body(body: &[u8]) -> Option<Record> {
    let mut c = Cursor(body);
    let kind = c.array::<1>()?[0];
    let record = match kind {
        KIND_ADD => {
            let client_msg_id = u128::from_le_bytes(c.array()?);
            let conversation = ConversationId(u128::from_le_bytes(c.array()?));
            let created_ms = u64::from_le_bytes(c.array()?);
            let ct_len = u16::from_le_bytes(c.array()?) as usize;
            let content_type = String::from_utf8(c.take(ct_len)?.to_vec()).ok()?;
            let payload_len = u32::from_le_bytes(c.array()?) as usize;
            let payload = c.take(payload_len)?.to_vec();
            Record::Add(PendingSend {
                client_msg_id,
                conversation,
                content_type,
                payload,
                created_ms,
            })
        }
        KIND_REMOVE => Record::Remove(u128::from_le_bytes(c.array()?)),
        _ => return None,
    };
    // Trailing bytes mean the record is not what we wrote.
    c.0.is_empty().then_some(record)
}

/// Replays a whole log file's bytes. A missing file is `data = []`. A file shorter than the
/// magic that is a prefix of it was torn while being created: an empty outbox.
pub fn parse(data: &[u8]) -> Result<ParsedLog, NotAnOutbox> {
    if data.len() < MAGIC.len() {
        return if MAGIC.starts_with(data) {
            Ok(ParsedLog {
                entries: Vec::new(),
                valid_len: data.len(),
                records: 0,
            })
        } else {
            Err(NotAnOutbox)
        };
    }
    if &data[..MAGIC.len()] != MAGIC {
        return Err(NotAnOutbox);
    }
    Ok(parse_records(&data[MAGIC.len()..]))
}

/// Replays the records after the magic. `valid_len` counts the magic.
fn parse_records(mut data: &[u8]) -> ParsedLog {
    let mut valid = MAGIC.len();
    let mut records = 0;
    let mut entries: Vec<PendingSend> = Vec::new();
    let mut ids: HashSet<u128> = HashSet::new();
    // Ends at the clean end, or at a torn header.
    while let Some((len_bytes, check, rest)) = split_header(data) {
        let len = u32::from_le_bytes(len_bytes) as usize;
        if len > MAX_RECORD {
            break;
        }
        let Some(body) = rest.get(..len) else {
            break; // torn body
        };
        if check != checksum(&len_bytes, body) {
            break;
        }
        let Some(record) = decode_body(body) else {
            break;
        };
        match record {
            Record::Add(e) => {
                if ids.insert(e.client_msg_id) {
                    entries.push(e);
                }
            }
            Record::Remove(id) => {
                if ids.remove(&id) {
                    entries.retain(|e| e.client_msg_id != id);
                }
            }
        }
        data = &rest[len..];
        valid += RECORD_HEADER + len;
        records += 1;
    }
    ParsedLog {
        entries,
        valid_len: valid,
        records,
    }
}

/// The length and checksum of the record at the front of `data`, and what follows them.
fn split_header(data: &[u8]) -> Option<([u8; 4], [u8; 8], &[u8])> {
    let (len, rest) = data.split_first_chunk::<4>()?;
    let (check, rest) = rest.split_first_chunk::<8>()?;
    Some((*len, *check, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u128, payload: &[u8]) -> PendingSend {
        PendingSend {
            client_msg_id: id,
            conversation: ConversationId(7),
            content_type: "text".into(),
            payload: payload.to_vec(),
            created_ms: 9,
        }
    }

    #[test]
    fn encoded_log_replays_to_the_same_entries() {
        let entries = vec![entry(1, b"one"), entry(2, b""), entry(3, &[0, 255])];
        let data = encode_log(&entries);
        let parsed = parse(&data).expect("magic");
        assert_eq!(parsed.entries, entries);
        assert_eq!(parsed.valid_len, data.len());
        assert_eq!(parsed.records, 3);
    }

    #[test]
    fn removes_and_duplicate_adds_replay_in_order() {
        let mut data = encode_log(&[entry(1, b"a"), entry(2, b"b"), entry(1, b"dup")]);
        data.extend_from_slice(&encode_record(&encode_remove(1)));
        data.extend_from_slice(&encode_record(&encode_remove(99)));
        let parsed = parse(&data).expect("magic");
        assert_eq!(parsed.entries, vec![entry(2, b"b")]);
        assert_eq!(parsed.valid_len, data.len());
    }

    #[test]
    fn magic_prefixes_are_empty_and_foreign_files_refused() {
        for cut in 0..MAGIC.len() {
            assert_eq!(parse(&MAGIC[..cut]).map(|p| p.valid_len), Ok(cut));
        }
        assert_eq!(parse(b"TERX"), Err(NotAnOutbox));
        assert_eq!(parse(b"not an outbox at all"), Err(NotAnOutbox));
    }

    #[test]
    fn a_record_with_trailing_bytes_ends_the_valid_prefix() {
        let mut body = encode_remove(5);
        body.push(0);
        let mut data = encode_log(&[entry(5, b"x")]);
        let good = data.len();
        data.extend_from_slice(&encode_record(&body));
        let parsed = parse(&data).expect("magic");
        assert_eq!(parsed.valid_len, good);
        assert_eq!(parsed.entries, vec![entry(5, b"x")]);
    }
}
