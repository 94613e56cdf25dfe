//! The console's state and what a key does to it: no terminal, no socket, no clock.
//!
//! [`App::apply`] takes what the node said ([`Update`]), [`App::key`] takes what the operator
//! typed and returns the [`Effect`]s to carry out (acknowledge, send, clear an alarm, quit).
//! Times come in as arguments, so the TestBackend tests drive it exactly.

use std::collections::HashSet;
use std::time::Duration;

use hotline_proto::{Channel, MessageId, Precedence, Time};
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use crate::control::{AlarmView, InboxEntry, SentView, StatusView};
use crate::time::parse_time;

/// When the console rings the terminal bell.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum BellPolicy {
    /// On a new flash and on a new or repeated critical (security) alarm.
    #[default]
    All,
    /// On a new flash only.
    Flash,
    /// On a critical alarm only.
    Security,
    /// Never.
    Off,
}

/// Critical first, then warning, then anything else.
fn severity_rank(a: &AlarmView) -> u8 {
    match a.severity.as_str() {
        "critical" => 0,
        "warning" => 1,
        _ => 2,
    }
}

/// What the node connection reports.
#[derive(Clone, Debug)]
pub enum Update {
    /// (Re)connected to the node's control socket; a fresh inbox listing follows.
    Connected,
    /// The connection failed or the node went away; the feed retries.
    Disconnected(String),
    /// An inbox entry (listing or new arrival).
    Message(InboxEntry),
    /// A status snapshot.
    Status(Box<StatusView>),
    /// Our messages that await the partner.
    Sent(Vec<SentView>),
    /// One alarm, new or changed (a cleared one leaves the list).
    Alarm(AlarmView),
    /// A message we composed is durably queued.
    Queued(String),
    /// A message is acknowledged (by this console), at this time.
    Acknowledged {
        /// Its id.
        id: String,
        /// When (RFC 3339).
        at: String,
    },
    /// An effect finished: what it was, and the node's error if it failed.
    Finished {
        /// E.g. `acknowledge us:main:flash:1`.
        what: String,
        /// The node's refusal, if any.
        error: Option<String>,
    },
}

/// What a key asks the node to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Acknowledge a received message.
    Ack(MessageId),
    /// Send a message.
    Send {
        /// Precedence.
        precedence: Precedence,
        /// Channel.
        channel: Channel,
        /// Text.
        body: String,
    },
    /// Clear an alarm.
    ClearAlarm(u64),
    /// Leave the console.
    Quit,
}

/// Which list ↑/↓ move in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Focus {
    /// The inbox.
    Inbox,
    /// The alarms.
    Alarms,
}

/// The field being typed in the compose box.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ComposeField {
    /// The text.
    Body,
    /// The channel name.
    Channel,
}

/// A message being written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compose {
    /// Precedence (↑/↓ change it).
    pub precedence: Precedence,
    /// Channel name as typed.
    pub channel: String,
    /// Text as typed.
    pub body: String,
    /// Where typing goes (Tab switches).
    pub field: ComposeField,
    /// Why the last Enter was refused.
    pub error: Option<String>,
}

/// What covers the main screen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The dashboard.
    Normal,
    /// The key list.
    Help,
    /// One message in full.
    Detail(String),
    /// Acknowledging a flash asks first.
    ConfirmAck(String),
    /// Writing a message.
    Compose(Compose),
}

/// Where the console stands with the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeLink {
    /// Not connected yet.
    Connecting,
    /// Connected.
    Connected,
    /// Lost; the feed keeps retrying.
    Lost(String),
}

/// A line under the dashboard, shown for [`NOTICE_FOR`] (then the key hints return).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    /// Text.
    pub text: String,
    /// Shown as an error.
    pub error: bool,
    /// When it was first drawn (set by [`App::tick`]).
    pub shown: Option<Time>,
}

/// How long a notice stays under the dashboard.
pub const NOTICE_FOR: Duration = Duration::from_secs(10);

