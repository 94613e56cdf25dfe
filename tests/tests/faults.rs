//! Network faults with two relays (issue 11, item 4): both nodes use two relays at once, each
//! behind a user-space impairment proxy ([`hotline_e2e::impair`]). Messages flow from us to jp
//! while a relay is SIGKILLed, a path is blacked out, every path loses, duplicates, reorders and
//! delays datagrams, or a relay loses its store. Every test ends in the history check: every
//! message `send` reported stored is in jp's inbox exactly once, in the ordering rule.
//!
//! `make test` runs short versions (the whole file in well under two minutes on two cores);
//! `HOTLINE_SOAK=1` runs the figures (30 s and 20 s blackouts, 1,000 impaired messages).
//! `HOTLINE_SEED=<n>` replays the proxies' and the senders' random choices.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a failed step is the test failing"
)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hotline_client::control::WaitLevel;
use hotline_client::process::{Binaries, LOOPBACK_ANY, Launcher};
use hotline_e2e::impair::Impairment;
use hotline_e2e::netns::NetNs;
use hotline_e2e::relays::{TwoRelays, check_history, seed, soak};
use hotline_e2e::{Exercise, Msg, PATIENCE, Precedence, bin_dir, send_all};

const PRECEDENCES: [Precedence; 6] = [
    Precedence::Routine,
    Precedence::Routine,
    Precedence::Routine,
    Precedence::Priority,
    Precedence::Immediate,
    Precedence::Flash,
];

/// Messages reported stored by us, in send order.
type Ledger = Arc<Mutex<Vec<(String, Precedence)>>>;

/// `n` messages of mixed precedence (chosen from `seed`), bodies `tag i`.
fn batch(tag: &str, from: usize, n: usize, seed: u64) -> Vec<Msg> {
    (from..from + n)
        .map(|i| {
            let pick = (seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)) >> 7;
            Msg::new(PRECEDENCES[(pick % 6) as usize], format!("{tag} {i}"))
        })
        .collect()
}

/// Sends `msgs` from `endpoint` pipelined (waiting for `wait`) and records them in `ledger`.
async fn send_logged(
    net: &TwoRelays,
    endpoint: &str,
    msgs: &[Msg],
    wait: Option<WaitLevel>,
    ledger: &Ledger,
) {
    let mut c = net.control(endpoint).await;
    let sent = send_all(&mut c, msgs, wait).await.unwrap();
    let mut l = ledger.lock().unwrap();
    for (s, m) in sent.into_iter().zip(msgs) {
        assert!(!s.id.is_empty(), "{:?} was not stored", m.body);
        l.push((s.id, m.precedence));
    }
}

/// Sends chunks of `chunk` messages from us every `pace` until `stop` is set; returns how many.
async fn steady_sender(
    net: Arc<TwoRelays>,
    ledger: Ledger,
    stop: Arc<AtomicBool>,
    chunk: usize,
    pace: Duration,
    seed: u64,
) -> usize {
    let mut sent = 0;
    while !stop.load(Ordering::Relaxed) {
        send_logged(
            &net,
            "us",
            &batch("steady", sent, chunk, seed),
            None,
            &ledger,
        )
        .await;
        sent += chunk;
        tokio::time::sleep(pace).await;
    }
    sent
}

