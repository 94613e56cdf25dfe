//! The console on ratatui's `TestBackend`: what is drawn, and what each key does.

use std::time::Duration;

use hotline_proto::{Precedence, Time};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::app::{App, BellPolicy, Effect, Focus, Mode, Update};
use super::ui;
use crate::control::{
    AlarmView, ClearedView, InboxEntry, LaneView, RelayView, SentView, StatusView,
};
use crate::time::{format_time, parse_time};

/// 10:00:00 on the day of the tests.
fn at(hms: &str) -> Time {
    parse_time(&format!("2026-11-27T{hms}Z")).unwrap()
}

fn t(hms: &str) -> String {
    format_time(at(hms))
}

const DEADLINES: [Option<Duration>; 4] = [
    None,
    Some(Duration::from_secs(3600)),
    Some(Duration::from_secs(600)),
    Some(Duration::from_secs(120)),
];

fn app() -> App {
    App::new(at("09:59:00"), DEADLINES, BellPolicy::All)
}

fn message(precedence: &str, seq: u64, received: &str, body: &str) -> InboxEntry {
    InboxEntry {
        id: format!("us:main:{precedence}:{seq}"),
        from: "us".into(),
        to: "jp".into(),
        channel: "main".into(),
        precedence: precedence.into(),
        seq,
        body: body.into(),
        sent_at: t(received),
        received_at: t(received),
        acknowledged: None,
        escalated_to: None,
        durable_us: None,
    }
}

fn status(link: &str, relays: &[(&str, bool)]) -> StatusView {
    StatusView {
        endpoint: "jp".into(),
        partner: "us".into(),
        link: link.into(),
        link_since: t("09:58:00"),
        connected: true,
        partner_online: Some(true),
        partner_last_heard: None,
        last_error: None,
        own_epoch: Some(1),
        partner_epoch: Some(1),
        lanes: Precedence::ALL
            .iter()
            .map(|p| (p.to_string(), LaneView::default()))
            .collect(),
        pending_acks: Vec::new(),
        open_escalations: Vec::new(),
        alarms: Vec::new(),
        inbox: 0,
        relays: relays
            .iter()
            .map(|(name, up)| RelayView {
                addr: "127.0.0.1:4433".into(),
                name: (*name).into(),
                connected: *up,
                since: t("09:58:00"),
                last_error: None,
                partner_online: Some(true),
                carries_link_tests: *up,
                holds: 0,
            })
            .collect(),
    }
}

fn alarm(id: u64, severity: &str, kind: &str, count: u64, last: &str) -> AlarmView {
    AlarmView {
        id,
        severity: severity.into(),
        kind: kind.into(),
        cause: format!("cause of {kind}"),
        message: None,
        count,
        first: t("09:50:00"),
        last: t(last),
        cleared: None,
    }
}

fn key(code: KeyCode) -> KeyEvent {
    KeyEvent::new(code, KeyModifiers::NONE)
}

fn ch(c: char) -> KeyEvent {
    key(KeyCode::Char(c))
}

fn render(app: &App, now: Time) -> Vec<String> {
    let (w, h) = (150, 32);
    let mut term = Terminal::new(TestBackend::new(w, h)).unwrap();
    term.draw(|f| ui::draw(f, app, now)).unwrap();
    let buf = term.backend().buffer();
    (0..h)
        .map(|y| (0..w).map(|x| buf[(x, y)].symbol()).collect::<String>())
        .collect()
}

fn row_of(screen: &[String], needle: &str) -> usize {
    screen
        .iter()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not on screen:\n{}", screen.join("\n")))
}

