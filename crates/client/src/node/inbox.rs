//! The operator's inbox in delivery order, rebuilt from the store's records at start-up and kept
//! current by the engine loop (deliveries, acknowledgements, partner re-alerts).
//!
//! It keeps per message only where its `Received` record is in the store (the row key, as runs:
//! consecutive messages of a lane in consecutive rows share one entry) and, for the messages
//! that have them, our acknowledgement time and the partner's re-alert level. A node that only
//! receives, on one lane, without acknowledging, keeps one entry in all; any other record
//! between two rows of a lane (another lane's message, an acknowledgement, an outgoing
//! message) starts a new run, so mixed traffic costs up to one 24-byte entry per message, and
//! every acknowledgement keeps one more small entry (its time) for as long as the node runs:
//! flat for a receive-only soak, tens of bytes per message otherwise. What `inbox` prints
//! (body, names, times) is read back from the store when asked
//! ([`InboxIndex::stream`], [`InboxIndex::line`]); the engine keeps its own per-message state
//! for receipts.
//!
//! Rows: every engine record the loop hands to the store thread becomes the next row of the
//! `records` table, in order, and the store thread writes each exactly once (under that key,
//! whatever order it commits in) or stops the node ([`super::store_thread`]). So the index
//! learns a `Received` record's row by counting ([`InboxIndex::persisting`]) and needs no answer
//! from the store thread. Deliveries happen in the order their records were written, so a
//! listing in row order is in delivery order, except that a flash, whose record may be
//! committed ahead, can be delivered before rows below it: a listing skips rows not delivered
//! yet.
//!
//! Main type: [`InboxIndex`].

use std::collections::BTreeMap;
use std::sync::Arc;

use hotline_proto::engine::{Delivery, Record};
use hotline_proto::envelope::Envelope;
use hotline_proto::types::{Channel, Seq, Time};
use hotline_proto::{EndpointId, MessageId, Precedence};
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use crate::control::InboxEntry;
use crate::store::{Store, StoreError};
use crate::time::format_time;
use crate::view;

/// Records read per store transaction while streaming the inbox: long listings never hold one
/// read transaction (and the pages it pins) for long.
const READ_CHUNK: usize = 1024;

/// One lane of the partner's messages: (sender, channel, precedence).
type LaneKey = (EndpointId, Channel, Precedence);

/// Consecutive messages of a lane whose records are in consecutive rows: `len` messages from
/// sequence `seq` at row `row`. A node that only receives stores one run per lane; traffic both
/// ways breaks runs, down to one per message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    seq: u64,
    row: u64,
    len: u64,
}

impl Run {
    fn end(&self) -> u64 {
        self.seq + self.len
    }
}

/// Delivered messages: where each one's record is, and the state `inbox` shows beside it.
#[derive(Debug, Default)]
pub(super) struct InboxIndex {
    /// Per lane, disjoint runs in sequence order: how an id finds its record.
    lanes: BTreeMap<LaneKey, Vec<Run>>,
    /// The lowest and highest rows of delivered messages.
    rows: Option<(u64, u64)>,
    len: usize,
    /// Our acknowledgement time, by row (only acknowledged messages).
    acknowledged: BTreeMap<u64, Time>,
    /// The partner's latest re-alert level, by row (only re-alerted messages).
    realerted: BTreeMap<u64, Precedence>,
    /// The row the next engine record gets.
    next_row: u64,
    /// `Received` records handed to the store, not yet delivered: their rows.
    writing: BTreeMap<MessageId, u64>,
}

/// What a listing needs besides the store: taken when the request arrives, so the listing shows
/// the inbox as it was then (later changes reach followers on their own).
#[derive(Clone, Debug)]
struct Snapshot {
    rows: (u64, u64),
    /// Rows in that range handed to the store and not delivered yet.
    undelivered: std::collections::BTreeSet<u64>,
    acknowledged: BTreeMap<u64, Time>,
    realerted: BTreeMap<u64, Precedence>,
}

