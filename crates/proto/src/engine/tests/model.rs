//! The ordering rule against a small reference model, under random sends, network faults,
//! stalled stores and crashes (unconfirmed writes dropped, engine restored from records).
//!
//! The model: for each direction, the list of messages whose `stored` level was reported, in
//! submission order. A delivery of `m` is allowed only once every stored message of the same or
//! higher precedence submitted before `m` has been delivered. After healing, each stored message
//! is delivered exactly once.
//!
//! A second property runs the same traffic with an adversarial relay injecting forged or
//! replayed frames between the operations (see [`Attack`]): each is refused with an alarm, or
//! dropped silently where the design answers it so, and none delivers anything, changes the
//! order, or changes a report, the link state or the partner's audit head.

use std::time::Duration;

use proptest::prelude::*;

use super::util::{Faults, Pair, Side};
use crate::crypto::IdentityKey;
use crate::engine::{AckError, AckLevel, AlarmKind, EngineConfig, Record};
use crate::envelope::{ChainHead, VerifyError, sign_head};
use crate::types::{MessageId, Precedence};
use crate::wire::Frame;

#[derive(Clone, Debug)]
enum Op {
    Send(Side, Precedence),
    Burst(Side, Precedence, u8),
    Advance(u16),
    SetFaults {
        loss_pct: u8,
        dup_pct: u8,
        spread_us: u32,
    },
    Disconnect(Side),
    Reconnect(Side),
    Stall(Side),
    Flush(Side),
    /// The store commits the stalled side's flash records ahead of the rest.
    FlushAhead(Side),
    Crash(Side),
    Ack(Side, u8),
    /// The relay injects a frame into this side.
    Attack(Side, Attack),
}

/// What the adversarial relay injects; the number picks which earlier frame it starts from
/// (counted from the newest).
#[derive(Clone, Copy, Debug)]
enum Attack {
    /// An envelope the partner sent with a head, the head's signature bits flipped: refused
    /// (`BadSignature`), or dropped silently if that envelope is already delivered (answered
    /// with the stored receipt) or buffered under its verified head.
    TamperedHead(u8),
    /// The same, the head signed by a key other than the partner's: as above.
    WrongSigner(u8),
    /// A delivered message's envelope with different sealed bytes: `Equivocation`.
    DeliveredSeqOtherBody(u8),
    /// A receipt this side already took, again: dropped silently (no new report).
    ReplayReceipt(u8),
    /// A link test this side already took, again: dropped silently (the link state and the
    /// partner's audit head stay as they are).
    ReplayLinkTest(u8),
    /// An escalation notice this side already took, again: dropped silently (no second
    /// re-alert), or answered with our acknowledgement receipt if the operator acknowledged.
    ReplayNotice(u8),
}

fn side() -> impl Strategy<Value = Side> {
    prop_oneof![Just(Side::A), Just(Side::B)]
}

fn precedence() -> impl Strategy<Value = Precedence> {
    (0usize..4).prop_map(|i| Precedence::ALL[i])
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (side(), precedence()).prop_map(|(s, p)| Op::Send(s, p)),
        2 => (side(), precedence(), 2u8..8).prop_map(|(s, p, n)| Op::Burst(s, p, n)),
        3 => (1u16..3000).prop_map(Op::Advance),
        1 => (0u8..40, 0u8..30, 0u32..20_000)
            .prop_map(|(loss_pct, dup_pct, spread_us)| Op::SetFaults { loss_pct, dup_pct, spread_us }),
        1 => side().prop_map(Op::Disconnect),
        1 => side().prop_map(Op::Reconnect),
        1 => side().prop_map(Op::Stall),
        1 => side().prop_map(Op::Flush),
        1 => side().prop_map(Op::FlushAhead),
        1 => side().prop_map(Op::Crash),
        1 => (side(), any::<u8>()).prop_map(|(s, i)| Op::Ack(s, i)),
    ]
}

fn attack() -> impl Strategy<Value = Attack> {
    prop_oneof![
        any::<u8>().prop_map(Attack::TamperedHead),
        any::<u8>().prop_map(Attack::WrongSigner),
        any::<u8>().prop_map(Attack::DeliveredSeqOtherBody),
        any::<u8>().prop_map(Attack::ReplayReceipt),
        any::<u8>().prop_map(Attack::ReplayLinkTest),
        any::<u8>().prop_map(Attack::ReplayNotice),
    ]
}

