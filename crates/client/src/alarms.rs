//! The operator's alarm book: alarms deduplicated by kind and cause, with a count, first and
//! last time, a severity, and a clearing (who, when).
//!
//! Why it exists: the engine coalesces alarms into windows and keeps only its most recent ones,
//! which bounds its work under a flood but lets a flood of repeats push the one alarm that said
//! *why* out of view. The book keeps one entry per (kind, cause) instead, so a thousand
//! `security: bad signature` are one line with a count, and the cause of a security alarm stays
//! until an operator clears it.
//!
//! Rules:
//! - an alarm whose kind and cause match an entry adds its count to that entry and moves its
//!   `last`; the entry keeps its first cause and message (they are the key, or came with it);
//! - a repeat of a *cleared* entry re-opens it under the same id, with the repeat's count and
//!   time as its new `first` (the earlier episode and its clearing are in the audit log);
//! - severity ([`Severity::of`]): critical for what may mean an attack or lost durability
//!   (security, partner key changed, identity conflict, store failed); warning for what needs
//!   the operator but is not hostile by itself (refusals, clock skew, an expired partner key,
//!   the partner losing its store, the lane limit); notice for what repaired itself (this
//!   node's store was lost and the partner re-paired);
//! - at most [`MAX_ENTRIES`] entries. A new entry in a full book replaces a cleared entry
//!   first (oldest `last`), else an uncleared one of *strictly lower* severity (lowest, then
//!   oldest `last`). If there is none, nothing is replaced: the alarm is counted in one
//!   overflow entry ([`OVERFLOW_KIND`], with the highest severity it absorbed), so a flood of
//!   lesser alarms never pushes out a security alarm and what could not be kept is still said;
//! - ids are increasing and never reused, across restarts too (the next id is stored).
//!
//! Every change is returned as [`BookWrite`]s, which the node writes in the same transaction as
//! the alarm's audit record ([`crate::store::Batch::alarm_book`]); [`AlarmBook::restore`]
//! rebuilds the book when the node starts.

use std::collections::BTreeMap;

use hotline_proto::Time;
use hotline_proto::engine::AlarmKind;
use serde::{Deserialize, Serialize};

use crate::control::{AlarmView, ClearedView};
use crate::time::format_time;

/// Entries kept, besides the overflow entry.
pub const MAX_ENTRIES: usize = 256;

/// Kind of the entry that counts alarms the full book could not keep.
pub const OVERFLOW_KIND: &str = "alarm book full";

/// Cause of the overflow entry.
const OVERFLOW_CAUSE: &str = "alarms not kept: every entry is uncleared and at least as severe; \
                              clear alarms to make room";

/// How urgently an operator should look. Ordered: `Critical` is greatest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Severity {
    /// Repaired by itself; worth knowing.
    Notice,
    /// Needs the operator, not hostile by itself.
    Warning,
    /// May mean an attack, a wrong key or lost durability.
    Critical,
}

impl Severity {
    /// The severity of an engine alarm kind (see the module header for why).
    pub fn of(kind: &AlarmKind) -> Self {
        match kind {
            AlarmKind::Security(_) | AlarmKind::PartnerKeyChanged | AlarmKind::StoreFailed => {
                Self::Critical
            }
            AlarmKind::Refused(_)
            | AlarmKind::ClockSkew
            | AlarmKind::PartnerKeyExpired
            | AlarmKind::PartnerLostStore
            | AlarmKind::LaneLimit => Self::Warning,
            AlarmKind::StoreLossRepaired => Self::Notice,
        }
    }

    /// `critical`, `warning` or `notice`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Critical => "critical",
            Self::Warning => "warning",
            Self::Notice => "notice",
        }
    }
}

/// Who cleared an entry, and when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cleared {
    /// The local user who cleared it.
    pub by: String,
    /// When.
    pub at: Time,
}

/// One entry of the book (also its stored form).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlarmEntry {
    /// Stable id, increasing, never reused.
    pub id: u64,
    /// How urgent.
    pub severity: Severity,
    /// The kind, in words (`security: bad signature`).
    pub kind: String,
    /// The detail of the first occurrence.
    pub cause: String,
    /// The message the first occurrence was about, if any.
    pub message: Option<String>,
    /// Occurrences since it was opened (the engine's counts, summed).
    pub count: u64,
    /// When it was opened.
    pub first: Time,
    /// The latest occurrence.
    pub last: Time,
    /// Set while it is cleared.
    pub cleared: Option<Cleared>,
}

