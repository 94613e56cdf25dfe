//! Drawing the console: [`draw`] renders an [`App`] at a given time into a ratatui frame.
//!
//! Layout: a header (endpoints, link, relays, node connection, clock), the inbox on the left,
//! our messages awaiting the partner and the alarms on the right, and a key line. Partner- and
//! relay-chosen text goes through [`escape_control`], as in the CLI, so a body cannot move the
//! cursor or forge a row.

use std::time::Duration;

use hotline_proto::Time;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::{Line, Span, Text};
use ratatui::widgets::{Block, Borders, Clear, List, ListItem, ListState, Paragraph, Wrap};

use super::app::{App, ComposeField, Focus, Mode, NodeLink};
use crate::control::InboxEntry;
use crate::time::parse_time;
use crate::view::escape_control;

/// The keys, as `?` shows them.
pub const KEYS: &[(&str, &str)] = &[
    ("↑/↓ j/k", "select"),
    ("Tab", "inbox ↔ alarms"),
    ("Enter", "open the selected message"),
    ("a", "acknowledge the selected message (a flash asks y/n)"),
    (
        "c",
        "compose: ↑/↓ precedence, Tab channel, Enter send, Esc cancel",
    ),
    ("x", "clear the selected alarm"),
    ("?", "this help"),
    ("q", "quit"),
];

/// Renders the whole console.
pub fn draw(frame: &mut Frame<'_>, app: &App, now: Time) {
    let [header, body, footer] = Layout::vertical([
        Constraint::Length(3),
        Constraint::Min(6),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    draw_header(frame, header, app, now);
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(58), Constraint::Percentage(42)]).areas(body);
    draw_inbox(frame, left, app, now);
    let [sent, alarms] =
        Layout::vertical([Constraint::Percentage(45), Constraint::Percentage(55)]).areas(right);
    draw_sent(frame, sent, app, now);
    draw_alarms(frame, alarms, app);
    draw_footer(frame, footer, app);
    match &app.mode {
        Mode::Normal => {}
        Mode::Help => draw_help(frame, body),
        Mode::Detail(id) => draw_detail(frame, body, app, id, now),
        Mode::ConfirmAck(id) => draw_confirm(frame, body, id),
        Mode::Compose(_) => draw_compose(frame, body, app),
    }
}

fn draw_header(frame: &mut Frame<'_>, area: Rect, app: &App, now: Time) {
    let clock = short_time(now);
    let mut first = Vec::new();
    let mut second = Vec::new();
    match &app.status {
        Some(s) => {
            first.push(Span::from(format!(
                "{} ↔ {}  ",
                escape_control(&s.endpoint),
                escape_control(&s.partner)
            )));
            let (label, style) = match s.link.as_str() {
                "up" => ("LINK UP", Style::new().fg(Color::Green).bold()),
                "degraded" => ("LINK DEGRADED", Style::new().fg(Color::Yellow).bold()),
                _ => ("LINK DOWN", Style::new().fg(Color::Red).bold()),
            };
            first.push(Span::styled(label, style));
            let since = parse_time(&s.link_since)
                .map(|t| format!(" since {} ({} ago)", short_time(t), span(now.since(t))))
                .unwrap_or_default();
            first.push(Span::from(since));
            for r in &s.relays {
                let (mark, style) = match (r.connected, r.carries_link_tests) {
                    (true, true) => ("●", Style::new().fg(Color::Green)),
                    (true, false) => ("◐", Style::new().fg(Color::Yellow)),
                    (false, _) => ("○", Style::new().fg(Color::Red)),
                };
                second.push(Span::from("relay "));
                second.push(Span::from(escape_control(&r.name).into_owned()));
                second.push(Span::from(" "));
                second.push(Span::styled(mark, style));
                let state = if r.connected {
                    if r.carries_link_tests {
                        " up"
                    } else {
                        " no link tests"
                    }
                } else {
                    " down"
                };
                second.push(Span::from(format!("{state}   ")));
            }
        }
        None => first.push(Span::from("waiting for the node's status…")),
    }
    let node = match &app.node {
        NodeLink::Connecting => Span::styled("node: connecting…", Style::new().fg(Color::Yellow)),
        NodeLink::Connected => Span::styled("node: connected", Style::new().fg(Color::Green)),
        NodeLink::Lost(why) => Span::styled(
            format!("node: NOT REACHABLE ({}) — retrying", escape_control(why)),
            Style::new().fg(Color::Red).bold(),
        ),
    };
    second.push(node);
    let [lines, rule] =
        Layout::vertical([Constraint::Length(2), Constraint::Length(1)]).areas(area);
    frame.render_widget(
        Paragraph::new(vec![Line::from(first), Line::from(second)]),
        lines,
    );
    frame.render_widget(
        Paragraph::new(Line::from(clock).bold()).right_aligned(),
        lines,
    );
    frame.render_widget(Block::new().borders(Borders::TOP), rule);
}

