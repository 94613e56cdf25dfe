//! `soak`: a long steady run with snapshots every interval, for latency drift and relay memory
//! growth.
//!
//! Output: the phase table and the interval table on stdout, and the JSON report.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use serde_json::Value;

use super::{plot_phase, print_phase, ratio, steady};
use crate::cli::Options;
use crate::clock::Ticker;
use crate::report::{Report, mib, phase_json, round2};

pub(super) async fn soak(
    opts: &Options,
    interval: Duration,
    params: Value,
    date: &str,
    ticker: &Arc<Ticker>,
) -> Result<Report> {
    let (result, _, _) = steady(opts, "soak", Some(interval), ticker).await?;
    print_phase(
        &format!(
            "soak: {} pair(s), {} msg/s, {} s, interval {} s",
            opts.pairs,
            opts.rate,
            opts.duration,
            interval.as_secs_f64()
        ),
        &result,
    );
    println!(
        "\n{:>8} {:>9} {:>10} {:>10} {:>10} {:>12} {:>12}",
        "t (s)", "samples", "rt p50 ms", "rt p99 ms", "rt max ms", "relay RSS", "nodes RSS"
    );
    for i in &result.intervals {
        println!(
            "{:>8.1} {:>9} {:>10} {:>10} {:>10} {:>12} {:>12}",
            i.t_s,
            i.round_trip.count,
            crate::stats::ms(i.round_trip.p50),
            crate::stats::ms(i.round_trip.p99),
            crate::stats::ms(i.round_trip.max),
            i.relay_rss_bytes.map_or("-".into(), mib),
            i.nodes_rss_bytes.map_or("-".into(), mib),
        );
    }
    // Drift and growth from the second interval on: the first holds the warm-up.
    let steady: Vec<_> = result
        .intervals
        .iter()
        .skip(1)
        .filter(|i| i.round_trip.count > 0)
        .collect();
    let (drift, growth, growth_per_hour) = match (steady.first(), steady.last()) {
        (Some(a), Some(b)) if steady.len() >= 2 => {
            let g = match (a.relay_rss_bytes, b.relay_rss_bytes) {
                (Some(x), Some(y)) => Some(y as i64 - x as i64),
                _ => None,
            };
            let hours = (b.t_s - a.t_s) / 3600.0;
            (
                Some(ratio(b.round_trip.p99, a.round_trip.p99)),
                g,
                g.filter(|_| hours > 0.0).map(|g| g as f64 / hours),
            )
        }
        _ => (None, None, None),
    };
    if let Some(d) = drift {
        println!("round-trip p99 drift (last / first steady interval): {d:.2}×");
    }
    if let Some(g) = growth {
        println!(
            "relay RSS growth over the steady intervals: {:+.1} KiB",
            g as f64 / 1024.0
        );
    }
    let report = Report::new("soak", params, &result, date)
        .with("intervals", &result.intervals)
        .with("round_trip_p99_drift_ratio", drift.map(round2))
        .with("relay_rss_growth_bytes", growth)
        .with(
            "relay_rss_growth_bytes_per_hour",
            growth_per_hour.map(round2),
        )
        .with("series", &result.series)
        .with("phases", vec![phase_json(&result)]);
    if let Some(path) = &opts.plot {
        plot_phase(
            path,
            &format!("hotline-bench soak — {} msg/s, {date}", opts.rate),
            &result,
            Vec::new(),
        )?;
    }
    Ok(report)
}
