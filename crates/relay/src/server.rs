//! The async shell around [`Router`]: QUIC connections in, frames out.
//!
//! [`Server::spawn`] binds the UDP socket (and the optional metrics listener), starts the
//! tasks and returns a handle; [`Server::shutdown`] closes every connection and waits for the
//! tasks; dropping the [`Server`] stops them too. Every task is owned by the one that started it
//! (server → accept loop → connection → its stream readers and writers), so none outlives the
//! handle.
//!
//! Durability: [`Server::spawn`] opens `data_dir/relay.redb` (see [`crate::store`]) before it binds
//! anything, so a second relay on the same data directory fails at once, and reloads the
//! router's queues from it. One writer thread runs [`store::group_commit`]: the router's
//! [`Output::Persist`] writes go to it in order, each batch is committed (fsync) and only then is
//! the router told ([`Router::handle_persisted`]), which releases the `Accepted` replies, receipts
//! and notices that waited for it. A store error stops the writer, so nothing more is
//! acknowledged; [`Server::store_failure`] reports it and the binary exits. Each lane reader
//! pauses while more than [`STORE_BACKLOG_BYTES`] of its own lane wait for a commit, so a slow
//! disk slows that lane's senders (QUIC flow control) rather than filling memory, and bounds
//! how long a flash waits behind a routine batch.
//!
//! One timer task calls [`Router::handle_timeout`] at [`Router::poll_timeout`] (time-to-live
//! expiry), re-armed whenever a router call moves the deadline.
//!
//! Per connection (span `conn{peer, conn_id}`):
//! - the peer's endpoint id comes from its client certificate (verified against the CA by
//!   rustls); an endpoint in no configured hotline is closed with [`CloseReason::NotConfigured`];
//! - the node opens the control stream and both sides send `Hello` on it; then the relay opens
//!   its four lane streams, each starting with its lane byte;
//! - one reader per incoming stream hands whole frames to the router; a frame whose length
//!   prefix exceeds [`MAX_FRAME_LEN`] closes the connection ([`CloseReason::FrameTooLarge`])
//!   before anything is allocated;
//! - one writer per outgoing stream pulls the next frame from the router only when the previous
//!   one has been handed to quinn.
//!
//! Write-ahead bound: a lane writer blocks inside quinn once its stream has used the node's
//! stream flow-control window ([`hotline_net::quic::LANE_WINDOW_BYTES`], 256 KiB). So at most
//! that window plus one frame ([`MAX_FRAME_LEN`]) of a lane is ever committed to the connection
//! ahead of the frames still queued in the router; everything else waits there, where an
//! escalation or a delivered receipt can still move or delete it. Among streams with data to
//! send, quinn sends by [`Lane::priority`]: control first, then flash down to routine.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use hotline_net::framed::{self, LaneTag, ReadError};
use hotline_net::quic::{self, EndpointError, Timeouts};
use hotline_net::tls::{self, Credentials, TlsError};
use hotline_proto::wire::{
    self, DecodeError, Frame, Hello, HelloError, MAX_FRAME_LEN, PROTOCOL_VERSION,
};
use hotline_proto::{EndpointId, Lane, Precedence, Time};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use tokio::net::TcpListener;
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinSet;
use tracing::{Instrument, debug, error, field, info, info_span, warn};

use crate::failpoint;
use crate::metrics::{self, Metrics};
use crate::router::{
    ConnId, ConnectError, Limits, Output, Router, RouterConfigError, SnapshotError, Ttl,
};
use crate::store::{self, Request, Store, StoreError};

/// File in `data_dir` holding the stateless-reset key, so a restarted relay resets stale
/// connections at once instead of leaving nodes to time out.
pub const RESET_KEY_FILE: &str = "reset.key";

/// The software name sent in the relay's `Hello`.
pub const AGENT: &str = concat!("hotline-relay/", env!("CARGO_PKG_VERSION"));

