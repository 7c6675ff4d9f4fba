//! TLS trust for every transport: HTTPS, secure WebSocket and WebTransport share one decision.
//!
//! The server's certificate is usually self-signed and short-lived, so the common case is pinning
//! its SHA-256 (the hash the server prints and serves in `TransportInfo`). A CA bundle and the
//! system store cover deployments behind a real certificate.
//!
//! All configs are built with `rustls::crypto::ring::default_provider()` explicitly, never with a
//! process-wide default: the workspace ships ring only, and a second provider linked in by some
//! dependency must not change which algorithms we accept.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Which server certificates to accept.
#[derive(Clone, PartialEq, Eq)]
pub enum Trust {
    /// Accept exactly a leaf certificate whose DER SHA-256 is one of these (self-signed servers).
    /// The chain and the server name are not checked; the handshake signature and the
    /// certificate's validity period are.
    PinnedSha256(Vec<[u8; 32]>),
    /// PEM-encoded CA certificates to verify the chain and the server name against.
    CaPem(Vec<u8>),
    /// The operating system's root store.
    System,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Trust::PinnedSha256(pins) => f
                .debug_tuple("PinnedSha256")
                .field(&pins.iter().map(hex::encode).collect::<Vec<_>>())
                .finish(),
            Trust::CaPem(pem) => write!(f, "CaPem({} bytes)", pem.len()),
            Trust::System => f.write_str("System"),
        }
    }
}

impl Trust {
    /// Parses a pinned hash as printed by the server: 64 hex digits, optionally separated by
    /// colons (the `openssl x509 -fingerprint` form) and in any case.
    pub fn parse_sha256_hex(s: &str) -> Result<[u8; 32]> {
        let cleaned: String = s.trim().chars().filter(|c| *c != ':').collect();
        let bytes = hex::decode(&cleaned)
            .map_err(|e| Error::Config(format!("certificate hash {s:?} is not hex: {e}")))?;
        <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
            Error::Config(format!(
                "certificate hash {s:?} is not 32 bytes (64 hex digits)"
            ))
        })
    }

    /// `Trust::PinnedSha256` from hex strings (see [`Trust::parse_sha256_hex`]).
    pub fn pinned_hex<S: AsRef<str>>(hashes: impl IntoIterator<Item = S>) -> Result<Trust> {
        let pins = hashes
            .into_iter()
            .map(|h| Self::parse_sha256_hex(h.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        if pins.is_empty() {
            return Err(Error::Config("no certificate hash given".into()));
        }
        Ok(Trust::PinnedSha256(pins))
    }

    /// `Trust::CaPem` from a file.
    pub fn ca_pem_file(path: impl AsRef<std::path::Path>) -> Result<Trust> {
        let pem = std::fs::read(path.as_ref())
            .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.as_ref().display())))?;
        Ok(Trust::CaPem(pem))
    }
}

/// The SHA-256 of a DER certificate, the value pinned by [`Trust::PinnedSha256`].
pub fn certificate_sha256(der: &[u8]) -> [u8; 32] {
    Sha256::digest(der).into()
}

/// The one crypto provider of the tree.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts exactly the pinned leaf certificates.
///
/// Matching the hash replaces chain building and name checks (the pin *is* the identity), but
/// the handshake signatures are still verified against the leaf's public key with the provider's
/// algorithms: without that, anyone who knows the (public) certificate could impersonate the
/// server.
#[derive(Debug)]
pub struct PinnedCertVerifier {
    pins: Vec<[u8; 32]>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinnedCertVerifier {
    pub fn new(pins: Vec<[u8; 32]>) -> Self {
        PinnedCertVerifier {
            pins,
            algorithms: provider().signature_verification_algorithms,
        }
    }
}

/// Why a pinned verification failed; shows the presented hash so the user can compare it with
/// the one the server printed.
struct PinMismatch {
    presented: String,
}

// rustls prints `OtherError` with `{:?}`: make that the readable sentence.
impl std::fmt::Debug for PinMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl std::fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "server certificate sha-256 {} is not pinned",
            self.presented
        )
    }
}

impl std::error::Error for PinMismatch {}

