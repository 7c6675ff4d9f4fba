//! The index's public data types. Serde on all of them: the wasm facade passes them as JSON.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One decrypted message as the index keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexedMessage {
    pub conversation: Uuid,
    pub seq: u64,
    pub sender: Uuid,
    /// The sender's username, kept for display in hits.
    pub sender_name: String,
    /// The server's timestamp of the message (ms since the Unix epoch).
    pub sent_at_ms: u64,
    /// The decrypted text to search (a file message's caption and file name too).
    pub text: String,
}

/// One search. Every filter is optional and they combine with the text (AND).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchQuery {
    /// The user's words, as typed. Never passed to SQLite as syntax: it is tokenised and every
    /// word becomes a quoted phrase; the last word is prefix-matched (from 3 characters on)
    /// unless the text ends with whitespace. Words without letters or digits (emoji,
    /// punctuation) are ignored; a query with no word left finds nothing.
    pub text: String,
    #[serde(default)]
    pub conversation: Option<Uuid>,
    #[serde(default)]
    pub sender: Option<Uuid>,
    /// Inclusive lower bound on `sent_at_ms`.
    #[serde(default)]
    pub since_ms: Option<u64>,
    /// Inclusive upper bound on `sent_at_ms`.
    #[serde(default)]
    pub until_ms: Option<u64>,
    /// 1..=[`crate::MAX_SEARCH_LIMIT`].
    pub limit: u32,
}

impl SearchQuery {
    /// A text-only query over everything, with `limit` hits at most.
    pub fn text(text: impl Into<String>, limit: u32) -> Self {
        SearchQuery {
            text: text.into(),
            conversation: None,
            sender: None,
            since_ms: None,
            until_ms: None,
            limit,
        }
    }
}

/// One result, best first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchHit {
    pub conversation: Uuid,
    pub seq: u64,
    pub sender: Uuid,
    pub sender_name: String,
    pub sent_at_ms: u64,
    /// FTS5's bm25 rank: lower (more negative) is a better match. Hits are sorted by it, then
    /// newest first; ranked among the newest [`crate::MAX_RANKED_MATCHES`] matches.
    pub rank: f64,
    /// A window of the original text around the first match, split into parts; the matched
    /// words have `highlight: true`. Concatenating the parts' text gives the window.
    pub snippet: Vec<SnippetPart>,
}

/// A piece of a snippet: plain text, never markup, so a UI renders it as text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnippetPart {
    pub text: String,
    pub highlight: bool,
}
