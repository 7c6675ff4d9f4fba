//! Writes the hand-off fixture for the Node test of the wasm bindings
//! (`clients/core-wasm/test.sh`): a message encrypted by the NATIVE core, the key share for
//! the receiver, and the receiver's sealed state, so the wasm build must open a native pickle,
//! process a native Olm share and decrypt a native Megolm message.
//!
//! Usage: `cargo run -p tern-core --example wasm_fixture -- <out.json>`, and after the Node
//! tests `… -- check <out.json> <from_wasm.json>`: the NATIVE receiver (from the fixture's
//! pickle) must decrypt what the wasm build encrypted to it (the other direction), and the
//! native file decryptor the file the wasm build encrypted (`<from_wasm.json>.files.json`),
//! or the command fails.
//! JSON: `{pickle_key_hex, receiver_pickle_b64, from_user, from_device, share_b64,
//!         message (tern-wire Message JSON), expected_text, sender_user,
//!         client_frames: [{json, hex}], server_frames: [{json, hex}], sender_keys and
//!         receiver_keys (tern-wire DeviceKeys JSON; the receiver's with one unused one-time
//!         key, for the wasm sender to claim), backup ({version, meta}), backup_page
//!         ({sessions, next_after}) and backup_passphrase (the native sender's key backup,
//!         cheap KDF parameters), file ({body: FileBody JSON, object_b64}: a 200,000-byte
//!         file encrypted by the native core, byte i = (31 i + 7) mod 251)}`: the frames are
//! messages encoded by the NATIVE codec, so the wasm codec must produce and read the same bytes.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use tern_core::crypto::{Body, CryptoConfig, CryptoEvent, CryptoMachine, KdfParams, PublishedKeys};
use tern_core::files::{FileBody, FileDecryptor, FileEncryptor};
use tern_wire::api::{BackupSessionPage, BackupSessionView, KeyBackup};
use tern_wire::ids::{ConversationId, DeviceId, MessageId, UserId};
use tern_wire::msg::{
    ClientMessage, Cursor, DeviceKeys, ErrorCode, KeyShareItem, Message, Notice, PresenceStatus,
    ServerMessage,
};

/// Byte `i` of the test files both directions encrypt (the other side regenerates it).
fn file_byte(i: usize) -> u8 {
    ((i * 31 + 7) % 251) as u8
}

/// Size of the native core's test file: several chunks, the last one partly padding.
const NATIVE_FILE_LEN: usize = 200_000;

/// A file encrypted by the NATIVE core: its FileBody and the whole object, base64.
fn native_file() -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let plain: Vec<u8> = (0..NATIVE_FILE_LEN).map(file_byte).collect();
    let mut enc = FileEncryptor::generate(plain.len() as u64)?;
    let mut object = enc.header().to_vec();
    for i in 0..enc.layout().chunk_count() {
        let r = enc.layout().chunk_file_range(i);
        object.extend(enc.encrypt_chunk(i, &plain[r.start as usize..r.end as usize])?);
    }
    let body = FileBody {
        file_id: MessageId::random(),
        key: *enc.key().key_bytes(),
        sha256: enc.digest().ok_or("no digest after the in-order pass")?,
        name: "native.bin".into(),
        mime: "application/octet-stream".into(),
        size: plain.len() as u64,
        caption: String::new(),
    };
    Ok(serde_json::json!({"body": body, "object_b64": B64.encode(&object)}))
}

