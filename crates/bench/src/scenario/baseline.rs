//! `baseline` (steady load, optionally against the floors) and `floor` (the bare or durable
//! two-hop QUIC forwarder alone): latency and throughput at a fixed rate.
//!
//! Output: the phase table on stdout, and the JSON report. With floors, the report adds
//! `floor` (the bare floor's phase), `durable_floor` (the durable floor's, with its
//! `group_commit` figures), `floor_ratios.{bare,durable}.{p50,p90,p99,p999}` (Hotline's
//! round trip ÷ that floor's) and, when the bare floor ran, `overhead_round_trip_p99_ratio`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;
use hotline_proto::Precedence;
use serde_json::{Map, Value};

use super::{floor_params, plot_phase, print_phase, ratio, steady};
use crate::cli::{FloorChoice, Options};
use crate::clock::Ticker;
use crate::durable::{CommitSummary, check_real_disk};
use crate::floor::{self, FloorRun};
use crate::plot::Curve;
use crate::report::{Report, phase_json, round2};
use crate::stats::{Group, Level, Summary, ms};

/// The floors to run, and where the durable floor's logs go (checked: not tmpfs).
#[derive(Debug)]
pub(super) struct Floors {
    choice: FloorChoice,
    dir: PathBuf,
}

impl Floors {
    /// Checks the durable floor's directory up front, so a run that cannot measure it fails
    /// before it starts rather than after Hotline's phase.
    pub(super) fn new(choice: FloorChoice, dir: Option<&Path>) -> Result<Self> {
        let dir = dir.map_or_else(std::env::temp_dir, Path::to_path_buf);
        if choice.durable() {
            check_real_disk(&dir)?;
        }
        Ok(Self { choice, dir })
    }

    /// Runs them in turn, bare first, printing each.
    async fn run(&self, opts: &Options, ticker: &Arc<Ticker>) -> Result<Vec<FloorRun>> {
        let mut runs = Vec::new();
        if self.choice.bare() {
            let f = floor::run(&floor_params(opts, None), ticker).await?;
            print_phase(
                &format!(
                    "floor: bare two-hop QUIC forwarder, {} msg/s, {} B payload, {}-byte acks",
                    opts.rate,
                    opts.size,
                    floor::ACK_BYTES
                ),
                &f.phase,
            );
            runs.push(f);
        }
        if self.choice.durable() {
            let f = floor::run(&floor_params(opts, Some(self.dir.clone())), ticker).await?;
            print_phase(
                &format!(
                    "durable floor: the same, both ends append and fdatasync every message \
                     before passing it on (group commit, in {})",
                    self.dir.display()
                ),
                &f.phase,
            );
            for (side, log) in [("sender", &f.sender_log), ("receiver", &f.receiver_log)] {
                if let Some(log) = log {
                    println!("{}", log_line(side, log));
                }
            }
            runs.push(f);
        }
        Ok(runs)
    }
}

fn label(f: &FloorRun) -> &'static str {
    if f.durable() {
        "durable floor"
    } else {
        "bare floor"
    }
}

fn key(f: &FloorRun) -> &'static str {
    if f.durable() { "durable" } else { "bare" }
}

/// `sender log: 15000 records, 9000 fdatasyncs (batches mean 1.67, max 6), fdatasync p50 …`
fn log_line(side: &str, log: &CommitSummary) -> String {
    format!(
        "{side} log: {} records, {} fdatasyncs (batch mean {}, max {}), fdatasync p50 {} ms, \
         p99 {} ms, max {} ms",
        log.records,
        log.syncs,
        log.mean_batch,
        log.max_batch,
        ms(log.fdatasync_us.p50),
        ms(log.fdatasync_us.p99),
        ms(log.fdatasync_us.max)
    )
}

/// A percentile of a summary.
type Pick = fn(&Summary) -> u64;

/// The percentiles compared: JSON key, printed name, printed at all.
const PERCENTILES: [(&str, &str, bool, Pick); 4] = [
    ("p50", "p50", true, |s| s.p50),
    ("p90", "p90", false, |s| s.p90),
    ("p99", "p99", true, |s| s.p99),
    ("p999", "p99.9", true, |s| s.p999),
];

