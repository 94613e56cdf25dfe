//! What the relay holds for each endpoint: its envelope queues per transport lane and its
//! control queues.
//!
//! An [`Endpoint`] keeps the queued envelopes ([`Item`]s, deduplicated by [`ItemKey`]), an index
//! of the unwritten ones per lane (per sender in arrival order, served in turns: see `fair`), per-lane frame and byte counts, and two
//! control queues ([`ControlFrame`]s): urgent (receipts, notices, refusals kept for an offline
//! sender) ahead of the rest (replies, presence, announcements, link tests). It knows nothing of
//! routing rules, time-to-live or the store: the router decides what goes in and out.
//!
//! [`Usage`] counts the same envelopes the other way round, by sender over every destination:
//! the global budget (see `budget`) is measured against it. Every method that adds, resizes or
//! removes a queued envelope takes it, so the two views cannot disagree. Each endpoint also
//! counts its envelopes per sender, which the per-destination bound is measured against.
//!
//! Invariant: every queued envelope is in exactly one lane, and is listed as unwritten in that
//! lane exactly when its state is [`ItemState::Unwritten`]; the per-lane counts and
//! `control_bytes` and the per-sender counts equal the sums over the queued frames; [`Usage`] per sender and in total
//! equals the sums over the envelopes queued for every destination.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use hotline_proto::envelope::Header;
use hotline_proto::{Channel, EndpointId, MessageId, Precedence, Seq, Time};

use super::fair::FairQueue;
use super::{ConnId, len};

/// Whether a queued envelope still has to be written to its destination's current connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ItemState {
    /// Waiting for its lane writer.
    Unwritten,
    /// Taken by the lane writer, not yet reported written.
    InFlight,
    /// Written to the current connection; kept until a `Delivered` receipt covers it.
    Written,
}

/// Dedupe key of a queued envelope within its destination.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct ItemKey {
    pub(super) sender: EndpointId,
    pub(super) channel: Channel,
    pub(super) precedence: Precedence,
    pub(super) seq: Seq,
}

impl ItemKey {
    pub(super) fn of(header: &Header) -> Self {
        Self {
            sender: header.sender.clone(),
            channel: header.channel.clone(),
            precedence: header.precedence,
            seq: header.seq,
        }
    }

    pub(super) fn message_id(&self) -> MessageId {
        MessageId {
            sender: self.sender.clone(),
            channel: self.channel.clone(),
            precedence: self.precedence,
            seq: self.seq,
        }
    }
}

#[derive(Debug)]
pub(super) struct Item {
    /// Current transport lane.
    pub(super) lane: Precedence,
    /// Arrival order; position in the lane's unwritten index and the store row key.
    pub(super) order: u64,
    /// First arrival, wall clock.
    pub(super) queued_at: Time,
    /// `queued_at` plus the time-to-live of `lane`.
    pub(super) expires_at: Option<Time>,
    /// The frame, while it is held in memory; `None` once only the store has it (a cold item,
    /// read back before it is written: see the router's `Output::Load`).
    pub(super) bytes: Option<Bytes>,
    /// The frame's length, in memory or not.
    pub(super) len: u64,
    pub(super) state: ItemState,
}

impl Item {
    /// A new envelope waiting for its lane writer.
    pub(super) fn unwritten(
        lane: Precedence,
        order: u64,
        queued_at: Time,
        expires_at: Option<Time>,
        bytes: Bytes,
    ) -> Self {
        Self {
            lane,
            order,
            queued_at,
            expires_at,
            len: len(&bytes),
            bytes: Some(bytes),
            state: ItemState::Unwritten,
        }
    }

    /// Bytes it holds in memory.
    fn hot_len(&self) -> u64 {
        if self.bytes.is_some() { self.len } else { 0 }
    }
}

#[derive(Debug)]
pub(super) struct ControlFrame {
    pub(super) bytes: Bytes,
    /// Receipts and notices wait for an offline addressee; presence, replies and the like do not.
    pub(super) keep_offline: bool,
    /// The store row holding it, deleted once it is written.
    pub(super) stored: Option<u64>,
}

