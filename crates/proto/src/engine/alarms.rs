//! Alarms for the operator, coalesced so that a hostile peer cannot flood them.
//!
//! A relay or partner that sends a thousand bad frames should cost the operator one line that
//! says "a thousand", not a thousand lines, and should not grow memory with each. So alarms are
//! grouped into *classes* (the [`AlarmKind`] variant, and for security and refusal alarms the
//! error or refusal code, never the data inside it):
//!
//! - the first alarm of a class is emitted at once (count 1) and opens a window of
//!   [`ALARM_WINDOW`];
//! - further alarms of the class inside the window are only counted: one held alarm per class
//!   carries the count and the latest occurrence's time, message and detail;
//! - when the window ends the held alarm is emitted with its count and a new window opens, so a
//!   steady flood yields one alarm per window; a class that stayed quiet for a window emits its
//!   next alarm at once again.
//!
//! Details are cut to [`MAX_ALARM_DETAIL`] bytes here, at the engine boundary, since some come
//! from the relay unsigned (a refusal's detail may be as long as a frame).
//!
//! Main type: [`Alarms`]. It also holds the clock-skew episode flag (see `clock`), since that
//! flag only decides whether a skew alarm is raised.
//!
//! Held alarms live in memory only: a crash loses their count (the first of their kind was
//! emitted, and the caller logs emitted alarms durably).
//!
//! Invariant: every occurrence is counted exactly once, either in an emitted alarm's `count` or
//! in a held one; memory is one entry per class plus [`MAX_RECENT_ALARMS`] recent alarms.

use std::collections::VecDeque;
use std::mem::{Discriminant, discriminant};
use std::time::Duration;

use super::{Action, Alarm, AlarmKind, DurabilityGate, MAX_ALARM_DETAIL};
use crate::envelope::VerifyError;
use crate::types::{MessageId, Time};
use crate::wire::RefusalCode;

/// How long after an emitted alarm further alarms of its class are only counted.
pub(super) const ALARM_WINDOW: Duration = Duration::from_secs(60);
/// Emitted alarms kept for [`super::Status::alarms`].
const MAX_RECENT_ALARMS: usize = 64;
/// Bytes kept back for the "cut" marker when a detail is shortened.
const CUT_MARKER_RESERVE: usize = 40;

/// What alarms coalesce by: the kind, and the error or refusal code inside it.
pub(super) type Class = (
    Discriminant<AlarmKind>,
    Option<Discriminant<VerifyError>>,
    Option<Discriminant<RefusalCode>>,
);

pub(super) fn class_of(kind: &AlarmKind) -> Class {
    (
        discriminant(kind),
        match kind {
            AlarmKind::Security(e) => Some(discriminant(e)),
            _ => None,
        },
        match kind {
            AlarmKind::Refused(c) => Some(discriminant(c)),
            _ => None,
        },
    )
}

#[derive(Debug)]
struct ClassState {
    class: Class,
    /// Until when further alarms of the class are held.
    window_end: Time,
    /// Occurrences counted since the last emitted alarm of the class.
    held: Option<Alarm>,
}

#[derive(Debug, Default)]
pub(super) struct Alarms {
    recent: VecDeque<Alarm>,
    /// One entry per class seen, in first-seen order (so flushing is deterministic); there are
    /// a few dozen classes at most.
    classes: Vec<ClassState>,
    /// A partner clock outside the tolerance was reported and no plausible link test came
    /// since.
    pub(super) skew_episode: bool,
}

impl Alarms {
    /// Counts one alarm; emits it unless one of its class was emitted within the window.
    pub(super) fn raise(
        &mut self,
        now: Time,
        kind: AlarmKind,
        message: Option<MessageId>,
        detail: String,
        gate: &mut DurabilityGate,
    ) {
        let class = class_of(&kind);
        let alarm = Alarm {
            at: now,
            kind,
            message,
            detail: cap_detail(detail),
            count: 1,
        };
        let i = match self.classes.iter().position(|c| c.class == class) {
            Some(i) => i,
            None => {
                self.classes.push(ClassState {
                    class,
                    window_end: now,
                    held: None,
                });
                self.classes.len() - 1
            }
        };
        let Some(state) = self.classes.get_mut(i) else {
            return;
        };
        if now < state.window_end {
            let count = state.held.as_ref().map_or(0, |h| h.count).saturating_add(1);
            state.held = Some(Alarm { count, ..alarm });
            return;
        }
        // The window is over (and no timeout flushed it yet): emit, with whatever was held.
        let count = state.held.take().map_or(0, |h| h.count).saturating_add(1);
        state.window_end = now.plus(ALARM_WINDOW);
        self.emit(Alarm { count, ..alarm }, gate);
    }

