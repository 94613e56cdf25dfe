//! Engine behaviour on virtual time: named cases, tamper cases and the reference-model proptest.

mod ahead;
mod forgery;
mod hostile;
mod keys;
mod link;
mod model;
mod settled;
mod timers;
mod util;

use std::time::Duration;

use util::{Faults, Pair, Side};

use super::{AckLevel, AlarmKind, DeadlineKind, EngineConfig};
use crate::Lane;
use crate::crypto::{Digest, IdentityKey};
use crate::envelope::{Announcement, Receipt, ReceiptKind, Signed, VerifyError};
use crate::types::{Channel, MessageId, Precedence, Seq};
use crate::wire::{self, Frame};

use Precedence::{Flash, Immediate, Priority, Routine};

fn levels(pair: &Pair, id: &MessageId) -> Vec<AckLevel> {
    pair.a
        .reports
        .iter()
        .filter(|r| r.id == *id)
        .map(|r| r.level)
        .collect()
}

#[test]
fn messages_reach_every_ack_level_in_order() {
    let mut pair = Pair::new(EngineConfig::default(), 1);
    let ids: Vec<_> = [Routine, Priority, Immediate, Flash]
        .into_iter()
        .map(|p| pair.send(Side::A, p, &format!("hello {p}")))
        .collect();
    pair.settle(Duration::from_secs(1));
    assert_eq!(pair.b.delivered_ids().len(), 4);
    let flash = pair.b.delivered.iter().find(|d| d.id == ids[3]).unwrap();
    assert_eq!(flash.body, b"hello flash");
    pair.b.engine.acknowledge(pair.now, &ids[3]).unwrap();
    pair.settle(Duration::from_secs(1));
    assert_eq!(
        levels(&pair, &ids[3]),
        vec![
            AckLevel::Stored,
            AckLevel::Accepted { durable: true },
            AckLevel::Delivered,
            AckLevel::Acknowledged
        ]
    );
    assert!(
        pair.a.alarms.is_empty() && pair.b.alarms.is_empty(),
        "{:?} {:?}",
        pair.a.alarms,
        pair.b.alarms
    );
    assert!(matches!(
        pair.b.engine.acknowledge(pair.now, &ids[3]),
        Err(super::AckError::AlreadyAcknowledged(_))
    ));
}

#[test]
fn accepted_is_reported_even_after_delivered() {
    for p in [Routine, Flash] {
        let mut pair = Pair::new(EngineConfig::default(), 7);
        pair.accepted_delay = Duration::from_millis(50);
        let id = pair.send(Side::A, p, "late accepted");
        pair.settle(Duration::from_secs(1));
        assert_eq!(pair.b.delivered_ids(), std::slice::from_ref(&id));
        let got = levels(&pair, &id);
        assert_eq!(
            got,
            [
                AckLevel::Stored,
                AckLevel::Delivered,
                AckLevel::Accepted { durable: true }
            ],
            "{p}: every level once, in the order reached"
        );
        let accepted_at = pair
            .a
            .reports
            .iter()
            .find(|r| r.id == id && matches!(r.level, AckLevel::Accepted { .. }))
            .unwrap()
            .at;
        let delivered_at = pair
            .a
            .reports
            .iter()
            .find(|r| r.id == id && r.level == AckLevel::Delivered)
            .unwrap()
            .at;
        assert!(
            accepted_at > delivered_at,
            "stamped when reached, not back-dated"
        );
    }
}

#[test]
fn reconnecting_does_not_report_accepted_twice() {
    let mut pair = Pair::new(EngineConfig::default(), 8);
    pair.disconnect(Side::B);
    let id = pair.send(Side::A, Routine, "offered twice");
    pair.settle(Duration::from_secs(1));
    pair.disconnect(Side::A);
    pair.connect(Side::A);
    pair.settle(Duration::from_secs(1));
    pair.connect(Side::B);
    pair.settle(Duration::from_secs(1));
    assert_eq!(
        levels(&pair, &id),
        [
            AckLevel::Stored,
            AckLevel::Accepted { durable: true },
            AckLevel::Delivered
        ]
    );
}

