//! End-to-end encryption against the real server over both transports: real vodozemac
//! machines on every device (`tern_sdk::E2e`), the server's key directory, device inboxes and
//! key backup. The server only ever carries ciphertext; these tests check that every member
//! device can read, and that nobody else can.

mod common;

use std::collections::HashMap;

use common::*;
use tern_core::crypto::{CryptoConfig, KdfParams, MEGOLM_CONTENT_TYPE, TrustEvent, Undecryptable};
use tern_sdk::e2e::TEXT_CONTENT_TYPE;
use tern_sdk::tern_wire::ids::{ConversationId, DeviceId, MessageId, UserId};
use tern_sdk::tern_wire::msg::{ClientMessage, Message, ServerMessage};
use tern_sdk::{Connection, E2e, Event, TransportPref};

const TRANSPORTS: [TransportPref; 2] = [TransportPref::WebSocket, TransportPref::WebTransport];

fn config() -> CryptoConfig {
    CryptoConfig {
        backup_kdf: KdfParams::insecure_for_tests(),
        ..CryptoConfig::default()
    }
}

/// One device: its connection and its crypto machine.
struct Device {
    name: String,
    id: DeviceId,
    conn: Connection,
    e2e: E2e,
    /// Decrypted messages by message id.
    read: HashMap<MessageId, Message>,
    /// Raw deliveries, as the server sent them.
    raw: Vec<Message>,
    undecryptable: Vec<(Message, Undecryptable)>,
    trust: Vec<TrustEvent>,
    /// Other crypto notices (refused or unusable key shares), for failure messages.
    key_notices: Vec<tern_core::crypto::CryptoEvent>,
    events: Vec<String>,
}

impl Device {
    /// A new device of `user` (fresh identity), connected with `token`, keys published,
    /// inbox and replay processed.
    async fn open(
        server: &TestServer,
        transport: TransportPref,
        user: &TestUser,
        token: &str,
    ) -> Device {
        let id = DeviceId::random();
        let e2e = E2e::in_memory(user.id, id, config()).expect("crypto machine");
        Self::open_with(server, transport, &user.name, user.id, token, id, e2e).await
    }

    async fn open_with(
        server: &TestServer,
        transport: TransportPref,
        name: &str,
        _user: UserId,
        token: &str,
        id: DeviceId,
        e2e: E2e,
    ) -> Device {
        let conn = Connection::connect(&server.config(transport), token, id, &[])
            .await
            .expect("connect");
        let mut device = Device {
            name: name.to_string(),
            id,
            conn,
            e2e,
            read: HashMap::new(),
            raw: Vec::new(),
            undecryptable: Vec::new(),
            trust: Vec::new(),
            key_notices: Vec::new(),
            events: Vec::new(),
        };
        let left = device.conn.welcome().one_time_keys_left;
        device
            .e2e
            .publish_keys(&device.conn, left)
            .await
            .expect("publish keys");
        device.pump_until_synced().await;
        device
    }

    async fn pump_until_synced(&mut self) {
        loop {
            if matches!(self.next().await, Event::SyncComplete) {
                return;
            }
        }
    }

    /// Handles one event (key shares, deliveries) and returns it.
    async fn next(&mut self) -> Event {
        let event = next(&mut self.conn).await;
        self.handle(event.clone()).await;
        event
    }

    async fn handle(&mut self, event: Event) {
        self.events
            .push(format!("{event:?}").chars().take(120).collect());
        match &event {
            Event::Deliver(m) => self.take(m.clone()),
            Event::Other(m) => {
                let (_, ready) = self.e2e.on_server_message(m).expect("crypto event");
                self.absorb(ready);
                for ack in self.e2e.take_inbox_ack() {
                    self.conn.send_message(&ack).await.expect("ack inbox");
                }
            }
            _ => {}
        }
        self.e2e
            .publish_if_low(&self.conn)
            .await
            .expect("one-time key top-up");
        if self.e2e.has_unknown_senders() {
            let ready = self
                .e2e
                .resolve_unknown_senders(&self.conn)
                .await
                .expect("query unknown senders");
            self.absorb(ready);
        }
        self.collect_notices();
    }