/// How long a new connection may take to open its control stream and say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Reading from a node pauses while this many bytes wait on its own control stream, so a node
/// that never reads its replies cannot grow them without bound.
const CONTROL_BACKLOG_BYTES: u64 = 4 * 1024 * 1024;

/// Reading a lane stream (from every node) pauses while this many bytes of envelopes that
/// arrived on that lane wait for the store's commit. It bounds memory when the disk is slower
/// than the network, and the size of a group commit, hence how long a flash can wait behind a
/// routine batch (one commit of at most about this much per lane). A lane never waits for
/// another lane's backlog.
const STORE_BACKLOG_BYTES: u64 = 4 * 1024 * 1024;

/// How long [`Server::shutdown`] waits for connections to finish closing.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// How long [`Server::shutdown`] waits for the store's last commit.
const STORE_STOP_GRACE: Duration = Duration::from_secs(30);

/// Longest the timer sleeps before looking at the wall clock again, so a clock step is noticed.
const MAX_TIMER_SLEEP: Duration = Duration::from_secs(60);

/// A relay's configuration, typed: everything here is already loaded and parsed.
#[derive(Debug)]
pub struct ServerConfig {
    /// UDP address to listen on; port 0 picks a free one (see [`Server::local_addr`]).
    pub listen: SocketAddr,
    /// The exercise CA certificates that client certificates must chain to.
    pub ca: Vec<CertificateDer<'static>>,
    /// The relay's certificate chain and key.
    pub credentials: Credentials,
    /// Certificate revocation lists; empty for none.
    pub crls: Vec<CertificateRevocationListDer<'static>>,
    /// Directory for the relay's state (the store `relay.redb` and the stateless-reset key);
    /// created if missing.
    pub data_dir: PathBuf,
    /// The hotlines: pairs of endpoints allowed to talk. An endpoint may be in several.
    pub hotlines: Vec<(EndpointId, EndpointId)>,
    /// QUIC keep-alive and idle timeouts.
    pub timeouts: Timeouts,
    /// Bytes queued for one destination past which `routine` is refused (see [`Limits`]).
    pub max_queue_bytes_per_endpoint: u64,
    /// How long a queued envelope is held, per transport lane (see [`Ttl`]).
    pub ttl: Ttl,
    /// TCP address for `GET /metrics`, if any; port 0 picks a free one.
    pub metrics: Option<SocketAddr>,
}

impl ServerConfig {
    /// A configuration with default timeouts, queue bound and time-to-live, no CRL and no
    /// metrics.
    pub fn new(
        listen: SocketAddr,
        ca: Vec<CertificateDer<'static>>,
        credentials: Credentials,
        data_dir: PathBuf,
        hotlines: Vec<(EndpointId, EndpointId)>,
    ) -> Self {
        Self {
            listen,
            ca,
            credentials,
            crls: Vec::new(),
            data_dir,
            hotlines,
            timeouts: Timeouts::default(),
            max_queue_bytes_per_endpoint: Limits::DEFAULT_MAX_QUEUE_BYTES,
            ttl: Ttl::default(),
            metrics: None,
        }
    }

    /// The QUIC server configuration this relay runs with. Building it proves that the CA and
    /// CRLs load and that the key matches the certificate.
    pub fn quic_config(&self) -> Result<quinn::ServerConfig, TlsError> {
        let credentials = Credentials {
            certs: self.credentials.certs.clone(),
            key: self.credentials.key.clone_key(),
        };
        tls::server_config(&self.ca, credentials, self.crls.clone(), self.timeouts)
    }

    /// The queue limits this configuration asks for.
    pub fn limits(&self) -> Limits {
        Limits {
            max_queue_bytes: self.max_queue_bytes_per_endpoint,
            ttl: self.ttl,
        }
    }
}

