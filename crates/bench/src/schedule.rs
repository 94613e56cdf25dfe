//! Open-loop scheduling: when each message is *meant* to be sent, and at which precedence.
//!
//! - [`Pacer`]: message `i` of a flow is due at `offset + i / rate`, fixed before the run
//!   starts. A sender that falls behind sends what is overdue at once, and each message's
//!   latency is still measured from its own intended time ([`latency_us`]), so a stall in the
//!   system under test shows in the percentiles instead of silently slowing the load
//!   (no coordinated omission).
//! - [`Mix`]: a precedence mix such as `routine=90,flash=10`, and [`MixIter`], which spreads it
//!   evenly and deterministically (smooth weighted round robin), so every run with the same
//!   options sends the same sequence.
//! - [`Schedule`]: several flows (each a pacer and a mix) merged in intended-time order, as the
//!   `flood` scenario needs (routine at full rate while flash trickles in).

use std::fmt;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hotline_proto::Precedence;

/// Message `i` of a flow is intended at `offset + i / rate`, for every such time before `end`.
#[derive(Clone, Debug)]
pub struct Pacer {
    rate: f64,
    offset: Duration,
    end: Duration,
    next: u64,
}

impl Pacer {
    /// A flow of `rate` messages per second starting at `offset` (from the run's start) and
    /// stopping before `end`. A rate of zero or below sends nothing.
    pub fn new(rate: f64, offset: Duration, end: Duration) -> Self {
        Self {
            rate,
            offset,
            end,
            next: 0,
        }
    }

    fn active(&self) -> bool {
        self.rate.is_finite() && self.rate > 0.0
    }

    /// The intended send time of message `i`, from the run's start.
    pub fn intended(&self, i: u64) -> Duration {
        // f64 keeps nanosecond precision for 2^53 ns (104 days) of schedule.
        self.offset + Duration::from_nanos((i as f64 * 1e9 / self.rate).round() as u64)
    }

    /// The intended time of the next message, unless the flow is over.
    pub fn peek(&self) -> Option<Duration> {
        if !self.active() {
            return None;
        }
        let t = self.intended(self.next);
        (t < self.end).then_some(t)
    }

    /// Takes the next message if it is due at `now`; returns its index and intended time.
    pub fn take_due(&mut self, now: Duration) -> Option<(u64, Duration)> {
        let t = self.peek().filter(|&t| t <= now)?;
        let i = self.next;
        self.next += 1;
        Some((i, t))
    }

    /// How many messages the flow sends in all.
    pub fn total(&self) -> u64 {
        if !self.active() || self.end <= self.offset {
            return 0;
        }
        let span = (self.end - self.offset).as_secs_f64();
        // Intended times offset + i/rate < end, i ≥ 0.
        let n = (span * self.rate).ceil() as u64;
        (0..=n + 1)
            .rev()
            .find(|&i| i == 0 || self.intended(i - 1) < self.end)
            .unwrap_or(0)
    }
}

/// Latency of a completion at `done` for a message intended at `intended`, in microseconds;
/// zero if the completion is (by clock jitter) before the intent.
pub fn latency_us(intended: Duration, done: Duration) -> u64 {
    done.saturating_sub(intended).as_micros() as u64
}

/// A precedence mix: a weight per precedence, at least one non-zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mix {
    weights: [u32; 4],
}

impl Mix {
    /// Only one precedence.
    pub fn only(p: Precedence) -> Self {
        let mut weights = [0; 4];
        weights[p.index()] = 1;
        Self { weights }
    }

    /// Parses `routine=90,flash=10` (weights, not necessarily summing to 100) or a single
    /// precedence name such as `flash`.
    pub fn parse(s: &str) -> Result<Self> {
        let s = s.trim();
        if !s.contains('=') && !s.contains(',') {
            let p: Precedence = s
                .parse()
                .with_context(|| format!("--mix {s:?}: expected e.g. routine=90,flash=10"))?;
            return Ok(Self::only(p));
        }
        let mut weights = [0u32; 4];
        let mut seen = [false; 4];
        for part in s.split(',') {
            let Some((name, weight)) = part.split_once('=') else {
                bail!("--mix part {part:?} is not NAME=WEIGHT (e.g. routine=90,flash=10)");
            };
            let p: Precedence = name
                .trim()
                .parse()
                .with_context(|| format!("--mix part {part:?}"))?;
            let w: u32 = weight
                .trim()
                .parse()
                .with_context(|| format!("--mix part {part:?}: weight must be a whole number"))?;
            if std::mem::replace(&mut seen[p.index()], true) {
                bail!("--mix names {p} twice");
            }
            weights[p.index()] = w;
        }
        if weights.iter().all(|&w| w == 0) {
            bail!("--mix {s:?} has no non-zero weight");
        }
        if weights.iter().map(|&w| u64::from(w)).sum::<u64>() > u64::from(u32::MAX) {
            bail!("--mix {s:?}: weights too large");
        }
        Ok(Self { weights })
    }

