//! One load phase against running nodes: pace sends, follow every answer, check the inbox.
//!
//! Per pair, over the nodes' control sockets:
//! - a **writer** per open-loop flow submits `send` requests on its own connection at their
//!   intended times ([`crate::schedule`]), or, for a closed-loop throughput probe, one writer
//!   submits whenever fewer than a window of messages are unfinished. Every message's body is
//!   `hb <run> <pair> <index> ` padded to `--size`, so the receiving inbox can be matched back;
//! - a **reader** on each writer's connection turns `stored` / `accepted` / `delivered` /
//!   `acknowledged` / `refused` / `done` events into counts and latencies;
//! - a **follower** streams the receiver's inbox (`inbox --follow`) in delivery order and, with
//!   auto-ack, hands each id to an **acker**, which acknowledges it on a third connection.
//!
//! Latencies, from the message's intended send time: `accepted` is the sender node's time of
//! the relay's `accepted`; `delivered` is the partner's signed receipt time (all processes share
//! the machine's clock on loopback); `round_trip` is when the `delivered` event reaches the
//! bench; `acknowledged` is when the `acknowledged` event reaches the bench. Messages intended
//! during the warm-up are checked for correctness but not recorded.
//!
//! - `results`: what a phase measured ([`PhaseResult`], [`Counts`], …);
//! - `sender`: the writer and reader of each pair's sending node;
//! - `receiver`: the follower and acker at each pair's receiving node;
//! - `progress`: progress lines, soak snapshots and queue sampling while the phase runs.
//!
//! The phase ends with a bounded drain: it waits until every request is done and the inbox
//! holds every stored message, or the drain time is up; then [`crate::check`] judges the inbox.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use hotline_client::control::{ControlClient, WaitLevel};
use hotline_proto::Precedence;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

mod hops;
mod progress;
mod receiver;
mod results;
mod sender;

pub use hops::{HOPS, HopStats};
pub use results::{Counts, Interval, PhaseResult, Point, Queues};

use progress::{next_snapshot, sample_queues, snapshot, tick};
use receiver::{ack_loop, drain_replies, follow_loop};
use sender::{SendingConn, read_loop, write_loop};

use crate::check::{self, Verdict};
use crate::clock::{Clock, Ticker};
use crate::cluster::{Cluster, Pair};
use crate::schedule::{Mix, Pacer, Schedule};
use crate::stats::{self, LatencyStats};

/// A stream of messages at a total rate (split evenly over the pairs) with a precedence mix.
#[derive(Clone, Debug)]
pub struct Flow {
    /// Messages per second over all pairs.
    pub rate: f64,
    /// Precedences.
    pub mix: Mix,
}

/// What one phase does.
#[derive(Clone, Debug)]
pub struct Phase {
    /// Name in progress lines.
    pub name: String,
    /// Open-loop flows, each on its own connection per pair (merged into one in a closed loop).
    pub flows: Vec<Flow>,
    /// How long messages are sent, warm-up included.
    pub duration: Duration,
    /// Messages intended before this are not recorded.
    pub warmup: Duration,
    /// Body bytes.
    pub size: usize,
    /// Acknowledge every delivered message and wait for `acknowledged`.
    pub auto_ack: bool,
    /// Longest wait, after the last send, for everything to finish.
    pub drain: Duration,
    /// Closed loop instead: keep this many messages unfinished per pair (first flow's mix).
    pub closed_window: Option<usize>,
    /// Soak snapshots every so often.
    pub interval: Option<Duration>,
    /// Sample relay and sender queue depths every second.
    pub sample_queues: bool,
}

const STORED: u8 = 1;
const ACCEPTED: u8 = 2;
const DELIVERED: u8 = 4;
const ACKED: u8 = 8;
const REFUSED: u8 = 16;
const DONE: u8 = 32;

#[derive(Clone, Copy, Debug)]
struct MsgState {
    intended: Duration,
    precedence: Precedence,
    measured: bool,
    flags: u8,
    /// Per-hop stamps ([`hops`]).
    stamps: hops::Stamps,
}

#[derive(Debug, Default)]
struct PairState {
    /// In submission order over all of the pair's sending connections.
    msgs: Vec<MsgState>,
    /// Per sending connection (one per flow, see [`run_phase`]).
    conns: Vec<SendConn>,
    done: u64,
    stored: u64,
    received: Vec<check::Msg>,
}

