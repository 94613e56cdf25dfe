//! The send side: outgoing lanes, the outbox of messages not yet finished, the send queue and
//! the per-message timers (retransmission, delivered and acknowledged deadlines).
//!
//! A message enters with its dependency vector `after` (the last sequence of every lane of the
//! same or higher precedence on its channel), is sealed once the partner's key is known, and is
//! framed by [`Outbox::flush`] once its record is durable. It leaves memory when it is
//! delivered and, where expected, acknowledged. It does not verify receipts' signatures or decide
//! about escalation alarms: the facade does that and calls in with verified facts.
//!
//! Main types: [`Outbox`], [`OutMsg`] (one message), [`TimerKind`]. The send queue
//! (`send_queue`) and the retransmission floor (`accept_time`) are their own modules; the rest
//! is the one job of the send side, a little past 600 lines with its invariant checks.
//!
//! Invariant: within a lane, sequence numbers are dense and each sealed envelope's `prev` is the
//! hash of the one before; a message in the send queue is framed at most once per flush, and
//! every armed timer belongs to a message still in the outbox.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::accept_time::AcceptTime;
use super::send_queue::SendQueue;
use super::timer::TimerTable;
use super::{
    AckLevel, Action, DeadlineKind, DurabilityGate, EngineConfig, Keys, LaneDepth, Local,
    OutboxEntry, Partner, Report, WriteId, gate::ALREADY_DURABLE, keys::SendSessionState,
};
use crate::crypto::Digest;
use crate::envelope::{
    ChainHead, Envelope, Header, Plaintext, Receipt, ReceiptKind, Signed, VerifyError, sign_head,
};
use crate::types::{Channel, EndpointId, Lane, MessageId, Precedence, Seq, Time};
use crate::wire::{self, Accepted, EnvelopeFrame, Frame};

/// Finished messages remembered for a late `accepted`; the oldest are dropped beyond it.
const MAX_LATE_ACCEPTED: usize = 4096;
/// Acknowledged messages that expected no acknowledgement, remembered so that a receipt
/// received again reports nothing new; the lowest ids are dropped beyond it.
const MAX_UNEXPECTED_ACKS: usize = 4096;
/// Sealed bytes of a lane framed in one flush before a chain head is signed even mid-batch: a
/// sixteenth of the receiver's out-of-order buffer, so a burst of maximal messages verifies in
/// parts instead of waiting for a last envelope that no longer fits.
const HEAD_EVERY_BYTES: usize = 4 * 1024 * 1024;

/// What a message timer is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum TimerKind {
    Retransmit,
    Delivered,
    Acknowledged,
}

#[expect(
    clippy::large_enum_variant,
    reason = "one per outbox message; sealed is the common state"
)]
#[derive(Debug)]
pub(super) enum OutState {
    AwaitingKey { body: Vec<u8> },
    Sealed { envelope: Envelope, hash: Digest },
}

#[derive(Debug)]
pub(super) struct OutMsg {
    pub(super) sent_at: Time,
    after: [u64; 4],
    pub(super) state: OutState,
    /// The record that must be durable before the message is sent.
    pub(super) write: WriteId,
    pub(super) transport: Precedence,
    pub(super) escalations: u32,
    /// When the relay first accepted it (reported once).
    pub(super) accepted: Option<Time>,
    /// The relay on the current connection holds it: no retransmission needed.
    pub(super) relay_holds: bool,
    pub(super) delivered: Option<Time>,
    pub(super) acknowledged: Option<Time>,
    pub(super) delivered_deadline: Time,
    /// `None`: no acknowledgement expected.
    pub(super) ack_deadline: Option<Time>,
    rto: Duration,
    /// When it was last framed with a retransmission armed (for the accept-time estimate).
    framed_at: Option<Time>,
}

impl OutMsg {
    /// A message as submitted at `sent_at` (or read back from its record).
    pub(super) fn new(
        cfg: &EngineConfig,
        precedence: Precedence,
        sent_at: Time,
        after: [u64; 4],
        state: OutState,
    ) -> Self {
        Self {
            sent_at,
            after,
            state,
            write: ALREADY_DURABLE,
            transport: precedence,
            escalations: 0,
            accepted: None,
            relay_holds: false,
            delivered: None,
            acknowledged: None,
            delivered_deadline: sent_at.plus(cfg.delivered_deadline(precedence)),
            ack_deadline: cfg
                .acknowledged_deadline(precedence)
                .map(|d| sent_at.plus(d)),
            rto: cfg.retransmit_initial(),
            framed_at: None,
        }
    }

