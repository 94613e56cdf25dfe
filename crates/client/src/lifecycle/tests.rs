use super::*;
use crate::certs::{DeadlineOverrides, InitRequest, init};
use crate::config::NodeConfig;

fn relay() -> RelaySpec {
    RelaySpec::new("localhost", "127.0.0.1:4433")
}

/// `certs ca` (no endpoint keys) for us:jp in `dir/org`.
fn organiser(dir: &Path) -> PathBuf {
    let org = dir.join("org");
    let mut req = InitRequest::new(vec![relay()], vec!["us".into(), "jp".into()], vec![]);
    req.endpoint_keys = false;
    init(&org, &req, &DeadlineOverrides::new()).unwrap();
    assert!(!org.join("us.key").exists());
    org
}

#[test]
fn keys_born_at_the_endpoint_sign_pin_and_load() {
    let dir = tempfile::tempdir().unwrap();
    let org = organiser(dir.path());
    let site = dir.path().join("site");
    let us = keys_init(&site, "us", &relay()).unwrap();
    let jp = keys_init(&site, "jp", &relay()).unwrap();
    let e = keys_init(&site, "us", &relay()).unwrap_err().to_string();
    assert!(e.contains("never overwritten"), "{e}");
    let e = format!("{:#}", NodeConfig::load(&us.config).unwrap_err());
    assert!(e.contains("ca.pem"), "{e}");
    let signed = sign(&org, &us.csr, 365, None).unwrap();
    assert_eq!(signed.id.as_str(), "us");
    assert_eq!(signed.identity, us.identity);
    sign(&org, &jp.csr, 365, None).unwrap();
    assert!(org.join("us.pem").exists() && !org.join("us.key").exists());
    // A second request for us (a re-key, or a CSR claiming us's name) does not overwrite the
    // CA's record of a certificate still valid: it could never be revoked.
    let e = format!("{:#}", sign(&org, &us.csr, 365, None).unwrap_err());
    assert!(
        e.contains("us already holds a certificate") && e.contains("revoke it first"),
        "{e}"
    );
    let first = std::fs::read(org.join("us.pem")).unwrap();
    revoke(&org, "us", 30).unwrap();
    sign(&org, &us.csr, 365, None).unwrap();
    assert_ne!(std::fs::read(org.join("us.pem")).unwrap(), first);
    let ledger = std::fs::read_to_string(org.join(REVOKED_FILE)).unwrap();
    assert_eq!(ledger.matches("endpoint = \"us\"").count(), 1, "{ledger}");
    let e = format!("{:#}", NodeConfig::load(&us.config).unwrap_err());
    assert!(e.contains("hotline pin"), "{e}");
    assert_eq!(
        pin(&us.config, "jp", &ca::fingerprint(&jp.identity)).unwrap(),
        None
    );
    let c = NodeConfig::load(&us.config).unwrap();
    assert_eq!(c.partner.key, jp.identity);
    assert_eq!(c.local.as_str(), "us");
    // A re-pin replaces the key and says what it replaced; a malformed one is one line.
    let previous = pin(&us.config, "jp", &us.identity.to_hex()).unwrap();
    assert!(previous.unwrap().contains(&jp.identity.to_hex()));
    let e = format!("{:#}", pin(&us.config, "jp", "12ab zz").unwrap_err());
    assert!(e.contains("not a hex digit") && !e.contains('\n'), "{e}");
}

#[test]
fn revoke_keeps_earlier_revocations_and_points_the_relay_at_the_crl() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ex");
    let req = InitRequest::new(vec![relay()], vec!["us".into(), "jp".into()], vec![]);
    init(&out, &req, &DeadlineOverrides::new()).unwrap();
    let first = revoke(&out, "us", 30).unwrap();
    assert_eq!(first.count, 1);
    let second = revoke(&out, "jp", 30).unwrap();
    assert_eq!(second.count, 2);
    let ca = tls::load_certs(&out.join("ca.pem")).unwrap();
    let info = crl::verify(&tls::load_crl(&second.crl).unwrap(), &ca).unwrap();
    assert_eq!(info.revoked, 2);
    let relay = std::fs::read_to_string(out.join("relay.toml")).unwrap();
    assert!(relay.contains("crl = \"crl.pem\"") && relay.contains("# Relay config"));
    let e = revoke(&out, "zz", 30).unwrap_err().to_string();
    assert!(e.contains("issued no certificate to zz"), "{e}");
}

#[test]
fn add_endpoint_issues_pairs_and_extends_the_relay() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ex");
    let req = InitRequest::new(vec![relay()], vec!["us".into(), "jp".into()], vec![]);
    init(&out, &req, &DeadlineOverrides::new()).unwrap();
    let e = add_endpoints(&out, &["fr".into()], &["us:fr".into()], 365)
        .unwrap_err()
        .to_string();
    assert!(e.contains("already has a hotline"), "{e}");
    let e = add_endpoints(&out, &["fr".into()], &[], 365)
        .unwrap_err()
        .to_string();
    assert!(e.contains("in no --pair"), "{e}");
    assert!(!out.join("fr.pem").exists(), "a refusal writes nothing");
    let added = add_endpoints(&out, &["fr".into(), "uk".into()], &["fr:uk".into()], 30).unwrap();
    assert_eq!(added.endpoints.len(), 2);
    let fr = NodeConfig::load(&out.join("fr.toml")).unwrap();
    assert_eq!(fr.partner.id.as_str(), "uk");
    let relay = std::fs::read_to_string(out.join("relay.toml")).unwrap();
    assert!(relay.contains("a = \"fr\"\nb = \"uk\""), "{relay}");
}
