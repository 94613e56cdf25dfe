//! The alarm desk: the engine loop's side of the operator's alarm book ([`crate::alarms`]).
//!
//! Every alarm the node raises passes through here: the engine's (already coalesced into
//! windows, see `hotline_proto::engine`) and the shell's own `identity conflict`. Each is
//! logged, counted into the [`AlarmBook`], and turned into one [`StoreMsg::Alarms`] carrying its
//! audit record and the book's change, so the store thread commits both in one transaction.
//! Clearing works the same way, with an `alarm_cleared` audit record and a handle that says
//! when it is durable.
//!
//! `alarms --follow` listeners get every new or changed entry as the book changes (before the
//! write is durable: an alarm is an observation, not a promise). A listener that went away is
//! dropped at the next change.
//!
//! The identity-conflict alarm is counted here too: at most one per [`IDENTITY_ALARM_EVERY`]
//! reaches the log and the audit log (with the count of closes since the last one), since a
//! refused node keeps retrying.

use std::time::Duration;

use hotline_proto::Time;
use hotline_proto::engine::{Alarm, AlarmKind};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, warn};

use super::store_thread::StoreMsg;
use crate::alarms::{AlarmBook, BookWrite, ClearError, ClearTarget, Raised, Severity};
use crate::audit::AuditEvent;
use crate::control::AlarmView;
use crate::time::format_time;
use crate::view;

/// At most one `identity_conflict` alarm per this long; closes in between are counted.
pub(super) const IDENTITY_ALARM_EVERY: Duration = Duration::from_secs(10 * 60);

/// The book's kind for the shell's identity-conflict alarm.
const IDENTITY_CONFLICT_KIND: &str = "identity conflict";

/// What a clearing answers: the entries cleared, and a handle that hears once the clearing is
/// durable.
pub(super) type Clearing = (Vec<AlarmView>, oneshot::Receiver<()>);

/// The book, its followers and the identity-conflict counter.
#[derive(Debug)]
pub(super) struct AlarmDesk {
    book: AlarmBook,
    followers: Vec<mpsc::UnboundedSender<AlarmView>>,
    /// When the last `identity_conflict` alarm was raised, and the closes since.
    identity_alarm: Option<(Time, u64)>,
}

impl AlarmDesk {
    /// A desk over the book as the store had it.
    pub(super) fn new(book: AlarmBook) -> Self {
        Self {
            book,
            followers: Vec::new(),
            identity_alarm: None,
        }
    }

    /// An alarm from the engine: logged, counted into the book; returns the write to make.
    pub(super) fn engine_alarm(&mut self, a: Alarm) -> StoreMsg {
        log_alarm(&a);
        let kind = view::alarm_kind(&a.kind);
        let count = u64::from(a.count);
        let writes = self.book.raise(Raised {
            severity: Severity::of(&a.kind),
            kind: kind.clone(),
            cause: a.detail.clone(),
            message: a.message.as_ref().map(ToString::to_string),
            count,
            at: a.at,
        });
        self.record(kind, &a.detail, count, writes)
    }

    /// The relay closed us because another connection uses our identity: counted, and raised
    /// unless one was raised within [`IDENTITY_ALARM_EVERY`].
    pub(super) fn identity_conflict(&mut self, line: &str, now: Time) -> Option<StoreMsg> {
        let count = match self.identity_alarm {
            Some((at, n)) if now.since(at) < IDENTITY_ALARM_EVERY => {
                self.identity_alarm = Some((at, n + 1));
                return None;
            }
            Some((_, n)) => n + 1,
            None => 1,
        };
        self.identity_alarm = Some((now, 0));
        error!(
            kind = "identity_conflict",
            count,
            detail = line,
            "SECURITY ALARM"
        );
        let writes = self.book.raise(Raised {
            severity: Severity::Critical,
            kind: IDENTITY_CONFLICT_KIND.into(),
            cause: line.to_owned(),
            message: None,
            count,
            at: now,
        });
        // The audit log keeps the kind it always had.
        Some(self.record("identity_conflict".into(), line, count, writes))
    }

