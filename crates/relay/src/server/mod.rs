//! The async shell around [`Router`]: QUIC connections in, frames out.
//!
//! [`Server::spawn`] opens the store, binds the UDP socket (and the optional metrics listener),
//! starts the tasks and returns a handle; [`Server::shutdown`] closes every connection and waits
//! for the tasks; dropping the [`Server`] stops them too. This module holds that handle, its
//! typed [`ServerConfig`], [`SpawnError`], [`CloseReason`] (re-exported from `hotline-net`, which
//! nodes read it from) and the accept loop. It does no
//! routing (the [`Router`] does) and no per-connection work (the [`client`] actor does).
//!
//! Structured concurrency: every task is owned by the one that started it (server → accept
//! loop → connection → its stream readers and writers; server → timer and metrics), so none
//! outlives the handle. The store writer is a thread, stopped through its queue.
//!
//! - [`handshake`]: the limits on connections not yet past `Hello` (Retry under load, a cap on
//!   concurrent handshakes, per address and per identity, one deadline), decided in the accept
//!   loop before any task is spawned; see there for the limits and why.
//! - [`client`]: one actor per connection (span `conn{peer, conn_id}`): identity, `Hello`,
//!   registration, one reader per incoming stream and one writer per outgoing stream.
//! - [`shared`]: the router and the wake-up handles of registered connections, under one lock.
//! - [`store_writer`]: the thread that group-commits the router's writes and reports them back.
//! - [`loader`]: the thread that reads queued envelopes that left memory back from the store.
//! - [`timer`]: the task that calls [`Router::handle_timeout`] when it is due.
//!
//! Durability: [`Server::spawn`] opens `data_dir/relay.redb` (see [`crate::store`]) before it
//! binds anything, so a second relay on the same data directory fails at once, and reloads the
//! router's queues from it. One writer thread runs [`store::group_commit`]: the router's
//! [`Output::Persist`](crate::router::Output::Persist) writes go to it in order, each batch is
//! committed (fsync) and only then is the router told
//! ([`Router::handle_persisted_writes`](crate::router::Router::handle_persisted_writes)), which
//! releases the `Accepted` replies and `Expired` refusals that waited for it (receipts and
//! notices are forwarded while their write commits). Urgent writes
//! (flash, immediate, control) go ahead of routine batches that have not started, and a routine
//! batch is bounded ([`store::BULK_BATCH_BYTES`]). A store error stops the writer, so nothing
//! more is acknowledged; [`Server::store_failure`] reports it and the binary exits. Each stream
//! reader of each connection pauses while more than
//! [`STORE_BACKLOG_BYTES`](shared::STORE_BACKLOG_BYTES) that it read wait for a commit, so a
//! slow disk slows that sender on that stream (QUIC flow control) rather than filling memory,
//! and never pauses another sender.
//!
//! Write-ahead bound: a lane writer blocks inside quinn once its stream has used the node's
//! stream flow-control window ([`hotline_net::quic::LANE_WINDOW_BYTES`], 256 KiB). So at most
//! that window plus one frame ([`MAX_FRAME_LEN`](hotline_proto::wire::MAX_FRAME_LEN)) of a lane
//! is ever committed to the connection ahead of the frames still queued in the router;
//! everything else waits there, where an escalation or a delivered receipt can still move or
//! delete it. Among streams with data to send, quinn sends by
//! [`Lane::priority`](hotline_proto::Lane::priority): control first, then flash down to routine.
//!
//! Invariant: dropping the [`Server`] (or [`Server::shutdown`]) leaves no task of it running
//! and asks the store writer to commit what it was given and close.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, mpsc};
use std::time::Duration;

pub use hotline_net::close::CloseReason;
use hotline_net::quic::{self, EndpointError, Timeouts};
use hotline_net::tls::{self, Credentials, TlsError};
use hotline_proto::EndpointId;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::failpoint;
use crate::http;
use crate::router::{
    ConnId, IdentityLimits, Limits, Router, RouterConfigError, SnapshotError, Ttl,
};
use crate::status::Status;
use crate::store::{self, Store, StoreError};

mod client;
pub(crate) mod handshake;
mod loader;
mod observe;
mod reload;
mod shared;
mod store_writer;
mod timer;

