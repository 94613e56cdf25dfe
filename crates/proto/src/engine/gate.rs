//! The durability gate: the engine's one ordered output queue, and the actions held back until
//! the records they depend on are durable.
//!
//! Every record leaves through [`DurabilityGate::persist`], which numbers it with a [`WriteId`].
//! An action that may only happen once a write is durable (a delivery, a receipt, an envelope,
//! an announcement of a new key) goes through [`DurabilityGate::after`] or
//! [`DurabilityGate::after_latest_write`]; the caller's [`DurabilityGate::confirm`] (from
//! `handle_persisted`) releases it. It does not decide what to persist or send; it only orders.
//!
//! Invariant: an action is in the output queue only once every write numbered up to the one it
//! waits for is confirmed, and held actions leave in the order they were held.
//!
//! The exception is a flash message's own records ([`super::CommitOrder::Ahead`]), which the
//! store commits ahead of a routine batch: an action held with [`DurabilityGate::after_ahead`]
//! waits only for its own write, confirmed alone by [`DurabilityGate::confirm_ahead`], and may
//! leave before actions held earlier. What one confirmation releases still leaves in the order
//! it was held, so a delivery that depends on a flash never goes out before the flash's.

use std::collections::{BTreeSet, VecDeque};

use super::{Action, Record, WriteId};
use crate::crypto::Digest;

/// Used by restored state for writes that are durable by construction (they were read back).
pub(super) const ALREADY_DURABLE: WriteId = WriteId(0);

/// Output queue plus the actions waiting for a write to become durable.
#[derive(Debug, Default)]
pub(super) struct DurabilityGate {
    /// The last write handed out.
    latest: u64,
    /// Every write up to this one is durable.
    persisted: u64,
    queue: VecDeque<Action>,
    /// Actions held so far, numbering them in the order they were held.
    holds: u64,
    held: VecDeque<(u64, WriteId, Action)>,
    /// Writes beyond `persisted` confirmed ahead of earlier ones.
    ahead: BTreeSet<u64>,
    /// Actions that wait only for their own write.
    held_ahead: Vec<(u64, WriteId, Action)>,
}

impl DurabilityGate {
    /// Emits an action that needs no write.
    pub(super) fn push(&mut self, action: Action) {
        self.queue.push_back(action);
    }

    /// Emits `record` as the next write and returns its id.
    pub(super) fn persist(&mut self, record: Record) -> WriteId {
        self.persist_envelope(record, None)
    }

    /// [`Self::persist`] for a record holding an envelope whose chain hash is known.
    pub(super) fn persist_envelope(
        &mut self,
        record: Record,
        envelope_hash: Option<Digest>,
    ) -> WriteId {
        self.latest += 1;
        let id = WriteId(self.latest);
        self.queue.push_back(Action::Persist {
            id,
            record,
            envelope_hash,
        });
        id
    }

    /// Emits `action` once `write` is durable.
    pub(super) fn after(&mut self, write: WriteId, action: Action) {
        if self.is_durable(write) {
            self.queue.push_back(action);
        } else {
            self.holds += 1;
            self.held.push_back((self.holds, write, action));
        }
    }

    /// Emits `action` once `write` alone is durable, even while earlier writes are not:
    /// for actions that depend on nothing but a flash record (see the module header).
    pub(super) fn after_ahead(&mut self, write: WriteId, action: Action) {
        if self.is_durable(write) || self.ahead.contains(&write.0) {
            self.queue.push_back(action);
        } else {
            self.holds += 1;
            self.held_ahead.push((self.holds, write, action));
        }
    }

    /// Emits `action` once everything persisted so far is durable; returns the write it waits
    /// for, so the caller can hold a copy to the same rule later.
    pub(super) fn after_latest_write(&mut self, action: Action) -> WriteId {
        let write = WriteId(self.latest);
        self.after(write, action);
        write
    }

    /// The last write such that it and every earlier one are durable.
    pub(super) fn persisted(&self) -> WriteId {
        WriteId(self.persisted)
    }

    /// Whether `write` is durable.
    pub(super) fn is_durable(&self, write: WriteId) -> bool {
        write.0 <= self.persisted
    }

