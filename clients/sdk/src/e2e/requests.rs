//! The key directory's round trips, without any crypto state: device lists (`QueryKeys`),
//! one-time key claims (`ClaimKeysBatch`) and key-share uploads (`SendKeyShares`). Each
//! function only talks to the server and returns what it got, so a driver can run them while
//! other tasks use the device's [`super::E2e`] (see [`super::send`]).

use std::collections::BTreeMap;
use std::time::Duration;

use tern_core::crypto::{KeyShareOut, PublishedKeys};
use tern_wire::ids::{DeviceId, UserId};
use tern_wire::limits::{
    KEY_BUNDLE_FIXED_BYTES, KEY_BUNDLE_UNANSWERED_USER_BYTES, MAX_CLAIM_BATCH_DEVICES,
    MAX_CLAIM_BATCH_TARGETS, MAX_CLAIM_DEVICES, MAX_CLAIMED_DEVICE_BYTES, MAX_QUERY_KEYS_USERS,
};
use tern_wire::msg::{ClaimTarget, ClientMessage, DeviceKeys, KeyShareItem, ServerMessage};

use super::published_from_wire;
use crate::connection::ConnectionSender;
use crate::error::{Error, Result};

/// Users per `QueryKeys`. The server answers as many as fit in one frame and names the rest
/// (asked again), so this only bounds one request's work: 200 users, ~40 KB with one device
/// each, usually one frame.
const QUERY_BATCH: usize = 200;
/// Shares per `ClientSendKeyShares` (the server's bound).
const SHARE_BATCH: usize = 2_000;
/// Bytes a share adds to a `ClientSendKeyShares` frame besides its payload (two 16-byte ids,
/// FlatBuffers table, vector and offset overhead), rounded up.
const SHARE_FRAME_OVERHEAD: usize = 96;
/// Room kept in a frame for the envelope and the request itself.
const FRAME_HEADROOM: usize = 1_024;
/// `ClaimKeysBatch` requests in flight at once: a 1,000-member group's first message needs
/// ~15 (68 devices per 64 KiB answer); 4 overlap the round trips without a burst that trips
/// the server's per-device request rate.
const CLAIMS_IN_FLIGHT: usize = 4;
/// Retries of one request refused with `rate_limited` (each after the server's wait): enough
/// to ride out a burst, bounded so a server that always refuses ends the send.
const MAX_RATE_LIMITED_RETRIES: u32 = 200;
/// Shortest wait before such a retry.
const RATE_LIMITED_WAIT: Duration = Duration::from_millis(10);

/// Splits `payload_sizes` (in order) into consecutive batches of at most [`SHARE_BATCH`]
/// shares whose frame stays within `max_frame_bytes` (the server's `Welcome` value): a
/// 100-member group's ~900-byte Olm shares are ~90 KB, more than one 64 KiB frame.
pub fn share_batches(
    payload_sizes: &[usize],
    max_frame_bytes: usize,
) -> Vec<std::ops::Range<usize>> {
    let budget = max_frame_bytes.saturating_sub(FRAME_HEADROOM).max(1);
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, size) in payload_sizes.iter().enumerate() {
        let cost = size + SHARE_FRAME_OVERHEAD;
        if i > start && (bytes + cost > budget || i - start >= SHARE_BATCH) {
            out.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes += cost;
    }
    if start < payload_sizes.len() {
        out.push(start..payload_sizes.len());
    }
    out
}

/// Devices per `ClaimKeysBatch` so that the server's answer (each claimed device reserved at
/// its largest) fits in one frame of `max_frame_bytes`.
pub fn claim_batch_devices(max_frame_bytes: usize) -> usize {
    let usable = max_frame_bytes.saturating_sub(FRAME_HEADROOM + KEY_BUNDLE_FIXED_BYTES);
    (usable / (MAX_CLAIMED_DEVICE_BYTES + KEY_BUNDLE_UNANSWERED_USER_BYTES))
        .clamp(1, MAX_CLAIM_BATCH_DEVICES)
}

