//! Writes the hand-off fixture for the Node test of the wasm bindings
//! (`clients/core-wasm/test.sh`): a message encrypted by the NATIVE core, the key share for
//! the receiver, and the receiver's sealed state, so the wasm build must open a native pickle,
//! process a native Olm share and decrypt a native Megolm message.
//!
//! Usage: `cargo run -p tern-core --example wasm_fixture -- <out.json>`
//! JSON: `{pickle_key_hex, receiver_pickle_b64, from_user, from_device, share_b64,
//!         message (tern-wire Message JSON), expected_text, sender_user}`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use tern_core::crypto::{Body, CryptoConfig, CryptoMachine, PublishedKeys};
use tern_wire::ids::{ConversationId, DeviceId, MessageId, UserId};
use tern_wire::msg::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args()
        .nth(1)
        .ok_or("usage: wasm_fixture <out.json>")?;
    let (a, b) = (UserId::random(), UserId::random());
    let mut alice = CryptoMachine::new(a, DeviceId::random(), CryptoConfig::default())?;
    let mut bob = CryptoMachine::new(b, DeviceId::random(), CryptoConfig::default())?;
    let published = |m: &mut CryptoMachine| -> Result<PublishedKeys, String> {
        let keys = m.keys_to_publish(0).ok_or("nothing to publish")?;
        m.mark_keys_published();
        Ok(keys)
    };
    let alice_keys = published(&mut alice)?;
    let bob_keys = published(&mut bob)?;
    let identity = |k: &PublishedKeys| PublishedKeys {
        one_time_keys: vec![],
        fallback_key: vec![],
        ..k.clone()
    };
    alice.on_device_list(a, &[identity(&alice_keys)], 1)?;
    alice.on_device_list(b, &[identity(&bob_keys)], 1)?;
    bob.on_device_list(a, &[identity(&alice_keys)], 1)?;
    bob.on_device_list(b, &[identity(&bob_keys)], 1)?;
    let conversation = ConversationId::random();
    alice.prepare(conversation, &[a, b], 2)?;
    let claimed = PublishedKeys {
        one_time_keys: vec![bob_keys.one_time_keys[0].clone()],
        ..identity(&bob_keys)
    };
    let problems = alice.on_claimed(&[claimed]);
    if !problems.is_empty() {
        return Err(format!("{problems:?}").into());
    }
    let text = "made by the native core";
    let enc = alice.encrypt(conversation, &Body::text(text), 3)?;
    let share = enc
        .key_shares
        .iter()
        .find(|s| s.to_device == bob.device_id())
        .ok_or("no share for bob")?;
    let message = Message {
        conversation,
        seq: 1,
        message_id: MessageId::random(),
        sender_user: a,
        sender_device: alice.device_id(),
        client_msg_id: 1,
        timestamp_ms: 3,
        content_type: enc.content_type.to_string(),
        payload: enc.payload.clone(),
        files: vec![],
    };
    let pickle_key = [0x42u8; 32];
    let fixture = serde_json::json!({
        "pickle_key_hex": pickle_key.iter().map(|b| format!("{b:02x}")).collect::<String>(),
        "receiver_pickle_b64": B64.encode(bob.pickle(&pickle_key)?),
        "from_user": a,
        "from_device": alice.device_id(),
        "share_b64": B64.encode(&share.payload),
        "message": message,
        "expected_text": text,
        "sender_user": a,
    });
    std::fs::write(&out, serde_json::to_vec_pretty(&fixture)?)?;
    println!("wrote {out}");
    Ok(())
}
