//! The `hotline-bench` command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use crate::cluster::NodeMode;
use crate::schedule::Mix;

const EXAMPLES: &str = "\
Examples:
  hotline-bench baseline --rate 1000 --duration 15 --json base.json --plot base.svg
  hotline-bench baseline --rate 10000 --mix routine=90,flash=10 --auto-ack --floor
  hotline-bench baseline --rate 1000 --duration 15 --floor both --floor-dir /var/tmp
  hotline-bench flood --duration 10 --flash-rate 150 --json flood.json
  hotline-bench scale --rate 1000 --duration 5 --max-pairs 1000
  hotline-bench neighbours --quiet-pairs 8 --duration 10 --json neighbours.json
  hotline-bench neighbours --quiet-pairs 8 --duration 10 --flood-wrong-streams
  hotline-bench soak --rate 2000 --duration 3600 --interval 60 --json soak.json
  hotline-bench floor --rate 10000 --duration 10
  hotline-bench floor --durable --rate 1000 --duration 10
  hotline-bench failover --rate 500 --duration 20 --json failover.json
  hotline-bench failover --rate 200 --duration 40 --partition 20 --impair loss=2%,delay=40ms
  hotline-bench baseline --rate 1000 --duration 15 --relays 2
  hotline-bench baseline --rate 100 --duration 20 --impair loss=5%,delay=150ms,jitter=30ms
  hotline-bench baseline --certs ex --relay 127.0.0.1:4433 --relay-pid 4242

By default each run makes a fresh exercise PKI in a temporary directory, starts its own
hotline-relay process and `hotline node` processes (the binaries next to this one: build
them with `cargo build --release --workspace --bins`) on free loopback ports, and drives the
nodes through their control sockets. Latency is measured from each message's intended send
time (open loop, no coordinated omission), in HDR histograms per precedence and ack level:
  accepted      the relay holds it (the sender node's time of the relay's `accepted`)
  delivered     the partner stored it (the partner's signed receipt time)
  round_trip    the `delivered` receipt is back at the bench
  acknowledged  the partner operator (here the bench, with --auto-ack) acknowledged it
Every run ends with a bounded drain and checks the receivers' inboxes: the exit status is 2
if anything was lost, duplicated, delivered out of order or never confirmed, 1 on errors.";

/// Hotline load tests: latency, throughput, FLASH under flood, scale, soak, and the bare-QUIC
/// floor Hotline's overhead is quoted against.
#[derive(Debug, Parser, Serialize)]
#[command(name = "hotline-bench", version, after_help = EXAMPLES)]
pub struct Cli {
    /// The scenario.
    #[command(subcommand)]
    pub scenario: Scenario,
    /// Options shared by every scenario.
    #[command(flatten)]
    pub opts: Options,
}

/// Options shared by every scenario (they may come before or after the scenario name).
#[derive(Debug, Clone, Args, Serialize)]
pub struct Options {
    /// Hotlines (endpoint pairs) to load; each sends from aN to bN. Example: --pairs 10
    #[arg(long, global = true, default_value_t = 1, value_name = "N")]
    pub pairs: usize,
    /// Offered messages per second, in total over all pairs (open loop). Example: --rate 10000
    #[arg(
        long,
        global = true,
        default_value_t = 1000.0,
        value_name = "MSGS_PER_S"
    )]
    pub rate: f64,
    /// Seconds of sending (per step for scale), warm-up included. Example: --duration 20
    #[arg(long, global = true, default_value_t = 10.0, value_name = "SECS")]
    pub duration: f64,
    /// Message body bytes (at least the ~25-byte tag the bench matches inboxes by).
    /// Example: --size 1024
    #[arg(long, global = true, default_value_t = 256, value_name = "BYTES")]
    pub size: usize,
    /// Precedence mix as weights, or one precedence. Example: --mix routine=90,flash=10
    #[arg(long, global = true, default_value = "routine=100", value_name = "MIX")]
    pub mix: String,
    /// The receiving side acknowledges every message as it arrives (inbox --follow + ack), and
    /// senders wait for `acknowledged`. Example: --auto-ack
    #[arg(long, global = true)]
    pub auto_ack: bool,
    /// Write the results as JSON: scenario, params, counts, throughput_msgs_per_s,
    /// latency_us.LEVEL.PRECEDENCE.{count,p50,p90,p99,p999,max}, relay_rss_bytes, and the
    /// scenario's own fields. Example: --json out.json
    #[arg(long, global = true, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Draw latency percentiles and latency over time as SVG. Example: --plot out.svg
    #[arg(long, global = true, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Seconds at the start whose messages are checked but not recorded. Example: --warmup 2
    #[arg(long, global = true, default_value_t = 1.0, value_name = "SECS")]
    pub warmup: f64,
    /// Longest wait, after the last send, for every message to finish. Example: --drain 60
    #[arg(long, global = true, default_value_t = 30.0, value_name = "SECS")]
    pub drain: f64,
    /// Target this running relay instead of starting one (needs --certs). Example:
    /// --relay 127.0.0.1:4433
    #[arg(long, global = true, value_name = "IP:PORT", requires = "certs")]
    pub relay: Option<SocketAddr>,
    /// An existing exercise directory (`hotline certs init`): its `[[hotline]]` pairs are used,
    /// running nodes are driven as they are, missing ones started. Example: --certs ex
    #[arg(long, global = true, value_name = "DIR")]
    pub certs: Option<PathBuf>,
    /// Pid of the running relay, to report its memory with --relay. Example: --relay-pid 4242
    #[arg(long, global = true, value_name = "PID")]
    pub relay_pid: Option<u32>,
    /// How nodes run: auto (processes up to 16 pairs, in-process above), process (one
    /// `hotline node` per endpoint) or in-process (`hotline_client::node::Node`s in the bench).
    /// Example: --nodes process
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "auto",
        value_name = "MODE"
    )]
    pub nodes: NodeMode,
    /// Spread the nodes the bench starts over K `hotline node` processes (each hosting a
    /// share of the endpoints) instead of one process per endpoint or all inside the bench.
    /// Example: --processes 4
    #[arg(long, global = true, value_name = "K", value_parser = clap::value_parser!(u16).range(1..))]
    pub processes: Option<u16>,
    /// RUST_LOG for the relay and nodes the bench starts (logs go to files in the run
    /// directory). Example: --log info
    #[arg(long, global = true, default_value = "warn", value_name = "FILTER")]
    pub log: String,
    /// Where `hotline` and `hotline-relay` are (default: next to this binary). Example:
    /// --bin-dir target/release
    #[arg(long, global = true, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
    /// Keep the run directory (PKI, configs, stores, logs) and print its path. Example: --keep
    #[arg(long, global = true)]
    pub keep: bool,
    /// Relays to start, each its own process and store; every node uses all of them at once
    /// (the cost of redundancy). Example: --relays 2
    #[arg(long, global = true, default_value_t = 1, value_name = "N",
          value_parser = clap::value_parser!(u8).range(1..=8))]
    pub relays: u8,
    /// Put a user-space impairment proxy in front of every relay the bench starts, both
    /// directions: loss, dup, reorder as percentages, delay and jitter in ms or s. Shows what
    /// an exercise over a poor link will see. Example: --impair loss=5%,delay=150ms,jitter=30ms
    #[arg(long, global = true, value_name = "SPEC")]
    pub impair: Option<String>,
}

