//! Request matching: request ids, replies routed to whoever waits for them, deadlines.
//!
//! Every request the client sends carries a fresh id ([`Requests::next_id`]; ping nonces come
//! from the same counter, both only need to be unique per connection). The driver registers
//! what waits for the answer (a channel, a promise, a callback: the type parameter `W`) with a
//! deadline in `now_ms`, then feeds every decoded server message to [`Requests::on_reply`]:
//! a reply goes to its waiter, everything else (and replies nobody waits for any more) comes
//! back to become an event. [`Requests::expired`] hands back the waiters whose deadline passed,
//! for drivers that keep time with one timer instead of one per request.

use std::collections::HashMap;

use tern_wire::msg::ServerMessage;

/// What a pending reply is keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Waiter {
    /// A request's `request_id`.
    Request(u64),
    /// A `Ping`'s nonce.
    Pong(u64),
}

/// The key a server message answers, if it is a reply. `request_id` 0 is never a reply (the
/// server uses it for errors that belong to no request).
///
/// Every server message that carries a `request_id` must be listed here, or its replies reach
/// the app as events and the request times out.
pub fn reply_key(msg: &ServerMessage) -> Option<Waiter> {
    match msg {
        ServerMessage::SendAck { request_id, .. }
        | ServerMessage::HistoryPage { request_id, .. }
        | ServerMessage::Conversation { request_id, .. }
        | ServerMessage::KeyBundle { request_id, .. }
        | ServerMessage::KeySharesStored { request_id, .. }
        | ServerMessage::Delivered { request_id, .. }
        | ServerMessage::Ok { request_id }
        | ServerMessage::Error { request_id, .. }
            if *request_id != 0 =>
        {
            Some(Waiter::Request(*request_id))
        }
        ServerMessage::Pong { nonce } => Some(Waiter::Pong(*nonce)),
        _ => None,
    }
}

/// Where a server message goes.
#[derive(Debug)]
pub enum Routed<W> {
    /// The answer to a pending request, with its waiter.
    Reply(W, ServerMessage),
    /// Not a reply, or a reply nobody waits for (the waiter gave up): an event.
    Event(ServerMessage),
}

#[derive(Debug)]
struct Pending<W> {
    waiter: W,
    deadline_ms: u64,
}

/// The pending requests of one connection.
#[derive(Debug)]
pub struct Requests<W> {
    next_id: u64,
    pending: HashMap<Waiter, Pending<W>>,
}

impl<W> Default for Requests<W> {
    fn default() -> Self {
        Requests {
            next_id: 1,
            pending: HashMap::new(),
        }
    }
}

impl<W> Requests<W> {
    pub fn new() -> Self {
        Self::default()
    }

    /// A fresh request id or ping nonce (never 0).
    pub fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        id
    }

    /// Waits for the reply keyed `key` until `deadline_ms`. A waiter already registered under
    /// the same key is replaced and returned.
    pub fn register(&mut self, key: Waiter, waiter: W, deadline_ms: u64) -> Option<W> {
        self.pending
            .insert(
                key,
                Pending {
                    waiter,
                    deadline_ms,
                },
            )
            .map(|p| p.waiter)
    }

    /// Stops waiting (the caller gave up or was answered elsewhere).
    pub fn unregister(&mut self, key: Waiter) -> Option<W> {
        self.pending.remove(&key).map(|p| p.waiter)
    }

    /// Routes one server message (see the module docs).
    pub fn on_reply(&mut self, msg: ServerMessage) -> Routed<W> {
        match reply_key(&msg).and_then(|key| self.pending.remove(&key)) {
            Some(p) => Routed::Reply(p.waiter, msg),
            None => Routed::Event(msg),
        }
    }

    /// Removes and returns every waiter whose deadline is at or before `now_ms`.
    pub fn expired(&mut self, now_ms: u64) -> Vec<(Waiter, W)> {
        let keys: Vec<Waiter> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline_ms <= now_ms)
            .map(|(k, _)| *k)
            .collect();
        keys.into_iter()
            .filter_map(|k| self.pending.remove(&k).map(|p| (k, p.waiter)))
            .collect()
    }

    /// The earliest deadline, for the driver's timer.
    pub fn next_deadline(&self) -> Option<u64> {
        self.pending.values().map(|p| p.deadline_ms).min()
    }

    /// The connection ended: every waiter, to be failed with the reason.
    pub fn drain(&mut self) -> Vec<W> {
        self.pending.drain().map(|(_, p)| p.waiter).collect()
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_wire::ids::{ConversationId, MessageId};
    use tern_wire::msg::ErrorCode;

    fn ack(request_id: u64) -> ServerMessage {
        ServerMessage::SendAck {
            request_id,
            conversation: ConversationId(1),
            client_msg_id: 1,
            seq: 1,
            message_id: MessageId(1),
            timestamp_ms: 0,
            duplicate: false,
        }
    }

    #[test]
    fn replies_route_to_waiters_and_others_pass_through() {
        let mut r: Requests<&str> = Requests::new();
        let id = r.next_id();
        assert_eq!(id, 1);
        assert_eq!(r.next_id(), 2);
        r.register(Waiter::Request(5), "five", 100);
        match r.on_reply(ack(5)) {
            Routed::Reply("five", m) => assert_eq!(m, ack(5)),
            other => panic!("{other:?}"),
        }
        assert!(r.is_empty());
        // A second copy, an unmatched reply and non-replies become events.
        assert!(matches!(r.on_reply(ack(5)), Routed::Event(_)));
        assert!(matches!(r.on_reply(ack(6)), Routed::Event(_)));
        assert!(matches!(
            r.on_reply(ServerMessage::SyncComplete),
            Routed::Event(ServerMessage::SyncComplete)
        ));
        // request_id 0 errors are never routed.
        r.register(Waiter::Request(0), "zero", 100);
        let err = ServerMessage::error(0, ErrorCode::Internal, "x", false);
        assert!(matches!(r.on_reply(err), Routed::Event(_)));
        // An error with a request id answers that request; pongs match by nonce.
        r.register(Waiter::Request(7), "seven", 100);
        let err = ServerMessage::error(7, ErrorCode::Forbidden, "no", false);
        assert!(matches!(r.on_reply(err), Routed::Reply("seven", _)));
        r.register(Waiter::Pong(7), "pong", 100);
        assert!(matches!(
            r.on_reply(ServerMessage::Pong { nonce: 7 }),
            Routed::Reply("pong", _)
        ));
    }

    #[test]
    fn deadlines_expire_in_time_order_and_drain_takes_the_rest() {
        let mut r: Requests<u32> = Requests::new();
        r.register(Waiter::Request(1), 1, 100);
        r.register(Waiter::Request(2), 2, 300);
        r.register(Waiter::Pong(3), 3, 200);
        assert_eq!(r.next_deadline(), Some(100));
        assert!(r.expired(99).is_empty());
        assert_eq!(r.expired(100), vec![(Waiter::Request(1), 1)]);
        let mut late = r.expired(250);
        late.sort_by_key(|(_, w)| *w);
        assert_eq!(late, vec![(Waiter::Pong(3), 3)]);
        assert_eq!(r.next_deadline(), Some(300));
        // An expired request's late answer is an event, not a crash.
        assert!(matches!(r.on_reply(ack(1)), Routed::Event(_)));
        assert_eq!(r.unregister(Waiter::Request(9)), None);
        r.register(Waiter::Request(9), 9, 1000);
        assert_eq!(r.drain().len(), 2);
        assert!(r.is_empty() && r.next_deadline().is_none());
    }
}
