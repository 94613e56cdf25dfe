//! The engine loop: the one task that owns the [`Engine`] and the operator-facing state.
//!
//! A biased `select!` takes, in order: store confirmations (they release receipts and
//! deliveries), flash frames (with the partner's receipts and notices about a flash, which the
//! relay link routes there), control frames, urgent operator commands (flash sends and
//! queries), other commands, the lower lanes by precedence, link events, the engine's timer, and
//! the stop signal. Other commands wait while the relay links fall behind
//! ([`EngineLoop::takes_sends`]): taking in sends faster than they leave only moves the node's
//! one thread from delivering to queueing. After each input it drains [`Engine::poll_action`]
//! and re-arms its timer from [`Engine::poll_timeout`], checking the clock rather than trusting
//! the sleep (as quinn's `ConnectionDriver` does).
//!
//! It never blocks: writes go to the store thread, frames to the relay link's writers, answers
//! to the control server's channels. A failed store write stops the loop with
//! [`NodeError::StoreFailed`]; nothing after it is acknowledged.
//!
//! Alarms, the engine's and the shell's own (when the relay closes our connection because
//! another connection uses our identity,
//! [`LinkEventKind::IdentityConflict`](super::relay_link::LinkEventKind::IdentityConflict),
//! status shows [`view::identity_conflict_line`] as the last error and an `identity conflict`
//! alarm is raised), go through the alarm desk (`alarm_desk`): logged, counted into the
//! operator's alarm book, and written with their audit record.
//!
//! Every input kind has its short handler here, so the order in which the loop takes them reads
//! in one place; what it takes in is in `commands`, and the handlers of relay link events are
//! with the relays' state in `relays`.

use std::collections::BTreeMap;
use std::time::Duration;

use hotline_proto::Time;
use hotline_proto::engine::{AckError, AckLevel, Action, Delivery, Engine, Report, WriteId};
use hotline_proto::wire::{self, Frame, Presence};
use hotline_proto::{EndpointId, MessageId};
use rand_chacha::ChaCha20Rng;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};

use super::alarm_desk::AlarmDesk;
use super::commands::{Command, Inputs};
use super::inbox::InboxIndex;
use super::relay_link::RelayFrame;
use super::relays::{LinkSpawner, MAX_HELD_IDS, RelayState};
use super::store_thread::{Persisted, StoreMsg};
use super::{AuditSource, NodeError, RequestError};
use crate::alarms::AlarmBook;
use crate::audit::{self, AuditEvent};
use crate::config::RelayAddress;
use crate::control::{InboxEntry, StatusView};
use crate::time::{format_time, wall_now};
use crate::view;

/// An `inbox --follow` stream: new deliveries, and with `updates` each changed line again.
#[derive(Debug)]
struct InboxFollower {
    entries: mpsc::UnboundedSender<InboxEntry>,
    updates: bool,
}

/// An operator acknowledgement waiting for the write that makes it durable.
#[derive(Debug)]
struct AckWaiter {
    write: WriteId,
    reply: oneshot::Sender<Result<(), RequestError>>,
}

/// The engine and what the shell keeps beside it.
#[derive(Debug)]
pub(super) struct EngineLoop {
    pub(super) engine: Engine<ChaCha20Rng>,
    pub(super) local: EndpointId,
    pub(super) partner: EndpointId,
    pub(super) audit: AuditSource,
    pub(super) writes: mpsc::UnboundedSender<StoreMsg>,
    pub(super) inbox: InboxIndex,
    /// Every configured relay, in configuration order.
    pub(super) relays: Vec<RelayState>,
    /// Starts links to relays a reload adds.
    pub(super) spawner: Option<LinkSpawner>,
    /// The partner's newest fresh link test, as the first relay brought it: an identical copy
    /// from another relay shows that relay carries link tests too.
    newest_link_test: Vec<u8>,
    followers: Vec<InboxFollower>,
    subscribers: BTreeMap<MessageId, Vec<mpsc::UnboundedSender<Report>>>,
    pub(super) last_error: Option<String>,
    /// The operator's alarm book and its followers.
    alarms: AlarmDesk,
    fatal: Option<NodeError>,
    ack_waiters: Vec<AckWaiter>,
    /// Reports seen, to sweep closed subscribers now and then.
    reports: u64,
}

