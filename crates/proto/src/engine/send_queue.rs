//! The outbox's send queue: sealed messages to frame once the write that holds each is durable.
//!
//! Every input ends in a flush, so the flush must not cost the length of the queue: under load
//! thousands of messages wait here for the store, and scanning them all on every submit made
//! the engine quadratic (issue 12's profile: a third of a saturated node's CPU). The queue is
//! kept by write, so a flush takes exactly the messages whose write is now durable.
//!
//! Invariant: `by_write` and `write_of` hold the same (write, message) pairs.

use std::collections::{BTreeMap, BTreeSet};

use crate::types::MessageId;

use super::WriteId;

/// Messages to frame, by the write each waits for.
#[derive(Debug, Default)]
pub(super) struct SendQueue {
    by_write: BTreeMap<WriteId, BTreeSet<MessageId>>,
    write_of: BTreeMap<MessageId, WriteId>,
}

impl SendQueue {
    /// Queues `id`, to be framed once `write` is durable (moved if it was queued already).
    pub(super) fn insert(&mut self, id: MessageId, write: WriteId) {
        if let Some(old) = self.write_of.insert(id.clone(), write) {
            if old == write {
                return;
            }
            self.unlink(&id, old);
        }
        self.by_write.entry(write).or_default().insert(id);
    }

    /// Takes `id` off the queue.
    pub(super) fn remove(&mut self, id: &MessageId) {
        if let Some(write) = self.write_of.remove(id) {
            self.unlink(id, write);
        }
    }

    pub(super) fn clear(&mut self) {
        self.by_write.clear();
        self.write_of.clear();
    }

    pub(super) fn is_empty(&self) -> bool {
        self.write_of.is_empty()
    }

    /// Takes every message whose write is at or below `durable`, in message-id order.
    pub(super) fn take_durable(&mut self, durable: WriteId) -> Vec<MessageId> {
        let Some(after) = durable.0.checked_add(1) else {
            return self.take_all();
        };
        let waiting = self.by_write.split_off(&WriteId(after));
        let ready = std::mem::replace(&mut self.by_write, waiting);
        let mut ids: Vec<MessageId> = ready.into_values().flatten().collect();
        for id in &ids {
            self.write_of.remove(id);
        }
        ids.sort();
        ids
    }

    /// Takes the messages waiting for exactly `write` (one confirmed ahead of earlier ones).
    pub(super) fn take_write(&mut self, write: WriteId) -> impl Iterator<Item = MessageId> + '_ {
        let ids = self.by_write.remove(&write).unwrap_or_default();
        for id in &ids {
            self.write_of.remove(id);
        }
        ids.into_iter()
    }

    fn take_all(&mut self) -> Vec<MessageId> {
        self.by_write.clear();
        std::mem::take(&mut self.write_of).into_keys().collect()
    }

    fn unlink(&mut self, id: &MessageId, write: WriteId) {
        if let Some(set) = self.by_write.get_mut(&write) {
            set.remove(id);
            if set.is_empty() {
                self.by_write.remove(&write);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Channel, EndpointId, Precedence, Seq};
    use proptest::prelude::*;

    fn msg(seq: u64) -> MessageId {
        MessageId {
            sender: EndpointId::new("us").unwrap(),
            channel: Channel::default(),
            precedence: Precedence::Routine,
            seq: Seq(seq),
        }
    }

    #[test]
    fn takes_only_what_is_durable_and_a_moved_message_follows_its_new_write() {
        let mut q = SendQueue::default();
        q.insert(msg(1), WriteId(1));
        q.insert(msg(2), WriteId(2));
        q.insert(msg(3), WriteId(3));
        q.insert(msg(2), WriteId(5));
        assert_eq!(q.take_durable(WriteId(2)), vec![msg(1)]);
        assert_eq!(q.take_durable(WriteId(4)), vec![msg(3)]);
        q.remove(&msg(2));
        assert!(q.is_empty());
        assert_eq!(q.take_durable(WriteId(9)), Vec::<MessageId>::new());
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert(u64, u64),
        Remove(u64),
        Take(u64),
        Clear,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0..12u64, 0..8u64).prop_map(|(m, w)| Op::Insert(m, w)),
            2 => (0..12u64).prop_map(Op::Remove),
            3 => (0..10u64).prop_map(Op::Take),
            1 => Just(Op::Clear),
        ]
    }

    proptest! {
        /// Against a plain map from message to write, scanned in full as the old flush did.
        #[test]
        fn behaves_like_a_full_scan(ops in prop::collection::vec(op(), 0..80)) {
            let mut q = SendQueue::default();
            let mut model: BTreeMap<MessageId, WriteId> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Insert(m, w) => {
                        q.insert(msg(m), WriteId(w));
                        model.insert(msg(m), WriteId(w));
                    }
                    Op::Remove(m) => {
                        q.remove(&msg(m));
                        model.remove(&msg(m));
                    }
                    Op::Take(d) => {
                        let expected: Vec<MessageId> = model
                            .iter()
                            .filter(|(_, w)| w.0 <= d)
                            .map(|(m, _)| m.clone())
                            .collect();
                        model.retain(|_, w| w.0 > d);
                        prop_assert_eq!(q.take_durable(WriteId(d)), expected);
                    }
                    Op::Clear => {
                        q.clear();
                        model.clear();
                    }
                }
                prop_assert_eq!(q.is_empty(), model.is_empty());
                let pairs: usize = q.by_write.values().map(BTreeSet::len).sum();
                prop_assert_eq!(pairs, q.write_of.len());
            }
        }
    }
}
