//! Commit gating: which frames may leave now, which wait for a write to commit, and which
//! writes may be committed ahead of others.
//!
//! The router numbers each write it emits ([`CommitId`], issued in order, the first is 1) and
//! the shell reports writes committed ([`Router::handle_persisted`](super::Router::handle_persisted)
//! for "everything up to", [`Router::handle_persisted_writes`](super::Router::handle_persisted_writes)
//! for an exact set). A frame that promises the relay's own durability (an `Accepted` reply, an
//! `Expired` refusal) is held here as a [`Deferred`] until the write it depends on has
//! committed, then handed back to the router; so is the deletion of a stored receipt or notice
//! written before its put committed (receipts and notices leave at once).
//!
//! Each write has a [`WriteClass`], so the store can commit a flash envelope without waiting for
//! a routine batch (issue 12, "flash is never behind a batch"). A write is
//! [`WriteClass::Bulk`] when it puts a `routine` or `priority` envelope, or touches an envelope
//! row that an uncommitted bulk write put or changed; every other write is
//! [`WriteClass::Urgent`]. The store commits each class in issue order and may commit an urgent
//! write before an earlier bulk one, never the reverse. That reordering is safe because an
//! urgent write never touches a row an uncommitted bulk write holds (the rule above), and a bulk
//! write never touches a row an uncommitted urgent write put: envelopes only move up a lane, and
//! an urgent write issued before a bulk one is always committed no later than it (the store
//! applies urgent writes first).
//!
//! The gate also counts the bytes each write puts per source connection and stream, which the
//! shell uses to pause reading that one stream of that one connection.
//!
//! Main types: [`CommitGate`], [`Deferred`], [`WriteClass`].
//!
//! Invariant: a deferred frame is released only once the write it waits on has committed;
//! `uncommitted` lists exactly the writes issued and not reported committed; the per-source
//! byte counts equal the sums over those writes; `rows` names, for each envelope row an
//! uncommitted write touched, the latest such write; `control_rows` names the stored control
//! frames whose put has not committed.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use hotline_proto::{EndpointId, Lane, Precedence};

use super::persist::{CommitId, StoreOp};
use super::queue::ControlFrame;
use super::{ConnId, len};

/// A frame held back until a write commits.
#[derive(Debug)]
pub(super) enum Deferred {
    /// An `Accepted` reply to the connection that sent the envelope.
    Reply {
        conn: ConnId,
        to: EndpointId,
        bytes: Bytes,
    },
    /// A stored frame for its addressee that waits for its write (an `Expired` refusal).
    Control { to: EndpointId, frame: ControlFrame },
    /// The deletion of a stored control frame that was written to its addressee before the
    /// write putting it had committed: staged only once that write has, so the store never
    /// applies the deletion before the put.
    DeleteControl { key: u64 },
}

/// Which of the store's two commit queues a write goes to (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WriteClass {
    /// Flash and immediate envelopes, control frames, deletions of committed rows: committed
    /// ahead of any bulk batch that has not started.
    Urgent,
    /// Routine and priority envelopes, and whatever depends on an uncommitted one: committed in
    /// bounded batches after the urgent writes.
    Bulk,
}

impl WriteClass {
    /// The class of the envelope lane `lane` on its own.
    fn of_lane(lane: Precedence) -> Self {
        if lane >= Precedence::Immediate {
            Self::Urgent
        } else {
            Self::Bulk
        }
    }
}

/// What a commit released.
#[derive(Debug, Default)]
pub(super) struct Released {
    /// Frames that waited for it, by write, in the order they were held.
    pub(super) frames: Vec<Deferred>,
    /// Envelope rows whose latest write it was: the store now holds their latest state.
    pub(super) rows: Vec<u64>,
}

/// What the frames that wait on a write depend on.
#[derive(Clone, Copy, Debug)]
pub(super) enum After {
    /// The write the current input is staging.
    Staged,
    /// Whichever uncommitted write last touched this envelope row, if any.
    Row(u64),
    /// The uncommitted write that put this stored control frame, if any.
    ControlRow(u64),
}