/// Normal traffic interleaved with injections.
fn adversarial_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => op(),
        2 => (side(), attack()).prop_map(|(s, a)| Op::Attack(s, a)),
    ]
}

/// The stored messages of one direction, in submission order (not in the order of their
/// `stored` reports: a flash's record may be confirmed ahead of a routine one before it). An
/// id submitted twice was lost in a crash before it was stored the first time: its place is
/// the last submission's.
fn stored(pair: &Pair, sender: Side) -> Vec<MessageId> {
    let node = match sender {
        Side::A => &pair.a,
        Side::B => &pair.b,
    };
    let mut stored: std::collections::BTreeSet<&MessageId> = node
        .reports
        .iter()
        .filter(|r| r.level == AckLevel::Stored)
        .map(|r| &r.id)
        .collect();
    let mut in_order: Vec<MessageId> = node
        .submitted
        .iter()
        .rev()
        .filter(|id| stored.remove(id))
        .cloned()
        .collect();
    in_order.reverse();
    in_order
}

/// Checks the receiver's delivery order against the model; returns a description of the first
/// violation.
fn check_order(pair: &Pair, sender: Side) -> Result<(), String> {
    let receiver = match sender {
        Side::A => &pair.b,
        Side::B => &pair.a,
    };
    let sent = stored(pair, sender);
    let order = |id: &MessageId| sent.iter().position(|s| s == id);
    let delivered = receiver.delivered_ids();
    let mut seen = std::collections::BTreeSet::new();
    for (i, m) in delivered.iter().enumerate() {
        if !seen.insert(m.clone()) {
            return Err(format!("{m} delivered twice"));
        }
        let Some(pos) = order(m) else {
            return Err(format!("{m} delivered but never stored by the sender"));
        };
        for earlier in &sent[..pos] {
            if earlier.precedence >= m.precedence && !delivered[..i].contains(earlier) {
                return Err(format!(
                    "{m} delivered before {earlier}, which it may not overtake"
                ));
            }
        }
    }
    Ok(())
}

/// The `n`th newest item of `items` (wrapping), if any.
fn nth_newest<T>(items: &[T], n: u8) -> Option<&T> {
    let len = items.len();
    (len > 0).then(|| &items[len - 1 - usize::from(n) % len])
}

/// Envelope frames `side` sent for `id`, newest last.
fn envelopes_for(
    pair: &Pair,
    side: Side,
    id: Option<&MessageId>,
) -> Vec<crate::wire::EnvelopeFrame> {
    let node = match side {
        Side::A => &pair.a,
        Side::B => &pair.b,
    };
    node.sent_frames
        .iter()
        .filter_map(|(_, f)| match f {
            Frame::Envelope(e) if id.is_none_or(|id| e.envelope.header.message_id() == *id) => {
                Some(e.clone())
            }
            _ => None,
        })
        .collect()
}

/// What no injected frame may change.
#[derive(Debug, PartialEq)]
struct Observed {
    delivered: [usize; 2],
    reports: [usize; 2],
    realerts: [usize; 2],
    link: crate::engine::LinkState,
    partner_audit_head: Option<(u64, crate::crypto::Digest)>,
}

fn observe(pair: &Pair, target: Side) -> Observed {
    let node = match target {
        Side::A => &pair.a,
        Side::B => &pair.b,
    };
    let status = node.engine.status();
    Observed {
        delivered: [pair.a.delivered.len(), pair.b.delivered.len()],
        reports: [pair.a.reports.len(), pair.b.reports.len()],
        realerts: [pair.a.realerts.len(), pair.b.realerts.len()],
        link: status.link,
        partner_audit_head: status.partner_audit_head,
    }
}

