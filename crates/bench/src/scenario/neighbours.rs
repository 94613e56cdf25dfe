//! `neighbours`: does one noisy pair hurt everyone else on the relay? Quiet pairs send FLASH at
//! a low rate, first alone (idle phase), then while one more pair on the same relay sends
//! maximum-size routine bodies as fast as a closed-loop window lets it (flood phase). The
//! figure of merit is the quiet pairs' flash round-trip p99 flooded / idle, against the goal of
//! at most 1.5× (issue 10, item 6); the relay's memory is read after each phase.
//!
//! With `--flood-wrong-streams` the flood comes from a misbehaving client instead: the flooding
//! pair's sender runs no node (the relay keeps one live connection per identity), and a
//! [`Rogue`] client connects with that endpoint's own credentials before the idle phase, idles
//! through it, then writes maximum-size routine envelopes on its flash lane stream and control
//! stream for the flood phase's duration. The relay refuses every one (`Refused{Malformed}`);
//! the same ratio then shows what refusing a wrong-stream flood costs the quiet pairs. Reported
//! besides: the frames and MiB/s the rogue client wrote, the refusals it read back, and the
//! relay's `hotline_relay_wrong_stream_frames_total` before and after.
//!
//! Output: the phase tables and the comparison on stdout, and the JSON report.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use hotline_client::control::ControlClient;
use hotline_proto::Precedence;
use hotline_proto::wire::MAX_BODY_LEN;
use serde_json::Value;

use super::{cluster_options, finish, phase, plot_phase, print_phase, started_cluster};
use crate::cli::Options;
use crate::clock::Ticker;
use crate::cluster::Cluster;
use crate::driver::{Counts, Flow, PhaseResult, run_phase};
use crate::plot::Curve;
use crate::report::{Report, mib, phase_json, round2, row};
use crate::rogue::{CONTROL_EVERY, FloodPlan, Rogue, RogueFlood};
use crate::schedule::Mix;
use crate::stats::{Group, Level};

/// The goal: quiet pairs' flash round-trip p99 under the flood at most this multiple of idle.
const GOAL: f64 = 1.5;
/// The rogue client's frame budget per second of flood: about 2.4 GiB/s of 256 KiB frames,
/// above what loopback QUIC carries, so it only bounds a run that went wrong.
const ROGUE_MAX_FRAMES_PER_S: f64 = 10_000.0;

pub(super) struct NeighboursParams {
    pub(super) quiet_pairs: usize,
    pub(super) quiet_rate: f64,
    pub(super) flood_window: usize,
    /// The flood comes from a rogue client on the wrong streams.
    pub(super) wrong_streams: bool,
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
    noise: Noise,
    flood_mem: Memory,
}

/// Where the flood came from.
enum Noise {
    /// A pair of nodes sending routine.
    Pair(Box<PhaseResult>),
    /// A rogue client on the wrong streams.
    Rogue(Box<RogueNoise>),
}

struct RogueNoise {
    flood: RogueFlood,
    /// The relay's wrong-stream counter per arrival stream, before and after the flood.
    relay_before: Option<BTreeMap<String, u64>>,
    relay_after: Option<BTreeMap<String, u64>>,
}

impl RogueNoise {
    /// How much the relay's wrong-stream counter grew, per stream and in total.
    fn relay_delta(&self) -> Option<(BTreeMap<String, u64>, u64)> {
        let (before, after) = (self.relay_before.as_ref()?, self.relay_after.as_ref()?);
        Some(counter_delta(before, after))
    }
}

/// Per-label growth of a counter between two scrapes, and its total.
fn counter_delta(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> (BTreeMap<String, u64>, u64) {
    let delta: BTreeMap<String, u64> = after
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.saturating_sub(before.get(k).copied().unwrap_or(0)),
            )
        })
        .collect();
    let total = delta.values().sum();
    (delta, total)
}

