//! The relay's routing and queueing state machine, sans IO.
//!
//! [`Router`] decides where every frame goes, what stays queued and what must be made durable.
//! It never touches a socket, a file, a task or the clock: the shell ([`crate::Server`]) feeds it
//! inputs and carries out its outputs, so every routing rule is tested here without QUIC or
//! disk.
//!
//! - Inputs: [`Router::restore`] (once, at startup, from the store), [`Router::handle_connected`],
//!   [`Router::handle_disconnected`], [`Router::handle_frame`] (whole frames, length prefix
//!   included, exactly as read, with the wall-clock time), [`Router::handle_written`] (the shell
//!   handed a [`Transmit`] to its stream), [`Router::handle_persisted`] (a write committed) and
//!   [`Router::handle_timeout`].
//! - Outputs: [`Router::poll_transmit`] (the next frame for one stream of one connection; the
//!   shell's one writer per stream pulls it only when it can write), [`Router::poll_output`]
//!   ([`Output::Persist`] a batch of store operations, [`Output::Wake`] a writer,
//!   [`Output::Close`] a replaced connection, [`Output::Refused`] for metrics) and
//!   [`Router::poll_timeout`] (when to call [`Router::handle_timeout`]).
//!
//! Contract, as in quinn-proto: after any `handle_*` call drain [`Router::poll_output`] in order,
//! then re-arm the timer from [`Router::poll_timeout`]; an early `handle_timeout` does nothing.
//! Commit the [`Output::Persist`] writes in the order they were emitted.
//!
//! Routing rules (see `DESIGN.md`, "Delivery" and "Durability"):
//! - An envelope must name the connection's identity as sender ([`RefusalCode::SenderMismatch`])
//!   and one of its partners as recipient ([`RefusalCode::NotPaired`]). It is queued per
//!   destination and per *transport* lane in arrival order, deduplicated by
//!   (sender, recipient, channel, precedence, seq); a duplicate with a higher transport moves the
//!   queued copy to that lane and makes it eligible to be written again.
//! - Durability: every change to what is queued is emitted as an [`Output::Persist`]. The sender
//!   gets [`Frame::Accepted`] with `durable: true` only once the write that holds the envelope
//!   (and every write before it) has committed; a duplicate's `Accepted` waits for every write
//!   issued so far. Receipts, escalation notices and `Expired` refusals are stored before they
//!   are forwarded, so a sender that sees a `Delivered` receipt knows the covered envelopes are
//!   durably gone from the relay.
//! - A queued envelope is deleted only when a `Delivered` receipt covering it passes through, or
//!   when its time-to-live ([`Ttl`], per transport lane, counted from its first arrival) runs
//!   out: then its sender is told `Refused{Expired}` (and keeps the message).
//!   On every (re)connection of its destination, everything still queued is written again.
//! - Receipts and escalation notices go to their addressee's control stream and wait there
//!   while it is offline; link tests are forwarded only to an online partner; the latest
//!   announcement per endpoint is kept and replayed to its partners when they connect;
//!   presence changes go to online partners.
//! - Overload: past `max_queue_bytes` queued for one destination, `routine` is refused with
//!   [`RefusalCode::Overloaded`]; `priority` and `immediate` past 125 %, `flash`, receipts and
//!   escalation notices past 150 %. Nothing is dropped without telling its sender.
//!
//! Invariant: for each destination, every queued envelope is in exactly one lane, and is listed
//! as unwritten in that lane exactly when its state is [`ItemState::Unwritten`]; queued byte
//! counts equal the sum of the queued frames' lengths; every queued envelope with a time-to-live
//! is in the expiry index exactly once.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::time::Duration;

use bytes::Bytes;
pub use hotline_proto::Lane;
use hotline_proto::envelope::{EscalationNotice, Header, LinkTest, Receipt, ReceiptKind, Signed};
use hotline_proto::wire::{self, Accepted, EnvelopeFrame, Frame, Presence, Refusal, RefusalCode};
use hotline_proto::{Channel, EndpointId, MessageId, Precedence, Seq, Time};
use tracing::{debug, info, trace, warn};

mod persist;

pub use persist::{
    CommitId, Restored, Snapshot, SnapshotError, StoreOp, StoredAnnouncement, StoredControl,
    StoredEnvelope,
};

/// Identifies one QUIC connection for its lifetime; never reused by a shell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Per-destination queue bounds and time-to-live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Bytes queued for one destination (envelopes plus control frames) past which `routine`
    /// envelopes are refused; other precedences get 125 % and 150 % of it.
    pub max_queue_bytes: u64,
    /// How long a queued envelope is held, per transport lane.
    pub ttl: Ttl,
}

impl Limits {
    /// Default per-destination bound: 256 MiB.
    pub const DEFAULT_MAX_QUEUE_BYTES: u64 = 256 * 1024 * 1024;

    /// The bound that applies to an envelope on `transport`.
    pub fn bound(&self, transport: Precedence) -> u64 {
        let b = self.max_queue_bytes;
        match transport {
            Precedence::Routine => b,
            Precedence::Priority | Precedence::Immediate => b.saturating_add(b / 4),
            Precedence::Flash => self.control_bound(),
        }
    }

    /// The bound for receipts and escalation notices waiting for their addressee: 150 %.
    pub fn control_bound(&self) -> u64 {
        self.max_queue_bytes
            .saturating_add(self.max_queue_bytes / 2)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_queue_bytes: Self::DEFAULT_MAX_QUEUE_BYTES,
            ttl: Ttl::default(),
        }
    }
}

