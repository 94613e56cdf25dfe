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
