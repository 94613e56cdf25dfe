//! `failover`: what losing a relay costs while traffic flows. Every node uses two relays (or
//! `--relays`, at least two), a steady open-loop load runs for `--duration`, and the first relay
//! is killed with `kill -9` at `--kill-at` (default: half-way). The round trips completed in
//! each second around the kill are compared with the steady state before it, and the run's
//! history check must find nothing lost or duplicated.
//!
//! Goal (issue 11, item 5): round-trip p99 in the failover seconds below the steady p99 plus
//! 1 s, and the largest round trip below 1.5 s.
//!
//! With `--partition SECS` no relay is killed: every path between the nodes and the relays
//! runs through an impairment proxy (`--impair`, none by default), and at `--kill-at` all of
//! them are cut for SECS, then healed. Reported: the backlog at the heal and how long after it
//! the nodes took to deliver it (issue 11, item 2: a healed link drains at link speed; goal:
//! within a few seconds).
//!
//! Output: the phase table, the per-second table around the kill and the verdict on stdout,
//! and the JSON report.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::Value;

use super::{finish, phase, plot_phase, print_phase, started_cluster};
use crate::cli::Options;
use crate::clock::Ticker;
use crate::driver::{Flow, Point, run_phase};
use crate::report::{Report, phase_json};
use crate::schedule::Mix;
use crate::stats::ms;

/// Goal: the failover seconds' round-trip p99 stays within this of the steady p99.
const GOAL_P99_EXTRA_US: u64 = 1_000_000;
/// Goal: no round trip in the failover seconds takes longer than this.
const GOAL_MAX_US: u64 = 1_500_000;
/// Seconds after the kill counted as the failover.
const FAILOVER_SECONDS: f64 = 2.0;

pub(super) async fn failover(
    opts: &Options,
    kill_at: Option<f64>,
    partition: Option<f64>,
    params: Value,
    date: &str,
    ticker: &Arc<Ticker>,
) -> Result<Report> {
    if let Some(secs) = partition {
        return partitioned(opts, kill_at, secs, params, date, ticker).await;
    }
    if opts.relay.is_some() {
        bail!("failover starts and kills its own relays: --relay does not apply");
    }
    let kill_at = kill_at.unwrap_or(opts.duration / 2.0);
    if !(kill_at > opts.warmup + 1.0 && kill_at + FAILOVER_SECONDS < opts.duration) {
        bail!(
            "--kill-at must leave at least 1 s of steady state after the warm-up and {FAILOVER_SECONDS} s of failover before the end of --duration ({} s)",
            opts.duration
        );
    }
    let mut with_relays = opts.clone();
    with_relays.relays = opts.relays.max(2);
    let mix = Mix::parse(&opts.mix)?;
    let cluster = started_cluster(&with_relays, opts.pairs).await?;
    let p = phase(
        "failover",
        opts,
        vec![Flow {
            rate: opts.rate,
            mix,
        }],
    );
    let started = Instant::now();
    let kill = async {
        tokio::time::sleep(Duration::from_secs_f64(kill_at)).await;
        eprintln!("[failover] kill -9 relay 1 of {}", cluster.relay_count());
        cluster.kill_relay(0).map(|()| started.elapsed())
    };
    let (result, killed) = tokio::join!(
        run_phase(&cluster, cluster.pairs(opts.pairs), &p, ticker, 0),
        kill
    );
    let mode = cluster.node_mode();
    let relays = cluster.relay_count();
    finish(cluster).await;
    let (result, killed) = (result?, killed?.as_secs_f64());

    print_phase(
        &format!(
            "failover: {} pair(s), {} msg/s, {} B, mix {mix}, {relays} relays, relay 1 killed at {killed:.1} s, nodes {mode:?}",
            opts.pairs, opts.rate, opts.size
        ),
        &result,
    );
    let split = Split::of(&result.series, opts.warmup, killed);
    println!("\nround trip per second (ms), around the kill at {killed:.1} s:");
    println!(
        "{:>7} {:>8} {:>9} {:>9} {:>9}",
        "t (s)", "count", "p50", "p99", "max"
    );
    for point in result
        .series
        .iter()
        .filter(|pt| pt.t_s > killed - 3.0 && pt.t_s <= killed + FAILOVER_SECONDS + 2.0)
    {
        let rt = &point.round_trip;
        println!(
            "{:>7.1} {:>8} {:>9} {:>9} {:>9}{}",
            point.t_s,
            rt.count,
            ms(rt.p50),
            ms(rt.p99),
            ms(rt.max),
            if split.is_failover(point.t_s) {
                "  <- failover"
            } else {
                ""
            }
        );
    }
    let verdict = split.verdict();
    println!(
        "\nsteady state (per second, before the kill): p99 median {} ms, worst {} ms; failover seconds: p99 {} ms, max {} ms",
        ms(split.steady_p99_median),
        ms(split.steady_p99_worst),
        ms(split.failover_p99),
        ms(split.failover_max)
    );
    println!(
        "goal: failover p99 < steady p99 (worst second) + 1 s and max < 1.5 s: {}; lost {}, duplicated {}",
        if verdict { "met" } else { "MISSED" },
        result.counts.lost,
        result.counts.duplicated
    );

    let mut report = Report::new("failover", params, &result, date)
        .with("relays", relays)
        .with("killed_at_s", killed)
        .with("steady_p99_median_us", split.steady_p99_median)
        .with("steady_p99_worst_us", split.steady_p99_worst)
        .with("failover_p99_us", split.failover_p99)
        .with("failover_max_us", split.failover_max)
        .with("goal_met", verdict)
        .with("series", &result.series)
        .with("phases", vec![phase_json(&result)]);
    report.ok = report.counts.correct();
    if let Some(path) = &opts.plot {
        plot_phase(
            path,
            &format!(
                "hotline-bench failover — {} msg/s, relay 1 of {relays} killed at {killed:.1} s, {date}",
                opts.rate
            ),
            &result,
            Vec::new(),
        )?;
    }
    Ok(report)
}

