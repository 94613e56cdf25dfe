//! `soak`: a long steady run with snapshots every interval, for latency drift and memory growth.
//!
//! Output: the phase table and the interval table on stdout, and the JSON report. Memory growth
//! is reported as a slope, MiB of RSS per million messages delivered: a least-squares line
//! through the intervals after the first (which holds the warm-up), for the node processes
//! together and for the relay (`rss_slope_mib_per_million.{nodes,relay}`). A flat-memory
//! build shows a slope near zero however long it runs.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use serde_json::Value;

use super::{plot_phase, print_phase, ratio, steady};
use crate::cli::Options;
use crate::clock::Ticker;
use crate::driver::Interval;
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
        "\n{:>8} {:>9} {:>10} {:>10} {:>10} {:>10} {:>12} {:>12}",
        "t (s)",
        "samples",
        "delivered",
        "rt p50 ms",
        "rt p99 ms",
        "rt max ms",
        "relay RSS",
        "nodes RSS"
    );
    for i in &result.intervals {
        println!(
            "{:>8.1} {:>9} {:>10} {:>10} {:>10} {:>10} {:>12} {:>12}",
            i.t_s,
            i.round_trip.count,
            i.delivered_total,
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
    let after_warm_up = result.intervals.get(1..).unwrap_or_default();
    let slope = |rss: fn(&Interval) -> Option<u64>| {
        let points: Vec<(f64, f64)> = after_warm_up
            .iter()
            .filter_map(|i| Some((i.delivered_total as f64, rss(i)? as f64)))
            .collect();
        rss_slope_mib_per_million(&points)
    };
    let nodes_slope = slope(|i| i.nodes_rss_bytes);
    let relay_slope = slope(|i| i.relay_rss_bytes);
    let show = |s: Option<f64>| s.map_or("-".into(), |s| format!("{s:+.1} MiB"));
    println!(
        "RSS slope per million messages delivered (least squares, intervals after the first): nodes {}, relay {}",
        show(nodes_slope),
        show(relay_slope)
    );
    let report = Report::new("soak", params, &result, date)
        .with("intervals", &result.intervals)
        .with("round_trip_p99_drift_ratio", drift.map(round2))
        .with("relay_rss_growth_bytes", growth)
        .with(
            "relay_rss_growth_bytes_per_hour",
            growth_per_hour.map(round2),
        )
        .with(
            "rss_slope_mib_per_million",
            serde_json::json!({
                "nodes": nodes_slope.map(round2),
                "relay": relay_slope.map(round2),
            }),
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

/// The least-squares slope of RSS (bytes) against messages delivered, in MiB per million
/// messages; `None` with fewer than two points or no spread in the message counts.
fn rss_slope_mib_per_million(points: &[(f64, f64)]) -> Option<f64> {
    if points.len() < 2 {
        return None;
    }
    let n = points.len() as f64;
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    if sxx == 0.0 {
        return None;
    }
    let sxy: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    let bytes_per_message = sxy / sxx;
    Some(bytes_per_message * 1e6 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::rss_slope_mib_per_million;

    const MIB: f64 = 1024.0 * 1024.0;

    #[test]
    fn slope_of_a_straight_line_is_its_growth_per_million() {
        // 2 MiB more every 100,000 messages: 20 MiB per million.
        let points: Vec<(f64, f64)> = (0..5)
            .map(|k| (k as f64 * 100_000.0, 90.0 * MIB + k as f64 * 2.0 * MIB))
            .collect();
        let s = rss_slope_mib_per_million(&points).unwrap();
        assert!((s - 20.0).abs() < 1e-9, "{s}");
    }

    #[test]
    fn slope_fits_noisy_points_by_least_squares() {
        // Residuals +1, -1, -1, +1 MiB around a 10 MiB-per-million line cancel out.
        let line = |x: f64| 50.0 * MIB + x * 10.0 * MIB / 1e6;
        let points = [
            (0.0, line(0.0) + MIB),
            (1e5, line(1e5) - MIB),
            (2e5, line(2e5) - MIB),
            (3e5, line(3e5) + MIB),
        ];
        let s = rss_slope_mib_per_million(&points).unwrap();
        assert!((s - 10.0).abs() < 1e-9, "{s}");
        // Flat memory is a zero slope, and shrinking memory a negative one.
        let flat = [(0.0, MIB), (1e6, MIB), (2e6, MIB)];
        assert_eq!(rss_slope_mib_per_million(&flat), Some(0.0));
        let shrinking = [(0.0, 3.0 * MIB), (1e6, MIB)];
        assert_eq!(rss_slope_mib_per_million(&shrinking), Some(-2.0));
    }

    #[test]
    fn slope_needs_two_points_with_different_counts() {
        assert_eq!(rss_slope_mib_per_million(&[]), None);
        assert_eq!(rss_slope_mib_per_million(&[(1.0, 2.0)]), None);
        assert_eq!(rss_slope_mib_per_million(&[(5.0, 1.0), (5.0, 9.0)]), None);
    }
}
