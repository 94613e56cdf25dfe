//! Crash recovery of the real `hotline-relay` binary: failpoints that abort around the store's
//! commit, `kill -9`, and a second relay on the same data directory.
//!
//! Each test runs the binary on `127.0.0.1:0` (the address is read from its `relay listening`
//! log line), talks to it with raw quinn nodes, and restarts it on the same data directory.
//! No timing assertions: every wait has a generous timeout that only turns a hang into a failure.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "helpers outside #[test] functions fail the test loudly too"
)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hotline_proto::Lane;
use hotline_proto::Precedence;
use hotline_proto::wire::{Accepted, Frame};
use hotline_relay::failpoint;
use hotline_relay::testing::*;

const BIN: &str = env!("CARGO_BIN_EXE_hotline-relay");

const R: Precedence = Precedence::Routine;
const F: Precedence = Precedence::Flash;

/// Envelopes sent one at a time (each its own commit) before the burst.
const SINGLES: u64 = 3;
/// The last envelope of the burst.
const LAST: u64 = 40;

fn setup() -> TestPki {
    let pki = TestPki::generate(&["us", "jp"]);
    pki.write_config(RELAY_TOML);
    pki
}

/// A running `hotline-relay` process; killed when dropped.
struct Relay {
    child: Child,
    addr: SocketAddr,
    /// Envelopes it reloaded from its store (`queued=` in its `relay listening` line).
    queued: usize,
    log: Arc<Mutex<String>>,
}

