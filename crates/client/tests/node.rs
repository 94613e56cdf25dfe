//! The node as a library: a relay and two nodes in this process on 127.0.0.1 port 0, driven
//! through the control protocol exactly as the CLI drives them.

#![expect(clippy::unwrap_used, reason = "a failed step is the test failing")]

use std::time::Duration;

use hotline_client::certs::DeadlineOverrides;
use hotline_client::control::{ControlClient, ControlError, Event, Request, WaitLevel};
use hotline_client::node::Node;
use hotline_client::testing::{Hotline, status, wait_link_up};
use hotline_proto::{MessageId, Precedence};
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
    let tag = c.request(Request::Inbox { follow: true }).await.unwrap();
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
