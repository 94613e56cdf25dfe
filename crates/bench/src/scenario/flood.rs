//! `flood`: flash under a routine flood. Three phases on one cluster: a closed-loop probe of
//! maximum routine throughput, flash alone on an idle link, then routine offered above that
//! maximum with flash alongside; the figure of merit is flash round-trip p99 flooded / idle.
//!
//! Output: the three phase tables and the comparison on stdout, and the JSON report.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use hotline_proto::Precedence;
use serde_json::Value;

use super::{finish, phase, plot_phase, print_phase, ratio, started_cluster};
use crate::cli::Options;
use crate::clock::Ticker;
use crate::cluster::Cluster;
use crate::driver::{Counts, Flow, PhaseResult, run_phase};
use crate::plot::Curve;
use crate::report::{Report, phase_json, round2, row};
use crate::schedule::Mix;
use crate::stats::{Group, Level};

pub(super) struct FloodParams {
    pub(super) flash_rate: f64,
    pub(super) overload: f64,
    pub(super) flood_rate: Option<f64>,
    pub(super) probe: Duration,
    pub(super) probe_window: usize,
    pub(super) idle: Duration,
}

pub(super) async fn flood(
    opts: &Options,
    f: &FloodParams,
    params: Value,
    date: &str,
    ticker: &Arc<Ticker>,
) -> Result<Report> {
    let cluster = started_cluster(opts, opts.pairs).await?;
    let result = flood_phases(&cluster, opts, f, ticker).await;
    finish(cluster).await;
    let (probe, idle, flooded) = result?;

    let max = probe.throughput;
    let routine_rate = f.flood_rate.unwrap_or(max * f.overload);
    print_phase(
        "flood 1/3: closed-loop maximum throughput (routine)",
        &probe,
    );
    print_phase(
        &format!(
            "flood 2/3: flash alone at {} msg/s on an idle link",
            f.flash_rate
        ),
        &idle,
    );
    print_phase(
        &format!(
            "flood 3/3: routine offered at {routine_rate:.0} msg/s ({}× max) + flash at {} msg/s",
            f.overload, f.flash_rate
        ),
        &flooded,
    );
    let flash = Group::Only(Precedence::Flash);
    let idle_rt = idle.stats.summary(Level::RoundTrip, flash);
    let flood_rt = flooded.stats.summary(Level::RoundTrip, flash);
    let routine_achieved = flooded
        .throughput_by_precedence
        .get("routine")
        .copied()
        .unwrap_or(0.0);
    let r = ratio(flood_rt.p99, idle_rt.p99);
    println!("\nmaximum throughput (closed loop): {max:.0} msg/s");
    println!(
        "routine offered {routine_rate:.0} msg/s, delivered {routine_achieved:.0} msg/s during the flood"
    );
    println!(
        "sender node answered `status` (queued behind its commands) in at most {:.1} ms ({} timeouts of 2 s)",
        flooded.queues.sender_status_ms_max, flooded.queues.sender_status_timeouts
    );
    println!("{}", row("flash idle", "round_trip", &idle_rt));
    println!("{}", row("flash flood", "round_trip", &flood_rt));
    println!("flash round-trip p99 under flood / idle = {r:.2}×");
    println!(
        "queue depths (max): {}",
        serde_json::to_string(&flooded.queues)?
    );

    let mut counts = Counts::default();
    for p in [&probe, &idle, &flooded] {
        counts.add(&p.counts);
    }
    let flash_json = |p: &PhaseResult| super::ack_levels_json(p, flash);
    let mut report = Report::new("flood", params, &flooded, date)
        .with("max_throughput_msgs_per_s", round2(max))
        .with("routine_offered_rate_msgs_per_s", round2(routine_rate))
        .with("routine_achieved_rate_msgs_per_s", round2(routine_achieved))
        .with("flash_idle", flash_json(&idle))
        .with("flash_flood", flash_json(&flooded))
        .with("flash_round_trip_p99_ratio", round2(r))
        .with("queues", &flooded.queues)
        .with("series", &flooded.series)
        .with(
            "phases",
            vec![phase_json(&probe), phase_json(&idle), phase_json(&flooded)],
        );
    report.counts = counts;
    report.ok = report.counts.correct();
    if let Some(path) = &opts.plot {
        plot_phase(
            path,
            &format!(
                "hotline-bench flood — routine {routine_rate:.0} msg/s + flash {} msg/s, {date}",
                f.flash_rate
            ),
            &flooded,
            vec![
                Curve {
                    label: "flash round trip, idle link".into(),
                    hist: idle.stats.histogram(Level::RoundTrip, flash),
                },
                Curve {
                    label: "flash round trip, flood".into(),
                    hist: flooded.stats.histogram(Level::RoundTrip, flash),
                },
            ],
        )?;
    }
    Ok(report)
}

async fn flood_phases(
    cluster: &Cluster,
    opts: &Options,
    f: &FloodParams,
    ticker: &Arc<Ticker>,
) -> Result<(PhaseResult, PhaseResult, PhaseResult)> {
    let pairs = cluster.pairs(opts.pairs);
    let routine = Mix::only(Precedence::Routine);
    let flash = Mix::only(Precedence::Flash);
    let mut probe = phase(
        "flood probe",
        opts,
        vec![Flow {
            rate: 1.0,
            mix: routine,
        }],
    );
    probe.duration = f.probe;
    probe.warmup = Duration::from_secs_f64((f.probe.as_secs_f64() / 3.0).min(1.0));
    probe.closed_window = Some(f.probe_window);
    probe.auto_ack = false;
    let probe = run_phase(cluster, pairs, &probe, ticker, 0).await?;
    eprintln!("maximum throughput: {:.0} msg/s", probe.throughput);

    let mut idle = phase(
        "flood idle",
        opts,
        vec![Flow {
            rate: f.flash_rate,
            mix: flash,
        }],
    );
    idle.duration = f.idle;
    idle.warmup = opts.warmup().min(f.idle / 2);
    idle.sample_queues = true;
    let idle = run_phase(cluster, pairs, &idle, ticker, 1).await?;

    let routine_rate = f
        .flood_rate
        .unwrap_or(probe.throughput * f.overload)
        .max(1.0);
    let mut flooded = phase(
        "flood",
        opts,
        vec![
            Flow {
                rate: routine_rate,
                mix: routine,
            },
            Flow {
                rate: f.flash_rate,
                mix: flash,
            },
        ],
    );
    flooded.sample_queues = true;
    let flooded = run_phase(cluster, pairs, &flooded, ticker, 2).await?;
    Ok((probe, idle, flooded))
}
