//! The node's TOML configuration and its conversion into a typed [`NodeConfig`].
//!
//! Two layers, as in iroh-relay: [`NodeFile`] mirrors the file (unknown keys rejected by name,
//! every field documented with its default), and [`NodeConfig::load`] turns it into values that
//! cannot be invalid: certificates parsed, the endpoint id read from our certificate, the
//! identity key checked against it, the partner's pinned key parsed, timeouts and deadlines
//! range-checked (each error names the key, its range and the value given).
//!
//! Files are read with a size cap ([`hotline_net::bounds`]), and the private key is read and
//! parsed once, here: the node's engine, store and TLS client all take it from [`NodeConfig`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hotline_net::bounds::{MAX_CONFIG_BYTES, read_capped};
use hotline_net::config_file::ConfigFileError;
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
    /// The relay's address, `IP:PORT` or `HOST:PORT` (resolved at each connection), when there
    /// is one relay. Several relays are listed as `[[relays]]` instead; not both.
    #[serde(default)]
    pub relay: Option<String>,
    /// Name the relay's certificate must carry (with `relay`). Default `localhost`.
    #[serde(default = "cfg_defaults::relay_name")]
    pub relay_name: String,
    /// Every relay of the hotline, all used at once (at most [`MAX_RELAYS`]).
    #[serde(default)]
    pub relays: Vec<RelayFile>,
    /// Data directory (store, control socket). Relative to the config file.
    pub data_dir: PathBuf,
    /// Exercise CA certificate (PEM).
    pub ca: PathBuf,
    /// Our certificate (PEM); its URI SAN names our endpoint id.
    pub cert: PathBuf,
    /// Our private key (PEM, PKCS#8 Ed25519).
    pub key: PathBuf,
    /// QUIC keep-alive interval, 100 ..= 60000 ms. Default 1000 ms with one relay, 500 ms with
    /// several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_alive_ms: Option<u64>,
    /// QUIC idle timeout, 1000 ..= 3600000 ms and above `keep_alive_ms`. Default 5000 ms with one
    /// relay; 2000 ms with several, since another relay carries the traffic meanwhile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_ms: Option<u64>,
    /// Interval between signed link tests, 100 ..= 600000 ms. Default 2000 ms.
    #[serde(default = "cfg_defaults::link_test_interval_ms")]
    pub link_test_interval_ms: u64,
    /// How often the sealing key is replaced (`hotline rekey` replaces it at once). Default
    /// 86400 s (daily); 60 s ..= 90 days.
    #[serde(default = "cfg_defaults::key_rotation_secs")]
    pub key_rotation_secs: u64,
    /// Our partner(s) with their pinned identity keys (hex). Exactly one is supported; none
    /// yet is refused at load with a pointer to `hotline pin`.
    #[serde(default)]
    pub partner: Vec<PartnerFile>,
    /// Per-precedence deadlines, e.g. `[deadlines.flash] delivered_ms = 10000`.
    #[serde(default)]
    pub deadlines: BTreeMap<String, DeadlineFile>,
}

/// One relay in `[[relays]]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayFile {
    /// `IP:PORT` or `HOST:PORT` (resolved at each connection).
    pub addr: String,
    /// Name its certificate must carry. Default `localhost`.
    #[serde(default = "cfg_defaults::relay_name")]
    pub name: String,
}

/// At most this many relays per node: each is one connection and one copy of every frame.
pub const MAX_RELAYS: usize = 8;

/// Where one relay is, and the name its certificate must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayAddress {
    /// `IP:PORT`, or `HOST:PORT` resolved at each connection.
    pub addr: String,
    /// The name its certificate must carry.
    pub name: String,
}

impl RelayAddress {
    /// A relay at a fixed socket address.
    pub fn at(addr: SocketAddr, name: impl Into<String>) -> Self {
        Self {
            addr: addr.to_string(),
            name: name.into(),
        }
    }

