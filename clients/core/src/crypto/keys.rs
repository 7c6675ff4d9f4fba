//! Published device keys and their signatures.
//!
//! Formats (all fixed-size, the server never parses them):
//! * **Signed key blob** (one-time keys and the fallback key): `curve25519_public (32 B) ||
//!   ed25519_signature (64 B)` = 96 B. The signature is by the device's Ed25519 key over
//!   `"tern.signed_key.v1\0" || kind (1 B: 1 = one-time, 2 = fallback) || user (16 B BE) ||
//!   device (16 B BE) || key (32 B)`. The domain prefix keeps these signatures apart from every
//!   other use of the key; the kind keeps a one-time key from being replayed as a fallback; the
//!   ids bind the key to its device so a server cannot move it to another one.
//! * **Device keys signature**: Ed25519 by `signing_key` over `"tern.device_keys.v1\0" || user
//!   || device || identity_key (32 B) || signing_key (32 B)`. It proves the device holds the
//!   Ed25519 key and binds the Curve25519 identity to it and to the ids.

use serde::{Deserialize, Serialize};
use tern_wire::ids::{DeviceId, UserId};
use tern_wire::msg::DeviceKeys;
use vodozemac::olm::Account;
use vodozemac::{Curve25519PublicKey, Ed25519PublicKey, Ed25519Signature};

use super::CryptoError;

/// Length of a signed key blob: key (32) + signature (64).
pub const SIGNED_KEY_BLOB_LEN: usize = 32 + 64;

/// What a device publishes to the key directory (and what a query or claim returns for it).
/// Mirrors `tern_wire::msg::DeviceKeys` plus the fields added by issue 11.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedKeys {
    pub user: UserId,
    pub device: DeviceId,
    /// Curve25519 public identity key (32 B).
    pub identity_key: Vec<u8>,
    /// Ed25519 public signing key (32 B).
    pub signing_key: Vec<u8>,
    /// Ed25519 signature over the canonical device-keys bytes (64 B).
    pub signature: Vec<u8>,
    /// Signed key blobs of one-time keys (on publish: new ones; on claim: at most one).
    pub one_time_keys: Vec<Vec<u8>>,
    /// Signed key blob of the fallback key, or empty.
    pub fallback_key: Vec<u8>,
}

impl PublishedKeys {
    /// From the wire's `DeviceKeys` (a `KeyBundle` answer's device).
    pub fn from_wire(k: &DeviceKeys) -> Self {
        PublishedKeys {
            user: k.user,
            device: k.device,
            identity_key: k.identity_key.clone(),
            signing_key: k.signing_key.clone(),
            signature: k.signature.clone(),
            one_time_keys: k.one_time_keys.clone(),
            fallback_key: k.fallback_key.clone(),
        }
    }

    /// To the wire's `DeviceKeys` (what `PublishKeys` carries; `signed_prekey` is unused).
    pub fn to_wire(&self) -> DeviceKeys {
        DeviceKeys {
            user: self.user,
            device: self.device,
            identity_key: self.identity_key.clone(),
            signed_prekey: Vec::new(),
            one_time_keys: self.one_time_keys.clone(),
            signing_key: self.signing_key.clone(),
            fallback_key: self.fallback_key.clone(),
            signature: self.signature.clone(),
        }
    }
}

/// Which kind of key a signed blob carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    OneTime = 1,
    Fallback = 2,
}

/// The identity of a device whose published keys verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifiedIdentity {
    pub identity_key: [u8; 32],
    pub signing_key: [u8; 32],
}

fn signed_key_message(user: UserId, device: DeviceId, kind: KeyKind, key: &[u8; 32]) -> Vec<u8> {
    let mut m = Vec::with_capacity(19 + 1 + 32 + 32);
    m.extend_from_slice(b"tern.signed_key.v1\0");
    m.push(kind as u8);
    m.extend_from_slice(&user.to_be_bytes());
    m.extend_from_slice(&device.to_be_bytes());
    m.extend_from_slice(key);
    m
}

