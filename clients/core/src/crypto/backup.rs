//! Key backup encryption and the sealed-box helper also used for the state pickle.
//!
//! * Recovery key = argon2id(passphrase, salt 16 B, m, t, p) -> 32 B. Default m = 19 MiB,
//!   t = 2, p = 1: OWASP's argon2id baseline; about 50-100 ms on a phone or in a browser tab
//!   (wasm is single-threaded, hence p = 1) while making an offline guess against the
//!   server-held meta cost the same 19 MiB and time per guess.
//! * Meta (stored by the server, <= 4 KiB): `"TBM1" || m_kib u32 BE || t u32 BE || p u32 BE ||
//!   salt (16) || sealed(check)`, where the check is a fixed string sealed with the recovery
//!   key and AAD `"tern.backup.meta.v1\0" || version`: a wrong passphrase fails the AEAD tag,
//!   which is the clear `WrongPassphrase`.
//! * Session blob: `sealed(JSON BackupSession)` with AAD `"tern.backup.session.v1\0" ||
//!   conversation (16) || session_id`, so the server cannot move a blob to another
//!   conversation or session id.
//! * sealed(x) = `nonce (24, random) || XChaCha20-Poly1305(key, nonce, x, aad)`.

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::CryptoError;

const NONCE_LEN: usize = 24;
const META_MAGIC: &[u8; 4] = b"TBM1";
const META_CHECK: &[u8] = b"tern backup check v1";
pub(crate) const SALT_LEN: usize = 16;

/// Upper bounds on KDF parameters read from (server-held, so untrusted) meta: a hostile
/// server must not make a client allocate gigabytes or spin for minutes. 256 MiB, 16 passes,
/// 8 lanes are far above any sane setting.
const MAX_KDF_M_KIB: u32 = 256 * 1024;
const MAX_KDF_T: u32 = 16;
const MAX_KDF_P: u32 = 8;

/// argon2id parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    pub m_kib: u32,
    pub t: u32,
    pub p: u32,
}

impl Default for KdfParams {
    fn default() -> Self {
        // 19 MiB, 2 passes, 1 lane: see the module docs.
        Self {
            m_kib: 19 * 1024,
            t: 2,
            p: 1,
        }
    }
}

impl KdfParams {
    /// Cheap parameters for tests only (8 lanes' minimum memory is not needed: 1 lane).
    pub fn insecure_for_tests() -> Self {
        Self {
            m_kib: 64,
            t: 1,
            p: 1,
        }
    }

    fn check(&self) -> Result<(), CryptoError> {
        if self.m_kib > MAX_KDF_M_KIB || self.t > MAX_KDF_T || self.p > MAX_KDF_P || self.p == 0 {
            return Err(CryptoError::BadBackupMeta(
                "key derivation parameters out of bounds",
            ));
        }
        Ok(())
    }
}

pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N], CryptoError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|_| CryptoError::Random)?;
    Ok(b)
}

pub(crate) fn seal(key: &[u8; 32], aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let nonce: [u8; NONCE_LEN] = random_bytes()?;
    let cipher = XChaCha20Poly1305::new(key.into());
    let ct = cipher
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| CryptoError::Serde("AEAD encryption failed".into()))?;
    let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Opens a sealed box; `None` when the key, AAD or bytes are wrong.
pub(crate) fn open(key: &[u8; 32], aad: &[u8], sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    if sealed.len() < NONCE_LEN {
        return None;
    }
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    let cipher = XChaCha20Poly1305::new(key.into());
    cipher
        .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad })
        .ok()
        .map(Zeroizing::new)
}

pub(crate) fn derive_key(
    passphrase: &str,
    salt: &[u8],
    params: KdfParams,
) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
    params.check()?;
    let p = Params::new(params.m_kib, params.t, params.p, Some(32))
        .map_err(|e| CryptoError::Kdf(e.to_string()))?;
    let mut out = Zeroizing::new([0u8; 32]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, p)
        .hash_password_into(passphrase.as_bytes(), salt, out.as_mut())
        .map_err(|e| CryptoError::Kdf(e.to_string()))?;
    Ok(out)
}

fn meta_aad(version: &str) -> Vec<u8> {
    let mut aad = b"tern.backup.meta.v1\0".to_vec();
    aad.extend_from_slice(version.as_bytes());
    aad
}

/// Builds the meta for a new backup `version`; returns (meta, recovery key).
pub(crate) fn create_meta(
    passphrase: &str,
    version: &str,
    params: KdfParams,
) -> Result<(Vec<u8>, Zeroizing<[u8; 32]>), CryptoError> {
    let salt: [u8; SALT_LEN] = random_bytes()?;
    let key = derive_key(passphrase, &salt, params)?;
    let mut meta = META_MAGIC.to_vec();
    meta.extend_from_slice(&params.m_kib.to_be_bytes());
    meta.extend_from_slice(&params.t.to_be_bytes());
    meta.extend_from_slice(&params.p.to_be_bytes());
    meta.extend_from_slice(&salt);
    meta.extend_from_slice(&seal(&key, &meta_aad(version), META_CHECK)?);
    Ok((meta, key))
}

/// Derives the recovery key from `passphrase` and checks it against `meta`.
pub(crate) fn unlock_meta(
    passphrase: &str,
    version: &str,
    meta: &[u8],
) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
    let header = 4 + 12 + SALT_LEN;
    if meta.len() < header + NONCE_LEN || &meta[..4] != META_MAGIC {
        return Err(CryptoError::BadBackupMeta("not a tern backup meta (v1)"));
    }
    let word = |i: usize| u32::from_be_bytes([meta[i], meta[i + 1], meta[i + 2], meta[i + 3]]);
    let params = KdfParams {
        m_kib: word(4),
        t: word(8),
        p: word(12),
    };
    let salt = &meta[16..header];
    let key = derive_key(passphrase, salt, params)?;
    match open(&key, &meta_aad(version), &meta[header..]) {
        Some(check) if check.as_slice() == META_CHECK => Ok(key),
        _ => Err(CryptoError::WrongPassphrase),
    }
}

/// The plaintext of one backed-up inbound session.
#[derive(Serialize, Deserialize)]
pub(crate) struct BackupSession {
    pub v: u32,
    pub conversation: tern_wire::ids::ConversationId,
    pub session_id: String,
    pub sender_user: tern_wire::ids::UserId,
    pub sender_device: tern_wire::ids::DeviceId,
    /// Sender device's Curve25519 identity, base64: the trust check on decrypt uses it.
    pub sender_identity_key: String,
    /// vodozemac `ExportedSessionKey` at the first known index, base64.
    pub session_key: String,
}

pub(crate) fn session_aad(
    conversation: tern_wire::ids::ConversationId,
    session_id: &str,
) -> Vec<u8> {
    let mut aad = b"tern.backup.session.v1\0".to_vec();
    aad.extend_from_slice(&conversation.to_be_bytes());
    aad.extend_from_slice(session_id.as_bytes());
    aad
}