/// Everything the console shows.
#[derive(Debug)]
pub struct App {
    /// The node's last status.
    pub status: Option<StatusView>,
    /// Inbox in arrival order.
    pub inbox: Vec<InboxEntry>,
    /// Our messages that await the partner.
    pub sent: Vec<SentView>,
    /// Uncleared alarms, highest severity first, then the most recent.
    pub alarms: Vec<AlarmView>,
    /// Acknowledgement deadlines by precedence index, from the node's config.
    pub ack_deadlines: [Option<Duration>; 4],
    /// Which list the arrows move in.
    pub focus: Focus,
    /// Selected message id.
    pub selected_message: Option<String>,
    /// Selected alarm id.
    pub selected_alarm: Option<u64>,
    /// What covers the dashboard.
    pub mode: Mode,
    /// The node connection.
    pub node: NodeLink,
    /// The last notice.
    pub notice: Option<Notice>,
    bell: BellPolicy,
    ring: bool,
    /// Messages arrived before this are listed quietly; later unseen flashes ring and select.
    started: Time,
    seen: HashSet<String>,
    connections: u32,
    /// The operator moved the selection (or a new flash took it): it no longer follows the top.
    operator_moved: bool,
    /// The same for the alarms.
    operator_moved_alarm: bool,
}

impl App {
    /// A console started at `now`.
    pub fn new(now: Time, ack_deadlines: [Option<Duration>; 4], bell: BellPolicy) -> Self {
        Self {
            status: None,
            inbox: Vec::new(),
            sent: Vec::new(),
            alarms: Vec::new(),
            ack_deadlines,
            focus: Focus::Inbox,
            selected_message: None,
            selected_alarm: None,
            mode: Mode::Normal,
            node: NodeLink::Connecting,
            notice: None,
            bell,
            ring: false,
            started: now,
            seen: HashSet::new(),
            connections: 0,
            operator_moved: false,
            operator_moved_alarm: false,
        }
    }

    /// Moves the console's own time: a notice shown for [`NOTICE_FOR`] goes away.
    pub fn tick(&mut self, now: Time) {
        if let Some(n) = &mut self.notice {
            let shown = *n.shown.get_or_insert(now);
            if now.since(shown) >= NOTICE_FOR {
                self.notice = None;
            }
        }
    }

    /// Whether to ring the bell now (once per cause).
    pub fn take_bell(&mut self) -> bool {
        std::mem::take(&mut self.ring)
    }

    /// The inbox as shown: unacknowledged messages first, flash before routine, newest first
    /// within each; then acknowledged ones, newest first.
    pub fn inbox_rows(&self) -> Vec<&InboxEntry> {
        let mut rows: Vec<(usize, &InboxEntry)> = self.inbox.iter().enumerate().collect();
        rows.sort_by_key(|(i, m)| {
            let pinned = m.acknowledged.is_none();
            (
                std::cmp::Reverse(pinned),
                std::cmp::Reverse(if pinned {
                    precedence_rank(&m.precedence)
                } else {
                    0
                }),
                std::cmp::Reverse(*i),
            )
        });
        rows.into_iter().map(|(_, m)| m).collect()
    }

    /// When the selected or given message must be acknowledged by, if its precedence expects
    /// it and it is not acknowledged: the sender's time plus this node's configured deadline.
    pub fn ack_due(&self, m: &InboxEntry) -> Option<Time> {
        if m.acknowledged.is_some() {
            return None;
        }
        let p: Precedence = m.precedence.parse().ok()?;
        let d = self.ack_deadlines[p.index()]?;
        Some(parse_time(&m.sent_at)?.plus(d))
    }

    /// The message with this id.
    pub fn message(&self, id: &str) -> Option<&InboxEntry> {
        self.inbox.iter().find(|m| m.id == id)
    }

    /// Takes one report from the node.
    pub fn apply(&mut self, update: Update) {
        match update {
            Update::Connected => {
                self.connections += 1;
                self.inbox.clear();
                self.alarms.clear();
                if self.connections > 1 {
                    self.note("reconnected to the node", false);
                } else if matches!(self.node, NodeLink::Lost(_)) {
                    self.note("connected to the node", false);
                }
                self.node = NodeLink::Connected;
            }
            Update::Disconnected(why) => {
                if self.node != NodeLink::Lost(why.clone()) {
                    self.note(format!("lost the node: {why}; reconnecting"), true);
                }
                self.node = NodeLink::Lost(why);
            }
            Update::Message(m) => self.arrived(m),
            Update::Status(s) => self.status = Some(*s),
            Update::Sent(sent) => self.sent = sent,
            Update::Alarm(row) => self.alarm(row),
            Update::Queued(id) => self.note(format!("sent {id}"), false),
            Update::Acknowledged { id, at } => {
                if let Some(m) = self.inbox.iter_mut().find(|m| m.id == id) {
                    m.acknowledged.get_or_insert(at);
                }
            }
            Update::Finished { what, error } => match error {
                None => self.note(what, false),
                Some(e) => self.note(format!("{what} failed: {e}"), true),
            },
        }
    }

