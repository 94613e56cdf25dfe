//! Time for a run: one monotonic start shared by every task, its wall-clock twin (nodes report
//! times as Unix microseconds), and a precise sleeper.
//!
//! tokio's timer wheel fires at millisecond granularity, which would add up to a millisecond of
//! pacing error to every message — as much as the whole loopback round trip being measured.
//! [`Ticker`] instead parks one OS thread until the earliest deadline anyone waits for (a futex
//! wait, accurate to the kernel's timer slack, ~50 µs) and wakes that waiter. Hotline runs and
//! the bare-QUIC floor use the same ticker, so neither gets an advantage.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::oneshot;

/// The run's time origin.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    start: Instant,
    unix_start_us: u64,
}

impl Clock {
    /// Starts now.
    pub fn start() -> Self {
        let start = Instant::now();
        let unix_start_us = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros() as u64;
        Self {
            start,
            unix_start_us,
        }
    }

    /// Time since the start.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// The instant `d` after the start.
    pub fn at(&self, d: Duration) -> Instant {
        self.start + d
    }

    /// A node's wall-clock time (Unix microseconds) as time since the start; zero if earlier.
    pub fn from_unix_us(&self, us: u64) -> Duration {
        Duration::from_micros(us.saturating_sub(self.unix_start_us))
    }
}

struct Waiter {
    at: Instant,
    seq: u64,
    wake: oneshot::Sender<()>,
}

impl PartialEq for Waiter {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Waiter {}
impl PartialOrd for Waiter {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Waiter {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

#[derive(Default)]
struct Queue {
    heap: BinaryHeap<Reverse<Waiter>>,
    seq: u64,
}

struct Shared {
    queue: Mutex<Queue>,
    stop: AtomicBool,
}

/// A precise sleeper shared by every pacing task of a run; its thread stops when it is
/// dropped.
pub struct Ticker {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Ticker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticker").finish_non_exhaustive()
    }
}

impl Ticker {
    /// Starts the ticker thread.
    pub fn start() -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("bench-ticker".into())
            .spawn(move || run(&s))?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// Resolves at `at` (at once if it has passed).
    pub async fn sleep_until(&self, at: Instant) {
        if at <= Instant::now() {
            return;
        }
        let (wake, woken) = oneshot::channel();
        let earliest = {
            let mut q = self
                .shared
                .queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            q.seq += 1;
            let seq = q.seq;
            let earliest = q.heap.peek().is_none_or(|Reverse(w)| at < w.at);
            q.heap.push(Reverse(Waiter { at, seq, wake }));
            earliest
        };
        if earliest {
            if let Some(t) = &self.thread {
                t.thread().unpark();
            }
        }
        // The ticker thread outlives every waiter; an error only means it stopped.
        let _ = woken.await;
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

fn run(shared: &Shared) {
    while !shared.stop.load(Ordering::Acquire) {
        let next = {
            let mut q = shared.queue.lock().unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            while q.heap.peek().is_some_and(|Reverse(w)| w.at <= now) {
                if let Some(Reverse(w)) = q.heap.pop() {
                    let _ = w.wake.send(());
                }
            }
            q.heap.peek().map(|Reverse(w)| w.at)
        };
        match next {
            Some(at) => std::thread::park_timeout(at.saturating_duration_since(Instant::now())),
            None => std::thread::park(),
        }
    }
    // Wake whoever still waits, so no task hangs on a stopped ticker.
    let mut q = shared.queue.lock().unwrap_or_else(PoisonError::into_inner);
    while let Some(Reverse(w)) = q.heap.pop() {
        let _ = w.wake.send(());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sleeps_end_in_deadline_order_and_not_early() {
        let ticker = Arc::new(Ticker::start().unwrap());
        let start = Instant::now();
        let mut tasks = Vec::new();
        for ms in [30u64, 10, 20, 0] {
            let t = ticker.clone();
            tasks.push(tokio::spawn(async move {
                let at = start + Duration::from_millis(ms);
                t.sleep_until(at).await;
                assert!(Instant::now() >= at);
                Instant::now()
            }));
        }
        let mut woke = Vec::new();
        for t in tasks {
            woke.push(t.await.unwrap());
        }
        assert!(woke[1] <= woke[2] && woke[2] <= woke[0]);
    }

    #[test]
    fn unix_times_map_onto_the_run() {
        let c = Clock::start();
        let now_us = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_micros() as u64;
        assert!(c.from_unix_us(now_us + 5_000) >= Duration::from_millis(5));
        assert_eq!(c.from_unix_us(0), Duration::ZERO);
    }
}
