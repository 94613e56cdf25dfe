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

use std::collections::HashMap;
use std::net::UdpSocket;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use hotline_net::framed;
use hotline_net::pki::ExercisePki;
use hotline_net::quic::{self, Timeouts};
use hotline_net::tls::{self, Credentials};
use hotline_proto::{EndpointId, Precedence};
use tokio::sync::{mpsc, oneshot};

use crate::check;
use crate::clock::{Clock, Ticker};
use crate::cluster::{CpuTimes, cpu_of};
use crate::driver::{Counts, PhaseResult, Point, Queues};
use crate::report::round2;
use crate::schedule::{Mix, Pacer, Schedule, latency_us};
use crate::stats::{self, Group, LatencyStats, Level, Summary};

/// Bytes of the ack payload.
pub const ACK_BYTES: usize = 16;

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
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs the floor and returns its figures as a phase named `floor`.
pub async fn run(params: &FloorParams, ticker: &Arc<Ticker>) -> Result<PhaseResult> {
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

    // B: read frames in order, answer each with an ack.
    let received: Arc<Mutex<Vec<check::Msg>>> = Arc::default();
    let b_task = {
        let received = received.clone();
        let conn = conn_b.clone();
        tokio::spawn(async move {
            let mut acks = conn.open_uni().await?;
            let mut incoming = conn.accept_uni().await?;
            while let Some(frame) = framed::read_frame(&mut incoming).await? {
                let index = read_index(&frame)?;
                lock(&received).push(check::Msg {
                    index,
                    precedence: Precedence::Routine,
                });
                framed::write_frame(&mut acks, &ack_frame(index)).await?;
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

    // A: paced sends.
    let a_send = {
        let intended = intended.clone();
        let conn = conn_a.clone();
        let ticker = ticker.clone();
        let size = params.size;
        tokio::spawn(async move {
            let mut out = conn.open_uni().await?;
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
                let mut bytes = Vec::with_capacity(batch.len() * (size + 4));
                {
                    let mut i = lock(&intended);
                    for at in batch {
                        bytes.extend_from_slice(&data_frame(i.len() as u64, size));
                        i.push(at);
                    }
                }
                framed::write_frame(&mut out, &bytes).await?;
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
            _ = progress.tick() => tick(&clock, &rec, &intended, &mut series, &mut last_acked),
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
    tick(&clock, &rec, &intended, &mut series, &mut last_acked);
    drop(out);
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
    Ok(PhaseResult {
        name: "floor".into(),
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
        "[floor {:>6.1}s] sent {sent}  acked {acked} ({}/s)  in flight {}  round-trip p99 so far {}",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_the_index_and_their_size() {
        let f = data_frame(42, 256);
        assert_eq!(f.len(), 4 + 256);
        assert_eq!(u32::from_be_bytes(f[..4].try_into().unwrap()), 256);
        assert_eq!(read_index(&f).unwrap(), 42);
        let a = ack_frame(7);
        assert_eq!(a.len(), 4 + ACK_BYTES);
        assert_eq!(read_index(&a).unwrap(), 7);
        assert!(read_index(&[0, 0, 0, 2, 1]).is_err());
        // Tiny sizes still carry the index.
        assert_eq!(data_frame(1, 0).len(), 12);
    }

    #[tokio::test]
    async fn floor_round_trips_are_measured_and_correct() {
        let ticker = Arc::new(Ticker::start().unwrap());
        let r = run(
            &FloorParams {
                rate: 200.0,
                duration: Duration::from_millis(500),
                warmup: Duration::ZERO,
                size: 256,
                drain: Duration::from_secs(10),
            },
            &ticker,
        )
        .await
        .unwrap();
        assert!(r.drained);
        assert_eq!(r.counts.sent, 100);
        assert_eq!(r.counts.delivered, 100);
        assert!(r.counts.correct(), "{:?}", r.counts);
        assert_eq!(r.stats.summary(Level::RoundTrip, Group::All).count, 100);
    }
}
