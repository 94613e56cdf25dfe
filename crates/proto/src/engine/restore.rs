//! Rebuilding an engine from its records after a restart.
//!
//! [`Engine::restore`] replays every record the engine emitted and the caller confirmed, in
//! order, through [`Engine::apply`], one arm per [`Record`] variant, then re-arms deadlines and
//! seals what still waited for the partner's key. Replaying emits nothing (no reports, no sends,
//! no records): what it rebuilds is durable by construction. Only a missing sealing key is
//! generated afresh, as [`Engine::new`] does.
//!
//! Invariant: a record that refers to something no earlier record created is an
//! [`RestoreError::Inconsistent`] naming its position, never a panic.

use rand_core::CryptoRng;

use super::inbound::Cx;
use super::keys::Incarnation;
use super::outbox::{OutMsg, OutState};
use super::{DeadlineKind, Engine, EngineConfig, Local, Partner, Record, RestoreError};
use crate::crypto::SealingKey;
use crate::types::Time;

impl<R: CryptoRng> Engine<R> {
    /// Rebuilds an engine from every record it emitted and the caller confirmed, in order.
    /// Deadlines are wall-clock times, so ones that passed during the outage fire at the first
    /// [`handle_timeout`](Self::handle_timeout).
    pub fn restore(
        cfg: EngineConfig,
        local: Local,
        partner: Partner,
        rng: R,
        now: Time,
        records: impl IntoIterator<Item = Record>,
    ) -> Result<Self, RestoreError> {
        let mut engine = Self::empty(cfg, local, partner, rng, now);
        for (index, record) in records.into_iter().enumerate() {
            engine.apply(index, record)?;
        }
        if !engine.keys.has_sealing_key() {
            engine.rotate_sealing_key(now);
        }
        engine.outbox.late_accepted.clear();
        engine.outbox.rebuild_timers();
        engine.seal_awaiting();
        engine.finish();
        Ok(engine)
    }

    fn apply(&mut self, index: usize, record: Record) -> Result<(), RestoreError> {
        let inconsistent = |detail: &str| RestoreError::Inconsistent {
            index,
            detail: detail.to_owned(),
        };
        match record {
            Record::SealingKey {
                epoch,
                secret,
                expires_at,
            } => {
                let key = SealingKey::from_secret(&secret)
                    .map_err(|e| RestoreError::Key(e.to_string()))?;
                // Announced for two rotations from when it was made.
                let lifetime =
                    u64::try_from((self.cfg.key_rotation() * 2).as_micros()).unwrap_or(u64::MAX);
                let since = Time(expires_at.0.saturating_sub(lifetime));
                self.keys
                    .install_sealing_key(&self.local, epoch, key, since, expires_at);
            }
            Record::PartnerAnnouncement(a) => {
                self.inbound.set_partner_incarnation(a.body.incarnation);
                self.keys.set_partner_announcement(a);
            }
            Record::Incarnation { incarnation, peer } => {
                self.outbox.restart(incarnation);
                self.keys.incarnation = Incarnation {
                    base: incarnation,
                    peer,
                };
                self.keys.sign_announcement(&self.local);
            }
            Record::SendSession { id, setup } => self.keys.restore_send_setup(id, setup),
            Record::Outgoing {
                id,
                after,
                sent_at,
                body,
                envelope,
            } => {
                let lane = self.outbox.lane(&id.channel, id.precedence);
                lane.last_seq = lane.last_seq.max(id.seq);
                let state = match (body, envelope) {
                    (_, Some(envelope)) => {
                        let hash = envelope.hash();
                        lane.last_hash = hash;
                        OutState::Sealed { envelope, hash }
                    }
                    (Some(body), None) => {
                        self.outbox.awaiting_key.insert((sent_at, id.clone()));
                        OutState::AwaitingKey { body }
                    }
                    (None, None) => {
                        return Err(inconsistent(
                            "outgoing record with neither body nor envelope",
                        ));
                    }
                };
                let msg = OutMsg::new(&self.cfg, id.precedence, sent_at, after, state);
                self.outbox.msgs.insert(id, msg);
            }
            Record::Sealed { id, envelope } => {
                let hash = envelope.hash();
                let lane = self.outbox.lane(&id.channel, id.precedence);
                lane.last_hash = hash;
                let m = self
                    .outbox
                    .msgs
                    .get_mut(&id)
                    .ok_or_else(|| inconsistent("sealed record for unknown message"))?;
                m.state = OutState::Sealed { envelope, hash };
                self.outbox.awaiting_key.retain(|(_, i)| *i != id);
            }
            Record::Escalated { id, kind, to, at } => {
                if let Some(m) = self.outbox.msgs.get_mut(&id) {
                    m.transport = to;
                    m.escalations += 1;
                    match kind {
                        DeadlineKind::Delivered => {
                            m.delivered_deadline = at.plus(self.cfg.delivered_deadline(to))
                        }
                        DeadlineKind::Acknowledged => {
                            m.ack_deadline = self.cfg.acknowledged_deadline(to).map(|d| at.plus(d));
                        }
                    }
                }
            }
            Record::ReceiptReceived(r) => {
                self.outbox
                    .apply_receipt(&r, false, &self.cfg, &mut self.keys, &mut self.gate)
                    .map_err(|e| inconsistent(&e.to_string()))?;
            }
            Record::RecvSession { id, setup } => {
                self.keys
                    .restore_recv_session(&self.local, &self.partner, id, &setup)
                    .map_err(|e| e.unwrap_or_else(|| inconsistent("session for unknown epoch")))?;
            }
            Record::Received {
                delivery,
                envelope,
                head: _,
            } => {
                let cx = cx!(self);
                self.inbound
                    .restore_received(&delivery, &envelope, &cx)
                    .map_err(inconsistent)?;
            }
            Record::OperatorAck { id, receipt } => {
                let cx = cx!(self);
                self.inbound
                    .restore_ack(&id, receipt, &cx)
                    .map_err(inconsistent)?;
            }
            Record::PartnerEscalated { .. } => {}
        }
        Ok(())
    }
}
