//! One load phase against running nodes: pace sends, follow every answer, check the inbox.
//!
//! Per pair, over the nodes' control sockets:
//! - a **writer** submits `send` requests on one connection at their intended times
//!   ([`crate::schedule`]), or, for a closed-loop throughput probe, whenever fewer than a
//!   window of messages are unfinished. Every message's body is
//!   `hb <run> <pair> <index> ` padded to `--size`, so the receiving inbox can be matched back;
//! - a **reader** on the same connection turns `stored` / `accepted` / `delivered` /
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
//! The phase ends with a bounded drain: it waits until every request is done and the inbox
//! holds every stored message, or the drain time is up; then [`crate::check`] judges the inbox.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use hotline_client::control::{
    ControlClient, ControlReader, ControlWriter, Event, Request, WaitLevel,
};
use hotline_proto::{MessageId, Precedence};
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

use crate::check::{self, Verdict};
use crate::clock::{Clock, Ticker};
use crate::cluster::{self, Cluster, CpuTimes, Pair};
use crate::schedule::{Mix, Pacer, Schedule, latency_us};
use crate::stats::{self, Group, LatencyStats, Level, Summary};

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
    /// Open-loop flows (merged per pair in intended-time order).
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

/// Message counts of a phase.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Counts {
    /// `send` requests written.
    pub sent: u64,
    /// Reported `stored` (in the sender's outbox).
    pub stored: u64,
    /// Reported `accepted` by the relay.
    pub accepted: u64,
    /// Reported `delivered` (signed receipt back at the sender).
    pub delivered: u64,
    /// Reported `acknowledged`.
    pub acknowledged: u64,
    /// Messages refused at least once by the relay (back-pressure; kept and retried), or
    /// refused at submission.
    pub refused: u64,
    /// Requests that ended with an error.
    pub failed: u64,
    /// Stored but not in the receiver's inbox after the drain.
    pub lost: u64,
    /// Delivered to the receiver's inbox more than once.
    pub duplicated: u64,
    /// Deliveries that broke the ordering rule.
    pub order_violations: u64,
    /// In the inbox after the drain, but no `delivered` receipt reached the sender.
    pub unconfirmed: u64,
    /// In the inbox, tagged with this run, but never reported stored.
    pub unexpected: u64,
}

impl Counts {
    /// Adds another phase's counts.
    pub fn add(&mut self, o: &Self) {
        self.sent += o.sent;
        self.stored += o.stored;
        self.accepted += o.accepted;
        self.delivered += o.delivered;
        self.acknowledged += o.acknowledged;
        self.refused += o.refused;
        self.failed += o.failed;
        self.lost += o.lost;
        self.duplicated += o.duplicated;
        self.order_violations += o.order_violations;
        self.unconfirmed += o.unconfirmed;
        self.unexpected += o.unexpected;
    }

    /// Nothing lost, duplicated, out of order or unconfirmed.
    pub fn correct(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.order_violations == 0
            && self.unconfirmed == 0
    }
}

/// One second of a phase.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Point {
    /// Seconds since the phase started.
    pub t_s: f64,
    /// Sends in this second.
    pub sent: u64,
    /// `delivered` reports in this second.
    pub delivered: u64,
    /// Requests not finished.
    pub in_flight: u64,
    /// Round trips completed in this second (warm-up included).
    pub round_trip: Summary,
    /// Flash round trips completed in this second.
    pub flash_round_trip: Summary,
}

/// A soak snapshot.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Interval {
    /// Seconds since the phase started.
    pub t_s: f64,
    /// Round trips completed in the interval.
    pub round_trip: Summary,
    /// Relay memory at the end of the interval.
    pub relay_rss_bytes: Option<u64>,
    /// Node memory (processes, or the bench with in-process nodes).
    pub nodes_rss_bytes: Option<u64>,
}

