//! Certificates and TLS configurations for both listeners.
//!
//! Without configured PEM files the server makes its own ECDSA P-256 certificate for
//! localhost/127.0.0.1/::1, valid for at most 14 days (the longest a browser accepts for a
//! WebTransport certificate pinned by hash), persists it in the data directory and replaces it
//! before it expires. Both listeners resolve the certificate through one [`CertResolver`], so a
//! rotation takes effect for new TCP and QUIC handshakes at once, without a restart.

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
/// Replace the self-signed certificate when less than this remains.
pub const ROTATE_BEFORE_EXPIRY: Duration = Duration::from_secs(3 * 24 * 3600);
/// Backdating absorbs small clock differences between server and clients.
const BACKDATE: Duration = Duration::from_secs(5 * 60);

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
    SelfSigned { dir: PathBuf },
}

pub struct Certificates {
    source: CertSource,
    resolver: Arc<CertResolver>,
    active: RwLock<ActiveCert>,
}

impl Certificates {
    pub fn load(source: CertSource) -> Result<Arc<Self>, TlsError> {
        let active = match &source {
            CertSource::Pem { cert, key } => load_pem(cert, key)?,
            CertSource::SelfSigned { dir } => load_or_generate_self_signed(dir, unix_now())?,
        };
        let resolver = Arc::new(CertResolver {
            current: RwLock::new(active.key.clone()),
        });
        Ok(Arc::new(Certificates {
            source,
            resolver,
            active: RwLock::new(active),
        }))
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

    /// Replaces a self-signed certificate that is close to expiry. Returns whether it rotated.
    pub fn rotate_if_due(&self, now: i64) -> Result<bool, TlsError> {
        let CertSource::SelfSigned { dir } = &self.source else {
            return Ok(false);
        };
        let due = self
            .active()
            .not_after
            .is_some_and(|na| na - now < ROTATE_BEFORE_EXPIRY.as_secs() as i64);
        if !due {
            return Ok(false);
        }
        let fresh = generate_self_signed(dir, now)?;
        if let Ok(mut current) = self.resolver.current.write() {
            *current = fresh.key.clone();
        }
        if let Ok(mut active) = self.active.write() {
            *active = fresh;
        }
        Ok(true)
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
    })
}

const SELF_SIGNED_CERT: &str = "self-signed-cert.pem";
const SELF_SIGNED_KEY: &str = "self-signed-key.pem";
/// Holds the expiry (Unix seconds) so that restarts need no X.509 parser.
const SELF_SIGNED_EXPIRY: &str = "self-signed-not-after";

fn load_or_generate_self_signed(dir: &Path, now: i64) -> Result<ActiveCert, TlsError> {
    let expiry = std::fs::read_to_string(dir.join(SELF_SIGNED_EXPIRY))
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok());
    if let Some(not_after) = expiry
        && not_after - now >= ROTATE_BEFORE_EXPIRY.as_secs() as i64
    {
        match load_pem(&dir.join(SELF_SIGNED_CERT), &dir.join(SELF_SIGNED_KEY)) {
            Ok(active) => {
                return Ok(ActiveCert {
                    not_after: Some(not_after),
                    ..active
                });
            }
            Err(error) => {
                tracing::warn!(%error, "stored self-signed certificate unusable, generating a new one")
            }
        }
    }
    generate_self_signed(dir, now)
}

fn generate_self_signed(dir: &Path, now: i64) -> Result<ActiveCert, TlsError> {
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
    let not_before = now - BACKDATE.as_secs() as i64;
    // Validity counts from not_before, so the backdating is taken out of the 14 days.
    let not_after = not_before + SELF_SIGNED_VALIDITY.as_secs() as i64;
    params.not_before = time::OffsetDateTime::from_unix_timestamp(not_before)
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    params.not_after = time::OffsetDateTime::from_unix_timestamp(not_after)
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    let cert = params.self_signed(&key_pair).map_err(gen_err)?;

    std::fs::create_dir_all(dir).map_err(|source| TlsError::Io {
        path: dir.to_owned(),
        source,
    })?;
    write_private(
        &dir.join(SELF_SIGNED_KEY),
        key_pair.serialize_pem().as_bytes(),
    )?;
    write_file(&dir.join(SELF_SIGNED_CERT), cert.pem().as_bytes())?;
    write_file(
        &dir.join(SELF_SIGNED_EXPIRY),
        not_after.to_string().as_bytes(),
    )?;

    let der = cert.der().clone();
    let sha256 = sha256_of(&der);
    let key = PrivateKeyDer::try_from(key_pair.serialize_der())
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    tracing::info!(sha256 = %hex::encode(sha256), not_after, "generated self-signed certificate");
    Ok(ActiveCert {
        key: certified(vec![der], key)?,
        sha256,
        not_after: Some(not_after),
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
        let first = load_or_generate_self_signed(dir.path(), now).expect("generate");
        let not_after = first.not_after.expect("self-signed has an expiry");
        assert!(
            not_after - (now - BACKDATE.as_secs() as i64) <= SELF_SIGNED_VALIDITY.as_secs() as i64
        );
        let again = load_or_generate_self_signed(dir.path(), now + 3600).expect("reload");
        assert_eq!(
            first.sha256, again.sha256,
            "a restart keeps the pinned certificate"
        );
        let late = not_after - ROTATE_BEFORE_EXPIRY.as_secs() as i64 + 1;
        let rotated = load_or_generate_self_signed(dir.path(), late).expect("rotate");
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
        })
        .expect("load");
        let before = certs.active();
        assert!(
            !certs.rotate_if_due(unix_now()).expect("check"),
            "a fresh certificate is not rotated"
        );
        let not_after = before.not_after.expect("expiry");
        assert!(certs.rotate_if_due(not_after - 60).expect("rotate"));
        assert_ne!(certs.active().sha256, before.sha256);
    }
}