/// What to measure.
#[derive(Debug, Clone, Subcommand, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    /// Open-loop load at a fixed rate over --pairs pairs (one by default).
    ///
    /// Example: hotline-bench baseline --rate 1000 --duration 15 --floor
    Baseline {
        /// Also run the floor at the same rate and size after Hotline, and report Hotline's
        /// round-trip percentiles as ratios to each floor: bare (the two-hop QUIC forwarder),
        /// durable (the same, both ends fdatasync every message before passing it on) or both.
        /// --floor alone means both. Example: --floor durable
        #[arg(
            long,
            value_enum,
            num_args = 0..=1,
            default_missing_value = "both",
            value_name = "KIND"
        )]
        floor: Option<FloorChoice>,
        /// Where the durable floor's logs go: a temporary directory inside DIR, which must not
        /// be on tmpfs (default: the system temporary directory, where the bench's own run
        /// directories are). Example: --floor-dir /var/tmp
        #[arg(long, value_name = "DIR", requires = "floor")]
        floor_dir: Option<PathBuf>,
    },
    /// FLASH latency while routine traffic saturates the link.
    ///
    /// Measures the maximum throughput closed-loop first, then flash alone on an idle link,
    /// then routine at --overload times that maximum with the same flash trickle.
    /// Example: hotline-bench flood --duration 10 --flash-rate 150
    Flood {
        /// Flash messages per second, in both the idle and the flood phase. Example:
        /// --flash-rate 200
        #[arg(long, default_value_t = 150.0, value_name = "MSGS_PER_S")]
        flash_rate: f64,
        /// Routine rate as a multiple of the measured maximum. Example: --overload 1.5
        #[arg(long, default_value_t = 1.2, value_name = "FACTOR")]
        overload: f64,
        /// Routine rate instead of overload × maximum. Example: --flood-rate 20000
        #[arg(long, value_name = "MSGS_PER_S")]
        flood_rate: Option<f64>,
        /// Seconds of the closed-loop maximum-throughput probe. Example: --probe 5
        #[arg(long, default_value_t = 4.0, value_name = "SECS")]
        probe: f64,
        /// Messages kept unfinished per pair during the probe. Example: --probe-window 4000
        #[arg(long, default_value_t = 2000, value_name = "N")]
        probe_window: usize,
        /// Seconds of the idle-link flash phase (default: --duration). Example: --idle 10
        #[arg(long, value_name = "SECS")]
        idle: Option<f64>,
    },
    /// Latency, throughput and relay memory per connected endpoint from 1 pair upwards.
    ///
    /// Memory per endpoint is (relay RSS with N pairs connected and idle − RSS with none) /
    /// (2 N), read from /proc/PID/status of the relay.
    /// Example: hotline-bench scale --rate 1000 --duration 5 --max-pairs 1000
    Scale {
        /// Pair counts, in order. Example: --steps 1,10,100,1000
        #[arg(long, default_value = "1,10,100", value_name = "N,N,...")]
        steps: String,
        /// Add the steps 1000, 10000, … up to and including this many pairs. Example:
        /// --max-pairs 1000
        #[arg(long, value_name = "N")]
        max_pairs: Option<usize>,
        /// Seconds to let newly connected pairs settle before reading memory. Example:
        /// --settle 5
        #[arg(long, default_value_t = 2.0, value_name = "SECS")]
        settle: f64,
    },
    /// Noisy neighbour: quiet pairs' FLASH latency while one other pair floods the relay.
    ///
    /// --quiet-pairs pairs each send flash at --quiet-rate, first alone (idle phase), then
    /// while one extra pair sends maximum-size routine bodies as fast as its window allows
    /// (flood phase); each phase lasts --duration. Reports the quiet pairs' flash round-trip
    /// p99 flood / idle against the goal of at most 1.5×, and the relay's memory after each
    /// phase. --pairs, --rate, --mix do not apply; --size is the quiet pairs' body size.
    ///
    /// With --flood-wrong-streams the flooding pair's sender runs no node: a rogue client in
    /// the bench connects with that endpoint's own certificate and key and writes
    /// maximum-size routine envelopes on its flash lane stream (every 8th on its control
    /// stream) as fast as QUIC lets it, for --duration; the relay refuses each one. Reports
    /// the same ratio, the frames and MiB/s the rogue client wrote, the refusals it read back
    /// and the relay's wrong-stream counter.
    /// Example: hotline-bench neighbours --quiet-pairs 8 --duration 10 --json n.json
    Neighbours {
        /// Pairs sending flash at a low rate, whose latency is measured. Example:
        /// --quiet-pairs 8
        #[arg(long, default_value_t = 8, value_name = "N")]
        quiet_pairs: usize,
        /// Flash messages per second per quiet pair. Example: --quiet-rate 5
        #[arg(long, default_value_t = 5.0, value_name = "MSGS_PER_S")]
        quiet_rate: f64,
        /// Maximum-size routine messages the flooding pair keeps unfinished (closed loop).
        /// Example: --flood-window 64
        #[arg(long, default_value_t = 64, value_name = "N")]
        flood_window: usize,
        /// Flood with a rogue client on the wrong streams (routine envelopes on the flash lane
        /// and control streams, each refused by the relay) instead of a node sending routine.
        /// --flood-window does not apply. Example: --flood-wrong-streams
        #[arg(long)]
        flood_wrong_streams: bool,
    },
    /// A long run watching latency drift and memory growth per interval.
    ///
    /// Example: hotline-bench soak --rate 2000 --duration 3600 --interval 60
    Soak {
        /// Seconds per snapshot (default: a tenth of --duration, at least 1). Example:
        /// --interval 60
        #[arg(long, value_name = "SECS")]
        interval: Option<f64>,
    },
    /// The physical floor: the same payloads and pacing through a bare two-hop QUIC forwarder
    /// with Hotline's TLS settings, no Hotline logic.
    ///
    /// With --durable (or --kind durable) both ends append every message to a file and
    /// fdatasync it (group commit, one sync per batch) before passing it on: the least a
    /// system that acknowledges only what is on disk must do. --kind both runs the two in turn.
    ///
    /// Example: hotline-bench floor --rate 10000 --duration 10
    Floor {
        /// Which floor: bare, durable or both. Example: --kind both
        #[arg(long, value_enum, default_value = "bare", value_name = "KIND")]
        kind: FloorChoice,
        /// The durable floor (--kind durable). Example: --durable
        #[arg(long, conflicts_with = "kind")]
        durable: bool,
        /// Where the durable floor's logs go: a temporary directory inside DIR, which must not
        /// be on tmpfs (default: the system temporary directory). Example: --floor-dir /var/tmp
        #[arg(long, value_name = "DIR")]
        floor_dir: Option<PathBuf>,
    },
    /// A relay killed under load: two relays (or --relays), steady load, `kill -9` of the first
    /// relay at --kill-at. Reports the round trip per second around the kill against the
    /// steady state before it (goal: failover p99 < steady p99 + 1 s, max < 1.5 s) and the
    /// lost and duplicated counts (must be 0).
    ///
    /// Example: hotline-bench failover --rate 500 --duration 20
    Failover {
        /// Seconds into the run at which the first relay is killed (default: half of
        /// --duration). Example: --kill-at 8
        #[arg(long, value_name = "SECS")]
        kill_at: Option<f64>,
        /// Instead of killing a relay, cut every path between nodes and relays for SECS at
        /// --kill-at (default a third of --duration), then heal it, and report how long the
        /// backlog took to drain. The paths run through impairment proxies (--impair sets
        /// them; none by default). Example: --partition 20
        #[arg(long, value_name = "SECS")]
        partition: Option<f64>,
    },
}