/// Why a relay could not start. All are the caller's or the environment's fault.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The hotline list or queue bound is invalid.
    #[error(transparent)]
    Config(#[from] RouterConfigError),
    /// The data directory could not be created.
    #[error("creating data directory {}: {source}", path.display())]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The store could not be opened (locked by another relay, unknown schema, I/O).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store holds something the router cannot load.
    #[error("loading the store: {0}")]
    Restore(#[from] SnapshotError),
    /// The store's writer thread could not be started.
    #[error("starting the store writer: {0}")]
    StoreThread(std::io::Error),
    /// The stateless-reset key could not be read or written.
    #[error("stateless reset key: {0}")]
    ResetKey(EndpointError),
    /// The TLS configuration could not be built (CA, CRL, or key not matching certificate).
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The UDP socket could not be bound.
    #[error("binding UDP {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The QUIC endpoint could not be created.
    #[error("QUIC endpoint: {0}")]
    Endpoint(EndpointError),
    /// The metrics listener could not be bound.
    #[error("binding metrics listener {addr}: {source}")]
    MetricsBind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Why the relay closed a connection: the QUIC application close code, with the reason in
/// words as the close reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The relay is shutting down.
    Shutdown = 0,
    /// The certificate's endpoint is in no configured hotline.
    NotConfigured = 1,
    /// A newer connection with the same identity replaced this one.
    Replaced = 2,
    /// The node broke the stream protocol (no hello, bad lane byte, broken framing, a relay
    /// stream stopped).
    ProtocolViolation = 3,
    /// A frame's length prefix exceeded the size limit.
    FrameTooLarge = 4,
    /// The client certificate names no endpoint.
    NoIdentity = 5,
}

impl CloseReason {
    /// The QUIC application error code.
    pub fn code(self) -> quinn::VarInt {
        quinn::VarInt::from_u32(self as u32)
    }

    /// The close reason sent to the peer.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Shutdown => "relay shutting down",
            Self::NotConfigured => "endpoint is in no configured hotline",
            Self::Replaced => "replaced by a newer connection with the same identity",
            Self::ProtocolViolation => "protocol violation",
            Self::FrameTooLarge => "frame exceeds the size limit",
            Self::NoIdentity => "client certificate names no hotline endpoint",
        }
    }

    /// The reason for an application close `code`, if it is one of ours.
    pub fn from_code(code: quinn::VarInt) -> Option<Self> {
        [
            Self::Shutdown,
            Self::NotConfigured,
            Self::Replaced,
            Self::ProtocolViolation,
            Self::FrameTooLarge,
            Self::NoIdentity,
        ]
        .into_iter()
        .find(|r| r.code() == code)
    }

    fn close(self, connection: &quinn::Connection) {
        connection.close(self.code(), self.reason().as_bytes());
    }

    fn close_endpoint(self, endpoint: &quinn::Endpoint) {
        endpoint.close(self.code(), self.reason().as_bytes());
    }
}

/// A running relay. Dropping it stops every task and closes every connection.
#[derive(Debug)]
pub struct Server {
    local_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    endpoint: quinn::Endpoint,
    tasks: JoinSet<()>,
    writer: Writer,
}

/// The store's writer thread, from the server's side.
#[derive(Debug)]
struct Writer {
    requests: mpsc::Sender<Request>,
    /// The thread's result: `Ok` when stopped, the error that stopped it otherwise.
    done: Option<oneshot::Receiver<Result<(), StoreError>>>,
}