    /// Sends the book's entries (uncleared only unless `all`) to `entries`; with `follow`,
    /// keeps sending every change.
    pub(super) fn list(
        &mut self,
        follow: bool,
        all: bool,
        entries: mpsc::UnboundedSender<AlarmView>,
    ) {
        let shown = if all {
            self.book.all_entries()
        } else {
            self.book.open_entries()
        };
        for e in shown {
            if entries.send(e.view()).is_err() {
                return;
            }
        }
        if follow {
            self.followers.push(entries);
        }
    }

    /// Clears one entry or all uncleared ones; returns what was cleared (with a durability
    /// handle) and the write to make.
    pub(super) fn clear(
        &mut self,
        target: ClearTarget,
        by: &str,
        now: Time,
    ) -> Result<(Clearing, StoreMsg), ClearError> {
        let (cleared, writes) = self.book.clear(target, by, now)?;
        for e in &cleared {
            warn!(id = e.id, kind = %view::escape_control(&e.kind), by = %view::escape_control(by), "alarm cleared");
        }
        self.notify(&writes);
        let (durable_tx, durable_rx) = oneshot::channel();
        let events = cleared
            .iter()
            .map(|e| AuditEvent::AlarmCleared {
                id: e.id,
                kind: e.kind.clone(),
                by: by.to_owned(),
                at: format_time(now),
            })
            .collect();
        let views = cleared.iter().map(|e| e.view()).collect();
        let msg = StoreMsg::Alarms {
            events,
            book: writes,
            durable: Some(durable_tx),
        };
        Ok(((views, durable_rx), msg))
    }

    /// Uncleared entries as `status` shows them.
    pub(super) fn open_views(&self) -> Vec<AlarmView> {
        self.book
            .open_entries()
            .into_iter()
            .map(|e| e.view())
            .collect()
    }

    /// The audit record of a raised alarm and the book's change, as one write; followers hear.
    fn record(
        &mut self,
        kind: String,
        cause: &str,
        count: u64,
        writes: Vec<BookWrite>,
    ) -> StoreMsg {
        self.notify(&writes);
        let id = writes.iter().find_map(|w| match w {
            BookWrite::Put { entry, .. } => Some(entry.id),
            BookWrite::Remove(_) => None,
        });
        let mut detail = match count {
            1 => cause.to_owned(),
            n => format!("{cause} ({n} occurrences)"),
        };
        if let Some(id) = id {
            detail.push_str(&format!(" [alarm #{id}]"));
        }
        StoreMsg::Alarms {
            events: vec![AuditEvent::Alarm { kind, detail }],
            book: writes,
            durable: None,
        }
    }

    fn notify(&mut self, writes: &[BookWrite]) {
        if self.followers.is_empty() {
            return;
        }
        for w in writes {
            if let BookWrite::Put { entry, .. } = w {
                let v = entry.view();
                self.followers.retain(|f| f.send(v.clone()).is_ok());
            }
        }
    }
}

/// Alarm details come from the relay or the partner: escaped, so a log on a terminal shows
/// them without running their control characters.
fn log_alarm(a: &Alarm) {
    let kind = view::alarm_kind(&a.kind);
    match &a.kind {
        AlarmKind::Refused(_)
        | AlarmKind::ClockSkew
        | AlarmKind::PartnerKeyExpired
        | AlarmKind::PartnerLostStore
        | AlarmKind::StoreLossRepaired => {
            warn!(kind = %view::escape_control(&kind), count = a.count, detail = %view::escape_control(&a.detail), "ALARM");
        }
        AlarmKind::Security(_)
        | AlarmKind::PartnerKeyChanged
        | AlarmKind::StoreFailed
        | AlarmKind::LaneLimit => {
            error!(kind = %view::escape_control(&kind), count = a.count, detail = %view::escape_control(&a.detail), "SECURITY ALARM");
        }
    }
}
