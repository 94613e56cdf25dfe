//! Forged and misaddressed frames, one kind at a time: each is refused with an alarm and
//! changes nothing (no delivery, report, re-alert, persisted record or link state change),
//! while the genuine frame beside it is accepted.

use std::time::Duration;

use super::util::{Pair, Side};
use crate::crypto::IdentityKey;
use crate::engine::{AckLevel, AlarmKind, EngineConfig, LinkState};
use crate::envelope::{
    Announcement, ChainHead, EscalationNotice, LinkTest, Receipt, ReceiptKind, Signed, Statement,
    VerifyError, sign_head,
};
use crate::types::{Channel, EndpointId, MessageId, Precedence};
use crate::wire::{EnvelopeFrame, Frame};

use Precedence::{Immediate, Routine};

/// A's identity key (the sender in these tests).
fn key_a() -> IdentityKey {
    IdentityKey::from_seed(&[1; 32])
}

/// B's identity key.
fn key_b() -> IdentityKey {
    IdentityKey::from_seed(&[2; 32])
}

fn impostor() -> IdentityKey {
    IdentityKey::from_seed(&[66; 32])
}

fn stranger() -> EndpointId {
    EndpointId::new("xx").unwrap()
}

/// What a refused frame must leave alone on one side.
#[derive(Debug, PartialEq)]
struct Observed {
    delivered: usize,
    reports: usize,
    realerts: usize,
    escalations: usize,
    durable: usize,
    link: LinkState,
    partner_epoch: Option<u32>,
    partner_audit_head: Option<(u64, crate::crypto::Digest)>,
    receive_buffered: usize,
}

fn observe(pair: &Pair, side: Side) -> Observed {
    let node = match side {
        Side::A => &pair.a,
        Side::B => &pair.b,
    };
    let status = node.engine.status();
    Observed {
        delivered: node.delivered.len(),
        reports: node.reports.len(),
        realerts: node.realerts.len(),
        escalations: node.escalations.len(),
        durable: node.durable.len(),
        link: status.link,
        partner_epoch: status.partner_epoch,
        partner_audit_head: status.partner_audit_head,
        receive_buffered: status.lanes.iter().map(|l| l.receive_buffered).sum(),
    }
}

/// Injects `frame` into `side`, expecting `want` and a security alarm, and nothing else.
fn refused(pair: &mut Pair, side: Side, frame: &Frame, want: &VerifyError) {
    let before = observe(pair, side);
    let mark = pair.peer(side).alarm_mark();
    assert_eq!(pair.inject(side, frame).as_ref(), Err(want), "{frame:?}");
    assert_eq!(
        pair.peer(side).alarms_since(&mark),
        vec![AlarmKind::Security(want.clone())],
        "one security alarm (emitted, or counted into a held one)"
    );
    assert_eq!(observe(pair, side), before, "nothing changed");
}

/// `body` reaching A with a damaged signature of B's, or signed by another key (an impostor's,
/// or A's own), is refused as a bad signature and changes nothing.
fn bad_signatures_refused<T: Statement + Clone>(
    pair: &mut Pair,
    body: &T,
    frame: impl Fn(Signed<T>) -> Frame,
) {
    let mut flipped = Signed::sign(body.clone(), &key_b());
    flipped.signature.0[3] ^= 1;
    refused(pair, Side::A, &frame(flipped), &VerifyError::BadSignature);
    for key in [impostor(), key_a()] {
        let wrong = Signed::sign(body.clone(), &key);
        refused(pair, Side::A, &frame(wrong), &VerifyError::BadSignature);
    }
}

/// The last of `frames`.
fn newest(mut frames: Vec<Frame>) -> Frame {
    frames.pop().expect("such a frame was accepted")
}

/// The other side drops off the relay; `side`'s link degrades once the partner has been silent.
fn partner_goes_silent(pair: &mut Pair, side: Side) {
    pair.disconnect(side.other());
    pair.drive_for(Duration::from_secs(10));
    assert_eq!(pair.peer(side).engine.status().link, LinkState::Degraded);
}