    /// Checks that `addr` is `IP:PORT` or `HOST:PORT` with a port.
    fn check(addr: &str, name: String) -> Result<Self> {
        if addr.parse::<SocketAddr>().is_err() {
            let port = addr.rsplit_once(':').and_then(|(host, port)| {
                let ok = !host.is_empty() && !host.contains(':');
                port.parse::<u16>().ok().filter(|p| ok && *p != 0)
            });
            if port.is_none() {
                bail!("relay address {addr:?} is not IP:PORT or HOST:PORT");
            }
        }
        if name.is_empty() {
            bail!("relay {addr}: the certificate name is empty");
        }
        Ok(Self {
            addr: addr.to_owned(),
            name,
        })
    }
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
    /// Keep-alive and idle timeout when there is one relay, and when there are several.
    pub(super) const TIMEOUTS_ONE_RELAY_MS: (u64, u64) = (1000, 5000);
    pub(super) const TIMEOUTS_SEVERAL_RELAYS_MS: (u64, u64) = (500, 2000);
    pub(super) fn link_test_interval_ms() -> u64 {
        2000
    }
    pub(super) fn key_rotation_secs() -> u64 {
        24 * 3600
    }
}

impl NodeFile {
    /// Reads and parses a config file (at most [`MAX_CONFIG_BYTES`]); relative paths are
    /// resolved against its directory. A parse error is one line naming the file, line, key
    /// and what was expected ([`ConfigFileError`], as for the relay's file).
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = read_capped(path, MAX_CONFIG_BYTES).context("config")?;
        let text = String::from_utf8(bytes)
            .with_context(|| format!("config {} is not UTF-8", path.display()))?;
        let mut file: Self = toml::from_str(&text)
            .map_err(|e| ConfigFileError::new(path, &text, e.span(), e.message()))?;
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

    /// The engine tunables this file sets (link tests, key rotation, deadlines), checked.
    pub fn engine_config(&self) -> Result<EngineConfig> {
        let mut engine = EngineConfig::default();
        engine
            .set_link_test_interval(Duration::from_millis(self.link_test_interval_ms))
            .context("link_test_interval_ms")?;
        engine
            .set_key_rotation(Duration::from_secs(self.key_rotation_secs))
            .context("key_rotation_secs")?;
        for (name, d) in &self.deadlines {
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
        Ok(engine)
    }
}

/// A validated node configuration.
#[derive(Debug)]
pub struct NodeConfig {
    /// The relays, all used at once (at least one).
    pub relays: Vec<RelayAddress>,
    /// Data directory.
    pub data_dir: PathBuf,
    /// CA roots.
    pub ca: Vec<CertificateDer<'static>>,
    /// Our certificate chain and private key, as read once at load (`Debug` elides the key).
    credentials: Credentials,
    /// Our identity key, parsed once from `credentials`.
    identity: IdentityKey,
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
        let engine = file.engine_config()?;
        let relays = match (file.relay, file.relays.as_slice()) {
            (Some(addr), []) => vec![RelayAddress::check(&addr, file.relay_name)?],
            (None, []) => bail!("no relay configured: set relay = \"IP:PORT\" or [[relays]]"),
            (Some(_), _) => {
                bail!("both relay and [[relays]] are set; list every relay in [[relays]]")
            }
            (None, list) if list.len() > MAX_RELAYS => {
                bail!("{} relays configured; at most {MAX_RELAYS}", list.len())
            }
            (None, list) => list
                .iter()
                .map(|r| RelayAddress::check(&r.addr, r.name.clone()))
                .collect::<Result<Vec<_>>>()?,
        };
        for (i, r) in relays.iter().enumerate() {
            if relays[..i].iter().any(|o| o.addr == r.addr) {
                bail!("relay {} is listed twice", r.addr);
            }
        }
        let ca = tls::load_certs(&file.ca)?;
        let creds = Credentials::load(&file.cert, &file.key)?;
        let leaf = creds.certs.first().context("certificate file is empty")?;
        tls::check_valid_now(leaf)
            .with_context(|| format!("certificate {}", file.cert.display()))?;
        let local = tls::endpoint_id(leaf)
            .with_context(|| format!("certificate {}", file.cert.display()))?;
        let cert_key = tls::identity_key(leaf)
            .with_context(|| format!("certificate {}", file.cert.display()))?;
        let identity =
            identity_key_from(&creds.key).with_context(|| format!("key {}", file.key.display()))?;
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
            [] => bail!(
                "no [[partner]] configured: pin the partner's key with \
                 `hotline pin --config FILE --partner ID --fingerprint \"…\"`"
            ),
            _ => bail!(
                "{} partners configured; this version supports exactly one per node",
                file.partner.len()
            ),
        };
        if partner.id == local {
            bail!("partner {} is this endpoint itself", partner.id);
        }
        let (keep_alive, idle) = if relays.len() > 1 {
            cfg_defaults::TIMEOUTS_SEVERAL_RELAYS_MS
        } else {
            cfg_defaults::TIMEOUTS_ONE_RELAY_MS
        };
        let timeouts = Timeouts::from_millis(
            file.keep_alive_ms.unwrap_or(keep_alive),
            file.idle_timeout_ms.unwrap_or(idle),
        )?;
        Ok(Self {
            relays,
            data_dir: file.data_dir,
            ca,
            credentials: creds,
            identity,
            local,
            partner,
            engine,
            timeouts,
        })
    }

    /// Our identity key, as parsed at load (a clone shares the one key pair).
    pub fn identity_key(&self) -> IdentityKey {
        self.identity.clone()
    }

    /// Builds the QUIC client configuration from the certificate and key read at load.
    pub fn client_config(&self) -> Result<quinn::ClientConfig, CredentialsError> {
        let creds = Credentials {
            certs: self.credentials.certs.clone(),
            key: self.credentials.key.clone_key(),
        };
        Ok(tls::client_config(&self.ca, creds, self.timeouts)?)
    }
}

