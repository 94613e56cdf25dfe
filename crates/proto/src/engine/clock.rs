//! Partner clocks: which partner times are shown as fact, and the clock-skew alarm.
//!
//! The partner signs its own wall-clock times (a message's `sent_at`, the `at` of receipts,
//! link tests and escalation notices), but a signature proves who wrote a time, not that it is
//! right: a broken or hostile partner clock may claim year 10,000 or 1970. A time is
//! *plausible* when it lies within [`EngineConfig::clock_skew_tolerance`] of our clock; for
//! messages, receipts and notices, which may wait at the relay or be resent after a reconnect,
//! the past side of the window is widened by [`EngineConfig::key_retention`] (a claim older
//! than that is not a queueing delay we expect).
//!
//! An implausible time never drops anything: the message is delivered, the receipt counts, but
//! the operator is shown our own time instead, and [`AlarmKind::ClockSkew`] is raised once per
//! episode. The episode ends when a partner link test carries a plausible time (link tests are
//! sent every few seconds and never queued, so they are the partner clock's steady witness); the
//! next implausible time after that raises the alarm again, and the alarm's own coalescing
//! (module `alarms`) limits a clock that flaps.
//!
//! Link tests outside the window also do not count as hearing from the partner (see `link`).

use rand_core::CryptoRng;

use super::{AlarmKind, Engine, EngineConfig};
use crate::types::{MessageId, Time};

/// What carried a partner time, which decides how old it may plausibly be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Claim {
    /// A link test: sent live, never queued.
    LinkTest,
    /// A message, receipt or notice: may have waited at the relay.
    Queued,
}

/// Whether `claimed` lies within the tolerance around `now` (see the module doc).
pub(super) fn plausible(now: Time, claimed: Time, cfg: &EngineConfig, claim: Claim) -> bool {
    let tolerance = cfg.clock_skew_tolerance();
    let past = match claim {
        Claim::LinkTest => tolerance,
        Claim::Queued => tolerance.saturating_add(cfg.key_retention()),
    };
    claimed.since(now) <= tolerance && now.since(claimed) <= past
}

impl<R: CryptoRng> Engine<R> {
    /// The time to show for a partner's claim `claimed` carried by `what`: the claim if
    /// plausible, else our clock (raising the skew alarm if no episode is open).
    pub(super) fn partner_time(
        &mut self,
        claimed: Time,
        claim: Claim,
        what: &str,
        message: Option<MessageId>,
    ) -> Time {
        if plausible(self.now, claimed, &self.cfg, claim) {
            if claim == Claim::LinkTest {
                self.alarms.skew_episode = false;
            }
            return claimed;
        }
        if !self.alarms.skew_episode {
            self.alarms.skew_episode = true;
            let detail = format!(
                "{what} carries partner time {} µs but our clock reads {} µs (tolerance {:?}); \
                 showing our time",
                claimed.0,
                self.now.0,
                self.cfg.clock_skew_tolerance()
            );
            self.alarm(AlarmKind::ClockSkew, message, detail);
        }
        self.now
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn plausible_window_is_tolerance_around_now_widened_into_the_past_for_queued_claims() {
        let cfg = EngineConfig::default();
        let tol = cfg.clock_skew_tolerance();
        let now = Time(1_700_000_000_000_000);
        let us = Duration::from_micros(1);
        for claim in [Claim::LinkTest, Claim::Queued] {
            assert!(plausible(now, now, &cfg, claim));
            assert!(plausible(now, now.plus(tol), &cfg, claim));
            assert!(!plausible(now, now.plus(tol + us), &cfg, claim));
            assert!(!plausible(now, Time(u64::MAX), &cfg, claim));
            assert!(!plausible(now, Time(0), &cfg, claim));
        }
        let behind = Time(now.0 - tol.as_micros() as u64);
        assert!(plausible(now, behind, &cfg, Claim::LinkTest));
        assert!(!plausible(now, Time(behind.0 - 1), &cfg, Claim::LinkTest));
        let day_old = Time(now.0 - 24 * 3600 * 1_000_000);
        assert!(plausible(now, day_old, &cfg, Claim::Queued));
        assert!(!plausible(now, day_old, &cfg, Claim::LinkTest));
        let too_old = Time(now.0 - (tol + cfg.key_retention()).as_micros() as u64 - 1);
        assert!(!plausible(now, too_old, &cfg, Claim::Queued));
    }
}
