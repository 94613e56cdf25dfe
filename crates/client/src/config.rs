//! The node's TOML configuration and its conversion into a typed [`NodeConfig`].
//!
//! Two layers, as in iroh-relay: [`NodeFile`] mirrors the file (unknown keys rejected by name,
//! every field documented with its default), and [`NodeConfig::load`] turns it into values that
//! cannot be invalid: certificates parsed, the endpoint id read from our certificate, the
//! identity key checked against it, the partner's pinned key parsed, deadlines range-checked.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hotline_net::quic::Timeouts;
use hotline_net::tls::{self, Credentials};
use hotline_proto::crypto::{IdentityKey, IdentityPublicKey};
use hotline_proto::engine::{EngineConfig, Partner};
use hotline_proto::{EndpointId, Precedence};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

/// The configuration file, as written by `hotline certs init` (see `deploy/node.example.toml`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeFile {
    /// Relay address, `IP:PORT`.
    pub relay: String,
    /// Name the relay's certificate must carry. Default `localhost`.
    #[serde(default = "cfg_defaults::relay_name")]
    pub relay_name: String,
    /// Data directory (store, control socket). Relative to the config file.
    pub data_dir: PathBuf,
    /// Exercise CA certificate (PEM).
    pub ca: PathBuf,
    /// Our certificate (PEM); its URI SAN names our endpoint id.
    pub cert: PathBuf,
    /// Our private key (PEM, PKCS#8 Ed25519).
    pub key: PathBuf,
    /// QUIC keep-alive interval. Default 1000 ms.
    #[serde(default = "cfg_defaults::keep_alive_ms")]
    pub keep_alive_ms: u64,
    /// QUIC idle timeout. Default 5000 ms.
    #[serde(default = "cfg_defaults::idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// Interval between signed link tests. Default 2000 ms.
    #[serde(default = "cfg_defaults::link_test_interval_ms")]
    pub link_test_interval_ms: u64,
    /// How often the sealing key is replaced (`hotline rekey` replaces it at once). Default
    /// 86400 s (daily); 60 s ..= 90 days.
    #[serde(default = "cfg_defaults::key_rotation_secs")]
    pub key_rotation_secs: u64,
    /// Our partner(s) with their pinned identity keys (hex). Exactly one is supported.
    pub partner: Vec<PartnerFile>,
    /// Per-precedence deadlines, e.g. `[deadlines.flash] delivered_ms = 10000`.
    #[serde(default)]
    pub deadlines: BTreeMap<String, DeadlineFile>,
}

/// One pinned partner.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartnerFile {
    /// Partner endpoint id.
    pub id: String,
    /// Partner's Ed25519 identity public key, 64 hex digits.
    pub identity_key: String,
}

/// Deadline overrides for one precedence.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadlineFile {
    /// `delivered` deadline in milliseconds.
    pub delivered_ms: Option<u64>,
    /// `acknowledged` deadline in milliseconds; 0 = no acknowledgement expected.
    pub acknowledged_ms: Option<u64>,
}

mod cfg_defaults {
    pub(super) fn relay_name() -> String {
        "localhost".into()
    }
    pub(super) fn keep_alive_ms() -> u64 {
        1000
    }
    pub(super) fn idle_timeout_ms() -> u64 {
        5000
    }
    pub(super) fn link_test_interval_ms() -> u64 {
        2000
    }
    pub(super) fn key_rotation_secs() -> u64 {
        24 * 3600
    }
}

impl NodeFile {
    /// Reads and parses a config file; relative paths are resolved against its directory.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        let mut file: Self =
            toml::from_str(&text).with_context(|| format!("config {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut file.data_dir,
            &mut file.ca,
            &mut file.cert,
            &mut file.key,
        ] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(file)
    }

    /// The node's control socket.
    pub fn control_socket(&self) -> PathBuf {
        self.data_dir.join("control.sock")
    }
}

/// A validated node configuration.
#[derive(Debug)]
pub struct NodeConfig {
    /// Relay address.
    pub relay: SocketAddr,
    /// Expected relay certificate name.
    pub relay_name: String,
    /// Data directory.
    pub data_dir: PathBuf,
    /// CA roots.
    pub ca: Vec<CertificateDer<'static>>,
    /// Our certificate chain (PEM path kept for reconnects).
    pub cert_path: PathBuf,
    /// Our key path.
    pub key_path: PathBuf,
    /// Our endpoint id, from our certificate.
    pub local: EndpointId,
    /// The partner and its pinned key.
    pub partner: Partner,
    /// Engine tunables.
    pub engine: EngineConfig,
    /// QUIC timeouts.
    pub timeouts: Timeouts,
}

