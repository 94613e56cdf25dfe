//! QUIC and mutual-TLS plumbing shared by the relay, the node and the bench, plus the
//! exercise PKI.
//!
//! - [`bounds`]: size-capped file reads and range checks for configured numbers, shared by the
//!   node's and the relay's configurations.
//! - [`config_file`]: one-line errors (file, line, key, what was expected) for the node's and
//!   the relay's TOML files.
//! - [`pki`]: makes an exercise CA, a relay certificate and one certificate per endpoint, the
//!   endpoint id carried as URI SAN `urn:hotline:endpoint:<id>` and the endpoint's Ed25519
//!   identity key as the certificate key.
//! - [`tls`]: loads PEM files and builds rustls (ring provider, TLS 1.3 only, ALPN `hotline/1`,
//!   no 0-RTT) server and client configurations with mutual authentication; reads the endpoint
//!   identity out of a peer certificate.
//! - [`quic`]: quinn endpoints with Hotline's keep-alive and idle timeouts and a persisted
//!   stateless-reset key, so a restarted relay resets stale connections at once.
//! - [`framed`]: reading and writing length-prefixed [`hotline_proto::wire`] frames on quinn
//!   streams, with the size limit checked before any allocation.
//!
//! - [`close`]: the relay's QUIC close codes, read by nodes to tell an identity conflict
//!   from a restart.
//! - [`clock`]: the wall clock the shells stamp engine inputs with.
//! - [`failpoint`]: named crash points for recovery tests.
//!
//! It holds no protocol logic: what a frame means is `hotline-proto`'s business.

pub mod bounds;
pub mod ca;
pub mod clock;
pub mod close;
pub mod config_file;
pub mod crl;
pub mod failpoint;
pub mod framed;
pub mod pki;
pub mod quic;
pub mod runtime;
pub mod tls;

/// The ALPN protocol id of Hotline over QUIC.
pub const ALPN: &[u8] = b"hotline/1";
