//! Where a round trip goes: each measured message's time split at the hops its stamps mark.
//!
//! The stamps, all on the machine's one clock (every process is on loopback):
//! - `stored`: the sender node's control server heard the outbox write committed (`stored`
//!   event `seen_us`; its `at` is the submission time);
//! - `at receiver`: the receiving node's engine took the envelope (the signed `delivered`
//!   receipt's time);
//! - `durable`: the receiving node's inbox write committed (`durable_us` of the live
//!   `inbox --follow` line);
//! - `seen`: the sender node's control server got the `delivered` report (`seen_us`);
//! - `bench`: the bench read that report.
//!
//! Each hop is the difference of two consecutive stamps (the first is from the intended send
//! time), so the hops of a message add up to its round trip:
//! `submit→stored` (control socket, engine, sender fsync), `stored→receiver` (engine, stream
//! writer, relay, receiving engine's queue), `receiver store` (its fsync), `receipt back`
//! (receiving engine, relay, sending engine) and `report` (the sender's control socket).
//! Only messages with every stamp count.
//!
//! Caveats: `at receiver` is the cumulative `delivered` receipt's time, so a receipt that covers
//! several messages gives them all the time of its last; and `seen` is taken by the sender's
//! control server, after its engine loop, so on a busy node it can fall after `at receiver`
//! (that hop then counts as zero and the next one holds the difference).

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use hotline_proto::Precedence;

use crate::stats::{self, Summary};

/// The hops, in order.
pub const HOPS: [&str; 5] = [
    "submit→stored",
    "stored→receiver",
    "receiver store",
    "receipt back",
    "report",
];

/// Stamp slots in a message's [`Stamps`].
pub(super) const STORED: usize = 0;
pub(super) const AT_RECEIVER: usize = 1;
pub(super) const DURABLE: usize = 2;
pub(super) const SEEN: usize = 3;
pub(super) const BENCH: usize = 4;

const MISSING: u32 = u32::MAX;

/// A message's stamps, in microseconds after its intended send time (saturating at ~71 min).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Stamps([u32; 5]);

impl Default for Stamps {
    fn default() -> Self {
        Self([MISSING; 5])
    }
}

impl Stamps {
    /// Sets stamp `slot` to `us` after the intended time (0 if it was earlier).
    pub(super) fn set(&mut self, slot: usize, us: u64) {
        self.0[slot] = u32::try_from(us).unwrap_or(MISSING - 1);
    }

    /// Each hop's microseconds, if every stamp is there; a stamp earlier than the one before
    /// it (clock steps) counts as zero for that hop.
    pub(super) fn hops(&self) -> Option<[u64; 5]> {
        if self.0.contains(&MISSING) {
            return None;
        }
        let mut prev = 0u64;
        let mut out = [0u64; 5];
        for (hop, &t) in out.iter_mut().zip(&self.0) {
            let t = u64::from(t);
            *hop = t.saturating_sub(prev);
            prev = prev.max(t);
        }
        Some(out)
    }
}

/// Per precedence, a histogram per hop.
#[derive(Clone, Debug, Default)]
pub struct HopStats {
    by: BTreeMap<Precedence, [Histogram<u64>; 5]>,
}

impl HopStats {
    /// Records a message's hops, if it has every stamp.
    pub(super) fn record(&mut self, precedence: Precedence, stamps: &Stamps) {
        let Some(hops) = stamps.hops() else { return };
        let row = self
            .by
            .entry(precedence)
            .or_insert_with(|| std::array::from_fn(|_| stats::histogram()));
        for (h, us) in row.iter_mut().zip(hops) {
            stats::record(h, us);
        }
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.by.is_empty()
    }

    /// `hops_us.PRECEDENCE.HOP` summaries for the JSON report.
    pub fn to_json(&self) -> BTreeMap<&'static str, BTreeMap<&'static str, Summary>> {
        self.by
            .iter()
            .map(|(p, row)| {
                let hops = HOPS
                    .iter()
                    .zip(row)
                    .map(|(name, h)| (*name, Summary::of(h)))
                    .collect();
                (p.as_str(), hops)
            })
            .collect()
    }

    /// The table: per precedence, each hop's p50 / p99 / p99.9 in milliseconds.
    pub fn table(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<18} {:<10} {:>9} {:>9} {:>9} {:>9}",
            "where (ms)", "precedence", "count", "p50", "p99", "p99.9"
        );
        for (p, row) in &self.by {
            for (name, h) in HOPS.iter().zip(row) {
                let s = Summary::of(h);
                let _ = writeln!(
                    out,
                    "{:<18} {:<10} {:>9} {:>9} {:>9} {:>9}",
                    name,
                    p.as_str(),
                    s.count,
                    stats::ms(s.p50),
                    stats::ms(s.p99),
                    stats::ms(s.p999),
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hops_are_the_gaps_between_consecutive_stamps_and_add_up_to_the_last() {
        let mut s = Stamps::default();
        for (slot, us) in [(STORED, 400), (AT_RECEIVER, 900), (DURABLE, 1200)] {
            s.set(slot, us);
        }
        assert_eq!(s.hops(), None, "incomplete until every stamp is in");
        s.set(SEEN, 1500);
        s.set(BENCH, 1600);
        let hops = s.hops().unwrap();
        assert_eq!(hops, [400, 500, 300, 300, 100]);
        assert_eq!(hops.iter().sum::<u64>(), 1600);
    }

    #[test]
    fn a_stamp_before_the_previous_one_counts_zero_and_the_sum_still_holds() {
        let mut s = Stamps::default();
        for (slot, us) in [(STORED, 400), (AT_RECEIVER, 300), (DURABLE, 700)] {
            s.set(slot, us);
        }
        s.set(SEEN, 800);
        s.set(BENCH, 900);
        assert_eq!(s.hops().unwrap(), [400, 0, 300, 100, 100]);
    }

    #[test]
    fn stats_are_kept_per_precedence_and_hop() {
        let mut stats = HopStats::default();
        let mut s = Stamps::default();
        for (slot, us) in [(0, 1000), (1, 2000), (2, 3000), (3, 4000), (4, 5000)] {
            s.set(slot, us);
        }
        stats.record(Precedence::Flash, &s);
        stats.record(Precedence::Routine, &Stamps::default());
        let json = stats.to_json();
        assert_eq!(json.len(), 1, "an incomplete message is not recorded");
        let flash = &json["flash"];
        assert_eq!(flash["submit→stored"].count, 1);
        assert!(flash["report"].p50 >= 999 && flash["report"].p50 <= 1001);
        assert!(stats.table().contains("receiver store"));
    }
}
