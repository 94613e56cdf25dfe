//! Message timers: escalation on missed delivered and acknowledged deadlines (raising the
//! transport precedence and following the raised precedence's deadlines), the guards that keep
//! a met or cancelled deadline from escalating, and retransmission.

use std::time::Duration;

use super::util::{Pair, Side};
use crate::engine::outbox::TimerKind;
use crate::engine::{AckLevel, DeadlineKind, EngineConfig};
use crate::types::{Precedence, Time};
use crate::wire::{Frame, Refusal, RefusalCode};

use Precedence::{Flash, Immediate, Routine};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn at(t0: Time, ms: u64) -> Time {
    t0.plus(Duration::from_millis(ms))
}

#[test]
fn missed_acknowledged_deadline_raises_immediate_to_flash_and_follows_flash_deadlines() {
    let mut cfg = EngineConfig::default();
    cfg.set_acknowledged_deadline(Immediate, Some(secs(60)))
        .unwrap();
    cfg.set_acknowledged_deadline(Flash, Some(secs(10)))
        .unwrap();
    let mut pair = Pair::new(cfg, 30);
    let t0 = pair.now;
    let m = pair.send(Side::A, Immediate, "confirm receipt");
    pair.settle(secs(1));
    assert_eq!(pair.b.delivered_ids(), vec![m.clone()]);

    pair.drive_until(at(t0, 59_000));
    assert!(pair.a.escalations.is_empty(), "{:?}", pair.a.escalations);
    pair.drive_until(at(t0, 61_000));
    assert_eq!(pair.a.escalations.len(), 1, "{:?}", pair.a.escalations);
    let e = &pair.a.escalations[0];
    assert_eq!(
        (e.id.clone(), e.kind, e.escalated_to, e.count),
        (m.clone(), DeadlineKind::Acknowledged, Flash, 1)
    );
    assert_eq!(
        pair.a.engine.status().open_escalations,
        vec![(m.clone(), Flash, 1)]
    );
    assert_eq!(pair.b.realerts.len(), 1);
    assert_eq!(
        (pair.b.realerts[0].message.clone(), pair.b.realerts[0].level),
        (m.clone(), Flash),
        "the partner is re-alerted at the raised precedence"
    );

    // The next deadline is flash's (10 s after the escalation), not immediate's (60 s).
    let escalated_at = e.at;
    pair.drive_until(escalated_at.plus(Duration::from_millis(9_900)));
    assert_eq!(pair.a.escalations.len(), 1);
    pair.drive_until(escalated_at.plus(Duration::from_millis(10_100)));
    assert_eq!(pair.a.escalations.len(), 2, "{:?}", pair.a.escalations);
    let e2 = &pair.a.escalations[1];
    assert_eq!(
        (e2.kind, e2.escalated_to, e2.count),
        (DeadlineKind::Acknowledged, Flash, 2)
    );
    assert_eq!(pair.b.realerts.len(), 2);
    assert_eq!(pair.b.realerts[1].level, Flash);
    assert_eq!(pair.a.engine.status().open_escalations, vec![(m, Flash, 2)]);
}

#[test]
fn unacknowledged_priority_message_is_raised_one_level_and_stays_raised_after_a_restart() {
    let mut cfg = EngineConfig::default();
    cfg.set_acknowledged_deadline(Precedence::Priority, Some(secs(30)))
        .unwrap();
    let mut pair = Pair::new(cfg, 37);
    let t0 = pair.now;
    let m = pair.send(Side::A, Precedence::Priority, "please acknowledge");
    pair.settle(secs(1));
    assert_eq!(pair.b.delivered_ids(), vec![m.clone()]);
    pair.drive_until(at(t0, 31_000));

    let raised = pair.a.durable.iter().find_map(|r| match r {
        crate::engine::Record::Escalated { id, kind, to, .. } if *id == m => Some((*kind, *to)),
        _ => None,
    });
    assert_eq!(raised, Some((DeadlineKind::Acknowledged, Immediate)));
    assert_eq!(
        pair.b.realerts.iter().map(|n| n.level).collect::<Vec<_>>(),
        [Immediate]
    );

    pair.crash(Side::A);
    assert_eq!(
        pair.a.engine.status().open_escalations,
        vec![(m, Immediate, 1)],
        "the raised transport precedence is restored from the record"
    );
}