/// Largest queue depths seen.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Queues {
    /// Relay: frames queued per stream (`control`, `flash`, …, `routine`).
    pub relay_queued_frames_max: BTreeMap<String, u64>,
    /// First pair's sender node: messages not yet accepted, per lane.
    pub sender_unaccepted_max: BTreeMap<String, u64>,
    /// First pair's sender node: messages not yet delivered, per lane.
    pub sender_undelivered_max: BTreeMap<String, u64>,
    /// Longest time the first sender node took to answer `status`: its operator commands
    /// wait in one queue, so this is how long any command (a flash too) waits there.
    pub sender_status_ms_max: f64,
    /// `status` requests that got no answer within 2 s.
    pub sender_status_timeouts: u64,
}

/// What a phase measured.
#[derive(Clone, Debug)]
pub struct PhaseResult {
    /// Phase name.
    pub name: String,
    /// Latencies of measured messages.
    pub stats: LatencyStats,
    /// Counts.
    pub counts: Counts,
    /// `delivered` receipts reaching the bench per second, from the end of the warm-up to the
    /// end of sending.
    pub throughput: f64,
    /// The same, per precedence.
    pub throughput_by_precedence: BTreeMap<String, f64>,
    /// Offered rate (sum of flows), messages per second.
    pub offered_rate: f64,
    /// Rate the bench actually wrote, messages per second.
    pub sent_rate: f64,
    /// Per second.
    pub series: Vec<Point>,
    /// Soak snapshots.
    pub intervals: Vec<Interval>,
    /// Queue depths.
    pub queues: Queues,
    /// First ordering problem, in words.
    pub first_violation: Option<String>,
    /// First failed request.
    pub first_error: Option<String>,
    /// Whether everything finished within the drain.
    pub drained: bool,
    /// Relay memory at the end of sending.
    pub relay_rss_bytes: Option<u64>,
    /// Cores used during sending and drain, per process kind.
    pub cpu_cores: CpuTimes,
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
}

#[derive(Debug, Default)]
struct PairState {
    /// By tag − 1 (the writer's connection carries only sends).
    msgs: Vec<MsgState>,
    writer_done: bool,
    done: u64,
    stored: u64,
    received: Vec<check::Msg>,
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
    let mut conns = Vec::with_capacity(pairs.len());
    for pair in pairs {
        let sender = ControlClient::connect(&pair.sender.socket)
            .await
            .map(ControlClient::split)
            .with_context(|| format!("sender {}", pair.sender.id))?;
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
        let state = Arc::new(Mutex::new(PairState::default()));
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
    for ((pair, (w, r)), state) in pairs.iter().zip(senders).zip(&states) {
        let permits = phase.closed_window.map(|w| Arc::new(Semaphore::new(w)));
        let mut sched = Schedule::default();
        for f in &phase.flows {
            // Pairs are staggered within one interval so their sends interleave evenly.
            let per_pair = f.rate / n;
            let offset = Duration::from_secs_f64(pair.index as f64 / f.rate.max(f64::MIN_POSITIVE));
            sched.add(
                Pacer::new(per_pair, start + offset.min(phase.duration), end),
                &f.mix,
            );
        }
        let mix = phase
            .flows
            .first()
            .map_or(Mix::only(Precedence::Routine), |f| f.mix);
        writers.spawn(write_loop(
            ctx.clone(),
            pair.index,
            w,
            state.clone(),
            sched,
            permits.clone().map(|p| (p, mix, start, end)),
            start + phase.warmup,
        ));
        readers.spawn(read_loop(ctx.clone(), r, state.clone(), permits));
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
    })
}

