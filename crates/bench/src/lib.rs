//! `hotline-bench`: load tests for Hotline that an exercise organiser can trust.
//!
//! It drives real relays and nodes over QUIC — its own `hotline-relay` process and `hotline
//! node` processes (or in-process `hotline_client::node::Node`s) from a fresh exercise PKI, or a
//! running exercise — through the nodes' control sockets, the same path an operator's
//! `hotline send` takes. It measures honestly: open-loop pacing with latency taken from each
//! message's intended send time, HDR histograms per ack level and precedence, and a
//! correctness check of every receiver's inbox after a bounded drain, so a fast but wrong
//! build never looks good.
//!
//! - [`cli`]: the command line (`hotline-bench --help`).
//! - [`scenario`]: `baseline`, `flood`, `scale`, `neighbours`, `soak`, `floor`.
//! - [`driver`]: one load phase against running nodes.
//! - [`cluster`]: starting (or finding) the relay and the nodes; relay memory.
//! - [`floor`]: the bare two-hop QUIC forwarder Hotline's overhead is quoted against, bare or
//!   durable (both ends `fdatasync` every message before passing it on).
//! - [`durable`]: the durable floor's group-commit log writer and its refusal of tmpfs.
//! - [`rogue`]: a client with an endpoint's own credentials that floods on the wrong streams.
//! - [`schedule`], [`clock`]: intended send times, precedence mixes, precise sleeping.
//! - [`stats`], [`check`]: histograms and percentiles; lost / duplicated / out-of-order.
//! - [`report`], [`plot`]: the table, `--json` and `--plot`.
//!
//! It will not judge timing: a run fails (exit 2) only on lost, duplicated, out-of-order or
//! unconfirmed messages; targets are for people reading the figures.

pub mod check;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod driver;
pub mod durable;
pub mod floor;
pub mod plot;
pub mod report;
pub mod rogue;
pub mod scenario;
pub mod schedule;
pub mod stats;
