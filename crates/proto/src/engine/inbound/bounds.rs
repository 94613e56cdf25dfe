//! The receive side's memory bounds and lane resets: making room in the out-of-order buffer,
//! bounding the number of lanes, and restarting every lane when the partner's incarnation
//! changes.
//!
//! Split from the accept/release path so that what bounds memory reads in one place: the buffer
//! never exceeds [`MAX_BUFFERED_BYTES`] and the lanes never exceed
//! [`MAX_INBOUND_LANES`].

use super::{InLane, Inbound, MAX_BUFFERED_BYTES, MAX_INBOUND_LANES, Pending};
use crate::types::{Channel, Precedence, Seq};

impl Inbound {
    /// Makes room for `size` bytes for the next deliverable envelope of lane `key`, which alone
    /// lets the buffer drain: drops buffered entries from the tails of lanes (highest sequence
    /// first, this lane's first), never a lane's next deliverable one. The sender offers the
    /// dropped ones again. Returns whether it fits.
    pub(super) fn evict_tails(&mut self, key: &(Channel, Precedence), size: usize) -> bool {
        let keys: Vec<(Channel, Precedence)> = std::iter::once(key.clone())
            .chain(self.lanes.keys().filter(|k| *k != key).cloned())
            .collect();
        for k in keys {
            let Some(lane) = self.lanes.get_mut(&k) else {
                continue;
            };
            while self.buffered_bytes + size > MAX_BUFFERED_BYTES {
                let next = lane.delivered.next();
                let Some(entry) = lane.buffer.last_entry() else {
                    break;
                };
                if *entry.key() <= next {
                    break;
                }
                let (evicted, p) = entry.remove_entry();
                self.buffered_bytes -= p.size();
                // A signed head covered it; a replacement must be covered again.
                lane.verified = lane.verified.min(Seq(evicted.0 - 1));
            }
            if self.buffered_bytes + size <= MAX_BUFFERED_BYTES {
                return true;
            }
        }
        false
    }

    /// Whether one more lane may be created: below [`MAX_INBOUND_LANES`], or, for an envelope
    /// with a verified head, by dropping a lane nothing signed reached.
    pub(super) fn make_room_for_lane(&mut self, signed: bool) -> bool {
        if self.lanes.len() < MAX_INBOUND_LANES {
            return true;
        }
        if !signed {
            return false;
        }
        let victim = self
            .lanes
            .iter()
            .find(|(_, l)| l.is_unproven())
            .map(|(k, _)| k.clone());
        let Some(lane) = victim.and_then(|k| self.lanes.remove(&k)) else {
            return false;
        };
        self.buffered_bytes -= lane.buffer.values().map(Pending::size).sum::<usize>();
        true
    }

    /// The partner's incarnation is `base`. A different one from before means its sequences
    /// restarted: every lane starts again after `base`, keeping only buffered envelopes beyond
    /// it (already from the new incarnation). The inbox keeps what was delivered. Returns
    /// whether the lanes were restarted.
    pub(in crate::engine) fn set_partner_incarnation(&mut self, base: u64) -> bool {
        if base == self.partner_base {
            return false;
        }
        self.partner_base = base;
        let mut buffered_bytes = 0;
        for lane in self.lanes.values_mut() {
            let mut fresh = InLane::starting_at(base);
            fresh.buffer = std::mem::take(&mut lane.buffer).split_off(&Seq(base.saturating_add(1)));
            buffered_bytes += fresh.buffer.values().map(Pending::size).sum::<usize>();
            *lane = fresh;
        }
        self.buffered_bytes = buffered_bytes;
        true
    }
}
