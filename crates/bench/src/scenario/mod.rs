//! The scenarios: each sets up what it needs, runs its phases, prints the final table and
//! returns the JSON report.
//!
//! This is the bench's output module: its tables go to stdout.
//!
//! - `baseline`: `baseline` and `floor`;
//! - `flood`: flash under a routine flood;
//! - `scale`: memory and latency as pairs are added;
//! - `neighbours`: quiet pairs' flash while one other pair floods the relay;
//! - `soak`: drift and growth over a long run;
//! - `failover`: a relay killed under load, with two or more relays.
#![expect(
    clippy::print_stdout,
    reason = "the bench's report tables are its output"
)]

mod baseline;
mod failover;
mod flood;
mod neighbours;
mod scale;
mod soak;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::cli::{Cli, FloorChoice, Options, Scenario, scale_steps};
use crate::clock::Ticker;
use crate::cluster::{Cluster, ClusterOptions, NodeMode};
use crate::driver::{Flow, Phase, PhaseResult, run_phase};
use crate::floor::FloorParams;
use crate::plot::{self, Curve};
use crate::report::{self, Report, counts_line, latency_table, mib};
use crate::schedule::Mix;
use crate::stats::{Group, Level};

/// Runs the scenario the command line names; returns the report (already printed).
pub async fn run(cli: &Cli) -> Result<Report> {
    let opts = &cli.opts;
    opts.validate()?;
    let date = report::now_rfc3339();
    let params = params(cli);
    let ticker = Arc::new(Ticker::start().context("starting the pacing thread")?);
    println!(
        "hotline-bench {} — {}  ({})",
        cli.scenario.name(),
        date,
        report::command_line()
    );
    let report = match &cli.scenario {
        Scenario::Baseline { floor, floor_dir } => {
            let floors = floor
                .map(|choice| baseline::Floors::new(choice, floor_dir.as_deref()))
                .transpose()?;
            baseline::baseline(opts, floors.as_ref(), params, &date, &ticker).await?
        }
        Scenario::Flood {
            flash_rate,
            overload,
            flood_rate,
            probe,
            probe_window,
            idle,
        } => {
            let f = flood::FloodParams {
                flash_rate: *flash_rate,
                overload: *overload,
                flood_rate: *flood_rate,
                probe: Duration::from_secs_f64(probe.max(1.5)),
                probe_window: (*probe_window).max(1),
                idle: Duration::from_secs_f64(idle.unwrap_or(opts.duration).max(0.5)),
            };
            flood::flood(opts, &f, params, &date, &ticker).await?
        }
        Scenario::Scale {
            steps,
            max_pairs,
            settle,
        } => {
            let steps = scale_steps(steps, *max_pairs)?;
            scale::scale(
                opts,
                &steps,
                Duration::from_secs_f64(settle.max(0.0)),
                params,
                &date,
                &ticker,
            )
            .await?
        }
        Scenario::Neighbours {
            quiet_pairs,
            quiet_rate,
            flood_window,
            flood_wrong_streams,
        } => {
            let n = neighbours::NeighboursParams {
                quiet_pairs: *quiet_pairs,
                quiet_rate: *quiet_rate,
                flood_window: *flood_window,
                wrong_streams: *flood_wrong_streams,
            };
            neighbours::neighbours(opts, &n, params, &date, &ticker).await?
        }
        Scenario::Soak { interval } => {
            let i = interval.unwrap_or(opts.duration / 10.0).max(1.0);
            soak::soak(opts, Duration::from_secs_f64(i), params, &date, &ticker).await?
        }
        Scenario::Floor {
            kind,
            durable,
            floor_dir,
        } => {
            let choice = if *durable {
                FloorChoice::Durable
            } else {
                *kind
            };
            if floor_dir.is_some() && !choice.durable() {
                anyhow::bail!(
                    "--floor-dir is for the durable floor (--durable or --kind durable|both)"
                );
            }
            let floors = baseline::Floors::new(choice, floor_dir.as_deref())?;
            baseline::floor_only(opts, &floors, params, &date, &ticker).await?
        }
        Scenario::Failover { kill_at, partition } => {
            failover::failover(opts, *kill_at, *partition, params, &date, &ticker).await?
        }
    };
    if let Some(path) = &opts.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(report)
}

fn params(cli: &Cli) -> Value {
    let mut p = serde_json::to_value(&cli.opts).unwrap_or(Value::Null);
    if let (Value::Object(p), Ok(Value::Object(s))) = (&mut p, serde_json::to_value(&cli.scenario))
    {
        for (_, fields) in s {
            if let Value::Object(fields) = fields {
                p.extend(fields);
            }
        }
    }
    p
}

