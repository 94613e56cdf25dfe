//! Key lifecycle: scheduled and on-demand rotation, superseded keys that still open what was
//! sealed to them, and re-pairing after one side lost its whole store.

use std::time::Duration;

use super::util::{Pair, Side};
use crate::engine::{AckLevel, AlarmKind, EngineConfig, Record};
use crate::envelope::VerifyError;
use crate::types::Precedence::{Flash, Routine};
use crate::wire::Frame;

fn alarms_of(pair: &Pair, side: Side, kind: &AlarmKind) -> usize {
    let peer = match side {
        Side::A => &pair.a,
        Side::B => &pair.b,
    };
    peer.alarms.iter().filter(|a| a.kind == *kind).count()
}

#[test]
fn store_loss_re_pairs_both_ways() {
    let mut pair = Pair::new(EngineConfig::default(), 91);
    let before = pair.send(Side::A, Routine, "before");
    let back = pair.send(Side::B, Routine, "back");
    pair.settle(Duration::from_secs(1));
    assert_eq!(pair.b.delivered_ids(), vec![before.clone()]);
    assert_eq!(pair.a.delivered_ids(), vec![back.clone()]);

    // jp stops reading; a flash to it is accepted by the relay but never delivered, then jp's
    // store is lost.
    pair.disconnect(Side::B);
    let in_flight = pair.send(Side::A, Flash, "in flight to the lost store");
    pair.settle(Duration::from_secs(1));
    pair.drive_for(Duration::from_secs(1));
    pair.lose_store(Side::B);
    pair.drive_for(Duration::from_secs(3));

    // Both operators are told, once each.
    assert_eq!(alarms_of(&pair, Side::A, &AlarmKind::PartnerLostStore), 1);
    assert_eq!(alarms_of(&pair, Side::B, &AlarmKind::StoreLossRepaired), 1);
    // The message in flight is reported lost to its sender, not silently gone.
    assert!(
        pair.a
            .reports
            .iter()
            .any(|r| r.id == in_flight && r.level == AckLevel::Lost),
        "in-flight message reported lost: {:?}",
        pair.a.reports
    );
    assert!(pair.a.engine.outbox().next().is_none());

    // New messages flow both ways, with ids never used before.
    let after = pair.send(Side::A, Routine, "after");
    let reply = pair.send(Side::B, Routine, "reply");
    pair.settle(Duration::from_secs(2));
    assert_eq!(pair.b.delivered_ids(), vec![after.clone()]);
    assert_eq!(pair.a.delivered_ids(), vec![back, reply]);
    assert!(after.seq > in_flight.seq && after.seq > before.seq);
    assert_eq!(pair.b.delivered[0].body, b"after");

    // The re-pairing settles: no further restarts or notices.
    pair.drive_for(Duration::from_secs(30));
    assert_eq!(alarms_of(&pair, Side::A, &AlarmKind::PartnerLostStore), 1);
    assert_eq!(alarms_of(&pair, Side::B, &AlarmKind::PartnerLostStore), 0);
    assert_eq!(alarms_of(&pair, Side::A, &AlarmKind::StoreLossRepaired), 0);

    // And survives a restart of the side that restarted its sequences.
    pair.crash(Side::A);
    pair.settle(Duration::from_secs(1));
    let later = pair.send(Side::A, Routine, "later");
    pair.settle(Duration::from_secs(2));
    assert_eq!(pair.b.delivered_ids(), vec![after, later]);
    assert!(pair.a.engine.outbox().all(|m| m.id != in_flight));
}

#[test]
fn first_pairing_restarts_nothing() {
    let mut pair = Pair::with(EngineConfig::default(), 92, false);
    let early = pair.send(Side::A, Routine, "before the partner's key");
    pair.connect(Side::B);
    pair.settle(Duration::from_secs(1));
    pair.drive_for(Duration::from_secs(5));
    assert_eq!(pair.b.delivered_ids(), vec![early]);
    for side in [Side::A, Side::B] {
        assert_eq!(alarms_of(&pair, side, &AlarmKind::PartnerLostStore), 0);
        assert_eq!(alarms_of(&pair, side, &AlarmKind::StoreLossRepaired), 0);
    }
    assert!(pair.a.reports.iter().all(|r| r.level != AckLevel::Lost));
}