/// Groups `devices` into `ClaimKeysBatch` requests of at most `per_request` devices (a user
/// with more is split over targets), keeping each user's devices together where they fit.
pub fn claim_batches(devices: &[(UserId, DeviceId)], per_request: usize) -> Vec<Vec<ClaimTarget>> {
    let per_request = per_request.max(1);
    let mut by_user: BTreeMap<UserId, Vec<DeviceId>> = BTreeMap::new();
    for (u, d) in devices {
        let list = by_user.entry(*u).or_default();
        if !list.contains(d) {
            list.push(*d);
        }
    }
    let mut batches: Vec<Vec<ClaimTarget>> = Vec::new();
    let mut in_batch = 0;
    let limit_per_target = MAX_CLAIM_DEVICES.min(per_request);
    for (user, list) in by_user {
        for chunk in list.chunks(limit_per_target) {
            let full = in_batch + chunk.len() > per_request
                || batches
                    .last()
                    .is_some_and(|b| b.len() >= MAX_CLAIM_BATCH_TARGETS);
            if batches.is_empty() || full {
                batches.push(Vec::new());
                in_batch = 0;
            }
            in_batch += chunk.len();
            if let Some(batch) = batches.last_mut() {
                batch.push(ClaimTarget {
                    user,
                    devices: chunk.to_vec(),
                });
            }
        }
    }
    batches
}

/// A request, asked again while the server answers `rate_limited` (a large group's first
/// message is a burst of requests).
pub async fn request_patiently(
    sender: &ConnectionSender,
    build: impl Fn(u64) -> ClientMessage,
) -> Result<ServerMessage> {
    let mut attempts = 0;
    loop {
        match sender.request(&build).await {
            Err(e) if e.code() == Some("rate_limited") && attempts < MAX_RATE_LIMITED_RETRIES => {
                attempts += 1;
                let wait = e.retry_after().unwrap_or(RATE_LIMITED_WAIT);
                tokio::time::sleep(wait.max(RATE_LIMITED_WAIT)).await;
            }
            other => return other,
        }
    }
}

/// A `KeyBundle` answer's devices and unanswered users, or a protocol error.
fn key_bundle(what: &str, reply: ServerMessage) -> Result<(Vec<DeviceKeys>, Vec<UserId>)> {
    match reply {
        ServerMessage::KeyBundle {
            devices,
            unanswered,
            ..
        } => Ok((devices, unanswered)),
        other => Err(Error::Protocol(format!(
            "{what} answered with {}",
            other.variant_name()
        ))),
    }
}

/// The device lists of `users` (every user present, an empty list when it has no device).
/// Users the server left out of a full answer are asked again; an answer that makes no
/// progress is a protocol error (never a loop).
pub async fn fetch_device_lists(
    sender: &ConnectionSender,
    users: &[UserId],
) -> Result<BTreeMap<UserId, Vec<PublishedKeys>>> {
    let mut lists: BTreeMap<UserId, Vec<PublishedKeys>> =
        users.iter().map(|u| (*u, Vec::new())).collect();
    let batch = QUERY_BATCH.min(MAX_QUERY_KEYS_USERS);
    for chunk in users.chunks(batch) {
        let mut pending = chunk.to_vec();
        while !pending.is_empty() {
            let asked = pending.len();
            let reply = request_patiently(sender, |request_id| ClientMessage::QueryKeys {
                request_id,
                users: pending.clone(),
            })
            .await?;
            let (devices, unanswered) = key_bundle("QueryKeys", reply)?;
            for d in &devices {
                if let Some(list) = lists.get_mut(&d.user) {
                    list.push(published_from_wire(d));
                }
            }
            if unanswered.len() >= asked {
                return Err(Error::Protocol(
                    "QueryKeys answer left every user unanswered".into(),
                ));
            }
            pending = unanswered;
        }
    }
    Ok(lists)
}

/// One claimed key bundle per device of `devices` that has keys (`ClaimKeysBatch`, batched
/// to fit the server's frame, a few requests in flight). Targets a full answer left out are
/// claimed again.
pub async fn fetch_claims(
    sender: &ConnectionSender,
    devices: &[(UserId, DeviceId)],
) -> Result<Vec<PublishedKeys>> {
    use futures_util::StreamExt as _;
    let per_request = claim_batch_devices(sender.welcome().max_frame_bytes as usize);
    let mut todo = claim_batches(devices, per_request);
    let mut bundles = Vec::new();
    // Each round makes progress (or fails): a target the server left out is retried once
    // per round, and a round where nothing was answered is an error.
    while !todo.is_empty() {
        let asked: usize = todo.iter().map(Vec::len).sum();
        let mut retry: Vec<ClaimTarget> = Vec::new();
        let mut replies = futures_util::stream::iter(todo)
            .map(|targets| async move {
                let reply = request_patiently(sender, |request_id| ClientMessage::ClaimKeysBatch {
                    request_id,
                    targets: targets.clone(),
                })
                .await;
                (targets, reply)
            })
            .buffer_unordered(CLAIMS_IN_FLIGHT);
        while let Some((targets, reply)) = replies.next().await {
            let (claimed, unanswered) = key_bundle("ClaimKeysBatch", reply?)?;
            bundles.extend(claimed.iter().map(published_from_wire));
            retry.extend(targets.into_iter().filter(|t| unanswered.contains(&t.user)));
        }
        if retry.len() >= asked {
            return Err(Error::Protocol(
                "ClaimKeysBatch answer left every target unanswered".into(),
            ));
        }
        let again: Vec<(UserId, DeviceId)> = retry
            .iter()
            .flat_map(|t| t.devices.iter().map(|d| (t.user, *d)))
            .collect();
        todo = claim_batches(&again, per_request);
    }
    Ok(bundles)
}

