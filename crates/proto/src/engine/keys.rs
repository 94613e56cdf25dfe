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

#[derive(Debug)]
pub(super) struct SendSessionState {
    pub(super) session: SendSession,
    pub(super) epoch: u32,
}

#[derive(Debug, Default)]
pub(super) struct Keys {
    sealing: BTreeMap<u32, SealingKey>,
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
    /// Epoch for the next sealing key.
    pub(super) fn next_epoch(&self) -> u32 {
        self.sealing.keys().next_back().map_or(1, |e| e + 1)
    }

    pub(super) fn has_sealing_key(&self) -> bool {
        !self.sealing.is_empty()
    }

    /// Installs our sealing key for `epoch` and signs its announcement.
    pub(super) fn install_sealing_key(
        &mut self,
        local: &Local,
        epoch: u32,
        key: SealingKey,
        expires_at: Time,
    ) {
        let ann = Announcement {
            endpoint: local.id.clone(),
            identity: local.key.public(),
            epoch,
            suite: SUITE_XWING_CHACHA20_ED25519,
            sealing_key: key.public_bytes(),
            expires_at,
        };
        self.own_announcement = Some(Signed::sign(ann, &local.key));
        self.sealing.insert(epoch, key);
    }

    pub(super) fn own_announcement(&self) -> Option<&Signed<Announcement>> {
        self.own_announcement.as_ref()
    }

    /// Checks a signed announcement from the partner (identity already matched); returns
    /// whether it is new.
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
            if a.body.epoch < current.body.epoch || current == a {
                return Ok(false);
            }
            if a.body.epoch == current.body.epoch {
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
