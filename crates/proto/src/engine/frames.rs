//! One handler per decoded frame kind: checks who it is from and for, verifies its signature
//! against the pinned partner key, then hands the verified fact to the sub-state that owns it.
//!
//! The handlers only route; they keep no state of their own. Errors are returned to
//! [`Engine::handle_decoded`], which raises the alarm, so a hostile frame never panics and
//! never changes state before it verified.

use rand_core::CryptoRng;

use super::inbound::{Accepted, Cx};
use super::{AckLevel, Action, AlarmKind, Engine, Record, Report, send_control};
use crate::envelope::{Announcement, EscalationNotice, LinkTest, Receipt, Signed, VerifyError};
use crate::wire::{EnvelopeFrame, Frame, Presence, Refusal};

/// Envelopes held until the partner's first announcement says where its lanes start.
pub(super) const MAX_EARLY_ENVELOPES: usize = 64;

impl<R: CryptoRng> Engine<R> {
    pub(super) fn on_envelope(&mut self, f: EnvelopeFrame) -> Result<(), VerifyError> {
        if self.keys.partner_announcement.is_none() {
            // Where the partner's lanes start comes with its announcement: hold the envelope
            // until then (bounded; the relay offers dropped ones again).
            if self.early_envelopes.len() == MAX_EARLY_ENVELOPES {
                self.early_envelopes.pop_front();
            }
            self.early_envelopes.push_back(f);
            return Ok(());
        }
        let (channel, conflict) = match self.inbound.accept(f, &mut cx!(self))? {
            Accepted::Nothing => return Ok(()),
            Accepted::Signed { channel } => (channel, None),
            Accepted::Buffered { channel, conflict } => {
                self.link.heard(self.now);
                (channel, conflict)
            }
        };
        let released = self.inbound.release(&channel, &mut cx!(self));
        match conflict {
            Some(id) => Err(VerifyError::Equivocation(id)),
            None => released,
        }
    }

    pub(super) fn on_refused(&mut self, r: Refusal) {
        if let Some(id) = &r.id {
            if self.outbox.on_refused(self.now, id, &self.cfg) {
                self.gate.push(Action::Report(Report {
                    id: id.clone(),
                    level: AckLevel::Refused(r.code),
                    at: self.now,
                }));
            }
        }
        self.alarm(AlarmKind::Refused(r.code), r.id, r.detail);
    }

    pub(super) fn on_receipt(&mut self, r: Signed<Receipt>) -> Result<(), VerifyError> {
        if r.body.from != self.partner.id || r.body.to != self.local.id {
            return Err(VerifyError::NotForMe);
        }
        r.verify(&self.partner.key)?;
        let new = self
            .outbox
            .apply_receipt(&r, true, &self.cfg, &mut self.keys, &mut self.gate)?;
        // A receipt taken before (resent on the partner's reconnect, or replayed by the relay)
        // is neither stored again nor evidence that the partner is there now.
        if new {
            self.gate.persist(Record::ReceiptReceived(r));
            self.link.heard(self.now);
        }
        Ok(())
    }

    pub(super) fn on_announcement(&mut self, a: Signed<Announcement>) -> Result<(), VerifyError> {
        if a.body.endpoint == self.local.id {
            return Ok(());
        }
        if a.body.endpoint != self.partner.id {
            return Err(VerifyError::NotForMe);
        }
        if a.body.identity != self.partner.key {
            self.alarm(
                AlarmKind::PartnerKeyChanged,
                None,
                format!(
                    "partner {} announced identity key {} but {} is pinned",
                    self.partner.id, a.body.identity, self.partner.key
                ),
            );
            return Err(VerifyError::UnknownSigner);
        }
        if self.keys.check_partner_announcement(&a, &self.partner)? {
            self.adopt_partner_announcement(a);
        }
        Ok(())
    }

    pub(super) fn on_link_test(&mut self, t: Signed<LinkTest>) -> Result<(), VerifyError> {
        if t.body.from != self.partner.id || t.body.to != self.local.id {
            return Err(VerifyError::NotForMe);
        }
        t.verify(&self.partner.key)?;
        if let Some(t) = self.link.on_link_test(self.now, t) {
            self.gate.push(Action::PartnerAuditHead(t));
        }
        self.link.update(self.now, &self.cfg, &mut self.gate);
        Ok(())
    }

    pub(super) fn on_escalation(&mut self, e: Signed<EscalationNotice>) -> Result<(), VerifyError> {
        if e.body.from != self.partner.id
            || e.body.to != self.local.id
            || e.body.message.sender != self.partner.id
        {
            return Err(VerifyError::NotForMe);
        }
        e.verify(&self.partner.key)?;
        // A notice no later than one already taken is a replay: it shows neither that the
        // partner is there nor anything new to re-alert.
        let new = self.inbound.note_notice(&e.body.message, e.body.count);
        if new {
            self.link.heard(self.now);
        }
        if let Some((w, r)) = self.inbound.ack_receipt(&e.body.message) {
            // Our acknowledgement was lost on the way: send it again, no need to re-alert.
            self.gate.after(w, send_control(&Frame::Receipt(r)));
            return Ok(());
        }
        if !new {
            return Ok(());
        }
        self.gate.persist(Record::PartnerEscalated {
            id: e.body.message.clone(),
            level: e.body.level,
        });
        self.gate.push(Action::Realert(e.body));
        Ok(())
    }

    pub(super) fn on_presence(&mut self, p: Presence) {
        if p.endpoint == self.partner.id {
            self.link.partner_online = Some(p.online);
            if p.online {
                // A partner that just came back may have missed our announcement.
                self.send_announcement();
            }
            self.link.update(self.now, &self.cfg, &mut self.gate);
        }
    }
}
