//! The message envelope and content formats (v2 binary written, v1 JSON still read): round
//! trips, v1 history, size, and malformed payloads. Unit tests because the v1 writer exists
//! only under `cfg(test)`.

use tern_wire::ids::{ConversationId, DeviceId, MessageId, UserId};
use tern_wire::msg::Message;

use super::formats::{self, WireFormat};
use super::*;

/// Alice and Bob, each knowing the other's identity, and a conversation Alice prepared with
/// an Olm session to Bob. Bob has Alice's room key once [`Pair::send`] returned.
struct Pair {
    alice: CryptoMachine,
    bob: CryptoMachine,
    conversation: ConversationId,
    next_seq: u64,
}

impl Pair {
    fn new() -> Self {
        let (a, b) = (UserId::random(), UserId::random());
        let mut alice =
            CryptoMachine::new(a, DeviceId::random(), CryptoConfig::default()).expect("alice");
        let mut bob =
            CryptoMachine::new(b, DeviceId::random(), CryptoConfig::default()).expect("bob");
        let published = |m: &mut CryptoMachine| {
            let keys = m.keys_to_publish(0).expect("keys");
            m.mark_keys_published();
            keys
        };
        let alice_keys = published(&mut alice);
        let bob_keys = published(&mut bob);
        let identity = |k: &PublishedKeys| PublishedKeys {
            one_time_keys: vec![],
            fallback_key: vec![],
            ..k.clone()
        };
        for m in [&mut alice, &mut bob] {
            m.on_device_list(a, &[identity(&alice_keys)], 1)
                .expect("alice's list");
            m.on_device_list(b, &[identity(&bob_keys)], 1)
                .expect("bob's list");
        }
        let conversation = ConversationId::random();
        alice.prepare(conversation, &[a, b], 2).expect("prepare");
        let claimed = PublishedKeys {
            one_time_keys: vec![bob_keys.one_time_keys[0].clone()],
            ..identity(&bob_keys)
        };
        assert!(alice.on_claimed(&[claimed]).is_empty());
        Pair {
            alice,
            bob,
            conversation,
            next_seq: 1,
        }
    }

    /// Delivers the key shares of `enc` to Bob and wraps the payload as a server message.
    fn deliver(&mut self, enc: &Encrypted) -> Message {
        for share in &enc.key_shares {
            let events = self.bob.on_key_share(
                self.alice.user_id(),
                self.alice.device_id(),
                &share.payload,
                3,
            );
            assert!(
                events
                    .iter()
                    .all(|e| matches!(e, CryptoEvent::RoomKeyReceived { .. })),
                "{events:?}"
            );
        }
        self.next_seq += 1;
        Message {
            conversation: self.conversation,
            seq: self.next_seq,
            message_id: MessageId::random(),
            sender_user: self.alice.user_id(),
            sender_device: self.alice.device_id(),
            client_msg_id: u128::from(self.next_seq),
            timestamp_ms: 3,
            content_type: enc.content_type.to_string(),
            payload: enc.payload.clone(),
            files: vec![],
        }
    }

    fn send(&mut self, body: &Body) -> Message {
        let enc = self
            .alice
            .encrypt(self.conversation, body, 3)
            .expect("encrypt");
        self.deliver(&enc)
    }

    fn send_v1(&mut self, body: &Body) -> Message {
        let enc = self
            .alice
            .encrypt_v1(self.conversation, body, 3)
            .expect("encrypt v1");
        self.deliver(&enc)
    }

    fn send_raw(&mut self, format: WireFormat, plaintext: Vec<u8>) -> Message {
        let enc = self
            .alice
            .encrypt_raw_plaintext(format, self.conversation, plaintext, 3)
            .expect("encrypt raw");
        self.deliver(&enc)
    }
}

fn text_128() -> String {
    "x".repeat(128)
}

