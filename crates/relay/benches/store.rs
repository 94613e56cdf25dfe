//! Store throughput: commits and envelopes per second, one commit per envelope versus the
//! group-commit loop the relay runs.
//!
//! `cargo bench -p hotline-relay --bench store` (release build, a real file under
//! `target/tmp`, every commit fsynced). Envelopes are 1 KiB frames for one destination.
//!
//! - `one commit per envelope`: `Store::commit` with one insert, in a loop;
//! - `group commit, window W`: a producer thread keeps at most W writes waiting (W senders each
//!   waiting for their `Accepted` before the next one); the writer thread runs
//!   `store::group_commit`, which commits whatever queued during the previous commit;
//! - `group commit, open loop`: the producer never waits.
//!
//! Environment: `HOTLINE_BENCH_ENVELOPES` (default 20000) for the group-commit runs;
//! one-per-envelope runs a tenth of that (at least 200).

#![expect(
    clippy::unwrap_used,
    reason = "a bench fails loudly on any setup or store error"
)]

use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hotline_proto::{EndpointId, Precedence, Time};
use hotline_relay::router::{CommitId, StoreOp, StoredEnvelope, WriteClass};
use hotline_relay::store::{self, Request, Store};

const ENVELOPE_BYTES: usize = 1024;

fn put(order: u64, frame: &Bytes, destination: &EndpointId) -> StoreOp {
    StoreOp::PutEnvelope(StoredEnvelope {
        order,
        destination: destination.clone(),
        lane: Precedence::Routine,
        queued_at: Time(order),
        bytes: frame.clone(),
    })
}

struct Run {
    name: String,
    envelopes: u64,
    commits: u64,
    elapsed: Duration,
}

impl Run {
    #[expect(clippy::print_stdout, reason = "the bench reports on stdout")]
    fn print(&self) {
        let secs = self.elapsed.as_secs_f64();
        println!(
            "{:<34} {:>7} envelopes {:>6} commits in {:>7.3} s: {:>9.0} commits/s {:>9.0} envelopes/s (mean batch {:.1})",
            self.name,
            self.envelopes,
            self.commits,
            secs,
            self.commits as f64 / secs,
            self.envelopes as f64 / secs,
            self.envelopes as f64 / self.commits as f64,
        );
    }
}

fn one_commit_per_envelope(n: u64) -> Run {
    let base = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = tempfile::tempdir_in(base).unwrap();
    let (mut store, _) = Store::open(dir.path()).unwrap();
    let destination = EndpointId::new("jp").unwrap();
    let frame = Bytes::from(vec![0x5A; ENVELOPE_BYTES]);
    let start = Instant::now();
    for order in 0..n {
        store.commit(&[put(order, &frame, &destination)]).unwrap();
    }
    Run {
        name: "one commit per envelope".into(),
        envelopes: n,
        commits: store.commits(),
        elapsed: start.elapsed(),
    }
}

/// `window`: most writes waiting for their commit at once; `None`: no limit.
fn group_commit(n: u64, window: Option<u64>) -> Run {
    let base = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = tempfile::tempdir_in(base).unwrap();
    let (mut store, _) = Store::open(dir.path()).unwrap();
    let (tx, rx) = mpsc::channel();
    // The last committed write id, for the producer's window.
    let committed = Arc::new((Mutex::new(0u64), Condvar::new()));
    let start = Instant::now();
    let writer = {
        let committed = committed.clone();
        std::thread::spawn(move || {
            store::group_commit(&mut store, &rx, |c| {
                let (lock, cv) = &*committed;
                // Every write here is bulk (routine), so commits come in issue order.
                if let Some(last) = c.writes.last() {
                    *lock.lock().unwrap() = last.0;
                }
                cv.notify_all();
            })
            .unwrap();
            store.commits()
        })
    };
    let destination = EndpointId::new("jp").unwrap();
    let frame = Bytes::from(vec![0x5A; ENVELOPE_BYTES]);
    for order in 0..n {
        let id = order + 1;
        if let Some(window) = window {
            let (lock, cv) = &*committed;
            let mut done = lock.lock().unwrap();
            while id - *done > window {
                done = cv.wait(done).unwrap();
            }
        }
        tx.send(Request::Write {
            id: CommitId(id),
            class: WriteClass::Bulk,
            ops: vec![put(order, &frame, &destination)],
        })
        .unwrap();
    }
    tx.send(Request::Stop).unwrap();
    let commits = writer.join().unwrap();
    Run {
        name: match window {
            Some(w) => format!("group commit, window {w}"),
            None => "group commit, open loop".into(),
        },
        envelopes: n,
        commits,
        elapsed: start.elapsed(),
    }
}

#[expect(clippy::print_stdout, reason = "the bench reports on stdout")]
fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this too, so keep that short.
    let benching = std::env::args().any(|a| a == "--bench");
    let n: u64 = std::env::var("HOTLINE_BENCH_ENVELOPES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if benching { 20_000 } else { 200 });
    println!(
        "relay store: {ENVELOPE_BYTES}-byte envelopes, fsync on every commit, under {}",
        env!("CARGO_TARGET_TMPDIR")
    );
    one_commit_per_envelope((n / 10).max(200)).print();
    for window in [Some(1), Some(16), Some(64), Some(256), None] {
        group_commit(n, window).print();
    }
}
