//! Reloading a running relay's configuration without dropping anyone.
//!
//! [`Server::reload`] takes a new [`ServerConfig`] (parsed and validated by the caller exactly
//! as at startup) and applies it, or refuses it whole with the old one still in force:
//!
//! 1. What cannot change live is compared first: `listen`, `data_dir`, `metrics` and the
//!    `[handshake]` limits (the accept loop's counters are sized from them). A change is
//!    refused naming the key ([`ReloadError::Fixed`]).
//! 2. The new hotlines and limits are checked as the router checks them at startup, the new TLS
//!    configuration (CA, relay certificate and key, CRL, timeouts) is built, and the CRL's
//!    revoked serials are read. Nothing is applied before all of this passed.
//! 3. Applied: the endpoint's server configuration is swapped (new handshakes only), the router
//!    gets the new hotlines and limits (see [`Router::reconfigure`](crate::router::Router)),
//!    and every registered connection is decided: an endpoint left in no hotline is closed with
//!    [`CloseReason::Unpaired`], one whose certificate serial the new CRL lists with
//!    [`CloseReason::Revoked`]. Every other connection stays up: same QUIC connection, no new
//!    handshake.
//!
//! What a removed hotline's endpoints had queued stays in memory and in the store (a reload
//! deletes nothing); it is served again if a later reload pairs them again, and expires by its
//! time-to-live otherwise. A connection still in its handshake when the reload happens was
//! verified against the old CRL; it is checked against the configured hotlines when it
//! registers, but a revoked one in that window is only closed by the next reload.

use std::collections::BTreeSet;
use std::fmt;

use hotline_net::crl;
use hotline_proto::EndpointId;
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::{CloseReason, Server, ServerConfig};
use crate::router::{ConnId, Router, RouterConfigError};

/// Why a reload was refused; the old configuration stays in force.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// A setting that only a restart can change was changed.
    #[error("{key} cannot change on reload; restart the relay")]
    Fixed {
        /// The key, as in `relay.toml`.
        key: &'static str,
    },
    /// The hotlines or limits are invalid.
    #[error("{error}")]
    Config {
        /// Why.
        error: RouterConfigError,
    },
    /// The TLS configuration could not be built.
    #[error("TLS configuration: {error}")]
    Tls {
        /// Why.
        error: hotline_net::tls::TlsError,
    },
    /// A CRL does not parse.
    #[error("{error}")]
    Crl {
        /// Why.
        error: crl::CrlError,
    },
}

/// What a successful reload changed. Its `Display` is the one-line summary.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReport {
    /// Hotlines added, as `a:b`.
    pub added: Vec<String>,
    /// Hotlines removed, as `a:b`.
    pub removed: Vec<String>,
    /// Whether the queue limits, time-to-live or identity limits changed.
    pub limits_changed: bool,
    /// Certificates the CRL now in force revokes.
    pub crl_entries: usize,
    /// Endpoints whose connection was closed because they are in no hotline any more.
    pub closed_unpaired: Vec<String>,
    /// Endpoints whose connection was closed because their certificate is revoked.
    pub closed_revoked: Vec<String>,
}

impl fmt::Display for ReloadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |v: &[String]| {
            if v.is_empty() {
                "none".to_owned()
            } else {
                v.join(" ")
            }
        };
        write!(
            f,
            "hotlines added: {}; removed: {}; limits {}; CRL revokes {} certificate(s); \
             closed unpaired: {}; closed revoked: {}",
            list(&self.added),
            list(&self.removed),
            if self.limits_changed {
                "changed"
            } else {
                "unchanged"
            },
            self.crl_entries,
            list(&self.closed_unpaired),
            list(&self.closed_revoked),
        )
    }
}

/// One registered connection, for [`RelayStatus`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectedEndpoint {
    /// The endpoint.
    pub endpoint: String,
    /// The relay's id of its connection: unchanged as long as the connection is.
    pub conn_id: u64,
}

/// A minimal status of a running relay (extended for observability elsewhere).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayStatus {
    /// Configured hotlines.
    pub hotlines: usize,
    /// Endpoints in some hotline.
    pub endpoints: usize,
    /// Registered connections, by endpoint.
    pub connected: Vec<ConnectedEndpoint>,
}

