//! Fairness across senders within one lane of one destination: deficit round robin by bytes.
//!
//! An endpoint in several hotlines receives from several partners. Its queue per lane is kept
//! per sender, each in arrival order, and the lane writer takes from the senders in turn: each
//! turn a sender may send up to [`QUANTUM`] bytes (plus what it left unused last turn while it
//! still had something waiting), so a sender with a deep backlog of large envelopes gets the
//! same share of the stream as one sending a trickle, and the trickle never waits behind the
//! backlog for more than one quantum of each other sender (Shreedhar and Varghese, "Efficient
//! fair queuing using deficit round robin", 1995). Precedence stays strict across lanes: that
//! is the stream priorities' job, not this module's.
//!
//! Main type: [`FairQueue`].
//!
//! Invariant: `turns` lists exactly the senders with something unwritten, each once; a
//! sender's deficit is below its next envelope's size whenever its turn is over, and is reset
//! when it has nothing left.

use std::collections::{BTreeMap, VecDeque};

use hotline_proto::EndpointId;
use hotline_proto::wire::MAX_FRAME_LEN;

use super::queue::ItemKey;

/// Bytes a sender may send per turn: one frame of the largest size, so every turn can send at
/// least the sender's next envelope.
pub(super) const QUANTUM: u64 = MAX_FRAME_LEN as u64;

/// One sender's unwritten envelopes in one lane.
#[derive(Debug, Default)]
struct SenderQueue {
    /// By arrival order: the key and the frame's size.
    items: BTreeMap<u64, (ItemKey, u64)>,
    /// Bytes it may still send this turn.
    deficit: u64,
}

/// One lane's unwritten envelopes for one destination, per sender, taken in deficit round robin.
#[derive(Debug, Default)]
pub(super) struct FairQueue {
    senders: BTreeMap<EndpointId, SenderQueue>,
    /// Senders with something unwritten, in turn order; the front one is being served.
    turns: VecDeque<EndpointId>,
    /// Whether the front sender got its quantum for the current turn.
    topped_up: bool,
}

impl FairQueue {
    /// Adds an unwritten envelope: `order` is its arrival order, `size` its frame's length.
    pub(super) fn insert(&mut self, order: u64, key: ItemKey, size: u64) {
        let sender = key.sender.clone();
        let queue = self.senders.entry(sender.clone()).or_default();
        if queue.items.is_empty() {
            self.turns.push_back(sender);
        }
        queue.items.insert(order, (key, size));
    }

    /// Takes the envelope with arrival order `order` from `sender` out, if listed.
    pub(super) fn remove(&mut self, sender: &EndpointId, order: u64) {
        let Some(queue) = self.senders.get_mut(sender) else {
            return;
        };
        queue.items.remove(&order);
        if queue.items.is_empty() {
            self.forget(sender);
        }
    }

    /// The next envelope to write: its arrival order and key.
    pub(super) fn pop(&mut self) -> Option<(u64, ItemKey)> {
        loop {
            let sender = self.turns.front()?.clone();
            let Some(queue) = self.senders.get_mut(&sender) else {
                // Not reachable (the invariant); drop the stale turn rather than spin.
                self.turns.pop_front();
                self.topped_up = false;
                continue;
            };
            let Some((&order, (_, size))) = queue.items.first_key_value() else {
                self.forget(&sender);
                continue;
            };
            if queue.deficit >= *size {
                queue.deficit -= *size;
                let (_, (key, _)) = queue.items.pop_first()?;
                if queue.items.is_empty() {
                    self.forget(&sender);
                }
                return Some((order, key));
            }
            if self.topped_up {
                // Its turn is over: the next sender's begins.
                self.turns.rotate_left(1);
                self.topped_up = false;
            } else {
                queue.deficit += QUANTUM;
                self.topped_up = true;
            }
        }
    }

    /// Whether nothing is listed.
    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.turns.is_empty()
    }

    /// Every listed envelope: arrival order and key, in arrival order.
    #[cfg(test)]
    pub(super) fn listed(&self) -> BTreeMap<u64, ItemKey> {
        self.senders
            .values()
            .flat_map(|q| q.items.iter().map(|(o, (k, _))| (*o, k.clone())))
            .collect()
    }

    /// A sender has nothing left: it leaves the turns and its deficit is forgotten.
    fn forget(&mut self, sender: &EndpointId) {
        self.senders.remove(sender);
        if let Some(at) = self.turns.iter().position(|s| s == sender) {
            self.turns.remove(at);
            if at == 0 {
                self.topped_up = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use hotline_proto::{Channel, Precedence, Seq};

    use super::*;

    fn key(sender: &str, seq: u64) -> ItemKey {
        ItemKey {
            sender: EndpointId::new(sender).unwrap(),
            channel: Channel::new("c").unwrap(),
            precedence: Precedence::Routine,
            seq: Seq(seq),
        }
    }

    fn senders(q: &mut FairQueue) -> Vec<String> {
        std::iter::from_fn(|| q.pop())
            .map(|(_, k)| k.sender.to_string())
            .collect()
    }

    #[test]
    fn one_sender_is_served_in_arrival_order() {
        let mut q = FairQueue::default();
        q.insert(3, key("a", 2), 10);
        q.insert(1, key("a", 1), QUANTUM);
        q.insert(7, key("a", 3), 10);
        let orders: Vec<u64> = std::iter::from_fn(|| q.pop()).map(|(o, _)| o).collect();
        assert_eq!(orders, [1, 3, 7]);
        assert!(q.is_empty());
    }

    #[test]
    fn a_backlog_of_large_frames_does_not_starve_a_trickle() {
        let mut q = FairQueue::default();
        // The flood arrived first: 10 frames of the largest size.
        for seq in 0..10 {
            q.insert(seq, key("flood", seq), QUANTUM);
        }
        // Then two small frames from a quiet sender.
        q.insert(100, key("quiet", 1), 100);
        q.insert(101, key("quiet", 2), 100);
        let order = senders(&mut q);
        assert_eq!(
            &order[..4],
            ["flood", "quiet", "quiet", "flood"],
            "the quiet sender waits for one quantum of the flood, not for all of it: {order:?}"
        );
        assert_eq!(order.len(), 12);
    }

    #[test]
    fn equal_backlogs_share_bytes_equally() {
        let mut q = FairQueue::default();
        // `a` sends frames of a quarter quantum, `b` of a full one.
        for seq in 0..16 {
            q.insert(seq, key("a", seq), QUANTUM / 4);
        }
        for seq in 0..4 {
            q.insert(100 + seq, key("b", seq), QUANTUM);
        }
        let order = senders(&mut q);
        // Each turn: four of a's, one of b's.
        assert_eq!(
            &order[..10],
            ["a", "a", "a", "a", "b", "a", "a", "a", "a", "b"]
        );
    }

    #[test]
    fn removing_a_senders_last_item_ends_its_turn() {
        let mut q = FairQueue::default();
        q.insert(1, key("a", 1), 10);
        q.insert(2, key("b", 1), 10);
        q.remove(&EndpointId::new("a").unwrap(), 1);
        assert_eq!(senders(&mut q), ["b"]);
        assert!(q.is_empty());
        // A removed item is not listed, and removing twice is harmless.
        q.insert(3, key("a", 2), 10);
        q.remove(&EndpointId::new("a").unwrap(), 3);
        q.remove(&EndpointId::new("a").unwrap(), 3);
        assert!(q.listed().is_empty());
        assert_eq!(q.pop(), None);
    }
}
