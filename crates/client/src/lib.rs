//! `hotline-client`: the Hotline endpoint node and the `hotline` CLI.
//!
//! - [`config`]: the node's TOML file and its validated form.
//! - [`store`]: the durable record store (redb).
//! - [`node`]: the async shell around `hotline_proto::engine::Engine` — relay connection,
//!   group-committing store thread, control socket.
//! - [`control`]: the JSON-lines protocol between the CLI and a running node.
//! - [`certs`]: `hotline certs init`, an exercise PKI plus ready-to-run configs.
//! - [`demo`]: `hotline demo`, a relay and two nodes on loopback with a scripted exchange.

pub mod audit;
pub mod certs;
pub mod config;
pub mod control;
pub mod demo;
pub mod failpoint;
pub mod node;
pub mod store;