    fn collect_notices(&mut self) {
        for n in self.e2e.take_notices() {
            match n {
                tern_sdk::CryptoNotice::Trust(t) => self.trust.push(t),
                tern_sdk::CryptoNotice::Key(k) => self.key_notices.push(k),
            }
        }
    }

    fn absorb(&mut self, ready: Vec<Result<Message, tern_sdk::UndecryptableMessage>>) {
        for r in ready {
            match r {
                Ok(m) => {
                    self.undecryptable
                        .retain(|(u, _)| u.message_id != m.message_id);
                    self.read.insert(m.message_id, m);
                }
                Err(u) => self.undecryptable.push((*u.message, u.reason)),
            }
        }
    }

    fn take(&mut self, m: Message) {
        self.raw.push(m.clone());
        match self.e2e.decrypt(&m) {
            Ok(plain) => {
                self.read.insert(plain.message_id, plain);
            }
            Err(u) => self.undecryptable.push((*u.message, u.reason)),
        }
    }

    /// Pumps events until `message_id` was decrypted.
    async fn until_read(&mut self, message_id: MessageId) -> Message {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !self.read.contains_key(&message_id) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.conn.next_event()).await {
                Ok(Some(event)) => self.handle(event).await,
                Ok(None) => panic!("{}: connection closed", self.name),
                Err(_) => panic!(
                    "{}: message {message_id} not read in time; undecryptable: {:?}, raw: {}, \
                     key notices: {:?}, events: {:?}",
                    self.name,
                    self.undecryptable
                        .iter()
                        .map(|(m, r)| (m.message_id, r))
                        .collect::<Vec<_>>(),
                    self.raw.len(),
                    self.key_notices,
                    self.events
                ),
            }
        }
        self.read[&message_id].clone()
    }

    async fn learn_members(&mut self, http: &tern_sdk::HttpApi) {
        for c in http.conversations().await.expect("conversations") {
            self.e2e.set_members(
                c.conversation_id,
                c.members.iter().map(|m| m.user_id).collect(),
            );
        }
    }

    /// Encrypts and sends `text`; returns the stored message's id.
    async fn send(&mut self, conversation: ConversationId, text: &str) -> MessageId {
        let (content_type, payload) = self
            .e2e
            .encrypt_outgoing(&self.conn, conversation, TEXT_CONTENT_TYPE, text.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("{} encrypts: {e}", self.name));
        assert_eq!(content_type, MEGOLM_CONTENT_TYPE);
        assert!(
            !payload.windows(text.len()).any(|w| w == text.as_bytes()),
            "the payload must not contain the plaintext"
        );
        let receipt = self
            .conn
            .send(conversation, rand_id(), &content_type, payload)
            .await
            .expect("send");
        receipt.message_id
    }
}

fn rand_id() -> u128 {
    DeviceId::random().0
}

fn body(m: &Message) -> String {
    assert_eq!(m.content_type, TEXT_CONTENT_TYPE);
    String::from_utf8(m.payload.clone()).expect("utf-8")
}

/// A second login of the same user (its own token, as a second device would have).
async fn second_login(server: &TestServer, user: &TestUser) -> String {
    let mut http = server.http();
    http.login(&user.name, PASSWORD).await.expect("login").token
}

#[tokio::test]
async fn direct_and_group_messages_decrypt_on_every_member_device() {
    for transport in TRANSPORTS {
        let server = TestServer::start().await;
        let (alice, bob, direct) = alice_and_bob(&server).await;
        let others = [
            user(&server, "carol").await,
            user(&server, "dave").await,
            user(&server, "erin").await,
        ];
        let members: Vec<&TestUser> = std::iter::once(&bob).chain(others.iter()).collect();
        let group = group_with_members(&alice, "five", &members).await;

        let mut a1 = Device::open(&server, transport, &alice, &alice.token).await;
        let token2 = second_login(&server, &alice).await;
        let mut a2 = Device::open(&server, transport, &alice, &token2).await;
        let mut b = Device::open(&server, transport, &bob, &bob.token).await;
        let mut rest = Vec::new();
        for u in &others {
            rest.push(Device::open(&server, transport, u, &u.token).await);
        }
        a1.learn_members(&alice.http).await;

        let hello = a1.send(direct, "hello bob, secretly").await;
        assert_eq!(body(&b.until_read(hello).await), "hello bob, secretly");
        assert_eq!(body(&a2.until_read(hello).await), "hello bob, secretly");
        assert!(b.raw.iter().all(|m| m.content_type == MEGOLM_CONTENT_TYPE));

        let news = a1.send(group, "group news").await;
        for d in std::iter::once(&mut b)
            .chain(rest.iter_mut())
            .chain([&mut a2])
        {
            assert_eq!(body(&d.until_read(news).await), "group news", "{}", d.name);
        }
        // And back: Bob answers in the group, Alice's first device reads it.
        b.learn_members(&bob.http).await;
        let reply = b.send(group, "bob's reply").await;
        assert_eq!(body(&a1.until_read(reply).await), "bob's reply");
        for d in &rest {
            assert!(
                d.undecryptable.is_empty(),
                "{transport:?}: {:?}",
                d.undecryptable
            );
        }
    }
}

