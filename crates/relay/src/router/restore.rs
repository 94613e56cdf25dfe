//! Loading a store snapshot into a fresh router, once, at startup.
//!
//! Queued envelopes go back to their lanes in arrival order, all unwritten, with their
//! time-to-live counted from their first arrival; waiting control frames go back to their
//! addressees in key order; announcements back in place. Rows for endpoints in no configured
//! hotline stay in the store, unserved, and are reported. It never writes: nothing restored is
//! emitted again as a [`StoreOp`](super::StoreOp). Past the in-memory window
//! ([`Limits::max_in_memory_bytes`](super::Limits::max_in_memory_bytes)), the newest envelopes
//! are dropped from memory again (the whole snapshot is read once at startup).
//!
//! Invariant: a snapshot this relay wrote restores to queues equal, lane by lane and in order,
//! to the ones it was written from; anything else is refused with a [`SnapshotError`].

use std::collections::BTreeMap;

use hotline_proto::EndpointId;
use hotline_proto::wire::{self, Frame};

use super::Router;
use super::persist::{Restored, Snapshot, SnapshotError, StoredEnvelope};
use super::queue::{ControlFrame, Item, ItemKey};

impl Router {
    /// Loads what a store held, before any connection: queued envelopes go back to their lanes
    /// in arrival order (all unwritten), control frames back to their addressees' queues in key
    /// order, announcements back in place. Rows for endpoints that are in no configured hotline
    /// are left in the store, unserved, and reported. Expired envelopes expire at the next
    /// [`Router::handle_timeout`].
    pub fn restore(&mut self, snapshot: Snapshot) -> Result<Restored, SnapshotError> {
        if !self.conns.is_empty()
            || self.commits.issued_any()
            || self.next_order != 0
            || self.next_control != 0
            || self.endpoints.values().any(|e| e.announcement.is_some())
        {
            return Err(SnapshotError::NotFresh);
        }
        let Snapshot {
            mut envelopes,
            mut control,
            announcements,
        } = snapshot;
        envelopes.sort_by_key(|e| e.order);
        control.sort_by_key(|c| c.key);
        let mut restored = Restored::default();
        let mut unconfigured = BTreeMap::<EndpointId, usize>::new();
        let ttl = self.limits.ttl;

        for stored in envelopes {
            let StoredEnvelope {
                order,
                destination,
                lane,
                queued_at,
                bytes,
            } = stored;
            self.next_order = self.next_order.max(order.saturating_add(1));
            let header = match wire::decode_frame(&bytes) {
                Ok((Frame::Envelope(e), used)) if used == bytes.len() => e.envelope.header,
                Ok(_) => return Err(SnapshotError::NotAnEnvelope { order }),
                Err(error) => return Err(SnapshotError::Undecodable { order, error }),
            };
            if header.recipient != destination {
                return Err(SnapshotError::Misaddressed {
                    order,
                    recipient: header.recipient,
                    destination,
                });
            }
            let Some(dest) = self.endpoints.get_mut(&destination) else {
                *unconfigured.entry(destination).or_default() += 1;
                continue;
            };
            let key = ItemKey::of(&header);
            if let Some(first) = dest.items.get(&key) {
                return Err(SnapshotError::DuplicateEnvelope {
                    first: first.order,
                    second: order,
                });
            }
            let expires_at = ttl.for_lane(lane).map(|t| queued_at.plus(t));
            if let Some(at) = expires_at {
                self.expiries
                    .insert((at, order), (destination.clone(), key.clone()));
            }
            let item = Item::unwritten(lane, order, queued_at, expires_at, bytes);
            dest.insert(&mut self.usage, key, item);
            restored.envelopes += 1;
        }
        for stored in control {
            self.next_control = self.next_control.max(stored.key.saturating_add(1));
            let Some(ep) = self.endpoints.get_mut(&stored.addressee) else {
                *unconfigured.entry(stored.addressee).or_default() += 1;
                continue;
            };
            ep.push_control_back(ControlFrame {
                bytes: stored.bytes,
                keep_offline: true,
                stored: Some(stored.key),
            });
            restored.control += 1;
        }
        for stored in announcements {
            let Some(ep) = self.endpoints.get_mut(&stored.endpoint) else {
                *unconfigured.entry(stored.endpoint).or_default() += 1;
                continue;
            };
            // The order is read back from the signed frame itself.
            let order = match wire::decode_frame(&stored.bytes) {
                Ok((Frame::Announcement(a), _)) => (a.body.incarnation, a.body.epoch),
                _ => (0, stored.epoch),
            };
            ep.announcement = Some((order, stored.bytes));
            restored.announcements += 1;
        }
        restored.unconfigured = unconfigured.into_iter().collect();
        self.cool_restored();
        Ok(restored)
    }

    /// Everything restored is in the store: past the in-memory window, the newest envelopes
    /// (the last to be written) leave memory.
    fn cool_restored(&mut self) {
        if self.usage.hot <= self.limits.max_in_memory_bytes {
            return;
        }
        let mut newest: Vec<(u64, EndpointId, ItemKey)> = self
            .endpoints
            .iter()
            .flat_map(|(e, ep)| {
                ep.items
                    .iter()
                    .map(|(k, i)| (i.order, e.clone(), k.clone()))
            })
            .collect();
        newest.sort_unstable_by_key(|(order, _, _)| std::cmp::Reverse(*order));
        for (order, destination, key) in newest {
            if self.usage.hot <= self.limits.max_in_memory_bytes {
                break;
            }
            if let Some(ep) = self.endpoints.get_mut(&destination) {
                ep.cool(&mut self.usage, &key, order);
            }
        }
    }
}
