//! Which key-share inbox entries this connection delivered and its device has not acknowledged.
//!
//! `AckKeyShares { ids }` deletes exactly the ids the device handled and persisted (what clients
//! send). The id-less form `AckKeyShares { up_to }` deletes only entries this connection
//! actually wrote to the device, never merely every stored id up to `up_to`: live pushes from senders on different shards can
//! reach the session out of id order, and a push dropped for a slow connection stays in the
//! inbox for the next connect. Deleting by range would lose such a lower id the device never saw
//! (and with it an Olm pre-key message, breaking every later share on that Olm session).

use std::collections::BTreeSet;

/// Tracked unacknowledged ids beyond which the oldest is forgotten. Forgetting is the safe
/// direction: the entry stays stored and is delivered again on the next connect (the client
/// ignores a key it already has). 20,000: twice the default inbox bound, so an honest client
/// never reaches it.
pub(super) const MAX_TRACKED_UNACKED: usize = 20_000;

#[derive(Debug, Default)]
pub(super) struct InboxDelivery {
    /// Highest id of the connect-time drain (a committed snapshot, sent in order): a live copy
    /// at or below it is a duplicate of a drained entry.
    drained_up_to: u64,
    unacked: BTreeSet<u64>,
}

impl InboxDelivery {
    /// An entry of the connect-time drain was written.
    pub(super) fn drained(&mut self, inbox_id: u64) {
        self.drained_up_to = self.drained_up_to.max(inbox_id);
        self.track(inbox_id);
    }

    /// The high-water mark of the drain (where the next drain page starts).
    pub(super) fn drained_up_to(&self) -> u64 {
        self.drained_up_to
    }

    /// A live push arrived: whether to write it (false: a duplicate of a drained entry or of a
    /// push already written). Written ones are tracked for the ack.
    pub(super) fn live(&mut self, inbox_id: u64) -> bool {
        if inbox_id <= self.drained_up_to || self.unacked.contains(&inbox_id) {
            return false;
        }
        self.track(inbox_id);
        true
    }

    /// The device acknowledged `up_to`: the delivered ids it covers (to delete), no others.
    pub(super) fn ack(&mut self, up_to: u64) -> Vec<u64> {
        let rest = match up_to.checked_add(1) {
            Some(above) => self.unacked.split_off(&above),
            None => BTreeSet::new(),
        };
        std::mem::replace(&mut self.unacked, rest)
            .into_iter()
            .collect()
    }

    /// The device acknowledged exactly `ids`: stop tracking them.
    pub(super) fn acked(&mut self, ids: &[u64]) {
        for id in ids {
            self.unacked.remove(id);
        }
    }

    fn track(&mut self, inbox_id: u64) {
        self.unacked.insert(inbox_id);
        if self.unacked.len() > MAX_TRACKED_UNACKED {
            self.unacked.pop_first();
        }
        debug_assert!(self.unacked.len() <= MAX_TRACKED_UNACKED);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ack_deletes_only_what_this_connection_delivered() {
        let mut d = InboxDelivery::default();
        d.drained(3);
        d.drained(5);
        // Two senders' pushes arrive out of order: 11 is written, 10 is still in flight.
        assert!(d.live(11));
        assert_eq!(
            d.ack(11),
            vec![3, 5, 11],
            "10 was never delivered: it stays stored"
        );
        assert!(d.live(10), "the late lower id is new, not a duplicate");
        assert_eq!(d.ack(11), vec![10]);
        assert!(d.ack(u64::MAX).is_empty());
    }

    #[test]
    fn exact_acks_stop_tracking_their_ids_only() {
        let mut d = InboxDelivery::default();
        for id in [4, 9, 12] {
            assert!(d.live(id));
        }
        d.acked(&[9, 40]);
        assert_eq!(d.ack(u64::MAX), vec![4, 12]);
    }

    #[test]
    fn duplicates_of_drained_and_written_entries_are_not_written_again() {
        let mut d = InboxDelivery::default();
        d.drained(7);
        assert!(!d.live(7) && !d.live(2), "the drain sent every id up to 7");
        assert!(d.live(8));
        assert!(!d.live(8), "written once");
        assert_eq!(d.drained_up_to(), 7);
        assert_eq!(d.ack(u64::MAX), vec![7, 8]);
    }

    #[test]
    fn tracking_is_bounded_by_forgetting_the_oldest() {
        let mut d = InboxDelivery::default();
        for id in 1..=(MAX_TRACKED_UNACKED as u64 + 5) {
            assert!(d.live(id));
        }
        let acked = d.ack(u64::MAX);
        assert_eq!(acked.len(), MAX_TRACKED_UNACKED);
        assert_eq!(
            acked[0], 6,
            "the five oldest are forgotten (they stay stored)"
        );
    }
}
