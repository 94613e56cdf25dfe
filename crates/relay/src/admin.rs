//! The relay's local admin socket: `hotline-relay reload` and `status` talk to a running relay.
//!
//! A Unix socket at `<data_dir>/admin.sock` ([`socket_path`]), mode 0600 (only the relay's
//! user may reload it). One JSON request line per connection, one JSON reply line back, in the
//! style of the node's control socket:
//!
//! ```text
//! → {"request":"reload"}
//! ← {"reply":"reloaded","summary":"hotlines added: fr:uk; removed: none; …"}
//! → {"request":"status"}
//! ← {"reply":"status","config":"/etc/hotline/relay.toml","hotlines":2,"endpoints":4,"connected":[…]}
//! ← {"reply":"error","error":"listen cannot change on reload; restart the relay"}
//! ```
//!
//! The library only carries lines: [`serve`] hands each request to whoever runs the relay
//! (the binary, which re-reads its file for `reload`) and writes back its answer. A request
//! line is capped at [`MAX_LINE`] bytes, clients are served one at a time, each within
//! [`CLIENT_TIMEOUT`], so the socket costs bounded memory whatever connects to it.

use std::io::{BufRead, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use crate::server::ConnectedEndpoint;

/// The socket's file name in the relay's data directory.
pub const SOCKET_FILE: &str = "admin.sock";

/// The longest request line accepted, in bytes.
pub const MAX_LINE: usize = 4096;

/// How long one client has to send its request and take its reply.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// The admin socket of a relay whose data directory is `data_dir`.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_FILE)
}

/// One request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum AdminRequest {
    /// Re-read the configuration file, certificates and CRL, and apply them.
    Reload,
    /// What the relay runs with.
    Status,
}

/// The status a running relay reports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminStatus {
    /// The configuration file it runs from.
    pub config: PathBuf,
    /// Configured hotlines.
    pub hotlines: usize,
    /// Endpoints in some hotline.
    pub endpoints: usize,
    /// Registered connections.
    pub connected: Vec<ConnectedEndpoint>,
}

/// One reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum AdminReply {
    /// The reload was applied; what changed, in one line.
    Reloaded {
        /// The summary.
        summary: String,
    },
    /// The relay's status.
    Status(AdminStatus),
    /// The request failed (for `reload`: the old configuration stays in force).
    Error {
        /// Why, in one line.
        error: String,
    },
}

/// A request from the socket and where its answer goes.
pub type AdminJob = (AdminRequest, oneshot::Sender<AdminReply>);

/// Why the admin socket could not be opened or asked.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Binding, connecting, reading or writing failed.
    #[error("admin socket {path}: {error}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The relay's reply does not parse.
    #[error("admin socket {path}: unreadable reply: {error}")]
    Reply {
        /// The socket.
        path: PathBuf,
        /// Why.
        error: serde_json::Error,
    },
}

/// Binds the admin socket at `path`, mode 0600, replacing a stale one (the relay holds its
/// store's lock, so no other relay serves this data directory).
pub fn bind(path: &Path) -> Result<UnixListener, AdminError> {
    let io = |error| AdminError::Io {
        path: path.to_owned(),
        error,
    };
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    Ok(listener)
}

/// Serves the admin socket until `jobs`' receiver goes away: each client's request goes to
/// `jobs`, its answer back to the client. One client at a time.
pub async fn serve(listener: UnixListener, jobs: mpsc::Sender<AdminJob>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, say: do not spin.
                debug!(error = %e, "admin accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        match tokio::time::timeout(CLIENT_TIMEOUT, serve_one(stream, &jobs)).await {
            Ok(Ok(true)) | Err(_) => {}
            Ok(Ok(false)) => return,
            Ok(Err(e)) => debug!(error = %e, "admin client"),
        }
    }
}

/// One client: one request line, one reply line. `Ok(false)` once the relay stopped taking
/// requests.
async fn serve_one(stream: UnixStream, jobs: &mpsc::Sender<AdminJob>) -> std::io::Result<bool> {
    let (read, mut write) = stream.into_split();
    let mut line = Vec::new();
    // One byte more than allowed, to tell a long line from one that fits.
    let limit = u64::try_from(MAX_LINE + 1).unwrap_or(u64::MAX);
    BufReader::new(read)
        .take(limit)
        .read_until(b'\n', &mut line)
        .await?;
    let reply = if line.len() > MAX_LINE {
        AdminReply::Error {
            error: format!("request longer than {MAX_LINE} bytes"),
        }
    } else {
        match serde_json::from_slice::<AdminRequest>(&line) {
            Err(e) => AdminReply::Error {
                error: format!("unreadable request: {e}"),
            },
            Ok(request) => {
                let (tx, rx) = oneshot::channel();
                if jobs.send((request, tx)).await.is_err() {
                    return Ok(false);
                }
                match rx.await {
                    Ok(reply) => reply,
                    Err(_) => return Ok(false),
                }
            }
        }
    };
    let mut out = serde_json::to_vec(&reply).unwrap_or_default();
    out.push(b'\n');
    write.write_all(&out).await?;
    write.shutdown().await?;
    Ok(true)
}

/// Sends `request` to the relay listening at `path` and returns its reply (blocking).
pub fn request(path: &Path, request: AdminRequest) -> Result<AdminReply, AdminError> {
    let io = |error| AdminError::Io {
        path: path.to_owned(),
        error,
    };
    let mut stream = std::os::unix::net::UnixStream::connect(path).map_err(io)?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT)).map_err(io)?;
    let mut line = serde_json::to_vec(&request).unwrap_or_default();
    line.push(b'\n');
    stream.write_all(&line).map_err(io)?;
    let mut reply = Vec::new();
    // A reply (a status with many connections) may be long, but not unbounded.
    std::io::BufReader::new(stream.take(16 << 20))
        .read_until(b'\n', &mut reply)
        .map_err(io)?;
    serde_json::from_slice(&reply).map_err(|error| AdminError::Reply {
        path: path.to_owned(),
        error,
    })
}