#[test]
fn flash_overtakes_a_lost_routine_message() {
    let mut pair = Pair::new(EngineConfig::default(), 2);
    let routine = MessageId {
        sender: pair.a.id.clone(),
        channel: Channel::default(),
        precedence: Routine,
        // A's lanes start after its incarnation: the moment its engine was made.
        seq: Seq(util::START.0 + 1),
    };
    pair.drop_once.push(routine.clone());
    let r1 = pair.send(Side::A, Routine, "r1");
    assert_eq!(r1, routine);
    let f1 = pair.send(Side::A, Flash, "f1");
    pair.settle(Duration::from_millis(500));
    assert_eq!(
        pair.b.delivered_ids(),
        vec![f1.clone()],
        "flash is not held back by the lost routine"
    );
    // The retransmission (1 s) brings the routine message.
    pair.drive_for(Duration::from_secs(3));
    assert_eq!(pair.b.delivered_ids(), vec![f1, r1]);
}

#[test]
fn routine_sent_after_a_flash_waits_for_it() {
    let mut pair = Pair::new(EngineConfig::default(), 3);
    let f1 = pair.send(Side::A, Flash, "f1");
    pair.drop_once.push(f1.clone());
    let r1 = pair.send(Side::A, Routine, "r1");
    pair.settle(Duration::from_millis(500));
    assert!(
        pair.b.delivered_ids().is_empty(),
        "routine must wait for the earlier flash"
    );
    assert_eq!(
        pair.b.engine.status().lanes[Routine.index()].receive_buffered,
        1
    );
    pair.drive_for(Duration::from_secs(3));
    assert_eq!(pair.b.delivered_ids(), vec![f1, r1]);
}

#[test]
fn escalated_message_keeps_its_ordering_position() {
    let mut cfg = EngineConfig::default();
    cfg.set_delivered_deadline(Routine, Duration::from_secs(5))
        .unwrap();
    let mut pair = Pair::new(cfg, 4);
    pair.disconnect(Side::B);
    let r1 = pair.send(Side::A, Routine, "r1");
    pair.drive_for(Duration::from_secs(6));
    let r2 = pair.send(Side::A, Routine, "r2");
    assert_eq!(pair.a.escalations.len(), 1);
    assert_eq!(pair.a.escalations[0].escalated_to, Priority);
    pair.connect(Side::B);
    pair.settle(Duration::from_secs(2));
    assert_eq!(
        pair.b.delivered_ids(),
        vec![r1.clone(), r2],
        "escalation changes transport, not order"
    );
    assert_eq!(pair.b.delivered[0].relay_transport, Priority);
    assert_eq!(pair.b.delivered[0].id.precedence, Routine);
    let sent_on_priority = pair.a.sent_frames.iter().any(|(lane, f)| {
        *lane == Lane::Precedence(Priority)
            && matches!(f, Frame::Envelope(e) if e.envelope.header.message_id() == r1)
    });
    assert!(
        sent_on_priority,
        "the escalated message is re-offered on the raised lane"
    );
}

#[test]
fn missed_delivered_deadline_raises_reoffers_and_alarms() {
    let mut pair = Pair::new(EngineConfig::default(), 5);
    pair.disconnect(Side::B);
    let m = pair.send(Side::A, Immediate, "where are you");
    pair.drive_for(Duration::from_secs(29));
    assert!(pair.a.escalations.is_empty());
    pair.drive_for(Duration::from_secs(2));
    assert_eq!(pair.a.escalations.len(), 1);
    let e = &pair.a.escalations[0];
    assert_eq!(
        (e.id.clone(), e.kind, e.escalated_to, e.count),
        (m.clone(), DeadlineKind::Delivered, Flash, 1)
    );
    let reoffered = pair.a.sent_frames.iter().filter(|(lane, f)| {
        *lane == Lane::Precedence(Flash)
            && matches!(f, Frame::Envelope(e) if e.envelope.header.message_id() == m)
    });
    assert_eq!(reoffered.count(), 1);
    // At flash it keeps alarming every flash deadline (10 s) until delivered.
    pair.drive_for(Duration::from_secs(21));
    assert_eq!(pair.a.escalations.len(), 3);
    let status = pair.a.engine.status();
    assert_eq!(status.open_escalations, vec![(m, Flash, 3)]);
}