/// A console connected to a node with a routine, a priority (acknowledged) and a flash
/// message, listed before it started.
fn connected() -> App {
    let mut a = app();
    a.apply(Update::Connected);
    a.apply(Update::Status(Box::new(status(
        "up",
        &[("r1", true), ("r2", false)],
    ))));
    a.apply(Update::Message(message(
        "routine",
        1,
        "09:40:00",
        "lunch menu",
    )));
    let mut acked = message("priority", 1, "09:41:00", "weather report");
    acked.acknowledged = Some(t("09:42:00"));
    a.apply(Update::Message(acked));
    a.apply(Update::Message(message(
        "flash",
        1,
        "09:58:30",
        "confirm readiness",
    )));
    a
}

#[test]
fn the_header_shows_endpoints_link_each_relay_the_node_and_the_clock() {
    let screen = render(&connected(), at("10:00:00"));
    let header = screen[..2].join("\n");
    assert!(header.contains("jp ↔ us"), "{header}");
    assert!(
        header.contains("LINK UP since 09:58:00Z (2m ago)"),
        "{header}"
    );
    assert!(header.contains("relay r1 ● up"), "{header}");
    assert!(header.contains("relay r2 ○ down"), "{header}");
    assert!(header.contains("node: connected"), "{header}");
    assert!(header.contains("10:00:00Z"), "{header}");
}

#[test]
fn unacknowledged_messages_are_pinned_on_top_by_precedence_with_time_left() {
    let screen = render(&connected(), at("10:00:00"));
    let flash = row_of(&screen, "confirm readiness");
    let routine = row_of(&screen, "lunch menu");
    let acked = row_of(&screen, "weather report");
    assert!(flash < routine && routine < acked, "{}", screen.join("\n"));
    // The flash was sent at 09:58:30 with a two-minute deadline: 30 s left.
    assert!(screen[flash].contains("⏱ 0:30"), "{}", screen[flash]);
    assert!(screen[flash].contains("FLASH"), "{}", screen[flash]);
    assert!(
        !screen[routine].contains('⏱'),
        "routine expects no acknowledgement"
    );
    assert!(screen[acked].contains('✓'), "{}", screen[acked]);
    assert!(screen[row_of(&screen, "Inbox:")].contains("3 message(s), 2 to acknowledge"));
}

#[test]
fn a_missed_acknowledgement_deadline_shows_overdue() {
    let screen = render(&connected(), at("10:01:15"));
    let flash = row_of(&screen, "confirm readiness");
    assert!(screen[flash].contains("OVERDUE 0:45"), "{}", screen[flash]);
}

#[test]
fn a_new_flash_is_selected_at_once_and_rings_but_the_listing_does_not() {
    let mut a = connected();
    assert!(
        !a.take_bell(),
        "messages listed from before the start are quiet"
    );
    a.key(ch('j'));
    a.key(ch('j'));
    assert_eq!(a.selected_message.as_deref(), Some("us:main:priority:1"));
    a.focus = Focus::Alarms;
    a.apply(Update::Message(message(
        "flash",
        2,
        "10:00:01",
        "second flash",
    )));
    assert_eq!(a.selected_message.as_deref(), Some("us:main:flash:2"));
    assert_eq!(a.focus, Focus::Inbox);
    assert!(a.take_bell());
    assert!(!a.take_bell(), "one ring per flash");
    // The same flash again (a reconnect's listing) does not ring twice.
    a.apply(Update::Message(message(
        "flash",
        2,
        "10:00:01",
        "second flash",
    )));
    assert!(!a.take_bell());

    let mut quiet = App::new(at("09:59:00"), DEADLINES, BellPolicy::Off);
    quiet.apply(Update::Message(message("flash", 3, "10:00:02", "x")));
    assert!(!quiet.take_bell());
}

