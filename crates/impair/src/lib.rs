//! A user-space UDP impairment proxy, because the test machines have no netem (and tests should
//! not need root), for the network-fault tests (`tests/`) and `hotline-bench --impair`: real UDP between real processes, with loss, duplication, reordering, delay with
//! jitter and blackouts applied per direction and changeable while traffic flows.
//!
//! A [`Proxy`] listens on `127.0.0.1:0` and forwards every datagram a client sends to one
//! upstream address. Each client address gets its own upstream socket, so the upstream's replies
//! go back to the client they answer. Datagrams are not forwarded at once: each is scheduled for
//! `now + delay ± jitter` (plus a hold for a reordered one) in a bounded queue per direction, and a
//! scheduler thread sends it when due. A blackout drops everything that arrives and everything
//! still queued, like a cut cable.
//!
//! It runs on its own threads (not the test's async runtime, whose workers block on process
//! start-up), uses a seeded generator per direction so a run's decisions can be replayed for the
//! same packet sequence, bounds every queue and the number of clients, and stops when dropped.
//! [`Proxy::stats`] counts what it did, so a test can check the impairment really happened.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

/// At most this many datagrams wait in one direction's queue; more are dropped (tail drop).
pub const QUEUE_CAP: usize = 8192;

/// At most this many client addresses get an upstream socket; datagrams from more are dropped.
pub const MAX_CLIENTS: usize = 64;

/// How often the threads look at the stop flag when there is no traffic.
const TICK: Duration = Duration::from_millis(20);

/// The largest datagram forwarded (QUIC uses far less).
const MAX_DATAGRAM: usize = 65_535;

/// A reordered datagram is held this long beyond its delay (plus twice the jitter), so datagrams
/// sent after it overtake it.
const REORDER_HOLD: Duration = Duration::from_millis(15);

/// What one direction does to the datagrams crossing it. The default forwards everything at once.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Impairment {
    /// Probability (0..=1) that a datagram is dropped.
    pub loss: f64,
    /// Probability (0..=1) that a datagram is sent twice (each copy with its own delay).
    pub dup: f64,
    /// Probability (0..=1) that a datagram is held back so later ones overtake it.
    pub reorder: f64,
    /// Base one-way delay.
    pub delay: Duration,
    /// Uniform jitter around `delay` (the delay never goes below zero).
    pub jitter: Duration,
}

/// Why an impairment spec (`loss=5%,delay=150ms,jitter=30ms`) was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecError(String);

impl std::fmt::Display for SpecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SpecError {}

/// The longest delay or jitter a spec may ask for.
const MAX_SPEC_DELAY: Duration = Duration::from_secs(10);

impl std::str::FromStr for Impairment {
    type Err = SpecError;

    /// `key=value` pairs separated by commas: `loss`, `dup` and `reorder` as a percentage
    /// (`5%`) or a fraction (`0.05`); `delay` and `jitter` in `ms` or `s` (at most 10 s).
    /// Keys left out are zero. Example: `loss=5%,delay=150ms,jitter=30ms`.
    fn from_str(spec: &str) -> Result<Self, SpecError> {
        let mut imp = Self::default();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((key, value)) = part.split_once('=') else {
                return Err(SpecError(format!("{part:?} is not key=value")));
            };
            let (key, value) = (key.trim(), value.trim());
            match key {
                "loss" => imp.loss = probability(key, value)?,
                "dup" => imp.dup = probability(key, value)?,
                "reorder" => imp.reorder = probability(key, value)?,
                "delay" => imp.delay = duration(key, value)?,
                "jitter" => imp.jitter = duration(key, value)?,
                other => {
                    return Err(SpecError(format!(
                        "unknown key {other:?}: use loss, dup, reorder, delay, jitter"
                    )));
                }
            }
        }
        Ok(imp)
    }
}

fn probability(key: &str, value: &str) -> Result<f64, SpecError> {
    let (number, scale) = match value.strip_suffix('%') {
        Some(n) => (n, 100.0),
        None => (value, 1.0),
    };
    let p = number
        .parse::<f64>()
        .ok()
        .map(|n| n / scale)
        .filter(|p| (0.0..=1.0).contains(p));
    p.ok_or_else(|| {
        SpecError(format!(
            "{key}={value}: a percentage 0%..=100% or a fraction 0..=1"
        ))
    })
}

fn duration(key: &str, value: &str) -> Result<Duration, SpecError> {
    let (number, unit) = if let Some(n) = value.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = value.strip_suffix('s') {
        (n, 1.0)
    } else {
        return Err(SpecError(format!("{key}={value}: give a unit, ms or s")));
    };
    number
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && *n >= 0.0)
        .map(|n| Duration::from_secs_f64(n * unit))
        .filter(|d| *d <= MAX_SPEC_DELAY)
        .ok_or_else(|| SpecError(format!("{key}={value}: 0 to 10 s")))
}

/// A direction through the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// Client to upstream.
    Up,
    /// Upstream to client.
    Down,
}

