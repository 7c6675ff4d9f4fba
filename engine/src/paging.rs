//! History pages bounded by bytes as well as by count, so that every page fits in one frame
//! (socket) or a bounded response body (HTTPS JSON).
//!
//! Pages are cut from the end away from where the reader is coming from: scrolling back keeps
//! the newest messages of the page and drops the oldest; catching up forward keeps the oldest.
//! A cut sets `has_more`, so the reader asks again from where the page ends.

use tern_wire::msg::{Message, ReactionCount};

use crate::store::message_cost;

/// How the bytes of a page are counted: one estimate per message and per reaction entry,
/// each never below what that item adds to the encoded page.
#[derive(Debug, Clone, Copy)]
pub struct PageCost {
    pub message: fn(&Message) -> u64,
    pub reaction: fn(&ReactionCount) -> u64,
}

impl PageCost {
    /// FlatBuffers inside a `HistoryPage` frame.
    pub const WIRE: PageCost = PageCost {
        message: message_cost,
        reaction: reaction_wire_cost,
    };
    /// The HTTPS API's JSON (payload in base64, ids as hex strings).
    pub const JSON: PageCost = PageCost {
        message: message_json_cost,
        reaction: reaction_json_cost,
    };
}

/// The byte bound of a page and how its items are counted.
#[derive(Debug, Clone, Copy)]
pub struct PageBudget {
    pub max_bytes: u64,
    pub cost: PageCost,
}

/// A reaction entry in FlatBuffers: seq, count, offsets, the emoji and 16 bytes per user.
pub fn reaction_wire_cost(r: &ReactionCount) -> u64 {
    64 + r.emoji.len() as u64 + 16 * r.users.len() as u64
}

/// A message in JSON: base64 is 4/3 of the payload, ids become 36-character strings, field
/// names repeat per message. Never below [`message_cost`], so a page the store bounded by
/// `message_cost` is never under-counted here.
pub fn message_json_cost(m: &Message) -> u64 {
    let base64 = (m.payload.len() as u64).div_ceil(3) * 4;
    let files: u64 = m
        .files
        .iter()
        .map(|f| 160 + 2 * f.content_type.len() as u64)
        .sum();
    let json = 512 + base64 + 2 * m.content_type.len() as u64 + files;
    json.max(message_cost(m))
}

/// A reaction entry in JSON: a quoted UUID (~40 bytes) per user plus the fields.
pub fn reaction_json_cost(r: &ReactionCount) -> u64 {
    96 + 2 * r.emoji.len() as u64 + 42 * r.users.len() as u64
}

/// Drops messages (and their reactions) from the far end until the page's estimated cost is
/// at most `max_bytes`; never drops the last message. Returns whether anything was dropped.
///
/// `forward`: the page was read forward (after a seq), so the far end is its newest message;
/// otherwise it scrolls back and the far end is its oldest. `messages` ascend by seq.
pub fn fit(
    messages: &mut Vec<Message>,
    reactions: &mut Vec<ReactionCount>,
    forward: bool,
    max_bytes: u64,
    cost: PageCost,
) -> bool {
    let mut total: u64 = messages.iter().map(cost.message).sum::<u64>()
        + reactions.iter().map(cost.reaction).sum::<u64>();
    if total <= max_bytes || messages.len() <= 1 {
        return false;
    }
    // Drop from the far end while over budget; reactions of dropped seqs go with them.
    let mut keep = messages.len();
    let mut start = 0;
    while total > max_bytes && keep - start > 1 {
        let index = if forward { keep - 1 } else { start };
        let seq = messages[index].seq;
        total -= (cost.message)(&messages[index]);
        total -= reactions
            .iter()
            .filter(|r| r.seq == seq)
            .map(cost.reaction)
            .sum::<u64>();
        if forward {
            keep -= 1;
        } else {
            start += 1;
        }
    }
    messages.truncate(keep);
    messages.drain(..start);
    if let (Some(first), Some(last)) = (messages.first(), messages.last()) {
        let (lo, hi) = (first.seq, last.seq);
        reactions.retain(|r| r.seq >= lo && r.seq <= hi);
    }
    true
}

