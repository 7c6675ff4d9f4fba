//! Certificates and TLS configurations for both listeners.
//!
//! Without configured PEM files the server makes its own ECDSA P-256 certificate for
//! localhost/127.0.0.1/::1, valid for at most 14 days (the longest a browser accepts for a
//! WebTransport certificate pinned by hash), persists it in the data directory and replaces it
//! before it expires. Both listeners resolve the certificate through one [`CertResolver`], so a
//! rotation takes effect for new TCP and QUIC handshakes at once, without a restart.
//!
//! The next self-signed certificate is made (and published in `/api/v1/transport`) a while
//! before it is switched in, so a page that pinned the hashes it was given can follow the
//! rotation without a reload: it pins both, and either one the server presents matches.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};

/// Browsers pin self-signed WebTransport certificates only up to this validity.
pub const SELF_SIGNED_VALIDITY: Duration = Duration::from_secs(14 * 24 * 3600);
/// Replace the self-signed certificate when less than this remains (of 14 days).
pub const ROTATE_BEFORE_EXPIRY: Duration = Duration::from_secs(3 * 24 * 3600);
/// Make and publish the next certificate this long before the switch (of 14 days): every
/// client that fetches `/api/v1/transport` in that day pins both.
pub const PUBLISH_NEXT_BEFORE_ROTATION: Duration = Duration::from_secs(24 * 3600);
/// Backdating absorbs small clock differences between server and clients.
const BACKDATE: Duration = Duration::from_secs(5 * 60);
/// How often the rotation is checked at most (with the default validity).
const MAX_ROTATION_CHECK: Duration = Duration::from_secs(3600);

/// When a self-signed certificate is replaced, for a given validity. Shorter validities (an
/// operator's choice, or a test's) scale every step: rotation at 3/14 of the validity before
/// expiry, the next certificate published 1/14 before that, backdating at most 1/14.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationSchedule {
    pub validity: Duration,
}

impl Default for RotationSchedule {
    fn default() -> Self {
        RotationSchedule {
            validity: SELF_SIGNED_VALIDITY,
        }
    }
}

impl RotationSchedule {
    fn fraction(&self, of_14_days: Duration) -> i64 {
        (self.validity.as_secs_f64() * of_14_days.as_secs_f64()
            / SELF_SIGNED_VALIDITY.as_secs_f64())
        .ceil() as i64
    }

    /// Seconds before expiry at which the certificate is switched.
    pub fn rotate_before(&self) -> i64 {
        self.fraction(ROTATE_BEFORE_EXPIRY)
    }

    /// Seconds before expiry from which the next certificate is published.
    pub fn publish_next_before(&self) -> i64 {
        self.rotate_before() + self.fraction(PUBLISH_NEXT_BEFORE_ROTATION)
    }

    fn backdate(&self) -> i64 {
        (BACKDATE.as_secs() as i64).min(self.fraction(Duration::from_secs(24 * 3600)))
    }

    /// How often the server looks: an hour with the default validity, a 56th of it at most.
    pub fn check_interval(&self) -> Duration {
        (self.validity / 56).clamp(Duration::from_millis(200), MAX_ROTATION_CHECK)
    }
}

/// What a rotation check did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotation {
    Nothing,
    /// The next certificate was made and is published beside the current one.
    NextPublished,
    /// The next certificate is now the one served.
    Rotated,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid PEM in {path}: {message}")]
    Pem { path: PathBuf, message: String },
    #[error("certificate generation failed: {0}")]
    Generate(String),
    #[error("TLS configuration failed: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The one crypto provider of the whole dependency tree (ring), installed explicitly at start
/// so that nothing can pick another one implicitly.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn install_default_provider() {
    // Fails only when already installed (tests start several servers in one process).
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The certificate currently served, with its SHA-256 for pinning.
#[derive(Clone)]
pub struct ActiveCert {
    pub key: Arc<CertifiedKey>,
    pub sha256: [u8; 32],
    /// Unix seconds; `None` for configured certificates (managed by the operator).
    pub not_after: Option<i64>,
    /// Unix seconds; `None` for configured certificates.
    pub not_before: Option<i64>,
}

#[derive(Debug)]
pub struct CertResolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.clone())
    }
}

/// Where the certificate comes from.
#[derive(Debug, Clone)]
pub enum CertSource {
    /// Operator-provided PEM files (production).
    Pem { cert: PathBuf, key: PathBuf },
    /// Self-signed, persisted under this directory.
    SelfSigned {
        dir: PathBuf,
        schedule: RotationSchedule,
    },
}

