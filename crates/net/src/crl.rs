//! Checking a certificate revocation list before a relay uses it: it must be signed by one of
//! the relay's CAs (a foreign CRL would otherwise lock every node out at run time), and its
//! next update tells whether it has expired.

use std::time::SystemTime;

use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};

use crate::ca::system_time;

/// Why a CRL cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CrlError {
    /// It does not parse as an X.509 CRL.
    #[error("CRL does not parse: {0}")]
    Parse(String),
    /// No CA certificate signed it.
    #[error("CRL issued by {issuer} is not signed by the CA (a CRL from another CA?)")]
    ForeignIssuer {
        /// The issuer it names.
        issuer: String,
    },
    /// It has no next update, so it never expires.
    #[error("CRL has no next update")]
    NoNextUpdate,
    /// A CA certificate does not parse.
    #[error("CA certificate does not parse: {0}")]
    BadCa(String),
}

/// What a verified CRL says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlInfo {
    /// When it was issued.
    pub this_update: SystemTime,
    /// When the next one is due; past it, the CRL has expired.
    pub next_update: SystemTime,
    /// How many certificates it revokes.
    pub revoked: usize,
}

impl CrlInfo {
    /// Whether the CRL is past its next update at `now`.
    pub fn expired_at(&self, now: SystemTime) -> bool {
        now > self.next_update
    }
}

/// Verifies `crl`'s signature against the CAs in `ca` and reads its dates.
pub fn verify(
    crl: &CertificateRevocationListDer<'_>,
    ca: &[CertificateDer<'_>],
) -> Result<CrlInfo, CrlError> {
    let (_, parsed) =
        x509_parser::parse_x509_crl(crl).map_err(|e| CrlError::Parse(e.to_string()))?;
    let mut signed = false;
    for anchor in ca {
        let (_, cert) = x509_parser::parse_x509_certificate(anchor)
            .map_err(|e| CrlError::BadCa(e.to_string()))?;
        if cert.subject() == parsed.issuer() && parsed.verify_signature(cert.public_key()).is_ok() {
            signed = true;
            break;
        }
    }
    if !signed {
        return Err(CrlError::ForeignIssuer {
            issuer: parsed.issuer().to_string(),
        });
    }
    let next_update = parsed.next_update().ok_or(CrlError::NoNextUpdate)?;
    Ok(CrlInfo {
        this_update: system_time(parsed.last_update()),
        next_update: system_time(next_update),
        revoked: parsed.iter_revoked_certificates().count(),
    })
}

/// A certificate's serial number, big-endian bytes as encoded.
pub fn serial(cert: &CertificateDer<'_>) -> Result<Vec<u8>, CrlError> {
    let (_, parsed) =
        x509_parser::parse_x509_certificate(cert).map_err(|e| CrlError::Parse(e.to_string()))?;
    Ok(parsed.raw_serial().to_vec())
}

/// The serial numbers `crl` revokes, big-endian bytes as encoded (compare with [`serial`]).
pub fn revoked_serials(
    crl: &CertificateRevocationListDer<'_>,
) -> Result<std::collections::BTreeSet<Vec<u8>>, CrlError> {
    let (_, parsed) =
        x509_parser::parse_x509_crl(crl).map_err(|e| CrlError::Parse(e.to_string()))?;
    Ok(parsed
        .iter_revoked_certificates()
        .map(|r| r.raw_serial().to_vec())
        .collect())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use hotline_proto::EndpointId;
    use rustls::pki_types::pem::PemObject;

    use super::*;
    use crate::ca::{Ca, Revoked};

    fn der(pem: &str) -> CertificateRevocationListDer<'static> {
        CertificateRevocationListDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    fn cert(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    #[test]
    fn a_crl_verifies_against_its_ca_only() {
        let (ca, issued) = Ca::generate(30).unwrap();
        let (_, other) = Ca::generate(30).unwrap();
        let us = ca
            .issue_endpoint(&EndpointId::new("us").unwrap(), 10)
            .unwrap();
        let serial = serial(&cert(&us.issued.cert_pem)).unwrap();
        assert_eq!(serial.len(), 16);
        let revoked = [Revoked {
            serial,
            at: SystemTime::now(),
        }];
        let crl = der(&ca.crl(&revoked, 1, 7).unwrap());
        let info = verify(&crl, &[cert(&issued.cert_pem)]).unwrap();
        assert_eq!(info.revoked, 1);
        let listed = revoked_serials(&crl).unwrap();
        assert!(listed.contains(&super::serial(&cert(&us.issued.cert_pem)).unwrap()));
        assert!(!info.expired_at(SystemTime::now()));
        assert!(info.expired_at(SystemTime::now() + Duration::from_secs(8 * 86_400)));
        let e = verify(&crl, &[cert(&other.cert_pem)]).unwrap_err();
        assert!(e.to_string().contains("not signed by the CA"), "{e}");
    }
}
