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

mod config;
mod records;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use rand_core::CryptoRng;
use serde::{Deserialize, Serialize};

pub use config::{ConfigError, EngineConfig};
pub use records::Record;

use crate::crypto::{
    Digest, IdentityKey, IdentityPublicKey, RecvSession, SUITE_XWING_CHACHA20_ED25519, SealingKey,
    SendSession, SessionId, Signature,
};
use crate::envelope::{
    Announcement, ChainHead, Envelope, EscalationNotice, Header, LinkTest, Plaintext, Receipt,
    ReceiptKind, SessionSetup, Signed, VerifyError, sign_head, verify_head,
};
use crate::types::{Channel, EndpointId, Lane, MessageId, Precedence, Seq, Time};
use crate::wire::{
    self, Accepted, EnvelopeFrame, Frame, MAX_BODY_LEN, Presence, Refusal, RefusalCode,
};

/// Identifies one `Persist` action; confirmations are cumulative (see
/// [`Engine::handle_persisted`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WriteId(pub u64);

/// What the engine asks the caller to do, in order.
// Actions are moved once from the queue to the caller; boxing the large variants would cost an
// allocation per action on the hot path for no gain.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Action {
    /// Write these bytes (a whole frame, length prefix included) on `lane`.
    Send {
        /// Stream to use.
        lane: Lane,
        /// Encoded frame.
        frame: Vec<u8>,
    },
    /// Make `record` durable, then call [`Engine::handle_persisted`] with `id`.
    Persist {
        /// Confirmation handle.
        id: WriteId,
        /// What to store.
        record: Record,
    },
    /// Hand a message to the operator (it is already durable).
    Deliver(Delivery),
    /// An outgoing message reached a new ack level.
    Report(Report),
    /// A deadline was missed: alarm the operator.
    Escalate(Escalation),
    /// The partner says our operator has not acknowledged one of its messages in time.
    Realert(EscalationNotice),
    /// Something is wrong: security or configuration.
    Alarm(Alarm),
    /// The partner's signed audit-log head changed (carried in a verified link test); store it
    /// so either side can later show the other's log was not rewritten.
    PartnerAuditHead(Signed<LinkTest>),
    /// The hotline's link state changed.
    Link {
        /// New state.
        state: LinkState,
        /// Since when.
        since: Time,
    },
}

/// A message ready for the operator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// Its id.
    pub id: MessageId,
    /// Recipient (us).
    pub to: EndpointId,
    /// Sender's wall clock at submission.
    pub sent_at: Time,
    /// Our wall clock when it was delivered.
    pub received_at: Time,
    /// Transport precedence it arrived at (above `id.precedence` if escalated).
    pub transport: Precedence,
    /// The text.
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

/// The ack levels of an outgoing message, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AckLevel {
    /// Durably in our outbox.
    Stored,
    /// The relay holds it; `durable` says whether on disk or only in memory.
    Accepted {
        /// Relay stored it durably.
        durable: bool,
    },
    /// The partner verified and durably stored it (signed receipt).
    Delivered,
    /// A partner operator acknowledged it (signed receipt).
    Acknowledged,
    /// The relay refused it for now; the message stays in the outbox.
    Refused(RefusalCode),
}

/// Progress of one outgoing message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// Which message.
    pub id: MessageId,
    /// The level reached.
    pub level: AckLevel,
    /// When (receipts carry the partner's time; others ours).
    pub at: Time,
}

/// Which deadline was missed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeadlineKind {
    /// Not delivered in time.
    Delivered,
    /// Delivered but not acknowledged in time.
    Acknowledged,
}

/// A missed deadline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Escalation {
    /// Which message.
    pub id: MessageId,
    /// Which deadline.
    pub kind: DeadlineKind,
    /// New transport precedence.
    pub escalated_to: Precedence,
    /// How many escalations this message has had.
    pub count: u32,
    /// When.
    pub at: Time,
}

/// What an alarm is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AlarmKind {
    /// Verification failed on something from the network.
    Security(VerifyError),
    /// The partner's identity key differs from the pinned one.
    PartnerKeyChanged,
    /// The relay refused something.
    Refused(RefusalCode),
    /// A store write failed; the engine has stopped.
    StoreFailed,
}

/// An alarm for the operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alarm {
    /// When.
    pub at: Time,
    /// What kind.
    pub kind: AlarmKind,
    /// Message concerned, if any.
    pub message: Option<MessageId>,
    /// Detail for the log.
    pub detail: String,
}

/// Whether the hotline works end to end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LinkState {
    /// Connected to the relay and hearing from the partner.
    Up,
    /// Connected to the relay but the partner is silent or offline.
    Degraded,
    /// Not connected to the relay.
    Down,
}

/// An operator's outgoing message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    /// Channel (default `main`).
    pub channel: Channel,
    /// Precedence.
    pub precedence: Precedence,
    /// Text.
    pub body: Vec<u8>,
}

/// Why `submit` refused a message. Each variant hands the message back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// The body exceeds [`MAX_BODY_LEN`].
    #[error("message body of {} bytes exceeds the {MAX_BODY_LEN}-byte limit", .0.body.len())]
    TooLarge(Outgoing),
    /// The outbox is full; try again when deliveries catch up.
    #[error("outbox full: back-pressure")]
    Backpressure(Outgoing),
    /// A store write failed earlier; the engine accepts nothing until restarted.
    #[error("engine stopped after a store failure")]
    Stopped(Outgoing),
}

/// Why `acknowledge` refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    /// No delivered message with that id.
    #[error("no delivered message {0}")]
    Unknown(MessageId),
    /// Already acknowledged.
    #[error("message {0} is already acknowledged")]
    AlreadyAcknowledged(MessageId),
    /// A store write failed earlier.
    #[error("engine stopped after a store failure")]
    Stopped,
}

/// Why `restore` could not rebuild the engine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    /// A record refers to something no earlier record created.
    #[error("record {index} is inconsistent: {detail}")]
    Inconsistent {
        /// Position in the record stream.
        index: usize,
        /// What is wrong.
        detail: String,
    },
    /// A stored key did not load.
    #[error("stored key does not load: {0}")]
    Key(String),
}

/// Counts per lane for status displays.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaneDepth {
    /// Waiting for the partner's sealing key.
    pub awaiting_key: usize,
    /// Not yet accepted by the relay.
    pub unaccepted: usize,
    /// Not yet delivered.
    pub undelivered: usize,
    /// Delivered but not yet acknowledged (only where an acknowledgement is expected).
    pub unacknowledged: usize,
    /// Received and buffered, waiting for earlier messages.
    pub receive_buffered: usize,
}

/// A snapshot for `hotline status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// Link state.
    pub link: LinkState,
    /// Since when.
    pub link_since: Time,
    /// Connected to the relay.
    pub connected: bool,
    /// Relay's word on whether the partner is connected.
    pub partner_online: Option<bool>,
    /// Partner key epoch known, if any.
    pub partner_epoch: Option<u32>,
    /// Per precedence, lowest first.
    pub lanes: [LaneDepth; 4],
    /// Delivered messages our operator has not acknowledged.
    pub pending_operator_acks: Vec<MessageId>,
    /// Outgoing messages that escalated and are not finished.
    pub open_escalations: Vec<(MessageId, Precedence, u32)>,
    /// Recent alarms, newest last.
    pub alarms: Vec<Alarm>,
    /// Partner's latest signed audit head (length, hash).
    pub partner_audit_head: Option<(u64, Digest)>,
}

/// One outgoing message's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxEntry {
    /// Id.
    pub id: MessageId,
    /// Submission time.
    pub sent_at: Time,
    /// Current transport precedence.
    pub transport: Precedence,
    /// Escalation count.
    pub escalations: u32,
    /// Times the levels were reached.
    pub accepted: Option<Time>,
    /// Partner-signed delivery time.
    pub delivered: Option<Time>,
    /// Partner-signed acknowledgement time.
    pub acknowledged: Option<Time>,
}

