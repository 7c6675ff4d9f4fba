//! A bounded queue that serves its clients round-robin. Sans-IO: no threads, no clock.
//!
//! Password hashing is the server's most expensive operation, and a single FIFO let one client
//! that floods logins fill it, so everybody else's login waited behind (or was refused after)
//! the flood. Here every client has its own small FIFO, and [`FairQueue::pop`] takes one job
//! from each waiting client in turn: a flooding client only ever delays others by one job per
//! round, and past its own bound it is refused while the others are still admitted. When the
//! queue as a whole is full (many clients), a client with fewer jobs waiting than the busiest
//! one still gets in: the busiest client's newest job is evicted (and refused) to make room, so
//! the queue shares itself max-min fairly instead of first come, first served.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// Why a job was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// This client already has its bound of jobs waiting.
    ClientFull,
    /// The queue as a whole is full.
    Full,
}

#[derive(Debug)]
pub struct FairQueue<K, J> {
    per_client: HashMap<K, VecDeque<J>>,
    /// Clients with at least one waiting job, in the order they are served.
    turn: VecDeque<K>,
    len: usize,
    per_client_limit: usize,
    total_limit: usize,
}

impl<K: Hash + Eq + Clone, J> FairQueue<K, J> {
    pub fn new(per_client_limit: usize, total_limit: usize) -> Self {
        assert!(
            per_client_limit > 0 && total_limit > 0,
            "queue bounds must be positive"
        );
        FairQueue {
            per_client: HashMap::new(),
            turn: VecDeque::new(),
            len: 0,
            per_client_limit,
            total_limit,
        }
    }

    /// Queues `job` for `client`. `Ok(Some(evicted))`: the queue was full and another
    /// client's newest job was taken out to make room; the caller must refuse it.
    pub fn push(&mut self, client: K, job: J) -> Result<Option<J>, Refused> {
        let own = self.per_client.get(&client).map_or(0, VecDeque::len);
        if own >= self.per_client_limit {
            return Err(Refused::ClientFull);
        }
        let mut evicted = None;
        if self.len >= self.total_limit {
            let busiest = self
                .per_client
                .iter()
                .max_by_key(|(_, q)| q.len())
                .map(|(k, q)| (k.clone(), q.len()));
            match busiest {
                // Only a client that would still have more waiting than this one gives way.
                Some((busiest, waiting)) if waiting > own + 1 => {
                    if let Some(queue) = self.per_client.get_mut(&busiest) {
                        // `waiting >= 2`, so the busiest client keeps at least one job.
                        evicted = queue.pop_back();
                        self.len -= 1;
                    }
                }
                _ => return Err(Refused::Full),
            }
        }
        let queue = self.per_client.entry(client.clone()).or_default();
        if queue.is_empty() {
            self.turn.push_back(client);
        }
        queue.push_back(job);
        self.len += 1;
        Ok(evicted)
    }

    /// The next job: the oldest of the client whose turn it is.
    pub fn pop(&mut self) -> Option<J> {
        let client = self.turn.pop_front()?;
        let queue = self.per_client.get_mut(&client)?;
        let job = queue.pop_front();
        if queue.is_empty() {
            // No empty queues are kept: memory is bounded by the waiting jobs.
            self.per_client.remove(&client);
        } else {
            self.turn.push_back(client);
        }
        if job.is_some() {
            self.len -= 1;
        }
        job
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Clients with waiting jobs.
    pub fn clients(&self) -> usize {
        self.per_client.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_served_in_turn_whatever_they_queued() {
        let mut q = FairQueue::new(100, 1000);
        for i in 0..5 {
            q.push("flood", ("flood", i)).expect("queued");
        }
        q.push("owner", ("owner", 0)).expect("queued");
        q.push("other", ("other", 0)).expect("queued");
        let order: Vec<_> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(
            order,
            vec![
                ("flood", 0),
                ("owner", 0),
                ("other", 0),
                ("flood", 1),
                ("flood", 2),
                ("flood", 3),
                ("flood", 4)
            ]
        );
        assert!(q.is_empty());
        assert_eq!(q.clients(), 0, "no empty per-client queues are kept");
    }

    #[test]
    fn a_flooding_client_is_refused_while_others_are_admitted() {
        let mut q = FairQueue::new(3, 10);
        for i in 0..3 {
            q.push(1, i).expect("within the client bound");
        }
        assert_eq!(q.push(1, 99), Err(Refused::ClientFull));
        for c in 2..9 {
            q.push(c, 0).expect("other clients still get in");
        }
        assert_eq!(q.len(), 10);
        // Full: a new client takes the place of the busiest client's newest job.
        assert_eq!(
            q.push(42, 0),
            Ok(Some(2)),
            "client 1's newest job gives way"
        );
        assert_eq!(q.len(), 10, "the total bound holds");
        assert_eq!(
            q.push(43, 0),
            Ok(Some(1)),
            "client 1 still has the most waiting"
        );
        // Now every client has one job waiting: nobody has more than a newcomer would.
        assert_eq!(q.push(44, 0), Err(Refused::Full));
        assert_eq!(
            q.push(42, 1),
            Err(Refused::Full),
            "no client grows past another"
        );
        let first_round: Vec<_> = (0..8).filter_map(|_| q.pop()).collect();
        assert_eq!(first_round.len(), 8);
        assert_eq!(q.len(), 2);
        assert_eq!(q.push(1, 7), Ok(None), "room again after its jobs ran");
    }

    #[test]
    fn a_client_rejoins_the_back_of_the_round_when_it_queues_again() {
        let mut q = FairQueue::new(10, 10);
        q.push('a', 1).expect("queued");
        assert_eq!(q.pop(), Some(1));
        q.push('b', 2).expect("queued");
        q.push('a', 3).expect("queued");
        assert_eq!(q.pop(), Some(2));
        assert_eq!(q.pop(), Some(3));
        assert_eq!(q.pop(), None);
    }
}
