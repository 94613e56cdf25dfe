//! Reloading a running `hotline-relay` process (SIGHUP and `hotline-relay reload`): hotlines
//! added and removed, a CRL applied, a broken configuration refused, and the connections of
//! unaffected endpoints left up (the same QUIC connection, the same connection id at the relay).
//!
//! Raw wire nodes ([`TestNode`]) connect to a real relay process. No timing assertions: every
//! wait is for a condition, with a generous timeout that only turns a hang into a failure.

#![expect(
    clippy::unwrap_used,
    reason = "helpers outside #[test] functions fail the test loudly too"
)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use hotline_net::ca::{Ca, Revoked};
use hotline_proto::Precedence;
use hotline_proto::wire::Frame;
use hotline_relay::CloseReason;
use hotline_relay::admin::{self, AdminReply, AdminRequest, AdminStatus};
use hotline_relay::testing::{TestNode, TestPki, WAIT, envelope};

const BIN: &str = env!("CARGO_BIN_EXE_hotline-relay");

const BASE: &str = r#"
listen = "127.0.0.1:0"
metrics = "off"
data_dir = "data/relay"
ca = "ca.pem"
cert = "relay.pem"
key = "relay.key"
"#;

fn toml(extra: &str, hotlines: &[(&str, &str)]) -> String {
    let mut s = format!("{BASE}{extra}\n");
    for (a, b) in hotlines {
        s.push_str(&format!("[[hotline]]\na = \"{a}\"\nb = \"{b}\"\n"));
    }
    s
}

/// A relay process and the lines of its log.
struct Relay {
    pki: TestPki,
    child: Child,
    addr: SocketAddr,
    log: mpsc::Receiver<String>,
}

