//! One send's preparation as a sans-IO step machine: which device lists to query and which
//! devices to claim keys for before `encrypt` can reach every member device, with bounded
//! rounds. The native SDK and the web client both run it; only the round trips differ.
//!
//! ```text
//! let mut plan = SendPlan::new(conversation, members);
//! loop {
//!     match plan.next(&mut machine, now_ms)? {
//!         SendStep::Query(users) => /* QueryKeys; machine.on_device_list(user, complete list) */,
//!         SendStep::Claim(devices) => /* ClaimKeysBatch; machine.on_claimed(bundles) */,
//!         SendStep::Ready => break, // machine.encrypt(conversation, body, now_ms)
//!     }
//! }
//! ```
//!
//! Also here: how the key directory's requests and the key-share upload are split to fit one
//! frame (pure functions of sizes, shared by both drivers).

use std::collections::BTreeMap;
use std::ops::Range;

use tern_wire::ids::{ConversationId, DeviceId, UserId};
use tern_wire::limits::{
    KEY_BUNDLE_FIXED_BYTES, KEY_BUNDLE_UNANSWERED_USER_BYTES, MAX_CLAIM_BATCH_DEVICES,
    MAX_CLAIM_BATCH_TARGETS, MAX_CLAIM_DEVICES, MAX_CLAIMED_DEVICE_BYTES,
    MAX_KEY_SHARES_PER_REQUEST, MAX_QUERY_KEYS_USERS,
};
use tern_wire::msg::ClaimTarget;

use super::{CryptoError, CryptoMachine};

/// Device-list queries per send before the lists count as stuck (each query answers every
/// user asked; a list still stale after that is a server or directory fault).
pub const MAX_QUERY_ROUNDS: usize = 3;
/// How many claim rounds may still leave devices without an Olm session before we send
/// anyway: a device with no claimable key (never published) must not block the conversation.
pub const MAX_CLAIM_ROUNDS: usize = 2;

/// What the driver does next for this send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendStep {
    /// Query these users' device lists (`QueryKeys`, see [`query_batches`]) and give each
    /// user's COMPLETE list to [`CryptoMachine::on_device_list`]; then call `next` again.
    Query(Vec<UserId>),
    /// Claim one-time keys of these devices (`ClaimKeysBatch`, see [`claim_batches`]) and give
    /// the bundles to [`CryptoMachine::on_claimed`]; then call `next` again.
    Claim(Vec<(UserId, DeviceId)>),
    /// Everything the machine can get is there: `encrypt`.
    Ready,
}

/// The preparation of one send to `conversation` (see the module docs).
#[derive(Debug, Clone)]
pub struct SendPlan {
    conversation: ConversationId,
    members: Vec<UserId>,
    queries: usize,
    claims: usize,
}

impl SendPlan {
    pub fn new(conversation: ConversationId, members: Vec<UserId>) -> Self {
        SendPlan {
            conversation,
            members,
            queries: 0,
            claims: 0,
        }
    }

    pub fn conversation(&self) -> ConversationId {
        self.conversation
    }

    /// Query rounds handed out so far.
    pub fn queries(&self) -> usize {
        self.queries
    }

    /// Claim rounds handed out so far.
    pub fn claims(&self) -> usize {
        self.claims
    }

    /// The next step, from what the machine knows now. Fails when the machine refuses the
    /// conversation (too many members) or the device lists stay stale after
    /// [`MAX_QUERY_ROUNDS`] queries.
    pub fn next(
        &mut self,
        machine: &mut CryptoMachine,
        now_ms: u64,
    ) -> Result<SendStep, CryptoError> {
        let needs = machine.prepare(self.conversation, &self.members, now_ms)?;
        if !needs.query_users.is_empty() {
            self.queries += 1;
            if self.queries > MAX_QUERY_ROUNDS {
                return Err(CryptoError::DeviceListsStuck {
                    queries: MAX_QUERY_ROUNDS,
                });
            }
            return Ok(SendStep::Query(needs.query_users));
        }
        if !needs.claim.is_empty() && self.claims < MAX_CLAIM_ROUNDS {
            self.claims += 1;
            return Ok(SendStep::Claim(needs.claim));
        }
        Ok(SendStep::Ready)
    }
}

// ---------------------------------------------------------------- request sizing

/// Users per `QueryKeys`. The server answers as many as fit in one frame and names the rest
/// (asked again), so this only bounds one request's work: 200 users, ~40 KB with one device
/// each, usually one frame.
pub const QUERY_BATCH: usize = if MAX_QUERY_KEYS_USERS < 200 {
    MAX_QUERY_KEYS_USERS
} else {
    200
};
/// Shares per `ClientSendKeyShares` (the server's bound).
pub const SHARE_BATCH: usize = MAX_KEY_SHARES_PER_REQUEST;
/// Bytes a share adds to a `ClientSendKeyShares` frame besides its payload (two 16-byte ids,
/// FlatBuffers table, vector and offset overhead), rounded up.
pub const SHARE_FRAME_OVERHEAD: usize = 96;
/// Room kept in a frame for the envelope and the request itself.
pub const FRAME_HEADROOM: usize = 1_024;

/// `users` in `QueryKeys` batches of at most [`QUERY_BATCH`].
pub fn query_batches(users: &[UserId]) -> Vec<Vec<UserId>> {
    users.chunks(QUERY_BATCH).map(<[UserId]>::to_vec).collect()
}

/// Splits `payload_sizes` (in order) into consecutive batches of at most [`SHARE_BATCH`]
/// shares whose frame stays within `max_frame_bytes` (the server's `Welcome` value): a
/// 100-member group's ~900-byte Olm shares are ~90 KB, more than one 64 KiB frame.
pub fn share_batches(payload_sizes: &[usize], max_frame_bytes: usize) -> Vec<Range<usize>> {
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
        assert_eq!(share_batches(&[], 65_536), Vec::<Range<usize>>::new());
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

    #[test]
    fn queries_are_batched() {
        let users: Vec<UserId> = (0..450).map(UserId).collect();
        let b = query_batches(&users);
        assert_eq!(b.iter().map(Vec::len).collect::<Vec<_>>(), [200, 200, 50]);
        assert_eq!(b.concat(), users);
        assert!(query_batches(&[]).is_empty());
    }
}
