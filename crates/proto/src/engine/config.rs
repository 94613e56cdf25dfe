//! Engine tunables: deadlines per precedence, retransmission, windows, link tests.

use std::time::Duration;

use crate::types::Precedence;

/// A tunable out of its allowed range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The value is outside `min..=max`.
    #[error("{name} must be between {min:?} and {max:?}, got {value:?}")]
    OutOfRange {
        /// Which tunable.
        name: &'static str,
        /// The rejected value.
        value: Duration,
        /// Smallest allowed.
        min: Duration,
        /// Largest allowed.
        max: Duration,
    },
    /// A count outside its allowed range.
    #[error("{name} must be between {min} and {max}, got {value}")]
    CountOutOfRange {
        /// Which tunable.
        name: &'static str,
        /// The rejected value.
        value: u64,
        /// Smallest allowed.
        min: u64,
        /// Largest allowed.
        max: u64,
    },
}

/// Engine tunables. Construct with [`EngineConfig::default`] and adjust with the setters, which
/// reject values that would make the engine misbehave.
///
/// Defaults (delivered / acknowledged deadlines, counted from submission):
///
/// | precedence | delivered | acknowledged |
/// |------------|-----------|--------------|
/// | flash      | 10 s      | 2 min        |
/// | immediate  | 30 s      | 10 min       |
/// | priority   | 2 min     | 1 h          |
/// | routine    | 10 min    | none         |
///
/// Retransmission until `accepted`: 1 s, doubling to 30 s. Link tests every 2 s; the link is
/// degraded after 3 missed intervals. Receive window: 65,536 messages per lane. Settled history:
/// 4,096 messages per lane (see [`EngineConfig::settled_history`]). A new sealing
/// key every 24 hours. Clock-skew tolerance: 10 minutes (see
/// [`EngineConfig::clock_skew_tolerance`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineConfig {
    delivered_deadline: [Duration; 4],
    acknowledged_deadline: [Option<Duration>; 4],
    retransmit_initial: Duration,
    retransmit_max: Duration,
    link_test_interval: Duration,
    receive_window: u64,
    settled_history: u64,
    key_rotation: Duration,
    max_outbox: usize,
    clock_skew_tolerance: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        let s = Duration::from_secs;
        Self {
            delivered_deadline: [s(600), s(120), s(30), s(10)],
            acknowledged_deadline: [None, Some(s(3600)), Some(s(600)), Some(s(120))],
            retransmit_initial: s(1),
            retransmit_max: s(30),
            link_test_interval: s(2),
            receive_window: 65_536,
            settled_history: 4096,
            key_rotation: s(24 * 3600),
            max_outbox: 1_000_000,
            clock_skew_tolerance: s(600),
        }
    }
}

fn check(
    name: &'static str,
    value: Duration,
    min: Duration,
    max: Duration,
) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(ConfigError::OutOfRange {
            name,
            value,
            min,
            max,
        });
    }
    Ok(())
}

const MIN_DEADLINE: Duration = Duration::from_millis(100);
const MAX_DEADLINE: Duration = Duration::from_secs(7 * 24 * 3600);

impl EngineConfig {
    /// Deadline for `delivered`, from submission (and from each escalation).
    pub fn delivered_deadline(&self, p: Precedence) -> Duration {
        self.delivered_deadline[p.index()]
    }

    /// Deadline for `acknowledged`, from submission (and from each escalation); `None` = no
    /// acknowledgement expected.
    pub fn acknowledged_deadline(&self, p: Precedence) -> Option<Duration> {
        self.acknowledged_deadline[p.index()]
    }

    /// First retransmission interval while not `accepted`.
    pub fn retransmit_initial(&self) -> Duration {
        self.retransmit_initial
    }

    /// Longest retransmission interval.
    pub fn retransmit_max(&self) -> Duration {
        self.retransmit_max
    }

    /// Interval between link tests.
    pub fn link_test_interval(&self) -> Duration {
        self.link_test_interval
    }