impl ServerCertVerifier for PinnedCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let digest = certificate_sha256(end_entity.as_ref());
        if !self.pins.contains(&digest) {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(PinMismatch {
                    presented: hex::encode(digest),
                })),
            )));
        }
        // A pin does not make an expired certificate good: the server rotates its certificate
        // (at most 14 days), and an old pin should stop working with it.
        let (_, cert) = x509_parser::parse_x509_certificate(end_entity.as_ref())
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let secs = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        let at = x509_parser::time::ASN1Time::from_timestamp(secs)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let validity = cert.validity();
        if at < validity.not_before {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidYet,
            ));
        }
        if at > validity.not_after {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Expired));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// ALPN for HTTPS and the WebSocket upgrade (both HTTP/1.1 on the TCP port).
pub const ALPN_HTTP11: &[u8] = b"http/1.1";
/// ALPN for WebTransport (HTTP/3).
pub const ALPN_H3: &[u8] = b"h3";

/// Builds a rustls client config for `trust`.
///
/// `tls13_only` is for QUIC, which requires TLS 1.3; TCP allows TLS 1.2 as well.
pub fn client_config(
    trust: &Trust,
    alpn: &[&[u8]],
    tls13_only: bool,
) -> Result<rustls::ClientConfig> {
    let versions: &[&'static rustls::SupportedProtocolVersion] = if tls13_only {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let builder =
        rustls::ClientConfig::builder_with_provider(provider()).with_protocol_versions(versions)?;
    let mut config = match trust {
        Trust::PinnedSha256(pins) => {
            if pins.is_empty() {
                return Err(Error::Config("no certificate hash to pin".into()));
            }
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinnedCertVerifier::new(pins.clone())))
                .with_no_client_auth()
        }
        Trust::CaPem(pem) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| Error::Config(format!("bad CA PEM: {e}")))?;
                roots.add(cert)?;
            }
            if roots.is_empty() {
                return Err(Error::Config("the CA PEM holds no certificate".into()));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::System => {
            let loaded = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            // Unparsable system certificates are skipped, as every rustls user does.
            let (_added, _ignored) = roots.add_parsable_certificates(loaded.certs);
            if roots.is_empty() {
                return Err(Error::Config(format!(
                    "no usable system root certificates ({} load errors); pin the server's hash instead",
                    loaded.errors.len()
                )));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// The three configs one server needs, built once per [`crate::Config`].
#[derive(Clone)]
pub struct TlsConfigs {
    /// HTTPS (reqwest) and WSS (tungstenite): TLS 1.2+, ALPN http/1.1.
    pub tcp: Arc<rustls::ClientConfig>,
    /// WebTransport over QUIC: TLS 1.3, ALPN h3.
    pub quic: Arc<rustls::ClientConfig>,
}

impl TlsConfigs {
    pub fn new(trust: &Trust) -> Result<TlsConfigs> {
        Ok(TlsConfigs {
            tcp: Arc::new(client_config(trust, &[ALPN_HTTP11], false)?),
            quic: Arc::new(client_config(trust, &[ALPN_H3], true)?),
        })
    }
}

impl std::fmt::Debug for TlsConfigs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsConfigs")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair};
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    use rustls::server::{ClientHello, ResolvesServerCert};
    use rustls::sign::CertifiedKey;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct TestCert {
        der: CertificateDer<'static>,
        key: PrivateKeyDer<'static>,
    }

    fn gen_cert() -> TestCert {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("keygen");
        let params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        let cert = params.self_signed(&key).expect("self-sign");
        TestCert {
            der: cert.der().clone(),
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        }
    }

    /// Presents `cert` but signs with `key`, which may not belong to it: lets a test play an
    /// impostor that copied the (public) certificate.
    #[derive(Debug)]
    struct FixedResolver(Arc<CertifiedKey>);

    impl ResolvesServerCert for FixedResolver {
        fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
            Some(self.0.clone())
        }
    }

    fn server_config(
        cert: &CertificateDer<'static>,
        key: &PrivateKeyDer<'static>,
    ) -> rustls::ServerConfig {
        let signing = provider()
            .key_provider
            .load_private_key(key.clone_key())
            .expect("load key");
        let certified = CertifiedKey::new(vec![cert.clone()], signing);
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("versions")
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(FixedResolver(Arc::new(certified))));
        config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
        config
    }

    /// Runs a full handshake over an in-memory pipe and one byte of application data.
    async fn handshake(
        server: rustls::ServerConfig,
        trust: &Trust,
    ) -> std::result::Result<(), String> {
        let client = client_config(trust, &[ALPN_HTTP11], false).map_err(|e| e.to_string())?;
        let (c, s) = tokio::io::duplex(64 * 1024);
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let server_side = async move {
            let mut tls = acceptor.accept(s).await.map_err(|e| e.to_string())?;
            tls.write_all(b"x").await.map_err(|e| e.to_string())?;
            tls.flush().await.map_err(|e| e.to_string())?;
            Ok::<_, String>(())
        };
        let client_side = async move {
            let name = ServerName::try_from("127.0.0.1").map_err(|e| e.to_string())?;
            let mut tls = connector
                .connect(name, c)
                .await
                .map_err(|e| e.to_string())?;
            let mut b = [0u8; 1];
            tls.read_exact(&mut b).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(())
        };
        let (s, c) = tokio::join!(server_side, client_side);
        c?;
        s
    }

    #[tokio::test]
    async fn pinned_hash_accepts_matching_leaf() {
        let cert = gen_cert();
        let pin = certificate_sha256(cert.der.as_ref());
        handshake(
            server_config(&cert.der, &cert.key),
            &Trust::PinnedSha256(vec![[7u8; 32], pin]),
        )
        .await
        .expect("pinned handshake should succeed");
    }

    #[tokio::test]
    async fn pinned_hash_rejects_other_certificate() {
        let cert = gen_cert();
        let other = gen_cert();
        let pin = certificate_sha256(other.der.as_ref());
        let err = handshake(
            server_config(&cert.der, &cert.key),
            &Trust::PinnedSha256(vec![pin]),
        )
        .await
        .expect_err("a different certificate must be rejected");
        assert!(err.contains("is not pinned"), "unexpected error: {err}");
        assert!(
            err.contains(&hex::encode(certificate_sha256(cert.der.as_ref()))),
            "error names the hash: {err}"
        );
    }

    #[tokio::test]
    async fn pinned_hash_still_checks_handshake_signature() {
        // The impostor presents the pinned certificate but does not hold its private key.
        let cert = gen_cert();
        let impostor_key = gen_cert().key;
        let pin = certificate_sha256(cert.der.as_ref());
        let err = handshake(
            server_config(&cert.der, &impostor_key),
            &Trust::PinnedSha256(vec![pin]),
        )
        .await
        .expect_err("a signature by the wrong key must be rejected");
        assert!(
            err.to_lowercase().contains("signature"),
            "unexpected error: {err}"
        );
    }

    #[tokio::test]
    async fn pinned_hash_rejects_expired_certificate() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("keygen");
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2020, 1, 10);
        let cert = params.self_signed(&key).expect("self-sign");
        let der = cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let err = handshake(
            server_config(&der, &key),
            &Trust::PinnedSha256(vec![certificate_sha256(der.as_ref())]),
        )
        .await
        .expect_err("expired certificate must be rejected");
        assert!(
            err.to_lowercase().contains("expired"),
            "unexpected error: {err}"
        );
    }

    #[tokio::test]
    async fn ca_pem_trusts_self_signed_root_by_name() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("keygen");
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress("127.0.0.1".parse().expect("ip")));
        let cert = params.self_signed(&key).expect("self-sign");
        let der = cert.der().clone();
        let pem = cert.pem().into_bytes();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        handshake(server_config(&der, &key), &Trust::CaPem(pem))
            .await
            .expect("CA handshake");
        // A different CA must not be accepted.
        let other_pem = {
            let k = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("keygen");
            CertificateParams::new(vec!["localhost".to_string()])
                .expect("params")
                .self_signed(&k)
                .expect("self-sign")
                .pem()
                .into_bytes()
        };
        handshake(server_config(&der, &key), &Trust::CaPem(other_pem))
            .await
            .expect_err("unknown CA");
    }

    #[test]
    fn parses_hash_forms() {
        let colons = ["AB", "cd"].repeat(16).join(":");
        let plain = "abcd".repeat(16);
        assert_eq!(Trust::parse_sha256_hex(&plain).expect("plain").len(), 32);
        assert_eq!(
            Trust::parse_sha256_hex(&colons).expect("colons"),
            Trust::parse_sha256_hex(&plain).expect("plain")
        );
        assert!(Trust::parse_sha256_hex("abcd").is_err());
        assert!(Trust::parse_sha256_hex(&"zz".repeat(32)).is_err());
        assert!(Trust::pinned_hex(Vec::<String>::new()).is_err());
    }

    #[test]
    fn quic_config_is_tls13_h3() {
        let configs = TlsConfigs::new(&Trust::PinnedSha256(vec![[1u8; 32]])).expect("configs");
        assert_eq!(configs.quic.alpn_protocols, vec![b"h3".to_vec()]);
        assert_eq!(configs.tcp.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }
}
