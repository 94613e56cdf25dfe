//! quinn endpoints with Hotline's transport settings.

use std::net::{SocketAddr, UdpSocket};
use std::ops::RangeInclusive;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use zeroize::Zeroizing;

use crate::bounds::{OutOfRange, check_range, read_capped};

/// Keep-alive and idle timeout. Defaults: 1 s and 5 s, so a dead peer is noticed in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// QUIC keep-alive interval.
    pub keep_alive: Duration,
    /// QUIC idle timeout.
    pub idle: Duration,
}

impl Timeouts {
    /// Allowed `keep_alive_ms`: 100 ms to 1 min.
    pub const KEEP_ALIVE_MS: RangeInclusive<u64> = 100..=60_000;
    /// Allowed `idle_timeout_ms`: 1 s to 1 h (and above the keep-alive interval).
    pub const IDLE_TIMEOUT_MS: RangeInclusive<u64> = 1_000..=3_600_000;

    /// Timeouts from a configuration's `keep_alive_ms` and `idle_timeout_ms`, each checked
    /// against its range, the idle timeout longer than the keep-alive interval.
    pub fn from_millis(keep_alive_ms: u64, idle_timeout_ms: u64) -> Result<Self, TimeoutsError> {
        let keep_alive = check_range("keep_alive_ms", keep_alive_ms, Self::KEEP_ALIVE_MS)?;
        let idle = check_range("idle_timeout_ms", idle_timeout_ms, Self::IDLE_TIMEOUT_MS)?;
        if idle <= keep_alive {
            return Err(TimeoutsError::IdleNotAboveKeepAlive { keep_alive, idle });
        }
        Ok(Self {
            keep_alive: Duration::from_millis(keep_alive),
            idle: Duration::from_millis(idle),
        })
    }
}

/// Why configured timeouts were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeoutsError {
    /// One value is outside its range.
    #[error(transparent)]
    OutOfRange(#[from] OutOfRange),
    /// The idle timeout would expire before a keep-alive could be sent.
    #[error("idle_timeout_ms ({idle}) must be larger than keep_alive_ms ({keep_alive})")]
    IdleNotAboveKeepAlive {
        /// `keep_alive_ms`.
        keep_alive: u64,
        /// `idle_timeout_ms`.
        idle: u64,
    },
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            keep_alive: Duration::from_secs(1),
            idle: Duration::from_secs(5),
        }
    }
}

/// Per-stream receive window: how far a relay may write ahead on one lane of a node that is not
/// reading. This is the per-lane write-ahead bound.
pub const LANE_WINDOW_BYTES: u32 = 256 * 1024;

/// Transport configuration shared by both sides.
pub fn transport(timeouts: Timeouts) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(timeouts.keep_alive));
    // Cannot fail for durations far below the QUIC varint limit (2^62 ms).
    t.max_idle_timeout(quinn::IdleTimeout::try_from(timeouts.idle).ok());
    t.stream_receive_window(quinn::VarInt::from_u32(LANE_WINDOW_BYTES));
    t.receive_window(quinn::VarInt::from_u32(16 * 1024 * 1024));
    t.send_window(16 * 1024 * 1024);
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(16));
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(4));
    t.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()));
    Arc::new(t)
}

/// Why an endpoint could not be created.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// Socket or file trouble.
    #[error("{what}: {error}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        error: std::io::Error,
    },
}

/// Loads (or creates, mode 0600) the 32-byte stateless-reset key at `path`.
pub fn reset_key(path: &Path) -> Result<ring::hmac::Key, EndpointError> {
    let io = |what: String| move |error| EndpointError::Io { what, error };
    // Anything but 32 bytes (missing, short, or a runaway file) is replaced by a fresh key.
    let bytes = match read_capped(path, 32).map(Zeroizing::new) {
        Ok(b) if b.len() == 32 => b,
        Ok(_) | Err(_) => {
            let mut b = [0u8; 32];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).map_err(
                |_| EndpointError::Io {
                    what: "generating reset key".into(),
                    error: std::io::Error::other("system RNG failed"),
                },
            )?;
            write_private(path, &b).map_err(io(format!("writing {}", path.display())))?;
            let key = Zeroizing::new(b.to_vec());
            zeroize::Zeroize::zeroize(&mut b);
            key
        }
    };
    Ok(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &bytes))
}

/// Writes a file readable only by its owner. The temporary file beside it is made fresh
/// (`create_new`: a leftover is removed first, and a symlink planted there is not followed),
/// so it cannot carry looser permissions or point elsewhere.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// A server endpoint on an already-bound socket (tests bind port 0).
pub fn server(
    socket: UdpSocket,
    config: quinn::ServerConfig,
    reset_key: Option<ring::hmac::Key>,
) -> Result<quinn::Endpoint, EndpointError> {
    let mut ep_config = quinn::EndpointConfig::default();
    if let Some(key) = reset_key {
        // Connection ids are signed with a key (quinn's hashed generator) and a packet whose id
        // does not verify is dropped before a stateless reset is considered. With a random key
        // per start, a restarted relay dropped its old connections' packets silently and the
        // nodes waited for their idle timeout; with a key derived from the persisted reset key
        // it recognises them and resets them at once.
        let tag = ring::hmac::sign(&key, b"hotline relay connection id key");
        let mut cid_key = [0u8; 8];
        cid_key.copy_from_slice(&tag.as_ref()[..8]);
        let cid_key = u64::from_le_bytes(cid_key);
        ep_config = quinn::EndpointConfig::new(Arc::new(key));
        ep_config.cid_generator(move || {
            Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
        });
    }
    let runtime = quinn::default_runtime().ok_or_else(|| EndpointError::Io {
        what: "starting QUIC".into(),
        error: std::io::Error::other("no async runtime"),
    })?;
    quinn::Endpoint::new(ep_config, Some(config), socket, runtime).map_err(|error| {
        EndpointError::Io {
            what: "creating QUIC endpoint".into(),
            error,
        }
    })
}

/// A client endpoint on an ephemeral loopback-or-any port matching `remote`'s family.
pub fn client(
    remote: SocketAddr,
    config: quinn::ClientConfig,
) -> Result<quinn::Endpoint, EndpointError> {
    let bind: SocketAddr = if remote.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    }
    .parse()
    .map_err(|_| EndpointError::Io {
        what: "bind address".into(),
        error: std::io::Error::other("parse"),
    })?;
    let mut ep = quinn::Endpoint::client(bind).map_err(|error| EndpointError::Io {
        what: format!("binding UDP socket {bind}"),
        error,
    })?;
    ep.set_default_client_config(config);
    Ok(ep)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::write_private;

    #[test]
    fn a_private_file_is_0600_even_over_a_loose_leftover_or_a_planted_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("us.key");
        let tmp = dir.path().join("us.tmp");
        std::fs::write(&tmp, b"old").unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&key, b"secret").unwrap();
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read(&key).unwrap(), b"secret");

        let elsewhere = dir.path().join("elsewhere");
        std::fs::write(&elsewhere, b"untouched").unwrap();
        std::os::unix::fs::symlink(&elsewhere, &tmp).unwrap();
        write_private(&key, b"again").unwrap();
        assert_eq!(std::fs::read(&elsewhere).unwrap(), b"untouched");
        assert_eq!(std::fs::read(&key).unwrap(), b"again");
    }
}