/// What the proxy has done so far, both directions together.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Datagrams received (from clients and from upstream).
    pub received: u64,
    /// Datagrams sent on.
    pub sent: u64,
    /// Dropped by the loss setting.
    pub lost: u64,
    /// Extra copies scheduled by the dup setting.
    pub duplicated: u64,
    /// Held back by the reorder setting.
    pub reordered: u64,
    /// Dropped because of a blackout (on arrival or while queued).
    pub blacked_out: u64,
    /// Dropped because a queue was full or there were too many clients.
    pub overflow: u64,
}

#[derive(Default)]
struct Counters {
    received: AtomicU64,
    sent: AtomicU64,
    lost: AtomicU64,
    duplicated: AtomicU64,
    reordered: AtomicU64,
    blacked_out: AtomicU64,
    overflow: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Locks, ignoring poisoning: the data is plain settings and queues, valid after any panic.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Where a scheduled datagram goes.
enum Sink {
    /// Up: the client's own connected upstream socket.
    Upstream(Arc<UdpSocket>),
    /// Down: the listening socket, to this client.
    Client(Arc<UdpSocket>, SocketAddr),
}

struct Scheduled {
    due: Instant,
    /// Arrival order, to break ties so equal deadlines keep their order.
    seq: u64,
    data: Vec<u8>,
    sink: Sink,
}

impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        (self.due, self.seq) == (o.due, o.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(o.due, o.seq))
    }
}

/// One direction: its settings, its generator and its queue.
struct Lane {
    state: Mutex<LaneState>,
    wake: Condvar,
}

struct LaneState {
    impairment: Impairment,
    blackout: bool,
    rng: ChaCha8Rng,
    seq: u64,
    queue: BinaryHeap<Reverse<Scheduled>>,
}

impl Lane {
    fn new(seed: u64) -> Self {
        Self {
            state: Mutex::new(LaneState {
                impairment: Impairment::default(),
                blackout: false,
                rng: ChaCha8Rng::seed_from_u64(seed),
                seq: 0,
                queue: BinaryHeap::new(),
            }),
            wake: Condvar::new(),
        }
    }
}

