//! Delivery receipts: what a sender shows for its own messages once they are stored ("sent").
//!
//! The server tells senders each member's *delivery mark*: a device of that user has every
//! message of the conversation up to the mark (its acknowledged cursor). A message is
//! delivered to a member when the member's mark reached its seq; [`DeliveryMarks::state`]
//! counts the other members that got it. Marks only move forward, so pushes and answers to
//! `GetDelivered` can arrive in any order and be merged by taking the maximum.

use std::collections::HashMap;

use tern_wire::ids::{ConversationId, UserId};
use tern_wire::msg::DeliveryMark;

/// Conversations whose marks are kept; the least recently changed is dropped beyond it (the
/// page asks again when it opens one). A client with more open chats than this is unusual.
pub const MAX_CONVERSATIONS: usize = 1_000;

/// Users whose marks are kept per conversation: the members of the largest group.
pub const MAX_USERS_PER_CONVERSATION: usize = tern_wire::limits::MAX_DELIVERY_MARKS;

/// How far one message got: delivered to `delivered` of the `recipients` other members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Delivery {
    pub delivered: usize,
    pub recipients: usize,
}

impl Delivery {
    /// Every other member has it (a conversation without other members never is).
    pub fn to_everyone(&self) -> bool {
        self.recipients > 0 && self.delivered == self.recipients
    }
}

#[derive(Debug, Default)]
pub struct DeliveryMarks {
    conversations: HashMap<ConversationId, Marks>,
    /// Increases on every change: the eviction order.
    clock: u64,
}

#[derive(Debug, Default)]
struct Marks {
    by_user: HashMap<UserId, u64>,
    changed_at: u64,
}

impl DeliveryMarks {
    pub fn new() -> Self {
        Self::default()
    }

    /// Merges marks from a push or an answer; returns whether any moved (redraw then).
    pub fn apply(&mut self, conversation: ConversationId, marks: &[DeliveryMark]) -> bool {
        self.clock += 1;
        let clock = self.clock;
        let entry = self.conversations.entry(conversation).or_default();
        let mut moved = false;
        for mark in marks {
            // The server's input bounds nothing here: beyond one mark per member of the largest
            // group, marks of users not seen before are ignored (no panic, no growth).
            let known = entry.by_user.contains_key(&mark.user);
            if !known && entry.by_user.len() >= MAX_USERS_PER_CONVERSATION {
                continue;
            }
            let seq = entry.by_user.entry(mark.user).or_insert(0);
            if mark.seq > *seq {
                *seq = mark.seq;
                moved = true;
            }
        }
        entry.changed_at = clock;
        if self.conversations.len() > MAX_CONVERSATIONS
            && let Some(oldest) = self
                .conversations
                .iter()
                .min_by_key(|(_, m)| m.changed_at)
                .map(|(c, _)| *c)
        {
            self.conversations.remove(&oldest);
        }
        moved
    }

    /// The mark of `user` in `conversation` (0: nothing known).
    pub fn mark(&self, conversation: ConversationId, user: UserId) -> u64 {
        self.conversations
            .get(&conversation)
            .and_then(|m| m.by_user.get(&user))
            .copied()
            .unwrap_or(0)
    }

    /// How far the message `seq` sent by `sender` got among `members` (the sender and
    /// duplicates in the list are not counted).
    pub fn state(
        &self,
        conversation: ConversationId,
        seq: u64,
        sender: UserId,
        members: &[UserId],
    ) -> Delivery {
        let mut others: Vec<UserId> = members.iter().copied().filter(|u| *u != sender).collect();
        others.sort_unstable();
        others.dedup();
        let delivered = others
            .iter()
            .filter(|u| seq > 0 && self.mark(conversation, **u) >= seq)
            .count();
        Delivery {
            delivered,
            recipients: others.len(),
        }
    }