pub struct Certificates {
    source: CertSource,
    resolver: Arc<CertResolver>,
    active: RwLock<ActiveCert>,
    /// The self-signed certificate that replaces `active` at the next rotation, once made.
    next: RwLock<Option<ActiveCert>>,
}

impl Certificates {
    pub fn load(source: CertSource) -> Result<Arc<Self>, TlsError> {
        let now = unix_now();
        let (active, next) = match &source {
            CertSource::Pem { cert, key } => (load_pem(cert, key)?, None),
            CertSource::SelfSigned { dir, schedule } => (
                load_or_generate_self_signed(dir, now, schedule)?,
                load_stored(dir, NEXT, now, schedule),
            ),
        };
        let resolver = Arc::new(CertResolver {
            current: RwLock::new(active.key.clone()),
        });
        Ok(Arc::new(Certificates {
            source,
            resolver,
            active: RwLock::new(active),
            next: RwLock::new(next),
        }))
    }

    /// The certificate served from the next rotation on, when it is already published.
    pub fn next(&self) -> Option<ActiveCert> {
        match self.next.read() {
            Ok(n) => n.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// How often [`Certificates::rotate_if_due`] should run.
    pub fn check_interval(&self) -> Duration {
        match &self.source {
            CertSource::SelfSigned { schedule, .. } => schedule.check_interval(),
            CertSource::Pem { .. } => MAX_ROTATION_CHECK,
        }
    }

    pub fn resolver(&self) -> Arc<CertResolver> {
        self.resolver.clone()
    }

    pub fn active(&self) -> ActiveCert {
        match self.active.read() {
            Ok(a) => a.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Publishes the next self-signed certificate when its time has come, and switches to it
    /// when the current one is close to expiry.
    pub fn rotate_if_due(&self, now: i64) -> Result<Rotation, TlsError> {
        let CertSource::SelfSigned { dir, schedule } = &self.source else {
            return Ok(Rotation::Nothing);
        };
        let Some(not_after) = self.active().not_after else {
            return Ok(Rotation::Nothing);
        };
        let remaining = not_after - now;
        if remaining < schedule.rotate_before() {
            let fresh = match self.next() {
                Some(next)
                    if next
                        .not_after
                        .is_some_and(|na| na - now >= schedule.rotate_before()) =>
                {
                    next
                }
                _ => generate_self_signed(dir, CURRENT, now, schedule)?,
            };
            // Persisted as the current one before it is served: a restart serves it too.
            if self.next().is_some_and(|n| n.sha256 == fresh.sha256) {
                promote_next(dir)?;
            }
            if let Ok(mut current) = self.resolver.current.write() {
                *current = fresh.key.clone();
            }
            if let Ok(mut active) = self.active.write() {
                *active = fresh;
            }
            if let Ok(mut next) = self.next.write() {
                *next = None;
            }
            return Ok(Rotation::Rotated);
        }
        if remaining < schedule.publish_next_before() && self.next().is_none() {
            let next = generate_self_signed(dir, NEXT, now, schedule)?;
            if let Ok(mut slot) = self.next.write() {
                *slot = Some(next);
            }
            return Ok(Rotation::NextPublished);
        }
        Ok(Rotation::Nothing)
    }

    /// TLS 1.2+ for HTTPS and secure WebSocket over TCP.
    pub fn tcp_config(&self) -> Result<rustls::ServerConfig, TlsError> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(self.resolver.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }

    /// TLS 1.3 (QUIC requires it) with ALPN h3 for WebTransport.
    pub fn quic_config(&self) -> Result<rustls::ServerConfig, TlsError> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_cert_resolver(self.resolver.clone());
        config.alpn_protocols = vec![b"h3".to_vec()];
        config.max_early_data_size = u32::MAX;
        Ok(config)
    }
}

pub fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let signing_key = provider().key_provider.load_private_key(key)?;
    Ok(Arc::new(CertifiedKey::new(chain, signing_key)))
}

fn sha256_of(der: &[u8]) -> [u8; 32] {
    Sha256::digest(der).into()
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Io {
        path: path.to_owned(),
        source,
    })
}

fn load_pem(cert_path: &Path, key_path: &Path) -> Result<ActiveCert, TlsError> {
    let pem_err = |path: &Path, e: rustls::pki_types::pem::Error| TlsError::Pem {
        path: path.to_owned(),
        message: e.to_string(),
    };
    let cert_pem = read(cert_path)?;
    let key_pem = read(key_path)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(cert_path, e))?;
    let Some(leaf) = chain.first() else {
        return Err(TlsError::Pem {
            path: cert_path.to_owned(),
            message: "no certificate found".into(),
        });
    };
    let sha256 = sha256_of(leaf);
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| pem_err(key_path, e))?;
    Ok(ActiveCert {
        key: certified(chain, key)?,
        sha256,
        not_after: None,
        not_before: None,
    })
}

