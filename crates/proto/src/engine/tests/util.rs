//! A deterministic two-engine harness with a simulated relay, in the manner of
//! `quinn-proto/src/tests/util.rs`: virtual time jumps straight to the next deadline, and the
//! relay can lose, duplicate, reorder and delay frames.

use std::collections::BTreeMap;
use std::time::Duration;

use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

use crate::crypto::{Digest, IdentityKey};
use crate::engine::alarms::class_of;
use crate::engine::{
    Action, Alarm, Delivery, Engine, EngineConfig, Escalation, Local, Outgoing, Partner, Record,
    Report, WriteId,
};
use crate::envelope::{EscalationNotice, VerifyError};
use crate::types::{Channel, EndpointId, MessageId, Precedence, Time};
use crate::wire::{self, Accepted, Frame};

/// Which end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Side {
    A,
    B,
}

impl Side {
    pub(crate) fn other(self) -> Self {
        match self {
            Self::A => Self::B,
            Self::B => Self::A,
        }
    }
}

/// One endpoint: its engine plus everything it has been asked to do.
pub(crate) struct Peer {
    pub(crate) engine: Engine<ChaCha20Rng>,
    pub(crate) id: EndpointId,
    seed: u8,
    partner: Partner,
    cfg: EngineConfig,
    /// Durable records in commit order, and beside them their store keys (the engine's
    /// order, which a restore reads back).
    pub(crate) durable: Vec<Record>,
    durable_keys: Vec<u64>,
    pending: Vec<(WriteId, u64, Record)>,
    next_key: u64,
    /// When false, writes stay pending until `confirm` (to test the durability gate).
    pub(crate) auto_persist: bool,
    pub(crate) delivered: Vec<Delivery>,
    pub(crate) reports: Vec<Report>,
    /// Every message submitted through [`Pair::send`], in submission order.
    pub(crate) submitted: Vec<MessageId>,
    pub(crate) escalations: Vec<Escalation>,
    pub(crate) realerts: Vec<EscalationNotice>,
    pub(crate) alarms: Vec<Alarm>,
    /// Alarm occurrences held back by coalescing when the engine crashed (held alarms live in
    /// memory only; the first of their kind was emitted).
    alarms_lost_in_crashes: u32,
    /// The lengths of the partner audit heads handed out for recording, in order.
    pub(crate) partner_heads: Vec<u64>,
    /// This peer's simulated audit log length (one record per recorded partner head).
    pub(crate) audit_len: u64,
    pub(crate) sent_frames: Vec<(crate::Lane, Frame)>,
    /// Frames the current engine (since its last restore) took without error.
    pub(crate) accepted_frames: Vec<Frame>,
    rng_counter: u64,
}

impl Peer {
    /// Sets the simulated audit log's length, as if records were added (or lost).
    pub(crate) fn set_audit_len(&mut self, len: u64) {
        self.audit_len = len;
        let mut digest = [0u8; 32];
        digest[..8].copy_from_slice(&len.to_be_bytes());
        self.engine.set_audit_head(len, Digest(digest));
    }

    fn new(
        name: &str,
        seed: u8,
        partner_name: &str,
        partner_seed: u8,
        cfg: EngineConfig,
        now: Time,
    ) -> Self {
        let id = EndpointId::new(name).unwrap();
        let partner = Partner {
            id: EndpointId::new(partner_name).unwrap(),
            key: IdentityKey::from_seed(&[partner_seed; 32]).public(),
        };
        let local = Local {
            id: id.clone(),
            key: IdentityKey::from_seed(&[seed; 32]),
        };
        let engine = Engine::new(
            cfg.clone(),
            local,
            partner.clone(),
            ChaCha20Rng::seed_from_u64(seed as u64),
            now,
        );
        Self {
            engine,
            id,
            seed,
            partner,
            cfg,
            durable: Vec::new(),
            durable_keys: Vec::new(),
            pending: Vec::new(),
            next_key: 0,
            auto_persist: true,
            delivered: Vec::new(),
            reports: Vec::new(),
            submitted: Vec::new(),
            escalations: Vec::new(),
            realerts: Vec::new(),
            alarms: Vec::new(),
            alarms_lost_in_crashes: 0,
            partner_heads: Vec::new(),
            audit_len: 0,
            sent_frames: Vec::new(),
            accepted_frames: Vec::new(),
            rng_counter: 0,
        }
    }

    /// Makes pending writes durable and tells the engine.
    pub(crate) fn confirm(&mut self, now: Time) {
        if let Some((last, _, _)) = self.pending.last() {
            let last = *last;
            for (_, key, r) in self.pending.drain(..) {
                self.durable.push(r);
                self.durable_keys.push(key);
            }
            self.engine.handle_persisted(now, last);
        }
    }

