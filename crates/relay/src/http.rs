//! The relay's small HTTP listener for its operator: metrics, health, readiness and status.
//!
//! - `GET /metrics`: the Prometheus metrics (OpenMetrics text format, see [`crate::metrics`]);
//! - `GET /healthz`: `200 ok` while the process serves requests at all;
//! - `GET /readyz`: `200 ready` when the QUIC endpoint is bound and the store writer runs;
//!   `503` with a one-line reason otherwise (starting, store failed, store stopped);
//! - `GET /status`: the [`Status`](crate::status::Status) snapshot as JSON.
//!
//! Anything else is `404` (`405` for another method). It reads at most [`MAX_REQUEST_BYTES`]
//! of a request head, never reads a body, gives a request (read and answer) at most
//! [`REQUEST_TIMEOUT`], serves at most [`MAX_CONCURRENT_REQUESTS`] at once, and closes every
//! connection after one answer. It listens on loopback by default: `/status` names the
//! connected endpoints and their addresses.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tracing::debug;

/// Largest HTTP request head the listener reads.
pub(crate) const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// The longest one request may take, read and answer together: a client that never reads its
/// answer does not hold a task and a socket for ever.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests served at once; a connection beyond them is closed unanswered.
const MAX_CONCURRENT_REQUESTS: usize = 32;

/// What the listener serves.
pub(crate) trait Source: Send + Sync + 'static {
    /// The metrics, OpenMetrics text.
    fn metrics(&self) -> String;
    /// `Ok` when ready to relay; otherwise why not, one line.
    fn ready(&self) -> Result<(), String>;
    /// The status snapshot, JSON.
    fn status_json(&self) -> String;
}

/// Serves `source` on `listener` until the task is dropped.
pub(crate) async fn serve(listener: TcpListener, source: Arc<dyn Source>) {
    let mut requests = JoinSet::new();
    loop {
        tokio::select! {
            // Reap finished requests first so the set stays small.
            Some(_) = requests.join_next(), if !requests.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) if requests.len() < MAX_CONCURRENT_REQUESTS => {
                    let source = source.clone();
                    requests.spawn(async move {
                        match tokio::time::timeout(REQUEST_TIMEOUT, answer(socket, &*source)).await {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => debug!(%peer, error = %e, "metrics request failed"),
                            Err(_) => debug!(%peer, "metrics request timed out"),
                        }
                    });
                }
                Ok((_, peer)) => debug!(%peer, "metrics listener busy: connection closed"),
                Err(e) => {
                    debug!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

const TEXT: &str = "text/plain; charset=utf-8";

/// Status line, content type and body for one request line.
fn route(line: &[u8], source: &dyn Source) -> (&'static str, &'static str, String) {
    let mut parts = line.split(|b| *b == b' ');
    let (method, target) = (parts.next(), parts.next());
    let path = target.map(|t| t.split(|b| *b == b'?').next().unwrap_or_default());
    match (method, path) {
        (Some(b"GET"), Some(b"/metrics")) => (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            source.metrics(),
        ),
        (Some(b"GET"), Some(b"/healthz")) => ("200 OK", TEXT, "ok\n".to_owned()),
        (Some(b"GET"), Some(b"/readyz")) => match source.ready() {
            Ok(()) => ("200 OK", TEXT, "ready\n".to_owned()),
            Err(why) => (
                "503 Service Unavailable",
                TEXT,
                format!("not ready: {why}\n"),
            ),
        },
        (Some(b"GET"), Some(b"/status")) => ("200 OK", "application/json", source.status_json()),
        (Some(b"GET"), _) => ("404 Not Found", TEXT, "not found\n".to_owned()),
        _ => (
            "405 Method Not Allowed",
            TEXT,
            "only GET /metrics, /healthz, /readyz, /status\n".to_owned(),
        ),
    }
}

async fn answer(mut socket: TcpStream, source: &dyn Source) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST_BYTES {
        let n = socket.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let (status, content_type, body) = route(line, source);
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(response.as_bytes()).await?;
    socket.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake(Result<(), String>);

    impl Source for Fake {
        fn metrics(&self) -> String {
            "# EOF\n".to_owned()
        }
        fn ready(&self) -> Result<(), String> {
            self.0.clone()
        }
        fn status_json(&self) -> String {
            "{}".to_owned()
        }
    }

    #[test]
    fn routes() {
        let ready = Fake(Ok(()));
        let failed = Fake(Err("the store failed: disk full".to_owned()));
        assert_eq!(route(b"GET /healthz HTTP/1.1", &failed).2, "ok\n");
        assert_eq!(route(b"GET /readyz HTTP/1.1", &ready).0, "200 OK");
        let (status, _, body) = route(b"GET /readyz HTTP/1.1", &failed);
        assert_eq!(status, "503 Service Unavailable");
        assert_eq!(body, "not ready: the store failed: disk full\n");
        assert_eq!(route(b"GET /metrics?x=1 HTTP/1.1", &ready).2, "# EOF\n");
        assert_eq!(route(b"GET /status HTTP/1.1", &ready).1, "application/json");
        assert_eq!(route(b"GET /other HTTP/1.1", &ready).0, "404 Not Found");
        assert_eq!(
            route(b"POST /metrics HTTP/1.1", &ready).0,
            "405 Method Not Allowed"
        );
    }
}