    /// What [`super::Engine::outbox`] shows of it.
    pub(super) fn entry(&self, id: &MessageId) -> OutboxEntry {
        OutboxEntry {
            id: id.clone(),
            sent_at: self.sent_at,
            transport: self.transport,
            escalations: self.escalations,
            accepted: self.accepted,
            delivered: self.delivered,
            acknowledged: self.acknowledged,
            next_deadline: match (self.delivered, self.acknowledged, self.ack_deadline) {
                (None, _, _) => Some((DeadlineKind::Delivered, self.delivered_deadline)),
                (Some(_), None, Some(at)) => Some((DeadlineKind::Acknowledged, at)),
                _ => None,
            },
        }
    }

    /// When to retransmit if nothing is heard, doubling the interval for the next time; never
    /// sooner than `floor` (see [`AcceptTime`]).
    fn back_off(&mut self, now: Time, cfg: &EngineConfig, floor: Duration) -> Time {
        let rto = self.rto.max(floor).min(cfg.retransmit_max());
        let at = now.plus(rto);
        self.rto = (rto * 2).min(cfg.retransmit_max());
        at
    }

    /// Raises the transport precedence after a missed deadline; returns the new one and the
    /// escalation count.
    pub(super) fn raise(&mut self) -> (Precedence, u32) {
        self.transport = self.transport.raised();
        self.escalations += 1;
        (self.transport, self.escalations)
    }
}

#[derive(Debug)]
pub(super) struct OutLane {
    pub(super) last_seq: Seq,
    pub(super) last_hash: Digest,
}

#[derive(Debug)]
pub(super) struct Outbox {
    /// Our incarnation's base: lanes start after it.
    pub(super) base: u64,
    pub(super) lanes: BTreeMap<(Channel, Precedence), OutLane>,
    pub(super) msgs: BTreeMap<MessageId, OutMsg>,
    /// Messages waiting for the partner's key, in submission order.
    pub(super) awaiting_key: BTreeSet<(Time, MessageId)>,
    /// Sealed messages to frame at the next flush once their write is durable.
    pub(super) send_queue: SendQueue,
    pub(super) timers: TimerTable<(TimerKind, MessageId)>,
    /// How long the relay takes to accept what we frame, smoothed.
    accept_time: AcceptTime,
    /// Finished messages whose `accepted` reply has not arrived yet (a partner's receipt can
    /// overtake it), so the level is still reported once when it comes.
    pub(super) late_accepted: BTreeSet<MessageId>,
    /// Messages acknowledged although no acknowledgement was expected (they leave memory once
    /// delivered), so that the receipt, resent on every reconnect of the partner or replayed,
    /// reports `acknowledged` once. Rebuilt from the stored receipts on restore.
    unexpected_acks: BTreeSet<MessageId>,
}

impl Outbox {
    pub(super) fn new() -> Self {
        Self {
            base: 0,
            lanes: BTreeMap::new(),
            msgs: BTreeMap::new(),
            awaiting_key: BTreeSet::new(),
            send_queue: SendQueue::default(),
            timers: TimerTable::new(),
            accept_time: AcceptTime::default(),
            late_accepted: BTreeSet::new(),
            unexpected_acks: BTreeSet::new(),
        }
    }

    /// Allocates the next id on `channel` at `precedence` with its dependency vector: the last
    /// sequence of every same-or-higher lane on the channel, its own lane included.
    /// A lane starts after our incarnation's base; a higher lane never used is `0` in the
    /// vector (nothing to wait for).
    pub(super) fn next_id(
        &mut self,
        me: &EndpointId,
        channel: Channel,
        precedence: Precedence,
    ) -> (MessageId, [u64; 4]) {
        let mut after = [0u64; 4];
        for p in Precedence::ALL.into_iter().filter(|p| *p > precedence) {
            after[p.index()] = self
                .lanes
                .get(&(channel.clone(), p))
                .map_or(0, |l| l.last_seq.0);
        }
        let lane = self.lane(&channel, precedence);
        after[precedence.index()] = lane.last_seq.0;
        lane.last_seq = lane.last_seq.next();
        let id = MessageId {
            sender: me.clone(),
            channel,
            precedence,
            seq: lane.last_seq,
        };
        (id, after)
    }

    /// The lane for (`channel`, `precedence`), starting after our incarnation's base if new.
    pub(super) fn lane(&mut self, channel: &Channel, precedence: Precedence) -> &mut OutLane {
        let base = self.base;
        self.lanes
            .entry((channel.clone(), precedence))
            .or_insert_with(|| OutLane {
                last_seq: Seq(base),
                last_hash: Digest::default(),
            })
    }

