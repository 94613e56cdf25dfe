//! Two real nodes talking through a hostile relay ([`hostile::HostileRelay`]): the relay holds
//! the real relay certificate, so the nodes trust its TLS, and then replays, reorders,
//! duplicates, drops, corrupts or forges what it forwards.
//!
//! Every test names its attack and checks the outcome the design promises despite it: both nodes
//! keep running; the honest messages (20 of mixed precedence each way) are delivered exactly
//! once, in order per lane and never ahead of a same-or-higher precedence message sent before
//! them; alarms appear where the attack is detectable, and none where it is indistinguishable
//! from a lossy but honest network; the link is not reported up on evidence a relay can fake.
//!
//! Timing never decides an outcome: the engine runs with short intervals so retransmission and
//! escalation happen within the test, and every wait is a generous bound on something that
//! must happen.

#![expect(clippy::unwrap_used, reason = "a failed step is the test failing")]

mod hostile;

use std::collections::BTreeSet;
use std::time::Duration;

use hostile::{Attack, Forgery, HostileRelay};
use hotline_client::certs::{self, DeadlineOverrides, InitRequest, RelaySpec};
use hotline_client::config::NodeConfig;
use hotline_client::control::{ControlClient, Event, InboxEntry, Request, StatusView};
use hotline_client::node::Node;
use hotline_client::testing::{status, wait_link_up};
use hotline_proto::engine::EngineConfig;
use hotline_proto::{EndpointId, Precedence};

/// Generous: these are liveness bounds, not timings.
const WITHIN: Duration = Duration::from_secs(30);
/// Honest messages each node sends.
const MESSAGES: usize = 20;
/// Link tests this often, so "silent for three intervals" happens within a test.
const LINK_TEST_INTERVAL: Duration = Duration::from_millis(300);

/// The precedence of message `i`: mixed, with lower lanes sent before higher ones and after.
fn precedence(i: usize) -> Precedence {
    use Precedence::*;
    [
        Routine, Flash, Priority, Routine, Immediate, Flash, Priority, Routine,
    ][i % 8]
}

fn body(from: &str, i: usize) -> String {
    format!("{from}-{i:02}")
}

/// A temporary PKI, the hostile relay and both nodes with their links up.
struct Fixture {
    relay: HostileRelay,
    us: Node,
    jp: Node,
    _dir: tempfile::TempDir,
}

impl Fixture {
    /// Short engine intervals: link tests every [`LINK_TEST_INTERVAL`], retransmission from
    /// 200 ms, and every `delivered` deadline 1.5 s, so a message the relay accepted and then
    /// lost is offered again (escalated) within the test.
    async fn start(seed: u64) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("hotline-hostile-")
            .tempdir()
            .unwrap();
        certs::init(
            dir.path(),
            &InitRequest {
                endpoints: vec!["us".into(), "jp".into()],
                pairs: vec![],
                // Replaced by the hostile relay's address below.
                relays: vec![RelaySpec::new("localhost", "127.0.0.1:9")],
                force: false,
                wipe_data: false,
                days: Default::default(),
                endpoint_keys: true,
            },
            &DeadlineOverrides::new(),
        )
        .unwrap();
        let relay = HostileRelay::spawn(dir.path(), (id("us"), id("jp")), seed).unwrap();
        let mut nodes = Vec::new();
        for name in ["us", "jp"] {
            let mut cfg = NodeConfig::load(&dir.path().join(format!("{name}.toml"))).unwrap();
            cfg.relays = vec![hotline_client::config::RelayAddress::at(
                relay.addr(),
                "localhost",
            )];
            tune(&mut cfg.engine);
            nodes.push(Node::spawn(cfg).await.unwrap());
        }
        let jp = nodes.pop().unwrap();
        let us = nodes.pop().unwrap();
        for n in [&us, &jp] {
            wait_link_up(n, WITHIN).await.unwrap();
        }
        Self {
            relay,
            us,
            jp,
            _dir: dir,
        }
    }

    /// Both nodes send [`MESSAGES`] to each other at once.
    async fn exchange(&self) {
        tokio::join!(send_all(&self.us), send_all(&self.jp));
    }

    /// Each node received the other's messages exactly once and in order, and each sender
    /// learnt that all of its messages were delivered.
    async fn check_exchange(&self) {
        check_delivery(&self.jp, "us").await;
        check_delivery(&self.us, "jp").await;
        for n in [&self.us, &self.jp] {
            wait_all_delivered(n).await;
        }
    }

    /// Neither node panicked or stopped; no message arrived twice after all.
    async fn check_alive(self) {
        for n in [&self.us, &self.jp] {
            assert!(!n.is_finished(), "{} stopped", n.endpoint());
            assert_eq!(status(n).await.unwrap().inbox, MESSAGES, "{}", n.endpoint());
        }
        self.us.shutdown().await.unwrap();
        self.jp.shutdown().await.unwrap();
    }
}