    /// Messages per lane the receiver buffers ahead of the next deliverable one.
    pub fn receive_window(&self) -> u64 {
        self.receive_window
    }

    /// How long a message sealed to one of our keys may still arrive: the newest 8 keys are
    /// kept, one per rotation, so about 8 rotations (8 days at the default daily rotation).
    pub fn key_retention(&self) -> Duration {
        self.key_rotation * (super::keys::MAX_SEALING_KEYS as u32)
    }

    /// How often a new sealing key replaces the current one. A key is announced as valid for
    /// two rotations, so messages sealed just before a rotation still have one to arrive.
    pub fn key_rotation(&self) -> Duration {
        self.key_rotation
    }

    /// Messages the sender keeps before refusing new ones with back-pressure.
    pub fn max_outbox(&self) -> usize {
        self.max_outbox
    }

    /// How far a partner's clock may differ from ours before its times are not shown as fact.
    ///
    /// A partner time (a message's `sent_at`, a receipt's, link test's or escalation notice's
    /// `at`) later than our clock plus this, or earlier than our clock minus this, is *skewed*:
    /// the message or receipt still counts, but the operator is shown our receive time and a
    /// single [`AlarmKind::ClockSkew`](super::AlarmKind::ClockSkew) is raised. Messages,
    /// receipts and notices may wait at the relay or be resent after a reconnect, so for them
    /// the past side of the window is widened by [`key_retention`](Self::key_retention); link
    /// tests are never queued, so theirs is not, and a link test outside the window does not
    /// count as hearing from the partner.
    pub fn clock_skew_tolerance(&self) -> Duration {
        self.clock_skew_tolerance
    }

    /// Sets the clock-skew tolerance (1 s ..= 1 day).
    pub fn set_clock_skew_tolerance(&mut self, d: Duration) -> Result<&mut Self, ConfigError> {
        check(
            "clock skew tolerance",
            d,
            Duration::from_secs(1),
            Duration::from_secs(24 * 3600),
        )?;
        self.clock_skew_tolerance = d;
        Ok(self)
    }

    /// Copies the `delivered` and `acknowledged` deadlines of `from`, nothing else.
    pub(crate) fn take_deadlines(&mut self, from: &Self) {
        self.delivered_deadline = from.delivered_deadline;
        self.acknowledged_deadline = from.acknowledged_deadline;
    }

    /// This configuration with the deadlines of `from`.
    #[must_use]
    pub fn with_deadlines_of(&self, from: &Self) -> Self {
        let mut out = self.clone();
        out.take_deadlines(from);
        out
    }

    /// Whether `other` has the same deadlines.
    pub fn same_deadlines(&self, other: &Self) -> bool {
        self.delivered_deadline == other.delivered_deadline
            && self.acknowledged_deadline == other.acknowledged_deadline
    }

    /// Sets the `delivered` deadline of one precedence (100 ms ..= 7 days).
    pub fn set_delivered_deadline(
        &mut self,
        p: Precedence,
        d: Duration,
    ) -> Result<&mut Self, ConfigError> {
        check("delivered deadline", d, MIN_DEADLINE, MAX_DEADLINE)?;
        self.delivered_deadline[p.index()] = d;
        Ok(self)
    }

    /// Sets the `acknowledged` deadline of one precedence (100 ms ..= 7 days, or none).
    pub fn set_acknowledged_deadline(
        &mut self,
        p: Precedence,
        d: Option<Duration>,
    ) -> Result<&mut Self, ConfigError> {
        if let Some(d) = d {
            check("acknowledged deadline", d, MIN_DEADLINE, MAX_DEADLINE)?;
        }
        self.acknowledged_deadline[p.index()] = d;
        Ok(self)
    }

    /// Sets the retransmission backoff (initial 10 ms ..= 60 s, max ≥ initial, ≤ 10 min).
    pub fn set_retransmit(
        &mut self,
        initial: Duration,
        max: Duration,
    ) -> Result<&mut Self, ConfigError> {
        check(
            "retransmit initial",
            initial,
            Duration::from_millis(10),
            Duration::from_secs(60),
        )?;
        check("retransmit max", max, initial, Duration::from_secs(600))?;
        self.retransmit_initial = initial;
        self.retransmit_max = max;
        Ok(self)
    }