impl EngineLoop {
    pub(super) fn new(
        engine: Engine<ChaCha20Rng>,
        local: EndpointId,
        partner: EndpointId,
        audit: AuditSource,
        writes: mpsc::UnboundedSender<StoreMsg>,
        inbox: InboxIndex,
        relays: &[RelayAddress],
    ) -> Self {
        let now = wall_now();
        Self {
            engine,
            local,
            partner,
            audit,
            writes,
            inbox,
            relays: relays.iter().map(|r| RelayState::new(r, now)).collect(),
            spawner: None,
            newest_link_test: Vec::new(),
            followers: Vec::new(),
            subscribers: BTreeMap::new(),
            last_error: None,
            alarms: AlarmDesk::new(AlarmBook::default()),
            fatal: None,
            ack_waiters: Vec::new(),
            reports: 0,
        }
    }

    /// The alarm book as the store had it (empty until this is called).
    pub(super) fn with_alarm_book(mut self, book: AlarmBook) -> Self {
        self.alarms = AlarmDesk::new(book);
        self
    }

    /// Runs until stopped or until a store write fails.
    pub(super) async fn run(&mut self, inputs: Inputs) -> Result<(), NodeError> {
        let Inputs {
            mut persisted,
            net,
            mut urgent,
            mut normal,
            mut link,
            drained,
            mut reconfigure,
            mut stop,
        } = inputs;
        let [
            mut control,
            mut flash,
            mut immediate,
            mut priority,
            mut routine,
        ] = net;
        self.drain();
        loop {
            let deadline = self.engine.poll_timeout();
            let sleep_for = deadline.map_or(Duration::from_secs(3600), |d| d.since(wall_now()));
            tokio::select! {
                biased;
                // Confirmations first: they release receipts and deliveries.
                Some(p) = persisted.recv() => self.persisted(p),
                // Flash envelopes, and the partner's receipts and notices about a flash, before
                // the relay's other control frames (thousands of replies under a flood).
                Some(f) = flash.recv() => self.frame(&f),
                Some(f) = control.recv() => self.control_frame(&f),
                // Flash sends and operator queries never wait behind queued routine sends.
                Some(c) = urgent.recv() => self.command(c),
                Some(c) = normal.recv(), if self.takes_sends() => self.command(c),
                () = drained.notified(), if !self.takes_sends() => {}
                Some(f) = immediate.recv() => self.frame(&f),
                Some(f) = priority.recv() => self.frame(&f),
                Some(f) = routine.recv() => self.frame(&f),
                Some(ev) = link.recv() => self.link(ev),
                Some(r) = reconfigure.recv() => self.reconfigure(r),
                () = tokio::time::sleep(sleep_for) => {}
                _ = &mut stop => {
                    info!("shutting down");
                    return Ok(());
                }
            }
            let now = wall_now();
            if deadline.is_some_and(|d| d <= now) {
                self.engine.handle_timeout(now);
            }
            self.drain();
            if let Some(e) = self.fatal.take() {
                return Err(e);
            }
        }
    }

    /// Answers the operator acknowledgements whose writes are now durable.
    fn answer_acks(&mut self, durable: impl Fn(WriteId) -> bool) {
        let (done, waiting) = std::mem::take(&mut self.ack_waiters)
            .into_iter()
            .partition(|w| durable(w.write));
        self.ack_waiters = waiting;
        for w in done {
            let _ = w.reply.send(Ok(()));
        }
    }

    fn persisted(&mut self, p: Persisted) {
        match p {
            Persisted::Ok { last, head } => {
                self.engine.set_audit_head(head.0, head.1);
                if let Some(id) = last {
                    self.engine.handle_persisted(wall_now(), id);
                    self.answer_acks(|w| w <= id);
                }
            }
            Persisted::Ahead { writes, head } => {
                self.engine.set_audit_head(head.0, head.1);
                self.engine.handle_persisted_ahead(wall_now(), &writes);
                self.answer_acks(|w| writes.contains(&w));
            }
            Persisted::Failed { last, error } => {
                error!(error = %error, "store write failed; stopping");
                self.engine
                    .handle_persist_failed(wall_now(), last, &error.to_string());
                self.fatal = Some(NodeError::StoreFailed(error));
            }
        }
    }