fn draw_inbox(frame: &mut Frame<'_>, area: Rect, app: &App, now: Time) {
    let rows = app.inbox_rows();
    let unacked = rows.iter().filter(|m| m.acknowledged.is_none()).count();
    let items: Vec<ListItem<'_>> = rows.iter().map(|m| inbox_item(app, m, now)).collect();
    let selected = app
        .selected_message
        .as_ref()
        .and_then(|id| rows.iter().position(|m| &m.id == id));
    let title = format!(
        " Inbox: {} message(s), {unacked} to acknowledge ",
        rows.len()
    );
    let mut state = ListState::default().with_selected(selected);
    let list = List::new(items)
        .block(focused(
            Block::bordered().title(title),
            app.focus == Focus::Inbox,
        ))
        .highlight_symbol("▶ ")
        .highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    frame.render_stateful_widget(list, area, &mut state);
}

fn inbox_item<'a>(app: &App, m: &InboxEntry, now: Time) -> ListItem<'a> {
    let flash = m.precedence == "flash";
    let mut style = precedence_style(&m.precedence);
    if m.acknowledged.is_some() {
        style = Style::new().fg(Color::DarkGray);
    }
    let mark = if m.acknowledged.is_some() {
        "✓"
    } else if flash {
        "!"
    } else {
        "•"
    };
    let time = parse_time(&m.received_at).map_or_else(|| "?".into(), short_time);
    let mut spans = vec![
        Span::styled(format!("{mark} {:<9} ", m.precedence.to_uppercase()), style),
        Span::from(format!("{time} ")),
    ];
    if let Some(due) = app.ack_due(m) {
        spans.push(countdown(due, now));
        spans.push(Span::from(" "));
    }
    if let Some(to) = &m.escalated_to {
        spans.push(Span::styled(
            format!("ESCALATED→{} ", escape_control(to)),
            Style::new().fg(Color::Magenta).bold(),
        ));
    }
    spans.push(Span::from(format!("#{}  ", escape_control(&m.channel))));
    spans.push(Span::styled(preview(&m.body, 60), style));
    spans.push(Span::from(format!("  {}", escape_control(&m.id))).dark_gray());
    ListItem::new(Line::from(spans))
}

fn draw_sent(frame: &mut Frame<'_>, area: Rect, app: &App, now: Time) {
    let items: Vec<ListItem<'_>> = app
        .sent
        .iter()
        .map(|s| {
            let mut spans = vec![
                Span::styled(
                    format!("{:<9} ", s.precedence.to_uppercase()),
                    precedence_style(&s.precedence),
                ),
                Span::styled(s.level.clone(), Style::new().bold()),
            ];
            if let (Some(what), Some(us)) = (&s.awaiting, s.deadline_us) {
                spans.push(Span::from(format!(", {what} due ")));
                spans.push(countdown(Time(us), now));
            }
            if s.escalations > 0 {
                spans.push(Span::styled(
                    format!(" ESCALATED→{}", s.transport),
                    Style::new().fg(Color::Magenta).bold(),
                ));
            }
            spans.push(Span::from(format!("  {}", escape_control(&s.id))).dark_gray());
            ListItem::new(Line::from(spans))
        })
        .collect();
    let title = format!(" Sent, awaiting the partner: {} ", app.sent.len());
    frame.render_widget(List::new(items).block(Block::bordered().title(title)), area);
}