#[test]
fn acknowledged_in_time_raises_nothing() {
    let mut pair = Pair::new(EngineConfig::default(), 6);
    let m = pair.send(Side::A, Immediate, "please confirm");
    pair.settle(Duration::from_secs(1));
    pair.drive_for(Duration::from_secs(60));
    pair.b.engine.acknowledge(pair.now, &m).unwrap();
    pair.drive_for(Duration::from_secs(3600));
    assert!(pair.a.escalations.is_empty());
    assert!(pair.b.realerts.is_empty());
    assert!(levels(&pair, &m).contains(&AckLevel::Acknowledged));
    assert!(
        pair.a.engine.outbox().next().is_none(),
        "finished messages leave memory"
    );
}

#[test]
fn unacknowledged_flash_realerts_repeatedly() {
    let mut pair = Pair::new(EngineConfig::default(), 7);
    let m = pair.send(Side::A, Flash, "launch detected");
    pair.settle(Duration::from_secs(1));
    assert_eq!(pair.b.delivered_ids(), vec![m.clone()]);
    pair.drive_for(Duration::from_secs(9 * 60));
    // Flash acknowledged deadline is 2 minutes: re-alerts at 2, 4, 6 and 8 minutes.
    assert_eq!(pair.a.escalations.len(), 4, "{:?}", pair.a.escalations);
    assert!(
        pair.a
            .escalations
            .iter()
            .all(|e| e.kind == DeadlineKind::Acknowledged)
    );
    assert_eq!(pair.b.realerts.len(), 4);
    assert_eq!(pair.b.realerts[3].count, 4);
    pair.b.engine.acknowledge(pair.now, &m).unwrap();
    pair.drive_for(Duration::from_secs(10 * 60));
    assert_eq!(
        pair.b.realerts.len(),
        4,
        "acknowledging stops the re-alerts"
    );
}

#[test]
fn nothing_leaves_before_the_write_is_confirmed() {
    let mut pair = Pair::new(EngineConfig::default(), 8);
    pair.b.auto_persist = false;
    let m = pair.send(Side::A, Priority, "durable first");
    pair.settle(Duration::from_secs(1));
    assert!(
        pair.b.delivered.is_empty(),
        "no delivery before the inbox write is durable"
    );
    assert!(
        !levels(&pair, &m).contains(&AckLevel::Delivered),
        "no receipt before the write is durable"
    );
    pair.b.confirm(pair.now);
    pair.settle(Duration::from_secs(1));
    assert_eq!(pair.b.delivered_ids(), vec![m.clone()]);
    assert!(levels(&pair, &m).contains(&AckLevel::Delivered));
}

#[test]
fn receiver_crash_before_commit_redelivers_exactly_once() {
    let mut pair = Pair::new(EngineConfig::default(), 9);
    pair.b.auto_persist = false;
    let m1 = pair.send(Side::A, Routine, "one");
    pair.settle(Duration::from_secs(1));
    pair.crash(Side::B);
    pair.b.auto_persist = true;
    pair.drive_for(Duration::from_secs(5));
    let m2 = pair.send(Side::A, Routine, "two");
    pair.settle(Duration::from_secs(1));
    assert_eq!(pair.b.delivered_ids(), vec![m1, m2]);
    pair.crash(Side::B);
    pair.drive_for(Duration::from_secs(5));
    assert_eq!(
        pair.b.delivered.len(),
        2,
        "no duplicate delivery after a crash"
    );
}