/// The partition variant: every path cut for `secs` at `cut_at`, then healed.
async fn partitioned(
    opts: &Options,
    cut_at: Option<f64>,
    secs: f64,
    params: Value,
    date: &str,
    ticker: &Arc<Ticker>,
) -> Result<Report> {
    let cut_at = cut_at.unwrap_or(opts.duration / 3.0);
    if !(secs > 0.0 && cut_at > opts.warmup + 1.0 && cut_at + secs < opts.duration) {
        bail!(
            "--partition must be positive and, from --kill-at ({cut_at} s), end before --duration ({} s), with 1 s of steady state after the warm-up",
            opts.duration
        );
    }
    let mut with_proxies = opts.clone();
    with_proxies.relays = opts.relays.max(2);
    // The paths need proxies to be cut: an unimpaired one unless --impair says otherwise.
    with_proxies.impair.get_or_insert_with(String::new);
    let mix = Mix::parse(&opts.mix)?;
    let cluster = started_cluster(&with_proxies, opts.pairs).await?;
    let p = phase(
        "partition",
        opts,
        vec![Flow {
            rate: opts.rate,
            mix,
        }],
    );
    let started = Instant::now();
    let cut = async {
        tokio::time::sleep(Duration::from_secs_f64(cut_at)).await;
        eprintln!("[partition] every path cut for {secs} s");
        cluster.blackout(true);
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        cluster.blackout(false);
        eprintln!("[partition] healed");
        started.elapsed().as_secs_f64()
    };
    let (result, healed) = tokio::join!(
        run_phase(&cluster, cluster.pairs(opts.pairs), &p, ticker, 0),
        cut
    );
    let mode = cluster.node_mode();
    let relays = cluster.relay_count();
    finish(cluster).await;
    let result = result?;
    print_phase(
        &format!(
            "partition: {} pair(s), {} msg/s, {} B, mix {mix}, {relays} relays{}, every path cut {cut_at:.1}–{healed:.1} s, nodes {mode:?}",
            opts.pairs,
            opts.rate,
            opts.size,
            opts.impair
                .as_deref()
                .map_or_else(String::new, |i| format!(", impaired {i}"))
        ),
        &result,
    );
    let drain = Drain::of(&result.series, opts.warmup, cut_at, healed);
    println!(
        "
per second around the heal at {healed:.1} s:"
    );
    println!(
        "{:>7} {:>6} {:>10} {:>10}",
        "t (s)", "sent", "delivered", "in flight"
    );
    for pt in result.series.iter().filter(|pt| {
        pt.t_s > healed - 2.0 && pt.t_s <= healed + drain.drained_after_s.max(3.0) + 2.0
    }) {
        println!(
            "{:>7.1} {:>6} {:>10} {:>10}",
            pt.t_s, pt.sent, pt.delivered, pt.in_flight
        );
    }
    println!(
        "
backlog at the heal: {} messages in flight (steady state: at most {}); drained {} after the heal; lost {}, duplicated {}",
        drain.backlog,
        drain.steady_in_flight,
        if drain.drained {
            format!("within {:.0} s", drain.drained_after_s)
        } else {
            "NOT within the run".to_owned()
        },
        result.counts.lost,
        result.counts.duplicated
    );
    let mut report = Report::new("failover", params, &result, date)
        .with("mode", "partition")
        .with("relays", relays)
        .with("impair", opts.impair.clone())
        .with("cut_at_s", cut_at)
        .with("healed_at_s", healed)
        .with("backlog_at_heal", drain.backlog)
        .with("drained", drain.drained)
        .with("drained_after_heal_s", drain.drained_after_s)
        .with("series", &result.series)
        .with("phases", vec![phase_json(&result)]);
    report.ok = report.counts.correct();
    Ok(report)
}

/// How a backlog built during a partition drained after the heal, from the per-second series.
#[derive(Debug, PartialEq)]
struct Drain {
    /// Messages in flight at the last second before the heal.
    backlog: u64,
    /// The most messages in flight in any steady second before the cut.
    steady_in_flight: u64,
    /// Whether in-flight came back down to the steady level.
    drained: bool,
    /// Seconds from the heal to the end of the first second back at the steady level.
    drained_after_s: f64,
}