impl Scenario {
    /// The scenario's name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Baseline { .. } => "baseline",
            Self::Flood { .. } => "flood",
            Self::Scale { .. } => "scale",
            Self::Neighbours { .. } => "neighbours",
            Self::Soak { .. } => "soak",
            Self::Floor { .. } => "floor",
            Self::Failover { .. } => "failover",
        }
    }
}

/// Which floor(s) a run measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FloorChoice {
    /// The bare two-hop QUIC forwarder.
    Bare,
    /// The same, with both ends logging and fdatasyncing every message first.
    Durable,
    /// Bare, then durable.
    Both,
}

impl FloorChoice {
    /// Includes the bare floor.
    pub fn bare(self) -> bool {
        matches!(self, Self::Bare | Self::Both)
    }

    /// Includes the durable floor.
    pub fn durable(self) -> bool {
        matches!(self, Self::Durable | Self::Both)
    }
}

impl Options {
    /// Checks values clap cannot; one line naming the option.
    pub fn validate(&self) -> Result<()> {
        if !(self.rate > 0.0 && self.rate.is_finite()) {
            bail!("--rate must be a positive number of messages per second");
        }
        if !(self.duration > 0.0 && self.duration.is_finite()) {
            bail!("--duration must be a positive number of seconds");
        }
        if !(self.warmup >= 0.0 && self.warmup < self.duration) {
            bail!(
                "--warmup must be at least 0 and less than --duration ({} s)",
                self.duration
            );
        }
        if !(self.drain >= 0.0 && self.drain.is_finite()) {
            bail!("--drain must be a number of seconds");
        }
        if self.pairs == 0 {
            bail!("--pairs must be at least 1");
        }
        if self.size > hotline_proto::wire::MAX_BODY_LEN {
            bail!(
                "--size {} exceeds the {}-byte body limit",
                self.size,
                hotline_proto::wire::MAX_BODY_LEN
            );
        }
        Mix::parse(&self.mix)?;
        self.impairment()?;
        if self.impair.is_some() && self.relay.is_some() {
            bail!("--impair applies to the relays the bench starts, not to --relay");
        }
        if self.relays > 1 && self.certs.is_some() {
            bail!(
                "--relays starts the bench's own relays; with --certs the exercise's relays are used"
            );
        }
        Ok(())
    }