    /// The weight of one precedence.
    pub fn weight(&self, p: Precedence) -> u32 {
        self.weights[p.index()]
    }

    /// The share of one precedence, 0..=1.
    pub fn share(&self, p: Precedence) -> f64 {
        f64::from(self.weight(p)) / self.weights.iter().map(|&w| f64::from(w)).sum::<f64>()
    }

    /// The deterministic, evenly spread sequence of precedences.
    pub fn iter(&self) -> MixIter {
        MixIter {
            weights: self.weights.map(i64::from),
            current: [0; 4],
            total: self.weights.iter().map(|&w| i64::from(w)).sum(),
        }
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for p in Precedence::ALL {
            let w = self.weight(p);
            if w > 0 {
                if !first {
                    f.write_str(",")?;
                }
                first = false;
                write!(f, "{p}={w}")?;
            }
        }
        Ok(())
    }
}

/// Smooth weighted round robin over a [`Mix`]: in every window of `sum(weights)` picks each
/// precedence appears exactly its weight times, spread out rather than bunched.
#[derive(Clone, Debug)]
pub struct MixIter {
    weights: [i64; 4],
    current: [i64; 4],
    total: i64,
}

impl Iterator for MixIter {
    type Item = Precedence;

    fn next(&mut self) -> Option<Precedence> {
        let mut best = 0;
        for i in 0..4 {
            self.current[i] += self.weights[i];
            // Ties go to the higher precedence.
            if self.current[i] >= self.current[best] {
                best = i;
            }
        }
        self.current[best] -= self.total;
        Precedence::from_index(best)
    }
}

/// One message the schedule says to send now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Planned {
    /// Intended send time, from the run's start.
    pub intended: Duration,
    /// Its precedence.
    pub precedence: Precedence,
}

/// Flows merged in intended-time order.
#[derive(Clone, Debug, Default)]
pub struct Schedule {
    flows: Vec<(Pacer, MixIter)>,
}

impl Schedule {
    /// Adds a flow.
    pub fn add(&mut self, pacer: Pacer, mix: &Mix) {
        self.flows.push((pacer, mix.iter()));
    }

    /// The next message due at `now`, earliest intended first.
    pub fn next_due(&mut self, now: Duration) -> Option<Planned> {
        let (pacer, mix) = self
            .flows
            .iter_mut()
            .filter_map(|f| f.0.peek().filter(|&t| t <= now).map(|t| (t, f)))
            .min_by_key(|(t, _)| *t)
            .map(|(_, f)| f)?;
        let (_, intended) = pacer.take_due(now)?;
        Some(Planned {
            intended,
            precedence: mix.next()?,
        })
    }

    /// When the next message is due, unless every flow is over.
    pub fn next_wakeup(&self) -> Option<Duration> {
        self.flows.iter().filter_map(|f| f.0.peek()).min()
    }