    /// A frame from one relay's lane stream (envelopes): straight to the engine.
    fn frame(&mut self, f: &RelayFrame) {
        if let Err(e) = self.engine.handle_frame(wall_now(), &f.bytes) {
            warn!(error = %e, relay = f.relay, "frame rejected");
        }
    }

    /// A frame from one relay's control stream, decoded once here. The relay's word on the
    /// partner's presence is kept per relay and the engine hears the sum of them (online if
    /// any live relay says so); an `Accepted` reply counts towards what that relay holds; a
    /// relay that brings the partner's newest fresh link test (first, or as an identical copy)
    /// is noted as carrying link tests.
    fn control_frame(&mut self, f: &RelayFrame) {
        let now = wall_now();
        let frame = match wire::decode_frame(&f.bytes) {
            Ok((frame, used)) if used == f.bytes.len() => frame,
            // The engine names what is wrong with it, and alarms.
            _ => return self.frame(f),
        };
        let link_test = matches!(frame, Frame::LinkTest(_));
        let heard_before = self.engine.partner_last_heard();
        let frame = match frame {
            Frame::Presence(p) if p.endpoint == self.partner => {
                if let Some(relay) = self.relays.get_mut(f.relay) {
                    relay.partner_online = Some(p.online);
                }
                let online = self.partner_online().unwrap_or(p.online);
                Frame::Presence(Presence { online, ..p })
            }
            Frame::Accepted(a) => {
                if let Some(relay) = self.relays.get_mut(f.relay) {
                    if a.id.sender == self.local && relay.holds.len() < MAX_HELD_IDS {
                        relay.holds.insert(a.id.clone());
                    }
                }
                Frame::Accepted(a)
            }
            other => other,
        };
        if let Err(e) = self.engine.handle_decoded_at(now, frame) {
            warn!(error = %e, relay = f.relay, "frame rejected");
        }
        if link_test {
            let fresh = self.engine.partner_last_heard() != heard_before;
            if fresh {
                self.newest_link_test = f.bytes.clone();
            }
            if fresh || f.bytes == self.newest_link_test {
                if let Some(relay) = self.relays.get_mut(f.relay) {
                    relay.link_test_at = Some(now);
                }
            }
        }
    }

    /// Raises the `identity conflict` alarm, unless one was raised recently: then counts.
    pub(super) fn identity_alarm(&mut self, line: &str) {
        if let Some(msg) = self.alarms.identity_conflict(line, wall_now()) {
            self.write(msg);
        }
    }

    fn command(&mut self, c: Command) {
        let now = wall_now();
        match c {
            Command::Send {
                out,
                to,
                events,
                submitted,
            } => {
                if let Some(to) = to.filter(|to| *to != self.partner) {
                    let _ = submitted.send(Err(RequestError::NotPartner {
                        to,
                        local: self.local.clone(),
                        partner: self.partner.clone(),
                    }));
                    return;
                }
                let result = self.engine.submit(now, out);
                if let Ok(id) = &result {
                    self.subscribers.entry(id.clone()).or_default().push(events);
                }
                let _ = submitted.send(result.map_err(RequestError::from));
            }
            Command::Inbox {
                follow,
                updates,
                entries,
                failed,
            } => {
                // Read from the store off the loop; what happens meanwhile waits on `live`.
                let live = follow.then(|| {
                    let (live, rx) = mpsc::unbounded_channel();
                    self.followers.push(InboxFollower {
                        entries: live,
                        updates,
                    });
                    rx
                });
                self.inbox
                    .stream(self.audit.db.clone(), entries, live, failed);
            }
            Command::Ack { id, reply } => match self.acknowledge(now, &id) {
                Ok(write) => {
                    let changed = self.inbox.acknowledged(&id, now);
                    self.changed(changed);
                    // Answered only once the acknowledgement is durable.
                    self.ack_waiters.push(AckWaiter { write, reply });
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Command::Status { reply } => {
                self.prune_holds();
                let _ = reply.send(self.status());
            }
            Command::Sent { reply } => {
                let _ = reply.send(self.engine.outbox().map(|e| view::sent(&e)).collect());
            }
            Command::Rekey { reply } => {
                let epoch = self.engine.rotate_sealing_key(now);
                info!(epoch, "sealing key replaced on request");
                let _ = reply.send(epoch);
            }
            Command::Audit { export, reply } => {
                let source = self.audit.clone();
                tokio::task::spawn_blocking(move || {
                    let result = audit::report(&source.db, &source.own, &source.partner, export);
                    let _ = reply.send(result.map_err(RequestError::from));
                });
            }
            Command::Alarms {
                follow,
                all,
                entries,
            } => self.alarms.list(follow, all, entries),
            Command::ClearAlarm { target, by, reply } => {
                match self.alarms.clear(target, &by, now) {
                    Ok((clearing, msg)) => {
                        self.write(msg);
                        let _ = reply.send(Ok(clearing));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.into()));
                    }
                }
            }
        }
    }

