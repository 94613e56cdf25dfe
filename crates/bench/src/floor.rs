//! The physical floor: the same payloads and pacing through a bare two-hop QUIC forwarder.
//!
//! Client A → forwarder → client B, and a 16-byte ack B → forwarder → A, all on loopback with
//! Hotline's own TLS and transport settings (`hotline_net::tls::{server_config,
//! client_config}`: TLS 1.3, ring, mutual authentication against an exercise CA, the same
//! windows and keep-alives) and Hotline's framing (`hotline_net::framed`). The forwarder runs on
//! its own runtime thread, as the relay is its own process; it routes each frame to the other
//! endpoint by the TLS identity of the connection and does nothing else: no engine, no
//! signatures, no sealing, no store, no control socket. What Hotline adds on top of this is its
//! overhead.
//!
//! Frames A → B carry `index: u64` and padding to `--size` bytes; B answers each with
//! `index: u64` and 8 zero bytes. The round trip is measured at A from the intended send time,
//! exactly as for Hotline, and recorded as `round_trip`.
//!
//! The durable floor ([`FloorParams::durable_dir`]) is the same code with one difference on each
//! side: A appends every message (its payload, length-prefixed) to a log file and `fdatasync`s
//! it before sending, B does the same with every message it receives before sending its ack.
//! Both use a [`GroupCommit`](crate::durable::GroupCommit) thread: whatever is pending when a sync ends goes into the next
//! batch, one `fdatasync` per batch. That is the least any system that acknowledges only what
//! is on disk at both ends must do; Hotline's goal is to be within 1.5× of it. The files go in a
//! temporary directory on the filesystem of the chosen directory, which must not be tmpfs.

use std::collections::HashMap;
use std::net::UdpSocket;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use hotline_net::framed;
use hotline_net::pki::ExercisePki;
use hotline_net::quic::{self, Timeouts};
use hotline_net::tls::{self, Credentials};
use hotline_proto::{EndpointId, Precedence};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::check;
use crate::clock::{Clock, Ticker};
use crate::cluster::{CpuTimes, cpu_of};
use crate::driver::{Counts, PhaseResult, Point, Queues};
use crate::durable::{CommitSummary, check_real_disk};
use crate::report::{phase_json, round2};
use crate::schedule::{Mix, Pacer, Schedule, latency_us};
use crate::stats::{self, Group, LatencyStats, Level, Summary};
use outbox::{Outbox, lock, log_summary};

/// Bytes of the ack payload.
pub const ACK_BYTES: usize = 16;

/// The most messages one `fdatasync` of the durable floor covers.
pub const MAX_BATCH: usize = 1024;

/// What the floor run does.
#[derive(Clone, Debug)]
pub struct FloorParams {
    /// Messages per second.
    pub rate: f64,
    /// How long, warm-up included.
    pub duration: Duration,
    /// Not recorded before this.
    pub warmup: Duration,
    /// Payload bytes.
    pub size: usize,
    /// Longest wait for the last acks.
    pub drain: Duration,
    /// The durable floor: both ends log and `fdatasync` every message, in a temporary
    /// directory made inside this one. `None`: the bare floor.
    pub durable_dir: Option<PathBuf>,
}

/// One floor run: its figures and, for the durable floor, what each end's log writer did.
#[derive(Debug)]
pub struct FloorRun {
    /// The figures, as a phase named `floor` (bare) or `durable_floor`.
    pub phase: PhaseResult,
    /// A's log (durable floor only).
    pub sender_log: Option<CommitSummary>,
    /// B's log (durable floor only).
    pub receiver_log: Option<CommitSummary>,
}

impl FloorRun {
    /// True for the durable floor.
    pub fn durable(&self) -> bool {
        self.sender_log.is_some()
    }

    /// The phase's JSON, with `group_commit` for the durable floor.
    pub fn json(&self) -> Value {
        let mut v = phase_json(&self.phase);
        if let (Some(obj), Some(a), Some(b)) =
            (v.as_object_mut(), &self.sender_log, &self.receiver_log)
        {
            obj.insert(
                "group_commit".into(),
                serde_json::json!({"sender": a, "receiver": b}),
            );
        }
        v
    }
}

