//! `relay.toml` into the library's typed [`ServerConfig`]: parse, check every number against
//! its range (the error names the key and the range), resolve paths against the file's
//! directory, and load and check the CA, certificate, key and CRL (files read with a size cap).
//!
//! Part of the `hotline-relay` binary only; the library takes a [`ServerConfig`] and never
//! reads a file of settings. Every key is documented, with its default, in
//! `deploy/relay.example.toml`, which a test here parses.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use hotline_net::bounds::{MAX_CONFIG_BYTES, OutOfRange, check_range, read_capped};
use hotline_net::config_file::ConfigFileError;
use hotline_net::{crl, tls};
use hotline_proto::EndpointId;
use hotline_relay::{Credentials, HandshakeLimits, IdentityLimits, ServerConfig, Timeouts, Ttl};
use rustls_pki_types::CertificateDer;
use serde::Deserialize;
use tracing::warn;
use x509_parser::certificate::X509Certificate;

/// The relay configuration file. Every key is documented, with its default, in
/// `deploy/relay.example.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// UDP address to listen on.
    listen: SocketAddr,
    /// State directory (holds the store `relay.redb` and the stateless-reset key).
    data_dir: PathBuf,
    /// CA certificate(s), PEM.
    ca: PathBuf,
    /// Relay certificate chain, PEM.
    cert: PathBuf,
    /// Relay private key, PEM.
    key: PathBuf,
    /// Certificate revocation list, PEM; none by default. It must be signed by `ca`.
    #[serde(default)]
    crl: Option<PathBuf>,
    /// What an expired CRL (past its next update) does: `warn` (default: a loud warning, the
    /// `crl_expired` metric at 1, the relay runs) or `fail` (refused at start and by `check`,
    /// and enforced in every handshake).
    #[serde(default)]
    crl_expired: CrlExpiredPolicy,
    /// TCP address of the metrics listener (`/metrics`, `/healthz`, `/readyz`, `/status`), or
    /// `"off"`; [`DEFAULT_METRICS`] by default. Loopback only unless `metrics_allow_remote`.
    #[serde(default)]
    metrics: Option<String>,
    /// Serve metrics on a non-loopback address (they show who talks to whom, and when).
    #[serde(default)]
    metrics_allow_remote: bool,
    /// QUIC keep-alive interval in milliseconds, 100 ..= 60000.
    #[serde(default = "cfg_defaults::keep_alive_ms")]
    keep_alive_ms: u64,
    /// QUIC idle timeout in milliseconds, 1000 ..= 3600000 and above `keep_alive_ms`.
    #[serde(default = "cfg_defaults::idle_timeout_ms")]
    idle_timeout_ms: u64,
    /// Bytes queued for one endpoint past which routine messages are refused,
    /// [`MAX_QUEUE_BYTES_RANGE`].
    #[serde(default = "cfg_defaults::max_queue_bytes_per_endpoint")]
    max_queue_bytes_per_endpoint: u64,
    /// Envelope bytes queued for all endpoints together, shared out in per-sender quotas,
    /// [`MAX_QUEUED_BYTES_TOTAL_RANGE`].
    #[serde(default = "cfg_defaults::max_queued_bytes_total")]
    max_queued_bytes_total: u64,
    /// Bytes of queued envelopes also held in memory, [`MAX_QUEUED_BYTES_IN_MEMORY_RANGE`].
    #[serde(default = "cfg_defaults::max_queued_bytes_in_memory")]
    max_queued_bytes_in_memory: u64,
    /// Time-to-live of queued envelopes per transport lane, `[ttl]`.
    #[serde(default)]
    ttl: TtlConfig,
    /// Limits on connections that have not said Hello yet, `[handshake]`.
    #[serde(default)]
    handshake: HandshakeConfig,
    /// What to do when two connections claim one identity, `[identity]`.
    #[serde(default)]
    identity: IdentityConfig,
    /// The hotlines, `[[hotline]]` tables.
    #[serde(default, rename = "hotline")]
    hotlines: Vec<HotlineConfig>,
}

/// `crl_expired = "warn" | "fail"`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum CrlExpiredPolicy {
    #[default]
    Warn,
    Fail,
}

/// One `[[hotline]]`: two endpoint ids, as in their certificates.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HotlineConfig {
    a: EndpointId,
    b: EndpointId,
}

