//! Keys and sessions: our sealing keys by epoch with their signed announcement, the partner's
//! announcement, and the HPKE sessions in each direction.
//!
//! It does not seal or open messages (the outbox and the inbound side do, with the sessions it
//! hands out) and never decides when to announce: the facade asks it for a session and it hands
//! one back (establishing and persisting a new
//! send session when the partner's epoch changed). Receive sessions opened from a setup that no
//! verified message has vouched for yet stay in memory only, at most
//! [`MAX_UNVERIFIED_SESSIONS`] of them, because anyone (the relay included) can encapsulate to
//! our public sealing key.
//!
//! Our sealing keys rotate (see [`EngineConfig::key_rotation`](super::EngineConfig)); the
//! newest [`MAX_SEALING_KEYS`] stay so that messages sealed to a superseded key before the
//! partner heard of its successor still open. Epochs come from the clock (never below the last
//! one plus one), so a node that lost its store announces an epoch its partner takes as newer.
//! Every announcement also names our incarnation (where our lanes start) and the partner
//! incarnation it was started for.
//!
//! Main type: [`Keys`]; [`SendSessionState`] pairs a send session with its epoch.
//!
//! Invariant: every send session and every vouched receive session has a record emitted before
//! it is used, and every unverified receive session is also in `unverified_sessions`.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, VecDeque};

use rand_core::CryptoRng;

use super::{DurabilityGate, Local, Partner, Record, RestoreError};
use crate::crypto::{
    RecvSession, SUITE_XWING_CHACHA20_ED25519, SealingKey, SendSession, SessionId,
};
use crate::envelope::{Announcement, SessionSetup, Signed, VerifyError};
use crate::types::{Channel, EndpointId, MessageId, Precedence, Seq, Time};

/// Sessions kept on trust before one of their messages verifies.
pub(super) const MAX_UNVERIFIED_SESSIONS: usize = 16;
/// Sealing keys kept, newest first; older ones are dropped (zeroized with the key). With the
/// default daily rotation that is a week of messages in flight to a superseded key.
pub(super) const MAX_SEALING_KEYS: usize = 8;

/// Where our lanes start and which partner incarnation they were started for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Incarnation {
    /// Our lanes' sequence numbers start after this (the start time, in microseconds).
    pub(super) base: u64,
    /// The partner's incarnation this one was started for; `0`: started from nothing.
    pub(super) peer: u64,
}

#[derive(Debug)]
pub(super) struct SendSessionState {
    pub(super) session: SendSession,
    pub(super) epoch: u32,
}

#[derive(Debug, Default)]
pub(super) struct Keys {
    sealing: BTreeMap<u32, SealingKey>,
    /// When our newest sealing key was made, and the expiry it is announced with.
    sealing_since: Time,
    sealing_expires: Time,
    pub(super) incarnation: Incarnation,
    /// The partner's sealing-key epoch whose expiry was already raised as an alarm.
    expired_alarmed: Option<u32>,
    own_announcement: Option<Signed<Announcement>>,
    pub(super) partner_announcement: Option<Signed<Announcement>>,
    send_sessions: BTreeMap<Channel, SendSessionState>,
    /// Setups of our send sessions; `true` once the partner confirmed it holds the session.
    session_setups: BTreeMap<SessionId, (SessionSetup, bool)>,
    pub(super) recv_sessions: BTreeMap<SessionId, RecvSession>,
    /// Sessions opened from a setup but not yet vouched for by a signed chain head; neither
    /// persisted nor kept beyond [`MAX_UNVERIFIED_SESSIONS`] until a message from them is
    /// verified and delivered.
    pub(super) unverified_sessions: VecDeque<(SessionId, SessionSetup)>,
}

impl Keys {
    /// Epoch for the next sealing key: the clock's seconds, but never below the last epoch plus
    /// one, so epochs grow across restarts and across a lost store.
    pub(super) fn next_epoch(&self, now: Time) -> u32 {
        let from_clock = u32::try_from(now.0 / 1_000_000).unwrap_or(u32::MAX);
        let after_last = self
            .sealing
            .keys()
            .next_back()
            .map_or(1, |e| e.saturating_add(1));
        from_clock.max(after_last)
    }

    /// When our current sealing key is due for rotation.
    pub(super) fn rotation_due(&self, rotation: std::time::Duration) -> Option<Time> {
        self.has_sealing_key()
            .then(|| self.sealing_since.plus(rotation))
    }

