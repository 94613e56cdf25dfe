//! Handshake limits of an in-process relay on 127.0.0.1:0: Retry under load, the caps on
//! concurrent, per-address and per-identity handshakes, the hello deadline, and garbage UDP.
//!
//! No timing assertions: every wait is a generous wait-until loop that only turns a hang into a
//! failure. The limits are shrunk per test so that they are hit with a few hundred attempts.

#![expect(
    clippy::unwrap_used,
    reason = "helpers outside #[test] functions fail the test loudly too"
)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hotline_net::quic::{self, Timeouts};
use hotline_net::tls::{self, Credentials};
use hotline_proto::Precedence;
use hotline_relay::testing::*;
use hotline_relay::{CloseReason, HandshakeLimits, Server, ServerConfig};
use tokio::task::JoinSet;

const R: Precedence = Precedence::Routine;

/// How often wait-until loops look again.
const POLL: Duration = Duration::from_millis(50);

struct Fixture {
    dir: TestPki,
    server: Server,
}

/// Endpoints `us`, `jp`, `uk`, `fr`, `xx`; hotlines us–jp and uk–fr (`xx` is in none); the
/// handshake limits are `limits`.
async fn fixture(limits: HandshakeLimits) -> Fixture {
    subscribe();
    let dir = TestPki::generate(&["us", "jp", "uk", "fr", "xx"]);
    let mut config: ServerConfig = dir.server_config(&[("us", "jp"), ("uk", "fr")]);
    config.metrics = Some("127.0.0.1:0".parse().unwrap());
    config.handshake = limits;
    let server = Server::spawn(config).await.unwrap();
    Fixture { dir, server }
}

impl Fixture {
    /// A client endpoint presenting `cert_dir/<name>.pem` and trusting this relay's CA.
    fn endpoint(&self, cert_dir: &Path, name: &str) -> quinn::Endpoint {
        let addr = self.server.local_addr();
        let ca = tls::load_certs(&self.dir.path().join("ca.pem")).unwrap();
        let creds = Credentials::load(
            &cert_dir.join(format!("{name}.pem")),
            &cert_dir.join(format!("{name}.key")),
        )
        .unwrap();
        quic::client(
            addr,
            tls::client_config(&ca, creds, Timeouts::default()).unwrap(),
        )
        .unwrap()
    }