/// [`fit`] for a page centred on `seq` (an around page): drops from whichever end lies
/// farther from `seq` (the older end on a tie) until the estimated cost is at most
/// `max_bytes`, never the last message. Returns whether it dropped (older, newer) messages.
pub fn fit_around(
    messages: &mut Vec<Message>,
    reactions: &mut Vec<ReactionCount>,
    seq: u64,
    max_bytes: u64,
    cost: PageCost,
) -> (bool, bool) {
    let reaction_cost = |reactions: &[ReactionCount], seq: u64| -> u64 {
        reactions
            .iter()
            .filter(|r| r.seq == seq)
            .map(cost.reaction)
            .sum()
    };
    let mut total: u64 = messages.iter().map(cost.message).sum::<u64>()
        + reactions.iter().map(cost.reaction).sum::<u64>();
    let (mut start, mut keep) = (0, messages.len());
    while total > max_bytes && keep - start > 1 {
        let below = seq.saturating_sub(messages[start].seq);
        let above = messages[keep - 1].seq.saturating_sub(seq);
        let index = if below >= above { start } else { keep - 1 };
        total -= (cost.message)(&messages[index]) + reaction_cost(reactions, messages[index].seq);
        if index == start {
            start += 1;
        } else {
            keep -= 1;
        }
    }
    let dropped = (start > 0, keep < messages.len());
    messages.truncate(keep);
    messages.drain(..start);
    if let (Some(first), Some(last)) = (messages.first(), messages.last()) {
        let (lo, hi) = (first.seq, last.seq);
        reactions.retain(|r| r.seq >= lo && r.seq <= hi);
    }
    dropped
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_wire::ids::{ConversationId, DeviceId, MessageId, UserId};
    use tern_wire::msg::{FileRef, ServerMessage};

    fn message(seq: u64, payload: usize) -> Message {
        Message {
            conversation: ConversationId::from_u128(9),
            seq,
            message_id: MessageId(u128::MAX - u128::from(seq)),
            sender_user: UserId::from_u128(u128::MAX),
            sender_device: DeviceId::from_u128(u128::MAX),
            client_msg_id: u128::MAX,
            timestamp_ms: u64::MAX,
            content_type: "c".repeat(128),
            payload: vec![0xab; payload],
            files: (0..16)
                .map(|i| FileRef {
                    file_id: MessageId(u128::MAX - i),
                    size: u64::MAX,
                    content_type: "f".repeat(64),
                })
                .collect(),
        }
    }

    fn reaction(seq: u64, users: usize) -> ReactionCount {
        ReactionCount {
            seq,
            emoji: "👍🏽".into(),
            count: u32::MAX,
            users: (0..users as u128).map(UserId::from_u128).collect(),
        }
    }

    #[test]
    fn the_wire_estimate_is_never_below_the_encoded_page() {
        for (n, payload, users) in [(1, 60 * 1024, 32), (50, 1000, 3), (500, 0, 0), (3, 7, 2000)] {
            let messages: Vec<Message> = (1..=n).map(|s| message(s, payload)).collect();
            let reactions: Vec<ReactionCount> = (1..=n).map(|s| reaction(s, users)).collect();
            let estimate: u64 = messages.iter().map(PageCost::WIRE.message).sum::<u64>()
                + reactions.iter().map(PageCost::WIRE.reaction).sum::<u64>();
            let page = ServerMessage::HistoryPage {
                request_id: u64::MAX,
                conversation: ConversationId::from_u128(9),
                messages,
                reactions,
                has_more: true,
                has_more_before: false,
                has_more_after: false,
            };
            let encoded = tern_wire::encode_server(&page).len() as u64;
            // The page's own fields (envelope, ids, vectors' lengths) fit in 256 bytes.
            assert!(
                encoded <= estimate + 256,
                "{n} messages of {payload} bytes: encoded {encoded} > estimate {estimate}"
            );
        }
    }

    #[test]
    fn pages_are_cut_at_the_far_end_with_their_reactions() {
        let cost = PageCost::WIRE;
        let all: Vec<Message> = (1..=10).map(|s| message(s, 1000)).collect();
        let one = message_cost(&all[0]);
        let reactions: Vec<ReactionCount> = (1..=10).map(|s| reaction(s, 0)).collect();
        let r = reaction_wire_cost(&reactions[0]);

        // Scrolling back keeps the newest.
        let (mut m, mut rs) = (all.clone(), reactions.clone());
        assert!(fit(&mut m, &mut rs, false, 3 * (one + r), cost));
        assert_eq!(m.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![8, 9, 10]);
        assert_eq!(rs.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![8, 9, 10]);

        // Catching up keeps the oldest.
        let (mut m, mut rs) = (all.clone(), reactions.clone());
        assert!(fit(&mut m, &mut rs, true, 3 * (one + r) + 1, cost));
        assert_eq!(m.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(rs.len(), 3);

        // Within budget: untouched. Over it with one message: kept.
        let (mut m, mut rs) = (all.clone(), reactions.clone());
        assert!(!fit(&mut m, &mut rs, true, u64::MAX, cost));
        assert_eq!(m.len(), 10);
        let (mut m, mut rs) = (all[..1].to_vec(), reactions[..1].to_vec());
        assert!(!fit(&mut m, &mut rs, false, 1, cost));
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn around_pages_are_cut_at_the_end_farther_from_their_seq() {
        let cost = PageCost::WIRE;
        let all: Vec<Message> = (1..=10).map(|s| message(s, 1000)).collect();
        let one = message_cost(&all[0]);
        let reactions: Vec<ReactionCount> = (1..=10).map(|s| reaction(s, 0)).collect();
        let r = reaction_wire_cost(&reactions[0]);
        let seqs = |m: &[Message]| m.iter().map(|m| m.seq).collect::<Vec<_>>();

        // Centred on 5: 1 goes first (farthest), then 10 and 2 (a tie: the older end), ...
        let (mut m, mut rs) = (all.clone(), reactions.clone());
        assert_eq!(
            fit_around(&mut m, &mut rs, 5, 3 * (one + r), cost),
            (true, true)
        );
        assert_eq!(seqs(&m), vec![4, 5, 6]);
        assert_eq!(rs.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![4, 5, 6]);

        // Centred on the newest: only the older end is cut.
        let (mut m, mut rs) = (all.clone(), reactions.clone());
        assert_eq!(
            fit_around(&mut m, &mut rs, 10, 2 * (one + r), cost),
            (true, false)
        );
        assert_eq!(seqs(&m), vec![9, 10]);

        // Within budget: untouched; over it with one message: kept.
        let (mut m, mut rs) = (all.clone(), reactions.clone());
        assert_eq!(
            fit_around(&mut m, &mut rs, 5, u64::MAX, cost),
            (false, false)
        );
        assert_eq!(m.len(), 10);
        let (mut m, mut rs) = (all[4..5].to_vec(), reactions[4..5].to_vec());
        assert_eq!(fit_around(&mut m, &mut rs, 5, 1, cost), (false, false));
        assert_eq!(seqs(&m), vec![5]);
    }
}