impl Server {
    /// Binds the listen address (and the metrics address, if any) and starts serving. Must be
    /// called inside a tokio runtime.
    pub async fn spawn(config: ServerConfig) -> Result<Self, SpawnError> {
        let mut router = Router::new(&config.hotlines, config.limits())?;
        std::fs::create_dir_all(&config.data_dir).map_err(|source| SpawnError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        if let Some((name, skip)) = failpoint::armed() {
            warn!(
                failpoint = name,
                skip,
                known = failpoint::ALL.contains(&name),
                "failpoint armed: this relay will abort on purpose"
            );
        }
        // First, so that a second relay on this data directory stops here, having touched
        // nothing.
        let (store, snapshot) = Store::open(&config.data_dir)?;
        let restored = router.restore(snapshot)?;
        for (endpoint, rows) in &restored.unconfigured {
            warn!(
                %endpoint,
                rows,
                "stored rows for an endpoint in no configured hotline are kept, not served"
            );
        }
        let reset_key =
            quic::reset_key(&config.data_dir.join(RESET_KEY_FILE)).map_err(SpawnError::ResetKey)?;
        let quic_config = config.quic_config()?;
        let bind = |source| SpawnError::Bind {
            addr: config.listen,
            source,
        };
        let socket = std::net::UdpSocket::bind(config.listen).map_err(bind)?;
        let endpoint =
            quic::server(socket, quic_config, Some(reset_key)).map_err(SpawnError::Endpoint)?;
        let local_addr = endpoint.local_addr().map_err(bind)?;

        let endpoints = router.endpoint_count();
        let (requests, requests_rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                router,
                conns: HashMap::new(),
                armed: None,
            }),
            metrics: Metrics::new(),
            store: requests.clone(),
            timer: Notify::new(),
            committed: Notify::new(),
        });
        let writer = Writer::spawn(store, requests, requests_rx, Arc::downgrade(&shared))?;
        let mut tasks = JoinSet::new();
        let metrics_addr = match config.metrics {
            Some(addr) => {
                let metrics_bind = |source| SpawnError::MetricsBind { addr, source };
                let listener = TcpListener::bind(addr).await.map_err(metrics_bind)?;
                let bound = listener.local_addr().map_err(metrics_bind)?;
                let shared = shared.clone();
                let render = Arc::new(move || shared.render_metrics());
                tasks.spawn(
                    metrics::serve(listener, render)
                        .instrument(info_span!("metrics", addr = %bound)),
                );
                Some(bound)
            }
            None => None,
        };
        tasks.spawn(run_timer(shared.clone()).instrument(info_span!("timer")));
        tasks.spawn(accept_loop(endpoint.clone(), shared));
        info!(
            addr = %local_addr,
            hotlines = config.hotlines.len(),
            endpoints,
            queued = restored.envelopes,
            waiting_control = restored.control,
            announcements = restored.announcements,
            store = %config.data_dir.join(store::FILE_NAME).display(),
            metrics = %metrics_addr.map_or_else(|| "off".to_owned(), |a| a.to_string()),
            "relay listening"
        );
        Ok(Self {
            local_addr,
            metrics_addr,
            endpoint,
            tasks,
            writer,
        })
    }

    /// The UDP address the relay listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The TCP address of `GET /metrics`, if configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Resolves if the store fails (I/O error, full disk): the relay then acknowledges nothing
    /// more, and should be stopped. Pending forever otherwise.
    pub async fn store_failure(&mut self) -> StoreError {
        if let Some(done) = &mut self.writer.done {
            if let Ok(Err(e)) = done.await {
                self.writer.done = None;
                return e;
            }
            self.writer.done = None;
        }
        std::future::pending().await
    }

    /// Closes every connection ([`CloseReason::Shutdown`]), stops every task, lets the store
    /// commit what it was given and close (releasing its lock), and waits briefly for the
    /// closes to reach the nodes.
    pub async fn shutdown(mut self) {
        CloseReason::Shutdown.close_endpoint(&self.endpoint);
        self.tasks.shutdown().await;
        let _ = self.writer.requests.send(Request::Stop);
        if let Some(done) = self.writer.done.take() {
            match tokio::time::timeout(STORE_STOP_GRACE, done).await {
                Ok(Ok(Err(e))) => error!(error = %e, "store failed"),
                Ok(_) => debug!("store closed"),
                Err(_) => warn!("store writer did not stop in time"),
            }
        }
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, self.endpoint.wait_idle()).await;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // The tasks are aborted when `tasks` drops; closing first tells the nodes why.
        CloseReason::Shutdown.close_endpoint(&self.endpoint);
        // The writer commits what it was given, then closes the store.
        let _ = self.writer.requests.send(Request::Stop);
    }
}