    /// Sets the link-test interval (100 ms ..= 10 min).
    pub fn set_link_test_interval(&mut self, d: Duration) -> Result<&mut Self, ConfigError> {
        check(
            "link test interval",
            d,
            Duration::from_millis(100),
            Duration::from_secs(600),
        )?;
        self.link_test_interval = d;
        Ok(self)
    }

    /// Sets the sealing-key rotation interval (1 min ..= 90 days).
    pub fn set_key_rotation(&mut self, d: Duration) -> Result<&mut Self, ConfigError> {
        check(
            "key rotation",
            d,
            Duration::from_secs(60),
            Duration::from_secs(90 * 24 * 3600),
        )?;
        self.key_rotation = d;
        Ok(self)
    }

    /// Settled received messages (acknowledged, or expecting no acknowledgement) whose
    /// per-message state the engine keeps, per lane; older ones are forgotten so that memory
    /// stays flat. A forgotten message is still acknowledged through
    /// [`Engine::acknowledge_stored`](super::Engine::acknowledge_stored).
    pub fn settled_history(&self) -> u64 {
        self.settled_history
    }

    /// Sets [`Self::settled_history`] (1 to 2^20).
    pub fn set_settled_history(&mut self, n: u64) -> Result<&mut Self, ConfigError> {
        if !(1..=1 << 20).contains(&n) {
            return Err(ConfigError::CountOutOfRange {
                name: "settled history",
                value: n,
                min: 1,
                max: 1 << 20,
            });
        }
        self.settled_history = n;
        Ok(self)
    }

    /// Sets the per-lane receive window (16 ..= 1,048,576 messages).
    pub fn set_receive_window(&mut self, n: u64) -> Result<&mut Self, ConfigError> {
        if !(16..=1 << 20).contains(&n) {
            return Err(ConfigError::CountOutOfRange {
                name: "receive window",
                value: n,
                min: 16,
                max: 1 << 20,
            });
        }
        self.receive_window = n;
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setters_reject_out_of_range() {
        let mut c = EngineConfig::default();
        assert!(
            c.set_delivered_deadline(Precedence::Flash, Duration::from_millis(1))
                .is_err()
        );
        assert!(
            c.set_delivered_deadline(Precedence::Flash, Duration::from_secs(1))
                .is_ok()
        );
        assert_eq!(
            c.delivered_deadline(Precedence::Flash),
            Duration::from_secs(1)
        );
        assert!(
            c.set_retransmit(Duration::from_secs(2), Duration::from_secs(1))
                .is_err()
        );
        assert!(c.set_receive_window(1).is_err());
        assert_eq!(c.settled_history(), 4096);
        assert!(c.set_settled_history(0).is_err());
        assert!(c.set_settled_history((1 << 20) + 1).is_err());
        assert_eq!(c.set_settled_history(3).unwrap().settled_history(), 3);
        assert!(c.set_key_rotation(Duration::from_secs(59)).is_err());
        assert!(
            c.set_key_rotation(Duration::from_secs(91 * 24 * 3600))
                .is_err()
        );
        assert!(c.set_key_rotation(Duration::from_secs(3600)).is_ok());
        assert_eq!(c.key_rotation(), Duration::from_secs(3600));
        assert_eq!(c.clock_skew_tolerance(), Duration::from_secs(600));
        assert!(c.set_clock_skew_tolerance(Duration::ZERO).is_err());
        assert!(
            c.set_clock_skew_tolerance(Duration::from_secs(2 * 24 * 3600))
                .is_err()
        );
        assert!(c.set_clock_skew_tolerance(Duration::from_secs(30)).is_ok());
        assert_eq!(c.clock_skew_tolerance(), Duration::from_secs(30));
        assert!(
            c.set_acknowledged_deadline(Precedence::Routine, None)
                .is_ok()
        );
    }
}