fn cluster_options(opts: &Options) -> Result<ClusterOptions> {
    let bin_dir = match &opts.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .map(PathBuf::from)
            .context("locating the binaries next to hotline-bench")?,
    };
    Ok(ClusterOptions {
        bin_dir,
        node_mode: opts.nodes,
        processes: opts.processes.map(usize::from),
        log: opts.log.clone(),
        keep: opts.keep,
        relay: opts.relay,
        certs: opts.certs.clone(),
        relay_pid: opts.relay_pid,
        relays: usize::from(opts.relays),
        impair: opts.impairment()?,
    })
}

/// A fresh cluster of `--pairs` pairs under one open-loop flow at `--rate` with `--mix`
/// (snapshots every `interval`, if given), stopped before the result is returned.
async fn steady(
    opts: &Options,
    name: &str,
    interval: Option<Duration>,
    ticker: &Arc<Ticker>,
) -> Result<(PhaseResult, Mix, NodeMode)> {
    let mix = Mix::parse(&opts.mix)?;
    let cluster = started_cluster(opts, opts.pairs).await?;
    let mut p = phase(
        name,
        opts,
        vec![Flow {
            rate: opts.rate,
            mix,
        }],
    );
    p.interval = interval;
    let result = run_phase(&cluster, cluster.pairs(opts.pairs), &p, ticker, 0).await;
    let mode = cluster.node_mode();
    finish(cluster).await;
    Ok((result?, mix, mode))
}

/// A fresh cluster with its first `pairs` pairs running.
async fn started_cluster(opts: &Options, pairs: usize) -> Result<Cluster> {
    let mut cluster = Cluster::create(cluster_options(opts)?, pairs).await?;
    cluster.start_pairs(pairs).await?;
    Ok(cluster)
}

async fn finish(cluster: Cluster) {
    if let Some(dir) = cluster.shutdown().await {
        eprintln!("kept {}", dir.display());
    }
}

fn phase(name: &str, opts: &Options, flows: Vec<Flow>) -> Phase {
    Phase {
        name: name.into(),
        flows,
        duration: opts.duration(),
        warmup: opts.warmup(),
        size: opts.size,
        auto_ack: opts.auto_ack,
        drain: opts.drain(),
        closed_window: None,
        interval: None,
        sample_queues: false,
    }
}

fn print_phase(title: &str, p: &PhaseResult) {
    println!("\n== {title}");
    println!(
        "offered {:.0} msg/s, sent {:.0} msg/s, throughput {:.1} msg/s delivered{}",
        p.offered_rate,
        p.sent_rate,
        p.throughput,
        if p.drained { "" } else { "  (drain timed out)" }
    );
    println!("{}", counts_line(&p.counts));
    if let Some(rss) = p.relay_rss_bytes {
        println!("relay RSS {}", mib(rss));
    }
    let cores = |c: Option<f64>| c.map_or("-".to_string(), |c| format!("{c:.2}"));
    println!(
        "CPU cores used: relay {}, node processes {}, bench {}",
        cores(p.cpu_cores.relay_s),
        cores(p.cpu_cores.nodes_s),
        cores(p.cpu_cores.bench_s)
    );
    if let Some(v) = &p.first_violation {
        println!("first violation: {v}");
    }
    if let Some(e) = &p.first_error {
        println!("first failed request: {e}");
    }
    print!("{}", latency_table(&p.stats));
    if !p.hops.is_empty() {
        print!("{}", p.hops.table());
    }
}

fn plot_phase(
    path: &std::path::Path,
    title: &str,
    p: &PhaseResult,
    extra: Vec<Curve<'_>>,
) -> Result<()> {
    let mut curves: Vec<Curve<'_>> = Level::ALL
        .into_iter()
        .filter(|&l| !p.stats.histogram(l, Group::All).is_empty())
        .map(|l| Curve {
            label: l.as_str().replace('_', " "),
            hist: p.stats.histogram(l, Group::All),
        })
        .collect();
    curves.extend(extra);
    plot::write(path, title, &curves, &p.series)?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

fn floor_params(opts: &Options, durable_dir: Option<PathBuf>) -> FloorParams {
    FloorParams {
        durable_dir,
        rate: opts.rate,
        duration: opts.duration(),
        warmup: opts.warmup(),
        size: opts.size,
        drain: opts.drain(),
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// A phase's `accepted`, `delivered` and round-trip summaries for one group, as the JSON
/// reports of the scenarios that compare phases write them.
fn ack_levels_json(r: &PhaseResult, group: Group) -> Value {
    serde_json::json!({
        "accepted": r.stats.summary(Level::Accepted, group),
        "delivered": r.stats.summary(Level::Delivered, group),
        "round_trip": r.stats.summary(Level::RoundTrip, group),
    })
}
