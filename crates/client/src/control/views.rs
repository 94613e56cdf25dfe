//! The values the control protocol carries: inbox entries, status, alarms. Re-exported by
//! [`crate::control`]; this is a contract with every client (the CLI, consoles), so fields are
//! only added, with `#[serde(default)]` where old nodes lack them.

use serde::{Deserialize, Serialize};

/// One inbox message, as `inbox --json` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxEntry {
    /// `sender:channel:precedence:seq`.
    pub id: String,
    /// Sender.
    pub from: String,
    /// Recipient.
    pub to: String,
    /// Channel.
    pub channel: String,
    /// Original precedence.
    pub precedence: String,
    /// Lane sequence.
    pub seq: u64,
    /// Text (lossy UTF-8).
    pub body: String,
    /// Sender's time (RFC 3339).
    pub sent_at: String,
    /// Our delivery time (RFC 3339).
    pub received_at: String,
    /// When our operator acknowledged it, if so.
    pub acknowledged: Option<String>,
    /// Raised transport precedence, if it escalated, as the relay claims it (unsigned).
    pub escalated_to: Option<String>,
    /// On a live delivery to `inbox --follow`: when the message became durable in our store
    /// (microseconds since the Unix epoch), for `hotline-bench`'s per-hop breakdown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub durable_us: Option<u64>,
}

/// One of our messages that awaits the partner, as `Request::Sent` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentView {
    /// `sender:channel:precedence:seq`.
    pub id: String,
    /// Channel.
    pub channel: String,
    /// Original precedence.
    pub precedence: String,
    /// Current transport precedence (higher once escalated).
    pub transport: String,
    /// Escalations so far.
    pub escalations: u32,
    /// When it was submitted (RFC 3339).
    pub sent_at: String,
    /// The highest ack level reached: `stored`, `accepted`, `delivered` or `acknowledged`.
    pub level: String,
    /// What it waits for next: `delivered` or `acknowledged`; none once nothing escalates it.
    pub awaiting: Option<String>,
    /// When that deadline falls (RFC 3339).
    pub deadline: Option<String>,
    /// The deadline in microseconds since the Unix epoch, for countdowns.
    pub deadline_us: Option<u64>,
}

/// Per-lane queue depths.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaneView {
    /// Waiting for the partner's key.
    pub awaiting_key: usize,
    /// Not yet accepted by the relay.
    pub unaccepted: usize,
    /// Not yet delivered.
    pub undelivered: usize,
    /// Delivered, not yet acknowledged.
    pub unacknowledged: usize,
    /// Received, waiting for earlier messages.
    pub receive_buffered: usize,
}

/// One alarm-book entry (see [`crate::alarms`]): an alarm deduplicated by kind and cause.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlarmView {
    /// Stable id, increasing, never reused; `alarms clear ID` names it.
    pub id: u64,
    /// `critical`, `warning` or `notice`.
    pub severity: String,
    /// Kind, e.g. `security: bad signature`.
    pub kind: String,
    /// The first occurrence's detail (foreign text: escaped when shown, not here).
    pub cause: String,
    /// Message id, if the alarm is about one.
    pub message: Option<String>,
    /// Occurrences since the entry was opened.
    pub count: u64,
    /// When it was opened (RFC 3339).
    pub first: String,
    /// The latest occurrence (RFC 3339).
    pub last: String,
    /// Who cleared it and when, while it is cleared.
    pub cleared: Option<ClearedView>,
}

/// Who cleared an alarm, and when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClearedView {
    /// The local user.
    pub by: String,
    /// When (RFC 3339).
    pub at: String,
}

/// An open escalation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EscalationView {
    /// Message id.
    pub id: String,
    /// Current transport precedence.
    pub escalated_to: String,
    /// Escalations so far.
    pub count: u32,
}

/// `status --json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusView {
    /// This endpoint.
    pub endpoint: String,
    /// The partner.
    pub partner: String,
    /// `up`, `degraded` or `down`.
    pub link: String,
    /// Since when.
    pub link_since: String,
    /// Connected to at least one relay.
    pub connected: bool,
    /// Relay's word on the partner.
    pub partner_online: Option<bool>,
    /// When the last fresh signed link test from the partner arrived (`Down` after ten link-test
    /// intervals without one).
    #[serde(default)]
    pub partner_last_heard: Option<String>,
    /// Last connection error, if any.
    pub last_error: Option<String>,
    /// Our sealing-key epoch.
    #[serde(default)]
    pub own_epoch: Option<u32>,
    /// The partner's sealing-key epoch we seal to, once known.
    #[serde(default)]
    pub partner_epoch: Option<u32>,
    /// Queue depths by precedence name.
    pub lanes: std::collections::BTreeMap<String, LaneView>,
    /// Delivered messages our operator has not acknowledged.
    pub pending_acks: Vec<String>,
    /// Our messages that escalated.
    pub open_escalations: Vec<EscalationView>,
    /// Uncleared alarm-book entries, highest severity first, then most recent `last` first.
    pub alarms: Vec<AlarmView>,
    /// Inbox size.
    pub inbox: usize,
    /// Each configured relay's link, in configuration order.
    #[serde(default)]
    pub relays: Vec<RelayView>,
}

/// One relay link in `status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayView {
    /// Its address as configured (`IP:PORT` or `HOST:PORT`).
    pub addr: String,
    /// The name its certificate must carry.
    pub name: String,
    /// Connected now.
    pub connected: bool,
    /// Since when it has been connected, or not.
    pub since: String,
    /// Why it is not connected, if it is not.
    pub last_error: Option<String>,
    /// This relay's word on the partner.
    pub partner_online: Option<bool>,
    /// It brought the partner's newest fresh signed link test within three link-test intervals.
    #[serde(default)]
    pub carries_link_tests: bool,
    /// Our messages it accepted (stored) on this connection and that are not delivered yet.
    #[serde(default)]
    pub holds: usize,
}
