//! The node as a library: a relay and two nodes in this process on 127.0.0.1 port 0, driven
//! through the control protocol exactly as the CLI drives them.

#![expect(clippy::unwrap_used, reason = "a failed step is the test failing")]

use std::time::Duration;

use hotline_client::certs::DeadlineOverrides;
use hotline_client::control::{ControlClient, ControlError, Event, Request, WaitLevel};
use hotline_client::node::Node;
use hotline_client::testing::{Hotline, metric, status, wait_link_up};
use hotline_client::view::identity_conflict_line;
use hotline_net::close::CloseReason;
use hotline_proto::{MessageId, Precedence};
use hotline_relay::IdentityLimits;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Generous: these are liveness bounds, not timings.
const WITHIN: Duration = Duration::from_secs(30);

async fn pair() -> (Hotline, Node, Node) {
    let hotline = Hotline::start(&DeadlineOverrides::new()).await.unwrap();
    let us = hotline.node("us").await.unwrap();
    let jp = hotline.node("jp").await.unwrap();
    for n in [&us, &jp] {
        wait_link_up(n, WITHIN).await.unwrap();
    }
    (hotline, us, jp)
}

fn send(precedence: Precedence, body: &str, wait: Option<WaitLevel>) -> Request {
    Request::Send {
        to: None,
        channel: None,
        precedence: Some(precedence),
        body: body.into(),
        wait,
        timeout_ms: Some(WITHIN.as_millis() as u64),
    }
}