/// How long the relay holds a queued envelope for an absent destination, per *transport* lane,
/// counted from the envelope's first arrival. When it runs out the relay frees the space and
/// tells the sender `Refused{Expired}`; the sender keeps the message and offers it again later.
/// `None` holds it until it is delivered.
///
/// Defaults: `routine` 1 day, `priority` 2 days, `immediate` 3 days, `flash` 7 days.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ttl {
    /// For envelopes on the `routine` lane.
    pub routine: Option<Duration>,
    /// For envelopes on the `priority` lane.
    pub priority: Option<Duration>,
    /// For envelopes on the `immediate` lane.
    pub immediate: Option<Duration>,
    /// For envelopes on the `flash` lane.
    pub flash: Option<Duration>,
}

impl Ttl {
    /// Default for `routine`: one day.
    pub const DEFAULT_ROUTINE: Duration = Duration::from_secs(24 * 3600);
    /// Default for `priority`: two days.
    pub const DEFAULT_PRIORITY: Duration = Duration::from_secs(2 * 24 * 3600);
    /// Default for `immediate`: three days.
    pub const DEFAULT_IMMEDIATE: Duration = Duration::from_secs(3 * 24 * 3600);
    /// Default for `flash`: seven days.
    pub const DEFAULT_FLASH: Duration = Duration::from_secs(7 * 24 * 3600);

    /// Nothing ever expires.
    pub const NEVER: Self = Self {
        routine: None,
        priority: None,
        immediate: None,
        flash: None,
    };

    /// The time-to-live of an envelope on `lane`.
    pub fn for_lane(&self, lane: Precedence) -> Option<Duration> {
        match lane {
            Precedence::Routine => self.routine,
            Precedence::Priority => self.priority,
            Precedence::Immediate => self.immediate,
            Precedence::Flash => self.flash,
        }
    }
}

impl Default for Ttl {
    fn default() -> Self {
        Self {
            routine: Some(Self::DEFAULT_ROUTINE),
            priority: Some(Self::DEFAULT_PRIORITY),
            immediate: Some(Self::DEFAULT_IMMEDIATE),
            flash: Some(Self::DEFAULT_FLASH),
        }
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
}

/// Something the shell must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Commit these operations durably (in emission order, possibly together with neighbouring
    /// writes), then call [`Router::handle_persisted`] with `write` or a later id.
    Persist {
        /// Which write.
        write: CommitId,
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
    /// Close this connection: a newer connection with the same identity replaced it.
    Close {
        /// Which connection.
        conn: ConnId,
        /// Why, in words.
        reason: &'static str,
    },
    /// A refusal was queued (already logged; for metrics).
    Refused {
        /// The connection that is told, if the refusal answers a frame; `None` for an
        /// `Expired` refusal, which waits for its sender to be online.
        conn: Option<ConnId>,
        /// Why.
        code: RefusalCode,
    },
}

/// One frame for one stream, from [`Router::poll_transmit`]. Hand it back to
/// [`Router::handle_written`] once written.
#[derive(Clone, Debug)]
pub struct Transmit {
    /// The frame, length prefix included, byte for byte as it arrived (or as the relay made it).
    pub bytes: Bytes,
    stream: Lane,
    item: Option<(ItemKey, u64)>,
}

impl Transmit {
    /// The stream it goes to.
    pub fn stream(&self) -> Lane {
        self.stream
    }
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
}

/// Whether a queued envelope still has to be written to its destination's current connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ItemState {
    /// Waiting for its lane writer.
    Unwritten,
    /// Taken by the lane writer, not yet reported written.
    InFlight,
    /// Written to the current connection; kept until a `Delivered` receipt covers it.
    Written,
}

/// A queued envelope as seen from outside (tests, status).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedEnvelope {
    /// The message.
    pub id: MessageId,
    /// The lane it is scheduled on.
    pub transport: Precedence,
    /// Where it stands.
    pub state: ItemState,
    /// When it first arrived (wall clock).
    pub queued_at: Time,
    /// When its time-to-live runs out, if it has one.
    pub expires_at: Option<Time>,
}

