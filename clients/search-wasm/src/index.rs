//! `SearchIndex`: one account's index as the worker uses it, with the backfill planner beside
//! it (tern-search's sans-IO `Backfill`; the page fetches and decrypts, the planner decides).

use std::collections::HashSet;

use serde::Deserialize;
use tern_search::{Backfill, BackfillConfig, FetchedPage, IndexedMessage, SearchQuery};
use uuid::Uuid;
use wasm_bindgen::prelude::*;

use crate::js::{Fail, JsResult, err, fail, from_json, to_json};

/// The most messages one `add` call takes (the page sends batches of 500).
pub const MAX_ADD_BATCH: usize = tern_search::MAX_ADD_BATCH;
/// The most conversations one `backfillNext` call may list (a client's conversation list).
pub const MAX_CONVERSATIONS: usize = 10_000;
/// Backfill pages: one at a time (the page's driver is sequential) of this many messages (a
/// history page the server cuts to its frame anyway; small enough to stay in the background).
const BACKFILL: BackfillConfig = BackfillConfig {
    page_limit: 100,
    max_in_flight: 1,
};

/// A failure the worker tells apart: the stored index does not open with this key (or is
/// damaged), so the worker deletes it and starts a new one.
pub const UNREADABLE: &str = "IndexUnreadableError";

/// One conversation as `backfillNext` takes it: its id and the newest seq the server reported.
#[derive(Debug, Deserialize)]
struct Known {
    conversation: Uuid,
    newest_seq: u64,
}

#[wasm_bindgen]
pub struct SearchIndex {
    inner: tern_search::SearchIndex,
    planner: Backfill,
    /// Conversations the planner has: their stored checkpoints are read once.
    planned: HashSet<Uuid>,
}

impl SearchIndex {
    fn new(inner: tern_search::SearchIndex) -> JsResult<SearchIndex> {
        Ok(SearchIndex {
            inner,
            planner: Backfill::new(BACKFILL).map_err(err)?,
            planned: HashSet::new(),
        })
    }
}

#[wasm_bindgen]
impl SearchIndex {
    /// Opens (or creates) the database `name` on SQLite's default VFS (in the worker: the OPFS
    /// pool `installOpfs` installed), encrypted with the 32-byte `key`.
    pub fn open(name: &str, key: &[u8]) -> JsResult<SearchIndex> {
        let key: &[u8; 32] = key
            .try_into()
            .map_err(|_| fail(format!("the index key must be 32 bytes, got {}", key.len())))?;
        let conn = rusqlite::Connection::open(name).map_err(err)?;
        let inner = tern_search::SearchIndex::from_connection(conn, Some(key))
            .map_err(|e| Fail::named(UNREADABLE, e.to_string()))?;
        Self::new(inner)
    }

    /// An index in memory (no OPFS here): gone when the worker ends.
    #[wasm_bindgen(js_name = openInMemory)]
    pub fn open_in_memory() -> JsResult<SearchIndex> {
        Self::new(tern_search::SearchIndex::open_in_memory().map_err(err)?)
    }

    /// Adds (or replaces, by conversation and seq) a JSON array of `IndexedMessage`s in one
    /// transaction.
    pub fn add(&mut self, messages_json: &str) -> JsResult<()> {
        let messages: Vec<IndexedMessage> = from_json(messages_json, "messages")?;
        if messages.len() > MAX_ADD_BATCH {
            return Err(fail(format!(
                "at most {MAX_ADD_BATCH} messages per call, got {}",
                messages.len()
            )));
        }
        self.inner.add(&messages).map_err(err)
    }

    /// A `SearchQuery` (JSON) → the ranked hits (JSON array of `SearchHit`).
    pub fn search(&self, query_json: &str) -> JsResult<String> {
        let query: SearchQuery = from_json(query_json, "query")?;
        to_json(&self.inner.search(&query).map_err(err)?)
    }

    /// Drops every message and the checkpoint of `conversation` (the person left it); returns
    /// how many messages there were.
    #[wasm_bindgen(js_name = removeConversation)]
    pub fn remove_conversation(&mut self, conversation: &str) -> JsResult<f64> {
        let id = uuid(conversation)?;
        self.planner.remove_conversation(id);
        self.planned.remove(&id);
        Ok(self.inner.remove_conversation(id).map_err(err)? as f64)
    }

    /// How many messages the index holds.
    pub fn count(&self) -> JsResult<f64> {
        Ok(self.inner.message_count().map_err(err)? as f64)
    }

    /// The conversations (JSON `[{conversation, newest_seq}]`, the list the page knows) →
    /// the next history page to fetch (JSON `PageRequest`), or `undefined` when every
    /// conversation is indexed down to its first message (or its page is in flight).
    #[wasm_bindgen(js_name = backfillNext)]
    pub fn backfill_next(&mut self, conversations_json: &str) -> JsResult<Option<String>> {
        let known: Vec<Known> = from_json(conversations_json, "conversations")?;
        if known.len() > MAX_CONVERSATIONS {
            return Err(fail(format!(
                "at most {MAX_CONVERSATIONS} conversations, got {}",
                known.len()
            )));
        }
        for k in known {
            let stored = if self.planned.insert(k.conversation) {
                self.inner
                    .backfill_checkpoint(k.conversation)
                    .map_err(err)?
            } else {
                None
            };
            self.planner
                .set_conversation(k.conversation, k.newest_seq, stored);
        }
        match self.planner.poll().first() {
            Some(request) => Ok(Some(to_json(request)?)),
            None => Ok(None),
        }
    }

    /// The page `backfillNext` asked for (JSON `FetchedPage`: what the server returned, the
    /// readable messages decrypted): its messages and the conversation's new checkpoint are
    /// stored in one transaction.
    #[wasm_bindgen(js_name = backfillPage)]
    pub fn backfill_page(&mut self, page_json: &str) -> JsResult<()> {
        let page: FetchedPage = from_json(page_json, "page")?;
        if page.messages.len() > MAX_ADD_BATCH {
            return Err(fail(format!(
                "at most {MAX_ADD_BATCH} messages per page, got {}",
                page.messages.len()
            )));
        }
        match self.planner.page_fetched(page).map_err(err)? {
            Some(store) => self.inner.store_page(&store).map_err(err),
            // The conversation was removed meanwhile.
            None => Ok(()),
        }
    }

    /// The page could not be fetched: asked for again by a later `backfillNext`.
    #[wasm_bindgen(js_name = backfillFailed)]
    pub fn backfill_failed(&mut self, conversation: &str, before_seq: f64) -> JsResult<()> {
        let id = uuid(conversation)?;
        if !(0.0..=9_007_199_254_740_991.0).contains(&before_seq) || before_seq.fract() != 0.0 {
            return Err(fail(format!("before_seq must be a seq, got {before_seq}")));
        }
        self.planner.page_failed(id, before_seq as u64);
        Ok(())
    }
}

fn uuid(s: &str) -> JsResult<Uuid> {
    s.parse()
        .map_err(|_| fail(format!("invalid conversation id: {s:?}")))
}
