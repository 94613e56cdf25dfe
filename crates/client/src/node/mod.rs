//! The endpoint node: a thin async shell around the channel engine, as a library handle.
//!
//! [`Node::spawn`] opens the store, rebuilds the engine from it, binds the control socket and
//! starts the node's tasks; it returns once all of that worked, or says what did not
//! ([`SpawnError`]). [`Node::shutdown`] stops the node and waits until its store is closed, so
//! the same data directory can be opened again at once; dropping a [`Node`] stops it too.
//!
//! Tasks, each with one job (one module each):
//! - the **engine loop** (`engine_loop`) owns the [`Engine`] and the operator-facing state; what
//!   it takes in (operator commands, the channels it listens to) is in `commands`;
//! - the **store thread** (`store_thread`) group-commits the engine's writes to redb and
//!   confirms them in order;
//! - one **relay link** (`relay_link`) per configured relay dials it, opens the control stream
//!   and one stream per lane, and feeds frames from it into per-lane channels (every relay is
//!   used at once: every frame goes out on every live link, the first copy in wins);
//! - the **control server** (`control_server`) serves the CLI on a Unix socket (mode 0600);
//! - the **inbox index** (`inbox`) finds what `inbox` shows in the store (row keys, ack state);
//! - what the engine loop knows of each relay link (`relays`) is what `status` shows per relay;
//! - the **alarm desk** (`alarm_desk`) keeps the operator's alarm book ([`crate::alarms`]),
//!   restored from the store at start.
//!
//! Nothing acknowledged is lost on a crash: every record that made a receipt, a delivery or a
//! `stored` report possible was committed first (the engine's durability contract).
//!
//! ```no_run
//! # async fn run(config: hotline_client::config::NodeConfig) -> anyhow::Result<()> {
//! let node = hotline_client::node::Node::spawn(config).await?;
//! let mut control = hotline_client::control::ControlClient::connect(node.control_socket()).await?;
//! let status = control.call(hotline_client::control::Request::Status).await?;
//! node.shutdown().await?;
//! # Ok(()) }
//! ```

mod alarm_desk;
mod commands;
mod control_server;
mod engine_loop;
mod inbox;
mod relay_link;
mod relays;
mod store_thread;

pub use relay_link::relay_hello;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hotline_proto::crypto::IdentityPublicKey;
use hotline_proto::engine::{AckError, Engine, Local, RestoreError, SubmitError};
use hotline_proto::{EndpointId, MessageId};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use tokio::net::UnixListener;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{Instrument, info, info_span};

use crate::config::{CredentialsError, NodeConfig};
use crate::store::{Store, StoreError};
use crate::time::wall_now;
use commands::Inputs;
use control_server::Commands;
use engine_loop::EngineLoop;
use inbox::InboxIndex;
use relays::{LinkSpawner, Reconfigure};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The data directory could not be created or made private.
    #[error("data dir {}: {error}", path.display())]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// The store did not open (another node on it, a newer schema, a broken record).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stored records do not rebuild an engine.
    #[error("restoring the engine from the store: {0}")]
    Restore(RestoreError),
    /// Our key or certificates did not load.
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    /// The system random generator failed.
    #[error("the system random generator failed")]
    Random,
    /// The control socket could not be bound.
    #[error("control socket {}: {error}", path.display())]
    ControlSocket {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// The QUIC endpoint could not be created.
    #[error(transparent)]
    Endpoint(#[from] hotline_net::quic::EndpointError),
    /// The store thread could not be started.
    #[error("starting the store thread: {0}")]
    Thread(std::io::Error),
}

// Error types here and in the other crates keep the underlying error in their message rather
// than exposing it as `source()`: the CLI prints anyhow's `{:#}` chain, which would repeat it
// (`Address already in use (os error 98): Address already in use (os error 98)`), while logs
// and the control protocol print the message alone.
impl From<RestoreError> for SpawnError {
    fn from(e: RestoreError) -> Self {
        Self::Restore(e)
    }
}

impl From<std::io::Error> for SpawnError {
    fn from(e: std::io::Error) -> Self {
        Self::Thread(e)
    }
}

/// Why a reloaded configuration was refused; the node keeps running on the old one.
#[derive(Debug, thiserror::Error)]
#[error(
    "{key} cannot change on reload; restart the node (it keeps running on the old configuration)"
)]
pub struct ReloadRefused {
    /// The setting, as in the node's configuration file.
    pub key: &'static str,
}

