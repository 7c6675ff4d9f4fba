//! End-to-end scenarios of the crypto machine, driven through a tiny in-memory "server" (a
//! key directory with atomic one-time-key claims, per-device inboxes, a message list). Real
//! vodozemac crypto everywhere, nothing mocked but the network.

use std::collections::{BTreeMap, VecDeque};

use tern_core::crypto::{
    Body, CryptoConfig, CryptoError, CryptoEvent, CryptoMachine, KdfParams, MemoryCryptoStore,
    PublishedKeys, SendPlan, SendStep, Trust, TrustEvent, Undecryptable, WaitingForKeys,
    verify_device_keys,
};
use tern_wire::ids::{ConversationId, DeviceId, MessageId, UserId};
use tern_wire::msg::Message;

type Dev = (UserId, DeviceId);

#[derive(Default)]
struct Server {
    identities: BTreeMap<Dev, PublishedKeys>,
    otks: BTreeMap<Dev, VecDeque<Vec<u8>>>,
    fallback: BTreeMap<Dev, Vec<u8>>,
    inbox: BTreeMap<Dev, Vec<(UserId, DeviceId, Vec<u8>)>>,
    seq: u64,
}

impl Server {
    fn publish(&mut self, m: &mut CryptoMachine) {
        let left = self.otk_count((m.user_id(), m.device_id()));
        if let Some(mut k) = m.keys_to_publish(left) {
            let dev = (k.user, k.device);
            let otks = std::mem::take(&mut k.one_time_keys);
            self.otks.entry(dev).or_default().extend(otks);
            if !k.fallback_key.is_empty() {
                self.fallback
                    .insert(dev, std::mem::take(&mut k.fallback_key));
            }
            k.fallback_key.clear();
            self.identities.insert(dev, k);
            m.mark_keys_published();
        }
    }
    fn otk_count(&self, dev: Dev) -> u32 {
        self.otks.get(&dev).map_or(0, |q| q.len() as u32)
    }
    fn query(&self, user: UserId) -> Vec<PublishedKeys> {
        self.identities
            .values()
            .filter(|k| k.user == user)
            .cloned()
            .collect()
    }
    fn claim(&mut self, dev: Dev) -> Option<PublishedKeys> {
        let mut k = self.identities.get(&dev)?.clone();
        match self.otks.get_mut(&dev).and_then(|q| q.pop_front()) {
            Some(otk) => k.one_time_keys = vec![otk],
            None => k.fallback_key = self.fallback.get(&dev).cloned().unwrap_or_default(),
        }
        Some(k)
    }
    fn revoke(&mut self, dev: Dev) {
        self.identities.remove(&dev);
        self.otks.remove(&dev);
        self.fallback.remove(&dev);
    }

    /// Runs a send's [`SendPlan`] against this server: the steps it asked for, in order.
    fn run_plan(
        &mut self,
        m: &mut CryptoMachine,
        conv: ConversationId,
        members: &[UserId],
        now_ms: u64,
    ) -> Result<Vec<&'static str>, tern_core::crypto::CryptoError> {
        let mut plan = SendPlan::new(conv, members.to_vec());
        let mut steps = Vec::new();
        loop {
            match plan.next(m, now_ms)? {
                SendStep::Query(users) => {
                    steps.push("query");
                    for user in users {
                        let list = self.query(user);
                        m.on_device_list(user, &list, now_ms).expect("device list");
                    }
                }
                SendStep::Claim(devices) => {
                    steps.push("claim");
                    let bundles: Vec<PublishedKeys> =
                        devices.iter().filter_map(|d| self.claim(*d)).collect();
                    let problems = m.on_claimed(&bundles);
                    assert!(problems.is_empty(), "{problems:?}");
                }
                SendStep::Ready => return Ok(steps),
            }
        }
    }

    /// Full send path of a driver: the send plan (query, claim), encrypt, store shares,
    /// message.
    fn send(
        &mut self,
        m: &mut CryptoMachine,
        conv: ConversationId,
        members: &[UserId],
        text: &str,
        now_ms: u64,
    ) -> Message {
        self.run_plan(m, conv, members, now_ms).expect("send plan");
        let out = m.encrypt(conv, &Body::text(text), now_ms).expect("encrypt");
        assert!(out.missing.is_empty(), "missing {:?}", out.missing);
        for share in out.key_shares {
            self.inbox
                .entry((share.to_user, share.to_device))
                .or_default()
                .push((m.user_id(), m.device_id(), share.payload));
        }
        self.seq += 1;
        Message {
            conversation: conv,
            seq: self.seq,
            message_id: MessageId::random(),
            sender_user: m.user_id(),
            sender_device: m.device_id(),
            client_msg_id: u128::from(self.seq),
            timestamp_ms: now_ms,
            content_type: out.content_type.to_string(),
            payload: out.payload,
            files: vec![],
        }
    }

    /// Delivers a device's inbox (what Hello does before the replay).
    fn deliver(&mut self, m: &mut CryptoMachine, now_ms: u64) -> Vec<CryptoEvent> {
        let items = self
            .inbox
            .remove(&(m.user_id(), m.device_id()))
            .unwrap_or_default();
        items
            .into_iter()
            .flat_map(|(u, d, p)| m.on_key_share(u, d, &p, now_ms))
            .collect()
    }
}