/// Everything the relay holds for one endpoint.
#[derive(Debug, Default)]
pub(super) struct Endpoint {
    pub(super) partners: BTreeSet<EndpointId>,
    pub(super) conn: Option<ConnId>,
    /// Receipts and escalation notices (and refusals kept for offline senders): written before
    /// the other control frames, so a flash receipt never waits behind a flood's `Accepted`
    /// replies. Each class stays in order.
    pub(super) control_urgent: VecDeque<ControlFrame>,
    /// Replies, presence, announcements, link tests.
    pub(super) control: VecDeque<ControlFrame>,
    pub(super) control_in_flight: Option<ControlFrame>,
    /// Bytes in `control` and `control_in_flight`.
    pub(super) control_bytes: u64,
    pub(super) items: BTreeMap<ItemKey, Item>,
    /// Per lane, the unwritten items: per sender by arrival order, taken in turns.
    pub(super) unwritten: [FairQueue; 4],
    pub(super) lane_frames: [u64; 4],
    pub(super) lane_bytes: [u64; 4],
    /// Per lane, the envelope its writer took whose frame is being read back from the store
    /// (arrival order and key; the item is [`ItemState::InFlight`] meanwhile).
    pub(super) loading: [Option<(u64, ItemKey)>; 4],
    /// Envelope bytes queued here per sender (only senders with something queued): the
    /// per-destination bound applies per sender, so one partner cannot fill it for another.
    pub(super) bytes_from: BTreeMap<EndpointId, u64>,
    /// The latest announcement: its order (incarnation, then epoch) and frame.
    pub(super) announcement: Option<(AnnouncementOrder, Bytes)>,
}

/// Bytes of queued envelopes by sender, over every destination, and their total; and how many
/// of them are held in memory. Control frames are not counted: they are bounded per addressee
/// (see `Limits::control_bound`) and most are the relay's own.
#[derive(Debug, Default)]
pub(super) struct Usage {
    /// Sum of `by_sender`.
    pub(super) total: u64,
    /// Bytes of queued envelopes held in memory (the others are only in the store).
    pub(super) hot: u64,
    /// Only senders with something queued: an entry that drops to zero goes.
    pub(super) by_sender: BTreeMap<EndpointId, u64>,
}

impl Usage {
    /// Bytes queued from `sender`.
    pub(super) fn of(&self, sender: &EndpointId) -> u64 {
        self.by_sender.get(sender).copied().unwrap_or(0)
    }

    fn add(&mut self, sender: &EndpointId, n: u64) {
        self.total += n;
        add(&mut self.by_sender, sender, n);
    }

    fn sub(&mut self, sender: &EndpointId, n: u64) {
        self.total -= n;
        sub(&mut self.by_sender, sender, n);
    }

    /// Where the counts differ from `queued` (bytes per sender recomputed from the queues);
    /// empty when they agree.
    #[cfg(test)]
    pub(super) fn drift(&self, queued: &BTreeMap<EndpointId, u64>) -> Vec<String> {
        let mut drift = Vec::new();
        let total: u64 = queued.values().sum();
        if self.total != total {
            drift.push(format!(
                "budget total: counted {}, queued {total}",
                self.total
            ));
        }
        let senders = self.by_sender.keys().chain(queued.keys());
        let senders: BTreeSet<&EndpointId> = senders.collect();
        for sender in senders {
            let counted = self.of(sender);
            let actual = queued.get(sender).copied().unwrap_or(0);
            if counted != actual || self.by_sender.get(sender) == Some(&0) {
                drift.push(format!(
                    "budget for sender {sender}: counted {counted}, queued {actual}"
                ));
            }
        }
        drift
    }
}

/// Announcements are ordered by the sender's incarnation (a node restored from nothing starts a
/// higher one, whatever its epochs), then by epoch.
pub(super) type AnnouncementOrder = (u64, u32);

/// Adds `n` to `sender`'s count.
fn add(counts: &mut BTreeMap<EndpointId, u64>, sender: &EndpointId, n: u64) {
    *counts.entry(sender.clone()).or_default() += n;
}

/// Takes `n` from `sender`'s count; a count that drops to zero goes.
fn sub(counts: &mut BTreeMap<EndpointId, u64>, sender: &EndpointId, n: u64) {
    if let Some(count) = counts.get_mut(sender) {
        *count -= n;
        if *count == 0 {
            counts.remove(sender);
        }
    }
}

impl Endpoint {
    pub(super) fn queued_bytes(&self) -> u64 {
        self.lane_bytes.iter().sum::<u64>() + self.control_bytes
    }

    /// Envelope bytes queued here from `sender`.
    pub(super) fn queued_from(&self, sender: &EndpointId) -> u64 {
        self.bytes_from.get(sender).copied().unwrap_or(0)
    }

