//! `baseline` (steady load, optionally against the floor) and `floor` (the bare QUIC
//! forwarder alone): latency and throughput at a fixed rate.
//!
//! Output: the phase table on stdout, and the JSON report.

use std::sync::Arc;

use anyhow::Result;
use hotline_proto::Precedence;
use serde_json::Value;

use super::{floor_params, plot_phase, print_phase, ratio, steady};
use crate::cli::Options;
use crate::clock::Ticker;
use crate::floor;
use crate::plot::Curve;
use crate::report::{Report, phase_json, round2};
use crate::stats::{Group, Level};

pub(super) async fn baseline(
    opts: &Options,
    with_floor: bool,
    params: Value,
    date: &str,
    ticker: &Arc<Ticker>,
) -> Result<Report> {
    let (result, mix, mode) = steady(opts, "baseline", None, ticker).await?;
    print_phase(
        &format!(
            "baseline: {} pair(s), {} msg/s, {} B, mix {mix}, nodes {mode:?}",
            opts.pairs, opts.rate, opts.size
        ),
        &result,
    );
    let mut report = Report::new("baseline", params, &result, date)
        .with("series", &result.series)
        .with("phases", vec![phase_json(&result)]);
    let mut floor_result = None;
    if with_floor {
        let f = floor::run(&floor_params(opts), ticker).await?;
        print_phase(
            "floor (bare two-hop QUIC forwarder, same rate and size)",
            &f,
        );
        let hot = result.stats.summary(Level::RoundTrip, Group::All);
        let bare = f.stats.summary(Level::RoundTrip, Group::All);
        let ratio = ratio(hot.p99, bare.p99);
        println!(
            "\noverhead: round-trip p99 {} ms vs floor {} ms = {:.2}×",
            crate::stats::ms(hot.p99),
            crate::stats::ms(bare.p99),
            ratio
        );
        report.counts.add(&f.counts);
        report.ok = report.counts.correct();
        report = report
            .with("floor", phase_json(&f))
            .with("overhead_round_trip_p99_ratio", round2(ratio));
        floor_result = Some(f);
    }
    if let Some(path) = &opts.plot {
        let extra = floor_result
            .as_ref()
            .map(|f| Curve {
                label: "floor round trip".into(),
                hist: f.stats.histogram(Level::RoundTrip, Group::All),
            })
            .into_iter()
            .chain(
                (!result
                    .stats
                    .histogram(Level::RoundTrip, Group::Only(Precedence::Flash))
                    .is_empty())
                .then(|| Curve {
                    label: "flash round trip".into(),
                    hist: result
                        .stats
                        .histogram(Level::RoundTrip, Group::Only(Precedence::Flash)),
                }),
            )
            .collect();
        plot_phase(
            path,
            &format!(
                "hotline-bench baseline — {} msg/s, {} B, {date}",
                opts.rate, opts.size
            ),
            &result,
            extra,
        )?;
    }
    Ok(report)
}

pub(super) async fn floor_only(
    opts: &Options,
    params: Value,
    date: &str,
    ticker: &Arc<Ticker>,
) -> Result<Report> {
    let f = floor::run(&floor_params(opts), ticker).await?;
    print_phase(
        &format!(
            "floor: bare two-hop QUIC forwarder, {} msg/s, {} B payload, {}-byte acks",
            opts.rate,
            opts.size,
            floor::ACK_BYTES
        ),
        &f,
    );
    let report = Report::new("floor", params, &f, date)
        .with("series", &f.series)
        .with("phases", vec![phase_json(&f)]);
    if let Some(path) = &opts.plot {
        plot_phase(
            path,
            &format!(
                "hotline-bench floor — {} msg/s, {} B, {date}",
                opts.rate, opts.size
            ),
            &f,
            Vec::new(),
        )?;
    }
    Ok(report)
}
