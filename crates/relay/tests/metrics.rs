//! The relay's HTTP listener on an in-process relay: the Prometheus text format of `/metrics`,
//! the per-hotline series and latency histograms after traffic, `/healthz`, `/readyz` and the
//! `/status` snapshot.
//!
//! No timing assertions: every wait has a generous timeout that only turns a hang into a failure.

#![expect(
    clippy::unwrap_used,
    reason = "helpers outside #[test] functions fail the test loudly too"
)]

use std::collections::BTreeSet;

use hotline_proto::Precedence;
use hotline_proto::wire::{Frame, RefusalCode};
use hotline_relay::status::Status;
use hotline_relay::testing::*;
use hotline_relay::{Server, ServerConfig};

const R: Precedence = Precedence::Routine;
const F: Precedence = Precedence::Flash;

struct Fixture {
    dir: TestPki,
    server: Server,
}

async fn fixture_with(edit: impl FnOnce(&mut ServerConfig)) -> Fixture {
    subscribe();
    let dir = TestPki::generate(&["us", "jp", "uk", "fr"]);
    let mut config = dir.server_config(&[("us", "jp"), ("uk", "fr")]);
    config.metrics = Some("127.0.0.1:0".parse().unwrap());
    edit(&mut config);
    let server = Server::spawn(config).await.unwrap();
    Fixture { dir, server }
}

impl Fixture {
    async fn connect(&self, name: &str) -> TestNode {
        let (addr, dir) = (self.server.local_addr(), self.dir.path());
        TestNode::connect(addr, dir, dir, name, None).await.unwrap()
    }

    /// `GET path`: status line and body.
    async fn get(&self, path: &str) -> (String, String) {
        let response = http_get(self.server.metrics_addr().unwrap(), path).await;
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        (head.lines().next().unwrap().to_owned(), body.to_owned())
    }

    /// `/metrics`, checked against the text format.
    async fn scrape(&self) -> String {
        let (status, body) = self.get("/metrics").await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        check_text_format(&body);
        body
    }
}

/// The OpenMetrics text format, as the Prometheus scraper reads it: `# HELP` and `# TYPE` for
/// every family before its samples, every sample line `name{label="value",…} value` with a
/// known family, and `# EOF` last.
fn check_text_format(text: &str) {
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.last(), Some(&"# EOF"), "{text}");
    let (mut helped, mut typed) = (BTreeSet::new(), BTreeSet::new());
    for line in &lines[..lines.len() - 1] {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap();
            assert!(is_name(name) && !help.is_empty(), "{line}");
            helped.insert(name.to_owned());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(is_name(name), "{line}");
            assert!(
                ["counter", "gauge", "histogram", "info", "unknown"].contains(&kind),
                "{line}"
            );
            typed.insert(name.to_owned());
        } else {
            assert!(!line.starts_with('#'), "unknown comment: {line}");
            let (series, value) = line.rsplit_once(' ').unwrap();
            assert!(
                value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
                "{line}"
            );
            let name = match series.split_once('{') {
                Some((name, labels)) => {
                    check_labels(labels.strip_suffix('}').unwrap(), line);
                    name
                }
                None => series,
            };
            assert!(is_name(name), "{line}");
            let family = ["_total", "_bucket", "_count", "_sum", "_created", "_info"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
                .unwrap_or(name);
            assert!(typed.contains(family), "no # TYPE before {line}");
            assert!(helped.contains(family), "no # HELP before {line}");
        }
    }
}

fn is_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `a="x",b="y"`: names, `=`, quoted values with `\"` and `\\` escapes.
fn check_labels(mut labels: &str, line: &str) {
    while !labels.is_empty() {
        let (name, rest) = labels.split_once("=\"").unwrap();
        assert!(is_name(name), "label {name:?} in {line}");
        let mut end = None;
        let mut escaped = false;
        for (i, c) in rest.char_indices() {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let end = end.unwrap_or_else(|| panic!("unterminated label value in {line}"));
        labels = &rest[end + 1..];
        labels = labels.strip_prefix(',').unwrap_or(labels);
    }
}

/// The value of the sample line `series` exactly.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
}

#[tokio::test]
async fn health_and_readiness() {
    let fx = fixture_with(|_| {}).await;
    assert_eq!(
        fx.get("/healthz").await,
        ("HTTP/1.1 200 OK".to_owned(), "ok\n".to_owned())
    );
    assert_eq!(
        fx.get("/readyz").await,
        ("HTTP/1.1 200 OK".to_owned(), "ready\n".to_owned())
    );
    assert_eq!(fx.server.ready(), Ok(()));
    assert_eq!(fx.get("/nope").await.0, "HTTP/1.1 404 Not Found");
}