    /// Starts a new incarnation: every lane restarts after `base` and every message still here
    /// is dropped. Returns the dropped ids, for the caller to report lost.
    pub(super) fn restart(&mut self, base: u64) -> Vec<MessageId> {
        self.base = base;
        self.lanes.clear();
        self.awaiting_key.clear();
        self.send_queue.clear();
        self.late_accepted.clear();
        self.timers = TimerTable::new();
        std::mem::take(&mut self.msgs).into_keys().collect()
    }

    /// The chain hash of `id`'s envelope, once sealed.
    pub(super) fn sealed_hash(&self, id: &MessageId) -> Option<Digest> {
        match self.msgs.get(id).map(|m| &m.state) {
            Some(OutState::Sealed { hash, .. }) => Some(*hash),
            _ => None,
        }
    }

    /// Seals message `id` in `session`, chaining it to its lane; returns the envelope.
    pub(super) fn seal(
        &mut self,
        id: &MessageId,
        session: &SendSessionState,
        local: &Local,
        partner: &Partner,
    ) -> Option<Envelope> {
        let msg = self.msgs.get(id)?;
        let OutState::AwaitingKey { body } = &msg.state else {
            return None;
        };
        let lane = self.lanes.get(&(id.channel.clone(), id.precedence))?;
        let plaintext = postcard::to_allocvec(&Plaintext {
            sent_at: msg.sent_at,
            body: body.clone(),
        })
        .ok()?;
        let mut header = Header {
            sender: local.id.clone(),
            recipient: partner.id.clone(),
            channel: id.channel.clone(),
            precedence: id.precedence,
            seq: id.seq,
            after: msg.after,
            epoch: session.epoch,
            session: session.session.id(),
            prev: lane.last_hash,
            sealed_len: 0,
        };
        // AEAD adds a 16-byte tag.
        header.sealed_len = (plaintext.len() + 16) as u32;
        let sealed = session
            .session
            .seal(id.precedence as u8, id.seq.0, &header.encode(), &plaintext)
            .ok()?;
        let envelope = Envelope { header, sealed };
        let hash = envelope.hash();
        if let Some(lane) = self.lanes.get_mut(&(id.channel.clone(), id.precedence)) {
            lane.last_hash = hash;
        }
        if let Some(m) = self.msgs.get_mut(id) {
            m.state = OutState::Sealed {
                envelope: envelope.clone(),
                hash,
            };
        }
        Some(envelope)
    }

    /// Frames every queued message whose record is durable, highest precedence first and in
    /// sequence order within a lane; the last envelope of each lane carries the signed chain
    /// head, and so does one at least every [`HEAD_EVERY_BYTES`] of a lane, so that a burst
    /// larger than the receiver's buffer still verifies in parts. Arms retransmission for those
    /// the relay does not hold yet.
    pub(super) fn flush(
        &mut self,
        now: Time,
        cfg: &EngineConfig,
        local: &Local,
        keys: &Keys,
        gate: &mut DurabilityGate,
    ) {
        if self.send_queue.is_empty() {
            return;
        }
        let floor = self.accept_time.retransmit_floor();
        let mut ready = self.send_queue.take_durable(gate.persisted());
        for write in gate.ahead() {
            ready.extend(self.send_queue.take_write(write));
        }
        ready.retain(|id| self.msgs.contains_key(id));
        ready.sort_by(|a, b| b.precedence.cmp(&a.precedence).then(a.cmp(b)));
        // Sealed bytes framed in the current lane since its last signed head.
        let mut unsigned_bytes = 0usize;
        for (i, id) in ready.iter().enumerate() {
            let last_in_lane = ready
                .get(i + 1)
                .is_none_or(|n| n.channel != id.channel || n.precedence != id.precedence);
            let first_in_lane = i == 0
                || ready
                    .get(i - 1)
                    .is_some_and(|p| p.channel != id.channel || p.precedence != id.precedence);
            if first_in_lane {
                unsigned_bytes = 0;
            }
            let Some(m) = self.msgs.get_mut(id) else {
                continue;
            };
            if m.delivered.is_some() {
                continue;
            }
            let OutState::Sealed { envelope, hash } = &m.state else {
                continue;
            };
            let lane_bytes = unsigned_bytes + envelope.sealed.len();
            let sign = last_in_lane || lane_bytes >= HEAD_EVERY_BYTES;
            unsigned_bytes = if sign { 0 } else { lane_bytes };
            let head = sign.then(|| sign_head(&ChainHead::of(envelope, *hash), &local.key));
            let frame = Frame::Envelope(EnvelopeFrame {
                transport: m.transport,
                envelope: envelope.clone(),
                head,
                setup: keys.setup_to_offer(&envelope.header.session),
            });
            let lane = Lane::Precedence(m.transport);
            if !m.relay_holds {
                let at = m.back_off(now, cfg, floor);
                m.framed_at = Some(now);
                self.timers.set((TimerKind::Retransmit, id.clone()), at);
            }
            gate.push(Action::Send {
                lane,
                frame: wire::encode_frame(&frame),
            });
        }
    }