impl AlarmEntry {
    /// As the control protocol shows it.
    pub fn view(&self) -> AlarmView {
        AlarmView {
            id: self.id,
            severity: self.severity.name().into(),
            kind: self.kind.clone(),
            cause: self.cause.clone(),
            message: self.message.clone(),
            count: self.count,
            first: format_time(self.first),
            last: format_time(self.last),
            cleared: self.cleared.as_ref().map(|c| ClearedView {
                by: c.by.clone(),
                at: format_time(c.at),
            }),
        }
    }

    fn is_overflow(&self) -> bool {
        self.kind == OVERFLOW_KIND
    }
}

/// An alarm as the node raises it into the book.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Raised {
    /// How urgent.
    pub severity: Severity,
    /// The kind, in words.
    pub kind: String,
    /// The detail.
    pub cause: String,
    /// The message it is about, if any.
    pub message: Option<String>,
    /// Occurrences it stands for (at least 1).
    pub count: u64,
    /// When (the latest occurrence).
    pub at: Time,
}

/// One change to the stored book.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BookWrite {
    /// Store (insert or replace) this entry, and the next id to hand out.
    Put {
        /// The entry.
        entry: AlarmEntry,
        /// The book's next id after this change.
        next_id: u64,
    },
    /// The entry with this id was evicted.
    Remove(u64),
}

/// What to clear.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClearTarget {
    /// One entry, by id.
    One(u64),
    /// Every uncleared entry.
    All,
}

/// Why a clear was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClearError {
    /// No entry has this id (never raised, or evicted).
    #[error("no alarm {0}")]
    NoSuchAlarm(u64),
    /// The entry is cleared already.
    #[error("alarm {id} is already cleared (by {by} at {at})")]
    AlreadyCleared {
        /// The entry.
        id: u64,
        /// Who cleared it.
        by: String,
        /// When (RFC 3339).
        at: String,
    },
}

/// The book. See the module header.
#[derive(Debug)]
pub struct AlarmBook {
    entries: BTreeMap<u64, AlarmEntry>,
    next_id: u64,
    capacity: usize,
}

impl Default for AlarmBook {
    fn default() -> Self {
        Self::with_capacity(MAX_ENTRIES)
    }
}

