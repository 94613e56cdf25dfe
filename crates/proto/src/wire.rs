//! The wire format: one [`Frame`] enum for everything that crosses a QUIC stream.
//!
//! Layout of one frame:
//!
//! ```text
//! +----------------+---------+-------+---------------------+
//! | len: u32 (BE)  | version | suite | postcard(Frame)     |
//! +----------------+---------+-------+---------------------+
//!                  |<------------- len bytes ------------->|
//! ```
//!
//! `len` is checked against [`MAX_FRAME_LEN`] before anything is allocated, so a hostile peer
//! cannot make us reserve memory by announcing a large frame. [`decode_frame`] is the one
//! function that meets untrusted bytes; it never panics and returns a typed [`DecodeError`].
//!
//! Flow on a connection (node ↔ relay):
//! - both sides send [`Frame::Hello`] first on the control stream;
//! - the node sends envelopes on the stream of their *transport* precedence, everything else
//!   on the control stream;
//! - the relay answers [`Frame::Accepted`] (or [`Frame::Refused`]) and forwards envelopes,
//!   receipts, link tests, announcements and escalation notices to the recipient.

use serde::{Deserialize, Serialize};

use crate::crypto::{SUITE_XWING_CHACHA20_ED25519, Signature};
use crate::envelope::{
    Announcement, Envelope, EscalationNotice, LinkTest, Receipt, SessionSetup, Signed,
};
use crate::types::{EndpointId, MessageId, Precedence};

/// The protocol version this crate speaks. 2: announcements carry incarnations (where the
/// sender's lanes start), so a node that lost its store re-pairs by itself.
pub const PROTOCOL_VERSION: u8 = 2;
/// Largest message body an operator may send.
pub const MAX_BODY_LEN: usize = 256 * 1024;
/// Largest frame (after the length prefix), checked before allocation.
pub const MAX_FRAME_LEN: usize = MAX_BODY_LEN + 8 * 1024;
/// Bytes of the length prefix.
pub const LEN_PREFIX: usize = 4;

/// Everything that crosses the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    /// First frame on a connection, both ways.
    Hello(Hello),
    /// A message, on the stream of its transport precedence.
    Envelope(EnvelopeFrame),
    /// Relay → sender: the relay holds this message.
    Accepted(Accepted),
    /// A signed delivered/acknowledged receipt.
    Receipt(Signed<Receipt>),
    /// A signed liveness probe.
    LinkTest(Signed<LinkTest>),
    /// A signed sealing-key announcement.
    Announcement(Signed<Announcement>),
    /// A signed escalation notice.
    Escalation(Signed<EscalationNotice>),
    /// Relay → node: something was refused, with a typed reason.
    Refused(Refusal),
    /// Relay → node: whether a partner is connected.
    Presence(Presence),
}

/// Version hello.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Highest protocol version the sender speaks.
    pub version: u8,
    /// Software name and version, for logs.
    pub agent: String,
}

impl Hello {
    /// Whether a peer that sent this hello can be served: it must speak at least
    /// [`PROTOCOL_VERSION`]. Both sides call it on the hello they receive.
    pub fn check(&self) -> Result<(), HelloError> {
        if self.version < PROTOCOL_VERSION {
            return Err(HelloError::UnsupportedVersion {
                version: self.version,
                needed: PROTOCOL_VERSION,
            });
        }
        Ok(())
    }
}

/// Why a peer's [`Hello`] was refused. Always the peer's fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    /// The peer speaks only protocol versions older than ours.
    #[error("peer speaks protocol version {version}, {needed} needed")]
    UnsupportedVersion {
        /// The highest version the peer speaks.
        version: u8,
        /// The version we need.
        needed: u8,
    },
}

/// An envelope with its transport metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvelopeFrame {
    /// Precedence the relay schedules it at (raised by escalation; ordering is by the header).
    /// Not signed and not sealed: the relay may rewrite it, so a receiver treats it as the
    /// relay's claim (shown as `Delivery::relay_transport`), never as the sender's word.
    pub transport: Precedence,
    /// The envelope.
    pub envelope: Envelope,
    /// A chain-head signature over this envelope, when it ends a batch.
    pub head: Option<Signature>,
    /// The HPKE encapsulated key, until the recipient has confirmed the session.
    pub setup: Option<SessionSetup>,
}

/// Relay → sender: "I hold this".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    /// Which message.
    pub id: MessageId,
    /// True when the relay has it in a durable store, false when only in memory.
    pub durable: bool,
}

/// Why the relay refused something.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefusalCode {
    /// The recipient is not this endpoint's partner.
    NotPaired,
    /// The envelope's sender is not the connection's TLS identity.
    SenderMismatch,
    /// The relay is full for this recipient; try again later.
    Overloaded,
    /// The frame could not be decoded.
    Malformed,
    /// The relay dropped it after its time-to-live; the sender keeps it.
    Expired,
}

/// A typed refusal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// The message concerned, if the refusal is about one.
    pub id: Option<MessageId>,
    /// Why.
    pub code: RefusalCode,
    /// Human-readable detail.
    pub detail: String,
}