    /// Makes durable, as the node's store thread does first, the pending flash records that
    /// no pending barrier precedes ([`crate::engine::CommitOrder`]); the rest stays pending.
    pub(crate) fn confirm_ahead(&mut self, now: Time) {
        use crate::engine::CommitOrder;
        let barrier = self
            .pending
            .iter()
            .position(|(_, _, r)| r.commit_order() == CommitOrder::Barrier)
            .unwrap_or(self.pending.len());
        let mut ahead = Vec::new();
        let mut i = 0;
        self.pending.retain(|(w, key, r)| {
            let take = i < barrier && r.commit_order() == CommitOrder::Ahead;
            i += 1;
            if take {
                ahead.push((*w, *key, r.clone()));
            }
            !take
        });
        if ahead.is_empty() {
            return;
        }
        let writes: Vec<WriteId> = ahead.iter().map(|(w, _, _)| *w).collect();
        for (_, key, r) in ahead {
            self.durable.push(r);
            self.durable_keys.push(key);
        }
        self.engine.handle_persisted_ahead(now, &writes);
    }

    /// Frames this engine accepted that `kind` matches, oldest first.
    pub(crate) fn accepted(&self, kind: impl Fn(&Frame) -> bool) -> Vec<Frame> {
        self.accepted_frames
            .iter()
            .filter(|f| kind(f))
            .cloned()
            .collect()
    }

    /// Loses unconfirmed writes and everything in memory; restores from durable records.
    pub(crate) fn crash_and_restore(&mut self, now: Time) {
        self.pending.clear();
        self.accepted_frames.clear();
        self.alarms_lost_in_crashes += self.held_alarm_count();
        self.rng_counter += 1;
        let local = Local {
            id: self.id.clone(),
            key: IdentityKey::from_seed(&[self.seed; 32]),
        };
        let rng = ChaCha20Rng::seed_from_u64(((self.seed as u64) << 32) | self.rng_counter);
        self.engine = Engine::restore(
            self.cfg.clone(),
            local,
            self.partner.clone(),
            rng,
            now,
            self.records_by_key(),
        )
        .expect("restore from durable records");
    }

    /// The durable records as the store reads them back: by key.
    fn records_by_key(&self) -> Vec<Record> {
        let mut rows: Vec<(u64, &Record)> = self
            .durable_keys
            .iter()
            .copied()
            .zip(&self.durable)
            .collect();
        rows.sort_by_key(|(key, _)| *key);
        rows.into_iter().map(|(_, r)| r.clone()).collect()
    }

    /// Loses the store: a brand-new engine (a new incarnation, made at `now`) and nothing of
    /// what the old one did.
    pub(crate) fn lose_store(&mut self, now: Time) {
        let name = self.id.to_string();
        let partner = self.partner.id.to_string();
        let partner_seed = if self.seed == 1 { 2 } else { 1 };
        *self = Self::new(
            &name,
            self.seed,
            &partner,
            partner_seed,
            self.cfg.clone(),
            now,
        );
    }

    /// Alarm occurrences so far: each emitted alarm counts its `count`, plus those the engine
    /// still holds back while coalescing (or held when it crashed). Timeouts move held ones into
    /// an emitted alarm, so this only grows.
    pub(crate) fn alarm_total(&self) -> u32 {
        let emitted: u32 = self.alarms.iter().map(|a| a.count).sum();
        emitted + self.held_alarm_count() + self.alarms_lost_in_crashes
    }

    /// Alarm occurrences the engine holds back while coalescing.
    fn held_alarm_count(&self) -> u32 {
        self.engine
            .status()
            .held_alarms
            .iter()
            .map(|a| a.count)
            .sum()
    }

    /// Where the alarms stand now, for [`alarms_since`](Self::alarms_since).
    pub(crate) fn alarm_mark(&self) -> AlarmMark {
        AlarmMark {
            emitted: self.alarms.len(),
            held: self.engine.status().held_alarms,
        }
    }

    /// The kind of each alarm occurrence since `mark`, emitted or held back by coalescing
    /// (an emitted alarm once, whatever its count; a held one once per count it gained).
    pub(crate) fn alarms_since(&self, mark: &AlarmMark) -> Vec<crate::engine::AlarmKind> {
        let mut kinds: Vec<_> = self.alarms[mark.emitted..]
            .iter()
            .map(|a| a.kind.clone())
            .collect();
        for held in self.engine.status().held_alarms {
            let before = mark
                .held
                .iter()
                .find(|h| class_of(&h.kind) == class_of(&held.kind))
                .map_or(0, |h| h.count);
            for _ in before..held.count {
                kinds.push(held.kind.clone());
            }
        }
        kinds
    }

