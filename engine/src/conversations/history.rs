//! History pages for members: before / after a seq, around a seq, by time, by sender; every
//! form bounded (count and bytes) and, for a former member, cut at the departure seq.
//!
//! Every form becomes store reads over key ranges (no scan from the start of a conversation):
//! a time range is turned into a seq range with `Store::first_seq_at` (binary search: the
//! sequencer stamps non-decreasing timestamps per conversation), a sender is the store's
//! `(conversation, sender, seq)` index, an around page is two reads meeting at the seq.

use tern_wire::ids::{ConversationId, UserId};
use tern_wire::msg::{Message, ReactionCount};

use super::{Conversations, internal, not_found};
use crate::paging::{self, PageBudget, PageCost};
use crate::service::ServiceError;
use crate::store::{AroundQuery, HistoryFrom, HistoryQuery};

/// Which page a reader asks for (socket `History`, HTTPS `GET …/messages`). Zero means
/// "not set" for every number, as on the wire.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistoryRequest {
    /// Only seqs below this. Without `after_seq`/`since_ms` the page is the newest of the range.
    pub before_seq: u64,
    /// Only seqs above this; set, the page is the oldest of the range (reading forward).
    pub after_seq: u64,
    /// 1..=`max_history_page`; 0 means 1.
    pub limit: u32,
    /// The page is centred on this seq (see `AroundQuery::after_count`); not combinable with
    /// `before_seq`, `after_seq` or a time range.
    pub around_seq: u64,
    /// Only messages the server stamped at or after this (Unix ms); set, the page is the
    /// oldest of the range (jumping to a date reads forward from it).
    pub since_ms: u64,
    /// Only messages the server stamped at or before this (Unix ms, inclusive).
    pub until_ms: u64,
    /// Only messages of this sender.
    pub sender: Option<UserId>,
}

impl HistoryRequest {
    /// A page before / after a seq: what every reader asked for before the other forms.
    pub fn seqs(before_seq: u64, after_seq: u64, limit: u32) -> Self {
        HistoryRequest {
            before_seq,
            after_seq,
            limit,
            ..HistoryRequest::default()
        }
    }

    /// Refuses what has no meaning (a clear `invalid_argument`, never a silent guess).
    pub fn validate(&self, max_limit: u32) -> Result<(), ServiceError> {
        if self.limit > max_limit {
            return Err(ServiceError::invalid(format!(
                "limit must be at most {max_limit}"
            )));
        }
        let ranged =
            self.before_seq != 0 || self.after_seq != 0 || self.since_ms != 0 || self.until_ms != 0;
        if self.around_seq != 0 && ranged {
            return Err(ServiceError::invalid(
                "around cannot be combined with before, after, since_ms or until_ms",
            ));
        }
        if self.since_ms != 0 && self.until_ms != 0 && self.since_ms > self.until_ms {
            return Err(ServiceError::invalid("since_ms is later than until_ms"));
        }
        Ok(())
    }

    /// Whether the page is read forward (oldest of the range first): the end it is cut at.
    pub fn forward(&self) -> bool {
        self.after_seq > 0 || self.since_ms > 0
    }
}

/// One page, ascending by seq.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryPage {
    pub messages: Vec<Message>,
    /// More exists in the paging direction (older when scrolling back, newer when reading
    /// forward; around pages: on either side), as before the other forms existed.
    pub has_more: bool,
    /// More exists older than the page's first message. Set on around pages; on other pages
    /// only when scrolling back (then equal to `has_more`; forward pages do not look back).
    pub has_more_before: bool,
    /// More exists newer than the page's last message. Set on around pages; on other pages
    /// only when reading forward (then equal to `has_more`).
    pub has_more_after: bool,
}

impl HistoryPage {
    /// The last cut once the page's reactions are added (socket or HTTPS): around pages keep
    /// their seq and lose the end farther from it, other pages lose the end away from the
    /// reader; the side that lost messages says it has more.
    pub fn fit(
        &mut self,
        reactions: &mut Vec<ReactionCount>,
        request: &HistoryRequest,
        max_bytes: u64,
        cost: PageCost,
    ) {
        let (before, after) = if request.around_seq != 0 {
            paging::fit_around(
                &mut self.messages,
                reactions,
                request.around_seq,
                max_bytes,
                cost,
            )
        } else {
            let forward = request.forward();
            let cut = paging::fit(&mut self.messages, reactions, forward, max_bytes, cost);
            (cut && !forward, cut && forward)
        };
        self.has_more_before |= before;
        self.has_more_after |= after;
        self.has_more |= before || after;
    }
}

/// The smaller of two exclusive upper bounds, 0 meaning none.
fn min_bound(a: u64, b: u64) -> u64 {
    match (a, b) {
        (0, x) | (x, 0) => x,
        (a, b) => a.min(b),
    }
}

