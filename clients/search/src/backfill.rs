//! The backfill planner: which history page to fetch next so that, in the background, every
//! conversation's older messages end up in the index. Sans-IO: conversations and fetched pages
//! in, page requests and pages to store out; the caller does the network and the database.
//!
//! Per conversation the planner keeps a [`Checkpoint`]: the seq ranges known to be indexed. It
//! always fills the highest gap below the conversation's newest seq first (recent history is
//! what people search), one page "before seq X" at a time, until `1..=newest` is covered. The
//! checkpoint is stored with each page ([`crate::SearchIndex::store_page`], one transaction),
//! so after a restart the planner continues where it stopped instead of starting over, and
//! messages that arrived since then (newest grew) are one more gap at the top.
//!
//! Bounded work: at most `max_in_flight` page requests are outstanding at once (round robin
//! over conversations, one each), every page at most `page_limit` messages.

use serde::{Deserialize, Serialize};
use thiserror::Error;
use uuid::Uuid;

use crate::IndexedMessage;

/// The server's history page limit (`MAX_HISTORY_LIMIT`): a larger request is refused there.
pub const MAX_PAGE_LIMIT: u32 = 1000;
/// The most page requests outstanding at once that a configuration may ask for.
pub const MAX_IN_FLIGHT: usize = 16;
/// The most separate ranges a checkpoint keeps. Gaps only appear when newest grows while a
/// gap is being filled, and they merge as the walk goes down; past this the smallest range is
/// forgotten (its messages are fetched again: re-adding is idempotent).
pub const MAX_RANGES: usize = 32;

/// An inclusive range of seqs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqRange {
    pub lo: u64,
    pub hi: u64,
}

/// The seqs of one conversation known to be indexed: sorted, disjoint, non-adjacent ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    ranges: Vec<SeqRange>,
}

impl Checkpoint {
    /// A checkpoint from any ranges (unsorted, overlapping, empty ones are fine).
    pub fn from_ranges(ranges: Vec<SeqRange>) -> Self {
        let mut c = Checkpoint::default();
        for r in ranges {
            c.insert(r);
        }
        c
    }

    pub fn ranges(&self) -> &[SeqRange] {
        &self.ranges
    }

    pub fn covers(&self, seq: u64) -> bool {
        self.ranges.iter().any(|r| r.lo <= seq && seq <= r.hi)
    }

    /// Everything from 1 to `newest` is indexed.
    pub fn is_complete(&self, newest: u64) -> bool {
        self.highest_missing(newest).is_none()
    }

    /// The highest seq in `1..=newest` that is not covered.
    pub fn highest_missing(&self, newest: u64) -> Option<u64> {
        let mut candidate = newest;
        for r in self.ranges.iter().rev() {
            if candidate == 0 {
                return None;
            }
            if r.lo > candidate {
                continue;
            }
            if r.hi < candidate {
                return Some(candidate);
            }
            candidate = r.lo - 1;
        }
        (candidate > 0).then_some(candidate)
    }

