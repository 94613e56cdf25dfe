//! Message deadlines: what happens when one of a message's timers fires.
//!
//! A retransmission timer re-queues a message the relay does not hold; a missed `delivered`
//! deadline raises the transport precedence and re-offers it (with its session setup, in case
//! the partner lost the session); a missed `acknowledged` deadline raises it and sends the
//! partner a signed escalation notice. The timers themselves live in the outbox's table; this
//! only decides what each firing means.

use rand_core::CryptoRng;

use super::outbox::{OutState, TimerKind};
use super::{Action, DeadlineKind, Engine, Escalation, Record, WriteId, send_control};
use crate::envelope::{EscalationNotice, Signed};
use crate::types::{MessageId, Precedence};
use crate::wire::Frame;

impl<R: CryptoRng> Engine<R> {
    pub(super) fn fire(&mut self, kind: TimerKind, id: &MessageId) {
        let now = self.now;
        let Some(m) = self.outbox.msgs.get_mut(id) else {
            return;
        };
        match kind {
            TimerKind::Retransmit => {
                if !m.relay_holds && m.delivered.is_none() && self.link.connected {
                    self.outbox.send_queue.insert(id.clone(), m.write);
                }
            }
            TimerKind::Delivered => {
                if m.delivered.is_some() {
                    return;
                }
                let (to, count) = m.raise();
                m.delivered_deadline = now.plus(self.cfg.delivered_deadline(to));
                let next = m.delivered_deadline;
                let session = match &m.state {
                    OutState::Sealed { envelope, .. } => Some(envelope.header.session),
                    OutState::AwaitingKey { .. } => None,
                };
                if let Some(session) = &session {
                    // The recipient may have lost the session; offer the setup again.
                    self.keys.set_setup_confirmed(session, false);
                }
                self.outbox
                    .timers
                    .set((TimerKind::Delivered, id.clone()), next);
                self.escalate(id, DeadlineKind::Delivered, to, count);
                if session.is_some() {
                    let write = self.outbox.msgs.get(id).map_or(WriteId(0), |m| m.write);
                    self.outbox.send_queue.insert(id.clone(), write);
                }
            }
            TimerKind::Acknowledged => {
                if m.acknowledged.is_some() || m.delivered.is_none() {
                    return;
                }
                let (to, count) = m.raise();
                m.ack_deadline = self.cfg.acknowledged_deadline(to).map(|d| now.plus(d));
                if let Some(next) = m.ack_deadline {
                    self.outbox
                        .timers
                        .set((TimerKind::Acknowledged, id.clone()), next);
                }
                self.escalate(id, DeadlineKind::Acknowledged, to, count);
                let notice = Signed::sign(
                    EscalationNotice {
                        from: self.local.id.clone(),
                        to: self.partner.id.clone(),
                        message: id.clone(),
                        level: to,
                        count,
                        at: now,
                    },
                    &self.local.key,
                );
                if self.link.connected {
                    self.gate.push(send_control(&Frame::Escalation(notice)));
                }
            }
        }
    }

    fn escalate(&mut self, id: &MessageId, kind: DeadlineKind, to: Precedence, count: u32) {
        let at = self.now;
        self.gate.persist(Record::Escalated {
            id: id.clone(),
            kind,
            to,
            at,
        });
        self.gate.push(Action::Escalate(Escalation {
            id: id.clone(),
            kind,
            escalated_to: to,
            count,
            at,
        }));
    }
}
