//! The relay's durable store: `data_dir/relay.redb`, and the group-commit loop that feeds it.
//!
//! It holds what must survive a crash (see [`crate::router`]'s `persist` types): queued envelopes
//! by arrival order, with destination, current transport lane and first-arrival time; receipts,
//! escalation notices and `Expired` refusals waiting for their addressee; and the latest
//! announcement per endpoint. It applies [`StoreOp`]s and reads a [`Snapshot`] back; it never
//! decides anything (the router does) and never decodes a frame.
//!
//! redb gives ACID transactions with an fsync on every commit (`Durability::Immediate`, its
//! default, which this module never lowers) and an exclusive file lock, so a second relay on the
//! same data directory fails to open it ([`OpenError::Locked`]). The file is opened through
//! [`hotline_db::open`]: created private (0600, in a 0700 directory when that is missing), with a
//! `meta` table carrying [`SCHEMA_VERSION`]; a store written with another version, or a file with
//! tables but no version, is refused at startup ([`StoreError::Open`]), never reinterpreted.
//!
//! Tables (schema version 2):
//! - `meta`: `&str → u64`, `schema_version`;
//! - `envelopes`: arrival order `u64 → (destination, lane index, queued_at µs, frame)`;
//! - `control`: key `u64 → (addressee, frame)`;
//! - `announcements`: endpoint `&str → (epoch, frame)`.
//!
//! Group commit ([`group_commit`]): one writer thread takes every write waiting and commits, in
//! one transaction (one fsync), all the urgent ones and then bulk ones up to
//! [`BULK_BATCH_BYTES`]; as soon as that commit returns it starts the next one with the rest and
//! whatever queued meanwhile. No timer: batches grow as the load needs, and the bulk part is
//! bounded. Urgent writes (flash and immediate envelopes, receipts, notices, announcements:
//! see [`WriteClass`]) go ahead of bulk ones (routine and priority envelopes) that have not
//! started, so a flash that arrives during a routine commit waits for that one commit, at most
//! about [`BULK_BATCH_BYTES`] of routine data, and goes out in the next; it never waits for a
//! routine batch that started after it arrived. Each class is committed in the order it was
//! sent; the router guarantees an urgent write never touches a row an earlier uncommitted bulk
//! write holds, so committing it first is safe.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, TryRecvError};

use bytes::Bytes;
use hotline_db::{DbError, InTable, OpenError, Schema, Unversioned};
use hotline_proto::{EndpointId, NameError, Precedence, Time};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};

use crate::failpoint;
use crate::router::{
    CommitId, Snapshot, StoreOp, StoredAnnouncement, StoredControl, StoredEnvelope, WriteClass,
};

/// The store's file name inside the data directory.
pub const FILE_NAME: &str = "relay.redb";

/// The schema this build writes and reads. 2: stored frames are protocol version 2 (version 1
/// frames would be refused by every node).
pub const SCHEMA_VERSION: u64 = 2;

const SCHEMA: Schema = Schema {
    owner: "relay",
    version: SCHEMA_VERSION,
    unversioned: Unversioned::Refuse,
};

const ENVELOPES: TableDefinition<'_, u64, (&str, u8, u64, &[u8])> =
    TableDefinition::new("envelopes");
const CONTROL: TableDefinition<'_, u64, (&str, &[u8])> = TableDefinition::new("control");
const ANNOUNCEMENTS: TableDefinition<'_, &str, (u32, &[u8])> =
    TableDefinition::new("announcements");

/// Why the store failed. All are the environment's fault (disk, another process, an old file).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store did not open: another relay has it, or it has another schema version or none.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// A redb step failed (I/O, full disk, a damaged file).
    #[error(transparent)]
    Db(#[from] DbError),
    /// A stored endpoint name is not a valid endpoint id.
    #[error("store table {table}, row {key}: {error}")]
    BadName {
        /// The table.
        table: String,
        /// The row key.
        key: String,
        /// Why the name is invalid.
        error: NameError,
    },
    /// A stored envelope's lane index is no precedence.
    #[error("store table envelopes, row {order}: lane index {index} is no precedence")]
    BadLane {
        /// The envelope's arrival order (its row key).
        order: u64,
        /// The stored index.
        index: u8,
    },
}

/// An open store. Dropping it (and every [`StoreReader`] of it) closes the file and releases
/// its lock.
#[derive(Debug)]
pub struct Store {
    db: Arc<Database>,
    commits: u64,
}

/// Reads queued envelopes back while the writer commits (redb readers never block the writer,
/// nor see a write that has not committed).
#[derive(Clone, Debug)]
pub struct StoreReader {
    db: Arc<Database>,
}

impl StoreReader {
    /// The stored frame of queued envelope row `order`, if the row exists.
    pub fn envelope(&self, order: u64) -> Result<Option<Bytes>, StoreError> {
        let txn = self.db.begin_read().map_err(DbError::from)?;
        let table = txn.open_table(ENVELOPES).in_table(ENVELOPES)?;
        let row = table.get(order).in_table(ENVELOPES)?;
        Ok(row.map(|row| Bytes::copy_from_slice(row.value().3)))
    }
}

