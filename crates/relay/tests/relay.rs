//! An in-process relay on 127.0.0.1:0 and raw quinn nodes speaking the wire protocol.
//!
//! No timing assertions: every wait has a generous timeout that only turns a hang into a failure.

#![expect(
    clippy::unwrap_used,
    reason = "helpers outside #[test] functions fail the test loudly too"
)]

use std::time::Duration;

use hotline_net::quic::{self, Timeouts};
use hotline_net::tls::{self, Credentials};
use hotline_proto::Lane;
use hotline_proto::Precedence;
use hotline_proto::Seq;
use hotline_proto::wire::{
    Accepted, Frame, MAX_FRAME_LEN, PROTOCOL_VERSION, Presence, RefusalCode,
};
use hotline_relay::testing::*;
use hotline_relay::{CloseReason, Server, ServerConfig, Ttl};

struct Fixture {
    dir: TestPki,
    server: Server,
}

/// Endpoints `us`, `jp`, `uk`, `fr`, `xx`; hotlines us–jp and uk–fr (`xx` is in none).
async fn fixture() -> Fixture {
    fixture_with(|_| {}).await
}

async fn fixture_with(edit: impl FnOnce(&mut ServerConfig)) -> Fixture {
    subscribe();
    let dir = TestPki::generate(&["us", "jp", "uk", "fr", "xx"]);
    let mut config = dir.server_config(&[("us", "jp"), ("uk", "fr")]);
    config.metrics = Some("127.0.0.1:0".parse().unwrap());
    edit(&mut config);
    let server = Server::spawn(config).await.unwrap();
    Fixture { dir, server }
}

/// A raw node: control stream, four lane streams each way, every received frame in `rx`.
impl Fixture {
    async fn connect(&self, name: &str) -> TestNode {
        self.connect_stalling(name, None).await
    }

    /// A node that never reads the relay's stream for `stall`.
    async fn connect_stalling(&self, name: &str, stall: Option<Precedence>) -> TestNode {
        let (addr, dir) = (self.server.local_addr(), self.dir.path());
        TestNode::connect(addr, dir, dir, name, stall)
            .await
            .unwrap()
    }
}

fn app_close_code(e: &quinn::ConnectionError) -> Option<CloseReason> {
    match e {
        quinn::ConnectionError::ApplicationClosed(close) => {
            CloseReason::from_code(close.error_code)
        }
        _ => None,
    }
}

const R: Precedence = Precedence::Routine;
const F: Precedence = Precedence::Flash;

#[tokio::test]
async fn certificate_from_another_ca_is_refused() {
    let fx = fixture().await;
    let other = TestPki::generate(&["us"]);
    // Trusts the real CA (so the relay is accepted) but presents a `us` from another CA.
    let result = tokio::time::timeout(
        WAIT,
        TestNode::connect(
            fx.server.local_addr(),
            fx.dir.path(),
            other.path(),
            "us",
            None,
        ),
    )
    .await
    .expect("the refused handshake should end, not hang");
    assert!(result.is_err(), "a foreign certificate was accepted");
}

#[tokio::test]
async fn endpoint_in_no_hotline_is_closed_with_a_reason() {
    let fx = fixture().await;
    let addr = fx.server.local_addr();
    let ca = tls::load_certs(&fx.dir.path().join("ca.pem")).unwrap();
    let creds =
        Credentials::load(&fx.dir.path().join("xx.pem"), &fx.dir.path().join("xx.key")).unwrap();
    let endpoint = quic::client(
        addr,
        tls::client_config(&ca, creds, Timeouts::default()).unwrap(),
    )
    .unwrap();
    let error = match endpoint.connect(addr, "localhost").unwrap().await {
        Ok(conn) => tokio::time::timeout(WAIT, conn.closed()).await.unwrap(),
        Err(e) => e,
    };
    assert_eq!(
        app_close_code(&error),
        Some(CloseReason::NotConfigured),
        "{error}"
    );
}

