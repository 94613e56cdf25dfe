//! A hostile partner or relay, one attack per test: extreme clocks, endless channel names,
//! equivocating keys, maximal sizes, replays and floods. Each test names the attack and checks
//! the outcome: no panic, memory bounded, one alarm (counted, not one per frame), and the honest
//! messages beside the attack still delivered exactly once, in order.
//!
//! A hostile *partner* signs with B's real key; it is played by a second engine holding that
//! key (`twin`), on channels of its own so B's genuine chains stay intact. A hostile *relay*
//! can only replay, drop, or make up unsigned frames, so it is played by `inject`.

use std::time::Duration;

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use super::util::{Pair, Side};
use crate::crypto::{IdentityKey, SEALING_PUBLIC_KEY_LEN};
use crate::engine::inbound::{MAX_BUFFERED_BYTES, MAX_INBOUND_LANES};
use crate::engine::{
    AckLevel, Action, Alarm, AlarmKind, Engine, EngineConfig, LinkState, Local, MAX_ALARM_DETAIL,
    Outgoing, Partner,
};
use crate::envelope::{
    Announcement, EscalationNotice, LinkTest, Receipt, ReceiptKind, Signed, VerifyError,
};
use crate::types::{Channel, MessageId, Precedence, Time};
use crate::wire::{self, EnvelopeFrame, Frame, MAX_BODY_LEN, Presence, Refusal, RefusalCode};

use Precedence::{Flash, Routine};

/// 10000-01-01T00:00:00Z in microseconds since the epoch.
const YEAR_10000: Time = Time(253_402_300_800_000_000);

fn key_a() -> IdentityKey {
    IdentityKey::from_seed(&[1; 32])
}

fn key_b() -> IdentityKey {
    IdentityKey::from_seed(&[2; 32])
}

/// The first envelope A sends, captured without B seeing it; B then gets it from the relay's
/// queue on a reconnect, so later traffic is not stuck behind it.
fn capture_envelope(pair: &mut Pair) -> EnvelopeFrame {
    let frame = super::capture_envelope(pair, Routine, "template");
    pair.disconnect(Side::B);
    pair.connect(Side::B);
    pair.settle(Duration::from_secs(1));
    frame
}

fn channel(name: &str) -> Channel {
    name.parse().unwrap()
}

/// B's identity in a second engine whose clock reads `now`: a hostile partner.
fn twin(pair: &Pair, now: Time) -> Engine<ChaCha20Rng> {
    // Its clock says `now`, but its lanes continue B's incarnation (B's engine was made at
    // START), so what it seals lands in the lanes A keeps for B.
    let mut twin = Engine::restore(
        EngineConfig::default(),
        Local {
            id: pair.b.id.clone(),
            key: key_b(),
        },
        Partner {
            id: pair.a.id.clone(),
            key: key_a().public(),
        },
        ChaCha20Rng::seed_from_u64(99 ^ now.0),
        now,
        [crate::engine::Record::Incarnation {
            incarnation: super::util::START.0,
            peer: 0,
        }],
    )
    .unwrap();
    twin.handle_connected(now);
    let ann = pair.a.engine.announcement().unwrap().clone();
    twin.handle_decoded(Frame::Announcement(ann)).unwrap();
    twin
}

/// The envelope frames `twin` sends for `msgs` (channel, body), all submitted at `now`.
fn twin_envelopes(
    twin: &mut Engine<ChaCha20Rng>,
    now: Time,
    msgs: &[(Channel, Vec<u8>)],
) -> Vec<EnvelopeFrame> {
    for (ch, body) in msgs {
        twin.submit(
            now,
            Outgoing {
                channel: ch.clone(),
                precedence: Routine,
                body: body.clone(),
            },
        )
        .unwrap();
    }
    let mut frames = Vec::new();
    loop {
        let mut last = None;
        let mut any = false;
        while let Some(a) = twin.poll_action() {
            any = true;
            match a {
                Action::Persist { id, .. } => last = Some(id),
                Action::Send { frame, .. } => {
                    if let Ok((Frame::Envelope(e), _)) = wire::decode_frame(&frame) {
                        frames.push(e);
                    }
                }
                _ => {}
            }
        }
        match last {
            Some(id) => twin.handle_persisted(now, id),
            None if !any => return frames,
            None => {}
        }
    }
}

