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

use std::collections::VecDeque;

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
    held: VecDeque<(WriteId, Action)>,
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
            self.held.push_back((write, action));
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

    /// Write `id` and every earlier one are durable: releases what waited on them, in order.
    pub(super) fn confirm(&mut self, id: WriteId) {
        self.persisted = self.persisted.max(id.0);
        while self
            .held
            .front()
            .is_some_and(|(w, _)| w.0 <= self.persisted)
        {
            if let Some((_, action)) = self.held.pop_front() {
                self.queue.push_back(action);
            }
        }
    }

    /// A write failed: nothing held will ever be released.
    pub(super) fn drop_held(&mut self) {
        self.held.clear();
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
