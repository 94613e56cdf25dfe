//! Latency statistics: HDR histograms per ack level and precedence, and the numbers the report
//! quotes from them.
//!
//! - [`Level`]: `accepted`, `delivered`, `round_trip`, `acknowledged`.
//! - [`Group`]: `all` plus one per precedence; every sample lands in `all` and in its own.
//! - [`LatencyStats`]: the 4 × 5 histograms, in microseconds from 1 µs to one hour at three
//!   significant digits; larger values are clamped to the top rather than dropped, so an
//!   outlier still counts.
//! - [`Summary`]: `count`, `p50`, `p90`, `p99`, `p999`, `max`, as the JSON report spells them.
//!
//! It measures nothing itself: callers record latencies already taken from each message's
//! intended send time (see [`crate::schedule`]).

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use hotline_proto::Precedence;
use serde::{Deserialize, Serialize};

/// Largest recordable latency: one hour, in microseconds.
pub const MAX_LATENCY_US: u64 = 3_600_000_000;

/// An ack level whose latency is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// The relay holds it: the sender node's time of the `accepted` report.
    Accepted,
    /// The partner stored it: the partner's signed receipt time.
    Delivered,
    /// The `delivered` receipt is back at the bench, through the sender node.
    RoundTrip,
    /// The partner's operator (the bench's auto-ack) acknowledged it, seen at the bench.
    Acknowledged,
}

impl Level {
    /// All four, in report order.
    pub const ALL: [Self; 4] = [
        Self::Accepted,
        Self::Delivered,
        Self::RoundTrip,
        Self::Acknowledged,
    ];

    /// The JSON key.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Delivered => "delivered",
            Self::RoundTrip => "round_trip",
            Self::Acknowledged => "acknowledged",
        }
    }
}

/// `all`, or one precedence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group {
    /// Every sample of the level.
    All,
    /// The samples of one precedence.
    Only(Precedence),
}

impl Group {
    /// `all`, then routine up to flash.
    pub const ALL: [Self; 5] = [
        Self::All,
        Self::Only(Precedence::Routine),
        Self::Only(Precedence::Priority),
        Self::Only(Precedence::Immediate),
        Self::Only(Precedence::Flash),
    ];

    /// The JSON key.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::Only(p) => p.as_str(),
        }
    }

    fn slot(self) -> usize {
        match self {
            Self::All => 0,
            Self::Only(p) => 1 + p.index(),
        }
    }
}

/// The figures quoted for one histogram, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest sample.
    pub max: u64,
}