fn cfg() -> CryptoConfig {
    CryptoConfig {
        backup_kdf: KdfParams::insecure_for_tests(),
        ..CryptoConfig::default()
    }
}

fn device(server: &mut Server, user: UserId) -> CryptoMachine {
    device_with(server, user, cfg())
}

fn device_with(server: &mut Server, user: UserId, config: CryptoConfig) -> CryptoMachine {
    let mut m = CryptoMachine::new(user, DeviceId::random(), config).expect("new");
    server.publish(&mut m);
    m
}

/// Refreshes `m`'s view of `users` (what a DeviceListChanged push + query does).
fn refresh(server: &Server, m: &mut CryptoMachine, users: &[UserId]) -> Vec<TrustEvent> {
    users
        .iter()
        .flat_map(|u| m.on_device_list(*u, &server.query(*u), 1).expect("list"))
        .collect()
}

fn text_of(m: &mut CryptoMachine, msg: &Message) -> Result<String, Undecryptable> {
    m.decrypt(msg).map(|d| match d.body {
        Body::Text { text } => text,
        Body::Data { content_type, .. } => format!("<{content_type}>"),
        Body::File(file) => format!("<file {}>", file.name),
    })
}

#[test]
fn send_plan_queries_then_claims_then_is_ready_and_a_known_conversation_goes_at_once() {
    let mut s = Server::default();
    let (a, b, c) = (UserId::random(), UserId::random(), UserId::random());
    let mut alice = device(&mut s, a);
    let _bob = device(&mut s, b);
    let _bob2 = device(&mut s, b);
    let _carol = device(&mut s, c);
    let conv = ConversationId::random();
    assert_eq!(
        s.run_plan(&mut alice, conv, &[a, b, c], 1).expect("plan"),
        ["query", "claim"]
    );
    s.send(&mut alice, conv, &[a, b, c], "hello", 2);
    // Sessions exist and every device has the key: nothing to fetch for the next message.
    assert!(
        s.run_plan(&mut alice, conv, &[a, b, c], 3)
            .expect("plan")
            .is_empty()
    );
    // A device-list change makes the next send query again (and claim the new device).
    let _carol2 = device(&mut s, c);
    alice.mark_device_list_stale(c);
    assert_eq!(
        s.run_plan(&mut alice, conv, &[a, b, c], 4).expect("plan"),
        ["query", "claim"]
    );
}

#[test]
fn send_plan_gives_up_on_lists_that_stay_stale_and_on_devices_without_keys() {
    let (a, b) = (UserId::random(), UserId::random());
    let mut s = Server::default();
    let mut alice = device(&mut s, a);
    let conv = ConversationId::random();
    // A directory that never answers for bob: 3 query rounds, then an error (never a loop).
    let mut plan = SendPlan::new(conv, vec![a, b]);
    for round in 1..=3 {
        assert!(
            matches!(plan.next(&mut alice, 1), Ok(SendStep::Query(users)) if users.contains(&b)),
            "round {round}"
        );
        alice.on_device_list(a, &s.query(a), 1).expect("own list");
    }
    let stuck = plan.next(&mut alice, 1).expect_err("stuck lists");
    assert!(stuck.to_string().contains("stay stale"), "{stuck}");

    // Bob's device has no claimable key (the server hands out nothing): two claim rounds,
    // then Ready anyway, so one device without keys cannot block the conversation.
    let mut s = Server::default();
    let mut alice = device(&mut s, a);
    let bob = device(&mut s, b);
    s.otks.remove(&(b, bob.device_id()));
    s.fallback.remove(&(b, bob.device_id()));
    let mut plan = SendPlan::new(conv, vec![a, b]);
    let mut steps = Vec::new();
    loop {
        match plan.next(&mut alice, 1).expect("step") {
            SendStep::Query(users) => {
                steps.push("query");
                for u in users {
                    alice.on_device_list(u, &s.query(u), 1).expect("list");
                }
            }
            SendStep::Claim(devices) => {
                steps.push("claim");
                assert_eq!(devices, [(b, bob.device_id())]);
                let bundles: Vec<PublishedKeys> =
                    devices.iter().filter_map(|d| s.claim(*d)).collect();
                assert!(bundles.iter().all(|k| k.one_time_keys.is_empty()));
                alice.on_claimed(&bundles);
            }
            SendStep::Ready => break,
        }
    }
    assert_eq!(steps, ["query", "claim", "claim"]);
    assert_eq!((plan.queries(), plan.claims()), (1, 2));
    let out = alice
        .encrypt(conv, &Body::text("anyway"), 2)
        .expect("encrypt");
    assert_eq!(out.missing, [(b, bob.device_id())]);
}

