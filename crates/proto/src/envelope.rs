//! What travels end to end: envelopes, chain heads, receipts, announcements, link tests and
//! escalation notices, each with the signature or hash that makes it provable.
//!
//! The relay may read every [`Header`] (sender, recipient, channel, precedence, sequence numbers,
//! size) because it routes by them; it cannot read a body (sealed under a per-message key from
//! the channel's HPKE context) nor forge anything signed (it lacks the endpoints' identity keys).
//!
//! Invariant: every signed payload here is `Domain ‖ postcard(statement)`, and verification
//! goes through [`Signed::verify`], which returns a [`VerifyError`] naming what failed.

use serde::{Deserialize, Serialize};

use crate::crypto::{Digest, Domain, IdentityKey, IdentityPublicKey, SessionId, Signature};
use crate::types::{Channel, EndpointId, MessageId, Precedence, Seq, Time};

/// Why an incoming item was refused. Each one is a peer's fault: the engine raises an alarm
/// and keeps running.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// Bytes that do not decode, or fields that contradict each other.
    #[error("malformed: {0}")]
    Malformed(&'static str),
    /// A protocol version we do not speak.
    #[error("unknown protocol version {0}")]
    UnknownVersion(u8),
    /// A cipher suite we do not speak.
    #[error("unknown cipher suite {0}")]
    UnknownSuite(u8),
    /// Signed by a key that is not the pinned partner key.
    #[error("signed by an unknown key (pinned partner key does not match)")]
    UnknownSigner,
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// Addressed to another endpoint, or from an endpoint that is not our partner.
    #[error("not for this endpoint")]
    NotForMe,
    /// The body does not open under the channel key with this header.
    #[error("decryption failed")]
    DecryptFailed,
    /// Same (sender, channel, lane, seq) as an earlier envelope, different content.
    #[error("equivocation: {0} seen before with different content")]
    Equivocation(MessageId),
    /// Sealed to a key epoch we no longer (or never) had.
    #[error("stale key epoch {epoch}")]
    StaleEpoch {
        /// The epoch named in the header.
        epoch: u32,
    },
    /// An envelope's `prev` does not match the hash of its predecessor in the lane.
    #[error("broken hash chain at {0}")]
    BrokenChain(MessageId),
    /// A receipt for something we never sent.
    #[error("receipt does not match what was sent: {0}")]
    ReceiptMismatch(MessageId),
}

/// The routing header: everything the relay may see, signed (through the chain) by the sender.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// Who sent it (must equal the TLS identity of the connection that carried it).
    pub sender: EndpointId,
    /// Who it is for.
    pub recipient: EndpointId,
    /// The channel inside the hotline.
    pub channel: Channel,
    /// The ordering lane: the original precedence, never changed by escalation.
    pub precedence: Precedence,
    /// Position in the lane, from 1.
    pub seq: Seq,
    /// For each lane at or above `precedence`, the latest sequence sent in that lane before
    /// this message (0 = none). Lower lanes are always 0: a message never waits for them.
    pub after: [u64; 4],
    /// The recipient's sealing-key epoch this was sealed to.
    pub epoch: u32,
    /// The HPKE context this was sealed in.
    pub session: SessionId,
    /// Hash of the previous envelope in this lane ([`Digest::default`] for the first).
    pub prev: Digest,
    /// Length of the sealed body in bytes.
    pub sealed_len: u32,
}

impl Header {
    /// The id of the message this header belongs to.
    pub fn message_id(&self) -> MessageId {
        MessageId {
            sender: self.sender.clone(),
            channel: self.channel.clone(),
            precedence: self.precedence,
            seq: self.seq,
        }
    }

    /// The header as bound into the AEAD (associated data) and the envelope hash.
    pub fn encode(&self) -> Vec<u8> {
        crate::wire::encode_value(self)
    }
}

/// What is inside the seal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plaintext {
    /// Sender's wall-clock time at submission.
    pub sent_at: Time,
    /// The operator's text.
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

/// One message on the wire: a header and a sealed body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Routing header.
    pub header: Header,
    /// ChaCha20-Poly1305 ciphertext of a postcard-encoded [`Plaintext`].
    #[serde(with = "serde_bytes")]
    pub sealed: Vec<u8>,
}

impl Envelope {
    /// The chain hash of this envelope: header and ciphertext.
    pub fn hash(&self) -> Digest {
        Digest::of(Domain::EnvelopeHash, &[&self.header.encode(), &self.sealed])
    }
}

/// The encapsulated key that opens a session, sent alongside envelopes until the recipient has
/// confirmed (by a receipt) that it holds the session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionSetup {
    /// The recipient epoch the key was encapsulated to.
    pub epoch: u32,
    /// The X-Wing encapsulated key.
    #[serde(with = "serde_bytes")]
    pub encapsulated: Vec<u8>,
}

/// The statement a chain-head signature covers: "my lane reached `seq` with hash `hash`".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainHead {
    /// Signer (the sender).
    pub sender: EndpointId,
    /// The recipient.
    pub recipient: EndpointId,
    /// Channel.
    pub channel: Channel,
    /// Lane.
    pub precedence: Precedence,
    /// Sequence of the head envelope.
    pub seq: Seq,
    /// Hash of the head envelope.
    pub hash: Digest,
}

