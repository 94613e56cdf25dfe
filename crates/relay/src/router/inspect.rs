//! Read-only views of the router for its shell: the backlogs the readers pause on, what is
//! queued for an endpoint, and the totals the metrics show.
//!
//! Nothing here changes state; every figure is derived from the queues and the commit gate, so
//! it cannot drift from them.

use hotline_proto::{EndpointId, Lane, MessageId, Precedence, Time};

use super::queue::Endpoint;
use super::{CommitId, ConnId, ItemState, Router, Stats};

/// A queued envelope as seen from outside (tests, status).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedEnvelope {
    /// The message.
    pub id: MessageId,
    /// The lane it is scheduled on.
    pub transport: Precedence,
    /// Where it stands.
    pub state: ItemState,
    /// When it first arrived (wall clock).
    pub queued_at: Time,
    /// When its time-to-live runs out, if it has one.
    pub expires_at: Option<Time>,
}

/// What is queued for one endpoint, for a status view.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointQueues {
    /// Frames queued per stream, by [`Lane::index`] (control counts the one being written).
    pub frames: [u64; Lane::COUNT],
    /// Bytes queued per stream, by [`Lane::index`].
    pub bytes: [u64; Lane::COUNT],
}

impl Router {
    /// What is queued for `endpoint`, per stream; `None` if it is not configured.
    pub fn endpoint_queues(&self, endpoint: &EndpointId) -> Option<EndpointQueues> {
        let ep = self.endpoints.get(endpoint)?;
        let mut q = EndpointQueues::default();
        for p in Precedence::ALL {
            let lane = Lane::Precedence(p).index();
            q.frames[lane] = ep.lane_frames[p.index()];
            q.bytes[lane] = ep.lane_bytes[p.index()];
        }
        let control = Lane::Control.index();
        q.frames[control] = ep.control_len() as u64 + u64::from(ep.control_in_flight.is_some());
        q.bytes[control] = ep.control_bytes;
        Some(q)
    }

    /// Envelope bytes queued for `destination` from `sender` (the per-hotline queue depth).
    pub fn queued_bytes_between(&self, sender: &EndpointId, destination: &EndpointId) -> u64 {
        self.endpoints
            .get(destination)
            .map_or(0, |ep| ep.queued_from(sender))
    }

    /// The last write reported committed.
    pub fn committed(&self) -> CommitId {
        self.commits.committed()
    }

    /// Bytes that frames from `conn` on `stream` put in writes not committed yet. The shell
    /// stops reading that stream while its backlog is large, so a store slower than the network
    /// slows that sender on that stream (through QUIC flow control) instead of growing memory,
    /// and no connection or stream waits for another's backlog.
    pub fn uncommitted_bytes(&self, conn: ConnId, stream: Lane) -> u64 {
        self.commits.uncommitted_bytes(conn, stream)
    }

    /// Bytes waiting on (or being written to) `conn`'s control stream. The shell stops reading
    /// from a node whose own control backlog is large, so a node that never reads its replies
    /// cannot grow them without bound.
    pub fn control_backlog(&self, conn: ConnId) -> u64 {
        self.conns
            .get(&conn)
            .and_then(|e| self.endpoints.get(e))
            .map_or(0, |ep| ep.control_bytes)
    }

    /// Bytes queued for `endpoint`: envelopes on every lane plus control frames.
    pub fn queued_bytes(&self, endpoint: &EndpointId) -> u64 {
        self.endpoints
            .get(endpoint)
            .map_or(0, Endpoint::queued_bytes)
    }

    /// Envelope bytes queued from `sender`, over every destination: what its quota in the global
    /// budget is measured against.
    pub fn queued_bytes_from(&self, sender: &EndpointId) -> u64 {
        self.usage.of(sender)
    }

    /// Envelope bytes queued for every destination: what the global budget bounds.
    pub fn queued_envelope_bytes(&self) -> u64 {
        self.usage.total
    }

    /// The envelopes queued for `endpoint`, in key order.
    pub fn queued_envelopes(&self, endpoint: &EndpointId) -> Vec<QueuedEnvelope> {
        let Some(ep) = self.endpoints.get(endpoint) else {
            return Vec::new();
        };
        ep.items
            .iter()
            .map(|(k, item)| QueuedEnvelope {
                id: k.message_id(),
                transport: item.lane,
                state: item.state,
                queued_at: item.queued_at,
                expires_at: item.expires_at,
            })
            .collect()
    }

    /// Totals for metrics.
    pub fn stats(&self) -> Stats {
        let mut stats = Stats {
            connections: self.conns.len() as u64,
            in_memory_bytes: self.usage.hot,
            ..Stats::default()
        };
        for ep in self.endpoints.values() {
            for p in Precedence::ALL {
                let lane = Lane::Precedence(p).index();
                stats.queued_frames[lane] += ep.lane_frames[p.index()];
                stats.queued_bytes[lane] += ep.lane_bytes[p.index()];
            }
            let control = Lane::Control.index();
            stats.queued_frames[control] +=
                ep.control_len() as u64 + u64::from(ep.control_in_flight.is_some());
            stats.queued_bytes[control] += ep.control_bytes;
        }
        stats
    }

    /// Every counter the router keeps (per endpoint: frames and bytes per lane, control bytes;
    /// uncommitted bytes per lane; envelope bytes per sender and in total), recomputed from the queues it counts, and the unwritten and
    /// expiry indexes against the queued envelopes. One line per difference; empty when all
    /// agree.
    #[cfg(test)]
    pub(crate) fn counter_drift(&self) -> Vec<String> {
        let mut drift = self.commits.counter_drift();
        let mut expiries = std::collections::BTreeMap::new();
        let mut by_sender = std::collections::BTreeMap::<EndpointId, u64>::new();
        let mut hot = 0;
        for (endpoint, ep) in &self.endpoints {
            drift.extend(
                ep.counter_drift()
                    .into_iter()
                    .map(|d| format!("{endpoint}: {d}")),
            );
            for (key, item) in &ep.items {
                *by_sender.entry(key.sender.clone()).or_default() += item.len;
                hot += item.bytes.as_ref().map_or(0, |b| b.len() as u64);
                if let Some(at) = item.expires_at {
                    expiries.insert((at, item.order), (endpoint.clone(), key.clone()));
                }
            }
        }
        drift.extend(self.usage.drift(&by_sender));
        if hot != self.usage.hot {
            drift.push(format!("in memory: counted {}, held {hot}", self.usage.hot));
        }
        if expiries != self.expiries {
            drift.push(format!(
                "expiry index: {} entries, {} queued envelopes with a time-to-live",
                self.expiries.len(),
                expiries.len()
            ));
        }
        drift
    }
}