/// B sends `n` routine messages on `main`; A must get them exactly once, in order, with B's
/// (plausible) clock as `sent_at`. A sends one back, which B must get.
fn honest_traffic_flows(pair: &mut Pair, n: usize) {
    let before_a = pair.a.delivered.len();
    let before_b = pair.b.delivered.len();
    let sent: Vec<(MessageId, Time)> = (0..n)
        .map(|i| {
            let at = pair.now;
            (pair.send(Side::B, Routine, &format!("honest {i}")), at)
        })
        .collect();
    let back = pair.send(Side::A, Routine, "honest reply");
    pair.settle(Duration::from_secs(2));
    let got: Vec<(MessageId, Time)> = pair.a.delivered[before_a..]
        .iter()
        .filter(|d| d.id.channel == Channel::default())
        .map(|d| (d.id.clone(), d.sent_at))
        .collect();
    assert_eq!(
        got, sent,
        "honest messages exactly once, in order, B's times"
    );
    assert_eq!(pair.b.delivered_ids()[before_b..], [back]);
}

/// Alarm occurrences of `kind`'s class on `side` so far, emitted or held.
fn occurrences(pair: &Pair, side: Side, kind: &AlarmKind) -> u32 {
    let node = match side {
        Side::A => &pair.a,
        Side::B => &pair.b,
    };
    let class = |k: &AlarmKind| crate::engine::alarms::class_of(k);
    let emitted: u32 = node
        .alarms
        .iter()
        .filter(|a| class(&a.kind) == class(kind))
        .map(|a| a.count)
        .sum();
    let held: u32 = node
        .engine
        .status()
        .held_alarms
        .iter()
        .filter(|a| class(&a.kind) == class(kind))
        .map(|a| a.count)
        .sum();
    emitted + held
}

/// The alarms of `kind`'s class `side` emitted so far.
fn emitted(pair: &Pair, side: Side, kind: &AlarmKind) -> Vec<Alarm> {
    let node = match side {
        Side::A => &pair.a,
        Side::B => &pair.b,
    };
    let class = crate::engine::alarms::class_of(kind);
    node.alarms
        .iter()
        .filter(|a| crate::engine::alarms::class_of(&a.kind) == class)
        .cloned()
        .collect()
}

// ----- extreme times ----------------------------------------------------------------------------

#[test]
fn year_10000_message_is_delivered_with_local_time() {
    let mut pair = Pair::new(EngineConfig::default(), 901);
    honest_traffic_flows(&mut pair, 2);
    let mut liar = twin(&pair, YEAR_10000);
    let msgs: Vec<_> = (0..3)
        .map(|i| {
            (
                channel("future"),
                format!("from the future {i}").into_bytes(),
            )
        })
        .collect();
    let frames = twin_envelopes(&mut liar, YEAR_10000, &msgs);
    assert_eq!(frames.len(), 3);
    for f in &frames {
        assert_eq!(pair.inject(Side::A, &Frame::Envelope(f.clone())), Ok(()));
    }
    let now = pair.now;
    let future: Vec<_> = pair
        .a
        .delivered
        .iter()
        .filter(|d| d.id.channel == channel("future"))
        .collect();
    assert_eq!(future.len(), 3, "delivered, never dropped over a clock");
    for d in &future {
        assert_eq!(
            (d.sent_at, d.received_at),
            (now, now),
            "our time shown, not year 10000"
        );
    }
    let skew = emitted(&pair, Side::A, &AlarmKind::ClockSkew);
    assert_eq!(skew.len(), 1, "one alarm for the episode: {skew:?}");
    assert_eq!(occurrences(&pair, Side::A, &AlarmKind::ClockSkew), 1);
    assert!(
        skew[0].detail.contains(&YEAR_10000.0.to_string())
            && skew[0].detail.contains(&now.0.to_string()),
        "both times in the detail: {}",
        skew[0].detail
    );
    assert_eq!(skew[0].message.as_ref(), Some(&future[0].id));
    honest_traffic_flows(&mut pair, 2);
}