/// The native core decrypts the file the wasm build encrypted (`<from_wasm>.files.json`:
/// `{body, object_b64}`, plaintext = `file_byte(i)` for `i < body.size`).
fn check_file(from_wasm_path: &str) -> Result<(), Box<dyn std::error::Error>> {
    let path = format!("{from_wasm_path}.files.json");
    let file: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    let body: FileBody = serde_json::from_value(file["body"].clone())?;
    let object = B64.decode(file["object_b64"].as_str().ok_or("no object_b64")?)?;
    let mut dec = FileDecryptor::new(body.key, body.size, body.sha256)?;
    let mut plain = Vec::new();
    for piece in object.chunks(10_007) {
        plain.extend(dec.push(piece)?);
    }
    dec.finish()?;
    let expected: Vec<u8> = (0..body.size as usize).map(file_byte).collect();
    if plain != expected {
        return Err("the wasm file decrypted to other bytes".into());
    }
    println!("native core decrypted the wasm file ({} bytes)", body.size);
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every message with its serde JSON and its native encoding.
fn frames<T: serde::Serialize>(
    messages: &[T],
    encode: fn(&T) -> Vec<u8>,
) -> Result<Vec<serde_json::Value>, serde_json::Error> {
    messages
        .iter()
        .map(|m| Ok(serde_json::json!({"json": serde_json::to_value(m)?, "hex": hex(&encode(m))})))
        .collect()
}

fn client_frames(message: &Message) -> Result<Vec<serde_json::Value>, serde_json::Error> {
    let conversation = message.conversation;
    frames(
        &[
            tern_core::protocol::handshake::hello(
                "token",
                message.sender_device,
                "fixture",
                &[Cursor {
                    conversation,
                    seq: 3,
                }],
            ),
            ClientMessage::Send {
                request_id: 1,
                conversation,
                client_msg_id: 0xabc,
                content_type: message.content_type.clone(),
                payload: message.payload.clone(),
                files: vec![],
            },
            ClientMessage::Ack {
                conversation,
                seq: 9,
            },
            ClientMessage::History {
                request_id: 2,
                conversation,
                before_seq: 0,
                after_seq: 4,
                limit: 50,
                around_seq: 0,
                since_ms: 0,
                until_ms: 0,
                sender: None,
            },
            ClientMessage::SendKeyShares {
                request_id: 3,
                shares: vec![KeyShareItem {
                    to_user: message.sender_user,
                    to_device: message.sender_device,
                    payload: vec![1, 2, 3],
                }],
            },
            ClientMessage::AckKeyShares {
                up_to: 0,
                ids: vec![4, 5],
            },
            ClientMessage::Typing {
                conversation,
                active: true,
            },
        ],
        tern_wire::encode_client,
    )
}

fn server_frames(
    message: &Message,
    keys: &DeviceKeys,
) -> Result<Vec<serde_json::Value>, serde_json::Error> {
    let conversation = message.conversation;
    frames(
        &[
            ServerMessage::Welcome {
                version: 1,
                user: message.sender_user,
                device: message.sender_device,
                server_time_ms: 1_700_000_000_000,
                max_frame_bytes: 65_536,
                one_time_keys_left: 12,
            },
            ServerMessage::Deliver {
                message: message.clone(),
            },
            ServerMessage::SendAck {
                request_id: 1,
                conversation,
                client_msg_id: 0xabc,
                seq: 2,
                message_id: message.message_id,
                timestamp_ms: 8,
                duplicate: false,
            },
            ServerMessage::SyncComplete,
            ServerMessage::HistoryPage {
                request_id: 2,
                conversation,
                messages: vec![message.clone()],
                reactions: vec![],
                has_more: true,
                has_more_before: false,
                has_more_after: false,
            },
            ServerMessage::KeyBundle {
                request_id: 3,
                devices: vec![keys.clone()],
                unanswered: vec![],
            },
            ServerMessage::KeyShare {
                from_user: message.sender_user,
                from_device: message.sender_device,
                payload: vec![9, 8, 7],
                inbox_id: 4,
            },
            ServerMessage::Error {
                request_id: 5,
                code: ErrorCode::RateLimited,
                message: "slow down".into(),
                fatal: false,
                retry_after_ms: 250,
            },
            ServerMessage::Notice {
                notice: Notice::GoingAway {
                    retry_after_ms: 1000,
                },
            },
            ServerMessage::Presence {
                user: message.sender_user,
                status: PresenceStatus::Online,
                last_seen_ms: 0,
            },
            ServerMessage::Pong { nonce: 77 },
        ],
        tern_wire::encode_server,
    )
}

fn wire(k: &PublishedKeys) -> DeviceKeys {
    k.to_wire()
}

fn published(k: &DeviceKeys) -> PublishedKeys {
    PublishedKeys::from_wire(k)
}

/// What the wasm sender wrote: `{sender_keys (DeviceKeys), share (KeyShareItem), message,
/// text}`.
#[derive(serde::Deserialize)]
struct FromWasm {
    sender_keys: DeviceKeys,
    share: KeyShareItem,
    message: Message,
    text: String,
}

/// The native receiver decrypts what the wasm build encrypted.
fn check(fixture_path: &str, from_wasm_path: &str) -> Result<(), Box<dyn std::error::Error>> {
    check_file(from_wasm_path)?;
    let fixture: serde_json::Value = serde_json::from_slice(&std::fs::read(fixture_path)?)?;
    let from: FromWasm = serde_json::from_slice(&std::fs::read(from_wasm_path)?)?;
    let field = |name: &str| {
        fixture[name]
            .as_str()
            .map(str::to_string)
            .ok_or(format!("fixture has no {name}"))
    };
    let key_hex = field("pickle_key_hex")?;
    let key: Vec<u8> = (0..key_hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&key_hex[i..i + 2], 16))
        .collect::<Result<_, _>>()?;
    let key: [u8; 32] = key.try_into().map_err(|_| "pickle key is not 32 bytes")?;
    let mut bob = CryptoMachine::from_pickle(&B64.decode(field("receiver_pickle_b64")?)?, &key)?;
    let sender = from.sender_keys.user;
    bob.on_device_list(sender, &[published(&from.sender_keys)], 20)?;
    if from.share.to_device != bob.device_id() {
        return Err("the wasm share is not for the fixture's receiver".into());
    }
    let events = bob.on_key_share(sender, from.sender_keys.device, &from.share.payload, 21);
    if !matches!(events.as_slice(), [CryptoEvent::RoomKeyReceived { .. }]) {
        return Err(format!("native receiver: {events:?}").into());
    }
    let decrypted = bob
        .decrypt(&from.message)
        .map_err(|u| format!("native receiver cannot decrypt the wasm message: {u}"))?;
    match decrypted.body {
        Body::Text { text } if text == from.text => {
            println!("native core decrypted the wasm message: {text:?}");
            Ok(())
        }
        other => Err(format!("native receiver read {other:?}, expected {:?}", from.text).into()),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [mode, fixture, from_wasm] = args.as_slice()
        && mode == "check"
    {
        return check(fixture, from_wasm);
    }
    let out = args
        .first()
        .ok_or("usage: wasm_fixture <out.json> | wasm_fixture check <out.json> <from_wasm.json>")?;
    let (a, b) = (UserId::random(), UserId::random());
    // Cheap KDF parameters: the Node test unlocks this backup (a real one costs ~19 MiB).
    let alice_config = CryptoConfig {
        backup_kdf: KdfParams::insecure_for_tests(),
        ..CryptoConfig::default()
    };
    let mut alice = CryptoMachine::new(a, DeviceId::random(), alice_config)?;
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
    let alice_wire = wire(&identity(&alice_keys));
    // The receiver as a directory shows it, with one one-time key alice did not use.
    let bob_wire = wire(&PublishedKeys {
        one_time_keys: vec![bob_keys.one_time_keys[1].clone()],
        ..identity(&bob_keys)
    });
    let passphrase = "correct horse battery staple";
    let (version, meta) = alice.backup_create(passphrase, 4)?;
    let sessions: Vec<BackupSessionView> = alice
        .backup_export_sessions()?
        .into_iter()
        .map(|e| BackupSessionView {
            conversation: e.conversation,
            session_id: e.session_id,
            data: B64.encode(&e.data),
        })
        .collect();
    let fixture = serde_json::json!({
        "sender_keys": alice_wire,
        "receiver_keys": bob_wire,
        "backup": KeyBackup { version, meta: B64.encode(meta) },
        "backup_page": BackupSessionPage { sessions, next_after: None },
        "backup_passphrase": passphrase,
        "client_frames": client_frames(&message)?,
        "server_frames": server_frames(&message, &alice_wire)?,
        "pickle_key_hex": hex(&pickle_key),
        "receiver_pickle_b64": B64.encode(bob.pickle(&pickle_key)?),
        "from_user": a,
        "from_device": alice.device_id(),
        "share_b64": B64.encode(&share.payload),
        "message": message,
        "expected_text": text,
        "sender_user": a,
        "file": native_file()?,
    });
    std::fs::write(out, serde_json::to_vec_pretty(&fixture)?)?;
    println!("wrote {out}");
    Ok(())
}
