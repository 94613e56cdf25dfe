//! A point-in-time view of a running relay for its operator: the hotlines, each endpoint's
//! connection and queues, and the store's size.
//!
//! [`Server::status`](crate::Server::status) takes the snapshot; the metrics listener serves it
//! as JSON at `GET /status`, and `hotline-relay status` fetches it from there with [`fetch`]
//! and prints [`Status::to_text`] (or the JSON). The types are plain serde data so that any
//! other channel (an admin socket) can carry the same snapshot.
//!
//! Everything named here comes from the relay's configuration (hotlines, endpoints) or from
//! the relay itself; nothing is taken from the network except the remote addresses of
//! connected endpoints.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// A relay's status at one moment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The relay's software version.
    pub version: String,
    /// When the snapshot was taken, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The store file (`data_dir/relay.redb`).
    pub store_path: String,
    /// Its size in bytes (0 if it could not be read).
    pub store_bytes: u64,
    /// The configured hotlines, in configuration order.
    pub hotlines: Vec<HotlineStatus>,
}

/// One configured hotline: its two endpoints and what is queued between them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HotlineStatus {
    /// `a:b`, as configured; the `hotline` label of the metrics.
    pub name: String,
    /// Its endpoints, `a` then `b`.
    pub endpoints: [EndpointStatus; 2],
    /// Envelope bytes queued from `a` for `b`.
    pub queued_a_to_b_bytes: u64,
    /// Envelope bytes queued from `b` for `a`.
    pub queued_b_to_a_bytes: u64,
}

/// One endpoint: its live connection, if any, and what is queued for it (over all its
/// hotlines, since an endpoint may be in several).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointStatus {
    /// The endpoint id.
    pub endpoint: String,
    /// Its live connection; `None` while it is offline.
    pub connection: Option<ConnectionStatus>,
    /// What waits for it, per queue: `control`, then the lanes from `flash` to `routine`.
    pub queued: Vec<QueueStatus>,
}

/// A live connection of an endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionStatus {
    /// The node's remote address.
    pub remote: String,
    /// When it registered (said `Hello`), milliseconds since the Unix epoch.
    pub since_ms: u64,
    /// When the last frame arrived from it, milliseconds since the Unix epoch; `None` if none
    /// has since it registered.
    pub last_frame_ms: Option<u64>,
}

/// What waits in one queue of one endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStatus {
    /// Which queue: a precedence lane or `control`.
    pub queue: String,
    /// Frames waiting (envelopes on a lane; receipts, replies, notices on control).
    pub frames: u64,
    /// Their bytes.
    pub bytes: u64,
}

impl Status {
    /// One line for the store, then one per hotline and one per endpoint under it.
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "relay {}: store {} ({} bytes)\n",
            self.version, self.store_path, self.store_bytes
        );
        for h in &self.hotlines {
            let [a, b] = &h.endpoints;
            // Writing into a String cannot fail.
            let _ = writeln!(
                out,
                "hotline {}: queued {}→{} {} B, {}→{} {} B",
                h.name,
                a.endpoint,
                b.endpoint,
                h.queued_a_to_b_bytes,
                b.endpoint,
                a.endpoint,
                h.queued_b_to_a_bytes
            );
            for e in &h.endpoints {
                let _ = writeln!(out, "  {}", e.to_text(self.at_ms));
            }
        }
        out
    }
}

impl EndpointStatus {
    fn to_text(&self, now_ms: u64) -> String {
        let mut line = format!("{:<12}", self.endpoint);
        match &self.connection {
            Some(c) => {
                let _ = write!(
                    line,
                    " connected from {} since {}, last frame {}",
                    c.remote,
                    rfc3339(c.since_ms),
                    c.last_frame_ms
                        .map_or_else(|| "none".to_owned(), |t| ago(now_ms, t)),
                );
            }
            None => line.push_str(" offline"),
        }
        line.push_str("; queued");
        for q in &self.queued {
            let _ = write!(line, " {} {}/{} B", q.queue, q.frames, q.bytes);
        }
        line
    }
}

