//! The relay's routing and queueing state machine, sans IO.
//!
//! [`Router`] decides where every frame goes, what stays queued and what must be made durable.
//! It never touches a socket, a file, a task or the clock: the shell ([`crate::Server`]) feeds it
//! inputs and carries out its outputs, so every routing rule is tested here without QUIC or
//! disk.
//!
//! - Inputs: [`Router::restore`] (once, at startup, from the store), [`Router::handle_connected`],
//!   (with the wall-clock time) [`Router::handle_disconnected`], [`Router::handle_frame`] (whole
//!   frames, length prefix included, exactly as read, with the stream they came on and the
//!   wall-clock time; or [`Router::handle_decoded`] with a frame the shell decoded outside its
//!   lock), [`Router::handle_written`] (the shell handed a [`Transmit`] to its
//!   stream), [`Router::handle_persisted`] (a write committed) and [`Router::handle_timeout`].
//! - Outputs: [`Router::poll_transmit`] (the next frame for one stream of one connection; the
//!   shell's one writer per stream pulls it only when it can write), [`Router::poll_output`]
//!   ([`Output::Persist`] a batch of store operations, [`Output::Wake`] a writer,
//!   [`Output::Close`] a connection displaced by another with its identity, [`Output::Refused`],
//!   [`Output::EnvelopeRefused`] and [`Output::WrongStream`] for metrics) and [`Router::poll_timeout`] (when to call
//!   [`Router::handle_timeout`]).
//!
//! Contract, as in quinn-proto: after any `handle_*` call drain [`Router::poll_output`] in order,
//! then re-arm the timer from [`Router::poll_timeout`]; an early `handle_timeout` does nothing.
//! Commit the [`Output::Persist`] writes in the order they were emitted.
//!
//! The router owns its sub-states and only routes between them:
//! - `queue`: per endpoint, the envelope queues per transport lane and the control queues;
//! - `fair`: within one lane of one destination, which sender's envelope goes next (deficit
//!   round robin by bytes, so one sender cannot starve the others);
//! - `commit`: issued and committed [`CommitId`]s, each write's [`WriteClass`], and the replies
//!   held until their write commits;
//! - `decode`: frames decoded before the router (and the shell's lock) is reached;
//! - `frames`: the rule for each kind of frame;
//! - `transmit`: what goes out to a node's streams, and queued envelopes read back from the
//!   store when memory no longer holds them;
//! - `inspect`: what the shell reads for back-pressure and metrics (backlogs, queues, totals);
//! - `restore`: loading a store [`Snapshot`] at startup;
//! - `persist`: what is stored ([`StoreOp`], [`Snapshot`]);
//! - `identity`: when a second connection with a live identity displaces the first, and when
//!   it is refused because the identity flaps ([`IdentityLimits`]);
//! - `limits`: [`Limits`] and [`Ttl`];
//! - `budget`: the global budget over all queued envelope bytes and each sender's quota in it.
//!
//! Routing rules (see `DESIGN.md`, "Delivery" and "Durability"):
//! - One live connection per identity. A newcomer displaces the live one ([`Output::Close`]),
//!   unless the identity flapped: then the live one is kept and the newcomer refused
//!   ([`ConnectError::IdentityInUse`]) for a back-off (rules in `identity`).
//! - An envelope must name the connection's identity as sender ([`RefusalCode::SenderMismatch`])
//!   and one of its partners as recipient ([`RefusalCode::NotPaired`]). It is queued per
//!   destination and per *transport* lane, in arrival order per sender (senders take turns by
//!   bytes, see `fair`), deduplicated by
//!   (sender, recipient, channel, precedence, seq); a duplicate with a higher transport moves the
//!   queued copy to that lane and makes it eligible to be written again.
//! - Durability: every change to what is queued is emitted as an [`Output::Persist`]. The sender
//!   gets [`Frame::Accepted`] with `durable: true` only once the write that holds the envelope
//!   (and every write before it) has committed; a duplicate's `Accepted` waits for every write
//!   issued so far. Receipts and escalation notices are stored (with the deletions a receipt
//!   causes) and forwarded at once, while that write commits: they are the partner's signed
//!   word, and a crash before the commit only brings back envelopes the receiver answers as
//!   duplicates. `Expired` refusals, the relay's own word, are forwarded only once stored. A
//!   stored control frame's deletion is staged only after its put has committed.
//! - A queued envelope is deleted only when a `Delivered` receipt covering it passes through, or
//!   when its time-to-live ([`Ttl`], per transport lane, counted from its first arrival) runs
//!   out: then its sender is told `Refused{Expired}` (and keeps the message).
//!   On every (re)connection of its destination, everything still queued is written again.
//! - Receipts and escalation notices go to their addressee's control stream and wait there
//!   while it is offline; link tests are forwarded only to an online partner; the latest
//!   announcement per endpoint is kept and replayed to its partners when they connect;
//!   presence changes go to online partners.
//! - Streams: an envelope must arrive on the node's stream of its *transport* lane, every other
//!   frame on its control stream; anything else is refused (`Malformed`) unrouted, so backlog
//!   and store back-pressure are counted on the stream the frame really used.
//! - Overload: past `max_queue_bytes` of envelopes queued for one destination from one sender,
//!   that sender's `routine` is refused with [`RefusalCode::Overloaded`]; `priority` and
//!   `immediate` past 125 %, `flash` past 150 % (so a destination in several hotlines gives each
//!   partner the whole bound); receipts and escalation notices past 150 % of all the
//!   destination holds. Over all destinations together, queued envelope bytes
//!   stay within `max_queued_bytes_total`: each configured endpoint has a quota of it as a
//!   sender, and beyond its quota a sender's new envelopes are refused (`Overloaded`) heaviest
//!   first, `flash` last (rule in `budget`). Nothing is dropped without telling its sender, and
//!   nothing already accepted is dropped to make room.
//!
//! Each kind of work lives in its own file (`frames`, `queue`, `fair`, `commit`, `budget`,
//! `identity`, `restore`, `transmit`, `inspect`, `reconfigure`); this facade holds the docs,
//! the types the shell sees and the routing between them. It runs a little past 600 lines
//! because of those docs and the one-line routing methods; splitting it would scatter the
//! router's contract.
//!
//! Invariant: for each destination, every queued envelope is in exactly one lane, and is listed
//! as unwritten in that lane exactly when its state is [`ItemState::Unwritten`]; queued byte
//! counts equal the sum of the queued frames' lengths, per destination and, for envelopes, per
//! sender and in total over all destinations; every queued envelope with a time-to-live
//! is in the expiry index exactly once.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;

