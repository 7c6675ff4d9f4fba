use thiserror::Error;

/// Why an index operation failed. Messages never contain message text, query text or keys.
#[derive(Debug, Error)]
pub enum SearchError {
    /// The file exists but does not decrypt with this key (or is not a search index at all).
    #[error("the search index cannot be opened with this key (wrong key, or not an index file)")]
    WrongKey,
    /// The SQLite library linked in has no SQLCipher: a key was given but nothing would be
    /// encrypted. Refused rather than writing plaintext.
    #[error(
        "this SQLite build has no encryption (SQLCipher); refusing to store messages unencrypted"
    )]
    EncryptionUnavailable,
    /// The file was written by a newer version of this crate.
    #[error("search index schema version {found} is newer than this build supports ({supported})")]
    UnsupportedSchema { found: i64, supported: i64 },
    #[error("query text has {chars} characters, at most {max} are allowed")]
    QueryTooLong { chars: usize, max: usize },
    #[error("query has {words} words, at most {max} are allowed")]
    TooManyWords { words: usize, max: usize },
    #[error("result limit {limit} is outside 1..={max}")]
    InvalidLimit { limit: u32, max: u32 },
    #[error("date range is empty: since {since_ms} ms is after until {until_ms} ms")]
    InvalidDateRange { since_ms: u64, until_ms: u64 },
    #[error("{len} messages in one batch, at most {max} are allowed")]
    BatchTooLarge { len: usize, max: usize },
    /// SQLite stores signed 64-bit integers; seqs and timestamps above `i64::MAX` cannot be kept.
    #[error("{field} {value} is above the largest storable value (2^63 - 1)")]
    OutOfRange { field: &'static str, value: u64 },
    /// A row read back has a shape this crate never writes (a damaged or foreign file).
    #[error("corrupt search index row: {0}")]
    Corrupt(&'static str),
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[cfg(not(target_arch = "wasm32"))]
    #[error("search index file: {0}")]
    Io(#[from] std::io::Error),
}
