//! Signed download URLs: `HMAC-SHA256(key, "tern-file-url-v1" ‖ file ‖ user ‖ expiry)`, with a
//! 32-byte server key persisted (mode 0600) in the data directory, so URLs survive a restart.
//! The signature is the only credential of `GET /files/{id}/content`: it binds the file, the
//! member it was issued to (whose membership is checked again on use) and the expiry.

use std::io::{Read, Write};
use std::path::Path;

use base64::Engine as _;
use ring::hmac;
use tern_wire::ids::{MessageId, UserId};

const DOMAIN: &[u8] = b"tern-file-url-v1";
const KEY_BYTES: usize = 32;

pub struct UrlSigner {
    key: hmac::Key,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlRefusal {
    /// Not a signature of these parameters (tampered, or another server's).
    BadSignature,
    Expired,
}

fn message(file: MessageId, user: UserId, expires_ms: u64) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + 40);
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(&file.to_be_bytes());
    m.extend_from_slice(&user.to_be_bytes());
    m.extend_from_slice(&expires_ms.to_be_bytes());
    m
}

impl UrlSigner {
    pub fn from_key(key: &[u8; KEY_BYTES]) -> Self {
        UrlSigner {
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
        }
    }

    /// Reads the key at `path`, or creates it (0600, random) when absent.
    pub fn load_or_create(path: &Path) -> std::io::Result<UrlSigner> {
        use std::os::unix::fs::OpenOptionsExt as _;
        match std::fs::File::open(path) {
            Ok(mut f) => {
                let mut key = [0u8; KEY_BYTES];
                f.read_exact(&mut key)?;
                let mut rest = Vec::new();
                if f.read_to_end(&mut rest)? != 0 {
                    return Err(std::io::Error::other(format!(
                        "{} must hold exactly {KEY_BYTES} bytes",
                        path.display()
                    )));
                }
                Ok(Self::from_key(&key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; KEY_BYTES];
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
                    .map_err(|_| std::io::Error::other("no system randomness"))?;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)?;
                f.write_all(&key)?;
                f.sync_all()?;
                Ok(Self::from_key(&key))
            }
            Err(e) => Err(e),
        }
    }

    /// The signature, unpadded base64url.
    pub fn sign(&self, file: MessageId, user: UserId, expires_ms: u64) -> String {
        let tag = hmac::sign(&self.key, &message(file, user, expires_ms));
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag.as_ref())
    }

    /// The path and query of a download URL.
    pub fn url(&self, file: MessageId, user: UserId, expires_ms: u64) -> String {
        format!(
            "/api/v1/files/{file}/content?u={user}&e={expires_ms}&s={}",
            self.sign(file, user, expires_ms)
        )
    }

    /// Checks the signature (constant time) before the expiry.
    pub fn verify(
        &self,
        file: MessageId,
        user: UserId,
        expires_ms: u64,
        signature: &str,
        now_ms: u64,
    ) -> Result<(), UrlRefusal> {
        let tag = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| UrlRefusal::BadSignature)?;
        hmac::verify(&self.key, &message(file, user, expires_ms), &tag)
            .map_err(|_| UrlRefusal::BadSignature)?;
        if now_ms > expires_ms {
            return Err(UrlRefusal::Expired);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_bind_every_parameter() {
        let s = UrlSigner::from_key(&[7; 32]);
        let (f, u) = (MessageId(1), UserId(2));
        let sig = s.sign(f, u, 1000);
        assert_eq!(s.verify(f, u, 1000, &sig, 999), Ok(()));
        assert_eq!(s.verify(f, u, 1000, &sig, 1000), Ok(()));
        assert_eq!(s.verify(f, u, 1000, &sig, 1001), Err(UrlRefusal::Expired));
        assert_eq!(
            s.verify(MessageId(3), u, 1000, &sig, 0),
            Err(UrlRefusal::BadSignature)
        );
        assert_eq!(
            s.verify(f, UserId(3), 1000, &sig, 0),
            Err(UrlRefusal::BadSignature)
        );
        assert_eq!(s.verify(f, u, 2000, &sig, 0), Err(UrlRefusal::BadSignature));
        assert_eq!(s.verify(f, u, 1000, "!!", 0), Err(UrlRefusal::BadSignature));
        let other = UrlSigner::from_key(&[8; 32]);
        assert_eq!(
            other.verify(f, u, 1000, &sig, 0),
            Err(UrlRefusal::BadSignature)
        );
    }

    #[test]
    fn key_is_persisted_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("url.key");
        let a = UrlSigner::load_or_create(&path).expect("create");
        let b = UrlSigner::load_or_create(&path).expect("load");
        let sig = a.sign(MessageId(1), UserId(1), 5);
        assert_eq!(b.verify(MessageId(1), UserId(1), 5, &sig, 0), Ok(()));
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
