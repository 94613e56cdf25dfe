//! `hotline-client`: the Hotline endpoint node and the `hotline` CLI.
//!
//! - [`config`]: the node's TOML file and its validated form.
//! - [`store`]: the durable record store (redb).
//! - [`node`]: the node as a library handle ([`node::Node::spawn`]): the async shell around
//!   `hotline_proto::engine::Engine` — engine loop, store thread, relay link, control server,
//!   inbox index.
//! - [`control`]: the JSON-lines protocol between the CLI and a running node, and its client.
//! - [`console`]: `hotline console`, the operator's terminal UI on the control socket.
//! - [`view`]: engine state rendered for operators (status, inbox lines, alarm names).
//! - [`alarms`]: the operator's alarm book (deduplicated, with severity, counts and clearing).
//! - [`audit`]: the hash-chained audit log's entries, verification and report.
//! - [`time`]: wall-clock time and its one text form.
//! - [`certs`]: `hotline certs init`, an exercise PKI plus ready-to-run configs.
//! - [`demo`]: `hotline demo`, a relay and two nodes on loopback with a scripted exchange.
//! - [`process`]: `hotline-relay` and `hotline node` as child processes on loopback, for the
//!   demo, the end-to-end tests and the bench.
//! - `fuzzing` (hidden): the control-request parser as a fuzz entry point.
//! - `testing` (feature `test-utils`): a relay and nodes in one process on port 0, for tests.

pub mod alarms;
pub mod audit;
pub mod certs;
pub mod config;
pub mod console;
pub mod control;
pub mod demo;
pub mod failpoint;
#[doc(hidden)]
pub mod fuzzing;
pub mod lifecycle;
pub mod node;
pub mod process;
pub mod store;
#[cfg(feature = "test-utils")]
pub mod testing;
pub mod time;
pub mod view;