    fn arrived(&mut self, m: InboxEntry) {
        let new = self.seen.insert(m.id.clone())
            && parse_time(&m.received_at).is_some_and(|t| t >= self.started);
        if new && m.precedence == "flash" && m.acknowledged.is_none() {
            self.selected_message = Some(m.id.clone());
            self.operator_moved = true;
            self.focus = Focus::Inbox;
            self.ring |= matches!(self.bell, BellPolicy::All | BellPolicy::Flash);
            self.note(format!("FLASH from {}: {}", m.from, m.id), false);
        }
        match self.inbox.iter_mut().find(|x| x.id == m.id) {
            Some(old) => *old = m,
            None => self.inbox.push(m),
        }
        // Until the operator moves, the selection follows the top of the list.
        if self.selected_message.is_none() || !self.operator_moved {
            self.selected_message = self.inbox_rows().first().map(|m| m.id.clone());
        }
    }

    fn alarm(&mut self, row: AlarmView) {
        let old = self.alarms.iter().position(|a| a.id == row.id);
        if row.cleared.is_some() {
            if let Some(i) = old {
                self.alarms.remove(i);
            }
            self.fix_alarm_selection();
            return;
        }
        let grew = match old {
            Some(i) => row.count > std::mem::replace(&mut self.alarms[i], row.clone()).count,
            None => {
                self.alarms.push(row.clone());
                true
            }
        };
        let recent = parse_time(&row.last).is_some_and(|t| t >= self.started);
        if grew && row.severity == "critical" && recent {
            self.ring |= matches!(self.bell, BellPolicy::All | BellPolicy::Security);
        }
        self.alarms.sort_by(|a, b| {
            severity_rank(a)
                .cmp(&severity_rank(b))
                .then(b.last.cmp(&a.last))
        });
        self.fix_alarm_selection();
    }

    /// Until the operator moves in the alarms, the selection follows the top (most severe).
    fn fix_alarm_selection(&mut self) {
        let kept = self
            .selected_alarm
            .is_some_and(|id| self.alarms.iter().any(|a| a.id == id));
        if !kept || !self.operator_moved_alarm {
            self.selected_alarm = self.alarms.first().map(|a| a.id);
        }
    }

    fn note(&mut self, text: impl Into<String>, error: bool) {
        self.notice = Some(Notice {
            text: text.into(),
            error,
            shown: None,
        });
    }