fn draw_alarms(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let items: Vec<ListItem<'_>> = app
        .alarms
        .iter()
        .map(|a| {
            let style = match a.severity.as_str() {
                "critical" => Style::new().fg(Color::Red).bold(),
                "warning" => Style::new().fg(Color::Yellow),
                _ => Style::new(),
            };
            let when = |t: &str| parse_time(t).map_or_else(|| "?".into(), short_time);
            ListItem::new(vec![
                Line::from(vec![
                    Span::styled(format!("{:<8} ", a.severity.to_uppercase()), style),
                    Span::from(format!("#{} ×{} ", a.id, a.count)),
                    Span::styled(escape_control(&a.kind).into_owned(), style),
                ]),
                Line::from(format!(
                    "   {} (first {}, last {})",
                    preview(&a.cause, 60),
                    when(&a.first),
                    when(&a.last)
                )),
            ])
        })
        .collect();
    let selected = app
        .selected_alarm
        .and_then(|id| app.alarms.iter().position(|a| a.id == id));
    let mut state = ListState::default().with_selected(selected);
    let title = format!(" Alarms: {} ", app.alarms.len());
    let list = List::new(items)
        .block(focused(
            Block::bordered().title(title),
            app.focus == Focus::Alarms,
        ))
        .highlight_symbol("▶ ")
        .highlight_style(if app.focus == Focus::Alarms {
            Style::new().add_modifier(Modifier::REVERSED)
        } else {
            Style::new().add_modifier(Modifier::UNDERLINED)
        });
    frame.render_stateful_widget(list, area, &mut state);
}

fn draw_footer(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let line = match &app.notice {
        Some(n) if n.error => Line::from(Span::styled(
            escape_control(&n.text).into_owned(),
            Style::new().fg(Color::Red).bold(),
        )),
        Some(n) => Line::from(escape_control(&n.text).into_owned()),
        None => {
            Line::from("↑/↓ select  Enter open  a ack  c compose  x clear alarm  ? help  q quit")
                .dark_gray()
        }
    };
    frame.render_widget(Paragraph::new(line), area);
}

fn draw_help(frame: &mut Frame<'_>, body: Rect) {
    let area = popup(body, 70, KEYS.len() as u16 + 4);
    let lines: Vec<Line<'_>> = KEYS
        .iter()
        .map(|(k, what)| {
            Line::from(vec![
                Span::from(format!("{k:>9}  ")).bold(),
                Span::from(*what),
            ])
        })
        .collect();
    frame.render_widget(Clear, area);
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(" Keys (any key closes) ")),
        area,
    );
}

fn draw_detail(frame: &mut Frame<'_>, body: Rect, app: &App, id: &str, now: Time) {
    let area = popup(body, 90, body.height.saturating_sub(2));
    let Some(m) = app.message(id) else {
        return;
    };
    let e = |s: &str| escape_control(s).into_owned();
    let mut lines = vec![
        Line::from(format!("{}  from {} to {}", e(&m.id), e(&m.from), e(&m.to))),
        Line::from(format!(
            "precedence {}  channel {}{}",
            e(&m.precedence),
            e(&m.channel),
            m.escalated_to
                .as_ref()
                .map(|t| format!("  escalated to {}", e(t)))
                .unwrap_or_default()
        )),
        Line::from(format!(
            "sent {}  received {}",
            e(&m.sent_at),
            e(&m.received_at)
        )),
    ];
    match (&m.acknowledged, app.ack_due(m)) {
        (Some(at), _) => lines.push(Line::from(format!("acknowledged {}", e(at)))),
        (None, Some(due)) => lines.push(Line::from(vec![
            Span::from("acknowledge within "),
            countdown(due, now),
            Span::from("  (a acknowledges)"),
        ])),
        (None, None) => lines.push(Line::from("not acknowledged (a acknowledges)")),
    }
    lines.push(Line::from(""));
    // Line breaks are the sender's; every other control character is shown escaped.
    lines.extend(m.body.split('\n').map(|l| Line::from(e(l))));
    frame.render_widget(Clear, area);
    frame.render_widget(
        Paragraph::new(Text::from(lines))
            .wrap(Wrap { trim: false })
            .block(Block::bordered().title(" Message (any key closes) ")),
        area,
    );
}