fn id(name: &str) -> EndpointId {
    EndpointId::new(name).unwrap()
}

fn tune(engine: &mut EngineConfig) {
    engine.set_link_test_interval(LINK_TEST_INTERVAL).unwrap();
    engine
        .set_retransmit(Duration::from_millis(200), Duration::from_secs(2))
        .unwrap();
    for p in Precedence::ALL {
        engine
            .set_delivered_deadline(p, Duration::from_millis(1500))
            .unwrap();
    }
}

/// Sends [`MESSAGES`] from `node`, one after the other (each stored before the next).
async fn send_all(node: &Node) {
    let from = node.endpoint().to_string();
    let mut c = ControlClient::connect(node.control_socket()).await.unwrap();
    for i in 0..MESSAGES {
        c.call(Request::Send {
            to: None,
            channel: None,
            precedence: Some(precedence(i)),
            body: body(&from, i),
            wait: None,
            timeout_ms: Some(WITHIN.as_millis() as u64),
        })
        .await
        .unwrap();
    }
}

/// Reads `inbox --follow` until `n` messages arrived.
async fn inbox(node: &Node, n: usize) -> Vec<InboxEntry> {
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
            Ok(Ok(Some(Event::Message(m)))) => out.push(m),
            other => panic!(
                "inbox of {} ended after {out:?}: {other:?}",
                node.endpoint()
            ),
        }
    }
    out
}

/// `receiver` got each of `from`'s messages once; per lane in sequence; none ahead of a
/// same-or-higher precedence message sent before it.
async fn check_delivery(receiver: &Node, from: &str) {
    let got = inbox(receiver, MESSAGES).await;
    let bodies: Vec<&str> = got.iter().map(|m| m.body.as_str()).collect();
    let distinct: BTreeSet<&str> = bodies.iter().copied().collect();
    let expected: BTreeSet<String> = (0..MESSAGES).map(|i| body(from, i)).collect();
    let expected: BTreeSet<&str> = expected.iter().map(String::as_str).collect();
    assert_eq!(distinct, expected, "each message once: {bodies:?}");
    assert_eq!(distinct.len(), bodies.len(), "no duplicate: {bodies:?}");
    let position = |i: usize| bodies.iter().position(|b| *b == body(from, i)).unwrap();
    for j in 0..MESSAGES {
        for i in 0..j {
            if precedence(i) >= precedence(j) {
                assert!(
                    position(i) < position(j),
                    "{} ({}) delivered before {} ({}), sent earlier: {bodies:?}",
                    body(from, j),
                    precedence(j),
                    body(from, i),
                    precedence(i),
                );
            }
        }
    }
    for lane in Precedence::ALL {
        let seqs: Vec<u64> = got
            .iter()
            .filter(|m| m.precedence == lane.as_str())
            .map(|m| m.seq)
            .collect();
        assert!(seqs.is_sorted(), "{lane} lane in sequence: {seqs:?}");
    }
}

/// Waits until `node` knows every message it sent was delivered.
async fn wait_all_delivered(node: &Node) {
    wait_status(node, "every message delivered", |s| {
        s.lanes
            .values()
            .all(|l| l.undelivered == 0 && l.awaiting_key == 0)
    })
    .await;
}

/// Polls `status` until `ok` holds; fails after [`WITHIN`] with the last status.
async fn wait_status(node: &Node, what: &str, ok: impl Fn(&StatusView) -> bool) -> StatusView {
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let s = status(node).await.unwrap();
        if ok(&s) {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}: not {what} within {WITHIN:?}: {}",
            node.endpoint(),
            summary(&s)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `status` for a failure message, alarm causes cut short (a forged one can be huge).
fn summary(s: &StatusView) -> String {
    let mut s = s.clone();
    for a in &mut s.alarms {
        if a.cause.len() > 80 {
            let cut = (0..=80)
                .rev()
                .find(|i| a.cause.is_char_boundary(*i))
                .unwrap_or(0);
            a.cause = format!("{}… ({} bytes)", &a.cause[..cut], a.cause.len());
        }
    }
    format!("{s:#?}")
}

/// `node`'s alarms, one line each, causes cut short.
async fn alarms(node: &Node) -> Vec<String> {
    let s = status(node).await.unwrap();
    s.alarms
        .iter()
        .map(|a| format!("{}: {:.80}", a.kind, a.cause))
        .collect()
}

async fn assert_no_alarms(f: &Fixture) {
    for n in [&f.us, &f.jp] {
        let a = alarms(n).await;
        assert!(a.is_empty(), "{}: unexpected alarms {a:#?}", n.endpoint());
    }
}

/// The double itself: without an attack, traffic flows as through the real relay and nothing
/// is alarming. Every other test differs from this one only in its attack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honest_double_delivers_everything_once_without_alarms() {
    let f = Fixture::start(1).await;
    f.exchange().await;
    f.check_exchange().await;
    assert_no_alarms(&f).await;
    f.check_alive().await;
}