pub use handshake::HandshakeLimits;
use handshake::{Gate, Outcome, RetryBucket};
use loader::Loader;
pub use reload::{ConnectedEndpoint, RelayStatus, ReloadError, ReloadReport};
use shared::Shared;
use store_writer::StoreWriter;

/// File in `data_dir` holding the stateless-reset key, so a restarted relay resets stale
/// connections at once instead of leaving nodes to time out.
pub const RESET_KEY_FILE: &str = "reset.key";

/// The software name sent in the relay's `Hello`.
pub const AGENT: &str = concat!("hotline-relay/", env!("CARGO_PKG_VERSION"));

/// How long [`Server::shutdown`] waits for connections to finish closing.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

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
    /// The earliest next update of `crls` (checked against the CA when loaded), for the
    /// `crl_expired` metric; `None` without a CRL.
    pub crl_next_update: Option<std::time::SystemTime>,
    /// Refuse every client while a CRL is past its next update (rustls'
    /// `enforce_revocation_expiration`); otherwise an expired CRL is still used, and only
    /// warned about and counted.
    pub enforce_crl_expiry: bool,
    /// Directory for the relay's state (the store `relay.redb` and the stateless-reset key);
    /// created if missing.
    pub data_dir: PathBuf,
    /// The hotlines: pairs of endpoints allowed to talk. An endpoint may be in several.
    pub hotlines: Vec<(EndpointId, EndpointId)>,
    /// QUIC keep-alive and idle timeouts.
    pub timeouts: Timeouts,
    /// Bytes queued for one destination past which `routine` is refused (see [`Limits`]).
    pub max_queue_bytes_per_endpoint: u64,
    /// Envelope bytes queued for all destinations together, shared out in per-sender quotas
    /// (see [`Limits::max_queued_bytes_total`]).
    pub max_queued_bytes_total: u64,
    /// Bytes of queued envelopes also held in memory; the rest is read back from the store
    /// when it is written (see [`Limits::max_in_memory_bytes`]).
    pub max_queued_bytes_in_memory: u64,
    /// How long a queued envelope is held, per transport lane (see [`Ttl`]).
    pub ttl: Ttl,
    /// When a flapping identity's live connection is kept and newcomers refused (see
    /// [`IdentityLimits`]).
    pub identity: IdentityLimits,
    /// Limits on connections that have not yet said `Hello` (see [`HandshakeLimits`]).
    pub handshake: HandshakeLimits,
    /// TCP address for `GET /metrics`, if any; port 0 picks a free one.
    pub metrics: Option<SocketAddr>,
}

impl ServerConfig {
    /// A configuration with default timeouts, queue bound, budget, time-to-live and handshake
    /// limits, no CRL and no metrics.
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
            crl_next_update: None,
            enforce_crl_expiry: false,
            data_dir,
            hotlines,
            timeouts: Timeouts::default(),
            max_queue_bytes_per_endpoint: Limits::DEFAULT_MAX_QUEUE_BYTES,
            max_queued_bytes_total: Limits::DEFAULT_MAX_QUEUED_BYTES_TOTAL,
            max_queued_bytes_in_memory: Limits::DEFAULT_MAX_IN_MEMORY_BYTES,
            ttl: Ttl::default(),
            identity: IdentityLimits::default(),
            handshake: HandshakeLimits::default(),
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
        tls::server_config_with(
            &self.ca,
            credentials,
            self.crls.clone(),
            self.enforce_crl_expiry,
            self.timeouts,
        )
    }

    /// The queue limits this configuration asks for.
    pub fn limits(&self) -> Limits {
        Limits {
            max_queue_bytes: self.max_queue_bytes_per_endpoint,
            max_queued_bytes_total: self.max_queued_bytes_total,
            max_in_memory_bytes: self.max_queued_bytes_in_memory,
            ttl: self.ttl,
            identity: self.identity,
        }
    }
}

