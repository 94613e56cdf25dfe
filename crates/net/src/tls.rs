//! rustls configurations for Hotline: ring provider only, TLS 1.3 only, mutual authentication
//! against the exercise CA, ALPN `hotline/1`, no 0-RTT (it is replayable).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hotline_proto::EndpointId;
use hotline_proto::crypto::IdentityPublicKey;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use zeroize::Zeroizing;

use crate::bounds::{MAX_PEM_BYTES, ReadError, read_capped};
use crate::quic::{Timeouts, transport};

/// The URI SAN prefix that names an endpoint.
pub const ENDPOINT_URI_PREFIX: &str = "urn:hotline:endpoint:";

/// Why certificates or keys could not be used. Each names the file or the problem.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or parsed as PEM.
    #[error("{}: {detail}", path.display())]
    File {
        /// Which file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// rustls refused the configuration (e.g. key does not match certificate).
    #[error("TLS configuration: {0}")]
    Rustls(rustls::Error),
    /// The certificate verifier could not be built (e.g. bad CA or CRL).
    #[error("client certificate verifier: {0}")]
    Verifier(String),
    /// The certificate carries no `urn:hotline:endpoint:` URI SAN.
    #[error("certificate has no {ENDPOINT_URI_PREFIX}<id> URI SAN")]
    NoEndpointId,
    /// The endpoint id in the certificate is invalid.
    #[error("certificate names an invalid endpoint id: {0}")]
    BadEndpointId(hotline_proto::NameError),
    /// The certificate key is not Ed25519 (endpoint identity keys must be).
    #[error("certificate key is not Ed25519; endpoint identity keys must be")]
    NotEd25519,
    /// The certificate does not parse as X.509.
    #[error("certificate does not parse: {0}")]
    BadCertificate(String),
    /// The certificate is outside its validity period.
    #[error("certificate is not valid now (valid {not_before} to {not_after})")]
    NotValidNow {
        /// Start of validity.
        not_before: String,
        /// End of validity.
        not_after: String,
    },
    /// A certificate without the extended key usage its role needs (clientAuth for endpoints,
    /// serverAuth for relays), or with no extended key usage extension at all.
    #[error("certificate {subject} lacks the {usage} extended key usage: {why}")]
    WrongUsage {
        /// Its subject.
        subject: String,
        /// The usage needed.
        usage: &'static str,
        /// What is wrong.
        why: &'static str,
    },
    /// The peer presented no certificate.
    #[error("peer presented no certificate")]
    NoPeerCertificate,
}

// rustls's error is in the message, not a `source()`: anyhow's `{:#}` would print it twice.
impl From<rustls::Error> for TlsError {
    fn from(e: rustls::Error) -> Self {
        Self::Rustls(e)
    }
}

/// A certificate chain and its private key.
#[derive(Debug)]
pub struct Credentials {
    /// Leaf first.
    pub certs: Vec<CertificateDer<'static>>,
    /// The leaf's key.
    pub key: PrivateKeyDer<'static>,
}

impl Credentials {
    /// Loads a PEM certificate chain and a PEM private key.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        Ok(Self {
            certs: load_certs(cert)?,
            key: load_key(key)?,
        })
    }
}

fn file_err(path: &Path, detail: impl ToString) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        detail: detail.to_string(),
    }
}

/// A PEM file's bytes, at most [`MAX_PEM_BYTES`].
fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    read_capped(path, MAX_PEM_BYTES).map_err(|e| match e {
        ReadError::Io { error, .. } => file_err(path, error),
        ReadError::TooLarge { limit, .. } => file_err(
            path,
            format!("larger than the {limit}-byte limit for PEM files"),
        ),
    })
}

/// Loads every certificate in a PEM file (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_pem(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(file_err(path, "contains no certificate"));
    }
    for c in &certs {
        x509_parser::parse_x509_certificate(c)
            .map_err(|e| file_err(path, format!("certificate does not parse: {e}")))?;
    }
    Ok(certs)
}

/// Loads a PEM private key (PKCS#8, SEC1 or PKCS#1). The file's bytes are wiped once parsed.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = Zeroizing::new(read_pem(path)?);
    PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|e| file_err(path, format!("not a PEM private key: {e}")))
}

/// Loads a PEM certificate revocation list.
pub fn load_crl(path: &Path) -> Result<CertificateRevocationListDer<'static>, TlsError> {
    let bytes = read_pem(path)?;
    CertificateRevocationListDer::from_pem_slice(&bytes)
        .map_err(|e| file_err(path, format!("not a PEM CRL: {e}")))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca: &[CertificateDer<'static>]) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in ca {
        roots.add(c.clone())?;
    }
    Ok(roots)
}