impl Writer {
    /// Starts the thread that runs [`store::group_commit`] and tells the router of each commit.
    fn spawn(
        mut store: Store,
        requests: mpsc::Sender<Request>,
        requests_rx: mpsc::Receiver<Request>,
        shared: Weak<Shared>,
    ) -> Result<Self, SpawnError> {
        let (done_tx, done) = oneshot::channel();
        std::thread::Builder::new()
            .name("relay-store".into())
            .spawn(move || {
                let result = store::group_commit(&mut store, &requests_rx, |committed| {
                    let Some(shared) = shared.upgrade() else {
                        return;
                    };
                    shared.metrics.committed(committed.ops);
                    shared.run(|r| r.handle_persisted(committed.upto));
                    shared.committed.notify_waiters();
                });
                if let Err(e) = &result {
                    error!(error = %e, "store failed; nothing more will be acknowledged");
                }
                drop(store);
                let _ = done_tx.send(result);
            })
            .map_err(SpawnError::StoreThread)?;
        Ok(Self {
            requests,
            done: Some(done),
        })
    }
}

/// State shared by every task: the router and the wake-up handles of registered connections,
/// under one lock held only for synchronous router calls.
#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    metrics: Metrics,
    /// The store writer's queue; requests are sent under the state lock, so in write order.
    store: mpsc::Sender<Request>,
    /// Wakes the timer task when the router's deadline moved.
    timer: Notify,
    /// Signalled after each commit, for lane readers waiting on the store backlog.
    committed: Notify,
}

#[derive(Debug)]
struct State {
    router: Router,
    conns: HashMap<ConnId, Arc<ConnHandle>>,
    /// The deadline the timer task was last told about.
    armed: Option<Time>,
}

/// What other tasks need to reach one connection.
#[derive(Debug)]
struct ConnHandle {
    connection: quinn::Connection,
    /// One per [`Lane::index`]: wakes that stream's writer.
    wake: [Notify; 5],
    /// Signalled after each control-stream write, for readers waiting on the backlog.
    drained: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // No code panics while holding the lock; if one did, the router state is still
        // consistent between calls, so keep serving.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs one router call, then carries out its outputs.
    fn run<R>(&self, f: impl FnOnce(&mut Router) -> R) -> R {
        let mut state = self.lock();
        let result = f(&mut state.router);
        self.apply_outputs(&mut state);
        result
    }

    fn apply_outputs(&self, state: &mut State) {
        while let Some(output) = state.router.poll_output() {
            match output {
                Output::Persist { write, ops } => {
                    // If the writer is gone (store failure, shutdown), the write never commits
                    // and nothing that waits on it is sent: no false promise.
                    let _ = self.store.send(Request::Write { id: write, ops });
                }
                Output::Wake { conn, stream } => {
                    if let Some(handle) = state.conns.get(&conn) {
                        handle.wake[stream.index()].notify_one();
                    }
                }
                Output::Close { conn, reason } => {
                    if let Some(handle) = state.conns.get(&conn) {
                        info!(conn_id = %conn, reason, "closing replaced connection");
                        CloseReason::Replaced.close(&handle.connection);
                    }
                }
                Output::Refused { code, .. } => self.metrics.refused(code),
            }
        }
        let deadline = state.router.poll_timeout();
        if deadline != state.armed {
            state.armed = deadline;
            self.timer.notify_one();
        }
    }