#[tokio::test]
async fn traffic_shows_per_hotline_series_and_latency_histograms() {
    let fx = fixture_with(|_| {}).await;
    let metrics = fx.scrape().await;
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        sample(
            &metrics,
            &format!("hotline_relay_build_info{{version=\"{version}\"}}")
        ),
        Some(1.0),
        "{metrics}"
    );
    // Every configured hotline has its series from the start, at zero.
    for hotline in ["us:jp", "uk:fr"] {
        for p in Precedence::ALL {
            let series = format!(
                "hotline_relay_hotline_forwarded_envelopes_total{{hotline=\"{hotline}\",precedence=\"{p}\"}}"
            );
            assert_eq!(sample(&metrics, &series), Some(0.0), "{series}\n{metrics}");
        }
    }

    // us queues for an offline jp: the us:jp queue toward jp grows.
    let mut us = fx.connect("us").await;
    us.send_lane(R, &envelope("us", "jp", R, 1)).await;
    us.send_lane(F, &envelope("us", "jp", F, 1)).await;
    for _ in 0..2 {
        assert!(matches!(us.next_reply().await, Frame::Accepted(_)));
    }
    let metrics = fx.scrape().await;
    let queued = sample(
        &metrics,
        "hotline_relay_hotline_queued_bytes{hotline=\"us:jp\",to=\"jp\"}",
    );
    assert!(queued.is_some_and(|b| b > 0.0), "{metrics}");
    assert_eq!(
        sample(
            &metrics,
            "hotline_relay_hotline_queued_bytes{hotline=\"us:jp\",to=\"us\"}"
        ),
        Some(0.0),
        "{metrics}"
    );

    // jp connects and gets both: forwarded counts and latencies per precedence.
    let mut jp = fx.connect("jp").await;
    let mut lanes = BTreeSet::new();
    for _ in 0..2 {
        lanes.insert(jp.next_envelope().await.0.index());
    }
    assert_eq!(lanes.len(), 2);
    // Counted just after the write; wait for the scrape to see both.
    let mut metrics = fx.scrape().await;
    for _ in 0..300 {
        let forwarded = |p: &str| {
            sample(
                &metrics,
                &format!(
                    "hotline_relay_hotline_forwarded_envelopes_total{{hotline=\"us:jp\",precedence=\"{p}\"}}"
                ),
            )
        };
        if forwarded("routine") == Some(1.0) && forwarded("flash") == Some(1.0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        metrics = fx.scrape().await;
    }
    for p in ["routine", "flash"] {
        let forwarded = format!(
            "hotline_relay_hotline_forwarded_envelopes_total{{hotline=\"us:jp\",precedence=\"{p}\"}}"
        );
        assert_eq!(sample(&metrics, &forwarded), Some(1.0), "{metrics}");
        let count = format!("hotline_relay_forwarding_latency_seconds_count{{precedence=\"{p}\"}}");
        assert_eq!(sample(&metrics, &count), Some(1.0), "{metrics}");
        let inf = format!(
            "hotline_relay_forwarding_latency_seconds_bucket{{le=\"+Inf\",precedence=\"{p}\"}}"
        );
        assert_eq!(sample(&metrics, &inf), Some(1.0), "{metrics}");
        let sum = format!("hotline_relay_forwarding_latency_seconds_sum{{precedence=\"{p}\"}}");
        assert!(
            sample(&metrics, &sum).is_some_and(|s| s >= 0.0),
            "{metrics}"
        );
    }
    let idle = "hotline_relay_forwarding_latency_seconds_count{precedence=\"priority\"}";
    assert_eq!(sample(&metrics, idle), Some(0.0), "{metrics}");
    // The other hotline saw nothing.
    let other =
        "hotline_relay_hotline_forwarded_envelopes_total{hotline=\"uk:fr\",precedence=\"routine\"}";
    assert_eq!(sample(&metrics, other), Some(0.0), "{metrics}");
}

