//! What must be refused: a certificate from another CA (at the handshake), an endpoint sending
//! to someone else's partner, an envelope whose sender is not the connection's identity, a
//! relay certificate for the wrong name (by the node), and a changed partner identity key.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a failed step is the test failing"
)]

use std::time::Duration;

use hotline_e2e::{Exercise, PATIENCE};
use hotline_net::framed;
use hotline_net::tls::{self, Credentials};
use hotline_proto::crypto::SessionId;
use hotline_proto::envelope::{Envelope, Header};
use hotline_proto::wire::{self, EnvelopeFrame, Frame, Hello, RefusalCode};
use hotline_proto::{Precedence, Seq};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_from_another_ca_is_refused_at_the_handshake() {
    let ex = Exercise::new(&["us", "jp"], &[]);
    let other = Exercise::new(&["us", "jp"], &[]);
    let mut relay = ex.start_relay();
    // A node that trusts our relay's CA but presents a certificate from another CA.
    std::fs::copy(other.path("us.pem"), ex.path("us.pem")).unwrap();
    std::fs::copy(other.path("us.key"), ex.path("us.key")).unwrap();
    let _us = ex.start_node("us");
    let s = ex
        .wait_status("us", "a refused handshake", |s| {
            !s.connected && s.last_error.is_some()
        })
        .await;
    assert!(!s.connected);
    relay
        .wait_log("handshake", PATIENCE)
        .or_else(|_| relay.wait_log("certificate", PATIENCE))
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_certificate_for_the_wrong_name_is_refused_by_the_node() {
    let ex = Exercise::new(&["us", "jp"], &[]);
    let _relay = ex.start_relay();
    ex.edit_config("us", |t| {
        t.insert("relay_name".into(), "wrong.example".into());
    });
    let _us = ex.start_node("us");
    let s = ex
        .wait_status("us", "a name mismatch", |s| s.last_error.is_some())
        .await;
    assert!(!s.connected);
    let err = s.last_error.unwrap();
    assert!(
        err.contains("wrong.example") || err.to_lowercase().contains("certificate"),
        "{err}"
    );
}

/// Sets up `endpoints` (paired by `pairs`) and a relay, then sends one raw envelope as
/// [`raw_envelope`] does and returns the relay's refusal code.
async fn refusal(
    endpoints: &[&str],
    pairs: &[&str],
    endpoint: &str,
    sender: &str,
    recipient: &str,
) -> RefusalCode {
    let ex = Exercise::new(endpoints, pairs);
    let _relay = ex.start_relay();
    raw_envelope(&ex, endpoint, sender, recipient).await
}

/// Connects a raw QUIC client with `endpoint`'s certificate, sends one envelope with the given
/// sender and recipient on the flash lane, and returns the relay's refusal code.
async fn raw_envelope(ex: &Exercise, endpoint: &str, sender: &str, recipient: &str) -> RefusalCode {
    let ca = tls::load_certs(&ex.path("ca.pem")).unwrap();
    let creds = Credentials::load(
        &ex.path(&format!("{endpoint}.pem")),
        &ex.path(&format!("{endpoint}.key")),
    )
    .unwrap();
    let cfg = tls::client_config(&ca, creds, Default::default()).unwrap();
    let quic = hotline_net::quic::client(ex.relay_addr(), cfg).unwrap();
    let conn = tokio::time::timeout(PATIENCE, async {
        loop {
            if let Ok(c) = quic.connect(ex.relay_addr(), "localhost").unwrap().await {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap();
    let (mut ctl_tx, mut ctl_rx) = conn.open_bi().await.unwrap();
    let hello = wire::encode_frame(&Frame::Hello(Hello {
        version: wire::PROTOCOL_VERSION,
        agent: "raw".into(),
    }));
    framed::write_frame(&mut ctl_tx, &hello).await.unwrap();
    let mut lane = conn.open_uni().await.unwrap();
    framed::LaneTag(Precedence::Flash)
        .write(&mut lane)
        .await
        .unwrap();
    let envelope = Frame::Envelope(EnvelopeFrame {
        transport: Precedence::Flash,
        envelope: Envelope {
            header: Header {
                sender: sender.parse().unwrap(),
                recipient: recipient.parse().unwrap(),
                channel: Default::default(),
                precedence: Precedence::Flash,
                seq: Seq(1),
                after: [0, 0, 0, 0],
                epoch: 1,
                session: SessionId([0; 16]),
                prev: Default::default(),
                sealed_len: 4,
            },
            sealed: vec![1, 2, 3, 4],
        },
        head: None,
        setup: None,
    });
    framed::write_frame(&mut lane, &wire::encode_frame(&envelope))
        .await
        .unwrap();
    tokio::time::timeout(PATIENCE, async {
        loop {
            let f = framed::read_frame(&mut ctl_rx)
                .await
                .unwrap()
                .expect("control stream open");
            if let (Frame::Refused(r), _) = wire::decode_frame(&f).unwrap() {
                return r.code;
            }
        }
    })
    .await
    .expect("a refusal")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sending_to_someone_elses_partner_is_refused_by_the_relay() {
    assert_eq!(
        refusal(&["a", "b", "c", "d"], &["a:b", "c:d"], "a", "a", "d").await,
        RefusalCode::NotPaired
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelope_with_a_forged_sender_is_refused() {
    // us's certificate, claiming to be jp.
    assert_eq!(
        refusal(&["us", "jp"], &[], "us", "jp", "us").await,
        RefusalCode::SenderMismatch
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_partner_identity_key_raises_an_alarm() {
    let ex = Exercise::new(&["us", "jp"], &[]);
    let _relay = ex.start_relay();
    // us pins a key that is not jp's (as if jp's certificate had been re-issued by the CA).
    let other: toml::Table = std::fs::read_to_string(ex.config("jp"))
        .unwrap()
        .parse()
        .unwrap();
    let us_key = other["partner"].as_array().unwrap()[0]["identity_key"]
        .as_str()
        .unwrap()
        .to_owned();
    ex.edit_config("us", |t| {
        let p = t["partner"].as_array_mut().unwrap()[0]
            .as_table_mut()
            .unwrap();
        p.insert("identity_key".into(), us_key.clone().into());
    });
    let _us = ex.start_node("us");
    let _jp = ex.start_node("jp");
    let s = ex
        .wait_status("us", "a partner-key alarm", |s| {
            s.alarms
                .iter()
                .any(|a| a.kind.contains("partner identity key changed"))
        })
        .await;
    assert!(s.lanes["flash"].awaiting_key == 0);
    let out = ex.hotline_send("us", Precedence::Flash, "x");
    assert!(out.status.success());
    let s = ex.status("us").await;
    assert_eq!(
        s.lanes["flash"].awaiting_key, 1,
        "nothing is sealed to an unverified key"
    );
}
