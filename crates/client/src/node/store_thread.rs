//! The store thread: group-commits the engine loop's writes to redb and confirms them.
//!
//! Everything queued while the previous commit ran goes into the next one (one transaction, one
//! fsync), so under load many engine records and audit entries share a sync. Batches are
//! bounded ([`MAX_BATCH_RECORDS`]), so no commit grows with a backlog.
//!
//! A flash never waits for a routine batch that was queued when it arrived: when the queue holds
//! a flash message's records ([`CommitOrder::Ahead`]) with no key or session record before them
//! ([`CommitOrder::Barrier`]), they are committed first in a small transaction of their own and
//! confirmed as [`Persisted::Ahead`]; the rest follows (after at most [`MAX_AHEAD_IN_A_ROW`]
//! such commits, so that a stream of flash records cannot hold routine writes back for long). Every record keeps the key the engine's
//! order gives it, so the store reads back in that order whatever the commit order was.
//! Other confirmations ([`Persisted::Ok`]) say "every write up to this one"; the first failure
//! is reported and ends the thread, so nothing after a failed write is ever confirmed.
//!
//! Alarm-book changes ride with the audit entries that record them ([`StoreMsg::Alarms`]), so
//! both are in the same transaction.
//!
//! It does not decide what is durable-first: the engine's gate holds receipts and deliveries
//! until the write that justifies them is confirmed here.

use std::collections::VecDeque;
use std::thread::JoinHandle;

use hotline_proto::crypto::Digest;
use hotline_proto::engine::{CommitOrder, Record, WriteId};
use hotline_proto::envelope::{LinkTest, Signed};
use tokio::sync::{mpsc, oneshot};

use crate::alarms::BookWrite;
use crate::audit::AuditEvent;
use crate::failpoint;
use crate::store::{Batch, Store, StoreError};
use crate::time::wall_now;

/// What the engine loop asks the store thread to write, in order.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "moved once into the store thread's batch; boxing would allocate per record"
)]
pub(super) enum StoreMsg {
    /// An engine record with its store key (its place in the engine's order, as the inbox
    /// index counts it), its confirmation handle and its envelope's hash, if the engine gave
    /// one.
    Record {
        key: u64,
        id: WriteId,
        record: Record,
        hash: Option<Digest>,
    },
    /// An audit entry the engine loop adds (alarms, link changes).
    Event(AuditEvent),
    /// The partner's signed audit head, carried by a link test.
    PartnerHead(Signed<LinkTest>),
    /// Alarm-book changes and the audit entries that record them, in one transaction;
    /// `durable` hears once they are committed (dropped if the commit failed).
    Alarms {
        events: Vec<AuditEvent>,
        book: Vec<BookWrite>,
        durable: Option<oneshot::Sender<()>>,
    },
}

/// Records in one transaction at most: a commit that a flash queued behind must wait for stays
/// short however long the queue is.
const MAX_BATCH_RECORDS: usize = 512;

/// Commits ahead in a row at most, before a waiting in-turn batch gets its turn: flash records
/// arriving at every fsync would otherwise hold routine writes back for as long as they came.
const MAX_AHEAD_IN_A_ROW: usize = 4;

/// What the store thread reports back, in commit order.
#[derive(Debug)]
pub(super) enum Persisted {
    /// A batch is durable: every write up to `last` (if the batch held records), and the audit
    /// log now has `head` (length, hash).
    Ok {
        last: Option<WriteId>,
        head: (u64, Digest),
    },
    /// Flash records committed ahead of earlier writes: these writes alone are durable.
    Ahead {
        writes: Vec<WriteId>,
        head: (u64, Digest),
    },
    /// The batch holding `last` failed; nothing more will be written.
    Failed { last: WriteId, error: StoreError },
}