/// Captures the envelope frames A sends for `n` messages submitted together, without
/// delivering them to B.
fn capture_batch(pair: &mut Pair, p: Precedence, n: usize) -> Vec<EnvelopeFrame> {
    pair.hold = Some(Side::B);
    let ids: Vec<MessageId> = (0..n)
        .map(|i| pair.send(Side::A, p, &format!("m{i}")))
        .collect();
    pair.settle(Duration::from_millis(100));
    pair.hold = None;
    ids.iter()
        .map(|id| {
            pair.a
                .sent_frames
                .iter()
                .rev()
                .find_map(|(_, f)| match f {
                    Frame::Envelope(e) if e.envelope.header.message_id() == *id => Some(e.clone()),
                    _ => None,
                })
                .unwrap()
        })
        .collect()
}

// ----- escalation notices ---------------------------------------------------------------------

#[test]
fn escalation_notice_not_from_partner_for_us_about_partners_message_is_refused() {
    let mut pair = Pair::new(EngineConfig::default(), 50);
    let m = pair.send(Side::A, Immediate, "please acknowledge");
    pair.settle(Duration::from_secs(1));
    assert_eq!(pair.b.delivered_ids(), vec![m.clone()]);
    let genuine = EscalationNotice {
        from: pair.a.id.clone(),
        to: pair.b.id.clone(),
        message: m.clone(),
        level: Precedence::Flash,
        count: 1,
        at: pair.now,
    };
    let signed = |n: EscalationNotice| Frame::Escalation(Signed::sign(n, &key_a()));

    let from_stranger = EscalationNotice {
        from: stranger(),
        ..genuine.clone()
    };
    refused(
        &mut pair,
        Side::B,
        &signed(from_stranger),
        &VerifyError::NotForMe,
    );
    let to_stranger = EscalationNotice {
        to: stranger(),
        ..genuine.clone()
    };
    refused(
        &mut pair,
        Side::B,
        &signed(to_stranger),
        &VerifyError::NotForMe,
    );
    // About a message B itself sent (or anyone else's): not A's to escalate.
    for sender in [pair.b.id.clone(), stranger()] {
        let not_partners = EscalationNotice {
            message: MessageId {
                sender,
                ..m.clone()
            },
            ..genuine.clone()
        };
        refused(
            &mut pair,
            Side::B,
            &signed(not_partners),
            &VerifyError::NotForMe,
        );
    }
    let mut bad_signature = Signed::sign(genuine.clone(), &key_a());
    bad_signature.signature.0[0] ^= 1;
    refused(
        &mut pair,
        Side::B,
        &Frame::Escalation(bad_signature),
        &VerifyError::BadSignature,
    );
    let wrong_signer = Frame::Escalation(Signed::sign(genuine.clone(), &impostor()));
    refused(
        &mut pair,
        Side::B,
        &wrong_signer,
        &VerifyError::BadSignature,
    );
    let signed_by_us = Frame::Escalation(Signed::sign(genuine.clone(), &key_b()));
    refused(
        &mut pair,
        Side::B,
        &signed_by_us,
        &VerifyError::BadSignature,
    );

    // The genuine notice re-alerts and is recorded.
    let durable = pair.b.durable.len();
    assert_eq!(pair.inject(Side::B, &signed(genuine.clone())), Ok(()));
    assert_eq!(pair.b.realerts, vec![genuine]);
    assert!(
        pair.b.durable[durable..]
            .iter()
            .any(|r| matches!(r, crate::engine::Record::PartnerEscalated { id, .. } if *id == m))
    );
}

// ----- chain heads ----------------------------------------------------------------------------