/// The inbox shares of `m`, as (from user, from device, payload).
fn inbox_of(s: &mut Server, m: &CryptoMachine) -> Vec<(UserId, DeviceId, Vec<u8>)> {
    s.inbox
        .remove(&(m.user_id(), m.device_id()))
        .unwrap_or_default()
}

#[test]
fn waiting_messages_settle_when_their_key_arrives_and_after_their_sender_is_looked_up() {
    let mut s = Server::default();
    let (a, b) = (UserId::random(), UserId::random());
    let mut alice = device(&mut s, a);
    let mut bob = device(&mut s, b);
    let conv = ConversationId::random();
    let m1 = s.send(&mut alice, conv, &[a, b], "first", 1);
    let m2 = s.send(&mut alice, conv, &[a, b], "second", 2);
    let mut waiting = WaitingForKeys::default();
    // Both arrive before the key: kept, not lost; a replayed copy is kept once.
    assert_eq!(waiting.decrypt(&mut bob, &m1), Err(Undecryptable::NoKeyYet));
    assert_eq!(waiting.decrypt(&mut bob, &m2), Err(Undecryptable::NoKeyYet));
    assert_eq!(waiting.decrypt(&mut bob, &m1), Err(Undecryptable::NoKeyYet));
    assert_eq!(waiting.len(), 2);
    assert_eq!(waiting.conversations(), [conv]);
    // The key comes from alice's device, which bob has not looked up yet: stored, but the
    // messages stay waiting (untrusted until the directory vouches for the device).
    let mut settled = Vec::new();
    for (u, d, p) in inbox_of(&mut s, &bob) {
        let out = waiting.on_key_share(&mut bob, u, d, &p, 3);
        assert!(
            matches!(out.events.as_slice(), [CryptoEvent::UnknownDevice { .. }]),
            "{:?}",
            out.events
        );
        settled.extend(out.settled);
    }
    assert!(settled.is_empty(), "{settled:?}");
    assert_eq!(waiting.len(), 2);
    assert!(waiting.has_unknown_senders());
    let users = waiting.take_to_query();
    assert_eq!(users, [a]);
    refresh(&s, &mut bob, &users);
    let settled = waiting.retry_senders(&mut bob, &users);
    let texts: Vec<String> = settled
        .iter()
        .map(|(_, r)| match &r.as_ref().expect("decrypted").body {
            Body::Text { text } => text.clone(),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(texts, ["first", "second"]);
    assert!(waiting.is_empty());

    // Once the sender is known, a key share settles its waiting messages directly.
    let m3 = s.send(&mut alice, conv, &[a, b], "third", 4);
    alice.on_member_removed(conv, b);
    let m4 = s.send(&mut alice, conv, &[a, b], "fourth (new session)", 5);
    assert_eq!(waiting.decrypt(&mut bob, &m4), Err(Undecryptable::NoKeyYet));
    assert!(
        waiting.decrypt(&mut bob, &m3).is_ok(),
        "m3's session is known"
    );
    let mut settled = Vec::new();
    for (u, d, p) in inbox_of(&mut s, &bob) {
        settled.extend(waiting.on_key_share(&mut bob, u, d, &p, 6).settled);
    }
    assert_eq!(settled.len(), 1);
    assert_eq!(settled[0].0.message_id, m4.message_id);
    assert!(settled[0].1.is_ok());
    assert!(waiting.is_empty());
}

#[test]
fn waiting_is_bounded_by_dropping_the_oldest_session() {
    let mut s = Server::default();
    let (a, b) = (UserId::random(), UserId::random());
    let mut alice = device(&mut s, a);
    let mut bob = device(&mut s, b);
    let conv = ConversationId::random();
    let old = s.send(&mut alice, conv, &[a, b], "old session", 1);
    alice.on_member_removed(conv, b);
    let new1 = s.send(&mut alice, conv, &[a, b], "new 1", 2);
    let new2 = s.send(&mut alice, conv, &[a, b], "new 2", 3);
    let mut waiting = WaitingForKeys::new(2);
    for m in [&old, &new1, &new2] {
        assert_eq!(waiting.decrypt(&mut bob, m), Err(Undecryptable::NoKeyYet));
    }
    assert_eq!(waiting.len(), 2, "the old session's message was dropped");
    refresh(&s, &mut bob, &[a]);
    let mut settled = Vec::new();
    for (u, d, p) in inbox_of(&mut s, &bob) {
        settled.extend(waiting.on_key_share(&mut bob, u, d, &p, 4).settled);
    }
    let ids: Vec<MessageId> = settled.iter().map(|(m, _)| m.message_id).collect();
    assert_eq!(ids, [new1.message_id, new2.message_id]);
    // The dropped one is still readable from history once its key is there.
    assert!(waiting.decrypt(&mut bob, &old).is_ok());
}

#[test]
fn device_list_shows_trust_and_fingerprints_match_the_devices_own() {
    let mut s = Server::default();
    let (a, b) = (UserId::random(), UserId::random());
    let mut alice = device(&mut s, a);
    let bob = device(&mut s, b);
    assert!(alice.device_list(b).is_empty());
    refresh(&s, &mut alice, &[a, b]);
    let list = alice.device_list(b);
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].device, bob.device_id());
    assert_eq!(list[0].fingerprint, bob.fingerprint());
    assert_eq!(list[0].trust, Trust::Unverified);
    assert!(!list[0].blocked);
    assert!(alice.mark_user_verified(b));
    assert_eq!(alice.device_list(b)[0].trust, Trust::Verified);
    assert!(alice.block_device(b, bob.device_id()));
    assert!(alice.device_list(b)[0].blocked);
    assert_eq!(alice.device_list(a)[0].fingerprint, alice.fingerprint());
}

