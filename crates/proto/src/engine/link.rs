//! Link state: whether the hotline works end to end.
//!
//! Tracks the relay connection, the relay's word on the partner's presence and when the
//! partner last proved it is there, and turns them into [`LinkState`] (`Up`, `Degraded`,
//! `Down`). Owns the link-test schedule and the signed audit heads that link tests carry. It
//! does not verify frames or send anything itself: the facade hands it verified facts and
//! emits what it builds.
//!
//! `Up` means: connected, and a *fresh* signed link test from the partner arrived within
//! `link_test_interval * 3`. `Degraded`: connected, but not heard from that recently (or the
//! relay says the partner is offline). `Down`: not connected to any relay, or the partner has
//! not been heard from within `link_test_interval * 10` (counted from the connection when it
//! was never heard since): an offline partner is not "degraded" forever. Nothing else counts: envelopes, receipts and notices can be
//! replayed by the relay with their signatures intact, and the relay's `Presence` is unsigned,
//! so a relay that drops everything new (or replays old frames) degrades the link on time.
//! Presence is only a hint that can degrade it: "offline" voids the last test, "online" proves
//! nothing.
//!
//! Fresh means: its `at` lies within the clock-skew tolerance of our clock (see `clock`), and
//! `(at, seq)` is above the newest fresh test taken. The partner's counter restarts with its
//! process, so its clock orders tests first; only plausible times take part, so one test
//! claiming year 10,000 cannot hold back every later one, and a replay older than the
//! tolerance is refused even after our own restart forgot the newest test.
//!
//! Main type: [`Link`].
//!
//! Invariant: `state` is what [`Link::update`] last computed, and a [`Action::Link`] was emitted
//! for every change of it.

use std::time::Duration;

use super::{Action, EngineConfig, Local, Partner};
use super::{DurabilityGate, LinkState};
use crate::crypto::Digest;
use crate::envelope::{LinkTest, Signed};
use crate::types::Time;

/// Link tests missed before the link counts as degraded.
const DEGRADED_AFTER_INTERVALS: u32 = 3;
/// Link tests missed before the link counts as down although a relay is connected.
const DOWN_AFTER_INTERVALS: u32 = 10;
/// A partner audit head is handed out for the audit log once the partner's log has grown by
/// this many records since the last one handed out …
pub(super) const PARTNER_HEAD_EVERY_RECORDS: u64 = 100;
/// … or has grown at all and this long has passed. Recording a partner head adds a record to
/// our log, which the partner's next head covers, and so on: handing out every changed head
/// cost one record per link test on each side (43,000 a day idle). With these thresholds an
/// idle day costs at most 144 partner-head records per node.
pub(super) const PARTNER_HEAD_EVERY: Duration = Duration::from_secs(600);

#[derive(Debug)]
pub(super) struct Link {
    /// Connected to the relay.
    pub(super) connected: bool,
    /// The relay's word on whether the partner is connected.
    pub(super) partner_online: Option<bool>,
    /// When the last fresh partner link test arrived.
    pub(super) last_heard: Option<Time>,
    /// The relay said the partner went offline after `last_heard`: that test no longer
    /// counts for `Up` (it still dates the silence for `Down`).
    voided: bool,
    /// When the relay connection came up, if it is up.
    connected_at: Option<Time>,
    pub(super) state: LinkState,
    pub(super) since: Time,
    /// When to send the next link test (only while connected).
    next_test: Option<Time>,
    test_seq: u64,
    audit_head: (u64, Digest),
    pub(super) partner_audit_head: Option<(u64, Digest)>,
    /// The partner head last handed out for the audit log, and when.
    partner_head_recorded: Option<((u64, Digest), Time)>,
    /// The newest fresh partner link test taken, by (partner's clock, counter); older or
    /// equal ones are replays and prove nothing about the partner now.
    partner_test: Option<(Time, u64)>,
}

impl Link {
    pub(super) fn new(now: Time) -> Self {
        Self {
            connected: false,
            partner_online: None,
            last_heard: None,
            voided: false,
            connected_at: None,
            state: LinkState::Down,
            since: now,
            next_test: None,
            test_seq: 0,
            audit_head: (0, Digest::default()),
            partner_audit_head: None,
            partner_head_recorded: None,
            partner_test: None,
        }
    }

    /// The relay connection is up; test the link at once.
    pub(super) fn connected(&mut self, now: Time) {
        if !self.connected {
            self.connected_at = Some(now);
        }
        self.connected = true;
        self.next_test = Some(now);
    }

    /// The relay connection is gone, and with it the relay's word on the partner.
    pub(super) fn disconnected(&mut self) {
        self.connected = false;
        self.connected_at = None;
        self.partner_online = None;
    }

