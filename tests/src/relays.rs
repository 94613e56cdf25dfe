//! A two-relay exercise with an impairment [`Proxy`] in front of each relay, for the network-fault
//! tests (issue 11, item 4): both nodes use both relays at once, and every path between a node
//! and a relay crosses a proxy, so a test can lose, duplicate, reorder, delay or black out the
//! traffic of one path while the other carries on, kill a relay with SIGKILL and restart it on
//! its address and data dir, or restart it with its store lost.
//!
//! Start-up: `hotline certs init` with two relays (placeholder addresses), each relay started on
//! `127.0.0.1:0` with its bound address read from its log, a proxy started in front of it, and
//! both nodes' `[[relays]]` pointed at the two proxies. A restarted relay binds its first address
//! again, so the proxy (and through it the nodes) find it there.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hotline_client::control::StatusView;
use hotline_client::process::{LOOPBACK_ANY, log_field};

use crate::impair::{Impairment, Proxy};
use crate::{Exercise, Precedence, Process, check_order};

/// The relays' names in the certificate and the nodes' configs.
pub const RELAY_NAMES: [&str; 2] = ["r1", "r2"];

/// One relay, its proxy and its process.
#[derive(Debug)]
struct Slot {
    /// `relay-N.toml`.
    config: PathBuf,
    /// Its data dir (its store and connection-id key).
    data: PathBuf,
    /// The address it bound on its first start and binds again on every restart.
    addr: SocketAddr,
    proxy: Proxy,
    process: Mutex<Option<Process>>,
}

/// An exercise with two relays, each behind its own impairment proxy; both relays are running
/// once [`TwoRelays::start`] returns. Dereferences to the [`Exercise`] for the nodes' helpers.
#[derive(Debug)]
pub struct TwoRelays {
    /// The exercise directory and node helpers.
    pub ex: Exercise,
    slots: [Slot; 2],
}

impl std::ops::Deref for TwoRelays {
    type Target = Exercise;
    fn deref(&self) -> &Exercise {
        &self.ex
    }
}

impl TwoRelays {
    /// Writes the exercise for the two `endpoints`, starts both relays and their proxies (seeded
    /// from `seed`) and points both endpoints' configs at the proxies. Nodes are not started.
    pub fn start(endpoints: [&str; 2], seed: u64) -> Self {
        // Placeholders: the relays bind ports of the kernel's choosing and the nodes are pointed
        // at the proxies below.
        let ex = Exercise::with_relays(
            &endpoints,
            &[
                (RELAY_NAMES[0], "127.0.0.1:1"),
                (RELAY_NAMES[1], "127.0.0.1:2"),
            ],
        );
        let slot = |i: usize| {
            let config = ex.path(&format!("relay-{}.toml", i + 1));
            let relay = ex
                .launcher
                .start_relay(
                    &config,
                    LOOPBACK_ANY,
                    &ex.next_log(&format!("relay-{}", i + 1)),
                )
                .unwrap();
            let proxy = Proxy::start(relay.addr, seed.wrapping_add(i as u64)).unwrap();
            Slot {
                config,
                data: ex.path(&format!("data/relay-{}", i + 1)),
                addr: relay.addr,
                proxy,
                process: Mutex::new(Some(relay.process)),
            }
        };
        let slots = [slot(0), slot(1)];
        for e in endpoints {
            ex.edit_config(e, |t| {
                let relays = t
                    .get_mut("relays")
                    .and_then(toml::Value::as_array_mut)
                    .expect("[[relays]] in a two-relay node config");
                for (r, s) in relays.iter_mut().zip(&slots) {
                    r.as_table_mut()
                        .expect("a [[relays]] table")
                        .insert("addr".into(), s.proxy.addr().to_string().into());
                }
            });
        }
        for (i, s) in slots.iter().enumerate() {
            eprintln!(
                "relay {} at {} behind proxy {}",
                RELAY_NAMES[i],
                s.addr,
                s.proxy.addr()
            );
        }
        Self { ex, slots }
    }

    /// The proxy in front of relay `i` (0 or 1).
    pub fn proxy(&self, i: usize) -> &Proxy {
        &self.slots[i].proxy
    }

    /// Sets the same impairment on both directions of both proxies.
    pub fn impair_all(&self, imp: Impairment) {
        for s in &self.slots {
            s.proxy.set(imp);
        }
    }