#[test]
fn one_to_one_both_directions() {
    let mut s = Server::default();
    let (a, b) = (UserId::random(), UserId::random());
    let mut alice = device(&mut s, a);
    let mut bob = device(&mut s, b);
    let conv = ConversationId::random();
    let m1 = s.send(&mut alice, conv, &[a, b], "hi bob", 1);
    refresh(&s, &mut bob, &[a]);
    let ev = s.deliver(&mut bob, 2);
    assert!(
        matches!(ev.as_slice(), [CryptoEvent::RoomKeyReceived { .. }]),
        "{ev:?}"
    );
    assert_eq!(text_of(&mut bob, &m1).unwrap(), "hi bob");
    // Alice reads her own message (history) with her own inbound copy.
    assert_eq!(text_of(&mut alice, &m1).unwrap(), "hi bob");
    let m2 = s.send(&mut bob, conv, &[a, b], "hi alice", 3);
    s.deliver(&mut alice, 4);
    let d = alice.decrypt(&m2).unwrap();
    assert_eq!(d.body, Body::text("hi alice"));
    assert_eq!((d.sender_user, d.sender_device), (b, bob.device_id()));
    assert_eq!(d.trust, Trust::Unverified);
}

#[test]
fn five_member_group_every_device_incl_senders_second_device() {
    let mut s = Server::default();
    let users: Vec<UserId> = (0..5).map(|_| UserId::random()).collect();
    let mut devices: Vec<CryptoMachine> = users.iter().map(|u| device(&mut s, *u)).collect();
    let mut alice2 = device(&mut s, users[0]);
    let conv = ConversationId::random();
    let msg = s.send(&mut devices[0], conv, &users, "hello group", 10);
    for m in devices
        .iter_mut()
        .skip(1)
        .chain(std::iter::once(&mut alice2))
    {
        refresh(&s, m, &users);
        s.deliver(m, 11);
        assert_eq!(text_of(m, &msg).unwrap(), "hello group");
    }
    // Every member answers; everyone reads everything.
    let mut msgs = vec![msg];
    for (i, sender) in devices.iter_mut().enumerate().skip(1) {
        let m = s.send(sender, conv, &users, &format!("from {i}"), 20 + i as u64);
        msgs.push(m);
    }
    for m in devices.iter_mut().chain(std::iter::once(&mut alice2)) {
        let ev = s.deliver(m, 30);
        for (i, msg) in msgs.iter().enumerate() {
            let t = text_of(m, msg)
                .unwrap_or_else(|e| panic!("msg {i} on {:?}: {e:?}; {ev:?}", m.device_id()));
            assert!(t == "hello group" || t == format!("from {i}"));
        }
    }
}

#[test]
fn offline_device_decrypts_after_it_processes_the_share() {
    let mut s = Server::default();
    let (a, b) = (UserId::random(), UserId::random());
    let mut alice = device(&mut s, a);
    let mut bob = device(&mut s, b);
    let conv = ConversationId::random();
    let msg = s.send(&mut alice, conv, &[a, b], "while you were away", 1);
    refresh(&s, &mut bob, &[a]);
    // The message arrives before the inbox is processed: NoKeyYet, not silent.
    assert_eq!(text_of(&mut bob, &msg), Err(Undecryptable::NoKeyYet));
    let ev = s.deliver(&mut bob, 5);
    let Some(CryptoEvent::RoomKeyReceived { conversation, .. }) = ev.first() else {
        panic!("{ev:?}");
    };
    assert_eq!(*conversation, conv);
    assert_eq!(text_of(&mut bob, &msg).unwrap(), "while you were away");
}

