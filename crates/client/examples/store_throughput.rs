//! Durable append throughput of the node store, with and without group commit.
//!
//! `cargo run --release -p hotline-client --example store_throughput -- [RECORDS] [DIR]`
//!
//! Appends RECORDS outbox records (256-byte bodies, plus their audit entries) to a fresh
//! store, first one commit (one fsync) per record, then in groups of 16, 64 and 256 records
//! per commit — what the node's store thread does under load — and prints records/s.
#![expect(
    clippy::unwrap_used,
    clippy::print_stdout,
    reason = "an example: it prints its figures and stops at the first error"
)]

use std::time::Instant;

use hotline_client::store::{Batch, Store};
use hotline_proto::engine::Record;
use hotline_proto::types::Time;
use hotline_proto::{MessageId, Precedence, Seq};

fn record(i: u64) -> Record {
    Record::Outgoing {
        id: MessageId {
            sender: "us".parse().unwrap(),
            channel: Default::default(),
            precedence: Precedence::Routine,
            seq: Seq(i + 1),
        },
        after: [i, 0, 0, 0],
        sent_at: Time(i),
        body: Some(vec![0x5a; 256]),
        envelope: None,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(2000);
    let base = args
        .get(2)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    println!("{n} records of ~300 B, store under {}", base.display());
    println!(
        "{:>12} {:>12} {:>14} {:>12}",
        "per commit", "commits", "records/s", "ms/commit"
    );
    for group in [1u64, 16, 64, 256] {
        let dir = tempfile::tempdir_in(&base).unwrap();
        let (mut store, _) = Store::open(dir.path()).unwrap();
        let start = Instant::now();
        let mut i = 0;
        let mut commits = 0;
        while i < n {
            let batch = Batch {
                records: (i..(i + group).min(n)).map(record).collect(),
                ..Batch::default()
            };
            store.commit(&batch, Time(i)).unwrap();
            i += group;
            commits += 1;
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{group:>12} {commits:>12} {:>14.0} {:>12.2}",
            n as f64 / secs,
            secs * 1000.0 / commits as f64
        );
    }
}
