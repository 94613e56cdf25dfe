//! The PKI lifecycle with real processes: keys born at the endpoints and signed by the
//! organiser's CA, partners pinned from fingerprints, a message delivered; a revocation that
//! locks one endpoint out at the relay while its partner still connects; a foreign CRL and an
//! relay certificate without serverAuth refused by `hotline-relay check`; `certs init` refusing before writing;
//! `--force` over an exercise that ran needing `--wipe-data`.

#![expect(clippy::unwrap_used, reason = "a failed step is the test failing")]

use std::path::Path;
use std::process::{Command, Output};

use hotline_client::control::WaitLevel;
use hotline_e2e::{Exercise, Precedence, bin_dir, hotline};

fn ok(o: &Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// The fingerprint in a `fingerprint of ID: …` line.
fn fingerprint(stdout: &str) -> String {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("fingerprint of "))
        .unwrap();
    line.split_once(": ").unwrap().1.to_owned()
}

fn relay_check(config: &Path) -> Output {
    Command::new(bin_dir().join("hotline-relay"))
        .args(["check", "--config", p(config)])
        .output()
        .unwrap()
}

/// The exercise directory is both endpoints' site (keys made there); `org/` is the organiser's
/// CA directory, which never holds an endpoint key.
fn keys_born_at_the_endpoints() -> Exercise {
    Exercise::with_setup(&["us", "jp"], "org/relay.toml", |dir| {
        let org = dir.join("org");
        ok(
            &hotline(&[
                "certs",
                "ca",
                "--out",
                p(&org),
                "--relay",
                "localhost",
                "--pair",
                "us:jp",
            ]),
            "certs ca",
        );
        let mut fps = Vec::new();
        for e in ["us", "jp"] {
            let out = ok(
                &hotline(&["keys", "init", "--out", p(dir), "--endpoint", e]),
                "keys init",
            );
            fps.push(fingerprint(&out));
            let csr = dir.join(format!("{e}.csr"));
            let out = ok(
                &hotline(&[
                    "certs",
                    "sign",
                    "--ca",
                    p(&org),
                    "--csr",
                    p(&csr),
                    "--days",
                    "30",
                ]),
                "certs sign",
            );
            assert_eq!(fingerprint(&out), fps.last().unwrap().clone(), "{out}");
        }
        for (e, partner, fp) in [("us", "jp", &fps[1]), ("jp", "us", &fps[0])] {
            let config = dir.join(format!("{e}.toml"));
            ok(
                &hotline(&[
                    "pin",
                    "--config",
                    p(&config),
                    "--partner",
                    partner,
                    "--fingerprint",
                    fp,
                ]),
                "pin",
            );
        }
        assert!(!org.join("us.key").exists() && !org.join("jp.key").exists());
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_born_at_the_endpoints_exchange_and_a_revoked_one_is_locked_out() {
    let ex = keys_born_at_the_endpoints();
    let [mut relay, _us, _jp] = ex.start_linked("us", "jp").await;
    ex.send_one(
        "us",
        Precedence::Flash,
        "keys born here",
        Some(WaitLevel::Delivered),
    )
    .await
    .unwrap();
    let bodies: Vec<String> = ex.inbox("jp").await.into_iter().map(|m| m.body).collect();
    assert_eq!(bodies, ["keys born here"]);

    // The organiser revokes us; the relay restarts with the CRL.
    let org = ex.path("org");
    let out = ok(
        &hotline(&["certs", "revoke", "--ca", p(&org), "us"]),
        "certs revoke",
    );
    assert!(out.contains("1 certificate(s)"), "{out}");
    let check = ok(&relay_check(&org.join("relay.toml")), "relay check");
    assert!(check.starts_with("ok:"), "{check}");
    relay.stop();
    let _relay = ex.start_relay();
    ex.wait_status("jp", "jp connected again", |s| s.connected)
        .await;
    // us is refused, and its node says why.
    let us = ex
        .wait_status("us", "us refused as revoked", |s| {
            !s.connected
                && s.last_error
                    .as_deref()
                    .is_some_and(|e| e.to_lowercase().contains("revoked"))
        })
        .await;
    eprintln!("us: {:?}", us.last_error);
    assert!(ex.status("jp").await.connected, "jp still connects");
}

#[test]
fn check_refuses_a_foreign_crl_and_a_relay_certificate_without_server_auth() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    for d in [&a, &b] {
        ok(
            &hotline(&[
                "certs",
                "init",
                "--out",
                p(d),
                "--relay",
                "localhost",
                "--endpoint",
                "us",
                "--endpoint",
                "jp",
            ]),
            "certs init",
        );
    }
    ok(
        &hotline(&["certs", "revoke", "--ca", p(&b), "us"]),
        "revoke in b",
    );
    // a's relay given b's CRL.
    std::fs::copy(b.join("crl.pem"), a.join("crl.pem")).unwrap();
    let config = a.join("relay.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("crl = \"crl.pem\"\n{text}")).unwrap();
    let o = relay_check(&config);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success());
    assert!(
        err.contains("not signed by the CA") && err.lines().count() == 1,
        "{err}"
    );

    // b's relay given a certificate its CA signed without serverAuth (an endpoint's, clientAuth
    // only). A certificate with no EKU extension at all is refused the same way (net's unit
    // tests, which also show such a client refused in the handshake).
    let ca = hotline_net::ca::Ca::load(&b.join("ca.pem"), &b.join("ca.key")).unwrap();
    let us = hotline_proto::EndpointId::new("us").unwrap();
    let issued = ca.issue_endpoint(&us, 10).unwrap();
    hotline_net::pki::write_issued(&b, "relay", &issued.issued).unwrap();
    let o = relay_check(&b.join("relay.toml"));
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        !o.status.success() && err.contains("serverAuth") && err.lines().count() == 1,
        "{err}"
    );
}

#[test]
fn a_refused_init_leaves_nothing_and_force_over_data_needs_wipe_data() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ex");
    for (args, needle) in [
        (vec!["--relay", "bad name!"], "not a valid DNS name"),
        (
            vec!["--relay", "r", "--relay-addr", "bad host!:4433"],
            "not a valid DNS name",
        ),
        (
            vec!["--relay", "localhost", "--endpoint", "fr"],
            "fr is in no --pair",
        ),
    ] {
        let mut all = vec!["certs", "init", "--out", p(&out), "--endpoint", "us"];
        all.extend(["--endpoint", "jp"]);
        all.extend(args);
        if needle.contains("no --pair") {
            all.extend(["--pair", "us:jp"]);
        }
        let o = hotline(&all);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(!o.status.success() && err.contains(needle), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(!out.exists(), "{needle}: nothing written");
    }

    let init = |extra: &[&str]| {
        let mut all = vec![
            "certs",
            "init",
            "--out",
            p(&out),
            "--relay",
            "localhost",
            "--endpoint",
            "us",
            "--endpoint",
            "jp",
        ];
        all.extend_from_slice(extra);
        hotline(&all)
    };
    ok(&init(&[]), "first init");
    std::fs::create_dir_all(out.join("data/us")).unwrap();
    let o = init(&["--force"]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        !o.status.success() && err.contains("--wipe-data") && err.contains("data"),
        "{err}"
    );
    assert!(out.join("data/us").exists());
    ok(
        &init(&["--force", "--wipe-data"]),
        "init --force --wipe-data",
    );
    assert!(!out.join("data").exists());
}