#[test]
fn removed_member_cannot_decrypt_after_removal() {
    let mut s = Server::default();
    let (a, b, c) = (UserId::random(), UserId::random(), UserId::random());
    let mut alice = device(&mut s, a);
    let mut bob = device(&mut s, b);
    let mut carol = device(&mut s, c);
    let conv = ConversationId::random();
    let before = s.send(&mut alice, conv, &[a, b, c], "all three", 1);
    for m in [&mut bob, &mut carol] {
        refresh(&s, m, &[a]);
        s.deliver(m, 2);
        assert_eq!(text_of(m, &before).unwrap(), "all three");
    }
    alice.on_member_removed(conv, c);
    let after = s.send(&mut alice, conv, &[a, b], "carol is gone", 3);
    s.deliver(&mut bob, 4);
    assert_eq!(text_of(&mut bob, &after).unwrap(), "carol is gone");
    // Carol, with her real keys and every share the server ever stored for her.
    assert!(s.deliver(&mut carol, 4).is_empty());
    assert_eq!(text_of(&mut carol, &after), Err(Undecryptable::NoKeyYet));
    assert_eq!(text_of(&mut carol, &before).unwrap(), "all three");

    // Removal by omission from the member list rotates too.
    let mut dave = device(&mut s, UserId::random());
    let d = dave.user_id();
    let m1 = s.send(&mut alice, conv, &[a, b, d], "dave in", 5);
    refresh(&s, &mut dave, &[a]);
    s.deliver(&mut dave, 6);
    assert_eq!(text_of(&mut dave, &m1).unwrap(), "dave in");
    let m2 = s.send(&mut alice, conv, &[a, b], "dave out", 7);
    s.deliver(&mut dave, 8);
    assert_eq!(text_of(&mut dave, &m2), Err(Undecryptable::NoKeyYet));
}

#[test]
fn revoked_device_rotates_the_session() {
    let mut s = Server::default();
    let (a, b) = (UserId::random(), UserId::random());
    let mut alice = device(&mut s, a);
    let mut bob = device(&mut s, b);
    let mut bob_old = device(&mut s, b);
    let conv = ConversationId::random();
    let m1 = s.send(&mut alice, conv, &[a, b], "both bobs", 1);
    refresh(&s, &mut bob_old, &[a]);
    s.deliver(&mut bob_old, 2);
    assert_eq!(text_of(&mut bob_old, &m1).unwrap(), "both bobs");
    s.revoke((b, bob_old.device_id()));
    let ev = refresh(&s, &mut alice, &[b]);
    assert!(ev.contains(&TrustEvent::DeviceRemoved {
        user: b,
        device: bob_old.device_id()
    }));
    let m2 = s.send(&mut alice, conv, &[a, b], "only the new bob", 3);
    s.deliver(&mut bob_old, 4);
    assert_eq!(text_of(&mut bob_old, &m2), Err(Undecryptable::NoKeyYet));
    refresh(&s, &mut bob, &[a]);
    s.deliver(&mut bob, 4);
    assert_eq!(text_of(&mut bob, &m2).unwrap(), "only the new bob");
}

#[test]
fn rotation_after_message_count_and_time() {
    let mut s = Server::default();
    let (a, b) = (UserId::random(), UserId::random());
    let config = CryptoConfig {
        rotation_messages: 3,
        rotation_ms: 1_000,
        ..cfg()
    };
    let mut alice = device_with(&mut s, a, config);
    let mut bob = device(&mut s, b);
    refresh(&s, &mut bob, &[a]);
    let conv = ConversationId::random();
    let mut ids = Vec::new();
    for i in 0..4 {
        let msg = s.send(&mut alice, conv, &[a, b], "x", 10 + i);
        s.deliver(&mut bob, 20);
        assert_eq!(text_of(&mut bob, &msg).unwrap(), "x");
        ids.push(bob.decrypt(&msg).unwrap().session_id);
    }
    assert_eq!(ids[0], ids[2]);
    assert_ne!(ids[2], ids[3], "rotates after 3 messages");
    let late = s.send(&mut alice, conv, &[a, b], "y", 5_000);
    s.deliver(&mut bob, 5_001);
    assert_ne!(
        bob.decrypt(&late).unwrap().session_id,
        ids[3],
        "rotates after 1 s"
    );
}

#[test]
fn tampered_messages_are_rejected() {
    let mut s = Server::default();
    let (a, b) = (UserId::random(), UserId::random());
    let mut alice = device(&mut s, a);
    let mut bob = device(&mut s, b);
    let conv = ConversationId::random();
    let msg = s.send(&mut alice, conv, &[a, b], "genuine", 1);
    refresh(&s, &mut bob, &[a]);
    s.deliver(&mut bob, 2);

    // One flipped bit inside the Megolm ciphertext (v2 binary payload: the AES ciphertext
    // ends before the 8-byte MAC and the 64-byte signature).
    assert_eq!(msg.payload[0], 0x02, "v2 binary envelope");
    for at in [40, msg.payload.len() - 72 - 1] {
        let mut t = msg.clone();
        t.payload[at] ^= 0x01;
        assert_eq!(
            text_of(&mut bob, &t),
            Err(Undecryptable::Tampered),
            "byte {at}"
        );
    }
    // A server that re-labels the sender device, or moves the message to another conversation.
    let mut t = msg.clone();
    t.sender_device = DeviceId::random();
    assert_eq!(text_of(&mut bob, &t), Err(Undecryptable::Tampered));
    let mut t = msg.clone();
    t.conversation = ConversationId::random();
    assert_eq!(text_of(&mut bob, &t), Err(Undecryptable::WrongConversation));
    let mut t = msg.clone();
    t.content_type = "text".into();
    assert_eq!(text_of(&mut bob, &t), Err(Undecryptable::Unsupported));
    // The genuine message still decrypts afterwards.
    assert_eq!(text_of(&mut bob, &msg).unwrap(), "genuine");
}