/// The routing and queueing state of a relay. See the module docs for the rules.
#[derive(Debug)]
pub struct Router {
    limits: Limits,
    endpoints: BTreeMap<EndpointId, Endpoint>,
    conns: BTreeMap<ConnId, EndpointId>,
    /// Arrival order of the next new envelope (its store row key).
    next_order: u64,
    /// Store row key of the next durable control frame.
    next_control: u64,
    outputs: VecDeque<Output>,
    /// Store operations of the current input, emitted as one write when it returns.
    staged: Vec<StoreOp>,
    /// The last [`CommitId`] emitted.
    issued: u64,
    /// The last [`CommitId`] reported committed.
    committed: u64,
    /// Frames that may leave only once the write numbered with them has committed.
    deferred: VecDeque<(u64, Deferred)>,
    /// Per write issued and not yet committed: the envelope bytes it puts, per lane.
    uncommitted: VecDeque<(u64, [u64; 4])>,
    /// The sum of `uncommitted`, per lane.
    uncommitted_bytes: [u64; 4],
    /// Queued envelopes by expiry time, then arrival order.
    expiries: BTreeMap<(Time, u64), (EndpointId, ItemKey)>,
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
            next_order: 0,
            next_control: 0,
            outputs: VecDeque::new(),
            staged: Vec::new(),
            issued: 0,
            committed: 0,
            deferred: VecDeque::new(),
            uncommitted: VecDeque::new(),
            uncommitted_bytes: [0; 4],
            expiries: BTreeMap::new(),
        })
    }

    /// Loads what a store held, before any connection: queued envelopes go back to their lanes
    /// in arrival order (all unwritten), control frames back to their addressees' queues in key
    /// order, announcements back in place. Rows for endpoints that are in no configured hotline
    /// are left in the store, unserved, and reported. Expired envelopes expire at the next
    /// [`Router::handle_timeout`].
    pub fn restore(&mut self, snapshot: Snapshot) -> Result<Restored, SnapshotError> {
        if !self.conns.is_empty()
            || self.issued != 0
            || self.next_order != 0
            || self.next_control != 0
            || self.endpoints.values().any(|e| e.announcement.is_some())
        {
            return Err(SnapshotError::NotFresh);
        }
        let Snapshot {
            mut envelopes,
            mut control,
            announcements,
        } = snapshot;
        envelopes.sort_by_key(|e| e.order);
        control.sort_by_key(|c| c.key);
        let mut restored = Restored::default();
        let mut unconfigured = BTreeMap::<EndpointId, usize>::new();
        let ttl = self.limits.ttl;

        for stored in envelopes {
            let StoredEnvelope {
                order,
                destination,
                lane,
                queued_at,
                bytes,
            } = stored;
            self.next_order = self.next_order.max(order.saturating_add(1));
            let header = match wire::decode_frame(&bytes) {
                Ok((Frame::Envelope(e), used)) if used == bytes.len() => e.envelope.header,
                Ok(_) => return Err(SnapshotError::NotAnEnvelope { order }),
                Err(source) => return Err(SnapshotError::Undecodable { order, source }),
            };
            if header.recipient != destination {
                return Err(SnapshotError::Misaddressed {
                    order,
                    recipient: header.recipient,
                    destination,
                });
            }
            let Some(dest) = self.endpoints.get_mut(&destination) else {
                *unconfigured.entry(destination).or_default() += 1;
                continue;
            };
            let key = ItemKey::of(&header);
            if let Some(first) = dest.items.get(&key) {
                return Err(SnapshotError::DuplicateEnvelope {
                    first: first.order,
                    second: order,
                });
            }
            let expires_at = ttl.for_lane(lane).map(|t| queued_at.plus(t));
            if let Some(at) = expires_at {
                self.expiries
                    .insert((at, order), (destination.clone(), key.clone()));
            }
            dest.insert(key, lane, order, queued_at, expires_at, bytes);
            restored.envelopes += 1;
        }
        for stored in control {
            self.next_control = self.next_control.max(stored.key.saturating_add(1));
            let Some(ep) = self.endpoints.get_mut(&stored.addressee) else {
                *unconfigured.entry(stored.addressee).or_default() += 1;
                continue;
            };
            ep.push_control_back(ControlFrame {
                bytes: stored.bytes,
                keep_offline: true,
                stored: Some(stored.key),
            });
            restored.control += 1;
        }
        for stored in announcements {
            let Some(ep) = self.endpoints.get_mut(&stored.endpoint) else {
                *unconfigured.entry(stored.endpoint).or_default() += 1;
                continue;
            };
            ep.announcement = Some((stored.epoch, stored.bytes));
            restored.announcements += 1;
        }
        restored.unconfigured = unconfigured.into_iter().collect();
        Ok(restored)
    }

    /// Whether `endpoint` is in some configured hotline.
    pub fn is_configured(&self, endpoint: &EndpointId) -> bool {
        self.endpoints.contains_key(endpoint)
    }

    /// Number of configured endpoints.
    pub fn endpoint_count(&self) -> usize {
        self.endpoints.len()
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

    /// `endpoint` connected as `conn` (after the hello exchange). Replaces (and asks the shell to
    /// close) an older connection of the same identity; queues presence and the partners'
    /// announcements for it; makes everything queued for it eligible to be written again.
    pub fn handle_connected(
        &mut self,
        conn: ConnId,
        endpoint: EndpointId,
    ) -> Result<(), ConnectError> {
        if self.conns.contains_key(&conn) {
            return Err(ConnectError::DuplicateConn(conn));
        }
        let Some(ep) = self.endpoints.get_mut(&endpoint) else {
            return Err(ConnectError::NotConfigured(endpoint));
        };
        if let Some(old) = ep.conn.replace(conn) {
            self.conns.remove(&old);
            self.outputs.push_back(Output::Close {
                conn: old,
                reason: "replaced by a newer connection with the same identity",
            });
        }
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

    /// One whole frame (length prefix included) arrived on `conn` at wall-clock time `now`.
    /// Frames from a connection that is not registered (already replaced or closed) are ignored.
    pub fn handle_frame(&mut self, now: Time, conn: ConnId, bytes: Bytes) {
        self.route_frame(now, conn, bytes);
        self.flush();
    }

    fn route_frame(&mut self, now: Time, conn: ConnId, bytes: Bytes) {
        let Some(from) = self.conns.get(&conn).cloned() else {
            debug!(conn = %conn, "frame from an unregistered connection ignored");
            return;
        };
        let frame = match wire::decode_frame(&bytes) {
            Ok((frame, used)) if used == bytes.len() => frame,
            Ok((_, used)) => {
                let detail = format!("{} bytes after the frame", bytes.len() - used);
                self.refuse(conn, &from, None, RefusalCode::Malformed, detail);
                return;
            }
            Err(e) => {
                self.refuse(conn, &from, None, RefusalCode::Malformed, e.to_string());
                return;
            }
        };
        match frame {
            Frame::Hello(_) => debug!(peer = %from, "repeated hello ignored"),
            Frame::Envelope(env) => self.handle_envelope(now, conn, &from, env, bytes),
            Frame::Receipt(r) => self.handle_receipt(conn, &from, &r, bytes),
            Frame::Escalation(n) => self.handle_escalation(conn, &from, &n, bytes),
            Frame::Announcement(a) => {
                let (endpoint, epoch) = (a.body.endpoint.clone(), a.body.epoch);
                self.handle_announcement(conn, &from, &endpoint, epoch, bytes);
            }
            Frame::LinkTest(l) => self.handle_link_test(conn, &from, &l, bytes),
            Frame::Accepted(_) | Frame::Refused(_) | Frame::Presence(_) => {
                let detail = "relay-to-node frame sent by a node".to_owned();
                self.refuse(conn, &from, None, RefusalCode::Malformed, detail);
            }
        }
    }

    /// The next frame for `stream` of `conn`, if any. Envelopes are taken in arrival order per
    /// lane; the caller calls this only when it is ready to write, which bounds write-ahead.
    #[must_use]
    pub fn poll_transmit(&mut self, conn: ConnId, stream: Lane) -> Option<Transmit> {
        let endpoint = self.conns.get(&conn)?;
        let ep = self.endpoints.get_mut(endpoint)?;
        match stream {
            Lane::Control => {
                if ep.control_in_flight.is_some() {
                    return None;
                }
                let frame = ep.pop_control()?;
                let bytes = frame.bytes.clone();
                ep.control_in_flight = Some(frame);
                Some(Transmit {
                    bytes,
                    stream,
                    item: None,
                })
            }
            Lane::Precedence(lane) => loop {
                let (order, key) = ep.unwritten[lane.index()].pop_first()?;
                let Some(item) = ep.items.get_mut(&key) else {
                    // The index only lists queued items; tolerate a stale entry all the same.
                    continue;
                };
                item.state = ItemState::InFlight;
                return Some(Transmit {
                    bytes: item.bytes.clone(),
                    stream,
                    item: Some((key, order)),
                });
            },
        }
    }

    /// The shell wrote `transmit` to `conn`'s stream.
    pub fn handle_written(&mut self, conn: ConnId, transmit: Transmit) {
        let Some(endpoint) = self.conns.get(&conn) else {
            return;
        };
        let Some(ep) = self.endpoints.get_mut(endpoint) else {
            return;
        };
        match transmit.item {
            None => {
                if let Some(frame) = ep.control_in_flight.take() {
                    ep.control_bytes -= len(&frame.bytes);
                    if let Some(key) = frame.stored {
                        self.staged.push(StoreOp::DeleteControl { key });
                    }
                }
                if ep.control_len() > 0 {
                    self.outputs.push_back(Output::Wake {
                        conn,
                        stream: Lane::Control,
                    });
                }
            }
            Some((key, order)) => {
                if let Some(item) = ep.items.get_mut(&key) {
                    // An escalation meanwhile made it unwritten on a higher lane: leave it so.
                    if item.order == order && item.state == ItemState::InFlight {
                        item.state = ItemState::Written;
                    }
                }
            }
        }
        self.flush();
    }

    /// Writes up to and including `write` are durable: releases the frames that waited for them
    /// (`Accepted` replies, receipts, notices, `Expired` refusals), in order.
    pub fn handle_persisted(&mut self, write: CommitId) {
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
        while let Some((w, _)) = self.deferred.front() {
            if *w > self.committed {
                break;
            }
            if let Some((_, frame)) = self.deferred.pop_front() {
                self.release(frame);
            }
        }
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

    /// The last write reported committed.
    pub fn committed(&self) -> CommitId {
        CommitId(self.committed)
    }

    /// Bytes of envelopes arrived on `lane` whose write has not committed yet. The shell stops
    /// reading a lane while its own backlog is large, so a store slower than the network slows
    /// the senders of that lane (through QUIC flow control) instead of growing memory, and a
    /// lane never waits for another lane's backlog.
    pub fn uncommitted_bytes(&self, lane: Precedence) -> u64 {
        self.uncommitted_bytes[lane.index()]
    }

    /// Bytes waiting on (or being written to) `conn`'s control stream. The shell stops reading
    /// from a node whose own control backlog is large, so a node that never reads its replies
    /// cannot grow them without bound.
    pub fn control_backlog(&self, conn: ConnId) -> u64 {
        self.conns
            .get(&conn)
            .and_then(|e| self.endpoints.get(e))
            .map_or(0, |ep| ep.control_bytes)
    }

    /// Bytes queued for `endpoint`: envelopes on every lane plus control frames.
    pub fn queued_bytes(&self, endpoint: &EndpointId) -> u64 {
        self.endpoints
            .get(endpoint)
            .map_or(0, Endpoint::queued_bytes)
    }

    /// The envelopes queued for `endpoint`, in key order.
    pub fn queued_envelopes(&self, endpoint: &EndpointId) -> Vec<QueuedEnvelope> {
        let Some(ep) = self.endpoints.get(endpoint) else {
            return Vec::new();
        };
        ep.items
            .iter()
            .map(|(k, item)| QueuedEnvelope {
                id: k.message_id(),
                transport: item.lane,
                state: item.state,
                queued_at: item.queued_at,
                expires_at: item.expires_at,
            })
            .collect()
    }

    /// Totals for metrics.
    pub fn stats(&self) -> Stats {
        let mut stats = Stats {
            connections: self.conns.len() as u64,
            ..Stats::default()
        };
        for ep in self.endpoints.values() {
            for p in Precedence::ALL {
                let lane = Lane::Precedence(p).index();
                stats.queued_frames[lane] += ep.lane_frames[p.index()];
                stats.queued_bytes[lane] += ep.lane_bytes[p.index()];
            }
            let control = Lane::Control.index();
            stats.queued_frames[control] +=
                ep.control_len() as u64 + u64::from(ep.control_in_flight.is_some());
            stats.queued_bytes[control] += ep.control_bytes;
        }
        stats
    }

    fn handle_envelope(
        &mut self,
        now: Time,
        conn: ConnId,
        from: &EndpointId,
        frame: EnvelopeFrame,
        bytes: Bytes,
    ) {
        let header = &frame.envelope.header;
        let id = header.message_id();
        if &header.sender != from {
            let detail = format!(
                "envelope sender {} is not this connection's identity {from}",
                header.sender
            );
            self.refuse(conn, from, Some(id), RefusalCode::SenderMismatch, detail);
            return;
        }
        if !self.is_paired(from, &header.recipient) {
            let detail = format!("{} is not a partner of {from}", header.recipient);
            self.refuse(conn, from, Some(id), RefusalCode::NotPaired, detail);
            return;
        }
        let key = ItemKey::of(header);
        let recipient = header.recipient.clone();
        let transport = frame.transport;
        let limits = self.limits;
        let Some(dest) = self.endpoints.get_mut(&recipient) else {
            return;
        };
        let dest_conn = dest.conn;
        let outcome = if let Some(old) = dest.items.get(&key).map(|i| i.lane) {
            let escalated = if transport > old {
                dest.escalate(&key, transport, bytes.clone())
            } else {
                None
            };
            if let Some((order, queued_at, old_expiry)) = escalated {
                let expires_at = limits.ttl.for_lane(transport).map(|t| queued_at.plus(t));
                dest.set_expiry(&key, expires_at);
                if let Some(at) = old_expiry {
                    self.expiries.remove(&(at, order));
                }
                if let Some(at) = expires_at {
                    self.expiries
                        .insert((at, order), (recipient.clone(), key.clone()));
                }
                self.staged.push(StoreOp::PutEnvelope(StoredEnvelope {
                    order,
                    destination: recipient.clone(),
                    lane: transport,
                    queued_at,
                    bytes,
                }));
                trace!(peer = %from, %id, %old, new = %transport, "queued envelope escalated");
                Outcome::Queued
            } else {
                trace!(peer = %from, %id, "duplicate envelope already queued");
                Outcome::Duplicate
            }
        } else {
            let queued = dest.queued_bytes();
            let bound = limits.bound(transport);
            if queued.saturating_add(len(&bytes)) > bound {
                Outcome::Overloaded { queued, bound }
            } else {
                let order = self.next_order;
                self.next_order += 1;
                let expires_at = limits.ttl.for_lane(transport).map(|t| now.plus(t));
                dest.insert(
                    key.clone(),
                    transport,
                    order,
                    now,
                    expires_at,
                    bytes.clone(),
                );
                if let Some(at) = expires_at {
                    self.expiries.insert((at, order), (recipient.clone(), key));
                }
                self.staged.push(StoreOp::PutEnvelope(StoredEnvelope {
                    order,
                    destination: recipient.clone(),
                    lane: transport,
                    queued_at: now,
                    bytes,
                }));
                Outcome::Queued
            }
        };
        match outcome {
            Outcome::Overloaded { queued, bound } => {
                let detail = format!(
                    "{recipient} has {queued} bytes queued; {transport} is refused above {bound}"
                );
                self.refuse(conn, from, Some(id), RefusalCode::Overloaded, detail);
            }
            Outcome::Queued | Outcome::Duplicate => {
                if let (Outcome::Queued, Some(dest_conn)) = (&outcome, dest_conn) {
                    self.outputs.push_back(Output::Wake {
                        conn: dest_conn,
                        stream: Lane::Precedence(transport),
                    });
                }
                // The write that holds it (or, for a duplicate, every write so far) first.
                let reply = encode(&Frame::Accepted(Accepted { id, durable: true }));
                self.after_commit(Deferred::Reply {
                    conn,
                    to: from.clone(),
                    bytes: reply,
                });
            }
        }
    }

    fn handle_receipt(
        &mut self,
        conn: ConnId,
        from: &EndpointId,
        receipt: &Signed<Receipt>,
        bytes: Bytes,
    ) {
        let r = &receipt.body;
        let id = match r.kind {
            ReceiptKind::Delivered { upto, .. } => Some(MessageId {
                sender: r.to.clone(),
                channel: r.channel.clone(),
                precedence: r.precedence,
                seq: upto,
            }),
            ReceiptKind::Acknowledged { seq, .. } => Some(MessageId {
                sender: r.to.clone(),
                channel: r.channel.clone(),
                precedence: r.precedence,
                seq,
            }),
        };
        if !self.check_signer(conn, from, &r.from, id.clone(), "receipt")
            || !self.check_addressee(conn, from, &r.to, id.clone(), "receipt")
        {
            return;
        }
        if let ReceiptKind::Delivered { upto, .. } = r.kind {
            if let Some(ep) = self.endpoints.get_mut(from) {
                let removed = ep.remove_delivered(&r.to, &r.channel, r.precedence, upto);
                trace!(
                    peer = %from,
                    removed = removed.len(),
                    "delivered receipt released queued envelopes"
                );
                for (order, expires_at) in removed {
                    if let Some(at) = expires_at {
                        self.expiries.remove(&(at, order));
                    }
                    self.staged.push(StoreOp::DeleteEnvelope { order });
                }
            }
        }
        // Stored in the same write as the deletions, and forwarded only once it commits: a
        // sender that sees the receipt will not see the envelopes come back after a crash.
        self.forward_durable(conn, from, &r.to, id, bytes, "receipt");
    }

    fn handle_escalation(
        &mut self,
        conn: ConnId,
        from: &EndpointId,
        notice: &Signed<EscalationNotice>,
        bytes: Bytes,
    ) {
        let n = &notice.body;
        let id = Some(n.message.clone());
        if !self.check_signer(conn, from, &n.from, id.clone(), "escalation notice")
            || !self.check_addressee(conn, from, &n.to, id.clone(), "escalation notice")
        {
            return;
        }
        self.forward_durable(conn, from, &n.to, id, bytes, "escalation notice");
    }

    fn handle_announcement(
        &mut self,
        conn: ConnId,
        from: &EndpointId,
        endpoint: &EndpointId,
        epoch: u32,
        bytes: Bytes,
    ) {
        if !self.check_signer(conn, from, endpoint, None, "announcement") {
            return;
        }
        let Some(ep) = self.endpoints.get_mut(from) else {
            return;
        };
        if ep.announcement.as_ref().is_some_and(|(e, _)| *e > epoch) {
            debug!(peer = %from, epoch, "announcement older than the stored one ignored");
            return;
        }
        ep.announcement = Some((epoch, bytes.clone()));
        self.staged
            .push(StoreOp::PutAnnouncement(StoredAnnouncement {
                endpoint: from.clone(),
                epoch,
                bytes: bytes.clone(),
            }));
        let partners: Vec<EndpointId> = ep.partners.iter().cloned().collect();
        for p in partners {
            self.push_control(
                &p,
                ControlFrame {
                    bytes: bytes.clone(),
                    keep_offline: false,
                    stored: None,
                },
            );
        }
    }

    fn handle_link_test(
        &mut self,
        conn: ConnId,
        from: &EndpointId,
        link: &Signed<LinkTest>,
        bytes: Bytes,
    ) {
        let l = &link.body;
        if !self.check_signer(conn, from, &l.from, None, "link test")
            || !self.check_addressee(conn, from, &l.to, None, "link test")
        {
            return;
        }
        let limits = self.limits;
        let Some(dest) = self.endpoints.get(&l.to) else {
            return;
        };
        if dest.conn.is_none() {
            trace!(peer = %from, to = %l.to, "link test for an offline partner dropped");
            return;
        }
        if dest.queued_bytes().saturating_add(len(&bytes)) > limits.control_bound() {
            debug!(peer = %from, to = %l.to, "link test for an overloaded partner dropped");
            return;
        }
        self.push_control(
            &l.to,
            ControlFrame {
                bytes,
                keep_offline: false,
                stored: None,
            },
        );
    }

    fn check_signer(
        &mut self,
        conn: ConnId,
        from: &EndpointId,
        signer: &EndpointId,
        id: Option<MessageId>,
        what: &str,
    ) -> bool {
        if signer == from {
            return true;
        }
        let detail = format!("{what} signed as {signer} is not this connection's identity {from}");
        self.refuse(conn, from, id, RefusalCode::SenderMismatch, detail);
        false
    }

    fn check_addressee(
        &mut self,
        conn: ConnId,
        from: &EndpointId,
        to: &EndpointId,
        id: Option<MessageId>,
        what: &str,
    ) -> bool {
        if self.is_paired(from, to) {
            return true;
        }
        let detail = format!("{what} addressed to {to}, which is not a partner of {from}");
        self.refuse(conn, from, id, RefusalCode::NotPaired, detail);
        false
    }

    /// Queues a receipt or notice for `to`, online or not, within the control bound.
    fn forward_durable(
        &mut self,
        conn: ConnId,
        from: &EndpointId,
        to: &EndpointId,
        id: Option<MessageId>,
        bytes: Bytes,
        what: &str,
    ) {
        let bound = self.limits.control_bound();
        let queued = self.queued_bytes(to);
        if queued.saturating_add(len(&bytes)) > bound {
            let detail = format!("{to} has {queued} bytes queued; {what} refused above {bound}");
            self.refuse(conn, from, id, RefusalCode::Overloaded, detail);
            return;
        }
        self.store_control(to.clone(), bytes);
    }

    /// Stores a frame for `to` (online or not) and queues it to `to` once that write commits.
    fn store_control(&mut self, to: EndpointId, bytes: Bytes) {
        let key = self.next_control;
        self.next_control += 1;
        self.staged.push(StoreOp::PutControl(StoredControl {
            key,
            addressee: to.clone(),
            bytes: bytes.clone(),
        }));
        self.after_commit(Deferred::Control {
            to,
            frame: ControlFrame {
                bytes,
                keep_offline: true,
                stored: Some(key),
            },
        });
    }

    /// A queued envelope's time-to-live ran out: free it, tell its sender.
    fn expire(&mut self, at: Time, order: u64, destination: &EndpointId, key: &ItemKey) {
        let Some(dest) = self.endpoints.get_mut(destination) else {
            return;
        };
        // The index names exactly the queued items (the invariant); tolerate a stale entry.
        let current = dest
            .items
            .get(key)
            .is_some_and(|i| i.order == order && i.expires_at == Some(at));
        if !current {
            return;
        }
        let Some(item) = dest.remove(key) else {
            return;
        };
        self.staged.push(StoreOp::DeleteEnvelope { order });
        let id = key.message_id();
        let held = at.since(item.queued_at);
        info!(
            to = %destination,
            message_id = %id,
            lane = %item.lane,
            held_s = held.as_secs(),
            "queued envelope expired; telling its sender"
        );
        let detail = format!(
            "the relay held it {}s for {destination} on the {} lane, its time-to-live; \
             offer it again later",
            held.as_secs(),
            item.lane
        );
        let frame = encode(&Frame::Refused(Refusal {
            id: Some(id),
            code: RefusalCode::Expired,
            detail,
        }));
        // Always queued, whatever the sender's backlog: a refusal that frees an envelope must
        // not itself be refused.
        self.store_control(key.sender.clone(), frame);
        self.outputs.push_back(Output::Refused {
            conn: None,
            code: RefusalCode::Expired,
        });
    }

    /// Queues `frame` now if the writes it depends on have committed, or when they do. A frame
    /// depends on the write being staged by the current input, or on the last one issued.
    fn after_commit(&mut self, frame: Deferred) {
        let write = if self.staged.is_empty() {
            self.issued
        } else {
            self.issued + 1
        };
        if write <= self.committed {
            self.release(frame);
        } else {
            self.deferred.push_back((write, frame));
        }
    }

    fn release(&mut self, frame: Deferred) {
        match frame {
            Deferred::Reply { conn, to, bytes } => self.reply(conn, &to, bytes),
            Deferred::Control { to, frame } => self.push_control(&to, frame),
        }
    }

    /// Emits what the current input staged as one write.
    fn flush(&mut self) {
        if self.staged.is_empty() {
            return;
        }
        self.issued += 1;
        let mut lanes = [0u64; 4];
        for op in &self.staged {
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
        self.outputs.push_back(Output::Persist {
            write: CommitId(self.issued),
            ops: std::mem::take(&mut self.staged),
        });
    }

    fn tell_partners_presence(
        &mut self,
        endpoint: &EndpointId,
        partners: &[EndpointId],
        online: bool,
    ) {
        let frame = encode(&Frame::Presence(Presence {
            endpoint: endpoint.clone(),
            online,
        }));
        for p in partners {
            self.push_control(
                p,
                ControlFrame {
                    bytes: frame.clone(),
                    keep_offline: false,
                    stored: None,
                },
            );
        }
    }

    /// A reply to the connection that sent the frame.
    fn reply(&mut self, conn: ConnId, to: &EndpointId, bytes: Bytes) {
        if self.conns.get(&conn) == Some(to) {
            self.push_control(
                to,
                ControlFrame {
                    bytes,
                    keep_offline: false,
                    stored: None,
                },
            );
        }
    }

    fn refuse(
        &mut self,
        conn: ConnId,
        to: &EndpointId,
        id: Option<MessageId>,
        code: RefusalCode,
        detail: String,
    ) {
        let message_id = id.as_ref().map(ToString::to_string);
        if code == RefusalCode::Overloaded {
            // Load, not misbehaviour: counted in the metrics, and the sender is told.
            debug!(peer = %to, ?code, message_id = message_id.as_deref(), %detail, "refused");
        } else {
            warn!(peer = %to, ?code, message_id = message_id.as_deref(), %detail, "refused");
        }
        let frame = encode(&Frame::Refused(Refusal { id, code, detail }));
        self.reply(conn, to, frame);
        self.outputs.push_back(Output::Refused {
            conn: Some(conn),
            code,
        });
    }

    /// Appends to `to`'s control queue; frames that only make sense on a live connection are
    /// skipped while it is offline.
    fn push_control(&mut self, to: &EndpointId, frame: ControlFrame) {
        let Some(ep) = self.endpoints.get_mut(to) else {
            return;
        };
        if ep.conn.is_none() && !frame.keep_offline {
            return;
        }
        ep.push_control_back(frame);
        if let Some(conn) = ep.conn {
            self.outputs.push_back(Output::Wake {
                conn,
                stream: Lane::Control,
            });
        }
    }
}

enum Outcome {
    Queued,
    Duplicate,
    Overloaded { queued: u64, bound: u64 },
}

/// A frame held back until a write commits.
#[derive(Debug)]
enum Deferred {
    /// An `Accepted` reply to the connection that sent the envelope.
    Reply {
        conn: ConnId,
        to: EndpointId,
        bytes: Bytes,
    },
    /// A stored receipt, notice or refusal for its addressee.
    Control { to: EndpointId, frame: ControlFrame },
}

/// Dedupe key of a queued envelope within its destination.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct ItemKey {
    sender: EndpointId,
    channel: Channel,
    precedence: Precedence,
    seq: Seq,
}

impl ItemKey {
    fn of(header: &Header) -> Self {
        Self {
            sender: header.sender.clone(),
            channel: header.channel.clone(),
            precedence: header.precedence,
            seq: header.seq,
        }
    }

    fn message_id(&self) -> MessageId {
        MessageId {
            sender: self.sender.clone(),
            channel: self.channel.clone(),
            precedence: self.precedence,
            seq: self.seq,
        }
    }
}

#[derive(Debug)]
struct Item {
    /// Current transport lane.
    lane: Precedence,
    /// Arrival order; position in the lane's unwritten index and the store row key.
    order: u64,
    /// First arrival, wall clock.
    queued_at: Time,
    /// `queued_at` plus the time-to-live of `lane`.
    expires_at: Option<Time>,
    bytes: Bytes,
    state: ItemState,
}

#[derive(Debug)]
struct ControlFrame {
    bytes: Bytes,
    /// Receipts and notices wait for an offline addressee; presence, replies and the like do not.
    keep_offline: bool,
    /// The store row holding it, deleted once it is written.
    stored: Option<u64>,
}

/// Everything the relay holds for one endpoint.
#[derive(Debug, Default)]
struct Endpoint {
    partners: BTreeSet<EndpointId>,
    conn: Option<ConnId>,
    /// Receipts and escalation notices (and refusals kept for offline senders): written before
    /// the other control frames, so a flash receipt never waits behind a flood's `Accepted`
    /// replies. Each class stays in order.
    control_urgent: VecDeque<ControlFrame>,
    /// Replies, presence, announcements, link tests.
    control: VecDeque<ControlFrame>,
    control_in_flight: Option<ControlFrame>,
    /// Bytes in `control` and `control_in_flight`.
    control_bytes: u64,
    items: BTreeMap<ItemKey, Item>,
    /// Per lane, the unwritten items by arrival order.
    unwritten: [BTreeMap<u64, ItemKey>; 4],
    lane_frames: [u64; 4],
    lane_bytes: [u64; 4],
    /// The latest announcement: its epoch and frame.
    announcement: Option<(u32, Bytes)>,
}

impl Endpoint {
    fn queued_bytes(&self) -> u64 {
        self.lane_bytes.iter().sum::<u64>() + self.control_bytes
    }

    fn insert(
        &mut self,
        key: ItemKey,
        lane: Precedence,
        order: u64,
        queued_at: Time,
        expires_at: Option<Time>,
        bytes: Bytes,
    ) {
        self.lane_frames[lane.index()] += 1;
        self.lane_bytes[lane.index()] += len(&bytes);
        self.unwritten[lane.index()].insert(order, key.clone());
        self.items.insert(
            key,
            Item {
                lane,
                order,
                queued_at,
                expires_at,
                bytes,
                state: ItemState::Unwritten,
            },
        );
    }

    /// Moves a queued envelope to a higher lane with the new frame's bytes, unwritten, keeping
    /// its arrival order. Returns that order, the first arrival time and the old expiry.
    fn escalate(
        &mut self,
        key: &ItemKey,
        lane: Precedence,
        bytes: Bytes,
    ) -> Option<(u64, Time, Option<Time>)> {
        let item = self.items.get_mut(key)?;
        let old = item.lane.index();
        self.unwritten[old].remove(&item.order);
        self.lane_frames[old] -= 1;
        self.lane_bytes[old] -= len(&item.bytes);
        item.lane = lane;
        item.bytes = bytes;
        item.state = ItemState::Unwritten;
        self.lane_frames[lane.index()] += 1;
        self.lane_bytes[lane.index()] += len(&item.bytes);
        self.unwritten[lane.index()].insert(item.order, key.clone());
        Some((item.order, item.queued_at, item.expires_at))
    }

    fn set_expiry(&mut self, key: &ItemKey, expires_at: Option<Time>) {
        if let Some(item) = self.items.get_mut(key) {
            item.expires_at = expires_at;
        }
    }

    /// Takes one queued envelope out of its lane.
    fn remove(&mut self, key: &ItemKey) -> Option<Item> {
        let item = self.items.remove(key)?;
        let lane = item.lane.index();
        self.unwritten[lane].remove(&item.order);
        self.lane_frames[lane] -= 1;
        self.lane_bytes[lane] -= len(&item.bytes);
        Some(item)
    }

    /// Deletes the envelopes from `sender` on (`channel`, `precedence`) with seq <= `upto`;
    /// returns the arrival order and expiry of each.
    fn remove_delivered(
        &mut self,
        sender: &EndpointId,
        channel: &Channel,
        precedence: Precedence,
        upto: Seq,
    ) -> Vec<(u64, Option<Time>)> {
        let lo = ItemKey {
            sender: sender.clone(),
            channel: channel.clone(),
            precedence,
            seq: Seq(0),
        };
        let hi = ItemKey {
            seq: upto,
            ..lo.clone()
        };
        if hi < lo {
            return Vec::new();
        }
        let keys: Vec<ItemKey> = self.items.range(lo..=hi).map(|(k, _)| k.clone()).collect();
        keys.iter()
            .filter_map(|key| self.remove(key))
            .map(|item| (item.order, item.expires_at))
            .collect()
    }

    /// A new connection: every queued envelope is to be written again; control frames meant for
    /// the old connection go, receipts and notices stay.
    fn rewind(&mut self) {
        for (key, item) in &mut self.items {
            if item.state != ItemState::Unwritten {
                item.state = ItemState::Unwritten;
                self.unwritten[item.lane.index()].insert(item.order, key.clone());
            }
        }
        self.drop_session_frames();
    }

    /// Forgets frames meant for a connection that no longer exists. A receipt or notice that was
    /// being written when it went away goes back to the front.
    fn drop_session_frames(&mut self) {
        if let Some(frame) = self.control_in_flight.take() {
            self.push_control_front(frame);
        }
        let before = self.control_len();
        self.control.retain(|f| f.keep_offline);
        self.control_urgent.retain(|f| f.keep_offline);
        if self.control_len() != before {
            self.control_bytes = self
                .control
                .iter()
                .chain(&self.control_urgent)
                .map(|f| len(&f.bytes))
                .sum();
        }
    }

    fn queue_for(&mut self, frame: &ControlFrame) -> &mut VecDeque<ControlFrame> {
        if frame.keep_offline {
            &mut self.control_urgent
        } else {
            &mut self.control
        }
    }

    fn push_control_front(&mut self, frame: ControlFrame) {
        self.control_bytes += len(&frame.bytes);
        self.queue_for(&frame).push_front(frame);
    }

    fn push_urgent_front(&mut self, frame: ControlFrame) {
        self.control_bytes += len(&frame.bytes);
        self.control_urgent.push_front(frame);
    }

    fn push_control_back(&mut self, frame: ControlFrame) {
        self.control_bytes += len(&frame.bytes);
        self.queue_for(&frame).push_back(frame);
    }

    fn pop_control(&mut self) -> Option<ControlFrame> {
        self.control_urgent
            .pop_front()
            .or_else(|| self.control.pop_front())
    }

    fn control_len(&self) -> usize {
        self.control_urgent.len() + self.control.len()
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
