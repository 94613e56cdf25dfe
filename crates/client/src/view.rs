//! What operators see: the engine's state rendered as the control protocol's views.
//!
//! The node shell hands over engine snapshots and deliveries; this module turns them into the
//! JSON-ready [`StatusView`] and [`InboxEntry`] values and the one-line names of link states and
//! alarms, so wording lives in one place and the shell stays free of presentation.
//!
//! It also renders those values as the CLI's text output ([`inbox_line`], [`status_lines`],
//! [`alarm_line`], [`audit_entry_line`]). Text that a partner or the relay chose (bodies, alarm and refusal
//! details, names, errors) goes through [`escape_control`] there, so a message cannot clear the
//! operator's screen, rewrite a line or forge one; JSON output (`--json`) stays exact.

use std::borrow::Cow;
use std::fmt::Write as _;

use hotline_net::close::CloseReason;
use hotline_proto::engine::{AlarmKind, DeadlineKind, Delivery, LinkState, OutboxEntry, Status};
use hotline_proto::{EndpointId, Precedence, Time};

use crate::control::{
    AlarmView, EscalationView, InboxEntry, LaneView, RelayView, SentView, StatusView,
};
use crate::time::format_time;

/// Foreign text made safe for a terminal: every control character (C0 including newline and
/// tab, DEL, C1) and every bidirectional-override character (U+202A..U+202E, U+2066..U+2069,
/// which reorder what is shown) is written out as visible text; everything else, including
/// non-ASCII letters, is kept.
///
/// Newline, carriage return and tab become `\n`, `\r` and `\t`; the others `\u{XX}` in
/// lower-case hex (ESC is `\u{1b}`), as Rust writes them. Newlines are escaped too, not kept:
/// text output is one line per item, and a body with a newline could otherwise forge an inbox
/// or status line; the exact multi-line text is in `--json`. A backslash is left alone, so
/// `\u{1b}` typed by the sender looks like an escaped ESC; it is harmless either way.
pub fn escape_control(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// One `hotline inbox` text entry: time, precedence, id, marks, body (escaped).
///
/// A one-line body follows the header on its line. A multi-line body goes under the header, each
/// of its lines indented by [`BODY_INDENT`] (so none can pass for a header, which starts with a
/// time), with the lines joined by `\n`; each line is escaped as above (a `\r` before the
/// newline included), so the entry's text holds no other control character.
pub fn inbox_line(m: &InboxEntry) -> String {
    if !m.body.contains('\n') {
        return format!("{}  {}", inbox_header(m), escape_control(&m.body));
    }
    let mut out = inbox_header(m);
    for line in m.body.split('\n') {
        out.push('\n');
        out.push_str(BODY_INDENT);
        out.push_str(&escape_control(line));
    }
    out
}

/// What each line of a multi-line body is indented by in `hotline inbox`.
pub const BODY_INDENT: &str = "    ";

/// An inbox entry's header: time, precedence, id and marks.
fn inbox_header(m: &InboxEntry) -> String {
    format!(
        "{}  {:<9} {}{}{}",
        escape_control(&m.received_at),
        escape_control(&m.precedence),
        escape_control(&m.id),
        m.escalated_to
            .as_ref()
            .map(|e| format!(" [escalated to {}]", escape_control(e)))
            .unwrap_or_default(),
        if m.acknowledged.is_some() {
            " [acknowledged]"
        } else {
            ""
        },
    )
}

/// `hotline status` as text lines; names, errors and alarm details escaped.
pub fn status_lines(s: &StatusView) -> Vec<String> {
    let e = |t: &str| escape_control(t).into_owned();
    let mut out = vec![
        format!("endpoint {} ↔ partner {}", e(&s.endpoint), e(&s.partner)),
        format!(
            "link {} since {} (relay {}, partner {}{})",
            e(&s.link),
            e(&s.link_since),
            if s.connected {
                "connected"
            } else {
                "not connected"
            },
            match s.partner_online {
                Some(true) => "online",
                Some(false) => "offline",
                None => "unknown",
            },
            match (&s.partner_last_heard, s.link.as_str()) {
                (_, "up") => String::new(),
                (Some(at), _) => format!("; last heard {}", e(at)),
                (None, _) => "; not heard from yet".to_owned(),
            }
        ),
    ];
    for r in &s.relays {
        let state = if r.connected {
            format!("connected since {}", e(&r.since))
        } else {
            format!("not connected since {}", e(&r.since))
        };
        let partner = match r.partner_online {
            Some(true) => ", says partner online",
            Some(false) => ", says partner offline",
            None => "",
        };
        let tests = if r.carries_link_tests {
            ", carries link tests"
        } else if r.connected {
            ", no fresh link test"
        } else {
            ""
        };
        let why = match (&r.last_error, r.connected) {
            (Some(err), false) => format!(": {}", e(err)),
            _ => String::new(),
        };
        let holds = if r.holds > 0 {
            format!(", holds {} of ours", r.holds)
        } else {
            String::new()
        };
        out.push(format!(
            "relay {} ({}): {state}{partner}{tests}{holds}{why}",
            e(&r.addr),
            e(&r.name)
        ));
    }
    if s.relays.len() > 1 {
        let carrying = s.relays.iter().filter(|r| r.carries_link_tests).count();
        out.push(format!(
            "redundancy: {carrying} of {} relays carry fresh link tests",
            s.relays.len()
        ));
    }
    if let Some(err) = &s.last_error {
        out.push(format!("last connection error: {}", e(err)));
    }
    let epoch = |x: Option<u32>| x.map_or_else(|| "none yet".to_owned(), |x| x.to_string());
    out.push(format!(
        "sealing keys: ours epoch {}, partner's epoch {}",
        epoch(s.own_epoch),
        epoch(s.partner_epoch)
    ));
    out.push(format!(
        "{:<10} {:>12} {:>10} {:>11} {:>14} {:>9}",
        "lane", "awaiting-key", "unaccepted", "undelivered", "unacknowledged", "buffered"
    ));
    for (name, l) in s.lanes.iter().rev() {
        out.push(format!(
            "{:<10} {:>12} {:>10} {:>11} {:>14} {:>9}",
            e(name),
            l.awaiting_key,
            l.unaccepted,
            l.undelivered,
            l.unacknowledged,
            l.receive_buffered
        ));
    }
    out.push(format!(
        "inbox: {} message(s); awaiting our acknowledgement: {}",
        s.inbox,
        s.pending_acks.len()
    ));
    for id in &s.pending_acks {
        out.push(format!("  pending ack: {}", e(id)));
    }
    for x in &s.open_escalations {
        out.push(format!(
            "  ESCALATED: {} → {} ({} time(s))",
            e(&x.id),
            e(&x.escalated_to),
            x.count
        ));
    }
    if !s.alarms.is_empty() {
        out.push(format!(
            "alarms: {} uncleared (hotline alarms clear ID|--all)",
            s.alarms.len()
        ));
    }
    for a in &s.alarms {
        out.push(format!("  {}", alarm_line(a)));
    }
    out
}

/// One alarm-book entry in one line, e.g.
/// `#3 CRITICAL security: bad signature ×64 (first 10:00:01Z, last 10:02:00Z): a link test was
/// refused`, with `[cleared by alice at …]` when cleared. Kind, cause and message are escaped
/// (they may quote the relay or the partner); a cause that only repeats the kind is left out,
/// so the line reads once.
pub fn alarm_line(a: &AlarmView) -> String {
    let e = |t: &str| escape_control(t).into_owned();
    let mut line = format!("#{} {} {}", a.id, e(&a.severity.to_uppercase()), e(&a.kind));
    if a.count > 1 {
        let _ = write!(line, " ×{}", a.count);
    }
    if a.first == a.last {
        let _ = write!(line, " ({})", e(&a.first));
    } else {
        let _ = write!(line, " (first {}, last {})", e(&a.first), e(&a.last));
    }
    if let Some(m) = &a.message {
        let _ = write!(line, " [message {}]", e(m));
    }
    if !a.cause.is_empty() && a.cause != a.kind {
        let _ = write!(line, ": {}", e(&a.cause));
    }
    if let Some(c) = &a.cleared {
        let _ = write!(line, " [cleared by {} at {}]", e(&c.by), e(&c.at));
    }
    line
}

/// One `hotline audit export` text line for a JSON value of the audit report: an entry as
/// `index time hash-prefix event`, anything else as its JSON. serde_json escapes C0 controls in
/// strings but not DEL or C1, so the line is escaped as a whole too.
pub fn audit_entry_line(v: &serde_json::Value) -> String {
    let line = match v["type"].as_str() {
        Some("entry") => {
            let hash = v["hash"].as_str().unwrap_or("");
            format!(
                "{:>6} {} {} {}",
                v["index"],
                v["at"].as_str().unwrap_or(""),
                hash.get(..12).unwrap_or(hash),
                v["event"]
            )
        }
        _ => v.to_string(),
    };
    escape_control(&line).into_owned()
}

/// `up`, `degraded` or `down`.
pub fn link_name(s: LinkState) -> &'static str {
    match s {
        LinkState::Up => "up",
        LinkState::Degraded => "degraded",
        LinkState::Down => "down",
    }
}