/// One write issued and not yet committed.
#[derive(Debug)]
struct Pending {
    /// The connection and stream whose frame caused it, and the bytes it puts.
    source: Option<(ConnId, Lane, u64)>,
    /// The envelope rows it puts or deletes.
    rows: Vec<u64>,
    /// The stored control frames it puts.
    controls: Vec<u64>,
}

/// Issued and committed write ids, the frames waiting for them, and the bytes of the writes not
/// yet committed.
#[derive(Debug, Default)]
pub(super) struct CommitGate {
    /// The last [`CommitId`] issued.
    issued: u64,
    /// The writes issued and not yet committed.
    uncommitted: BTreeMap<u64, Pending>,
    /// Frames that may leave only once the write numbered with them has committed, in the
    /// order they were held.
    deferred: BTreeMap<u64, Vec<Deferred>>,
    /// Per envelope row touched by an uncommitted write: the latest such write and its class.
    rows: HashMap<u64, (u64, WriteClass)>,
    /// Per stored control frame whose put has not committed: the write that puts it.
    control_rows: HashMap<u64, u64>,
    /// Bytes put by uncommitted writes, per source connection and stream (zero entries go).
    by_source: HashMap<(ConnId, Lane), u64>,
}

impl CommitGate {
    /// Whether any write was issued yet.
    pub(super) fn issued_any(&self) -> bool {
        self.issued != 0
    }

    /// Numbers a new write holding `ops`, caused by a frame on `source` (connection and stream)
    /// if any, and decides its class.
    pub(super) fn issue(
        &mut self,
        ops: &[StoreOp],
        source: Option<(ConnId, Lane)>,
    ) -> (CommitId, WriteClass) {
        self.issued += 1;
        let id = self.issued;
        let mut class = WriteClass::Urgent;
        let mut rows = Vec::new();
        let mut controls = Vec::new();
        let mut bytes = 0;
        for op in ops {
            let row = match op {
                StoreOp::PutEnvelope(e) => {
                    bytes += len(&e.bytes);
                    if WriteClass::of_lane(e.lane) == WriteClass::Bulk {
                        class = WriteClass::Bulk;
                    }
                    e.order
                }
                StoreOp::DeleteEnvelope { order } => *order,
                StoreOp::PutControl(c) => {
                    bytes += len(&c.bytes);
                    controls.push(c.key);
                    continue;
                }
                StoreOp::PutAnnouncement(a) => {
                    bytes += len(&a.bytes);
                    continue;
                }
                StoreOp::DeleteControl { .. } => continue,
            };
            if let Some((_, WriteClass::Bulk)) = self.rows.get(&row) {
                class = WriteClass::Bulk;
            }
            rows.push(row);
        }
        for row in &rows {
            self.rows.insert(*row, (id, class));
        }
        for key in &controls {
            self.control_rows.insert(*key, id);
        }
        let source = source.map(|(conn, lane)| {
            if bytes > 0 {
                *self.by_source.entry((conn, lane)).or_default() += bytes;
            }
            (conn, lane, bytes)
        });
        self.uncommitted.insert(
            id,
            Pending {
                source,
                rows,
                controls,
            },
        );
        (CommitId(id), class)
    }

    /// Holds `frame` until the write it depends on commits, or hands it back if there is none
    /// left to wait for. `staging` says whether the current input staged a write.
    #[must_use]
    pub(super) fn after_commit(
        &mut self,
        staging: bool,
        after: After,
        frame: Deferred,
    ) -> Option<Deferred> {
        let write = match after {
            After::Staged if staging => Some(self.issued + 1),
            After::Staged => None,
            After::Row(row) => self.rows.get(&row).map(|(w, _)| *w),
            After::ControlRow(key) => self.control_rows.get(&key).copied(),
        };
        match write {
            Some(write) => {
                self.deferred.entry(write).or_default().push(frame);
                None
            }
            None => Some(frame),
        }
    }