    /// Adds a range, merging it with overlapping or adjacent ones.
    pub fn insert(&mut self, range: SeqRange) {
        if range.lo > range.hi {
            return;
        }
        let mut merged = range;
        self.ranges.retain(|r| {
            let touches =
                r.lo <= merged.hi.saturating_add(1) && merged.lo <= r.hi.saturating_add(1);
            if touches {
                merged.lo = merged.lo.min(r.lo);
                merged.hi = merged.hi.max(r.hi);
            }
            !touches
        });
        let at = self.ranges.partition_point(|r| r.hi < merged.lo);
        self.ranges.insert(at, merged);
        if self.ranges.len() > MAX_RANGES {
            let smallest = (0..self.ranges.len())
                .min_by_key(|&i| self.ranges[i].hi - self.ranges[i].lo)
                .unwrap_or(0);
            self.ranges.remove(smallest);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackfillConfig {
    /// Messages per history page, 1..=[`MAX_PAGE_LIMIT`].
    pub page_limit: u32,
    /// Page requests outstanding at once, 1..=[`MAX_IN_FLIGHT`].
    pub max_in_flight: usize,
}

impl Default for BackfillConfig {
    fn default() -> Self {
        BackfillConfig {
            page_limit: 200,
            max_in_flight: 2,
        }
    }
}

/// Fetch the newest `limit` messages of `conversation` with seq < `before_seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRequest {
    pub conversation: Uuid,
    pub before_seq: u64,
    pub limit: u32,
}

/// A history page as the caller fetched and decrypted it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchedPage {
    pub conversation: Uuid,
    /// The request's `before_seq`.
    pub before_seq: u64,
    /// The lowest seq the server returned, decryptable or not (`None`: an empty page). The
    /// walk continues below it even if that message could not be decrypted.
    pub lowest_seq: Option<u64>,
    /// The server's `has_more`: older messages exist below this page.
    pub has_more: bool,
    /// The page's messages that were decrypted (the rest are skipped).
    pub messages: Vec<IndexedMessage>,
}

/// Index these messages and store this checkpoint, together ([`crate::SearchIndex::store_page`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorePage {
    pub conversation: Uuid,
    pub messages: Vec<IndexedMessage>,
    pub checkpoint: Checkpoint,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum BackfillError {
    #[error("page_limit {0} is outside 1..={MAX_PAGE_LIMIT}")]
    InvalidPageLimit(u32),
    #[error("max_in_flight {0} is outside 1..={MAX_IN_FLIGHT}")]
    InvalidInFlight(usize),
    /// A page nobody asked for (or asked for with another `before_seq`).
    #[error("no page before seq {before_seq} was requested for this conversation")]
    UnexpectedPage { before_seq: u64 },
    /// A page whose contents cannot be the answer to its request: a message of another
    /// conversation or not below `before_seq`, a lowest seq above a message, or `has_more`
    /// with nothing in it. The conversation is paused until it is set again.
    #[error("history page before seq {before_seq} is inconsistent: {reason}")]
    BadPage {
        before_seq: u64,
        reason: &'static str,
    },
}

#[derive(Debug)]
struct Conversation {
    id: Uuid,
    newest: u64,
    checkpoint: Checkpoint,
    in_flight: Option<u64>,
    paused: bool,
}

/// The planner. See the module documentation.
#[derive(Debug)]
pub struct Backfill {
    config: BackfillConfig,
    /// In the caller's priority order (most recently active first, say).
    conversations: Vec<Conversation>,
    /// Where the next round-robin pass starts.
    cursor: usize,
}

impl Backfill {
    pub fn new(config: BackfillConfig) -> Result<Self, BackfillError> {
        if config.page_limit == 0 || config.page_limit > MAX_PAGE_LIMIT {
            return Err(BackfillError::InvalidPageLimit(config.page_limit));
        }
        if config.max_in_flight == 0 || config.max_in_flight > MAX_IN_FLIGHT {
            return Err(BackfillError::InvalidInFlight(config.max_in_flight));
        }
        Ok(Backfill {
            config,
            conversations: Vec::new(),
            cursor: 0,
        })
    }

    /// Adds a conversation (with its stored checkpoint after a restart) or updates its newest
    /// seq (which only grows). Un-pauses a paused one.
    pub fn set_conversation(&mut self, id: Uuid, newest_seq: u64, stored: Option<Checkpoint>) {
        match self.conversations.iter_mut().find(|c| c.id == id) {
            Some(c) => {
                c.newest = c.newest.max(newest_seq);
                c.paused = false;
            }
            None => self.conversations.push(Conversation {
                id,
                newest: newest_seq,
                checkpoint: stored.unwrap_or_default(),
                in_flight: None,
                paused: false,
            }),
        }
    }

    /// Forgets a conversation (the user left it); a page still in flight for it is ignored.
    pub fn remove_conversation(&mut self, id: Uuid) {
        self.conversations.retain(|c| c.id != id);
    }

    /// A message the live path indexed: recorded so the backfill does not fetch it again.
    /// Returns the checkpoint to store (with the message, or later; losing it only costs a
    /// refetch), or `None` for an unknown conversation.
    pub fn indexed_live(&mut self, id: Uuid, seq: u64) -> Option<Checkpoint> {
        let c = self.conversations.iter_mut().find(|c| c.id == id)?;
        c.newest = c.newest.max(seq);
        c.checkpoint.insert(SeqRange { lo: seq, hi: seq });
        Some(c.checkpoint.clone())
    }

