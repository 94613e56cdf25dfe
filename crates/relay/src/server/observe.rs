//! What the operator sees of a running relay: the [`Status`] snapshot, readiness, and the
//! [`http::Source`] the metrics listener serves them from.
//!
//! The snapshot is taken under the shared lock in one pass (no I/O under it; the store's size
//! is read after), so its queues and connections agree with each other.

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use hotline_proto::{EndpointId, Lane};

use super::shared::{STORE_FAILED, STORE_RUNNING, Shared, State};
use crate::http;
use crate::status::{
    ConnectionStatus, EndpointStatus, HotlineStatus, QueueStatus, Status, unix_ms,
};

impl Shared {
    /// The relay's status now.
    pub(super) fn status(&self) -> Status {
        let hotlines = {
            let state = self.lock();
            self.hotlines
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter()
                .map(|(a, b)| HotlineStatus {
                    name: format!("{a}:{b}"),
                    endpoints: [endpoint_status(&state, a), endpoint_status(&state, b)],
                    queued_a_to_b_bytes: state.router.queued_bytes_between(a, b),
                    queued_b_to_a_bytes: state.router.queued_bytes_between(b, a),
                })
                .collect()
        };
        Status {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            at_ms: unix_ms(SystemTime::now()),
            store_path: self.store_path.display().to_string(),
            store_bytes: std::fs::metadata(&self.store_path).map_or(0, |m| m.len()),
            hotlines,
        }
    }

    /// `Ok` when the QUIC endpoint is bound and the store writer runs; otherwise why not.
    pub(super) fn readiness(&self) -> Result<(), String> {
        if !self.listening.load(Ordering::Acquire) {
            return Err("starting".to_owned());
        }
        match self.store_state.load(Ordering::Acquire) {
            STORE_RUNNING => Ok(()),
            STORE_FAILED => Err("the store failed; nothing more is acknowledged".to_owned()),
            _ => Err("the store is closed (shutting down)".to_owned()),
        }
    }
}

fn endpoint_status(state: &State, endpoint: &EndpointId) -> EndpointStatus {
    let connection = state
        .router
        .connection_of(endpoint)
        .and_then(|conn| state.conns.get(&conn))
        .map(|handle| {
            let last = handle.last_frame_ms.load(Ordering::Relaxed);
            ConnectionStatus {
                remote: handle.connection.remote_address().to_string(),
                since_ms: unix_ms(handle.since),
                last_frame_ms: (last > 0).then_some(last),
            }
        });
    let queues = state.router.endpoint_queues(endpoint).unwrap_or_default();
    let queued = Lane::ALL
        .into_iter()
        .map(|lane| QueueStatus {
            queue: lane.as_str().to_owned(),
            frames: queues.frames[lane.index()],
            bytes: queues.bytes[lane.index()],
        })
        .collect();
    EndpointStatus {
        endpoint: endpoint.to_string(),
        connection,
        queued,
    }
}

impl http::Source for Shared {
    fn metrics(&self) -> String {
        self.render_metrics()
    }

    fn ready(&self) -> Result<(), String> {
        self.readiness()
    }

    fn status_json(&self) -> String {
        // Plain data: serialising it cannot fail.
        serde_json::to_string(&self.status()).unwrap_or_default()
    }
}