    /// A new relay connection: re-offer every sealed, undelivered message from a fresh backoff.
    pub(super) fn reoffer_all(&mut self, cfg: &EngineConfig) {
        for (id, m) in &mut self.msgs {
            if m.delivered.is_none() && matches!(m.state, OutState::Sealed { .. }) {
                m.rto = cfg.retransmit_initial();
                m.relay_holds = false;
                self.send_queue.insert(id.clone(), m.write);
            }
        }
    }

    /// The relay connection is gone: nothing is in flight and no reply will come.
    pub(super) fn disconnected(&mut self) {
        self.send_queue.clear();
        self.late_accepted.clear();
        for id in self.msgs.keys() {
            self.timers.stop(&(TimerKind::Retransmit, id.clone()));
        }
    }

    pub(super) fn on_accepted(&mut self, now: Time, a: Accepted, gate: &mut DurabilityGate) {
        let level = AckLevel::Accepted { durable: a.durable };
        let Some(m) = self.msgs.get_mut(&a.id) else {
            // Delivered (and forgotten) before the relay's reply arrived: still report the level
            // once, stamped now.
            if self.late_accepted.remove(&a.id) {
                gate.push(Action::Report(Report {
                    id: a.id,
                    level,
                    at: now,
                }));
            }
            return;
        };
        m.relay_holds = true;
        if let Some(framed) = m.framed_at.take() {
            self.accept_time.sample(now.since(framed));
        }
        let first = m.accepted.is_none();
        if first {
            m.accepted = Some(now);
        }
        self.timers.stop(&(TimerKind::Retransmit, a.id.clone()));
        if first {
            gate.push(Action::Report(Report {
                id: a.id,
                level,
                at: now,
            }));
        }
    }

    /// The relay refused `id` for now: keep it and try again after the backoff. Returns
    /// whether the message is ours and still tracked.
    pub(super) fn on_refused(&mut self, now: Time, id: &MessageId, cfg: &EngineConfig) -> bool {
        let Some(m) = self.msgs.get_mut(id) else {
            return false;
        };
        m.relay_holds = false;
        // Refused, not slow: the plain back-off.
        let at = m.back_off(now, cfg, Duration::ZERO);
        self.timers.set((TimerKind::Retransmit, id.clone()), at);
        true
    }

    /// Marks outgoing messages delivered/acknowledged by a verified receipt; returns whether it
    /// told anything new (a receipt taken before, resent or replayed, does not). `report` is
    /// false during restore.
    pub(super) fn apply_receipt(
        &mut self,
        r: &Signed<Receipt>,
        report: bool,
        cfg: &EngineConfig,
        keys: &mut Keys,
        gate: &mut DurabilityGate,
    ) -> Result<bool, VerifyError> {
        let body = &r.body;
        let id_at = |seq| MessageId {
            sender: body.to.clone(),
            channel: body.channel.clone(),
            precedence: body.precedence,
            seq,
        };
        let reached = |id, level| {
            Action::Report(Report {
                id,
                level,
                at: body.at,
            })
        };
        match &body.kind {
            ReceiptKind::Delivered { upto, head } => {
                let head_id = id_at(*upto);
                // The receipt must name the hash we sent at `upto`, if we still track it.
                if let Some(OutState::Sealed { hash, .. }) =
                    self.msgs.get(&head_id).map(|m| &m.state)
                {
                    if hash != head {
                        return Err(VerifyError::ReceiptMismatch(head_id));
                    }
                }
                let ids: Vec<MessageId> = self
                    .msgs
                    .range(id_at(Seq(0))..=head_id)
                    .filter(|(_, m)| m.delivered.is_none())
                    .map(|(id, _)| id.clone())
                    .collect();
                let changed = !ids.is_empty();
                for id in ids {
                    let Some(m) = self.msgs.get_mut(&id) else {
                        continue;
                    };
                    m.delivered = Some(body.at);
                    if let OutState::Sealed { envelope, .. } = &m.state {
                        keys.set_setup_confirmed(&envelope.header.session, true);
                    }
                    self.timers.stop(&(TimerKind::Retransmit, id.clone()));
                    if report {
                        gate.push(reached(id.clone(), AckLevel::Delivered));
                    }
                    self.forget_if_done(&id);
                }
                Ok(changed)
            }
            ReceiptKind::Acknowledged { seq, hash } => {
                let id = id_at(*seq);
                let Some(m) = self.msgs.get_mut(&id) else {
                    // No acknowledgement was expected, so the message left memory once
                    // delivered; the signed receipt still tells the operator, once.
                    let new = self.forgotten_unacked(&id, cfg) && self.note_unexpected_ack(&id);
                    if new && report {
                        gate.push(reached(id, AckLevel::Acknowledged));
                    }
                    return Ok(new);
                };
                if let OutState::Sealed { hash: h, .. } = &m.state {
                    if h != hash {
                        return Err(VerifyError::ReceiptMismatch(id));
                    }
                }
                if m.acknowledged.is_some() {
                    return Ok(false);
                }
                // An acknowledgement implies delivery.
                if m.delivered.is_none() {
                    m.delivered = Some(body.at);
                }
                m.acknowledged = Some(body.at);
                if report {
                    gate.push(reached(id.clone(), AckLevel::Acknowledged));
                }
                if cfg.acknowledged_deadline(id.precedence).is_none() {
                    self.note_unexpected_ack(&id);
                }
                self.forget_if_done(&id);
                Ok(true)
            }
        }
    }