/// Runs a steady sender while `during` runs, then stops it; returns what was sent.
async fn with_traffic<F: Future<Output = ()>>(
    net: &Arc<TwoRelays>,
    seed: u64,
    during: F,
) -> Vec<(String, Precedence)> {
    let ledger = Ledger::default();
    let stop = Arc::new(AtomicBool::new(false));
    let sender = tokio::spawn(steady_sender(
        net.clone(),
        ledger.clone(),
        stop.clone(),
        5,
        Duration::from_millis(100),
        seed,
    ));
    during.await;
    stop.store(true, Ordering::Relaxed);
    let n = tokio::time::timeout(PATIENCE, sender)
        .await
        .expect("sender stopped")
        .unwrap();
    eprintln!("steady sender: {n} messages");
    ledger.lock().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_relay_killed_in_turn_while_traffic_flows() {
    let seed = seed("kill each relay");
    let net = Arc::new(TwoRelays::start(["us", "jp"], seed));
    let _nodes = net.start_nodes("us", "jp").await;
    let down = if soak() { 3000 } else { 700 };
    let sent = with_traffic(&net, seed, async {
        for i in 0..2 {
            tokio::time::sleep(Duration::from_millis(600)).await;
            eprintln!("SIGKILL relay {i}");
            net.kill_relay(i);
            tokio::time::sleep(Duration::from_millis(down)).await;
            net.restart_relay(i);
            for e in ["us", "jp"] {
                net.wait_relay(e, i, true).await;
            }
            eprintln!("relay {i} back");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    })
    .await;
    check_history(&net, "jp", &sent, PATIENCE).await;
    eprintln!("{} messages delivered once each, in order", sent.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_relay_blacked_out_the_other_carries_everything() {
    let seed = seed("one blackout");
    let net = Arc::new(TwoRelays::start(["us", "jp"], seed));
    let _nodes = net.start_nodes("us", "jp").await;
    let blackout = Duration::from_secs(if soak() { 30 } else { 6 });
    let ledger = Ledger::default();
    send_logged(&net, "us", &batch("before", 0, 20, seed), None, &ledger).await;
    net.proxy(0).blackout(true);
    let start = Instant::now();
    eprintln!("relay 0 blacked out for {blackout:?}");
    // Sent in a steady trickle through the first part of the blackout, across the moment the
    // nodes give the silent relay up.
    let mut during = Vec::new();
    let mut i = 0;
    while start.elapsed() < blackout / 2 {
        let msgs = batch("during", i, 5, seed);
        let before = ledger.lock().unwrap().len();
        send_logged(&net, "us", &msgs, None, &ledger).await;
        during.extend(ledger.lock().unwrap()[before..].iter().cloned());
        i += 5;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Everything sent meanwhile arrives while the blackout still lasts.
    check_history(
        &net,
        "jp",
        &during,
        blackout.saturating_sub(start.elapsed()),
    )
    .await;
    assert!(
        start.elapsed() < blackout,
        "delivered only after the blackout"
    );
    eprintln!(
        "{} messages sent during the blackout all delivered within {:?}",
        during.len(),
        start.elapsed()
    );
    // And the blackout really bit: the nodes gave the silent relay up (and the other kept on).
    for e in ["us", "jp"] {
        net.wait_relay(e, 0, false).await;
        net.wait_relay(e, 1, true).await;
    }
    assert!(
        start.elapsed() < blackout,
        "r1 given up only after the blackout"
    );
    tokio::time::sleep(blackout.saturating_sub(start.elapsed())).await;
    net.proxy(0).blackout(false);
    for e in ["us", "jp"] {
        net.wait_relay(e, 0, true).await;
    }
    send_logged(&net, "us", &batch("after", 0, 20, seed), None, &ledger).await;
    let sent = ledger.lock().unwrap().clone();
    check_history(&net, "jp", &sent, PATIENCE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn both_relays_blacked_out_then_healed() {
    let seed = seed("both blacked out");
    let net = Arc::new(TwoRelays::start(["us", "jp"], seed));
    let _nodes = net.start_nodes("us", "jp").await;
    let blackout = Duration::from_secs(if soak() { 20 } else { 5 });
    let ledger = Ledger::default();
    send_logged(&net, "us", &batch("before", 0, 20, seed), None, &ledger).await;
    let first = ledger.lock().unwrap().clone();
    let before = check_history(&net, "jp", &first, PATIENCE).await.len();
    for i in 0..2 {
        net.proxy(i).blackout(true);
    }
    let start = Instant::now();
    eprintln!("both relays blacked out for {blackout:?}");
    let mut i = 0;
    while start.elapsed() < blackout * 3 / 4 {
        send_logged(&net, "us", &batch("during", i, 5, seed), None, &ledger).await;
        i += 5;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // No path is left: nothing sent during the blackout can have arrived.
    assert_eq!(
        net.inbox("jp").await.len(),
        before,
        "a message crossed the blackout"
    );
    tokio::time::sleep(blackout.saturating_sub(start.elapsed())).await;
    for i in 0..2 {
        net.proxy(i).blackout(false);
    }
    let healed = Instant::now();
    eprintln!("healed; {i} messages were sent during the blackout");
    let sent = ledger.lock().unwrap().clone();
    check_history(&net, "jp", &sent, PATIENCE).await;
    eprintln!("all delivered {:?} after the heal", healed.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lossy_duplicating_reordering_delaying_paths_lose_nothing() {
    let seed = seed("impaired paths");
    let net = Arc::new(TwoRelays::start(["us", "jp"], seed));
    let _nodes = net.start_nodes("us", "jp").await;
    let total = if soak() { 1000 } else { 200 };
    net.impair_all(Impairment {
        loss: 0.10,
        dup: 0.05,
        reorder: 0.05,
        delay: Duration::from_millis(50),
        jitter: Duration::from_millis(20),
    });
    let ledger = Ledger::default();
    let start = Instant::now();
    for from in (0..total).step_by(20) {
        send_logged(&net, "us", &batch("lossy", from, 20, seed), None, &ledger).await;
    }
    let sent = ledger.lock().unwrap().clone();
    check_history(&net, "jp", &sent, PATIENCE * 2).await;
    eprintln!(
        "{total} messages over impaired paths in {:?}",
        start.elapsed()
    );
    for i in 0..2 {
        let s = net.proxy(i).stats();
        eprintln!("proxy {i}: {s:?}");
        assert!(s.lost > 0 && s.duplicated > 0 && s.reordered > 0, "{s:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relays_restarted_with_empty_stores_lose_nothing() {
    let seed = seed("empty stores");
    let net = Arc::new(TwoRelays::start(["us", "jp"], seed));
    let [_us, mut jp] = net.start_nodes("us", "jp").await;
    let ledger = Ledger::default();
    // Round 0: relay 0 loses its queue; relay 1 still holds it. Round 1: both lose theirs, and
    // only us's outbox is left to make up for them.
    for (round, wiped) in [vec![0], vec![0, 1]].into_iter().enumerate() {
        jp.kill();
        for i in 0..2 {
            net.wait_relay("us", i, true).await;
        }
        // Accepted: a relay holds each message, queued for jp who is away.
        send_logged(
            &net,
            "us",
            &batch(&format!("queued{round}"), 0, 30, seed),
            Some(WaitLevel::Accepted),
            &ledger,
        )
        .await;
        for &i in &wiped {
            eprintln!("round {round}: relay {i} restarted with an empty data dir");
            net.restart_relay_empty(i);
        }
        jp = net.start_node("jp");
        net.wait_all_up(&["us", "jp"]).await;
        let sent = ledger.lock().unwrap().clone();
        check_history(&net, "jp", &sent, PATIENCE).await;
        eprintln!("round {round}: {} messages all delivered", sent.len());
    }
}

/// Optional, as root only: relay r1 runs in a network namespace reached over a veth pair, and the
/// link is cut in the kernel (the namespace's end goes down) instead of in the proxy. Skips with
/// the reason when namespaces cannot be made.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relay_in_a_namespace_cut_off_and_reconnected() {
    let ns = match NetNs::create() {
        Ok(ns) => ns,
        Err(why) => {
            eprintln!("skipped: no network namespace ({why})");
            return;
        }
    };
    let seed = seed("namespace cut");
    let ex = Exercise::with_relays(
        &["us", "jp"],
        &[("r1", "127.0.0.1:1"), ("r2", "127.0.0.1:2")],
    );
    let bins = Binaries::new(&bin_dir()).unwrap();
    let (_r1, r1_addr) = ns
        .start_relay(
            &bins.relay(),
            &ex.path("relay-1.toml"),
            0,
            &ex.path("relay-1.ns.log"),
        )
        .unwrap();
    let r2 = Launcher::new(bins)
        .log_filter("info")
        .start_relay(
            &ex.path("relay-2.toml"),
            LOOPBACK_ANY,
            &ex.path("relay-2.log"),
        )
        .unwrap();
    eprintln!("r1 in namespace at {r1_addr}, r2 at {}", r2.addr);
    for e in ["us", "jp"] {
        ex.edit_config(e, |t| {
            let relays = t["relays"].as_array_mut().unwrap();
            for (r, a) in relays.iter_mut().zip([r1_addr, r2.addr]) {
                r.as_table_mut()
                    .unwrap()
                    .insert("addr".into(), a.to_string().into());
            }
        });
    }
    let relay_is = |name: &'static str, up: bool| {
        move |s: &hotline_client::control::StatusView| {
            s.relays.iter().any(|r| r.name == name && r.connected == up)
        }
    };
    let _nodes = [ex.start_node("us"), ex.start_node("jp")];
    ex.wait_links_up(&["us", "jp"]).await;
    for e in ["us", "jp"] {
        ex.wait_status(e, "r1 connected", relay_is("r1", true))
            .await;
        ex.wait_status(e, "r2 connected", relay_is("r2", true))
            .await;
    }
    let cut = Duration::from_secs(if soak() { 30 } else { 6 });
    let mut sent = Vec::new();
    let mut c = ex.control("us").await;
    let mut send = async |tag: &str, i: usize, sent: &mut Vec<(String, Precedence)>| {
        let msgs = batch(tag, i, 5, seed);
        for (s, m) in send_all(&mut c, &msgs, None)
            .await
            .unwrap()
            .into_iter()
            .zip(&msgs)
        {
            sent.push((s.id, m.precedence));
        }
    };
    send("before", 0, &mut sent).await;
    ns.cut(true).unwrap();
    let start = Instant::now();
    eprintln!("r1's link cut for {cut:?}");
    let from = sent.len();
    let mut i = 0;
    while start.elapsed() < cut / 2 {
        send("during", i, &mut sent).await;
        i += 5;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    check_history(
        &ex,
        "jp",
        &sent[from..],
        cut.saturating_sub(start.elapsed()),
    )
    .await;
    assert!(start.elapsed() < cut, "delivered only after the cut ended");
    eprintln!(
        "{} messages sent during the cut delivered within {:?}",
        sent.len() - from,
        start.elapsed()
    );
    // And the cut really bit: the nodes gave r1 up.
    for e in ["us", "jp"] {
        ex.wait_status(e, "r1 given up", relay_is("r1", false))
            .await;
    }
    assert!(
        start.elapsed() < cut,
        "r1 given up only after the cut ended"
    );
    tokio::time::sleep(cut.saturating_sub(start.elapsed())).await;
    ns.cut(false).unwrap();
    for e in ["us", "jp"] {
        ex.wait_status(e, "r1 reconnected", relay_is("r1", true))
            .await;
    }
    send("after", 0, &mut sent).await;
    check_history(&ex, "jp", &sent, PATIENCE).await;
}