    /// Forgets a conversation (left it, or logged out).
    pub fn forget(&mut self, conversation: ConversationId) {
        self.conversations.remove(&conversation);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: ConversationId = ConversationId(1);
    const ME: UserId = UserId(1);
    const BOB: UserId = UserId(2);
    const CAROL: UserId = UserId(3);

    fn mark(user: UserId, seq: u64) -> DeliveryMark {
        DeliveryMark { user, seq }
    }

    #[test]
    fn a_one_to_one_message_is_delivered_when_the_peer_mark_reaches_it() {
        let mut marks = DeliveryMarks::new();
        let members = [ME, BOB];
        assert_eq!(
            marks.state(C, 3, ME, &members),
            Delivery {
                delivered: 0,
                recipients: 1
            }
        );
        assert!(marks.apply(C, &[mark(BOB, 2)]));
        assert!(!marks.state(C, 3, ME, &members).to_everyone());
        assert!(marks.state(C, 2, ME, &members).to_everyone());
        assert!(marks.apply(C, &[mark(BOB, 3)]));
        assert!(marks.state(C, 3, ME, &members).to_everyone());
    }

    #[test]
    fn marks_never_move_back_whatever_order_they_arrive_in() {
        let mut marks = DeliveryMarks::new();
        assert!(marks.apply(C, &[mark(BOB, 9)]));
        assert!(
            !marks.apply(C, &[mark(BOB, 4)]),
            "an older answer changes nothing"
        );
        assert_eq!(marks.mark(C, BOB), 9);
    }

    #[test]
    fn a_group_counts_each_other_member_and_never_the_sender() {
        let mut marks = DeliveryMarks::new();
        let members = [ME, BOB, CAROL, BOB];
        marks.apply(C, &[mark(BOB, 5), mark(ME, 100)]);
        assert_eq!(
            marks.state(C, 5, ME, &members),
            Delivery {
                delivered: 1,
                recipients: 2
            }
        );
        marks.apply(C, &[mark(CAROL, 7)]);
        assert!(marks.state(C, 5, ME, &members).to_everyone());
        assert!(!marks.state(C, 6, ME, &members).to_everyone());
    }

    #[test]
    fn nobody_else_means_not_delivered_and_unsequenced_means_nothing() {
        let mut marks = DeliveryMarks::new();
        assert!(!marks.state(C, 1, ME, &[ME]).to_everyone());
        marks.apply(C, &[mark(BOB, 5)]);
        assert_eq!(marks.state(C, 0, ME, &[ME, BOB]).delivered, 0);
    }

    #[test]
    fn a_flood_of_unknown_users_is_bounded_not_fatal() {
        let mut marks = DeliveryMarks::new();
        let flood: Vec<DeliveryMark> = (0..MAX_USERS_PER_CONVERSATION as u128 + 50)
            .map(|u| mark(UserId(u + 100), 1))
            .collect();
        marks.apply(C, &flood);
        marks.apply(C, &[mark(BOB, 3)]);
        assert_eq!(marks.mark(C, BOB), 0, "no room for a new user");
        assert_eq!(marks.mark(C, UserId(100)), 1, "known users still move");
        assert!(marks.apply(C, &[mark(UserId(100), 2)]));
    }

    #[test]
    fn conversations_are_bounded_and_forgettable() {
        let mut marks = DeliveryMarks::new();
        for c in 0..(MAX_CONVERSATIONS as u128 + 10) {
            marks.apply(ConversationId(c + 10), &[mark(BOB, 1)]);
        }
        assert_eq!(marks.conversations.len(), MAX_CONVERSATIONS);
        assert_eq!(
            marks.mark(ConversationId(10), BOB),
            0,
            "the oldest went first"
        );
        let last = ConversationId(MAX_CONVERSATIONS as u128 + 19);
        assert_eq!(marks.mark(last, BOB), 1);
        marks.forget(last);
        assert_eq!(marks.mark(last, BOB), 0);
    }
}
