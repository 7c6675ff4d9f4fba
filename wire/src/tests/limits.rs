//! The verifier limits: what they reject, and that no honest frame trips them.

use flatbuffers::FlatBufferBuilder;

use crate::generated as fb;
use crate::msg::{DeviceKeys, Message, ReactionCount, ServerMessage};
use crate::{Limits, WireError, decode_server, samples};

fn is_malformed_with(r: Result<ServerMessage, WireError>, needle: &str) -> bool {
    matches!(&r, Err(WireError::Malformed(why)) if why.to_lowercase().contains(needle))
}

/// A history page whose `messages` vector holds `refs` offsets to one shared Message table with a
/// `payload`-byte payload: the DAG an attacker uses to make a small frame decode into a huge one.
fn shared_payload_page(refs: usize, payload: usize) -> Vec<u8> {
    let mut fbb = FlatBufferBuilder::new();
    let payload = fbb.create_vector(&vec![0xab_u8; payload]);
    let z = fb::Id128::new(0, 1);
    let msg = fb::Message::create(
        &mut fbb,
        &fb::MessageArgs {
            conversation: Some(&z),
            message_id: Some(&z),
            sender_user: Some(&z),
            sender_device: Some(&z),
            client_msg_id: Some(&z),
            payload: Some(payload),
            ..Default::default()
        },
    );
    let messages = fbb.create_vector(&vec![msg; refs]);
    let page = fb::ServerHistoryPage::create(
        &mut fbb,
        &fb::ServerHistoryPageArgs {
            conversation: Some(&z),
            messages: Some(messages),
            ..Default::default()
        },
    );
    let env = fb::Envelope::create(
        &mut fbb,
        &fb::EnvelopeArgs {
            body_type: fb::Body::ServerHistoryPage,
            body: Some(page.as_union_value()),
        },
    );
    fbb.finish(env, Some("TERN"));
    fbb.finished_data().to_vec()
}

/// A history page whose `reactions` vector holds `refs` offsets to one empty ReactionCount.
fn shared_reaction_page(refs: usize) -> Vec<u8> {
    let mut fbb = FlatBufferBuilder::new();
    let reaction = fb::ReactionCount::create(&mut fbb, &fb::ReactionCountArgs::default());
    let reactions = fbb.create_vector(&vec![reaction; refs]);
    let z = fb::Id128::new(0, 1);
    let page = fb::ServerHistoryPage::create(
        &mut fbb,
        &fb::ServerHistoryPageArgs {
            conversation: Some(&z),
            reactions: Some(reactions),
            ..Default::default()
        },
    );
    let env = fb::Envelope::create(
        &mut fbb,
        &fb::EnvelopeArgs {
            body_type: fb::Body::ServerHistoryPage,
            body: Some(page.as_union_value()),
        },
    );
    fbb.finish(env, Some("TERN"));
    fbb.finished_data().to_vec()
}

#[test]
fn shared_tables_cannot_exceed_the_table_limit() {
    let limits = Limits::default();
    // 9,000 references cost 36 KB: within the size limit, over the table limit (each reference
    // to the tiny shared table adds little apparent size, so the table count is what trips).
    let bytes = shared_reaction_page(9_000);
    assert!(bytes.len() < limits.max_frame_bytes);
    assert!(
        is_malformed_with(decode_server(&bytes, &limits), "too many tables"),
        "{:?}",
        decode_server(&bytes, &limits)
    );
    // The same shape under the limit is accepted (sharing is legal, just bounded).
    let ok = decode_server(&shared_reaction_page(8_000), &limits);
    assert!(
        matches!(ok, Ok(ServerMessage::HistoryPage { reactions, .. }) if reactions.len() == 8_000)
    );
}

#[test]
fn shared_payloads_cannot_amplify_the_decode() {
    let limits = Limits::default();
    // 2,000 references to one 30 KB payload: a 38 KB frame that would decode to 60 MB.
    // (The table count, 2,003, is well within its limit.)
    let bytes = shared_payload_page(2_000, 30_000);
    assert!(bytes.len() < limits.max_frame_bytes);
    assert!(
        is_malformed_with(decode_server(&bytes, &limits), "apparent size"),
        "{:?}",
        decode_server(&bytes, &limits).map(|_| ())
    );
}