impl Noise {
    fn mode(&self) -> &'static str {
        match self {
            Self::Pair(_) => "pair",
            Self::Rogue(_) => "wrong_streams",
        }
    }
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
    let cluster = if n.wrong_streams {
        // The noisy pair is prepared (its PKI and configs) but runs no node: its sender's
        // identity is the rogue client's.
        let mut cluster = Cluster::create(cluster_options(opts)?, n.quiet_pairs + 1).await?;
        cluster.start_pairs(n.quiet_pairs).await?;
        cluster
    } else {
        // Every pair, the noisy one included, is connected through both phases.
        started_cluster(opts, n.quiet_pairs + 1).await?
    };
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
    let flooder = match &p.noise {
        Noise::Pair(_) => "one pair floods",
        Noise::Rogue(_) => "a rogue client floods on the wrong streams",
    };
    print_phase(
        &format!("neighbours 2/2: the same quiet pairs while {flooder} (quiet pairs' figures)"),
        &p.quiet,
    );
    if let Noise::Pair(noisy) = &p.noise {
        print_phase(
            &format!(
                "neighbours 2/2: the flooding pair, {} KiB routine bodies, window {}",
                MAX_BODY_LEN / 1024,
                n.flood_window
            ),
            noisy,
        );
    }

    let flash = Group::Only(Precedence::Flash);
    let idle_rt = p.idle.stats.summary(Level::RoundTrip, flash);
    let flood_rt = p.quiet.stats.summary(Level::RoundTrip, flash);
    let ratio = p99_ratio(idle_rt.p99, flood_rt.p99);
    let show = |m: Option<u64>| m.map_or("-".into(), mib);
    let flooding = match &p.noise {
        Noise::Pair(_) => format!("one pair flooding {} KiB routine", MAX_BODY_LEN / 1024),
        Noise::Rogue(r) => format!(
            "a rogue client as {} flooding {} KiB routine on the wrong streams",
            r.flood.endpoint,
            MAX_BODY_LEN / 1024
        ),
    };
    println!(
        "\n== neighbours: {} quiet pair(s) × {} flash msg/s ({quiet_total} msg/s), {} B; \
         {flooding}; nodes {mode:?}",
        n.quiet_pairs, n.quiet_rate, opts.size,
    );
    let flood_mib_s = match &p.noise {
        Noise::Pair(noisy) => {
            let mib_s = noisy.throughput * MAX_BODY_LEN as f64 / (1024.0 * 1024.0);
            println!(
                "flooding pair delivered {:.1} msg/s ({mib_s:.1} MiB/s)",
                noisy.throughput
            );
            mib_s
        }
        Noise::Rogue(r) => {
            for line in rogue_lines(r) {
                println!("{line}");
            }
            r.flood.mib_per_s()
        }
    };
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
    let mut phases = vec![&p.idle, &p.quiet];
    if let Noise::Pair(noisy) = &p.noise {
        phases.push(noisy);
    }
    for r in &phases {
        counts.add(&r.counts);
    }
    let flash_json = |r: &PhaseResult| super::ack_levels_json(r, flash);
    let mut report = Report::new("neighbours", params, &p.quiet, date)
        .with("quiet_flash_idle", flash_json(&p.idle))
        .with("quiet_flash_flood", flash_json(&p.quiet))
        .with("quiet_flash_round_trip_p99_ratio", ratio.map(round2))
        .with("goal_ratio", GOAL)
        .with("goal_met", ratio.map(met))
        .with("flood_mode", p.noise.mode())
        .with("flood_body_bytes", MAX_BODY_LEN);
    report = match &p.noise {
        Noise::Pair(noisy) => report
            .with("flood_delivered_msgs_per_s", round2(noisy.throughput))
            .with("flood_delivered_mib_per_s", round2(flood_mib_s))
            .with("queues", &noisy.queues),
        Noise::Rogue(r) => {
            let delta = r.relay_delta();
            report
                .with("flood_sent_frames", r.flood.frames)
                .with("flood_sent_frames_per_s", round2(r.flood.frames_per_s()))
                .with("flood_sent_mib_per_s", round2(flood_mib_s))
                .with("flood_refusals_read", r.flood.replies.malformed_refusals)
                .with("rogue_flood", &r.flood)
                .with(
                    "relay_wrong_stream_frames_delta",
                    delta.as_ref().map(|(per_stream, _)| per_stream),
                )
                .with(
                    "relay_wrong_stream_frames_delta_total",
                    delta.map(|(_, total)| total),
                )
                .with("queues", &p.quiet.queues)
        }
    };
    let phases: Vec<Value> = phases.into_iter().map(phase_json).collect();
    let mut report = report
        .with("relay_memory_connected", p.connected)
        .with("relay_memory_after_idle", p.idle_mem)
        .with("relay_memory_after_flood", p.flood_mem)
        .with("node_mode", mode)
        .with("phases", phases);
    report.counts = counts;
    report.ok = report.counts.correct();
    if let Some(path) = &opts.plot {
        plot_phase(
            path,
            &format!(
                "hotline-bench neighbours — {} quiet pairs × {} flash/s + {}, {date}",
                n.quiet_pairs,
                n.quiet_rate,
                match p.noise {
                    Noise::Pair(_) => "one flooding pair",
                    Noise::Rogue(_) => "a wrong-stream flood",
                }
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
    // The rogue client connects before the idle phase, as the noisy pair's nodes are
    // connected through both phases in the other mode.
    let rogue = if n.wrong_streams {
        Some(connect_rogue(cluster, n.quiet_pairs).await?)
    } else {
        None
    };
    let connected = Memory::read(cluster);

    let idle_phase = phase("neighbours idle", opts, vec![quiet_flow.clone()]);
    let idle = run_phase(cluster, quiet_pairs, &idle_phase, ticker, 0).await?;
    let idle_mem = Memory::read(cluster);

    let mut quiet_phase = phase("neighbours quiet", opts, vec![quiet_flow]);
    let (quiet, noise) = match rogue {
        Some(rogue) => {
            // No noisy phase to sample the relay's queues: the quiet one does.
            quiet_phase.sample_queues = true;
            let relay_before = cluster.relay_wrong_stream_frames().await;
            let plan = FloodPlan {
                duration: opts.duration(),
                max_frames: (opts.duration * ROGUE_MAX_FRAMES_PER_S).ceil() as u64,
            };
            let (quiet, flood) = tokio::join!(
                run_phase(cluster, quiet_pairs, &quiet_phase, ticker, 1),
                rogue.flood(plan),
            );
            let relay_after = cluster.relay_wrong_stream_frames().await;
            let noise = RogueNoise {
                flood: flood.context("the rogue client's flood")?,
                relay_before,
                relay_after,
            };
            (quiet?, Noise::Rogue(Box::new(noise)))
        }
        None => {
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
            (quiet?, Noise::Pair(Box::new(noisy?)))
        }
    };
    let flood_mem = Memory::read(cluster);
    Ok(Phases {
        connected,
        idle,
        idle_mem,
        quiet,
        noise,
        flood_mem,
    })
}

/// A rogue client connected as the noisy pair's sender, which runs no node.
async fn connect_rogue(cluster: &Cluster, index: usize) -> Result<Rogue> {
    let pair = cluster
        .prepared(index)
        .with_context(|| format!("pair {index} was not prepared"))?;
    let ep = &pair.sender;
    if ControlClient::connect(&ep.socket).await.is_ok() {
        bail!(
            "--flood-wrong-streams: a node of {} is running (its control socket {} answers); \
             stop it, the rogue client needs its identity",
            ep.id,
            ep.socket.display()
        );
    }
    let config = cluster.node_config(ep)?;
    Rogue::connect(config)
        .await
        .with_context(|| format!("connecting the rogue client as {}", ep.id))
}

/// The rogue client's lines of the comparison.
fn rogue_lines(r: &RogueNoise) -> Vec<String> {
    let f = &r.flood;
    let mut lines = vec![format!(
        "rogue client {} → {} wrote {} routine envelope(s) of {} KiB on the wrong streams \
         ({} on flash, {} on control, 1 in {CONTROL_EVERY}) in {:.1} s: {:.0} frames/s, \
         {:.1} MiB/s{}",
        f.endpoint,
        f.recipient,
        f.frames,
        f.body_bytes / 1024,
        f.flash_stream_frames,
        f.control_stream_frames,
        f.seconds,
        f.frames_per_s(),
        f.mib_per_s(),
        if f.frame_budget_hit {
            " (frame budget reached)"
        } else {
            ""
        }
    )];
    let rep = &f.replies;
    lines.push(format!(
        "refusals read back: {} Refused{{Malformed}} of {} frames; {} other refusal(s), \
         {} accepted, {} other frame(s)",
        rep.malformed_refusals, f.frames, rep.other_refusals, rep.accepted, rep.other_frames
    ));
    lines.push(match r.relay_delta() {
        Some((per_stream, total)) => {
            let streams: Vec<String> = per_stream
                .iter()
                .filter(|(_, v)| **v > 0)
                .map(|(k, v)| format!("{k} +{v}"))
                .collect();
            format!(
                "relay hotline_relay_wrong_stream_frames_total: +{total} ({})",
                if streams.is_empty() {
                    "none".to_owned()
                } else {
                    streams.join(", ")
                }
            )
        }
        None => "relay hotline_relay_wrong_stream_frames_total: not readable (no metrics \
                 endpoint)"
            .to_owned(),
    });
    if let Some(d) = &rep.first_malformed_detail {
        lines.push(format!("first refusal: {d}"));
    }
    if let Some(d) = &rep.first_other_refusal {
        lines.push(format!("first other refusal: {d}"));
    }
    if let Some(e) = &f.write_error {
        lines.push(format!("rogue client stopped early: {e}"));
    }
    lines
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
    fn relay_counter_delta_is_the_growth_per_stream() {
        let m = |v: &[(&str, u64)]| -> BTreeMap<String, u64> {
            v.iter().map(|(k, n)| ((*k).to_owned(), *n)).collect()
        };
        let before = m(&[("control", 2), ("flash", 10)]);
        let after = m(&[("control", 5), ("flash", 30), ("routine", 1)]);
        let (delta, total) = counter_delta(&before, &after);
        assert_eq!(delta, m(&[("control", 3), ("flash", 20), ("routine", 1)]));
        assert_eq!(total, 24);
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