impl Drain {
    fn of(series: &[Point], warmup: f64, cut_at: f64, healed: f64) -> Self {
        let steady_in_flight = series
            .iter()
            .filter(|p| p.t_s > warmup + 0.5 && p.t_s <= cut_at)
            .map(|p| p.in_flight)
            .max()
            .unwrap_or(0);
        let backlog = series
            .iter()
            .rev()
            .find(|p| p.t_s <= healed)
            .map_or(0, |p| p.in_flight);
        let back = series
            .iter()
            .find(|p| p.t_s > healed && p.in_flight <= steady_in_flight.max(1));
        Self {
            backlog,
            steady_in_flight,
            drained: back.is_some(),
            drained_after_s: back.map_or(0.0, |p| p.t_s - healed),
        }
    }
}

/// The per-second round trips split into the steady state before the kill and the failover
/// seconds after it (all in µs).
#[derive(Debug, Default, PartialEq, Eq)]
struct Split {
    killed_at_ms: u64,
    steady_p99_median: u64,
    steady_p99_worst: u64,
    failover_p99: u64,
    failover_max: u64,
}

impl Split {
    /// Steady: whole seconds after the warm-up ending at least a second before the kill.
    /// Failover: the seconds ending from half a second before the kill to
    /// [`FAILOVER_SECONDS`] after it: the kill is timed on the scenario's clock, which starts a
    /// little before the phase's, so the second that holds the kill may end just before it.
    fn of(series: &[Point], warmup: f64, killed: f64) -> Self {
        let mut steady: Vec<u64> = series
            .iter()
            .filter(|p| p.t_s > warmup + 0.5 && p.t_s <= killed - 1.0 && p.round_trip.count > 0)
            .map(|p| p.round_trip.p99)
            .collect();
        steady.sort_unstable();
        let failover = series
            .iter()
            .filter(|p| p.t_s > killed - 0.5 && p.t_s <= killed + FAILOVER_SECONDS);
        let (mut p99, mut max) = (0, 0);
        for p in failover {
            p99 = p99.max(p.round_trip.p99);
            max = max.max(p.round_trip.max);
        }
        Self {
            killed_at_ms: (killed * 1000.0) as u64,
            steady_p99_median: steady.get(steady.len() / 2).copied().unwrap_or(0),
            steady_p99_worst: steady.last().copied().unwrap_or(0),
            failover_p99: p99,
            failover_max: max,
        }
    }

    fn is_failover(&self, t_s: f64) -> bool {
        let killed = self.killed_at_ms as f64 / 1000.0;
        t_s > killed - 0.5 && t_s <= killed + FAILOVER_SECONDS
    }

    fn verdict(&self) -> bool {
        self.failover_p99 < self.steady_p99_worst + GOAL_P99_EXTRA_US
            && self.failover_max < GOAL_MAX_US
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Summary;

    fn point(t_s: f64, p99: u64, max: u64) -> Point {
        Point {
            t_s,
            round_trip: Summary {
                count: 10,
                p50: p99 / 2,
                p90: p99,
                p99,
                p999: max,
                max,
            },
            ..Point::default()
        }
    }

    #[test]
    fn the_drain_ends_when_in_flight_is_back_at_the_steady_level() {
        let pt = |t_s: f64, in_flight: u64| Point {
            t_s,
            in_flight,
            ..Point::default()
        };
        let series = [
            pt(2.0, 3),
            pt(3.0, 5),
            pt(4.0, 100),
            pt(5.0, 200),
            pt(6.0, 150),
            pt(7.0, 4),
        ];
        let d = Drain::of(&series, 1.0, 3.5, 5.2);
        assert_eq!(d.steady_in_flight, 5);
        assert_eq!(d.backlog, 200);
        assert!(d.drained);
        assert!((d.drained_after_s - 1.8).abs() < 1e-9, "{d:?}");
        let stuck = Drain::of(&series[..5], 1.0, 3.5, 5.2);
        assert!(!stuck.drained);
    }

    #[test]
    fn the_kill_splits_steady_seconds_from_failover_seconds() {
        let series: Vec<Point> = [
            (1.0, 90_000, 95_000), // warm-up
            (2.0, 5_000, 6_000),
            (3.0, 7_000, 8_000),
            (4.0, 6_000, 9_000),
            (5.0, 400_000, 900_000), // the kill at 4.6 s
            (6.0, 20_000, 30_000),
            (7.0, 5_000, 6_000),
        ]
        .into_iter()
        .map(|(t, p99, max)| point(t, p99, max))
        .collect();
        let split = Split::of(&series, 1.0, 4.6);
        assert_eq!(split.steady_p99_median, 7_000);
        assert_eq!(split.steady_p99_worst, 7_000);
        assert_eq!(split.failover_p99, 400_000);
        assert_eq!(split.failover_max, 900_000);
        assert!(split.verdict());
        let slow = Split {
            failover_max: 1_600_000,
            ..split
        };
        assert!(!slow.verdict(), "a round trip over 1.5 s misses the goal");
    }
}