fn draw_confirm(frame: &mut Frame<'_>, body: Rect, id: &str) {
    let area = popup(body, 60, 5);
    frame.render_widget(Clear, area);
    frame.render_widget(
        Paragraph::new(vec![
            Line::from(format!("Acknowledge FLASH {}?", escape_control(id))).bold(),
            Line::from("y: acknowledge   any other key: cancel"),
        ])
        .block(Block::bordered().title(" Confirm ").red()),
        area,
    );
}

fn draw_compose(frame: &mut Frame<'_>, body: Rect, app: &App) {
    let Mode::Compose(c) = &app.mode else {
        return;
    };
    let area = popup(body, 80, 9);
    let cursor = |f: ComposeField| if c.field == f { "▏" } else { "" };
    let mut lines = vec![
        Line::from(vec![
            Span::from("precedence (↑/↓): "),
            Span::from(c.precedence.to_string().to_uppercase()).bold(),
            Span::from(format!(
                "    channel (Tab): {}{}",
                c.channel,
                cursor(ComposeField::Channel)
            )),
        ]),
        Line::from(""),
        Line::from(format!(
            "{}{}",
            preview_tail(&c.body, 200),
            cursor(ComposeField::Body)
        )),
        Line::from(""),
        Line::from("Enter: send   Esc: discard").dark_gray(),
    ];
    if let Some(err) = &c.error {
        lines.push(Line::from(err.clone()).red());
    }
    frame.render_widget(Clear, area);
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(Block::bordered().title(" Compose ")),
        area,
    );
}

/// Flash red, immediate yellow, priority cyan, routine plain.
fn precedence_style(precedence: &str) -> Style {
    match precedence {
        "flash" => Style::new().fg(Color::Red).bold(),
        "immediate" => Style::new().fg(Color::Yellow).bold(),
        "priority" => Style::new().fg(Color::Cyan),
        _ => Style::new(),
    }
}

fn focused(block: Block<'_>, on: bool) -> Block<'_> {
    if on {
        block.border_style(Style::new().bold())
    } else {
        block.border_style(Style::new().dark_gray())
    }
}

/// A box of `width` percent and `height` rows, centred in `area`.
fn popup(area: Rect, width: u16, height: u16) -> Rect {
    let w = u16::try_from(u32::from(area.width) * u32::from(width) / 100).unwrap_or(area.width);
    let h = height.min(area.height);
    Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    }
}

/// Time left to `due` as `m:ss` (or `h:mm:ss`), `OVERDUE m:ss` once past.
fn countdown(due: Time, now: Time) -> Span<'static> {
    if due >= now {
        let left = due.since(now);
        let style = if left < Duration::from_secs(60) {
            Style::new().fg(Color::Red).bold()
        } else {
            Style::new().fg(Color::Yellow)
        };
        Span::styled(format!("⏱ {}", clock_span(left)), style)
    } else {
        Span::styled(
            format!("OVERDUE {}", clock_span(now.since(due))),
            Style::new()
                .fg(Color::Red)
                .bold()
                .add_modifier(Modifier::REVERSED),
        )
    }
}

fn clock_span(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

/// A rough duration for "since": `42s`, `5m`, `3h`, `2d`.
fn span(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// `HH:MM:SS` UTC.
fn short_time(t: Time) -> String {
    let secs = t.0 / 1_000_000;
    format!(
        "{:02}:{:02}:{:02}Z",
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60
    )
}

/// The first line of `text`, escaped, cut to `max` characters with `…`; `⏎` marks more lines.
fn preview(text: &str, max: usize) -> String {
    let first = text.lines().next().unwrap_or("");
    let mut out: String = escape_control(first).chars().take(max).collect();
    if out.chars().count() < escape_control(first).chars().count() {
        out.push('…');
    }
    if text.trim_end().contains('\n') {
        out.push_str(" ⏎");
    }
    out
}

/// The last `max` characters of what is being typed, escaped.
fn preview_tail(text: &str, max: usize) -> String {
    let escaped = escape_control(text);
    let n = escaped.chars().count();
    escaped.chars().skip(n.saturating_sub(max)).collect()
}
