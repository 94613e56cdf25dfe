//! A seeded randomized crash run: mixed-precedence messages flow from us to jp while the relay
//! and both nodes are killed with SIGKILL at random moments, round after round. Afterwards
//! every message `send` reported is in jp's inbox exactly once, the ordering rule holds, and
//! every acknowledgement jp's operator gave (and was told was durable) is still there.
//!
//! `make test` runs ~1,000 messages over 4 rounds; `make soak` runs the long version
//! (`HOTLINE_SOAK=1`: 5,000 messages, 8 rounds). `HOTLINE_SEED=<n>` replays a schedule; the
//! seed is printed at the start and in every failure.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a failed step is the test failing"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hotline_client::control::{ControlClient, Event, Request};
use hotline_e2e::{Exercise, PATIENCE, Precedence, Process, check_order};

/// splitmix64: a tiny deterministic generator for the kill schedule.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Default)]
struct Ledger {
    /// (send index, id, precedence) of every message reported stored.
    stored: Vec<(usize, String, Precedence)>,
    /// Acknowledgements reported durable.
    acked: BTreeSet<String>,
}

async fn connect(ex: &Exercise, endpoint: &str) -> ControlClient {
    let deadline = Instant::now() + PATIENCE * 2;
    loop {
        if let Ok(c) = ControlClient::connect(&ex.socket(endpoint)).await {
            return c;
        }
        assert!(Instant::now() < deadline, "{endpoint} never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `total` messages in pipelined chunks, riding out crashes of us.
async fn sender(ex: Arc<Exercise>, total: usize, ledger: Arc<Mutex<Ledger>>, seed: u64) {
    let precedences = [
        Precedence::Routine,
        Precedence::Routine,
        Precedence::Routine,
        Precedence::Priority,
        Precedence::Immediate,
        Precedence::Flash,
    ];
    let mut rng = Rng(seed ^ 0x5eed);
    let mut next = 0;
    while next < total {
        let mut c = connect(&ex, "us").await;
        let chunk = (1 + rng.below(20) as usize).min(total - next);
        let mut tags = BTreeMap::new();
        for i in next..next + chunk {
            let p = precedences[rng.below(precedences.len() as u64) as usize];
            let req = Request::Send {
                to: None,
                channel: None,
                precedence: Some(p),
                body: format!("soak {i}"),
                wait: None,
                timeout_ms: None,
            };
            match c.request(req).await {
                Ok(tag) => {
                    tags.insert(tag, (i, p));
                }
                Err(_) => break,
            }
        }
        let mut done = 0;
        while done < tags.len() {
            match c.next().await {
                Ok(Some(line)) => match line.event {
                    Event::Stored { id, .. } => {
                        let (i, p) = tags[&line.tag];
                        ledger.lock().unwrap().stored.push((i, id, p));
                    }
                    Event::Done { .. } => done += 1,
                    _ => {}
                },
                _ => break,
            }
        }
        // Messages of a chunk cut short by a crash are not retried: `send` never reported them.
        next += chunk;
        // Pace the run so the kill rounds land while messages are in flight.
        tokio::time::sleep(Duration::from_millis(20 + rng.below(40))).await;
    }
}

/// Acknowledges some of jp's inbox now and then, riding out crashes of jp.
async fn acker(ex: Arc<Exercise>, ledger: Arc<Mutex<Ledger>>, stop: Arc<Mutex<bool>>, seed: u64) {
    let mut rng = Rng(seed ^ 0xacc);
    while !*stop.lock().unwrap() {
        tokio::time::sleep(Duration::from_millis(100 + rng.below(200))).await;
        let Ok(mut c) = ControlClient::connect(&ex.socket("jp")).await else {
            continue;
        };
        let Ok(events) = c
            .call(Request::Inbox {
                follow: false,
                unacked: false,
                channel: None,
                updates: false,
            })
            .await
        else {
            continue;
        };
        let pending: Vec<String> = events
            .into_iter()
            .filter_map(|e| match e {
                Event::Message(m) if m.acknowledged.is_none() => Some(m.id),
                _ => None,
            })
            .collect();
        for id in pending.into_iter().filter(|_| rng.below(4) == 0).take(5) {
            if c.call(Request::Ack {
                id: id.parse().unwrap(),
            })
            .await
            .is_ok()
            {
                ledger.lock().unwrap().acked.insert(id);
            }
        }
    }
}

async fn run(total: usize, rounds: usize) {
    let seed: u64 = std::env::var("HOTLINE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!(
        "kill rounds: seed {seed} ({total} messages, {rounds} rounds); replay with HOTLINE_SEED={seed}"
    );
    let ex = Arc::new(Exercise::new(&["us", "jp"], &[]));
    let [relay, us, jp] = ex.start_linked("us", "jp").await;
    let mut procs: BTreeMap<&str, Process> =
        BTreeMap::from([("relay", relay), ("us", us), ("jp", jp)]);
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(Mutex::new(false));
    let send = tokio::spawn(sender(ex.clone(), total, ledger.clone(), seed));
    let ack = tokio::spawn(acker(ex.clone(), ledger.clone(), stop.clone(), seed));
    let mut rng = Rng(seed);
    for round in 0..rounds {
        tokio::time::sleep(Duration::from_millis(200 + rng.below(800))).await;
        let victim = ["relay", "us", "jp"][rng.below(3) as usize];
        eprintln!("round {round}: SIGKILL {victim} (seed {seed})");
        procs.get_mut(victim).unwrap().kill();
        tokio::time::sleep(Duration::from_millis(rng.below(500))).await;
        let p = if victim == "relay" {
            ex.start_relay()
        } else {
            ex.start_node(victim)
        };
        procs.insert(victim, p);
    }
    tokio::time::timeout(PATIENCE * 5, send)
        .await
        .expect("sender finished")
        .unwrap();
    *stop.lock().unwrap() = true;
    ack.await.unwrap();
    for e in ["us", "jp"] {
        ex.wait_status(e, "link up after the last round", |s| s.link == "up")
            .await;
    }
    let (stored, acked) = {
        let l = ledger.lock().unwrap();
        (l.stored.clone(), l.acked.clone())
    };
    assert!(!stored.is_empty(), "seed {seed}: nothing was stored");
    let deadline = Instant::now() + PATIENCE * 3;
    let inbox = loop {
        let inbox = ex.inbox("jp").await;
        let have: BTreeSet<&str> = inbox.iter().map(|m| m.id.as_str()).collect();
        let missing: Vec<&String> = stored
            .iter()
            .map(|(_, id, _)| id)
            .filter(|id| !have.contains(id.as_str()))
            .collect();
        if missing.is_empty() {
            break inbox;
        }
        assert!(
            Instant::now() < deadline,
            "seed {seed}: {} of {} reported messages never arrived, e.g. {:?}",
            missing.len(),
            stored.len(),
            &missing[..missing.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let ids: BTreeSet<&str> = inbox.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids.len(), inbox.len(), "seed {seed}: duplicate delivery");
    let mut order = stored.clone();
    order.sort();
    let order: Vec<(String, Precedence)> = order.into_iter().map(|(_, id, p)| (id, p)).collect();
    if let Err(e) = check_order(&order, &inbox) {
        panic!("seed {seed}: {e}");
    }
    for id in &acked {
        let m = inbox.iter().find(|m| &m.id == id).unwrap();
        assert!(
            m.acknowledged.is_some(),
            "seed {seed}: acknowledgement of {id} lost"
        );
    }
    eprintln!(
        "seed {seed}: {} stored, {} delivered, {} acknowledged — all accounted for",
        stored.len(),
        inbox.len(),
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seeded_kill_rounds_lose_nothing() {
    if std::env::var("HOTLINE_SOAK").is_ok() {
        run(5000, 8).await;
    } else {
        run(1000, 4).await;
    }
}
