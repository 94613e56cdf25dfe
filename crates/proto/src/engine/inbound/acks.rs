//! Our operator's acknowledgements on the receive side, and the bound on per-message state.
//!
//! A delivered message keeps an [`InMsg`] (its hash, our acknowledgement and receipt, the
//! partner's notice count) while it awaits our operator's acknowledgement. Once *settled*
//! (acknowledged, or delivered on a lane that expects no acknowledgement) it joins its lane's
//! settled queue ([`Settled`]); beyond [`EngineConfig::settled_history`] settled messages per
//! lane the oldest is forgotten, so memory stays flat however many messages arrive. The store
//! keeps every forgotten message's record.
//!
//! What a forgotten message narrows (documented guarantees, all by design):
//!
//! - acknowledging it needs its stored envelope: [`Inbound::acknowledge`] answers
//!   [`AckError::Forgotten`] and the shell calls [`Inbound::acknowledge_stored`] with the
//!   envelope of its `Received` record; whether it was acknowledged already is the shell's
//!   inbox's word (the engine no longer knows);
//! - a partner escalation notice about it is taken as new (re-alerting our operator) rather
//!   than answered with our acknowledgement receipt; the last [`RECENT_ACKS`] receipts are
//!   still resent on every reconnect;
//! - duplicate and equivocation checks do not use this state: they use the lanes' delivered
//!   hashes (their own, larger history), unchanged.
//!
//! Main type: [`Settled`]. Invariant: every message in a lane's settled queue is in the inbox,
//! each at most once, and a queue never holds more than the configured history.

use std::collections::{BTreeMap, VecDeque};

use super::{Cx, Inbound, RECENT_ACKS};
use crate::crypto::Digest;
use crate::engine::gate::ALREADY_DURABLE;
use crate::engine::{AckError, EngineConfig, Record, WriteId, send_control};
use crate::envelope::{Envelope, Receipt, ReceiptKind, Signed};
use crate::types::{Channel, EndpointId, MessageId, Precedence, Seq};
use crate::wire::Frame;

#[cfg(doc)]
use super::InMsg;

/// Settled messages whose state is still held, per lane, oldest first.
#[derive(Debug, Default)]
pub(super) struct Settled {
    lanes: BTreeMap<(Channel, Precedence), VecDeque<Seq>>,
}

impl Inbound {
    /// Our operator acknowledged `id`: persists and, once durable, sends the signed receipt.
    pub(in crate::engine) fn acknowledge(
        &mut self,
        id: &MessageId,
        cx: &mut Cx<'_>,
    ) -> Result<WriteId, AckError> {
        let Some(msg) = self.inbox.get(id) else {
            return Err(if self.forgot(id, &cx.partner.id) {
                AckError::Forgotten(id.clone())
            } else {
                AckError::Unknown(id.clone())
            });
        };
        if msg.acknowledged.is_some() {
            return Err(AckError::AlreadyAcknowledged(id.clone()));
        }
        let (hash, expects_ack) = (msg.hash, msg.expects_ack);
        let (write, receipt) = self.sign_ack(id, hash, cx);
        if let Some(msg) = self.inbox.get_mut(id) {
            msg.acknowledged = Some(cx.now);
            msg.ack_receipt = Some((write, receipt));
        }
        if expects_ack {
            self.settle(id, cx.cfg);
        }
        Ok(write)
    }

    /// Signs, persists and (once durable) sends our acknowledgement receipt for `id`.
    fn sign_ack(
        &mut self,
        id: &MessageId,
        hash: Digest,
        cx: &mut Cx<'_>,
    ) -> (WriteId, Signed<Receipt>) {
        let receipt = Signed::sign(
            Receipt {
                from: cx.local.id.clone(),
                to: cx.partner.id.clone(),
                channel: id.channel.clone(),
                precedence: id.precedence,
                kind: ReceiptKind::Acknowledged { seq: id.seq, hash },
                at: cx.now,
            },
            &cx.local.key,
        );
        let write = cx.gate.persist(Record::OperatorAck {
            id: id.clone(),
            receipt: receipt.clone(),
        });
        self.remember_ack(write, receipt.clone());
        let frame = send_control(&Frame::Receipt(receipt.clone()));
        if id.precedence == Precedence::Flash {
            // The acknowledgement of a flash is a flash record (see `CommitOrder::Ahead`).
            cx.gate.after_ahead(write, frame);
        } else {
            cx.gate.after(write, frame);
        }
        (write, receipt)
    }