impl Relay {
    /// Starts the relay on `dir`'s config, with `failpoint` (name, skip) armed if given, and
    /// waits until it listens.
    async fn start(dir: &Path, failpoint: Option<(&str, u64)>) -> Self {
        let mut command = Command::new(BIN);
        command
            .arg("--config")
            .arg(dir.join("relay.toml"))
            .env("RUST_LOG", "info")
            .env_remove(failpoint::ENV)
            .env_remove(failpoint::ENV_SKIP)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some((name, skip)) = failpoint {
            command
                .env(failpoint::ENV, name)
                .env(failpoint::ENV_SKIP, skip.to_string());
        }
        let mut child = command.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let deadline = Instant::now() + WAIT;
        loop {
            let listening = log
                .lock()
                .unwrap()
                .lines()
                .find(|l| l.contains("relay listening"))
                .map(str::to_owned);
            if let Some(line) = listening {
                let addr = field(&line, "addr").parse().unwrap();
                let queued = field(&line, "queued").parse().unwrap();
                return Self {
                    child,
                    addr,
                    queued,
                    log,
                };
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("relay exited early ({status}):\n{}", log.lock().unwrap());
            }
            assert!(
                Instant::now() < deadline,
                "relay did not start:\n{}",
                log.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn connect(&self, dir: &Path, name: &str) -> TestNode {
        tokio::time::timeout(WAIT, TestNode::connect(self.addr, dir, dir, name, None))
            .await
            .expect("connecting timed out")
            .unwrap()
    }

    /// Waits for the process to end on its own.
    async fn exited(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "relay is still running:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL, and wait for it to be gone.
    async fn kill9(&mut self) {
        self.child.kill().unwrap();
        let status = self.exited().await;
        assert_eq!(status.signal(), Some(9), "{status}");
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of `key=` in a log line.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let start = line
        .find(&format!(" {key}="))
        .unwrap_or_else(|| panic!("no {key}= in {line}"))
        + key.len()
        + 2;
    line[start..].split_whitespace().next().unwrap()
}

/// Waits for the `Accepted` of (`precedence`, `seq`) from us's relay; it must say durable.
async fn accepted(node: &mut TestNode, precedence: Precedence, seq: u64) {
    let want = Frame::Accepted(Accepted {
        id: message_id("us", precedence, seq),
        durable: true,
    });
    let (_, _, frame) = node
        .recv_where(|f| matches!(f, Frame::Accepted(_) | Frame::Refused(_)))
        .await;
    assert_eq!(frame, want);
}

/// The routine seqs `jp` receives up to and including `last`, in the order received.
async fn routine_seqs_until(jp: &mut TestNode, last: u64) -> Vec<u64> {
    let mut seqs = Vec::new();
    loop {
        let (stream, _, e) = jp.next_envelope().await;
        assert_eq!(stream, Lane::Precedence(R));
        let seq = e.envelope.header.seq.0;
        seqs.push(seq);
        if seq == last {
            return seqs;
        }
    }
}

/// What [`crash_at`] saw.
struct Crash {
    /// Seqs the crashed relay reported accepted.
    accepted: BTreeSet<u64>,
    /// Envelopes the restarted relay reloaded.
    reloaded: usize,
    /// Seqs `jp` received from the restarted relay, in order.
    received: Vec<u64>,
}

/// us sends routine 1..=SINGLES one at a time (each is committed alone, so the failpoint lets
/// them pass), then SINGLES+1..=LAST in one burst, to jp, who is offline; the relay aborts at
/// `name` on the burst's first commit. Then a relay without the failpoint starts on the same
/// data dir; us, which simply re-sends whatever was not accepted (as the node engine does), and
/// a sentinel; and jp connects and reads until the sentinel.
async fn crash_at(name: &str) -> Crash {
    let dir = setup();
    let mut relay = Relay::start(dir.path(), Some((name, SINGLES))).await;
    assert!(relay.log().contains("failpoint armed"), "{}", relay.log());
    let mut us = relay.connect(dir.path(), "us").await;
    let mut got = BTreeSet::new();
    for seq in 1..=SINGLES {
        us.send_lane(R, &envelope("us", "jp", R, seq)).await;
        accepted(&mut us, R, seq).await;
        got.insert(seq);
    }
    for seq in SINGLES + 1..=LAST {
        us.send_lane(R, &envelope("us", "jp", R, seq)).await;
    }
    let status = relay.exited().await;
    assert_eq!(
        status.signal(),
        Some(6),
        "expected an abort: {status}\n{}",
        relay.log()
    );
    assert!(
        relay.log().contains(&format!("failpoint {name} hit")),
        "{}",
        relay.log()
    );
    // Let the node take in whatever the relay sent before it died.
    tokio::time::sleep(Duration::from_millis(300)).await;
    while let Ok((_, bytes)) = us.rx.try_recv() {
        if let Ok((Frame::Accepted(a), _)) = hotline_proto::wire::decode_frame(&bytes) {
            assert!(a.durable);
            got.insert(a.id.seq.0);
        }
    }
    drop(us);

    let relay = Relay::start(dir.path(), None).await;
    let mut us = relay.connect(dir.path(), "us").await;
    for seq in (1..=LAST).filter(|s| !got.contains(s)) {
        us.send_lane(R, &envelope("us", "jp", R, seq)).await;
        accepted(&mut us, R, seq).await;
    }
    us.send_lane(R, &envelope("us", "jp", R, LAST + 1)).await;
    accepted(&mut us, R, LAST + 1).await;
    let mut jp = relay.connect(dir.path(), "jp").await;
    let received = routine_seqs_until(&mut jp, LAST + 1).await;
    Crash {
        accepted: got,
        reloaded: relay.queued,
        received,
    }
}

fn all_once_in_order() -> Vec<u64> {
    (1..=LAST + 1).collect()
}

#[tokio::test]
async fn crash_before_commit_loses_nothing_accepted() {
    let crash = crash_at(failpoint::BEFORE_COMMIT).await;
    // Exactly the singles were committed and accepted; the burst was neither.
    assert_eq!(crash.accepted, (1..=SINGLES).collect());
    assert_eq!(crash.reloaded, SINGLES as usize);
    assert_eq!(crash.received, all_once_in_order());
}

#[tokio::test]
async fn crash_inside_the_group_commit_loses_nothing_accepted() {
    let crash = crash_at(failpoint::MID_GROUP_COMMIT).await;
    // The interrupted transaction left no trace.
    assert_eq!(crash.accepted, (1..=SINGLES).collect());
    assert_eq!(crash.reloaded, SINGLES as usize);
    assert_eq!(crash.received, all_once_in_order());
}

#[tokio::test]
async fn crash_after_commit_before_accepted_delivers_exactly_once() {
    let crash = crash_at(failpoint::AFTER_COMMIT_BEFORE_ACCEPTED).await;
    // The burst's first batch was committed but never accepted: the sender re-sent it, the
    // relay deduplicated it, and jp gets every message once, in order.
    assert_eq!(crash.accepted, (1..=SINGLES).collect());
    assert!(
        crash.reloaded > SINGLES as usize,
        "reloaded {}",
        crash.reloaded
    );
    assert_eq!(crash.received, all_once_in_order());
}

#[tokio::test]
async fn kill_9_keeps_everything_accepted_in_order_and_nothing_delivered() {
    let dir = setup();
    let mut relay = Relay::start(dir.path(), None).await;
    let mut us = relay.connect(dir.path(), "us").await;
    // Routine 1..=30 with flash 1..=10 interleaved, all sent before any reply is read.
    let mut sent = Vec::new();
    for i in 1..=30u64 {
        sent.push((R, i));
        if i % 3 == 0 {
            sent.push((F, i / 3));
        }
    }
    for &(p, seq) in &sent {
        us.send_lane(p, &envelope("us", "jp", p, seq)).await;
    }
    let mut replies = BTreeSet::new();
    while replies.len() < sent.len() {
        let Frame::Accepted(a) = us.next_reply().await else {
            panic!("refused")
        };
        assert!(a.durable);
        replies.insert((a.id.precedence, a.id.seq.0));
    }
    relay.kill9().await;
    drop(us);

    // Everything accepted is back, each lane in order.
    let mut relay = Relay::start(dir.path(), None).await;
    assert_eq!(relay.queued, sent.len());
    let mut us = relay.connect(dir.path(), "us").await;
    let mut jp = relay.connect(dir.path(), "jp").await;
    let mut by_lane = [Vec::new(), Vec::new()];
    for _ in 0..sent.len() {
        let (stream, _, e) = jp.next_envelope().await;
        let h = &e.envelope.header;
        assert_eq!(stream, Lane::Precedence(h.precedence));
        by_lane[usize::from(h.precedence == F)].push(h.seq.0);
    }
    assert_eq!(by_lane[0], (1..=30).collect::<Vec<_>>());
    assert_eq!(by_lane[1], (1..=10).collect::<Vec<_>>());

    // jp reports routine up to 20 and all flash delivered. The relay forwards each receipt while
    // its write (with the deletions) commits; the `accepted` for a later envelope comes only
    // once every earlier write has committed, so then the deletions are durable.
    for (p, upto) in [(R, 20), (F, 10)] {
        jp.send_control(&delivered("jp", "us", p, upto)).await;
        us.recv_where(|f| matches!(f, Frame::Receipt(r) if r.body.precedence == p))
            .await;
    }
    us.send_lane(R, &envelope("us", "jp", R, 31)).await;
    accepted(&mut us, R, 31).await;
    relay.kill9().await;
    drop((us, jp));

    let relay = Relay::start(dir.path(), None).await;
    assert_eq!(relay.queued, 11, "routine 21..=31");
    let mut jp = relay.connect(dir.path(), "jp").await;
    assert_eq!(
        routine_seqs_until(&mut jp, 31).await,
        (21..=31).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_second_relay_on_the_same_data_dir_exits_with_one_line() {
    let dir = setup();
    let _first = Relay::start(dir.path(), None).await;
    let mut second = Command::new(BIN)
        .arg("--config")
        .arg(dir.path().join("relay.toml"))
        .env_remove(failpoint::ENV)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = second.kill();
            panic!("the second relay kept running");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains("already running"), "{stderr}");
}

#[tokio::test]
async fn a_relay_restarted_after_kill_9_resets_its_old_connections() {
    let pki = setup();
    let mut relay = Relay::start(pki.path(), None).await;
    let addr = relay.addr;
    let us = relay.connect(pki.path(), "us").await;
    // The restarted relay listens where the old one did, with the same persisted reset key.
    pki.write_config(&RELAY_TOML.replacen("127.0.0.1:0", &addr.to_string(), 1));
    relay.kill9().await;
    let restarted = Relay::start(pki.path(), None).await;
    assert_eq!(restarted.addr, addr);
    // The node's next keep-alive reaches the new process, which recognises the connection id as
    // its own and answers with a stateless reset: the connection ends as reset, not after the
    // idle timeout with a timeout.
    let why = us.closed_with().await;
    assert!(
        matches!(why, quinn::ConnectionError::Reset),
        "the old connection ended with {why:?}, not a stateless reset"
    );
}

#[tokio::test]
async fn a_crash_before_a_forwarded_receipt_commits_brings_its_envelopes_back() {
    // Routine 1..=3 each committed and accepted (three commits); the fourth commit is jp's
    // receipt with its deletions, and the relay dies before it. The receipt itself leaves at
    // once (the partner's signed word), so us may have it; what the relay promised is kept:
    // the envelopes it still holds come back and jp gets them again, to answer as duplicates.
    let dir = setup();
    let mut relay = Relay::start(dir.path(), Some((failpoint::BEFORE_COMMIT, 3))).await;
    let mut us = relay.connect(dir.path(), "us").await;
    for seq in 1..=3 {
        us.send_lane(R, &envelope("us", "jp", R, seq)).await;
        accepted(&mut us, R, seq).await;
    }
    let mut jp = relay.connect(dir.path(), "jp").await;
    assert_eq!(routine_seqs_until(&mut jp, 3).await, vec![1, 2, 3]);
    jp.send_control(&delivered("jp", "us", R, 3)).await;
    let status = relay.exited().await;
    assert_eq!(status.signal(), Some(6), "{status}\n{}", relay.log());
    drop((us, jp));

    let mut relay = Relay::start(dir.path(), None).await;
    assert_eq!(relay.queued, 3, "the deletions never committed");
    let mut jp = relay.connect(dir.path(), "jp").await;
    assert_eq!(routine_seqs_until(&mut jp, 3).await, vec![1, 2, 3]);
    // jp answers the duplicates with its receipt again; this time it commits.
    let mut us = relay.connect(dir.path(), "us").await;
    jp.send_control(&delivered("jp", "us", R, 3)).await;
    us.recv_where(|f| matches!(f, Frame::Receipt(_))).await;
    us.send_lane(R, &envelope("us", "jp", R, 4)).await;
    accepted(&mut us, R, 4).await;
    relay.kill9().await;
    drop((us, jp));
    let relay = Relay::start(dir.path(), None).await;
    assert_eq!(relay.queued, 1, "only routine 4 is left");
}