/// Injects one attack into `target`; returns how many alarms it raised there.
fn inject_attack(pair: &mut Pair, target: Side, attack: Attack) -> Result<usize, String> {
    let sender = target.other();
    let node = match target {
        Side::A => &pair.a,
        Side::B => &pair.b,
    };
    // (frame, the error it must raise if refused, whether a silent drop is allowed)
    let (frame, refusal, silent_ok): (Frame, Option<VerifyError>, bool) = match attack {
        Attack::TamperedHead(n) | Attack::WrongSigner(n) => {
            let signed: Vec<_> = envelopes_for(pair, sender, None)
                .into_iter()
                .filter(|e| e.head.is_some())
                .collect();
            let Some(mut e) = nth_newest(&signed, n).cloned() else {
                return Ok(0);
            };
            if let Attack::TamperedHead(_) = attack {
                if let Some(sig) = &mut e.head {
                    sig.0[usize::from(n) % 64] ^= 1 << (n % 8);
                }
            } else {
                let hash = e.envelope.hash();
                e.head = Some(sign_head(
                    &ChainHead::of(&e.envelope, hash),
                    &IdentityKey::from_seed(&[66; 32]),
                ));
            }
            (Frame::Envelope(e), Some(VerifyError::BadSignature), true)
        }
        Attack::DeliveredSeqOtherBody(n) => {
            let Some(id) = nth_newest(&node.delivered, n).map(|d| d.id.clone()) else {
                return Ok(0);
            };
            let Some(mut e) = envelopes_for(pair, sender, Some(&id)).pop() else {
                return Ok(0);
            };
            e.envelope.sealed[0] ^= 1;
            (
                Frame::Envelope(e),
                Some(VerifyError::Equivocation(id)),
                false,
            )
        }
        Attack::ReplayReceipt(n) => {
            let taken = node.accepted(|f| matches!(f, Frame::Receipt(_)));
            let Some(f) = nth_newest(&taken, n).cloned() else {
                return Ok(0);
            };
            (f, None, true)
        }
        Attack::ReplayLinkTest(n) | Attack::ReplayNotice(n) => {
            let taken = node.accepted(|f| match attack {
                Attack::ReplayLinkTest(_) => matches!(f, Frame::LinkTest(_)),
                _ => matches!(f, Frame::Escalation(_)),
            });
            let Some(f) = nth_newest(&taken, n).cloned() else {
                return Ok(0);
            };
            (f, None, true)
        }
    };
    // Bring both engines up to the present so only the injection can change anything.
    pair.drive_for(Duration::ZERO);
    let before = observe(pair, target);
    let mark = pair.peer(target).alarm_mark();
    let result = pair.inject(target, &frame);
    let raised: Vec<AlarmKind> = pair.peer(target).alarms_since(&mark);
    match (&result, &refusal) {
        (Ok(()), _) if silent_ok => {
            if !raised.is_empty() {
                return Err(format!(
                    "{attack:?}: accepted silently but alarmed {raised:?}"
                ));
            }
        }
        (Err(e), Some(want)) if e == want => {
            if raised != [AlarmKind::Security(want.clone())] {
                return Err(format!(
                    "{attack:?}: refused with {e} but alarms {raised:?}"
                ));
            }
        }
        _ => {
            return Err(format!(
                "{attack:?} into {target:?}: got {result:?}, want {refusal:?} (silent drop allowed: {silent_ok})"
            ));
        }
    }
    // The link state is recomputed on the next timeout: let it run at this same instant.
    pair.drive_for(Duration::ZERO);
    let after = observe(pair, target);
    if after != before {
        return Err(format!(
            "{attack:?} into {target:?} changed state: before {before:?}, after {after:?}"
        ));
    }
    Ok(raised.len())
}