#[test]
fn replayed_index_with_another_message_id_is_rejected() {
    let mut s = Server::default();
    let (a, b) = (UserId::random(), UserId::random());
    let mut alice = device(&mut s, a);
    let mut bob = device(&mut s, b);
    let conv = ConversationId::random();
    let msg = s.send(&mut alice, conv, &[a, b], "pay 10", 1);
    refresh(&s, &mut bob, &[a]);
    s.deliver(&mut bob, 2);
    assert_eq!(text_of(&mut bob, &msg).unwrap(), "pay 10");
    // Re-delivery of the same message (resume replay) is fine.
    assert_eq!(text_of(&mut bob, &msg).unwrap(), "pay 10");
    let mut replay = msg.clone();
    replay.message_id = MessageId::random();
    replay.seq += 100;
    assert_eq!(text_of(&mut bob, &replay), Err(Undecryptable::Replayed));
}

#[test]
fn exhausted_one_time_keys_fall_back_to_the_fallback_key() {
    let mut s = Server::default();
    let b = UserId::random();
    let small = CryptoConfig {
        one_time_keys_target: 2,
        ..cfg()
    };
    let mut bob = device_with(&mut s, b, small);
    assert_eq!(s.otk_count((b, bob.device_id())), 2);
    let conv = ConversationId::random();
    let mut senders: Vec<CryptoMachine> =
        (0..4).map(|_| device(&mut s, UserId::random())).collect();
    let mut msgs = Vec::new();
    for (i, m) in senders.iter_mut().enumerate() {
        let members = [m.user_id(), b];
        msgs.push(s.send(m, conv, &members, &format!("sender {i}"), 1));
    }
    assert_eq!(
        s.otk_count((b, bob.device_id())),
        0,
        "two claims used the OTKs, two the fallback"
    );
    let users: Vec<UserId> = senders.iter().map(|m| m.user_id()).collect();
    refresh(&s, &mut bob, &users);
    let ev = s.deliver(&mut bob, 2);
    assert_eq!(ev.len(), 4, "{ev:?}");
    for (i, msg) in msgs.iter().enumerate() {
        assert_eq!(text_of(&mut bob, msg).unwrap(), format!("sender {i}"));
    }
    // And bob tops up: the next publish carries new one-time keys.
    let left = s.otk_count((b, bob.device_id()));
    let keys = bob.keys_to_publish(left).expect("top up");
    assert_eq!(keys.one_time_keys.len(), 2);
}

#[test]
fn identity_change_is_flagged_and_changes_the_safety_number() {
    let mut s = Server::default();
    let (a, b) = (UserId::random(), UserId::random());
    let mut alice = device(&mut s, a);
    let mut bob = device(&mut s, b);
    refresh(&s, &mut alice, &[b]);
    refresh(&s, &mut bob, &[a]);
    let sn_a = alice.safety_number(b).unwrap();
    let sn_b = bob.safety_number(a).unwrap();
    assert_eq!(sn_a, sn_b, "same on both sides");
    assert_eq!(sn_a.split(' ').count(), 12);
    assert!(
        sn_a.split(' ')
            .all(|g| g.len() == 5 && g.bytes().all(|c| c.is_ascii_digit()))
    );
    assert!(alice.mark_user_verified(b));
    assert_eq!(
        alice.device_trust(b, bob.device_id()),
        Some(Trust::Verified)
    );

    let conv = ConversationId::random();
    let old = s.send(&mut bob, conv, &[a, b], "before reinstall", 1);
    s.deliver(&mut alice, 2);
    assert_eq!(text_of(&mut alice, &old).unwrap(), "before reinstall");

    // Bob reinstalls: same device id, new keys (the server replaces them).
    let mut bob2 = CryptoMachine::new(b, bob.device_id(), cfg()).unwrap();
    s.publish(&mut bob2);
    let ev = refresh(&s, &mut alice, &[b]);
    assert_eq!(
        ev,
        vec![TrustEvent::IdentityChanged {
            user: b,
            device: bob.device_id()
        }]
    );
    assert_eq!(alice.device_trust(b, bob.device_id()), Some(Trust::Changed));
    refresh(&s, &mut bob2, &[a]);
    let sn_a2 = alice.safety_number(b).unwrap();
    assert_ne!(sn_a2, sn_a, "safety number changes with the key");
    assert_eq!(sn_a2, bob2.safety_number(a).unwrap());
    // History under the old identity stays readable; new messages carry the Changed trust.
    assert_eq!(text_of(&mut alice, &old).unwrap(), "before reinstall");
    let new = s.send(&mut bob2, conv, &[a, b], "after reinstall", 3);
    s.deliver(&mut alice, 4);
    assert_eq!(alice.decrypt(&new).unwrap().trust, Trust::Changed);
    // A new device of a known user is flagged too.
    let bob3 = device(&mut s, b);
    let ev = refresh(&s, &mut alice, &[b]);
    assert_eq!(
        ev,
        vec![TrustEvent::NewDevice {
            user: b,
            device: bob3.device_id()
        }]
    );
}

