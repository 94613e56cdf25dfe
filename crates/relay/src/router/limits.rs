//! How much the relay holds per destination and in all, and for how long.
//!
//! [`Limits`] bounds the bytes queued for one destination (by precedence: routine first refused,
//! flash and durable control frames last) and the envelope bytes queued over all destinations
//! (the global budget, shared out per sender by the rule in `budget`); [`Ttl`] says how long an envelope is held per
//! transport lane; [`IdentityLimits`] how many identity conflicts are tolerated (see
//! `identity`). Plain values: the router applies them.

use std::time::Duration;

use hotline_proto::Precedence;

use super::IdentityLimits;

/// Per-destination queue bounds, the global budget, time-to-live, and the identity-conflict
/// back-off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Envelope bytes queued for one destination from one sender past which that sender's
    /// `routine` envelopes are refused; other precedences get 125 % and 150 % of it. Control
    /// frames (receipts, notices) for one destination, from all its partners, are refused past
    /// 150 % of it counting its envelopes too.
    pub max_queue_bytes: u64,
    /// Envelope bytes queued for all destinations together (in the store; at most
    /// `max_in_memory_bytes` of them also in RAM). Each configured endpoint has an equal quota of it as a sender; beyond its quota a
    /// sender only borrows space nobody else is owed (rule in the router's `budget` module).
    pub max_queued_bytes_total: u64,
    /// Bytes of queued envelope frames held in memory, over all destinations. Past it, a newly
    /// committed envelope (and one just written to its destination) is dropped from memory and
    /// read back from the store when its turn to be written comes.
    pub max_in_memory_bytes: u64,
    /// How long a queued envelope is held, per transport lane.
    pub ttl: Ttl,
    /// When a flapping identity's live connection is kept and newcomers refused.
    pub identity: IdentityLimits,
}

impl Limits {
    /// Default per-destination bound: 256 MiB.
    pub const DEFAULT_MAX_QUEUE_BYTES: u64 = 256 * 1024 * 1024;
    /// Default global budget: 1 GiB, for a relay host with a few GiB of RAM.
    pub const DEFAULT_MAX_QUEUED_BYTES_TOTAL: u64 = 1024 * 1024 * 1024;
    /// Default in-memory window: 64 MiB.
    pub const DEFAULT_MAX_IN_MEMORY_BYTES: u64 = 64 * 1024 * 1024;

    /// The bound that applies to an envelope on `transport`.
    pub fn bound(&self, transport: Precedence) -> u64 {
        let b = self.max_queue_bytes;
        match transport {
            Precedence::Routine => b,
            Precedence::Priority | Precedence::Immediate => b.saturating_add(b / 4),
            Precedence::Flash => self.control_bound(),
        }
    }

    /// The bound for receipts and escalation notices waiting for their addressee: 150 %.
    pub fn control_bound(&self) -> u64 {
        self.max_queue_bytes
            .saturating_add(self.max_queue_bytes / 2)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_queue_bytes: Self::DEFAULT_MAX_QUEUE_BYTES,
            max_queued_bytes_total: Self::DEFAULT_MAX_QUEUED_BYTES_TOTAL,
            max_in_memory_bytes: Self::DEFAULT_MAX_IN_MEMORY_BYTES,
            ttl: Ttl::default(),
            identity: IdentityLimits::default(),
        }
    }
}

/// How long the relay holds a queued envelope for an absent destination, per *transport* lane,
/// counted from the envelope's first arrival. When it runs out the relay frees the space and
/// tells the sender `Refused{Expired}`; the sender keeps the message and offers it again later.
/// `None` holds it until it is delivered.
///
/// Defaults: `routine` 1 day, `priority` 2 days, `immediate` 3 days, `flash` 7 days.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ttl {
    /// For envelopes on the `routine` lane.
    pub routine: Option<Duration>,
    /// For envelopes on the `priority` lane.
    pub priority: Option<Duration>,
    /// For envelopes on the `immediate` lane.
    pub immediate: Option<Duration>,
    /// For envelopes on the `flash` lane.
    pub flash: Option<Duration>,
}

impl Ttl {
    /// Default for `routine`: one day.
    pub const DEFAULT_ROUTINE: Duration = Duration::from_secs(24 * 3600);
    /// Default for `priority`: two days.
    pub const DEFAULT_PRIORITY: Duration = Duration::from_secs(2 * 24 * 3600);
    /// Default for `immediate`: three days.
    pub const DEFAULT_IMMEDIATE: Duration = Duration::from_secs(3 * 24 * 3600);
    /// Default for `flash`: seven days.
    pub const DEFAULT_FLASH: Duration = Duration::from_secs(7 * 24 * 3600);

    /// Nothing ever expires.
    pub const NEVER: Self = Self {
        routine: None,
        priority: None,
        immediate: None,
        flash: None,
    };

    /// The time-to-live of an envelope on `lane`.
    pub fn for_lane(&self, lane: Precedence) -> Option<Duration> {
        match lane {
            Precedence::Routine => self.routine,
            Precedence::Priority => self.priority,
            Precedence::Immediate => self.immediate,
            Precedence::Flash => self.flash,
        }
    }
}

impl Default for Ttl {
    fn default() -> Self {
        Self {
            routine: Some(Self::DEFAULT_ROUTINE),
            priority: Some(Self::DEFAULT_PRIORITY),
            immediate: Some(Self::DEFAULT_IMMEDIATE),
            flash: Some(Self::DEFAULT_FLASH),
        }
    }
}