/// The settings a reload may not change, kept from startup.
#[derive(Debug)]
pub(super) struct Fixed {
    listen: std::net::SocketAddr,
    data_dir: std::path::PathBuf,
    metrics: Option<std::net::SocketAddr>,
    handshake: super::HandshakeLimits,
}

impl Fixed {
    pub(super) fn of(config: &ServerConfig) -> Self {
        Self {
            listen: config.listen,
            data_dir: config.data_dir.clone(),
            metrics: config.metrics,
            handshake: config.handshake,
        }
    }

    fn check(&self, config: &ServerConfig) -> Result<(), ReloadError> {
        let fixed = |key| Err(ReloadError::Fixed { key });
        if config.listen != self.listen {
            return fixed("listen");
        }
        if config.data_dir != self.data_dir {
            return fixed("data_dir");
        }
        if config.metrics != self.metrics {
            return fixed("metrics");
        }
        if config.handshake != self.handshake {
            return fixed("[handshake]");
        }
        Ok(())
    }
}

fn pair((a, b): &(EndpointId, EndpointId)) -> String {
    format!("{a}:{b}")
}

/// The serial of the certificate a connection's peer presented, if it has one.
pub(super) fn peer_serial(connection: &quinn::Connection) -> Option<Vec<u8>> {
    let certs = connection
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    crl::serial(certs.first()?).ok()
}

impl Server {
    /// Applies a new configuration to the running relay, or refuses it whole (see
    /// `server/reload.rs`): unaffected connections stay up; endpoints left in no hotline are
    /// closed with [`CloseReason::Unpaired`], revoked ones with [`CloseReason::Revoked`].
    pub fn reload(&mut self, config: &ServerConfig) -> Result<ReloadReport, ReloadError> {
        self.fixed.check(config)?;
        let limits = config.limits();
        Router::new(&config.hotlines, limits).map_err(|error| ReloadError::Config { error })?;
        let quic_config = config
            .quic_config()
            .map_err(|error| ReloadError::Tls { error })?;
        let mut revoked = BTreeSet::new();
        for list in &config.crls {
            revoked.extend(crl::revoked_serials(list).map_err(|error| ReloadError::Crl { error })?);
        }
        // Checked: apply. New handshakes see the new CA, certificate and CRL from here on.
        self.endpoint.set_server_config(Some(quic_config));
        self.shared
            .metrics
            .set_crl_next_update(config.crl_next_update);
        let (reconfigured, closed) = self
            .shared
            .reconfigure(&config.hotlines, limits, &revoked)
            .map_err(|error| ReloadError::Config { error })?;
        let mut report = ReloadReport {
            added: reconfigured.added.iter().map(pair).collect(),
            removed: reconfigured.removed.iter().map(pair).collect(),
            limits_changed: reconfigured.limits_changed,
            crl_entries: revoked.len(),
            ..ReloadReport::default()
        };
        for (conn, endpoint, reason) in closed {
            warn!(%endpoint, conn_id = conn.0, reason = reason.reason(), "closed by reload");
            match reason {
                CloseReason::Revoked => report.closed_revoked.push(endpoint.to_string()),
                _ => report.closed_unpaired.push(endpoint.to_string()),
            }
        }
        // By name, not by which connected first.
        report.closed_unpaired.sort();
        report.closed_revoked.sort();
        info!(%report, "configuration reloaded");
        Ok(report)
    }

    /// The relay's hotlines and connections now, with their connection ids (the admin
    /// socket's `status`; [`Server::status`] has the queues and the store).
    pub fn connections(&self) -> RelayStatus {
        let state = self.shared.lock();
        let router = &state.router;
        RelayStatus {
            hotlines: router.hotlines().len(),
            endpoints: router.endpoint_count(),
            connected: router
                .connections()
                .map(|(conn, endpoint)| ConnectedEndpoint {
                    endpoint: endpoint.to_string(),
                    conn_id: conn.0,
                })
                .collect(),
        }
    }
}

/// A connection to close, its endpoint and why.
pub(super) type Closed = (ConnId, EndpointId, CloseReason);
