//! The store thread: group-commits the engine loop's writes to redb and confirms them in order.
//!
//! Everything queued while the previous commit ran goes into the next one (one transaction, one
//! fsync), so under load many engine records and audit entries share a sync. Confirmations
//! ([`Persisted`]) go back in write order; the first failure is reported and ends the thread,
//! so nothing after a failed write is ever confirmed.
//!
//! Alarm-book changes ride with the audit entries that record them ([`StoreMsg::Alarms`]), so
//! both are in the same transaction.
//!
//! It does not decide what is durable-first: the engine's gate holds receipts and deliveries
//! until the write that justifies them is confirmed here.

use std::thread::JoinHandle;

use hotline_proto::crypto::Digest;
use hotline_proto::engine::{Record, WriteId};
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
    /// An engine record with its confirmation handle and its envelope's hash, if the engine
    /// gave one.
    Record(WriteId, Record, Option<Digest>),
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

/// What the store thread reports back, in commit order.
#[derive(Debug)]
pub(super) enum Persisted {
    /// A batch is durable: every write up to `last` (if the batch held records), and the audit
    /// log now has `head` (length, hash).
    Ok {
        last: Option<WriteId>,
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
            let mut msgs = Vec::new();
            while let Some(first) = writes.blocking_recv() {
                msgs.push(first);
                while let Ok(more) = writes.try_recv() {
                    msgs.push(more);
                }
                let (batch, last, durable) = batch_of(msgs.drain(..));
                let result = store.commit(&batch, wall_now());
                if result.is_ok() {
                    hit_failpoints(&batch);
                    for d in durable {
                        let _ = d.send(());
                    }
                }
                let msg = match result {
                    Ok(head) => Persisted::Ok { last, head },
                    Err(error) => Persisted::Failed {
                        last: last.unwrap_or(WriteId(0)),
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

/// One transaction's worth of writes, the last engine write among them, and who waits for the
/// commit.
fn batch_of(
    msgs: impl Iterator<Item = StoreMsg>,
) -> (Batch, Option<WriteId>, Vec<oneshot::Sender<()>>) {
    let mut batch = Batch::default();
    let mut last = None;
    let mut waiting = Vec::new();
    for m in msgs {
        match m {
            StoreMsg::Record(id, r, hash) => {
                last = Some(id);
                batch.records.push(r);
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
    (batch, last, waiting)
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
