//! Correctness of one sender → receiver direction after a loaded run: lost, duplicated and
//! out-of-order messages, judged against the ordering rule of the design.
//!
//! The rule, per channel and direction: messages of one precedence are delivered in send
//! order, with no gaps and no duplicates; a higher precedence may overtake lower ones sent
//! before it; a lower precedence never overtakes a higher (or equal) one sent before it.
//!
//! [`check`] takes the messages the sender's node *stored* (in the order the bench submitted
//! them on one control connection, which is the order the node assigned sequence numbers) and
//! the receiver's inbox in delivery order, and counts, in one pass each:
//! - `duplicated`: an index seen again in the inbox;
//! - `order_violations`: a message delivered after a later one of its own lane, or before an
//!   earlier one of a higher lane (or with another precedence than it was sent with);
//! - `lost`: stored, never delivered;
//! - `unexpected`: in the inbox but never stored by this run (counted, not fatal: the node may
//!   have stored it after the bench gave up waiting for its report).

use std::collections::HashMap;

use hotline_proto::Precedence;

/// One message, identified by the bench's per-pair index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Msg {
    /// The bench's index (increasing in send order).
    pub index: u64,
    /// Precedence.
    pub precedence: Precedence,
}

/// What [`check`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Distinct stored messages delivered.
    pub delivered: u64,
    /// Stored, never delivered.
    pub lost: u64,
    /// Deliveries of an index already delivered.
    pub duplicated: u64,
    /// Deliveries that broke the ordering rule.
    pub order_violations: u64,
    /// Deliveries of an index that was never stored.
    pub unexpected: u64,
    /// The first violation, in words.
    pub first_violation: Option<String>,
}

impl Verdict {
    /// Nothing lost, duplicated or out of order.
    pub fn ok(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.order_violations == 0
    }

    /// Adds another direction's counts.
    pub fn merge(&mut self, other: &Self) {
        self.delivered += other.delivered;
        self.lost += other.lost;
        self.duplicated += other.duplicated;
        self.order_violations += other.order_violations;
        self.unexpected += other.unexpected;
        if self.first_violation.is_none() {
            self.first_violation.clone_from(&other.first_violation);
        }
    }
}

/// Checks `received` (delivery order) against `sent` (send order).
pub fn check(sent: &[Msg], received: &[Msg]) -> Verdict {
    // For each sent message: its position, and how many of each lane were sent before it.
    let mut before = Vec::with_capacity(sent.len());
    let mut position = HashMap::with_capacity(sent.len());
    let mut counts = [0u64; 4];
    for (j, m) in sent.iter().enumerate() {
        before.push(counts);
        counts[m.precedence.index()] += 1;
        position.insert(m.index, j);
    }
    let mut v = Verdict::default();
    let mut seen = vec![false; sent.len()];
    // Per lane: how many distinct messages were delivered, and the highest lane position yet.
    let mut delivered = [0u64; 4];
    let mut highest: [Option<u64>; 4] = [None; 4];
    let violation = |v: &mut Verdict, what: String| {
        v.order_violations += 1;
        if v.first_violation.is_none() {
            v.first_violation = Some(what);
        }
    };
    for r in received {
        let Some(&j) = position.get(&r.index) else {
            v.unexpected += 1;
            continue;
        };
        if std::mem::replace(&mut seen[j], true) {
            v.duplicated += 1;
            continue;
        }
        let sent_as = sent[j].precedence;
        if r.precedence != sent_as {
            violation(
                &mut v,
                format!(
                    "message {} was sent as {sent_as} and delivered as {}",
                    r.index, r.precedence
                ),
            );
        }
        let p = sent_as.index();
        let lane_pos = before[j][p];
        if highest[p].is_some_and(|h| lane_pos < h) {
            violation(
                &mut v,
                format!(
                    "{sent_as} message {} (lane position {lane_pos}) delivered after a later {sent_as} message",
                    r.index
                ),
            );
        }
        highest[p] = Some(highest[p].map_or(lane_pos, |h| h.max(lane_pos)));
        for q in p + 1..4 {
            if delivered[q] < before[j][q] {
                violation(
                    &mut v,
                    format!(
                        "{sent_as} message {} overtook {} earlier {} message(s)",
                        r.index,
                        before[j][q] - delivered[q],
                        Precedence::from_index(q).map_or("higher", Precedence::as_str)
                    ),
                );
                break;
            }
        }
        delivered[p] += 1;
        v.delivered += 1;
    }
    v.lost = sent.len() as u64 - v.delivered;
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use Precedence::{Flash, Priority, Routine};

    fn msgs(list: &[(u64, Precedence)]) -> Vec<Msg> {
        list.iter()
            .map(|&(index, precedence)| Msg { index, precedence })
            .collect()
    }

    #[test]
    fn in_order_delivery_is_clean() {
        let sent = msgs(&[(0, Routine), (1, Routine), (2, Flash), (3, Routine)]);
        let v = check(&sent, &sent);
        assert!(v.ok(), "{v:?}");
        assert_eq!(v.delivered, 4);
    }

    #[test]
    fn flash_may_overtake_earlier_routine() {
        let sent = msgs(&[(0, Routine), (1, Routine), (2, Flash)]);
        let got = msgs(&[(2, Flash), (0, Routine), (1, Routine)]);
        assert!(check(&sent, &got).ok());
    }

    #[test]
    fn routine_may_not_overtake_earlier_flash() {
        let sent = msgs(&[(0, Flash), (1, Routine)]);
        let got = msgs(&[(1, Routine), (0, Flash)]);
        let v = check(&sent, &got);
        assert_eq!(v.order_violations, 1, "{v:?}");
        assert!(v.first_violation.unwrap().contains("overtook"));
    }

    #[test]
    fn same_lane_reordering_is_a_violation() {
        let sent = msgs(&[(0, Priority), (1, Priority), (2, Priority)]);
        let got = msgs(&[(0, Priority), (2, Priority), (1, Priority)]);
        let v = check(&sent, &got);
        assert_eq!(v.order_violations, 1, "{v:?}");
    }

    #[test]
    fn losses_duplicates_and_strangers_are_counted_apart() {
        let sent = msgs(&[(0, Routine), (1, Routine), (2, Routine), (5, Flash)]);
        let got = msgs(&[(0, Routine), (0, Routine), (1, Routine), (9, Routine)]);
        let v = check(&sent, &got);
        assert_eq!(v.delivered, 2);
        assert_eq!(v.duplicated, 1);
        assert_eq!(v.unexpected, 1);
        assert_eq!(v.lost, 2);
        assert_eq!(v.order_violations, 0);
        assert!(!v.ok());
    }

    #[test]
    fn a_changed_precedence_is_a_violation() {
        let sent = msgs(&[(0, Routine)]);
        let got = msgs(&[(0, Flash)]);
        assert_eq!(check(&sent, &got).order_violations, 1);
    }

    #[test]
    fn gaps_from_refused_submissions_do_not_matter() {
        // Index 1 was refused at submission, so never stored; nobody waits for it.
        let sent = msgs(&[(0, Routine), (2, Routine), (3, Flash), (4, Routine)]);
        let got = msgs(&[(0, Routine), (3, Flash), (2, Routine), (4, Routine)]);
        assert!(check(&sent, &got).ok());
    }
}
