use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::*;
use crate::pki::ExercisePki;
use crate::quic::Timeouts;
use crate::tls;

fn id(s: &str) -> EndpointId {
    EndpointId::new(s).unwrap()
}

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

fn years_valid(pem: &str) -> f64 {
    let cert = der(pem);
    let (_, c) = x509_parser::parse_x509_certificate(&cert).unwrap();
    let v = c.validity();
    (v.not_after.timestamp() - v.not_before.timestamp()) as f64 / (365.0 * 86_400.0)
}

#[test]
fn a_csr_signed_by_the_ca_carries_the_endpoint_key_client_auth_and_a_year() {
    let (ca, ca_files) = Ca::generate(DEFAULT_CA_DAYS).unwrap();
    let req = endpoint_request(&id("us")).unwrap();
    assert!(req.csr_pem.contains("CERTIFICATE REQUEST"));
    let signed = ca.sign_csr(&req.csr_pem, DEFAULT_ENDPOINT_DAYS).unwrap();
    assert_eq!(signed.id, id("us"));
    assert_eq!(signed.identity, req.identity);
    let cert = der(&signed.cert_pem);
    assert_eq!(tls::endpoint_id(&cert).unwrap(), id("us"));
    assert_eq!(tls::identity_key(&cert).unwrap(), req.identity);
    tls::check_client_usage(&cert).unwrap();
    tls::check_valid_now(&cert).unwrap();
    let years = years_valid(&signed.cert_pem);
    assert!((0.99..1.01).contains(&years), "{years}");
    assert!(years_valid(&ca_files.cert_pem) < 5.1);
    // The CA reloads from its files and still signs.
    let dir = tempfile::tempdir().unwrap();
    crate::pki::write_issued(dir.path(), "ca", &ca_files).unwrap();
    let again = Ca::load(&dir.path().join("ca.pem"), &dir.path().join("ca.key")).unwrap();
    let other = again.sign_csr(&req.csr_pem, 10).unwrap();
    let a = crate::crl::serial(&cert).unwrap();
    let b = crate::crl::serial(&der(&other.cert_pem)).unwrap();
    assert_ne!(a, b, "serials are random");
    assert!(!format!("{again:?} {req:?}").contains("PRIVATE KEY"));
}

#[test]
fn bad_csrs_and_days_are_refused_with_one_line() {
    let (ca, _) = Ca::generate(30).unwrap();
    let e = ca.sign_csr("hello", 10).unwrap_err().to_string();
    assert!(e.contains("not a valid signed CSR"), "{e}");
    // A CSR naming no endpoint.
    let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let csr = CertificateParams::new(vec!["x.example".to_owned()])
        .unwrap()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let e = ca.sign_csr(&csr, 10).unwrap_err().to_string();
    assert!(e.contains("names no endpoint"), "{e}");
    // A P-256 key is not an identity key.
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .subject_alt_names
        .push(SanType::URI("urn:hotline:endpoint:us".try_into().unwrap()));
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let e = ca.sign_csr(&csr, 10).unwrap_err().to_string();
    assert!(e.contains("not Ed25519"), "{e}");
    let req = endpoint_request(&id("us")).unwrap();
    for days in [0, MAX_DAYS + 1] {
        let e = ca.sign_csr(&req.csr_pem, days).unwrap_err().to_string();
        assert!(e.contains("must be between 1 and 3660"), "{e}");
    }
}

#[test]
fn fingerprints_read_back_in_any_spacing_and_refuse_garbage() {
    let req = endpoint_request(&id("jp")).unwrap();
    let fp = fingerprint(&req.identity);
    assert_eq!(fp.len(), 64 + 15);
    assert_eq!(parse_fingerprint(&fp).unwrap(), req.identity);
    assert_eq!(
        parse_fingerprint(&req.identity.to_hex().to_uppercase()).unwrap(),
        req.identity
    );
    let e = parse_fingerprint("abcd efgh").unwrap_err().to_string();
    assert!(e.contains("'g' is not a hex digit"), "{e}");
    let e = parse_fingerprint(&fp[..70]).unwrap_err().to_string();
    assert!(e.contains("hex digits; expected 64"), "{e}");
}

/// A CA-signed certificate with no extended key usage extension at all: webpki accepts it as a
/// client; the relay's verifier must not.
#[tokio::test]
async fn a_client_certificate_without_eku_is_refused_in_the_handshake() {
    let us = id("us");
    let pki = ExercisePki::generate("localhost", std::slice::from_ref(&us)).unwrap();
    let ca = vec![der(&pki.ca.cert_pem)];
    let mut params = endpoint_params(&us, 10).unwrap();
    params.extended_key_usages.clear();
    let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let no_eku = params.signed_by(&key, pki.authority().issuer()).unwrap();
    let e = tls::check_client_usage(no_eku.der())
        .unwrap_err()
        .to_string();
    assert!(e.contains("no extended key usage extension"), "{e}");

    let relay_creds = tls::Credentials {
        certs: vec![der(&pki.relay.cert_pem)],
        key: rustls::pki_types::PrivateKeyDer::from_pem_slice(pki.relay.key_pem.as_bytes())
            .unwrap(),
    };
    let server_cfg = tls::server_config(&ca, relay_creds, Vec::new(), Timeouts::default()).unwrap();
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let server = crate::quic::server(socket, server_cfg, None).unwrap();
    let accept = tokio::spawn(async move {
        let incoming = server.accept().await.unwrap();
        incoming.await.map(|_| ()).map_err(|e| e.to_string())
    });
    let connect = |cert: CertificateDer<'static>, key_pem: &str| {
        let creds = tls::Credentials {
            certs: vec![cert],
            key: rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap(),
        };
        let cfg = tls::client_config(&ca, creds, Timeouts::default()).unwrap();
        let ep = crate::quic::client(addr, cfg).unwrap();
        async move {
            let conn = ep.connect(addr, "localhost").unwrap().await;
            match conn {
                // TLS 1.3: the client learns of the refusal once the server has read its
                // certificate; the connection closes at once.
                Ok(c) => Err(c.closed().await.to_string()),
                Err(e) => Err(e.to_string()),
            }
        }
    };
    let refused: Result<(), String> = connect(no_eku.der().clone(), &key.serialize_pem()).await;
    let server_side = accept.await.unwrap().unwrap_err();
    assert!(
        server_side.contains("purpose") || server_side.contains("Purpose"),
        "server: {server_side}, client: {refused:?}"
    );
}