#[tokio::test]
async fn refused_envelopes_are_counted_per_hotline_and_precedence() {
    // Every envelope is over a one-byte bound.
    let fx = fixture_with(|c| c.max_queue_bytes_per_endpoint = 1).await;
    let mut us = fx.connect("us").await;
    us.send_lane(R, &envelope("us", "jp", R, 1)).await;
    let Frame::Refused(r) = us.next_reply().await else {
        panic!("expected a refusal")
    };
    assert_eq!(r.code, RefusalCode::Overloaded);
    // Not paired: counted overall only (its labels would come from the network).
    us.send_lane(R, &envelope("us", "uk", R, 1)).await;
    assert!(matches!(us.next_reply().await, Frame::Refused(_)));
    let metrics = fx.scrape().await;
    assert_eq!(
        sample(
            &metrics,
            "hotline_relay_hotline_refused_envelopes_total{hotline=\"us:jp\",precedence=\"routine\",code=\"overloaded\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    let refused_lines = metrics
        .lines()
        .filter(|l| l.starts_with("hotline_relay_hotline_refused_envelopes_total"))
        .count();
    assert_eq!(refused_lines, 1, "{metrics}");
}

#[tokio::test]
async fn status_lists_hotlines_connected_endpoints_and_the_store() {
    let fx = fixture_with(|_| {}).await;
    let mut us = fx.connect("us").await;
    let _jp = fx.connect("jp").await;
    // us's frame is seen before the status is asked for.
    us.send_lane(R, &envelope("us", "fr", R, 1)).await;
    assert!(matches!(us.next_reply().await, Frame::Refused(_)));

    let (status_line, body) = fx.get("/status").await;
    assert_eq!(status_line, "HTTP/1.1 200 OK");
    let status: Status = serde_json::from_str(&body).unwrap();
    assert_eq!(status.version, env!("CARGO_PKG_VERSION"));
    assert!(status.store_bytes > 0, "{status:?}");
    assert!(status.store_path.ends_with("relay.redb"), "{status:?}");
    let names: Vec<&str> = status.hotlines.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["us:jp", "uk:fr"]);
    let [us_status, jp_status] = &status.hotlines[0].endpoints;
    assert_eq!(
        (us_status.endpoint.as_str(), jp_status.endpoint.as_str()),
        ("us", "jp")
    );
    for e in [us_status, jp_status] {
        let c = e.connection.as_ref().unwrap_or_else(|| panic!("{e:?}"));
        assert!(c.remote.starts_with("127.0.0.1:"), "{c:?}");
        assert!(c.since_ms > 0 && c.since_ms <= status.at_ms, "{c:?}");
        let queues: Vec<&str> = e.queued.iter().map(|q| q.queue.as_str()).collect();
        assert_eq!(
            queues,
            ["control", "flash", "immediate", "priority", "routine"]
        );
    }
    let last = us_status.connection.as_ref().unwrap().last_frame_ms;
    assert!(last.is_some_and(|t| t <= status.at_ms), "{us_status:?}");
    for e in &status.hotlines[1].endpoints {
        assert_eq!(e.connection, None, "{e:?}");
    }
    // The library call gives the same picture.
    let direct = fx.server.status();
    assert_eq!(direct.hotlines.len(), 2);
    assert!(direct.hotlines[0].endpoints[1].connection.is_some());
    let text = direct.to_text();
    assert_eq!(text.lines().count(), 1 + 2 * 3, "{text}");
    assert!(text.contains("connected from 127.0.0.1:"), "{text}");
}

/// A reload's hotlines reach `/status` and the per-hotline series: an added hotline appears,
/// a removed one goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_updates_the_status_and_the_per_hotline_series() {
    let mut fx = fixture_with(|_| {}).await;
    let mut config = fx.dir.server_config(&[("us", "jp"), ("fr", "uk")]);
    config.metrics = Some("127.0.0.1:0".parse().unwrap());
    // Same hotlines, written the other way round: nothing changes.
    fx.server.reload(&config).unwrap();
    let mut config = fx.dir.server_config(&[("us", "uk")]);
    config.metrics = Some("127.0.0.1:0".parse().unwrap());
    fx.server.reload(&config).unwrap();
    let names: Vec<String> = fx
        .server
        .status()
        .hotlines
        .iter()
        .map(|h| h.name.clone())
        .collect();
    assert_eq!(names, ["us:uk"]);
    let text = fx.scrape().await;
    assert!(text.contains("hotline=\"us:uk\""), "{text}");
    assert!(!text.contains("hotline=\"us:jp\""), "{text}");
    assert!(!text.contains("hotline=\"uk:fr\""), "{text}");
}

/// Clients that connect and never finish a request hold at most 32 slots, each for at most
/// 5 s: beyond them a connection is closed unanswered, and once they time out the listener
/// answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clients_cannot_hold_the_metrics_listener() {
    let fx = fixture_with(|_| {}).await;
    let addr = fx.server.metrics_addr().unwrap();
    let mut idle = Vec::new();
    for _ in 0..32 {
        idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    // The kernel hands connections to `accept` in order: the idle ones hold every slot when
    // this one is accepted, well within their 5 s.
    let response = try_get(addr, "/healthz").await;
    assert!(!response.contains("200"), "answered while busy: {response}");
    // The idle ones time out (5 s); then requests are answered again.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if try_get(addr, "/healthz").await.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never answered again"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    drop(idle);
}

/// `GET path`, or what there is when the listener closes the connection (possibly nothing).
async fn try_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return String::new();
    };
    let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n");
    if s.write_all(request.as_bytes()).await.is_err() {
        return String::new();
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}
