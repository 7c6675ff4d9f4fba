//! The key directory's round trips, without any crypto state: device lists (`QueryKeys`),
//! one-time key claims (`ClaimKeysBatch`) and key-share uploads (`SendKeyShares`). Each
//! function only talks to the server and returns what it got, so a driver can run them while
//! other tasks use the device's [`super::E2e`] (see [`super::send`]).

use std::collections::BTreeMap;
use std::time::Duration;

// How requests are sized to the frame is the core's (shared with the web client).
pub use tern_core::crypto::send_plan::{
    claim_batch_devices, claim_batches, query_batches, share_batches,
};
use tern_core::crypto::{KeyShareOut, PublishedKeys};
use tern_wire::ids::{DeviceId, UserId};
use tern_wire::msg::{ClaimTarget, ClientMessage, DeviceKeys, KeyShareItem, ServerMessage};

use super::published_from_wire;
use crate::connection::ConnectionSender;
use crate::error::{Error, Result};

/// `ClaimKeysBatch` requests in flight at once: a 1,000-member group's first message needs
/// ~15 (68 devices per 64 KiB answer); 4 overlap the round trips without a burst that trips
/// the server's per-device request rate.
const CLAIMS_IN_FLIGHT: usize = 4;
/// Retries of one request refused with `rate_limited` (each after the server's wait): enough
/// to ride out a burst, bounded so a server that always refuses ends the send.
const MAX_RATE_LIMITED_RETRIES: u32 = 200;
/// Shortest wait before such a retry.
const RATE_LIMITED_WAIT: Duration = Duration::from_millis(10);

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
    for chunk in query_batches(users) {
        let mut pending = chunk;
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