#[test]
fn tampered_head_on_the_last_envelope_of_a_batch_releases_nothing() {
    let mut pair = Pair::new(EngineConfig::default(), 51);
    let batch = capture_batch(&mut pair, Routine, 3);
    assert_eq!(
        batch.iter().map(|f| f.head.is_some()).collect::<Vec<_>>(),
        [false, false, true],
        "one head, on the last envelope"
    );
    for f in &batch[..2] {
        assert_eq!(pair.inject(Side::B, &Frame::Envelope(f.clone())), Ok(()));
    }
    assert!(pair.b.delivered.is_empty(), "unsigned envelopes wait");
    assert_eq!(
        pair.b.engine.status().lanes[Routine.index()].receive_buffered,
        2
    );

    let mut flipped = batch[2].clone();
    if let Some(sig) = &mut flipped.head {
        sig.0[5] ^= 0x40;
    }
    refused(
        &mut pair,
        Side::B,
        &Frame::Envelope(flipped),
        &VerifyError::BadSignature,
    );
    let mut by_impostor = batch[2].clone();
    let hash = by_impostor.envelope.hash();
    by_impostor.head = Some(sign_head(
        &ChainHead::of(&by_impostor.envelope, hash),
        &impostor(),
    ));
    refused(
        &mut pair,
        Side::B,
        &Frame::Envelope(by_impostor),
        &VerifyError::BadSignature,
    );
    // A head signed by the recipient's own key is no better.
    let mut by_recipient = batch[2].clone();
    by_recipient.head = Some(sign_head(
        &ChainHead::of(&by_recipient.envelope, hash),
        &key_b(),
    ));
    refused(
        &mut pair,
        Side::B,
        &Frame::Envelope(by_recipient),
        &VerifyError::BadSignature,
    );
    assert!(pair.b.delivered.is_empty());

    // The genuine head releases the whole batch, in order.
    assert_eq!(
        pair.inject(Side::B, &Frame::Envelope(batch[2].clone())),
        Ok(())
    );
    let want: Vec<MessageId> = batch
        .iter()
        .map(|f| f.envelope.header.message_id())
        .collect();
    assert_eq!(pair.b.delivered_ids(), want);
}

// ----- duplicates -----------------------------------------------------------------------------