    /// The next page requests, up to the in-flight budget, one per conversation, taking
    /// conversations in turn. Empty when everything is in flight, paused or complete.
    pub fn poll(&mut self) -> Vec<PageRequest> {
        let n = self.conversations.len();
        let mut budget = self.config.max_in_flight.saturating_sub(self.in_flight());
        let mut out = Vec::new();
        for k in 0..n {
            if budget == 0 {
                break;
            }
            let i = (self.cursor + k) % n;
            let c = &mut self.conversations[i];
            if c.in_flight.is_some() || c.paused {
                continue;
            }
            let Some(missing) = c.checkpoint.highest_missing(c.newest) else {
                continue;
            };
            let before_seq = missing + 1;
            c.in_flight = Some(before_seq);
            out.push(PageRequest {
                conversation: c.id,
                before_seq,
                limit: self.config.page_limit,
            });
            budget -= 1;
            self.cursor = (i + 1) % n;
        }
        out
    }

    /// A page arrived: what to store. `Ok(None)` if its conversation was removed meanwhile.
    pub fn page_fetched(&mut self, page: FetchedPage) -> Result<Option<StorePage>, BackfillError> {
        let Some(c) = self
            .conversations
            .iter_mut()
            .find(|c| c.id == page.conversation)
        else {
            return Ok(None);
        };
        let before_seq = page.before_seq;
        if c.in_flight != Some(before_seq) {
            return Err(BackfillError::UnexpectedPage { before_seq });
        }
        c.in_flight = None;
        let lo = match check_page(&page) {
            Ok(lo) => lo,
            Err(reason) => {
                c.paused = true;
                return Err(BackfillError::BadPage { before_seq, reason });
            }
        };
        // Only what is not indexed yet: the page may reach down into a lower range.
        let messages: Vec<IndexedMessage> = page
            .messages
            .into_iter()
            .filter(|m| !c.checkpoint.covers(m.seq))
            .collect();
        c.checkpoint.insert(SeqRange {
            lo,
            hi: before_seq - 1,
        });
        Ok(Some(StorePage {
            conversation: page.conversation,
            messages,
            checkpoint: c.checkpoint.clone(),
        }))
    }

    /// A fetch failed (network, server error): it is asked for again at a later poll.
    pub fn page_failed(&mut self, id: Uuid, before_seq: u64) {
        if let Some(c) = self.conversations.iter_mut().find(|c| c.id == id)
            && c.in_flight == Some(before_seq)
        {
            c.in_flight = None;
        }
    }

    /// Every known conversation is indexed from seq 1 to its newest.
    pub fn is_complete(&self) -> bool {
        self.conversations
            .iter()
            .all(|c| c.checkpoint.is_complete(c.newest))
    }

    /// The checkpoint the planner holds for a conversation.
    pub fn checkpoint(&self, id: Uuid) -> Option<&Checkpoint> {
        self.conversations
            .iter()
            .find(|c| c.id == id)
            .map(|c| &c.checkpoint)
    }

    fn in_flight(&self) -> usize {
        self.conversations
            .iter()
            .filter(|c| c.in_flight.is_some())
            .count()
    }
}

/// The lowest seq the page proves covered (everything from it to `before_seq - 1` was
/// returned), or why the page cannot be an answer to "before `before_seq`".
fn check_page(page: &FetchedPage) -> Result<u64, &'static str> {
    if page.before_seq < 2 {
        return Err("nothing exists below seq 1");
    }
    if page
        .messages
        .iter()
        .any(|m| m.conversation != page.conversation)
    {
        return Err("a message of another conversation");
    }
    if page
        .messages
        .iter()
        .any(|m| m.seq >= page.before_seq || m.seq == 0)
    {
        return Err("a seq outside 1..before_seq");
    }
    if let Some(lowest) = page.lowest_seq {
        if lowest == 0 || lowest >= page.before_seq {
            return Err("lowest seq outside 1..before_seq");
        }
        if page.messages.iter().any(|m| m.seq < lowest) {
            return Err("a message below the lowest seq");
        }
    }
    match (page.has_more, page.lowest_seq) {
        // The oldest page: everything below before_seq has been seen.
        (false, _) => Ok(1),
        (true, Some(lowest)) => Ok(lowest),
        (true, None) => Err("has_more with an empty page"),
    }
}

#[cfg(test)]
mod tests;