/// File name prefixes of the served self-signed certificate and of the next one.
const CURRENT: &str = "self-signed";
const NEXT: &str = "self-signed-next";

/// Certificate, key and expiry files of a prefix. The expiry file holds the Unix second of
/// `not_after`, so restarts need no X.509 parser.
fn file_names(prefix: &str) -> [String; 3] {
    [
        format!("{prefix}-cert.pem"),
        format!("{prefix}-key.pem"),
        format!("{prefix}-not-after"),
    ]
}

/// A stored self-signed certificate that is still good for serving (not due for rotation).
fn load_stored(
    dir: &Path,
    prefix: &str,
    now: i64,
    schedule: &RotationSchedule,
) -> Option<ActiveCert> {
    let [cert, key, expiry] = file_names(prefix);
    let not_after = std::fs::read_to_string(dir.join(expiry))
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())?;
    if not_after - now < schedule.rotate_before() {
        return None;
    }
    match load_pem(&dir.join(cert), &dir.join(key)) {
        Ok(active) => Some(ActiveCert {
            not_after: Some(not_after),
            not_before: Some(not_after - schedule.validity.as_secs() as i64),
            ..active
        }),
        Err(error) => {
            tracing::warn!(%error, prefix, "stored self-signed certificate unusable, generating a new one");
            None
        }
    }
}

fn load_or_generate_self_signed(
    dir: &Path,
    now: i64,
    schedule: &RotationSchedule,
) -> Result<ActiveCert, TlsError> {
    if let Some(active) = load_stored(dir, CURRENT, now, schedule) {
        return Ok(active);
    }
    generate_self_signed(dir, CURRENT, now, schedule)
}

/// Makes the stored next certificate the stored current one (the files are copied, each
/// write atomic) and removes the next one's files.
fn promote_next(dir: &Path) -> Result<(), TlsError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| TlsError::Io { path, source }
    };
    for (i, (next, current)) in file_names(NEXT).iter().zip(file_names(CURRENT)).enumerate() {
        let bytes = std::fs::read(dir.join(next)).map_err(io(&dir.join(next)))?;
        if i == 1 {
            write_private(&dir.join(current), &bytes)?;
        } else {
            write_file(&dir.join(current), &bytes)?;
        }
    }
    for next in file_names(NEXT) {
        let _ = std::fs::remove_file(dir.join(next));
    }
    Ok(())
}

fn generate_self_signed(
    dir: &Path,
    prefix: &str,
    now: i64,
    schedule: &RotationSchedule,
) -> Result<ActiveCert, TlsError> {
    let gen_err = |e: rcgen::Error| TlsError::Generate(e.to_string());
    let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
    let mut params = rcgen::CertificateParams::new(vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ])
    .map_err(gen_err)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "tern self-signed");
    let not_before = now - schedule.backdate();
    // Validity counts from not_before, so the backdating is taken out of the validity.
    let not_after = not_before + schedule.validity.as_secs() as i64;
    params.not_before = time::OffsetDateTime::from_unix_timestamp(not_before)
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    params.not_after = time::OffsetDateTime::from_unix_timestamp(not_after)
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    let cert = params.self_signed(&key_pair).map_err(gen_err)?;

    std::fs::create_dir_all(dir).map_err(|source| TlsError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let [cert_file, key_file, expiry_file] = file_names(prefix);
    write_private(&dir.join(key_file), key_pair.serialize_pem().as_bytes())?;
    write_file(&dir.join(cert_file), cert.pem().as_bytes())?;
    write_file(&dir.join(expiry_file), not_after.to_string().as_bytes())?;

    let der = cert.der().clone();
    let sha256 = sha256_of(&der);
    let key = PrivateKeyDer::try_from(key_pair.serialize_der())
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    tracing::info!(sha256 = %hex::encode(sha256), not_after, prefix, "generated self-signed certificate");
    Ok(ActiveCert {
        key: certified(vec![der], key)?,
        sha256,
        not_after: Some(not_after),
        not_before: Some(not_before),
    })
}

/// File (in the data directory) holding the QUIC stateless-reset secret.
pub const QUIC_RESET_KEY_FILE: &str = "quic-reset-key";

