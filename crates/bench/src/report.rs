//! What a run tells people: the `--json` document, the final table on stdout, and figures
//! formatted for both.
//!
//! The JSON schema is stable; the fields the issue names are always there, more may follow:
//!
//! ```text
//! {"scenario": "baseline", "params": {...},
//!  "counts": {"sent": N, "accepted": N, "delivered": N, "lost": 0, "duplicated": 0,
//!             "order_violations": 0, ...},
//!  "throughput_msgs_per_s": X,
//!  "latency_us": {"accepted" | "delivered" | "round_trip" | "acknowledged":
//!                  {"all" | "routine" | "priority" | "immediate" | "flash":
//!                    {"count": N, "p50": X, "p90": X, "p99": X, "p999": X, "max": X}}},
//!  "relay_rss_bytes": N, ...}
//! ```
//!
//! A level appears when it has samples; within it `all` always, and each precedence that has
//! samples. `relay_rss_bytes` is `null` when the relay's pid is unknown (`--relay` without
//! `--relay-pid`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::driver::{Counts, PhaseResult};
use crate::stats::{Group, LatencyStats, Level, Summary, ms};

/// The `--json` document.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// `baseline`, `flood`, `scale`, `neighbours`, `soak` or `floor`.
    pub scenario: String,
    /// Every option the run used.
    pub params: Value,
    /// Message counts.
    pub counts: Counts,
    /// `delivered` receipts reaching the bench per second, from the end of the warm-up to the
    /// end of sending.
    pub throughput_msgs_per_s: f64,
    /// Latency figures in microseconds.
    pub latency_us: BTreeMap<&'static str, BTreeMap<&'static str, Summary>>,
    /// The relay's resident memory at the end of sending.
    pub relay_rss_bytes: Option<u64>,
    /// When the run started (RFC 3339, UTC).
    pub date: String,
    /// The command line.
    pub command: String,
    /// Zero lost, duplicated, out of order and unconfirmed.
    pub ok: bool,
    /// Scenario-specific fields.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Report {
    /// A report of one phase's figures.
    pub fn new(scenario: &str, params: Value, phase: &PhaseResult, date: &str) -> Self {
        Self {
            scenario: scenario.into(),
            params,
            counts: phase.counts.clone(),
            throughput_msgs_per_s: round2(phase.throughput),
            latency_us: phase.stats.to_json(),
            relay_rss_bytes: phase.relay_rss_bytes,
            date: date.into(),
            command: command_line(),
            ok: phase.counts.correct(),
            extra: Map::new(),
        }
    }

    /// Adds a scenario-specific field.
    pub fn with(mut self, key: &str, value: impl Serialize) -> Self {
        self.extra.insert(
            key.into(),
            serde_json::to_value(value).unwrap_or(Value::Null),
        );
        self
    }
}

/// The phase's own figures, for `phases` arrays.
pub fn phase_json(p: &PhaseResult) -> Value {
    serde_json::json!({
        "name": p.name,
        "counts": p.counts,
        "throughput_msgs_per_s": round2(p.throughput),
        "throughput_by_precedence_msgs_per_s": p.throughput_by_precedence,
        "offered_rate_msgs_per_s": round2(p.offered_rate),
        "sent_rate_msgs_per_s": round2(p.sent_rate),
        "drained": p.drained,
        "latency_us": p.stats.to_json(),
        "hops_us": p.hops.to_json(),
        "relay_rss_bytes": p.relay_rss_bytes,
        "cpu_cores": p.cpu_cores,
        "queues": p.queues,
        "first_violation": p.first_violation,
        "first_error": p.first_error,
    })
}

/// Rounds to two decimals.
pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The process's command line, space-separated.
pub fn command_line() -> String {
    std::env::args().collect::<Vec<_>>().join(" ")
}

/// Now, RFC 3339 UTC to the second.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// Bytes as mebibytes with one decimal.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Bytes as kibibytes with one decimal.
pub fn kib(bytes: f64) -> String {
    format!("{:.1} KiB", bytes / 1024.0)
}

/// The counts line.
pub fn counts_line(c: &Counts) -> String {
    format!(
        "sent {}  stored {}  accepted {}  delivered {}  acknowledged {}  refused {}  failed {}  \
         lost {}  duplicated {}  order violations {}  unconfirmed {}",
        c.sent,
        c.stored,
        c.accepted,
        c.delivered,
        c.acknowledged,
        c.refused,
        c.failed,
        c.lost,
        c.duplicated,
        c.order_violations,
        c.unconfirmed
    )
}