impl NodeConfig {
    /// Loads and validates a config file and the certificates it names.
    pub fn load(path: &Path) -> Result<Self> {
        let file = NodeFile::read(path)?;
        Self::from_file(file).with_context(|| format!("config {}", path.display()))
    }

    /// Converts a parsed file into a validated configuration.
    pub fn from_file(file: NodeFile) -> Result<Self> {
        let relay: SocketAddr = file
            .relay
            .parse()
            .with_context(|| format!("relay = {:?} is not an IP:PORT address", file.relay))?;
        let ca = tls::load_certs(&file.ca)?;
        let creds = Credentials::load(&file.cert, &file.key)?;
        let leaf = creds.certs.first().context("certificate file is empty")?;
        tls::check_valid_now(leaf)
            .with_context(|| format!("certificate {}", file.cert.display()))?;
        let local = tls::endpoint_id(leaf)
            .with_context(|| format!("certificate {}", file.cert.display()))?;
        let cert_key = tls::identity_key(leaf)
            .with_context(|| format!("certificate {}", file.cert.display()))?;
        let identity = identity_key_from(&creds.key)
            .map_err(|detail| anyhow::anyhow!("key {}: {detail}", file.key.display()))?;
        if identity.public() != cert_key {
            bail!(
                "key {} does not match certificate {}",
                file.key.display(),
                file.cert.display()
            );
        }
        let partner = match file.partner.as_slice() {
            [p] => Partner {
                id: EndpointId::new(p.id.clone())
                    .with_context(|| format!("partner id {:?}", p.id))?,
                key: IdentityPublicKey::from_hex(&p.identity_key)
                    .with_context(|| format!("partner {} identity_key", p.id))?,
            },
            [] => bail!("no [[partner]] configured"),
            _ => bail!(
                "{} partners configured; this version supports exactly one per node",
                file.partner.len()
            ),
        };
        if partner.id == local {
            bail!("partner {} is this endpoint itself", partner.id);
        }
        let mut engine = EngineConfig::default();
        engine
            .set_link_test_interval(Duration::from_millis(file.link_test_interval_ms))
            .context("link_test_interval_ms")?;
        engine
            .set_key_rotation(Duration::from_secs(file.key_rotation_secs))
            .context("key_rotation_secs")?;
        for (name, d) in &file.deadlines {
            let p: Precedence = name
                .parse()
                .with_context(|| format!("[deadlines.{name}]"))?;
            if let Some(ms) = d.delivered_ms {
                engine
                    .set_delivered_deadline(p, Duration::from_millis(ms))
                    .with_context(|| format!("[deadlines.{name}] delivered_ms"))?;
            }
            if let Some(ms) = d.acknowledged_ms {
                let v = (ms > 0).then(|| Duration::from_millis(ms));
                engine
                    .set_acknowledged_deadline(p, v)
                    .with_context(|| format!("[deadlines.{name}] acknowledged_ms"))?;
            }
        }
        let timeouts = Timeouts {
            keep_alive: Duration::from_millis(file.keep_alive_ms),
            idle: Duration::from_millis(file.idle_timeout_ms),
        };
        if timeouts.keep_alive.is_zero() || timeouts.idle <= timeouts.keep_alive {
            bail!("idle_timeout_ms must be larger than keep_alive_ms (> 0)");
        }
        Ok(Self {
            relay,
            relay_name: file.relay_name,
            data_dir: file.data_dir,
            ca,
            cert_path: file.cert,
            key_path: file.key,
            local,
            partner,
            engine,
            timeouts,
        })
    }

    /// Loads the identity key again (the engine and the store each own a copy).
    pub fn identity_key(&self) -> Result<IdentityKey, CredentialsError> {
        let key = tls::load_key(&self.key_path)?;
        identity_key_from(&key).map_err(|detail| CredentialsError::Key {
            path: self.key_path.clone(),
            detail,
        })
    }

    /// Builds the QUIC client configuration.
    pub fn client_config(&self) -> Result<quinn::ClientConfig, CredentialsError> {
        let creds = Credentials::load(&self.cert_path, &self.key_path)?;
        Ok(tls::client_config(&self.ca, creds, self.timeouts)?)
    }
}

/// Why our key or certificates could not be loaded when the node starts (they were checked when
/// the configuration was loaded; this is a file changed or removed since).
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// The identity key is not a usable Ed25519 key.
    #[error("key {}: {detail}", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A certificate or key file did not load, or rustls refused them.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

fn identity_key_from(key: &PrivateKeyDer<'_>) -> Result<IdentityKey, String> {
    match key {
        PrivateKeyDer::Pkcs8(k) => {
            IdentityKey::from_pkcs8(k.secret_pkcs8_der()).map_err(|e| e.to_string())
        }
        _ => Err("endpoint key must be a PKCS#8 Ed25519 key".into()),
    }
}