/// The secret every shard's QUIC endpoint derives stateless-reset tokens from, kept across
/// restarts. Shared by all shards and all runs, a packet for a connection this process does not
/// know (it restarted, or the packet landed on another shard after the client's address
/// changed) is answered with a reset the client recognises: it reconnects at once instead of
/// waiting for its idle timeout.
pub fn quic_reset_key(data_dir: &Path) -> Result<[u8; 32], TlsError> {
    let path = data_dir.join(QUIC_RESET_KEY_FILE);
    if let Ok(bytes) = std::fs::read(&path)
        && let Ok(key) = <[u8; 32]>::try_from(bytes.as_slice())
    {
        return Ok(key);
    }
    let mut key = [0u8; 32];
    rand::fill(&mut key);
    let tmp = path.with_extension("tmp");
    let io = |source| TlsError::Io {
        path: path.clone(),
        source,
    };
    {
        use std::io::Write as _;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp).map_err(io)?;
        file.write_all(&key).map_err(io)?;
        file.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, &path).map_err(io)?;
    Ok(key)
}

/// QUIC connection ids: 8 random bytes (quinn's length), valid on every endpoint.
pub struct RandomCids;

impl wtransport::quinn::ConnectionIdGenerator for RandomCids {
    fn generate_cid(&mut self) -> wtransport::quinn::ConnectionId {
        let mut bytes = [0u8; 8];
        rand::fill(&mut bytes);
        wtransport::quinn::ConnectionId::new(&bytes)
    }

    fn cid_len(&self) -> usize {
        8
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    // Write then rename, so that a crash never leaves a half-written certificate behind.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|source| TlsError::Io {
        path: tmp.clone(),
        source,
    })?;
    std::fs::rename(&tmp, path).map_err(|source| TlsError::Io {
        path: path.to_owned(),
        source,
    })
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    write_file(path, bytes)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(
            |source| TlsError::Io {
                path: path.to_owned(),
                source,
            },
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_is_reused_until_rotation_is_due() {
        install_default_provider();
        let dir = tempfile::tempdir().expect("tempdir");
        let now = 1_800_000_000;
        let schedule = RotationSchedule::default();
        let first = load_or_generate_self_signed(dir.path(), now, &schedule).expect("generate");
        let not_after = first.not_after.expect("self-signed has an expiry");
        assert!(
            not_after - (now - BACKDATE.as_secs() as i64) <= SELF_SIGNED_VALIDITY.as_secs() as i64
        );
        let again =
            load_or_generate_self_signed(dir.path(), now + 3600, &schedule).expect("reload");
        assert_eq!(
            first.sha256, again.sha256,
            "a restart keeps the pinned certificate"
        );
        let late = not_after - ROTATE_BEFORE_EXPIRY.as_secs() as i64 + 1;
        let rotated = load_or_generate_self_signed(dir.path(), late, &schedule).expect("rotate");
        assert_ne!(
            first.sha256, rotated.sha256,
            "close to expiry a new certificate is made"
        );
    }

    #[test]
    fn live_rotation_swaps_the_served_certificate() {
        install_default_provider();
        let dir = tempfile::tempdir().expect("tempdir");
        let certs = Certificates::load(CertSource::SelfSigned {
            dir: dir.path().to_owned(),
            schedule: RotationSchedule::default(),
        })
        .expect("load");
        let before = certs.active();
        assert_eq!(
            certs.rotate_if_due(unix_now()).expect("check"),
            Rotation::Nothing,
            "a fresh certificate is not rotated"
        );
        assert!(certs.next().is_none());
        let not_after = before.not_after.expect("expiry");
        // A day before the switch the next certificate is published, not yet served.
        let publish = not_after - ROTATE_BEFORE_EXPIRY.as_secs() as i64 - 3600;
        assert_eq!(
            certs.rotate_if_due(publish).expect("publish"),
            Rotation::NextPublished
        );
        let next = certs.next().expect("next published");
        assert_eq!(certs.active().sha256, before.sha256);
        assert_ne!(next.sha256, before.sha256);
        // Published once, kept across a restart.
        assert_eq!(
            certs.rotate_if_due(publish + 60).expect("again"),
            Rotation::Nothing
        );
        let restarted = Certificates::load(CertSource::SelfSigned {
            dir: dir.path().to_owned(),
            schedule: RotationSchedule::default(),
        })
        .expect("reload");
        assert_eq!(restarted.next().map(|n| n.sha256), Some(next.sha256));
        // At the switch the published one is served, and stored as the current one.
        assert_eq!(
            certs.rotate_if_due(not_after - 60).expect("rotate"),
            Rotation::Rotated
        );
        assert_eq!(certs.active().sha256, next.sha256);
        assert!(certs.next().is_none());
        let stored = load_stored(
            dir.path(),
            CURRENT,
            next.not_after.expect("expiry") - 4 * 24 * 3600,
            &RotationSchedule::default(),
        )
        .expect("stored");
        assert_eq!(stored.sha256, next.sha256);
    }
}