/// Why a running node stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A store write failed: durability can no longer be promised, so the node stops; restart
    /// it to continue from what was committed.
    #[error("store write failed: {0}")]
    StoreFailed(StoreError),
    /// The node's task ended abnormally (a bug).
    #[error("node task failed: {0}")]
    Task(String),
}

/// Why the node refused an operator's request (sent back as the request's `done` error).
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// `send --to` named someone who is not our partner.
    #[error("{to} is not a partner of {local} (partner: {partner})")]
    NotPartner {
        /// Who was named.
        to: EndpointId,
        /// Us.
        local: EndpointId,
        /// Our partner.
        partner: EndpointId,
    },
    /// The engine refused the message (too large, outbox full, stopped).
    #[error(transparent)]
    Submit(#[from] SubmitError),
    /// The engine refused the acknowledgement.
    #[error(transparent)]
    Ack(#[from] AckError),
    /// The audit log could not be read.
    #[error("reading the audit log: {0}")]
    Audit(StoreError),
    /// A delivered message's record could not be read back (to acknowledge it).
    #[error("reading the delivered message from the store: {0}")]
    Inbox(StoreError),
    /// The inbox listing stopped part-way: a line could not be read back from the store.
    #[error("reading the inbox from the store: {0} (the listing above is incomplete)")]
    InboxListing(String),
    /// An empty message body.
    #[error("empty message refused: a message needs some text")]
    EmptyBody,
    /// `--wait` ran out of time; the message stays queued and will still be delivered.
    #[error(
        "timed out waiting for {id} to be {level}; it is still queued and will still be delivered"
    )]
    Timeout {
        /// The level waited for.
        level: &'static str,
        /// The message.
        id: MessageId,
    },
    /// The partner lost its store before the message was delivered or acknowledged; it is no
    /// longer tracked.
    #[error("{id} was lost with the partner's store: not delivered; send it again")]
    Lost {
        /// The message.
        id: MessageId,
    },
    /// The alarm to clear does not exist or is cleared already.
    #[error(transparent)]
    Clear(#[from] crate::alarms::ClearError),
    /// `clear_alarm` named neither or both of an id and `all`.
    #[error("clear_alarm needs exactly one of `id` and `all`")]
    ClearTarget,
    /// The node is shutting down.
    #[error("node is stopping")]
    Stopping,
}

// The store's error is in the message, not a `source()`: anyhow's `{:#}` would print it twice.
impl From<StoreError> for RequestError {
    fn from(e: StoreError) -> Self {
        Self::Audit(e)
    }
}

/// What `audit verify/export` needs while the node runs.
#[derive(Clone, Debug)]
struct AuditSource {
    db: Arc<redb::Database>,
    own: IdentityPublicKey,
    partner: IdentityPublicKey,
}

/// A running node. Dropping it stops the node (without waiting); [`Node::shutdown`] waits.
#[derive(Debug)]
pub struct Node {
    endpoint: EndpointId,
    control_socket: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), NodeError>>>,
    /// Reloaded engine settings for the engine loop.
    reconfigure: mpsc::UnboundedSender<Reconfigure>,
    /// The configuration in force, for [`Node::reload`].
    running: NodeConfig,
}

