//! Per-hotline delivery engine.
//!
//! Turns frames, operator commands and the current time into actions for the caller: frames to
//! send, records to persist, messages to deliver, progress to report, escalations and alarms to
//! raise. It never touches a socket, a file or the clock, so a test can replay any behaviour in
//! this module on virtual time.
//!
//! One [`Engine`] serves one local endpoint and one partner, over any number of channels.
//!
//! Invariant: per channel and direction, each message is delivered once, and never ahead of a
//! same-or-higher precedence message sent before it; nothing is delivered, receipted or sent
//! before the record that makes it durable has been confirmed by [`Engine::handle_persisted`].

//!
//! The [`Engine`] facade routes each input to the sub-state that owns it:
//!
//! - `outbox`: the send side (lanes, outbox, send queue, retransmission, message deadlines);
//! - `inbound`: the receive side (buffer, chain verification, release, receipts, inbox);
//! - `keys`: sealing keys, announcements, and the HPKE sessions in each direction;
//! - `link`: relay connection, partner presence, link tests, degraded timing;
//! - `timer`: the one table of message timers;
//! - `gate`: the ordered output queue and the actions held until their write is durable;
//! - `frames`: one handler per decoded frame kind, checking addressing and signatures;
//! - `deadlines`: what a message timer does when it fires (retransmit, escalate, re-alert);
//! - `incarnation`: where each side's sequences start, and re-pairing after a store loss;
//! - `clock`: which partner times are shown as fact, and the clock-skew alarm;
//! - `alarms`: alarms coalesced per kind and counted, details capped;
//! - `restore`: rebuilding from records; `types`: the public data types.
//!
//! Every input and command ends by framing whatever became sendable, so
//! [`Engine::poll_action`] only pops the queue.
//!
//! The facade runs a little past 600 lines because every public input and command is one short
//! routing method here (their logic lives in the sub-states); splitting the facade would split
//! the engine's one public surface.

// Builds the receive side's view of the engine from disjoint fields, so the sub-state can be
// borrowed mutably beside it.
macro_rules! cx {
    ($engine:ident) => {
        Cx {
            now: $engine.now,
            cfg: &$engine.cfg,
            local: &$engine.local,
            partner: &$engine.partner,
            keys: &mut $engine.keys,
            gate: &mut $engine.gate,
        }
    };
}

mod accept_time;
mod alarms;
mod clock;
mod config;
mod deadlines;
mod frames;
mod gate;
mod inbound;
mod incarnation;
mod keys;
mod link;
mod outbox;
mod records;
mod restore;
mod send_queue;
mod timer;
mod types;

use std::collections::VecDeque;

use rand_core::CryptoRng;

pub use config::{ConfigError, EngineConfig};
pub use records::{CommitOrder, Record};
pub use types::{
    AckError, AckLevel, Action, Alarm, AlarmKind, DeadlineKind, Delivery, Escalation, LaneDepth,
    LinkState, Local, MAX_ALARM_DETAIL, OutboxEntry, Outgoing, Partner, Report, RestoreError,
    Status, SubmitError, WriteId,
};

use crate::crypto::{Digest, SealingKey};
use crate::envelope::{Announcement, Envelope, Signed, VerifyError};
use crate::types::{Lane, MessageId, Precedence, Time};
use crate::wire::{self, Frame, MAX_BODY_LEN};
use alarms::Alarms;
use gate::DurabilityGate;
use inbound::{Cx, Inbound};
use keys::Keys;
use link::Link;
use outbox::{OutMsg, OutState, Outbox, TimerKind};

/// The channel engine for one hotline (local endpoint ↔ partner).
///
/// Contract, as in `quinn-proto`: after any `handle_*` call or command, drain
/// [`poll_action`](Self::poll_action) until `None`, then re-arm a timer from
/// [`poll_timeout`](Self::poll_timeout). Time never goes backwards (an earlier `now` is treated
/// as the latest seen); an early [`handle_timeout`](Self::handle_timeout) does nothing.
/// Persist records in the order they are emitted; [`handle_persisted`](Self::handle_persisted)
/// confirms that write and every earlier one.
#[derive(Debug)]
pub struct Engine<R> {
    cfg: EngineConfig,
    local: Local,
    partner: Partner,
    rng: R,
    now: Time,
    stopped: bool,
    keys: Keys,
    outbox: Outbox,
    inbound: Inbound,
    link: Link,
    gate: DurabilityGate,
    alarms: Alarms,
    /// Envelopes that arrived before the partner's first announcement.
    early_envelopes: VecDeque<wire::EnvelopeFrame>,
}

