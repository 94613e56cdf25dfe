//! The ordering rule against a small reference model, under random sends, network faults,
//! stalled stores and crashes (unconfirmed writes dropped, engine restored from records).
//!
//! The model: for each direction, the list of messages whose `stored` level was reported, in
//! submission order. A delivery of `m` is allowed only once every stored message of the same or
//! higher precedence submitted before `m` has been delivered. After healing, each stored message
//! is delivered exactly once.

use std::time::Duration;

use proptest::prelude::*;

use super::util::{Faults, Pair, Side};
use crate::engine::{AckLevel, EngineConfig};
use crate::types::{MessageId, Precedence};

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
    Crash(Side),
    Ack(Side, u8),
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
        1 => side().prop_map(Op::Crash),
        1 => (side(), any::<u8>()).prop_map(|(s, i)| Op::Ack(s, i)),
    ]
}

/// The stored messages of one direction, in submission order.
fn stored(pair: &Pair, sender: Side) -> Vec<MessageId> {
    let node = match sender {
        Side::A => &pair.a,
        Side::B => &pair.b,
    };
    node.reports
        .iter()
        .filter(|r| r.level == AckLevel::Stored)
        .map(|r| r.id.clone())
        .collect()
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

fn run(ops: &[Op], seed: u64) -> Result<(), String> {
    let mut pair = Pair::new(EngineConfig::default(), seed);
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
            Op::Crash(s) => pair.crash(s),
            Op::Ack(s, i) => {
                let now = pair.now;
                let node = pair.peer(s);
                if !node.delivered.is_empty() {
                    let id = node.delivered[usize::from(i) % node.delivered.len()]
                        .id
                        .clone();
                    let _ = node.engine.acknowledge(now, &id);
                }
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
    let security: Vec<_> = pair.a.alarms.iter().chain(&pair.b.alarms).collect();
    if !security.is_empty() {
        return Err(format!("alarms on an honest run: {security:?}"));
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
        if let Err(e) = run(&ops, seed) {
            return Err(TestCaseError::fail(e));
        }
    }
}