impl Store {
    /// Opens (or creates) `dir/relay.redb` and reads everything it holds.
    pub fn open(dir: &Path) -> Result<(Self, Snapshot), StoreError> {
        // Create the tables, so that reading an empty store finds them.
        let db = hotline_db::open(&dir.join(FILE_NAME), SCHEMA, |txn| {
            txn.open_table(ENVELOPES).in_table(ENVELOPES)?;
            txn.open_table(CONTROL).in_table(CONTROL)?;
            txn.open_table(ANNOUNCEMENTS).in_table(ANNOUNCEMENTS)?;
            Ok(())
        })?;
        let snapshot = read_all(&db)?;
        let db = Arc::new(db);
        Ok((Self { db, commits: 0 }, snapshot))
    }

    /// A reader of this store, for another thread.
    pub fn reader(&self) -> StoreReader {
        StoreReader {
            db: self.db.clone(),
        }
    }

    /// Applies `ops` in order in one transaction and commits it (one fsync). Returns once the
    /// commit is durable.
    pub fn commit(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(DbError::from)?;
        {
            let mut envelopes = txn.open_table(ENVELOPES).in_table(ENVELOPES)?;
            let mut control = txn.open_table(CONTROL).in_table(CONTROL)?;
            let mut announcements = txn.open_table(ANNOUNCEMENTS).in_table(ANNOUNCEMENTS)?;
            for op in ops {
                match op {
                    StoreOp::PutEnvelope(e) => {
                        let row = (
                            e.destination.as_str(),
                            e.lane.index() as u8,
                            e.queued_at.0,
                            &e.bytes[..],
                        );
                        envelopes.insert(e.order, row).in_table(ENVELOPES)?;
                    }
                    StoreOp::DeleteEnvelope { order } => {
                        envelopes.remove(*order).in_table(ENVELOPES)?;
                    }
                    StoreOp::PutControl(c) => {
                        control
                            .insert(c.key, (c.addressee.as_str(), &c.bytes[..]))
                            .in_table(CONTROL)?;
                    }
                    StoreOp::DeleteControl { key } => {
                        control.remove(*key).in_table(CONTROL)?;
                    }
                    StoreOp::PutAnnouncement(a) => {
                        announcements
                            .insert(a.endpoint.as_str(), (a.epoch, &a.bytes[..]))
                            .in_table(ANNOUNCEMENTS)?;
                    }
                }
            }
        }
        failpoint::hit(failpoint::MID_GROUP_COMMIT);
        txn.commit().map_err(DbError::from)?;
        self.commits += 1;
        Ok(())
    }

    /// Transactions committed since the store was opened.
    pub fn commits(&self) -> u64 {
        self.commits
    }
}

/// A request to the writer thread running [`group_commit`].
#[derive(Debug)]
pub enum Request {
    /// Make these operations durable, then report `id` committed.
    Write {
        /// The router's id for this write.
        id: CommitId,
        /// Its commit queue.
        class: WriteClass,
        /// The operations, in order.
        ops: Vec<StoreOp>,
    },
    /// Commit what was requested before this, then return.
    Stop,
}

/// One group commit, as reported by [`group_commit`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    /// The writes it held, urgent ones first, each class in issue order.
    pub writes: Vec<CommitId>,
    /// How many of them were bulk writes.
    pub bulk: usize,
    /// How many operations it held.
    pub ops: usize,
}

/// A commit holds at most this many bytes of bulk writes (at least one write, whatever its
/// size), so an urgent write that arrives during a commit waits for at most this much routine
/// data to be written and synced before its own commit starts. 256 KiB (one largest envelope):
/// `hotline-bench neighbours` gave the same flood throughput (about 66 MiB/s) with 256 KiB as
/// with 1 MiB, and lower quiet-pair latency (BENCHMARKS.md).
pub const BULK_BATCH_BYTES: u64 = 256 * 1024;

/// The writes received and not yet committed, per class, each in issue order.
#[derive(Debug, Default)]
struct Queued {
    urgent: VecDeque<(CommitId, Vec<StoreOp>)>,
    bulk: VecDeque<(CommitId, Vec<StoreOp>)>,
    stop: bool,
}

impl Queued {
    /// Takes `request`; returns whether more may be taken (false after `Stop`).
    fn take(&mut self, request: Request) -> bool {
        match request {
            Request::Write {
                id,
                class: WriteClass::Urgent,
                ops,
            } => self.urgent.push_back((id, ops)),
            Request::Write {
                id,
                class: WriteClass::Bulk,
                ops,
            } => self.bulk.push_back((id, ops)),
            Request::Stop => self.stop = true,
        }
        !self.stop
    }