    /// Writes confirmed ahead of earlier ones and not yet covered by [`Self::persisted`].
    pub(super) fn ahead(&self) -> impl Iterator<Item = WriteId> + '_ {
        self.ahead.iter().map(|w| WriteId(*w))
    }

    /// These writes are durable, though earlier ones may not be: releases what waited on them
    /// alone.
    pub(super) fn confirm_ahead(&mut self, ids: &[WriteId]) {
        self.ahead
            .extend(ids.iter().map(|w| w.0).filter(|w| *w > self.persisted));
        self.absorb_ahead();
        self.release();
    }

    /// Releases the held actions whose writes are now durable, in the order they were held.
    fn release(&mut self) {
        let durable = |w: WriteId, persisted: u64, ahead: &BTreeSet<u64>| {
            w.0 <= persisted || ahead.contains(&w.0)
        };
        let mut released = Vec::new();
        while self
            .held
            .front()
            .is_some_and(|(_, w, _)| w.0 <= self.persisted)
        {
            released.extend(self.held.pop_front());
        }
        if !self.held_ahead.is_empty() {
            let (persisted, ahead) = (self.persisted, &self.ahead);
            let (out, kept) = std::mem::take(&mut self.held_ahead)
                .into_iter()
                .partition(|(_, w, _)| durable(*w, persisted, ahead));
            self.held_ahead = kept;
            released.extend::<Vec<_>>(out);
            released.sort_by_key(|(order, _, _)| *order);
        }
        self.queue
            .extend(released.into_iter().map(|(_, _, action)| action));
    }

    /// Write `id` and every earlier one are durable (and so is every write confirmed ahead
    /// that follows them without a gap): releases what waited on them, in order.
    pub(super) fn confirm(&mut self, id: WriteId) {
        self.persisted = self.persisted.max(id.0);
        self.absorb_ahead();
        self.release();
    }

    /// Writes confirmed ahead that follow the prefix without a gap join it.
    fn absorb_ahead(&mut self) {
        while self.ahead.remove(&(self.persisted + 1)) {
            self.persisted += 1;
        }
        self.ahead = self.ahead.split_off(&(self.persisted + 1));
    }

    /// A write failed: nothing held will ever be released.
    pub(super) fn drop_held(&mut self) {
        self.held.clear();
        self.held_ahead.clear();
    }

    /// The next action for the caller.
    pub(super) fn pop(&mut self) -> Option<Action> {
        self.queue.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Time;

    fn record() -> Record {
        Record::SealingKey {
            epoch: 1,
            secret: Vec::new().into(),
            expires_at: Time(0),
        }
    }

    fn link(at: u64) -> Action {
        Action::Link {
            state: super::super::LinkState::Up,
            since: Time(at),
        }
    }

    fn drain(gate: &mut DurabilityGate) -> Vec<String> {
        std::iter::from_fn(|| gate.pop())
            .map(|a| match a {
                Action::Persist { id, .. } => format!("persist {}", id.0),
                Action::Link { since, .. } => format!("link {}", since.0),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn held_until_persisted() {
        let mut gate = DurabilityGate::default();
        gate.push(link(0));
        let w1 = gate.persist(record());
        assert_eq!(gate.after_latest_write(link(1)), w1);
        assert_eq!(drain(&mut gate), ["link 0", "persist 1"]);
        gate.confirm(WriteId(0));
        assert!(drain(&mut gate).is_empty(), "nothing durable yet");
        gate.confirm(w1);
        assert_eq!(drain(&mut gate), ["link 1"]);
        // Everything so far is durable: no wait.
        gate.after_latest_write(link(2));
        assert_eq!(drain(&mut gate), ["link 2"]);
    }

    #[test]
    fn a_write_confirmed_ahead_releases_only_what_waits_on_it_alone() {
        let mut gate = DurabilityGate::default();
        let w1 = gate.persist(record());
        gate.after(w1, link(1));
        let w2 = gate.persist(record());
        gate.after(w2, link(2));
        gate.after_ahead(w2, link(3));
        let w3 = gate.persist(record());
        gate.after_ahead(w3, link(4));
        assert_eq!(drain(&mut gate), ["persist 1", "persist 2", "persist 3"]);
        gate.confirm_ahead(&[w2]);
        assert_eq!(
            drain(&mut gate),
            ["link 3"],
            "an ordinary action on w2 still waits for w1"
        );
        assert_eq!(gate.ahead().collect::<Vec<_>>(), [w2]);
        gate.after(w2, link(5));
        gate.after_ahead(w2, link(6));
        assert_eq!(drain(&mut gate), ["link 6"]);
        gate.confirm(w1);
        assert_eq!(drain(&mut gate), ["link 1", "link 2", "link 5"]);
        assert!(gate.ahead().next().is_none(), "covered by the prefix now");
        gate.confirm(w3);
        assert_eq!(drain(&mut gate), ["link 4"]);
        gate.confirm_ahead(&[w1]);
        assert!(gate.ahead().next().is_none(), "already durable: not kept");
    }

    #[test]
    fn a_write_confirmed_ahead_right_after_the_prefix_joins_it() {
        let mut gate = DurabilityGate::default();
        let w1 = gate.persist(record());
        gate.after(w1, link(1));
        assert_eq!(drain(&mut gate), ["persist 1"]);
        gate.confirm_ahead(&[w1]);
        assert_eq!(gate.persisted(), w1);
        assert_eq!(drain(&mut gate), ["link 1"]);
    }

    #[test]
    fn one_confirmation_releases_both_kinds_in_the_order_held() {
        let mut gate = DurabilityGate::default();
        let w1 = gate.persist(record());
        gate.after_ahead(w1, link(1));
        let w2 = gate.persist(record());
        gate.after(w2, link(2));
        gate.after_ahead(w2, link(3));
        assert_eq!(drain(&mut gate), ["persist 1", "persist 2"]);
        // A delivery that depends on a flash (held after it) never leaves before it.
        gate.confirm(w2);
        assert_eq!(drain(&mut gate), ["link 1", "link 2", "link 3"]);
    }

    #[test]
    fn released_in_order_and_cumulatively() {
        let mut gate = DurabilityGate::default();
        let w1 = gate.persist(record());
        gate.after(w1, link(1));
        let w2 = gate.persist(record());
        gate.after(w2, link(2));
        gate.after(w1, link(3));
        let w3 = gate.persist(record());
        gate.after(w3, link(4));
        assert_eq!(drain(&mut gate), ["persist 1", "persist 2", "persist 3"]);
        // One confirmation covers every earlier write; held actions keep their order.
        gate.confirm(w2);
        assert_eq!(drain(&mut gate), ["link 1", "link 2", "link 3"]);
        gate.confirm(w1);
        assert!(
            drain(&mut gate).is_empty(),
            "confirmations never go backwards"
        );
        gate.drop_held();
        gate.confirm(w3);
        assert!(drain(&mut gate).is_empty(), "dropped after a failed write");
    }
}