fn run(ops: &[Op], seed: u64, cfg: EngineConfig) -> Result<(), String> {
    let mut pair = Pair::new(cfg, seed);
    // Alarms the injections raised, per side; every other alarm is a failure.
    let mut injected_alarms = [0usize; 2];
    for op in ops {
        match *op {
            Op::Send(s, p) => {
                pair.send(s, p, "m");
            }
            Op::Burst(s, p, n) => {
                for _ in 0..n {
                    pair.send(s, p, "burst");
                }
            }
            Op::Advance(ms) => pair.drive_for(Duration::from_millis(ms.into())),
            Op::SetFaults {
                loss_pct,
                dup_pct,
                spread_us,
            } => {
                pair.faults = Faults {
                    loss: f64::from(loss_pct) / 100.0,
                    duplicate: f64::from(dup_pct) / 100.0,
                    latency_us: (500, 500 + u64::from(spread_us)),
                };
            }
            Op::Disconnect(s) => pair.disconnect(s),
            Op::Reconnect(s) => pair.connect(s),
            Op::Stall(s) => pair.peer(s).auto_persist = false,
            Op::Flush(s) => {
                let now = pair.now;
                let node = pair.peer(s);
                node.auto_persist = true;
                node.confirm(now);
            }
            Op::FlushAhead(s) => {
                let now = pair.now;
                pair.peer(s).confirm_ahead(now);
            }
            Op::Crash(s) => pair.crash(s),
            Op::Ack(s, i) => {
                let now = pair.now;
                let node = pair.peer(s);
                if !node.delivered.is_empty() {
                    let id = node.delivered[usize::from(i) % node.delivered.len()]
                        .id
                        .clone();
                    // As the node shell does: a message the engine forgot is acknowledged from
                    // its stored envelope.
                    if let Err(AckError::Forgotten(_)) = node.engine.acknowledge(now, &id) {
                        let stored = node.durable.iter().find_map(|r| match r {
                            Record::Received { envelope, .. }
                                if envelope.header.message_id() == id =>
                            {
                                Some(envelope.clone())
                            }
                            _ => None,
                        });
                        let Some(envelope) = stored else {
                            return Err(format!("{id} forgotten but not stored"));
                        };
                        let _ = node.engine.acknowledge_stored(now, &envelope);
                    }
                }
            }
            Op::Attack(target, attack) => {
                injected_alarms[target as usize] += inject_attack(&mut pair, target, attack)?;
            }
        }
        pair.settle(Duration::from_millis(50));
        check_order(&pair, Side::A)?;
        check_order(&pair, Side::B)?;
    }
    // Heal: clean network, stores flushing, both reconnected.
    pair.faults = Faults::NONE;
    for s in [Side::A, Side::B] {
        let now = pair.now;
        let node = pair.peer(s);
        node.auto_persist = true;
        node.confirm(now);
        pair.disconnect(s);
        pair.connect(s);
    }
    pair.drive_for(Duration::from_secs(90));
    for (sender, receiver) in [(Side::A, Side::B), (Side::B, Side::A)] {
        check_order(&pair, sender)?;
        let mut want = stored(&pair, sender);
        want.sort();
        let mut got = match receiver {
            Side::A => pair.a.delivered_ids(),
            Side::B => pair.b.delivered_ids(),
        };
        got.sort();
        if want != got {
            return Err(format!(
                "after healing, stored {want:?} but delivered {got:?}"
            ));
        }
    }
    for side in [Side::A, Side::B] {
        let node = pair.peer(side);
        let total = node.alarm_total() as usize;
        if total != injected_alarms[side as usize] {
            return Err(format!(
                "{side:?}: {total} alarm occurrences, {} of them raised by injections: {:?}",
                injected_alarms[side as usize], node.alarms
            ));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn ordering_rule_holds_under_faults_and_crashes(
        ops in prop::collection::vec(op(), 1..30),
        seed in any::<u64>(),
    ) {
        if let Err(e) = run(&ops, seed, EngineConfig::default()) {
            return Err(TestCaseError::fail(e));
        }
    }
}

/// Acknowledged deadlines short enough that escalation notices flow within a run.
fn short_ack_deadlines() -> EngineConfig {
    let mut cfg = EngineConfig::default();
    for (p, s) in [
        (Precedence::Flash, 2),
        (Precedence::Immediate, 4),
        (Precedence::Priority, 8),
    ] {
        if cfg
            .set_acknowledged_deadline(p, Some(Duration::from_secs(s)))
            .is_err()
        {
            unreachable!("deadline in range");
        }
    }
    cfg
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// The same histories with the receive side's per-message state compacted after every
    /// settled message: ordering, no loss, no duplicate, restarts and alarms are unchanged.
    #[test]
    fn ordering_rule_holds_with_per_message_state_compacted(
        ops in prop::collection::vec(adversarial_op(), 1..30),
        seed in any::<u64>(),
    ) {
        let mut cfg = short_ack_deadlines();
        if cfg.set_settled_history(1).is_err() {
            unreachable!("history in range");
        }
        if let Err(e) = run(&ops, seed, cfg) {
            return Err(TestCaseError::fail(e));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn injected_forgeries_and_replays_deliver_nothing_and_change_nothing(
        ops in prop::collection::vec(adversarial_op(), 1..30),
        seed in any::<u64>(),
    ) {
        if let Err(e) = run(&ops, seed, short_ack_deadlines()) {
            return Err(TestCaseError::fail(e));
        }
    }
}