/// Why a relay could not start. All are the caller's or the environment's fault.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The hotline list, queue bound or budget is invalid.
    #[error(transparent)]
    Config(#[from] RouterConfigError),
    /// The store could not be opened (locked by another relay, unknown schema, the data
    /// directory not creatable, I/O).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store holds something the router cannot load.
    #[error("loading the store: {0}")]
    Restore(SnapshotError),
    /// The store's writer thread could not be started.
    #[error("starting the store writer: {0}")]
    StoreThread(std::io::Error),
    /// The store's reader thread could not be started.
    #[error("starting the store reader: {0}")]
    LoaderThread(std::io::Error),
    /// The data directory, its store or its reset key could not be made private.
    #[error("making {} private: {error}", path.display())]
    DataDir {
        /// The directory or file.
        path: PathBuf,
        /// The OS error (in the message only, so it is printed once).
        error: std::io::Error,
    },
    /// The stateless-reset key could not be read or written.
    #[error("stateless reset key: {0}")]
    ResetKey(EndpointError),
    /// The TLS configuration could not be built (CA, CRL, or key not matching certificate).
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The UDP socket could not be bound.
    #[error("binding UDP {addr}: {error}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        error: std::io::Error,
    },
    /// The QUIC endpoint could not be created.
    #[error("QUIC endpoint: {0}")]
    Endpoint(EndpointError),
    /// The metrics listener could not be bound.
    #[error("binding metrics listener {addr}: {error}")]
    MetricsBind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        error: std::io::Error,
    },
}

// The underlying error is in the message, not a `source()`: anyhow's `{:#}` would print it
// twice.
impl From<SnapshotError> for SpawnError {
    fn from(e: SnapshotError) -> Self {
        Self::Restore(e)
    }
}

/// Makes the data directory 0700 and the store and reset key in it 0600 (clearing group and
/// other bits only), with a warning for each that was readable by others: a data directory made
/// by hand, or by an older relay, gets the modes a new one is created with.
fn make_private(dir: &std::path::Path) -> Result<(), SpawnError> {
    let paths = [
        (dir.to_owned(), hotline_db::DIR_MODE),
        (dir.join(store::FILE_NAME), hotline_db::FILE_MODE),
        (dir.join(RESET_KEY_FILE), hotline_db::FILE_MODE),
    ];
    for (path, mode) in paths {
        match hotline_db::tighten(&path, mode) {
            Ok(None) => {}
            Ok(Some(old)) => warn!(
                path = %path.display(),
                old = format_args!("{old:04o}"),
                new = format_args!("{:04o}", old & mode),
                "was readable by other users: made private"
            ),
            Err(error) => return Err(SpawnError::DataDir { path, error }),
        }
    }
    Ok(())
}

/// A running relay. Dropping it stops every task and closes every connection.
#[derive(Debug)]
pub struct Server {
    local_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    endpoint: quinn::Endpoint,
    tasks: JoinSet<()>,
    writer: StoreWriter,
    /// Taken by [`Server::shutdown`] to wait for the reader thread to let go of the store.
    loader: Option<Loader>,
    /// The router and connections, for [`Server::reload`] and [`Server::status`].
    shared: Arc<Shared>,
    /// What a reload may not change.
    fixed: reload::Fixed,
}