use bytes::Bytes;
pub use hotline_proto::Lane;
use hotline_proto::wire::{self, Frame, Presence, RefusalCode};
use hotline_proto::{EndpointId, Precedence, Time};
use tracing::debug;

mod budget;
mod commit;
mod decode;
mod fair;
mod frames;
mod identity;
mod inspect;
mod limits;
mod persist;
mod queue;
mod reconfigure;
mod restore;
mod transmit;

pub use decode::Decoded;
pub use inspect::{EndpointQueues, QueuedEnvelope};
pub use transmit::Transmit;

pub use commit::WriteClass;
use commit::{After, CommitGate, Deferred, Released};
pub use identity::IdentityLimits;
use identity::{ConflictGuard, Verdict};
pub use limits::{Limits, Ttl};
pub use persist::{
    CommitId, Restored, Snapshot, SnapshotError, StoreOp, StoredAnnouncement, StoredControl,
    StoredEnvelope,
};
pub use queue::ItemState;
use queue::{ControlFrame, Endpoint, ItemKey, Usage};
pub use reconfigure::Reconfigured;

/// Identifies one QUIC connection for its lifetime; never reused by a shell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Why a hotline configuration was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouterConfigError {
    /// A hotline pairs an endpoint with itself.
    #[error("hotline {0}:{0} pairs an endpoint with itself")]
    SelfPaired(EndpointId),
    /// No hotline is configured at all.
    #[error("no hotline configured")]
    NoHotlines,
    /// The queue bound is zero.
    #[error("max_queue_bytes_per_endpoint must be greater than zero")]
    ZeroQueueBound,
    /// The global budget is zero.
    #[error("max_queued_bytes_total must be greater than zero")]
    ZeroBudget,
}