    /// Emits every held alarm whose window has ended.
    pub(super) fn flush(&mut self, now: Time, gate: &mut DurabilityGate) {
        let mut due = Vec::new();
        for state in &mut self.classes {
            if state.window_end <= now {
                if let Some(held) = state.held.take() {
                    state.window_end = now.plus(ALARM_WINDOW);
                    due.push(held);
                }
            }
        }
        for alarm in due {
            self.emit(alarm, gate);
        }
    }

    /// When the earliest held alarm is due.
    pub(super) fn poll_timeout(&self) -> Option<Time> {
        self.classes
            .iter()
            .filter(|c| c.held.is_some())
            .map(|c| c.window_end)
            .min()
    }

    pub(super) fn recent(&self) -> Vec<Alarm> {
        self.recent.iter().cloned().collect()
    }

    pub(super) fn held(&self) -> Vec<Alarm> {
        self.classes.iter().filter_map(|c| c.held.clone()).collect()
    }

    fn emit(&mut self, alarm: Alarm, gate: &mut DurabilityGate) {
        if self.recent.len() == MAX_RECENT_ALARMS {
            self.recent.pop_front();
        }
        self.recent.push_back(alarm.clone());
        gate.push(Action::Alarm(alarm));
    }
}

/// `detail` cut to at most [`MAX_ALARM_DETAIL`] bytes, on a character boundary, with a marker
/// saying how much was cut.
pub(super) fn cap_detail(mut detail: String) -> String {
    if detail.len() <= MAX_ALARM_DETAIL {
        return detail;
    }
    let mut keep = MAX_ALARM_DETAIL - CUT_MARKER_RESERVE;
    while !detail.is_char_boundary(keep) {
        keep -= 1;
    }
    let cut = detail.len() - keep;
    detail.truncate(keep);
    detail.push_str(&format!("… [{cut} bytes cut]"));
    detail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_details_are_cut_on_a_char_boundary_with_a_marker() {
        let long = "é".repeat(300 * 1024);
        let cut = cap_detail(long.clone());
        assert!(cut.len() <= MAX_ALARM_DETAIL, "{}", cut.len());
        assert!(cut.ends_with(" bytes cut]"), "{cut}");
        assert!(long.starts_with(cut.split('…').next().unwrap()));
        let short = "short detail".to_string();
        assert_eq!(cap_detail(short.clone()), short);
    }

    #[test]
    fn a_flood_of_one_class_emits_the_first_and_then_one_count_per_window() {
        let mut alarms = Alarms::default();
        let mut gate = DurabilityGate::default();
        let t0 = Time(1_000_000);
        let bad = || AlarmKind::Security(VerifyError::BadSignature);
        for i in 0..1000 {
            alarms.raise(t0, bad(), None, format!("frame {i}"), &mut gate);
        }
        // Another class is not held back by the flood.
        alarms.raise(t0, AlarmKind::ClockSkew, None, "skew".into(), &mut gate);
        let emitted = |gate: &mut DurabilityGate| {
            std::iter::from_fn(|| gate.pop())
                .filter_map(|a| match a {
                    Action::Alarm(a) => Some((a.kind, a.count, a.detail)),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            emitted(&mut gate),
            [
                (bad(), 1, "frame 0".to_string()),
                (AlarmKind::ClockSkew, 1, "skew".to_string())
            ]
        );
        assert_eq!(alarms.held().len(), 1);
        assert_eq!(alarms.held()[0].count, 999);
        assert_eq!(alarms.poll_timeout(), Some(t0.plus(ALARM_WINDOW)));
        alarms.flush(t0.plus(ALARM_WINDOW - Duration::from_micros(1)), &mut gate);
        assert!(emitted(&mut gate).is_empty(), "not before the window ends");
        alarms.flush(t0.plus(ALARM_WINDOW), &mut gate);
        assert_eq!(emitted(&mut gate), [(bad(), 999, "frame 999".to_string())]);
        assert_eq!(alarms.poll_timeout(), None);
        // Within the new window: held again.
        let t1 = t0.plus(ALARM_WINDOW + Duration::from_secs(1));
        alarms.raise(t1, bad(), None, "later".into(), &mut gate);
        assert!(emitted(&mut gate).is_empty());
        // A quiet window later, the next one is emitted at once, with the held one merged.
        let t2 = t1.plus(ALARM_WINDOW * 2);
        alarms.raise(t2, bad(), None, "much later".into(), &mut gate);
        assert_eq!(emitted(&mut gate), [(bad(), 2, "much later".to_string())]);
    }
}