impl<R: CryptoRng> Engine<R> {
    /// A brand-new engine: generates the first sealing key (emitted as a `Persist` record).
    /// Its lanes start after `now` in microseconds (its incarnation), so a node that lost its
    /// store never reuses a message id.
    pub fn new(cfg: EngineConfig, local: Local, partner: Partner, rng: R, now: Time) -> Self {
        let mut engine = Self::empty(cfg, local, partner, rng, now);
        engine.start_incarnation(0);
        engine.rotate_sealing_key(now);
        engine
    }

    fn empty(cfg: EngineConfig, local: Local, partner: Partner, rng: R, now: Time) -> Self {
        Self {
            cfg,
            local,
            partner,
            rng,
            now,
            stopped: false,
            keys: Keys::default(),
            outbox: Outbox::new(),
            inbound: Inbound::default(),
            link: Link::new(now),
            gate: DurabilityGate::default(),
            alarms: Alarms::default(),
            early_envelopes: VecDeque::new(),
        }
    }

    // ----- commands ------------------------------------------------------------------------

    /// Queues an operator's message. Returns its id at once; it is in the outbox durably when
    /// [`AckLevel::Stored`] is reported for it.
    pub fn submit(&mut self, now: Time, out: Outgoing) -> Result<MessageId, SubmitError> {
        self.tick(now);
        if self.stopped {
            return Err(SubmitError::Stopped(out));
        }
        if out.body.len() > MAX_BODY_LEN {
            return Err(SubmitError::TooLarge(out));
        }
        if self.outbox.msgs.len() >= self.cfg.max_outbox() {
            return Err(SubmitError::Backpressure(out));
        }
        let Outgoing {
            channel,
            precedence,
            body,
        } = out;
        let (id, after) = self.outbox.next_id(&self.local.id, channel, precedence);
        let sent_at = self.now;
        let msg = OutMsg::new(
            &self.cfg,
            precedence,
            sent_at,
            after,
            OutState::AwaitingKey { body },
        );
        let deadline = msg.delivered_deadline;
        self.outbox.msgs.insert(id.clone(), msg);
        self.outbox
            .timers
            .set((TimerKind::Delivered, id.clone()), deadline);
        let sealed = if self.outbox.awaiting_key.is_empty() {
            self.seal(&id)
        } else {
            None
        };
        let is_sealed = sealed.is_some();
        let (body, envelope) = match sealed {
            Some(envelope) => (None, Some(envelope)),
            None => {
                let body = match self.outbox.msgs.get(&id).map(|m| &m.state) {
                    Some(OutState::AwaitingKey { body }) => body.clone(),
                    _ => Vec::new(),
                };
                self.outbox.awaiting_key.insert((sent_at, id.clone()));
                (Some(body), None)
            }
        };
        let envelope_hash = self.outbox.sealed_hash(&id);
        let write = self.gate.persist_envelope(
            Record::Outgoing {
                id: id.clone(),
                after,
                sent_at,
                body,
                envelope,
            },
            envelope_hash,
        );
        if let Some(m) = self.outbox.msgs.get_mut(&id) {
            m.write = write;
        }
        let stored = Action::Report(Report {
            id: id.clone(),
            level: AckLevel::Stored,
            at: sent_at,
        });
        if id.precedence == Precedence::Flash {
            self.gate.after_ahead(write, stored);
        } else {
            self.gate.after(write, stored);
        }
        if is_sealed {
            self.outbox.send_queue.insert(id.clone(), write);
        }
        self.finish();
        Ok(id)
    }

    /// Records an operator's acknowledgement of a delivered message and, once that is durable,
    /// sends the signed receipt. Returns the write that makes the acknowledgement durable.
    pub fn acknowledge(&mut self, now: Time, id: &MessageId) -> Result<WriteId, AckError> {
        self.tick(now);
        if self.stopped {
            return Err(AckError::Stopped);
        }
        let write = self.inbound.acknowledge(id, &mut cx!(self));
        self.finish();
        write
    }

    /// [`Self::acknowledge`] for a message whose state the engine forgot
    /// ([`AckError::Forgotten`]), given the envelope of its stored `Received` record.
    pub fn acknowledge_stored(
        &mut self,
        now: Time,
        envelope: &Envelope,
    ) -> Result<WriteId, AckError> {
        self.tick(now);
        if self.stopped {
            return Err(AckError::Stopped);
        }
        let write = self.inbound.acknowledge_stored(envelope, &mut cx!(self));
        self.finish();
        write
    }

