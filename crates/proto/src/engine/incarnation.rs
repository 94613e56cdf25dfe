//! Incarnations: where each side's message sequences start, and re-pairing after a store loss.
//!
//! Every store is an incarnation: its lanes start after the microsecond it was created, and its
//! signed announcement names it (and, for an incarnation started in reaction to the partner's,
//! the partner incarnation it was started for). When the partner's incarnation changes, its
//! lanes restart here; if it started from nothing (it lost its store), our own sequences
//! restart for it too and everything still in our outbox is reported lost. Exactly one side
//! restarts per loss, because a reaction names the incarnation it answers.
//!
//! Invariant: an incarnation's base exceeds every sequence number used before it, so message
//! ids never repeat across a lost store.

use rand_core::CryptoRng;

use super::{AckLevel, Action, AlarmKind, Engine, Record, Report, keys};
use crate::envelope::{Announcement, Signed};
use crate::types::MessageId;

impl<R: CryptoRng> Engine<R> {
    /// Starts our message sequences afresh after the current time (never at or below a
    /// sequence already used), for partner incarnation `peer` (`0`: from nothing). Every message
    /// still in the outbox is reported [`AckLevel::Lost`]: the store that would have delivered or
    /// acknowledged it is gone. Returns them.
    pub(super) fn start_incarnation(&mut self, peer: u64) -> Vec<MessageId> {
        let used = self
            .outbox
            .lanes
            .values()
            .map(|l| l.last_seq.0)
            .max()
            .unwrap_or(0)
            .max(self.outbox.base);
        let base = self.now.0.max(used.saturating_add(1));
        let lost = self.outbox.restart(base);
        self.keys.incarnation = keys::Incarnation { base, peer };
        let write = self.gate.persist(Record::Incarnation {
            incarnation: base,
            peer,
        });
        for id in &lost {
            self.gate.after(
                write,
                Action::Report(Report {
                    id: id.clone(),
                    level: AckLevel::Lost,
                    at: self.now,
                }),
            );
        }
        lost
    }

    /// A verified announcement of the partner's with a new epoch: adopt it and, if its
    /// incarnation changed, restart the partner's lanes and tell the operator what happened.
    pub(super) fn adopt_partner_announcement(&mut self, a: Signed<Announcement>) {
        let previous = self
            .keys
            .partner_announcement
            .as_ref()
            .map(|p| p.body.incarnation);
        let (incarnation, peer) = (a.body.incarnation, a.body.peer_incarnation);
        self.gate.persist(Record::PartnerAnnouncement(a.clone()));
        self.keys.set_partner_announcement(a);
        self.inbound.set_partner_incarnation(incarnation);
        let ours = self.keys.incarnation.base;
        match previous {
            Some(previous) if previous != incarnation && peer != ours => {
                // The partner started from nothing: what it had received from us is gone, so
                // our sequences restart for it.
                let lost = self.start_incarnation(incarnation);
                self.rotate_sealing_key(self.now);
                self.alarm(
                    AlarmKind::PartnerLostStore,
                    None,
                    format!(
                        "partner {} lost its store (incarnation {previous} is now {incarnation}): {} message(s) in flight to it reported undelivered{}; message sequences restarted both ways",
                        self.partner.id,
                        lost.len(),
                        list_ids(&lost),
                    ),
                );
            }
            Some(previous) if previous != incarnation => self.alarm(
                AlarmKind::StoreLossRepaired,
                None,
                format!(
                    "partner {} restarted its message sequences for this node (incarnation {ours}): this node's earlier store was lost, and messages the partner had in flight to it were reported undelivered on its side",
                    self.partner.id
                ),
            ),
            None if peer != 0 => self.alarm(
                AlarmKind::StoreLossRepaired,
                None,
                format!(
                    "partner {} had state for an earlier store of this node (its sequences were restarted for incarnation {peer}; ours is {ours}): this node's store was lost, and the partner restarts its sequences for it",
                    self.partner.id
                ),
            ),
            _ => {}
        }
        self.seal_awaiting();
        for f in std::mem::take(&mut self.early_envelopes) {
            if let Err(e) = self.on_envelope(f) {
                self.security_alarm(&e, "an early envelope");
            }
        }
    }
}

/// `: a, b, c` for the first few of `ids` (`, and N more` beyond), empty for none.
fn list_ids(ids: &[MessageId]) -> String {
    const SHOWN: usize = 16;
    if ids.is_empty() {
        return String::new();
    }
    let shown: Vec<String> = ids.iter().take(SHOWN).map(ToString::to_string).collect();
    let more = ids.len().saturating_sub(SHOWN);
    let tail = if more > 0 {
        format!(", and {more} more")
    } else {
        String::new()
    };
    format!(": {}{tail}", shown.join(", "))
}