/// Replay: every frame (envelopes, receipts, link tests, announcements) is sent again and again.
/// Replays are what an honest relay's redelivery looks like, so they raise no alarm and change
/// nothing. Then the relay stops forwarding anything fresh and only replays: old link tests must
/// not keep the link up, so both nodes report it degraded, and it stays degraded while the
/// replays go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_frames_change_nothing_and_cannot_keep_a_silent_link_up() {
    let f = Fixture::start(2).await;
    f.relay.set_attack(Attack::Replay);
    f.exchange().await;
    f.check_exchange().await;
    assert_no_alarms(&f).await;

    f.relay.set_attack(Attack::ReplayOnly);
    for n in [&f.us, &f.jp] {
        wait_status(n, "degraded", |s| s.link == "degraded").await;
    }
    // Two more rounds of replayed frames (every recorded frame each round) change nothing.
    let rounds = f.relay.stats().replay_rounds;
    let deadline = tokio::time::Instant::now() + WITHIN;
    while f.relay.stats().replay_rounds < rounds + 2 {
        assert!(tokio::time::Instant::now() < deadline, "replay stopped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for n in [&f.us, &f.jp] {
        let s = status(n).await.unwrap();
        assert_eq!(s.link, "degraded", "{}: {}", n.endpoint(), summary(&s));
    }
    assert!(f.relay.stats().dropped > 0, "fresh frames were dropped");
    assert_no_alarms(&f).await;
    f.check_alive().await;
}

/// Reorder: frames are held and released shuffled, across and within lanes. The receiver
/// buffers and releases in order; nothing is lost or doubled, and nothing is alarming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reordered_frames_are_delivered_once_in_order() {
    let f = Fixture::start(3).await;
    f.relay.set_attack(Attack::Reorder { batch: 6 });
    f.exchange().await;
    f.check_exchange().await;
    assert_no_alarms(&f).await;
    f.check_alive().await;
}

/// Duplicate: every frame is forwarded twice. Delivered once, no alarm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_frames_are_delivered_once() {
    let f = Fixture::start(4).await;
    f.relay.set_attack(Attack::Duplicate);
    f.exchange().await;
    f.check_exchange().await;
    assert_no_alarms(&f).await;
    f.check_alive().await;
}

/// Drop before `Accepted`: the first offer of every envelope vanishes without a reply. The
/// sender retransmits until the relay accepts, so everything arrives once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelopes_dropped_before_accepted_are_retransmitted() {
    let f = Fixture::start(5).await;
    f.relay.set_attack(Attack::DropFirstOffer);
    f.exchange().await;
    f.check_exchange().await;
    assert!(
        f.relay.stats().dropped >= 2 * MESSAGES as u64,
        "every first offer dropped: {:?}",
        f.relay.stats()
    );
    assert_no_alarms(&f).await;
    f.check_alive().await;
}

/// Drop link tests only: messages and receipts still flow, so nothing is lost; once the
/// traffic is over nothing proves the partner is there, so both links degrade. No alarm: a
/// dropping relay looks like a silent partner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_link_tests_lose_no_message_and_degrade_an_idle_link() {
    let f = Fixture::start(6).await;
    f.relay.set_attack(Attack::DropLinkTests);
    f.exchange().await;
    f.check_exchange().await;
    for n in [&f.us, &f.jp] {
        wait_status(n, "degraded", |s| s.link == "degraded").await;
    }
    assert!(f.relay.stats().dropped > 0, "link tests were dropped");
    assert_no_alarms(&f).await;
    f.check_alive().await;
}

/// Drop everything from one side except its link tests (its envelopes are still `Accepted`):
/// the link looks alive but `us`'s messages and receipts vanish. `us` detects it by its
/// delivered deadlines (open escalations) and `jp` has nothing from it, while `jp`'s messages
/// still reach `us` once and in order. When the relay stops dropping, the escalated resends
/// deliver everything once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_side_cut_off_but_for_link_tests_escalates_then_recovers() {
    let f = Fixture::start(7).await;
    f.relay
        .set_attack(Attack::DropAllButLinkTestsFrom(id("us")));
    f.exchange().await;
    check_delivery(&f.us, "jp").await;
    wait_status(&f.us, "escalating", |s| !s.open_escalations.is_empty()).await;
    assert_eq!(
        status(&f.jp).await.unwrap().inbox,
        0,
        "nothing from us got through"
    );

    f.relay.set_attack(Attack::Honest);
    f.check_exchange().await;
    f.check_alive().await;
}

