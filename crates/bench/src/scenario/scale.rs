//! `scale`: one cluster grown step by step to more pairs, with the relay's memory per connected
//! endpoint (idle RSS with N pairs minus RSS with none, over 2 N) and latency at each step.
//!
//! Output: a phase table per step and the step table on stdout, and the JSON report.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use serde_json::{Value, json};

use super::{cluster_options, finish, phase, plot_phase, print_phase};
use crate::cli::Options;
use crate::clock::Ticker;
use crate::cluster::Cluster;
use crate::driver::{Counts, Flow, run_phase};
use crate::plot::Curve;
use crate::report::{Report, kib, mib, phase_json, round2};
use crate::schedule::Mix;
use crate::stats::{Group, Level};

pub(super) async fn scale(
    opts: &Options,
    steps: &[usize],
    settle: Duration,
    params: Value,
    date: &str,
    ticker: &Arc<Ticker>,
) -> Result<Report> {
    let max = steps.iter().copied().max().unwrap_or(1);
    let mix = Mix::parse(&opts.mix)?;
    let mut cluster = Cluster::create(cluster_options(opts)?, max).await?;
    let rss0 = cluster.relay_rss();
    eprintln!(
        "relay with {max} hotlines configured, no endpoint connected: RSS {}",
        rss0.map_or("-".into(), mib)
    );
    let mut results = Vec::new();
    let outcome = async {
        for (i, &n) in steps.iter().enumerate() {
            eprintln!("connecting {n} pair(s) ({} endpoints)…", 2 * n);
            cluster.start_pairs(n).await?;
            tokio::time::sleep(settle).await;
            let idle_rss = cluster.relay_rss();
            let p = phase(
                &format!("scale {n}"),
                opts,
                vec![Flow {
                    rate: opts.rate,
                    mix,
                }],
            );
            let r = run_phase(&cluster, cluster.pairs(n), &p, ticker, i).await?;
            results.push((n, idle_rss, r));
        }
        anyhow::Ok(())
    }
    .await;
    let mode = cluster.node_mode();
    finish(cluster).await;
    outcome?;

    for (n, _, r) in &results {
        print_phase(&format!("scale: {n} pair(s)"), r);
    }
    let mut counts = Counts::default();
    let mut steps_json = Vec::new();
    println!(
        "\n== scale: {} msg/s in total, {} B, mix {mix}, nodes {mode:?}",
        opts.rate, opts.size
    );
    println!(
        "{:>6} {:>9} {:>12} {:>12} {:>14} {:>10} {:>10} {:>10} {:>6}",
        "pairs",
        "endpoints",
        "msg/s",
        "relay RSS",
        "per endpoint",
        "rt p50 ms",
        "rt p99 ms",
        "rt p99.9",
        "ok"
    );
    for (n, idle_rss, r) in &results {
        counts.add(&r.counts);
        let per_endpoint = match (idle_rss, rss0) {
            (Some(a), Some(b)) => Some((*a as f64 - b as f64) / (2 * n) as f64),
            _ => None,
        };
        let rt = r.stats.summary(Level::RoundTrip, Group::All);
        println!(
            "{:>6} {:>9} {:>12.1} {:>12} {:>14} {:>10} {:>10} {:>10} {:>6}",
            n,
            2 * n,
            r.throughput,
            idle_rss.map_or("-".into(), mib),
            per_endpoint.map_or("-".into(), kib),
            crate::stats::ms(rt.p50),
            crate::stats::ms(rt.p99),
            crate::stats::ms(rt.p999),
            r.counts.correct()
        );
        steps_json.push(json!({
            "pairs": n,
            "endpoints": 2 * n,
            "relay_rss_idle_bytes": idle_rss,
            "relay_rss_zero_bytes": rss0,
            "relay_rss_per_endpoint_bytes": per_endpoint.map(round2),
            "relay_rss_after_load_bytes": r.relay_rss_bytes,
            "phase": phase_json(r),
        }));
    }
    let Some((_, _, last)) = results.last() else {
        anyhow::bail!("no scale step ran");
    };
    let mut report = Report::new("scale", params, last, date)
        .with("relay_rss_zero_bytes", rss0)
        .with("steps", steps_json)
        .with("node_mode", mode)
        .with("series", &last.series);
    report.counts = counts;
    report.ok = report.counts.correct();
    if let Some(path) = &opts.plot {
        let extra = results
            .iter()
            .map(|(n, _, r)| Curve {
                label: format!("round trip, {n} pair(s)"),
                hist: r.stats.histogram(Level::RoundTrip, Group::All),
            })
            .collect();
        let mut curves_only = last.clone();
        curves_only.stats = Default::default();
        plot_phase(
            path,
            &format!("hotline-bench scale — {} msg/s total, {date}", opts.rate),
            &curves_only,
            extra,
        )?;
    }
    Ok(report)
}
