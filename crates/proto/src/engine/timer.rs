//! The one table of armed timers.
//!
//! Each key (for the engine, a timer kind and a message) has at most one deadline: [`set`]
//! replaces it and [`stop`] removes it, so the table never holds a stale entry and nothing has
//! to be filtered when it fires. It only keeps time: what a timer means is decided by its owner
//! when [`pop_expired`] hands it back. It never reads a clock.
//!
//! Main type: [`TimerTable`]. The link's two deadlines (next link test, degraded-after) are
//! derived from the link state instead and live in `link.rs`.
//!
//! Invariant: `by_key` and `by_time` hold exactly the same (deadline, key) pairs, so
//! [`next`] is the earliest armed deadline.
//!
//! [`set`]: TimerTable::set
//! [`stop`]: TimerTable::stop
//! [`next`]: TimerTable::next
//! [`pop_expired`]: TimerTable::pop_expired

use std::collections::{BTreeMap, BTreeSet};

use crate::types::Time;

/// Deadlines by key; expiry in (deadline, key) order.
#[derive(Debug)]
pub(super) struct TimerTable<K> {
    by_key: BTreeMap<K, Time>,
    by_time: BTreeSet<(Time, K)>,
}

impl<K: Ord + Clone> TimerTable<K> {
    pub(super) fn new() -> Self {
        Self {
            by_key: BTreeMap::new(),
            by_time: BTreeSet::new(),
        }
    }

    /// Arms `key` at `at`, replacing any deadline it had.
    pub(super) fn set(&mut self, key: K, at: Time) {
        if let Some(old) = self.by_key.insert(key.clone(), at) {
            self.by_time.remove(&(old, key.clone()));
        }
        self.by_time.insert((at, key));
    }

    /// Disarms `key`, if it was armed.
    pub(super) fn stop(&mut self, key: &K) {
        if let Some(at) = self.by_key.remove(key) {
            self.by_time.remove(&(at, key.clone()));
        }
    }

    /// The earliest deadline.
    pub(super) fn next(&self) -> Option<Time> {
        self.by_time.first().map(|(at, _)| *at)
    }

    /// Disarms and returns the earliest timer due at or before `now`.
    pub(super) fn pop_expired(&mut self, now: Time) -> Option<K> {
        let (at, _) = self.by_time.first()?;
        if *at > now {
            return None;
        }
        let (_, key) = self.by_time.pop_first()?;
        self.by_key.remove(&key);
        Some(key)
    }

    /// Disarms everything.
    pub(super) fn clear(&mut self) {
        self.by_key.clear();
        self.by_time.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: u64) -> Time {
        Time(s * 1_000_000)
    }

    #[test]
    fn set_replaces_the_deadline() {
        let mut timers = TimerTable::new();
        timers.set("a", t(5));
        timers.set("a", t(9));
        assert_eq!(timers.next(), Some(t(9)));
        assert_eq!(timers.pop_expired(t(8)), None);
        assert_eq!(timers.pop_expired(t(9)), Some("a"));
        assert_eq!(
            timers.pop_expired(t(100)),
            None,
            "the old deadline left nothing behind"
        );
    }

    #[test]
    fn stop_removes() {
        let mut timers = TimerTable::new();
        timers.set("a", t(5));
        timers.set("b", t(7));
        timers.stop(&"a");
        timers.stop(&"missing");
        assert_eq!(timers.next(), Some(t(7)));
        timers.stop(&"b");
        assert_eq!(timers.next(), None);
    }

    #[test]
    fn next_is_the_earliest() {
        let mut timers = TimerTable::new();
        timers.set(1, t(30));
        timers.set(2, t(10));
        timers.set(3, t(20));
        assert_eq!(timers.next(), Some(t(10)));
        timers.set(2, t(40));
        assert_eq!(timers.next(), Some(t(20)));
    }

    #[test]
    fn expiry_is_in_deadline_then_key_order() {
        let mut timers = TimerTable::new();
        timers.set(3, t(10));
        timers.set(1, t(20));
        timers.set(2, t(10));
        timers.set(4, t(30));
        let mut fired = Vec::new();
        while let Some(k) = timers.pop_expired(t(20)) {
            fired.push(k);
        }
        assert_eq!(fired, [2, 3, 1]);
        assert_eq!(timers.next(), Some(t(30)));
        timers.clear();
        assert_eq!(timers.next(), None);
    }
}