    /// What a key does; returns the effects to carry out.
    pub fn key(&mut self, key: KeyEvent) -> Vec<Effect> {
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            return vec![Effect::Quit];
        }
        match self.mode.clone() {
            Mode::Normal => self.key_normal(key),
            Mode::Help => {
                self.mode = Mode::Normal;
                Vec::new()
            }
            Mode::Detail(id) => match key.code {
                KeyCode::Char('a') => {
                    self.mode = Mode::Normal;
                    self.acknowledge(&id)
                }
                _ => {
                    self.mode = Mode::Normal;
                    Vec::new()
                }
            },
            Mode::ConfirmAck(id) => {
                self.mode = Mode::Normal;
                match key.code {
                    KeyCode::Char('y' | 'Y') => ack_effect(&id),
                    _ => {
                        self.note(format!("{id} not acknowledged"), false);
                        Vec::new()
                    }
                }
            }
            Mode::Compose(c) => self.key_compose(c, key),
        }
    }

    fn key_normal(&mut self, key: KeyEvent) -> Vec<Effect> {
        match key.code {
            KeyCode::Char('q') => return vec![Effect::Quit],
            KeyCode::Char('?') => self.mode = Mode::Help,
            KeyCode::Up | KeyCode::Char('k') => self.step(-1),
            KeyCode::Down | KeyCode::Char('j') => self.step(1),
            KeyCode::Tab => {
                self.focus = match self.focus {
                    Focus::Inbox => Focus::Alarms,
                    Focus::Alarms => Focus::Inbox,
                }
            }
            KeyCode::Enter => {
                if let Some(id) = self.selected_message.clone() {
                    self.mode = Mode::Detail(id);
                }
            }
            KeyCode::Char('a') => {
                if let Some(id) = self.selected_message.clone() {
                    return self.acknowledge(&id);
                }
                self.note("no message selected", true);
            }
            KeyCode::Char('c') => {
                self.mode = Mode::Compose(Compose {
                    precedence: Precedence::Routine,
                    channel: "main".into(),
                    body: String::new(),
                    field: ComposeField::Body,
                    error: None,
                });
            }
            KeyCode::Char('x') => match self.selected_alarm {
                Some(id) => return vec![Effect::ClearAlarm(id)],
                None => self.note("no alarm selected", true),
            },
            _ => {}
        }
        Vec::new()
    }

    fn acknowledge(&mut self, id: &str) -> Vec<Effect> {
        let Some(m) = self.message(id) else {
            return Vec::new();
        };
        if m.acknowledged.is_some() {
            self.note(format!("{id} is already acknowledged"), false);
            return Vec::new();
        }
        if m.precedence == "flash" {
            self.mode = Mode::ConfirmAck(id.to_owned());
            return Vec::new();
        }
        ack_effect(id)
    }

    fn step(&mut self, by: isize) {
        match self.focus {
            Focus::Inbox => {
                self.operator_moved = true;
                let ids: Vec<String> = self.inbox_rows().iter().map(|m| m.id.clone()).collect();
                self.selected_message = stepped(&ids, self.selected_message.as_ref(), by);
            }
            Focus::Alarms => {
                self.operator_moved_alarm = true;
                let ids: Vec<u64> = self.alarms.iter().map(|a| a.id).collect();
                self.selected_alarm = stepped(&ids, self.selected_alarm.as_ref(), by);
            }
        }
    }

    fn key_compose(&mut self, mut c: Compose, key: KeyEvent) -> Vec<Effect> {
        match key.code {
            KeyCode::Esc => {
                self.mode = Mode::Normal;
                self.note("message discarded", false);
                return Vec::new();
            }
            KeyCode::Tab => {
                c.field = match c.field {
                    ComposeField::Body => ComposeField::Channel,
                    ComposeField::Channel => ComposeField::Body,
                }
            }
            KeyCode::Up => c.precedence = raise(c.precedence, 1),
            KeyCode::Down => c.precedence = raise(c.precedence, -1),
            KeyCode::Backspace => {
                match c.field {
                    ComposeField::Body => c.body.pop(),
                    ComposeField::Channel => c.channel.pop(),
                };
            }
            KeyCode::Enter => match compose_effect(&c) {
                Ok(effect) => {
                    self.mode = Mode::Normal;
                    return vec![effect];
                }
                Err(e) => c.error = Some(e),
            },
            KeyCode::Char(ch) => match c.field {
                ComposeField::Body if c.body.len() < hotline_proto::wire::MAX_BODY_LEN => {
                    c.body.push(ch)
                }
                ComposeField::Channel if c.channel.len() < 64 => c.channel.push(ch),
                _ => {}
            },
            _ => {}
        }
        self.mode = Mode::Compose(c);
        Vec::new()
    }
}

fn ack_effect(id: &str) -> Vec<Effect> {
    id.parse().map(Effect::Ack).into_iter().collect()
}

fn compose_effect(c: &Compose) -> Result<Effect, String> {
    if c.body.trim().is_empty() {
        return Err("the message is empty".into());
    }
    let channel: Channel = c
        .channel
        .parse()
        .map_err(|e| format!("channel {:?}: {e}", c.channel))?;
    Ok(Effect::Send {
        precedence: c.precedence,
        channel,
        body: c.body.clone(),
    })
}

/// `routine` 0 … `flash` 3; unknown names sort lowest.
pub fn precedence_rank(name: &str) -> usize {
    name.parse::<Precedence>().map_or(0, Precedence::index)
}

fn raise(p: Precedence, by: isize) -> Precedence {
    let i = p.index().saturating_add_signed(by).min(3);
    Precedence::ALL[i]
}

fn stepped<T: Clone + PartialEq>(items: &[T], current: Option<&T>, by: isize) -> Option<T> {
    if items.is_empty() {
        return None;
    }
    let at = current
        .and_then(|c| items.iter().position(|x| x == c))
        .map_or(0, |i| i.saturating_add_signed(by).min(items.len() - 1));
    Some(items[at].clone())
}