    pub(crate) fn delivered_ids(&self) -> Vec<MessageId> {
        self.delivered.iter().map(|d| d.id.clone()).collect()
    }
}

/// A snapshot of a peer's alarms (see [`Peer::alarms_since`]).
#[derive(Debug)]
pub(crate) struct AlarmMark {
    emitted: usize,
    held: Vec<Alarm>,
}

/// Network fault knobs for the simulated relay.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Faults {
    /// Probability a frame is lost on each hop.
    pub(crate) loss: f64,
    /// Probability a frame is delivered twice.
    pub(crate) duplicate: f64,
    /// One-way latency range per hop, in microseconds (reordering comes from the spread).
    pub(crate) latency_us: (u64, u64),
}

impl Faults {
    pub(crate) const NONE: Self = Self {
        loss: 0.0,
        duplicate: 0.0,
        latency_us: (1_000, 1_000),
    };
}

/// Two engines and a relay between them.
pub(crate) struct Pair {
    pub(crate) now: Time,
    pub(crate) a: Peer,
    pub(crate) b: Peer,
    pub(crate) faults: Faults,
    rng: ChaCha20Rng,
    /// (arrival time, tie-breaker) → (destination, frame bytes).
    in_flight: BTreeMap<(Time, u64), (Side, Vec<u8>)>,
    counter: u64,
    /// Frames the "relay" dropped because the destination's link was down.
    pub(crate) link_up: [bool; 2],
    /// When set, frames to this side are held (recipient not reading).
    pub(crate) hold: Option<Side>,
    held: Vec<Vec<u8>>,
    /// When set, link tests to this side are dropped (a relay that forwards traffic only).
    pub(crate) drop_link_tests_to: Option<Side>,
    /// Envelope frames for these ids are dropped once each (targeted loss).
    pub(crate) drop_once: Vec<MessageId>,
    /// Extra delay on `accepted` replies, so a partner's receipt can overtake them.
    pub(crate) accepted_delay: Duration,
    /// The relay's queue: envelopes kept until the recipient's delivered receipt covers them,
    /// resent when the recipient reconnects (as the real relay does).
    queued: BTreeMap<MessageId, (Side, Vec<u8>)>,
    /// Each side's latest announcement, handed to the other on connect as the relay does.
    announcements: [Option<Vec<u8>>; 2],
}

pub(crate) const START: Time = Time(1_700_000_000_000_000);

impl Pair {
    pub(crate) fn new(cfg: EngineConfig, seed: u64) -> Self {
        Self::with(cfg, seed, true)
    }

    pub(crate) fn with(cfg: EngineConfig, seed: u64, connect_b: bool) -> Self {
        let mut pair = Self {
            now: START,
            a: Peer::new("us", 1, "jp", 2, cfg.clone(), START),
            b: Peer::new("jp", 2, "us", 1, cfg, START),
            faults: Faults::NONE,
            rng: ChaCha20Rng::seed_from_u64(seed),
            in_flight: BTreeMap::new(),
            counter: 0,
            link_up: [false, false],
            hold: None,
            held: Vec::new(),
            drop_link_tests_to: None,
            drop_once: Vec::new(),
            accepted_delay: Duration::ZERO,
            queued: BTreeMap::new(),
            announcements: [None, None],
        };
        pair.connect(Side::A);
        if connect_b {
            pair.connect(Side::B);
        }
        pair.drive_for(Duration::from_millis(100));
        pair
    }

    pub(crate) fn peer(&mut self, side: Side) -> &mut Peer {
        match side {
            Side::A => &mut self.a,
            Side::B => &mut self.b,
        }
    }

    pub(crate) fn connect(&mut self, side: Side) {
        self.link_up[side as usize] = true;
        let now = self.now;
        self.peer(side).engine.handle_connected(now);
        let queued: Vec<Vec<u8>> = self.announcements[side.other() as usize]
            .iter()
            .cloned()
            .chain(
                self.queued
                    .values()
                    .filter(|(to, _)| *to == side)
                    .map(|(_, f)| f.clone()),
            )
            .collect();
        for frame in queued {
            self.schedule(side, frame);
        }
    }

    pub(crate) fn disconnect(&mut self, side: Side) {
        self.link_up[side as usize] = false;
        let now = self.now;
        self.peer(side).engine.handle_disconnected(now);
    }

