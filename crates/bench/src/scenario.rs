//! The scenarios: each sets up what it needs, runs its phases, prints the final table and
//! returns the JSON report.
//!
//! This is the bench's output module: its tables go to stdout.
#![expect(
    clippy::print_stdout,
    reason = "the bench's report tables are its output"
)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use hotline_proto::Precedence;
use serde_json::{Value, json};

use crate::cli::{Cli, Options, Scenario, scale_steps};
use crate::clock::Ticker;
use crate::cluster::{Cluster, ClusterOptions};
use crate::driver::{Counts, Flow, Phase, PhaseResult, run_phase};
use crate::floor::{self, FloorParams};
use crate::plot::{self, Curve};
use crate::report::{self, Report, counts_line, kib, latency_table, mib, phase_json, round2, row};
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
        Scenario::Baseline { floor } => baseline(opts, *floor, params, &date, &ticker).await?,
        Scenario::Flood {
            flash_rate,
            overload,
            flood_rate,
            probe,
            probe_window,
            idle,
        } => {
            let f = FloodParams {
                flash_rate: *flash_rate,
                overload: *overload,
                flood_rate: *flood_rate,
                probe: Duration::from_secs_f64(probe.max(1.5)),
                probe_window: (*probe_window).max(1),
                idle: Duration::from_secs_f64(idle.unwrap_or(opts.duration).max(0.5)),
            };
            flood(opts, &f, params, &date, &ticker).await?
        }
        Scenario::Scale {
            steps,
            max_pairs,
            settle,
        } => {
            let steps = scale_steps(steps, *max_pairs)?;
            scale(
                opts,
                &steps,
                Duration::from_secs_f64(settle.max(0.0)),
                params,
                &date,
                &ticker,
            )
            .await?
        }
        Scenario::Soak { interval } => {
            let i = interval.unwrap_or(opts.duration / 10.0).max(1.0);
            soak(opts, Duration::from_secs_f64(i), params, &date, &ticker).await?
        }
        Scenario::Floor => floor_only(opts, params, &date, &ticker).await?,
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
    })
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

async fn baseline(
    opts: &Options,
    with_floor: bool,
    params: Value,
    date: &str,
    ticker: &Arc<Ticker>,
) -> Result<Report> {
    let mix = Mix::parse(&opts.mix)?;
    let mut cluster = Cluster::create(cluster_options(opts)?, opts.pairs).await?;
    cluster.start_pairs(opts.pairs).await?;
    let p = phase(
        "baseline",
        opts,
        vec![Flow {
            rate: opts.rate,
            mix,
        }],
    );
    let result = run_phase(&cluster, cluster.pairs(opts.pairs), &p, ticker, 0).await;
    let mode = cluster.node_mode();
    finish(cluster).await;
    let result = result?;
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

fn floor_params(opts: &Options) -> FloorParams {
    FloorParams {
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

struct FloodParams {
    flash_rate: f64,
    overload: f64,
    flood_rate: Option<f64>,
    probe: Duration,
    probe_window: usize,
    idle: Duration,
}

async fn flood(
    opts: &Options,
    f: &FloodParams,
    params: Value,
    date: &str,
    ticker: &Arc<Ticker>,
) -> Result<Report> {
    let mut cluster = Cluster::create(cluster_options(opts)?, opts.pairs).await?;
    cluster.start_pairs(opts.pairs).await?;
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
    let flash_json = |p: &PhaseResult| {
        json!({
            "accepted": p.stats.summary(Level::Accepted, flash),
            "delivered": p.stats.summary(Level::Delivered, flash),
            "round_trip": p.stats.summary(Level::RoundTrip, flash),
        })
    };
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

async fn scale(
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

async fn soak(
    opts: &Options,
    interval: Duration,
    params: Value,
    date: &str,
    ticker: &Arc<Ticker>,
) -> Result<Report> {
    let mix = Mix::parse(&opts.mix)?;
    let mut cluster = Cluster::create(cluster_options(opts)?, opts.pairs).await?;
    cluster.start_pairs(opts.pairs).await?;
    let mut p = phase(
        "soak",
        opts,
        vec![Flow {
            rate: opts.rate,
            mix,
        }],
    );
    p.interval = Some(interval);
    let result = run_phase(&cluster, cluster.pairs(opts.pairs), &p, ticker, 0).await;
    finish(cluster).await;
    let result = result?;
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

async fn floor_only(
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
