//! The timer task: calls [`Router::handle_timeout`] whenever [`Router::poll_timeout`] is due
//! (time-to-live expiry), and the wall clock the router counts in.
//!
//! It holds no state of its own: the deadline lives in the router, and [`Shared`] wakes the
//! task whenever a router call moved it. It never sleeps past a deadline, and never trusts a
//! sleep either: each turn compares the wall clock with the deadline.
//!
//! Invariant: after every router call the task is either asleep until the router's current
//! deadline (or [`MAX_TIMER_SLEEP`]), or about to read it again.

use std::sync::Arc;
use std::time::Duration;

use super::shared::Shared;
#[cfg(doc)]
use crate::router::Router;

/// Longest the timer sleeps before looking at the wall clock again, so a clock step is noticed.
const MAX_TIMER_SLEEP: Duration = Duration::from_secs(60);

/// Calls [`Router::handle_timeout`] whenever [`Router::poll_timeout`] is due, comparing the wall
/// clock with the deadline rather than trusting a sleep. Runs until aborted.
pub(super) async fn run(shared: Arc<Shared>) {
    loop {
        // Registered before reading the deadline, so a change in between is not missed.
        let changed = shared.timer.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let deadline = shared.lock().router.poll_timeout();
        let now = wall_clock();
        match deadline {
            Some(at) if at <= now => shared.run(|r| r.handle_timeout(now)),
            Some(at) => {
                let sleep = at.since(now).min(MAX_TIMER_SLEEP);
                tokio::select! {
                    () = tokio::time::sleep(sleep) => {}
                    () = &mut changed => {}
                }
            }
            None => changed.await,
        }
    }
}

/// Wall-clock time now, as the router counts it (time-to-live survives restarts).
pub(super) use hotline_net::clock::wall_now as wall_clock;