#[test]
fn v2_round_trip_text_and_data() {
    let mut p = Pair::new();
    let text = Body::text("hello, binary envelope");
    let msg = p.send(&text);
    assert_eq!(msg.content_type, MEGOLM_CONTENT_TYPE);
    assert_eq!(msg.content_type, "e2e.megolm.v2");
    assert_eq!(msg.payload[0], formats::ENVELOPE_V2);
    let d = p.bob.decrypt(&msg).expect("v2 decrypts");
    assert_eq!(d.body, text);
    assert_eq!(
        (d.sender_user, d.sender_device),
        (p.alice.user_id(), p.alice.device_id())
    );
    assert_eq!(
        formats::session_id_of(&msg.payload).as_deref(),
        Some(d.session_id.as_str())
    );
    // Data bodies carry raw bytes (no base64 inside v2), any bytes at all.
    let data = Body::Data {
        content_type: "loadgen".into(),
        data: (0..=255u8).collect(),
    };
    let msg = p.send(&data);
    assert_eq!(p.bob.decrypt(&msg).expect("data decrypts").body, data);
    // Empty text is a body too.
    let msg = p.send(&Body::text(""));
    assert_eq!(p.bob.decrypt(&msg).expect("empty").body, Body::text(""));
}

#[test]
fn v1_history_still_decrypts_and_its_session_id_is_found() {
    let mut p = Pair::new();
    let text = Body::text("written before v2");
    let old = p.send_v1(&text);
    assert_eq!(old.content_type, "e2e.megolm.v1");
    assert_eq!(old.payload[0], b'{', "v1 is JSON");
    assert!(is_encrypted_content_type(&old.content_type));
    let d = p.bob.decrypt(&old).expect("v1 decrypts");
    assert_eq!(d.body, text);
    assert_eq!(
        formats::session_id_of(&old.payload).as_deref(),
        Some(d.session_id.as_str())
    );
    let data = Body::Data {
        content_type: "app/x".into(),
        data: vec![0, 1, 2, 254, 255],
    };
    let old = p.send_v1(&data);
    assert_eq!(p.bob.decrypt(&old).expect("v1 data").body, data);
    // Same session for both versions: a v2 message after v1 history decrypts too.
    let new = p.send(&text);
    assert_eq!(p.bob.decrypt(&new).expect("v2 after v1").body, text);
    assert_eq!(
        formats::session_id_of(&new.payload),
        formats::session_id_of(&old.payload)
    );
}

#[test]
fn content_version_must_match_envelope_version() {
    let mut p = Pair::new();
    let content = Content {
        v: 1,
        conversation: p.conversation,
        sender_user: p.alice.user_id(),
        sender_device: p.alice.device_id(),
        body: Body::text("cross"),
    };
    let v2_content = formats::encode_content_v2(&content).expect("v2 content");
    let v1_content = serde_json::to_vec(&content).expect("v1 content");
    let msg = p.send_raw(WireFormat::V1, v2_content);
    assert_eq!(p.bob.decrypt(&msg), Err(Undecryptable::Unsupported));
    let msg = p.send_raw(WireFormat::V2, v1_content);
    assert_eq!(p.bob.decrypt(&msg), Err(Undecryptable::Unsupported));
}

#[test]
fn v2_unknown_or_reserved_body_and_trailing_bytes_are_unsupported_never_empty() {
    let mut p = Pair::new();
    let header = |p: &Pair| {
        let mut h = vec![formats::CONTENT_V2];
        h.extend(p.conversation.to_be_bytes());
        h.extend(p.alice.user_id().to_be_bytes());
        h.extend(p.alice.device_id().to_be_bytes());
        h
    };
    // Body tags 3 (edit), 4 (reply) are reserved; 99 is unknown; 2 (file) cut short.
    for tag in [2u8, 3, 4, 99] {
        let mut plaintext = header(&p);
        plaintext.extend([tag, 3, b'a', b'b', b'c']);
        let msg = p.send_raw(WireFormat::V2, plaintext);
        assert_eq!(
            p.bob.decrypt(&msg),
            Err(Undecryptable::Unsupported),
            "tag {tag}"
        );
    }
    // A well-formed text body followed by bytes this version does not define.
    let mut plaintext = header(&p);
    plaintext.extend([0, 2, b'h', b'i', 0xff]);
    let msg = p.send_raw(WireFormat::V2, plaintext);
    assert_eq!(p.bob.decrypt(&msg), Err(Undecryptable::Unsupported));
    // Another content version byte, or a truncated content.
    let mut plaintext = header(&p);
    plaintext[0] = 3;
    plaintext.extend([0, 2, b'h', b'i']);
    let msg = p.send_raw(WireFormat::V2, plaintext);
    assert_eq!(p.bob.decrypt(&msg), Err(Undecryptable::Unsupported));
    let plaintext = header(&p)[..20].to_vec();
    let msg = p.send_raw(WireFormat::V2, plaintext);
    assert_eq!(p.bob.decrypt(&msg), Err(Undecryptable::Unsupported));
    // The hand-built header is the encoder's: the same bytes with tag 0 decrypt as text.
    let mut plaintext = header(&p);
    plaintext.extend([0, 2, b'h', b'i']);
    let msg = p.send_raw(WireFormat::V2, plaintext);
    assert_eq!(p.bob.decrypt(&msg).expect("text").body, Body::text("hi"));
}