#[test]
fn zero_and_max_sent_at_are_delivered_with_local_time_and_one_alarm_per_episode() {
    let mut pair = Pair::new(EngineConfig::default(), 902);
    for (i, clock) in [Time(0), Time(u64::MAX)].into_iter().enumerate() {
        let mut liar = twin(&pair, clock);
        let name = format!("liar{i}");
        let frames = twin_envelopes(&mut liar, clock, &[(channel(&name), b"when?".to_vec())]);
        assert_eq!(
            pair.inject(Side::A, &Frame::Envelope(frames[0].clone())),
            Ok(())
        );
        let d = pair.a.delivered.last().unwrap();
        assert_eq!(d.id.channel, channel(&name));
        assert_eq!(d.sent_at, d.received_at, "{clock:?} not shown as fact");
        assert_eq!(
            occurrences(&pair, Side::A, &AlarmKind::ClockSkew),
            1 + i as u32
        );
        // B's next plausible link test ends the episode, so the next liar alarms again.
        pair.drive_for(Duration::from_secs(3));
    }
    honest_traffic_flows(&mut pair, 3);
}

#[test]
fn receipt_from_year_10000_counts_but_reports_local_time() {
    let mut pair = Pair::new(EngineConfig::default(), 903);
    // B never sees the message; the hostile partner receipts it with a wild clock.
    pair.hold = Some(Side::B);
    let id = pair.send(Side::A, Routine, "receipt me");
    pair.settle(Duration::from_millis(100));
    let hash = pair
        .a
        .sent_frames
        .iter()
        .find_map(|(_, f)| match f {
            Frame::Envelope(e) if e.envelope.header.message_id() == id => Some(e.envelope.hash()),
            _ => None,
        })
        .unwrap();
    for at in [YEAR_10000, Time(u64::MAX), Time(0)] {
        let receipt = Signed::sign(
            Receipt {
                from: pair.b.id.clone(),
                to: pair.a.id.clone(),
                channel: Channel::default(),
                precedence: Routine,
                kind: ReceiptKind::Delivered {
                    upto: id.seq,
                    head: hash,
                },
                at,
            },
            &key_b(),
        );
        assert_eq!(pair.inject(Side::A, &Frame::Receipt(receipt)), Ok(()));
    }
    let now = pair.now;
    let delivered: Vec<_> = pair
        .a
        .reports
        .iter()
        .filter(|r| r.id == id && r.level == AckLevel::Delivered)
        .map(|r| r.at)
        .collect();
    assert_eq!(delivered, [now], "counted once, at our time");
    let entry = pair.a.engine.outbox().find(|e| e.id == id);
    assert!(entry.is_none_or(|e| e.delivered == Some(now)));
    // Only the first receipt was new; the replays with other wild times are not re-checked.
    assert_eq!(occurrences(&pair, Side::A, &AlarmKind::ClockSkew), 1);
    // B reconnects and gets the message from the relay's queue; its real receipt is no news.
    pair.hold = None;
    pair.disconnect(Side::B);
    pair.connect(Side::B);
    pair.settle(Duration::from_secs(1));
    assert_eq!(pair.b.delivered_ids(), [id]);
    honest_traffic_flows(&mut pair, 2);
}

#[test]
fn link_test_from_year_10000_neither_brings_the_link_up_nor_blocks_later_tests() {
    let mut pair = Pair::new(EngineConfig::default(), 904);
    pair.drive_for(Duration::from_secs(5));
    assert_eq!(pair.a.engine.status().link, LinkState::Up);
    pair.disconnect(Side::B);
    pair.drive_for(Duration::from_secs(10));
    assert_eq!(pair.a.engine.status().link, LinkState::Degraded);
    for (seq, at) in [
        (u64::MAX, YEAR_10000),
        (u64::MAX, Time(u64::MAX)),
        (1, Time(0)),
    ] {
        let test = LinkTest {
            from: pair.b.id.clone(),
            to: pair.a.id.clone(),
            seq,
            at,
            audit_len: 99,
            audit_head: crate::crypto::Digest([9; 32]),
        };
        assert_eq!(
            pair.inject(Side::A, &Frame::LinkTest(Signed::sign(test, &key_b()))),
            Ok(())
        );
        pair.drive_for(Duration::ZERO);
        let status = pair.a.engine.status();
        assert_eq!(status.link, LinkState::Degraded, "{at:?} proves nothing");
        assert_ne!(status.partner_audit_head.map(|h| h.0), Some(99));
    }
    assert_eq!(
        occurrences(&pair, Side::A, &AlarmKind::ClockSkew),
        1,
        "one episode, one alarm"
    );
    // B comes back with its honest clock and a lower counter: taken at once.
    pair.connect(Side::B);
    pair.settle(Duration::from_millis(100));
    assert_eq!(pair.a.engine.status().link, LinkState::Up);
    honest_traffic_flows(&mut pair, 2);
}