#[tokio::test]
async fn a_device_offline_when_the_key_was_shared_decrypts_after_reconnecting() {
    for transport in TRANSPORTS {
        let server = TestServer::start().await;
        let (alice, bob, direct) = alice_and_bob(&server).await;
        let mut a = Device::open(&server, transport, &alice, &alice.token).await;
        let b = Device::open(&server, transport, &bob, &bob.token).await;
        // Bob's device goes offline with its keys published.
        let (bob_device, bob_e2e) = (b.id, b.e2e);
        b.conn.close().await;

        a.learn_members(&alice.http).await;
        let id = a.send(direct, "while you were away").await;

        // Back online: the key share comes out of the inbox before the replay, so the message
        // decrypts at once.
        let mut b = Device::open_with(
            &server, transport, "bob", bob.id, &bob.token, bob_device, bob_e2e,
        )
        .await;
        assert_eq!(body(&b.until_read(id).await), "while you were away");
        assert!(b.undecryptable.is_empty(), "{:?}", b.undecryptable);

        // Acknowledged: the share is not delivered again on the next connection.
        let (bob_device, bob_e2e) = (b.id, b.e2e);
        b.conn.close().await;
        let mut conn = connect(&server, transport, &bob, bob_device).await;
        loop {
            match next(&mut conn).await {
                Event::SyncComplete => break,
                Event::Other(ServerMessage::KeyShare { .. }) => {
                    panic!("an acknowledged key share came back")
                }
                _ => {}
            }
        }
        drop(bob_e2e);
    }
}

#[tokio::test]
async fn a_removed_member_cannot_decrypt_what_is_sent_after_its_removal() {
    for transport in TRANSPORTS {
        let server = TestServer::start().await;
        let alice = user(&server, "alice").await;
        let bob = user(&server, "bob").await;
        let mallory = user(&server, "mallory").await;
        let group = group_with_members(&alice, "team", &[&bob, &mallory]).await;
        let mut a = Device::open(&server, transport, &alice, &alice.token).await;
        let mut b = Device::open(&server, transport, &bob, &bob.token).await;
        let mut m = Device::open(&server, transport, &mallory, &mallory.token).await;
        a.learn_members(&alice.http).await;

        let before = a.send(group, "before").await;
        assert_eq!(body(&m.until_read(before).await), "before");
        assert_eq!(body(&b.until_read(before).await), "before");

        a.conn
            .request(|request_id| ClientMessage::RemoveMember {
                request_id,
                conversation: group,
                user: mallory.id,
            })
            .await
            .expect("remove mallory");
        // The client learns of the removal (MemberRemoved / the member list) and rotates.
        a.e2e.on_member_removed(group, mallory.id).expect("rotate");
        let after = a.send(group, "after mallory left").await;
        let at_bob = b.until_read(after).await;
        assert_eq!(body(&at_bob), "after mallory left");

        // Mallory's real keys, given the ciphertext Bob received: no key for it.
        let raw = b
            .raw
            .iter()
            .find(|x| x.message_id == after)
            .expect("raw copy")
            .clone();
        match m.e2e.decrypt(&raw) {
            Err(u) => assert_eq!(u.reason, Undecryptable::NoKeyYet, "{transport:?}"),
            Ok(plain) => panic!("a removed member decrypted {:?}", plain.payload),
        }
        // Nor did any key share for the new session reach her inbox.
        match tokio::time::timeout(std::time::Duration::from_millis(500), m.next()).await {
            Err(_) => {}
            Ok(event) => assert!(
                !matches!(event, Event::Other(ServerMessage::KeyShare { .. })),
                "a key share reached the removed member"
            ),
        }
        assert!(!m.read.contains_key(&after));
    }
}

