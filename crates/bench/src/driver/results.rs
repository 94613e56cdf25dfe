//! What a phase measured: counts, the per-second series, soak snapshots, queue depths, and
//! the [`PhaseResult`] that carries them to the report.
//!
//! Plain data: filled in by the driver's tasks, read by [`crate::report`] and the scenarios.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::cluster::CpuTimes;
use crate::stats::{LatencyStats, Summary};

/// Message counts of a phase.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Counts {
    /// `send` requests written.
    pub sent: u64,
    /// Reported `stored` (in the sender's outbox).
    pub stored: u64,
    /// Reported `accepted` by the relay.
    pub accepted: u64,
    /// Reported `delivered` (signed receipt back at the sender).
    pub delivered: u64,
    /// Reported `acknowledged`.
    pub acknowledged: u64,
    /// Messages refused at least once by the relay (back-pressure; kept and retried), or
    /// refused at submission.
    pub refused: u64,
    /// Requests that ended with an error.
    pub failed: u64,
    /// Stored but not in the receiver's inbox after the drain.
    pub lost: u64,
    /// Delivered to the receiver's inbox more than once.
    pub duplicated: u64,
    /// Deliveries that broke the ordering rule.
    pub order_violations: u64,
    /// In the inbox after the drain, but no `delivered` receipt reached the sender.
    pub unconfirmed: u64,
    /// In the inbox, tagged with this run, but never reported stored.
    pub unexpected: u64,
}

impl Counts {
    /// Adds another phase's counts.
    pub fn add(&mut self, o: &Self) {
        self.sent += o.sent;
        self.stored += o.stored;
        self.accepted += o.accepted;
        self.delivered += o.delivered;
        self.acknowledged += o.acknowledged;
        self.refused += o.refused;
        self.failed += o.failed;
        self.lost += o.lost;
        self.duplicated += o.duplicated;
        self.order_violations += o.order_violations;
        self.unconfirmed += o.unconfirmed;
        self.unexpected += o.unexpected;
    }

    /// Nothing lost, duplicated, out of order or unconfirmed.
    pub fn correct(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.order_violations == 0
            && self.unconfirmed == 0
    }
}

/// One second of a phase.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Point {
    /// Seconds since the phase started.
    pub t_s: f64,
    /// Sends in this second.
    pub sent: u64,
    /// `delivered` reports in this second.
    pub delivered: u64,
    /// Requests not finished.
    pub in_flight: u64,
    /// Round trips completed in this second (warm-up included).
    pub round_trip: Summary,
    /// Flash round trips completed in this second.
    pub flash_round_trip: Summary,
}

/// A soak snapshot.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Interval {
    /// Seconds since the phase started.
    pub t_s: f64,
    /// Round trips completed in the interval.
    pub round_trip: Summary,
    /// `delivered` receipts reaching the bench since the phase started (warm-up included), for
    /// memory growth per message.
    pub delivered_total: u64,
    /// Relay memory at the end of the interval.
    pub relay_rss_bytes: Option<u64>,
    /// Node memory (processes, or the bench with in-process nodes).
    pub nodes_rss_bytes: Option<u64>,
}

/// Largest queue depths seen.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Queues {
    /// Relay: frames queued per stream (`control`, `flash`, …, `routine`).
    pub relay_queued_frames_max: BTreeMap<String, u64>,
    /// First pair's sender node: messages not yet accepted, per lane.
    pub sender_unaccepted_max: BTreeMap<String, u64>,
    /// First pair's sender node: messages not yet delivered, per lane.
    pub sender_undelivered_max: BTreeMap<String, u64>,
    /// Longest time the first sender node took to answer `status`: its operator commands
    /// wait in one queue, so this is how long any command (a flash too) waits there.
    pub sender_status_ms_max: f64,
    /// `status` requests that got no answer within 2 s.
    pub sender_status_timeouts: u64,
}

/// What a phase measured.
#[derive(Clone, Debug)]
pub struct PhaseResult {
    /// Phase name.
    pub name: String,
    /// Latencies of measured messages.
    pub stats: LatencyStats,
    /// Counts.
    pub counts: Counts,
    /// `delivered` receipts reaching the bench per second, from the end of the warm-up to the
    /// end of sending.
    pub throughput: f64,
    /// The same, per precedence.
    pub throughput_by_precedence: BTreeMap<String, f64>,
    /// Offered rate (sum of flows), messages per second.
    pub offered_rate: f64,
    /// Rate the bench actually wrote, messages per second.
    pub sent_rate: f64,
    /// Per second.
    pub series: Vec<Point>,
    /// Soak snapshots.
    pub intervals: Vec<Interval>,
    /// Queue depths.
    pub queues: Queues,
    /// First ordering problem, in words.
    pub first_violation: Option<String>,
    /// First failed request.
    pub first_error: Option<String>,
    /// Whether everything finished within the drain.
    pub drained: bool,
    /// Relay memory at the end of sending.
    pub relay_rss_bytes: Option<u64>,
    /// Cores used during sending and drain, per process kind.
    pub cpu_cores: CpuTimes,
    /// Where measured messages' round trips went, per precedence and hop.
    pub hops: super::HopStats,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_and_judge() {
        let mut a = Counts {
            sent: 2,
            delivered: 2,
            ..Counts::default()
        };
        assert!(a.correct());
        a.add(&Counts {
            lost: 1,
            ..Counts::default()
        });
        assert_eq!(a.sent, 2);
        assert!(!a.correct());
    }
}
