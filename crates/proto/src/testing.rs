//! Frame and receipt builders for tests of the shells (relay, node, bench), behind the
//! `test-utils` feature.
//!
//! The builders make *well-formed* frames with fixed keys and placeholder crypto: envelopes with
//! filler bytes as the sealed body and no chain-head signature, receipts and announcements
//! signed by [`test_key`]. They are for code that routes and stores frames without opening them
//! (the relay); the engine's own tests build real sealed envelopes through two engines.

use crate::crypto::{Digest, IdentityKey, SessionId};
use crate::envelope::{
    Announcement, Envelope, EscalationNotice, Header, LinkTest, Receipt, ReceiptKind, Signed,
};
use crate::types::{Channel, EndpointId, MessageId, Precedence, Seq, Time};
use crate::wire::{self, EnvelopeFrame, Frame};

/// An endpoint id from a test literal such as `"us"`.
///
/// # Panics
/// If `name` is not a valid endpoint id (a bug in the test).
pub fn id(name: &str) -> EndpointId {
    match EndpointId::new(name) {
        Ok(id) => id,
        Err(e) => panic!("bad test endpoint id {name:?}: {e}"),
    }
}

/// The identity key that signs every receipt, announcement and link test built here.
pub fn test_key() -> IdentityKey {
    IdentityKey::from_seed(&[7; 32])
}

/// The id of `sender`'s message `seq` on the default channel.
pub fn message_id(sender: &str, precedence: Precedence, seq: u64) -> MessageId {
    MessageId {
        sender: id(sender),
        channel: Channel::default(),
        precedence,
        seq: Seq(seq),
    }
}

/// An encoded envelope frame on the default channel with `sealed` filler bytes, offered on the
/// `transport` lane.
pub fn envelope(
    sender: &str,
    recipient: &str,
    precedence: Precedence,
    seq: u64,
    transport: Precedence,
    sealed: usize,
) -> Vec<u8> {
    let header = Header {
        sender: id(sender),
        recipient: id(recipient),
        channel: Channel::default(),
        precedence,
        seq: Seq(seq),
        after: [0; 4],
        epoch: 1,
        session: SessionId([1; 16]),
        prev: Digest::default(),
        sealed_len: sealed as u32,
    };
    wire::encode_frame(&Frame::Envelope(EnvelopeFrame {
        transport,
        envelope: Envelope {
            header,
            sealed: vec![0xAB; sealed],
        },
        head: None,
        setup: None,
    }))
}

/// An encoded `Delivered` receipt from `from` to `to` covering `upto`, signed by [`test_key`].
pub fn delivered(from: &str, to: &str, precedence: Precedence, upto: u64) -> Vec<u8> {
    let receipt = Receipt {
        from: id(from),
        to: id(to),
        channel: Channel::default(),
        precedence,
        kind: ReceiptKind::Delivered {
            upto: Seq(upto),
            head: Digest::default(),
        },
        at: Time(1),
    };
    wire::encode_frame(&Frame::Receipt(Signed::sign(receipt, &test_key())))
}

/// An encoded sealing-key announcement of `endpoint` at `epoch`, signed by [`test_key`].
pub fn announcement(endpoint: &str, epoch: u32) -> Vec<u8> {
    announcement_in(endpoint, 0, epoch)
}

/// Like [`announcement`], from incarnation `incarnation`.
pub fn announcement_in(endpoint: &str, incarnation: u64, epoch: u32) -> Vec<u8> {
    let ann = Announcement {
        endpoint: id(endpoint),
        identity: test_key().public(),
        epoch,
        suite: crate::crypto::SUITE_XWING_CHACHA20_ED25519,
        sealing_key: vec![epoch as u8; 32],
        expires_at: Time(10),
        incarnation,
        peer_incarnation: 0,
    };
    wire::encode_frame(&Frame::Announcement(Signed::sign(ann, &test_key())))
}

/// An encoded link test from `from` to `to`, signed by [`test_key`].
pub fn link_test(from: &str, to: &str) -> Vec<u8> {
    let lt = LinkTest {
        from: id(from),
        to: id(to),
        seq: 1,
        at: Time(1),
        audit_len: 0,
        audit_head: Digest::default(),
    };
    wire::encode_frame(&Frame::LinkTest(Signed::sign(lt, &test_key())))
}

/// An encoded escalation notice from `from` to `to` about `from`'s flash message `seq`, signed by
/// [`test_key`].
pub fn escalation(from: &str, to: &str, seq: u64) -> Vec<u8> {
    let notice = EscalationNotice {
        from: id(from),
        to: id(to),
        message: message_id(from, Precedence::Flash, seq),
        level: Precedence::Flash,
        count: 1,
        at: Time(1),
    };
    wire::encode_frame(&Frame::Escalation(Signed::sign(notice, &test_key())))
}