/// `[ttl]`: seconds a queued envelope is held per transport lane, [`TTL_S_RANGE`]; 0 holds it
/// until delivered.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TtlConfig {
    /// Default 86400 (one day).
    #[serde(default = "cfg_defaults::ttl_routine_s")]
    routine_s: u64,
    /// Default 172800 (two days).
    #[serde(default = "cfg_defaults::ttl_priority_s")]
    priority_s: u64,
    /// Default 259200 (three days).
    #[serde(default = "cfg_defaults::ttl_immediate_s")]
    immediate_s: u64,
    /// Default 604800 (seven days).
    #[serde(default = "cfg_defaults::ttl_flash_s")]
    flash_s: u64,
}

impl Default for TtlConfig {
    fn default() -> Self {
        Self {
            routine_s: cfg_defaults::ttl_routine_s(),
            priority_s: cfg_defaults::ttl_priority_s(),
            immediate_s: cfg_defaults::ttl_immediate_s(),
            flash_s: cfg_defaults::ttl_flash_s(),
        }
    }
}

/// `[handshake]`: limits on connections between their first packet and their Hello. Every key
/// is optional; the defaults are [`HandshakeLimits::default`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HandshakeConfig {
    /// Attempts per second from unvalidated addresses before QUIC Retry, 1 ..= 100000.
    unvalidated_per_second: Option<u64>,
    /// Handshakes in progress at once, 1 ..= 1000000.
    max_handshakes: Option<u64>,
    /// Of those, per remote IP address, 1 ..= 1000000.
    max_per_address: Option<u64>,
    /// Of those past TLS, per identity, 1 ..= 1000.
    max_per_identity: Option<u64>,
    /// Time from first packet to Hello, milliseconds, 500 ..= 60000.
    hello_timeout_ms: Option<u64>,
}

impl HandshakeConfig {
    fn into_limits(self) -> Result<HandshakeLimits, OutOfRange> {
        let mut l = HandshakeLimits::default();
        let key = |k: &str| format!("[handshake] {k}");
        if let Some(v) = self.unvalidated_per_second {
            let v = check_range(&key("unvalidated_per_second"), v, 1..=100_000)?;
            l.unvalidated_per_second = u32::try_from(v).unwrap_or(u32::MAX);
        }
        if let Some(v) = self.max_handshakes {
            l.max_handshakes = as_usize(check_range(&key("max_handshakes"), v, 1..=1_000_000)?);
        }
        if let Some(v) = self.max_per_address {
            l.max_per_address = as_usize(check_range(&key("max_per_address"), v, 1..=1_000_000)?);
        }
        if let Some(v) = self.max_per_identity {
            l.max_per_identity = as_usize(check_range(&key("max_per_identity"), v, 1..=1000)?);
        }
        if let Some(v) = self.hello_timeout_ms {
            l.hello_timeout =
                Duration::from_millis(check_range(&key("hello_timeout_ms"), v, 500..=60_000)?);
        }
        Ok(l)
    }
}

/// `[identity]`: how the relay stops two connections with one identity from displacing each
/// other. Every key is optional; the defaults are [`IdentityLimits::default`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityConfig {
    /// Displacements within the window after which newcomers are refused, 0 ..= 1000.
    flips: Option<u64>,
    /// The window, seconds, 1 ..= 86400.
    window_s: Option<u64>,
    /// First back-off, seconds, 1 ..= 86400.
    backoff_s: Option<u64>,
    /// Longest back-off, seconds, 1 ..= 604800, and at least `backoff_s`.
    max_backoff_s: Option<u64>,
}

impl IdentityConfig {
    fn into_limits(self) -> anyhow::Result<IdentityLimits> {
        let mut l = IdentityLimits::default();
        let key = |k: &str| format!("[identity] {k}");
        if let Some(v) = self.flips {
            l.flips = u32::try_from(check_range(&key("flips"), v, 0..=1000)?).unwrap_or(u32::MAX);
        }
        if let Some(v) = self.window_s {
            l.window = Duration::from_secs(check_range(&key("window_s"), v, 1..=86_400)?);
        }
        if let Some(v) = self.backoff_s {
            l.backoff = Duration::from_secs(check_range(&key("backoff_s"), v, 1..=86_400)?);
        }
        if let Some(v) = self.max_backoff_s {
            l.max_backoff =
                Duration::from_secs(check_range(&key("max_backoff_s"), v, 1..=604_800)?);
        }
        if l.max_backoff < l.backoff {
            bail!("[identity] max_backoff_s must be at least backoff_s");
        }
        Ok(l)
    }
}