    fn register(
        &self,
        conn: ConnId,
        peer: EndpointId,
        handle: Arc<ConnHandle>,
    ) -> Result<(), ConnectError> {
        let mut state = self.lock();
        state.conns.insert(conn, handle);
        let result = state.router.handle_connected(conn, peer);
        if result.is_err() {
            state.conns.remove(&conn);
        }
        self.apply_outputs(&mut state);
        result
    }

    fn unregister(&self, conn: ConnId) {
        let mut state = self.lock();
        state.conns.remove(&conn);
        state.router.handle_disconnected(conn);
        self.apply_outputs(&mut state);
    }

    /// Waits until the envelopes of `lane` waiting for the store are few enough to read more.
    async fn room_to_store(&self, lane: Precedence) {
        loop {
            let committed = self.committed.notified();
            tokio::pin!(committed);
            committed.as_mut().enable();
            if self.lock().router.uncommitted_bytes(lane) <= STORE_BACKLOG_BYTES {
                return;
            }
            committed.await;
        }
    }

    fn render_metrics(&self) -> String {
        let stats = self.lock().router.stats();
        self.metrics.render(&stats)
    }
}

impl ConnHandle {
    fn new(connection: quinn::Connection) -> Self {
        Self {
            connection,
            wake: Default::default(),
            drained: Notify::new(),
        }
    }

    /// Waits until this connection's own control backlog is small enough to read more.
    async fn room_to_read(&self, shared: &Shared, conn: ConnId) {
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if shared.lock().router.control_backlog(conn) <= CONTROL_BACKLOG_BYTES {
                return;
            }
            drained.await;
        }
    }
}

/// Unregisters a connection when its task ends, however it ends (including abort).
struct Registered {
    shared: Arc<Shared>,
    conn: ConnId,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.shared.unregister(self.conn);
    }
}

async fn accept_loop(endpoint: quinn::Endpoint, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    let mut next_id = 0u64;
    loop {
        tokio::select! {
            biased;
            // Reap finished connection tasks first so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else {
                    debug!("endpoint closed; accept loop ends");
                    return;
                };
                next_id += 1;
                connections.spawn(run_connection(shared.clone(), incoming, ConnId(next_id)));
            }
        }
    }
}

async fn run_connection(shared: Arc<Shared>, incoming: quinn::Incoming, conn: ConnId) {
    let span = info_span!(
        "conn",
        peer = field::Empty,
        conn_id = conn.0,
        remote = %incoming.remote_address()
    );
    async move {
        let connection = match incoming.await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "handshake failed");
                shared.metrics.rejected("handshake");
                return;
            }
        };
        let peer = match tls::peer_identity(&connection) {
            Ok((peer, _)) => peer,
            Err(e) => {
                warn!(error = %e, "client certificate names no endpoint; closing");
                CloseReason::NoIdentity.close(&connection);
                shared.metrics.rejected("no_identity");
                return;
            }
        };
        tracing::Span::current().record("peer", field::display(&peer));
        if !shared.lock().router.is_configured(&peer) {
            warn!("endpoint is in no configured hotline; closing");
            CloseReason::NotConfigured.close(&connection);
            shared.metrics.rejected("not_configured");
            return;
        }
        match serve(&shared, &connection, conn, peer).await {
            Ok(reason) => info!(%reason, "disconnected"),
            Err(e) => {
                warn!(error = %e, "connection ended");
                if let Some(reason) = e.close_reason() {
                    reason.close(&connection);
                }
            }
        }
    }
    .instrument(span)
    .await
}

