//! The receive side: inbound lanes, the out-of-order buffer, chain verification, release in
//! dependency order, duplicate and equivocation checks, our delivered and acknowledged
//! receipts, and the inbox of delivered messages awaiting our operator.
//!
//! An envelope is checked (addressing, dependency vector, chain-head signature) before anything
//! is stored, opened, buffered, and released once a signed chain head covers it and every
//! higher-precedence message it depends on was delivered. It owns no keys or sessions (it asks
//! [`Keys`] through [`Cx`]) and does not decide the link state: the facade records that it
//! heard the partner.
//!
//! Main types: [`Inbound`], [`InLane`], [`InMsg`] (one delivered message).
//!
//! Per-message state is bounded too (`acks`): a delivered message's [`InMsg`] stays while it
//! awaits our operator's acknowledgement, and among the newest
//! [`EngineConfig::settled_history`] settled ones of its lane; older settled messages are
//! forgotten (the store keeps them) and acknowledged through [`Inbound::acknowledge_stored`].
//!
//! Memory against a hostile partner or relay is bounded: a lane is created only for an envelope
//! that verified (its chain-head signature, or an AEAD open under a session), at most
//! [`MAX_INBOUND_LANES`] of them; the buffer counts each entry's real size ([`Pending::size`]).
//!
//! Invariant: per lane, messages are delivered in sequence with no gap and no duplicate, never
//! ahead of a higher-precedence message they depend on; the buffer holds at most
//! [`MAX_BUFFERED_BYTES`] and only messages beyond the last delivered one.

mod acks;
mod bounds;

use std::collections::{BTreeMap, VecDeque};
use std::mem::size_of;

use super::clock::{Claim, plausible};
use super::gate::ALREADY_DURABLE;
use super::{
    Action, Delivery, DurabilityGate, EngineConfig, Keys, LaneDepth, Local, Partner, Record,
    WriteId, send_control,
};
use crate::crypto::{Digest, Signature};
use crate::envelope::{
    ChainHead, Envelope, Plaintext, Receipt, ReceiptKind, Signed, VerifyError, verify_head,
};
use crate::types::{Channel, MessageId, Precedence, Seq, Time};
use crate::wire::{EnvelopeFrame, Frame};

/// Delivered hashes kept per lane for duplicate and equivocation checks.
const DELIVERED_HASH_HISTORY: usize = 65_536;
/// Buffered out-of-order envelopes across all lanes, in bytes of memory ([`Pending::size`]);
/// beyond it new ones are dropped (the sender offers them again), so hostile traffic cannot
/// grow memory without bound.
pub(super) const MAX_BUFFERED_BYTES: usize = 64 * 1024 * 1024;
/// Inbound lanes (channel × precedence) kept: 256 channels at all four precedences. An
/// envelope that would open one more is refused with [`LANE_LIMIT`] (and an alarm), unless it
/// carries a verified chain-head signature and some lane holds nothing the partner signed (only
/// unsigned envelopes that opened under a session anyone may set up): that lane is dropped.
pub(super) const MAX_INBOUND_LANES: usize = 1024;
/// The refusal of an envelope that would exceed [`MAX_INBOUND_LANES`].
pub(super) const LANE_LIMIT: &str = "inbound lane limit reached";
/// Bytes a buffered entry costs beyond its struct and its data: the map node's share and the
/// allocator's headers for its four heap blocks (a generous estimate).
const ENTRY_OVERHEAD: usize = 128;
/// Acknowledgement receipts resent on every reconnect.
pub(super) const RECENT_ACKS: usize = 256;

/// What the receive side borrows from the rest of the engine for one input.
pub(super) struct Cx<'a> {
    pub(super) now: Time,
    pub(super) cfg: &'a EngineConfig,
    pub(super) local: &'a Local,
    pub(super) partner: &'a Partner,
    pub(super) keys: &'a mut Keys,
    pub(super) gate: &'a mut DurabilityGate,
}