const MAX_RECENT_ALARMS: usize = 64;
const DEGRADED_AFTER_INTERVALS: u32 = 3;

#[allow(clippy::large_enum_variant)] // one per outbox message; sealed is the common state
#[derive(Debug)]
enum OutState {
    AwaitingKey { body: Vec<u8> },
    Sealed { envelope: Envelope, hash: Digest },
}

#[derive(Debug)]
struct OutMsg {
    sent_at: Time,
    after: [u64; 4],
    state: OutState,
    write: WriteId,
    transport: Precedence,
    escalations: u32,
    /// When the relay first accepted it (reported once).
    accepted: Option<Time>,
    /// The relay on the current connection holds it: no retransmission needed.
    relay_holds: bool,
    delivered: Option<Time>,
    acknowledged: Option<Time>,
    delivered_deadline: Time,
    ack_deadline: Option<Time>,
    retransmit_at: Option<Time>,
    rto: Duration,
}

#[derive(Debug, Default)]
struct OutLane {
    last_seq: Seq,
    last_hash: Digest,
}

#[derive(Debug)]
struct SendSessionState {
    session: SendSession,
    epoch: u32,
}

impl Pending {
    fn size(&self) -> usize {
        self.envelope.sealed.len() + self.plaintext.body.len()
    }
}

#[derive(Debug)]
struct Pending {
    envelope: Envelope,
    hash: Digest,
    plaintext: Plaintext,
    signature: Option<Signature>,
    transport: Precedence,
}

#[derive(Debug, Default)]
struct InLane {
    delivered: Seq,
    last_hash: Digest,
    verified: Seq,
    buffer: BTreeMap<Seq, Pending>,
    delivered_hashes: BTreeMap<Seq, Digest>,
    last_receipt: Option<(WriteId, Signed<Receipt>)>,
}

#[derive(Debug)]
struct InMsg {
    hash: Digest,
    acknowledged: Option<Time>,
    ack_receipt: Option<(WriteId, Signed<Receipt>)>,
    expects_ack: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKind {
    Retransmit,
    Delivered,
    Acknowledged,
}

/// Delivered hashes kept per lane for duplicate and equivocation checks.
const DELIVERED_HASH_HISTORY: usize = 65_536;

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
    me: EndpointId,
    key: IdentityKey,
    partner: EndpointId,
    partner_key: IdentityPublicKey,
    rng: R,
    now: Time,
    stopped: bool,

    sealing: BTreeMap<u32, SealingKey>,
    own_announcement: Option<Signed<Announcement>>,
    partner_announcement: Option<Signed<Announcement>>,

    out_lanes: BTreeMap<(Channel, Precedence), OutLane>,
    outbox: BTreeMap<MessageId, OutMsg>,
    awaiting_key: BTreeSet<(Time, MessageId)>,
    send_sessions: BTreeMap<Channel, SendSessionState>,
    session_setups: BTreeMap<SessionId, (SessionSetup, bool)>,
    send_queue: BTreeSet<MessageId>,
    timers: BTreeSet<(Time, TimerKind, MessageId)>,

    in_lanes: BTreeMap<(Channel, Precedence), InLane>,
    recv_sessions: BTreeMap<SessionId, RecvSession>,
    inbox: BTreeMap<MessageId, InMsg>,

    next_write: u64,
    persisted: u64,
    actions: VecDeque<Action>,
    gated: VecDeque<(WriteId, Action)>,

    connected: bool,
    partner_online: Option<bool>,
    last_heard: Option<Time>,
    link: LinkState,
    link_since: Time,
    next_link_test: Option<Time>,
    link_seq: u64,
    audit_head: (u64, Digest),
    partner_audit_head: Option<(u64, Digest)>,
    alarms: VecDeque<Alarm>,
    /// Our latest acknowledgement receipts, resent on reconnect in case they were lost.
    recent_acks: VecDeque<(WriteId, Signed<Receipt>)>,
    /// Sessions opened from a setup but not yet vouched for by a signed chain head. Anyone
    /// (the relay included) can encapsulate to our public sealing key, so these are neither
    /// persisted nor kept beyond [`MAX_UNVERIFIED_SESSIONS`] until a message from them is
    /// verified and delivered.
    unverified_sessions: VecDeque<(SessionId, SessionSetup)>,
    /// Bytes of received envelopes buffered while waiting for earlier ones.
    buffered_bytes: usize,
    /// Finished messages whose `accepted` reply has not arrived yet (a partner's receipt can
    /// overtake it), so the level is still reported once when it comes.
    late_accepted: BTreeSet<MessageId>,
}

/// Finished messages remembered for a late `accepted`; the oldest are dropped beyond it.
const MAX_LATE_ACCEPTED: usize = 4096;

/// Sessions kept on trust before one of their messages verifies.
const MAX_UNVERIFIED_SESSIONS: usize = 16;
/// Buffered out-of-order envelopes across all lanes; beyond it new ones are dropped (the
/// sender offers them again), so hostile traffic cannot grow memory without bound.
const MAX_BUFFERED_BYTES: usize = 64 * 1024 * 1024;

/// Acknowledgement receipts resent on every reconnect.
const RECENT_ACKS: usize = 256;

/// The local endpoint's identity.
#[derive(Debug)]
pub struct Local {
    /// Our endpoint id (from our certificate).
    pub id: EndpointId,
    /// Our identity key (the certificate's key).
    pub key: IdentityKey,
}

/// The partner as pinned in configuration.
#[derive(Clone, Debug)]
pub struct Partner {
    /// Partner endpoint id.
    pub id: EndpointId,
    /// Pinned identity public key.
    pub key: IdentityPublicKey,
}

