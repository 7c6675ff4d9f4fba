//! Device directory cache, trust on first use, safety numbers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha512};
use tern_wire::ids::{DeviceId, UserId};

use super::keys::{PublishedKeys, verify_device_keys};
use super::{CryptoError, MAX_DEVICES_PER_USER};

/// Previous identity keys remembered per device so history received under an earlier
/// identity stays readable after a reinstall: 8 reinstalls of one device id is far beyond
/// normal use and bounds the record.
pub const MAX_PREVIOUS_IDENTITIES: usize = 8;
/// Signal's iteration count for the fingerprint hash: slows down a search for a colliding key
/// set without being noticeable once per comparison.
const SAFETY_NUMBER_ITERATIONS: usize = 5200;

/// How far a device is trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trust {
    /// The user compared safety numbers and marked it verified.
    Verified,
    /// Pinned on first use, never compared.
    Unverified,
    /// Its identity changed after it was first pinned, and nobody verified the new one: show
    /// the warning.
    Changed,
}

/// What a device-list update changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustEvent {
    /// A device appeared for a user we already knew (first sight of a user pins silently).
    NewDevice { user: UserId, device: DeviceId },
    /// A known device now has another identity key: the warning.
    IdentityChanged { user: UserId, device: DeviceId },
    /// A device is gone from the user's list (revoked): outbound sessions shared with it rotate.
    DeviceRemoved { user: UserId, device: DeviceId },
    /// A listed device's keys did not verify; it was ignored.
    InvalidKeys {
        user: UserId,
        device: DeviceId,
        reason: &'static str,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct DeviceRecord {
    pub identity_key: [u8; 32],
    pub signing_key: [u8; 32],
    pub previous_identity_keys: Vec<[u8; 32]>,
    pub trust: Trust,
    pub blocked: bool,
    pub first_seen_ms: u64,
}

