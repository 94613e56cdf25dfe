//! Identity conflicts: what the router does when a second live connection claims an identity.
//!
//! Two nodes with one identity (a copied configuration, a stolen key) would otherwise replace
//! each other at the relay for as long as both run, each reconnect closing the other. The rule,
//! per endpoint, with time passed in (wall clock, as everywhere in the router):
//!
//! - A newcomer while a connection of that identity is live is a *conflict*. Normally it
//!   displaces the live one (a node that restarted, or whose old connection is not yet timed
//!   out, must get through at once): the shell closes the old connection with
//!   `CloseReason::IdentityConflict` and logs both remote addresses.
//! - Once [`IdentityLimits::flips`] displacements (default 3) happened within
//!   [`IdentityLimits::window`] (default 30 s), the next newcomer is refused instead, and so is
//!   every newcomer for a back-off ([`IdentityLimits::backoff`], default 60 s): the live
//!   (older) connection is kept and the newcomers are closed with
//!   `CloseReason::IdentityInUse`. Each further back-off in a row doubles, up to
//!   [`IdentityLimits::max_backoff`] (default 16 min); once a back-off has ended, that long
//!   without a displacement starts the next back-off from the base again.
//! - A newcomer while no connection of the identity is live is no conflict, back-off or not:
//!   the back-off protects a live connection, it never locks an identity out.
//!
//! Which of the two nodes is kept is whichever was live when the back-off started; the relay
//! cannot tell the genuine one from the copy. The point is to stop the flapping and to make
//! both sides loud: the relay warns with both addresses and counts, both nodes raise an alarm.

use std::collections::VecDeque;
use std::time::Duration;

use hotline_proto::Time;

/// How many identity flips the relay tolerates before it keeps the live connection, and for how
/// long it then refuses newcomers. See the module docs of `router::identity`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdentityLimits {
    /// Displacements within [`IdentityLimits::window`] after which newcomers are refused; 0
    /// refuses every newcomer while a connection is live.
    pub flips: u32,
    /// How far back displacements are counted.
    pub window: Duration,
    /// The first back-off: how long newcomers are refused once the identity flapped.
    pub backoff: Duration,
    /// The longest back-off, and how long without a conflict resets it to the first.
    pub max_backoff: Duration,
}

impl IdentityLimits {
    /// Default displacements tolerated within the window: 3.
    pub const DEFAULT_FLIPS: u32 = 3;
    /// Default window: 30 s.
    pub const DEFAULT_WINDOW: Duration = Duration::from_secs(30);
    /// Default first back-off: 60 s.
    pub const DEFAULT_BACKOFF: Duration = Duration::from_secs(60);
    /// Default longest back-off: 16 min.
    pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(16 * 60);
}

impl Default for IdentityLimits {
    fn default() -> Self {
        Self {
            flips: Self::DEFAULT_FLIPS,
            window: Self::DEFAULT_WINDOW,
            backoff: Self::DEFAULT_BACKOFF,
            max_backoff: Self::DEFAULT_MAX_BACKOFF,
        }
    }
}

/// What to do with a newcomer while a connection of its identity is live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Register it and close the live one.
    Displace,
    /// Keep the live one; refuse the newcomer. Newcomers are refused until `until`.
    Refuse { until: Time },
}

/// The conflict history of one endpoint.
#[derive(Clone, Debug, Default)]
pub(super) struct ConflictGuard {
    /// When recent displacements happened, oldest first; only those within the window.
    flips: VecDeque<Time>,
    /// Newcomers are refused until then.
    refuse_until: Option<Time>,
    /// The next back-off, if the last one was recent enough to escalate.
    next_backoff: Option<Duration>,
    /// The last conflict (a displacement), or the end of the back-off it started: quiet is
    /// counted from there.
    last_conflict: Option<Time>,
}

impl ConflictGuard {
    /// A newcomer arrived at `now` while a connection of this identity is live.
    pub(super) fn on_conflict(&mut self, now: Time, limits: &IdentityLimits) -> Verdict {
        if self
            .last_conflict
            .is_some_and(|t| now.since(t) >= limits.max_backoff)
        {
            self.next_backoff = None;
        }
        self.last_conflict = Some(now);
        if let Some(until) = self.refuse_until {
            if now < until {
                self.last_conflict = Some(until);
                return Verdict::Refuse { until };
            }
            self.refuse_until = None;
        }
        while self
            .flips
            .front()
            .is_some_and(|t| now.since(*t) >= limits.window)
        {
            self.flips.pop_front();
        }
        if self.flips.len() >= limits.flips as usize {
            let backoff = self.next_backoff.unwrap_or(limits.backoff);
            let doubled = backoff.checked_mul(2).unwrap_or(limits.max_backoff);
            self.next_backoff = Some(doubled.min(limits.max_backoff));
            self.flips.clear();
            let until = now.plus(backoff);
            self.refuse_until = Some(until);
            self.last_conflict = Some(until);
            return Verdict::Refuse { until };
        }
        self.flips.push_back(now);
        Verdict::Displace
    }
}