/// Why our certificate and key, checked when the configuration was loaded, were still refused
/// when the node built its TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// rustls refused them.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

fn identity_key_from(key: &PrivateKeyDer<'_>) -> Result<IdentityKey> {
    match key {
        PrivateKeyDer::Pkcs8(k) => Ok(IdentityKey::from_pkcs8(k.secret_pkcs8_der())?),
        _ => bail!("endpoint key must be a PKCS#8 Ed25519 key"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::{DeadlineOverrides, InitRequest, RelaySpec};

    /// An exercise PKI with `us.toml`; `edit` rewrites that file's text before it is loaded.
    fn load_with(edit: impl FnOnce(String) -> String) -> Result<NodeConfig> {
        let dir = tempfile::tempdir().unwrap();
        crate::certs::init(
            dir.path(),
            &InitRequest {
                endpoints: vec!["us".into(), "jp".into()],
                pairs: vec![],
                relays: vec![RelaySpec::new("localhost", "127.0.0.1:4433")],
                force: false,
                wipe_data: false,
                days: Default::default(),
                endpoint_keys: true,
            },
            &DeadlineOverrides::new(),
        )
        .unwrap();
        let path = dir.path().join("us.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, edit(text)).unwrap();
        NodeConfig::load(&path)
    }

    fn error_with(edit: impl FnOnce(String) -> String) -> String {
        format!("{:#}", load_with(edit).unwrap_err())
    }

    /// Puts `line` among the top-level keys (before the first table).
    fn top(line: &str) -> impl FnOnce(String) -> String + '_ {
        move |text| format!("{line}\n{text}")
    }

    #[test]
    fn generated_config_loads_with_default_timeouts() {
        let c = load_with(|t| t).unwrap();
        assert_eq!(c.timeouts, Timeouts::default());
    }

    #[test]
    fn timeouts_out_of_range_name_the_key_and_range() {
        let e = error_with(top("idle_timeout_ms = 18446744073709551615"));
        assert!(
            e.contains(
                "idle_timeout_ms must be between 1000 and 3600000, got 18446744073709551615"
            ),
            "{e}"
        );
        let e = error_with(top("keep_alive_ms = 0"));
        assert!(
            e.contains("keep_alive_ms must be between 100 and 60000, got 0"),
            "{e}"
        );
        let e = error_with(top("keep_alive_ms = 9000"));
        assert!(e.contains("idle_timeout_ms (5000) must be larger"), "{e}");
        let e = error_with(top("link_test_interval_ms = 18446744073709551615"));
        assert!(
            e.contains("link_test_interval_ms") && e.contains("between"),
            "{e}"
        );
        let e = error_with(|t| format!("{t}\n[deadlines.flash]\ndelivered_ms = 1\n"));
        assert!(e.contains("delivered_ms") && e.contains("between"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn dev_zero_as_ca_or_key_is_refused_naming_the_path() {
        let started = std::time::Instant::now();
        let e = error_with(|t| t.replace("ca = \"ca.pem\"", "ca = \"/dev/zero\""));
        assert!(
            e.contains("/dev/zero") && e.contains("4194304-byte limit"),
            "{e}"
        );
        let e = error_with(|t| t.replace("key = \"us.key\"", "key = \"/dev/zero\""));
        assert!(e.contains("/dev/zero") && e.contains("limit"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(10));
        let e = format!(
            "{:#}",
            NodeConfig::load(Path::new("/dev/zero")).unwrap_err()
        );
        assert!(
            e.contains("/dev/zero") && e.contains("1048576-byte limit"),
            "{e}"
        );
    }

    #[test]
    fn a_bad_value_or_unknown_key_is_one_line_with_file_line_and_key() {
        let e = error_with(|t| format!("{t}\n[deadlines.flash]\ndelivered_ms = \"soon\"\n"));
        assert!(!e.contains('\n'), "{e}");
        assert!(e.contains("us.toml line "), "{e}");
        assert!(
            e.contains(
                ", key [deadlines.flash] delivered_ms: invalid type: string \"soon\", expected u64"
            ),
            "{e}"
        );
        let e = error_with(top("relay_nmae = \"x\""));
        assert!(!e.contains('\n'), "{e}");
        assert!(
            e.contains(
                "us.toml line 1, key relay_nmae: unknown field `relay_nmae`, expected one of"
            ),
            "{e}"
        );
    }

    #[test]
    fn pinned_key_with_a_sign_is_refused() {
        let e = error_with(|t| {
            let at = t.find("identity_key = \"").unwrap() + "identity_key = \"".len();
            format!("{}+{}", &t[..at], &t[at + 1..])
        });
        assert!(e.contains("identity_key") && e.contains("'+'"), "{e}");
    }

    #[test]
    fn one_relay_or_a_list_of_relays() {
        let c = load_with(|t| t).unwrap();
        assert_eq!(
            c.relays,
            [RelayAddress::at(
                "127.0.0.1:4433".parse().unwrap(),
                "localhost"
            )]
        );
        let two = "[[relays]]\naddr = \"127.0.0.1:4433\"\nname = \"relay-1\"\n\
                   [[relays]]\naddr = \"relay-2.example:4434\"\n";
        let c = load_with(|t| format!("{}\n{two}", drop_relay(&t))).unwrap();
        let addrs: Vec<(&str, &str)> = c
            .relays
            .iter()
            .map(|r| (r.addr.as_str(), r.name.as_str()))
            .collect();
        assert_eq!(
            addrs,
            [
                ("127.0.0.1:4433", "relay-1"),
                ("relay-2.example:4434", "localhost")
            ]
        );
        // With several relays a silent one is given up sooner: another carries the traffic.
        assert_eq!(
            c.timeouts,
            Timeouts::from_millis(500, 2000).unwrap(),
            "defaults with several relays"
        );
        let c =
            load_with(|t| format!("idle_timeout_ms = 9000\n{}\n{two}", drop_relay(&t))).unwrap();
        assert_eq!(c.timeouts, Timeouts::from_millis(500, 9000).unwrap());
        let e = error_with(|t| format!("{t}\n{two}"));
        assert!(e.contains("both relay and [[relays]]"), "{e}");
        let e = error_with(|t| drop_relay(&t));
        assert!(e.contains("no relay configured"), "{e}");
        let e = error_with(|t| t.replace("127.0.0.1:4433", "nowhere"));
        assert!(e.contains("\"nowhere\" is not IP:PORT or HOST:PORT"), "{e}");
        let twice = "[[relays]]\naddr = \"127.0.0.1:1\"\n[[relays]]\naddr = \"127.0.0.1:1\"\n";
        let e = error_with(|t| format!("{}\n{twice}", drop_relay(&t)));
        assert!(e.contains("listed twice"), "{e}");
    }

    /// The config text without its `relay = ...` line.
    fn drop_relay(text: &str) -> String {
        text.lines()
            .filter(|l| !l.starts_with("relay = "))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn the_key_is_read_once_at_load_and_never_shown() {
        // load_with's directory, and with it the key file, is gone once it returns: the TLS
        // configuration and the identity key come from what was parsed at load.
        let c = load_with(|t| t).unwrap();
        c.client_config().unwrap();
        assert_eq!(c.identity_key().public(), c.identity.public());
        let seed = format!("{:?}", &c.credentials.key.secret_der()[16..32]);
        let shown = format!("{c:?} {c:#?}");
        assert!(!shown.contains(seed.trim_matches(['[', ']'])), "{shown}");
        assert!(shown.contains("secret key elided"), "{shown}");
    }
}
