//! One handler per decoded frame kind: checks who it is from and for, verifies its signature
//! against the pinned partner key, then hands the verified fact to the sub-state that owns it.
//!
//! The handlers only route; they keep no state of their own. Errors are returned to
//! [`Engine::handle_decoded`], which raises the alarm, so a hostile frame never panics and
//! never changes state before it verified.
//!
//! Only a fresh link test tells `link` the partner is there (see its module doc); partner
//! times pass through `clock` before the operator sees them; unsigned relay frames (refusals,
//! presence) reach the operator only as capped, coalesced alarms or as a hint that degrades
//! the link.

use rand_core::CryptoRng;

use super::alarms::cap_detail;
use super::clock::{self, Claim};
use super::inbound::{Accepted, Cx, LANE_LIMIT};
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
        // An envelope (even a new one) does not refresh the link: only link tests do.
        let accepted = match self.inbound.accept(f, &mut cx!(self)) {
            Err(VerifyError::Malformed(LANE_LIMIT)) => {
                let detail = format!(
                    "the partner opened more than {} inbound lanes; envelopes for new lanes are \
                     refused",
                    super::inbound::MAX_INBOUND_LANES
                );
                self.alarm(AlarmKind::LaneLimit, None, detail);
                return Err(VerifyError::Malformed(LANE_LIMIT));
            }
            other => other?,
        };
        let (channel, conflict) = match accepted {
            Accepted::Nothing => return Ok(()),
            Accepted::Signed { channel } => (channel, None),
            Accepted::Buffered { channel, conflict } => (channel, conflict),
        };
        let released = self.inbound.release(&channel, &mut cx!(self));
        for (id, claimed) in self.inbound.take_skewed() {
            let what = format!("message {id}");
            self.partner_time(claimed, Claim::Queued, &what, Some(id));
        }
        match conflict {
            Some(id) => Err(VerifyError::Equivocation(id)),
            None => released,
        }
    }

    /// A refusal from the relay. Its detail is unsigned and may be as long as a frame: the
    /// alarm quotes at most [`super::MAX_ALARM_DETAIL`] bytes of it, as the relay's word.
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
        let detail = format!("relay says: {}", cap_detail(r.detail));
        self.alarm(AlarmKind::Refused(r.code), r.id, detail);
    }

    pub(super) fn on_receipt(&mut self, r: Signed<Receipt>) -> Result<(), VerifyError> {
        if r.body.from != self.partner.id || r.body.to != self.local.id {
            return Err(VerifyError::NotForMe);
        }
        r.verify(&self.partner.key)?;
        // The operator sees the partner's time only if it is plausible; the signed receipt is
        // stored as it came.
        let plausible = clock::plausible(self.now, r.body.at, &self.cfg, Claim::Queued);
        let new = if plausible {
            self.outbox
                .apply_receipt(&r, true, &self.cfg, &mut self.keys, &mut self.gate)?
        } else {
            let mut local = r.clone();
            local.body.at = self.now;
            self.outbox
                .apply_receipt(&local, true, &self.cfg, &mut self.keys, &mut self.gate)?
        };
        // A receipt taken before (resent on the partner's reconnect, or replayed by the relay)
        // is neither stored again nor re-checked; no receipt shows the partner is there now.
        if new {
            if !plausible {
                self.partner_time(r.body.at, Claim::Queued, "receipt", None);
            }
            self.gate.persist(Record::ReceiptReceived(r));
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
        let plausible = clock::plausible(self.now, t.body.at, &self.cfg, Claim::LinkTest);
        self.partner_time(t.body.at, Claim::LinkTest, "link test", None);
        if let Some(t) = self.link.on_link_test(self.now, t, plausible) {
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
        // A notice no later than one already taken is a replay: nothing new to re-alert. (No
        // notice shows the partner is there now: only link tests do.)
        let new = self.inbound.note_notice(&e.body.message, e.body.count);
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
        let mut notice = e.body;
        notice.at = self.partner_time(
            notice.at,
            Claim::Queued,
            "escalation notice",
            Some(notice.message.clone()),
        );
        self.gate.push(Action::Realert(notice));
        Ok(())
    }

    /// The relay's unsigned word on the partner: a hint that may degrade the link, never bring
    /// it up.
    pub(super) fn on_presence(&mut self, p: Presence) {
        if p.endpoint == self.partner.id {
            self.link.presence(p.online);
            if p.online {
                // A partner that just came back may have missed our announcement.
                self.send_announcement();
            }
            self.link.update(self.now, &self.cfg, &mut self.gate);
        }
    }
}
