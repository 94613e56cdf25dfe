//! What the router asks the shell to keep on disk, and what it gets back at startup.
//!
//! The router never writes: it emits [`Output::Persist`](super::Output::Persist) with a
//! [`CommitId`] and a list of [`StoreOp`]s, and holds back every reply that promises the relay's
//! durability (`Accepted`, `Expired` refusals) until the shell reports that write, or a later
//! one, committed with [`Router::handle_persisted`](super::Router::handle_persisted). Receipts
//! and notices, the partner's signed word, are stored but forwarded at once.
//! Writes must be committed in the order they were issued; a commit may cover several.
//!
//! At startup the shell reads a [`Snapshot`] back and hands it to
//! [`Router::restore`](super::Router::restore). What is stored is exactly what must survive a
//! crash: queued envelopes (destination, current transport lane, arrival order, arrival time),
//! receipts, escalation notices and refusals waiting for their addressee, and the latest
//! announcement per endpoint. Replies, presence and link tests only make sense on a live
//! connection and are never stored.

use std::fmt;

use bytes::Bytes;
use hotline_proto::wire::DecodeError;
use hotline_proto::{EndpointId, Precedence, Time};

/// Identifies one [`Output::Persist`](super::Output::Persist), in issue order (the first is 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CommitId(pub u64);

impl fmt::Display for CommitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One change to the relay's durable state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreOp {
    /// Insert or replace (after an escalation moved it to a higher lane) a queued envelope.
    PutEnvelope(StoredEnvelope),
    /// A queued envelope is gone: delivered or expired.
    DeleteEnvelope {
        /// Its arrival order, the row key.
        order: u64,
    },
    /// A receipt, escalation notice or refusal now waits for its addressee.
    PutControl(StoredControl),
    /// A stored control frame was written to its addressee.
    DeleteControl {
        /// Its row key.
        key: u64,
    },
    /// The latest announcement of an endpoint (replaces the previous one).
    PutAnnouncement(StoredAnnouncement),
}

/// A queued envelope as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEnvelope {
    /// Arrival order, unique across the relay: the row key and the position in its lane.
    pub order: u64,
    /// The endpoint it waits for.
    pub destination: EndpointId,
    /// Its current transport lane.
    pub lane: Precedence,
    /// Wall-clock time it first arrived; its time-to-live counts from here.
    pub queued_at: Time,
    /// The envelope frame, length prefix included, byte for byte as last received.
    pub bytes: Bytes,
}

/// A control frame (receipt, escalation notice, `Expired` refusal) waiting for its addressee.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredControl {
    /// Row key, unique across the relay and increasing in queue order.
    pub key: u64,
    /// The endpoint it is for.
    pub addressee: EndpointId,
    /// The frame, length prefix included.
    pub bytes: Bytes,
}

/// The latest announcement of an endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredAnnouncement {
    /// Whose.
    pub endpoint: EndpointId,
    /// Its key epoch.
    pub epoch: u32,
    /// The announcement frame, length prefix included.
    pub bytes: Bytes,
}

/// Everything a store holds, as read back at startup.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Queued envelopes, in any order.
    pub envelopes: Vec<StoredEnvelope>,
    /// Waiting control frames, in any order.
    pub control: Vec<StoredControl>,
    /// The latest announcement per endpoint.
    pub announcements: Vec<StoredAnnouncement>,
}

/// What [`Router::restore`](super::Router::restore) loaded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Restored {
    /// Queued envelopes loaded.
    pub envelopes: usize,
    /// Waiting control frames loaded.
    pub control: usize,
    /// Announcements loaded.
    pub announcements: usize,
    /// Stored rows left in the store, unserved, because their endpoint is in no configured
    /// hotline any more: endpoint and row count.
    pub unconfigured: Vec<(EndpointId, usize)>,
}

/// Why a snapshot could not be loaded: the store holds something this relay never writes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// A stored envelope row does not decode as a frame.
    #[error("stored envelope {order} does not decode: {error}")]
    Undecodable {
        /// Its row key.
        order: u64,
        /// Why it does not decode.
        error: DecodeError,
    },
    /// A stored envelope row decodes, but not as exactly one envelope frame.
    #[error("stored envelope {order} is not exactly one envelope frame")]
    NotAnEnvelope {
        /// Its row key.
        order: u64,
    },
    /// A stored envelope row is addressed to another endpoint than the one it is stored for.
    #[error("stored envelope {order} is addressed to {recipient}, stored for {destination}")]
    Misaddressed {
        /// Its row key.
        order: u64,
        /// The envelope's recipient.
        recipient: EndpointId,
        /// The endpoint the row is stored for.
        destination: EndpointId,
    },
    /// Two stored envelope rows are the same message for the same destination.
    #[error("stored envelopes {first} and {second} are the same message")]
    DuplicateEnvelope {
        /// The first row key.
        first: u64,
        /// The second row key.
        second: u64,
    },
    /// The router already has queued state (restore is for a fresh router only).
    #[error("restore called on a router that already holds state")]
    NotFresh,
}