/// Why a connection was not registered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// The endpoint is in no configured hotline.
    #[error("endpoint {0} is in no configured hotline")]
    NotConfigured(EndpointId),
    /// The shell reused a connection id (a bug in the shell).
    #[error("connection id {0} is already registered")]
    DuplicateConn(ConnId),
    /// The identity flapped between connections; its live connection is kept and newcomers are
    /// refused for a while.
    #[error("endpoint {endpoint} is in use by connection {kept}; newcomers refused until {}", until.0)]
    IdentityInUse {
        /// The identity.
        endpoint: EndpointId,
        /// The live connection that is kept.
        kept: ConnId,
        /// Newcomers are refused until then (wall clock).
        until: Time,
    },
}

/// Something the shell must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Commit these operations durably, then report `write` with
    /// [`Router::handle_persisted_writes`] (or [`Router::handle_persisted`] with it or a later
    /// id). Writes of one class commit in emission order; an urgent write may commit before an
    /// earlier bulk one, never after a later one (see [`WriteClass`]).
    Persist {
        /// Which write.
        write: CommitId,
        /// Which commit queue it goes to.
        class: WriteClass,
        /// What to change, in order.
        ops: Vec<StoreOp>,
    },
    /// Frames are ready on this stream: wake its writer.
    Wake {
        /// Which connection.
        conn: ConnId,
        /// Which of its streams.
        stream: Lane,
    },
    /// Close this connection: a newer connection with the same identity took its place (an
    /// identity conflict; two nodes may share one identity).
    Close {
        /// Which connection.
        conn: ConnId,
        /// The newcomer that displaced it.
        by: ConnId,
    },
    /// A refusal was queued (already logged; for metrics).
    Refused {
        /// The connection that is told, if the refusal answers a frame; `None` for an
        /// `Expired` refusal, which waits for its sender to be online.
        conn: Option<ConnId>,
        /// Why.
        code: RefusalCode,
    },
    /// Read the frame of queued envelope row `order` (for `destination`'s `lane` writer) back
    /// from the store and hand it to [`Router::handle_loaded`]; `None` if the row is gone.
    Load {
        /// The envelope's destination.
        destination: EndpointId,
        /// The lane whose writer waits for it.
        lane: Precedence,
        /// Its row key (arrival order).
        order: u64,
    },
    /// An envelope on a configured hotline was refused (`Overloaded`, or `Expired` after it was
    /// queued), emitted besides its [`Output::Refused`]; for the per-hotline metrics. Refusals
    /// of envelopes that name no partner of their sender are not: their labels would come from
    /// the network.
    EnvelopeRefused {
        /// Its sender.
        sender: EndpointId,
        /// Its recipient, a partner of `sender`.
        recipient: EndpointId,
        /// The lane it travelled on.
        transport: Precedence,
        /// Why.
        code: RefusalCode,
    },
    /// A frame arrived on a stream other than its own and was refused (already logged and
    /// answered with `Refused{Malformed}`, also counted as [`Output::Refused`]; for metrics).
    WrongStream {
        /// The connection that sent it.
        conn: ConnId,
        /// The stream the frame belongs on.
        expected: Lane,
        /// The stream it arrived on.
        arrived: Lane,
    },
}

/// Totals for metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Registered connections.
    pub connections: u64,
    /// Frames queued per stream, by [`Lane::index`].
    pub queued_frames: [u64; Lane::COUNT],
    /// Bytes queued per stream, by [`Lane::index`].
    pub queued_bytes: [u64; Lane::COUNT],
    /// Bytes of queued envelopes also held in memory.
    pub in_memory_bytes: u64,
}

