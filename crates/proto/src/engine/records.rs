//! The durable records the engine emits and rebuilds itself from.
//!
//! The caller stores them in order (postcard-encoded, one row each) and never interprets them
//! except to show history; [`super::Engine::restore`] replays them. There is no "whole engine"
//! blob: each record is one fact that became true.

use serde::{Deserialize, Serialize};

use crate::crypto::{SecretBytes, SessionId, Signature};
use crate::envelope::Announcement;
use crate::envelope::{Envelope, Receipt, SessionSetup, Signed};
use crate::types::{MessageId, Precedence, Time};

use super::{DeadlineKind, Delivery};

/// One durable fact.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// Our sealing key for an epoch (secret: the store is the node's private storage).
    SealingKey {
        /// Epoch.
        epoch: u32,
        /// X-Wing secret key bytes (encoded as before, redacted in `Debug`, zeroed on drop).
        secret: SecretBytes,
        /// Announced expiry.
        expires_at: Time,
    },
    /// The partner's latest verified announcement.
    PartnerAnnouncement(Signed<Announcement>),
    /// An HPKE session we opened towards the partner.
    SendSession {
        /// Session id.
        id: SessionId,
        /// Encapsulated key, resent until the partner confirms.
        setup: SessionSetup,
    },
    /// An operator's message entered the outbox (sealed, or awaiting the partner's key).
    Outgoing {
        /// Its id.
        id: MessageId,
        /// Dependency vector.
        after: [u64; 4],
        /// Submission time.
        sent_at: Time,
        /// Plaintext, kept only while awaiting the partner's key.
        body: Option<Vec<u8>>,
        /// The sealed envelope, once sealed.
        envelope: Option<Envelope>,
    },
    /// A message that awaited the partner's key is now sealed.
    Sealed {
        /// Its id.
        id: MessageId,
        /// The envelope.
        envelope: Envelope,
    },
    /// An outgoing message missed a deadline and escalated.
    Escalated {
        /// Which message.
        id: MessageId,
        /// Which deadline.
        kind: DeadlineKind,
        /// New transport precedence.
        to: Precedence,
        /// When.
        at: Time,
    },
    /// A verified receipt from the partner.
    ReceiptReceived(Signed<Receipt>),
    /// An HPKE session the partner opened towards us.
    RecvSession {
        /// Session id.
        id: SessionId,
        /// Its encapsulated key.
        setup: SessionSetup,
    },
    /// A message delivered to our operator (the inbox, in delivery order).
    Received {
        /// What the operator sees. Only `envelope` and `head` are the partner's signed word:
        /// `delivery.relay_transport` is the relay's unsigned claim, and `delivery.sent_at` is
        /// the partner's clock only when it was plausible (see [`Delivery::sent_at`]).
        delivery: Delivery,
        /// The envelope as received (proof of what the partner sent).
        envelope: Envelope,
        /// Its chain-head signature, if it carried one.
        head: Option<Signature>,
    },
    /// Our operator acknowledged a message; the signed receipt we sent.
    OperatorAck {
        /// Which message.
        id: MessageId,
        /// The receipt.
        receipt: Signed<Receipt>,
    },
    /// The partner re-alerted us about a message.
    PartnerEscalated {
        /// Which message.
        id: MessageId,
        /// Its transport precedence now.
        level: Precedence,
    },
    /// Our message sequences (re)started: every lane starts after `incarnation`, and every
    /// message still in the outbox before this record was reported lost with the partner's
    /// store. The first record of a new store; stores written before it existed start at 0.
    Incarnation {
        /// Where our lanes start (the start time, in microseconds).
        incarnation: u64,
        /// The partner incarnation it was started for; `0`: started from nothing.
        peer: u64,
    },
}

/// Where the store may commit a record among the records handed to it before, so that a flash
/// never waits for a routine batch (issue 12): the node's store commits [`CommitOrder::Ahead`]
/// records first, in their own order, but never ahead of a [`CommitOrder::Barrier`] handed to
/// it earlier. The engine confirms them with [`super::Engine::handle_persisted_ahead`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitOrder {
    /// A flash message's own record (sent, sealed once the partner's key came, received, or
    /// acknowledged by our operator). It depends only on earlier flash records (a flash's
    /// envelope names the one before it) and on barriers: a message depends on no lane lower
    /// than its own, and a receipt only on the lane it covers.
    Ahead,
    /// Any other message record: nothing committed ahead of it depends on it.
    InTurn,
    /// Keys, sessions, announcements, incarnations: messages after them may depend on them.
    Barrier,
}

impl Record {
    /// How the store may order this record (see [`CommitOrder`]).
    pub fn commit_order(&self) -> CommitOrder {
        let flash = |p: Precedence| {
            if p == Precedence::Flash {
                CommitOrder::Ahead
            } else {
                CommitOrder::InTurn
            }
        };
        match self {
            Self::Outgoing { id, .. } | Self::Sealed { id, .. } | Self::OperatorAck { id, .. } => {
                flash(id.precedence)
            }
            Self::Received { delivery, .. } => flash(delivery.id.precedence),
            Self::Escalated { .. } | Self::ReceiptReceived(_) | Self::PartnerEscalated { .. } => {
                CommitOrder::InTurn
            }
            Self::SealingKey { .. }
            | Self::PartnerAnnouncement(_)
            | Self::SendSession { .. }
            | Self::RecvSession { .. }
            | Self::Incarnation { .. } => CommitOrder::Barrier,
        }
    }
}