#[test]
fn escalation_notice_from_1970_realerts_with_local_time() {
    let mut pair = Pair::new(EngineConfig::default(), 905);
    let id = pair.send(Side::B, Flash, "acknowledge me");
    pair.settle(Duration::from_secs(1));
    assert_eq!(pair.a.delivered_ids(), std::slice::from_ref(&id));
    let notice = EscalationNotice {
        from: pair.b.id.clone(),
        to: pair.a.id.clone(),
        message: id,
        level: Flash,
        count: 1,
        at: Time(0),
    };
    assert_eq!(
        pair.inject(Side::A, &Frame::Escalation(Signed::sign(notice, &key_b()))),
        Ok(())
    );
    assert_eq!(pair.a.realerts.len(), 1);
    assert_eq!(pair.a.realerts[0].at, pair.now, "our time, not 1970");
    assert_eq!(occurrences(&pair, Side::A, &AlarmKind::ClockSkew), 1);
    honest_traffic_flows(&mut pair, 2);
}

// ----- bounded memory ----------------------------------------------------------------------------

#[test]
fn ten_thousand_unverified_channel_names_create_no_lane_and_one_counted_alarm() {
    let mut pair = Pair::new(EngineConfig::default(), 906);
    honest_traffic_flows(&mut pair, 1);
    let genuine = capture_envelope(&mut pair);
    pair.settle(Duration::from_secs(1));
    let (lanes, _) = pair.b.engine.inbound.footprint();
    let before = occurrences(
        &pair,
        Side::B,
        &AlarmKind::Security(VerifyError::BadSignature),
    );
    for i in 0..10_000 {
        let mut f = genuine.clone();
        f.envelope.header.channel = channel(&format!("c{i}"));
        assert_eq!(
            pair.inject(Side::B, &Frame::Envelope(f)),
            Err(VerifyError::BadSignature)
        );
    }
    assert_eq!(
        pair.b.engine.inbound.footprint().0,
        lanes,
        "no lane created"
    );
    let kind = AlarmKind::Security(VerifyError::BadSignature);
    assert_eq!(occurrences(&pair, Side::B, &kind), before + 10_000);
    assert_eq!(
        emitted(&pair, Side::B, &kind).len(),
        1,
        "one alarm, counted"
    );
    honest_traffic_flows(&mut pair, 2);
}

