//! Prometheus metrics of a relay, and the minimal HTTP endpoint that serves them.
//!
//! Metrics (all prefixed `hotline_relay_`):
//! - `connections`: registered node connections (gauge);
//! - `queued_frames{stream}`, `queued_bytes{stream}`: what waits per lane and on control
//!   streams, summed over destinations (gauges, refreshed on each scrape);
//! - `forwarded_frames_total{stream}`: frames written to nodes (counter);
//! - `refusals_total{code}`: `Refused` replies by refusal code (counter);
//! - `wrong_stream_frames_total{stream}`: frames refused because they arrived on a stream
//!   other than their own, by the stream they arrived on (counter; also in `refusals_total` as
//!   `malformed`);
//! - `rejected_connections_total{reason}`: connections closed before registration (counter);
//! - `identity_conflicts_total{outcome}`: a second live connection claimed an identity; it
//!   `displaced` the live one, or was `refused` because the identity flaps (counter; any
//!   increase means two nodes share one identity, or a node's old connection lingered);
//! - `handshakes_total{outcome}`: connection attempts by how they ended, each counted once
//!   (counter): `retry` (asked to validate its address; a real client returns as a new
//!   attempt), `refused_cap`, `refused_per_address`, `refused_per_identity` (a handshake
//!   limit), `hello_timeout` (no `Hello` in time), `failed` (TLS, identity or a bad `Hello`),
//!   `invalid` (an Initial that did not decrypt, dropped without a task), `accepted` (said
//!   `Hello`); see [`crate::server`]'s handshake limits;
//! - `handshakes_in_progress`: connections admitted and not yet past `Hello` (gauge);
//! - `store_commits_total`, `store_ops_total`: group commits of the store and the operations
//!   they held (counters; their ratio is the mean batch size);
//! - `queued_in_memory_bytes`: bytes of queued envelopes also held in memory (gauge; at most
//!   about `max_queued_bytes_in_memory`, the rest is only in the store);
//! - `store_reads_total`: queued envelopes read back from the store to be written (counter);
//! - `crl_expired`: 1 while the configured CRL is past its next update (then revocations newer
//!   than it are unknown; see `crl_expired` in relay.toml), 0 otherwise or without a CRL (gauge,
//!   refreshed on each scrape);
//! - `build_info{version}`: always 1, the version in its label (gauge).
//!
//! Per hotline (label `hotline="a:b"` as configured; the labels come from the configuration
//! only, never from the network, so there are at most hotlines × 4 × 5 series):
//! - `hotline_queued_bytes{hotline,to}`: envelope bytes queued on the hotline for its endpoint
//!   `to` (gauge, refreshed on each scrape);
//! - `hotline_forwarded_envelopes_total{hotline,precedence}`: envelopes written to the
//!   recipient's stream, by the lane they travelled on (counter; an envelope written again
//!   after a reconnection counts again);
//! - `hotline_refused_envelopes_total{hotline,precedence,code}`: envelopes refused `overloaded`
//!   or `expired` (counter; refusals of envelopes naming no partner of their sender are only in
//!   `refusals_total`).
//!
//! - `forwarding_latency_seconds{precedence}`: from an envelope's first arrival at the relay to
//!   its being written to the recipient's stream, by lane (histogram; includes the time the
//!   recipient was offline, so its tail is the outage).
//!
//! The HTTP side (`/metrics`, `/healthz`, `/readyz`, `/status`) is in [`crate::http`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime};

use hotline_proto::wire::RefusalCode;
use hotline_proto::{EndpointId, Lane, Precedence};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::router::{Router, Stats};
use crate::server::handshake::Outcome;