/// Reads `inbox --follow` until `n` messages arrived; returns (id, body).
async fn inbox(node: &Node, n: usize) -> Vec<(String, String)> {
    let mut c = ControlClient::connect(node.control_socket()).await.unwrap();
    let tag = c
        .request(Request::Inbox {
            follow: true,
            unacked: false,
            channel: None,
            updates: false,
        })
        .await
        .unwrap();
    let mut events = c.events_for(tag);
    let mut out = Vec::new();
    while out.len() < n {
        match tokio::time::timeout(WITHIN, events.next()).await {
            Ok(Ok(Some(Event::Message(m)))) => out.push((m.id, m.body)),
            other => panic!("inbox of {} ended early: {other:?}", node.endpoint()),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_deliver_acknowledge_reports_every_level_once() {
    let (_hotline, us, jp) = pair().await;
    let mut sender = ControlClient::connect(us.control_socket()).await.unwrap();
    let tag = sender
        .request(send(
            Precedence::Flash,
            "confirm status",
            Some(WaitLevel::Acknowledged),
        ))
        .await
        .unwrap();

    let got = inbox(&jp, 1).await;
    assert_eq!(got[0].1, "confirm status");
    let id: MessageId = got[0].0.parse().unwrap();
    assert_eq!(id.precedence, Precedence::Flash);
    let mut receiver = ControlClient::connect(jp.control_socket()).await.unwrap();
    receiver
        .call(Request::Ack { id: id.clone() })
        .await
        .unwrap();

    let mut levels = Vec::new();
    let mut events = sender.events_for(tag);
    while let Some(e) = tokio::time::timeout(WITHIN, events.next())
        .await
        .unwrap()
        .unwrap()
    {
        match e {
            Event::Stored { id: stored, .. } => {
                assert_eq!(stored, id.to_string());
                levels.push("stored".to_string());
            }
            Event::Level { level, .. } => levels.push(level),
            other => panic!("unexpected {other:?}"),
        }
    }
    levels.sort();
    assert_eq!(levels, ["accepted", "acknowledged", "delivered", "stored"]);

    let jp_status = status(&jp).await.unwrap();
    assert!(jp_status.pending_acks.is_empty(), "{jp_status:?}");
    assert!(
        receiver.call(Request::Ack { id }).await.is_err(),
        "second ack refused"
    );
    us.shutdown().await.unwrap();
    jp.shutdown().await.unwrap();
}

/// With a settled history of one message, the engine forgets older delivered messages: `ack`
/// still works once (from the stored envelope), and `inbox` shows the acknowledgement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_engine_forgot_is_acknowledged_from_the_store() {
    let hotline = Hotline::start(&DeadlineOverrides::new()).await.unwrap();
    let us = hotline.node("us").await.unwrap();
    let mut cfg = hotline.node_config("jp").unwrap();
    cfg.engine.set_settled_history(1).unwrap();
    let jp = Node::spawn(cfg).await.unwrap();
    for n in [&us, &jp] {
        wait_link_up(n, WITHIN).await.unwrap();
    }
    let mut sender = ControlClient::connect(us.control_socket()).await.unwrap();
    for body in ["one", "two", "three"] {
        sender
            .call(send(Precedence::Routine, body, Some(WaitLevel::Delivered)))
            .await
            .unwrap();
    }
    let got = inbox(&jp, 3).await;
    assert_eq!(got[0].1, "one");
    let first: MessageId = got[0].0.parse().unwrap();
    let mut receiver = ControlClient::connect(jp.control_socket()).await.unwrap();
    receiver
        .call(Request::Ack { id: first.clone() })
        .await
        .unwrap();
    let again = receiver.call(Request::Ack { id: first.clone() }).await;
    assert!(
        again
            .unwrap_err()
            .to_string()
            .contains("already acknowledged"),
        "second ack refused"
    );
    let listed = receiver
        .call(Request::Inbox {
            follow: false,
            unacked: false,
            channel: None,
            updates: false,
        })
        .await
        .unwrap();
    let lines: Vec<_> = listed
        .into_iter()
        .filter_map(|e| match e {
            Event::Message(m) => Some(m),
            _ => None,
        })
        .collect();
    assert_eq!(
        lines.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(),
        ["one", "two", "three"]
    );
    assert!(lines[0].acknowledged.is_some(), "{:?}", lines[0]);
    assert!(lines[1].acknowledged.is_none());
    us.shutdown().await.unwrap();
    jp.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_keeps_its_inbox_and_receives_what_waited() {
    let (hotline, us, jp) = pair().await;
    let mut sender = ControlClient::connect(us.control_socket()).await.unwrap();
    sender
        .call(send(
            Precedence::Routine,
            "before",
            Some(WaitLevel::Delivered),
        ))
        .await
        .unwrap();
    jp.shutdown().await.unwrap();

    // Stored in our outbox and accepted by the relay while the partner is away.
    sender
        .call(send(
            Precedence::Priority,
            "while away",
            Some(WaitLevel::Accepted),
        ))
        .await
        .unwrap();

    let jp = hotline.node("jp").await.unwrap();
    let got = inbox(&jp, 2).await;
    let bodies: Vec<&str> = got.iter().map(|(_, b)| b.as_str()).collect();
    assert_eq!(bodies, ["before", "while away"], "once each, in order");
    assert_eq!(status(&jp).await.unwrap().inbox, 2);

    // The sender's restart keeps the ack levels already reached: nothing is resent as new.
    us.shutdown().await.unwrap();
    let us = hotline.node("us").await.unwrap();
    wait_link_up(&us, WITHIN).await.unwrap();
    let s = status(&us).await.unwrap();
    assert!(s.lanes.values().all(|l| l.undelivered == 0), "{s:?}");
    assert_eq!(status(&jp).await.unwrap().inbox, 2);
    us.shutdown().await.unwrap();
    jp.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_node_on_the_same_store_is_refused() {
    let hotline = Hotline::start(&DeadlineOverrides::new()).await.unwrap();
    let us = hotline.node("us").await.unwrap();
    let err = hotline.node("us").await.unwrap_err();
    assert!(err.to_string().contains("already running"), "{err:#}");
    assert!(!us.is_finished(), "the first node keeps running");
    us.shutdown().await.unwrap();
}

/// The data directory is 0700 and the store 0600, also when a previous run (or an operator)
/// left them readable by others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_dir_and_store_are_private_even_when_found_open() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let hotline = Hotline::start(&DeadlineOverrides::new()).await.unwrap();
    let data = hotline.node_config("us").unwrap().data_dir;
    let store = data.join("node.redb");
    let us = hotline.node("us").await.unwrap();
    assert_eq!((mode(&data), mode(&store)), (0o700, 0o600));
    us.shutdown().await.unwrap();

    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o644)).unwrap();
    let us = hotline.node("us").await.unwrap();
    assert_eq!((mode(&data), mode(&store)), (0o700, 0o600));
    us.shutdown().await.unwrap();
}

/// Raw lines on the control socket: typed values are checked where they enter, and every
/// refusal comes back on the request's own tag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_protocol_refuses_bad_requests_on_their_tag() {
    let (_hotline, us, _jp) = pair().await;
    let stream = tokio::net::UnixStream::connect(us.control_socket())
        .await
        .unwrap();
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    let mut ask = async |line: &str| -> serde_json::Value {
        w.write_all(format!("{line}\n").as_bytes()).await.unwrap();
        let answer = tokio::time::timeout(WITHIN, lines.next_line())
            .await
            .unwrap();
        serde_json::from_str(&answer.unwrap().unwrap()).unwrap()
    };

    let a = ask(r#"{"tag":7,"cmd":"send","precedence":"urgent","body":"x"}"#).await;
    assert_eq!(
        (a["tag"].as_u64(), a["ok"].as_bool()),
        (Some(7), Some(false)),
        "{a}"
    );
    assert!(a["error"].as_str().unwrap().contains("urgent"), "{a}");

    let a = ask(r#"{"tag":8,"cmd":"send","to":"fr","body":"x"}"#).await;
    assert_eq!(a["tag"].as_u64(), Some(8), "{a}");
    assert!(
        a["error"]
            .as_str()
            .unwrap()
            .contains("fr is not a partner of us"),
        "{a}"
    );

    let a = ask(r#"{"tag":9,"cmd":"ack","id":"jp:main:flash:99"}"#).await;
    assert!(
        a["error"]
            .as_str()
            .unwrap()
            .contains("no delivered message"),
        "{a}"
    );

    let a = ask(r#"{"tag":10,"cmd":"ack","id":"not-an-id"}"#).await;
    assert_eq!(a["tag"].as_u64(), Some(10), "{a}");

    let a = ask("not json").await;
    assert_eq!(
        (a["tag"].as_u64(), a["ok"].as_bool()),
        (Some(0), Some(false)),
        "{a}"
    );

    let big = "x".repeat(300 * 1024);
    let mut c = ControlClient::connect(us.control_socket()).await.unwrap();
    match c.call(send(Precedence::Routine, &big, None)).await {
        Err(ControlError::Refused(e)) => assert!(e.contains("exceeds"), "{e}"),
        other => panic!("oversized body accepted: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_says_so() {
    let hotline = Hotline::start(&DeadlineOverrides::new()).await.unwrap();
    let us = hotline.node("us").await.unwrap();
    let socket = us.control_socket().to_owned();
    us.shutdown().await.unwrap();
    match ControlClient::connect(&socket).await {
        Err(e @ ControlError::NotRunning { .. }) => {
            assert!(e.to_string().contains("node is not running"), "{e}");
        }
        other => panic!("expected NotRunning, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_request_line_is_refused_and_the_node_keeps_serving() {
    let hotline = Hotline::start(&DeadlineOverrides::new()).await.unwrap();
    let us = hotline.node("us").await.unwrap();
    let stream = tokio::net::UnixStream::connect(us.control_socket())
        .await
        .unwrap();
    let (r, mut w) = stream.into_split();
    // 4 MiB without a newline: far past any valid request.
    let junk = vec![b'x'; 4 * 1024 * 1024];
    let writer = tokio::spawn(async move {
        // The node closes the connection part-way; a write error then is expected.
        let _ = w.write_all(&junk).await;
    });
    let mut lines = BufReader::new(r).lines();
    let answer = tokio::time::timeout(WITHIN, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let a: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(a["ok"].as_bool(), Some(false), "{a}");
    assert!(a["error"].as_str().unwrap().contains("longer than"), "{a}");
    writer.await.unwrap();
    assert_eq!(status(&us).await.unwrap().endpoint, "us");
    us.shutdown().await.unwrap();
}

/// Reads the relay's identity-conflict counters: (displaced, refused).
async fn conflicts(hotline: &Hotline) -> (f64, f64) {
    let body = tokio::time::timeout(WITHIN, hotline.relay_metrics())
        .await
        .unwrap()
        .unwrap();
    let get = |outcome: &str| {
        let name = format!("hotline_relay_identity_conflicts_total{{outcome=\"{outcome}\"}}");
        metric(&body, &name).unwrap_or_else(|| panic!("no {name} in {body}"))
    };
    (get("displaced"), get("refused"))
}

/// Polls `check` until it returns `Some`, for at most `IDENTITY_WITHIN` (a liveness bound).
async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + IDENTITY_WITHIN;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Generous: the refused node retries every few seconds, and the machine may be loaded.
const IDENTITY_WITHIN: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_with_one_identity_stop_flapping_and_the_refused_one_says_why() {
    let limits = IdentityLimits {
        flips: 3,
        // Longer than the test can run: once the back-off starts, no timing can end it.
        window: Duration::from_secs(3600),
        backoff: Duration::from_secs(3600),
        max_backoff: Duration::from_secs(3600),
    };
    let hotline = Hotline::start_with(&DeadlineOverrides::new(), |c| {
        c.metrics = Some("127.0.0.1:0".parse().unwrap());
        c.identity = limits;
    })
    .await
    .unwrap();
    let first = hotline.node("us").await.unwrap();
    let jp = hotline.node("jp").await.unwrap();
    for n in [&first, &jp] {
        wait_link_up(n, WITHIN).await.unwrap();
    }
    assert_eq!(conflicts(&hotline).await, (0.0, 0.0));

    // A copy of `us`'s configuration on another store: the same certificate and key.
    let mut copy = hotline.node_config("us").unwrap();
    copy.data_dir = hotline.dir().join("us-copy-data");
    let second = Node::spawn(copy).await.unwrap();

    // The two displace each other three times, then the relay refuses the next newcomer.
    let (displaced, _) = wait_for("a newcomer refused", || async {
        let c = conflicts(&hotline).await;
        (c.1 >= 1.0).then_some(c)
    })
    .await;
    assert_eq!(
        displaced,
        f64::from(limits.flips),
        "displacements before refusal"
    );

    // The refused node keeps retrying and is refused each time: no more displacements.
    let refused_line = identity_conflict_line(CloseReason::IdentityInUse);
    let (refused, kept) = wait_for("the refused node to report the conflict", || async {
        for (a, b) in [(&first, &second), (&second, &first)] {
            if status(a).await.unwrap().last_error.as_deref() == Some(refused_line.as_str()) {
                return Some((a, b));
            }
        }
        None
    })
    .await;
    wait_for("two more refusals", || async {
        let c = conflicts(&hotline).await;
        (c.1 >= 3.0).then_some(())
    })
    .await;
    let (displaced_after, _) = conflicts(&hotline).await;
    assert_eq!(displaced_after, displaced, "the relay stopped flapping");
    let body = hotline.relay_metrics().await.unwrap();
    // One connection of `us` (the kept one) and jp's.
    assert_eq!(metric(&body, "hotline_relay_connections"), Some(2.0));
    // The kept node is connected and reports no error.
    let kept_status = status(kept).await.unwrap();
    assert_eq!(kept_status.last_error, None, "{kept_status:?}");

    // Both were displaced at least once, so both raised the alarm in their audit log.
    for node in [refused, kept] {
        let mut c = ControlClient::connect(node.control_socket()).await.unwrap();
        let events = c.call(Request::Audit { export: true }).await.unwrap();
        let log = format!("{events:?}");
        assert!(
            log.contains("identity_conflict") && log.contains("another node is using our identity"),
            "{log}"
        );
    }
    for n in [first, second, jp] {
        n.shutdown().await.unwrap();
    }
}