#[test]
fn delivered_just_before_the_delivered_deadline_never_escalates() {
    let mut cfg = EngineConfig::default();
    cfg.set_delivered_deadline(Immediate, secs(5)).unwrap();
    let mut pair = Pair::new(cfg, 31);
    let t0 = pair.now;
    pair.disconnect(Side::B);
    let m = pair.send(Side::A, Immediate, "just in time");
    pair.drive_until(at(t0, 4_900));
    pair.connect(Side::B);
    pair.settle(Duration::from_millis(50));
    assert_eq!(pair.b.delivered_ids(), vec![m.clone()]);
    assert!(
        pair.a
            .reports
            .iter()
            .any(|r| r.id == m && r.level == AckLevel::Delivered)
    );
    pair.drive_for(secs(60));
    assert!(pair.a.escalations.is_empty(), "{:?}", pair.a.escalations);
    assert!(pair.a.engine.status().open_escalations.is_empty());
}

#[test]
fn stale_delivered_timer_of_a_delivered_message_does_nothing() {
    let mut pair = Pair::new(EngineConfig::default(), 32);
    let m = pair.send(Side::A, Immediate, "delivered");
    pair.settle(secs(1));
    assert_eq!(pair.b.delivered_ids(), vec![m.clone()]);
    // A delivered-deadline timer left armed after delivery (defence in depth: the outbox
    // disarms it, the timer handler must still ignore it).
    let soon = pair.now.plus(Duration::from_millis(10));
    pair.a
        .engine
        .outbox
        .timers
        .set((TimerKind::Delivered, m.clone()), soon);
    let sent = pair.envelopes_sent(Side::A, &m);
    pair.drive_for(secs(1));
    assert!(pair.a.escalations.is_empty(), "{:?}", pair.a.escalations);
    assert_eq!(pair.envelopes_sent(Side::A, &m), sent, "not re-offered");
}

#[test]
fn acknowledged_just_before_the_ack_deadline_never_escalates_or_realerts() {
    let mut cfg = EngineConfig::default();
    cfg.set_acknowledged_deadline(Immediate, Some(secs(10)))
        .unwrap();
    let mut pair = Pair::new(cfg, 33);
    let t0 = pair.now;
    let m = pair.send(Side::A, Immediate, "ack me");
    pair.settle(secs(1));
    pair.drive_until(at(t0, 9_900));
    pair.b.engine.acknowledge(pair.now, &m).unwrap();
    pair.settle(Duration::from_millis(50));
    assert!(
        pair.a
            .reports
            .iter()
            .any(|r| r.id == m && r.level == AckLevel::Acknowledged)
    );
    pair.drive_for(secs(60));
    assert!(pair.a.escalations.is_empty(), "{:?}", pair.a.escalations);
    assert!(pair.b.realerts.is_empty());
    let notices = pair
        .a
        .sent_frames
        .iter()
        .filter(|(_, f)| matches!(f, Frame::Escalation(_)));
    assert_eq!(notices.count(), 0, "no escalation notice is sent");
}

#[test]
fn restored_undelivered_message_does_not_escalate_on_its_acknowledged_deadline() {
    // After a restart every undelivered message's acknowledged deadline is armed too; it must
    // not fire as "unacknowledged" before the message was even delivered.
    let mut cfg = EngineConfig::default();
    cfg.set_delivered_deadline(Immediate, secs(60)).unwrap();
    cfg.set_acknowledged_deadline(Immediate, Some(secs(5)))
        .unwrap();
    let mut pair = Pair::new(cfg, 34);
    let t0 = pair.now;
    pair.disconnect(Side::B);
    let m = pair.send(Side::A, Immediate, "not yet delivered");
    pair.drive_for(secs(1));
    pair.crash(Side::A);
    pair.drive_until(at(t0, 30_000));
    assert!(pair.a.escalations.is_empty(), "{:?}", pair.a.escalations);
    let notices = pair
        .a
        .sent_frames
        .iter()
        .filter(|(_, f)| matches!(f, Frame::Escalation(_)));
    assert_eq!(notices.count(), 0);
    // The delivered deadline still fires.
    pair.drive_until(at(t0, 61_000));
    assert_eq!(pair.a.escalations.len(), 1);
    assert_eq!(
        (pair.a.escalations[0].id.clone(), pair.a.escalations[0].kind),
        (m, DeadlineKind::Delivered)
    );
}