    /// Starts a new sealing-key epoch and announces it; returns the epoch. Runs on the
    /// [`EngineConfig::key_rotation`] schedule and on demand. The newest few older keys stay so
    /// that messages sealed to them still open.
    pub fn rotate_sealing_key(&mut self, now: Time) -> u32 {
        self.tick(now);
        let epoch = self.keys.next_epoch(self.now);
        let key = SealingKey::generate(&mut self.rng);
        let expires_at = self.now.plus(self.cfg.key_rotation() * 2);
        self.gate.persist(Record::SealingKey {
            epoch,
            secret: key.secret_bytes(),
            expires_at,
        });
        self.keys
            .install_sealing_key(&self.local, epoch, key, self.now, expires_at);
        if self.link.connected {
            self.send_announcement();
        }
        self.finish();
        epoch
    }

    /// Tells the engine the latest head of the local audit log, carried in link tests.
    pub fn set_audit_head(&mut self, len: u64, head: Digest) {
        self.link.set_audit_head(len, head);
    }

    // ----- inputs ---------------------------------------------------------------------------

    /// The connection to the relay is up: announce our key, re-offer everything undelivered,
    /// resend our latest receipts.
    pub fn handle_connected(&mut self, now: Time) {
        self.tick(now);
        let overdue = self.keys.rotation_due(self.cfg.key_rotation());
        if overdue.is_some_and(|at| at <= self.now) {
            // Rotation waits while nobody can hear of the new key; catch up before announcing.
            self.rotate_sealing_key(self.now);
        }
        self.link.connected(self.now);
        self.send_announcement();
        self.outbox.reoffer_all(&self.cfg);
        self.inbound.resend_receipts(&mut self.gate);
        self.link.update(self.now, &self.cfg, &mut self.gate);
        self.finish();
    }

    /// The connection to the relay is gone.
    pub fn handle_disconnected(&mut self, now: Time) {
        self.tick(now);
        self.link.disconnected();
        self.outbox.disconnected();
        self.link.update(self.now, &self.cfg, &mut self.gate);
        self.finish();
    }

    /// A whole frame (length prefix included) arrived from the relay. Errors name what was
    /// wrong; security failures are also raised as [`Action::Alarm`].
    pub fn handle_frame(&mut self, now: Time, bytes: &[u8]) -> Result<(), VerifyError> {
        self.tick(now);
        let refused = match wire::decode_frame(bytes) {
            Ok((frame, used)) if used == bytes.len() => return self.handle_decoded(frame),
            Ok(_) => VerifyError::Malformed("trailing bytes after frame"),
            Err(wire::DecodeError::UnknownVersion(v)) => VerifyError::UnknownVersion(v),
            Err(wire::DecodeError::UnknownSuite(s)) => VerifyError::UnknownSuite(s),
            Err(_) => VerifyError::Malformed("frame does not decode"),
        };
        self.security_alarm(&refused, "a frame from the relay");
        Err(refused)
    }

    /// [`handle_decoded`](Self::handle_decoded) at wall-clock time `now`.
    pub fn handle_decoded_at(&mut self, now: Time, frame: Frame) -> Result<(), VerifyError> {
        self.tick(now);
        self.handle_decoded(frame)
    }

    /// Like [`handle_frame`](Self::handle_frame) for a frame the caller already decoded.
    pub fn handle_decoded(&mut self, frame: Frame) -> Result<(), VerifyError> {
        let what = frame_name(&frame);
        let result = match frame {
            Frame::Hello(_) => Ok(()),
            Frame::Envelope(f) => self.on_envelope(f),
            Frame::Accepted(a) => {
                if a.id.sender == self.local.id {
                    self.outbox.on_accepted(self.now, a, &mut self.gate);
                }
                Ok(())
            }
            Frame::Receipt(r) => self.on_receipt(r),
            Frame::LinkTest(t) => self.on_link_test(t),
            Frame::Announcement(a) => self.on_announcement(a),
            Frame::Escalation(e) => self.on_escalation(e),
            Frame::Refused(r) => {
                self.on_refused(r);
                Ok(())
            }
            Frame::Presence(p) => {
                self.on_presence(p);
                Ok(())
            }
        };
        if let Err(e) = &result {
            self.security_alarm(e, what);
        }
        self.finish();
        result
    }

    /// Confirms that write `id` and every earlier one are durable; releases what waited on them
    /// and sends the messages whose records they were.
    pub fn handle_persisted(&mut self, now: Time, id: WriteId) {
        self.tick(now);
        self.gate.confirm(id);
        self.finish();
    }

