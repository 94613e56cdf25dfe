//! Link state over time, with the default link-test interval of 2 s: `Up` while fresh signed
//! link tests arrive, `Degraded` after three silent intervals, `Down` after ten (counted from
//! the connection when the partner was never heard since), and `Up` again with the next fresh
//! test. An offline partner is not "degraded" forever.

use std::time::Duration;

use super::util::{Pair, Side};
use crate::engine::{EngineConfig, LinkState};

fn link(pair: &Pair) -> LinkState {
    pair.a.engine.status().link
}

#[test]
fn a_silent_partner_degrades_the_link_then_takes_it_down_and_a_fresh_test_brings_it_up() {
    let mut pair = Pair::new(EngineConfig::default(), 911);
    pair.drive_for(Duration::from_secs(5));
    assert_eq!(link(&pair), LinkState::Up);
    let heard = pair.a.engine.status().partner_last_heard;
    assert!(heard.is_some());
    pair.disconnect(Side::B);
    pair.drive_for(Duration::from_secs(7));
    assert_eq!(link(&pair), LinkState::Degraded, "three intervals silent");
    pair.drive_for(Duration::from_secs(8));
    assert_eq!(link(&pair), LinkState::Degraded, "fifteen seconds silent");
    pair.drive_for(Duration::from_secs(6));
    let status = pair.a.engine.status();
    assert_eq!(status.link, LinkState::Down, "over ten intervals silent");
    assert!(status.connected, "down although the relay is connected");
    assert_eq!(status.partner_last_heard, heard, "and it says since when");
    pair.connect(Side::B);
    pair.drive_for(Duration::from_secs(3));
    assert_eq!(link(&pair), LinkState::Up);
}

#[test]
fn a_partner_never_heard_since_connecting_is_down_after_ten_intervals() {
    let mut pair = Pair::new(EngineConfig::default(), 912);
    pair.disconnect(Side::B);
    pair.disconnect(Side::A);
    pair.drive_for(Duration::from_secs(1));
    assert_eq!(link(&pair), LinkState::Down, "not connected");
    pair.connect(Side::A);
    pair.drive_for(Duration::from_secs(19));
    assert_eq!(
        link(&pair),
        LinkState::Degraded,
        "connected, partner not heard yet"
    );
    pair.drive_for(Duration::from_secs(2));
    assert_eq!(
        link(&pair),
        LinkState::Down,
        "twenty seconds connected and never heard"
    );
    pair.connect(Side::B);
    pair.drive_for(Duration::from_secs(3));
    assert_eq!(link(&pair), LinkState::Up);
}

#[test]
fn an_idle_link_records_a_bounded_number_of_partner_heads() {
    use crate::engine::link::{PARTNER_HEAD_EVERY, PARTNER_HEAD_EVERY_RECORDS};
    let mut pair = Pair::new(EngineConfig::default(), 913);
    // Two idle hours: 3,600 link tests each way. Each recorded partner head grows the recorder's
    // log, which its next link test carries; without the thresholds every test was recorded.
    pair.drive_for(Duration::from_secs(2 * 3600));
    assert_eq!(link(&pair), LinkState::Up);
    let bound = 1 + (2 * 3600 / PARTNER_HEAD_EVERY.as_secs()) as usize;
    for side in [Side::A, Side::B] {
        let heads = &pair.peer(side).partner_heads;
        assert!(!heads.is_empty(), "the first head is recorded at once");
        assert!(
            heads.len() <= bound,
            "{side:?} recorded {} partner heads in two idle hours (at most {bound})",
            heads.len()
        );
    }
    // A partner log that grew by the record threshold is recorded at the next link test.
    let before = pair.peer(Side::A).partner_heads.len();
    let len = pair.peer(Side::B).audit_len + PARTNER_HEAD_EVERY_RECORDS;
    pair.peer(Side::B).set_audit_len(len);
    pair.drive_for(Duration::from_secs(3));
    assert_eq!(pair.peer(Side::A).partner_heads.len(), before + 1);
    assert_eq!(pair.peer(Side::A).partner_heads.last(), Some(&len));
    // One that shrank (a lost log) is recorded at once too.
    pair.peer(Side::B).set_audit_len(1);
    pair.drive_for(Duration::from_secs(3));
    assert_eq!(pair.peer(Side::A).partner_heads.last(), Some(&1));
}