#[test]
fn depth_limit_is_enforced() {
    // Envelope -> ServerHistoryPage -> Message -> FileRef is the schema's deepest path (4).
    let page = samples::server_messages()
        .into_iter()
        .find(|(n, _)| *n == "history_page")
        .expect("sample")
        .1;
    let bytes = crate::encode_server(&page);
    assert_eq!(
        decode_server(
            &bytes,
            &Limits {
                max_depth: 4,
                ..Limits::default()
            }
        )
        .as_ref(),
        Ok(&page)
    );
    assert!(is_malformed_with(
        decode_server(
            &bytes,
            &Limits {
                max_depth: 3,
                ..Limits::default()
            }
        ),
        "depth"
    ));
    // Table count too: the page has 1 + 1 + 2 messages + 1 file + 2 reactions = 7 tables.
    assert!(
        decode_server(
            &bytes,
            &Limits {
                max_tables: 7,
                ..Limits::default()
            }
        )
        .is_ok()
    );
    assert!(is_malformed_with(
        decode_server(
            &bytes,
            &Limits {
                max_tables: 6,
                ..Limits::default()
            }
        ),
        "too many tables"
    ));
}

/// The smallest max_apparent_size a buffer verifies under, found by bisection.
fn apparent_size(bytes: &[u8]) -> usize {
    let (mut lo, mut hi) = (0usize, 64 * bytes.len() + 1024);
    while lo < hi {
        let mid = (lo + hi) / 2;
        let opts = flatbuffers::VerifierOptions {
            max_apparent_size: mid,
            ..Default::default()
        };
        if fb::root_as_envelope_with_opts(&opts, bytes).is_ok() {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    lo
}

/// Fills a frame with as many copies of the smallest honest tables as fit, and checks the
/// default limits accept it: the justification of `max_tables` and `APPARENT_SIZE_FACTOR`.
#[test]
fn honest_worst_case_fits_default_limits() {
    let limits = Limits::default();
    let fill = |make: &dyn Fn(usize) -> ServerMessage| {
        let (mut lo, mut hi) = (0usize, limits.max_frame_bytes);
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if crate::encode_server(&make(mid)).len() <= limits.max_frame_bytes {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        make(lo)
    };
    let reactions = |count: u32| {
        move |n: usize| ServerMessage::HistoryPage {
            request_id: 0,
            conversation: samples::GROUP,
            messages: vec![],
            reactions: vec![
                ReactionCount {
                    seq: 0,
                    emoji: String::new(),
                    count,
                    users: vec![]
                };
                n
            ],
            has_more: false,
            has_more_before: false,
            has_more_after: false,
        }
    };
    // One-time keys per device are bounded by the decoder, so the many-small-tables case is a
    // bundle of many devices with empty keys.
    let empty_keys = |n: usize| ServerMessage::KeyBundle {
        request_id: 0,
        devices: vec![DeviceKeys::empty(samples::ALICE, samples::ALICE_PHONE); n],
        unanswered: vec![],
    };
    let tiny_messages = |n: usize| ServerMessage::HistoryPage {
        request_id: 0,
        conversation: samples::GROUP,
        messages: vec![
            Message {
                conversation: samples::GROUP,
                seq: 0,
                message_id: samples::MESSAGE_1,
                sender_user: samples::ALICE,
                sender_device: samples::ALICE_PHONE,
                client_msg_id: 0,
                timestamp_ms: 0,
                content_type: String::new(),
                payload: vec![],
                files: vec![],
            };
            n
        ],
        reactions: vec![],
        has_more: false,
        has_more_before: false,
        has_more_after: false,
    };
    let cases: [(&str, &dyn Fn(usize) -> ServerMessage); 4] = [
        ("empty reactions", &reactions(0)),
        ("reactions with only a count", &reactions(1)),
        ("empty one-time keys", &empty_keys),
        ("minimal messages", &tiny_messages),
    ];
    for (name, make) in cases {
        let msg = fill(make);
        let bytes = crate::encode_server(&msg);
        assert!(
            bytes.len() > limits.max_frame_bytes - 64,
            "{name}: frame is full"
        );
        let ratio = apparent_size(&bytes) as f64 / bytes.len() as f64;
        assert!(
            ratio < 3.0,
            "{name}: apparent size is {ratio:.2}x the frame, margin to 4x is thin"
        );
        assert_eq!(decode_server(&bytes, &limits).as_ref(), Ok(&msg), "{name}");
    }
}

/// The server keeps a `KeyBundle` inside one frame by adding up `key_bundle_device_bytes`: the
/// bound must never be below what the encoder writes, for any mix of field sizes.
#[test]
fn key_bundle_size_bound_is_never_below_the_encoding() {
    use crate::encode_server;
    use crate::ids::{DeviceId, UserId};
    use crate::limits::{
        KEY_BUNDLE_FIXED_BYTES, KEY_BUNDLE_UNANSWERED_USER_BYTES, MAX_CLAIMED_DEVICE_BYTES,
        MAX_KEY_BLOB_BYTES, key_bundle_device_bytes,
    };
    // A small deterministic generator (no dependency): sizes 0..=MAX_KEY_BLOB_BYTES.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = |max: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % (max as u64 + 1)) as usize
    };
    for round in 0..200 {
        let n = next(40);
        let devices: Vec<DeviceKeys> = (0..n)
            .map(|i| DeviceKeys {
                user: UserId(i as u128 + 1),
                device: DeviceId(i as u128 + 7),
                identity_key: vec![1; next(MAX_KEY_BLOB_BYTES)],
                signed_prekey: vec![2; next(MAX_KEY_BLOB_BYTES)],
                one_time_keys: (0..next(3))
                    .map(|_| vec![3; next(MAX_KEY_BLOB_BYTES)])
                    .collect(),
                signing_key: vec![4; next(MAX_KEY_BLOB_BYTES)],
                fallback_key: vec![5; next(MAX_KEY_BLOB_BYTES)],
                signature: vec![6; next(MAX_KEY_BLOB_BYTES)],
            })
            .collect();
        let unanswered: Vec<UserId> = (0..next(50)).map(|u| UserId(u as u128)).collect();
        let bound = KEY_BUNDLE_FIXED_BYTES
            + devices.iter().map(key_bundle_device_bytes).sum::<usize>()
            + unanswered.len() * KEY_BUNDLE_UNANSWERED_USER_BYTES;
        let encoded = encode_server(&ServerMessage::KeyBundle {
            request_id: u64::MAX,
            devices,
            unanswered,
        });
        assert!(
            encoded.len() <= bound,
            "round {round}: encoded {} > bound {bound}",
            encoded.len()
        );
    }
    // A claimed device at every decode limit (one one-time key) is within the claim reserve.
    let worst = DeviceKeys {
        user: UserId(u128::MAX),
        device: DeviceId(u128::MAX),
        identity_key: vec![1; MAX_KEY_BLOB_BYTES],
        signed_prekey: vec![2; MAX_KEY_BLOB_BYTES],
        one_time_keys: vec![vec![3; MAX_KEY_BLOB_BYTES]],
        signing_key: vec![4; MAX_KEY_BLOB_BYTES],
        fallback_key: vec![5; MAX_KEY_BLOB_BYTES],
        signature: vec![6; MAX_KEY_BLOB_BYTES],
    };
    assert!(key_bundle_device_bytes(&worst) <= MAX_CLAIMED_DEVICE_BYTES);
    let fit = (Limits::DEFAULT_MAX_FRAME_BYTES - KEY_BUNDLE_FIXED_BYTES) / MAX_CLAIMED_DEVICE_BYTES;
    let encoded = encode_server(&ServerMessage::KeyBundle {
        request_id: 1,
        devices: vec![worst; fit],
        unanswered: vec![],
    });
    assert!(encoded.len() <= Limits::DEFAULT_MAX_FRAME_BYTES);
}