/// A uniform draw in [0, 1).
fn unit(rng: &mut ChaCha8Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// `delay ± jitter`, never below zero.
fn sample_delay(rng: &mut ChaCha8Rng, imp: &Impairment) -> Duration {
    let jitter = imp.jitter.as_secs_f64();
    let d = imp.delay.as_secs_f64() + (unit(rng) * 2.0 - 1.0) * jitter;
    Duration::from_secs_f64(d.max(0.0))
}

struct Shared {
    lanes: [Lane; 2],
    counters: Counters,
    stop: AtomicBool,
}

impl Shared {
    fn lane(&self, dir: Dir) -> &Lane {
        match dir {
            Dir::Up => &self.lanes[0],
            Dir::Down => &self.lanes[1],
        }
    }

    /// Applies `dir`'s impairment to one datagram and queues what survives.
    fn offer(&self, dir: Dir, data: &[u8], sink: impl Fn() -> Sink) {
        bump(&self.counters.received);
        let lane = self.lane(dir);
        let mut s = lock(&lane.state);
        if s.blackout {
            bump(&self.counters.blacked_out);
            return;
        }
        let imp = s.impairment;
        if imp.loss > 0.0 && unit(&mut s.rng) < imp.loss {
            bump(&self.counters.lost);
            return;
        }
        let copies = if imp.dup > 0.0 && unit(&mut s.rng) < imp.dup {
            bump(&self.counters.duplicated);
            2
        } else {
            1
        };
        let now = Instant::now();
        for _ in 0..copies {
            let mut delay = sample_delay(&mut s.rng, &imp);
            if imp.reorder > 0.0 && unit(&mut s.rng) < imp.reorder {
                bump(&self.counters.reordered);
                delay += REORDER_HOLD + imp.jitter * 2;
            }
            if s.queue.len() >= QUEUE_CAP {
                bump(&self.counters.overflow);
                continue;
            }
            s.seq += 1;
            let seq = s.seq;
            s.queue.push(Reverse(Scheduled {
                due: now + delay,
                seq,
                data: data.to_vec(),
                sink: sink(),
            }));
        }
        drop(s);
        lane.wake.notify_one();
    }

    /// Sends each queued datagram of `dir` when it is due, until stopped.
    fn schedule(&self, dir: Dir) {
        let lane = self.lane(dir);
        let mut s = lock(&lane.state);
        while !self.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            let wait = match s.queue.peek() {
                Some(Reverse(next)) if next.due <= now => {
                    let Some(Reverse(next)) = s.queue.pop() else {
                        continue;
                    };
                    if s.blackout {
                        bump(&self.counters.blacked_out);
                        continue;
                    }
                    // Send without holding the lock, so receivers are not held up.
                    drop(s);
                    let sent = match &next.sink {
                        Sink::Upstream(sock) => sock.send(&next.data),
                        Sink::Client(sock, to) => sock.send_to(&next.data, to),
                    };
                    // A refused send (the upstream is down) is a lost datagram, as on a network.
                    if sent.is_ok() {
                        bump(&self.counters.sent);
                    }
                    s = lock(&lane.state);
                    continue;
                }
                Some(Reverse(next)) => (next.due - now).min(TICK),
                None => TICK,
            };
            s = lane
                .wake
                .wait_timeout(s, wait)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// The running proxy; stops its threads when dropped.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl Proxy {
    /// Listens on `127.0.0.1:0` and forwards to `upstream`, with no impairment yet; `seed` seeds
    /// the two directions' generators.
    pub fn start(upstream: SocketAddr, seed: u64) -> std::io::Result<Self> {
        let listen = Arc::new(UdpSocket::bind("127.0.0.1:0")?);
        listen.set_read_timeout(Some(TICK))?;
        let addr = listen.local_addr()?;
        let shared = Arc::new(Shared {
            lanes: [Lane::new(seed), Lane::new(seed ^ 0x9e37_79b9_7f4a_7c15)],
            counters: Counters::default(),
            stop: AtomicBool::new(false),
        });
        let mut threads = Vec::new();
        for dir in [Dir::Up, Dir::Down] {
            let sh = shared.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("impair-{dir:?}"))
                    .spawn(move || sh.schedule(dir))?,
            );
        }
        let sh = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name("impair-listen".into())
                .spawn(move || listen_loop(&sh, &listen, upstream))?,
        );
        Ok(Self {
            addr,
            upstream,
            shared,
            threads,
        })
    }

    /// The address clients send to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address it forwards to.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Sets the impairment of both directions.
    pub fn set(&self, imp: Impairment) {
        self.set_dir(Dir::Up, imp);
        self.set_dir(Dir::Down, imp);
    }

    /// Sets the impairment of one direction (datagrams already queued keep their schedule).
    pub fn set_dir(&self, dir: Dir, imp: Impairment) {
        lock(&self.shared.lane(dir).state).impairment = imp;
    }

    /// Starts (`true`) or ends a blackout of both directions.
    pub fn blackout(&self, on: bool) {
        self.blackout_dir(Dir::Up, on);
        self.blackout_dir(Dir::Down, on);
    }

    /// Starts or ends a blackout of one direction: while it lasts, every datagram arriving and
    /// every one still queued is dropped.
    pub fn blackout_dir(&self, dir: Dir, on: bool) {
        let lane = self.shared.lane(dir);
        lock(&lane.state).blackout = on;
        lane.wake.notify_one();
    }

    /// What it has done so far.
    pub fn stats(&self) -> Stats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            received: get(&c.received),
            sent: get(&c.sent),
            lost: get(&c.lost),
            duplicated: get(&c.duplicated),
            reordered: get(&c.reordered),
            blacked_out: get(&c.blacked_out),
            overflow: get(&c.overflow),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for lane in &self.shared.lanes {
            lane.wake.notify_all();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Receives from clients; gives each new client an upstream socket and a thread reading it.
fn listen_loop(shared: &Arc<Shared>, listen: &Arc<UdpSocket>, upstream: SocketAddr) {
    let mut clients: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut readers = Vec::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    while !shared.stop.load(Ordering::Relaxed) {
        // Timeouts (to look at the stop flag), and ICMP errors from earlier sends to a client
        // that went away, are not ours to handle.
        let Ok((n, from)) = listen.recv_from(&mut buf) else {
            continue;
        };
        let up = match clients.get(&from) {
            Some(up) => up.clone(),
            None if clients.len() >= MAX_CLIENTS => {
                bump(&shared.counters.overflow);
                continue;
            }
            None => match client_socket(shared, listen, upstream, from) {
                Ok((up, reader)) => {
                    readers.push(reader);
                    clients.insert(from, up.clone());
                    up
                }
                Err(_) => {
                    bump(&shared.counters.overflow);
                    continue;
                }
            },
        };
        shared.offer(Dir::Up, &buf[..n], || Sink::Upstream(up.clone()));
    }
    for r in readers {
        let _ = r.join();
    }
}

/// An upstream socket for client `from`, and the thread that queues its replies for `from`.
fn client_socket(
    shared: &Arc<Shared>,
    listen: &Arc<UdpSocket>,
    upstream: SocketAddr,
    from: SocketAddr,
) -> std::io::Result<(Arc<UdpSocket>, JoinHandle<()>)> {
    let up = Arc::new(UdpSocket::bind("127.0.0.1:0")?);
    up.connect(upstream)?;
    up.set_read_timeout(Some(TICK))?;
    let (sh, sock, listen) = (shared.clone(), up.clone(), listen.clone());
    let reader = std::thread::Builder::new()
        .name(format!("impair-{from}"))
        .spawn(move || {
            let mut buf = vec![0u8; MAX_DATAGRAM];
            while !sh.stop.load(Ordering::Relaxed) {
                match sock.recv(&mut buf) {
                    Ok(n) => sh.offer(Dir::Down, &buf[..n], || Sink::Client(listen.clone(), from)),
                    // Timeouts, and "connection refused" while the upstream is down.
                    Err(_) => continue,
                }
            }
        })?;
    Ok((up, reader))
}

#[cfg(test)]
mod tests;