    /// Signs and sends our acknowledgement of `id` again, from its stored envelope (the partner
    /// escalated a message our operator acknowledged after the engine forgot it).
    fn resend_ack(&mut self, id: &MessageId) {
        match self.acknowledge_from_store(wall_now(), id.clone()) {
            Ok(_) => {
                info!(%id, "partner escalated a message acknowledged here: receipt sent again")
            }
            Err(error) => warn!(%id, %error, "could not send our acknowledgement again"),
        }
    }

    /// The engine's acknowledgement of `id`. A message whose engine state was compacted away
    /// is acknowledged from its stored envelope; whether it was acknowledged already is then
    /// the inbox's word.
    fn acknowledge(&mut self, now: Time, id: &MessageId) -> Result<WriteId, RequestError> {
        match self.engine.acknowledge(now, id) {
            Err(AckError::Forgotten(id)) => {
                if self.inbox.is_acknowledged(&id) {
                    return Err(AckError::AlreadyAcknowledged(id).into());
                }
                self.acknowledge_from_store(now, id)
            }
            other => Ok(other?),
        }
    }

    /// Signs our acknowledgement of a message the engine forgot, from its stored envelope.
    fn acknowledge_from_store(
        &mut self,
        now: Time,
        id: MessageId,
    ) -> Result<WriteId, RequestError> {
        let envelope = match self.inbox.stored_envelope(&self.audit.db, &id) {
            Ok(Some(envelope)) => envelope,
            Ok(None) => return Err(AckError::Unknown(id).into()),
            Err(error) => return Err(RequestError::Inbox(error)),
        };
        Ok(self.engine.acknowledge_stored(now, &envelope)?)
    }

    fn drain(&mut self) {
        while let Some(action) = self.engine.poll_action() {
            match action {
                Action::Send { lane, frame } => {
                    // Every live relay gets every frame; the partner keeps the first copy.
                    let mut live = self.relays.iter().filter_map(|r| r.writers.as_ref());
                    if let Some(first) = live.next() {
                        for w in live {
                            w.send(lane, frame.clone());
                        }
                        first.send(lane, frame);
                    }
                }
                Action::Persist {
                    id,
                    record,
                    envelope_hash,
                } => {
                    let key = self.inbox.persisting(&record);
                    self.write(StoreMsg::Record {
                        key,
                        id,
                        record,
                        hash: envelope_hash,
                    });
                }
                Action::Deliver(d) => self.deliver(&d),
                Action::Report(r) => self.report(r),
                Action::Escalate(e) => {
                    warn!(id = %e.id, kind = ?e.kind, escalated_to = %e.escalated_to, count = e.count, "ESCALATION: deadline missed");
                }
                Action::Realert(n) => {
                    if self.inbox.is_acknowledged(&n.message) {
                        // Our operator did acknowledge it, but the receipt did not reach the
                        // partner and the engine no longer holds it (the message settled out
                        // of its history): sign it again from the stored envelope rather than
                        // re-alert an operator who cannot acknowledge twice.
                        self.resend_ack(&n.message);
                        continue;
                    }
                    warn!(id = %n.message, level = %n.level, count = n.count, "RE-ALERT from partner: acknowledge this message");
                    let changed = self.inbox.realerted(&n.message, n.level);
                    self.changed(changed);
                }
                Action::Alarm(a) => {
                    let msg = self.alarms.engine_alarm(a);
                    self.write(msg);
                }
                Action::PartnerAuditHead(t) => {
                    debug!(len = t.body.audit_len, head = %t.body.audit_head, "partner audit head");
                    self.write(StoreMsg::PartnerHead(t));
                }
                Action::Link { state, since } => {
                    self.write(StoreMsg::Event(AuditEvent::LinkState {
                        state: view::link_name(state).into(),
                    }));
                    info!(state = ?state, since = %format_time(since), "link state");
                }
            }
        }
    }