/// The routing and queueing state of a relay. See the module docs for the rules.
#[derive(Debug)]
pub struct Router {
    limits: Limits,
    endpoints: BTreeMap<EndpointId, Endpoint>,
    conns: BTreeMap<ConnId, EndpointId>,
    /// Identity conflicts seen, per endpoint that had one.
    conflicts: BTreeMap<EndpointId, ConflictGuard>,
    /// Arrival order of the next new envelope (its store row key).
    next_order: u64,
    /// Store row key of the next durable control frame.
    next_control: u64,
    outputs: VecDeque<Output>,
    /// Store operations of the current input, emitted as one write when it returns.
    staged: Vec<StoreOp>,
    /// Envelope rows put by writes not yet committed: where the item is, so it can leave
    /// memory once the store has it.
    uncommitted_puts: HashMap<u64, (EndpointId, ItemKey)>,
    /// The connection and stream whose frame is the current input, if it is one.
    source: Option<(ConnId, Lane)>,
    /// Issued and committed writes, and the frames that wait for them.
    commits: CommitGate,
    /// Queued envelopes by expiry time, then arrival order.
    expiries: BTreeMap<(Time, u64), (EndpointId, ItemKey)>,
    /// Queued envelope bytes per sender and in total, against the global budget.
    usage: Usage,
}

impl Router {
    /// A router for these hotlines (pairs of endpoints; an endpoint may be in several).
    pub fn new(
        hotlines: &[(EndpointId, EndpointId)],
        limits: Limits,
    ) -> Result<Self, RouterConfigError> {
        if hotlines.is_empty() {
            return Err(RouterConfigError::NoHotlines);
        }
        if limits.max_queue_bytes == 0 {
            return Err(RouterConfigError::ZeroQueueBound);
        }
        if limits.max_queued_bytes_total == 0 {
            return Err(RouterConfigError::ZeroBudget);
        }
        let mut endpoints = BTreeMap::<EndpointId, Endpoint>::new();
        for (a, b) in hotlines {
            if a == b {
                return Err(RouterConfigError::SelfPaired(a.clone()));
            }
            endpoints
                .entry(a.clone())
                .or_default()
                .partners
                .insert(b.clone());
            endpoints
                .entry(b.clone())
                .or_default()
                .partners
                .insert(a.clone());
        }
        Ok(Self {
            limits,
            endpoints,
            conns: BTreeMap::new(),
            conflicts: BTreeMap::new(),
            next_order: 0,
            next_control: 0,
            outputs: VecDeque::new(),
            staged: Vec::new(),
            uncommitted_puts: HashMap::new(),
            source: None,
            commits: CommitGate::default(),
            expiries: BTreeMap::new(),
            usage: Usage::default(),
        })
    }

    /// Whether `endpoint` is in some configured hotline.
    pub fn is_configured(&self, endpoint: &EndpointId) -> bool {
        self.endpoints
            .get(endpoint)
            .is_some_and(|e| !e.partners.is_empty())
    }

    /// Whether `a` and `b` share a configured hotline.
    pub fn is_paired(&self, a: &EndpointId, b: &EndpointId) -> bool {
        self.endpoints
            .get(a)
            .is_some_and(|e| e.partners.contains(b))
    }

    /// The endpoint behind a registered connection.
    pub fn endpoint_of(&self, conn: ConnId) -> Option<&EndpointId> {
        self.conns.get(&conn)
    }

    /// The live connection of `endpoint`, if any.
    pub fn connection_of(&self, endpoint: &EndpointId) -> Option<ConnId> {
        self.endpoints.get(endpoint).and_then(|e| e.conn)
    }

