//! Flash records confirmed ahead of earlier writes (issue 12: a flash never waits for a routine
//! batch): what waits on a flash record alone goes out, what waits on the routine write before
//! it does not.

use std::time::Duration;

use super::util::{Pair, Side};
use crate::engine::{AckLevel, EngineConfig};
use crate::types::{MessageId, Precedence};

fn levels(pair: &mut Pair, side: Side, id: &MessageId) -> Vec<AckLevel> {
    pair.peer(side)
        .reports
        .iter()
        .filter(|r| r.id == *id)
        .map(|r| r.level)
        .collect()
}

/// A pair whose sessions are set up (their records are barriers), with both stores holding
/// writes until told.
fn warmed_up() -> Pair {
    let mut pair = Pair::new(EngineConfig::default(), 7);
    let warm = pair.send(Side::A, Precedence::Routine, "warm-up");
    let back = pair.send(Side::B, Precedence::Routine, "warm-up");
    pair.settle(Duration::from_secs(5));
    assert!(pair.peer(Side::B).delivered_ids().contains(&warm));
    assert!(pair.peer(Side::A).delivered_ids().contains(&back));
    pair.peer(Side::A).auto_persist = false;
    pair.peer(Side::B).auto_persist = false;
    pair
}

#[test]
fn a_flash_confirmed_ahead_is_sent_delivered_and_receipted_before_the_routine_write_before_it() {
    let mut pair = warmed_up();
    // The receiver holds a routine write of its own, queued before the flash's record.
    let theirs = pair.send(Side::B, Precedence::Routine, "theirs");
    let routine = pair.send(Side::A, Precedence::Routine, "routine");
    let flash = pair.send(Side::A, Precedence::Flash, "flash");
    pair.settle(Duration::from_millis(100));
    assert_eq!(
        pair.envelopes_sent(Side::A, &flash),
        0,
        "nothing durable yet"
    );

    let now = pair.now;
    pair.peer(Side::A).confirm_ahead(now);
    pair.settle(Duration::from_millis(100));
    assert_eq!(pair.envelopes_sent(Side::A, &flash), 1);
    assert_eq!(pair.envelopes_sent(Side::A, &routine), 0);
    let flash_levels = levels(&mut pair, Side::A, &flash);
    assert_eq!(flash_levels.first(), Some(&AckLevel::Stored));
    assert!(!flash_levels.contains(&AckLevel::Delivered));
    assert!(levels(&mut pair, Side::A, &routine).is_empty());
    assert!(
        !pair.peer(Side::B).delivered_ids().contains(&flash),
        "the receiver's record is not durable yet: no delivery"
    );

    let now = pair.now;
    pair.peer(Side::B).confirm_ahead(now);
    pair.settle(Duration::from_millis(100));
    assert!(pair.peer(Side::B).delivered_ids().contains(&flash));
    assert_eq!(pair.envelopes_sent(Side::B, &theirs), 0);
    assert!(
        levels(&mut pair, Side::A, &flash).contains(&AckLevel::Delivered),
        "the flash receipt went out on its own write"
    );

    let now = pair.now;
    pair.peer(Side::A).confirm(now);
    pair.peer(Side::B).confirm(now);
    pair.peer(Side::A).auto_persist = true;
    pair.peer(Side::B).auto_persist = true;
    pair.settle(Duration::from_secs(5));
    assert!(pair.peer(Side::B).delivered_ids().contains(&routine));
    assert!(pair.peer(Side::A).delivered_ids().contains(&theirs));
}

#[test]
fn a_crash_after_a_flash_committed_ahead_keeps_the_flash_and_loses_the_routine_before_it() {
    let mut pair = warmed_up();
    let routine = pair.send(Side::A, Precedence::Routine, "routine");
    let flash = pair.send(Side::A, Precedence::Flash, "flash");
    pair.settle(Duration::from_millis(100));
    let now = pair.now;
    pair.peer(Side::A).confirm_ahead(now);
    pair.settle(Duration::from_millis(100));
    assert_eq!(pair.envelopes_sent(Side::A, &flash), 1);
    // The routine record never became durable and was never reported stored.
    assert!(levels(&mut pair, Side::A, &routine).is_empty());
    pair.crash(Side::A);
    pair.peer(Side::A).auto_persist = true;
    pair.peer(Side::B).auto_persist = true;
    pair.settle(Duration::from_secs(5));
    let delivered = pair.peer(Side::B).delivered_ids();
    assert!(delivered.contains(&flash));
    assert!(
        !delivered.contains(&routine),
        "never durable, never reported stored: gone with the crash"
    );
}