/// Stores `shares` in the recipients' inboxes (batched to fit the frame). Returns the devices
/// whose inbox was full (they miss this key).
pub async fn upload_key_shares(
    sender: &ConnectionSender,
    shares: &[KeyShareOut],
) -> Result<Vec<DeviceId>> {
    let sizes: Vec<usize> = shares.iter().map(|s| s.payload.len()).collect();
    let max_frame = sender.welcome().max_frame_bytes as usize;
    let mut full_inboxes = Vec::new();
    for range in share_batches(&sizes, max_frame) {
        let items: Vec<KeyShareItem> = shares[range]
            .iter()
            .map(|s| KeyShareItem {
                to_user: s.to_user,
                to_device: s.to_device,
                payload: s.payload.clone(),
            })
            .collect();
        let reply = request_patiently(sender, |request_id| ClientMessage::SendKeyShares {
            request_id,
            shares: items.clone(),
        })
        .await?;
        if let ServerMessage::KeySharesStored { full, .. } = reply {
            full_inboxes.extend(full);
        }
    }
    Ok(full_inboxes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_shares_are_split_to_fit_the_frame() {
        let sizes = vec![900; 99];
        let batches = share_batches(&sizes, 65_536);
        assert!(batches.len() >= 2, "{batches:?}");
        let mut next = 0;
        for b in &batches {
            assert_eq!(b.start, next);
            next = b.end;
            let bytes: usize = sizes[b.clone()]
                .iter()
                .map(|s| s + SHARE_FRAME_OVERHEAD)
                .sum();
            assert!(bytes + FRAME_HEADROOM <= 65_536, "{b:?} is {bytes} bytes");
        }
        assert_eq!(next, sizes.len());
        assert_eq!(
            share_batches(&[], 65_536),
            Vec::<std::ops::Range<usize>>::new()
        );
        assert_eq!(
            share_batches(&[10; 5000], 1 << 30).len(),
            3,
            "at most SHARE_BATCH each"
        );
    }

    #[test]
    fn claims_are_batched_by_the_frame_and_keep_every_device_once() {
        let per = claim_batch_devices(64 * 1024);
        assert!(per >= 32, "a 64 KiB frame holds {per} claimed devices");
        // 999 users with one device, one user with 150 devices (split over targets), and a
        // duplicate pair.
        let mut devices: Vec<(UserId, DeviceId)> =
            (1..=999).map(|u| (UserId(u), DeviceId(u))).collect();
        devices.extend((0..150).map(|d| (UserId(5_000), DeviceId(10_000 + d))));
        devices.push((UserId(1), DeviceId(1)));
        let batches = claim_batches(&devices, per);
        let mut seen = std::collections::BTreeSet::new();
        for b in &batches {
            let n: usize = b.iter().map(|t| t.devices.len()).sum();
            assert!(n <= per, "batch of {n} devices > {per}");
            assert!(b.len() <= MAX_CLAIM_BATCH_TARGETS);
            for t in b {
                assert!(!t.devices.is_empty() && t.devices.len() <= MAX_CLAIM_DEVICES);
                for d in &t.devices {
                    assert!(seen.insert((t.user, *d)), "device claimed twice");
                }
            }
        }
        assert_eq!(seen.len(), 999 + 150, "every device is claimed");
        assert!(
            batches.len() < 999 / 10,
            "{} requests for 1,149 devices",
            batches.len()
        );
        // The answer to a full batch at worst-case key sizes fits the frame.
        assert!(
            KEY_BUNDLE_FIXED_BYTES + per * MAX_CLAIMED_DEVICE_BYTES + FRAME_HEADROOM <= 64 * 1024
        );
    }
}