/// Whether an endpoint is connected to the relay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    /// Which endpoint.
    pub endpoint: EndpointId,
    /// Connected now.
    pub online: bool,
}

/// Why bytes did not decode into a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// More bytes are needed; `needed` is the total length of the frame including its prefix.
    #[error("incomplete frame: {needed} bytes needed")]
    Incomplete {
        /// Total bytes needed.
        needed: usize,
    },
    /// The length prefix exceeds [`MAX_FRAME_LEN`].
    #[error("frame of {len} bytes exceeds the {MAX_FRAME_LEN}-byte limit")]
    TooLarge {
        /// Announced length.
        len: usize,
    },
    /// A protocol version we do not speak.
    #[error("unknown protocol version {0}")]
    UnknownVersion(u8),
    /// A cipher suite we do not speak.
    #[error("unknown cipher suite {0}")]
    UnknownSuite(u8),
    /// The payload is not a valid frame.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// Encodes a frame with its length prefix, version and suite.
pub fn encode_frame(frame: &Frame) -> Vec<u8> {
    let mut out = vec![0u8; LEN_PREFIX + 2];
    out[LEN_PREFIX] = PROTOCOL_VERSION;
    out[LEN_PREFIX + 1] = SUITE_XWING_CHACHA20_ED25519;
    let mut out = encode_value_into(frame, out);
    let len = (out.len() - LEN_PREFIX) as u32;
    out[..LEN_PREFIX].copy_from_slice(&len.to_be_bytes());
    out
}

/// Whether an encoded frame is the partner's word about a flash: a receipt for a flash message
/// or an escalation notice at flash. A node takes these ahead of the relay's other control
/// frames (under a flood those are thousands of `Accepted` replies). Only receipts and notices
/// are decoded (their variant is the first payload byte); anything else, or anything that does
/// not decode, is not.
pub fn is_flash_word(frame: &[u8]) -> bool {
    const RECEIPT: u8 = 3;
    const ESCALATION: u8 = 6;
    if !matches!(frame.get(LEN_PREFIX + 2), Some(&(RECEIPT | ESCALATION))) {
        return false;
    }
    match decode_frame(frame) {
        Ok((Frame::Receipt(r), _)) => r.body.precedence == Precedence::Flash,
        Ok((Frame::Escalation(e), _)) => e.body.level == Precedence::Flash,
        _ => false,
    }
}

/// The postcard encoding of one of our own wire or record types.
///
/// Every value we sign, hash, store or send goes through here (or [`encode_value_into`]), so an
/// encoding failure can never turn into signing, hashing or sending empty bytes.
pub fn encode_value<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    encode_value_into(value, Vec::new())
}

/// [`encode_value`] appended to `out`.
pub fn encode_value_into<T: Serialize + ?Sized>(value: &T, out: Vec<u8>) -> Vec<u8> {
    // postcard fails only on serde constructs our types do not use (sequences or maps of unknown
    // length, `collect_str` without `alloc`) or on a full fixed buffer; a Vec grows. A failure is
    // therefore a bug in a type definition, caught by the first test that encodes it.
    #[expect(
        clippy::expect_used,
        reason = "infallible for our types; see the comment above"
    )]
    postcard::to_extend(value, out).expect("postcard encoding of a hotline type")
}

/// Reads the length prefix: the number of bytes that follow it, or an error if too large.
pub fn frame_len(prefix: [u8; LEN_PREFIX]) -> Result<usize, DecodeError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_FRAME_LEN {
        return Err(DecodeError::TooLarge { len });
    }
    if len < 2 {
        return Err(DecodeError::Malformed(
            "frame shorter than its version and suite".into(),
        ));
    }
    Ok(len)
}

/// Decodes one frame from the front of `buf`; returns it and the bytes consumed.
pub fn decode_frame(buf: &[u8]) -> Result<(Frame, usize), DecodeError> {
    let Some(prefix) = buf.get(..LEN_PREFIX) else {
        return Err(DecodeError::Incomplete { needed: LEN_PREFIX });
    };
    let mut p = [0u8; LEN_PREFIX];
    p.copy_from_slice(prefix);
    let len = frame_len(p)?;
    let total = LEN_PREFIX + len;
    let Some(body) = buf.get(LEN_PREFIX..total) else {
        return Err(DecodeError::Incomplete { needed: total });
    };
    Ok((decode_payload(body)?, total))
}

/// Decodes a frame's payload (the bytes after the length prefix: version, suite, postcard).
pub fn decode_payload(body: &[u8]) -> Result<Frame, DecodeError> {
    let [version, suite, rest @ ..] = body else {
        return Err(DecodeError::Malformed(
            "frame shorter than its version and suite".into(),
        ));
    };
    if *version != PROTOCOL_VERSION {
        return Err(DecodeError::UnknownVersion(*version));
    }
    if *suite != SUITE_XWING_CHACHA20_ED25519 {
        return Err(DecodeError::UnknownSuite(*suite));
    }
    let (frame, tail) = postcard::take_from_bytes::<Frame>(rest)
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if !tail.is_empty() {
        return Err(DecodeError::Malformed(format!(
            "{} trailing bytes",
            tail.len()
        )));
    }
    Ok(frame)
}

#[cfg(test)]
mod tests;
