//! The organiser's CA and the endpoint's own key: validity, serials, CSRs, signing and CRLs.
//!
//! - An endpoint makes its identity key and a CSR with [`endpoint_request`]; the key never
//!   leaves it. Its [`fingerprint`] is the Ed25519 public key in hex (the form the partner
//!   pins as `identity_key`), grouped by four for reading aloud.
//! - The organiser's [`Ca`] (loaded from `ca.pem` + `ca.key`) signs such a CSR with
//!   [`Ca::sign_csr`]: only the endpoint id and the public key are taken from it; the
//!   certificate carries clientAuth, a random 16-byte serial and a validity of a number of days.
//! - [`Ca::crl`] makes a CRL of every serial revoked so far, with a next update.

use std::path::Path;
use std::time::{Duration, SystemTime};

use hotline_proto::EndpointId;
use hotline_proto::crypto::IdentityPublicKey;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams,
    CertificateSigningRequestParams, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    PublicKeyData, RevokedCertParams, SanType, SerialNumber,
};
use ring::rand::SecureRandom;
use zeroize::Zeroizing;

use crate::bounds::{MAX_PEM_BYTES, read_capped};
use crate::pki::{Issued, IssuedEndpoint, PkiError, endpoint_params, name};
use crate::tls::ENDPOINT_URI_PREFIX;

/// Default validity of the CA certificate: five years.
pub const DEFAULT_CA_DAYS: u32 = 5 * 365;
/// Default validity of a relay certificate: one year.
pub const DEFAULT_RELAY_DAYS: u32 = 365;
/// Default validity of an endpoint certificate: one year.
pub const DEFAULT_ENDPOINT_DAYS: u32 = 365;
/// Default time from a CRL to its next update: 30 days.
pub const DEFAULT_CRL_DAYS: u32 = 30;
/// Longest validity accepted: ten years.
pub const MAX_DAYS: u32 = 3660;

/// How long each kind of certificate is valid, in days.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// The CA.
    pub ca: u32,
    /// Relay certificates.
    pub relay: u32,
    /// Endpoint certificates.
    pub endpoint: u32,
}

impl Default for Validity {
    fn default() -> Self {
        Self {
            ca: DEFAULT_CA_DAYS,
            relay: DEFAULT_RELAY_DAYS,
            endpoint: DEFAULT_ENDPOINT_DAYS,
        }
    }
}

/// Checks `days` against 1 ..= [`MAX_DAYS`].
pub fn check_days(days: u32) -> Result<u32, PkiError> {
    if days == 0 || days > MAX_DAYS {
        return Err(PkiError::Days(days));
    }
    Ok(days)
}

/// Sets a random serial and a validity from an hour ago (clock skew) to `days` from now.
pub(crate) fn set_validity(params: &mut CertificateParams, days: u32) -> Result<(), PkiError> {
    let days = check_days(days)?;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days));
    params.serial_number = Some(random_serial()?);
    Ok(())
}

/// A random positive 16-byte serial number.
pub fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| PkiError::Random)?;
    // Positive and exactly 16 bytes long in DER (a leading zero byte would be dropped).
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

/// A certificate authority that can sign: its certificate and key.
pub struct Ca {
    /// The CA certificate, PEM.
    pub cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("cert_pem", &self.cert_pem)
            .field("key", &"[secret key elided]")
            .finish()
    }
}

/// Reads a PEM file of at most [`MAX_PEM_BYTES`] as text.
pub fn read_pem_text(path: &Path) -> Result<Zeroizing<String>, PkiError> {
    let bytes = read_capped(path, MAX_PEM_BYTES).map_err(|e| PkiError::Read {
        path: path.to_owned(),
        error: std::io::Error::other(e.to_string()),
    })?;
    String::from_utf8(bytes)
        .map(Zeroizing::new)
        .map_err(|_| PkiError::Csr(format!("{} is not a PEM (text) file", path.display())))
}