fn rfc3339(ms: u64) -> String {
    let t = SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t).to_string()
}

fn ago(now_ms: u64, then_ms: u64) -> String {
    let s = now_ms.saturating_sub(then_ms) / 1000;
    format!("{s}s ago")
}

/// Milliseconds since the Unix epoch of `t` (0 before it).
pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Largest `/status` response [`fetch`] reads.
pub const MAX_STATUS_BYTES: u64 = 16 * 1024 * 1024;

/// How long [`fetch`] waits to connect and for each read.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Why [`fetch`] got no status.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Connecting, writing or reading.
    #[error("GET http://{addr}/status: {error}")]
    Io {
        /// The metrics listener.
        addr: SocketAddr,
        /// Why.
        error: std::io::Error,
    },
    /// The relay answered something other than `200` with a status body.
    #[error("GET http://{addr}/status: {detail}")]
    Response {
        /// The metrics listener.
        addr: SocketAddr,
        /// What was wrong.
        detail: String,
    },
}

/// `GET /status` from a relay's metrics listener at `addr` (blocking, bounded in time and
/// size).
pub fn fetch(addr: SocketAddr) -> Result<Status, FetchError> {
    let io = |error| FetchError::Io { addr, error };
    let bad = |detail: String| FetchError::Response { addr, detail };
    let mut socket = TcpStream::connect_timeout(&addr, FETCH_TIMEOUT).map_err(io)?;
    socket.set_read_timeout(Some(FETCH_TIMEOUT)).map_err(io)?;
    socket.set_write_timeout(Some(FETCH_TIMEOUT)).map_err(io)?;
    socket
        .write_all(b"GET /status HTTP/1.1\r\nhost: relay\r\nconnection: close\r\n\r\n")
        .map_err(io)?;
    let mut response = Vec::new();
    socket
        .take(MAX_STATUS_BYTES)
        .read_to_end(&mut response)
        .map_err(io)?;
    let text = String::from_utf8_lossy(&response);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Err(bad("no complete HTTP response".to_owned()));
    };
    let status_line = head.lines().next().unwrap_or_default();
    if !status_line.starts_with("HTTP/1.1 200") {
        return Err(bad(format!("{status_line}: {}", body.trim())));
    }
    serde_json::from_str(body).map_err(|e| bad(format!("unreadable status: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_has_one_line_per_hotline_and_endpoint() {
        let queued = ["flash", "immediate", "priority", "routine", "control"]
            .iter()
            .map(|q| QueueStatus {
                queue: (*q).to_owned(),
                frames: 1,
                bytes: 10,
            })
            .collect::<Vec<_>>();
        let status = Status {
            version: "0.1.0".into(),
            at_ms: 10_000,
            store_path: "data/relay.redb".into(),
            store_bytes: 4096,
            hotlines: vec![HotlineStatus {
                name: "us:jp".into(),
                endpoints: [
                    EndpointStatus {
                        endpoint: "us".into(),
                        connection: Some(ConnectionStatus {
                            remote: "127.0.0.1:5000".into(),
                            since_ms: 1000,
                            last_frame_ms: Some(8000),
                        }),
                        queued: queued.clone(),
                    },
                    EndpointStatus {
                        endpoint: "jp".into(),
                        connection: None,
                        queued,
                    },
                ],
                queued_a_to_b_bytes: 10,
                queued_b_to_a_bytes: 0,
            }],
        };
        let text = status.to_text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(
            lines[1].starts_with("hotline us:jp: queued us→jp 10 B"),
            "{text}"
        );
        assert!(
            lines[2].contains("connected from 127.0.0.1:5000 since 1970-01-01T00:00:01Z"),
            "{text}"
        );
        assert!(lines[2].contains("last frame 2s ago"), "{text}");
        assert!(lines[3].contains("offline; queued flash 1/10 B"), "{text}");
        let json = serde_json::to_string(&status).unwrap_or_default();
        let back: Status = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, status);
    }
}