impl Relay {
    fn start(hotlines: &[(&str, &str)]) -> Self {
        let pki = TestPki::generate(&["us", "jp", "fr", "uk"]);
        pki.write_config(&toml("", hotlines));
        let mut child = Command::new(BIN)
            .arg("--config")
            .arg(pki.path().join("relay.toml"))
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let (tx, log) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stderr.lines() {
                let Ok(line) = line else { return };
                eprintln!("relay: {line}");
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut relay = Self {
            pki,
            child,
            addr: "127.0.0.1:1".parse().unwrap(),
            log,
        };
        let line = relay.wait_log("relay listening");
        let addr = line
            .split("addr=")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap();
        relay.addr = addr.parse().unwrap();
        relay
    }

    fn dir(&self) -> &Path {
        self.pki.path()
    }

    /// The first log line from now on that contains `needle`.
    fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .log
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no log line with {needle:?}"));
            if line.contains(needle) {
                return line;
            }
        }
    }

    fn write_config(&self, text: &str) {
        self.pki.write_config(text);
    }

    fn sighup(&self) {
        let status = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// `hotline-relay reload`: exit success, stdout, stderr.
    fn reload_cli(&self) -> (bool, String, String) {
        let out = Command::new(BIN)
            .args(["reload", "--config"])
            .arg(self.dir().join("relay.toml"))
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    }

    fn status(&self) -> AdminStatus {
        let socket = admin::socket_path(&self.dir().join("data/relay"));
        match admin::request(&socket, AdminRequest::Status).unwrap() {
            AdminReply::Status(s) => s,
            other => panic!("{other:?}"),
        }
    }

    fn conn_id(&self, endpoint: &str) -> Option<u64> {
        self.status()
            .connected
            .iter()
            .find(|c| c.endpoint == endpoint)
            .map(|c| c.conn_id)
    }

    async fn connect(&self, name: &str) -> anyhow::Result<TestNode> {
        TestNode::connect(self.addr, self.dir(), self.dir(), name, None).await
    }

    /// Connects `name` and waits until the relay lists it as connected.
    async fn connect_registered(&self, name: &str) -> TestNode {
        let node = self.connect(name).await.unwrap();
        let deadline = Instant::now() + WAIT;
        while self.conn_id(name).is_none() {
            assert!(Instant::now() < deadline, "{name} never registered");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        node
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `from` sends one routine envelope to `to`, which receives it.
async fn exchange(from: &mut TestNode, to: &mut TestNode, sender: &str, recipient: &str, seq: u64) {
    let env = envelope(sender, recipient, Precedence::Routine, seq);
    from.send_lane(Precedence::Routine, &env).await;
    let (_, bytes, _) = to.next_envelope().await;
    assert_eq!(&bytes[..], &env[..]);
}

fn close_reason(node: &TestNode) -> Option<CloseReason> {
    node.conn.close_reason().as_ref().and_then(CloseReason::of)
}

async fn closed_with(node: &TestNode) -> Option<CloseReason> {
    CloseReason::of(&node.closed_with().await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_adds_a_hotline_and_leaves_the_others_connected() {
    let relay = Relay::start(&[("us", "jp")]);
    let mut us = relay.connect_registered("us").await;
    let mut jp = relay.connect_registered("jp").await;
    let (us_id, jp_id) = (relay.conn_id("us"), relay.conn_id("jp"));
    // fr is in no hotline yet: refused.
    let fr = relay.connect("fr").await;
    if let Ok(fr) = fr {
        assert_eq!(closed_with(&fr).await, Some(CloseReason::NotConfigured));
    }

    relay.write_config(&toml("", &[("us", "jp"), ("fr", "uk")]));
    relay.sighup();
    let line = relay.wait_log("reloaded");
    assert!(line.contains("hotlines added: fr:uk"), "{line}");

    let mut fr = relay.connect_registered("fr").await;
    let mut uk = relay.connect_registered("uk").await;
    exchange(&mut fr, &mut uk, "fr", "uk", 1).await;
    // us and jp kept their QUIC connections: same connection, same id at the relay.
    assert_eq!(close_reason(&us), None);
    assert_eq!(close_reason(&jp), None);
    assert_eq!((relay.conn_id("us"), relay.conn_id("jp")), (us_id, jp_id));
    exchange(&mut us, &mut jp, "us", "jp", 1).await;
    assert_eq!(relay.status().hotlines, 2);

    // SIGHUP with nothing changed, twice: the relay stays up and says so.
    relay.sighup();
    relay.wait_log("reloaded");
    relay.sighup();
    relay.wait_log("reloaded");
    assert_eq!((relay.conn_id("us"), relay.conn_id("jp")), (us_id, jp_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_hotline_closes_its_endpoints_as_unpaired() {
    let relay = Relay::start(&[("us", "jp"), ("fr", "uk")]);
    let us = relay.connect_registered("us").await;
    let jp = relay.connect_registered("jp").await;
    let mut fr = relay.connect_registered("fr").await;
    let mut uk = relay.connect_registered("uk").await;
    let fr_id = relay.conn_id("fr");

    relay.write_config(&toml("", &[("fr", "uk")]));
    let (ok, stdout, stderr) = relay.reload_cli();
    assert!(ok, "{stderr}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.starts_with("reloaded: "), "{stdout}");
    assert!(stdout.contains("removed: jp:us"), "{stdout}");
    assert!(stdout.contains("closed unpaired: jp us"), "{stdout}");
    assert_eq!(closed_with(&us).await, Some(CloseReason::Unpaired));
    assert_eq!(closed_with(&jp).await, Some(CloseReason::Unpaired));
    // The unaffected pair carries on over the same connection.
    assert_eq!(relay.conn_id("fr"), fr_id);
    exchange(&mut fr, &mut uk, "fr", "uk", 1).await;
    // A removed endpoint that comes back is refused as not configured.
    if let Ok(us) = relay.connect("us").await {
        assert_eq!(closed_with(&us).await, Some(CloseReason::NotConfigured));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_crl_closes_the_revoked_endpoint_and_keeps_its_partner() {
    let relay = Relay::start(&[("us", "jp")]);
    let us = relay.connect_registered("us").await;
    let mut jp = relay.connect_registered("jp").await;
    let jp_id = relay.conn_id("jp");

    let dir = relay.dir();
    let ca = Ca::load(&dir.join("ca.pem"), &dir.join("ca.key")).unwrap();
    let us_cert = hotline_net::tls::load_certs(&dir.join("us.pem")).unwrap();
    let revoked = [Revoked {
        serial: hotline_net::crl::serial(&us_cert[0]).unwrap(),
        at: SystemTime::now(),
    }];
    std::fs::write(dir.join("crl.pem"), ca.crl(&revoked, 1, 7).unwrap()).unwrap();
    relay.write_config(&toml("crl = \"crl.pem\"", &[("us", "jp")]));
    let (ok, stdout, stderr) = relay.reload_cli();
    assert!(ok, "{stderr}");
    assert!(stdout.contains("CRL revokes 1 certificate(s)"), "{stdout}");
    assert!(stdout.contains("closed revoked: us"), "{stdout}");
    assert_eq!(closed_with(&us).await, Some(CloseReason::Revoked));
    assert_eq!(relay.conn_id("jp"), jp_id, "jp stays connected");
    assert_eq!(close_reason(&jp), None);
    // jp hears that us went offline.
    jp.recv_where(|f| matches!(f, Frame::Presence(p) if !p.online))
        .await;
    // New handshakes see the CRL: us cannot come back.
    let again = relay.connect("us").await;
    assert!(
        again.is_err(),
        "a revoked certificate is refused in the handshake"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_configuration_is_refused_in_one_line_and_the_old_one_stays() {
    let relay = Relay::start(&[("us", "jp")]);
    let mut us = relay.connect_registered("us").await;
    let mut jp = relay.connect_registered("jp").await;
    let ids = (relay.conn_id("us"), relay.conn_id("jp"));
    for (config, expect) in [
        (
            toml("", &[("us", "jp")]).replace("127.0.0.1:0", "127.0.0.1:9"),
            "listen cannot change on reload; restart the relay",
        ),
        (
            toml("", &[("us", "jp")]).replace("relay.key", "us.key"),
            "key does not match",
        ),
        (toml("", &[("us", "us")]), "pairs an endpoint with itself"),
        (toml("colour = \"red\"", &[("us", "jp")]), "colour"),
        (
            toml("max_queue_bytes_per_endpoint = 1", &[("us", "jp")]),
            "max_queue_bytes_per_endpoint",
        ),
    ] {
        relay.write_config(&config);
        let (ok, stdout, stderr) = relay.reload_cli();
        assert!(!ok, "{stdout}");
        assert!(stderr.starts_with("error: "), "{stderr}");
        assert!(stderr.contains(expect), "{expect}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        let line = relay.wait_log("reload refused");
        assert!(line.contains(expect), "the relay logs it too: {line}");
        // SIGHUP with the same file: one warning line, the relay stays up.
        relay.sighup();
        let line = relay.wait_log("reload refused");
        assert!(line.contains(expect), "{line}");
    }
    // Still serving with the old configuration, over the same connections.
    assert_eq!((relay.conn_id("us"), relay.conn_id("jp")), ids);
    exchange(&mut us, &mut jp, "us", "jp", 1).await;
    assert_eq!(relay.status().hotlines, 1);
}
