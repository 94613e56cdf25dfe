//! `neighbours`: does one noisy pair hurt everyone else on the relay? Quiet pairs send FLASH at
//! a low rate, first alone (idle phase), then while one more pair on the same relay sends
//! maximum-size routine bodies as fast as a closed-loop window lets it (flood phase). The
//! figure of merit is the quiet pairs' flash round-trip p99 flooded / idle, against the goal of
//! at most 1.5× (issue 10, item 6); the relay's memory is read after each phase.
//!
//! Not measured here: a flooding node that sends on the wrong streams (routine on the flash
//! stream, say). The node always sends on the stream its precedence names, so that variant
//! needs a misbehaving node mode first.
//!
//! Output: the phase tables and the comparison on stdout, and the JSON report.

use std::sync::Arc;

use anyhow::{Result, bail};
use hotline_proto::Precedence;
use hotline_proto::wire::MAX_BODY_LEN;
use serde_json::Value;

use super::{finish, phase, plot_phase, print_phase, started_cluster};
use crate::cli::Options;
use crate::clock::Ticker;
use crate::cluster::Cluster;
use crate::driver::{Counts, Flow, PhaseResult, run_phase};
use crate::plot::Curve;
use crate::report::{Report, mib, phase_json, round2, row};
use crate::schedule::Mix;
use crate::stats::{Group, Level};

/// The goal: quiet pairs' flash round-trip p99 under the flood at most this multiple of idle.
const GOAL: f64 = 1.5;

pub(super) struct NeighboursParams {
    pub(super) quiet_pairs: usize,
    pub(super) quiet_rate: f64,
    pub(super) flood_window: usize,
}

/// The relay's memory after a phase has drained.
#[derive(Clone, Copy, Debug, serde::Serialize)]
struct Memory {
    relay_rss_bytes: Option<u64>,
    relay_hwm_bytes: Option<u64>,
}

impl Memory {
    fn read(cluster: &Cluster) -> Self {
        Self {
            relay_rss_bytes: cluster.relay_rss(),
            relay_hwm_bytes: cluster.relay_hwm(),
        }
    }
}

struct Phases {
    connected: Memory,
    idle: PhaseResult,
    idle_mem: Memory,
    quiet: PhaseResult,
    noisy: PhaseResult,
    flood_mem: Memory,
}

pub(super) async fn neighbours(
    opts: &Options,
    n: &NeighboursParams,
    params: Value,
    date: &str,
    ticker: &Arc<Ticker>,
) -> Result<Report> {
    if n.quiet_pairs == 0 {
        bail!("--quiet-pairs must be at least 1");
    }
    if !(n.quiet_rate > 0.0 && n.quiet_rate.is_finite()) {
        bail!("--quiet-rate must be a positive number of messages per second");
    }
    if n.flood_window == 0 {
        bail!("--flood-window must be at least 1");
    }
    // Every pair, the noisy one included, is connected through both phases.
    let cluster = started_cluster(opts, n.quiet_pairs + 1).await?;
    let result = phases(&cluster, opts, n, ticker).await;
    let mode = cluster.node_mode();
    finish(cluster).await;
    let p = result?;

    let quiet_total = n.quiet_rate * n.quiet_pairs as f64;
    print_phase(
        &format!(
            "neighbours 1/2: {} quiet pair(s), flash at {} msg/s each, no flood",
            n.quiet_pairs, n.quiet_rate
        ),
        &p.idle,
    );
    print_phase(
        "neighbours 2/2: the same quiet pairs while one pair floods (quiet pairs' figures)",
        &p.quiet,
    );
    print_phase(
        &format!(
            "neighbours 2/2: the flooding pair, {} KiB routine bodies, window {}",
            MAX_BODY_LEN / 1024,
            n.flood_window
        ),
        &p.noisy,
    );

    let flash = Group::Only(Precedence::Flash);
    let idle_rt = p.idle.stats.summary(Level::RoundTrip, flash);
    let flood_rt = p.quiet.stats.summary(Level::RoundTrip, flash);
    let ratio = p99_ratio(idle_rt.p99, flood_rt.p99);
    let flood_mib_s = p.noisy.throughput * MAX_BODY_LEN as f64 / (1024.0 * 1024.0);
    let show = |m: Option<u64>| m.map_or("-".into(), mib);
    println!(
        "\n== neighbours: {} quiet pair(s) × {} flash msg/s ({quiet_total} msg/s), {} B; \
         one pair flooding {} KiB routine; nodes {mode:?}",
        n.quiet_pairs,
        n.quiet_rate,
        opts.size,
        MAX_BODY_LEN / 1024
    );
    println!(
        "flooding pair delivered {:.1} msg/s ({flood_mib_s:.1} MiB/s)",
        p.noisy.throughput
    );
    println!(
        "relay memory: connected {} (peak {}), after idle {} (peak {}), after flood {} (peak {})",
        show(p.connected.relay_rss_bytes),
        show(p.connected.relay_hwm_bytes),
        show(p.idle_mem.relay_rss_bytes),
        show(p.idle_mem.relay_hwm_bytes),
        show(p.flood_mem.relay_rss_bytes),
        show(p.flood_mem.relay_hwm_bytes),
    );
    println!(
        "{:<14} {:<10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "round trip ms", "quiet", "count", "p50", "p90", "p99", "p99.9", "max"
    );
    println!("{}", row("no flood", "flash", &idle_rt));
    println!("{}", row("flood", "flash", &flood_rt));
    println!("{}", verdict_line(ratio));

    let mut counts = Counts::default();
    for r in [&p.idle, &p.quiet, &p.noisy] {
        counts.add(&r.counts);
    }
    let flash_json = |r: &PhaseResult| super::ack_levels_json(r, flash);
    let mut report = Report::new("neighbours", params, &p.quiet, date)
        .with("quiet_flash_idle", flash_json(&p.idle))
        .with("quiet_flash_flood", flash_json(&p.quiet))
        .with("quiet_flash_round_trip_p99_ratio", ratio.map(round2))
        .with("goal_ratio", GOAL)
        .with("goal_met", ratio.map(met))
        .with("flood_delivered_msgs_per_s", round2(p.noisy.throughput))
        .with("flood_delivered_mib_per_s", round2(flood_mib_s))
        .with("flood_body_bytes", MAX_BODY_LEN)
        .with("relay_memory_connected", p.connected)
        .with("relay_memory_after_idle", p.idle_mem)
        .with("relay_memory_after_flood", p.flood_mem)
        .with("queues", &p.noisy.queues)
        .with("node_mode", mode)
        .with(
            "phases",
            vec![
                phase_json(&p.idle),
                phase_json(&p.quiet),
                phase_json(&p.noisy),
            ],
        );
    report.counts = counts;
    report.ok = report.counts.correct();
    if let Some(path) = &opts.plot {
        plot_phase(
            path,
            &format!(
                "hotline-bench neighbours — {} quiet pairs × {} flash/s + one flooding pair, {date}",
                n.quiet_pairs, n.quiet_rate
            ),
            &p.quiet,
            vec![Curve {
                label: "quiet flash round trip, no flood".into(),
                hist: p.idle.stats.histogram(Level::RoundTrip, flash),
            }],
        )?;
    }
    Ok(report)
}