async fn next_snapshot(s: &mut Option<tokio::time::Interval>) {
    match s {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

fn finished(s: &PairState) -> bool {
    s.writer_done && s.done == s.msgs.len() as u64 && s.received.len() as u64 >= s.stored
}

/// The progress line, and one point of the time series.
fn tick(ctx: &Ctx, name: &str, series: &mut Vec<Point>, last: &mut (u64, u64), pairs: usize) {
    let t = ctx.clock.elapsed();
    let mut rec = lock(&ctx.rec);
    let point = Point {
        t_s: t.as_secs_f64(),
        sent: rec.counts.sent - last.0,
        delivered: rec.counts.delivered - last.1,
        in_flight: rec.counts.sent - rec.done,
        round_trip: Summary::of(&rec.tick),
        flash_round_trip: Summary::of(&rec.tick_flash),
    };
    *last = (rec.counts.sent, rec.counts.delivered);
    rec.tick.reset();
    rec.tick_flash.reset();
    let so_far = rec.stats.summary(Level::RoundTrip, Group::All);
    let p99 = if so_far.count > 0 {
        format!("{} ms", stats::ms(so_far.p99))
    } else {
        "-".into()
    };
    eprintln!(
        "[{name} {:>6.1}s] {} pair(s)  sent {} ({}/s)  delivered {} ({}/s)  in flight {}  refused {}  failed {}  round-trip p99 so far {p99}",
        t.as_secs_f64(),
        pairs,
        rec.counts.sent,
        point.sent,
        rec.counts.delivered,
        point.delivered,
        point.in_flight,
        rec.counts.refused,
        rec.counts.failed,
    );
    series.push(point);
}

fn snapshot(ctx: &Ctx, cluster: &Cluster, t: Duration) -> Interval {
    let mut rec = lock(&ctx.rec);
    let round_trip = Summary::of(&rec.interval);
    rec.interval.reset();
    drop(rec);
    let i = Interval {
        t_s: t.as_secs_f64(),
        round_trip,
        relay_rss_bytes: cluster.relay_rss(),
        nodes_rss_bytes: cluster.nodes_rss(),
    };
    eprintln!(
        "[interval {:>6.1}s] round trip p50 {} ms  p99 {} ms  max {} ms  ({} samples)  relay RSS {}  nodes RSS {}",
        i.t_s,
        stats::ms(i.round_trip.p50),
        stats::ms(i.round_trip.p99),
        stats::ms(i.round_trip.max),
        i.round_trip.count,
        i.relay_rss_bytes.map_or("-".into(), crate::report::mib),
        i.nodes_rss_bytes.map_or("-".into(), crate::report::mib),
    );
    i
}

async fn sample_queues(
    metrics: Option<std::net::SocketAddr>,
    sender: std::path::PathBuf,
    q: Arc<Mutex<Queues>>,
) -> Result<()> {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    loop {
        every.tick().await;
        if let Some(relay) = match metrics {
            Some(addr) => cluster::relay_queues(addr).await,
            None => None,
        } {
            let mut q = lock(&q);
            for (k, v) in relay {
                let e = q.relay_queued_frames_max.entry(k).or_default();
                *e = (*e).max(v);
            }
        }
        let asked = std::time::Instant::now();
        let status = tokio::time::timeout(Duration::from_secs(2), cluster::status(&sender)).await;
        let took = asked.elapsed().as_secs_f64() * 1000.0;
        let mut q = lock(&q);
        q.sender_status_ms_max = q.sender_status_ms_max.max((took * 10.0).round() / 10.0);
        match status {
            Ok(Ok(s)) => {
                for (lane, l) in s.lanes {
                    let e = q.sender_unaccepted_max.entry(lane.clone()).or_default();
                    *e = (*e).max(l.unaccepted as u64);
                    let e = q.sender_undelivered_max.entry(lane).or_default();
                    *e = (*e).max(l.undelivered as u64);
                }
            }
            Ok(Err(_)) => {}
            Err(_) => q.sender_status_timeouts += 1,
        }
    }
}

type ClosedLoop = (Arc<Semaphore>, Mix, Duration, Duration);

async fn write_loop(
    ctx: Arc<Ctx>,
    pair: usize,
    mut w: ControlWriter,
    state: Arc<Mutex<PairState>>,
    mut sched: Schedule,
    closed: Option<ClosedLoop>,
    warmup_end: Duration,
) -> Result<()> {
    let mut mix = closed.as_ref().map(|c| c.1.iter());
    loop {
        let mut batch: Vec<(Duration, Precedence)> = Vec::new();
        if let (Some((permits, _, start, end)), Some(mix)) = (&closed, &mut mix) {
            ctx.ticker.sleep_until(ctx.clock.at(*start)).await;
            let left = end.saturating_sub(ctx.clock.elapsed());
            if left.is_zero() {
                break;
            }
            let Ok(Ok(p)) = tokio::time::timeout(left, permits.acquire()).await else {
                break;
            };
            p.forget();
            let mut n = 1;
            while n < 256 {
                match permits.try_acquire() {
                    Ok(p) => p.forget(),
                    Err(_) => break,
                }
                n += 1;
            }
            let now = ctx.clock.elapsed();
            for _ in 0..n {
                batch.push((now, mix.next().unwrap_or(Precedence::Routine)));
            }
        } else {
            let now = ctx.clock.elapsed();
            while batch.len() < 1024 {
                let Some(p) = sched.next_due(now) else { break };
                batch.push((p.intended, p.precedence));
            }
            if batch.is_empty() {
                match sched.next_wakeup() {
                    None => break,
                    Some(t) => {
                        ctx.ticker.sleep_until(ctx.clock.at(t)).await;
                        continue;
                    }
                }
            }
        }
        {
            let mut s = lock(&state);
            for &(intended, precedence) in &batch {
                let index = s.msgs.len() as u64;
                let tag = w.push(&Request::Send {
                    to: None,
                    channel: None,
                    precedence: Some(precedence),
                    body: body(&ctx.run, pair, index, ctx.size),
                    wait: Some(ctx.wait),
                    timeout_ms: Some(ctx.timeout_ms),
                })?;
                debug_assert_eq!(tag, index + 1);
                s.msgs.push(MsgState {
                    intended,
                    precedence,
                    measured: intended >= warmup_end,
                    flags: 0,
                });
            }
        }
        lock(&ctx.rec).counts.sent += batch.len() as u64;
        w.flush().await?;
    }
    lock(&state).writer_done = true;
    Ok(())
}

async fn read_loop(
    ctx: Arc<Ctx>,
    mut r: ControlReader,
    state: Arc<Mutex<PairState>>,
    permits: Option<Arc<Semaphore>>,
) -> Result<()> {
    while let Some(line) = r.next().await? {
        let now = ctx.clock.elapsed();
        let i = line.tag.wrapping_sub(1) as usize;
        let mut s = lock(&state);
        let Some(m) = s.msgs.get_mut(i) else {
            continue;
        };
        let before = m.flags;
        let (intended, precedence, measured) = (m.intended, m.precedence, m.measured);
        let mut samples: [Option<(Level, u64)>; 2] = [None, None];
        let mut error = None;
        match line.event {
            Event::Stored { .. } => m.flags |= STORED,
            Event::Level { level, at_us, .. } => {
                if level.starts_with("accepted") {
                    if before & ACCEPTED == 0 {
                        m.flags |= ACCEPTED;
                        let at = ctx.clock.from_unix_us(at_us);
                        samples[0] = Some((Level::Accepted, latency_us(intended, at)));
                    }
                } else if level == "delivered" {
                    if before & DELIVERED == 0 {
                        m.flags |= DELIVERED;
                        let at = ctx.clock.from_unix_us(at_us);
                        samples[0] = Some((Level::Delivered, latency_us(intended, at)));
                        samples[1] = Some((Level::RoundTrip, latency_us(intended, now)));
                    }
                } else if level == "acknowledged" {
                    if before & ACKED == 0 {
                        m.flags |= ACKED;
                        samples[0] = Some((Level::Acknowledged, latency_us(intended, now)));
                    }
                } else if level.starts_with("refused") {
                    m.flags |= REFUSED;
                }
            }
            Event::Done { ok, error: e } if before & DONE == 0 => {
                m.flags |= DONE;
                if !ok {
                    error = Some(e.unwrap_or_else(|| "request failed".into()));
                    if before & STORED == 0 {
                        // Refused at submission: never in the outbox.
                        m.flags |= REFUSED;
                    }
                }
            }
            _ => {}
        }
        let after = m.flags;
        let newly = after & !before;
        if newly & STORED != 0 {
            s.stored += 1;
        }
        if newly & DONE != 0 {
            s.done += 1;
        }
        drop(s);
        if newly == 0 {
            continue;
        }
        let mut rec = lock(&ctx.rec);
        let c = &mut rec.counts;
        for (bit, count) in [
            (STORED, &mut c.stored),
            (ACCEPTED, &mut c.accepted),
            (DELIVERED, &mut c.delivered),
            (ACKED, &mut c.acknowledged),
            (REFUSED, &mut c.refused),
        ] {
            if newly & bit != 0 {
                *count += 1;
            }
        }
        if newly & DONE != 0 {
            rec.done += 1;
            if error.is_some() {
                rec.counts.failed += 1;
            }
        }
        for (level, us) in samples.into_iter().flatten() {
            if level == Level::RoundTrip {
                stats::record(&mut rec.tick, us);
                stats::record(&mut rec.interval, us);
                if precedence == Precedence::Flash {
                    stats::record(&mut rec.tick_flash, us);
                }
            }
            if measured {
                rec.stats.record(level, precedence, us);
            }
            if level == Level::RoundTrip && now >= rec.window.0 && now < rec.window.1 {
                rec.window_delivered[precedence.index()] += 1;
            }
        }
        drop(rec);
        if newly & DONE != 0 {
            if let Some(p) = &permits {
                p.add_permits(1);
            }
            if let Some(e) = error {
                lock(&ctx.first_error).get_or_insert(e);
            }
        }
    }
    let s = lock(&state);
    if !(s.writer_done && s.done == s.msgs.len() as u64) {
        bail!("a sender node closed its control connection mid-run");
    }
    Ok(())
}

async fn follow_loop(
    ctx: Arc<Ctx>,
    pair: usize,
    mut w: ControlWriter,
    mut r: ControlReader,
    state: Arc<Mutex<PairState>>,
    acks: Option<mpsc::UnboundedSender<MessageId>>,
) -> Result<()> {
    w.push(&Request::Inbox { follow: true })?;
    w.flush().await?;
    while let Some(line) = r.next().await? {
        let Event::Message(m) = line.event else {
            continue;
        };
        let Some(index) = parse_body(&m.body, &ctx.run, pair) else {
            continue;
        };
        let Ok(precedence) = m.precedence.parse::<Precedence>() else {
            continue;
        };
        lock(&state).received.push(check::Msg { index, precedence });
        if let Some(tx) = &acks {
            if let Ok(id) = m.id.parse() {
                let _ = tx.send(id);
            }
        }
    }
    Ok(())
}

async fn ack_loop(mut w: ControlWriter, mut ids: mpsc::UnboundedReceiver<MessageId>) -> Result<()> {
    while let Some(id) = ids.recv().await {
        w.push(&Request::Ack { id })?;
        while let Ok(id) = ids.try_recv() {
            w.push(&Request::Ack { id })?;
        }
        w.flush().await?;
    }
    Ok(())
}

async fn drain_replies(mut r: ControlReader) -> Result<()> {
    while r.next().await?.is_some() {}
    Ok(())
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

    #[test]
    fn counts_add_and_judge() {
        let mut a = Counts {
            sent: 2,
            delivered: 2,
            ..Counts::default()
        };
        assert!(a.correct());
        a.add(&Counts {
            lost: 1,
            ..Counts::default()
        });
        assert_eq!(a.sent, 2);
        assert!(!a.correct());
    }
}