    /// Queues a new envelope, unwritten (whatever `item.state` says).
    pub(super) fn insert(&mut self, usage: &mut Usage, key: ItemKey, item: Item) {
        let lane = item.lane.index();
        self.lane_frames[lane] += 1;
        self.lane_bytes[lane] += item.len;
        usage.add(&key.sender, item.len);
        usage.hot += item.hot_len();
        add(&mut self.bytes_from, &key.sender, item.len);
        self.unwritten[lane].insert(item.order, key.clone(), item.len);
        self.items.insert(
            key,
            Item {
                state: ItemState::Unwritten,
                ..item
            },
        );
    }

    /// Moves a queued envelope to a higher lane with the new frame's bytes, unwritten, keeping
    /// its arrival order. Returns that order, the first arrival time and the old expiry.
    pub(super) fn escalate(
        &mut self,
        usage: &mut Usage,
        key: &ItemKey,
        lane: Precedence,
        bytes: Bytes,
    ) -> Option<(u64, Time, Option<Time>)> {
        let item = self.items.get_mut(key)?;
        let old = item.lane.index();
        self.unwritten[old].remove(&key.sender, item.order);
        self.lane_frames[old] -= 1;
        self.lane_bytes[old] -= item.len;
        usage.sub(&key.sender, item.len);
        usage.hot -= item.hot_len();
        sub(&mut self.bytes_from, &key.sender, item.len);
        item.lane = lane;
        item.len = len(&bytes);
        item.bytes = Some(bytes);
        item.state = ItemState::Unwritten;
        self.lane_frames[lane.index()] += 1;
        self.lane_bytes[lane.index()] += item.len;
        usage.add(&key.sender, item.len);
        usage.hot += item.len;
        add(&mut self.bytes_from, &key.sender, item.len);
        self.unwritten[lane.index()].insert(item.order, key.clone(), item.len);
        Some((item.order, item.queued_at, item.expires_at))
    }

    pub(super) fn set_expiry(&mut self, key: &ItemKey, expires_at: Option<Time>) {
        if let Some(item) = self.items.get_mut(key) {
            item.expires_at = expires_at;
        }
    }

    /// Takes one queued envelope out of its lane.
    pub(super) fn remove(&mut self, usage: &mut Usage, key: &ItemKey) -> Option<Item> {
        let item = self.items.remove(key)?;
        let lane = item.lane.index();
        self.unwritten[lane].remove(&key.sender, item.order);
        self.lane_frames[lane] -= 1;
        self.lane_bytes[lane] -= item.len;
        usage.sub(&key.sender, item.len);
        usage.hot -= item.hot_len();
        sub(&mut self.bytes_from, &key.sender, item.len);
        Some(item)
    }

    /// Deletes the envelopes from `sender` on (`channel`, `precedence`) with seq <= `upto`;
    /// returns the arrival order and expiry of each.
    pub(super) fn remove_delivered(
        &mut self,
        usage: &mut Usage,
        sender: &EndpointId,
        channel: &Channel,
        precedence: Precedence,
        upto: Seq,
    ) -> Vec<(u64, Option<Time>)> {
        let lo = ItemKey {
            sender: sender.clone(),
            channel: channel.clone(),
            precedence,
            seq: Seq(0),
        };
        let hi = ItemKey {
            seq: upto,
            ..lo.clone()
        };
        if hi < lo {
            return Vec::new();
        }
        let keys: Vec<ItemKey> = self.items.range(lo..=hi).map(|(k, _)| k.clone()).collect();
        keys.iter()
            .filter_map(|key| self.remove(usage, key))
            .map(|item| (item.order, item.expires_at))
            .collect()
    }

    /// Drops the frame of a queued envelope from memory (the store has it); returns the bytes
    /// freed. Not while it is being written: that writer holds the frame.
    pub(super) fn cool(&mut self, usage: &mut Usage, key: &ItemKey, order: u64) -> u64 {
        let Some(item) = self.items.get_mut(key) else {
            return 0;
        };
        if item.order != order || item.state == ItemState::InFlight || item.bytes.is_none() {
            return 0;
        }
        item.bytes = None;
        usage.hot -= item.len;
        item.len
    }

    /// The frame of the envelope being read back for `lane`'s writer came from the store:
    /// holds it in memory again. Returns whether it is still wanted (else it is dropped).
    pub(super) fn warm(
        &mut self,
        usage: &mut Usage,
        lane: Precedence,
        order: u64,
        bytes: Bytes,
    ) -> bool {
        let Some((slot_order, key)) = &self.loading[lane.index()] else {
            return false;
        };
        if *slot_order != order {
            return false;
        }
        let Some(item) = self.items.get_mut(key) else {
            return false;
        };
        if item.order != order || item.bytes.is_some() || len(&bytes) != item.len {
            return false;
        }
        item.bytes = Some(bytes);
        usage.hot += item.len;
        true
    }