/// The latency table: one row per level and group with samples, in milliseconds.
pub fn latency_table(stats: &LatencyStats) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<14} {:<10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "latency (ms)", "precedence", "count", "p50", "p90", "p99", "p99.9", "max"
    );
    for level in Level::ALL {
        for group in Group::ALL {
            let s = stats.summary(level, group);
            if s.count == 0 {
                continue;
            }
            let _ = writeln!(out, "{}", row(level.as_str(), group.as_str(), &s));
        }
    }
    out
}

/// One table row.
pub fn row(level: &str, group: &str, s: &Summary) -> String {
    format!(
        "{:<14} {:<10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        level,
        group,
        s.count,
        ms(s.p50),
        ms(s.p90),
        ms(s.p99),
        ms(s.p999),
        ms(s.max)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::Queues;
    use hotline_proto::Precedence;

    fn phase() -> PhaseResult {
        let mut stats = LatencyStats::default();
        for us in [100, 200, 300] {
            stats.record(Level::Accepted, Precedence::Routine, us);
            stats.record(Level::Delivered, Precedence::Flash, us * 2);
            stats.record(Level::RoundTrip, Precedence::Flash, us * 3);
        }
        PhaseResult {
            name: "baseline".into(),
            stats,
            counts: Counts {
                sent: 3,
                stored: 3,
                accepted: 3,
                delivered: 3,
                ..Counts::default()
            },
            throughput: 1000.0 / 3.0,
            throughput_by_precedence: Default::default(),
            offered_rate: 1000.0,
            sent_rate: 1000.0,
            series: Vec::new(),
            intervals: Vec::new(),
            queues: Queues::default(),
            first_violation: None,
            first_error: None,
            drained: true,
            relay_rss_bytes: Some(4096),
            cpu_cores: Default::default(),
            hops: Default::default(),
        }
    }

    /// The schema the issue fixes: these keys, these types.
    #[test]
    fn json_has_the_stable_schema() {
        let r = Report::new(
            "baseline",
            serde_json::json!({"rate": 1000}),
            &phase(),
            "2026-01-01T00:00:00Z",
        )
        .with("phases", vec![phase_json(&phase())]);
        let v: Value = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(v["scenario"], "baseline");
        assert!(v["params"].is_object());
        for k in [
            "sent",
            "accepted",
            "delivered",
            "lost",
            "duplicated",
            "order_violations",
        ] {
            assert!(v["counts"][k].is_u64(), "counts.{k}");
        }
        assert!(v["throughput_msgs_per_s"].is_f64());
        assert_eq!(v["throughput_msgs_per_s"], 333.33);
        assert_eq!(v["relay_rss_bytes"], 4096);
        let lat = v["latency_us"].as_object().unwrap();
        assert_eq!(
            lat.keys().collect::<Vec<_>>(),
            ["accepted", "delivered", "round_trip"]
        );
        for (level, groups) in lat {
            let groups = groups.as_object().unwrap();
            assert!(groups.contains_key("all"), "{level}");
            for (g, s) in groups {
                assert!(
                    ["all", "routine", "priority", "immediate", "flash"].contains(&g.as_str()),
                    "{g}"
                );
                for k in ["count", "p50", "p90", "p99", "p999", "max"] {
                    assert!(s[k].is_u64(), "{level}.{g}.{k}");
                }
            }
        }
        assert_eq!(v["latency_us"]["round_trip"]["flash"]["count"], 3);
        assert_eq!(v["latency_us"]["round_trip"]["all"]["max"], 900);
        assert!(v["latency_us"]["round_trip"].get("routine").is_none());
        assert_eq!(v["phases"][0]["name"], "baseline");
        assert_eq!(v["ok"], true);
    }

    #[test]
    fn unknown_relay_memory_is_null() {
        let mut p = phase();
        p.relay_rss_bytes = None;
        let v = serde_json::to_value(Report::new("floor", Value::Null, &p, "")).unwrap();
        assert!(v["relay_rss_bytes"].is_null());
    }

    #[test]
    fn table_lists_levels_with_samples() {
        let t = latency_table(&phase().stats);
        assert!(t.contains("accepted") && t.contains("round_trip"), "{t}");
        assert!(!t.contains("acknowledged"), "{t}");
        assert!(t.contains("0.900"), "{t}");
    }
}