    /// Messages the whole schedule sends.
    pub fn total(&self) -> u64 {
        self.flows.iter().map(|f| f.0.total()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn intended_times_are_fixed_by_rate_and_offset() {
        let p = Pacer::new(1000.0, 5 * MS, Duration::from_secs(1));
        assert_eq!(p.intended(0), 5 * MS);
        assert_eq!(p.intended(10), 15 * MS);
        // No drift after many messages.
        assert_eq!(p.intended(1_000_000), Duration::from_secs(1000) + 5 * MS);
        let p = Pacer::new(3.0, Duration::ZERO, Duration::from_secs(1));
        assert_eq!(p.intended(1), Duration::from_nanos(333_333_333));
        assert_eq!(p.intended(3), Duration::from_secs(1));
    }

    #[test]
    fn a_late_sender_catches_up_and_latency_counts_from_intent() {
        // 1000/s, the sender stalls and only looks at t = 100 ms: the 101 overdue messages are
        // released at once, each keeping its own intended time.
        let mut p = Pacer::new(1000.0, Duration::ZERO, Duration::from_secs(1));
        let now = 100 * MS;
        let mut due = Vec::new();
        while let Some((i, t)) = p.take_due(now) {
            due.push((i, t));
        }
        assert_eq!(due.len(), 101);
        assert_eq!(due[0], (0, Duration::ZERO));
        assert_eq!(due[100], (100, 100 * MS));
        // A message answered 1 ms after the stall ended: the first waited 101 ms, not 1 ms.
        let done = now + MS;
        assert_eq!(latency_us(due[0].1, done), 101_000);
        assert_eq!(latency_us(due[100].1, done), 1_000);
        // Nothing more is due until its time.
        assert_eq!(p.take_due(now), None);
        assert_eq!(p.peek(), Some(101 * MS));
    }

    #[test]
    fn latency_never_negative() {
        assert_eq!(latency_us(10 * MS, 9 * MS), 0);
    }

    #[test]
    fn flows_end_before_end_and_count_their_messages() {
        let mut p = Pacer::new(10.0, Duration::ZERO, Duration::from_secs(1));
        assert_eq!(p.total(), 10);
        let mut n = 0;
        while p.take_due(Duration::from_secs(5)).is_some() {
            n += 1;
        }
        assert_eq!(n, 10);
        assert_eq!(p.peek(), None);
        assert_eq!(
            Pacer::new(0.0, Duration::ZERO, Duration::from_secs(1)).total(),
            0
        );
        assert_eq!(
            Pacer::new(7.0, Duration::from_millis(50), Duration::from_secs(2)).total(),
            14
        );
    }

    #[test]
    fn mix_parses_weights_and_single_names() {
        let m = Mix::parse("routine=90,flash=10").unwrap();
        assert_eq!(m.weight(Precedence::Routine), 90);
        assert_eq!(m.weight(Precedence::Flash), 10);
        assert_eq!(m.weight(Precedence::Priority), 0);
        assert!((m.share(Precedence::Flash) - 0.1).abs() < 1e-9);
        assert_eq!(m.to_string(), "routine=90,flash=10");
        assert_eq!(Mix::parse("flash").unwrap(), Mix::only(Precedence::Flash));
        assert_eq!(
            Mix::parse(" immediate = 1 , priority=3")
                .unwrap()
                .to_string(),
            "priority=3,immediate=1"
        );
    }

    #[test]
    fn mix_rejects_bad_input_naming_it() {
        for (input, needle) in [
            ("routine=90,urgent=10", "urgent"),
            ("routine=ninety", "whole number"),
            ("routine", ""),
            ("routine=0,flash=0", "no non-zero"),
            ("routine=1,routine=2", "twice"),
            ("routine:90", "routine:90"),
            ("", ""),
        ] {
            match Mix::parse(input) {
                Ok(m) if input == "routine" => assert_eq!(m, Mix::only(Precedence::Routine)),
                Ok(m) => panic!("{input:?} parsed as {m:?}"),
                Err(e) => assert!(format!("{e:#}").contains(needle), "{input:?}: {e:#}"),
            }
        }
    }

    #[test]
    fn mix_sequence_is_exact_and_spread() {
        let m = Mix::parse("routine=90,flash=10").unwrap();
        let seq: Vec<_> = m.iter().take(1000).collect();
        let flash: Vec<usize> = seq
            .iter()
            .enumerate()
            .filter(|(_, p)| **p == Precedence::Flash)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(flash.len(), 100);
        // Evenly spread: one flash in every 10 messages.
        for w in flash.windows(2) {
            assert_eq!(w[1] - w[0], 10);
        }
        // Every window of sum(weights) holds each precedence exactly its weight times.
        let m = Mix::parse("routine=5,priority=3,immediate=1,flash=1").unwrap();
        let seq: Vec<_> = m.iter().take(100).collect();
        for chunk in seq.chunks(10) {
            for (p, w) in [
                (Precedence::Routine, 5),
                (Precedence::Priority, 3),
                (Precedence::Immediate, 1),
                (Precedence::Flash, 1),
            ] {
                assert_eq!(chunk.iter().filter(|&&x| x == p).count(), w, "{chunk:?}");
            }
        }
        // Deterministic.
        assert_eq!(seq, m.iter().take(100).collect::<Vec<_>>());
    }

    #[test]
    fn schedule_merges_flows_in_intended_order() {
        let end = Duration::from_secs(1);
        let mut s = Schedule::default();
        s.add(
            Pacer::new(100.0, Duration::ZERO, end),
            &Mix::only(Precedence::Routine),
        );
        s.add(
            Pacer::new(10.0, Duration::from_millis(5), end),
            &Mix::only(Precedence::Flash),
        );
        assert_eq!(s.total(), 110);
        let mut out = Vec::new();
        while let Some(p) = s.next_due(Duration::from_secs(2)) {
            out.push(p);
        }
        assert_eq!(out.len(), 110);
        assert!(out.windows(2).all(|w| w[0].intended <= w[1].intended));
        assert_eq!(out[1].precedence, Precedence::Flash);
        assert_eq!(out[1].intended, 5 * MS);
        assert_eq!(s.next_wakeup(), None);
    }
}