/// What [`Inbound::accept`] did with an envelope.
pub(super) enum Accepted {
    /// Nothing new (a duplicate, or beyond the window or the buffer).
    Nothing,
    /// A buffered envelope's chain head arrived: try to release `channel`.
    Signed { channel: Channel },
    /// Opened and buffered (replacing an unsigned impostor if `conflict`); try to release
    /// `channel`.
    Buffered {
        channel: Channel,
        conflict: Option<MessageId>,
    },
}

#[derive(Debug)]
struct Pending {
    envelope: Envelope,
    hash: Digest,
    plaintext: Plaintext,
    signature: Option<Signature>,
    /// The relay's unsigned claim of the transport precedence.
    relay_transport: Precedence,
}

impl Pending {
    /// Memory this entry holds: the struct, its map slot, the header's names, the sealed bytes
    /// and the opened plaintext.
    fn size(&self) -> usize {
        let h = &self.envelope.header;
        size_of::<Seq>()
            + size_of::<Self>()
            + ENTRY_OVERHEAD
            + h.sender.as_str().len()
            + h.recipient.as_str().len()
            + h.channel.as_str().len()
            + self.envelope.sealed.capacity()
            + self.plaintext.body.capacity()
    }
}

#[derive(Debug, Default)]
pub(super) struct InLane {
    delivered: Seq,
    last_hash: Digest,
    verified: Seq,
    buffer: BTreeMap<Seq, Pending>,
    delivered_hashes: BTreeMap<Seq, Digest>,
    /// Our latest delivered receipt for the lane and the write it waits for.
    last_receipt: Option<(WriteId, Signed<Receipt>)>,
}

impl InLane {
    /// A lane of a partner incarnation whose sequences start after `base`.
    fn starting_at(base: u64) -> Self {
        Self {
            delivered: Seq(base),
            verified: Seq(base),
            ..Self::default()
        }
    }

    /// Nothing the partner signed ever reached this lane: it holds only unsigned envelopes.
    fn is_unproven(&self) -> bool {
        self.delivered_hashes.is_empty()
            && self.last_receipt.is_none()
            && self.buffer.values().all(|p| p.signature.is_none())
    }

    fn mark_delivered(&mut self, seq: Seq, hash: Digest) {
        self.delivered = seq;
        self.last_hash = hash;
        self.delivered_hashes.insert(seq, hash);
        while self.delivered_hashes.len() > DELIVERED_HASH_HISTORY {
            self.delivered_hashes.pop_first();
        }
    }
}

#[derive(Debug)]
pub(super) struct InMsg {
    hash: Digest,
    acknowledged: Option<Time>,
    ack_receipt: Option<(WriteId, Signed<Receipt>)>,
    expects_ack: bool,
    /// The highest escalation count the partner's notices about it carried.
    notices: u32,
}