impl Conversations {
    /// One page of history for `me` (see [`HistoryRequest`]): members read everything, a
    /// former member only up to the seq of their departure, anybody else gets `not_found`.
    /// At most `limit` messages and, counted by `budget.cost`, at most `budget.max_bytes`
    /// (a page always holds one message if the range has any).
    pub async fn history_page(
        &self,
        me: UserId,
        conversation: ConversationId,
        request: HistoryRequest,
        budget: PageBudget,
    ) -> Result<HistoryPage, ServiceError> {
        request.validate(self.limits.max_history_page)?;
        let cap = self.read_cap(conversation, me).await?;
        let limit = request.limit.max(1);
        if request.around_seq != 0 {
            return self
                .around_page(conversation, request, limit, cap, budget)
                .await;
        }
        let Some((after_seq, before_seq)) = self.seq_range(conversation, &request, cap).await?
        else {
            return Ok(HistoryPage::default());
        };
        let forward = request.forward();
        let query = HistoryQuery {
            conversation,
            before_seq,
            after_seq,
            // One more than the page, to learn whether there is more.
            limit: limit + 1,
            from: if forward {
                HistoryFrom::Oldest
            } else {
                HistoryFrom::Newest
            },
            // The store stops after the message that crosses it (by its own count, which
            // `cost` never undercuts), so a large page is never read whole.
            max_bytes: budget.max_bytes,
            sender: request.sender,
        };
        let mut messages = self.store.history(query).await.map_err(internal)?;
        let mut has_more = messages.len() > limit as usize;
        if has_more {
            if forward {
                messages.truncate(limit as usize);
            } else {
                messages.remove(0);
            }
        }
        let cost = budget.cost;
        let over = messages.iter().map(cost.message).sum::<u64>() > budget.max_bytes;
        if paging::fit(
            &mut messages,
            &mut Vec::new(),
            forward,
            budget.max_bytes,
            cost,
        ) || over
        {
            // Cut by size, or one message alone is over the budget (there may be more).
            has_more = true;
        }
        Ok(HistoryPage {
            messages,
            has_more,
            has_more_before: has_more && !forward,
            has_more_after: has_more && forward,
        })
    }

    /// `None` for a member (no cap); for a former member the exclusive bound above their
    /// departure seq; `not_found` for anybody else.
    async fn read_cap(
        &self,
        conversation: ConversationId,
        me: UserId,
    ) -> Result<Option<u64>, ServiceError> {
        if self
            .store
            .is_member(conversation, me)
            .await
            .map_err(internal)?
        {
            return Ok(None);
        }
        match self
            .store
            .departure(conversation, me)
            .await
            .map_err(internal)?
        {
            Some(at) => Ok(Some(at.saturating_add(1))),
            None => Err(not_found()),
        }
    }

    /// The request's exclusive seq bounds `(after, before)` (0: none), time range and cap
    /// applied; `None` when the range is empty.
    async fn seq_range(
        &self,
        conversation: ConversationId,
        request: &HistoryRequest,
        cap: Option<u64>,
    ) -> Result<Option<(u64, u64)>, ServiceError> {
        let mut after = request.after_seq;
        let mut before = min_bound(request.before_seq, cap.unwrap_or(0));
        if request.since_ms != 0 {
            let first = self
                .store
                .first_seq_at(conversation, request.since_ms)
                .await
                .map_err(internal)?;
            after = after.max(first.saturating_sub(1));
        }
        if request.until_ms != 0 && request.until_ms != u64::MAX {
            let end = self
                .store
                .first_seq_at(conversation, request.until_ms + 1)
                .await
                .map_err(internal)?;
            before = min_bound(before, end);
        }
        if before != 0 && after.saturating_add(1) >= before {
            return Ok(None);
        }
        Ok(Some((after, before)))
    }

    async fn around_page(
        &self,
        conversation: ConversationId,
        request: HistoryRequest,
        limit: u32,
        cap: Option<u64>,
        budget: PageBudget,
    ) -> Result<HistoryPage, ServiceError> {
        let query = AroundQuery {
            conversation,
            seq: request.around_seq,
            limit,
            before_seq: cap.unwrap_or(0),
            max_bytes: budget.max_bytes,
            sender: request.sender,
        };
        let page = self.store.history_around(query).await.map_err(internal)?;
        let mut messages = page.messages;
        // The store bounded each side by its own count; cut by the caller's exactly, from the
        // end farther from the seq.
        let (cut_before, cut_after) = paging::fit_around(
            &mut messages,
            &mut Vec::new(),
            request.around_seq,
            budget.max_bytes,
            budget.cost,
        );
        let has_more_before = page.has_more_before || cut_before;
        let has_more_after = page.has_more_after || cut_after;
        Ok(HistoryPage {
            messages,
            has_more: has_more_before || has_more_after,
            has_more_before,
            has_more_after,
        })
    }
}

#[cfg(test)]
mod tests;
