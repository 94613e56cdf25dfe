//! Commit gating: which frames may leave now, and which wait for a write to commit.
//!
//! The router numbers each write it emits ([`CommitId`], issued in order, the first is 1) and
//! the shell reports the last one committed ([`Router::handle_persisted`](super::Router::handle_persisted)).
//! A frame that promises durability (an `Accepted` reply, a stored receipt, notice or refusal)
//! is held here as a [`Deferred`] until the write it depends on has committed, then handed back
//! to the router in the order it was held. The gate also counts, per lane, the envelope bytes
//! of writes not yet committed, which the shell uses to pause reading a lane.
//!
//! It never decides what is written or where a released frame goes: the router does both.
//!
//! Main types: [`CommitGate`] and [`Deferred`].
//!
//! Invariant: a deferred frame is released only once its write, and so every earlier one, has
//! committed; released frames come out in the order they were deferred; the per-lane byte
//! counts equal the sum over the writes issued and not yet committed.

use std::collections::VecDeque;

use bytes::Bytes;
use hotline_proto::{EndpointId, Precedence};

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
    /// A stored receipt, notice or refusal for its addressee.
    Control { to: EndpointId, frame: ControlFrame },
}

/// Issued and committed write ids, the frames waiting for them, and the envelope bytes of the
/// writes not yet committed.
#[derive(Debug, Default)]
pub(super) struct CommitGate {
    /// The last [`CommitId`] issued.
    issued: u64,
    /// The last [`CommitId`] reported committed.
    committed: u64,
    /// Frames that may leave only once the write numbered with them has committed.
    deferred: VecDeque<(u64, Deferred)>,
    /// Per write issued and not yet committed: the envelope bytes it puts, per lane.
    uncommitted: VecDeque<(u64, [u64; 4])>,
    /// The sum of `uncommitted`, per lane.
    uncommitted_bytes: [u64; 4],
}

impl CommitGate {
    /// Whether any write was issued yet.
    pub(super) fn issued_any(&self) -> bool {
        self.issued != 0
    }

    /// Numbers a new write holding `ops` and counts the envelope bytes it puts.
    pub(super) fn issue(&mut self, ops: &[StoreOp]) -> CommitId {
        self.issued += 1;
        let mut lanes = [0u64; 4];
        for op in ops {
            if let StoreOp::PutEnvelope(e) = op {
                lanes[e.lane.index()] += len(&e.bytes);
            }
        }
        if lanes != [0; 4] {
            for (total, b) in self.uncommitted_bytes.iter_mut().zip(lanes) {
                *total += b;
            }
            self.uncommitted.push_back((self.issued, lanes));
        }
        CommitId(self.issued)
    }

    /// Holds `frame` until the write it depends on commits, or hands it back if that write has
    /// committed already. It depends on the write being staged by the current input (`staging`),
    /// or else on the last one issued.
    #[must_use]
    pub(super) fn after_commit(&mut self, staging: bool, frame: Deferred) -> Option<Deferred> {
        let write = if staging {
            self.issued + 1
        } else {
            self.issued
        };
        if write <= self.committed {
            Some(frame)
        } else {
            self.deferred.push_back((write, frame));
            None
        }
    }

    /// Writes up to and including `write` are durable: returns the frames that waited for them,
    /// in the order they were held.
    #[must_use]
    pub(super) fn handle_persisted(&mut self, write: CommitId) -> Vec<Deferred> {
        self.committed = self.committed.max(write.0);
        while let Some((w, _)) = self.uncommitted.front() {
            if *w > self.committed {
                break;
            }
            if let Some((_, bytes)) = self.uncommitted.pop_front() {
                for (total, b) in self.uncommitted_bytes.iter_mut().zip(bytes) {
                    *total -= b;
                }
            }
        }
        let mut released = Vec::new();
        while let Some((w, _)) = self.deferred.front() {
            if *w > self.committed {
                break;
            }
            if let Some((_, frame)) = self.deferred.pop_front() {
                released.push(frame);
            }
        }
        released
    }

    /// The last write reported committed.
    pub(super) fn committed(&self) -> CommitId {
        CommitId(self.committed)
    }

    /// Bytes of envelopes arrived on `lane` whose write has not committed yet.
    pub(super) fn uncommitted_bytes(&self, lane: Precedence) -> u64 {
        self.uncommitted_bytes[lane.index()]
    }

    /// Where the per-lane uncommitted byte counts differ from the sum over the writes not yet
    /// committed; empty when the invariant holds.
    #[cfg(test)]
    pub(super) fn counter_drift(&self) -> Vec<String> {
        let mut sums = [0u64; 4];
        for (write, lanes) in &self.uncommitted {
            if *write <= self.committed {
                return vec![format!("write {write} is committed but still counted")];
            }
            for (sum, b) in sums.iter_mut().zip(lanes) {
                *sum += b;
            }
        }
        if sums == self.uncommitted_bytes {
            Vec::new()
        } else {
            vec![format!(
                "uncommitted bytes: counted {:?}, uncommitted writes hold {sums:?}",
                self.uncommitted_bytes
            )]
        }
    }
}
