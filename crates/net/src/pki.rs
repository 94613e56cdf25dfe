//! The exercise PKI: a CA, a relay certificate and one certificate per endpoint.
//!
//! Endpoint certificates carry the endpoint id as URI SAN `urn:hotline:endpoint:<id>` and an
//! Ed25519 key, which is also the endpoint's identity key for signing envelopes and receipts
//! (its partner pins it). These keys are for exercises and development, never production.
//!
//! Every certificate has a random 16-byte serial and a validity of a number of days from now
//! (see [`crate::ca`] for the defaults); the CA itself, its CSR signing and its CRLs are in
//! [`crate::ca`].

use std::path::{Path, PathBuf};

use hotline_proto::EndpointId;
use hotline_proto::crypto::IdentityPublicKey;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair,
    KeyUsagePurpose, SanType,
};
use zeroize::Zeroizing;

use crate::ca::{Ca, Validity, set_validity};
use crate::tls::ENDPOINT_URI_PREFIX;

/// Why the PKI could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Generate(rcgen::Error),
    /// A validity in days outside 1 ..= [`crate::ca::MAX_DAYS`].
    #[error("validity of {0} days: must be between 1 and {max}", max = crate::ca::MAX_DAYS)]
    Days(u32),
    /// The system random generator failed.
    #[error("the system random number generator failed")]
    Random,
    /// A certificate signing request was refused.
    #[error("certificate signing request: {0}")]
    Csr(String),
    /// A fingerprint (pinned identity key) is malformed.
    #[error("fingerprint: {0}")]
    Fingerprint(String),
    /// The CA's certificate or key could not be used.
    #[error("CA: {0}")]
    Ca(String),
    /// A certificate could not be read or parsed.
    #[error("{0}")]
    Tls(crate::tls::TlsError),
    /// A file could not be read.
    #[error("reading {}: {error}", path.display())]
    Read {
        /// Which file.
        path: PathBuf,
        /// Why (in the message, not a `source()`, so it is printed once).
        error: std::io::Error,
    },
    /// A file could not be written.
    #[error("writing {}: {error}", path.display())]
    Write {
        /// Which file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
}

// rcgen's error is in the message, not a `source()`: anyhow's `{:#}` would print it twice.
impl From<crate::tls::TlsError> for PkiError {
    fn from(e: crate::tls::TlsError) -> Self {
        Self::Tls(e)
    }
}

impl From<rcgen::Error> for PkiError {
    fn from(e: rcgen::Error) -> Self {
        Self::Generate(e)
    }
}

/// A certificate and its key, PEM-encoded. `Debug` leaves the key out; it is wiped on drop.
#[derive(Clone)]
pub struct Issued {
    /// Certificate PEM.
    pub cert_pem: String,
    /// Private key PEM (PKCS#8).
    pub key_pem: Zeroizing<String>,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[secret key elided]")
            .finish()
    }
}

/// An endpoint's issued certificate and identity key.
#[derive(Debug, Clone)]
pub struct IssuedEndpoint {
    /// Endpoint id.
    pub id: EndpointId,
    /// Certificate and key.
    pub issued: Issued,
    /// The Ed25519 identity public key (to pin).
    pub identity: IdentityPublicKey,
}

/// A freshly made exercise PKI.
#[derive(Debug)]
pub struct ExercisePki {
    /// The CA.
    pub ca: Issued,
    /// The relay.
    pub relay: Issued,
    /// The endpoints.
    pub endpoints: Vec<IssuedEndpoint>,
    authority: Ca,
    days: Validity,
}

pub(crate) fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Hotline exercise PKI");
    dn.push(DnType::CommonName, cn);
    dn
}

impl ExercisePki {
    /// Makes a CA, a relay certificate for `relay_name` (plus `localhost`, `127.0.0.1`, `::1`)
    /// and one certificate per endpoint.
    pub fn generate(relay_name: &str, endpoints: &[EndpointId]) -> Result<Self, PkiError> {
        Self::generate_for_relays(&[relay_name], endpoints)
    }

    /// As [`ExercisePki::generate`], with one relay certificate naming every relay in
    /// `relay_names` (the first is its subject), shared by all of them: relays are untrusted
    /// forwarders (every frame is signed end to end), so one exercise certificate is enough.
    pub fn generate_for_relays(
        relay_names: &[&str],
        endpoints: &[EndpointId],
    ) -> Result<Self, PkiError> {
        Self::generate_with(relay_names, endpoints, Validity::default())
    }

    /// As [`ExercisePki::generate_for_relays`], with the validity of each kind of certificate.
    pub fn generate_with(
        relay_names: &[&str],
        endpoints: &[EndpointId],
        days: Validity,
    ) -> Result<Self, PkiError> {
        let relay_name = relay_names.first().copied().unwrap_or("localhost");
        let (authority, ca) = Ca::generate(days.ca)?;

        let mut sans: Vec<String> = relay_names.iter().map(|n| (*n).to_owned()).collect();
        sans.push("localhost".to_owned());
        let mut seen = std::collections::BTreeSet::new();
        sans.retain(|n| seen.insert(n.clone()));
        let relay_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut relay_params = CertificateParams::new(sans)?;
        for ip in [
            std::net::IpAddr::from([127, 0, 0, 1]),
            std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
        ] {
            relay_params.subject_alt_names.push(SanType::IpAddress(ip));
        }
        relay_params.distinguished_name = name(relay_name);
        relay_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        set_validity(&mut relay_params, days.relay)?;
        let relay_cert = relay_params.signed_by(&relay_key, authority.issuer())?;
        let relay = Issued {
            cert_pem: relay_cert.pem(),
            key_pem: Zeroizing::new(relay_key.serialize_pem()),
        };

        let mut pki = Self {
            ca,
            relay,
            endpoints: Vec::new(),
            authority,
            days,
        };
        for id in endpoints {
            let e = pki.issue_endpoint(id)?;
            pki.endpoints.push(e);
        }
        Ok(pki)
    }