    /// Every write up to and including `upto` is durable: returns the frames that waited for
    /// them, by write, in the order they were held, and the envelope rows now fully committed.
    #[must_use]
    pub(super) fn handle_persisted(&mut self, upto: CommitId) -> Released {
        let writes: Vec<u64> = self.uncommitted.range(..=upto.0).map(|(w, _)| *w).collect();
        self.commit(writes)
    }

    /// Exactly `writes` are durable (each class commits in issue order, but an urgent write may
    /// commit before an earlier bulk one): returns the frames that waited for them, by write,
    /// and the envelope rows now fully committed.
    #[must_use]
    pub(super) fn handle_persisted_writes(&mut self, writes: &[CommitId]) -> Released {
        let mut writes: Vec<u64> = writes.iter().map(|w| w.0).collect();
        writes.sort_unstable();
        self.commit(writes)
    }

    fn commit(&mut self, writes: Vec<u64>) -> Released {
        let mut released = Released::default();
        for write in writes {
            let Some(pending) = self.uncommitted.remove(&write) else {
                // Already reported, or never issued: nothing waits on it.
                continue;
            };
            if let Some((conn, lane, bytes)) = pending.source {
                if let Some(left) = self.by_source.get_mut(&(conn, lane)) {
                    *left -= bytes;
                    if *left == 0 {
                        self.by_source.remove(&(conn, lane));
                    }
                }
            }
            for key in pending.controls {
                self.control_rows.remove(&key);
            }
            for row in pending.rows {
                if self.rows.get(&row).is_some_and(|(w, _)| *w == write) {
                    self.rows.remove(&row);
                    released.rows.push(row);
                }
            }
            released
                .frames
                .extend(self.deferred.remove(&write).unwrap_or_default());
        }
        released
    }

    /// Whether an uncommitted write touches envelope row `row` (so the store may not hold its
    /// latest state yet).
    pub(super) fn row_pending(&self, row: u64) -> bool {
        self.rows.contains_key(&row)
    }

    /// The highest write such that it and every earlier one have committed.
    pub(super) fn committed(&self) -> CommitId {
        CommitId(
            self.uncommitted
                .keys()
                .next()
                .map_or(self.issued, |first| first - 1),
        )
    }

    /// Bytes that frames from `conn` on `stream` put in writes not committed yet.
    pub(super) fn uncommitted_bytes(&self, conn: ConnId, stream: Lane) -> u64 {
        self.by_source.get(&(conn, stream)).copied().unwrap_or(0)
    }

    /// Where the per-source byte counts or the row index differ from the uncommitted writes;
    /// empty when the invariant holds.
    #[cfg(test)]
    pub(super) fn counter_drift(&self) -> Vec<String> {
        let mut drift = Vec::new();
        let mut sums = HashMap::<(ConnId, Lane), u64>::new();
        let mut rows = HashMap::new();
        for (write, pending) in &self.uncommitted {
            if let Some((conn, lane, bytes)) = pending.source {
                if bytes > 0 {
                    *sums.entry((conn, lane)).or_default() += bytes;
                }
            }
            for row in &pending.rows {
                rows.insert(*row, *write);
            }
        }
        if sums != self.by_source {
            drift.push(format!(
                "uncommitted bytes: counted {:?}, uncommitted writes hold {sums:?}",
                self.by_source
            ));
        }
        let controls: HashMap<u64, u64> = self
            .uncommitted
            .iter()
            .flat_map(|(w, p)| p.controls.iter().map(move |k| (*k, *w)))
            .collect();
        if controls != self.control_rows {
            drift.push(format!(
                "uncommitted control rows: indexed {:?}, uncommitted writes put {controls:?}",
                self.control_rows
            ));
        }
        let indexed: HashMap<u64, u64> = self.rows.iter().map(|(r, (w, _))| (*r, *w)).collect();
        if rows != indexed {
            drift.push(format!(
                "uncommitted rows: indexed {:?}, uncommitted writes touch {rows:?}",
                self.rows
            ));
        }
        for write in self.deferred.keys() {
            if *write <= self.issued && !self.uncommitted.contains_key(write) {
                drift.push(format!("frames wait on write {write}, already committed"));
            }
        }
        drift
    }
}