    /// `--impair` parsed, if given.
    pub fn impairment(&self) -> Result<Option<hotline_impair::Impairment>> {
        self.impair
            .as_deref()
            .map(|s| {
                s.parse()
                    .map_err(|e| anyhow::anyhow!("--impair {s:?}: {e}"))
            })
            .transpose()
    }

    /// `--duration` as a duration.
    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.duration)
    }

    /// `--warmup` as a duration.
    pub fn warmup(&self) -> Duration {
        Duration::from_secs_f64(self.warmup)
    }

    /// `--drain` as a duration.
    pub fn drain(&self) -> Duration {
        Duration::from_secs_f64(self.drain)
    }
}

/// Parses `1,10,100`, adding powers of ten up to `max` (and `max` itself).
pub fn scale_steps(steps: &str, max: Option<usize>) -> Result<Vec<usize>> {
    let mut out = Vec::new();
    for s in steps.split(',').filter(|s| !s.trim().is_empty()) {
        let n: usize = s
            .trim()
            .parse()
            .map_err(|_| anyhow::anyhow!("--steps {s:?} is not a whole number"))?;
        if n == 0 {
            bail!("--steps values must be at least 1");
        }
        out.push(n);
    }
    if let Some(max) = max {
        out.retain(|&n| n <= max);
        let mut p = 1;
        while p <= max {
            if !out.contains(&p) {
                out.push(p);
            }
            p *= 10;
        }
        if !out.contains(&max) {
            out.push(max);
        }
    }
    out.sort_unstable();
    out.dedup();
    if out.is_empty() {
        bail!("--steps names no pair count");
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