/// One sending connection of a pair: it carries only sends, so a tag names a message.
#[derive(Debug, Default)]
struct SendConn {
    /// Index into [`PairState::msgs`], by tag − 1.
    msgs: Vec<usize>,
    writer_done: bool,
    /// Of its messages, how many are done.
    done: u64,
}

impl SendConn {
    fn finished(&self) -> bool {
        self.writer_done && self.done == self.msgs.len() as u64
    }
}

#[derive(Debug)]
struct Recorder {
    stats: LatencyStats,
    tick: Histogram<u64>,
    tick_flash: Histogram<u64>,
    interval: Histogram<u64>,
    counts: Counts,
    done: u64,
    /// Steady-state window: deliveries seen in it count towards throughput.
    window: (Duration, Duration),
    window_delivered: [u64; 4],
}

impl Default for Recorder {
    fn default() -> Self {
        Self {
            stats: LatencyStats::default(),
            tick: stats::histogram(),
            tick_flash: stats::histogram(),
            interval: stats::histogram(),
            counts: Counts::default(),
            done: 0,
            window: (Duration::MAX, Duration::MAX),
            window_delivered: [0; 4],
        }
    }
}

/// Shared by every task of a phase.
#[derive(Debug)]
struct Ctx {
    clock: Clock,
    ticker: Arc<Ticker>,
    run: String,
    size: usize,
    wait: WaitLevel,
    timeout_ms: u64,
    rec: Mutex<Recorder>,
    first_error: Mutex<Option<String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A run tag unique enough to tell this phase's messages from anything else in an inbox.
pub fn run_tag(phase: usize) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    format!("{:08x}-{phase}", nanos ^ std::process::id().rotate_left(16))
}

/// The body of message `index` of `pair`: tagged, then padded with `x` to `size` bytes.
pub fn body(run: &str, pair: usize, index: u64, size: usize) -> String {
    let mut b = String::with_capacity(size.max(32));
    let _ = write!(b, "hb {run} {pair} {index} ");
    while b.len() < size {
        b.push('x');
    }
    b
}

/// The index in a body made by [`body`] for `run` and `pair`.
pub fn parse_body(body: &str, run: &str, pair: usize) -> Option<u64> {
    let mut parts = body.splitn(5, ' ');
    if parts.next()? != "hb" || parts.next()? != run || parts.next()? != pair.to_string() {
        return None;
    }
    parts.next()?.parse().ok()
}