async fn phases(
    cluster: &Cluster,
    opts: &Options,
    n: &NeighboursParams,
    ticker: &Arc<Ticker>,
) -> Result<Phases> {
    let all = cluster.pairs(n.quiet_pairs + 1);
    let (quiet_pairs, noisy_pair) = all.split_at(n.quiet_pairs);
    let quiet_flow = Flow {
        rate: n.quiet_rate * n.quiet_pairs as f64,
        mix: Mix::only(Precedence::Flash),
    };
    let connected = Memory::read(cluster);

    let idle_phase = phase("neighbours idle", opts, vec![quiet_flow.clone()]);
    let idle = run_phase(cluster, quiet_pairs, &idle_phase, ticker, 0).await?;
    let idle_mem = Memory::read(cluster);

    let quiet_phase = phase("neighbours quiet", opts, vec![quiet_flow]);
    let mut noisy_phase = phase(
        "neighbours flood",
        opts,
        vec![Flow {
            rate: 1.0,
            mix: Mix::only(Precedence::Routine),
        }],
    );
    noisy_phase.size = MAX_BODY_LEN;
    noisy_phase.closed_window = Some(n.flood_window);
    noisy_phase.auto_ack = false;
    noisy_phase.sample_queues = true;
    // Both at once: each phase paces and measures its own pairs.
    let (quiet, noisy) = tokio::join!(
        run_phase(cluster, quiet_pairs, &quiet_phase, ticker, 1),
        run_phase(cluster, noisy_pair, &noisy_phase, ticker, 2),
    );
    let flood_mem = Memory::read(cluster);
    Ok(Phases {
        connected,
        idle,
        idle_mem,
        quiet: quiet?,
        noisy: noisy?,
        flood_mem,
    })
}

/// Flooded p99 / idle p99, when the idle phase has a p99 to divide by.
fn p99_ratio(idle_p99: u64, flood_p99: u64) -> Option<f64> {
    (idle_p99 > 0).then(|| flood_p99 as f64 / idle_p99 as f64)
}

/// Whether a ratio meets the goal, judged on the two decimals that are printed.
fn met(ratio: f64) -> bool {
    round2(ratio) <= GOAL
}

/// The verdict: the ratio, and the goal met or missed by how much.
fn verdict_line(ratio: Option<f64>) -> String {
    let head = "quiet pairs' flash round-trip p99 under flood / idle";
    match ratio {
        None => format!("{head}: no idle samples, goal ≤ {GOAL}× not judged"),
        Some(r) if met(r) => format!("{head} = {r:.2}×: goal ≤ {GOAL}× met"),
        Some(r) => format!(
            "{head} = {r:.2}×: goal ≤ {GOAL}× MISSED, {:.1}× the goal",
            r / GOAL
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_needs_idle_samples() {
        assert_eq!(p99_ratio(0, 5_000), None);
        assert_eq!(p99_ratio(4_000, 6_000), Some(1.5));
        assert_eq!(p99_ratio(4_000, 2_000), Some(0.5));
    }

    #[test]
    fn verdict_says_met_or_by_how_much_missed() {
        assert!(verdict_line(None).contains("not judged"));
        assert!(verdict_line(Some(1.5)).ends_with("goal ≤ 1.5× met"));
        // 1.504 prints as 1.50, so it is judged as printed.
        assert!(verdict_line(Some(1.504)).contains("= 1.50×: goal ≤ 1.5× met"));
        let missed = verdict_line(Some(4.5));
        assert!(missed.contains("= 4.50×"), "{missed}");
        assert!(missed.contains("MISSED, 3.0× the goal"), "{missed}");
        assert!(!met(1.51));
    }
}