/// The canonical bytes the device-keys signature covers.
pub fn device_keys_message(
    user: UserId,
    device: DeviceId,
    identity_key: &[u8; 32],
    signing_key: &[u8; 32],
) -> Vec<u8> {
    let mut m = Vec::with_capacity(20 + 32 + 64);
    m.extend_from_slice(b"tern.device_keys.v1\0");
    m.extend_from_slice(&user.to_be_bytes());
    m.extend_from_slice(&device.to_be_bytes());
    m.extend_from_slice(identity_key);
    m.extend_from_slice(signing_key);
    m
}

pub(crate) fn sign_key_blob(
    account: &Account,
    user: UserId,
    device: DeviceId,
    kind: KeyKind,
    key: &Curve25519PublicKey,
) -> Vec<u8> {
    let signature = account.sign(signed_key_message(user, device, kind, key.as_bytes()));
    let mut blob = Vec::with_capacity(SIGNED_KEY_BLOB_LEN);
    blob.extend_from_slice(key.as_bytes());
    blob.extend_from_slice(&signature.to_bytes());
    blob
}

/// Checks a signed key blob of `kind` for `user`/`device` against the device's signing key.
pub fn verify_key_blob(
    signing_key: &[u8; 32],
    user: UserId,
    device: DeviceId,
    kind: KeyKind,
    blob: &[u8],
) -> Result<Curve25519PublicKey, &'static str> {
    if blob.len() != SIGNED_KEY_BLOB_LEN {
        return Err("signed key blob has the wrong length");
    }
    let (key, sig) = blob.split_at(32);
    let mut key_bytes = [0u8; 32];
    key_bytes.copy_from_slice(key);
    let signer = Ed25519PublicKey::from_slice(signing_key).map_err(|_| "bad signing key")?;
    let sig = Ed25519Signature::from_slice(sig).map_err(|_| "bad signature encoding")?;
    signer
        .verify(&signed_key_message(user, device, kind, &key_bytes), &sig)
        .map_err(|_| "key signature does not verify")?;
    Ok(Curve25519PublicKey::from_bytes(key_bytes))
}

/// Checks the device-keys signature of published keys (the receiving side's first step).
/// Rejects wrong lengths and bad signatures; does not look at one-time or fallback keys.
pub fn verify_device_keys(keys: &PublishedKeys) -> Result<VerifiedIdentity, CryptoError> {
    let bad = |reason| CryptoError::InvalidKeys {
        user: keys.user,
        device: keys.device,
        reason,
    };
    let identity_key: [u8; 32] = keys
        .identity_key
        .as_slice()
        .try_into()
        .map_err(|_| bad("identity key is not 32 bytes"))?;
    let signing_key: [u8; 32] = keys
        .signing_key
        .as_slice()
        .try_into()
        .map_err(|_| bad("signing key is not 32 bytes"))?;
    let signer = Ed25519PublicKey::from_slice(&signing_key).map_err(|_| bad("bad signing key"))?;
    let sig = Ed25519Signature::from_slice(&keys.signature).map_err(|_| bad("bad signature"))?;
    signer
        .verify(
            &device_keys_message(keys.user, keys.device, &identity_key, &signing_key),
            &sig,
        )
        .map_err(|_| bad("device keys signature does not verify"))?;
    Ok(VerifiedIdentity {
        identity_key,
        signing_key,
    })
}

/// This device's identity keys, signed (the part of [`PublishedKeys`] that never changes).
pub(crate) fn own_identity(account: &Account, user: UserId, device: DeviceId) -> PublishedKeys {
    let ids = account.identity_keys();
    let identity_key = ids.curve25519.to_bytes();
    let signing_key = *ids.ed25519.as_bytes();
    let signature = account.sign(device_keys_message(
        user,
        device,
        &identity_key,
        &signing_key,
    ));
    PublishedKeys {
        user,
        device,
        identity_key: identity_key.to_vec(),
        signing_key: signing_key.to_vec(),
        signature: signature.to_bytes().to_vec(),
        one_time_keys: Vec::new(),
        fallback_key: Vec::new(),
    }
}