    /// `endpoint` connected as `conn` (after the hello exchange) at wall-clock time `now`.
    /// Displaces (and asks the shell to close) a live connection of the same identity, unless
    /// that identity flaps: then `conn` is refused ([`ConnectError::IdentityInUse`]) and the
    /// live one kept. Queues presence and the partners' announcements for it; makes everything
    /// queued for it eligible to be written again.
    pub fn handle_connected(
        &mut self,
        now: Time,
        conn: ConnId,
        endpoint: EndpointId,
    ) -> Result<(), ConnectError> {
        if self.conns.contains_key(&conn) {
            return Err(ConnectError::DuplicateConn(conn));
        }
        let Some(ep) = self
            .endpoints
            .get_mut(&endpoint)
            .filter(|e| !e.partners.is_empty())
        else {
            return Err(ConnectError::NotConfigured(endpoint));
        };
        if let Some(old) = ep.conn {
            let guard = self.conflicts.entry(endpoint.clone()).or_default();
            match guard.on_conflict(now, &self.limits.identity) {
                Verdict::Refuse { until } => {
                    return Err(ConnectError::IdentityInUse {
                        endpoint,
                        kept: old,
                        until,
                    });
                }
                Verdict::Displace => {
                    self.conns.remove(&old);
                    self.outputs.push_back(Output::Close {
                        conn: old,
                        by: conn,
                    });
                }
            }
        }
        ep.conn = Some(conn);
        self.conns.insert(conn, endpoint.clone());
        ep.rewind();
        let partners: Vec<EndpointId> = ep.partners.iter().cloned().collect();

        // What the new connection learns first: each partner's presence, then its announcement,
        // then whatever receipts and notices waited for it.
        let mut greeting = Vec::new();
        for p in &partners {
            let online = self.endpoints.get(p).is_some_and(|e| e.conn.is_some());
            greeting.push(encode(&Frame::Presence(Presence {
                endpoint: p.clone(),
                online,
            })));
        }
        for p in &partners {
            if let Some((_, ann)) = self.endpoints.get(p).and_then(|e| e.announcement.as_ref()) {
                greeting.push(ann.clone());
            }
        }
        if let Some(ep) = self.endpoints.get_mut(&endpoint) {
            for bytes in greeting.into_iter().rev() {
                // Presence and announcements describe the new connection: they go first.
                ep.push_urgent_front(ControlFrame {
                    bytes,
                    keep_offline: false,
                    stored: None,
                });
            }
        }
        for stream in Lane::ALL {
            self.outputs.push_back(Output::Wake { conn, stream });
        }
        self.tell_partners_presence(&endpoint, &partners, true);
        debug!(peer = %endpoint, conn = %conn, "registered");
        Ok(())
    }

    /// `conn` is gone. Ignored if it was already replaced.
    pub fn handle_disconnected(&mut self, conn: ConnId) {
        let Some(endpoint) = self.conns.remove(&conn) else {
            return;
        };
        let Some(ep) = self.endpoints.get_mut(&endpoint) else {
            return;
        };
        if ep.conn != Some(conn) {
            return;
        }
        ep.conn = None;
        ep.drop_session_frames();
        let partners: Vec<EndpointId> = ep.partners.iter().cloned().collect();
        self.tell_partners_presence(&endpoint, &partners, false);
        debug!(peer = %endpoint, conn = %conn, "unregistered");
    }

    /// One whole frame (length prefix included) arrived on `stream` of `conn` at wall-clock time
    /// `now`. Frames from a connection that is not registered (already replaced or closed) are
    /// ignored; a frame on the wrong stream is refused (see [`Output::WrongStream`]). Decodes
    /// it first: a shell that shares the router between tasks decodes outside its lock with
    /// [`Decoded::new`] and calls [`Router::handle_decoded`].
    pub fn handle_frame(&mut self, now: Time, conn: ConnId, stream: Lane, bytes: Bytes) {
        self.handle_decoded(now, conn, stream, Decoded::new(bytes));
    }

    /// [`Router::handle_frame`] for a frame already decoded.
    pub fn handle_decoded(&mut self, now: Time, conn: ConnId, stream: Lane, decoded: Decoded) {
        self.source = Some((conn, stream));
        self.route_frame(now, conn, stream, decoded);
        self.flush();
        self.source = None;
    }