/// Drop one lane: every routine envelope from `us` vanishes after `Accepted`. The higher lanes
/// do not wait for it: `jp` gets every flash, immediate and priority message from `us`, in
/// order, while the routine ones are missing; once the relay stops dropping, the routine ones
/// arrive (escalated resends) and everything is there once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_lanes_are_not_held_behind_a_dropped_routine_lane() {
    let f = Fixture::start(10).await;
    f.relay
        .set_attack(Attack::DropLaneFrom(id("us"), Precedence::Routine));
    f.exchange().await;
    let above_routine: Vec<String> = (0..MESSAGES)
        .filter(|i| precedence(*i) > Precedence::Routine)
        .map(|i| body("us", i))
        .collect();
    let got = inbox(&f.jp, above_routine.len()).await;
    let mut bodies: Vec<String> = got.into_iter().map(|m| m.body).collect();
    bodies.sort();
    assert_eq!(
        bodies, above_routine,
        "every message above routine, and only those"
    );
    assert!(
        f.relay.stats().dropped > 0,
        "routine envelopes were dropped"
    );

    f.relay.set_attack(Attack::Honest);
    f.check_exchange().await;
    assert_no_alarms(&f).await;
    f.check_alive().await;
}

/// Flip bits: one forwarded frame in four has one random bit flipped after its length prefix.
/// Each corruption fails a decode, signature or seal check and raises an alarm; the message it
/// hit is offered again at its deadline, so everything still arrives once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_bits_raise_alarms_and_lose_nothing() {
    let f = Fixture::start(8).await;
    f.relay.set_attack(Attack::FlipBits { one_in: 4 });
    f.exchange().await;
    f.check_exchange().await;
    let flipped = f.relay.stats().flipped;
    assert!(flipped >= 5, "enough frames corrupted: {flipped}");
    let raised = alarms(&f.us).await.len() + alarms(&f.jp).await.len();
    assert!(raised > 0, "{flipped} corrupted frames raised no alarm");
    f.check_alive().await;
}

/// Inject forgeries: an envelope twin whose chain head is signed by another key (sent just
/// before the genuine one), a receipt in the partner's name signed by another key, a link test
/// from a stranger, junk, a `Refused` with a 200 KiB detail, and `Presence`/`Accepted` about a
/// stranger. The signed forgeries and the refusal raise their alarms on both nodes; none
/// displaces a genuine envelope or changes the partner's presence, and all messages arrive once,
/// in order. (Junk raises no alarm today: see `junk_frames_raise_an_alarm`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_frames_raise_alarms_and_change_nothing() {
    let f = Fixture::start(9).await;
    f.relay.set_attack(Attack::Inject {
        script: &Forgery::ALL,
        twins: true,
    });
    f.exchange().await;
    f.check_exchange().await;
    let expected = [
        "security: bad signature",
        "security: not for this endpoint",
        "refused by relay: Malformed",
    ];
    for n in [&f.us, &f.jp] {
        let s = wait_status(n, "alarmed by every forgery", |s| {
            expected
                .iter()
                .all(|e| s.alarms.iter().any(|a| a.kind.starts_with(e)))
        })
        .await;
        assert_eq!(
            s.partner_online,
            Some(true),
            "{}: {}",
            n.endpoint(),
            summary(&s)
        );
    }
    assert!(f.relay.stats().injected > 0);
    f.check_alive().await;
}

/// Inject junk: frames with the right length, version and suite whose payload does not decode.
/// An honest relay forwards bytes verbatim over an authenticated stream, so junk proves a
/// faulty or hostile relay and should raise an alarm on the node that got it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_frames_raise_an_alarm() {
    let f = Fixture::start(11).await;
    f.relay.set_attack(Attack::Inject {
        script: &[Forgery::Junk],
        twins: false,
    });
    f.exchange().await;
    f.check_exchange().await;
    assert!(f.relay.stats().injected >= 2, "junk sent to both nodes");
    for n in [&f.us, &f.jp] {
        wait_status(n, "alarmed by junk", |s| {
            s.alarms
                .iter()
                .any(|a| a.kind.starts_with("security: malformed"))
        })
        .await;
    }
    f.check_alive().await;
}