    /// Hands a write to the store thread. If the thread is gone it already reported why (a
    /// failed commit), and the loop is stopping.
    fn write(&self, msg: StoreMsg) {
        let _ = self.writes.send(msg);
    }

    fn deliver(&mut self, d: &Delivery) {
        info!(id = %d.id, relay_transport = %d.relay_transport, "delivered to inbox");
        self.inbox.push(d);
        if !self.followers.is_empty() {
            let mut entry = view::inbox_entry(d);
            // Deliveries leave the engine only once their write is durable: now.
            entry.durable_us = Some(wall_now().0);
            self.followers
                .retain(|f| f.entries.send(entry.clone()).is_ok());
        }
    }

    /// Streams a changed inbox line (the message at store row `row`) to the followers that
    /// asked for updates, reading it back from the store.
    fn changed(&mut self, row: Option<u64>) {
        let Some(row) = row else { return };
        if !self.followers.iter().any(|f| f.updates) {
            return;
        }
        match self.inbox.line(&self.audit.db, row) {
            Ok(Some(entry)) => self
                .followers
                .retain(|f| !f.updates || f.entries.send(entry.clone()).is_ok()),
            Ok(None) => warn!(row, "changed inbox line not in the store"),
            Err(error) => warn!(error = %error, "reading a changed inbox line failed"),
        }
    }

    fn report(&mut self, r: Report) {
        debug!(id = %r.id, level = ?r.level, "ack level");
        if matches!(r.level, AckLevel::Delivered | AckLevel::Lost) {
            for relay in &mut self.relays {
                relay.holds.remove(&r.id);
            }
        }
        self.reports += 1;
        if self.reports % 4096 == 0 {
            // Waiters that stopped listening (e.g. `--wait delivered` on a message nobody
            // will acknowledge) would otherwise stay subscribed forever.
            self.subscribers.retain(|_, subs| {
                subs.retain(|s| !s.is_closed());
                !subs.is_empty()
            });
        }
        // Kept until every listener hung up: a late `accepted` can follow `acknowledged`.
        if let Some(subs) = self.subscribers.get_mut(&r.id) {
            subs.retain(|s| s.send(r.clone()).is_ok());
            if subs.is_empty() {
                self.subscribers.remove(&r.id);
            }
        }
    }

    /// Forgets held ids the engine no longer has undelivered (a late `Accepted` for a message
    /// already delivered, say).
    fn prune_holds(&mut self) {
        let undelivered: std::collections::BTreeSet<MessageId> = self
            .engine
            .outbox()
            .filter(|e| e.delivered.is_none())
            .map(|e| e.id)
            .collect();
        for relay in &mut self.relays {
            relay.holds.retain(|id| undelivered.contains(id));
        }
    }

    fn status(&self) -> StatusView {
        let now = wall_now();
        // As the engine's own `Up`: a fresh test within three intervals.
        let fresh_within = self.engine.config().link_test_interval() * 3;
        view::status(
            &self.engine.status(),
            &view::ShellState {
                local: &self.local,
                partner: &self.partner,
                last_error: self.last_error.as_deref(),
                inbox: self.inbox.len(),
                relays: self
                    .relays
                    .iter()
                    .filter(|r| !r.removed)
                    .map(|r| r.view(now, fresh_within))
                    .collect(),
                redundancy_lost_at: self
                    .relays
                    .iter()
                    .filter(|r| !r.removed)
                    .filter_map(|r| r.stopped_carrying(now, fresh_within))
                    .max(),
                alarms: self.alarms.open_views(),
            },
        )
    }
}
