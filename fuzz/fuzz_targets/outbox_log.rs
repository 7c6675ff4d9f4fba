//! The SDK outbox's log replay (`tern_outbox_log::parse`) on arbitrary file contents.
//!
//! Input layout: byte 0 picks whether the magic is prepended (so most inputs reach the record
//! parser), the rest is the file.
//!
//! Properties: nothing panics; the valid prefix is within the input; every record in it has the
//! right checksum and decodes; replaying just the valid prefix gives the same result (what is
//! dropped is only the tail); the compacted log written from the entries replays to the same
//! entries with nothing dropped; entry ids are unique.
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use tern_outbox_log::{MAGIC, RECORD_HEADER, checksum, decode_body, encode_log, parse};

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    let file: Vec<u8> = if mode & 1 == 0 {
        [&MAGIC[..], rest].concat()
    } else {
        rest.to_vec()
    };
    let Ok(parsed) = parse(&file) else {
        assert!(!file.starts_with(MAGIC) && !MAGIC.starts_with(&file));
        return;
    };
    assert!(
        parsed.valid_len <= file.len(),
        "valid prefix beyond the input"
    );

    // Walk the valid prefix independently: every record checksums and decodes.
    let mut at = MAGIC.len().min(file.len());
    let mut records = 0;
    while at < parsed.valid_len {
        let header = &file[at..at + RECORD_HEADER];
        let len_bytes: [u8; 4] = header[..4].try_into().expect("4 bytes");
        let len = u32::from_le_bytes(len_bytes) as usize;
        let body = &file[at + RECORD_HEADER..at + RECORD_HEADER + len];
        assert_eq!(
            header[4..],
            checksum(&len_bytes, body),
            "record without its checksum"
        );
        assert!(decode_body(body).is_some(), "record that does not decode");
        at += RECORD_HEADER + len;
        records += 1;
    }
    assert_eq!(at, parsed.valid_len.max(MAGIC.len().min(file.len())));
    assert_eq!(records, parsed.records);

    // Only the tail is dropped: the valid prefix alone replays the same.
    let prefix = parse(&file[..parsed.valid_len]).expect("the valid prefix keeps the magic");
    assert_eq!(prefix, parsed);

    let ids: HashSet<u128> = parsed.entries.iter().map(|e| e.client_msg_id).collect();
    assert_eq!(ids.len(), parsed.entries.len(), "duplicate live entries");

    // Compaction: the rewritten log holds the same entries and is valid to its end.
    let compacted = encode_log(&parsed.entries);
    let again = parse(&compacted).expect("own output has the magic");
    assert_eq!(again.entries, parsed.entries);
    assert_eq!(again.valid_len, compacted.len());
});