#[test]
fn sender_crash_keeps_the_outbox_and_pending_deadlines() {
    let mut pair = Pair::new(EngineConfig::default(), 10);
    pair.disconnect(Side::B);
    let m = pair.send(Side::A, Immediate, "persisted");
    pair.drive_for(Duration::from_secs(1));
    pair.crash(Side::A);
    pair.drive_for(Duration::from_secs(35));
    assert_eq!(
        pair.a.escalations.len(),
        1,
        "the deadline pending at the crash still fires"
    );
    pair.connect(Side::B);
    pair.settle(Duration::from_secs(2));
    pair.drive_for(Duration::from_secs(2));
    assert_eq!(pair.b.delivered_ids(), vec![m]);
}

#[test]
fn message_waits_for_the_partners_key() {
    let mut pair = Pair::with(EngineConfig::default(), 11, false);
    let m = pair.send(Side::A, Flash, "early");
    assert_eq!(pair.a.engine.status().lanes[Flash.index()].awaiting_key, 1);
    pair.connect(Side::B);
    pair.settle(Duration::from_secs(1));
    assert_eq!(pair.a.engine.status().lanes[Flash.index()].awaiting_key, 0);
    assert_eq!(pair.b.delivered_ids(), vec![m]);
}

#[test]
fn duplicates_are_answered_silently() {
    let mut pair = Pair::new(EngineConfig::default(), 12);
    pair.faults = Faults {
        loss: 0.0,
        duplicate: 1.0,
        latency_us: (500, 5_000),
    };
    let ids: Vec<_> = (0..20)
        .map(|i| pair.send(Side::A, Precedence::ALL[i % 4], "dup"))
        .collect();
    pair.settle(Duration::from_secs(2));
    pair.drive_for(Duration::from_secs(2));
    let mut got = pair.b.delivered_ids();
    got.sort();
    let mut want = ids;
    want.sort();
    assert_eq!(got, want);
    assert!(pair.b.alarms.is_empty(), "{:?}", pair.b.alarms);
}

#[test]
fn batches_carry_one_signature_per_lane() {
    let mut pair = Pair::new(EngineConfig::default(), 13);
    let now = pair.now;
    for _ in 0..10 {
        pair.a
            .engine
            .submit(
                now,
                super::Outgoing {
                    channel: Channel::default(),
                    precedence: Routine,
                    body: b"x".to_vec(),
                },
            )
            .unwrap();
    }
    let before = pair.a.sent_frames.len();
    pair.settle(Duration::from_secs(1));
    let sent: Vec<_> = pair.a.sent_frames[before..]
        .iter()
        .filter_map(|(_, f)| match f {
            Frame::Envelope(e) => Some(e.head.is_some()),
            _ => None,
        })
        .collect();
    assert_eq!(sent.len(), 10);
    assert_eq!(
        sent.iter().filter(|s| **s).count(),
        1,
        "one head signature for the batch"
    );
    assert_eq!(pair.b.delivered.len(), 10);
}

// ----- tamper and equivocation: each verification error from a concrete forged input ----------

/// Captures the first envelope frame A sends to B (bytes), without delivering it.
fn capture_envelope(pair: &mut Pair, p: Precedence, body: &str) -> wire::EnvelopeFrame {
    pair.hold = Some(Side::B);
    pair.send(Side::A, p, body);
    pair.settle(Duration::from_millis(100));
    let frame = pair.a.sent_frames.iter().rev().find_map(|(_, f)| match f {
        Frame::Envelope(e) => Some(e.clone()),
        _ => None,
    });
    pair.hold = None;
    frame.unwrap()
}

fn feed(pair: &mut Pair, side: Side, frame: &Frame) -> Result<(), VerifyError> {
    let now = pair.now;
    let r = pair
        .peer(side)
        .engine
        .handle_frame(now, &wire::encode_frame(frame));
    while pair.peer(side).engine.poll_action().is_some() {}
    r
}

