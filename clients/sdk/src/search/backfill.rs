//! The backfill driver: runs [`tern_search::Backfill`] (the sans-IO planner) against the
//! server's history pages over an open [`Connection`], decrypts each page on this device and
//! stores it with its checkpoint in one transaction. A restart resumes from the stored
//! checkpoints; a run is bounded by [`BackfillBudget`].
//!
//! Only conversations the caller lists are fetched: the app passes the server's current list,
//! so a conversation the user left or was removed from is neither fetched nor kept (the caller
//! drops its rows first, [`super::LocalIndex::retain_conversations`]). The server cuts a former
//! member's history at the departure on top of that.

use std::collections::HashMap;

use futures_util::future::join_all;
use tern_search::{Backfill, BackfillConfig, BackfillError, FetchedPage, PageRequest};
use tern_wire::ids::{ConversationId, UserId};
use tern_wire::msg::ErrorCode;
use uuid::Uuid;

use super::{LocalIndex, conversation_uuid, indexed_message};
use crate::connection::{Connection, HistoryPage};
use crate::e2e::E2e;
use crate::error::{Error, Result};

/// Messages per history page: below the server's page limit (500 over HTTPS, 1,000 in the
/// store) and small enough that one page's decryption does not stall a chat.
pub const BACKFILL_PAGE_LIMIT: u32 = 200;
/// Pages requested at once (one per conversation).
pub const BACKFILL_IN_FLIGHT: usize = 2;
/// The largest page budget one run may be given.
pub const MAX_BACKFILL_PAGES: usize = 100_000;

/// How much one run may fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackfillBudget {
    /// History pages, 1..=[`MAX_BACKFILL_PAGES`].
    pub max_pages: usize,
}

/// Where a run stands (passed to the progress callback after every page, and returned).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackfillProgress {
    /// Pages fetched in this run.
    pub pages: usize,
    /// Messages fetched in this run.
    pub fetched: usize,
    /// Of them, rows written to the index (the decrypted plaintext ones not indexed before).
    pub indexed: usize,
    /// Messages that could not be decrypted (skipped; a later key lets the live path or a
    /// history view index them).
    pub undecryptable: usize,
    /// Every listed conversation is indexed from seq 1 to its newest.
    pub complete: bool,
}

/// A conversation to backfill: its id and newest seq (`ConversationView::last_seq`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackfillTarget {
    pub conversation: ConversationId,
    pub newest_seq: u64,
}

/// Backfills `targets` until they are complete or the budget is spent. `name_of` gives the
/// sender names stored with the rows. A conversation the server refuses (not a member any
/// more, gone) is dropped from the index; any other failure ends the run with the error
/// (what was stored stays, with its checkpoint).
pub async fn run(
    index: &mut LocalIndex,
    e2e: &mut E2e,
    conn: &Connection,
    targets: &[BackfillTarget],
    name_of: &dyn Fn(UserId) -> String,
    budget: BackfillBudget,
    progress: &mut dyn FnMut(&BackfillProgress),
) -> Result<BackfillProgress> {
    if budget.max_pages == 0 || budget.max_pages > MAX_BACKFILL_PAGES {
        return Err(Error::Config(format!(
            "backfill page budget {} is outside 1..={MAX_BACKFILL_PAGES}",
            budget.max_pages
        )));
    }
    let mut planner = planner(index, targets)?;
    let mut report = BackfillProgress::default();
    while report.pages < budget.max_pages {
        let mut requests = planner.poll();
        if requests.is_empty() {
            break;
        }
        for late in requests.split_off(requests.len().min(budget.max_pages - report.pages)) {
            planner.page_failed(late.conversation, late.before_seq);
        }
        let pages = join_all(requests.iter().map(|r| fetch(conn, r))).await;
        for (request, page) in requests.iter().zip(pages) {
            let conversation = conversation_id(request.conversation);
            match page {
                Ok(page) => {
                    let fetched = page.messages.len();
                    let lowest_seq = page.messages.iter().map(|m| m.seq).min();
                    let decrypted = e2e.decrypt_history(conn, page.messages).await?;
                    let mut messages = Vec::with_capacity(decrypted.len());
                    for d in decrypted {
                        match d {
                            Ok(m) => messages.extend(indexed_message(&m, &name_of(m.sender_user))),
                            Err(_) => report.undecryptable += 1,
                        }
                    }
                    let page = FetchedPage {
                        conversation: request.conversation,
                        before_seq: request.before_seq,
                        lowest_seq,
                        has_more: page.has_more,
                        messages,
                    };
                    report.pages += 1;
                    report.fetched += fetched;
                    report.indexed += store(index, &mut planner, page)?;
                    progress(&report);
                }
                Err(e) if gone(&e) => {
                    planner.remove_conversation(request.conversation);
                    index.forget_conversation(conversation)?;
                }
                Err(e) => {
                    planner.page_failed(request.conversation, request.before_seq);
                    return Err(e);
                }
            }
        }
    }
    report.complete = planner.is_complete();
    Ok(report)
}

/// A planner holding `targets` with their stored checkpoints.
fn planner(index: &LocalIndex, targets: &[BackfillTarget]) -> Result<Backfill> {
    let mut planner = Backfill::new(BackfillConfig {
        page_limit: BACKFILL_PAGE_LIMIT,
        max_in_flight: BACKFILL_IN_FLIGHT,
    })
    .map_err(|e| Error::Config(e.to_string()))?;
    let mut stored: HashMap<Uuid, tern_search::Checkpoint> =
        index.index().backfill_checkpoints()?.into_iter().collect();
    for t in targets {
        let id = conversation_uuid(t.conversation);
        planner.set_conversation(id, t.newest_seq, stored.remove(&id));
    }
    Ok(planner)
}

async fn fetch(conn: &Connection, request: &PageRequest) -> Result<HistoryPage> {
    conn.history(
        conversation_id(request.conversation),
        request.before_seq,
        0,
        request.limit,
    )
    .await
}

fn conversation_id(id: Uuid) -> ConversationId {
    ConversationId(id.as_u128())
}

/// Stores what the planner makes of a page; returns the rows written. An inconsistent page
/// pauses its conversation (the planner's rule) and is skipped, it does not end the run.
fn store(index: &mut LocalIndex, planner: &mut Backfill, page: FetchedPage) -> Result<usize> {
    match planner.page_fetched(page) {
        Ok(Some(store)) => {
            index.index_mut().store_page(&store)?;
            Ok(store.messages.len())
        }
        Ok(None) => Ok(0),
        Err(e @ BackfillError::BadPage { .. }) => {
            tracing::warn!(error = %e, "history page skipped by the search backfill");
            Ok(0)
        }
        Err(e) => Err(Error::Protocol(e.to_string())),
    }
}

/// The server says the conversation is not (or no longer) the user's.
fn gone(e: &Error) -> bool {
    matches!(
        e,
        Error::Server {
            code: ErrorCode::NotFound | ErrorCode::Forbidden,
            ..
        }
    )
}