    /// Confirms that these writes, all [`CommitOrder::Ahead`] records, are durable although
    /// earlier writes may not be yet: releases what waits on them alone (a flash message's
    /// envelope, delivery, receipt and `stored` report).
    pub fn handle_persisted_ahead(&mut self, now: Time, ids: &[WriteId]) {
        self.tick(now);
        self.gate.confirm_ahead(ids);
        self.finish();
    }

    /// A write failed. Durability can no longer be promised: the engine stops accepting work
    /// and raises an alarm; the caller should exit and restart from the store.
    pub fn handle_persist_failed(&mut self, now: Time, id: WriteId, detail: &str) {
        self.tick(now);
        self.stopped = true;
        self.gate.drop_held();
        self.outbox.send_queue.clear();
        self.alarm(
            AlarmKind::StoreFailed,
            None,
            format!("write {} failed: {detail}", id.0),
        );
    }

    /// Time passed: retransmit, escalate, test the link.
    pub fn handle_timeout(&mut self, now: Time) {
        self.tick(now);
        self.alarms.flush(self.now, &mut self.gate);
        if self.stopped {
            return;
        }
        while let Some((kind, id)) = self.outbox.timers.pop_expired(self.now) {
            self.fire(kind, &id);
        }
        if self.rotation_due().is_some_and(|at| at <= self.now) {
            self.rotate_sealing_key(self.now);
        }
        if let Some((epoch, expired)) = self.keys.partner_key_expired(self.now) {
            self.alarm(
                AlarmKind::PartnerKeyExpired,
                None,
                format!(
                    "the partner's sealing key (epoch {epoch}) expired at {expired:?} and no newer one arrived; still sealing to it"
                ),
            );
        }
        if let Some(t) = self
            .link
            .due_test(self.now, &self.cfg, &self.local, &self.partner)
        {
            self.gate.push(send_control(&Frame::LinkTest(t)));
        }
        self.link.update(self.now, &self.cfg, &mut self.gate);
        self.finish();
    }

    // ----- outputs --------------------------------------------------------------------------

    /// The next thing to do, if any.
    #[must_use]
    pub fn poll_action(&mut self) -> Option<Action> {
        self.gate.pop()
    }