#[tokio::test]
async fn tampered_ciphertext_and_replayed_index_are_rejected() {
    for transport in TRANSPORTS {
        let server = TestServer::start().await;
        let (alice, bob, direct) = alice_and_bob(&server).await;
        let mut a = Device::open(&server, transport, &alice, &alice.token).await;
        let mut b = Device::open(&server, transport, &bob, &bob.token).await;
        a.learn_members(&alice.http).await;
        let id = a.send(direct, "authentic").await;
        b.until_read(id).await;
        let raw = b
            .raw
            .iter()
            .find(|x| x.message_id == id)
            .expect("raw")
            .clone();

        // One byte of the Megolm ciphertext changed. v2 binary payload: [0x02][32-byte
        // session id][Megolm message], which ends with the AES ciphertext, an 8-byte MAC and
        // a 64-byte signature: the last AES byte.
        let mut tampered = raw.clone();
        assert_eq!(tampered.payload[0], 0x02, "v2 binary envelope");
        let at = tampered.payload.len() - 72 - 1;
        tampered.payload[at] ^= 0x01;
        tampered.message_id = MessageId::new_v7(1);
        let err = b.e2e.decrypt(&tampered).expect_err("tampered must fail");
        assert_eq!(err.reason, Undecryptable::Tampered);

        // The same ciphertext under another message id: a replayed Megolm index.
        let mut replayed = raw.clone();
        replayed.message_id = MessageId::new_v7(2);
        let err = b.e2e.decrypt(&replayed).expect_err("replay must fail");
        assert_eq!(err.reason, Undecryptable::Replayed);

        // Claimed to come from another device of Alice: refused too.
        let mut forged = raw.clone();
        forged.sender_device = DeviceId::random();
        forged.message_id = MessageId::new_v7(3);
        assert!(b.e2e.decrypt(&forged).is_err());

        // The authentic copy again (history re-read) still decrypts.
        assert_eq!(
            body(&b.e2e.decrypt(&raw).expect("same message again")),
            "authentic"
        );
    }
}

#[tokio::test]
async fn a_new_device_restores_the_backup_and_reads_history_wrong_passphrase_refused() {
    for transport in TRANSPORTS {
        let server = TestServer::start().await;
        let (alice, bob, direct) = alice_and_bob(&server).await;
        let mut a = Device::open(&server, transport, &alice, &alice.token).await;
        let mut b = Device::open(&server, transport, &bob, &bob.token).await;
        a.learn_members(&alice.http).await;
        let first = a.send(direct, "history one").await;
        b.until_read(first).await;
        b.learn_members(&bob.http).await;
        let second = b.send(direct, "history two").await;
        a.until_read(second).await;

        let uploaded = b
            .e2e
            .create_backup(&bob.http, "correct horse recovery")
            .await
            .expect("backup");
        assert!(uploaded >= 2, "both sessions backed up, got {uploaded}");

        // A new device of Bob (no key shares for old sessions reach it).
        let token2 = second_login(&server, &bob).await;
        let mut bob2_http = server.http().with_token(&token2);
        let mut b2 = Device::open(&server, transport, &bob, &token2).await;
        let history = bob2_http
            .history(direct, tern_sdk::HistoryQuery::default())
            .await
            .expect("history");
        assert_eq!(history.messages.len(), 2);
        for m in &history.messages {
            let msg = tern_sdk::message_from_view(direct, m).expect("message");
            let err = b2.e2e.decrypt(&msg).expect_err("no key before the restore");
            assert_eq!(err.reason, Undecryptable::NoKeyYet);
        }

        let wrong = b2
            .e2e
            .restore_backup(&bob2_http, "wrong passphrase")
            .await
            .expect_err("wrong passphrase");
        assert!(E2e::is_wrong_passphrase(&wrong), "{wrong}");

        let report = b2
            .e2e
            .restore_backup(&bob2_http, "correct horse recovery")
            .await
            .expect("restore");
        assert!(report.imported >= 2, "{report:?}");
        // The restored keys name their senders' devices, which this new device has not looked
        // up yet: the first attempt asks for their device lists, then they decrypt.
        let mut texts: Vec<String> = Vec::new();
        for m in &history.messages {
            let msg = tern_sdk::message_from_view(direct, m).expect("message");
            match b2.e2e.decrypt(&msg) {
                Ok(plain) => texts.push(body(&plain)),
                Err(u) => assert_eq!(u.reason, Undecryptable::UntrustedDevice),
            }
        }
        for r in b2
            .e2e
            .resolve_unknown_senders(&b2.conn)
            .await
            .expect("query senders")
        {
            texts.push(body(&r.expect("decrypts after the restore")));
        }
        texts.sort();
        assert_eq!(texts, ["history one", "history two"]);
        bob2_http.set_token(None);
    }
}