/// The relay's QUIC server configuration: client certificates required, verified against `ca`
/// (and `crls`, if any, without enforcing their next update; see [`server_config_with`]).
pub fn server_config(
    ca: &[CertificateDer<'static>],
    creds: Credentials,
    crls: Vec<CertificateRevocationListDer<'static>>,
    timeouts: Timeouts,
) -> Result<quinn::ServerConfig, TlsError> {
    server_config_with(ca, creds, crls, false, timeouts)
}

/// As [`server_config`]; with `enforce_crl_expiry`, a CRL past its next update refuses every
/// client (rustls' `enforce_revocation_expiration`). Client certificates must carry the
/// clientAuth extended key usage: one without the extension is refused too.
pub fn server_config_with(
    ca: &[CertificateDer<'static>],
    creds: Credentials,
    crls: Vec<CertificateRevocationListDer<'static>>,
    enforce_crl_expiry: bool,
    timeouts: Timeouts,
) -> Result<quinn::ServerConfig, TlsError> {
    let mut builder = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots(ca)?),
        provider(),
    )
    .with_crls(crls);
    if enforce_crl_expiry {
        builder = builder.enforce_revocation_expiration();
    }
    let inner = builder
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let verifier = Arc::new(RequireClientAuthEku { inner });
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(creds.certs, creds.key)?;
    tls.alpn_protocols = vec![crate::ALPN.to_vec()];
    tls.max_early_data_size = 0;
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| TlsError::Verifier(format!("QUIC TLS: {e}")))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport(timeouts));
    Ok(config)
}

/// A client certificate verifier that also requires the clientAuth extended key usage to be
/// present: webpki only checks it when the extension is there.
#[derive(Debug)]
struct RequireClientAuthEku {
    inner: Arc<dyn rustls::server::danger::ClientCertVerifier>,
}

impl rustls::server::danger::ClientCertVerifier for RequireClientAuthEku {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        check_client_usage(end_entity).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::InvalidPurpose)
        })?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Checks that a certificate carries the extended key usage extension with clientAuth.
pub fn check_client_usage(cert: &CertificateDer<'_>) -> Result<(), TlsError> {
    check_usage(cert, "clientAuth", |eku| eku.client_auth)
}

/// Checks that a certificate carries the extended key usage extension with serverAuth.
pub fn check_server_usage(cert: &CertificateDer<'_>) -> Result<(), TlsError> {
    check_usage(cert, "serverAuth", |eku| eku.server_auth)
}

fn check_usage(
    cert: &CertificateDer<'_>,
    usage: &'static str,
    has: fn(&x509_parser::extensions::ExtendedKeyUsage<'_>) -> bool,
) -> Result<(), TlsError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| TlsError::BadCertificate(e.to_string()))?;
    let eku = parsed
        .extended_key_usage()
        .map_err(|e| TlsError::BadCertificate(format!("extended key usage: {e}")))?;
    let why = match eku {
        None => "it has no extended key usage extension",
        Some(eku) if has(eku.value) => return Ok(()),
        Some(_) => "its extended key usage does not list it",
    };
    Err(TlsError::WrongUsage {
        subject: parsed.subject().to_string(),
        usage,
        why,
    })
}

/// A node's (or bench client's) QUIC client configuration: the relay must chain to `ca`; we
/// present `creds`.
pub fn client_config(
    ca: &[CertificateDer<'static>],
    creds: Credentials,
    timeouts: Timeouts,
) -> Result<quinn::ClientConfig, TlsError> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(ca)?)
        .with_client_auth_cert(creds.certs, creds.key)?;
    tls.alpn_protocols = vec![crate::ALPN.to_vec()];
    tls.enable_early_data = false;
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| TlsError::Verifier(format!("QUIC TLS: {e}")))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport(timeouts));
    Ok(config)
}

/// The endpoint id in a certificate's `urn:hotline:endpoint:<id>` URI SAN.
pub fn endpoint_id(cert: &CertificateDer<'_>) -> Result<EndpointId, TlsError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| TlsError::BadCertificate(e.to_string()))?;
    let san = parsed
        .subject_alternative_name()
        .map_err(|e| TlsError::BadCertificate(e.to_string()))?
        .ok_or(TlsError::NoEndpointId)?;
    for name in &san.value.general_names {
        if let x509_parser::extensions::GeneralName::URI(uri) = name {
            if let Some(id) = uri.strip_prefix(ENDPOINT_URI_PREFIX) {
                return EndpointId::new(id).map_err(TlsError::BadEndpointId);
            }
        }
    }
    Err(TlsError::NoEndpointId)
}

/// The Ed25519 identity key a certificate carries.
pub fn identity_key(cert: &CertificateDer<'_>) -> Result<IdentityPublicKey, TlsError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| TlsError::BadCertificate(e.to_string()))?;
    let spki = parsed.public_key();
    if spki.algorithm.algorithm.to_id_string() != "1.3.101.112" {
        return Err(TlsError::NotEd25519);
    }
    let raw: [u8; 32] = spki
        .subject_public_key
        .data
        .as_ref()
        .try_into()
        .map_err(|_| TlsError::NotEd25519)?;
    Ok(IdentityPublicKey(raw))
}

/// Checks that a certificate is within its validity period now.
pub fn check_valid_now(cert: &CertificateDer<'_>) -> Result<(), TlsError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| TlsError::BadCertificate(e.to_string()))?;
    let v = parsed.validity();
    if !v.is_valid() {
        return Err(TlsError::NotValidNow {
            not_before: v.not_before.to_string(),
            not_after: v.not_after.to_string(),
        });
    }
    Ok(())
}

/// The endpoint id and identity key of a connection's peer.
pub fn peer_identity(
    conn: &quinn::Connection,
) -> Result<(EndpointId, IdentityPublicKey), TlsError> {
    let certs = conn
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or(TlsError::NoPeerCertificate)?;
    let leaf = certs.first().ok_or(TlsError::NoPeerCertificate)?;
    Ok((endpoint_id(leaf)?, identity_key(leaf)?))
}