#[test]
fn keys_rotate_on_schedule_and_superseded_keys_still_open() {
    let mut cfg = EngineConfig::default();
    cfg.set_key_rotation(Duration::from_secs(60)).unwrap();
    let mut pair = Pair::new(cfg, 93);
    let first = pair.a.engine.status().partner_epoch.unwrap();

    // Sealed to jp's first key, held back by the relay until after jp rotated.
    pair.hold = Some(Side::B);
    let old = pair.send(Side::A, Routine, "sealed to the first key");
    pair.settle(Duration::from_millis(500));
    pair.drive_for(Duration::from_secs(61));
    let second = pair.a.engine.status().partner_epoch.unwrap();
    assert!(second > first, "jp rotated: {first} -> {second}");
    let rotations = pair
        .b
        .durable
        .iter()
        .filter(|r| matches!(r, Record::SealingKey { .. }))
        .count();
    assert_eq!(rotations, 2);

    pair.release_held();
    let new = pair.send(Side::A, Routine, "sealed to the second key");
    pair.settle(Duration::from_secs(2));
    assert_eq!(pair.b.delivered_ids(), vec![old, new.clone()]);
    let sealed_epoch = pair.a.sent_frames.iter().rev().find_map(|(_, f)| match f {
        Frame::Envelope(e) if e.envelope.header.message_id() == new => {
            Some(e.envelope.header.epoch)
        }
        _ => None,
    });
    assert_eq!(sealed_epoch, Some(second));
}

#[test]
fn only_the_newest_keys_are_kept() {
    let mut pair = Pair::new(EngineConfig::default(), 94);
    pair.hold = Some(Side::B);
    let old = pair.send(Side::A, Routine, "sealed to a key about to be dropped");
    pair.settle(Duration::from_millis(500));
    let now = pair.now;
    for _ in 0..super::super::keys::MAX_SEALING_KEYS {
        pair.b.engine.rotate_sealing_key(now);
    }
    pair.release_held();
    pair.settle(Duration::from_secs(1));
    assert!(pair.b.delivered_ids().is_empty());
    assert!(
        pair.b
            .alarms
            .iter()
            .any(|a| matches!(a.kind, AlarmKind::Security(VerifyError::StaleEpoch { .. }))),
        "a message sealed to a dropped key is refused as stale: {:?}",
        old
    );
}

#[test]
fn rekey_on_demand_announces_a_newer_epoch_that_the_partner_uses() {
    let mut pair = Pair::new(EngineConfig::default(), 95);
    let before = pair.a.engine.status().partner_epoch.unwrap();
    let now = pair.now;
    let epoch = pair.b.engine.rotate_sealing_key(now);
    pair.settle(Duration::from_secs(1));
    assert!(epoch > before);
    assert_eq!(pair.a.engine.status().partner_epoch, Some(epoch));
    let m = pair.send(Side::A, Flash, "after rekey");
    pair.settle(Duration::from_secs(1));
    assert_eq!(pair.b.delivered_ids(), vec![m]);
}

#[test]
fn store_loss_re_pairs_even_when_the_lost_store_had_higher_epochs() {
    let mut pair = Pair::new(EngineConfig::default(), 96);
    // jp rekeyed often: its epochs ran ahead of its clock's seconds, which the new store's
    // first epoch comes from.
    let now = pair.now;
    for _ in 0..5 {
        pair.b.engine.rotate_sealing_key(now);
    }
    pair.settle(Duration::from_secs(1));
    let old_epoch = pair.a.engine.status().partner_epoch.unwrap();
    pair.lose_store(Side::B);
    pair.drive_for(Duration::from_secs(3));
    let new_epoch = pair.a.engine.status().partner_epoch.unwrap();
    assert!(new_epoch < old_epoch, "{new_epoch} < {old_epoch}");
    assert_eq!(alarms_of(&pair, Side::A, &AlarmKind::PartnerLostStore), 1);
    let m = pair.send(Side::A, Routine, "to the new store");
    pair.settle(Duration::from_secs(2));
    assert_eq!(pair.b.delivered_ids(), vec![m]);
}

#[test]
fn an_expired_partner_key_is_one_alarm_and_still_used() {
    let mut cfg = EngineConfig::default();
    cfg.set_key_rotation(Duration::from_secs(60)).unwrap();
    let mut pair = Pair::new(cfg, 97);
    // jp goes away: it keeps rotating, but no newer announcement reaches us; its last one
    // expires two rotations after it was made.
    pair.disconnect(Side::B);
    pair.drive_for(Duration::from_secs(119));
    assert_eq!(alarms_of(&pair, Side::A, &AlarmKind::PartnerKeyExpired), 0);
    pair.drive_for(Duration::from_secs(60));
    assert_eq!(alarms_of(&pair, Side::A, &AlarmKind::PartnerKeyExpired), 1);
    pair.drive_for(Duration::from_secs(600));
    assert_eq!(
        alarms_of(&pair, Side::A, &AlarmKind::PartnerKeyExpired),
        1,
        "once per epoch"
    );
    // Still sealed to it: a crisis is no time to stop sending.
    let m = pair.send(Side::A, Flash, "sealed to an expired key");
    pair.settle(Duration::from_millis(500));
    assert!(pair.a.engine.outbox().any(|e| e.id == m));
    let status = pair.a.engine.status();
    assert_eq!(status.lanes[Flash.index()].awaiting_key, 0);
    // jp is back with a fresh key: the message arrives.
    pair.connect(Side::B);
    pair.drive_for(Duration::from_secs(15));
    assert_eq!(pair.b.delivered_ids(), vec![m]);
}