#[test]
fn acknowledging_a_flash_asks_for_y_and_a_routine_does_not() {
    let mut a = connected();
    assert_eq!(a.selected_message.as_deref(), Some("us:main:flash:1"));
    assert!(a.key(ch('a')).is_empty(), "a flash asks first");
    assert_eq!(a.mode, Mode::ConfirmAck("us:main:flash:1".into()));
    let screen = render(&a, at("10:00:00"));
    row_of(&screen, "Acknowledge FLASH us:main:flash:1?");
    assert_eq!(
        a.key(ch('y')),
        vec![Effect::Ack("us:main:flash:1".parse().unwrap())]
    );
    assert_eq!(a.mode, Mode::Normal);

    // Any other key cancels.
    a.key(ch('a'));
    assert!(a.key(ch('n')).is_empty());
    assert_eq!(a.mode, Mode::Normal);

    a.key(ch('j'));
    assert_eq!(
        a.key(ch('a')),
        vec![Effect::Ack("us:main:routine:1".parse().unwrap())]
    );
    a.apply(Update::Acknowledged {
        id: "us:main:routine:1".into(),
        at: t("10:00:00"),
    });
    assert!(
        a.message("us:main:routine:1")
            .unwrap()
            .acknowledged
            .is_some()
    );
    a.selected_message = Some("us:main:routine:1".into());
    assert!(a.key(ch('a')).is_empty(), "already acknowledged");
}

#[test]
fn enter_opens_the_whole_message_with_its_lines_and_escapes_control_characters() {
    let mut a = connected();
    a.apply(Update::Message(message(
        "immediate",
        1,
        "09:58:40",
        "line one\nline two \u{1b}[2J",
    )));
    a.selected_message = Some("us:main:immediate:1".into());
    a.key(key(KeyCode::Enter));
    assert_eq!(a.mode, Mode::Detail("us:main:immediate:1".into()));
    let screen = render(&a, at("10:00:00"));
    let one = row_of(&screen, "line one");
    assert!(
        screen[one + 1].contains("line two \\u{1b}[2J"),
        "{}",
        screen[one + 1]
    );
    assert!(screen.iter().all(|l| !l.contains('\u{1b}')));
    a.key(key(KeyCode::Esc));
    assert_eq!(a.mode, Mode::Normal);
    // In the list the body is one line, marked as having more.
    let screen = render(&a, at("10:00:00"));
    assert!(screen[row_of(&screen, "line one")].contains("⏎"));
}

#[test]
fn compose_chooses_precedence_and_channel_and_refuses_an_empty_body() {
    let mut a = connected();
    a.key(ch('c'));
    assert!(a.key(key(KeyCode::Enter)).is_empty(), "empty body refused");
    let screen = render(&a, at("10:00:00"));
    row_of(&screen, "the message is empty");
    for c in "all quiet".chars() {
        a.key(ch(c));
    }
    for _ in 0..5 {
        a.key(key(KeyCode::Up));
    }
    a.key(key(KeyCode::Down));
    a.key(key(KeyCode::Tab));
    for _ in 0..4 {
        a.key(key(KeyCode::Backspace));
    }
    for c in "ops".chars() {
        a.key(ch(c));
    }
    let screen = render(&a, at("10:00:00"));
    row_of(&screen, "IMMEDIATE");
    assert_eq!(
        a.key(key(KeyCode::Enter)),
        vec![Effect::Send {
            precedence: Precedence::Immediate,
            channel: "ops".parse().unwrap(),
            body: "all quiet".into(),
        }]
    );
    assert_eq!(a.mode, Mode::Normal);
    a.key(ch('c'));
    a.key(ch('x'));
    assert!(a.key(key(KeyCode::Esc)).is_empty());
    assert_eq!(a.mode, Mode::Normal);
}

