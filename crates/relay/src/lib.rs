//! `hotline-relay`: the QUIC relay between Hotline endpoint nodes.
//!
//! The relay forwards sealed envelopes, receipts, announcements, link tests and escalation
//! notices between the two endpoints of each configured hotline. It reads routing headers
//! only: it cannot open a body nor forge a signature, and it never re-encodes what it forwards.
//! It authenticates every node by its client certificate, refuses what an endpoint may not send
//! (a typed `Refused` reply, logged), queues per destination and per precedence lane, and keeps
//! every envelope until the destination's signed `Delivered` receipt passes through.
//!
//! - [`router`]: the sans-IO routing and queueing state machine ([`router::Router`]), where
//!   every rule lives and is unit-tested.
//! - [`store`]: the redb store in `data_dir/relay.redb` that keeps the queues across crashes,
//!   and its group-commit loop. `Accepted` (always `durable: true`) is sent only once the
//!   envelope is committed.
//! - [`Server`]: the tokio + quinn shell, spawned from a typed [`ServerConfig`]; dropping it
//!   stops everything. Inside (`server/`): the handle and accept loop, one actor per connection
//!   (`client.rs`), the state they share (`shared.rs`), the group-commit store writer
//!   (`store_writer.rs`) and the time-to-live timer (`timer.rs`).
//! - [`admin`]: the local admin socket (`<data_dir>/admin.sock`) through which
//!   `hotline-relay reload` and `status` reach a running relay; [`Server::reload`] applies a
//!   new configuration without dropping unaffected connections (`server/reload.rs`).
//! - [`failpoint`]: crash points for recovery tests (`HOTLINE_FAILPOINT`).
//! - [`status`]: the operator's snapshot of a running relay ([`Server::status`], `GET /status`
//!   on the metrics listener, `hotline-relay status`); the listener itself (`/metrics`,
//!   `/healthz`, `/readyz`, `/status`) is the private `http` module, the metrics `metrics`.
//! - `testing` (feature `test-utils`): exercise PKI, a loopback [`ServerConfig`] and a raw
//!   wire-speaking node, shared by the relay's tests and its users'.
//!
//! ```no_run
//! # async fn run(config: hotline_relay::ServerConfig) -> Result<(), hotline_relay::SpawnError> {
//! let server = hotline_relay::Server::spawn(config).await?;
//! println!("listening on {}", server.local_addr());
//! tokio::signal::ctrl_c().await.ok();
//! server.shutdown().await;
//! # Ok(()) }
//! ```

pub mod admin;
pub mod failpoint;
mod http;
mod metrics;
pub mod router;
mod server;
pub mod status;
pub mod store;
#[cfg(feature = "test-utils")]
pub mod testing;

pub use hotline_net::quic::Timeouts;
pub use hotline_net::tls::Credentials;
pub use router::{IdentityLimits, Limits, Ttl};
pub use server::{
    AGENT, CloseReason, ConnectedEndpoint, HandshakeLimits, RESET_KEY_FILE, RelayStatus,
    ReloadError, ReloadReport, Server, ServerConfig, SpawnError,
};
pub use store::StoreError;