/// Why serving a registered (or registering) connection stopped early.
#[derive(Debug, thiserror::Error)]
enum ServeError {
    #[error("no {0} within {HELLO_TIMEOUT:?}")]
    Timeout(&'static str),
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("writing: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("stream closed: {0}")]
    ClosedStream(#[from] quinn::ClosedStream),
    #[error("reading hello: {0}")]
    Read(#[from] ReadError),
    #[error("{0}")]
    Protocol(String),
    #[error("hello refused: {0}")]
    Hello(#[from] HelloError),
    #[error("registration: {0}")]
    Register(#[from] ConnectError),
}

impl ServeError {
    fn close_reason(&self) -> Option<CloseReason> {
        match self {
            Self::Timeout(_) | Self::Protocol(_) | Self::Hello(_) => {
                Some(CloseReason::ProtocolViolation)
            }
            Self::Read(e) => read_error_reason(e),
            Self::Register(ConnectError::NotConfigured(_)) => Some(CloseReason::NotConfigured),
            _ => None,
        }
    }
}

/// Hello exchange, registration, streams; returns when the connection closes.
async fn serve(
    shared: &Arc<Shared>,
    connection: &quinn::Connection,
    conn: ConnId,
    peer: EndpointId,
) -> Result<quinn::ConnectionError, ServeError> {
    let (mut control_send, mut control_recv) =
        tokio::time::timeout(HELLO_TIMEOUT, connection.accept_bi())
            .await
            .map_err(|_| ServeError::Timeout("control stream"))??;
    control_send.set_priority(Lane::Control.priority())?;
    let hello = wire::encode_frame(&Frame::Hello(Hello {
        version: PROTOCOL_VERSION,
        agent: AGENT.to_owned(),
    }));
    framed::write_frame(&mut control_send, &hello).await?;
    let first = tokio::time::timeout(HELLO_TIMEOUT, framed::read_frame(&mut control_recv))
        .await
        .map_err(|_| ServeError::Timeout("hello"))??
        .ok_or_else(|| ServeError::Protocol("control stream finished before hello".into()))?;
    let hello = match wire::decode_frame(&first) {
        Ok((Frame::Hello(h), _)) => h,
        Ok(_) => return Err(ServeError::Protocol("first frame is not a hello".into())),
        Err(e) => return Err(ServeError::Protocol(format!("unreadable hello: {e}"))),
    };
    hello.check()?;
    let agent = hello.agent;

    let handle = Arc::new(ConnHandle::new(connection.clone()));
    shared.register(conn, peer, handle.clone())?;
    let _registered = Registered {
        shared: shared.clone(),
        conn,
    };
    info!(%agent, "connected");

    let mut tasks = JoinSet::new();
    tasks.spawn(
        write_stream(
            shared.clone(),
            handle.clone(),
            conn,
            Lane::Control,
            control_send,
        )
        .in_current_span(),
    );
    for lane in Precedence::ALL.into_iter().rev() {
        let mut send = connection.open_uni().await?;
        send.set_priority(Lane::Precedence(lane).priority())?;
        LaneTag(lane).write(&mut send).await?;
        tasks.spawn(
            write_stream(
                shared.clone(),
                handle.clone(),
                conn,
                Lane::Precedence(lane),
                send,
            )
            .in_current_span(),
        );
    }
    tasks.spawn(
        read_stream(
            shared.clone(),
            handle.clone(),
            conn,
            control_recv,
            Lane::Control,
        )
        .in_current_span(),
    );
    tasks.spawn(accept_lanes(shared.clone(), handle, conn).in_current_span());
    Ok(connection.closed().await)
}

/// One writer per outgoing stream: takes the next frame from the router only when the previous
/// one is handed to quinn, which is what bounds write-ahead (see the module docs).
async fn write_stream(
    shared: Arc<Shared>,
    handle: Arc<ConnHandle>,
    conn: ConnId,
    stream: Lane,
    mut send: quinn::SendStream,
) {
    let wake = &handle.wake[stream.index()];
    loop {
        let Some(transmit) = shared.run(|r| r.poll_transmit(conn, stream)) else {
            // `notify_one` stores a permit, so a wake between the poll and here is not lost.
            wake.notified().await;
            continue;
        };
        // `write_chunk` hands the frame's buffer to quinn without copying it.
        if let Err(e) = send.write_chunk(transmit.bytes.clone()).await {
            match e {
                quinn::WriteError::Stopped(code) => {
                    warn!(%stream, %code, "node stopped a relay stream; closing");
                    CloseReason::ProtocolViolation.close(&handle.connection);
                }
                e => debug!(%stream, error = %e, "write failed"),
            }
            return;
        }
        shared.metrics.forwarded(stream);
        shared.run(|r| r.handle_written(conn, transmit));
        if stream == Lane::Control {
            handle.drained.notify_waiters();
        }
    }
}

/// Accepts the node's lane streams and reads each after its lane byte.
async fn accept_lanes(shared: Arc<Shared>, handle: Arc<ConnHandle>, conn: ConnId) {
    let mut readers = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            Some(_) = readers.join_next(), if !readers.is_empty() => {}
            accepted = handle.connection.accept_uni() => {
                let Ok(mut recv) = accepted else { return };
                let (shared, handle) = (shared.clone(), handle.clone());
                readers.spawn(async move {
                    match LaneTag::read(&mut recv).await {
                        Ok(LaneTag(lane)) => {
                            debug!(%lane, "lane stream opened");
                            read_stream(shared, handle, conn, recv, Lane::Precedence(lane)).await;
                        }
                        Err(e) => on_read_error(&handle.connection, Lane::Control, &e),
                    }
                }.in_current_span());
            }
        }
    }
}

/// One reader per incoming stream: whole frames to the router, in order.
async fn read_stream(
    shared: Arc<Shared>,
    handle: Arc<ConnHandle>,
    conn: ConnId,
    mut recv: quinn::RecvStream,
    stream: Lane,
) {
    loop {
        handle.room_to_read(&shared, conn).await;
        if let Lane::Precedence(lane) = stream {
            shared.room_to_store(lane).await;
        }
        match framed::read_frame(&mut recv).await {
            Ok(Some(frame)) => {
                let now = wall_clock();
                shared.run(|r| r.handle_frame(now, conn, Bytes::from(frame)));
            }
            Ok(None) => {
                debug!(%stream, "node finished a stream");
                return;
            }
            Err(e) => {
                on_read_error(&handle.connection, stream, &e);
                return;
            }
        }
    }
}

/// Calls [`Router::handle_timeout`] whenever [`Router::poll_timeout`] is due, comparing the wall
/// clock with the deadline rather than trusting a sleep.
async fn run_timer(shared: Arc<Shared>) {
    loop {
        // Registered before reading the deadline, so a change in between is not missed.
        let changed = shared.timer.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let deadline = shared.lock().router.poll_timeout();
        let now = wall_clock();
        match deadline {
            Some(at) if at <= now => shared.run(|r| r.handle_timeout(now)),
            Some(at) => {
                let sleep = at.since(now).min(MAX_TIMER_SLEEP);
                tokio::select! {
                    () = tokio::time::sleep(sleep) => {}
                    () = &mut changed => {}
                }
            }
            None => changed.await,
        }
    }
}

/// Wall-clock time now, as the router counts it (time-to-live survives restarts).
fn wall_clock() -> Time {
    Time::from_unix(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default(),
    )
}

fn on_read_error(connection: &quinn::Connection, stream: Lane, e: &ReadError) {
    match read_error_reason(e) {
        Some(reason) => {
            warn!(%stream, error = %e, limit = MAX_FRAME_LEN, "unreadable stream; closing");
            reason.close(connection);
        }
        None => debug!(%stream, error = %e, "stream ended"),
    }
}

/// Framing errors close the connection: the stream can no longer be split into frames. A
/// stream that merely ended does not.
fn read_error_reason(e: &ReadError) -> Option<CloseReason> {
    match e {
        ReadError::Frame(DecodeError::TooLarge { .. }) => Some(CloseReason::FrameTooLarge),
        ReadError::Frame(_) => Some(CloseReason::ProtocolViolation),
        ReadError::Stream(_) => None,
    }
}