impl Ca {
    /// A new self-signed CA (ECDSA P-256) valid for `days`; returns it and its PEM files.
    pub fn generate(days: u32) -> Result<(Self, Issued), PkiError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = name("Hotline exercise CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.key_identifier_method = KeyIdMethod::Sha256;
        set_validity(&mut params, days)?;
        let cert = params.self_signed(&key)?;
        let issued = Issued {
            cert_pem: cert.pem(),
            key_pem: Zeroizing::new(key.serialize_pem()),
        };
        let ca = Self {
            cert_pem: issued.cert_pem.clone(),
            issuer: Issuer::new(params, key),
        };
        Ok((ca, issued))
    }

    /// Loads the CA from `cert` (PEM) and `key` (PEM, PKCS#8).
    pub fn load(cert: &Path, key: &Path) -> Result<Self, PkiError> {
        let cert_pem = read_pem_text(cert)?.to_string();
        let key_pem = read_pem_text(key)?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| PkiError::Ca(format!("{}: not a usable key: {e}", key.display())))?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)
            .map_err(|e| PkiError::Ca(format!("{}: not a CA certificate: {e}", cert.display())))?;
        Ok(Self { cert_pem, issuer })
    }

    pub(crate) fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }

    /// Issues an endpoint certificate with a key made here (development and exercises).
    pub fn issue_endpoint(&self, id: &EndpointId, days: u32) -> Result<IssuedEndpoint, PkiError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
        let cert = endpoint_params(id, days)?.signed_by(&key, &self.issuer)?;
        let raw: [u8; 32] = key
            .public_key_raw()
            .try_into()
            .map_err(|_| rcgen::Error::KeyGenerationUnavailable)?;
        Ok(IssuedEndpoint {
            id: id.clone(),
            issued: Issued {
                cert_pem: cert.pem(),
                key_pem: Zeroizing::new(key.serialize_pem()),
            },
            identity: IdentityPublicKey(raw),
        })
    }

    /// Signs an endpoint's CSR (PEM) for `days`. The CSR's signature is checked; only its
    /// endpoint id (one `urn:hotline:endpoint:` URI SAN) and its Ed25519 key are used.
    pub fn sign_csr(&self, csr_pem: &str, days: u32) -> Result<SignedEndpoint, PkiError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::Csr(format!("not a valid signed CSR: {e}")))?;
        if csr.public_key.algorithm() != &rcgen::PKCS_ED25519 {
            return Err(PkiError::Csr(
                "its key is not Ed25519; endpoint identity keys must be".into(),
            ));
        }
        let ids: Vec<&str> = csr
            .params
            .subject_alt_names
            .iter()
            .filter_map(|san| match san {
                SanType::URI(uri) => uri.as_str().strip_prefix(ENDPOINT_URI_PREFIX),
                _ => None,
            })
            .collect();
        let id = match ids.as_slice() {
            [one] => EndpointId::new(*one)
                .map_err(|e| PkiError::Csr(format!("endpoint id {one:?}: {e}")))?,
            [] => {
                return Err(PkiError::Csr(format!(
                    "it names no endpoint ({ENDPOINT_URI_PREFIX}<id> URI SAN)"
                )));
            }
            _ => return Err(PkiError::Csr("it names several endpoints".into())),
        };
        let raw: [u8; 32] = csr
            .public_key
            .der_bytes()
            .try_into()
            .map_err(|_| PkiError::Csr("its Ed25519 key is not 32 bytes".into()))?;
        csr.params = endpoint_params(&id, days)?;
        let cert = csr.signed_by(&self.issuer)?;
        Ok(SignedEndpoint {
            id,
            cert_pem: cert.pem(),
            identity: IdentityPublicKey(raw),
        })
    }

    /// A CRL listing `revoked`, numbered `number`, with its next update `days` from now.
    pub fn crl(&self, revoked: &[Revoked], number: u64, days: u32) -> Result<String, PkiError> {
        let days = check_days(days)?;
        let now = time::OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now,
            next_update: now + time::Duration::days(i64::from(days)),
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|r| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&r.serial),
                    revocation_time: time::OffsetDateTime::from(r.at),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }
}