impl<R: CryptoRng> Engine<R> {
    /// A brand-new engine: generates the first sealing key (emitted as a `Persist` record).
    pub fn new(cfg: EngineConfig, local: Local, partner: Partner, rng: R, now: Time) -> Self {
        let mut engine = Self::empty(cfg, local, partner, rng, now);
        engine.rotate_sealing_key(now);
        engine
    }

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
        if engine.sealing.is_empty() {
            engine.rotate_sealing_key(now);
        }
        engine.late_accepted.clear();
        engine.rebuild_timers();
        engine.seal_awaiting();
        Ok(engine)
    }

    fn empty(cfg: EngineConfig, local: Local, partner: Partner, rng: R, now: Time) -> Self {
        Self {
            cfg,
            me: local.id,
            key: local.key,
            partner: partner.id,
            partner_key: partner.key,
            rng,
            now,
            stopped: false,
            sealing: BTreeMap::new(),
            own_announcement: None,
            partner_announcement: None,
            out_lanes: BTreeMap::new(),
            outbox: BTreeMap::new(),
            awaiting_key: BTreeSet::new(),
            send_sessions: BTreeMap::new(),
            session_setups: BTreeMap::new(),
            send_queue: BTreeSet::new(),
            timers: BTreeSet::new(),
            in_lanes: BTreeMap::new(),
            recv_sessions: BTreeMap::new(),
            inbox: BTreeMap::new(),
            next_write: 0,
            persisted: 0,
            actions: VecDeque::new(),
            gated: VecDeque::new(),
            connected: false,
            partner_online: None,
            last_heard: None,
            link: LinkState::Down,
            link_since: now,
            next_link_test: None,
            link_seq: 0,
            audit_head: (0, Digest::default()),
            partner_audit_head: None,
            alarms: VecDeque::new(),
            recent_acks: VecDeque::new(),
            unverified_sessions: VecDeque::new(),
            buffered_bytes: 0,
            late_accepted: BTreeSet::new(),
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
        if self.outbox.len() >= self.cfg.max_outbox() {
            return Err(SubmitError::Backpressure(out));
        }
        let Outgoing {
            channel,
            precedence,
            body,
        } = out;
        let mut after = [0u64; 4];
        for p in Precedence::ALL.into_iter().filter(|p| *p >= precedence) {
            after[p.index()] = self
                .out_lanes
                .get(&(channel.clone(), p))
                .map_or(0, |l| l.last_seq.0);
        }
        let lane = self
            .out_lanes
            .entry((channel.clone(), precedence))
            .or_default();
        lane.last_seq = lane.last_seq.next();
        let id = MessageId {
            sender: self.me.clone(),
            channel,
            precedence,
            seq: lane.last_seq,
        };
        let sent_at = self.now;
        let msg = OutMsg {
            sent_at,
            after,
            state: OutState::AwaitingKey { body },
            write: WriteId(0),
            transport: precedence,
            escalations: 0,
            accepted: None,
            relay_holds: false,
            delivered: None,
            acknowledged: None,
            delivered_deadline: sent_at.plus(self.cfg.delivered_deadline(precedence)),
            ack_deadline: self
                .cfg
                .acknowledged_deadline(precedence)
                .map(|d| sent_at.plus(d)),
            retransmit_at: None,
            rto: self.cfg.retransmit_initial(),
        };
        self.outbox.insert(id.clone(), msg);
        self.timers.insert((
            self.outbox[&id].delivered_deadline,
            TimerKind::Delivered,
            id.clone(),
        ));
        let sealed = if self.awaiting_key.is_empty() {
            self.seal(&id)
        } else {
            None
        };
        let record = match sealed {
            Some(envelope) => Record::Outgoing {
                id: id.clone(),
                after,
                sent_at,
                body: None,
                envelope: Some(envelope),
            },
            None => {
                let body = match &self.outbox[&id].state {
                    OutState::AwaitingKey { body } => body.clone(),
                    OutState::Sealed { .. } => Vec::new(),
                };
                self.awaiting_key.insert((sent_at, id.clone()));
                Record::Outgoing {
                    id: id.clone(),
                    after,
                    sent_at,
                    body: Some(body),
                    envelope: None,
                }
            }
        };
        let write = self.persist(record);
        if let Some(m) = self.outbox.get_mut(&id) {
            m.write = write;
        }
        self.gate(
            write,
            Action::Report(Report {
                id: id.clone(),
                level: AckLevel::Stored,
                at: sent_at,
            }),
        );
        if matches!(self.outbox[&id].state, OutState::Sealed { .. }) {
            self.send_queue.insert(id.clone());
        }
        Ok(id)
    }

    /// Records an operator's acknowledgement of a delivered message and, once that is durable,
    /// sends the signed receipt.
    pub fn acknowledge(&mut self, now: Time, id: &MessageId) -> Result<(), AckError> {
        self.tick(now);
        if self.stopped {
            return Err(AckError::Stopped);
        }
        let at = self.now;
        let Some(msg) = self.inbox.get(id) else {
            return Err(AckError::Unknown(id.clone()));
        };
        if msg.acknowledged.is_some() {
            return Err(AckError::AlreadyAcknowledged(id.clone()));
        }
        let receipt = Signed::sign(
            Receipt {
                from: self.me.clone(),
                to: self.partner.clone(),
                channel: id.channel.clone(),
                precedence: id.precedence,
                kind: ReceiptKind::Acknowledged {
                    seq: id.seq,
                    hash: msg.hash,
                },
                at,
            },
            &self.key,
        );
        let write = self.persist(Record::OperatorAck {
            id: id.clone(),
            receipt: receipt.clone(),
        });
        if let Some(msg) = self.inbox.get_mut(id) {
            msg.acknowledged = Some(at);
            msg.ack_receipt = Some((write, receipt.clone()));
        }
        self.remember_ack(write, receipt.clone());
        self.gate(write, send_control(&Frame::Receipt(receipt)));
        Ok(())
    }

    /// Starts a new sealing-key epoch and announces it. Older keys stay so that messages sealed
    /// to them still open.
    pub fn rotate_sealing_key(&mut self, now: Time) {
        self.tick(now);
        let epoch = self.sealing.keys().next_back().map_or(1, |e| e + 1);
        let key = SealingKey::generate(&mut self.rng);
        let expires_at = self.now.plus(self.cfg.key_lifetime());
        self.persist(Record::SealingKey {
            epoch,
            secret: key.secret_bytes(),
            expires_at,
        });
        self.install_sealing_key(epoch, key, expires_at);
        if self.connected {
            self.send_announcement();
        }
    }

    /// Tells the engine the latest head of the local audit log, carried in link tests.
    pub fn set_audit_head(&mut self, len: u64, head: Digest) {
        self.audit_head = (len, head);
    }

    // ----- inputs ---------------------------------------------------------------------------

    /// The connection to the relay is up: announce our key, re-offer everything undelivered,
    /// resend our latest receipts.
    pub fn handle_connected(&mut self, now: Time) {
        self.tick(now);
        self.connected = true;
        self.send_announcement();
        let undelivered: Vec<MessageId> = self
            .outbox
            .iter()
            .filter(|(_, m)| m.delivered.is_none() && matches!(m.state, OutState::Sealed { .. }))
            .map(|(id, _)| id.clone())
            .collect();
        for id in undelivered {
            if let Some(m) = self.outbox.get_mut(&id) {
                m.rto = self.cfg.retransmit_initial();
                m.relay_holds = false;
            }
            self.send_queue.insert(id);
        }
        let receipts: Vec<(WriteId, Signed<Receipt>)> = self
            .in_lanes
            .values()
            .filter_map(|l| l.last_receipt.clone())
            .collect();
        let acks: Vec<(WriteId, Signed<Receipt>)> = self.recent_acks.iter().cloned().collect();
        for (write, receipt) in receipts.into_iter().chain(acks) {
            self.gate(write, send_control(&Frame::Receipt(receipt)));
        }
        self.next_link_test = Some(self.now);
        self.update_link();
    }

    /// The connection to the relay is gone.
    pub fn handle_disconnected(&mut self, now: Time) {
        self.tick(now);
        self.connected = false;
        self.partner_online = None;
        self.send_queue.clear();
        // Replies on the lost connection will not come.
        self.late_accepted.clear();
        for m in self.outbox.values_mut() {
            m.retransmit_at = None;
        }
        self.update_link();
    }

    /// A whole frame (length prefix included) arrived from the relay. Errors name what was
    /// wrong; security failures are also raised as [`Action::Alarm`].
    pub fn handle_frame(&mut self, now: Time, bytes: &[u8]) -> Result<(), VerifyError> {
        self.tick(now);
        let frame = match wire::decode_frame(bytes) {
            Ok((frame, used)) if used == bytes.len() => frame,
            Ok(_) => return Err(VerifyError::Malformed("trailing bytes after frame")),
            Err(wire::DecodeError::UnknownVersion(v)) => {
                return Err(VerifyError::UnknownVersion(v));
            }
            Err(wire::DecodeError::UnknownSuite(s)) => return Err(VerifyError::UnknownSuite(s)),
            Err(_) => return Err(VerifyError::Malformed("frame does not decode")),
        };
        self.handle_decoded(frame)
    }

    /// Like [`handle_frame`](Self::handle_frame) for a frame the caller already decoded.
    pub fn handle_decoded(&mut self, frame: Frame) -> Result<(), VerifyError> {
        let result = match frame {
            Frame::Hello(_) => Ok(()),
            Frame::Envelope(f) => self.on_envelope(f),
            Frame::Accepted(a) => {
                self.on_accepted(a);
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
            if !matches!(e, VerifyError::Malformed(_)) {
                self.alarm(AlarmKind::Security(e.clone()), None, e.to_string());
            }
        }
        result
    }

    /// Confirms that write `id` and every earlier one are durable; releases what waited on them.
    pub fn handle_persisted(&mut self, now: Time, id: WriteId) {
        self.tick(now);
        self.persisted = self.persisted.max(id.0);
        while let Some((w, _)) = self.gated.front() {
            if w.0 > self.persisted {
                break;
            }
            if let Some((_, a)) = self.gated.pop_front() {
                self.actions.push_back(a);
            }
        }
    }

    /// A write failed. Durability can no longer be promised: the engine stops accepting work
    /// and raises an alarm; the caller should exit and restart from the store.
    pub fn handle_persist_failed(&mut self, now: Time, id: WriteId, detail: &str) {
        self.tick(now);
        self.stopped = true;
        self.gated.clear();
        self.send_queue.clear();
        self.alarm(
            AlarmKind::StoreFailed,
            None,
            format!("write {} failed: {detail}", id.0),
        );
    }

    /// Time passed: retransmit, escalate, test the link.
    pub fn handle_timeout(&mut self, now: Time) {
        self.tick(now);
        if self.stopped {
            return;
        }
        while let Some((at, kind, id)) = self.timers.first().cloned() {
            if at > self.now {
                break;
            }
            self.timers.pop_first();
            self.fire(at, kind, &id);
        }
        if let Some(at) = self.next_link_test {
            if at <= self.now && self.connected {
                self.send_link_test();
                self.next_link_test = Some(self.now.plus(self.cfg.link_test_interval()));
            }
        }
        self.update_link();
    }

    // ----- outputs --------------------------------------------------------------------------

    /// The next thing to do, if any. Messages that became sendable are framed here, in batches:
    /// the last envelope of each lane in a batch carries the chain-head signature.
    #[must_use]
    pub fn poll_action(&mut self) -> Option<Action> {
        if let Some(a) = self.actions.pop_front() {
            return Some(a);
        }
        self.flush_sends();
        self.actions.pop_front()
    }

    /// When to call [`handle_timeout`](Self::handle_timeout) next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Time> {
        let timer = self.timers.first().map(|(t, _, _)| *t);
        let link = if self.connected {
            self.next_link_test
        } else {
            None
        };
        let degrade = match (self.link, self.last_heard) {
            (LinkState::Up, Some(h)) => Some(h.plus(self.degraded_after())),
            _ => None,
        };
        [timer, link, degrade].into_iter().flatten().min()
    }

    /// A snapshot for status displays.
    pub fn status(&self) -> Status {
        let mut lanes = [LaneDepth::default(); 4];
        for (id, m) in &self.outbox {
            let d = &mut lanes[id.precedence.index()];
            match m.state {
                OutState::AwaitingKey { .. } => d.awaiting_key += 1,
                OutState::Sealed { .. } if m.accepted.is_none() && m.delivered.is_none() => {
                    d.unaccepted += 1
                }
                OutState::Sealed { .. } => {}
            }
            if m.delivered.is_none() {
                d.undelivered += 1;
            } else if m.acknowledged.is_none() && m.ack_deadline.is_some() {
                d.unacknowledged += 1;
            }
        }
        for ((_, p), l) in &self.in_lanes {
            lanes[p.index()].receive_buffered += l.buffer.len();
        }
        Status {
            link: self.link,
            link_since: self.link_since,
            connected: self.connected,
            partner_online: self.partner_online,
            partner_epoch: self.partner_announcement.as_ref().map(|a| a.body.epoch),
            lanes,
            pending_operator_acks: self
                .inbox
                .iter()
                .filter(|(_, m)| m.acknowledged.is_none() && m.expects_ack)
                .map(|(id, _)| id.clone())
                .collect(),
            open_escalations: self
                .outbox
                .iter()
                .filter(|(_, m)| m.escalations > 0)
                .map(|(id, m)| (id.clone(), m.transport, m.escalations))
                .collect(),
            alarms: self.alarms.iter().cloned().collect(),
            partner_audit_head: self.partner_audit_head,
        }
    }

    /// Outgoing messages still tracked (not yet both delivered and, where expected,
    /// acknowledged), in id order.
    pub fn outbox(&self) -> impl Iterator<Item = OutboxEntry> + '_ {
        self.outbox.iter().map(|(id, m)| OutboxEntry {
            id: id.clone(),
            sent_at: m.sent_at,
            transport: m.transport,
            escalations: m.escalations,
            accepted: m.accepted,
            delivered: m.delivered,
            acknowledged: m.acknowledged,
        })
    }

    /// Our endpoint id.
    pub fn local_id(&self) -> &EndpointId {
        &self.me
    }

    /// The partner's endpoint id.
    pub fn partner_id(&self) -> &EndpointId {
        &self.partner
    }

    /// Our current signed sealing-key announcement.
    pub fn announcement(&self) -> Option<&Signed<Announcement>> {
        self.own_announcement.as_ref()
    }

    // ----- internals: sender ----------------------------------------------------------------

    fn tick(&mut self, now: Time) {
        self.now = self.now.max(now);
    }

    fn degraded_after(&self) -> Duration {
        self.cfg.link_test_interval() * DEGRADED_AFTER_INTERVALS
    }

    /// Seals message `id` if the partner's key is known; returns the envelope.
    fn seal(&mut self, id: &MessageId) -> Option<Envelope> {
        let ann = self.partner_announcement.as_ref()?.body.clone();
        if self
            .send_sessions
            .get(&id.channel)
            .is_none_or(|s| s.epoch != ann.epoch)
        {
            let info = session_info(&self.me, &self.partner, ann.epoch);
            let (session, enc) =
                match SendSession::establish(&mut self.rng, &ann.sealing_key, &info) {
                    Ok(s) => s,
                    Err(e) => {
                        self.alarm(
                            AlarmKind::Security(VerifyError::Malformed("partner sealing key")),
                            None,
                            e.to_string(),
                        );
                        return None;
                    }
                };
            let setup = SessionSetup {
                epoch: ann.epoch,
                encapsulated: enc,
            };
            self.persist(Record::SendSession {
                id: session.id(),
                setup: setup.clone(),
            });
            self.session_setups.insert(session.id(), (setup, false));
            self.send_sessions.insert(
                id.channel.clone(),
                SendSessionState {
                    session,
                    epoch: ann.epoch,
                },
            );
        }
        let session = self.send_sessions.get(&id.channel)?;
        let msg = self.outbox.get(id)?;
        let OutState::AwaitingKey { body } = &msg.state else {
            return None;
        };
        let lane = self.out_lanes.get(&(id.channel.clone(), id.precedence))?;
        let plaintext = postcard::to_allocvec(&Plaintext {
            sent_at: msg.sent_at,
            body: body.clone(),
        })
        .ok()?;
        let mut header = Header {
            sender: self.me.clone(),
            recipient: self.partner.clone(),
            channel: id.channel.clone(),
            precedence: id.precedence,
            seq: id.seq,
            after: msg.after,
            epoch: session.epoch,
            session: session.session.id(),
            prev: lane.last_hash,
            sealed_len: 0,
        };
        // AEAD adds a 16-byte tag.
        header.sealed_len = (plaintext.len() + 16) as u32;
        let sealed = session
            .session
            .seal(id.precedence as u8, id.seq.0, &header.encode(), &plaintext)
            .ok()?;
        let envelope = Envelope { header, sealed };
        let hash = envelope.hash();
        if let Some(lane) = self.out_lanes.get_mut(&(id.channel.clone(), id.precedence)) {
            lane.last_hash = hash;
        }
        if let Some(m) = self.outbox.get_mut(id) {
            m.state = OutState::Sealed {
                envelope: envelope.clone(),
                hash,
            };
        }
        Some(envelope)
    }

    /// Seals messages that waited for the partner's key, in submission order.
    fn seal_awaiting(&mut self) {
        if self.partner_announcement.is_none() {
            return;
        }
        while let Some((at, id)) = self.awaiting_key.first().cloned() {
            let Some(envelope) = self.seal(&id) else {
                return;
            };
            self.awaiting_key.remove(&(at, id.clone()));
            let write = self.persist(Record::Sealed {
                id: id.clone(),
                envelope,
            });
            if let Some(m) = self.outbox.get_mut(&id) {
                m.write = write;
            }
            self.send_queue.insert(id);
        }
    }

    fn flush_sends(&mut self) {
        if !self.connected || self.send_queue.is_empty() {
            return;
        }
        let ready: Vec<MessageId> = self
            .send_queue
            .iter()
            .filter(|id| {
                self.outbox
                    .get(*id)
                    .is_some_and(|m| m.write.0 <= self.persisted)
            })
            .cloned()
            .collect();
        // Highest precedence first; within a lane, in sequence order.
        let mut ready = ready;
        ready.sort_by(|a, b| b.precedence.cmp(&a.precedence).then(a.cmp(b)));
        for (i, id) in ready.iter().enumerate() {
            self.send_queue.remove(id);
            let last_in_lane = ready
                .get(i + 1)
                .is_none_or(|n| n.channel != id.channel || n.precedence != id.precedence);
            let now = self.now;
            let Some(m) = self.outbox.get_mut(id) else {
                continue;
            };
            if m.delivered.is_some() {
                continue;
            }
            let OutState::Sealed { envelope, hash } = &m.state else {
                continue;
            };
            let head = last_in_lane.then(|| sign_head(&ChainHead::of(envelope, *hash), &self.key));
            let setup = self
                .session_setups
                .get(&envelope.header.session)
                .filter(|(_, confirmed)| !confirmed)
                .map(|(s, _)| s.clone());
            let frame = Frame::Envelope(EnvelopeFrame {
                transport: m.transport,
                envelope: envelope.clone(),
                head,
                setup,
            });
            let lane = Lane::Precedence(m.transport);
            if !m.relay_holds {
                let at = now.plus(m.rto);
                m.retransmit_at = Some(at);
                m.rto = (m.rto * 2).min(self.cfg.retransmit_max());
                self.timers.insert((at, TimerKind::Retransmit, id.clone()));
            }
            self.actions.push_back(Action::Send {
                lane,
                frame: wire::encode_frame(&frame),
            });
        }
    }

    fn fire(&mut self, at: Time, kind: TimerKind, id: &MessageId) {
        let Some(m) = self.outbox.get_mut(id) else {
            return;
        };
        match kind {
            TimerKind::Retransmit => {
                if m.retransmit_at == Some(at)
                    && !m.relay_holds
                    && m.delivered.is_none()
                    && self.connected
                {
                    m.retransmit_at = None;
                    self.send_queue.insert(id.clone());
                }
            }
            TimerKind::Delivered => {
                if m.delivered_deadline != at || m.delivered.is_some() {
                    return;
                }
                m.transport = m.transport.raised();
                m.escalations += 1;
                m.delivered_deadline = self.now.plus(self.cfg.delivered_deadline(m.transport));
                let (to, count, next) = (m.transport, m.escalations, m.delivered_deadline);
                if let OutState::Sealed { envelope, .. } = &m.state {
                    // The recipient may have lost the session; offer the setup again.
                    if let Some(s) = self.session_setups.get_mut(&envelope.header.session) {
                        s.1 = false;
                    }
                }
                self.timers.insert((next, TimerKind::Delivered, id.clone()));
                self.escalate(id, DeadlineKind::Delivered, to, count);
                if matches!(self.outbox[id].state, OutState::Sealed { .. }) {
                    self.send_queue.insert(id.clone());
                }
            }
            TimerKind::Acknowledged => {
                if m.ack_deadline != Some(at) || m.acknowledged.is_some() || m.delivered.is_none() {
                    return;
                }
                m.transport = m.transport.raised();
                m.escalations += 1;
                m.ack_deadline = self
                    .cfg
                    .acknowledged_deadline(m.transport)
                    .map(|d| self.now.plus(d));
                let (to, count, next) = (m.transport, m.escalations, m.ack_deadline);
                if let Some(next) = next {
                    self.timers
                        .insert((next, TimerKind::Acknowledged, id.clone()));
                }
                self.escalate(id, DeadlineKind::Acknowledged, to, count);
                let notice = Signed::sign(
                    EscalationNotice {
                        from: self.me.clone(),
                        to: self.partner.clone(),
                        message: id.clone(),
                        level: to,
                        count,
                        at: self.now,
                    },
                    &self.key,
                );
                if self.connected {
                    self.actions
                        .push_back(send_control(&Frame::Escalation(notice)));
                }
            }
        }
    }

    fn escalate(&mut self, id: &MessageId, kind: DeadlineKind, to: Precedence, count: u32) {
        let at = self.now;
        let write = self.persist(Record::Escalated {
            id: id.clone(),
            kind,
            to,
            at,
        });
        let _ = write;
        self.actions.push_back(Action::Escalate(Escalation {
            id: id.clone(),
            kind,
            escalated_to: to,
            count,
            at,
        }));
    }

    fn on_accepted(&mut self, a: Accepted) {
        if a.id.sender != self.me {
            return;
        }
        let Some(m) = self.outbox.get_mut(&a.id) else {
            // Delivered (and forgotten) before the relay's reply arrived: still report the level
            // once, stamped now.
            if self.late_accepted.remove(&a.id) {
                self.actions.push_back(Action::Report(Report {
                    id: a.id,
                    level: AckLevel::Accepted { durable: a.durable },
                    at: self.now,
                }));
            }
            return;
        };
        m.relay_holds = true;
        m.retransmit_at = None;
        if m.accepted.is_some() {
            return;
        }
        m.accepted = Some(self.now);
        self.actions.push_back(Action::Report(Report {
            id: a.id,
            level: AckLevel::Accepted { durable: a.durable },
            at: self.now,
        }));
    }

    fn on_refused(&mut self, r: Refusal) {
        let id = r.id.clone();
        if let Some(id) = &id {
            if let Some(m) = self.outbox.get_mut(id) {
                // Keep the message; try again after the backoff.
                let at = self.now.plus(m.rto);
                m.retransmit_at = Some(at);
                m.relay_holds = false;
                m.rto = (m.rto * 2).min(self.cfg.retransmit_max());
                self.timers.insert((at, TimerKind::Retransmit, id.clone()));
                self.actions.push_back(Action::Report(Report {
                    id: id.clone(),
                    level: AckLevel::Refused(r.code),
                    at: self.now,
                }));
            }
        }
        self.alarm(AlarmKind::Refused(r.code), id, r.detail);
    }

    fn on_receipt(&mut self, r: Signed<Receipt>) -> Result<(), VerifyError> {
        if r.body.from != self.partner || r.body.to != self.me {
            return Err(VerifyError::NotForMe);
        }
        r.verify(&self.partner_key)?;
        self.apply_receipt(&r, true)?;
        self.persist(Record::ReceiptReceived(r));
        self.last_heard = Some(self.now);
        Ok(())
    }

    /// Marks outgoing messages delivered/acknowledged. `report` is false during restore.
    fn apply_receipt(&mut self, r: &Signed<Receipt>, report: bool) -> Result<(), VerifyError> {
        let body = &r.body;
        let id_at = |seq| MessageId {
            sender: body.to.clone(),
            channel: body.channel.clone(),
            precedence: body.precedence,
            seq,
        };
        match &body.kind {
            ReceiptKind::Delivered { upto, head } => {
                let head_id = id_at(*upto);
                // The receipt must name the hash we sent at `upto`, if we still track it.
                if let Some(m) = self.outbox.get(&head_id) {
                    if let OutState::Sealed { hash, .. } = &m.state {
                        if hash != head {
                            return Err(VerifyError::ReceiptMismatch(head_id));
                        }
                    }
                }
                let lane_start = id_at(Seq(0));
                let ids: Vec<MessageId> = self
                    .outbox
                    .range(lane_start..=head_id)
                    .filter(|(_, m)| m.delivered.is_none())
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in ids {
                    let Some(m) = self.outbox.get_mut(&id) else {
                        continue;
                    };
                    m.delivered = Some(body.at);
                    if let Some(at) = m.retransmit_at.take() {
                        self.timers.remove(&(at, TimerKind::Retransmit, id.clone()));
                    }
                    if let OutState::Sealed { envelope, .. } = &m.state {
                        if let Some(s) = self.session_setups.get_mut(&envelope.header.session) {
                            s.1 = true;
                        }
                    }
                    if report {
                        self.actions.push_back(Action::Report(Report {
                            id: id.clone(),
                            level: AckLevel::Delivered,
                            at: body.at,
                        }));
                    }
                    self.forget_if_done(&id);
                }
            }
            ReceiptKind::Acknowledged { seq, hash } => {
                let id = id_at(*seq);
                let Some(m) = self.outbox.get_mut(&id) else {
                    // No acknowledgement was expected, so the message left memory once
                    // delivered; the signed receipt still tells the operator.
                    if report && self.forgotten_unacked(&id) {
                        self.actions.push_back(Action::Report(Report {
                            id,
                            level: AckLevel::Acknowledged,
                            at: body.at,
                        }));
                    }
                    return Ok(());
                };
                if let OutState::Sealed { hash: h, .. } = &m.state {
                    if h != hash {
                        return Err(VerifyError::ReceiptMismatch(id));
                    }
                }
                if m.acknowledged.is_some() {
                    return Ok(());
                }
                // An acknowledgement implies delivery.
                if m.delivered.is_none() {
                    m.delivered = Some(body.at);
                }
                m.acknowledged = Some(body.at);
                if report {
                    self.actions.push_back(Action::Report(Report {
                        id: id.clone(),
                        level: AckLevel::Acknowledged,
                        at: body.at,
                    }));
                }
                self.forget_if_done(&id);
            }
        }
        Ok(())
    }

    /// Whether `id` was ours, delivered and dropped from memory without an expected ack.
    fn forgotten_unacked(&self, id: &MessageId) -> bool {
        self.cfg.acknowledged_deadline(id.precedence).is_none()
            && self
                .out_lanes
                .get(&(id.channel.clone(), id.precedence))
                .is_some_and(|l| id.seq <= l.last_seq)
    }

    /// Drops a finished message from memory (the store keeps its history).
    fn forget_if_done(&mut self, id: &MessageId) {
        let Some(m) = self.outbox.get(id) else { return };
        let done = m.delivered.is_some() && (m.acknowledged.is_some() || m.ack_deadline.is_none());
        // Timers are deleted lazily when they fire; drop the ones that can no longer matter
        // so memory does not hold one entry per message until its deadline.
        self.timers
            .remove(&(m.delivered_deadline, TimerKind::Delivered, id.clone()));
        if let Some(at) = m.retransmit_at {
            self.timers.remove(&(at, TimerKind::Retransmit, id.clone()));
        }
        if done {
            if let Some(at) = m.ack_deadline {
                self.timers
                    .remove(&(at, TimerKind::Acknowledged, id.clone()));
            }
            if m.accepted.is_none() {
                if self.late_accepted.len() >= MAX_LATE_ACCEPTED {
                    self.late_accepted.pop_first();
                }
                self.late_accepted.insert(id.clone());
            }
            self.outbox.remove(id);
            self.send_queue.remove(id);
        } else if let Some(at) = m.ack_deadline {
            self.timers
                .insert((at, TimerKind::Acknowledged, id.clone()));
        }
    }

    // ----- internals: receiver --------------------------------------------------------------

    fn on_envelope(&mut self, f: EnvelopeFrame) -> Result<(), VerifyError> {
        let h = &f.envelope.header;
        if h.recipient != self.me || h.sender != self.partner {
            return Err(VerifyError::NotForMe);
        }
        let id = h.message_id();
        if h.seq.0 == 0 || h.sealed_len as usize != f.envelope.sealed.len() {
            return Err(VerifyError::Malformed("bad sequence or length"));
        }
        for p in Precedence::ALL {
            let ok = if p < h.precedence {
                h.after[p.index()] == 0
            } else if p == h.precedence {
                h.after[p.index()] == h.seq.0 - 1
            } else {
                true
            };
            if !ok {
                return Err(VerifyError::Malformed("dependency vector"));
            }
        }
        let hash = f.envelope.hash();
        let key = (h.channel.clone(), h.precedence);
        let window = self.cfg.receive_window();
        let lane = self.in_lanes.entry(key.clone()).or_default();
        if h.seq <= lane.delivered {
            return match lane.delivered_hashes.get(&h.seq) {
                Some(known) if *known != hash => Err(VerifyError::Equivocation(id)),
                _ => {
                    // An identical duplicate: answer with the stored receipt, silently.
                    if let Some((w, r)) = lane.last_receipt.clone() {
                        self.gate(w, send_control(&Frame::Receipt(r)));
                    }
                    Ok(())
                }
            };
        }
        if h.seq.0 > lane.delivered.0 + window {
            // Beyond the window: the sender will offer it again.
            return Ok(());
        }
        if let Some(existing) = lane.buffer.get(&h.seq) {
            if existing.hash == hash {
                if existing.signature.is_none() && f.head.is_some() {
                    let head = ChainHead::of(&f.envelope, hash);
                    if let Some(sig) = f.head {
                        verify_head(&head, &sig, &self.partner_key)?;
                        if let Some(p) = self
                            .in_lanes
                            .get_mut(&key)
                            .and_then(|l| l.buffer.get_mut(&h.seq))
                        {
                            p.signature = Some(sig);
                        }
                        return self.release(&key.0);
                    }
                }
                return Ok(());
            }
        }
        // Signatures are checked before anything is stored, so a forged head never displaces a
        // genuine envelope.
        if let Some(sig) = &f.head {
            verify_head(&ChainHead::of(&f.envelope, hash), sig, &self.partner_key)?;
        }
        let conflicting = self
            .in_lanes
            .get(&key)
            .and_then(|l| l.buffer.get(&h.seq))
            .map(|p| p.signature.is_some());
        if let Some(existing_signed) = conflicting {
            if existing_signed || f.head.is_none() {
                return Err(VerifyError::Equivocation(id));
            }
            // The signed one wins; the unsigned impostor is dropped below by insert.
        }
        let session = self.open_session(h.session, h.epoch, f.setup.as_ref())?;
        let aad = h.encode();
        let opened = session
            .open(h.precedence as u8, h.seq.0, &aad, &f.envelope.sealed)
            .map_err(|_| VerifyError::DecryptFailed)?;
        let plaintext: Plaintext =
            postcard::from_bytes(&opened).map_err(|_| VerifyError::Malformed("plaintext"))?;
        let seq = h.seq;
        let size = f.envelope.sealed.len() + plaintext.body.len();
        if self.buffered_bytes + size > MAX_BUFFERED_BYTES {
            // Full: the sender offers it again later.
            return Ok(());
        }
        let pending = Pending {
            envelope: f.envelope,
            hash,
            plaintext,
            signature: f.head,
            transport: f.transport,
        };
        if let Some(lane) = self.in_lanes.get_mut(&key) {
            self.buffered_bytes += size;
            if let Some(old) = lane.buffer.insert(seq, pending) {
                self.buffered_bytes -= old.size();
            }
        }
        self.last_heard = Some(self.now);
        let released = self.release(&key.0);
        if conflicting.is_some() {
            return Err(VerifyError::Equivocation(id));
        }
        released
    }

    fn open_session(
        &mut self,
        id: SessionId,
        epoch: u32,
        setup: Option<&SessionSetup>,
    ) -> Result<&RecvSession, VerifyError> {
        let Some(key) = self.sealing.get(&epoch) else {
            return Err(VerifyError::StaleEpoch { epoch });
        };
        if !self.recv_sessions.contains_key(&id) {
            let Some(setup) = setup else {
                return Err(VerifyError::Malformed("unknown session and no setup"));
            };
            if setup.epoch != epoch || SessionId::of_encapsulated(&setup.encapsulated) != id {
                return Err(VerifyError::Malformed(
                    "session setup does not match header",
                ));
            }
            let info = session_info(&self.partner, &self.me, epoch);
            let session = RecvSession::accept(key, &setup.encapsulated, &info)
                .map_err(|_| VerifyError::DecryptFailed)?;
            self.recv_sessions.insert(id, session);
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

    /// Releases every buffered message the ordering rule allows, highest lane first, and queues
    /// one signed cumulative receipt per lane that advanced.
    fn release(&mut self, channel: &Channel) -> Result<(), VerifyError> {
        let mut advanced: BTreeSet<Precedence> = BTreeSet::new();
        let mut error = Ok(());
        loop {
            let mut progressed = false;
            for p in Precedence::ALL.into_iter().rev() {
                loop {
                    if let Err(e) = self.verify_chain(channel, p) {
                        error = Err(e);
                    }
                    let key = (channel.clone(), p);
                    let Some(lane) = self.in_lanes.get(&key) else {
                        break;
                    };
                    let next = lane.delivered.next();
                    if lane.verified < next {
                        break;
                    }
                    let Some(pending) = lane.buffer.get(&next) else {
                        break;
                    };
                    let after = pending.envelope.header.after;
                    let deps_met = Precedence::ALL.into_iter().filter(|q| *q > p).all(|q| {
                        self.in_lanes
                            .get(&(channel.clone(), q))
                            .map_or(0, |l| l.delivered.0)
                            >= after[q.index()]
                    });
                    if !deps_met {
                        break;
                    }
                    self.deliver(channel, p, next);
                    advanced.insert(p);
                    progressed = true;
                }
            }
            if !progressed {
                break;
            }
        }
        for p in advanced {
            let key = (channel.clone(), p);
            let Some(lane) = self.in_lanes.get(&key) else {
                continue;
            };
            let receipt = Signed::sign(
                Receipt {
                    from: self.me.clone(),
                    to: self.partner.clone(),
                    channel: channel.clone(),
                    precedence: p,
                    kind: ReceiptKind::Delivered {
                        upto: lane.delivered,
                        head: lane.last_hash,
                    },
                    at: self.now,
                },
                &self.key,
            );
            let write = WriteId(self.next_write);
            if let Some(lane) = self.in_lanes.get_mut(&key) {
                lane.last_receipt = Some((write, receipt.clone()));
            }
            self.gate(write, send_control(&Frame::Receipt(receipt)));
        }
        error
    }

    /// Advances `verified` over the contiguous buffered run that a signed head covers.
    fn verify_chain(&mut self, channel: &Channel, p: Precedence) -> Result<(), VerifyError> {
        let key = (channel.clone(), p);
        let Some(lane) = self.in_lanes.get_mut(&key) else {
            return Ok(());
        };
        let mut expected = lane.last_hash;
        let mut seq = lane.delivered.next();
        let mut covered = lane.verified;
        while let Some(pending) = lane.buffer.get(&seq) {
            if pending.envelope.header.prev != expected {
                let id = pending.envelope.header.message_id();
                if let Some(p) = lane.buffer.remove(&seq) {
                    self.buffered_bytes -= p.size();
                }
                return Err(VerifyError::BrokenChain(id));
            }
            expected = pending.hash;
            if pending.signature.is_some() {
                covered = covered.max(seq);
            }
            seq = seq.next();
        }
        lane.verified = covered;
        Ok(())
    }

    fn deliver(&mut self, channel: &Channel, p: Precedence, seq: Seq) {
        let key = (channel.clone(), p);
        let Some(lane) = self.in_lanes.get_mut(&key) else {
            return;
        };
        let Some(pending) = lane.buffer.remove(&seq) else {
            return;
        };
        self.buffered_bytes -= pending.size();
        lane.delivered = seq;
        lane.last_hash = pending.hash;
        lane.delivered_hashes.insert(seq, pending.hash);
        while lane.delivered_hashes.len() > DELIVERED_HASH_HISTORY {
            lane.delivered_hashes.pop_first();
        }
        let id = pending.envelope.header.message_id();
        let delivery = Delivery {
            id: id.clone(),
            to: self.me.clone(),
            sent_at: pending.plaintext.sent_at,
            received_at: self.now,
            transport: pending.transport,
            body: pending.plaintext.body,
        };
        let expects_ack = self.cfg.acknowledged_deadline(p).is_some();
        self.inbox.insert(
            id,
            InMsg {
                hash: pending.hash,
                acknowledged: None,
                ack_receipt: None,
                expects_ack,
            },
        );
        let session = pending.envelope.header.session;
        if let Some(i) = self
            .unverified_sessions
            .iter()
            .position(|(s, _)| *s == session)
        {
            // A verified message vouches for its session: keep it across restarts from now on.
            if let Some((id, setup)) = self.unverified_sessions.remove(i) {
                self.persist(Record::RecvSession { id, setup });
            }
        }
        let write = self.persist(Record::Received {
            delivery: delivery.clone(),
            envelope: pending.envelope,
            head: pending.signature,
        });
        self.gate(write, Action::Deliver(delivery));
    }

    fn on_announcement(&mut self, a: Signed<Announcement>) -> Result<(), VerifyError> {
        if a.body.endpoint == self.me {
            return Ok(());
        }
        if a.body.endpoint != self.partner {
            return Err(VerifyError::NotForMe);
        }
        if a.body.identity != self.partner_key {
            self.alarm(
                AlarmKind::PartnerKeyChanged,
                None,
                format!(
                    "partner {} announced identity key {} but {} is pinned",
                    self.partner, a.body.identity, self.partner_key
                ),
            );
            return Err(VerifyError::UnknownSigner);
        }
        a.verify(&self.partner_key)?;
        if a.body.suite != SUITE_XWING_CHACHA20_ED25519 {
            return Err(VerifyError::UnknownSuite(a.body.suite));
        }
        if let Some(current) = &self.partner_announcement {
            if a.body.epoch < current.body.epoch || *current == a {
                return Ok(());
            }
            if a.body.epoch == current.body.epoch {
                return Err(VerifyError::Equivocation(MessageId {
                    sender: self.partner.clone(),
                    channel: Channel::default(),
                    precedence: Precedence::Flash,
                    seq: Seq(0),
                }));
            }
        }
        self.persist(Record::PartnerAnnouncement(a.clone()));
        self.partner_announcement = Some(a);
        self.send_sessions.clear();
        self.seal_awaiting();
        Ok(())
    }

    fn on_link_test(&mut self, t: Signed<LinkTest>) -> Result<(), VerifyError> {
        if t.body.from != self.partner || t.body.to != self.me {
            return Err(VerifyError::NotForMe);
        }
        t.verify(&self.partner_key)?;
        let head = (t.body.audit_len, t.body.audit_head);
        if self.partner_audit_head != Some(head) {
            self.actions.push_back(Action::PartnerAuditHead(t));
        }
        self.partner_audit_head = Some(head);
        self.last_heard = Some(self.now);
        self.partner_online = Some(true);
        self.update_link();
        Ok(())
    }

    fn on_escalation(&mut self, e: Signed<EscalationNotice>) -> Result<(), VerifyError> {
        if e.body.from != self.partner
            || e.body.to != self.me
            || e.body.message.sender != self.partner
        {
            return Err(VerifyError::NotForMe);
        }
        e.verify(&self.partner_key)?;
        self.last_heard = Some(self.now);
        if let Some(msg) = self.inbox.get(&e.body.message) {
            if let Some((w, r)) = msg.ack_receipt.clone() {
                // Our acknowledgement was lost on the way: send it again, no need to re-alert.
                self.gate(w, send_control(&Frame::Receipt(r)));
                return Ok(());
            }
        }
        self.persist(Record::PartnerEscalated {
            id: e.body.message.clone(),
            level: e.body.level,
        });
        self.actions.push_back(Action::Realert(e.body));
        Ok(())
    }

    fn on_presence(&mut self, p: Presence) {
        if p.endpoint == self.partner {
            self.partner_online = Some(p.online);
            if p.online {
                // A partner that just came back may have missed our announcement.
                self.send_announcement();
            }
            self.update_link();
        }
    }

    // ----- internals: shared ----------------------------------------------------------------

    fn install_sealing_key(&mut self, epoch: u32, key: SealingKey, expires_at: Time) {
        let ann = Announcement {
            endpoint: self.me.clone(),
            identity: self.key.public(),
            epoch,
            suite: SUITE_XWING_CHACHA20_ED25519,
            sealing_key: key.public_bytes(),
            expires_at,
        };
        self.own_announcement = Some(Signed::sign(ann, &self.key));
        self.sealing.insert(epoch, key);
    }

    fn send_announcement(&mut self) {
        if let Some(a) = self.own_announcement.clone() {
            // The sealing key must be durable before anyone seals to it.
            let w = WriteId(self.next_write);
            self.gate(w, send_control(&Frame::Announcement(a)));
        }
    }

    fn send_link_test(&mut self) {
        self.link_seq += 1;
        let t = Signed::sign(
            LinkTest {
                from: self.me.clone(),
                to: self.partner.clone(),
                seq: self.link_seq,
                at: self.now,
                audit_len: self.audit_head.0,
                audit_head: self.audit_head.1,
            },
            &self.key,
        );
        self.actions.push_back(send_control(&Frame::LinkTest(t)));
    }

    fn update_link(&mut self) {
        let heard_recently = self
            .last_heard
            .is_some_and(|h| self.now < h.plus(self.degraded_after()));
        let state = if !self.connected {
            LinkState::Down
        } else if heard_recently && self.partner_online != Some(false) {
            LinkState::Up
        } else {
            LinkState::Degraded
        };
        if state != self.link {
            self.link = state;
            self.link_since = self.now;
            self.actions.push_back(Action::Link {
                state,
                since: self.now,
            });
        }
    }

    fn remember_ack(&mut self, write: WriteId, receipt: Signed<Receipt>) {
        if self.recent_acks.len() == RECENT_ACKS {
            self.recent_acks.pop_front();
        }
        self.recent_acks.push_back((write, receipt));
    }

    fn persist(&mut self, record: Record) -> WriteId {
        self.next_write += 1;
        let id = WriteId(self.next_write);
        self.actions.push_back(Action::Persist { id, record });
        id
    }

    fn gate(&mut self, write: WriteId, action: Action) {
        if write.0 <= self.persisted {
            self.actions.push_back(action);
        } else {
            self.gated.push_back((write, action));
        }
    }

    fn alarm(&mut self, kind: AlarmKind, message: Option<MessageId>, detail: String) {
        let alarm = Alarm {
            at: self.now,
            kind,
            message,
            detail,
        };
        if self.alarms.len() == MAX_RECENT_ALARMS {
            self.alarms.pop_front();
        }
        self.alarms.push_back(alarm.clone());
        self.actions.push_back(Action::Alarm(alarm));
    }

    fn rebuild_timers(&mut self) {
        self.timers.clear();
        for (id, m) in &self.outbox {
            if m.delivered.is_none() {
                self.timers
                    .insert((m.delivered_deadline, TimerKind::Delivered, id.clone()));
            }
            if let Some(at) = m.ack_deadline {
                if m.acknowledged.is_none() {
                    self.timers
                        .insert((at, TimerKind::Acknowledged, id.clone()));
                }
            }
        }
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
                self.install_sealing_key(epoch, key, expires_at);
            }
            Record::PartnerAnnouncement(a) => {
                self.partner_announcement = Some(a);
                self.send_sessions.clear();
            }
            Record::SendSession { id, setup } => {
                self.session_setups.insert(id, (setup, false));
            }
            Record::Outgoing {
                id,
                after,
                sent_at,
                body,
                envelope,
            } => {
                let lane = self
                    .out_lanes
                    .entry((id.channel.clone(), id.precedence))
                    .or_default();
                lane.last_seq = lane.last_seq.max(id.seq);
                let state = match (body, envelope) {
                    (_, Some(envelope)) => {
                        let hash = envelope.hash();
                        lane.last_hash = hash;
                        OutState::Sealed { envelope, hash }
                    }
                    (Some(body), None) => {
                        self.awaiting_key.insert((sent_at, id.clone()));
                        OutState::AwaitingKey { body }
                    }
                    (None, None) => {
                        return Err(inconsistent(
                            "outgoing record with neither body nor envelope",
                        ));
                    }
                };
                let p = id.precedence;
                self.outbox.insert(
                    id,
                    OutMsg {
                        sent_at,
                        after,
                        state,
                        write: WriteId(0),
                        transport: p,
                        escalations: 0,
                        accepted: None,
                        relay_holds: false,
                        delivered: None,
                        acknowledged: None,
                        delivered_deadline: sent_at.plus(self.cfg.delivered_deadline(p)),
                        ack_deadline: self.cfg.acknowledged_deadline(p).map(|d| sent_at.plus(d)),
                        retransmit_at: None,
                        rto: self.cfg.retransmit_initial(),
                    },
                );
            }
            Record::Sealed { id, envelope } => {
                let hash = envelope.hash();
                let lane = self
                    .out_lanes
                    .entry((id.channel.clone(), id.precedence))
                    .or_default();
                lane.last_hash = hash;
                let m = self
                    .outbox
                    .get_mut(&id)
                    .ok_or_else(|| inconsistent("sealed record for unknown message"))?;
                m.state = OutState::Sealed { envelope, hash };
                self.awaiting_key.retain(|(_, i)| *i != id);
            }
            Record::Escalated { id, kind, to, at } => {
                if let Some(m) = self.outbox.get_mut(&id) {
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
                self.apply_receipt(&r, false)
                    .map_err(|e| inconsistent(&e.to_string()))?;
            }
            Record::RecvSession { id, setup } => {
                let key = self
                    .sealing
                    .get(&setup.epoch)
                    .ok_or_else(|| inconsistent("session for unknown epoch"))?;
                let info = session_info(&self.partner, &self.me, setup.epoch);
                let session = RecvSession::accept(key, &setup.encapsulated, &info)
                    .map_err(|e| RestoreError::Key(e.to_string()))?;
                self.recv_sessions.insert(id, session);
            }
            Record::Received {
                delivery,
                envelope,
                head: _,
            } => {
                let hash = envelope.hash();
                let id = delivery.id;
                let lane = self
                    .in_lanes
                    .entry((id.channel.clone(), id.precedence))
                    .or_default();
                if id.seq != lane.delivered.next() {
                    return Err(inconsistent("received record out of sequence"));
                }
                lane.delivered = id.seq;
                lane.verified = id.seq;
                lane.last_hash = hash;
                lane.delivered_hashes.insert(id.seq, hash);
                while lane.delivered_hashes.len() > DELIVERED_HASH_HISTORY {
                    lane.delivered_hashes.pop_first();
                }
                let receipt = Signed::sign(
                    Receipt {
                        from: self.me.clone(),
                        to: self.partner.clone(),
                        channel: id.channel.clone(),
                        precedence: id.precedence,
                        kind: ReceiptKind::Delivered {
                            upto: id.seq,
                            head: hash,
                        },
                        at: delivery.received_at,
                    },
                    &self.key,
                );
                lane.last_receipt = Some((WriteId(0), receipt));
                let expects_ack = self.cfg.acknowledged_deadline(id.precedence).is_some();
                self.inbox.insert(
                    id,
                    InMsg {
                        hash,
                        acknowledged: None,
                        ack_receipt: None,
                        expects_ack,
                    },
                );
            }
            Record::OperatorAck { id, receipt } => {
                let m = self
                    .inbox
                    .get_mut(&id)
                    .ok_or_else(|| inconsistent("ack for unknown message"))?;
                m.acknowledged = Some(receipt.body.at);
                m.ack_receipt = Some((WriteId(0), receipt.clone()));
                self.remember_ack(WriteId(0), receipt);
            }
            Record::PartnerEscalated { .. } => {}
        }
        Ok(())
    }
}

fn send_control(frame: &Frame) -> Action {
    Action::Send {
        lane: Lane::Control,
        frame: wire::encode_frame(frame),
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

#[cfg(test)]
mod tests;
