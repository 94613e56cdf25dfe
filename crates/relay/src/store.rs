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
//! same data directory fails to open it ([`StoreError::Locked`]). A `meta` table carries
//! [`SCHEMA_VERSION`]; a store written with another version is refused at startup
//! ([`StoreError::UnknownSchema`]), never reinterpreted.
//!
//! Tables (schema version 1):
//! - `meta`: `&str → u64`, `schema_version`;
//! - `envelopes`: arrival order `u64 → (destination, lane index, queued_at µs, frame)`;
//! - `control`: key `u64 → (addressee, frame)`;
//! - `announcements`: endpoint `&str → (epoch, frame)`.
//!
//! Group commit ([`group_commit`]): one writer thread takes the first waiting write, then every
//! write queued behind it, and commits them all in one transaction (one fsync); as soon as that
//! commit returns it starts the next one with whatever queued meanwhile. No timer, no batch size:
//! batches grow exactly as much as the load needs (the server bounds what can queue: a lane's
//! readers pause while 4 MiB of that lane wait for a commit). So a write (a `flash` envelope,
//! say) that arrives while a batch of routine envelopes is being committed waits for the end of
//! that one commit and goes out in the next, which holds only what arrived during that commit:
//! it is never held behind a routine batch longer than one commit, and its `Accepted` leaves as
//! soon as its own batch commits.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, TryRecvError};

use bytes::Bytes;
use hotline_proto::{EndpointId, Precedence, Time};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};

use crate::failpoint;
use crate::router::{
    CommitId, Snapshot, StoreOp, StoredAnnouncement, StoredControl, StoredEnvelope,
};

/// The store's file name inside the data directory.
pub const FILE_NAME: &str = "relay.redb";

/// The schema this build writes and reads.
pub const SCHEMA_VERSION: u64 = 1;

/// Page cache of the redb store.
const STORE_CACHE_BYTES: usize = 32 * 1024 * 1024;

const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
const ENVELOPES: TableDefinition<'_, u64, (&str, u8, u64, &[u8])> =
    TableDefinition::new("envelopes");
const CONTROL: TableDefinition<'_, u64, (&str, &[u8])> = TableDefinition::new("control");
const ANNOUNCEMENTS: TableDefinition<'_, &str, (u32, &[u8])> =
    TableDefinition::new("announcements");

/// Why the store failed. All are the environment's fault (disk, another process, an old file).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process has the store open.
    #[error("another relay is already running on data dir {} ({FILE_NAME} is locked)", .0.display())]
    Locked(PathBuf),
    /// The store was written with another schema version.
    #[error(
        "store {} has schema version {found}; this relay reads version {SCHEMA_VERSION} only",
        path.display()
    )]
    UnknownSchema {
        /// The store file.
        path: PathBuf,
        /// The version found.
        found: u64,
    },
    /// The store has tables but no schema version: not written by a relay.
    #[error("store {} has no schema version; it was not written by hotline-relay", .0.display())]
    MissingSchema(PathBuf),
    /// A row does not hold what this schema says.
    #[error("store table {table}, row {key}: {detail}")]
    Corrupt {
        /// The table.
        table: &'static str,
        /// The row key.
        key: String,
        /// What is wrong.
        detail: String,
    },
    /// The data directory could not be created.
    #[error("creating {}: {source}", path.display())]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The database reported an error (I/O, full disk, damaged file, …).
    #[error("store: {0}")]
    Db(#[from] redb::Error),
}

fn db(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Db(e.into())
}

/// An open store. Dropping it closes the file and releases its lock.
#[derive(Debug)]
pub struct Store {
    db: Database,
    commits: u64,
}

impl Store {
    /// Opens (or creates) `dir/relay.redb` and reads everything it holds.
    pub fn open(dir: &Path) -> Result<(Self, Snapshot), StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join(FILE_NAME);
        // redb's default page cache (1 GiB) would let a long-running process grow towards it;
        // appends and the start-up scan need far less.
        let db = match Database::builder()
            .set_cache_size(STORE_CACHE_BYTES)
            .create(&path)
        {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(StoreError::Locked(dir.to_owned()));
            }
            Err(e) => return Err(db(e)),
        };
        check_schema(&db, &path)?;
        let snapshot = read_all(&db)?;
        Ok((Self { db, commits: 0 }, snapshot))
    }

    /// Applies `ops` in order in one transaction and commits it (one fsync). Returns once the
    /// commit is durable.
    pub fn commit(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db)?;
        {
            let mut envelopes = txn.open_table(ENVELOPES).map_err(db)?;
            let mut control = txn.open_table(CONTROL).map_err(db)?;
            let mut announcements = txn.open_table(ANNOUNCEMENTS).map_err(db)?;
            for op in ops {
                match op {
                    StoreOp::PutEnvelope(e) => {
                        let row = (
                            e.destination.as_str(),
                            e.lane.index() as u8,
                            e.queued_at.0,
                            &e.bytes[..],
                        );
                        envelopes.insert(e.order, row).map_err(db)?;
                    }
                    StoreOp::DeleteEnvelope { order } => {
                        envelopes.remove(*order).map_err(db)?;
                    }
                    StoreOp::PutControl(c) => {
                        control
                            .insert(c.key, (c.addressee.as_str(), &c.bytes[..]))
                            .map_err(db)?;
                    }
                    StoreOp::DeleteControl { key } => {
                        control.remove(*key).map_err(db)?;
                    }
                    StoreOp::PutAnnouncement(a) => {
                        announcements
                            .insert(a.endpoint.as_str(), (a.epoch, &a.bytes[..]))
                            .map_err(db)?;
                    }
                }
            }
        }
        failpoint::hit(failpoint::MID_GROUP_COMMIT);
        txn.commit().map_err(db)?;
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
        /// The operations, in order.
        ops: Vec<StoreOp>,
    },
    /// Commit what was requested before this, then return.
    Stop,
}