impl AlarmBook {
    /// An empty book holding at most `capacity` entries besides the overflow entry.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            entries: BTreeMap::new(),
            next_id: 1,
            capacity: capacity.max(1),
        }
    }

    /// The book as stored: its entries and the next id (ids below it are never handed out
    /// again, even if entries were evicted).
    pub fn restore(entries: Vec<AlarmEntry>, next_id: u64) -> Self {
        let mut book = Self::default();
        let highest = entries.iter().map(|e| e.id).max().unwrap_or(0);
        book.next_id = next_id.max(highest.saturating_add(1)).max(1);
        book.entries = entries.into_iter().map(|e| (e.id, e)).collect();
        book
    }

    /// Counts an alarm into its entry, opening (and perhaps evicting for) a new one.
    pub fn raise(&mut self, r: Raised) -> Vec<BookWrite> {
        let count = r.count.max(1);
        let existing = self
            .entries
            .values_mut()
            .find(|e| e.kind == r.kind && e.cause == r.cause);
        if let Some(e) = existing {
            if e.cleared.take().is_some() {
                e.count = count;
                e.first = r.at;
                e.last = r.at;
                e.message = r.message;
            } else {
                e.count = e.count.saturating_add(count);
                e.last = e.last.max(r.at);
            }
            e.severity = e.severity.max(r.severity);
            let entry = e.clone();
            return vec![self.put(entry)];
        }
        let mut writes = Vec::new();
        let kept = self.entries.values().filter(|e| !e.is_overflow()).count();
        if kept >= self.capacity {
            match self.victim(r.severity) {
                Some(id) => {
                    self.entries.remove(&id);
                    writes.push(BookWrite::Remove(id));
                }
                None => return vec![self.overflow(&r, count)],
            }
        }
        let entry = self.open(r.severity, r.kind, r.cause, r.message, count, r.at);
        writes.push(self.put(entry));
        writes
    }

    /// Clears one entry or every uncleared one; returns the entries it cleared and the
    /// writes that store it.
    pub fn clear(
        &mut self,
        target: ClearTarget,
        by: &str,
        at: Time,
    ) -> Result<(Vec<AlarmEntry>, Vec<BookWrite>), ClearError> {
        let ids: Vec<u64> = match target {
            ClearTarget::One(id) => match self.entries.get(&id) {
                None => return Err(ClearError::NoSuchAlarm(id)),
                Some(AlarmEntry {
                    cleared: Some(c), ..
                }) => {
                    return Err(ClearError::AlreadyCleared {
                        id,
                        by: c.by.clone(),
                        at: format_time(c.at),
                    });
                }
                Some(_) => vec![id],
            },
            ClearTarget::All => self
                .entries
                .values()
                .filter(|e| e.cleared.is_none())
                .map(|e| e.id)
                .collect(),
        };
        let mut cleared = Vec::new();
        let mut writes = Vec::new();
        for id in ids {
            if let Some(e) = self.entries.get_mut(&id) {
                e.cleared = Some(Cleared {
                    by: by.to_owned(),
                    at,
                });
                let entry = e.clone();
                cleared.push(entry.clone());
                writes.push(self.put(entry));
            }
        }
        Ok((cleared, writes))
    }

    /// Uncleared entries, highest severity first, then most recent `last` first.
    pub fn open_entries(&self) -> Vec<&AlarmEntry> {
        let mut open: Vec<&AlarmEntry> = self
            .entries
            .values()
            .filter(|e| e.cleared.is_none())
            .collect();
        sort_for_operator(&mut open);
        open
    }

    /// Every entry, cleared ones included, in the same order (uncleared first).
    pub fn all_entries(&self) -> Vec<&AlarmEntry> {
        let mut all: Vec<&AlarmEntry> = self.entries.values().collect();
        sort_for_operator(&mut all);
        all.sort_by_key(|e| e.cleared.is_some());
        all
    }

    /// Number of entries, the overflow entry included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// What a new entry of `severity` may replace in a full book: a cleared entry (oldest
    /// `last`), else an uncleared one of strictly lower severity (lowest, then oldest).
    fn victim(&self, severity: Severity) -> Option<u64> {
        let candidates = self.entries.values().filter(|e| !e.is_overflow());
        let cleared = candidates
            .clone()
            .filter(|e| e.cleared.is_some())
            .min_by_key(|e| (e.last, e.id));
        let lesser = || {
            candidates
                .clone()
                .filter(|e| e.severity < severity)
                .min_by_key(|e| (e.severity, e.last, e.id))
        };
        cleared.or_else(lesser).map(|e| e.id)
    }

    /// Counts an alarm the full book could not keep in the overflow entry.
    fn overflow(&mut self, r: &Raised, count: u64) -> BookWrite {
        let existing = self.entries.values_mut().find(|e| e.is_overflow());
        let entry = match existing {
            Some(e) => {
                if e.cleared.take().is_some() {
                    e.count = count;
                    e.first = r.at;
                } else {
                    e.count = e.count.saturating_add(count);
                }
                e.last = e.last.max(r.at);
                e.severity = e.severity.max(r.severity);
                e.clone()
            }
            None => self.open(
                r.severity,
                OVERFLOW_KIND.into(),
                OVERFLOW_CAUSE.into(),
                None,
                count,
                r.at,
            ),
        };
        self.put(entry)
    }

    fn open(
        &mut self,
        severity: Severity,
        kind: String,
        cause: String,
        message: Option<String>,
        count: u64,
        at: Time,
    ) -> AlarmEntry {
        let entry = AlarmEntry {
            id: self.next_id,
            severity,
            kind,
            cause,
            message,
            count,
            first: at,
            last: at,
            cleared: None,
        };
        self.next_id = self.next_id.saturating_add(1);
        entry
    }

    /// Keeps `entry` and says so as a write.
    fn put(&mut self, entry: AlarmEntry) -> BookWrite {
        self.entries.insert(entry.id, entry.clone());
        BookWrite::Put {
            entry,
            next_id: self.next_id,
        }
    }
}

/// Highest severity first, then most recent `last` first, then newest id first.
fn sort_for_operator(entries: &mut [&AlarmEntry]) {
    entries.sort_by_key(|e| std::cmp::Reverse((e.severity, e.last, e.id)));
}

/// Who clears an alarm, for the audit log: `$USER`, else the numeric uid (from `/proc/self`),
/// else `unknown`. The CLI and the console both ask this.
pub fn local_user() -> String {
    if let Some(user) = std::env::var("USER").ok().filter(|u| !u.is_empty()) {
        return user;
    }
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map_or_else(|_| "unknown".into(), |m| format!("uid {}", m.uid()))
}

#[cfg(test)]
mod tests;