impl InMsg {
    fn new(hash: Digest, precedence: Precedence, cfg: &EngineConfig) -> Self {
        Self {
            hash,
            acknowledged: None,
            ack_receipt: None,
            notices: 0,
            expects_ack: cfg.acknowledged_deadline(precedence).is_some(),
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct Inbound {
    /// The partner's incarnation: its lanes start after this sequence number.
    partner_base: u64,
    lanes: BTreeMap<(Channel, Precedence), InLane>,
    inbox: BTreeMap<MessageId, InMsg>,
    /// Bytes of received envelopes buffered while waiting for earlier ones.
    buffered_bytes: usize,
    /// Our latest acknowledgement receipts, resent on reconnect in case they were lost.
    recent_acks: VecDeque<(WriteId, Signed<Receipt>)>,
    /// Messages delivered with an implausible partner time since the facade last looked:
    /// (id, claimed time), for the clock-skew alarm.
    skewed: Vec<(MessageId, Time)>,
    /// Settled messages still held in `inbox`, per lane, oldest first.
    settled: acks::Settled,
}

impl Inbound {
    /// Checks an envelope from the partner and buffers it if new.
    pub(super) fn accept(
        &mut self,
        f: EnvelopeFrame,
        cx: &mut Cx<'_>,
    ) -> Result<Accepted, VerifyError> {
        let h = &f.envelope.header;
        if h.recipient != cx.local.id || h.sender != cx.partner.id {
            return Err(VerifyError::NotForMe);
        }
        let id = h.message_id();
        if h.seq.0 == 0 || h.sealed_len as usize != f.envelope.sealed.len() {
            return Err(VerifyError::Malformed("bad sequence or length"));
        }
        for p in Precedence::ALL {
            let ok = if p < h.precedence {
                h.after[p.index()] == 0
            } else if p == h.precedence {
                h.after[p.index()] == h.seq.0 - 1
            } else {
                true
            };
            if !ok {
                return Err(VerifyError::Malformed("dependency vector"));
            }
        }
        let hash = f.envelope.hash();
        let key = (h.channel.clone(), h.precedence);
        let window = cx.cfg.receive_window();
        // Read-only until the envelope verifies: no lane is created for an unverified frame.
        let delivered = self
            .lanes
            .get(&key)
            .map_or(Seq(self.partner_base), |l| l.delivered);
        if h.seq <= delivered {
            let lane = self.lanes.get(&key);
            return match lane.and_then(|l| l.delivered_hashes.get(&h.seq)) {
                Some(known) if *known != hash => Err(VerifyError::Equivocation(id)),
                _ => {
                    // An identical duplicate: answer with the stored receipt, silently.
                    if let Some((w, r)) = lane.and_then(|l| l.last_receipt.clone()) {
                        cx.gate.after(w, send_control(&Frame::Receipt(r)));
                    }
                    Ok(Accepted::Nothing)
                }
            };
        }
        if h.seq.0 > delivered.0 + window {
            // Beyond the window: the sender will offer it again.
            return Ok(Accepted::Nothing);
        }
        let buffered = self
            .lanes
            .get_mut(&key)
            .and_then(|l| l.buffer.get_mut(&h.seq));
        if let Some(existing) = buffered {
            if existing.hash == hash {
                if existing.signature.is_none() {
                    if let Some(sig) = f.head {
                        verify_head(&ChainHead::of(&f.envelope, hash), &sig, &cx.partner.key)?;
                        existing.signature = Some(sig);
                        return Ok(Accepted::Signed { channel: key.0 });
                    }
                }
                return Ok(Accepted::Nothing);
            }
        }
        // Signatures are checked before anything is stored, so a forged head never displaces a
        // genuine envelope.
        if let Some(sig) = &f.head {
            verify_head(&ChainHead::of(&f.envelope, hash), sig, &cx.partner.key)?;
        }
        let conflicting = self
            .lanes
            .get(&key)
            .and_then(|l| l.buffer.get(&h.seq))
            .map(|p| p.signature.is_some());
        if let Some(existing_signed) = conflicting {
            if existing_signed || f.head.is_none() {
                return Err(VerifyError::Equivocation(id));
            }
            // The signed one wins; the unsigned impostor is dropped below by insert.
        }
        let session =
            cx.keys
                .open_session(cx.local, cx.partner, h.session, h.epoch, f.setup.as_ref())?;
        let opened = session
            .open(h.precedence as u8, h.seq.0, &h.encode(), &f.envelope.sealed)
            .map_err(|_| VerifyError::DecryptFailed)?;
        let plaintext: Plaintext =
            postcard::from_bytes(&opened).map_err(|_| VerifyError::Malformed("plaintext"))?;
        let seq = h.seq;
        // Verified: a signed head, or at least an AEAD open under a session.
        let pending = Pending {
            envelope: f.envelope,
            hash,
            plaintext,
            signature: f.head,
            relay_transport: f.transport,
        };
        let size = pending.size();
        if self.buffered_bytes + size > MAX_BUFFERED_BYTES
            && (seq != delivered.next() || !self.evict_tails(&key, size))
        {
            // Full: the sender offers it again later.
            return Ok(Accepted::Nothing);
        }
        if !self.lanes.contains_key(&key) && !self.make_room_for_lane(pending.signature.is_some()) {
            return Err(VerifyError::Malformed(LANE_LIMIT));
        }
        let base = self.partner_base;
        let lane = self
            .lanes
            .entry(key.clone())
            .or_insert_with(|| InLane::starting_at(base));
        self.buffered_bytes += size;
        if let Some(old) = lane.buffer.insert(seq, pending) {
            self.buffered_bytes -= old.size();
        }
        Ok(Accepted::Buffered {
            channel: key.0,
            conflict: conflicting.map(|_| id),
        })
    }

    /// Messages delivered with an implausible partner time since the last call.
    pub(super) fn take_skewed(&mut self) -> Vec<(MessageId, Time)> {
        std::mem::take(&mut self.skewed)
    }

    /// Inbound lanes and buffered bytes, for the bounds tests.
    #[cfg(test)]
    pub(super) fn footprint(&self) -> (usize, usize) {
        (self.lanes.len(), self.buffered_bytes)
    }

    /// Releases every buffered message the ordering rule allows, highest lane first, and queues
    /// one signed cumulative receipt per lane that advanced.
    pub(super) fn release(
        &mut self,
        channel: &Channel,
        cx: &mut Cx<'_>,
    ) -> Result<(), VerifyError> {
        // Per lane advanced, the write of its last delivery.
        let mut advanced: BTreeMap<Precedence, WriteId> = BTreeMap::new();
        let mut error = Ok(());
        loop {
            let mut progressed = false;
            for p in Precedence::ALL.into_iter().rev() {
                loop {
                    if let Err(e) = self.verify_chain(channel, p) {
                        error = Err(e);
                    }
                    let Some(lane) = self.lanes.get(&(channel.clone(), p)) else {
                        break;
                    };
                    let next = lane.delivered.next();
                    if lane.verified < next {
                        break;
                    }
                    let Some(pending) = lane.buffer.get(&next) else {
                        break;
                    };
                    let after = pending.envelope.header.after;
                    let deps_met = Precedence::ALL.into_iter().filter(|q| *q > p).all(|q| {
                        self.lanes
                            .get(&(channel.clone(), q))
                            .map_or(0, |l| l.delivered.0)
                            >= after[q.index()]
                    });
                    if !deps_met {
                        break;
                    }
                    if let Some(write) = self.deliver(channel, p, next, cx) {
                        advanced.insert(p, write);
                    }
                    progressed = true;
                }
            }
            if !progressed {
                break;
            }
        }
        for (p, last_delivery) in advanced {
            let Some(lane) = self.lanes.get_mut(&(channel.clone(), p)) else {
                continue;
            };
            let receipt = delivered_receipt(cx, channel, p, lane.delivered, lane.last_hash, cx.now);
            let frame = send_control(&Frame::Receipt(receipt.clone()));
            // Sent once the deliveries it covers are durable: a flash lane's are flash records,
            // which the store may commit ahead of the rest.
            let write = if p == Precedence::Flash {
                cx.gate.after_ahead(last_delivery, frame);
                last_delivery
            } else {
                cx.gate.after_latest_write(frame)
            };
            lane.last_receipt = Some((write, receipt));
        }
        error
    }

    /// Advances `verified` over the contiguous buffered run that a signed head covers.
    fn verify_chain(&mut self, channel: &Channel, p: Precedence) -> Result<(), VerifyError> {
        let Some(lane) = self.lanes.get_mut(&(channel.clone(), p)) else {
            return Ok(());
        };
        let mut expected = lane.last_hash;
        let mut seq = lane.delivered.next();
        let mut covered = lane.verified;
        while let Some(pending) = lane.buffer.get(&seq) {
            if pending.envelope.header.prev != expected {
                let id = pending.envelope.header.message_id();
                if let Some(p) = lane.buffer.remove(&seq) {
                    self.buffered_bytes -= p.size();
                }
                return Err(VerifyError::BrokenChain(id));
            }
            expected = pending.hash;
            if pending.signature.is_some() {
                covered = covered.max(seq);
            }
            seq = seq.next();
        }
        lane.verified = covered;
        Ok(())
    }

    /// Delivers the buffered `seq` of a lane; returns the write of its `Received` record.
    fn deliver(
        &mut self,
        channel: &Channel,
        p: Precedence,
        seq: Seq,
        cx: &mut Cx<'_>,
    ) -> Option<WriteId> {
        let lane = self.lanes.get_mut(&(channel.clone(), p))?;
        let pending = lane.buffer.remove(&seq)?;
        self.buffered_bytes -= pending.size();
        lane.mark_delivered(seq, pending.hash);
        let id = pending.envelope.header.message_id();
        let claimed = pending.plaintext.sent_at;
        let sent_at = if plausible(cx.now, claimed, cx.cfg, Claim::Queued) {
            claimed
        } else {
            self.skewed.push((id.clone(), claimed));
            cx.now
        };
        let delivery = Delivery {
            id: id.clone(),
            to: cx.local.id.clone(),
            sent_at,
            received_at: cx.now,
            relay_transport: pending.relay_transport,
            body: pending.plaintext.body,
        };
        let msg = InMsg::new(pending.hash, p, cx.cfg);
        let settled = !msg.expects_ack;
        self.inbox.insert(id.clone(), msg);
        if settled {
            self.settle(&id, cx.cfg);
        }
        cx.keys.vouch(pending.envelope.header.session, cx.gate);
        let write = cx.gate.persist_envelope(
            Record::Received {
                delivery: delivery.clone(),
                envelope: pending.envelope,
                head: pending.signature,
            },
            Some(pending.hash),
        );
        if p == Precedence::Flash {
            cx.gate.after_ahead(write, Action::Deliver(delivery));
        } else {
            cx.gate.after(write, Action::Deliver(delivery));
        }
        Some(write)
    }

    /// A new relay connection: resends our latest delivered receipt per lane and recent
    /// acknowledgements, each once its write is durable.
    pub(super) fn resend_receipts(&self, gate: &mut DurabilityGate) {
        let delivered = self.lanes.values().filter_map(|l| l.last_receipt.as_ref());
        for (write, receipt) in delivered.chain(&self.recent_acks) {
            gate.after(*write, send_control(&Frame::Receipt(receipt.clone())));
        }
    }

    /// Replays a `Received` record.
    pub(super) fn restore_received(
        &mut self,
        delivery: &Delivery,
        envelope: &Envelope,
        cx: &Cx<'_>,
    ) -> Result<(), &'static str> {
        let hash = envelope.hash();
        let id = &delivery.id;
        let base = self.partner_base;
        let lane = self
            .lanes
            .entry((id.channel.clone(), id.precedence))
            .or_insert_with(|| InLane::starting_at(base));
        if id.seq != lane.delivered.next() {
            return Err("received record out of sequence");
        }
        lane.mark_delivered(id.seq, hash);
        lane.verified = id.seq;
        let receipt = delivered_receipt(
            cx,
            &id.channel,
            id.precedence,
            id.seq,
            hash,
            delivery.received_at,
        );
        lane.last_receipt = Some((ALREADY_DURABLE, receipt));
        let msg = InMsg::new(hash, id.precedence, cx.cfg);
        let settled = !msg.expects_ack;
        self.inbox.insert(id.clone(), msg);
        if settled {
            self.settle(id, cx.cfg);
        }
        Ok(())
    }

    /// Adds buffered counts to per-precedence lane depths.
    pub(super) fn count(&self, lanes: &mut [LaneDepth; 4]) {
        for ((_, p), l) in &self.lanes {
            lanes[p.index()].receive_buffered += l.buffer.len();
        }
    }

    /// Delivered messages awaiting our operator's acknowledgement.
    pub(super) fn pending_acks(&self) -> Vec<MessageId> {
        self.inbox
            .iter()
            .filter(|(_, m)| m.acknowledged.is_none() && m.expects_ack)
            .map(|(id, _)| id.clone())
            .collect()
    }
}

/// Our signed receipt: every message on the lane up to `upto` (whose hash is `head`) is
/// delivered.
fn delivered_receipt(
    cx: &Cx<'_>,
    channel: &Channel,
    precedence: Precedence,
    upto: Seq,
    head: Digest,
    at: Time,
) -> Signed<Receipt> {
    Signed::sign(
        Receipt {
            from: cx.local.id.clone(),
            to: cx.partner.id.clone(),
            channel: channel.clone(),
            precedence,
            kind: ReceiptKind::Delivered { upto, head },
            at,
        },
        &cx.local.key,
    )
}