    /// The CA, to sign more with.
    pub fn authority(&self) -> &Ca {
        &self.authority
    }

    /// Issues one more endpoint certificate from this CA (e.g. a second `jp` key, to test pins).
    pub fn issue_endpoint(&self, id: &EndpointId) -> Result<IssuedEndpoint, PkiError> {
        self.authority.issue_endpoint(id, self.days.endpoint)
    }

    /// Writes `ca.pem`, `ca.key`, `relay.pem`, `relay.key`, `<id>.pem`, `<id>.key` into `dir`
    /// (keys mode 0600).
    pub fn write(&self, dir: &Path) -> Result<(), PkiError> {
        write_issued(dir, "ca", &self.ca)?;
        write_issued(dir, "relay", &self.relay)?;
        for e in &self.endpoints {
            write_issued(dir, e.id.as_str(), &e.issued)?;
        }
        Ok(())
    }
}

/// The certificate parameters of endpoint `id`: its URI SAN, clientAuth only, a random serial
/// and `days` of validity.
pub(crate) fn endpoint_params(id: &EndpointId, days: u32) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = name(&format!("endpoint {id}"));
    let uri = format!("{ENDPOINT_URI_PREFIX}{id}");
    params.subject_alt_names.push(SanType::URI(uri.try_into()?));
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    set_validity(&mut params, days)?;
    Ok(params)
}

/// Writes `<stem>.pem` and `<stem>.key` (0600) into `dir`.
pub fn write_issued(dir: &Path, stem: &str, issued: &Issued) -> Result<(), PkiError> {
    let cert = dir.join(format!("{stem}.pem"));
    std::fs::write(&cert, &issued.cert_pem)
        .map_err(|error| PkiError::Write { path: cert, error })?;
    let key = dir.join(format!("{stem}.key"));
    crate::quic::write_private(&key, issued.key_pem.as_bytes())
        .map_err(|error| PkiError::Write { path: key, error })
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::tls;

    #[test]
    fn endpoint_certificates_carry_id_and_identity_key() {
        let us = EndpointId::new("us").unwrap();
        let pki = ExercisePki::generate("relay.test", std::slice::from_ref(&us)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        pki.write(dir.path()).unwrap();
        let certs = tls::load_certs(&dir.path().join("us.pem")).unwrap();
        assert_eq!(tls::endpoint_id(&certs[0]).unwrap(), us);
        assert_eq!(
            tls::identity_key(&certs[0]).unwrap(),
            pki.endpoints[0].identity
        );
        tls::check_valid_now(&certs[0]).unwrap();
        // The PKCS#8 key loads as the engine's identity key and matches the certificate.
        let key = std::fs::read_to_string(dir.path().join("us.key")).unwrap();
        use rustls::pki_types::pem::PemObject;
        let der = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
        let id = hotline_proto::crypto::IdentityKey::from_pkcs8(der.secret_der()).unwrap();
        assert_eq!(id.public(), pki.endpoints[0].identity);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("us.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let relay = tls::load_certs(&dir.path().join("relay.pem")).unwrap();
        assert!(matches!(
            tls::endpoint_id(&relay[0]),
            Err(tls::TlsError::NoEndpointId)
        ));
    }

    #[test]
    fn bad_files_name_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.pem");
        std::fs::write(&p, "hello").unwrap();
        let e = tls::load_certs(&p).unwrap_err().to_string();
        assert!(e.contains("x.pem") && e.contains("no certificate"), "{e}");
        let e = tls::load_key(&dir.path().join("missing.key"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.key"), "{e}");
    }

    #[test]
    fn endless_pem_files_are_refused_naming_file_and_limit() {
        let zero = Path::new("/dev/zero");
        let e = tls::load_certs(zero).unwrap_err().to_string();
        assert!(
            e.contains("/dev/zero") && e.contains("4194304-byte limit"),
            "{e}"
        );
        let e = tls::load_key(zero).unwrap_err().to_string();
        assert!(e.contains("/dev/zero") && e.contains("limit"), "{e}");
        let e = tls::load_crl(zero).unwrap_err().to_string();
        assert!(e.contains("/dev/zero") && e.contains("limit"), "{e}");
    }

    #[test]
    fn debug_of_credentials_and_issued_keys_hides_the_private_key() {
        let us = EndpointId::new("us").unwrap();
        let pki = ExercisePki::generate("relay.test", std::slice::from_ref(&us)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        pki.write(dir.path()).unwrap();
        let creds =
            tls::Credentials::load(&dir.path().join("us.pem"), &dir.path().join("us.key")).unwrap();
        // The private part of the PKCS#8 key (past its fixed header), as Debug shows bytes.
        let secret = format!("{:?}", &creds.key.secret_der()[16..32]);
        let secret = secret.trim_matches(|c| c == '[' || c == ']');
        let shown = format!("{creds:?} {creds:#?}");
        assert!(!shown.contains(secret), "{shown}");
        // The PEM text of every issued key, CA and relay included.
        let shown = format!("{pki:?} {pki:#?}");
        for key in [&pki.ca, &pki.relay, &pki.endpoints[0].issued].map(|i| &i.key_pem) {
            let body = key.lines().nth(1).unwrap();
            assert!(!shown.contains(&body[40..64]), "{shown}");
        }
    }
}