#[test]
fn v2_file_bodies_round_trip_and_limits_hold_on_decrypt() {
    use crate::files::{FILE_BODY_LIMITS, FILE_CONTENT_TYPE, FileBody};
    let mut p = Pair::new();
    let file = FileBody {
        file_id: tern_wire::ids::MessageId::from_u128(0xabcdef),
        key: [3; 32],
        sha256: [4; 32],
        name: "contract.pdf".into(),
        mime: "application/pdf".into(),
        size: 123_456,
        caption: "signed copy".into(),
    };
    let msg = p.send(&Body::File(file.clone()));
    assert_eq!(msg.content_type, MEGOLM_CONTENT_TYPE);
    let d = p.bob.decrypt(&msg).expect("file decrypts");
    assert_eq!(d.body, Body::File(file.clone()));
    // The app's form: content type "tern.file" with the JSON body, and back.
    let (content_type, payload) = d.body.to_content();
    assert_eq!(content_type, FILE_CONTENT_TYPE);
    assert_eq!(
        Body::from_content(&content_type, &payload),
        Body::File(file.clone())
    );
    // An invalid JSON under the file content type stays data (never a half-read file).
    assert!(matches!(
        Body::from_content(FILE_CONTENT_TYPE, b"{\"name\":1}"),
        Body::Data { .. }
    ));
    // The v2 tag is 2, right after the three ids.
    let plaintext = formats::encode_content_v2(&Content {
        v: 2,
        conversation: p.conversation,
        sender_user: p.alice.user_id(),
        sender_device: p.alice.device_id(),
        body: Body::File(file.clone()),
    })
    .expect("encodes");
    assert_eq!(plaintext[1 + 48], 2);
    // A file body past a declared limit is not one this version writes: Unsupported.
    let mut long = file.clone();
    long.name = "n".repeat(FILE_BODY_LIMITS.name + 1);
    let plaintext = formats::encode_content_v2(&Content {
        v: 2,
        conversation: p.conversation,
        sender_user: p.alice.user_id(),
        sender_device: p.alice.device_id(),
        body: Body::File(long),
    })
    .expect("encodes");
    let msg = p.send_raw(WireFormat::V2, plaintext);
    assert_eq!(p.bob.decrypt(&msg), Err(Undecryptable::Unsupported));
    // The v1 JSON form carries files too (history written by tests only).
    let old = p.send_v1(&Body::File(file.clone()));
    assert_eq!(p.bob.decrypt(&old).expect("v1 file").body, Body::File(file));
}

#[test]
fn v2_binding_checks_are_as_strict_as_v1() {
    let mut p = Pair::new();
    for msg in [
        p.send(&Body::text("bound")),
        p.send_v1(&Body::text("bound")),
    ] {
        let mut t = msg.clone();
        t.sender_device = DeviceId::random();
        assert_eq!(p.bob.decrypt(&t), Err(Undecryptable::Tampered));
        let mut t = msg.clone();
        t.conversation = ConversationId::random();
        assert_eq!(p.bob.decrypt(&t), Err(Undecryptable::WrongConversation));
        let mut t = msg.clone();
        t.content_type = "text".into();
        assert_eq!(p.bob.decrypt(&t), Err(Undecryptable::Unsupported));
        assert!(p.bob.decrypt(&msg).is_ok());
    }
    // Content that names another conversation or sender than the (authentic) session: the
    // content's own fields are checked too, in v2 as in v1.
    for (conversation, device, want) in [
        (
            ConversationId::random(),
            None,
            Undecryptable::WrongConversation,
        ),
        (
            p.conversation,
            Some(DeviceId::random()),
            Undecryptable::Tampered,
        ),
    ] {
        let content = Content {
            v: 1,
            conversation,
            sender_user: p.alice.user_id(),
            sender_device: device.unwrap_or(p.alice.device_id()),
            body: Body::text("relabelled inside"),
        };
        let v2 = formats::encode_content_v2(&content).expect("v2");
        let msg = p.send_raw(WireFormat::V2, v2);
        assert_eq!(p.bob.decrypt(&msg), Err(want.clone()));
        let v1 = serde_json::to_vec(&content).expect("v1");
        let msg = p.send_raw(WireFormat::V1, v1);
        assert_eq!(p.bob.decrypt(&msg), Err(want));
    }
}