#[test]
fn signed_lanes_beyond_the_bound_are_refused_with_one_counted_alarm() {
    let mut pair = Pair::new(EngineConfig::default(), 907);
    honest_traffic_flows(&mut pair, 1);
    let (lanes, _) = pair.a.engine.inbound.footprint();
    let extra = 20;
    let wanted = MAX_INBOUND_LANES - lanes + extra;
    let now = pair.now;
    let mut flood = twin(&pair, now);
    let msgs: Vec<_> = (0..wanted)
        .map(|i| (channel(&format!("flood{i}")), b"x".to_vec()))
        .collect();
    let frames = twin_envelopes(&mut flood, now, &msgs);
    assert_eq!(frames.len(), wanted);
    let mut refused = 0;
    for f in frames {
        match pair.inject(Side::A, &Frame::Envelope(f)) {
            Ok(()) => {}
            Err(VerifyError::Malformed(_)) => refused += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(refused, extra);
    assert_eq!(pair.a.engine.inbound.footprint().0, MAX_INBOUND_LANES);
    assert_eq!(
        occurrences(&pair, Side::A, &AlarmKind::LaneLimit),
        extra as u32
    );
    assert_eq!(emitted(&pair, Side::A, &AlarmKind::LaneLimit).len(), 1);
    // The honest lane existed before the flood and keeps working.
    honest_traffic_flows(&mut pair, 2);
}

#[test]
fn maximal_bodies_are_delivered_and_the_buffer_counts_their_real_memory() {
    let mut pair = Pair::new(EngineConfig::default(), 908);
    // The first is lost once, so the rest wait in A's buffer.
    pair.hold = Some(Side::A);
    let n = 140;
    let ids: Vec<_> = (0..n)
        .map(|i| {
            let now = pair.now;
            let mut body = vec![b'x'; MAX_BODY_LEN];
            body[0] = i as u8;
            pair.b
                .engine
                .submit(
                    now,
                    Outgoing {
                        channel: Channel::default(),
                        precedence: Flash,
                        body,
                    },
                )
                .unwrap()
        })
        .collect();
    pair.settle(Duration::from_millis(100));
    pair.hold = None;
    let frames: Vec<EnvelopeFrame> = ids
        .iter()
        .map(|id| {
            pair.b
                .sent_frames
                .iter()
                .find_map(|(_, f)| match f {
                    Frame::Envelope(e) if e.envelope.header.message_id() == *id => Some(e.clone()),
                    _ => None,
                })
                .unwrap()
        })
        .collect();
    let mut peak = 0;
    for f in &frames[1..] {
        assert_eq!(pair.inject(Side::A, &Frame::Envelope(f.clone())), Ok(()));
        peak = peak.max(pair.a.engine.inbound.footprint().1);
    }
    assert!(pair.a.delivered.is_empty());
    let buffered: usize = pair
        .a
        .engine
        .status()
        .lanes
        .iter()
        .map(|l| l.receive_buffered)
        .sum();
    // Each entry holds the sealed body and the plaintext: about twice the body.
    assert!(
        buffered * 2 * MAX_BODY_LEN <= peak,
        "{buffered} entries, {peak} bytes"
    );
    assert!(peak <= MAX_BUFFERED_BYTES, "{peak}");
    assert!(buffered < n - 1, "the bound dropped some: {buffered}");
    // The missing first one is admitted although the buffer is full (it alone lets the buffer
    // drain): what a signed head covers is released at once.
    pair.inject(Side::A, &Frame::Envelope(frames[0].clone()))
        .unwrap();
    assert!(pair.a.delivered.len() >= 16, "{}", pair.a.delivered.len());
    assert!(pair.a.engine.inbound.footprint().1 <= MAX_BUFFERED_BYTES);
    // The sender re-offers what was dropped; all arrive once, in order.
    pair.drive_for(Duration::from_secs(60));
    assert_eq!(pair.a.delivered_ids(), ids);
    assert_eq!(pair.a.engine.inbound.footprint().1, 0);
    assert!(pair.a.alarms.is_empty(), "{:?}", pair.a.alarms);
}

#[test]
fn huge_sealed_len_mismatch_is_malformed_and_creates_nothing() {
    let mut pair = Pair::new(EngineConfig::default(), 909);
    let genuine = capture_envelope(&mut pair);
    let (lanes, bytes) = pair.b.engine.inbound.footprint();
    for len in [u32::MAX, MAX_BODY_LEN as u32 * 2, 0] {
        let mut f = genuine.clone();
        f.envelope.header.sealed_len = len;
        f.envelope.header.channel = channel("sized");
        assert_eq!(
            pair.inject(Side::B, &Frame::Envelope(f)),
            Err(VerifyError::Malformed("bad sequence or length"))
        );
    }
    assert_eq!(pair.b.engine.inbound.footprint(), (lanes, bytes));
    // Malformed frames are the relay's doing: one alarm, the rest counted.
    let kind = AlarmKind::Security(VerifyError::Malformed("bad sequence or length"));
    assert_eq!(emitted(&pair, Side::B, &kind).len(), 1);
    assert_eq!(occurrences(&pair, Side::B, &kind), 3);
    pair.settle(Duration::from_secs(1));
    honest_traffic_flows(&mut pair, 2);
}

// ----- keys ------------------------------------------------------------------------------------

#[test]
fn equivocating_announcements_keep_the_key_and_give_one_counted_alarm() {
    let mut pair = Pair::new(EngineConfig::default(), 910);
    let real = pair.b.engine.announcement().unwrap().clone();
    let epoch = pair.a.engine.status().partner_epoch;
    assert_eq!(epoch, Some(real.body.epoch));
    for i in 0..50u8 {
        let forged = Announcement {
            sealing_key: vec![i; SEALING_PUBLIC_KEY_LEN],
            ..real.body.clone()
        };
        let r = pair.inject(
            Side::A,
            &Frame::Announcement(Signed::sign(forged, &key_b())),
        );
        assert!(matches!(r, Err(VerifyError::Equivocation(_))), "{r:?}");
    }
    assert_eq!(pair.a.engine.status().partner_epoch, epoch);
    let kind = AlarmKind::Security(VerifyError::Equivocation(MessageId {
        sender: pair.b.id.clone(),
        channel: Channel::default(),
        precedence: Flash,
        seq: crate::types::Seq(0),
    }));
    assert_eq!(occurrences(&pair, Side::A, &kind), 50);
    assert_eq!(emitted(&pair, Side::A, &kind).len(), 1);
    // After the window, the rest are reported as one alarm with their count.
    pair.drive_for(super::super::alarms::ALARM_WINDOW);
    let alarms = emitted(&pair, Side::A, &kind);
    assert_eq!(alarms.iter().map(|a| a.count).collect::<Vec<_>>(), [1, 49]);
    honest_traffic_flows(&mut pair, 2);
}

// ----- replays and floods ----------------------------------------------------------------------

#[test]
fn relay_replaying_old_frames_and_dropping_new_ones_degrades_the_link_on_time() {
    let cfg = EngineConfig::default();
    let deadline = cfg.link_test_interval() * 3;
    let mut pair = Pair::new(cfg, 911);
    for i in 0..3 {
        pair.send(Side::B, Routine, &format!("old {i}"));
        pair.send(Side::A, Routine, &format!("mine {i}"));
    }
    pair.drive_for(Duration::from_secs(5));
    assert_eq!(pair.a.engine.status().link, LinkState::Up);
    let old = pair.a.accepted(|f| {
        matches!(
            f,
            Frame::Envelope(_) | Frame::Receipt(_) | Frame::LinkTest(_) | Frame::Escalation(_)
        )
    });
    assert!(old.iter().any(|f| matches!(f, Frame::LinkTest(_))));
    assert!(old.iter().any(|f| matches!(f, Frame::Envelope(_))));
    assert!(old.iter().any(|f| matches!(f, Frame::Receipt(_))));
    // From now on the relay drops everything new to A and replays the old frames, plus an
    // unsigned "partner online".
    let t0 = pair.now;
    pair.hold = Some(Side::A);
    let online = Frame::Presence(Presence {
        endpoint: pair.b.id.clone(),
        online: true,
    });
    let mut degraded_at = None;
    while pair.now < t0.plus(deadline * 2) {
        for f in old.iter().chain([&online]) {
            let _ = pair.inject(Side::A, f);
        }
        pair.drive_for(Duration::from_millis(250));
        if degraded_at.is_none() && pair.a.engine.status().link == LinkState::Degraded {
            degraded_at = Some(pair.now);
        }
    }
    let degraded_at = degraded_at.expect("the link degraded");
    assert!(
        degraded_at <= t0.plus(deadline),
        "degraded {:?} after the relay went bad; deadline {deadline:?}",
        degraded_at.since(t0)
    );
    assert_eq!(
        pair.a.engine.status().link,
        LinkState::Degraded,
        "and stayed so"
    );
    assert!(
        pair.a.alarms.is_empty(),
        "replays are silent: {:?}",
        pair.a.alarms
    );
    let delivered = pair.a.delivered_ids();
    let mut once = delivered.clone();
    once.dedup();
    assert_eq!(delivered, once, "no replay delivered twice");
}

#[test]
fn relay_forwarding_traffic_but_dropping_link_tests_degrades_the_link_on_time() {
    let cfg = EngineConfig::default();
    let deadline = cfg.link_test_interval() * 3;
    let mut pair = Pair::new(cfg, 915);
    pair.drive_for(Duration::from_secs(5));
    assert_eq!(pair.a.engine.status().link, LinkState::Up);
    let t0 = pair.now;
    pair.drop_link_tests_to = Some(Side::A);
    let mut i = 0;
    while pair.now < t0.plus(deadline) {
        // New, genuine envelopes and receipts keep flowing both ways.
        pair.send(Side::B, Routine, &format!("b{i}"));
        pair.send(Side::A, Routine, &format!("a{i}"));
        i += 1;
        pair.drive_for(Duration::from_millis(500));
    }
    assert!(pair.a.delivered.len() >= 10 && pair.b.delivered.len() >= 10);
    assert_eq!(
        pair.a.engine.status().link,
        LinkState::Degraded,
        "only link tests prove the partner hears us"
    );
    assert_eq!(
        pair.b.engine.status().link,
        LinkState::Up,
        "B still gets A's tests"
    );
}

#[test]
fn relay_presence_can_degrade_the_link_but_never_bring_it_up() {
    let mut pair = Pair::new(EngineConfig::default(), 912);
    pair.drive_for(Duration::from_secs(5));
    assert_eq!(pair.a.engine.status().link, LinkState::Up);
    let presence = |online| {
        Frame::Presence(Presence {
            endpoint: pair.b.id.clone(),
            online,
        })
    };
    let (offline, online) = (presence(false), presence(true));
    pair.hold = Some(Side::A);
    pair.inject(Side::A, &offline).unwrap();
    assert_eq!(pair.a.engine.status().link, LinkState::Degraded);
    pair.inject(Side::A, &online).unwrap();
    pair.drive_for(Duration::ZERO);
    assert_eq!(
        pair.a.engine.status().link,
        LinkState::Degraded,
        "the relay's word alone does not bring it up"
    );
    // B's next genuine link test does.
    pair.hold = None;
    pair.drive_for(Duration::from_secs(3));
    assert_eq!(pair.a.engine.status().link, LinkState::Up);
}

#[test]
fn bad_signature_flood_gives_one_counted_alarm() {
    let mut pair = Pair::new(EngineConfig::default(), 913);
    let genuine = capture_envelope(&mut pair);
    pair.settle(Duration::from_secs(1));
    let kind = AlarmKind::Security(VerifyError::BadSignature);
    let flood = 1_000;
    for i in 0..flood {
        let mut f = genuine.clone();
        if let Some(sig) = &mut f.head {
            sig.0[i % 64] ^= 1 << (i % 8);
        }
        f.envelope.header.channel = channel("flood");
        assert_eq!(
            pair.inject(Side::B, &Frame::Envelope(f)),
            Err(VerifyError::BadSignature)
        );
    }
    assert_eq!(emitted(&pair, Side::B, &kind).len(), 1, "one alarm at once");
    assert_eq!(occurrences(&pair, Side::B, &kind), flood as u32);
    pair.drive_for(super::super::alarms::ALARM_WINDOW);
    let counts: Vec<u32> = emitted(&pair, Side::B, &kind)
        .iter()
        .map(|a| a.count)
        .collect();
    assert_eq!(counts, [1, flood as u32 - 1], "then one with the count");
    assert!(pair.b.engine.status().held_alarms.is_empty());
    honest_traffic_flows(&mut pair, 2);
}

#[test]
fn refusal_detail_of_a_frame_length_is_capped() {
    let mut pair = Pair::new(EngineConfig::default(), 914);
    let detail = "A".repeat(wire::MAX_FRAME_LEN - 64);
    for _ in 0..100 {
        pair.inject(
            Side::A,
            &Frame::Refused(Refusal {
                id: None,
                code: RefusalCode::Overloaded,
                detail: detail.clone(),
            }),
        )
        .unwrap();
    }
    let alarms = emitted(&pair, Side::A, &AlarmKind::Refused(RefusalCode::Overloaded));
    assert_eq!(alarms.len(), 1);
    assert!(alarms[0].detail.len() <= MAX_ALARM_DETAIL);
    assert!(
        alarms[0].detail.starts_with("relay says: AAA"),
        "{}",
        alarms[0].detail
    );
    assert!(
        alarms[0].detail.ends_with("bytes cut]"),
        "{}",
        alarms[0].detail
    );
    let held = pair.a.engine.status().held_alarms;
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].count, 99);
    assert!(held[0].detail.len() <= MAX_ALARM_DETAIL);
    honest_traffic_flows(&mut pair, 2);
}