/// Runs one phase over `pairs` and waits for it to drain.
pub async fn run_phase(
    cluster: &Cluster,
    pairs: &[Pair],
    phase: &Phase,
    ticker: &Arc<Ticker>,
    phase_no: usize,
) -> Result<PhaseResult> {
    if pairs.is_empty() {
        bail!("no pairs to load");
    }
    let n = pairs.len() as f64;
    let ctx = Arc::new(Ctx {
        clock: Clock::start(),
        ticker: ticker.clone(),
        run: run_tag(phase_no),
        size: phase.size,
        wait: if phase.auto_ack {
            WaitLevel::Acknowledged
        } else {
            WaitLevel::Delivered
        },
        timeout_ms: (phase.duration + phase.drain + Duration::from_secs(60)).as_millis() as u64,
        rec: Mutex::new(Recorder::default()),
        first_error: Mutex::new(None),
    });

    // Connect everything first, so the schedule does not start with connection set-up.
    // Each open-loop flow submits on its own connection, as separate submitters (a bulk
    // tool and an operator's console) would: a node takes a connection's lines in order, so a
    // flash written behind a routine flood on the same connection waits for the flood's lines.
    let flow_groups: Vec<Vec<&Flow>> = if phase.closed_window.is_some() {
        vec![phase.flows.iter().collect()]
    } else {
        phase.flows.iter().map(|f| vec![f]).collect()
    };
    let mut conns = Vec::with_capacity(pairs.len());
    for pair in pairs {
        let mut sender = Vec::with_capacity(flow_groups.len());
        for _ in &flow_groups {
            sender.push(
                ControlClient::connect(&pair.sender.socket)
                    .await
                    .map(ControlClient::split)
                    .with_context(|| format!("sender {}", pair.sender.id))?,
            );
        }
        let follow = ControlClient::connect(&pair.receiver.socket)
            .await
            .map(ControlClient::split)
            .with_context(|| format!("receiver {}", pair.receiver.id))?;
        let ack = if phase.auto_ack {
            Some(ControlClient::connect(&pair.receiver.socket).await?.split())
        } else {
            None
        };
        conns.push((sender, follow, ack));
    }
    // Followers first: the inbox history they replay must not delay the first sends.
    let mut states = Vec::with_capacity(pairs.len());
    let mut senders = Vec::with_capacity(pairs.len());
    let mut aux = JoinSet::new();
    for (pair, (sender, (fw, fr), ack)) in pairs.iter().zip(conns) {
        let state = Arc::new(Mutex::new(PairState {
            conns: sender.iter().map(|_| SendConn::default()).collect(),
            ..PairState::default()
        }));
        let ack_tx = ack.map(|(w, r)| {
            let (tx, rx) = mpsc::unbounded_channel();
            aux.spawn(ack_loop(w, rx));
            aux.spawn(drain_replies(r));
            tx
        });
        aux.spawn(follow_loop(
            ctx.clone(),
            pair.index,
            fw,
            fr,
            state.clone(),
            ack_tx,
        ));
        states.push(state);
        senders.push(sender);
    }

    let start = ctx.clock.elapsed() + Duration::from_millis(50);
    let end = start + phase.duration;
    lock(&ctx.rec).window = (start + phase.warmup, end);
    let mut writers = JoinSet::new();
    let mut readers = JoinSet::new();
    for ((pair, sender), state) in pairs.iter().zip(senders).zip(&states) {
        let permits = phase.closed_window.map(|w| Arc::new(Semaphore::new(w)));
        for (conn, ((w, r), flows)) in sender.into_iter().zip(&flow_groups).enumerate() {
            let mut sched = Schedule::default();
            for f in flows {
                // Pairs are staggered within one interval so their sends interleave evenly.
                let per_pair = f.rate / n;
                let offset =
                    Duration::from_secs_f64(pair.index as f64 / f.rate.max(f64::MIN_POSITIVE));
                sched.add(
                    Pacer::new(per_pair, start + offset.min(phase.duration), end),
                    &f.mix,
                );
            }
            let mix = flows
                .first()
                .map_or(Mix::only(Precedence::Routine), |f| f.mix);
            writers.spawn(write_loop(
                ctx.clone(),
                SendingConn {
                    pair: pair.index,
                    conn,
                },
                w,
                state.clone(),
                sched,
                permits.clone().map(|p| (p, mix, start, end)),
                start + phase.warmup,
            ));
            readers.spawn(read_loop(
                ctx.clone(),
                conn,
                r,
                state.clone(),
                permits.clone(),
            ));
        }
    }

    let cpu_start = (cluster.cpu(), ctx.clock.elapsed());
    let mut series = Vec::new();
    let mut intervals = Vec::new();
    // Queue depths are sampled off the progress loop: a node's `status` waits behind its
    // queued commands, seconds under overload.
    let queues = Arc::new(Mutex::new(Queues::default()));
    if phase.sample_queues {
        aux.spawn(sample_queues(
            cluster.metrics_addr(),
            pairs[0].sender.socket.clone(),
            queues.clone(),
        ));
    }
    let mut progress = tokio::time::interval(Duration::from_secs(1));
    progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    progress.tick().await;
    let mut last = (0u64, 0u64);
    let mut snapshots = phase.interval.map(|i| {
        tokio::time::interval_at(tokio::time::Instant::from_std(ctx.clock.at(start + i)), i)
    });
    // Sending.
    loop {
        tokio::select! {
            r = writers.join_next() => match r {
                Some(r) => r.context("writer task")??,
                None => break,
            },
            Some(r) = readers.join_next() => {
                r.context("reader task")??;
            }
            _ = progress.tick() => {
                tick(&ctx, &phase.name, &mut series, &mut last, pairs.len());
            }
            () = next_snapshot(&mut snapshots) => {
                let t = ctx.clock.elapsed().saturating_sub(start);
                intervals.push(snapshot(&ctx, cluster, t));
            }
        }
    }
    let relay_rss = cluster.relay_rss();
    if let Some(i) = phase.interval {
        let t = ctx.clock.elapsed().saturating_sub(start);
        if intervals
            .last()
            .is_none_or(|l: &Interval| t.as_secs_f64() - l.t_s > i.as_secs_f64() / 2.0)
        {
            intervals.push(snapshot(&ctx, cluster, t));
        }
    }

    // Drain.
    let deadline = tokio::time::Instant::now() + phase.drain;
    let mut drained = false;
    let mut poll = tokio::time::interval(Duration::from_millis(20));
    loop {
        tokio::select! {
            Some(r) = readers.join_next() => r.context("reader task")??,
            _ = poll.tick() => {
                if states.iter().all(|s| finished(&lock(s))) {
                    drained = true;
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    break;
                }
            }
            _ = progress.tick() => {
                tick(&ctx, &format!("{} drain", phase.name), &mut series, &mut last, pairs.len());
            }
        }
    }
    // A last look at the inboxes: receipts can beat the follower's stream by a hair.
    if drained {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cpu_cores = cluster.cpu().cores_since(
        &cpu_start.0,
        (ctx.clock.elapsed() - cpu_start.1).as_secs_f64(),
    );
    readers.abort_all();
    aux.abort_all();
    tick(
        &ctx,
        &format!("{} done", phase.name),
        &mut series,
        &mut last,
        pairs.len(),
    );

    // Judge.
    let mut verdict = Verdict::default();
    let mut unconfirmed = 0;
    for s in &states {
        let s = lock(s);
        let sent: Vec<check::Msg> = s
            .msgs
            .iter()
            .enumerate()
            .filter(|(_, m)| m.flags & STORED != 0)
            .map(|(i, m)| check::Msg {
                index: i as u64,
                precedence: m.precedence,
            })
            .collect();
        let v = check::check(&sent, &s.received);
        let inbox: HashSet<u64> = s.received.iter().map(|m| m.index).collect();
        unconfirmed += s
            .msgs
            .iter()
            .enumerate()
            .filter(|(i, m)| {
                m.flags & STORED != 0 && m.flags & DELIVERED == 0 && inbox.contains(&(*i as u64))
            })
            .count() as u64;
        verdict.merge(&v);
    }
    let mut hop_stats = HopStats::default();
    for s in &states {
        for m in lock(s).msgs.iter().filter(|m| m.measured) {
            hop_stats.record(m.precedence, &m.stamps);
        }
    }
    let rec = lock(&ctx.rec);
    let mut counts = rec.counts.clone();
    counts.lost = verdict.lost;
    counts.duplicated = verdict.duplicated;
    counts.order_violations = verdict.order_violations;
    counts.unexpected = verdict.unexpected;
    counts.unconfirmed = unconfirmed;
    let window = rec.window.1.saturating_sub(rec.window.0);
    let rate = |n: u64| {
        if window.is_zero() {
            0.0
        } else {
            n as f64 / window.as_secs_f64()
        }
    };
    let throughput = rate(rec.window_delivered.iter().sum());
    let throughput_by_precedence = Precedence::ALL
        .into_iter()
        .filter(|p| rec.window_delivered[p.index()] > 0)
        .map(|p| (p.as_str().to_owned(), rate(rec.window_delivered[p.index()])))
        .collect();
    let first_error = lock(&ctx.first_error).clone();
    Ok(PhaseResult {
        name: phase.name.clone(),
        stats: rec.stats.clone(),
        throughput,
        throughput_by_precedence,
        offered_rate: phase.flows.iter().map(|f| f.rate).sum(),
        sent_rate: counts.sent as f64 / phase.duration.as_secs_f64().max(1e-9),
        counts,
        series,
        intervals,
        queues: lock(&queues).clone(),
        first_violation: verdict.first_violation,
        first_error,
        drained,
        relay_rss_bytes: relay_rss,
        cpu_cores,
        hops: hop_stats,
    })
}

fn finished(s: &PairState) -> bool {
    s.conns.iter().all(SendConn::finished)
        && s.done == s.msgs.len() as u64
        && s.received.len() as u64 >= s.stored
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_carry_their_index_and_size() {
        let b = body("abc-1", 7, 42, 256);
        assert_eq!(b.len(), 256);
        assert_eq!(parse_body(&b, "abc-1", 7), Some(42));
        assert_eq!(parse_body(&b, "abc-2", 7), None);
        assert_eq!(parse_body(&b, "abc-1", 8), None);
        // A size smaller than the tag gives just the tag.
        let b = body("abc-1", 0, 123_456, 4);
        assert_eq!(b, "hb abc-1 0 123456 ");
        assert_eq!(parse_body(&b, "abc-1", 0), Some(123_456));
        assert_eq!(parse_body("hello", "abc-1", 0), None);
    }
}