#[test]
fn v2_tampered_ciphertext_and_replay_are_rejected() {
    let mut p = Pair::new();
    let msg = p.send(&Body::text("genuine"));
    // The last AES ciphertext byte: before the 8-byte MAC and the 64-byte signature.
    let mut t = msg.clone();
    let at = t.payload.len() - 72 - 1;
    t.payload[at] ^= 0x01;
    t.message_id = MessageId::random();
    assert_eq!(p.bob.decrypt(&t), Err(Undecryptable::Tampered));
    // A session id byte: another (unknown) session.
    let mut t = msg.clone();
    t.payload[5] ^= 0x01;
    assert_eq!(p.bob.decrypt(&t), Err(Undecryptable::NoKeyYet));
    let mut replay = msg.clone();
    replay.message_id = MessageId::random();
    assert!(p.bob.decrypt(&msg).is_ok());
    assert_eq!(p.bob.decrypt(&replay), Err(Undecryptable::Replayed));
    assert!(
        p.bob.decrypt(&msg).is_ok(),
        "the same message again still reads"
    );
}

/// The v2 payload bound for a 128-byte text, from the format:
/// * content: 1 (CONTENT_V2) + 3 x 16 (ids) + 1 (body tag) + 2 (varint 128) + 128 = 180;
/// * AES-256-CBC with PKCS#7 pads to the next multiple of 16 (always adds 1..=16): 192;
/// * Megolm message: 1 (version) + 1 (tag 0x08) + at most 5 (varint index) + 1 (tag 0x12) +
///   2 (varint 192) + 192 + 8 (truncated MAC) + 64 (Ed25519 signature) = at most 274;
/// * envelope: 1 (ENVELOPE_V2) + 32 (session id) = 33.
///
/// Total at most 307; v1 was ~600.
const V2_BOUND_128: usize = 307;

#[test]
fn v2_payload_for_128_byte_text_is_compact_and_v1_is_larger() {
    let mut p = Pair::new();
    let body = Body::text(text_128());
    let v2 = p.send(&body);
    let v1 = p.send_v1(&body);
    println!(
        "payload for a 128-byte text: v1 (JSON) {} bytes, v2 (binary) {} bytes",
        v1.payload.len(),
        v2.payload.len()
    );
    assert!(
        v2.payload.len() <= V2_BOUND_128,
        "v2 payload {} > bound {V2_BOUND_128}",
        v2.payload.len()
    );
    // At least a 128-byte text plus its signature and MAC.
    assert!(v2.payload.len() >= 128 + 64 + 8 + formats::ENVELOPE_V2_HEADER_LEN);
    assert!(
        v1.payload.len() > v2.payload.len() + 200,
        "v1 {} must be far larger than v2 {}",
        v1.payload.len(),
        v2.payload.len()
    );
    assert_eq!(p.bob.decrypt(&v2).expect("v2").body, body);
    assert_eq!(p.bob.decrypt(&v1).expect("v1").body, body);
}

/// A small deterministic generator (no dependency): garbage that is the same every run.
fn garbage(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) as u8
        })
        .collect()
}