    /// Completes TLS on `endpoint` and returns the connection, which never says hello.
    async fn silent(&self, endpoint: &quinn::Endpoint) -> Result<quinn::Connection, String> {
        let connecting = endpoint
            .connect(self.server.local_addr(), "localhost")
            .map_err(|e| e.to_string())?;
        match tokio::time::timeout(WAIT, connecting).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("handshake timed out".into()),
        }
    }

    /// A wire-speaking node, retried (refusals are expected while limits are hit) until it
    /// connects; panics after [`WAIT`].
    async fn connect_retrying(&self, name: &str) -> (TestNode, usize) {
        let (addr, dir) = (self.server.local_addr(), self.dir.path());
        let give_up = tokio::time::Instant::now() + WAIT;
        for attempt in 1.. {
            assert!(
                tokio::time::Instant::now() < give_up,
                "{name} did not get through in {WAIT:?} ({attempt} attempts)"
            );
            match tokio::time::timeout(WAIT, TestNode::connect(addr, dir, dir, name, None)).await {
                Ok(Ok(node)) => return (node, attempt),
                // A node backs off before reconnecting, as a real one does.
                _ => tokio::time::sleep(POLL).await,
            }
        }
        unreachable!("the loop returns or panics")
    }

    async fn metrics(&self) -> String {
        http_get(self.server.metrics_addr().unwrap(), "/metrics").await
    }

    /// The value of the sample `name` (with its labels) in the relay's metrics.
    async fn sample(&self, name: &str) -> u64 {
        let text = self.metrics().await;
        value(&text, name).unwrap_or_else(|| panic!("no sample {name} in\n{text}"))
    }

    async fn handshakes(&self, outcome: &str) -> u64 {
        self.sample(&format!(
            "hotline_relay_handshakes_total{{outcome=\"{outcome}\"}}"
        ))
        .await
    }

    /// Polls the metrics until `done` holds of them; panics with them after [`WAIT`].
    async fn wait_for_metrics(&self, what: &str, mut done: impl FnMut(&str) -> bool) -> String {
        let give_up = tokio::time::Instant::now() + WAIT;
        loop {
            let text = self.metrics().await;
            if done(&text) {
                return text;
            }
            assert!(
                tokio::time::Instant::now() < give_up,
                "waited {WAIT:?} for {what}:\n{text}"
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

fn value(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

fn outcome(text: &str, outcome: &str) -> u64 {
    value(
        text,
        &format!("hotline_relay_handshakes_total{{outcome=\"{outcome}\"}}"),
    )
    .unwrap()
}

fn in_progress(text: &str) -> u64 {
    value(text, "hotline_relay_handshakes_in_progress").unwrap()
}

/// us sends jp an envelope and jp receives it.
async fn envelope_gets_through(us: &mut TestNode, jp: &mut TestNode) {
    let sent = envelope("us", "jp", R, 1);
    us.send_lane(R, &sent).await;
    let (_, bytes, _) = jp.next_envelope().await;
    assert_eq!(&bytes[..], &sent[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_storm_is_refused_and_a_legitimate_node_still_gets_through() {
    const ATTEMPTS: usize = 200;
    let fx = Arc::new(
        fixture(HandshakeLimits {
            // One token a second: every attempt after the first in a burst is asked to Retry.
            unvalidated_per_second: 1,
            max_handshakes: 8,
            // All attempts come from 127.0.0.1, legitimate ones too: not the limit under test.
            max_per_address: 10_000,
            max_per_identity: 2,
            hello_timeout: Duration::from_secs(2),
        })
        .await,
    );
    let other = TestPki::generate(&["fr"]);
    // Attackers: a stolen `uk` key that never says hello, `xx` (valid, in no hotline) and a
    // `fr` certificate from another CA (TLS fails). One endpoint each, many connections.
    let attackers = [
        fx.endpoint(fx.dir.path(), "uk"),
        fx.endpoint(fx.dir.path(), "xx"),
        fx.endpoint(other.path(), "fr"),
    ];
    let finished = Arc::new(AtomicUsize::new(0));
    let connected = Arc::new(AtomicUsize::new(0));
    let mut storm = JoinSet::new();
    for i in 0..ATTEMPTS {
        let (fx, endpoint) = (fx.clone(), attackers[i % attackers.len()].clone());
        let (finished, connected) = (finished.clone(), connected.clone());
        storm.spawn(async move {
            if let Ok(conn) = fx.silent(&endpoint).await {
                connected.fetch_add(1, Ordering::Relaxed);
                // Hold the connection, silent, until the relay closes it.
                let _ = tokio::time::timeout(WAIT, conn.closed()).await;
            }
            finished.fetch_add(1, Ordering::Relaxed);
        });
    }

    // During the storm, the real nodes reconnect until they get in, and talk.
    let (mut us, us_attempts) = fx.connect_retrying("us").await;
    let (mut jp, jp_attempts) = fx.connect_retrying("jp").await;
    let during = finished.load(Ordering::Relaxed);
    envelope_gets_through(&mut us, &mut jp).await;
    eprintln!(
        "legitimate nodes in after {us_attempts} + {jp_attempts} attempts, \
         {during}/{ATTEMPTS} storm attempts finished by then"
    );

    tokio::time::timeout(WAIT * 2, async {
        while storm.join_next().await.is_some() {}
    })
    .await
    .expect("every storm attempt ends");
    let text = fx
        .wait_for_metrics("no handshake in progress", |m| in_progress(m) == 0)
        .await;
    eprintln!(
        "storm: {ATTEMPTS} attempts, {} completed TLS client-side; relay outcomes: {}",
        connected.load(Ordering::Relaxed),
        text.lines()
            .filter(|l| l.starts_with("hotline_relay_handshakes_total"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    assert!(outcome(&text, "retry") >= 1, "no Retry under load:\n{text}");
    assert!(
        outcome(&text, "refused_cap") >= 1,
        "the handshake cap was never hit:\n{text}"
    );
    assert!(
        outcome(&text, "refused_per_identity") + outcome(&text, "hello_timeout") >= 1,
        "the silent uk connections were neither refused nor timed out:\n{text}"
    );
    assert!(outcome(&text, "accepted") >= 2, "{text}");
    let refused = outcome(&text, "refused_cap") + outcome(&text, "refused_per_identity");
    let decided = refused + outcome(&text, "hello_timeout") + outcome(&text, "failed");
    assert!(
        decided >= ATTEMPTS as u64,
        "every attack attempt that was not retried ends refused, timed out or failed:\n{text}"
    );

    // The relay still serves the nodes that got in.
    let sent = envelope("us", "jp", R, 2);
    us.send_lane(R, &sent).await;
    let (_, bytes, _) = jp.next_envelope().await;
    assert_eq!(&bytes[..], &sent[..]);
}

#[tokio::test]
async fn connection_without_hello_is_closed_at_the_hello_deadline() {
    let fx = fixture(HandshakeLimits {
        hello_timeout: Duration::from_secs(1),
        ..HandshakeLimits::default()
    })
    .await;
    let endpoint = fx.endpoint(fx.dir.path(), "uk");
    let conn = fx.silent(&endpoint).await.unwrap();
    let error = tokio::time::timeout(WAIT, conn.closed())
        .await
        .expect("the relay closes a connection that never says hello");
    assert_eq!(
        CloseReason::of(&error),
        Some(CloseReason::ProtocolViolation),
        "{error}"
    );
    let text = fx
        .wait_for_metrics("the timeout counted", |m| outcome(m, "hello_timeout") == 1)
        .await;
    assert_eq!(in_progress(&text), 0, "{text}");
    assert_eq!(outcome(&text, "accepted"), 0, "{text}");
}

#[tokio::test]
async fn pending_connections_are_capped_per_identity_and_per_address() {
    let fx = fixture(HandshakeLimits {
        max_per_address: 3,
        max_per_identity: 2,
        // Longer than any wait here: no connection times out during the test.
        hello_timeout: WAIT * 4,
        ..HandshakeLimits::default()
    })
    .await;
    let uk = fx.endpoint(fx.dir.path(), "uk");
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(fx.silent(&uk).await.unwrap());
    }
    // One of the three uk connections (whichever TLS finished last) is closed.
    fx.wait_for_metrics("a per-identity refusal", |m| {
        outcome(m, "refused_per_identity") == 1
    })
    .await;
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            let closed: Vec<_> = silent.iter().filter_map(|c| c.close_reason()).collect();
            if !closed.is_empty() {
                return closed;
            }
            tokio::time::sleep(POLL).await;
        }
    })
    .await
    .expect("one uk connection is closed");
    let reasons: Vec<_> = closed.iter().map(CloseReason::of).collect();
    assert_eq!(reasons, [Some(CloseReason::TooManyPending)], "{closed:?}");

    // Two uk pending, plus one fr: the address is at its limit, so jp is refused outright.
    silent.push(fx.silent(&fx.endpoint(fx.dir.path(), "fr")).await.unwrap());
    let jp = fx.endpoint(fx.dir.path(), "jp");
    assert!(fx.silent(&jp).await.is_err(), "a fourth attempt got in");
    assert_eq!(fx.handshakes("refused_per_address").await, 1);
    assert_eq!(
        fx.sample("hotline_relay_handshakes_in_progress").await,
        3,
        "two uk and one fr wait for hello"
    );

    // Once the silent ones go, real nodes get in.
    for conn in &silent {
        conn.close(0u32.into(), b"bye");
    }
    fx.wait_for_metrics("the slots released", |m| in_progress(m) == 0)
        .await;
    let (mut us, _) = fx.connect_retrying("us").await;
    let (mut jp, _) = fx.connect_retrying("jp").await;
    envelope_gets_through(&mut us, &mut jp).await;
    assert_eq!(fx.handshakes("accepted").await, 2);
}

#[tokio::test]
async fn garbage_datagrams_start_no_handshake() {
    const DATAGRAMS: usize = 1_000;
    let fx = fixture(HandshakeLimits::default()).await;
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let relay: SocketAddr = fx.server.local_addr();
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        // xorshift64: deterministic noise.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for i in 0..DATAGRAMS {
        let len = 1 + usize::try_from(next() % 1400).unwrap();
        let mut datagram: Vec<u8> = (0..len).map(|_| next().to_le_bytes()[0]).collect();
        if i % 2 == 0 {
            // Shaped like a QUIC v1 Initial (long header, 8-byte connection ids, padded), so it
            // reaches the Initial path and fails there.
            datagram.resize(1200, 0);
            datagram[0] = 0xc0 | (datagram[0] & 0x0f);
            datagram[1..5].copy_from_slice(&1u32.to_be_bytes());
            datagram[5] = 8;
            datagram[14] = 8;
        }
        socket.send_to(&datagram, relay).await.unwrap();
    }

    let (mut us, _) = fx.connect_retrying("us").await;
    let (mut jp, _) = fx.connect_retrying("jp").await;
    envelope_gets_through(&mut us, &mut jp).await;
    let text = fx
        .wait_for_metrics("both nodes accepted", |m| outcome(m, "accepted") == 2)
        .await;
    // Forged Initials that parse are dropped in the accept loop (`invalid`), before a task:
    // none reached a connection task, which would have ended `failed` or `hello_timeout`.
    eprintln!(
        "{DATAGRAMS} garbage datagrams: {} parsed as an Initial and were dropped as invalid",
        outcome(&text, "invalid")
    );
    for other in [
        "retry",
        "refused_cap",
        "refused_per_address",
        "refused_per_identity",
        "hello_timeout",
        "failed",
    ] {
        assert_eq!(outcome(&text, other), 0, "{other}:\n{text}");
    }
    assert_eq!(
        in_progress(&text),
        0,
        "a garbage datagram started a handshake:\n{text}"
    );
}
