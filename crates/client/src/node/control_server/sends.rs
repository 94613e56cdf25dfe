//! A submitted send's answers: its id once stored, then each ack level as the engine reports
//! it, until the level it waits for (and `accepted`) or its timeout. One task per control
//! connection runs them all ([`drive_sends`]).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use hotline_proto::MessageId;
use hotline_proto::engine::{AckLevel, Outgoing, Report};
use tokio::sync::{mpsc, oneshot};

use super::Replies;
use crate::control::{Event, WaitLevel};
use crate::node::RequestError;
use crate::node::commands::Command;
use crate::time::{format_time, wall_now};

/// How long a `send --wait` that reached its level keeps listening for a late `accepted`. The
/// relay answers `accepted` once its store commit is done, normally milliseconds after it
/// forwarded the envelope; a relay that crashed before committing never answers.
const LATE_ACCEPTED_GRACE: Duration = Duration::from_secs(5);

/// A submitted send's answers, from `stored` to its `done` line.
pub(super) type SendAnswers = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Runs a connection's sends until each has answered and the connection takes no more. One
/// task per connection, not per send: under a flood a task per send was ~15,000 spawns a
/// second, each woken for every level, queued on the node's one thread ahead of the engine
/// loop and the relay link.
pub(super) async fn drive_sends(mut new: mpsc::UnboundedReceiver<SendAnswers>) {
    let mut running = FuturesUnordered::new();
    loop {
        tokio::select! {
            Some(()) = running.next(), if !running.is_empty() => {}
            send = new.recv() => match send {
                Some(send) => running.push(send),
                None => break,
            },
        }
    }
    while running.next().await.is_some() {}
}

/// A submitted send whose id and ack levels are still to come.
#[derive(Debug)]
pub(super) struct PendingSend {
    events: mpsc::UnboundedReceiver<Report>,
    submitted: oneshot::Receiver<Result<MessageId, RequestError>>,
}

/// A send command, and the ends on which its id and ack levels come back.
pub(super) fn send_command(
    out: Outgoing,
    to: Option<hotline_proto::EndpointId>,
) -> (Command, PendingSend) {
    let (events_tx, events) = mpsc::unbounded_channel();
    let (sub_tx, submitted) = oneshot::channel();
    let command = Command::Send {
        out,
        to,
        events: events_tx,
        submitted: sub_tx,
    };
    (command, PendingSend { events, submitted })
}

/// Emits `stored` and every ack level as it is reached; returns once `wait` is reached (or,
/// without `wait`, once stored) and `accepted` has been reported, or
/// [`LATE_ACCEPTED_GRACE`] after `wait` was reached without it.
pub(super) async fn await_levels(
    pending: PendingSend,
    wait: Option<WaitLevel>,
    timeout_ms: Option<u64>,
    replies: &Replies,
) -> Result<(), RequestError> {
    let PendingSend {
        mut events,
        submitted,
    } = pending;
    let id = submitted.await.map_err(|_| RequestError::Stopping)??;
    let mut deadline =
        tokio::time::Instant::now() + Duration::from_millis(timeout_ms.unwrap_or(u64::MAX / 4));
    let mut stored = false;
    let mut accepted = false;
    // Set once `wait` is reached while `accepted` is still to come (see LATE_ACCEPTED_GRACE).
    let mut reached_wait = false;
    loop {
        let report = match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(r)) => r,
            Ok(None) | Err(_) if reached_wait => return Ok(()),
            Ok(None) => return Err(RequestError::Stopping),
            Err(_) => {
                return Err(RequestError::Timeout {
                    level: wait.map_or("stored", wait_name),
                    id,
                });
            }
        };
        let seen_us = Some(wall_now().0);
        let at = format_time(report.at);
        let level = |text: String| Event::Level {
            id: id.to_string(),
            level: text,
            at: at.clone(),
            at_us: report.at.0,
            seen_us,
        };
        let reached = match report.level {
            AckLevel::Stored => {
                stored = true;
                replies.emit(Event::Stored {
                    id: id.to_string(),
                    at: at.clone(),
                    at_us: report.at.0,
                    seen_us,
                });
                None
            }
            AckLevel::Accepted { durable } => Some((
                WaitLevel::Accepted,
                if durable {
                    "accepted"
                } else {
                    "accepted (relay memory)"
                },
            )),
            AckLevel::Delivered => Some((WaitLevel::Delivered, "delivered")),
            AckLevel::Acknowledged => Some((WaitLevel::Acknowledged, "acknowledged")),
            AckLevel::Refused(code) => {
                replies.emit(level(format!(
                    "refused: {code:?} (kept in outbox, will retry)"
                )));
                None
            }
            AckLevel::Lost => {
                replies.emit(level(
                    "lost with the partner's store (not delivered)".into(),
                ));
                return Err(RequestError::Lost { id });
            }
        };
        if let Some((reached, text)) = reached {
            replies.emit(level(text.into()));
            accepted |= reached == WaitLevel::Accepted;
            if accepted && reached_wait {
                return Ok(());
            }
            if !reached_wait && wait.is_some_and(|w| reached >= w) {
                if accepted {
                    return Ok(());
                }
                // The partner's receipt overtook the relay's `accepted` (the relay forwards
                // before its fsync completes); wait briefly so that level is reported too.
                reached_wait = true;
                deadline = deadline.min(tokio::time::Instant::now() + LATE_ACCEPTED_GRACE);
            }
        }
        if stored && wait.is_none() {
            return Ok(());
        }
    }
}

fn wait_name(w: WaitLevel) -> &'static str {
    match w {
        WaitLevel::Accepted => "accepted",
        WaitLevel::Delivered => "delivered",
        WaitLevel::Acknowledged => "acknowledged",
    }
}