impl Node {
    /// Opens the store, restores the engine and starts the node's tasks.
    pub async fn spawn(cfg: NodeConfig) -> Result<Self, SpawnError> {
        create_private_dir(&cfg.data_dir)?;
        let (mut store, records) = Store::open(&cfg.data_dir)?;
        make_store_private(&cfg.data_dir)?;
        let identity = cfg.identity_key();
        let local = Local {
            id: cfg.local.clone(),
            key: cfg.identity_key(),
        };
        let rng = ChaCha20Rng::from_seed(os_seed()?);
        let now = wall_now();
        let inbox = InboxIndex::from_records(&records);
        let mut engine = if records.is_empty() {
            Engine::new(cfg.engine.clone(), local, cfg.partner.clone(), rng, now)
        } else {
            Engine::restore(
                cfg.engine.clone(),
                local,
                cfg.partner.clone(),
                rng,
                now,
                records,
            )?
        };
        let span = info_span!("node", endpoint = %cfg.local);
        info!(parent: &span, partner = %cfg.partner.id, records = store.len(), "node starting");
        let audit = AuditSource {
            db: store.database(),
            own: identity.public(),
            partner: cfg.partner.key,
        };
        let alarm_book = store.read_alarm_book()?;
        let (len, head) = store.audit_head();
        engine.set_audit_head(len, head);
        store.set_signer(identity, cfg.local.clone());

        let control_socket = cfg.data_dir.join("control.sock");
        let listener = bind_control_socket(&control_socket)?;
        let client_config = cfg.client_config()?;

        let (writes_tx, writes_rx) = mpsc::unbounded_channel();
        let (persisted_tx, persisted_rx) = mpsc::unbounded_channel();
        let store_thread = store_thread::spawn(store, writes_rx, persisted_tx)?;
        let (normal_tx, normal_rx) = mpsc::channel(commands::NORMAL_QUEUE);
        let (urgent_tx, urgent_rx) = mpsc::unbounded_channel();
        let control = tokio::spawn(
            control_server::serve(
                listener,
                Commands {
                    normal: normal_tx,
                    urgent: urgent_tx,
                },
            )
            .instrument(span.clone()),
        );
        let (net_tx, net_rx) = relay_link::lane_channels();
        let (link_tx, link_rx) = mpsc::unbounded_channel();
        // Kept by the engine loop, so that a reload can add relays.
        let drained = Arc::new(Notify::new());
        let spawner = LinkSpawner {
            net: net_tx,
            events: link_tx,
            client_config,
            drained: drained.clone(),
            span: span.clone(),
        };
        let links: Vec<_> = cfg
            .relays
            .iter()
            .enumerate()
            .map(|(index, address)| spawner.spawn(index, address))
            .collect();
        let (stop_tx, stop_rx) = oneshot::channel();
        let (reconfigure_tx, reconfigure_rx) = mpsc::unbounded_channel();
        let inputs = Inputs {
            reconfigure: reconfigure_rx,
            persisted: persisted_rx,
            net: net_rx,
            urgent: urgent_rx,
            normal: normal_rx,
            link: link_rx,
            drained,
            stop: stop_rx,
        };
        let mut engine_loop = EngineLoop::new(
            engine,
            cfg.local.clone(),
            cfg.partner.id.clone(),
            audit,
            writes_tx,
            inbox,
            &cfg.relays,
        )
        .with_alarm_book(alarm_book);
        for (relay, task) in engine_loop.relays.iter_mut().zip(links) {
            relay.task = Some(task);
        }
        engine_loop.spawner = Some(spawner);
        let socket = control_socket.clone();
        let task = tokio::spawn(
            async move {
                let result = engine_loop.run(inputs).await;
                control.abort();
                // Dropping the engine loop (below) stops the relay links.
                // Closing the write queue ends the store thread once it has committed what it
                // holds; the store (and its file lock) is released when it returns.
                drop(engine_loop);
                let joined = tokio::task::spawn_blocking(move || store_thread.join()).await;
                let _ = std::fs::remove_file(&socket);
                match joined {
                    Ok(Ok(())) => result,
                    _ => result.and(Err(NodeError::Task("store thread panicked".into()))),
                }
            }
            .instrument(span),
        );
        Ok(Self {
            endpoint: cfg.local.clone(),
            control_socket,
            stop: Some(stop_tx),
            task: Some(task),
            reconfigure: reconfigure_tx,
            running: cfg,
        })
    }