#[test]
fn share_under_a_foreign_identity_is_untrusted() {
    let mut s = Server::default();
    let (a, b, m) = (UserId::random(), UserId::random(), UserId::random());
    let mut alice = device(&mut s, a);
    let bob = device(&mut s, b);
    let mut mallory = device(&mut s, m);
    refresh(&s, &mut alice, &[b]);
    let conv = ConversationId::random();
    let msg = s.send(&mut mallory, conv, &[m, a], "i am bob", 1);
    // A malicious server relabels mallory's share and message as bob's.
    let shares = s.inbox.remove(&(a, alice.device_id())).unwrap();
    for (_, _, payload) in shares {
        let ev = alice.on_key_share(b, bob.device_id(), &payload, 2);
        assert_eq!(
            ev,
            vec![CryptoEvent::UntrustedKey {
                user: b,
                device: bob.device_id()
            }]
        );
    }
    let mut forged = msg.clone();
    forged.sender_user = b;
    forged.sender_device = bob.device_id();
    assert_eq!(text_of(&mut alice, &forged), Err(Undecryptable::NoKeyYet));
}

#[test]
fn blocked_device_gets_withheld_and_knows_why() {
    let mut s = Server::default();
    let (a, b) = (UserId::random(), UserId::random());
    let mut alice = device(&mut s, a);
    let mut bob = device(&mut s, b);
    refresh(&s, &mut alice, &[b]);
    assert!(alice.block_device(b, bob.device_id()));
    let conv = ConversationId::random();
    let msg = s.send(&mut alice, conv, &[a, b], "not for you", 1);
    refresh(&s, &mut bob, &[a]);
    let ev = s.deliver(&mut bob, 2);
    assert!(matches!(&ev[..], [CryptoEvent::Withheld { reason, .. }] if reason == "blocked"));
    assert_eq!(
        text_of(&mut bob, &msg),
        Err(Undecryptable::Withheld("blocked".into()))
    );
}

#[test]
fn backup_restore_on_a_new_device_reads_history_and_wrong_passphrase_is_clear() {
    let mut s = Server::default();
    let (a, b) = (UserId::random(), UserId::random());
    let mut alice = device(&mut s, a);
    let mut bob = device(&mut s, b);
    let conv = ConversationId::random();
    let m1 = s.send(&mut alice, conv, &[a, b], "history one", 1);
    refresh(&s, &mut bob, &[a]);
    s.deliver(&mut bob, 2);
    let m2 = s.send(&mut bob, conv, &[a, b], "history two", 3);
    s.deliver(&mut alice, 4);

    let (version, meta) = alice
        .backup_create("correct horse battery staple", 5)
        .unwrap();
    let entries = alice.backup_export_sessions().unwrap();
    assert_eq!(entries.len(), 2, "own session + bob's");
    alice.backup_mark_uploaded(
        &entries
            .iter()
            .map(|e| e.session_id.clone())
            .collect::<Vec<_>>(),
    );
    assert!(
        alice.backup_export_sessions().unwrap().is_empty(),
        "only new sessions"
    );

    let mut alice_new = device(&mut s, a);
    refresh(&s, &mut alice_new, &[a, b]);
    assert_eq!(text_of(&mut alice_new, &m1), Err(Undecryptable::NoKeyYet));
    let wrong =
        alice_new.backup_restore("correct horse battery stable", &version, &meta, &entries, 6);
    assert!(
        matches!(wrong, Err(CryptoError::WrongPassphrase)),
        "{wrong:?}"
    );
    // Another version string (meta moved between backups) fails the same way.
    let moved = alice_new.backup_unlock("correct horse battery staple", "v-other", &meta);
    assert!(matches!(moved, Err(CryptoError::WrongPassphrase)));
    let report = alice_new
        .backup_restore("correct horse battery staple", &version, &meta, &entries, 6)
        .unwrap();
    assert_eq!((report.imported, report.invalid), (2, 0));
    assert_eq!(text_of(&mut alice_new, &m1).unwrap(), "history one");
    assert_eq!(text_of(&mut alice_new, &m2).unwrap(), "history two");
    // A blob moved to another session id does not open.
    let mut moved = entries[0].clone();
    moved.session_id = entries[1].session_id.clone();
    let r = alice_new.backup_import(&[moved], 7).unwrap();
    assert_eq!(r.invalid, 1);
}