/// One revoked certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    /// Its serial number (big-endian bytes, as in the certificate).
    pub serial: Vec<u8>,
    /// When it was revoked.
    pub at: SystemTime,
}

/// A certificate signed from an endpoint's CSR.
#[derive(Debug, Clone)]
pub struct SignedEndpoint {
    /// The endpoint id it names.
    pub id: EndpointId,
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its Ed25519 identity key.
    pub identity: IdentityPublicKey,
}

/// An endpoint's identity key, made where it stays, and its CSR.
pub struct EndpointRequest {
    /// Private key PEM (PKCS#8 Ed25519); wiped on drop.
    pub key_pem: Zeroizing<String>,
    /// The CSR, PEM.
    pub csr_pem: String,
    /// The identity public key (what the partner pins).
    pub identity: IdentityPublicKey,
}

impl std::fmt::Debug for EndpointRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointRequest")
            .field("csr_pem", &self.csr_pem)
            .field("identity", &self.identity)
            .field("key_pem", &"[secret key elided]")
            .finish()
    }
}

/// Makes endpoint `id`'s Ed25519 identity key and a CSR naming it.
pub fn endpoint_request(id: &EndpointId) -> Result<EndpointRequest, PkiError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = name(&format!("endpoint {id}"));
    let uri = format!("{ENDPOINT_URI_PREFIX}{id}");
    params.subject_alt_names.push(SanType::URI(uri.try_into()?));
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let csr = params.serialize_request(&key)?;
    let raw: [u8; 32] = key
        .public_key_raw()
        .try_into()
        .map_err(|_| rcgen::Error::KeyGenerationUnavailable)?;
    Ok(EndpointRequest {
        key_pem: Zeroizing::new(key.serialize_pem()),
        csr_pem: csr.pem()?,
        identity: IdentityPublicKey(raw),
    })
}

/// An identity key as read aloud: its 64 hex digits in 16 groups of four.
pub fn fingerprint(key: &IdentityPublicKey) -> String {
    let hex = key.to_hex();
    let groups: Vec<&str> = (0..hex.len())
        .step_by(4)
        .filter_map(|i| hex.get(i..i + 4))
        .collect();
    groups.join(" ")
}

/// Parses a fingerprint as [`fingerprint`] prints it, or the 64 hex digits of a pinned key;
/// spaces, colons and dashes between digits are ignored, case too.
pub fn parse_fingerprint(text: &str) -> Result<IdentityPublicKey, PkiError> {
    let digits: String = text
        .chars()
        .filter(|c| !matches!(c, ' ' | ':' | '-'))
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if let Some(bad) = digits.chars().find(|c| !c.is_ascii_hexdigit()) {
        return Err(PkiError::Fingerprint(format!(
            "{bad:?} is not a hex digit; expected 64 hex digits (groups of four may be spaced)"
        )));
    }
    if digits.len() != 64 {
        return Err(PkiError::Fingerprint(format!(
            "{} hex digits; expected 64",
            digits.len()
        )));
    }
    IdentityPublicKey::from_hex(&digits).map_err(|e| PkiError::Fingerprint(e.to_string()))
}

/// Seconds since the epoch of a certificate's or CRL's time, for comparisons with now.
pub(crate) fn system_time(t: x509_parser::time::ASN1Time) -> SystemTime {
    let secs = t.timestamp();
    match u64::try_from(secs) {
        Ok(s) => SystemTime::UNIX_EPOCH + Duration::from_secs(s),
        Err(_) => SystemTime::UNIX_EPOCH,
    }
}

#[cfg(test)]
mod tests;