#[test]
fn truncated_and_garbage_payloads_are_tampered_never_a_panic() {
    let mut p = Pair::new();
    let v2 = p.send(&Body::text("to be cut"));
    let v1 = p.send_v1(&Body::text("to be cut"));
    let session = formats::session_id_of(&v2.payload).expect("session id");
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    // Every v2 prefix: nothing, the version byte, part of the session id, the header alone,
    // then the Megolm message cut anywhere.
    for len in 0..v2.payload.len() {
        cases.push((MEGOLM_CONTENT_TYPE, v2.payload[..len].to_vec()));
    }
    // Every v1 prefix.
    for len in 0..v1.payload.len() {
        cases.push((MEGOLM_CONTENT_TYPE_V1, v1.payload[..len].to_vec()));
    }
    // v2: wrong version byte (including v1 JSON under the v2 content type).
    let mut wrong = v2.payload.clone();
    wrong[0] = 0x03;
    cases.push((MEGOLM_CONTENT_TYPE, wrong));
    cases.push((MEGOLM_CONTENT_TYPE, v1.payload.clone()));
    // v1: v2 bytes under the v1 content type, bad base64, a Megolm message that is not one.
    cases.push((MEGOLM_CONTENT_TYPE_V1, v2.payload.clone()));
    cases.push((
        MEGOLM_CONTENT_TYPE_V1,
        format!(r#"{{"v":1,"session_id":"{session}","ciphertext":"!!not base64!!"}}"#).into_bytes(),
    ));
    cases.push((
        MEGOLM_CONTENT_TYPE_V1,
        format!(r#"{{"v":1,"session_id":"{session}","ciphertext":"AAAA"}}"#).into_bytes(),
    ));
    // Garbage of many lengths, with and without a valid v2 header in front.
    for seed in 0..64u64 {
        let len = (seed as usize * 37) % 700;
        let g = garbage(seed, len);
        cases.push((MEGOLM_CONTENT_TYPE_V1, g.clone()));
        let mut g2 = g.clone();
        if let Some(first) = g2.first_mut() {
            *first = formats::ENVELOPE_V2;
        }
        cases.push((MEGOLM_CONTENT_TYPE, g2));
        let mut headed = v2.payload[..formats::ENVELOPE_V2_HEADER_LEN].to_vec();
        headed.extend(&g);
        cases.push((MEGOLM_CONTENT_TYPE, headed));
    }
    for (i, (content_type, payload)) in cases.into_iter().enumerate() {
        let mut m = v2.clone();
        m.content_type = content_type.to_string();
        m.payload = payload;
        m.message_id = MessageId::random();
        assert_eq!(
            p.bob.decrypt(&m),
            Err(Undecryptable::Tampered),
            "case {i}: {content_type} {} bytes",
            m.payload.len()
        );
    }
    // Both genuine messages are unharmed.
    assert!(p.bob.decrypt(&v2).is_ok());
    assert!(p.bob.decrypt(&v1).is_ok());
}

#[test]
fn session_id_that_is_not_32_bytes_is_refused() {
    let megolm =
        vodozemac::megolm::GroupSession::new(vodozemac::megolm::SessionConfig::version_1())
            .encrypt(b"x");
    let good = vodozemac::megolm::GroupSession::new(vodozemac::megolm::SessionConfig::version_1())
        .session_id();
    assert!(formats::encode_envelope(WireFormat::V2, &good, &megolm).is_ok());
    let b64 = |n: usize| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(vec![7u8; n])
    };
    for bad in [
        String::new(),
        b64(31),
        b64(33),
        b64(64),
        format!("{good}="),         // padded: not vodozemac's form
        good.replace('A', "*"),     // not base64 (if it had an A) ...
        format!("{}!", &good[1..]), // ... and surely not this
    ] {
        if bad == good {
            continue;
        }
        assert!(
            formats::encode_envelope(WireFormat::V2, &bad, &megolm).is_err(),
            "{bad:?} must be refused"
        );
        assert!(formats::session_id_bytes(&bad).is_none(), "{bad:?}");
    }
    // A non-canonical encoding of 32 bytes (last char with stray low bits) is refused too.
    let raw = formats::session_id_bytes(&good).expect("good");
    let canonical = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(raw)
    };
    assert_eq!(canonical, good);
    let last = canonical.chars().last().expect("last");
    let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let pos = alphabet.find(last).expect("in alphabet");
    // 32 bytes = 43 chars; the last carries 2 data bits and 4 zero bits.
    let stray = alphabet.as_bytes()[pos ^ 1] as char;
    let non_canonical = format!("{}{stray}", &canonical[..canonical.len() - 1]);
    assert!(formats::session_id_bytes(&non_canonical).is_none());
    // And a v2 payload's session id is always 32 bytes: shorter payloads have none.
    assert_eq!(formats::session_id_of(&[formats::ENVELOPE_V2; 33]), None);
    assert!(formats::session_id_of(&[formats::ENVELOPE_V2; 34]).is_some());
    assert_eq!(formats::session_id_of(b"not an envelope"), None);
}