    pub(crate) fn crash(&mut self, side: Side) {
        let now = self.now;
        self.link_up[side as usize] = false;
        self.peer(side).crash_and_restore(now);
        self.connect(side);
    }

    /// `side` loses its whole store and comes back as a new node with the same identity.
    pub(crate) fn lose_store(&mut self, side: Side) {
        self.link_up[side as usize] = false;
        let now = self.now;
        self.peer(side).lose_store(now);
        self.connect(side);
    }

    pub(crate) fn send(&mut self, side: Side, precedence: Precedence, body: &str) -> MessageId {
        let now = self.now;
        let node = self.peer(side);
        let id = node
            .engine
            .submit(
                now,
                Outgoing {
                    channel: Channel::default(),
                    precedence,
                    body: body.as_bytes().to_vec(),
                },
            )
            .expect("submit");
        node.submitted.push(id.clone());
        id
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (self.rng.next_u64() as f64 / u64::MAX as f64) < p
    }

    fn latency(&mut self) -> Duration {
        let (lo, hi) = self.faults.latency_us;
        Duration::from_micros(lo + self.rng.next_u64() % (hi - lo + 1))
    }

    fn schedule(&mut self, to: Side, frame: Vec<u8>) {
        self.schedule_after(Duration::ZERO, to, frame);
    }

    fn schedule_after(&mut self, delay: Duration, to: Side, frame: Vec<u8>) {
        if self.chance(self.faults.loss) {
            return;
        }
        let copies = if self.chance(self.faults.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let at = self.now.plus(delay + self.latency());
            self.counter += 1;
            self.in_flight
                .insert((at, self.counter), (to, frame.clone()));
        }
    }

    /// The relay's part: answer `accepted` for envelopes and forward everything to the partner.
    fn relay(&mut self, from: Side, frame_bytes: Vec<u8>) {
        if !self.link_up[from as usize] {
            return;
        }
        let Ok((frame, _)) = wire::decode_frame(&frame_bytes) else {
            return;
        };
        if let Frame::Envelope(e) = &frame {
            let id = e.envelope.header.message_id();
            if let Some(i) = self.drop_once.iter().position(|d| *d == id) {
                self.drop_once.remove(i);
                return;
            }
            let accepted = wire::encode_frame(&Frame::Accepted(Accepted {
                id: id.clone(),
                durable: true,
            }));
            self.schedule_after(self.accepted_delay, from, accepted);
            // A re-offer replaces the queued copy (its transport precedence may have been raised)
            // and is forwarded again; the recipient answers duplicates with its receipt.
            self.queued.insert(id, (from.other(), frame_bytes.clone()));
        }
        if let Frame::Announcement(_) = &frame {
            self.announcements[from as usize] = Some(frame_bytes.clone());
        }
        if let Frame::Receipt(r) = &frame {
            if let crate::envelope::ReceiptKind::Delivered { upto, .. } = r.body.kind {
                let lane = MessageId {
                    sender: r.body.to.clone(),
                    channel: r.body.channel.clone(),
                    precedence: r.body.precedence,
                    seq: crate::types::Seq(0),
                };
                let done: Vec<MessageId> = self
                    .queued
                    .range(lane.clone()..)
                    .take_while(|(id, _)| {
                        id.channel == lane.channel
                            && id.precedence == lane.precedence
                            && id.sender == lane.sender
                            && id.seq <= upto
                    })
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in done {
                    self.queued.remove(&id);
                }
            }
        }
        self.schedule(from.other(), frame_bytes);
    }

    /// Drains both engines' actions until quiet.
    fn drain(&mut self) -> bool {
        let mut any = false;
        for side in [Side::A, Side::B] {
            loop {
                let mut sends = Vec::new();
                let node = self.peer(side);
                let mut progressed = false;
                while let Some(action) = node.engine.poll_action() {
                    progressed = true;
                    match action {
                        Action::Send { lane, frame } => {
                            if let Ok((f, _)) = wire::decode_frame(&frame) {
                                node.sent_frames.push((lane, f));
                            }
                            sends.push(frame);
                        }
                        Action::Persist {
                            id,
                            record,
                            envelope_hash,
                        } => {
                            assert_envelope_hash(&record, envelope_hash);
                            node.pending.push((id, node.next_key, record));
                            node.next_key += 1;
                        }
                        Action::Deliver(d) => node.delivered.push(d),
                        Action::Report(r) => node.reports.push(r),
                        Action::Escalate(e) => node.escalations.push(e),
                        Action::Realert(n) => node.realerts.push(n),
                        Action::Alarm(a) => node.alarms.push(a),
                        Action::PartnerAuditHead(t) => {
                            // The node records it in its audit log, which grows by one.
                            node.partner_heads.push(t.body.audit_len);
                            let len = node.audit_len + 1;
                            node.set_audit_len(len);
                        }
                        Action::Link { .. } => {}
                    }
                }
                let now = self.now;
                let node = self.peer(side);
                if node.auto_persist && !node.pending.is_empty() {
                    node.confirm(now);
                    progressed = true;
                }
                for frame in sends {
                    self.relay(side, frame);
                }
                any |= progressed;
                if !progressed {
                    break;
                }
            }
        }
        any
    }