    fn is_empty(&self) -> bool {
        self.urgent.is_empty() && self.bulk.is_empty()
    }

    /// The next commit: every urgent write, then bulk writes up to [`BULK_BATCH_BYTES`] (all of
    /// them when stopping). Appends their operations to `ops`.
    fn next_batch(&mut self, ops: &mut Vec<StoreOp>) -> Committed {
        let mut writes = Vec::new();
        for (id, more) in self.urgent.drain(..) {
            writes.push(id);
            ops.extend(more);
        }
        let mut bulk = 0;
        let mut bytes = 0;
        while let Some((_, front)) = self.bulk.front() {
            let size = bulk_bytes(front);
            if bulk > 0 && bytes + size > BULK_BATCH_BYTES && !self.stop {
                break;
            }
            let Some((id, more)) = self.bulk.pop_front() else {
                break;
            };
            bytes += size;
            bulk += 1;
            writes.push(id);
            ops.extend(more);
        }
        Committed {
            writes,
            bulk,
            ops: ops.len(),
        }
    }
}

fn bulk_bytes(ops: &[StoreOp]) -> u64 {
    ops.iter()
        .map(|op| match op {
            StoreOp::PutEnvelope(e) => e.bytes.len() as u64,
            _ => 0,
        })
        .sum()
}

/// Runs the group-commit loop until [`Request::Stop`] or until every sender is gone: takes every
/// write waiting, commits all the urgent ones and a bounded batch of bulk ones in one
/// transaction (urgent first), calls `committed`, and starts again at once with the rest and
/// whatever queued meanwhile (see the module docs). Each class is committed in the order it was
/// sent. Returns the first store error; nothing after it is committed.
pub fn group_commit(
    store: &mut Store,
    requests: &Receiver<Request>,
    mut committed: impl FnMut(Committed),
) -> Result<(), StoreError> {
    let mut queued = Queued::default();
    let mut ops = Vec::new();
    loop {
        if queued.is_empty() && !queued.stop {
            let Ok(first) = requests.recv() else {
                return Ok(());
            };
            queued.take(first);
        }
        let mut more = !queued.stop;
        while more {
            match requests.try_recv() {
                Ok(request) => more = queued.take(request),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => more = false,
            }
        }
        if !queued.is_empty() {
            let batch = queued.next_batch(&mut ops);
            failpoint::hit(failpoint::BEFORE_COMMIT);
            store.commit(&ops)?;
            failpoint::hit(failpoint::AFTER_COMMIT_BEFORE_ACCEPTED);
            committed(batch);
            ops.clear();
        }
        if queued.stop && queued.is_empty() {
            return Ok(());
        }
    }
}

fn read_all(database: &Database) -> Result<Snapshot, StoreError> {
    let txn = database.begin_read().map_err(DbError::from)?;
    let mut snapshot = Snapshot::default();

    let table = txn.open_table(ENVELOPES).in_table(ENVELOPES)?;
    for row in table.iter().in_table(ENVELOPES)? {
        let (k, v) = row.in_table(ENVELOPES)?;
        let order = k.value();
        let (destination, lane, queued_at, bytes) = v.value();
        snapshot.envelopes.push(StoredEnvelope {
            order,
            destination: endpoint(ENVELOPES, order, destination)?,
            lane: Precedence::from_index(usize::from(lane))
                .ok_or(StoreError::BadLane { order, index: lane })?,
            queued_at: Time(queued_at),
            bytes: Bytes::copy_from_slice(bytes),
        });
    }

    let table = txn.open_table(CONTROL).in_table(CONTROL)?;
    for row in table.iter().in_table(CONTROL)? {
        let (k, v) = row.in_table(CONTROL)?;
        let key = k.value();
        let (addressee, bytes) = v.value();
        snapshot.control.push(StoredControl {
            key,
            addressee: endpoint(CONTROL, key, addressee)?,
            bytes: Bytes::copy_from_slice(bytes),
        });
    }

    let table = txn.open_table(ANNOUNCEMENTS).in_table(ANNOUNCEMENTS)?;
    for row in table.iter().in_table(ANNOUNCEMENTS)? {
        let (k, v) = row.in_table(ANNOUNCEMENTS)?;
        let name = k.value();
        let (epoch, bytes) = v.value();
        snapshot.announcements.push(StoredAnnouncement {
            endpoint: endpoint(ANNOUNCEMENTS, name, name)?,
            epoch,
            bytes: Bytes::copy_from_slice(bytes),
        });
    }
    Ok(snapshot)
}

/// The endpoint id stored as `name` in row `key` of `table`.
fn endpoint(
    table: impl TableHandle,
    key: impl ToString,
    name: &str,
) -> Result<EndpointId, StoreError> {
    EndpointId::new(name).map_err(|error| StoreError::BadName {
        table: table.name().to_owned(),
        key: key.to_string(),
        error,
    })
}

#[cfg(test)]
mod tests;
