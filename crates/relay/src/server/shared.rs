//! State shared by every task of a server: the router, the wake-up handles of registered
//! connections, and the deadline the timer was last told about, under one lock.
//!
//! Every router call goes through [`Shared::run`], which makes the call and then carries out
//! the router's outputs while still holding the lock: writes go to the store writer's queue (so
//! in issue order), wakes to the connection's stream writers, closes to displaced connections
//! (an identity conflict: a WARN with both remote addresses, and a metric), and a moved
//! deadline to the timer task. The lock is held only for synchronous router calls,
//! never across an await. This module does no I/O of its own.
//!
//! Main types: [`Shared`] and the [`State`] under its lock.
//!
//! Invariant: `State::conns` holds a connection exactly while the router has it registered, and
//! every router output is carried out before the lock is released.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, mpsc};

use hotline_proto::{EndpointId, Lane, Time};
use tokio::sync::Notify;
use tracing::warn;

use super::CloseReason;
use super::client::ConnHandle;
use super::handshake::Gate;
use super::loader::Load;
use super::reload::{Closed, peer_serial};
use super::timer::wall_clock;
use crate::metrics::Metrics;
use crate::router::{
    ConnId, ConnectError, Limits, Output, Reconfigured, Router, RouterConfigError,
};
use crate::store::{Committed, Request};

/// Reading one stream of one connection pauses while the frames read from it put this many
/// bytes in writes that wait for the store's commit. It bounds memory when the disk is slower
/// than the network, per sender and stream: a flooding node pauses on its own backlog, never on
/// another node's, and none of its streams waits for another of its streams. How long a flash
/// can wait behind routine data is bounded by the store instead (see
/// [`crate::store::BULK_BATCH_BYTES`]).
pub(super) const STORE_BACKLOG_BYTES: u64 = 4 * 1024 * 1024;

/// State shared by every task: the router and the wake-up handles of registered connections,
/// under one lock held only for synchronous router calls.
#[derive(Debug)]
pub(super) struct Shared {
    state: Mutex<State>,
    pub(super) metrics: Metrics,
    /// The handshake limits and what counts against them.
    pub(super) gate: Arc<Gate>,
    /// The store writer's queue; requests are sent under the state lock, so in write order.
    store: mpsc::Sender<Request>,
    /// The store reader's queue: queued envelopes to read back for their writer.
    loads: mpsc::Sender<Load>,
    /// Wakes the timer task when the router's deadline moved.
    pub(super) timer: Notify,
    /// Signalled after each commit, for stream readers waiting on the store backlog.
    committed: Notify,
    /// The configured hotlines, in configuration order (for the status view); replaced on a
    /// reload.
    pub(super) hotlines: std::sync::RwLock<Vec<(EndpointId, EndpointId)>>,
    /// The store file, for its size in the status view.
    pub(super) store_path: PathBuf,
    /// Set once the QUIC endpoint is bound and every task started.
    pub(super) listening: AtomicBool,
    /// The store writer: [`STORE_RUNNING`], [`STORE_FAILED`] or [`STORE_STOPPED`].
    pub(super) store_state: AtomicU8,
}

/// [`Shared::store_state`]: the writer thread runs.
pub(super) const STORE_RUNNING: u8 = 0;
/// [`Shared::store_state`]: the writer thread stopped on an error.
pub(super) const STORE_FAILED: u8 = 1;
/// [`Shared::store_state`]: the writer thread stopped (shutdown).
pub(super) const STORE_STOPPED: u8 = 2;

#[derive(Debug)]
pub(super) struct State {
    pub(super) router: Router,
    pub(super) conns: HashMap<ConnId, Arc<ConnHandle>>,
    /// The deadline the timer task was last told about.
    armed: Option<Time>,
}

impl Shared {
    pub(super) fn new(
        router: Router,
        store: mpsc::Sender<Request>,
        loads: mpsc::Sender<Load>,
        gate: Arc<Gate>,
        hotlines: Vec<(EndpointId, EndpointId)>,
        store_path: PathBuf,
    ) -> Self {
        Self {
            state: Mutex::new(State {
                router,
                conns: HashMap::new(),
                armed: None,
            }),
            metrics: Metrics::new(&hotlines),
            gate,
            store,
            loads,
            timer: Notify::new(),
            committed: Notify::new(),
            hotlines: std::sync::RwLock::new(hotlines),
            store_path,
            listening: AtomicBool::new(false),
            store_state: AtomicU8::new(STORE_RUNNING),
        }
    }

    /// The state, for a synchronous look at the router. Outputs of a router call made through
    /// this guard are not carried out: use [`Shared::run`] for calls.
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // No code panics while holding the lock; if one did, the router state is still
        // consistent between calls, so keep serving.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs one router call, then carries out its outputs.
    pub(super) fn run<R>(&self, f: impl FnOnce(&mut Router) -> R) -> R {
        let mut state = self.lock();
        let result = f(&mut state.router);
        self.apply_outputs(&mut state);
        result
    }

    /// The store committed `committed.writes`: tell the router, which releases what waited for
    /// them, and wake the stream readers waiting on the store backlog.
    pub(super) fn handle_committed(&self, committed: &Committed) {
        self.metrics.committed(committed.ops);
        self.run(|r| r.handle_persisted_writes(&committed.writes));
        self.committed.notify_waiters();
    }