impl ChainHead {
    /// The head an envelope would make.
    pub fn of(envelope: &Envelope, hash: Digest) -> Self {
        let h = &envelope.header;
        Self {
            sender: h.sender.clone(),
            recipient: h.recipient.clone(),
            channel: h.channel.clone(),
            precedence: h.precedence,
            seq: h.seq,
            hash,
        }
    }
}

/// A delivered or acknowledged statement by a message's recipient.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// Who signs it: the recipient of the messages.
    pub from: EndpointId,
    /// The original sender, to whom the receipt goes.
    pub to: EndpointId,
    /// Channel.
    pub channel: Channel,
    /// Ordering lane.
    pub precedence: Precedence,
    /// What is stated.
    pub kind: ReceiptKind,
    /// Signer's wall-clock time.
    pub at: Time,
}

/// The two receipt levels.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReceiptKind {
    /// Every message in the lane up to `upto` is verified and durably stored; `head` is the hash
    /// of envelope `upto`, so the receipt covers the whole chain.
    Delivered {
        /// Highest contiguous delivered sequence.
        upto: Seq,
        /// Hash of that envelope.
        head: Digest,
    },
    /// An operator acknowledged message `seq` (whose hash is `hash`).
    Acknowledged {
        /// Acknowledged sequence.
        seq: Seq,
        /// Its envelope hash.
        hash: Digest,
    },
}

/// A sealing-key announcement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    /// Whose key.
    pub endpoint: EndpointId,
    /// The identity key that signs this (compared against the pin).
    pub identity: IdentityPublicKey,
    /// Key epoch, increasing.
    pub epoch: u32,
    /// Cipher suite id.
    pub suite: u8,
    /// X-Wing public key.
    #[serde(with = "serde_bytes")]
    pub sealing_key: Vec<u8>,
    /// After this, senders should wait for a newer announcement.
    pub expires_at: Time,
    /// The sender's incarnation: its lanes start after this sequence number. A new value means
    /// the sender's message sequences restarted (it lost its store, or restarted them for us).
    /// Derived from the clock when the incarnation began, so it grows across store loss.
    pub incarnation: u64,
    /// The partner incarnation the sender's current incarnation was started for; `0` when it
    /// started from nothing (a new or lost store).
    pub peer_incarnation: u64,
}

/// A periodic liveness probe carrying the sender's audit-chain head.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkTest {
    /// Sender.
    pub from: EndpointId,
    /// Partner.
    pub to: EndpointId,
    /// Counter.
    pub seq: u64,
    /// Sender's clock.
    pub at: Time,
    /// Sender's audit-log length.
    pub audit_len: u64,
    /// Sender's audit-log head hash.
    pub audit_head: Digest,
}

/// "Your operator has not acknowledged this in time."
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EscalationNotice {
    /// Sender of the original message.
    pub from: EndpointId,
    /// Its recipient.
    pub to: EndpointId,
    /// The message.
    pub message: MessageId,
    /// Its transport precedence now.
    pub level: Precedence,
    /// How many times this message has escalated.
    pub count: u32,
    /// Sender's clock.
    pub at: Time,
}

/// A statement and its signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signed<T> {
    /// What is stated.
    pub body: T,
    /// Ed25519 over `domain ‖ postcard(body)`.
    pub signature: Signature,
}

/// Statements that can be signed, each in its own domain.
pub trait Statement: Serialize {
    /// The signing domain.
    const DOMAIN: Domain;
}

impl Statement for ChainHead {
    const DOMAIN: Domain = Domain::ChainHead;
}
impl Statement for Receipt {
    const DOMAIN: Domain = Domain::Receipt;
}
impl Statement for Announcement {
    const DOMAIN: Domain = Domain::Announcement;
}
impl Statement for LinkTest {
    const DOMAIN: Domain = Domain::LinkTest;
}
impl Statement for EscalationNotice {
    const DOMAIN: Domain = Domain::Escalation;
}

fn encode_statement<T: Serialize>(body: &T) -> Vec<u8> {
    crate::wire::encode_value(body)
}

impl<T: Statement> Signed<T> {
    /// Signs `body` with `key`.
    pub fn sign(body: T, key: &IdentityKey) -> Self {
        let signature = key.sign(T::DOMAIN, &encode_statement(&body));
        Self { body, signature }
    }

    /// Checks the signature against `key`.
    pub fn verify(&self, key: &IdentityPublicKey) -> Result<&T, VerifyError> {
        key.verify(T::DOMAIN, &encode_statement(&self.body), &self.signature)
            .map_err(|_| VerifyError::BadSignature)?;
        Ok(&self.body)
    }
}

/// Signs a chain head without building the `Signed` wrapper (the envelope carries the fields).
pub fn sign_head(head: &ChainHead, key: &IdentityKey) -> Signature {
    key.sign(Domain::ChainHead, &encode_statement(head))
}

/// Verifies a chain-head signature.
pub fn verify_head(
    head: &ChainHead,
    sig: &Signature,
    key: &IdentityPublicKey,
) -> Result<(), VerifyError> {
    key.verify(Domain::ChainHead, &encode_statement(head), sig)
        .map_err(|_| VerifyError::BadSignature)
}
