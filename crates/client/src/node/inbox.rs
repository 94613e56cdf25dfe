//! The operator's inbox in delivery order, rebuilt from the store's records at start-up and kept
//! current by the engine loop (deliveries, acknowledgements, partner re-alerts).
//!
//! It holds what `inbox` prints; the engine keeps its own per-message state for receipts.

use std::collections::BTreeMap;

use hotline_proto::engine::{Delivery, Record};
use hotline_proto::types::Time;
use hotline_proto::{MessageId, Precedence};

use crate::control::InboxEntry;
use crate::time::format_time;
use crate::view;

/// Delivered messages, oldest first, with an index by id.
#[derive(Debug, Default)]
pub(super) struct InboxIndex {
    entries: Vec<InboxEntry>,
    by_id: BTreeMap<MessageId, usize>,
}

impl InboxIndex {
    /// The inbox the records describe.
    pub(super) fn from_records(records: &[Record]) -> Self {
        let mut index = Self::default();
        for r in records {
            match r {
                Record::Received { delivery, .. } => {
                    index.push(delivery);
                }
                Record::OperatorAck { id, receipt } => {
                    index.acknowledged(id, receipt.body.at);
                }
                Record::PartnerEscalated { id, level } => {
                    index.realerted(id, *level);
                }
                _ => {}
            }
        }
        index
    }

    /// Adds a delivered message; returns its line.
    pub(super) fn push(&mut self, d: &Delivery) -> InboxEntry {
        let entry = view::inbox_entry(d);
        self.by_id.insert(d.id.clone(), self.entries.len());
        self.entries.push(entry.clone());
        entry
    }

    /// Our operator acknowledged `id` at `at`; returns the changed line.
    pub(super) fn acknowledged(&mut self, id: &MessageId, at: Time) -> Option<&InboxEntry> {
        let entry = &mut self.entries[*self.by_id.get(id)?];
        entry.acknowledged = Some(format_time(at));
        Some(entry)
    }

    /// The partner re-alerted `id` at `level`; returns the changed line.
    pub(super) fn realerted(&mut self, id: &MessageId, level: Precedence) -> Option<&InboxEntry> {
        let entry = &mut self.entries[*self.by_id.get(id)?];
        entry.escalated_to = Some(level.to_string());
        Some(entry)
    }

    /// Every line, oldest first.
    pub(super) fn entries(&self) -> impl Iterator<Item = &InboxEntry> + '_ {
        self.entries.iter()
    }

    /// How many messages.
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }
}