impl InboxIndex {
    /// The inbox the records describe (all records of the store, from row 0).
    pub(super) fn from_records(records: &[Record]) -> Self {
        let mut index = Self::default();
        for r in records {
            index.persisting(r);
            match r {
                Record::Received { delivery, .. } => index.push(delivery),
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

    /// The engine loop hands `record` to the store thread: it takes the next row, returned as
    /// its store key.
    pub(super) fn persisting(&mut self, record: &Record) -> u64 {
        let row = self.next_row;
        if let Record::Received { delivery, .. } = record {
            self.writing.insert(delivery.id.clone(), row);
        }
        self.next_row += 1;
        row
    }

    /// Adds a delivered message (its record was handed over by [`Self::persisting`]).
    pub(super) fn push(&mut self, d: &Delivery) {
        let Some(row) = self.writing.remove(&d.id) else {
            // Not reachable: the engine delivers only after its record is durable.
            warn!(id = %d.id, "delivery without a stored record; not listed in the inbox");
            return;
        };
        add_to_lane(
            self.lanes.entry(lane_key(&d.id)).or_default(),
            d.id.seq,
            row,
        );
        // A flash's record may be committed, and delivered, ahead of rows before it.
        self.rows = Some(
            self.rows
                .map_or((row, row), |(first, last)| (first.min(row), last.max(row))),
        );
        self.len += 1;
    }

    /// Our operator acknowledged `id` at `at`; returns its row.
    pub(super) fn acknowledged(&mut self, id: &MessageId, at: Time) -> Option<u64> {
        let row = self.row_of(id)?;
        self.acknowledged.insert(row, at);
        Some(row)
    }

    /// The partner re-alerted `id` at `level`; returns its row.
    pub(super) fn realerted(&mut self, id: &MessageId, level: Precedence) -> Option<u64> {
        let row = self.row_of(id)?;
        self.realerted.insert(row, level);
        Some(row)
    }

    /// How many messages.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Whether our operator acknowledged `id` (false for a message not in the inbox).
    pub(super) fn is_acknowledged(&self, id: &MessageId) -> bool {
        self.row_of(id)
            .is_some_and(|row| self.acknowledged.contains_key(&row))
    }

    /// The envelope of `id`'s `Received` record, read from the store; `None` if `id` is not in
    /// the inbox.
    pub(super) fn stored_envelope(
        &self,
        db: &redb::Database,
        id: &MessageId,
    ) -> Result<Option<Envelope>, StoreError> {
        let Some(row) = self.row_of(id) else {
            return Ok(None);
        };
        Ok(match Store::read_record(db, row)? {
            Some(Record::Received { envelope, .. }) if envelope.header.message_id() == *id => {
                Some(envelope)
            }
            _ => None,
        })
    }

    /// The line `inbox` shows for the message at `row`, read from the store.
    pub(super) fn line(
        &self,
        db: &redb::Database,
        row: u64,
    ) -> Result<Option<InboxEntry>, StoreError> {
        let record = Store::read_record(db, row)?;
        Ok(record.and_then(|r| entry(row, &r, &self.acknowledged, &self.realerted)))
    }

    /// Streams every line, oldest first, to `entries`, read from the store by a blocking task
    /// so a long inbox never holds up the engine loop; then, if `live` is given, forwards what
    /// arrives there (new deliveries and changes queued meanwhile) until either side closes.
    /// A listing that stops part-way says why on `failed` before it closes `entries`.
    pub(super) fn stream(
        &self,
        db: Arc<redb::Database>,
        entries: mpsc::UnboundedSender<InboxEntry>,
        live: Option<mpsc::UnboundedReceiver<InboxEntry>>,
        failed: oneshot::Sender<String>,
    ) {
        let snapshot = self.snapshot();
        tokio::spawn(async move {
            let tx = entries.clone();
            let listed =
                tokio::task::spawn_blocking(move || snapshot.send_all(&db, &tx, READ_CHUNK)).await;
            match listed {
                Ok(Ok(true)) => {}
                // The reader went away.
                Ok(Ok(false)) => return,
                Ok(Err(error)) => {
                    warn!(error = %error, "reading the inbox from the store failed");
                    let _ = failed.send(error.to_string());
                    return;
                }
                Err(error) => {
                    warn!(error = %error, "inbox reader task failed");
                    let _ = failed.send(error.to_string());
                    return;
                }
            }
            let Some(mut live) = live else { return };
            while let Some(e) = live.recv().await {
                if entries.send(e).is_err() {
                    return;
                }
            }
        });
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            // An empty range when nothing was delivered: the reader finds no row.
            rows: self.rows.unwrap_or((1, 0)),
            // A flash delivered ahead widens the range over rows that may be committed but not
            // delivered yet: those are not listed (they follow live once delivered).
            undelivered: self.writing.values().copied().collect(),
            acknowledged: self.acknowledged.clone(),
            realerted: self.realerted.clone(),
        }
    }

    fn row_of(&self, id: &MessageId) -> Option<u64> {
        row_in_lane(self.lanes.get(&lane_key(id))?, id.seq)
    }
}

/// Records that sequence `seq` of a lane is at `row`: extends the last run when both follow
/// on, else starts a run in sequence order. A sequence already recorded keeps its row.
fn add_to_lane(lane: &mut Vec<Run>, seq: Seq, row: u64) {
    let seq = seq.0;
    if let Some(last) = lane.last_mut() {
        if last.end() == seq && last.row + last.len == row {
            last.len += 1;
            return;
        }
    }
    let at = lane.partition_point(|r| r.end() <= seq);
    if lane.get(at).is_some_and(|r| r.seq <= seq) {
        return;
    }
    lane.insert(at, Run { seq, row, len: 1 });
}

/// The row of sequence `seq` in a lane's runs.
fn row_in_lane(lane: &[Run], seq: Seq) -> Option<u64> {
    let seq = seq.0;
    let run = lane.get(lane.partition_point(|r| r.end() <= seq))?;
    (run.seq <= seq).then(|| run.row + (seq - run.seq))
}

impl Snapshot {
    /// Sends every listed line in row order, reading `chunk` records per transaction; false if
    /// the reader went away.
    fn send_all(
        &self,
        db: &redb::Database,
        tx: &mpsc::UnboundedSender<InboxEntry>,
        chunk: usize,
    ) -> Result<bool, StoreError> {
        let (mut from, to) = self.rows;
        while from <= to {
            let chunk = Store::read_records(db, from, to, chunk)?;
            let Some((last, _)) = chunk.last() else {
                break;
            };
            from = last + 1;
            for (row, record) in &chunk {
                if self.undelivered.contains(row) {
                    continue;
                }
                if let Some(e) = entry(*row, record, &self.acknowledged, &self.realerted) {
                    if tx.send(e).is_err() {
                        return Ok(false);
                    }
                }
            }
        }
        Ok(true)
    }
}

/// The line for a `Received` record at `row`, with our state beside it.
fn entry(
    row: u64,
    record: &Record,
    acknowledged: &BTreeMap<u64, Time>,
    realerted: &BTreeMap<u64, Precedence>,
) -> Option<InboxEntry> {
    let Record::Received { delivery, .. } = record else {
        return None;
    };
    let mut entry = view::inbox_entry(delivery);
    entry.acknowledged = acknowledged.get(&row).map(|at| format_time(*at));
    if let Some(level) = realerted.get(&row) {
        entry.escalated_to = Some(level.to_string());
    }
    Some(entry)
}

fn lane_key(id: &MessageId) -> LaneKey {
    (id.sender.clone(), id.channel.clone(), id.precedence)
}

#[cfg(test)]
mod tests;