#[test]
fn pickle_round_trip_keeps_everything_working() {
    let mut s = Server::default();
    let (a, b) = (UserId::random(), UserId::random());
    let mut alice = device(&mut s, a);
    let mut bob = device(&mut s, b);
    let conv = ConversationId::random();
    let m1 = s.send(&mut alice, conv, &[a, b], "one", 1);
    refresh(&s, &mut bob, &[a]);
    s.deliver(&mut bob, 2);
    assert_eq!(text_of(&mut bob, &m1).unwrap(), "one");
    alice.mark_user_verified(a);

    let key = [7u8; 32];
    let mut store = MemoryCryptoStore::default();
    alice.save_to(&mut store, &key).unwrap();
    let bob_bytes = bob.pickle(&key).unwrap();
    assert!(matches!(
        CryptoMachine::from_pickle(&bob_bytes, &[8u8; 32]),
        Err(CryptoError::BadPickle)
    ));
    let mut flipped = bob_bytes.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    assert!(matches!(
        CryptoMachine::from_pickle(&flipped, &key),
        Err(CryptoError::BadPickle)
    ));
    let mut alice = CryptoMachine::load_from(&store, &key).unwrap().unwrap();
    let mut bob = CryptoMachine::from_pickle(&bob_bytes, &key).unwrap();
    drop(bob_bytes);

    // Same outbound session continues (no new share needed), replay records survived.
    let m2 = s.send(&mut alice, conv, &[a, b], "two", 3);
    assert!(
        s.deliver(&mut bob, 4).is_empty(),
        "no new key needed after reload"
    );
    assert_eq!(text_of(&mut bob, &m2).unwrap(), "two");
    let mut replay = m1.clone();
    replay.message_id = MessageId::random();
    assert_eq!(text_of(&mut bob, &replay), Err(Undecryptable::Replayed));
    // Olm sessions survived: bob answers over his existing session.
    let m3 = s.send(&mut bob, conv, &[a, b], "three", 5);
    s.deliver(&mut alice, 6);
    assert_eq!(text_of(&mut alice, &m3).unwrap(), "three");
    assert_eq!(alice.safety_number(b), bob.safety_number(a));
    assert!(
        alice.keys_to_publish(50).is_none(),
        "publish state survived"
    );
}

#[test]
fn forged_device_keys_are_rejected() {
    let mut s = Server::default();
    let b = UserId::random();
    let _bob = device(&mut s, b);
    let mut keys = s.query(b).remove(0);
    assert!(verify_device_keys(&keys).is_ok());
    keys.identity_key[0] ^= 1;
    assert!(matches!(
        verify_device_keys(&keys),
        Err(CryptoError::InvalidKeys { .. })
    ));
    let mut alice = device(&mut s, UserId::random());
    let ev = alice.on_device_list(b, &[keys], 1).unwrap();
    assert!(matches!(ev.as_slice(), [TrustEvent::InvalidKeys { .. }]));
    assert!(alice.devices_of(b).is_empty());
    // A claimed one-time key re-signed as nothing (signature bytes changed) is refused.
    let mut bundle = s.claim((b, _bob.device_id())).unwrap();
    refresh(&s, &mut alice, &[b]);
    bundle.one_time_keys[0][40] ^= 1;
    let problems = alice.on_claimed(&[bundle]);
    assert_eq!(problems.len(), 1);
}

#[test]
fn limits_are_enforced_with_clear_errors() {
    let mut s = Server::default();
    let (a, b) = (UserId::random(), UserId::random());
    let mut alice = device(&mut s, a);
    let bob = device(&mut s, b);
    let one = s.query(b).remove(0);
    let too_many = vec![one; tern_core::crypto::MAX_DEVICES_PER_USER + 1];
    assert!(matches!(
        alice.on_device_list(b, &too_many, 1),
        Err(CryptoError::TooManyDevices { .. })
    ));
    let conv = ConversationId::random();
    assert!(matches!(
        alice.encrypt(conv, &Body::text("x"), 1),
        Err(CryptoError::UnknownConversation(_))
    ));
    alice.prepare(conv, &[a, b], 1).unwrap();
    let big = "x".repeat(tern_core::crypto::MAX_CONTENT_BYTES);
    assert!(matches!(
        alice.encrypt(conv, &Body::text(big), 1),
        Err(CryptoError::TooLarge { .. })
    ));
    let oversized = vec![1u8; tern_core::crypto::MAX_KEY_SHARE_BYTES + 1];
    let ev = alice.on_key_share(b, bob.device_id(), &oversized, 1);
    assert!(matches!(ev.as_slice(), [CryptoEvent::Rejected { .. }]));
    let bad = CryptoConfig {
        rotation_messages: 0,
        ..cfg()
    };
    assert!(matches!(
        CryptoMachine::new(a, DeviceId::random(), bad),
        Err(CryptoError::BadConfig(_))
    ));
}