    /// When to call [`handle_timeout`](Self::handle_timeout) next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Time> {
        let timer = self.outbox.timers.next();
        let link = self.link.poll_timeout(&self.cfg);
        let rotation = self.rotation_due();
        let alarms = self.alarms.poll_timeout();
        [timer, link, rotation, alarms].into_iter().flatten().min()
    }

    /// When the last fresh signed link test from the partner arrived (cheaper than
    /// [`Engine::status`], for a shell that watches which relay carries them).
    pub fn partner_last_heard(&self) -> Option<Time> {
        self.link.last_heard
    }

    /// The configuration this engine runs with.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Takes the `delivered` and `acknowledged` deadlines of `from` (a configuration reload)
    /// and nothing else. They apply to deadlines set from now on (a new message, an
    /// escalation); the deadlines of messages already in flight stay as they were set.
    pub fn set_deadlines(&mut self, from: &EngineConfig) {
        self.cfg.take_deadlines(from);
    }

    /// A snapshot for status displays.
    pub fn status(&self) -> Status {
        let mut lanes = [LaneDepth::default(); 4];
        self.outbox.count(&mut lanes);
        self.inbound.count(&mut lanes);
        Status {
            link: self.link.state,
            link_since: self.link.since,
            connected: self.link.connected,
            partner_online: self.link.partner_online,
            partner_last_heard: self.link.last_heard,
            partner_epoch: self
                .keys
                .partner_announcement
                .as_ref()
                .map(|a| a.body.epoch),
            own_epoch: self.keys.own_announcement().map(|a| a.body.epoch),
            lanes,
            pending_operator_acks: self.inbound.pending_acks(),
            open_escalations: self
                .outbox
                .msgs
                .iter()
                .filter(|(_, m)| m.escalations > 0)
                .map(|(id, m)| (id.clone(), m.transport, m.escalations))
                .collect(),
            alarms: self.alarms.recent(),
            held_alarms: self.alarms.held(),
            partner_audit_head: self.link.partner_audit_head,
        }
    }

    /// Outgoing messages still tracked (not yet both delivered and, where expected,
    /// acknowledged), in id order.
    pub fn outbox(&self) -> impl Iterator<Item = OutboxEntry> + '_ {
        self.outbox.msgs.iter().map(|(id, m)| m.entry(id))
    }

    /// Our current signed sealing-key announcement.
    pub fn announcement(&self) -> Option<&Signed<Announcement>> {
        self.keys.own_announcement()
    }

    // ----- internals: routing ---------------------------------------------------------------

    fn tick(&mut self, now: Time) {
        self.now = self.now.max(now);
    }

    /// Frames what became sendable; every input and command ends here.
    fn finish(&mut self) {
        if self.link.connected {
            self.outbox
                .flush(self.now, &self.cfg, &self.local, &self.keys, &mut self.gate);
        }
    }

    /// Seals message `id` if the partner's key is known; returns the envelope.
    fn seal(&mut self, id: &MessageId) -> Option<Envelope> {
        let session = match self.keys.send_session(
            &id.channel,
            &mut self.rng,
            &self.local,
            &self.partner,
            &mut self.gate,
        ) {
            Ok(session) => session?,
            Err(detail) => {
                self.alarm(
                    AlarmKind::Security(VerifyError::Malformed("partner sealing key")),
                    None,
                    detail,
                );
                return None;
            }
        };
        self.outbox.seal(id, session, &self.local, &self.partner)
    }

    /// Seals messages that waited for the partner's key, in submission order.
    fn seal_awaiting(&mut self) {
        if self.keys.partner_announcement.is_none() {
            return;
        }
        while let Some((at, id)) = self.outbox.awaiting_key.first().cloned() {
            let Some(envelope) = self.seal(&id) else {
                return;
            };
            self.outbox.awaiting_key.remove(&(at, id.clone()));
            let envelope_hash = self.outbox.sealed_hash(&id);
            let write = self.gate.persist_envelope(
                Record::Sealed {
                    id: id.clone(),
                    envelope,
                },
                envelope_hash,
            );
            if let Some(m) = self.outbox.msgs.get_mut(&id) {
                m.write = write;
            }
            self.outbox.send_queue.insert(id, write);
        }
    }

    // ----- internals: shared ----------------------------------------------------------------

    fn send_announcement(&mut self) {
        if let Some(a) = self.keys.own_announcement() {
            // The sealing key must be durable before anyone seals to it.
            self.gate
                .after_latest_write(send_control(&Frame::Announcement(a.clone())));
        }
    }

    /// When our sealing key is next due for rotation. Rotation pauses while we are not connected
    /// to the relay: a key nobody can hear of protects nothing, and rotating through the kept
    /// keys while the partner still seals to an old one would drop the key it seals to.
    fn rotation_due(&self) -> Option<Time> {
        if !self.link.connected {
            return None;
        }
        self.keys.rotation_due(self.cfg.key_rotation())
    }

    /// Raises a frame's verification failure. A malformed frame counts too: an honest relay
    /// forwards bytes unchanged over an authenticated stream, so one that does not decode is
    /// the relay's (or a broken partner's) doing; coalescing keeps a flood to one alarm a
    /// window. The lane limit raises its own alarm.
    ///
    /// The kind already names the error, so the detail says what was refused (`what`, e.g.
    /// "a link test"), not the error again: an alarm reads once.
    fn security_alarm(&mut self, e: &VerifyError, what: &str) {
        if *e != VerifyError::Malformed(inbound::LANE_LIMIT) {
            self.alarm(
                AlarmKind::Security(e.clone()),
                None,
                format!("{what} was refused"),
            );
        }
    }

    /// Counts an alarm; emitted unless one of its kind was within the window (see `alarms`).
    fn alarm(&mut self, kind: AlarmKind, message: Option<MessageId>, detail: String) {
        self.alarms
            .raise(self.now, kind, message, detail, &mut self.gate);
    }
}

/// What a frame is, for a security alarm's detail.
fn frame_name(frame: &Frame) -> &'static str {
    match frame {
        Frame::Hello(_) => "a hello",
        Frame::Envelope(_) => "an envelope",
        Frame::Accepted(_) => "an accepted reply",
        Frame::Receipt(_) => "a receipt",
        Frame::LinkTest(_) => "a link test",
        Frame::Announcement(_) => "a key announcement",
        Frame::Escalation(_) => "an escalation",
        Frame::Refused(_) => "a refusal",
        Frame::Presence(_) => "a presence notice",
    }
}

fn send_control(frame: &Frame) -> Action {
    Action::Send {
        lane: Lane::Control,
        frame: wire::encode_frame(frame),
    }
}

#[cfg(test)]
mod tests;
