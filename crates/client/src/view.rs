//! What operators see: the engine's state rendered as the control protocol's views.
//!
//! The node shell hands over engine snapshots and deliveries; this module turns them into the
//! JSON-ready [`StatusView`] and [`InboxEntry`] values and the one-line names of link states and
//! alarms, so wording lives in one place and the shell stays free of presentation.

use hotline_proto::engine::{AlarmKind, Delivery, LinkState, Status};
use hotline_proto::{EndpointId, Precedence};

use crate::control::{AlarmView, EscalationView, InboxEntry, LaneView, StatusView};
use crate::time::format_time;

/// `up`, `degraded` or `down`.
pub fn link_name(s: LinkState) -> &'static str {
    match s {
        LinkState::Up => "up",
        LinkState::Degraded => "degraded",
        LinkState::Down => "down",
    }
}

/// An alarm's kind in one line, as `status` and the audit log show it.
pub fn alarm_kind(k: &AlarmKind) -> String {
    match k {
        AlarmKind::Security(e) => format!("security: {e}"),
        AlarmKind::PartnerKeyChanged => "partner identity key changed".into(),
        AlarmKind::Refused(code) => format!("refused by relay: {code:?}"),
        AlarmKind::StoreFailed => "store failed".into(),
        AlarmKind::ClockSkew => "partner clock skew".into(),
        AlarmKind::LaneLimit => "inbound lane limit".into(),
    }
}

/// What the node shell knows beyond the engine's snapshot.
#[derive(Debug)]
pub struct ShellState<'a> {
    /// This endpoint.
    pub local: &'a EndpointId,
    /// Its partner.
    pub partner: &'a EndpointId,
    /// The relay link's last error, if any.
    pub last_error: Option<&'a str>,
    /// Messages in the inbox.
    pub inbox: usize,
}

/// `status` from an engine snapshot.
pub fn status(s: &Status, shell: &ShellState<'_>) -> StatusView {
    let lanes = Precedence::ALL
        .into_iter()
        .map(|p| {
            let l = s.lanes[p.index()];
            (
                p.to_string(),
                LaneView {
                    awaiting_key: l.awaiting_key,
                    unaccepted: l.unaccepted,
                    undelivered: l.undelivered,
                    unacknowledged: l.unacknowledged,
                    receive_buffered: l.receive_buffered,
                },
            )
        })
        .collect();
    StatusView {
        endpoint: shell.local.to_string(),
        partner: shell.partner.to_string(),
        link: link_name(s.link).into(),
        link_since: format_time(s.link_since),
        connected: s.connected,
        partner_online: s.partner_online,
        last_error: shell.last_error.map(str::to_owned),
        lanes,
        pending_acks: s
            .pending_operator_acks
            .iter()
            .map(ToString::to_string)
            .collect(),
        open_escalations: s
            .open_escalations
            .iter()
            .map(|(id, to, count)| EscalationView {
                id: id.to_string(),
                escalated_to: to.to_string(),
                count: *count,
            })
            .collect(),
        alarms: s
            .alarms
            .iter()
            .map(|a| AlarmView {
                at: format_time(a.at),
                kind: alarm_kind(&a.kind),
                message: a.message.as_ref().map(ToString::to_string),
                detail: a.detail.clone(),
            })
            .collect(),
        inbox: shell.inbox,
    }
}

/// An inbox line for a delivered message (not yet acknowledged).
pub fn inbox_entry(d: &Delivery) -> InboxEntry {
    InboxEntry {
        id: d.id.to_string(),
        from: d.id.sender.to_string(),
        to: d.to.to_string(),
        channel: d.id.channel.to_string(),
        precedence: d.id.precedence.to_string(),
        seq: d.id.seq.0,
        body: String::from_utf8_lossy(&d.body).into_owned(),
        sent_at: format_time(d.sent_at),
        received_at: format_time(d.received_at),
        acknowledged: None,
        // The relay's unsigned claim (see `Delivery::relay_transport`).
        escalated_to: (d.relay_transport > d.id.precedence).then(|| d.relay_transport.to_string()),
    }
}