    /// Applies a re-read configuration (SIGHUP): the deadlines are taken for messages sent
    /// from now on; relays no longer listed are disconnected and new ones dialled, the links
    /// to the others untouched. Refused whole, naming the key, if the identity, partner or data
    /// directory changed (a restart is needed). Other changed settings (timeouts, certificates,
    /// link-test interval, key rotation) are not applied live: the summary names them, to take
    /// effect at the next restart.
    pub fn reload(&mut self, cfg: NodeConfig) -> Result<String, ReloadRefused> {
        let fixed = |key| Err(ReloadRefused { key });
        if cfg.local != self.running.local {
            return fixed("local (the identity)");
        }
        if cfg.partner.id != self.running.partner.id || cfg.partner.key != self.running.partner.key
        {
            return fixed("partner");
        }
        if cfg.data_dir != self.running.data_dir {
            return fixed("data_dir");
        }
        let mut applied = Vec::new();
        let mut pending = Vec::new();
        if !cfg.engine.same_deadlines(&self.running.engine) {
            applied.push("deadlines");
        }
        if cfg.relays != self.running.relays {
            applied.push("relays");
        }
        let taken = self.running.engine.with_deadlines_of(&cfg.engine);
        if taken != cfg.engine {
            pending.push("engine settings other than deadlines");
        }
        if !applied.is_empty() {
            let _ = self.reconfigure.send(Reconfigure {
                engine: taken.clone(),
                relays: cfg.relays.clone(),
            });
        }
        self.running.engine = taken;
        self.running.relays = cfg.relays.clone();
        if cfg.timeouts != self.running.timeouts || cfg.ca != self.running.ca {
            pending.push("timeouts or certificates");
        }
        let summary = format!(
            "applied: {}; needs a restart: {}",
            if applied.is_empty() {
                "nothing".to_owned()
            } else {
                applied.join(", ")
            },
            if pending.is_empty() {
                "nothing".to_owned()
            } else {
                pending.join(", ")
            },
        );
        Ok(summary)
    }

    /// This node's endpoint id.
    pub fn endpoint(&self) -> &EndpointId {
        &self.endpoint
    }

    /// The control socket the CLI talks to.
    pub fn control_socket(&self) -> &Path {
        &self.control_socket
    }

    /// Whether the node has stopped (on its own, or after a shutdown).
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Waits until the node stops on its own (a store failure) and says why.
    pub async fn stopped(&mut self) -> Result<(), NodeError> {
        match self.task.as_mut() {
            Some(task) => {
                let result = join(task).await;
                self.task = None;
                result
            }
            None => Ok(()),
        }
    }

    /// Stops the node and waits until its tasks have ended and its store is closed.
    pub async fn shutdown(mut self) -> Result<(), NodeError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(mut task) => join(&mut task).await,
            None => Ok(()),
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn join(task: &mut JoinHandle<Result<(), NodeError>>) -> Result<(), NodeError> {
    match task.await {
        Ok(result) => result,
        Err(e) => Err(NodeError::Task(e.to_string())),
    }
}

fn os_seed() -> Result<[u8; 32], SpawnError> {
    let mut seed = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
        .map_err(|_| SpawnError::Random)?;
    Ok(seed)
}

fn create_private_dir(dir: &Path) -> Result<(), SpawnError> {
    let err = |error| SpawnError::DataDir {
        path: dir.to_owned(),
        error,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    set_mode(dir, 0o700).map_err(err)
}

/// Clears the group and other bits of an existing store file (one left 0644 by hand or by an
/// older node), with a warning; a new one is created 0600.
fn make_store_private(dir: &Path) -> Result<(), SpawnError> {
    let path = dir.join(crate::store::FILE_NAME);
    match hotline_db::tighten(&path, hotline_db::FILE_MODE) {
        Ok(None) => Ok(()),
        Ok(Some(old)) => {
            tracing::warn!(
                path = %path.display(),
                old = format_args!("{old:04o}"),
                "was readable by other users: made private (0600)"
            );
            Ok(())
        }
        Err(error) => Err(SpawnError::DataDir { path, error }),
    }
}

/// Binds the control socket (mode 0600), replacing a stale one. The store is already open, so
/// no other node owns this data directory.
fn bind_control_socket(path: &Path) -> Result<UnixListener, SpawnError> {
    let err = |error| SpawnError::ControlSocket {
        path: path.to_owned(),
        error,
    };
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    set_mode(path, 0o600).map_err(err)?;
    Ok(listener)
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}
