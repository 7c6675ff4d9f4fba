//! The database: keying, the schema and its version.

use rusqlite::{Connection, ErrorCode, OptionalExtension};

use crate::SearchError;

/// Bumped when the schema changes; a file with a newer version is refused, an older one
/// would be migrated here.
pub(crate) const SCHEMA_VERSION: i64 = 1;

/// `messages` keeps the original text (for snippets) and the filter columns; `messages_fts`
/// is contentless (it stores only the inverted index of the segmented text, not a second copy)
/// with `contentless_delete` so a replaced or removed message leaves the index. Its `scope`
/// column holds a conversation token and a sender token per message, so those filters are
/// intersected inside FTS5 (see `query::conversation_token`).
/// `prefix = '3'` keeps a prefix index for 3-character prefixes (the shortest the query side
/// prefix-matches), so as-you-type queries read one doclist instead of merging thousands of
/// terms' doclists. `backfill` holds the planner's checkpoints, in the
/// same file so that a page and its checkpoint commit together.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS search_meta (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    conversation BLOB NOT NULL,
    seq INTEGER NOT NULL,
    sender BLOB NOT NULL,
    sender_name TEXT NOT NULL,
    sent_at_ms INTEGER NOT NULL,
    body TEXT NOT NULL,
    UNIQUE (conversation, seq)
);
CREATE VIRTUAL TABLE IF NOT EXISTS messages_fts USING fts5(
    body,
    scope,
    content = '',
    contentless_delete = 1,
    tokenize = 'unicode61 remove_diacritics 2',
    prefix = '3'
);
CREATE TABLE IF NOT EXISTS backfill (
    conversation BLOB PRIMARY KEY,
    checkpoint TEXT NOT NULL
) WITHOUT ROWID;
";

/// Keys a freshly opened connection (must be the first statement on it) and proves the key
/// right by reading the schema: SQLCipher only notices a wrong key on the first page read.
/// The key is used raw (`x'..'`, no passphrase derivation): it is already 32 random bytes.
pub(crate) fn apply_key(conn: &Connection, key: &[u8; 32]) -> Result<(), SearchError> {
    // SQLCipher logs a failed page HMAC (a wrong key) to stderr; the caller gets `WrongKey`
    // instead, and a library must not write to a terminal UI's stderr.
    conn.execute_batch("PRAGMA cipher_log_level = NONE;")?;
    conn.execute_batch(&format!("PRAGMA key = \"x'{}'\";", hex::encode(key)))?;
    // Plain SQLite ignores an unknown pragma: without this check a build that lost SQLCipher
    // would silently write plaintext.
    let has_cipher: Option<String> = conn
        .query_row("PRAGMA cipher_version", [], |row| row.get(0))
        .optional()?;
    if has_cipher.is_none() {
        return Err(SearchError::EncryptionUnavailable);
    }
    match conn.query_row("SELECT count(*) FROM sqlite_master", [], |row| {
        row.get::<_, i64>(0)
    }) {
        Ok(_) => Ok(()),
        Err(e) if e.sqlite_error_code() == Some(ErrorCode::NotADatabase) => {
            Err(SearchError::WrongKey)
        }
        Err(e) => Err(e.into()),
    }
}

/// Creates the tables on a new file, checks the version of an existing one.
pub(crate) fn ensure(conn: &Connection) -> Result<(), SearchError> {
    conn.execute_batch(SCHEMA)
        .map_err(not_a_database_is_wrong_key)?;
    let found: Option<i64> = conn
        .query_row(
            "SELECT value FROM search_meta WHERE name = 'schema_version'",
            [],
            |row| row.get(0),
        )
        .optional()?;
    match found {
        None => {
            conn.execute(
                "INSERT INTO search_meta (name, value) VALUES ('schema_version', ?1)",
                [SCHEMA_VERSION],
            )?;
            Ok(())
        }
        Some(v) if v <= SCHEMA_VERSION => Ok(()),
        Some(v) => Err(SearchError::UnsupportedSchema {
            found: v,
            supported: SCHEMA_VERSION,
        }),
    }
}

fn not_a_database_is_wrong_key(e: rusqlite::Error) -> SearchError {
    if e.sqlite_error_code() == Some(ErrorCode::NotADatabase) {
        SearchError::WrongKey
    } else {
        e.into()
    }
}