#[tokio::test]
async fn one_time_keys_running_out_fall_back_to_the_fallback_key() {
    let server = TestServer::start().await;
    let (alice, bob, direct) = alice_and_bob(&server).await;
    let transport = TransportPref::WebSocket;
    let mut b = Device::open(&server, transport, &bob, &bob.token).await;
    // Somebody claims all of Bob's one-time keys (each claim takes one).
    let drain = connect(&server, transport, &alice, DeviceId::random()).await;
    let mut fallback_seen = false;
    for _ in 0..200 {
        let reply = drain
            .request(|request_id| ClientMessage::ClaimKeys {
                request_id,
                user: bob.id,
                devices: vec![b.id],
            })
            .await
            .expect("claim");
        let ServerMessage::KeyBundle { devices, .. } = reply else {
            panic!("claim answered with {reply:?}")
        };
        assert_eq!(devices.len(), 1);
        if devices[0].one_time_keys.is_empty() {
            assert!(
                !devices[0].fallback_key.is_empty(),
                "the fallback key is returned"
            );
            fallback_seen = true;
            break;
        }
    }
    assert!(fallback_seen, "one-time keys ran out within 200 claims");
    drain.close().await;

    // Alice's device has no Olm session with Bob's yet: it is created from the fallback key,
    // and Bob decrypts.
    let mut a = Device::open(&server, transport, &alice, &alice.token).await;
    a.learn_members(&alice.http).await;
    let id = a.send(direct, "via the fallback key").await;
    assert_eq!(body(&b.until_read(id).await), "via the fallback key");
}

/// A device connected for a long time keeps handing out one-time keys: when claims take its
/// count below a quarter of the server's maximum the server says so live, and the device
/// publishes more (without it, the 25th claim after 26 would already get the fallback key).
#[tokio::test]
async fn one_time_keys_are_topped_up_while_connected() {
    let server = TestServer::start_with(&["key_claims_per_target_per_minute = 1000"]).await;
    let (alice, bob, _) = alice_and_bob(&server).await;
    let transport = TransportPref::WebTransport;
    let mut b = Device::open(&server, transport, &bob, &bob.token).await;
    assert_eq!(b.conn.welcome().one_time_keys_left, 0, "a new device");
    let drain = connect(&server, transport, &alice, DeviceId::random()).await;
    let bob_device = b.id;
    let claim = || async {
        let reply = drain
            .request(|request_id| ClientMessage::ClaimKeys {
                request_id,
                user: bob.id,
                devices: vec![bob_device],
            })
            .await
            .expect("claim");
        let ServerMessage::KeyBundle { devices, .. } = reply else {
            panic!("claim answered with {reply:?}")
        };
        devices[0].one_time_keys.len()
    };
    // 50 published at connect (the default target), the server's low mark is 100 / 4 = 25.
    for i in 0..26 {
        assert_eq!(claim().await, 1, "claim {i} gets a one-time key");
    }
    let left = loop {
        if let Event::Other(ServerMessage::OneTimeKeysLow { left }) = b.next().await {
            break left;
        }
    };
    assert_eq!(left, 24);
    // `next` published the top-up; 26 more claims all get one-time keys.
    b.conn
        .request(|request_id| ClientMessage::QueryKeys {
            request_id,
            users: vec![bob.id],
        })
        .await
        .expect("round trip after the publish");
    for i in 0..26 {
        assert_eq!(
            claim().await,
            1,
            "claim {i} after the top-up gets a one-time key"
        );
    }
}