/// Runs the floor (bare or durable) and returns its figures.
pub async fn run(params: &FloorParams, ticker: &Arc<Ticker>) -> Result<FloorRun> {
    let name = if params.durable_dir.is_some() {
        "durable_floor"
    } else {
        "floor"
    };
    let logs = match &params.durable_dir {
        None => None,
        Some(parent) => {
            check_real_disk(parent)?;
            Some(
                tempfile::Builder::new()
                    .prefix("hotline-bench-durable-")
                    .tempdir_in(parent)
                    .with_context(|| format!("making a directory in {}", parent.display()))?,
            )
        }
    };
    let a_log = logs.as_ref().map(|d| d.path().join("a.log"));
    let b_log = logs.as_ref().map(|d| d.path().join("b.log"));
    let dir = tempfile::Builder::new()
        .prefix("hotline-bench-floor-")
        .tempdir()?;
    let a = EndpointId::new("a")?;
    let b = EndpointId::new("b")?;
    let pki = ExercisePki::generate("localhost", &[a.clone(), b.clone()])?;
    pki.write(dir.path())?;
    let ca = tls::load_certs(&dir.path().join("ca.pem"))?;
    let creds = |name: &str| {
        Credentials::load(
            &dir.path().join(format!("{name}.pem")),
            &dir.path().join(format!("{name}.key")),
        )
    };
    let timeouts = Timeouts::default();
    let server_config = tls::server_config(&ca, creds("relay")?, Vec::new(), timeouts)?;
    let forwarder = Forwarder::start(server_config)?;
    let addr = forwarder.addr;

    let connect = |name: &str| -> Result<quinn::Endpoint> {
        let cfg = tls::client_config(&ca, creds(name)?, timeouts)?;
        Ok(quic::client(addr, cfg)?)
    };
    let ep_b = connect("b")?;
    let conn_b = ep_b
        .connect(addr, "localhost")?
        .await
        .context("B connecting")?;
    let ep_a = connect("a")?;
    let conn_a = ep_a
        .connect(addr, "localhost")?
        .await
        .context("A connecting")?;
    // A's first frame must find B registered: give the forwarder a moment to see both.
    forwarder.wait_registered(2).await?;

    let clock = Clock::start();
    let (cpu0, wall0) = (cpu_of(std::process::id()), std::time::Instant::now());
    let start = clock.elapsed() + Duration::from_millis(50);
    let end = start + params.duration;
    let mut sched = Schedule::default();
    sched.add(
        Pacer::new(params.rate, start, end),
        &Mix::only(Precedence::Routine),
    );

    // B: read frames in order, answer each with an ack (durable: once the frame is synced).
    let received: Arc<Mutex<Vec<check::Msg>>> = Arc::default();
    let (b_stats_tx, b_stats_rx) = oneshot::channel();
    let b_task = {
        let received = received.clone();
        let conn = conn_b.clone();
        tokio::spawn(async move {
            let mut acks = Outbox::new(conn.open_uni().await?, b_log.as_deref())?;
            let _ = b_stats_tx.send(acks.stats());
            let mut incoming = conn.accept_uni().await?;
            while let Some(frame) = framed::read_frame(&mut incoming).await? {
                let index = read_index(&frame)?;
                lock(&received).push(check::Msg {
                    index,
                    precedence: Precedence::Routine,
                });
                let record = frame.get(4..).unwrap_or_default().to_vec();
                acks.send(vec![(record, ack_frame(index))]).await?;
            }
            anyhow::Ok(())
        })
    };

    // A: its acks.
    let intended: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let rec = Arc::new(Mutex::new(FloorRec::default()));
    let a_acks = {
        let intended = intended.clone();
        let rec = rec.clone();
        let conn = conn_a.clone();
        let warmup = start + params.warmup;
        tokio::spawn(async move {
            let mut incoming = conn.accept_uni().await?;
            while let Some(frame) = framed::read_frame(&mut incoming).await? {
                let now = clock.elapsed();
                let index = read_index(&frame)?;
                let Some(&at) = lock(&intended).get(index as usize) else {
                    continue;
                };
                let mut r = lock(&rec);
                if !r.acked.insert(index) {
                    r.duplicate_acks += 1;
                    continue;
                }
                let us = latency_us(at, now);
                stats::record(&mut r.tick, us);
                if at >= warmup {
                    r.stats.record(Level::RoundTrip, Precedence::Routine, us);
                }
                if now >= warmup && now < end {
                    r.window_acks += 1;
                }
            }
            anyhow::Ok(())
        })
    };

    // A: paced sends (durable: each released once it is synced).
    let mut out = Outbox::new(conn_a.open_uni().await?, a_log.as_deref())?;
    let a_stats = out.stats();
    let a_send = {
        let intended = intended.clone();
        let ticker = ticker.clone();
        let size = params.size;
        tokio::spawn(async move {
            loop {
                let now = clock.elapsed();
                let mut batch = Vec::new();
                while batch.len() < 1024 {
                    let Some(p) = sched.next_due(now) else { break };
                    batch.push(p.intended);
                }
                if batch.is_empty() {
                    match sched.next_wakeup() {
                        None => break,
                        Some(t) => {
                            ticker.sleep_until(clock.at(t)).await;
                            continue;
                        }
                    }
                }
                let mut msgs = Vec::with_capacity(batch.len());
                {
                    let mut i = lock(&intended);
                    for at in batch {
                        let frame = data_frame(i.len() as u64, size);
                        let record = if matches!(out, Outbox::Direct(_)) {
                            Vec::new()
                        } else {
                            frame[4..].to_vec()
                        };
                        msgs.push((record, frame));
                        i.push(at);
                    }
                }
                out.send(msgs).await?;
            }
            anyhow::Ok(out)
        })
    };

    let mut series = Vec::new();
    let mut progress = tokio::time::interval(Duration::from_secs(1));
    progress.tick().await;
    let mut last_acked = 0;
    let mut a_send = a_send;
    let out = loop {
        tokio::select! {
            r = &mut a_send => break r.context("floor sender")??,
            _ = progress.tick() => tick(name, &clock, &rec, &intended, &mut series, &mut last_acked),
        }
    };
    let deadline = tokio::time::Instant::now() + params.drain;
    let sent = lock(&intended).len();
    let mut drained = false;
    while tokio::time::Instant::now() < deadline {
        if lock(&rec).acked.len() >= sent {
            drained = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tick(name, &clock, &rec, &intended, &mut series, &mut last_acked);
    drop(out);
    let b_stats = tokio::time::timeout(Duration::from_secs(1), b_stats_rx)
        .await
        .ok()
        .and_then(Result::ok)
        .flatten();
    b_task.abort();
    a_acks.abort();
    conn_a.close(0u32.into(), b"done");
    conn_b.close(0u32.into(), b"done");
    forwarder.stop();

    let sent_msgs: Vec<check::Msg> = (0..sent as u64)
        .map(|index| check::Msg {
            index,
            precedence: Precedence::Routine,
        })
        .collect();
    let verdict = check::check(&sent_msgs, &lock(&received));
    let sender_log = log_summary(a_stats.as_ref())?;
    let receiver_log = log_summary(b_stats.as_ref())?;
    let r = lock(&rec);
    let window = end.saturating_sub(start + params.warmup);
    let acked = r.acked.len() as u64;
    let counts = Counts {
        sent: sent as u64,
        stored: sent as u64,
        delivered: acked,
        lost: verdict.lost,
        duplicated: verdict.duplicated + r.duplicate_acks,
        order_violations: verdict.order_violations,
        unconfirmed: verdict.delivered.saturating_sub(acked),
        ..Counts::default()
    };
    let phase = PhaseResult {
        name: name.into(),
        stats: r.stats.clone(),
        throughput: if window.is_zero() {
            0.0
        } else {
            r.window_acks as f64 / window.as_secs_f64()
        },
        throughput_by_precedence: Default::default(),
        offered_rate: params.rate,
        sent_rate: sent as f64 / params.duration.as_secs_f64().max(1e-9),
        counts,
        series,
        intervals: Vec::new(),
        queues: Queues::default(),
        first_violation: verdict.first_violation,
        first_error: None,
        drained,
        relay_rss_bytes: None,
        cpu_cores: CpuTimes {
            relay_s: None,
            nodes_s: None,
            bench_s: cpu_of(std::process::id())
                .zip(cpu0)
                .map(|(b, a)| round2((b - a) / wall0.elapsed().as_secs_f64())),
        },
        hops: Default::default(),
    };
    Ok(FloorRun {
        phase,
        sender_log,
        receiver_log,
    })
}

#[derive(Debug)]
struct FloorRec {
    stats: LatencyStats,
    tick: hdrhistogram::Histogram<u64>,
    acked: std::collections::HashSet<u64>,
    duplicate_acks: u64,
    window_acks: u64,
}

impl Default for FloorRec {
    fn default() -> Self {
        Self {
            stats: LatencyStats::default(),
            tick: stats::histogram(),
            acked: Default::default(),
            duplicate_acks: 0,
            window_acks: 0,
        }
    }
}

fn tick(
    name: &str,
    clock: &Clock,
    rec: &Mutex<FloorRec>,
    intended: &Mutex<Vec<Duration>>,
    series: &mut Vec<Point>,
    last_acked: &mut u64,
) {
    let sent = lock(intended).len() as u64;
    let mut r = lock(rec);
    let acked = r.acked.len() as u64;
    let point = Point {
        t_s: clock.elapsed().as_secs_f64(),
        sent: 0,
        delivered: acked - *last_acked,
        in_flight: sent.saturating_sub(acked),
        round_trip: Summary::of(&r.tick),
        flash_round_trip: Summary::default(),
    };
    *last_acked = acked;
    r.tick.reset();
    let so_far = r.stats.summary(Level::RoundTrip, Group::All);
    eprintln!(
        "[{name} {:>6.1}s] sent {sent}  acked {acked} ({}/s)  in flight {}  round-trip p99 so far {}",
        point.t_s,
        point.delivered,
        point.in_flight,
        if so_far.count > 0 {
            format!("{} ms", stats::ms(so_far.p99))
        } else {
            "-".into()
        }
    );
    series.push(point);
}

/// A length-prefixed A → B frame: index, then zero padding up to `size` payload bytes.
pub fn data_frame(index: u64, size: usize) -> Vec<u8> {
    let payload = size.max(8);
    let mut f = Vec::with_capacity(4 + payload);
    f.extend_from_slice(&(payload as u32).to_be_bytes());
    f.extend_from_slice(&index.to_be_bytes());
    f.resize(4 + payload, 0);
    f
}

/// A length-prefixed 16-byte ack.
pub fn ack_frame(index: u64) -> Vec<u8> {
    let mut f = data_frame(index, ACK_BYTES);
    f.truncate(4 + ACK_BYTES);
    f
}

/// The index at the start of a frame's payload.
pub fn read_index(frame: &[u8]) -> Result<u64> {
    let bytes: [u8; 8] = frame
        .get(4..12)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| anyhow!("floor frame of {} bytes is too short", frame.len()))?;
    Ok(u64::from_be_bytes(bytes))
}

/// The bare forwarder on its own runtime thread.
struct Forwarder {
    addr: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    registered: Arc<Mutex<HashMap<String, mpsc::UnboundedSender<Vec<u8>>>>>,
}

impl Forwarder {
    fn start(config: quinn::ServerConfig) -> Result<Self> {
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        let addr = socket.local_addr()?;
        let (stop, stopped) = oneshot::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let registered: Arc<Mutex<HashMap<String, mpsc::UnboundedSender<Vec<u8>>>>> =
            Arc::default();
        let routes = registered.clone();
        let thread = std::thread::Builder::new()
            .name("floor-forwarder".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow!("forwarder runtime: {e}")));
                        return;
                    }
                };
                rt.block_on(async move {
                    let endpoint = match quic::server(socket, config, None) {
                        Ok(e) => e,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e.into()));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    let accept = async {
                        while let Some(incoming) = endpoint.accept().await {
                            tokio::spawn(serve(incoming, routes.clone()));
                        }
                    };
                    tokio::select! {
                        () = accept => {}
                        _ = stopped => {}
                    }
                    endpoint.close(0u32.into(), b"done");
                });
            })?;
        ready_rx
            .recv()
            .map_err(|_| anyhow!("the floor forwarder did not start"))??;
        Ok(Self {
            addr,
            stop: Some(stop),
            thread: Some(thread),
            registered,
        })
    }

    async fn wait_registered(&self, n: usize) -> Result<()> {
        for _ in 0..500 {
            if lock(&self.registered).len() >= n {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        bail!("floor clients did not register with the forwarder")
    }

    fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("addr", &self.addr)
            .finish()
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One forwarder connection: register a writer for the peer, forward what it sends to the
/// other endpoint.
async fn serve(
    incoming: quinn::Incoming,
    routes: Arc<Mutex<HashMap<String, mpsc::UnboundedSender<Vec<u8>>>>>,
) -> Result<()> {
    let conn = incoming.await?;
    let (id, _) = tls::peer_identity(&conn)?;
    let me = id.to_string();
    let partner = if me == "a" { "b" } else { "a" };
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let writer = {
        let conn = conn.clone();
        tokio::spawn(async move {
            let mut out = conn.open_uni().await?;
            while let Some(frame) = rx.recv().await {
                framed::write_frame(&mut out, &frame).await?;
            }
            anyhow::Ok(())
        })
    };
    lock(&routes).insert(me, tx);
    while let Ok(mut stream) = conn.accept_uni().await {
        let routes = routes.clone();
        tokio::spawn(async move {
            while let Ok(Some(frame)) = framed::read_frame(&mut stream).await {
                let Some(tx) = lock(&routes).get(partner).cloned() else {
                    continue;
                };
                let _ = tx.send(frame);
            }
        });
    }
    writer.abort();
    Ok(())
}

mod outbox;
#[cfg(test)]
mod tests;