    /// Returns the partner's current epoch and expiry if its key expired before `now` and
    /// that was not reported yet (reported once per epoch).
    pub(super) fn partner_key_expired(&mut self, now: Time) -> Option<(u32, Time)> {
        let a = &self.partner_announcement.as_ref()?.body;
        if now <= a.expires_at || self.expired_alarmed == Some(a.epoch) {
            return None;
        }
        self.expired_alarmed = Some(a.epoch);
        Some((a.epoch, a.expires_at))
    }

    pub(super) fn has_sealing_key(&self) -> bool {
        !self.sealing.is_empty()
    }

    /// Installs our sealing key for `epoch` (made at `since`) and signs its announcement.
    /// Keys beyond the newest [`MAX_SEALING_KEYS`] are dropped.
    pub(super) fn install_sealing_key(
        &mut self,
        local: &Local,
        epoch: u32,
        key: SealingKey,
        since: Time,
        expires_at: Time,
    ) {
        self.sealing.insert(epoch, key);
        while self.sealing.len() > MAX_SEALING_KEYS {
            self.sealing.pop_first();
        }
        self.sealing_since = since;
        self.sealing_expires = expires_at;
        self.sign_announcement(local);
    }

    /// Signs the announcement of our newest key with the current incarnation.
    pub(super) fn sign_announcement(&mut self, local: &Local) {
        let Some((epoch, key)) = self.sealing.last_key_value() else {
            return;
        };
        let ann = Announcement {
            endpoint: local.id.clone(),
            identity: local.key.public(),
            epoch: *epoch,
            suite: SUITE_XWING_CHACHA20_ED25519,
            sealing_key: key.public_bytes(),
            expires_at: self.sealing_expires,
            incarnation: self.incarnation.base,
            peer_incarnation: self.incarnation.peer,
        };
        self.own_announcement = Some(Signed::sign(ann, &local.key));
    }

    pub(super) fn own_announcement(&self) -> Option<&Signed<Announcement>> {
        self.own_announcement.as_ref()
    }

    /// Checks a signed announcement from the partner (identity already matched); returns
    /// whether it is new. Announcements are ordered by incarnation, then epoch: a partner
    /// restored from nothing starts a higher incarnation whatever epoch its clock gives.
    pub(super) fn check_partner_announcement(
        &self,
        a: &Signed<Announcement>,
        partner: &Partner,
    ) -> Result<bool, VerifyError> {
        a.verify(&partner.key)?;
        if a.body.suite != SUITE_XWING_CHACHA20_ED25519 {
            return Err(VerifyError::UnknownSuite(a.body.suite));
        }
        if let Some(current) = &self.partner_announcement {
            let order = |a: &Announcement| (a.incarnation, a.epoch);
            if order(&a.body) < order(&current.body) || current == a {
                return Ok(false);
            }
            if order(&a.body) == order(&current.body) {
                return Err(VerifyError::Equivocation(MessageId {
                    sender: partner.id.clone(),
                    channel: Channel::default(),
                    precedence: Precedence::Flash,
                    seq: Seq(0),
                }));
            }
        }
        Ok(true)
    }

    /// The partner's new epoch: later messages go in new sessions.
    pub(super) fn set_partner_announcement(&mut self, a: Signed<Announcement>) {
        self.partner_announcement = Some(a);
        self.send_sessions.clear();
    }

    /// The send session for `channel` at the partner's current epoch, established (and its
    /// record emitted) if needed. `Ok(None)`: the partner's key is not known yet.
    pub(super) fn send_session<R: CryptoRng>(
        &mut self,
        channel: &Channel,
        rng: &mut R,
        local: &Local,
        partner: &Partner,
        gate: &mut DurabilityGate,
    ) -> Result<Option<&SendSessionState>, String> {
        let Some(ann) = &self.partner_announcement else {
            return Ok(None);
        };
        let epoch = ann.body.epoch;
        if self
            .send_sessions
            .get(channel)
            .is_none_or(|s| s.epoch != epoch)
        {
            let info = session_info(&local.id, &partner.id, epoch);
            let (session, enc) = SendSession::establish(rng, &ann.body.sealing_key, &info)
                .map_err(|e| e.to_string())?;
            let setup = SessionSetup {
                epoch,
                encapsulated: enc,
            };
            gate.persist(Record::SendSession {
                id: session.id(),
                setup: setup.clone(),
            });
            self.session_setups.insert(session.id(), (setup, false));
            self.send_sessions
                .insert(channel.clone(), SendSessionState { session, epoch });
        }
        Ok(self.send_sessions.get(channel))
    }