fn receipts_sent(pair: &Pair) -> Vec<Signed<Receipt>> {
    pair.b
        .sent_frames
        .iter()
        .filter_map(|(_, f)| match f {
            Frame::Receipt(r) => Some(r.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn duplicate_of_a_delivered_envelope_gets_the_stored_receipt_without_a_reconnect() {
    let mut pair = Pair::new(EngineConfig::default(), 52);
    // A reads nothing for now: B's receipt is lost on the way.
    pair.hold = Some(Side::A);
    let m = pair.send(Side::A, Immediate, "once");
    pair.settle(Duration::from_millis(100));
    assert_eq!(pair.b.delivered_ids(), vec![m.clone()]);
    let receipts = receipts_sent(&pair);
    assert_eq!(receipts.len(), 1);
    let original = pair
        .a
        .sent_frames
        .iter()
        .find_map(|(_, f)| match f {
            Frame::Envelope(e) if e.envelope.header.message_id() == m => Some(e.clone()),
            _ => None,
        })
        .unwrap();
    let durable = pair.b.durable.len();

    // The sender offers it again (its retransmission); no reconnect in between.
    assert_eq!(
        pair.inject(Side::B, &Frame::Envelope(original.clone())),
        Ok(())
    );
    let again = receipts_sent(&pair);
    assert_eq!(again.len(), 2, "the receipt is sent again");
    assert_eq!(again[1], receipts[0], "the stored receipt, not a new one");
    assert!(matches!(again[1].body.kind, ReceiptKind::Delivered { upto, .. } if upto == m.seq));
    assert_eq!(pair.b.delivered.len(), 1, "not delivered twice");
    assert_eq!(
        pair.b.engine.status().lanes[Immediate.index()].receive_buffered,
        0
    );
    assert_eq!(pair.b.durable.len(), durable, "nothing persisted");
    assert!(pair.b.alarms.is_empty(), "{:?}", pair.b.alarms);

    // Without its head as well.
    let mut unsigned = original;
    unsigned.head = None;
    assert_eq!(pair.inject(Side::B, &Frame::Envelope(unsigned)), Ok(()));
    assert_eq!(receipts_sent(&pair).len(), 3);
    assert_eq!(pair.b.delivered.len(), 1);
    assert_eq!(
        pair.b.engine.status().lanes[Immediate.index()].receive_buffered,
        0
    );
}

// ----- receipts, announcements, link tests ------------------------------------------------------

#[test]
fn forged_receipts_mark_nothing_delivered_or_acknowledged() {
    let mut pair = Pair::new(EngineConfig::default(), 53);
    pair.hold = Some(Side::B);
    let m = pair.send(Side::A, Immediate, "x");
    pair.settle(Duration::from_millis(100));
    pair.hold = None;
    let hash = pair
        .a
        .sent_frames
        .iter()
        .find_map(|(_, f)| match f {
            Frame::Envelope(e) => Some(e.envelope.hash()),
            _ => None,
        })
        .unwrap();
    let (from, to, now) = (pair.b.id.clone(), pair.a.id.clone(), pair.now);
    let receipt = |kind| Receipt {
        from: from.clone(),
        to: to.clone(),
        channel: Channel::default(),
        precedence: Immediate,
        kind,
        at: now,
    };
    // Right content (the hash A sent), wrong signatures.
    for kind in [
        ReceiptKind::Delivered {
            upto: m.seq,
            head: hash,
        },
        ReceiptKind::Acknowledged { seq: m.seq, hash },
    ] {
        let body = receipt(kind);
        bad_signatures_refused(&mut pair, &body, Frame::Receipt);
        // Correctly signed by B but not B's to give, or not for A.
        let from_stranger = Signed::sign(
            Receipt {
                from: stranger(),
                ..body.clone()
            },
            &key_b(),
        );
        refused(
            &mut pair,
            Side::A,
            &Frame::Receipt(from_stranger),
            &VerifyError::NotForMe,
        );
        let to_stranger = Signed::sign(
            Receipt {
                to: stranger(),
                ..body.clone()
            },
            &key_b(),
        );
        refused(
            &mut pair,
            Side::A,
            &Frame::Receipt(to_stranger),
            &VerifyError::NotForMe,
        );
    }
    let entry = pair.a.engine.outbox().next().unwrap();
    assert_eq!((entry.delivered, entry.acknowledged), (None, None));
    assert!(
        !pair
            .a
            .reports
            .iter()
            .any(|r| r.id == m && matches!(r.level, AckLevel::Delivered | AckLevel::Acknowledged))
    );
    // The genuine receipt is accepted.
    let genuine = Signed::sign(
        receipt(ReceiptKind::Delivered {
            upto: m.seq,
            head: hash,
        }),
        &key_b(),
    );
    assert_eq!(pair.inject(Side::A, &Frame::Receipt(genuine)), Ok(()));
    assert!(
        pair.a
            .reports
            .iter()
            .any(|r| r.id == m && r.level == AckLevel::Delivered)
    );
}

#[test]
fn forged_announcements_change_no_key() {
    let mut pair = Pair::new(EngineConfig::default(), 54);
    let current = pair.b.engine.announcement().unwrap().clone();
    assert_eq!(
        pair.a.engine.status().partner_epoch,
        Some(current.body.epoch)
    );
    let next = Announcement {
        epoch: current.body.epoch + 1,
        ..current.body.clone()
    };
    // B's identity named, but the signature damaged or made by another key (A's own included).
    bad_signatures_refused(&mut pair, &next, Frame::Announcement);
    let from_stranger = Signed::sign(
        Announcement {
            endpoint: stranger(),
            ..next.clone()
        },
        &key_b(),
    );
    refused(
        &mut pair,
        Side::A,
        &Frame::Announcement(from_stranger),
        &VerifyError::NotForMe,
    );
    // The genuine next epoch is taken and persisted.
    let durable = pair.a.durable.len();
    let genuine = Signed::sign(next, &key_b());
    assert_eq!(pair.inject(Side::A, &Frame::Announcement(genuine)), Ok(()));
    assert_eq!(
        pair.a.engine.status().partner_epoch,
        Some(current.body.epoch + 1)
    );
    assert!(
        pair.a.durable[durable..]
            .iter()
            .any(|r| matches!(r, crate::engine::Record::PartnerAnnouncement(_)))
    );
}

#[test]
fn forged_link_tests_do_not_bring_the_link_up() {
    let mut pair = Pair::new(EngineConfig::default(), 55);
    pair.disconnect(Side::B);
    pair.drive_for(Duration::from_secs(10));
    assert_eq!(pair.a.engine.status().link, LinkState::Degraded);
    let test = LinkTest {
        from: pair.b.id.clone(),
        to: pair.a.id.clone(),
        seq: 999,
        at: pair.now,
        audit_len: 7,
        audit_head: crate::crypto::Digest([7; 32]),
    };
    bad_signatures_refused(&mut pair, &test, Frame::LinkTest);
    for t in [
        LinkTest {
            from: stranger(),
            ..test.clone()
        },
        LinkTest {
            to: stranger(),
            ..test.clone()
        },
    ] {
        refused(
            &mut pair,
            Side::A,
            &Frame::LinkTest(Signed::sign(t, &key_b())),
            &VerifyError::NotForMe,
        );
    }
    assert_eq!(pair.a.engine.status().link, LinkState::Degraded);
    // The genuine one does.
    assert_eq!(
        pair.inject(Side::A, &Frame::LinkTest(Signed::sign(test, &key_b()))),
        Ok(())
    );
    let status = pair.a.engine.status();
    assert_eq!(status.link, LinkState::Up);
    assert_eq!(
        status.partner_audit_head,
        Some((7, crate::crypto::Digest([7; 32])))
    );
}

#[test]
fn replayed_link_test_does_not_refresh_the_link() {
    let mut pair = Pair::new(EngineConfig::default(), 56);
    pair.drive_for(Duration::from_secs(5));
    assert_eq!(pair.a.engine.status().link, LinkState::Up);
    let old = newest(pair.a.accepted(|f| matches!(f, Frame::LinkTest(_))));
    partner_goes_silent(&mut pair, Side::A);
    // The relay replays B's last genuine link test: signed, but stale.
    let before = observe(&pair, Side::A);
    assert_eq!(pair.inject(Side::A, &old), Ok(()));
    assert_eq!(observe(&pair, Side::A), before, "a replay proves nothing");
    assert!(pair.a.alarms.is_empty(), "{:?}", pair.a.alarms);
    // B restarts (its test counter with it): its new tests are taken.
    pair.crash(Side::B);
    pair.settle(Duration::from_millis(100));
    assert_eq!(pair.a.engine.status().link, LinkState::Up);
}

#[test]
fn replayed_receipt_does_not_refresh_the_link() {
    let mut pair = Pair::new(EngineConfig::default(), 57);
    pair.send(Side::A, Routine, "receipted");
    pair.settle(Duration::from_secs(1));
    let old = newest(pair.a.accepted(|f| matches!(f, Frame::Receipt(_))));
    partner_goes_silent(&mut pair, Side::A);
    let before = observe(&pair, Side::A);
    assert_eq!(pair.inject(Side::A, &old), Ok(()));
    pair.drive_for(Duration::ZERO);
    assert_eq!(observe(&pair, Side::A), before, "a replay proves nothing");
    pair.drive_for(Duration::from_millis(100));
    assert_eq!(pair.a.engine.status().link, LinkState::Degraded);
    assert!(pair.a.alarms.is_empty(), "{:?}", pair.a.alarms);
}

#[test]
fn replayed_escalation_notice_realerts_once() {
    let mut cfg = EngineConfig::default();
    cfg.set_acknowledged_deadline(Immediate, Some(Duration::from_secs(5)))
        .unwrap();
    let mut pair = Pair::new(cfg, 58);
    pair.send(Side::A, Immediate, "acknowledge, please");
    pair.settle(Duration::from_secs(1));
    pair.drive_for(Duration::from_secs(5));
    assert_eq!(pair.b.realerts.len(), 1);
    let notice = pair.b.accepted(|f| matches!(f, Frame::Escalation(_)))[0].clone();
    partner_goes_silent(&mut pair, Side::B);
    let before = observe(&pair, Side::B);
    assert_eq!(pair.inject(Side::B, &notice), Ok(()));
    pair.drive_for(Duration::ZERO);
    assert_eq!(
        observe(&pair, Side::B),
        before,
        "no second re-alert, no record, the link stays degraded"
    );
    assert!(pair.b.alarms.is_empty(), "{:?}", pair.b.alarms);
}