#[test]
fn alarms_are_listed_highest_severity_first_and_x_clears_the_selected_one() {
    let mut a = connected();
    a.apply(Update::Alarm(alarm(
        1,
        "warning",
        "partner clock skew",
        3,
        "09:55:00",
    )));
    a.apply(Update::Alarm(alarm(
        2,
        "critical",
        "security: bad signature",
        64,
        "09:50:30",
    )));
    let screen = render(&a, at("10:00:00"));
    let critical = row_of(&screen, "#2 ×64 security: bad signature");
    let warning = row_of(&screen, "#1 ×3 partner clock skew");
    assert!(critical < warning);
    assert!(screen[critical + 1].contains("cause of security: bad signature"));
    assert_eq!(a.key(ch('x')), vec![Effect::ClearAlarm(2)]);
    a.key(key(KeyCode::Tab));
    a.key(ch('j'));
    assert_eq!(a.key(ch('x')), vec![Effect::ClearAlarm(1)]);
    // A repeat of a critical alarm rings; a warning does not.
    assert!(!a.take_bell());
    a.apply(Update::Alarm(alarm(
        1,
        "warning",
        "partner clock skew",
        4,
        "10:00:00",
    )));
    assert!(!a.take_bell());
    a.apply(Update::Alarm(alarm(
        2,
        "critical",
        "security: bad signature",
        65,
        "10:00:00",
    )));
    assert!(a.take_bell());
    // A clearing (by this console or by `hotline alarms clear`) takes it off the list, and
    // the selection moves to what is left.
    let mut cleared = alarm(2, "critical", "security: bad signature", 65, "10:00:00");
    cleared.cleared = Some(ClearedView {
        by: "duty".into(),
        at: t("10:00:05"),
    });
    a.apply(Update::Alarm(cleared));
    assert_eq!(a.alarms.len(), 1);
    assert_eq!(a.selected_alarm, Some(1));
    let screen = render(&a, at("10:00:06"));
    assert!(screen.iter().all(|l| !l.contains("bad signature")));
}

#[test]
fn losing_the_node_is_shown_and_a_reconnect_is_said() {
    let mut a = connected();
    a.apply(Update::Disconnected("node not running".into()));
    let screen = render(&a, at("10:00:00"));
    assert!(
        screen[1].contains("node: NOT REACHABLE (node not running)"),
        "{}",
        screen[1]
    );
    row_of(&screen, "lost the node: node not running; reconnecting");
    a.apply(Update::Connected);
    assert!(a.inbox.is_empty(), "a fresh listing follows a reconnect");
    let screen = render(&a, at("10:00:00"));
    row_of(&screen, "reconnected to the node");
    assert!(screen[1].contains("node: connected"));
    // A notice goes away after a while and the key hints return.
    a.tick(at("10:00:00"));
    a.tick(at("10:00:09"));
    assert!(a.notice.is_some());
    a.tick(at("10:00:10"));
    let screen = render(&a, at("10:00:10"));
    row_of(&screen, "? help  q quit");
}

#[test]
fn question_mark_shows_the_keys_and_q_quits() {
    let mut a = connected();
    a.key(ch('?'));
    let screen = render(&a, at("10:00:00"));
    for (k, what) in ui::KEYS {
        let row = row_of(&screen, what);
        assert!(screen[row].contains(k));
    }
    assert!(a.key(ch('q')).is_empty(), "any key closes the help");
    assert_eq!(a.key(ch('q')), vec![Effect::Quit]);
    assert_eq!(
        a.key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
        vec![Effect::Quit]
    );
}

#[test]
fn sent_messages_show_their_level_and_time_left() {
    let mut a = connected();
    a.apply(Update::Sent(vec![SentView {
        id: "jp:main:flash:7".into(),
        channel: "main".into(),
        precedence: "flash".into(),
        transport: "flash".into(),
        escalations: 0,
        sent_at: t("09:59:30"),
        level: "delivered".into(),
        awaiting: Some("acknowledged".into()),
        deadline: Some(t("10:01:30")),
        deadline_us: Some(at("10:01:30").0),
    }]));
    let screen = render(&a, at("10:00:00"));
    let row = row_of(&screen, "jp:main:flash:7");
    assert!(
        screen[row].contains("FLASH     delivered, acknowledged due ⏱ 1:30"),
        "{}",
        screen[row]
    );
}