#[test]
fn garbage_is_malformed_and_unknown_versions_are_named() {
    let mut pair = Pair::new(EngineConfig::default(), 20);
    let now = pair.now;
    assert!(matches!(
        pair.b
            .engine
            .handle_frame(now, &[0, 0, 0, 3, wire::PROTOCOL_VERSION, 1, 0xff]),
        Err(VerifyError::Malformed(_))
    ));
    let mut hello = wire::encode_frame(&Frame::Hello(wire::Hello {
        version: 1,
        agent: "t".into(),
    }));
    hello[4] = 9;
    assert_eq!(
        pair.b.engine.handle_frame(now, &hello),
        Err(VerifyError::UnknownVersion(9))
    );
    hello[4] = wire::PROTOCOL_VERSION;
    hello[5] = 7;
    assert_eq!(
        pair.b.engine.handle_frame(now, &hello),
        Err(VerifyError::UnknownSuite(7))
    );
}

#[test]
fn tampered_envelopes_are_refused_with_the_right_error() {
    let mut pair = Pair::new(EngineConfig::default(), 21);
    let good = capture_envelope(&mut pair, Routine, "genuine");

    let mut bad_sig = good.clone();
    bad_sig.envelope.sealed[0] ^= 1;
    assert_eq!(
        feed(&mut pair, Side::B, &Frame::Envelope(bad_sig.clone())),
        Err(VerifyError::BadSignature)
    );

    let mut no_head = bad_sig;
    no_head.head = None;
    assert_eq!(
        feed(&mut pair, Side::B, &Frame::Envelope(no_head)),
        Err(VerifyError::DecryptFailed)
    );

    let mut not_for_me = good.clone();
    not_for_me.envelope.header.recipient = "xx".parse().unwrap();
    assert_eq!(
        feed(&mut pair, Side::B, &Frame::Envelope(not_for_me)),
        Err(VerifyError::NotForMe)
    );

    let mut stale = good.clone();
    stale.envelope.header.epoch = 99;
    stale.head = None;
    assert_eq!(
        feed(&mut pair, Side::B, &Frame::Envelope(stale)),
        Err(VerifyError::StaleEpoch { epoch: 99 })
    );

    assert!(pair.b.delivered.is_empty());
    assert_eq!(feed(&mut pair, Side::B, &Frame::Envelope(good)), Ok(()));
    pair.b.confirm(pair.now);
    while pair.b.engine.poll_action().is_some() {}
    assert!(
        pair.b.alarms.is_empty()
            || pair
                .b
                .alarms
                .iter()
                .all(|a| matches!(a.kind, AlarmKind::Security(_)))
    );
}

/// A second engine holding A's identity key (a compromised or rolled-back sender) that seals
/// its own chain to B's real sealing key. Returns the envelope frames it sends.
fn rogue_envelopes(pair: &Pair, bodies: &[&str]) -> Vec<wire::EnvelopeFrame> {
    let msgs: Vec<(&str, &str)> = bodies.iter().map(|b| ("main", *b)).collect();
    rogue_envelopes_on(pair, &msgs)
}

/// Like [`rogue_envelopes`], each message on its own named channel.
fn rogue_envelopes_on(pair: &Pair, msgs: &[(&str, &str)]) -> Vec<wire::EnvelopeFrame> {
    use rand_core::SeedableRng;
    let local = super::Local {
        id: pair.a.id.clone(),
        key: IdentityKey::from_seed(&[1; 32]),
    };
    let partner = super::Partner {
        id: pair.b.id.clone(),
        key: IdentityKey::from_seed(&[2; 32]).public(),
    };
    let now = pair.now;
    // Made when A's engine was, so its lanes start where A's do.
    let mut rogue = super::Engine::new(
        EngineConfig::default(),
        local,
        partner,
        rand_chacha::ChaCha20Rng::seed_from_u64(77),
        util::START,
    );
    rogue.handle_connected(now);
    let ann = pair.b.engine.announcement().unwrap().clone();
    rogue.handle_decoded(Frame::Announcement(ann)).unwrap();
    for (channel, body) in msgs {
        rogue
            .submit(
                now,
                super::Outgoing {
                    channel: channel.parse().unwrap(),
                    precedence: Routine,
                    body: body.as_bytes().to_vec(),
                },
            )
            .unwrap();
    }
    let mut frames = Vec::new();
    let mut last = None;
    for _ in 0..3 {
        while let Some(a) = rogue.poll_action() {
            match a {
                super::Action::Persist { id, .. } => last = Some(id),
                super::Action::Send { frame, .. } => {
                    if let Ok((Frame::Envelope(e), _)) = wire::decode_frame(&frame) {
                        frames.push(e);
                    }
                }
                _ => {}
            }
        }
        if let Some(id) = last.take() {
            rogue.handle_persisted(now, id);
        }
    }
    frames
}