    /// The relay's word on the partner. A hint that can only degrade the link: offline voids
    /// the last link test (only a new one brings the link back up); online changes nothing.
    pub(super) fn presence(&mut self, online: bool) {
        self.partner_online = Some(online);
        if !online {
            self.voided = true;
        }
    }

    pub(super) fn set_audit_head(&mut self, len: u64, head: Digest) {
        self.audit_head = (len, head);
    }

    /// A verified link test from the partner; returns it if it is fresh and its audit head is
    /// worth recording: the first one, one that grew by [`PARTNER_HEAD_EVERY_RECORDS`] or
    /// grew at all [`PARTNER_HEAD_EVERY`] after the last recorded, and at once one that is
    /// shorter than or differs at the same length from the last recorded (evidence of a lost
    /// or rewritten log). `at_plausible` says whether its `at` lies within the clock-skew tolerance. A test
    /// that is not fresh (see the module doc; a replay's signature is still good) is ignored:
    /// it does not count as hearing from the partner, nor move the newest test taken.
    pub(super) fn on_link_test(
        &mut self,
        now: Time,
        t: Signed<LinkTest>,
        at_plausible: bool,
    ) -> Option<Signed<LinkTest>> {
        if !at_plausible {
            return None;
        }
        let order = (t.body.at, t.body.seq);
        if self.partner_test.is_some_and(|last| order <= last) {
            return None;
        }
        self.partner_test = Some(order);
        let head = (t.body.audit_len, t.body.audit_head);
        self.partner_audit_head = Some(head);
        let record = match self.partner_head_recorded {
            None => true,
            Some((last, _)) if last == head => false,
            Some(((len, _), at)) => {
                head.0 <= len
                    || head.0 >= len.saturating_add(PARTNER_HEAD_EVERY_RECORDS)
                    || now.since(at) >= PARTNER_HEAD_EVERY
            }
        };
        if record {
            self.partner_head_recorded = Some((head, now));
        }
        self.last_heard = Some(now);
        self.voided = false;
        self.partner_online = Some(true);
        record.then_some(t)
    }

    /// Our next link test, if one is due; schedules the one after.
    pub(super) fn due_test(
        &mut self,
        now: Time,
        cfg: &EngineConfig,
        local: &Local,
        partner: &Partner,
    ) -> Option<Signed<LinkTest>> {
        if !self.connected || self.next_test.is_none_or(|at| at > now) {
            return None;
        }
        self.next_test = Some(now.plus(cfg.link_test_interval()));
        self.test_seq += 1;
        Some(Signed::sign(
            LinkTest {
                from: local.id.clone(),
                to: partner.id.clone(),
                seq: self.test_seq,
                at: now,
                audit_len: self.audit_head.0,
                audit_head: self.audit_head.1,
            },
            &local.key,
        ))
    }

    /// Recomputes the link state and reports a change.
    pub(super) fn update(&mut self, now: Time, cfg: &EngineConfig, gate: &mut DurabilityGate) {
        let heard_recently = !self.voided
            && self
                .last_heard
                .is_some_and(|h| now < h.plus(degraded_after(cfg)));
        let silent = self
            .silent_since()
            .is_some_and(|s| now >= s.plus(down_after(cfg)));
        let state = if !self.connected || silent {
            LinkState::Down
        } else if heard_recently && self.partner_online != Some(false) {
            LinkState::Up
        } else {
            LinkState::Degraded
        };
        if state != self.state {
            self.state = state;
            self.since = now;
            gate.push(Action::Link { state, since: now });
        }
    }

    /// The earliest of the next link test, the moment an `Up` link degrades and the moment a
    /// connected link goes down for silence.
    pub(super) fn poll_timeout(&self, cfg: &EngineConfig) -> Option<Time> {
        let test = if self.connected { self.next_test } else { None };
        let degrade = match (self.state, self.last_heard) {
            (LinkState::Up, Some(h)) => Some(h.plus(degraded_after(cfg))),
            _ => None,
        };
        let down = match self.state {
            LinkState::Up | LinkState::Degraded if self.connected => {
                self.silent_since().map(|s| s.plus(down_after(cfg)))
            }
            _ => None,
        };
        [test, degrade, down].into_iter().flatten().min()
    }

    /// What the partner's silence is counted from while connected: its last fresh link test,
    /// or the connection if none came since.
    fn silent_since(&self) -> Option<Time> {
        if !self.connected {
            return None;
        }
        match (self.last_heard, self.connected_at) {
            (Some(h), Some(c)) => Some(h.max(c)),
            (h, c) => h.or(c),
        }
    }
}

fn degraded_after(cfg: &EngineConfig) -> Duration {
    cfg.link_test_interval() * DEGRADED_AFTER_INTERVALS
}

fn down_after(cfg: &EngineConfig) -> Duration {
    cfg.link_test_interval() * DOWN_AFTER_INTERVALS
}
