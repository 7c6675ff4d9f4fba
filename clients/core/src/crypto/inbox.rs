//! Which key-share inbox entries to acknowledge, and when: only entries whose key the device
//! handled AND persisted (an acknowledged entry is deleted by the server; a crash between
//! the acknowledgement and the write would lose the key). Exact ids, never "everything up
//! to": live shares arrive out of id order, and a lower id still in flight must stay.

use std::collections::BTreeSet;

use tern_wire::limits::MAX_ACK_INBOX_IDS;
use tern_wire::msg::ClientMessage;

/// Inbox ids handled, not yet acknowledged. Bounded by the server's inbox bound: it never
/// sends more entries than a device's inbox holds.
#[derive(Debug, Default, Clone)]
pub struct InboxAcks {
    due: BTreeSet<u64>,
}

impl InboxAcks {
    /// The share `inbox_id` went through `on_key_share` (0: not from the inbox, nothing to ack).
    pub fn on_handled(&mut self, inbox_id: u64) {
        if inbox_id > 0 {
            self.due.insert(inbox_id);
        }
    }

    /// Call once the machine's state is persisted: the `AckKeyShares` frames to send (at most
    /// [`MAX_ACK_INBOX_IDS`] ids each), emptying the set. Empty when none is due.
    pub fn take_acks(&mut self) -> Vec<ClientMessage> {
        let due: Vec<u64> = std::mem::take(&mut self.due).into_iter().collect();
        due.chunks(MAX_ACK_INBOX_IDS)
            .map(|ids| ClientMessage::AckKeyShares {
                up_to: ids.last().copied().unwrap_or(0),
                ids: ids.to_vec(),
            })
            .collect()
    }

    /// Ids waiting for the next `take_acks`.
    pub fn len(&self) -> usize {
        self.due.len()
    }

    pub fn is_empty(&self) -> bool {
        self.due.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_ids_in_bounded_frames_once() {
        let mut acks = InboxAcks::default();
        acks.on_handled(0);
        assert!(acks.take_acks().is_empty(), "0 is not an inbox entry");
        for id in [9, 3, 5, 3] {
            acks.on_handled(id);
        }
        assert_eq!(acks.len(), 3);
        assert_eq!(
            acks.take_acks(),
            [ClientMessage::AckKeyShares {
                up_to: 9,
                ids: vec![3, 5, 9]
            }]
        );
        assert!(acks.take_acks().is_empty(), "taken once");
        for id in 1..=(MAX_ACK_INBOX_IDS as u64 + 1) {
            acks.on_handled(id);
        }
        let frames = acks.take_acks();
        assert_eq!(frames.len(), 2);
        let sizes: Vec<usize> = frames
            .iter()
            .map(|f| match f {
                ClientMessage::AckKeyShares { ids, .. } => ids.len(),
                _ => 0,
            })
            .collect();
        assert_eq!(sizes, [MAX_ACK_INBOX_IDS, 1]);
    }
}