impl DeviceRecord {
    /// Whether `key` is (or was) this device's identity key.
    pub fn had_identity(&self, key: &[u8; 32]) -> bool {
        &self.identity_key == key || self.previous_identity_keys.contains(key)
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct UserRecord {
    pub devices: BTreeMap<DeviceId, DeviceRecord>,
    /// Set by a DeviceListChanged push: the driver should query again.
    pub stale: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Directory {
    pub users: BTreeMap<UserId, UserRecord>,
}

impl Directory {
    pub fn device(&self, user: UserId, device: DeviceId) -> Option<&DeviceRecord> {
        self.users.get(&user)?.devices.get(&device)
    }

    /// Replaces the cached list of `user` with `devices` (the complete list from the server).
    /// `own` is this device: its record is never replaced by what the server says.
    pub fn apply_list(
        &mut self,
        user: UserId,
        devices: &[PublishedKeys],
        own: (UserId, DeviceId),
        now_ms: u64,
    ) -> Result<Vec<TrustEvent>, CryptoError> {
        if devices.len() > MAX_DEVICES_PER_USER {
            return Err(CryptoError::TooManyDevices {
                user,
                count: devices.len(),
                max: MAX_DEVICES_PER_USER,
            });
        }
        let known_user = self.users.contains_key(&user);
        let record = self.users.entry(user).or_default();
        record.stale = false;
        let mut events = Vec::new();
        let mut listed = Vec::with_capacity(devices.len());
        for keys in devices {
            if keys.user != user {
                events.push(TrustEvent::InvalidKeys {
                    user,
                    device: keys.device,
                    reason: "device listed under another user",
                });
                continue;
            }
            let identity = match verify_device_keys(keys) {
                Ok(identity) => identity,
                Err(CryptoError::InvalidKeys { reason, .. }) => {
                    events.push(TrustEvent::InvalidKeys {
                        user,
                        device: keys.device,
                        reason,
                    });
                    continue;
                }
                Err(e) => return Err(e),
            };
            listed.push(keys.device);
            let is_own = (user, keys.device) == own;
            match record.devices.get_mut(&keys.device) {
                Some(existing) if existing.identity_key == identity.identity_key => {}
                Some(existing) => {
                    events.push(TrustEvent::IdentityChanged {
                        user,
                        device: keys.device,
                    });
                    if is_own {
                        // The server lies about this very device: keep the real keys.
                        continue;
                    }
                    let old = existing.identity_key;
                    existing.previous_identity_keys.retain(|k| k != &old);
                    existing.previous_identity_keys.push(old);
                    if existing.previous_identity_keys.len() > MAX_PREVIOUS_IDENTITIES {
                        existing.previous_identity_keys.remove(0);
                    }
                    existing.identity_key = identity.identity_key;
                    existing.signing_key = identity.signing_key;
                    existing.trust = Trust::Changed;
                }
                None => {
                    if known_user {
                        events.push(TrustEvent::NewDevice {
                            user,
                            device: keys.device,
                        });
                    }
                    record.devices.insert(
                        keys.device,
                        DeviceRecord {
                            identity_key: identity.identity_key,
                            signing_key: identity.signing_key,
                            previous_identity_keys: Vec::new(),
                            trust: Trust::Unverified,
                            blocked: false,
                            first_seen_ms: now_ms,
                        },
                    );
                }
            }
        }
        let removed: Vec<DeviceId> = record
            .devices
            .keys()
            .filter(|d| !listed.contains(d) && (user, **d) != own)
            .copied()
            .collect();
        for device in removed {
            record.devices.remove(&device);
            events.push(TrustEvent::DeviceRemoved { user, device });
        }
        Ok(events)
    }

    /// The (identity, signing) keys of every cached device of `user`, sorted.
    pub fn key_set(&self, user: UserId) -> Vec<[u8; 64]> {
        let mut keys: Vec<[u8; 64]> = self
            .users
            .get(&user)
            .map(|r| {
                r.devices
                    .values()
                    .map(|d| {
                        let mut k = [0u8; 64];
                        k[..32].copy_from_slice(&d.identity_key);
                        k[32..].copy_from_slice(&d.signing_key);
                        k
                    })
                    .collect()
            })
            .unwrap_or_default();
        keys.sort();
        keys
    }
}

/// 30 digits for one user (Signal's "displayable fingerprint" half): SHA-512 iterated 5,200
/// times over `version || user id || sorted device keys`, then six 5-byte chunks, each
/// `big-endian u40 mod 100000` as 5 digits.
fn fingerprint_half(user: UserId, keys: &[[u8; 64]]) -> String {
    let mut material = Vec::with_capacity(16 + keys.len() * 64);
    for k in keys {
        material.extend_from_slice(k);
    }
    let mut hash = Sha512::new()
        .chain_update(b"tern.safety_number.v1\0")
        .chain_update(user.to_be_bytes())
        .chain_update(&material)
        .finalize();
    for _ in 0..SAFETY_NUMBER_ITERATIONS {
        hash = Sha512::new()
            .chain_update(hash)
            .chain_update(&material)
            .finalize();
    }
    let mut out = String::with_capacity(30);
    for chunk in hash[..30].chunks(5) {
        let v = chunk.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
        out.push_str(&format!("{:05}", v % 100_000));
    }
    out
}

/// The 60-digit safety number of two users, as 12 groups of 5 digits separated by spaces.
/// The halves are ordered by user id, so both sides compute the same string; any key change
/// of either user's devices changes it.
pub fn safety_number(a: UserId, a_keys: &[[u8; 64]], b: UserId, b_keys: &[[u8; 64]]) -> String {
    let (first, second) = if a <= b {
        (fingerprint_half(a, a_keys), fingerprint_half(b, b_keys))
    } else {
        (fingerprint_half(b, b_keys), fingerprint_half(a, a_keys))
    };
    let digits = first + &second;
    digits
        .as_bytes()
        .chunks(5)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}