#[test]
fn each_missed_delivered_deadline_escalates_exactly_once() {
    // Immediate's delivered deadline is shorter than flash's here, so a re-armed deadline that
    // still followed the old one would show up as an extra escalation.
    let mut cfg = EngineConfig::default();
    cfg.set_delivered_deadline(Immediate, secs(5)).unwrap();
    cfg.set_delivered_deadline(Flash, secs(20)).unwrap();
    let mut pair = Pair::new(cfg, 35);
    let t0 = pair.now;
    pair.disconnect(Side::B);
    let m = pair.send(Side::A, Immediate, "anyone?");
    pair.drive_until(at(t0, 4_900));
    assert!(pair.a.escalations.is_empty());
    pair.drive_until(at(t0, 5_100));
    assert_eq!(pair.a.escalations.len(), 1);
    assert_eq!(pair.a.escalations[0].escalated_to, Flash);
    // 10 s and 15 s pass (two more of immediate's periods): nothing.
    pair.drive_until(at(t0, 24_900));
    assert_eq!(pair.a.escalations.len(), 1, "{:?}", pair.a.escalations);
    pair.drive_until(at(t0, 25_100));
    assert_eq!(pair.a.escalations.len(), 2, "{:?}", pair.a.escalations);
    pair.drive_until(at(t0, 44_900));
    assert_eq!(pair.a.escalations.len(), 2);
    pair.drive_until(at(t0, 45_100));
    assert_eq!(pair.a.escalations.len(), 3);
    assert!(
        pair.a.escalations.iter().enumerate().all(|(i, e)| e.id == m
            && e.count == i as u32 + 1
            && e.kind == DeadlineKind::Delivered)
    );
}

#[test]
fn restored_escalated_message_keeps_its_rearmed_deadline() {
    let mut cfg = EngineConfig::default();
    cfg.set_delivered_deadline(Immediate, secs(5)).unwrap();
    cfg.set_delivered_deadline(Flash, secs(20)).unwrap();
    let mut pair = Pair::new(cfg, 36);
    let t0 = pair.now;
    pair.disconnect(Side::B);
    pair.send(Side::A, Immediate, "anyone?");
    pair.drive_until(at(t0, 6_000));
    assert_eq!(pair.a.escalations.len(), 1);
    pair.crash(Side::A);
    pair.drive_until(at(t0, 24_900));
    assert_eq!(pair.a.escalations.len(), 1, "{:?}", pair.a.escalations);
    pair.drive_until(at(t0, 25_100));
    assert_eq!(pair.a.escalations.len(), 2);
    assert_eq!(pair.a.escalations[1].escalated_to, Flash);
}

// ----- retransmission -----------------------------------------------------------------------

#[test]
fn accepted_message_is_not_retransmitted() {
    let mut pair = Pair::new(EngineConfig::default(), 37);
    pair.disconnect(Side::B);
    let m = pair.send(Side::A, Routine, "held by the relay");
    pair.settle(Duration::from_millis(100));
    assert!(
        pair.a
            .reports
            .iter()
            .any(|r| r.id == m && matches!(r.level, AckLevel::Accepted { .. }))
    );
    assert_eq!(pair.envelopes_sent(Side::A, &m), 1);
    pair.drive_for(secs(120));
    assert_eq!(pair.envelopes_sent(Side::A, &m), 1, "the relay holds it");

    // A retransmit timer left armed for it (the outbox stops it on `accepted`; the handler
    // must still check) does not send it again.
    let soon = pair.now.plus(Duration::from_millis(10));
    pair.a
        .engine
        .outbox
        .timers
        .set((TimerKind::Retransmit, m.clone()), soon);
    pair.drive_for(secs(1));
    assert_eq!(pair.envelopes_sent(Side::A, &m), 1);
}

#[test]
fn delivered_message_is_not_retransmitted_by_a_stale_timer() {
    let mut pair = Pair::new(EngineConfig::default(), 38);
    // Immediate: still tracked after delivery, waiting for the acknowledgement.
    let m = pair.send(Side::A, Immediate, "delivered");
    pair.settle(secs(1));
    assert_eq!(pair.b.delivered_ids(), vec![m.clone()]);
    let sent = pair.envelopes_sent(Side::A, &m);
    let soon = pair.now.plus(Duration::from_millis(10));
    let outbox = &mut pair.a.engine.outbox;
    outbox.timers.set((TimerKind::Retransmit, m.clone()), soon);
    if let Some(msg) = outbox.msgs.get_mut(&m) {
        // As if the relay had forgotten it: only delivery stops the resend.
        msg.relay_holds = false;
    }
    pair.drive_for(secs(1));
    assert_eq!(pair.envelopes_sent(Side::A, &m), sent);
}

#[test]
fn a_disconnected_engine_asks_for_no_retransmit_wakeups() {
    let mut pair = Pair::new(EngineConfig::default(), 41);
    // The relay never answers, so a retransmit timer (1 s) is armed while connected.
    pair.hold = Some(Side::A);
    let m = pair.send(Side::A, Routine, "no answer");
    pair.drive_for(Duration::from_millis(500));
    let now = pair.now;
    let armed = pair.a.engine.poll_timeout().expect("a timer is armed");
    assert!(
        armed <= now.plus(secs(1)),
        "retransmit armed while connected"
    );

    pair.disconnect(Side::A);
    let delivered_deadline = pair.a.engine.outbox.msgs[&m].delivered_deadline;
    assert_eq!(
        pair.a.engine.poll_timeout(),
        Some(delivered_deadline),
        "only the message's delivered deadline is left while offline"
    );
}