/// Upper bounds of the forwarding latency buckets, seconds: a millisecond to a day.
const LATENCY_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0, 600.0, 3600.0,
    86400.0,
];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HotlineTo {
    hotline: String,
    to: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HotlinePrecedence {
    hotline: String,
    precedence: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HotlineRefusal {
    hotline: String,
    precedence: &'static str,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PrecedenceLabel {
    precedence: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamLabel {
    stream: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// The relay's metric handles and their registry.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    connections: Gauge,
    queued_frames: Family<StreamLabel, Gauge>,
    queued_bytes: Family<StreamLabel, Gauge>,
    forwarded: Family<StreamLabel, Counter>,
    refusals: Family<CodeLabel, Counter>,
    wrong_stream: Family<StreamLabel, Counter>,
    rejected: Family<ReasonLabel, Counter>,
    identity_conflicts: Family<OutcomeLabel, Counter>,
    handshakes: Family<OutcomeLabel, Counter>,
    handshakes_in_progress: Gauge,
    store_commits: Counter,
    store_ops: Counter,
    in_memory_bytes: Gauge,
    store_reads: Counter,
    crl_expired: Gauge,
    /// The CRL's next update, seconds since the epoch; 0 without a CRL.
    crl_next_update: AtomicI64,
    /// The `hotline` label of each ordered pair of partners (both orders), from the
    /// configuration; replaced by [`Metrics::set_hotlines`] on a reload.
    hotline_names: std::sync::RwLock<BTreeMap<(EndpointId, EndpointId), String>>,
    hotline_queued: Family<HotlineTo, Gauge>,
    hotline_forwarded: Family<HotlinePrecedence, Counter>,
    hotline_refused: Family<HotlineRefusal, Counter>,
    latency: Family<PrecedenceLabel, Histogram, fn() -> Histogram>,
}

impl Metrics {
    /// Metrics for a relay serving `hotlines` (as configured: each pair's name is `a:b`).
    pub(crate) fn new(hotlines: &[(EndpointId, EndpointId)]) -> Self {
        let mut registry = Registry::with_prefix("hotline_relay");
        let connections = Gauge::default();
        let queued_frames = Family::<StreamLabel, Gauge>::default();
        let queued_bytes = Family::<StreamLabel, Gauge>::default();
        let forwarded = Family::<StreamLabel, Counter>::default();
        let refusals = Family::<CodeLabel, Counter>::default();
        let wrong_stream = Family::<StreamLabel, Counter>::default();
        let rejected = Family::<ReasonLabel, Counter>::default();
        let identity_conflicts = Family::<OutcomeLabel, Counter>::default();
        let handshakes = Family::<OutcomeLabel, Counter>::default();
        let handshakes_in_progress = Gauge::default();
        let store_commits = Counter::default();
        let store_ops = Counter::default();
        let in_memory_bytes = Gauge::default();
        let store_reads = Counter::default();
        let crl_expired = Gauge::default();
        registry.register(
            "crl_expired",
            "1 while the configured CRL is past its next update",
            crl_expired.clone(),
        );
        registry.register(
            "queued_in_memory_bytes",
            "Bytes of queued envelopes also held in memory (the rest is only in the store)",
            in_memory_bytes.clone(),
        );
        registry.register(
            "store_reads",
            "Queued envelopes read back from the store to be written",
            store_reads.clone(),
        );
        registry.register(
            "connections",
            "Registered node connections",
            connections.clone(),
        );
        registry.register(
            "queued_frames",
            "Frames queued for nodes, per lane or control stream",
            queued_frames.clone(),
        );
        registry.register(
            "queued_bytes",
            "Bytes queued for nodes, per lane or control stream",
            queued_bytes.clone(),
        );
        registry.register(
            "forwarded_frames",
            "Frames written to nodes, per lane or control stream",
            forwarded.clone(),
        );
        registry.register(
            "refusals",
            "Refused replies sent, by refusal code",
            refusals.clone(),
        );
        registry.register(
            "wrong_stream_frames",
            "Frames refused for arriving on a stream other than their own, by arrival stream",
            wrong_stream.clone(),
        );
        registry.register(
            "rejected_connections",
            "Connections closed before registration, by reason",
            rejected.clone(),
        );
        registry.register(
            "identity_conflicts",
            "Second live connections with one identity, by outcome (displaced, refused)",
            identity_conflicts.clone(),
        );
        registry.register(
            "handshakes",
            "Connection attempts, by outcome (retry, refused_*, hello_timeout, failed, invalid, accepted)",
            handshakes.clone(),
        );
        registry.register(
            "handshakes_in_progress",
            "Connections admitted and not yet past Hello",
            handshakes_in_progress.clone(),
        );
        registry.register(
            "store_commits",
            "Store transactions committed (each one fsync)",
            store_commits.clone(),
        );
        registry.register(
            "store_ops",
            "Store operations committed (envelopes, receipts, deletions, announcements)",
            store_ops.clone(),
        );
        let build_info = Family::<VersionLabel, Gauge>::default();
        build_info
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register(
            "build_info",
            "Always 1; the relay's version is in the label",
            build_info,
        );
        let hotline_queued = Family::<HotlineTo, Gauge>::default();
        let hotline_forwarded = Family::<HotlinePrecedence, Counter>::default();
        let hotline_refused = Family::<HotlineRefusal, Counter>::default();
        let latency = Family::<PrecedenceLabel, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        registry.register(
            "hotline_queued_bytes",
            "Envelope bytes queued on a hotline for its endpoint `to`",
            hotline_queued.clone(),
        );
        registry.register(
            "hotline_forwarded_envelopes",
            "Envelopes written to their recipient, per hotline and lane",
            hotline_forwarded.clone(),
        );
        registry.register(
            "hotline_refused_envelopes",
            "Envelopes refused overloaded or expired, per hotline, lane and code",
            hotline_refused.clone(),
        );
        registry.register(
            "forwarding_latency_seconds",
            "From an envelope's first arrival to its write to the recipient, per lane",
            latency.clone(),
        );
        for p in Precedence::ALL {
            let _ = latency.get_or_create(&PrecedenceLabel {
                precedence: p.as_str(),
            });
        }
        // Every series exists from the start, so a dashboard sees zeros rather than gaps.
        for stream in Lane::ALL {
            let label = StreamLabel {
                stream: stream.as_str(),
            };
            let _ = queued_frames.get_or_create(&label);
            let _ = queued_bytes.get_or_create(&label);
            let _ = forwarded.get_or_create(&label);
            let _ = wrong_stream.get_or_create(&label);
        }
        for outcome in ["displaced", "refused"] {
            let _ = identity_conflicts.get_or_create(&OutcomeLabel { outcome });
        }
        for outcome in Outcome::ALL {
            let _ = handshakes.get_or_create(&OutcomeLabel {
                outcome: outcome.as_str(),
            });
        }
        let metrics = Self {
            registry,
            connections,
            queued_frames,
            queued_bytes,
            forwarded,
            refusals,
            wrong_stream,
            rejected,
            identity_conflicts,
            handshakes,
            handshakes_in_progress,
            store_commits,
            store_ops,
            in_memory_bytes,
            store_reads,
            crl_expired,
            crl_next_update: AtomicI64::new(0),
            hotline_names: std::sync::RwLock::default(),
            hotline_queued,
            hotline_forwarded,
            hotline_refused,
            latency,
        };
        metrics.set_hotlines(hotlines);
        metrics
    }

    /// The configured hotlines (at start and after each reload): their label names, and every
    /// series of a new one created at zero; a removed one's series are dropped.
    pub(crate) fn set_hotlines(&self, hotlines: &[(EndpointId, EndpointId)]) {
        let mut names = BTreeMap::new();
        for (a, b) in hotlines {
            let name = format!("{a}:{b}");
            names
                .entry((a.clone(), b.clone()))
                .or_insert_with(|| name.clone());
            names
                .entry((b.clone(), a.clone()))
                .or_insert_with(|| name.clone());
        }
        let mut current = self
            .hotline_names
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for ((_, to), name) in current.iter() {
            if !names.values().any(|n| n == name) {
                self.hotline_queued.remove(&HotlineTo {
                    hotline: name.clone(),
                    to: to.to_string(),
                });
                for p in Precedence::ALL {
                    self.hotline_forwarded.remove(&HotlinePrecedence {
                        hotline: name.clone(),
                        precedence: p.as_str(),
                    });
                }
            }
        }
        for ((_, to), name) in &names {
            let _ = self.hotline_queued.get_or_create(&HotlineTo {
                hotline: name.clone(),
                to: to.to_string(),
            });
            for p in Precedence::ALL {
                let _ = self.hotline_forwarded.get_or_create(&HotlinePrecedence {
                    hotline: name.clone(),
                    precedence: p.as_str(),
                });
            }
        }
        *current = names;
    }

    fn hotline_name(&self, from: &EndpointId, to: &EndpointId) -> Option<String> {
        self.hotline_names
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&(from.clone(), to.clone()))
            .cloned()
    }

    /// An envelope from `sender` was written to `recipient` on lane `lane`, `latency` after it
    /// first reached the relay.
    pub(crate) fn envelope_forwarded(
        &self,
        sender: &EndpointId,
        recipient: &EndpointId,
        lane: Precedence,
        latency: Duration,
    ) {
        let precedence = lane.as_str();
        if let Some(name) = self.hotline_name(sender, recipient) {
            self.hotline_forwarded
                .get_or_create(&HotlinePrecedence {
                    hotline: name,
                    precedence,
                })
                .inc();
        }
        self.latency
            .get_or_create(&PrecedenceLabel { precedence })
            .observe(latency.as_secs_f64());
    }

    /// An envelope of a configured hotline was refused.
    pub(crate) fn envelope_refused(
        &self,
        sender: &EndpointId,
        recipient: &EndpointId,
        lane: Precedence,
        code: RefusalCode,
    ) {
        if let Some(name) = self.hotline_name(sender, recipient) {
            self.hotline_refused
                .get_or_create(&HotlineRefusal {
                    hotline: name,
                    precedence: lane.as_str(),
                    code: code_name(code),
                })
                .inc();
        }
    }

    /// Sets the per-hotline queue gauges from `router`.
    pub(crate) fn set_hotline_queues(&self, router: &Router) {
        let names = self
            .hotline_names
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for ((from, to), name) in names.iter() {
            let bytes = router.queued_bytes_between(from, to);
            self.hotline_queued
                .get_or_create(&HotlineTo {
                    hotline: name.clone(),
                    to: to.to_string(),
                })
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
    }

    /// Records the configured CRL's next update (`None`: no CRL).
    pub(crate) fn set_crl_next_update(&self, next: Option<SystemTime>) {
        let secs = next.map_or(0, |t| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(1, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX).max(1))
        });
        self.crl_next_update.store(secs, Ordering::Relaxed);
    }

    fn crl_is_expired(&self) -> bool {
        let next = self.crl_next_update.load(Ordering::Relaxed);
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        next > 0 && now > next
    }

    pub(crate) fn loaded(&self) {
        self.store_reads.inc();
    }

    pub(crate) fn committed(&self, ops: usize) {
        self.store_commits.inc();
        self.store_ops.inc_by(ops as u64);
    }

    pub(crate) fn forwarded(&self, stream: Lane) {
        self.forwarded
            .get_or_create(&StreamLabel {
                stream: stream.as_str(),
            })
            .inc();
    }

    pub(crate) fn refused(&self, code: RefusalCode) {
        self.refusals
            .get_or_create(&CodeLabel {
                code: code_name(code),
            })
            .inc();
    }

    pub(crate) fn wrong_stream(&self, arrived: Lane) {
        self.wrong_stream
            .get_or_create(&StreamLabel {
                stream: arrived.as_str(),
            })
            .inc();
    }

    pub(crate) fn rejected(&self, reason: &'static str) {
        self.rejected.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// A second live connection claimed an identity: `displaced` or `refused`.
    pub(crate) fn identity_conflict(&self, outcome: &'static str) {
        self.identity_conflicts
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// A connection attempt ended this way.
    pub(crate) fn handshake(&self, outcome: Outcome) {
        self.handshakes
            .get_or_create(&OutcomeLabel {
                outcome: outcome.as_str(),
            })
            .inc();
    }

    /// The text exposition, with gauges set from `stats` and the handshakes in progress.
    pub(crate) fn render(&self, stats: &Stats, handshakes_in_progress: usize) -> String {
        self.handshakes_in_progress
            .set(i64::try_from(handshakes_in_progress).unwrap_or(i64::MAX));
        self.connections
            .set(i64::try_from(stats.connections).unwrap_or(i64::MAX));
        self.in_memory_bytes
            .set(i64::try_from(stats.in_memory_bytes).unwrap_or(i64::MAX));
        for stream in Lane::ALL {
            let label = StreamLabel {
                stream: stream.as_str(),
            };
            let i = stream.index();
            self.queued_frames
                .get_or_create(&label)
                .set(i64::try_from(stats.queued_frames[i]).unwrap_or(i64::MAX));
            self.queued_bytes
                .get_or_create(&label)
                .set(i64::try_from(stats.queued_bytes[i]).unwrap_or(i64::MAX));
        }
        self.crl_expired.set(i64::from(self.crl_is_expired()));
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

fn code_name(code: RefusalCode) -> &'static str {
    match code {
        RefusalCode::NotPaired => "not_paired",
        RefusalCode::SenderMismatch => "sender_mismatch",
        RefusalCode::Overloaded => "overloaded",
        RefusalCode::Malformed => "malformed",
        RefusalCode::Expired => "expired",
    }
}