impl Summary {
    /// Extracts the figures from a histogram; all zero when it is empty.
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// A fresh latency histogram (1 µs .. 1 h, three significant digits).
pub fn histogram() -> Histogram<u64> {
    // Bounds and precision are constants that `new_with_bounds` accepts (low ≥ 1,
    // high ≥ 2 × low, sigfig ≤ 5), so this cannot fail.
    #[expect(clippy::expect_used, reason = "constant bounds; see above")]
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

/// Records `us` into `h`, clamped to the histogram's range.
pub fn record(h: &mut Histogram<u64>, us: u64) {
    h.saturating_record(us.clamp(1, MAX_LATENCY_US));
}

/// Latency histograms per ack level and group.
#[derive(Clone, Debug)]
pub struct LatencyStats {
    hists: [[Histogram<u64>; 5]; 4],
}

impl Default for LatencyStats {
    fn default() -> Self {
        Self {
            hists: std::array::from_fn(|_| std::array::from_fn(|_| histogram())),
        }
    }
}

impl LatencyStats {
    /// Records one sample into `all` and into its precedence.
    pub fn record(&mut self, level: Level, precedence: Precedence, us: u64) {
        let row = &mut self.hists[level as usize];
        record(&mut row[Group::All.slot()], us);
        record(&mut row[Group::Only(precedence).slot()], us);
    }

    /// One histogram.
    pub fn histogram(&self, level: Level, group: Group) -> &Histogram<u64> {
        &self.hists[level as usize][group.slot()]
    }

    /// The figures of one histogram.
    pub fn summary(&self, level: Level, group: Group) -> Summary {
        Summary::of(self.histogram(level, group))
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &Self) {
        for (mine, theirs) in self.hists.iter_mut().zip(&other.hists) {
            for (m, t) in mine.iter_mut().zip(theirs) {
                // Same bounds on both sides, so adding cannot fail.
                let _ = m.add(t);
            }
        }
    }

    /// The `latency_us` object of the JSON report: every level with samples, and within it
    /// `all` plus each precedence with samples.
    pub fn to_json(&self) -> BTreeMap<&'static str, BTreeMap<&'static str, Summary>> {
        let mut out = BTreeMap::new();
        for level in Level::ALL {
            if self.histogram(level, Group::All).is_empty() {
                continue;
            }
            let groups = Group::ALL
                .into_iter()
                .filter(|&g| g == Group::All || !self.histogram(level, g).is_empty())
                .map(|g| (g.as_str(), self.summary(level, g)))
                .collect();
            out.insert(level.as_str(), groups);
        }
        out
    }
}

/// Microseconds as milliseconds with three decimals, for tables.
pub fn ms(us: u64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_uniform_distribution() {
        let mut h = histogram();
        for v in 1..=10_000 {
            record(&mut h, v);
        }
        let s = Summary::of(&h);
        assert_eq!(s.count, 10_000);
        // Three significant digits: within 0.1 % of the exact rank.
        let near = |got: u64, want: u64| (got as f64 - want as f64).abs() <= want as f64 * 0.001;
        assert!(near(s.p50, 5_000), "{s:?}");
        assert!(near(s.p90, 9_000), "{s:?}");
        assert!(near(s.p99, 9_900), "{s:?}");
        assert!(near(s.p999, 9_990), "{s:?}");
        assert!(near(s.max, 10_000), "{s:?}");
    }

    #[test]
    fn a_single_outlier_shows_only_in_the_tail() {
        let mut h = histogram();
        for _ in 0..999 {
            record(&mut h, 1_000);
        }
        record(&mut h, 500_000);
        let s = Summary::of(&h);
        assert_eq!((s.p50, s.p90, s.p99), (1_000, 1_000, 1_000));
        assert!(s.max >= 500_000 && s.max <= 500_500, "{s:?}");
        // p99.9 is the 999th of 1000 samples: still the common value.
        assert_eq!(s.p999, 1_000);
    }

    #[test]
    fn out_of_range_samples_are_clamped_not_dropped() {
        let mut h = histogram();
        record(&mut h, 0);
        record(&mut h, u64::MAX);
        assert_eq!(h.len(), 2);
        assert_eq!(h.min(), 1);
        assert!(h.max() >= MAX_LATENCY_US);
    }

    #[test]
    fn empty_summary_is_zero() {
        assert_eq!(Summary::of(&histogram()), Summary::default());
    }

    #[test]
    fn samples_land_in_all_and_their_precedence() {
        let mut s = LatencyStats::default();
        s.record(Level::RoundTrip, Precedence::Flash, 100);
        s.record(Level::RoundTrip, Precedence::Routine, 300);
        s.record(Level::Accepted, Precedence::Routine, 50);
        assert_eq!(s.summary(Level::RoundTrip, Group::All).count, 2);
        assert_eq!(
            s.summary(Level::RoundTrip, Group::Only(Precedence::Flash))
                .max,
            100
        );
        let json = s.to_json();
        assert_eq!(
            json.keys().copied().collect::<Vec<_>>(),
            ["accepted", "round_trip"]
        );
        assert_eq!(
            json["round_trip"].keys().copied().collect::<Vec<_>>(),
            ["all", "flash", "routine"]
        );
        let mut merged = LatencyStats::default();
        merged.merge(&s);
        merged.merge(&s);
        assert_eq!(merged.summary(Level::RoundTrip, Group::All).count, 4);
    }
}