#[test]
fn nothing_is_retransmitted_while_disconnected() {
    let mut pair = Pair::new(EngineConfig::default(), 39);
    // The relay never answers: A keeps retransmitting while connected.
    pair.hold = Some(Side::A);
    let m = pair.send(Side::A, Routine, "no answer");
    pair.drive_for(Duration::from_millis(3_500));
    let while_connected = pair.envelopes_sent(Side::A, &m);
    assert!(while_connected >= 2, "retransmitted: {while_connected}");
    pair.disconnect(Side::A);
    pair.drive_for(secs(120));
    assert_eq!(
        pair.envelopes_sent(Side::A, &m),
        while_connected,
        "no retransmission while disconnected"
    );
    // A timer armed while disconnected does not send either.
    let soon = pair.now.plus(Duration::from_millis(10));
    pair.a
        .engine
        .outbox
        .timers
        .set((TimerKind::Retransmit, m.clone()), soon);
    pair.drive_for(secs(1));
    assert_eq!(pair.envelopes_sent(Side::A, &m), while_connected);
    assert!(pair.a.engine.outbox.send_queue.is_empty());
    pair.hold = None;
    pair.connect(Side::A);
    pair.settle(Duration::from_millis(100));
    assert_eq!(
        pair.envelopes_sent(Side::A, &m),
        while_connected + 1,
        "re-offered once on reconnect"
    );
}

#[test]
fn refused_message_is_retried_after_its_backoff() {
    let mut pair = Pair::new(EngineConfig::default(), 40);
    pair.disconnect(Side::B);
    let m = pair.send(Side::A, Routine, "relay full");
    pair.settle(Duration::from_millis(100));
    assert_eq!(pair.envelopes_sent(Side::A, &m), 1);
    let refused = Frame::Refused(Refusal {
        id: Some(m.clone()),
        code: RefusalCode::Overloaded,
        detail: "full".into(),
    });
    let _ = pair.inject(Side::A, &refused);
    assert!(
        pair.a
            .reports
            .iter()
            .any(|r| r.id == m && r.level == AckLevel::Refused(RefusalCode::Overloaded))
    );
    let refused_at = pair.now;
    // The first send armed a 1 s retransmission and doubled the interval: retried after 2 s.
    pair.drive_until(refused_at.plus(Duration::from_millis(1_900)));
    assert_eq!(pair.envelopes_sent(Side::A, &m), 1);
    pair.drive_until(refused_at.plus(Duration::from_millis(2_100)));
    assert_eq!(
        pair.envelopes_sent(Side::A, &m),
        2,
        "retried after the backoff"
    );
    // Accepted again: no further retries.
    pair.drive_for(secs(120));
    assert_eq!(pair.envelopes_sent(Side::A, &m), 2);
}

#[test]
fn set_deadlines_applies_to_new_messages_and_leaves_armed_ones_alone() {
    let mut cfg = EngineConfig::default();
    cfg.set_delivered_deadline(Immediate, secs(5)).unwrap();
    let mut pair = Pair::new(cfg, 36);
    let t0 = pair.now;
    pair.disconnect(Side::B);
    let old = pair.send(Side::A, Immediate, "before the reload");
    // A reload lengthens immediate's delivered deadline to 60 s; nothing else changes.
    let mut reloaded = EngineConfig::default();
    reloaded
        .set_delivered_deadline(Immediate, secs(60))
        .unwrap();
    reloaded.set_link_test_interval(secs(30)).unwrap();
    let link_test_interval = pair.a.engine.config().link_test_interval();
    pair.a.engine.set_deadlines(&reloaded);
    assert_eq!(
        pair.a.engine.config().delivered_deadline(Immediate),
        secs(60)
    );
    assert!(pair.a.engine.config().same_deadlines(&reloaded));
    assert_eq!(
        pair.a.engine.config().link_test_interval(),
        link_test_interval,
        "only deadlines are taken"
    );
    let new = pair.send(Side::A, Immediate, "after the reload");
    pair.drive_until(at(t0, 5_100));
    // The message sent before keeps the 5 s deadline it was given; the new one waits 60 s.
    assert_eq!(pair.a.escalations.len(), 1, "{:?}", pair.a.escalations);
    assert_eq!(pair.a.escalations[0].id, old);
    pair.drive_until(at(t0, 59_000));
    assert!(pair.a.escalations.iter().all(|e| e.id != new));
    pair.drive_until(at(t0, 60_200));
    assert!(pair.a.escalations.iter().any(|e| e.id == new));
}