#[test]
fn equivocation_and_broken_chains_are_alarms() {
    let mut pair = Pair::new(EngineConfig::default(), 22);
    let m1 = pair.send(Side::A, Routine, "original");
    pair.settle(Duration::from_secs(1));
    assert_eq!(pair.b.delivered_ids(), vec![m1.clone()]);

    let forged = rogue_envelopes(&pair, &["forged one", "forged two"]);
    assert_eq!(forged.len(), 2);
    // Same (sender, channel, lane, seq) as a delivered message, different content.
    assert_eq!(
        feed(&mut pair, Side::B, &Frame::Envelope(forged[0].clone())),
        Err(VerifyError::Equivocation(m1))
    );
    // Seq 2, validly signed, but chained to the forged seq 1 rather than the delivered one.
    let mut f2 = forged[1].clone();
    if f2.head.is_none() {
        let key = IdentityKey::from_seed(&[1; 32]);
        let hash = f2.envelope.hash();
        f2.head = Some(crate::envelope::sign_head(
            &crate::envelope::ChainHead::of(&f2.envelope, hash),
            &key,
        ));
    }
    let id2 = f2.envelope.header.message_id();
    assert_eq!(
        feed(&mut pair, Side::B, &Frame::Envelope(f2)),
        Err(VerifyError::BrokenChain(id2))
    );
    assert_eq!(pair.b.delivered.len(), 1, "nothing forged is delivered");
    let kinds: Vec<_> = pair
        .b
        .engine
        .status()
        .alarms
        .into_iter()
        .map(|a| a.kind)
        .collect();
    assert!(
        kinds
            .iter()
            .any(|k| matches!(k, AlarmKind::Security(VerifyError::Equivocation(_))))
    );
    assert!(
        kinds
            .iter()
            .any(|k| matches!(k, AlarmKind::Security(VerifyError::BrokenChain(_))))
    );
}