/// Hotline's round-trip percentiles ÷ each floor's, as JSON and as the lines to print.
fn ratios(hot: &Summary, runs: &[FloorRun]) -> (Value, Vec<String>) {
    let mut json = Map::new();
    for f in runs {
        let fl = f.phase.stats.summary(Level::RoundTrip, Group::All);
        let m: Map<String, Value> = PERCENTILES
            .iter()
            .map(|(k, _, _, get)| ((*k).into(), round2(ratio(get(hot), get(&fl))).into()))
            .collect();
        json.insert(key(f).into(), m.into());
    }
    // Durable first: it is the floor Hotline's goal is quoted against.
    let mut order: Vec<&FloorRun> = runs.iter().collect();
    order.sort_by_key(|f| !f.durable());
    let lines = PERCENTILES
        .iter()
        .filter(|(_, _, shown, _)| *shown)
        .map(|(_, name, _, get)| {
            let parts: Vec<String> = order
                .iter()
                .map(|f| {
                    let fl = get(&f.phase.stats.summary(Level::RoundTrip, Group::All));
                    format!("{:.2}× {} ({} ms)", ratio(get(hot), fl), label(f), ms(fl))
                })
                .collect();
            format!("  {name:<6} {} ms = {}", ms(get(hot)), parts.join(", "))
        })
        .collect();
    (Value::Object(json), lines)
}

fn floor_curves(runs: &[FloorRun]) -> Vec<Curve<'_>> {
    runs.iter()
        .map(|f| Curve {
            label: format!("{} round trip", label(f)),
            hist: f.phase.stats.histogram(Level::RoundTrip, Group::All),
        })
        .collect()
}

pub(super) async fn baseline(
    opts: &Options,
    floors: Option<&Floors>,
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
    let mut runs = Vec::new();
    if let Some(floors) = floors {
        runs = floors.run(opts, ticker).await?;
        let hot = result.stats.summary(Level::RoundTrip, Group::All);
        let (ratio_json, lines) = ratios(&hot, &runs);
        println!("\noverhead: Hotline's round trip ÷ the floors measured in this run");
        for l in lines {
            println!("{l}");
        }
        for f in &runs {
            report.counts.add(&f.phase.counts);
            let name = if f.durable() {
                "durable_floor"
            } else {
                "floor"
            };
            report = report.with(name, f.json());
            if !f.durable() {
                let bare = f.phase.stats.summary(Level::RoundTrip, Group::All);
                report = report.with(
                    "overhead_round_trip_p99_ratio",
                    round2(ratio(hot.p99, bare.p99)),
                );
            }
        }
        report.ok = report.counts.correct();
        report = report.with("floor_ratios", ratio_json);
    }
    if let Some(path) = &opts.plot {
        let flash = result
            .stats
            .histogram(Level::RoundTrip, Group::Only(Precedence::Flash));
        let extra = floor_curves(&runs)
            .into_iter()
            .chain((!flash.is_empty()).then(|| Curve {
                label: "flash round trip".into(),
                hist: flash,
            }))
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
    floors: &Floors,
    params: Value,
    date: &str,
    ticker: &Arc<Ticker>,
) -> Result<Report> {
    let runs = floors.run(opts, ticker).await?;
    let Some((main, rest)) = runs.split_first() else {
        anyhow::bail!("no floor to run");
    };
    let mut report = Report::new("floor", params, &main.phase, date)
        .with("series", &main.phase.series)
        .with(
            "phases",
            runs.iter().map(FloorRun::json).collect::<Vec<_>>(),
        );
    for f in rest {
        report.counts.add(&f.phase.counts);
    }
    report.ok = report.counts.correct();
    if let Some(d) = runs.iter().find(|f| f.durable()) {
        report = report.with("durable_floor", d.json());
    }
    if let Some(path) = &opts.plot {
        plot_phase(
            path,
            &format!(
                "hotline-bench floor — {} msg/s, {} B, {date}",
                opts.rate, opts.size
            ),
            &main.phase,
            floor_curves(rest),
        )?;
    }
    Ok(report)
}