    /// The setup to send along with an envelope of `session`, until the partner confirms it.
    pub(super) fn setup_to_offer(&self, session: &SessionId) -> Option<SessionSetup> {
        self.session_setups
            .get(session)
            .filter(|(_, confirmed)| !confirmed)
            .map(|(s, _)| s.clone())
    }

    /// Marks a send session as held by the partner (`true`) or to be offered again (`false`).
    pub(super) fn set_setup_confirmed(&mut self, session: &SessionId, confirmed: bool) {
        if let Some(s) = self.session_setups.get_mut(session) {
            s.1 = confirmed;
        }
    }

    /// Restores a send session's setup (the session itself is re-established on next use).
    pub(super) fn restore_send_setup(&mut self, id: SessionId, setup: SessionSetup) {
        self.session_setups.insert(id, (setup, false));
    }

    /// The receive session `id`, opened from `setup` if new.
    pub(super) fn open_session(
        &mut self,
        local: &Local,
        partner: &Partner,
        id: SessionId,
        epoch: u32,
        setup: Option<&SessionSetup>,
    ) -> Result<&RecvSession, VerifyError> {
        let Some(key) = self.sealing.get(&epoch) else {
            return Err(VerifyError::StaleEpoch { epoch });
        };
        if let Entry::Vacant(slot) = self.recv_sessions.entry(id) {
            let Some(setup) = setup else {
                return Err(VerifyError::Malformed("unknown session and no setup"));
            };
            if setup.epoch != epoch || SessionId::of_encapsulated(&setup.encapsulated) != id {
                return Err(VerifyError::Malformed(
                    "session setup does not match header",
                ));
            }
            let info = session_info(&partner.id, &local.id, epoch);
            let session = RecvSession::accept(key, &setup.encapsulated, &info)
                .map_err(|_| VerifyError::DecryptFailed)?;
            slot.insert(session);
            self.unverified_sessions.push_back((id, setup.clone()));
            if self.unverified_sessions.len() > MAX_UNVERIFIED_SESSIONS {
                if let Some((old, _)) = self.unverified_sessions.pop_front() {
                    self.recv_sessions.remove(&old);
                }
            }
        }
        self.recv_sessions
            .get(&id)
            .ok_or(VerifyError::Malformed("session"))
    }

    /// A verified message vouches for its session: keep it across restarts from now on.
    pub(super) fn vouch(&mut self, session: SessionId, gate: &mut DurabilityGate) {
        if let Some(i) = self
            .unverified_sessions
            .iter()
            .position(|(s, _)| *s == session)
        {
            if let Some((id, setup)) = self.unverified_sessions.remove(i) {
                gate.persist(Record::RecvSession { id, setup });
            }
        }
    }

    /// Restores a vouched receive session. `Err(None)`: its epoch is unknown.
    pub(super) fn restore_recv_session(
        &mut self,
        local: &Local,
        partner: &Partner,
        id: SessionId,
        setup: &SessionSetup,
    ) -> Result<(), Option<RestoreError>> {
        let key = self.sealing.get(&setup.epoch).ok_or(None)?;
        let info = session_info(&partner.id, &local.id, setup.epoch);
        let session = RecvSession::accept(key, &setup.encapsulated, &info)
            .map_err(|e| Some(RestoreError::Key(e.to_string())))?;
        self.recv_sessions.insert(id, session);
        Ok(())
    }
}

/// HPKE `info` for a session: binds direction and epoch. Each channel gets its own session;
/// the channel itself is bound into every message through the header (AEAD associated data).
fn session_info(sender: &EndpointId, recipient: &EndpointId, epoch: u32) -> Vec<u8> {
    let mut info = b"hotline/v1 session\0".to_vec();
    info.extend_from_slice(sender.as_str().as_bytes());
    info.push(0);
    info.extend_from_slice(recipient.as_str().as_bytes());
    info.push(0);
    info.extend_from_slice(&epoch.to_be_bytes());
    info
}