    fn route_frame(&mut self, now: Time, conn: ConnId, stream: Lane, decoded: Decoded) {
        let Some(from) = self.conns.get(&conn).cloned() else {
            debug!(conn = %conn, "frame from an unregistered connection ignored");
            return;
        };
        let Decoded { bytes, frame } = decoded;
        let frame = match frame {
            Ok(frame) => frame,
            Err(detail) => {
                self.refuse(conn, &from, None, RefusalCode::Malformed, detail);
                return;
            }
        };
        if let Some(expected) = frames::expected_stream(&frame) {
            if expected != stream {
                self.refuse_wrong_stream(conn, &from, &frame, expected, stream);
                return;
            }
        }
        match frame {
            Frame::Hello(_) => debug!(peer = %from, "repeated hello ignored"),
            Frame::Envelope(env) => self.handle_envelope(now, conn, &from, env, bytes),
            Frame::Receipt(r) => self.handle_receipt(conn, &from, &r, bytes),
            Frame::Escalation(n) => self.handle_escalation(conn, &from, &n, bytes),
            Frame::Announcement(a) => {
                let endpoint = a.body.endpoint.clone();
                let order = (a.body.incarnation, a.body.epoch);
                self.handle_announcement(conn, &from, &endpoint, order, bytes);
            }
            Frame::LinkTest(l) => self.handle_link_test(conn, &from, &l, bytes),
            Frame::Accepted(_) | Frame::Refused(_) | Frame::Presence(_) => {
                let detail = "relay-to-node frame sent by a node".to_owned();
                self.refuse(conn, &from, None, RefusalCode::Malformed, detail);
            }
        }
    }

    /// Writes up to and including `write` are durable: releases the frames that waited for them
    /// (`Accepted` replies, `Expired` refusals, deletions of control frames already written), by
    /// write, in order.
    pub fn handle_persisted(&mut self, write: CommitId) {
        let released = self.commits.handle_persisted(write);
        self.after_persisted(released);
    }

    /// Exactly `writes` are durable (one group commit: each class in issue order): releases the
    /// frames that waited for them, by write, in order.
    pub fn handle_persisted_writes(&mut self, writes: &[CommitId]) {
        let released = self.commits.handle_persisted_writes(writes);
        self.after_persisted(released);
    }

    /// Sends what waited for a commit, and lets what the store now holds leave memory if
    /// memory is over its window.
    fn after_persisted(&mut self, released: Released) {
        for frame in released.frames {
            self.release(frame);
        }
        for row in released.rows {
            if let Some((destination, key)) = self.uncommitted_puts.remove(&row) {
                self.cool(&destination, &key, row);
            }
        }
        // Deletions of control frames written before their put committed.
        self.flush();
    }

    /// When [`Router::handle_timeout`] has something to do: the earliest expiry of a queued
    /// envelope, if any.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Time> {
        self.expiries.keys().next().map(|(at, _)| *at)
    }

    /// Wall-clock time is `now`: every queued envelope whose time-to-live has run out is freed,
    /// and its sender told `Refused{Expired}` (stored, so an offline sender hears it later).
    pub fn handle_timeout(&mut self, now: Time) {
        while let Some(entry) = self.expiries.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let ((at, order), (destination, key)) = entry.remove_entry();
            self.expire(at, order, &destination, &key);
        }
        self.flush();
    }

    /// The next thing the shell must do.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// Queues `frame` now if the write it depends on (`after`) has committed, or when it does.
    fn after_commit(&mut self, after: After, frame: Deferred) {
        let staging = !self.staged.is_empty();
        if let Some(frame) = self.commits.after_commit(staging, after, frame) {
            self.release(frame);
        }
    }

    fn release(&mut self, frame: Deferred) {
        match frame {
            Deferred::Reply { conn, to, bytes } => self.reply(conn, &to, bytes),
            Deferred::Control { to, frame } => self.push_control(&to, frame),
            Deferred::DeleteControl { key } => self.staged.push(StoreOp::DeleteControl { key }),
        }
    }

    /// Emits what the current input staged as one write.
    fn flush(&mut self) {
        if self.staged.is_empty() {
            return;
        }
        let (write, class) = self.commits.issue(&self.staged, self.source);
        self.outputs.push_back(Output::Persist {
            write,
            class,
            ops: std::mem::take(&mut self.staged),
        });
    }
}

fn encode(frame: &Frame) -> Bytes {
    Bytes::from(wire::encode_frame(frame))
}

fn len(bytes: &Bytes) -> u64 {
    bytes.len() as u64
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_props;