    /// SIGKILLs relay `i` (and reaps it).
    pub fn kill_relay(&self, i: usize) {
        if let Some(mut p) = self.slots[i].process.lock().unwrap().take() {
            p.kill();
        }
    }

    /// Starts relay `i` again on its address and data dir (killing it first if it runs).
    pub fn restart_relay(&self, i: usize) {
        self.kill_relay(i);
        let s = &self.slots[i];
        let relay = self
            .ex
            .launcher
            .start_relay(
                &s.config,
                s.addr,
                &self.ex.next_log(&format!("relay-{}", i + 1)),
            )
            .unwrap();
        assert_eq!(relay.addr, s.addr, "relay {i} came back elsewhere");
        *s.process.lock().unwrap() = Some(relay.process);
    }

    /// SIGKILLs relay `i`, empties its data dir (its store is lost) and starts it again on its
    /// address.
    pub fn restart_relay_empty(&self, i: usize) {
        self.kill_relay(i);
        let data = &self.slots[i].data;
        std::fs::remove_dir_all(data).unwrap();
        std::fs::create_dir_all(data).unwrap();
        self.restart_relay(i);
        // The relay reports its queue as it starts: nothing may have survived.
        let log = self.slots[i]
            .process
            .lock()
            .unwrap()
            .as_ref()
            .unwrap()
            .log();
        let line = log.lines().find(|l| l.contains("relay listening")).unwrap();
        assert_eq!(log_field(line, "queued"), Some("0"), "{line}");
    }

    /// Waits until `endpoint` reports relay `i` connected (`true`) or not.
    pub async fn wait_relay(&self, endpoint: &str, i: usize, connected: bool) -> StatusView {
        let what = format!(
            "relay {} {}",
            RELAY_NAMES[i],
            if connected {
                "connected"
            } else {
                "disconnected"
            }
        );
        self.wait_status(endpoint, &what, |s| {
            s.relays
                .iter()
                .find(|r| r.name == RELAY_NAMES[i])
                .is_some_and(|r| r.connected == connected)
        })
        .await
    }

    /// Waits until both `endpoints` report their link up and both relays connected.
    pub async fn wait_all_up(&self, endpoints: &[&str]) {
        self.wait_links_up(endpoints).await;
        for e in endpoints {
            for i in 0..2 {
                self.wait_relay(e, i, true).await;
            }
        }
    }

    /// Starts the two endpoint nodes and waits until both have their link up over both relays.
    pub async fn start_nodes(&self, a: &str, b: &str) -> [Process; 2] {
        let pa = self.start_node(a);
        let pb = self.start_node(b);
        self.wait_all_up(&[a, b]).await;
        [pa, pb]
    }
}

/// The history check: waits (up to `within`) until every message in `sent` (ids with
/// precedences, in send order) is in `endpoint`'s inbox, then checks that none is there twice and
/// that the ordering rule held. Returns the inbox.
pub async fn check_history(
    ex: &Exercise,
    endpoint: &str,
    sent: &[(String, Precedence)],
    within: Duration,
) -> Vec<hotline_client::control::InboxEntry> {
    assert!(!sent.is_empty(), "nothing was sent");
    let deadline = Instant::now() + within;
    let inbox = loop {
        let inbox = ex.inbox(endpoint).await;
        let have: std::collections::BTreeSet<&str> = inbox.iter().map(|m| m.id.as_str()).collect();
        let missing: Vec<&String> = sent
            .iter()
            .map(|(id, _)| id)
            .filter(|id| !have.contains(id.as_str()))
            .collect();
        if missing.is_empty() {
            break inbox;
        }
        assert!(
            Instant::now() < deadline,
            "{endpoint}: {} of {} sent messages never arrived, e.g. {:?}",
            missing.len(),
            sent.len(),
            &missing[..missing.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    if let Err(e) = check_order(sent, &inbox) {
        panic!("{endpoint}: {e}");
    }
    inbox
}

/// Whether the long versions were asked for (`HOTLINE_SOAK=1`, as `make soak` does).
pub fn soak() -> bool {
    std::env::var("HOTLINE_SOAK").is_ok()
}

/// `HOTLINE_SEED` if set, else the clock; printed so a failing run can be replayed.
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("HOTLINE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("{test}: seed {seed}; replay with HOTLINE_SEED={seed}");
    seed
}