#[test]
fn changed_partner_key_and_bad_receipts_are_alarms() {
    let mut pair = Pair::new(EngineConfig::default(), 23);
    // Another key claiming to be jp (e.g. a second certificate minted by the CA).
    let impostor = IdentityKey::from_seed(&[66; 32]);
    let ann = Announcement {
        endpoint: pair.b.id.clone(),
        identity: impostor.public(),
        epoch: 5,
        suite: crate::crypto::SUITE_XWING_CHACHA20_ED25519,
        sealing_key: vec![0; 1216],
        expires_at: pair.now,
        incarnation: 0,
        peer_incarnation: 0,
    };
    assert_eq!(
        feed(
            &mut pair,
            Side::A,
            &Frame::Announcement(Signed::sign(ann.clone(), &impostor))
        ),
        Err(VerifyError::UnknownSigner)
    );
    assert!(
        pair.a
            .engine
            .status()
            .alarms
            .iter()
            .any(|a| a.kind == AlarmKind::PartnerKeyChanged)
    );

    // Right key claimed, wrong signature.
    let mut forged = Signed::sign(
        Announcement {
            identity: IdentityKey::from_seed(&[2; 32]).public(),
            ..ann
        },
        &impostor,
    );
    forged.signature.0[0] ^= 1;
    assert_eq!(
        feed(&mut pair, Side::A, &Frame::Announcement(forged)),
        Err(VerifyError::BadSignature)
    );

    // A receipt, correctly signed by jp, for a hash we never sent.
    pair.hold = Some(Side::B);
    let m = pair.send(Side::A, Routine, "x");
    pair.settle(Duration::from_millis(100));
    let receipt = Signed::sign(
        Receipt {
            from: pair.b.id.clone(),
            to: pair.a.id.clone(),
            channel: Channel::default(),
            precedence: Routine,
            kind: ReceiptKind::Delivered {
                upto: m.seq,
                head: Digest([9; 32]),
            },
            at: pair.now,
        },
        &IdentityKey::from_seed(&[2; 32]),
    );
    assert_eq!(
        feed(&mut pair, Side::A, &Frame::Receipt(receipt.clone())),
        Err(VerifyError::ReceiptMismatch(m))
    );
    let mut unsigned = receipt;
    unsigned.signature.0[1] ^= 1;
    assert_eq!(
        feed(&mut pair, Side::A, &Frame::Receipt(unsigned)),
        Err(VerifyError::BadSignature)
    );
}

#[test]
fn unvouched_sessions_are_bounded_and_never_persisted() {
    let mut pair = Pair::new(EngineConfig::default(), 24);
    // Anyone can encapsulate to jp's public sealing key: 40 sessions on 40 channels whose
    // envelopes carry no chain-head signature (so nothing vouches for them).
    let names: Vec<String> = (0..40).map(|i| format!("c{i}")).collect();
    let msgs: Vec<(&str, &str)> = names.iter().map(|c| (c.as_str(), "x")).collect();
    let mut forged = rogue_envelopes_on(&pair, &msgs);
    for f in &mut forged {
        assert!(f.setup.is_some());
        f.head = None;
    }
    for f in forged {
        let _ = feed(&mut pair, Side::B, &Frame::Envelope(f));
    }
    pair.b.confirm(pair.now);
    assert!(pair.b.engine.keys.unverified_sessions.len() <= super::keys::MAX_UNVERIFIED_SESSIONS);
    assert!(pair.b.engine.keys.recv_sessions.len() <= super::keys::MAX_UNVERIFIED_SESSIONS);
    assert!(
        !pair
            .b
            .durable
            .iter()
            .any(|r| matches!(r, super::Record::RecvSession { .. })),
        "no record for a session nothing vouched for"
    );
    assert!(pair.b.delivered.is_empty());
    // A genuine message still gets through, and its session is then persisted.
    let m = pair.send(Side::A, Flash, "genuine");
    pair.settle(Duration::from_secs(1));
    assert_eq!(pair.b.delivered_ids(), vec![m]);
    assert!(
        pair.b
            .durable
            .iter()
            .any(|r| matches!(r, super::Record::RecvSession { .. }))
    );
}

#[test]
fn acknowledged_routine_message_is_reported_acknowledged_once() {
    // Routine expects no acknowledgement, so the sender forgets it once delivered; the
    // receiver resends its recent acknowledgements on every reconnect.
    let mut pair = Pair::new(EngineConfig::default(), 25);
    let m = pair.send(Side::A, Routine, "noted");
    pair.settle(Duration::from_secs(1));
    pair.b.engine.acknowledge(pair.now, &m).unwrap();
    pair.settle(Duration::from_secs(1));
    for _ in 0..2 {
        pair.disconnect(Side::B);
        pair.connect(Side::B);
        pair.settle(Duration::from_secs(1));
    }
    pair.crash(Side::A);
    pair.disconnect(Side::B);
    pair.connect(Side::B);
    pair.settle(Duration::from_secs(1));
    let acked = pair
        .a
        .reports
        .iter()
        .filter(|r| r.id == m && r.level == AckLevel::Acknowledged);
    assert_eq!(acked.count(), 1);
}