/// Starts the thread. It ends when `writes` closes or after the first failed commit.
pub(super) fn spawn(
    mut store: Store,
    mut writes: mpsc::UnboundedReceiver<StoreMsg>,
    persisted: mpsc::UnboundedSender<Persisted>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("store".into())
        .spawn(move || {
            let mut queue = VecDeque::new();
            let mut ahead_in_a_row = 0;
            loop {
                if queue.is_empty() {
                    match writes.blocking_recv() {
                        Some(first) => queue.push_back(first),
                        None => break,
                    }
                }
                while let Ok(more) = writes.try_recv() {
                    queue.push_back(more);
                }
                let ahead = if ahead_in_a_row < MAX_AHEAD_IN_A_ROW {
                    take_ahead(&mut queue)
                } else {
                    Vec::new()
                };
                let is_ahead = !ahead.is_empty();
                ahead_in_a_row = if is_ahead { ahead_in_a_row + 1 } else { 0 };
                let batch = if is_ahead {
                    ahead
                } else {
                    take_in_turn(&mut queue)
                };
                let (batch, ids, durable) = batch_of(batch);
                let result = store.commit(&batch, wall_now());
                if result.is_ok() {
                    hit_failpoints(&batch);
                    for d in durable {
                        let _ = d.send(());
                    }
                }
                let msg = match result {
                    Ok(head) if is_ahead => Persisted::Ahead { writes: ids, head },
                    Ok(head) => Persisted::Ok {
                        last: ids.last().copied(),
                        head,
                    },
                    Err(error) => Persisted::Failed {
                        last: ids.first().copied().unwrap_or(WriteId(0)),
                        error,
                    },
                };
                let failed = matches!(msg, Persisted::Failed { .. });
                if persisted.send(msg).is_err() || failed {
                    break;
                }
            }
        })
}

/// Takes the flash records that may be committed ahead: those before the first barrier, when
/// anything else is queued (alone, the in-turn batch is the same transaction).
fn take_ahead(queue: &mut VecDeque<StoreMsg>) -> Vec<StoreMsg> {
    let order = |q: &StoreMsg| match q {
        StoreMsg::Record { record, .. } => Some(record.commit_order()),
        _ => None,
    };
    let before_barrier = queue
        .iter()
        .position(|q| order(q) == Some(CommitOrder::Barrier))
        .unwrap_or(queue.len());
    let is_ahead = |q: &StoreMsg| order(q) == Some(CommitOrder::Ahead);
    let ahead = queue
        .iter()
        .take(before_barrier)
        .filter(|q| is_ahead(q))
        .count();
    if ahead == 0 || ahead == queue.len() {
        return Vec::new();
    }
    let mut taken = Vec::with_capacity(ahead);
    let mut kept = VecDeque::with_capacity(queue.len() - ahead);
    for (i, q) in queue.drain(..).enumerate() {
        if i < before_barrier && is_ahead(&q) {
            taken.push(q);
        } else {
            kept.push_back(q);
        }
    }
    *queue = kept;
    taken
}

/// Takes the queue's front, up to [`MAX_BATCH_RECORDS`] records.
fn take_in_turn(queue: &mut VecDeque<StoreMsg>) -> Vec<StoreMsg> {
    let mut records = 0;
    let mut end = 0;
    for q in queue.iter() {
        if matches!(q, StoreMsg::Record { .. }) {
            if records == MAX_BATCH_RECORDS {
                break;
            }
            records += 1;
        }
        end += 1;
    }
    queue.drain(..end).collect()
}

/// One transaction's worth of writes, the engine writes among them in order, and who waits for
/// the commit.
fn batch_of(msgs: Vec<StoreMsg>) -> (Batch, Vec<WriteId>, Vec<oneshot::Sender<()>>) {
    let mut batch = Batch::default();
    let mut ids = Vec::new();
    let mut waiting = Vec::new();
    for m in msgs {
        match m {
            StoreMsg::Record {
                key,
                id,
                record,
                hash,
            } => {
                ids.push(id);
                batch.keys.push(key);
                batch.records.push(record);
                batch.envelope_hashes.push(hash);
            }
            StoreMsg::Event(e) => batch.events.push(e),
            StoreMsg::PartnerHead(t) => batch.partner_heads.push(t),
            StoreMsg::Alarms {
                events,
                book,
                durable,
            } => {
                batch.events.extend(events);
                batch.alarm_book.extend(book);
                waiting.extend(durable);
            }
        }
    }
    (batch, ids, waiting)
}

