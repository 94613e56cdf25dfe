//! The engine's public vocabulary: what it asks the caller to do ([`Action`]), what it reports
//! ([`Report`], [`Escalation`], [`Alarm`], [`Status`]) and why a command was refused.
//!
//! Plain data only: nothing here holds state or decides anything. Every type is re-exported as
//! `hotline_proto::engine::*`.

use serde::{Deserialize, Serialize};

use crate::crypto::{Digest, IdentityKey, IdentityPublicKey};
use crate::envelope::{EscalationNotice, LinkTest, Signed, VerifyError};
use crate::types::{Channel, EndpointId, Lane, MessageId, Precedence, Time};
use crate::wire::{MAX_BODY_LEN, RefusalCode};

use super::Record;

/// Identifies one `Persist` action; confirmations are cumulative (see
/// [`Engine::handle_persisted`](super::Engine::handle_persisted)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WriteId(pub u64);

/// What the engine asks the caller to do, in order.
#[expect(
    clippy::large_enum_variant,
    reason = "actions move once from the queue to the caller; boxing would allocate per action"
)]
#[derive(Debug)]
pub enum Action {
    /// Write these bytes (a whole frame, length prefix included) on `lane`.
    Send {
        /// Stream to use.
        lane: Lane,
        /// Encoded frame.
        frame: Vec<u8>,
    },
    /// Make `record` durable, then call [`Engine::handle_persisted`](super::Engine::handle_persisted) with `id`.
    Persist {
        /// Confirmation handle.
        id: WriteId,
        /// What to store.
        record: Record,
        /// The chain hash of the envelope `record` holds (sent or received), as the engine
        /// computed it: an audit entry for the record can reuse it rather than hash the
        /// envelope again.
        envelope_hash: Option<Digest>,
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
    /// The sender's wall clock at submission (signed through the chain), when it lies within
    /// [`EngineConfig::clock_skew_tolerance`](super::EngineConfig::clock_skew_tolerance) of
    /// ours; otherwise `received_at`, so a wild partner clock is never shown as fact (the
    /// [`AlarmKind::ClockSkew`] alarm names the claimed time). The claim itself stays inside
    /// the sealed envelope.
    pub sent_at: Time,
    /// Our wall clock when it was delivered.
    pub received_at: Time,
    /// The transport precedence the *relay* says it carried the message at (above
    /// `id.precedence` if the sender escalated it). Unsigned: the relay sets it, so it is the
    /// relay's claim, fit for scheduling hints and display as such, never proof of escalation.
    pub relay_transport: Precedence,
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
    /// Undelivered: the partner lost its store before delivering (or acknowledging) it. The
    /// message is no longer tracked; send it again if it still matters.
    Lost,
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
    /// The partner's announced sealing key expired and no newer one arrived.
    PartnerKeyExpired,
    /// The partner lost its store: messages in flight to it were reported lost and sequences
    /// restarted both ways.
    PartnerLostStore,
    /// This node's store was lost; the partner restarted its sequences for it.
    StoreLossRepaired,
    /// A partner time lay outside the clock-skew tolerance around ours; our own times are shown
    /// instead. Raised once per episode: again only after a partner link test carried a
    /// plausible time.
    ClockSkew,
    /// The partner opened more inbound lanes than the engine keeps; envelopes for new lanes
    /// are refused.
    LaneLimit,
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
    /// Detail for the log (at most [`MAX_ALARM_DETAIL`] bytes; longer text, e.g. a relay's
    /// refusal detail, is cut with a marker).
    pub detail: String,
    /// Occurrences this alarm stands for: 1 for the first of its kind; a later alarm of the
    /// same kind sums those held back since (see [`Status::held_alarms`]). `at`, `message`
    /// and `detail` are the latest occurrence's.
    pub count: u32,
}

/// The longest [`Alarm::detail`] the engine emits, in bytes.
pub const MAX_ALARM_DETAIL: usize = 256;

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
    /// Delivered, but the engine forgot its state (see
    /// [`EngineConfig::settled_history`](super::EngineConfig::settled_history)):
    /// acknowledge it with its stored envelope through
    /// [`Engine::acknowledge_stored`](super::Engine::acknowledge_stored).
    #[error("message {0} is no longer held in memory; acknowledge it from the store")]
    Forgotten(MessageId),
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
    /// When the last fresh signed link test from the partner arrived.
    pub partner_last_heard: Option<Time>,
    /// Partner key epoch known, if any.
    pub partner_epoch: Option<u32>,
    /// Our current sealing-key epoch.
    pub own_epoch: Option<u32>,
    /// Per precedence, lowest first.
    pub lanes: [LaneDepth; 4],
    /// Delivered messages our operator has not acknowledged.
    pub pending_operator_acks: Vec<MessageId>,
    /// Outgoing messages that escalated and are not finished.
    pub open_escalations: Vec<(MessageId, Precedence, u32)>,
    /// Recent alarms, newest last.
    pub alarms: Vec<Alarm>,
    /// Alarms counted but not yet emitted because one of their kind was emitted within the
    /// coalescing window; each is emitted, with its count, when the window ends.
    pub held_alarms: Vec<Alarm>,
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
    /// The next deadline that escalates it, if any: `delivered` until it is delivered, then
    /// `acknowledged` where its precedence expects an acknowledgement.
    pub next_deadline: Option<(DeadlineKind, Time)>,
}

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