/// One group commit, as reported by [`group_commit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Committed {
    /// The last write the commit held; it and every earlier one are durable.
    pub upto: CommitId,
    /// How many writes it held.
    pub writes: usize,
    /// How many operations it held.
    pub ops: usize,
}

/// Runs the group-commit loop until [`Request::Stop`] or until every sender is gone: takes the
/// first waiting write and every write queued behind it, commits them in one transaction, calls
/// `committed`, and starts again at once (see the module docs). Writes are committed in the
/// order they were sent. Returns the first store error; nothing after it is committed.
pub fn group_commit(
    store: &mut Store,
    requests: &Receiver<Request>,
    mut committed: impl FnMut(Committed),
) -> Result<(), StoreError> {
    let mut ops = Vec::new();
    loop {
        let Ok(first) = requests.recv() else {
            return Ok(());
        };
        let mut stop = false;
        let mut upto = None;
        let mut writes = 0;
        let mut take = |request: Request, ops: &mut Vec<StoreOp>| match request {
            Request::Write { id, ops: more } => {
                upto = Some(id);
                writes += 1;
                ops.extend(more);
                true
            }
            Request::Stop => {
                stop = true;
                false
            }
        };
        let mut more = take(first, &mut ops);
        while more {
            match requests.try_recv() {
                Ok(request) => more = take(request, &mut ops),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => more = false,
            }
        }
        if let Some(upto) = upto {
            failpoint::hit(failpoint::BEFORE_COMMIT);
            store.commit(&ops)?;
            failpoint::hit(failpoint::AFTER_COMMIT_BEFORE_ACCEPTED);
            committed(Committed {
                upto,
                writes,
                ops: ops.len(),
            });
            ops.clear();
        }
        if stop {
            return Ok(());
        }
    }
}

fn check_schema(database: &Database, path: &Path) -> Result<(), StoreError> {
    let txn = database.begin_write().map_err(db)?;
    {
        let others = txn
            .list_tables()
            .map_err(db)?
            .filter(|t| t.name() != META.name())
            .count();
        let mut meta = txn.open_table(META).map_err(db)?;
        let found = meta.get("schema_version").map_err(db)?.map(|v| v.value());
        match found {
            None if others == 0 => {
                meta.insert("schema_version", SCHEMA_VERSION).map_err(db)?;
            }
            None => return Err(StoreError::MissingSchema(path.to_owned())),
            Some(SCHEMA_VERSION) => {}
            Some(found) => {
                return Err(StoreError::UnknownSchema {
                    path: path.to_owned(),
                    found,
                });
            }
        }
        // Create the tables, so that reading an empty store finds them.
        txn.open_table(ENVELOPES).map_err(db)?;
        txn.open_table(CONTROL).map_err(db)?;
        txn.open_table(ANNOUNCEMENTS).map_err(db)?;
    }
    txn.commit().map_err(db)?;
    Ok(())
}

fn read_all(database: &Database) -> Result<Snapshot, StoreError> {
    let txn = database.begin_read().map_err(db)?;
    let mut snapshot = Snapshot::default();

    let table = txn.open_table(ENVELOPES).map_err(db)?;
    for row in table.iter().map_err(db)? {
        let (k, v) = row.map_err(db)?;
        let order = k.value();
        let (destination, lane, queued_at, bytes) = v.value();
        let corrupt = |detail: String| StoreError::Corrupt {
            table: "envelopes",
            key: order.to_string(),
            detail,
        };
        let destination = EndpointId::new(destination)
            .map_err(|e| corrupt(format!("destination {destination:?}: {e}")))?;
        let lane = Precedence::from_index(usize::from(lane))
            .ok_or_else(|| corrupt(format!("lane index {lane}")))?;
        snapshot.envelopes.push(StoredEnvelope {
            order,
            destination,
            lane,
            queued_at: Time(queued_at),
            bytes: Bytes::copy_from_slice(bytes),
        });
    }

    let table = txn.open_table(CONTROL).map_err(db)?;
    for row in table.iter().map_err(db)? {
        let (k, v) = row.map_err(db)?;
        let key = k.value();
        let (addressee, bytes) = v.value();
        let addressee = EndpointId::new(addressee).map_err(|e| StoreError::Corrupt {
            table: "control",
            key: key.to_string(),
            detail: format!("addressee {addressee:?}: {e}"),
        })?;
        snapshot.control.push(StoredControl {
            key,
            addressee,
            bytes: Bytes::copy_from_slice(bytes),
        });
    }

    let table = txn.open_table(ANNOUNCEMENTS).map_err(db)?;
    for row in table.iter().map_err(db)? {
        let (k, v) = row.map_err(db)?;
        let endpoint = k.value();
        let (epoch, bytes) = v.value();
        let endpoint = EndpointId::new(endpoint).map_err(|e| StoreError::Corrupt {
            table: "announcements",
            key: endpoint.to_owned(),
            detail: e.to_string(),
        })?;
        snapshot.announcements.push(StoredAnnouncement {
            endpoint,
            epoch,
            bytes: Bytes::copy_from_slice(bytes),
        });
    }
    Ok(snapshot)
}

#[cfg(test)]
mod tests;