fn as_usize(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

/// Allowed `max_queue_bytes_per_endpoint`: 1 MiB (room for the largest envelope) to 64 GiB.
const MAX_QUEUE_BYTES_RANGE: RangeInclusive<u64> = 1 << 20..=64 << 30;

/// Allowed `max_queued_bytes_total`: 16 MiB (a few of the largest envelopes) to 1 TiB.
const MAX_QUEUED_BYTES_TOTAL_RANGE: RangeInclusive<u64> = 16 << 20..=1 << 40;

/// Allowed `max_queued_bytes_in_memory`: 1 MiB (a few of the largest envelopes) to 1 TiB.
const MAX_QUEUED_BYTES_IN_MEMORY_RANGE: RangeInclusive<u64> = 1 << 20..=1 << 40;

/// Allowed non-zero `[ttl]` values: 1 s to 366 days. Far larger ones would overflow the
/// relay's clock arithmetic.
const TTL_S_RANGE: RangeInclusive<u64> = 1..=366 * 24 * 3600;

impl TtlConfig {
    fn into_ttl(self) -> Result<Ttl, OutOfRange> {
        let secs = |key: &str, s: u64| match s {
            0 => Ok(None),
            s => check_range(key, s, TTL_S_RANGE).map(|s| Some(Duration::from_secs(s))),
        };
        Ok(Ttl {
            routine: secs("[ttl] routine_s (0 = until delivered)", self.routine_s)?,
            priority: secs("[ttl] priority_s (0 = until delivered)", self.priority_s)?,
            immediate: secs("[ttl] immediate_s (0 = until delivered)", self.immediate_s)?,
            flash: secs("[ttl] flash_s (0 = until delivered)", self.flash_s)?,
        })
    }
}

mod cfg_defaults {
    use hotline_relay::Ttl;

    pub(crate) fn ttl_routine_s() -> u64 {
        Ttl::DEFAULT_ROUTINE.as_secs()
    }
    pub(crate) fn ttl_priority_s() -> u64 {
        Ttl::DEFAULT_PRIORITY.as_secs()
    }
    pub(crate) fn ttl_immediate_s() -> u64 {
        Ttl::DEFAULT_IMMEDIATE.as_secs()
    }
    pub(crate) fn ttl_flash_s() -> u64 {
        Ttl::DEFAULT_FLASH.as_secs()
    }

    pub(crate) fn keep_alive_ms() -> u64 {
        1000
    }
    pub(crate) fn idle_timeout_ms() -> u64 {
        5000
    }
    pub(crate) fn max_queue_bytes_per_endpoint() -> u64 {
        hotline_relay::Limits::DEFAULT_MAX_QUEUE_BYTES
    }
    pub(crate) fn max_queued_bytes_total() -> u64 {
        hotline_relay::Limits::DEFAULT_MAX_QUEUED_BYTES_TOTAL
    }
    pub(crate) fn max_queued_bytes_in_memory() -> u64 {
        hotline_relay::Limits::DEFAULT_MAX_IN_MEMORY_BYTES
    }
}

/// The metrics listener's address when relay.toml does not set `metrics`.
pub(crate) const DEFAULT_METRICS: &str = "127.0.0.1:9464";

/// The metrics address `metrics = …` asks for (`None`: `"off"`). A non-loopback address is
/// refused unless `allow_remote`, and then warned about: `/metrics` and `/status` show which
/// endpoints are connected, from where, and how much they exchange.
fn metrics_addr(value: Option<&str>, allow_remote: bool) -> anyhow::Result<Option<SocketAddr>> {
    let value = value.unwrap_or(DEFAULT_METRICS);
    if value == "off" {
        return Ok(None);
    }
    let Ok(addr) = value.parse::<SocketAddr>() else {
        bail!(
            "metrics = {value:?}: expected an IP address with a port (like {DEFAULT_METRICS:?}) or \"off\""
        );
    };
    if !addr.ip().is_loopback() {
        if !allow_remote {
            bail!(
                "metrics = \"{addr}\" is not a loopback address: /metrics and /status show which \
                 endpoints are connected and from where; set metrics_allow_remote = true to serve \
                 them there anyway"
            );
        }
        warn!(
            %addr,
            "metrics and /status are served on a non-loopback address: anyone who reaches it \
             sees which endpoints are connected and from where"
        );
    }
    Ok(Some(addr))
}

/// The metrics listener's address configured in `path` (`None`: off), for
/// `hotline-relay status`; reads nothing else (no certificates).
pub(crate) fn load_metrics_addr(path: &Path) -> anyhow::Result<Option<SocketAddr>> {
    let text = String::from_utf8(read_capped(path, MAX_CONFIG_BYTES)?)
        .with_context(|| format!("{} is not UTF-8", path.display()))?;
    let config: Config = toml::from_str(&text)
        .map_err(|e| ConfigFileError::new(path, &text, e.span(), e.message()))?;
    metrics_addr(config.metrics.as_deref(), config.metrics_allow_remote)
        .with_context(|| path.display().to_string())
}

/// Reads `path` and turns it into a [`ServerConfig`]: parses, resolves relative paths against
/// the file's directory, loads the CA, certificate, key and CRL, checks that the certificates
/// are valid now and that the TLS configuration builds (the key matches the certificate).
pub(crate) fn load(path: &Path) -> anyhow::Result<ServerConfig> {
    let text = String::from_utf8(read_capped(path, MAX_CONFIG_BYTES)?)
        .with_context(|| format!("{} is not UTF-8", path.display()))?;
    let config: Config = toml::from_str(&text)
        .map_err(|e| ConfigFileError::new(path, &text, e.span(), e.message()))?;
    config
        .into_server_config(path.parent().unwrap_or(Path::new(".")))
        .with_context(|| path.display().to_string())
}

/// The data directory `path` names (resolved against its directory), without loading or
/// checking anything else: for `hotline-relay reload`, which only needs the admin socket.
pub(crate) fn data_dir(path: &Path) -> anyhow::Result<PathBuf> {
    let text = String::from_utf8(read_capped(path, MAX_CONFIG_BYTES)?)
        .with_context(|| format!("{} is not UTF-8", path.display()))?;
    /// Only the key needed: the rest may be what the running relay is about to refuse.
    #[derive(Deserialize)]
    struct DataDirOnly {
        data_dir: PathBuf,
    }
    let config: DataDirOnly = toml::from_str(&text)
        .map_err(|e| ConfigFileError::new(path, &text, e.span(), e.message()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    Ok(if config.data_dir.is_absolute() {
        config.data_dir
    } else {
        base.join(config.data_dir)
    })
}

impl Config {
    fn into_server_config(self, base: &Path) -> anyhow::Result<ServerConfig> {
        let resolve = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        if self.hotlines.is_empty() {
            bail!("no [[hotline]] configured");
        }
        let mut hotlines = Vec::with_capacity(self.hotlines.len());
        for h in self.hotlines {
            if h.a == h.b {
                bail!("hotline {}:{} pairs an endpoint with itself", h.a, h.b);
            }
            hotlines.push((h.a, h.b));
        }
        let timeouts = Timeouts::from_millis(self.keep_alive_ms, self.idle_timeout_ms)?;
        let max_queue_bytes_per_endpoint = check_range(
            "max_queue_bytes_per_endpoint",
            self.max_queue_bytes_per_endpoint,
            MAX_QUEUE_BYTES_RANGE,
        )?;
        let max_queued_bytes_total = check_range(
            "max_queued_bytes_total",
            self.max_queued_bytes_total,
            MAX_QUEUED_BYTES_TOTAL_RANGE,
        )?;
        let max_queued_bytes_in_memory = check_range(
            "max_queued_bytes_in_memory",
            self.max_queued_bytes_in_memory,
            MAX_QUEUED_BYTES_IN_MEMORY_RANGE,
        )?;
        let metrics = metrics_addr(self.metrics.as_deref(), self.metrics_allow_remote)?;
        let ttl = self.ttl.into_ttl()?;
        let handshake = self.handshake.into_limits()?;
        let identity = self.identity.into_limits()?;

        let ca_path = resolve(self.ca);
        let ca = tls::load_certs(&ca_path).map_err(one_line)?;
        for cert in &ca {
            tls::check_valid_now(cert)
                .map_err(one_line)
                .with_context(|| format!("ca {}", ca_path.display()))?;
            check_is_ca(cert).with_context(|| format!("ca {}", ca_path.display()))?;
        }
        let (cert_path, key_path) = (resolve(self.cert), resolve(self.key));
        let credentials = Credentials::load(&cert_path, &key_path).map_err(one_line)?;
        for cert in &credentials.certs {
            tls::check_valid_now(cert)
                .map_err(one_line)
                .with_context(|| format!("cert {}", cert_path.display()))?;
        }
        if let Some(leaf) = credentials.certs.first() {
            check_server_usage(leaf).with_context(|| format!("cert {}", cert_path.display()))?;
        }
        check_issued_by(&credentials.certs, &ca).with_context(|| {
            format!(
                "cert {} is not issued by ca {}",
                cert_path.display(),
                ca_path.display()
            )
        })?;
        let (crls, crl_next_update) = match self.crl {
            Some(p) => {
                let path = resolve(p);
                let crl = tls::load_crl(&path).map_err(one_line)?;
                let info =
                    crl::verify(&crl, &ca).with_context(|| format!("crl {}", path.display()))?;
                if info.expired_at(SystemTime::now()) {
                    let due = humantime::format_rfc3339_seconds(info.next_update);
                    if self.crl_expired == CrlExpiredPolicy::Fail {
                        bail!(
                            "crl {}: expired (next update was due {due}); issue a new one \
                             (hotline certs revoke) or set crl_expired = \"warn\"",
                            path.display()
                        );
                    }
                    warn!(
                        crl = %path.display(),
                        next_update = %due,
                        "THE CRL HAS EXPIRED: revocations newer than it are not known; issue a \
                         new one with `hotline certs revoke` (crl_expired = \"warn\" keeps the \
                         relay running)"
                    );
                }
                (vec![crl], Some(info.next_update))
            }
            None => (Vec::new(), None),
        };
        let config = ServerConfig {
            listen: self.listen,
            ca,
            credentials,
            crls,
            crl_next_update,
            enforce_crl_expiry: self.crl_expired == CrlExpiredPolicy::Fail,
            data_dir: resolve(self.data_dir),
            hotlines,
            timeouts,
            max_queue_bytes_per_endpoint,
            max_queued_bytes_total,
            max_queued_bytes_in_memory,
            ttl,
            identity,
            handshake,
            metrics,
        };
        config.quic_config().map_err(one_line).with_context(|| {
            format!(
                "cert {} with key {}",
                cert_path.display(),
                key_path.display()
            )
        })?;
        Ok(config)
    }
}

/// A TLS error as one clause, with words for the common mistake of a key that belongs to
/// another certificate.
fn one_line(e: tls::TlsError) -> anyhow::Error {
    match e {
        tls::TlsError::Rustls(rustls::Error::InconsistentKeys(_)) => {
            anyhow::anyhow!("the key does not match the certificate")
        }
        e => anyhow::anyhow!("{e}"),
    }
}

fn parse<'a>(cert: &'a CertificateDer<'_>) -> anyhow::Result<X509Certificate<'a>> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| anyhow::anyhow!("certificate does not parse: {e}"))?;
    Ok(parsed)
}

/// A trust anchor must be a CA certificate: a node or relay certificate named as `ca` would
/// otherwise be accepted by the verifier and fail every handshake.
fn check_is_ca(cert: &CertificateDer<'_>) -> anyhow::Result<()> {
    let parsed = parse(cert)?;
    if !parsed.is_ca() {
        bail!("{} is not a CA certificate", parsed.subject());
    }
    Ok(())
}

/// Nodes verify the relay as a TLS server: its certificate must carry the extended key usage
/// extension with serverAuth (webpki would accept one without the extension).
fn check_server_usage(cert: &CertificateDer<'_>) -> anyhow::Result<()> {
    tls::check_server_usage(cert).map_err(one_line)
}

/// Each certificate of `chain` is signed by the next, and the last by (or equal to) one of `ca`,
/// so nodes trusting `ca` will accept the relay.
fn check_issued_by(chain: &[CertificateDer<'_>], ca: &[CertificateDer<'_>]) -> anyhow::Result<()> {
    let parsed = chain
        .iter()
        .map(parse)
        .collect::<anyhow::Result<Vec<_>>>()?;
    for pair in parsed.windows(2) {
        pair[0]
            .verify_signature(Some(pair[1].public_key()))
            .map_err(|_| {
                anyhow::anyhow!("{} does not sign {}", pair[1].subject(), pair[0].subject())
            })?;
    }
    let (Some(top), Some(top_der)) = (parsed.last(), chain.last()) else {
        bail!("empty certificate chain");
    };
    if ca.iter().any(|c| c == top_der) {
        return Ok(());
    }
    for anchor in ca {
        if top
            .verify_signature(Some(parse(anchor)?.public_key()))
            .is_ok()
        {
            return Ok(());
        }
    }
    bail!("its issuer is {}", top.issuer())
}

#[cfg(test)]
mod tests;