    fn apply_outputs(&self, state: &mut State) {
        while let Some(output) = state.router.poll_output() {
            match output {
                Output::Persist { write, class, ops } => {
                    // If the writer is gone (store failure, shutdown), the write never commits
                    // and nothing that waits on it is sent: no false promise.
                    let _ = self.store.send(Request::Write {
                        id: write,
                        class,
                        ops,
                    });
                }
                Output::Wake { conn, stream } => {
                    if let Some(handle) = state.conns.get(&conn) {
                        handle.wake[stream.index()].notify_one();
                    }
                }
                Output::Close { conn, by } => {
                    self.metrics.identity_conflict("displaced");
                    if let Some(handle) = state.conns.get(&conn) {
                        // Only a registration displaces: this runs in the newcomer's span.
                        warn!(
                            displaced_conn = %conn,
                            displaced_remote = %handle.connection.remote_address(),
                            new_conn = %by,
                            new_remote = %remote(state, by),
                            "identity conflict: a second connection with this identity displaced the live one"
                        );
                        CloseReason::IdentityConflict.close(&handle.connection);
                    }
                }
                Output::Refused { code, .. } => self.metrics.refused(code),
                Output::Load {
                    destination,
                    lane,
                    order,
                } => {
                    // If the loader is gone (shutdown), the writer waits until reconnection.
                    let _ = self.loads.send(Load {
                        destination,
                        lane,
                        order,
                    });
                }
                Output::WrongStream { arrived, .. } => self.metrics.wrong_stream(arrived),
                Output::EnvelopeRefused {
                    sender,
                    recipient,
                    transport,
                    code,
                } => self
                    .metrics
                    .envelope_refused(&sender, &recipient, transport, code),
            }
        }
        let deadline = state.router.poll_timeout();
        if deadline != state.armed {
            state.armed = deadline;
            self.timer.notify_one();
        }
    }

    pub(super) fn register(
        &self,
        conn: ConnId,
        peer: EndpointId,
        handle: Arc<ConnHandle>,
    ) -> Result<(), ConnectError> {
        let mut state = self.lock();
        state.conns.insert(conn, handle);
        let result = state.router.handle_connected(wall_clock(), conn, peer);
        if let Err(e) = &result {
            if let ConnectError::IdentityInUse {
                endpoint,
                kept,
                until,
            } = e
            {
                self.metrics.identity_conflict("refused");
                warn!(
                    peer = %endpoint,
                    kept_conn = %kept,
                    kept_remote = %remote(&state, *kept),
                    refused_conn = %conn,
                    refused_remote = %remote(&state, conn),
                    refused_for = ?until.since(wall_clock()),
                    "identity conflict: this identity flaps between connections; keeping the live one, refusing the newcomer"
                );
            }
            state.conns.remove(&conn);
        }
        self.apply_outputs(&mut state);
        result
    }

    pub(super) fn unregister(&self, conn: ConnId) {
        let mut state = self.lock();
        state.conns.remove(&conn);
        state.router.handle_disconnected(conn);
        self.apply_outputs(&mut state);
    }

    /// Applies a reload to the router (see `reload.rs`), closes the connections of endpoints
    /// left in no hotline and of certificates whose serial is in `revoked`, and returns what
    /// the router reported and what was closed. Nothing changes if the router refuses.
    pub(super) fn reconfigure(
        &self,
        hotlines: &[(EndpointId, EndpointId)],
        limits: Limits,
        revoked: &BTreeSet<Vec<u8>>,
    ) -> Result<(Reconfigured, Vec<Closed>), RouterConfigError> {
        let mut state = self.lock();
        let report = state.router.reconfigure(hotlines, limits)?;
        *self
            .hotlines
            .write()
            .unwrap_or_else(PoisonError::into_inner) = hotlines.to_vec();
        self.metrics.set_hotlines(hotlines);
        let mut closed = Vec::new();
        for (conn, endpoint) in &report.unpaired {
            if let Some(handle) = state.conns.remove(conn) {
                CloseReason::Unpaired.close(&handle.connection);
            }
            closed.push((*conn, endpoint.clone(), CloseReason::Unpaired));
        }
        let revoked_conns: Vec<(ConnId, EndpointId)> = state
            .conns
            .iter()
            .filter(|(_, h)| peer_serial(&h.connection).is_some_and(|s| revoked.contains(&s)))
            .filter_map(|(c, _)| Some((*c, state.router.endpoint_of(*c)?.clone())))
            .collect();
        for (conn, endpoint) in revoked_conns {
            state.router.handle_disconnected(conn);
            if let Some(handle) = state.conns.remove(&conn) {
                CloseReason::Revoked.close(&handle.connection);
            }
            closed.push((conn, endpoint, CloseReason::Revoked));
        }
        self.apply_outputs(&mut state);
        Ok((report, closed))
    }

    /// Waits until what `conn` sent on `stream` and the store has not committed is small enough
    /// to read more from that stream.
    pub(super) async fn room_to_store(&self, conn: ConnId, stream: Lane) {
        loop {
            let committed = self.committed.notified();
            tokio::pin!(committed);
            committed.as_mut().enable();
            if self.lock().router.uncommitted_bytes(conn, stream) <= STORE_BACKLOG_BYTES {
                return;
            }
            committed.await;
        }
    }

    pub(super) fn render_metrics(&self) -> String {
        let stats = {
            let state = self.lock();
            self.metrics.set_hotline_queues(&state.router);
            state.router.stats()
        };
        self.metrics.render(&stats, self.gate.in_progress())
    }
}

/// The remote address of `conn`, for logs; `?` if it has no handle.
fn remote(state: &State, conn: ConnId) -> String {
    state.conns.get(&conn).map_or_else(
        || "?".to_owned(),
        |h| h.connection.remote_address().to_string(),
    )
}