/// The relay link's last error when the relay closed us because another connection uses our
/// identity (a copied configuration or a stolen key): what `status` shows.
pub fn identity_conflict_line(close: CloseReason) -> String {
    format!(
        "another node is using our identity (closed by relay: {})",
        close.reason()
    )
}

/// An alarm's kind in one line, as `status` and the audit log show it.
pub fn alarm_kind(k: &AlarmKind) -> String {
    match k {
        AlarmKind::Security(e) => format!("security: {e}"),
        AlarmKind::PartnerKeyChanged => "partner identity key changed".into(),
        AlarmKind::Refused(code) => format!("refused by relay: {code:?}"),
        AlarmKind::StoreFailed => "store failed".into(),
        AlarmKind::PartnerKeyExpired => "partner sealing key expired".into(),
        AlarmKind::PartnerLostStore => "partner lost its store".into(),
        AlarmKind::StoreLossRepaired => "this node's store was lost; re-paired".into(),
        AlarmKind::ClockSkew => "partner clock skew".into(),
        AlarmKind::LaneLimit => "inbound lane limit".into(),
    }
}

/// One outbox entry as `Request::Sent` lists it.
pub fn sent(e: &OutboxEntry) -> SentView {
    let level = if e.acknowledged.is_some() {
        "acknowledged"
    } else if e.delivered.is_some() {
        "delivered"
    } else if e.accepted.is_some() {
        "accepted"
    } else {
        "stored"
    };
    SentView {
        id: e.id.to_string(),
        channel: e.id.channel.to_string(),
        precedence: e.id.precedence.to_string(),
        transport: e.transport.to_string(),
        escalations: e.escalations,
        sent_at: format_time(e.sent_at),
        level: level.into(),
        awaiting: e.next_deadline.map(|(kind, _)| {
            match kind {
                DeadlineKind::Delivered => "delivered",
                DeadlineKind::Acknowledged => "acknowledged",
            }
            .into()
        }),
        deadline: e.next_deadline.map(|(_, at)| format_time(at)),
        deadline_us: e.next_deadline.map(|(_, at)| at.0),
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
    /// Each relay link.
    pub relays: Vec<RelayView>,
    /// When the last relay that no longer carries fresh link tests stopped carrying them.
    pub redundancy_lost_at: Option<Time>,
    /// Uncleared alarm-book entries, in the book's order (see [`crate::alarms`]).
    pub alarms: Vec<AlarmView>,
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
    // With several relays, an engine `Up` carried by only some of them is shown degraded: the
    // hotline works, but with less redundancy than configured.
    let carrying = shell.relays.iter().filter(|r| r.carries_link_tests).count();
    let (link, since) = match s.link {
        LinkState::Up if shell.relays.len() > 1 && carrying < shell.relays.len() => (
            "degraded",
            shell
                .redundancy_lost_at
                .map_or(s.link_since, |t| t.max(s.link_since)),
        ),
        state => (link_name(state), s.link_since),
    };
    StatusView {
        endpoint: shell.local.to_string(),
        partner: shell.partner.to_string(),
        link: link.into(),
        link_since: format_time(since),
        connected: s.connected,
        partner_online: s.partner_online,
        partner_last_heard: s.partner_last_heard.map(format_time),
        last_error: shell.last_error.map(str::to_owned),
        own_epoch: s.own_epoch,
        partner_epoch: s.partner_epoch,
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
        alarms: shell.alarms.clone(),
        inbox: shell.inbox,
        relays: shell.relays.clone(),
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
        durable_us: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOSTILE: &str = "hi\x1b[2J\x07 there\r\nforged\x08\x7f\u{9b}31m\u{202e}txt";

    #[test]
    fn escape_control_makes_every_control_visible() {
        assert_eq!(
            escape_control(HOSTILE),
            "hi\\u{1b}[2J\\u{7} there\\r\\nforged\\u{8}\\u{7f}\\u{9b}31m\\u{202e}txt"
        );
        assert_eq!(escape_control("\x1b[2J\x07"), "\\u{1b}[2J\\u{7}");
        assert_eq!(escape_control("a\tb\0"), "a\\tb\\u{0}");
        // Ordinary text, accents and arrows included, is borrowed untouched.
        let plain = "Zweite Spur → bestätigen, 確認してください";
        assert!(matches!(escape_control(plain), Cow::Borrowed(s) if s == plain));
    }

    fn entry(body: &str) -> InboxEntry {
        InboxEntry {
            id: "us:main:flash:1".into(),
            from: "us".into(),
            to: "jp".into(),
            channel: "main".into(),
            precedence: "flash".into(),
            seq: 1,
            body: body.into(),
            sent_at: "2026-11-26T01:48:32Z".into(),
            received_at: "2026-11-26T01:48:33Z".into(),
            acknowledged: None,
            escalated_to: Some("flash\x1b]0;x\x07".into()),
            durable_us: None,
        }
    }

    #[test]
    fn inbox_text_is_escaped_and_json_is_exact() {
        let m = entry("\x1b[2J\x07line one\r\nline two");
        let text = inbox_line(&m);
        let lines: Vec<&str> = text.split('\n').collect();
        for l in &lines {
            assert!(!l.chars().any(char::is_control), "{text:?}");
        }
        assert_eq!(
            lines[1..],
            ["    \\u{1b}[2J\\u{7}line one\\r", "    line two"],
            "{text:?}"
        );
        let line = lines[0];
        assert!(
            line.ends_with("us:main:flash:1 [escalated to flash\\u{1b}]0;x\\u{7}]"),
            "{line:?}"
        );
        assert!(
            line.contains("[escalated to flash\\u{1b}]0;x\\u{7}]"),
            "{line:?}"
        );
        let json = serde_json::to_string(&m).unwrap();
        let back: InboxEntry = serde_json::from_str(&json).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.body, "\x1b[2J\x07line one\r\nline two");
    }

    #[test]
    fn a_one_line_body_stays_on_its_header_line() {
        let mut m = entry("all\tclear\x1b[1A");
        m.escalated_to = None;
        m.acknowledged = Some("t".into());
        assert_eq!(
            inbox_line(&m),
            "2026-11-26T01:48:33Z  flash     us:main:flash:1 [acknowledged]  all\\tclear\\u{1b}[1A"
        );
    }

    #[test]
    fn a_multi_line_body_cannot_forge_a_header() {
        let forged = "2026-11-26T01:48:34Z  flash     us:main:flash:2  fake";
        let m = entry(&format!("real\n{forged}\n"));
        let text = inbox_line(&m);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text:?}");
        assert!(
            lines[1..].iter().all(|l| l.starts_with(BODY_INDENT)),
            "{text:?}"
        );
        assert_eq!(lines[2], format!("{BODY_INDENT}{forged}"));
    }

    #[test]
    fn status_text_escapes_foreign_fields() {
        let s = StatusView {
            endpoint: "us".into(),
            partner: "jp\x1b[1A".into(),
            link: "up".into(),
            link_since: "t".into(),
            connected: true,
            partner_online: Some(true),
            partner_last_heard: Some("t\x1b[1A".into()),
            last_error: Some("closed by peer: \x1b[2J".into()),
            own_epoch: Some(2),
            partner_epoch: None,
            lanes: [("flash".to_string(), LaneView::default())].into(),
            pending_acks: vec!["jp:main:flash:1\r".into()],
            open_escalations: vec![EscalationView {
                id: "us:main:flash:2\x07".into(),
                escalated_to: "flash".into(),
                count: 1,
            }],
            alarms: vec![AlarmView {
                id: 3,
                severity: "warning".into(),
                kind: "refused by relay: Overloaded".into(),
                cause: "queue full\x1b[2J\x07\nALARM forged".into(),
                message: Some("us:main:flash:2\x1b[1A".into()),
                count: 64,
                first: "10:00:01Z".into(),
                last: "10:02:00Z".into(),
                cleared: None,
            }],
            inbox: 0,
            relays: vec![RelayView {
                addr: "relay.example:4433".into(),
                name: "relay\x1b[2J".into(),
                connected: false,
                since: "t".into(),
                last_error: Some("timed out\x1b[1A".into()),
                partner_online: None,
                carries_link_tests: false,
                holds: 0,
            }],
        };
        let lines = status_lines(&s);
        for l in &lines {
            assert!(!l.chars().any(char::is_control), "{l:?}");
        }
        let text = lines.join("\n");
        assert!(
            text.contains("queue full\\u{1b}[2J\\u{7}\\nALARM forged"),
            "{text}"
        );
        assert!(text.contains("closed by peer: \\u{1b}[2J"), "{text}");
        assert!(
            text.contains(
                "#3 WARNING refused by relay: Overloaded ×64 (first 10:00:01Z, last 10:02:00Z) \
                 [message us:main:flash:2\\u{1b}[1A]: queue full"
            ),
            "{text}"
        );
        assert!(text.contains("partner jp\\u{1b}[1A"), "{text}");
        let json = serde_json::to_string(&s).unwrap();
        let back: StatusView = serde_json::from_str(&json).unwrap();
        assert_eq!(back.alarms[0].cause, "queue full\x1b[2J\x07\nALARM forged");
    }

    #[test]
    fn audit_text_escapes_what_serde_json_leaves() {
        let v = serde_json::json!({
            "type": "entry",
            "index": 3,
            "at": "t",
            "hash": "0123456789abcdef",
            "event": { "alarm": { "kind": "k", "detail": "x\u{9b}2J\x1b[2J\x7f" } },
        });
        let line = audit_entry_line(&v);
        assert!(!line.chars().any(char::is_control), "{line:?}");
        assert!(line.contains("0123456789ab "), "{line}");
        assert!(line.contains("x\\u{9b}2J"), "{line}");
        let other = audit_entry_line(&serde_json::json!({ "type": "signed_head", "x": "\u{85}" }));
        assert!(!other.chars().any(char::is_control), "{other:?}");
    }
}
