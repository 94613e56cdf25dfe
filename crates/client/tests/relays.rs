//! Several relays per node, all used at once: two relays and two nodes in this process on
//! 127.0.0.1 port 0. Each relay keeps its own store and knows nothing of the other; the nodes
//! offer every frame on every live relay and keep the first copy, so a message gets through
//! while either relay is down, and the operator sees it exactly once.
//!
//! No timing assertions: every wait has a generous bound that only turns a hang into a failure.

#![expect(clippy::unwrap_used, reason = "a failed step is the test failing")]

use std::time::Duration;

use hotline_client::certs::DeadlineOverrides;
use hotline_client::control::{ControlClient, Event, Request, StatusView, WaitLevel};
use hotline_client::node::Node;
use hotline_client::testing::{Hotline, status, wait_link_up};
use hotline_client::view;
use hotline_proto::Precedence;

/// Generous: these are liveness bounds, not timings.
const WITHIN: Duration = Duration::from_secs(30);

fn send(body: &str) -> Request {
    Request::Send {
        to: None,
        channel: None,
        precedence: Some(Precedence::Routine),
        body: body.into(),
        wait: Some(WaitLevel::Delivered),
        timeout_ms: Some(WITHIN.as_millis() as u64),
    }
}

/// Waits until `node`'s status satisfies `ok`; returns that status.
async fn wait_status(node: &Node, what: &str, ok: impl Fn(&StatusView) -> bool) -> StatusView {
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let s = status(node).await.unwrap();
        if ok(&s) {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}: {what} not reached: {s:#?}",
            node.endpoint()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn relays_up(s: &StatusView) -> Vec<bool> {
    s.relays.iter().map(|r| r.connected).collect()
}

/// Sends `bodies` from `sender`, each waiting for `delivered`.
async fn send_all(sender: &mut ControlClient, bodies: &[String]) {
    for body in bodies {
        let events = sender.call(send(body)).await.unwrap();
        assert!(
            events
                .iter()
                .any(|e| matches!(e, Event::Level { level, .. } if level == "delivered")),
            "{body}: {events:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_relays_messages_get_through_while_either_is_down_and_arrive_once() {
    let mut hotline = Hotline::start_relays(2, &DeadlineOverrides::new(), |_| {})
        .await
        .unwrap();
    let us = hotline.node("us").await.unwrap();
    let jp = hotline.node("jp").await.unwrap();
    for n in [&us, &jp] {
        wait_link_up(n, WITHIN).await.unwrap();
        wait_status(n, "both relays carrying link tests", |s| {
            s.link == "up" && s.relays.iter().all(|r| r.connected && r.carries_link_tests)
        })
        .await;
    }
    let mut sender = ControlClient::connect(us.control_socket()).await.unwrap();
    let batch = |name: &str| -> Vec<String> { (0..5).map(|i| format!("{name} {i}")).collect() };

    send_all(&mut sender, &batch("both relays")).await;
    hotline.stop_relay(0).await;
    for n in [&us, &jp] {
        let s = wait_status(n, "relay 1 seen down", |s| relays_up(s) == [false, true]).await;
        assert!(
            s.connected,
            "still connected through the other relay: {s:#?}"
        );
        // The hotline works through one relay of two: degraded, not down.
        let s = wait_status(n, "degraded with one relay of two", |s| {
            s.link == "degraded"
        })
        .await;
        assert!(s.relays[1].carries_link_tests, "{s:#?}");
    }
    send_all(&mut sender, &batch("second relay only")).await;

    // The first relay comes back with what it held (already delivered: discarded by jp).
    hotline.restart_relay(0).await.unwrap();
    for n in [&us, &jp] {
        wait_status(n, "relay 1 back and the link up", |s| {
            relays_up(s) == [true, true] && s.link == "up"
        })
        .await;
    }
    hotline.stop_relay(1).await;
    for n in [&us, &jp] {
        wait_status(n, "relay 2 seen down", |s| relays_up(s) == [true, false]).await;
    }
    send_all(&mut sender, &batch("first relay only")).await;

    // Every message once, in order, whichever relay carried it.
    let mut c = ControlClient::connect(jp.control_socket()).await.unwrap();
    let got: Vec<String> = c
        .call(Request::Inbox {
            follow: false,
            unacked: false,
            channel: None,
            updates: false,
        })
        .await
        .unwrap()
        .into_iter()
        .filter_map(|e| match e {
            Event::Message(m) => Some(m.body),
            _ => None,
        })
        .collect();
    let want: Vec<String> = ["both relays", "second relay only", "first relay only"]
        .iter()
        .flat_map(|b| batch(b))
        .collect();
    assert_eq!(got, want);

    // The status names each relay and its state; the copies the returning relay delivered
    // were discarded without an alarm, on either side.
    let s = status(&jp).await.unwrap();
    assert!(s.alarms.is_empty(), "{:#?}", s.alarms);
    let u = status(&us).await.unwrap();
    assert!(u.alarms.is_empty(), "{:#?}", u.alarms);
    assert_eq!(s.relays.len(), 2);
    let text = view::status_lines(&s).join("\n");
    assert!(
        text.contains("connected since") && text.contains("not connected since"),
        "{text}"
    );
    us.shutdown().await.unwrap();
    jp.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_relay_shows_what_it_holds_until_the_partner_has_it() {
    let hotline = Hotline::start_relays(2, &DeadlineOverrides::new(), |_| {})
        .await
        .unwrap();
    let us = hotline.node("us").await.unwrap();
    let jp = hotline.node("jp").await.unwrap();
    wait_link_up(&us, WITHIN).await.unwrap();
    wait_status(&us, "both relays connected", |s| {
        relays_up(s) == [true, true]
    })
    .await;
    // jp stops (us knows its key by now): both relays keep what us sends. That each holds
    // both shows every message is offered on every live relay, not just one. (Counting what
    // each relay forwards would not: a relay drops an envelope unforwarded when the partner's
    // receipt for it, through the other relay, reaches it first.)
    jp.shutdown().await.unwrap();
    let mut sender = ControlClient::connect(us.control_socket()).await.unwrap();
    for body in ["held 1", "held 2"] {
        let request = Request::Send {
            to: None,
            channel: None,
            precedence: Some(Precedence::Routine),
            body: body.into(),
            wait: Some(WaitLevel::Accepted),
            timeout_ms: Some(WITHIN.as_millis() as u64),
        };
        sender.call(request).await.unwrap();
    }
    wait_status(&us, "both relays hold both", |s| {
        s.relays.iter().all(|r| r.holds == 2)
    })
    .await;
    let text = view::status_lines(&status(&us).await.unwrap()).join("\n");
    assert!(text.contains("holds 2 of ours"), "{text}");
    let jp = hotline.node("jp").await.unwrap();
    wait_status(&us, "delivered: nothing held", |s| {
        s.relays.iter().all(|r| r.holds == 0)
    })
    .await;
    us.shutdown().await.unwrap();
    jp.shutdown().await.unwrap();
}