    /// Remembers an acknowledgement nobody asked for; returns whether it is new.
    fn note_unexpected_ack(&mut self, id: &MessageId) -> bool {
        if self.unexpected_acks.contains(id) {
            return false;
        }
        if self.unexpected_acks.len() >= MAX_UNEXPECTED_ACKS {
            self.unexpected_acks.pop_first();
        }
        self.unexpected_acks.insert(id.clone())
    }

    /// Whether `id` was ours, delivered and dropped from memory without an expected ack.
    fn forgotten_unacked(&self, id: &MessageId, cfg: &EngineConfig) -> bool {
        cfg.acknowledged_deadline(id.precedence).is_none()
            && self
                .lanes
                .get(&(id.channel.clone(), id.precedence))
                .is_some_and(|l| self.base < id.seq.0 && id.seq <= l.last_seq)
    }

    /// After delivery: stops the timers that no longer matter, then either drops a finished
    /// message from memory (the store keeps its history) or arms its acknowledged deadline.
    fn forget_if_done(&mut self, id: &MessageId) {
        let Some(m) = self.msgs.get(id) else { return };
        let done = m.delivered.is_some() && (m.acknowledged.is_some() || m.ack_deadline.is_none());
        let (accepted, ack_deadline) = (m.accepted, m.ack_deadline);
        self.timers.stop(&(TimerKind::Delivered, id.clone()));
        self.timers.stop(&(TimerKind::Retransmit, id.clone()));
        if done {
            self.timers.stop(&(TimerKind::Acknowledged, id.clone()));
            if accepted.is_none() {
                if self.late_accepted.len() >= MAX_LATE_ACCEPTED {
                    self.late_accepted.pop_first();
                }
                self.late_accepted.insert(id.clone());
            }
            self.msgs.remove(id);
            self.send_queue.remove(id);
        } else if let Some(at) = ack_deadline {
            self.timers.set((TimerKind::Acknowledged, id.clone()), at);
        }
    }

    /// Arms the deadlines of restored messages (restore forgets timers armed while replaying).
    pub(super) fn rebuild_timers(&mut self) {
        self.timers.clear();
        for (id, m) in &self.msgs {
            if m.delivered.is_none() {
                self.timers
                    .set((TimerKind::Delivered, id.clone()), m.delivered_deadline);
            }
            if let Some(at) = m.ack_deadline {
                if m.acknowledged.is_none() {
                    self.timers.set((TimerKind::Acknowledged, id.clone()), at);
                }
            }
        }
    }

    /// Adds this outbox's counts to per-precedence lane depths.
    pub(super) fn count(&self, lanes: &mut [LaneDepth; 4]) {
        for (id, m) in &self.msgs {
            let d = &mut lanes[id.precedence.index()];
            match m.state {
                OutState::AwaitingKey { .. } => d.awaiting_key += 1,
                OutState::Sealed { .. } if m.accepted.is_none() && m.delivered.is_none() => {
                    d.unaccepted += 1
                }
                OutState::Sealed { .. } => {}
            }
            if m.delivered.is_none() {
                d.undelivered += 1;
            } else if m.acknowledged.is_none() && m.ack_deadline.is_some() {
                d.unacknowledged += 1;
            }
        }
    }
}