#[tokio::test]
async fn a_contacts_identity_change_is_flagged() {
    let server = TestServer::start().await;
    let (alice, bob, direct) = alice_and_bob(&server).await;
    let transport = TransportPref::WebTransport;
    let b = Device::open(&server, transport, &bob, &bob.token).await;
    let mut a = Device::open(&server, transport, &alice, &alice.token).await;
    a.learn_members(&alice.http).await;
    let id = a.send(direct, "first").await;
    let safety_before = a
        .e2e
        .machine()
        .safety_number(bob.id)
        .expect("safety number");

    // Bob's device loses its state (reinstall) and publishes a new identity under its id.
    let device = b.id;
    b.conn.close().await;
    let fresh = E2e::in_memory(bob.id, device, config()).expect("new identity");
    let mut b =
        Device::open_with(&server, transport, "bob", bob.id, &bob.token, device, fresh).await;
    // Alice hears of the change (DeviceListChanged) and re-queries on her next send.
    loop {
        if let Event::Other(ServerMessage::DeviceListChanged { user }) = a.next().await
            && user == bob.id
        {
            break;
        }
    }
    let id2 = a.send(direct, "second").await;
    a.collect_notices();
    assert!(
        a.trust
            .iter()
            .any(|t| matches!(t, TrustEvent::IdentityChanged { user, device: d } if *user == bob.id && *d == device)),
        "identity change flagged: {:?}",
        a.trust
    );
    let safety_after = a
        .e2e
        .machine()
        .safety_number(bob.id)
        .expect("safety number");
    assert_ne!(
        safety_before, safety_after,
        "the safety number changes with the key"
    );
    // The new identity still gets the new key (trust on first use, with the warning shown).
    assert_eq!(body(&b.until_read(id2).await), "second");
    let _ = id;
}

#[tokio::test]
async fn a_key_that_reached_only_another_own_device_is_recovered_from_the_backup() {
    for transport in TRANSPORTS {
        let server = TestServer::start().await;
        let (alice, bob, direct) = alice_and_bob(&server).await;
        let mut a = Device::open(&server, transport, &alice, &alice.token).await;
        let mut b1 = Device::open(&server, transport, &bob, &bob.token).await;
        a.learn_members(&alice.http).await;
        let first = a.send(direct, "before the new device").await;
        b1.until_read(first).await;
        b1.e2e
            .create_backup(&bob.http, "recovery words")
            .await
            .expect("backup");

        // Bob's new device restores (unlocks) the backup...
        let token2 = second_login(&server, &bob).await;
        let bob2_http = server.http().with_token(&token2);
        let mut b2 = Device::open(&server, transport, &bob, &token2).await;
        b2.e2e
            .restore_backup(&bob2_http, "recovery words")
            .await
            .expect("restore");
        // ...and Alice sends before she heard of it (her DeviceListChanged is still queued):
        // the key goes to Bob's first device only. A fresh session (as after a rotation): the
        // restored copy of the first one would decrypt its later messages too.
        a.e2e
            .on_member_removed(direct, UserId::random())
            .expect("rotate");
        let second = a.send(direct, "only b1 gets this key").await;
        b1.until_read(second).await;
        b1.e2e
            .upload_backup(&bob.http)
            .await
            .expect("b1 backs the key up");

        // b2 has the message but no key...
        while !b2.raw.iter().any(|m| m.message_id == second) {
            b2.next().await;
        }
        assert!(
            b2.undecryptable
                .iter()
                .any(|(m, r)| m.message_id == second && *r == Undecryptable::NoKeyYet),
            "{:?}",
            b2.undecryptable
        );
        assert_eq!(b2.e2e.conversations_waiting(), vec![direct]);
        // ...until it asks the backup.
        let ready = b2
            .e2e
            .recover_from_backup(&bob2_http, direct)
            .await
            .expect("recover");
        b2.absorb(ready);
        // (Alice's device, unknown to this new device, is looked up first if need be.)
        let ready = b2
            .e2e
            .resolve_unknown_senders(&b2.conn)
            .await
            .expect("query senders");
        b2.absorb(ready);
        assert_eq!(
            body(&b2.read[&second]),
            "only b1 gets this key",
            "{transport:?}"
        );
    }
}