/// Crash points for the recovery tests, right after the commit that makes each kind durable.
fn hit_failpoints(batch: &Batch) {
    let has = |f: fn(&Record) -> bool| batch.records.iter().any(f);
    if has(|r| matches!(r, Record::Outgoing { .. })) {
        failpoint::hit(failpoint::AFTER_OUTBOX_APPEND);
    }
    if has(|r| matches!(r, Record::Received { .. })) {
        failpoint::hit(failpoint::AFTER_INBOX_COMMIT_BEFORE_RECEIPT);
    }
    if has(|r| matches!(r, Record::OperatorAck { .. })) {
        failpoint::hit(failpoint::AFTER_ACK_COMMIT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hotline_proto::Precedence;
    use hotline_proto::types::Time;

    fn outgoing(precedence: Precedence, seq: u64) -> Record {
        Record::Outgoing {
            id: format!("us:main:{precedence}:{seq}").parse().unwrap(),
            after: [0; 4],
            sent_at: Time(0),
            body: Some(b"body".to_vec()),
            envelope: None,
        }
    }

    fn barrier() -> Record {
        Record::SealingKey {
            epoch: 1,
            secret: Vec::new().into(),
            expires_at: Time(0),
        }
    }

    fn msg(key: u64, record: Record) -> StoreMsg {
        StoreMsg::Record {
            key,
            id: WriteId(key + 1),
            record,
            hash: None,
        }
    }

    /// Runs the thread over `msgs`, all queued before it starts; returns what it confirmed
    /// and the records as the store reads them back.
    fn run(msgs: Vec<StoreMsg>) -> (Vec<String>, Vec<Record>) {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        for m in msgs {
            tx.send(m).unwrap();
        }
        drop(tx);
        let (persisted_tx, mut persisted) = mpsc::unbounded_channel();
        spawn(store, rx, persisted_tx).unwrap().join().unwrap();
        let mut confirmed = Vec::new();
        while let Ok(p) = persisted.try_recv() {
            confirmed.push(match p {
                Persisted::Ok { last, .. } => format!("up to {:?}", last.map(|w| w.0)),
                Persisted::Ahead { writes, .. } => {
                    format!("ahead {:?}", writes.iter().map(|w| w.0).collect::<Vec<_>>())
                }
                Persisted::Failed { error, .. } => format!("failed: {error}"),
            });
        }
        let (_, records) = Store::open(dir.path()).unwrap();
        (confirmed, records)
    }

    #[test]
    fn flash_records_commit_ahead_of_the_routine_batch_queued_before_them() {
        let (r1, f1, r2, f2) = (
            outgoing(Precedence::Routine, 1),
            outgoing(Precedence::Flash, 1),
            outgoing(Precedence::Routine, 2),
            outgoing(Precedence::Flash, 2),
        );
        let (confirmed, records) = run(vec![
            msg(0, r1.clone()),
            msg(1, f1.clone()),
            msg(2, r2.clone()),
            msg(3, f2.clone()),
        ]);
        assert_eq!(confirmed, ["ahead [2, 4]", "up to Some(3)"]);
        assert_eq!(records, [r1, f1, r2, f2], "read back in the engine's order");
    }

    #[test]
    fn a_flash_record_never_overtakes_a_barrier() {
        let f = outgoing(Precedence::Flash, 1);
        let (confirmed, _) = run(vec![
            msg(0, outgoing(Precedence::Routine, 1)),
            msg(1, barrier()),
            msg(2, f.clone()),
        ]);
        assert_eq!(confirmed, ["up to Some(3)"]);
        let (confirmed, _) = run(vec![
            msg(0, f),
            msg(1, outgoing(Precedence::Routine, 1)),
            msg(2, barrier()),
            msg(3, outgoing(Precedence::Flash, 2)),
        ]);
        assert_eq!(confirmed, ["ahead [1]", "up to Some(4)"]);
    }

    #[test]
    fn in_turn_batches_are_bounded() {
        let mut queue: VecDeque<StoreMsg> = (0..MAX_BATCH_RECORDS as u64 + 10)
            .map(|k| msg(k, outgoing(Precedence::Routine, k + 1)))
            .collect();
        queue.push_front(StoreMsg::Event(AuditEvent::LinkState {
            state: "up".into(),
        }));
        assert_eq!(take_in_turn(&mut queue).len(), MAX_BATCH_RECORDS + 1);
        assert_eq!(queue.len(), 10);
        assert!(take_ahead(&mut queue).is_empty(), "no flash queued");
    }

    #[test]
    fn a_crash_between_a_flash_commit_and_its_batch_leaves_no_gap() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = Store::open(dir.path()).unwrap();
        let f = outgoing(Precedence::Flash, 1);
        let batch = Batch {
            records: vec![f.clone()],
            keys: vec![1],
            ..Batch::default()
        };
        store.commit(&batch, Time(0)).unwrap();
        drop(store);
        let (mut store, records) = Store::open(dir.path()).unwrap();
        assert_eq!(records, std::slice::from_ref(&f));
        assert_eq!(store.len(), 1, "the key of record 0 was never written");
        let r = outgoing(Precedence::Routine, 1);
        store.append(std::slice::from_ref(&r)).unwrap();
        let db = store.database();
        assert_eq!(Store::read_record(&db, 0).unwrap(), Some(f));
        assert_eq!(Store::read_record(&db, 1).unwrap(), Some(r));
    }
}