#[tokio::test]
async fn envelope_queued_for_an_offline_partner_is_forwarded_when_it_connects() {
    let fx = fixture().await;
    let mut us = fx.connect("us").await;
    let sent = envelope("us", "jp", R, 1);
    us.send_lane(R, &sent).await;
    assert_eq!(
        us.next_reply().await,
        Frame::Accepted(Accepted {
            id: message_id("us", R, 1),
            durable: true
        })
    );

    let mut jp = fx.connect("jp").await;
    let (stream, bytes, _) = jp.next_envelope().await;
    assert_eq!(stream, Lane::Precedence(R));
    assert_eq!(&bytes[..], &sent[..], "forwarded byte for byte");
    // us learns that jp came online.
    us.recv_where(|f| {
        *f == Frame::Presence(Presence {
            endpoint: id("jp"),
            online: true,
        })
    })
    .await;
}

#[tokio::test]
async fn wrong_sender_and_unpaired_recipient_are_refused() {
    let fx = fixture().await;
    let mut us = fx.connect("us").await;
    us.send_lane(R, &envelope("jp", "us", R, 1)).await;
    let Frame::Refused(r) = us.next_reply().await else {
        panic!("expected a refusal")
    };
    assert_eq!(r.code, RefusalCode::SenderMismatch);
    assert_eq!(r.id, Some(message_id("jp", R, 1)));

    us.send_lane(R, &envelope("us", "uk", R, 1)).await;
    let Frame::Refused(r) = us.next_reply().await else {
        panic!("expected a refusal")
    };
    assert_eq!(r.code, RefusalCode::NotPaired);

    // A malformed frame is refused too, and the connection stays usable.
    let garbage = vec![0, 0, 0, 6, PROTOCOL_VERSION, 1, 0xFF, 0xFF, 0xFF, 0xFF];
    us.send_control(&garbage).await;
    let Frame::Refused(r) = us.next_reply().await else {
        panic!("expected a refusal")
    };
    assert_eq!(r.code, RefusalCode::Malformed);
    us.send_lane(R, &envelope("us", "jp", R, 1)).await;
    assert!(matches!(us.next_reply().await, Frame::Accepted(_)));

    // The refusals are counted in the metrics.
    let metrics = http_get(fx.server.metrics_addr().unwrap(), "/metrics").await;
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(
        metrics.contains("hotline_relay_refusals_total{code=\"sender_mismatch\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("hotline_relay_queued_frames{stream=\"routine\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("hotline_relay_connections 1"), "{metrics}");
    let missing = http_get(fx.server.metrics_addr().unwrap(), "/other").await;
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
}

#[tokio::test]
async fn envelope_on_another_lanes_stream_is_refused_and_counted() {
    let fx = fixture().await;
    let mut us = fx.connect("us").await;
    // Flash on the control stream, then on the routine stream: both refused, nothing queued.
    us.send_control(&envelope("us", "jp", F, 1)).await;
    us.send_lane(R, &envelope("us", "jp", F, 1)).await;
    let mut details = Vec::new();
    for _ in 0..2 {
        let Frame::Refused(r) = us.next_reply().await else {
            panic!("expected a refusal")
        };
        assert_eq!(r.code, RefusalCode::Malformed);
        assert_eq!(r.id, Some(message_id("us", F, 1)));
        details.push(r.detail);
    }
    // Two streams: the relay may read them in either order.
    details.sort();
    assert_eq!(
        details,
        [
            "envelope for lane flash arrived on stream control",
            "envelope for lane flash arrived on stream routine"
        ]
    );
    // On its own stream it is taken.
    us.send_lane(F, &envelope("us", "jp", F, 1)).await;
    assert!(matches!(us.next_reply().await, Frame::Accepted(_)));
    let metrics = http_get(fx.server.metrics_addr().unwrap(), "/metrics").await;
    for stream in ["control", "routine"] {
        assert!(
            metrics.contains(&format!(
                "hotline_relay_wrong_stream_frames_total{{stream=\"{stream}\"}} 1"
            )),
            "{metrics}"
        );
    }
    assert!(
        metrics.contains("hotline_relay_wrong_stream_frames_total{stream=\"flash\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("hotline_relay_queued_frames{stream=\"flash\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn delivered_receipt_removes_the_queued_envelope() {
    let fx = fixture().await;
    let mut us = fx.connect("us").await;
    us.send_lane(R, &envelope("us", "jp", R, 1)).await;
    assert!(matches!(us.next_reply().await, Frame::Accepted(_)));

    let mut jp = fx.connect("jp").await;
    let (_, _, e) = jp.next_envelope().await;
    assert_eq!(e.envelope.header.seq, Seq(1));
    let receipt = delivered("jp", "us", R, 1);
    jp.send_control(&receipt).await;
    let (stream, bytes, _) = us.recv_where(|f| matches!(f, Frame::Receipt(_))).await;
    assert_eq!(stream, Lane::Control);
    assert_eq!(&bytes[..], &receipt[..]);
    jp.conn.close(0u32.into(), b"bye");
    drop(jp);

    // A reconnecting jp gets only what is not yet delivered: seq 2, not seq 1 again.
    let mut jp = fx.connect("jp").await;
    us.send_lane(R, &envelope("us", "jp", R, 2)).await;
    let (_, _, e) = jp.next_envelope().await;
    assert_eq!(e.envelope.header.seq, Seq(2));
}

#[tokio::test]
async fn undelivered_envelopes_are_written_again_on_reconnection() {
    let fx = fixture().await;
    let mut us = fx.connect("us").await;
    let mut jp = fx.connect("jp").await;
    us.send_lane(R, &envelope("us", "jp", R, 1)).await;
    let (_, _, e) = jp.next_envelope().await;
    assert_eq!(e.envelope.header.seq, Seq(1));
    // No receipt: a new connection of jp replaces the old one and gets it again.
    let mut jp2 = fx.connect("jp").await;
    assert_eq!(
        app_close_code(&jp.closed_with().await),
        Some(CloseReason::IdentityConflict)
    );
    let (_, _, e) = jp2.next_envelope().await;
    assert_eq!(e.envelope.header.seq, Seq(1));
    // The displacement is counted as an identity conflict.
    let metrics = http_get(fx.server.metrics_addr().unwrap(), "/metrics").await;
    assert!(
        metrics.contains("hotline_relay_identity_conflicts_total{outcome=\"displaced\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("hotline_relay_identity_conflicts_total{outcome=\"refused\"} 0"),
        "{metrics}"
    );
}

#[tokio::test]
async fn escalated_envelope_moves_to_the_flash_stream() {
    let fx = fixture().await;
    let mut us = fx.connect("us").await;
    us.send_lane(R, &envelope("us", "jp", R, 1)).await;
    assert!(matches!(us.next_reply().await, Frame::Accepted(_)));
    let escalated = envelope_on("us", "jp", R, 1, F);
    us.send_lane(F, &escalated).await;
    assert!(matches!(us.next_reply().await, Frame::Accepted(_)));
    let mut jp = fx.connect("jp").await;
    let (stream, bytes, e) = jp.next_envelope().await;
    assert_eq!(stream, Lane::Precedence(F));
    assert_eq!(&bytes[..], &escalated[..]);
    assert_eq!(e.transport, F);
}

#[tokio::test]
async fn flash_gets_through_while_the_routine_lane_is_stuck() {
    let fx = fixture().await;
    let mut us = fx.connect("us").await;
    // jp never reads its routine stream, so the relay can write at most one flow-control
    // window of routine traffic; the rest stays queued in the relay.
    let mut jp = fx.connect_stalling("jp", Some(R)).await;
    let window = quic::LANE_WINDOW_BYTES as usize;
    let body = 200 * 1024;
    let count = (4 * window / body + 1) as u64;
    for seq in 1..=count {
        us.send_lane(R, &envelope_sized("us", "jp", R, seq, R, body))
            .await;
    }
    for _ in 1..=count {
        assert!(matches!(us.next_reply().await, Frame::Accepted(_)));
    }
    let flash = envelope("us", "jp", F, 1);
    us.send_lane(F, &flash).await;
    let (stream, bytes, _) = jp.next_envelope().await;
    assert_eq!(stream, Lane::Precedence(F));
    assert_eq!(&bytes[..], &flash[..]);
    // The stuck routine envelopes are still held by the relay (nothing was dropped).
    let metrics = http_get(fx.server.metrics_addr().unwrap(), "/metrics").await;
    assert!(
        metrics.contains(&format!(
            "hotline_relay_queued_frames{{stream=\"routine\"}} {count}"
        )),
        "{metrics}"
    );
}

#[tokio::test]
async fn expired_envelope_is_refused_to_its_sender_and_freed() {
    let fx = fixture_with(|c| {
        c.ttl = Ttl {
            routine: Some(Duration::from_secs(1)),
            ..Ttl::NEVER
        }
    })
    .await;
    let mut us = fx.connect("us").await;
    us.send_lane(R, &envelope("us", "jp", R, 1)).await;
    us.send_lane(F, &envelope("us", "jp", F, 1)).await;
    for _ in 0..2 {
        assert!(matches!(us.next_reply().await, Frame::Accepted(_)));
    }
    // jp never comes; after a second the routine one is freed and us is told.
    let Frame::Refused(r) = us.next_reply().await else {
        panic!("expected a refusal")
    };
    assert_eq!(r.code, RefusalCode::Expired);
    assert_eq!(r.id, Some(message_id("us", R, 1)));
    let metrics = http_get(fx.server.metrics_addr().unwrap(), "/metrics").await;
    assert!(
        metrics.contains("hotline_relay_refusals_total{code=\"expired\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("hotline_relay_queued_frames{stream=\"routine\"} 0"),
        "{metrics}"
    );
    // The flash one has no time-to-live and is still delivered.
    let mut jp = fx.connect("jp").await;
    let (stream, _, _) = jp.next_envelope().await;
    assert_eq!(stream, Lane::Precedence(F));
}

#[tokio::test]
async fn oversized_frame_closes_the_connection() {
    let fx = fixture().await;
    let mut us = fx.connect("us").await;
    let prefix = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes();
    us.send_lane(R, &prefix).await;
    assert_eq!(
        app_close_code(&us.closed_with().await),
        Some(CloseReason::FrameTooLarge)
    );
}

#[tokio::test]
async fn shutdown_closes_connections_with_a_reason() {
    let fx = fixture().await;
    let us = fx.connect("us").await;
    let Fixture { dir: _dir, server } = fx;
    tokio::time::timeout(WAIT, server.shutdown()).await.unwrap();
    assert_eq!(
        app_close_code(&us.closed_with().await),
        Some(CloseReason::Shutdown)
    );
}

/// The value of an unlabelled metric in a scrape.
fn metric(scrape: &str, name: &str) -> u64 {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {scrape}"))
}

#[tokio::test]
async fn a_backlog_past_the_memory_window_is_served_from_the_store() {
    let window = 1024 * 1024;
    let fx = fixture_with(|c| c.max_queued_bytes_in_memory = window).await;
    let mut us = fx.connect("us").await;
    // 12 envelopes of 200 KB for jp, offline: 2.4 MB, more than twice the window.
    let sent: Vec<Vec<u8>> = (1..=12)
        .map(|seq| hotline_proto::testing::envelope("us", "jp", R, seq, R, 200_000))
        .collect();
    for env in &sent {
        us.send_lane(R, env).await;
        assert!(matches!(us.next_reply().await, Frame::Accepted(_)));
    }
    let scrape = http_get(fx.server.metrics_addr().unwrap(), "/metrics").await;
    let in_memory = metric(&scrape, "hotline_relay_queued_in_memory_bytes");
    assert!(
        in_memory <= window + 200_100,
        "{in_memory} bytes in memory, window {window}"
    );
    assert_eq!(metric(&scrape, "hotline_relay_store_reads_total"), 0);

    // jp connects and gets all twelve, in order, byte for byte.
    let mut jp = fx.connect("jp").await;
    for env in &sent {
        let (_, bytes, _) = jp.next_envelope().await;
        assert_eq!(&bytes[..], &env[..]);
    }
    let scrape = http_get(fx.server.metrics_addr().unwrap(), "/metrics").await;
    assert!(
        metric(&scrape, "hotline_relay_store_reads_total") >= 6,
        "{scrape}"
    );
}

fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// A new data directory is 0700 with its store and reset key 0600; one left readable by others
/// (made by hand, or by an older relay) is made private at the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_dir_and_store_are_private_even_when_found_open() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TestPki::generate(&["us", "jp"]);
    let data = dir.path().join("data");
    let files = [data.join("relay.redb"), data.join("reset.key")];
    let server = Server::spawn(dir.server_config(&[("us", "jp")]))
        .await
        .unwrap();
    assert_eq!(mode(&data), 0o700);
    for file in &files {
        assert_eq!(mode(file), 0o600, "{}", file.display());
    }
    server.shutdown().await;

    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    for file in &files {
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    // `shutdown` returns once the store is closed, so the restart finds it unlocked.
    let server = Server::spawn(dir.server_config(&[("us", "jp")]))
        .await
        .unwrap();
    assert_eq!(mode(&data), 0o700);
    for file in &files {
        assert_eq!(mode(file), 0o600, "{}", file.display());
    }
    server.shutdown().await;
}