    /// Runs until nothing is in flight and no engine has work before `until`.
    pub(crate) fn drive_until(&mut self, until: Time) {
        for _ in 0..1_000_000 {
            self.drain();
            let next_frame = self.in_flight.keys().next().map(|(t, _)| *t);
            let next_timer = [self.a.engine.poll_timeout(), self.b.engine.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            let Some(next) = [next_frame, next_timer].into_iter().flatten().min() else {
                return;
            };
            if next > until {
                self.now = until;
                self.a.engine.handle_timeout(until);
                self.b.engine.handle_timeout(until);
                self.drain();
                return;
            }
            self.now = self.now.max(next);
            if next_frame == Some(next) {
                let Some((_, (to, frame))) = self.in_flight.pop_first() else {
                    continue;
                };
                self.arrive(to, frame);
            } else {
                let now = self.now;
                self.a.engine.handle_timeout(now);
                self.b.engine.handle_timeout(now);
            }
        }
        panic!("harness did not settle");
    }

    pub(crate) fn drive_for(&mut self, d: Duration) {
        let until = self.now.plus(d);
        self.drive_until(until);
    }

    /// Drives only until the network is quiet (ignores far timers like link tests), at most `d`.
    pub(crate) fn settle(&mut self, d: Duration) {
        let until = self.now.plus(d);
        for _ in 0..1_000_000 {
            self.drain();
            if self.in_flight.is_empty() || self.now >= until {
                return;
            }
            let Some(((at, _), (to, frame))) = self.in_flight.pop_first() else {
                return;
            };
            self.now = self.now.max(at);
            self.a.engine.handle_timeout(self.now);
            self.b.engine.handle_timeout(self.now);
            self.arrive(to, frame);
        }
    }

    /// Hands `frame` to `side` now, as if the relay forwarded it, and drains both engines
    /// (recording every action, relaying what they send).
    pub(crate) fn inject(&mut self, side: Side, frame: &Frame) -> Result<(), VerifyError> {
        let now = self.now;
        let result = self
            .peer(side)
            .engine
            .handle_frame(now, &wire::encode_frame(frame));
        self.drain();
        result
    }

    /// Envelope frames `side` sent for `id` so far.
    pub(crate) fn envelopes_sent(&self, side: Side, id: &MessageId) -> usize {
        let node = match side {
            Side::A => &self.a,
            Side::B => &self.b,
        };
        node.sent_frames
            .iter()
            .filter(
                |(_, f)| matches!(f, Frame::Envelope(e) if e.envelope.header.message_id() == *id),
            )
            .count()
    }

    /// Stops holding and hands over, in order, every frame held so far.
    pub(crate) fn release_held(&mut self) {
        let Some(to) = self.hold.take() else {
            return;
        };
        for frame in std::mem::take(&mut self.held) {
            self.arrive(to, frame);
        }
    }

    /// A frame reaches `to`: dropped if its link is down, held if it is not reading.
    fn arrive(&mut self, to: Side, frame: Vec<u8>) {
        if !self.link_up[to as usize] {
            return;
        }
        if self.hold == Some(to) {
            self.held.push(frame);
            return;
        }
        if self.drop_link_tests_to == Some(to)
            && matches!(wire::decode_frame(&frame), Ok((Frame::LinkTest(_), _)))
        {
            return;
        }
        let now = self.now;
        let node = self.peer(to);
        if node.engine.handle_frame(now, &frame).is_ok() {
            if let Ok((f, _)) = wire::decode_frame(&frame) {
                node.accepted_frames.push(f);
            }
        }
    }
}

/// The hash the engine hands out with a record is its envelope's, and every record holding an
/// envelope that a store would audit comes with it.
fn assert_envelope_hash(record: &Record, given: Option<Digest>) {
    let envelope = match record {
        Record::Outgoing {
            envelope: Some(e), ..
        }
        | Record::Sealed { envelope: e, .. }
        | Record::Received { envelope: e, .. } => Some(e),
        _ => None,
    };
    assert_eq!(
        given,
        envelope.map(crate::envelope::Envelope::hash),
        "{record:?}"
    );
}