    fn remember_ack(&mut self, write: WriteId, receipt: Signed<Receipt>) {
        if self.recent_acks.len() == RECENT_ACKS {
            self.recent_acks.pop_front();
        }
        self.recent_acks.push_back((write, receipt));
    }

    /// Records the partner's escalation notice number `count` about `id`; false if one with
    /// that count or a later one was already taken (a replay).
    pub(in crate::engine) fn note_notice(&mut self, id: &MessageId, count: u32) -> bool {
        match self.inbox.get_mut(id) {
            Some(m) if m.notices >= count => false,
            Some(m) => {
                m.notices = count;
                true
            }
            None => true,
        }
    }

    /// Our acknowledgement receipt for `id`, if the operator acknowledged it.
    pub(in crate::engine) fn ack_receipt(
        &self,
        id: &MessageId,
    ) -> Option<(WriteId, Signed<Receipt>)> {
        self.inbox.get(id).and_then(|m| m.ack_receipt.clone())
    }

    /// Acknowledges a message whose state was forgotten, from its stored envelope (the
    /// `Received` record's); a message still held is acknowledged as by [`Self::acknowledge`].
    /// Refused as unknown if the envelope is not one we delivered (wrong addressing, a lane
    /// position not delivered yet, or a hash other than the one still on record).
    pub(in crate::engine) fn acknowledge_stored(
        &mut self,
        envelope: &Envelope,
        cx: &mut Cx<'_>,
    ) -> Result<WriteId, AckError> {
        let h = &envelope.header;
        let id = h.message_id();
        if self.inbox.contains_key(&id) {
            return self.acknowledge(&id, cx);
        }
        if h.recipient != cx.local.id || !self.forgot(&id, &cx.partner.id) {
            return Err(AckError::Unknown(id));
        }
        let hash = envelope.hash();
        let known = self
            .lanes
            .get(&(id.channel.clone(), id.precedence))
            .and_then(|l| l.delivered_hashes.get(&id.seq));
        if known.is_some_and(|k| *k != hash) {
            return Err(AckError::Unknown(id));
        }
        Ok(self.sign_ack(&id, hash, cx).0)
    }

    /// `id` is settled: it joins its lane's settled queue, and the oldest beyond the history
    /// is forgotten.
    pub(super) fn settle(&mut self, id: &MessageId, cfg: &EngineConfig) {
        let limit = usize::try_from(cfg.settled_history()).unwrap_or(usize::MAX);
        let queue = self
            .settled
            .lanes
            .entry((id.channel.clone(), id.precedence))
            .or_default();
        queue.push_back(id.seq);
        while queue.len() > limit {
            let Some(seq) = queue.pop_front() else { break };
            self.inbox.remove(&MessageId { seq, ..id.clone() });
        }
    }

    /// Whether `id` is a message from `partner` that was delivered and whose state was then
    /// forgotten.
    pub(super) fn forgot(&self, id: &MessageId, partner: &EndpointId) -> bool {
        id.sender == *partner
            && !self.inbox.contains_key(id)
            && self
                .lanes
                .get(&(id.channel.clone(), id.precedence))
                .is_some_and(|l| id.seq.0 > 0 && id.seq <= l.delivered)
    }

    /// Per-message entries held, for the bounds tests.
    #[cfg(test)]
    pub(in crate::engine) fn held(&self) -> usize {
        self.inbox.len()
    }

    /// Replays an `OperatorAck` record.
    pub(in crate::engine) fn restore_ack(
        &mut self,
        id: &MessageId,
        receipt: Signed<Receipt>,
        cx: &Cx<'_>,
    ) -> Result<(), &'static str> {
        let Some(m) = self.inbox.get_mut(id) else {
            if self.forgot(id, &cx.partner.id) {
                self.remember_ack(ALREADY_DURABLE, receipt);
                return Ok(());
            }
            return Err("ack for unknown message");
        };
        let settles = m.expects_ack && m.acknowledged.is_none();
        m.acknowledged = Some(receipt.body.at);
        m.ack_receipt = Some((ALREADY_DURABLE, receipt.clone()));
        self.remember_ack(ALREADY_DURABLE, receipt);
        if settles {
            self.settle(id, cx.cfg);
        }
        Ok(())
    }
}