impl Server {
    /// Binds the listen address (and the metrics address, if any) and starts serving. Must be
    /// called inside a tokio runtime.
    pub async fn spawn(config: ServerConfig) -> Result<Self, SpawnError> {
        let mut router = Router::new(&config.hotlines, config.limits())?;
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
        make_private(&config.data_dir)?;
        let quic_config = config.quic_config()?;
        let bind = |error| SpawnError::Bind {
            addr: config.listen,
            error,
        };
        let socket = std::net::UdpSocket::bind(config.listen).map_err(bind)?;
        let endpoint =
            quic::server(socket, quic_config, Some(reset_key)).map_err(SpawnError::Endpoint)?;
        let local_addr = endpoint.local_addr().map_err(bind)?;

        let endpoints = router.endpoint_count();
        let (requests, requests_rx) = mpsc::channel();
        let (loads, loads_rx) = mpsc::channel();
        let shared = Arc::new(Shared::new(
            router,
            requests.clone(),
            loads,
            Gate::new(config.handshake),
            config.hotlines.clone(),
            config.data_dir.join(store::FILE_NAME),
        ));
        shared.metrics.set_crl_next_update(config.crl_next_update);
        let loader = Loader::spawn(store.reader(), loads_rx, Arc::downgrade(&shared))?;
        let writer = StoreWriter::spawn(store, requests, requests_rx, Arc::downgrade(&shared))?;
        let mut tasks = JoinSet::new();
        let metrics_addr = match config.metrics {
            Some(addr) => {
                let metrics_bind = |error| SpawnError::MetricsBind { addr, error };
                let listener = TcpListener::bind(addr).await.map_err(metrics_bind)?;
                let bound = listener.local_addr().map_err(metrics_bind)?;
                let source: Arc<dyn http::Source> = shared.clone();
                tasks.spawn(
                    http::serve(listener, source).instrument(info_span!("metrics", addr = %bound)),
                );
                Some(bound)
            }
            None => None,
        };
        tasks.spawn(timer::run(shared.clone()).instrument(info_span!("timer")));
        tasks.spawn(accept_loop(endpoint.clone(), shared.clone()));
        shared
            .listening
            .store(true, std::sync::atomic::Ordering::Release);
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
            loader: Some(loader),
            shared,
            fixed: reload::Fixed::of(&config),
        })
    }

    /// The relay's status now: each hotline's endpoints (connection, queues) and the store's
    /// size (also served as JSON at `GET /status` on the metrics listener).
    pub fn status(&self) -> Status {
        self.shared.status()
    }

    /// `Ok` when the relay is ready to relay (QUIC endpoint bound, store writer running);
    /// otherwise why not, one line (also served at `GET /readyz`).
    pub fn ready(&self) -> Result<(), String> {
        self.shared.readiness()
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
        self.writer.failure().await
    }

    /// Closes every connection ([`CloseReason::Shutdown`]), stops every task, lets the store
    /// commit what it was given and close (releasing its lock), and waits briefly for the
    /// closes to reach the nodes.
    pub async fn shutdown(mut self) {
        CloseReason::Shutdown.close_endpoint(&self.endpoint);
        self.tasks.shutdown().await;
        self.writer.stop().await;
        if let Some(loader) = self.loader.take() {
            loader.join(SHUTDOWN_GRACE).await;
        }
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, self.endpoint.wait_idle()).await;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // The tasks are aborted when `tasks` drops; closing first tells the nodes why.
        CloseReason::Shutdown.close_endpoint(&self.endpoint);
        // The writer commits what it was given, then closes the store.
        self.writer.request_stop();
    }
}

/// Accepts connections until the endpoint closes; owns one [`client`] task per admitted
/// connection. Each attempt meets the [`handshake`] limits here, before a task exists, so a
/// refused or retried attempt costs O(1).
async fn accept_loop(endpoint: quinn::Endpoint, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    let mut next_id = 0u64;
    let limits = shared.gate.limits();
    let mut bucket = RetryBucket::new(limits.unvalidated_per_second, tokio::time::Instant::now());
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
                let remote = incoming.remote_address();
                if !incoming.remote_address_validated()
                    && !bucket.take(tokio::time::Instant::now())
                {
                    // Counted first, so that whoever sees the answer sees the count.
                    debug!(%remote, "too many unvalidated attempts: retry");
                    shared.metrics.handshake(Outcome::Retry);
                    // Unvalidated means `may_retry` holds, so this does not fail; if it did,
                    // the attempt would be refused rather than admitted.
                    if let Err(e) = incoming.retry() {
                        e.into_incoming().refuse();
                    }
                    continue;
                }
                let admission = match shared.gate.admit(remote.ip()) {
                    Ok(admission) => admission,
                    Err(outcome) => {
                        debug!(%remote, outcome = outcome.as_str(), "handshake refused");
                        shared.metrics.handshake(outcome);
                        incoming.refuse();
                        continue;
                    }
                };
                // Decrypts the first packet here, so a forged Initial (garbage shaped like
                // one) is dropped without a task.
                let connecting = match incoming.accept() {
                    Ok(connecting) => connecting,
                    Err(e) => {
                        debug!(%remote, error = %e, "first packet invalid");
                        drop(admission);
                        shared.metrics.handshake(Outcome::Invalid);
                        continue;
                    }
                };
                next_id += 1;
                connections.spawn(client::run(
                    shared.clone(),
                    connecting,
                    admission,
                    ConnId(next_id),
                ));
            }
        }
    }
}
