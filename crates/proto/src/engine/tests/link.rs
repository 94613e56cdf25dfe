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