    /// A new connection: every queued envelope is to be written again; control frames meant for
    /// the old connection go, receipts and notices stay.
    pub(super) fn rewind(&mut self) {
        self.loading = Default::default();
        for (key, item) in &mut self.items {
            if item.state != ItemState::Unwritten {
                item.state = ItemState::Unwritten;
                self.unwritten[item.lane.index()].insert(item.order, key.clone(), item.len);
            }
        }
        self.drop_session_frames();
    }

    /// Forgets frames meant for a connection that no longer exists. A receipt or notice that was
    /// being written when it went away goes back to the front.
    pub(super) fn drop_session_frames(&mut self) {
        if let Some(frame) = self.control_in_flight.take() {
            // Its bytes are in `control_bytes` already (in flight counts as queued): moved back
            // without counting them again, or the count creeps up to false `Overloaded`s.
            self.queue_for(&frame).push_front(frame);
        }
        let mut dropped = 0;
        for queue in [&mut self.control, &mut self.control_urgent] {
            queue.retain(|f| {
                if !f.keep_offline {
                    dropped += len(&f.bytes);
                }
                f.keep_offline
            });
        }
        self.control_bytes -= dropped;
    }

    fn queue_for(&mut self, frame: &ControlFrame) -> &mut VecDeque<ControlFrame> {
        if frame.keep_offline {
            &mut self.control_urgent
        } else {
            &mut self.control
        }
    }

    pub(super) fn push_urgent_front(&mut self, frame: ControlFrame) {
        self.control_bytes += len(&frame.bytes);
        self.control_urgent.push_front(frame);
    }

    pub(super) fn push_control_back(&mut self, frame: ControlFrame) {
        self.control_bytes += len(&frame.bytes);
        self.queue_for(&frame).push_back(frame);
    }

    pub(super) fn pop_control(&mut self) -> Option<ControlFrame> {
        self.control_urgent
            .pop_front()
            .or_else(|| self.control.pop_front())
    }

    pub(super) fn control_len(&self) -> usize {
        self.control_urgent.len() + self.control.len()
    }

    /// Where a counter or the unwritten index differs from what is actually queued, recomputed
    /// from the queues; empty when the invariant holds.
    #[cfg(test)]
    pub(super) fn counter_drift(&self) -> Vec<String> {
        let mut drift = Vec::new();
        for p in Precedence::ALL {
            let i = p.index();
            let items = || self.items.values().filter(|item| item.lane == p);
            let frames = items().count() as u64;
            let bytes: u64 = items().map(|item| item.len).sum();
            if self.lane_frames[i] != frames {
                drift.push(format!(
                    "{p} frames: counted {}, queued {frames}",
                    self.lane_frames[i]
                ));
            }
            if self.lane_bytes[i] != bytes {
                drift.push(format!(
                    "{p} bytes: counted {}, queued {bytes}",
                    self.lane_bytes[i]
                ));
            }
            let unwritten: BTreeMap<u64, ItemKey> = self
                .items
                .iter()
                .filter(|(_, item)| item.lane == p && item.state == ItemState::Unwritten)
                .map(|(key, item)| (item.order, key.clone()))
                .collect();
            let listed = self.unwritten[i].listed();
            if listed != unwritten {
                drift.push(format!(
                    "{p} unwritten index: {:?}, unwritten items {:?}",
                    listed.keys().collect::<Vec<_>>(),
                    unwritten.keys().collect::<Vec<_>>()
                ));
            }
        }
        let mut from = BTreeMap::<EndpointId, u64>::new();
        for (key, item) in &self.items {
            add(&mut from, &key.sender, item.len);
            if item.bytes.as_ref().is_some_and(|b| len(b) != item.len) {
                drift.push(format!(
                    "{key:?}: length {} but holds other bytes",
                    item.len
                ));
            }
        }
        if from != self.bytes_from {
            drift.push(format!(
                "bytes per sender: counted {:?}, queued {from:?}",
                self.bytes_from
            ));
        }
        let control: u64 = self
            .control_urgent
            .iter()
            .chain(&self.control)
            .chain(&self.control_in_flight)
            .map(|f| len(&f.bytes))
            .sum();
        if self.control_bytes != control {
            drift.push(format!(
                "control bytes: counted {}, queued {control}",
                self.control_bytes
            ));
        }
        drift
    }
}
