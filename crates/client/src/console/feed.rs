//! The console's connection to the node: one control-socket connection, re-made whenever the
//! node goes away (a restart), turned into [`Update`]s.
//!
//! On each connection it asks for the inbox with `follow` (new messages arrive as they are
//! delivered, with no polling) and for alarms with `follow`; status and our messages awaiting
//! the partner are asked for every [`POLL`], which also moves the countdowns' inputs. Effects
//! (acknowledge, send, clear an alarm) go out as requests on the same connection and their
//! outcome comes back as [`Update::Finished`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use super::app::{Effect, Update};
use crate::control::{ControlClient, ControlError, ControlReader, Event, Request, SentView};

/// How often status and the sent list are refreshed; under what a person notices.
pub const POLL: Duration = Duration::from_millis(250);
/// How long to wait between attempts to reach a node that is not running.
const RETRY: Duration = Duration::from_millis(500);

/// What a request's answers mean to the console.
#[derive(Debug)]
enum Pending {
    Inbox,
    Alarms,
    Status,
    Sent(Vec<SentView>),
    Effect(String),
    /// An acknowledgement of this message id.
    Ack(String),
}

type PendingMap = Arc<Mutex<HashMap<u64, Pending>>>;

/// Runs until `effects` closes (the console quit) or the update receiver is gone.
pub async fn run(
    socket: PathBuf,
    updates: mpsc::UnboundedSender<Update>,
    mut effects: mpsc::UnboundedReceiver<Effect>,
) {
    loop {
        let client = match ControlClient::connect(&socket).await {
            Ok(c) => c,
            Err(e) => {
                if updates.send(Update::Disconnected(reason(&e))).is_err() {
                    return;
                }
                tokio::select! {
                    () = tokio::time::sleep(RETRY) => continue,
                    closed = wait_closed(&mut effects) => if closed { return } else { continue },
                }
            }
        };
        if updates.send(Update::Connected).is_err() {
            return;
        }
        let (mut writer, reader) = client.split();
        let pending: PendingMap = Arc::default();
        let mut read = tokio::spawn(read_loop(reader, pending.clone(), updates.clone()));
        let register = |w: &mut crate::control::ControlWriter, req: Request, p: Pending| {
            w.push(&req).map(|tag| {
                pending
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(tag, p);
            })
        };
        let mut tick = tokio::time::interval(POLL);
        let mut first = true;
        let ended: Result<(), ControlError> = loop {
            tokio::select! {
                _ = tick.tick() => {
                    let mut r = Ok(());
                    if first {
                        first = false;
                        r = r.and(register(&mut writer, inbox_request(), Pending::Inbox));
                        r = r.and(register(&mut writer, alarms_request(), Pending::Alarms));
                    }
                    // One poll at a time: a node that answers slowly is not sent more.
                    let polling = pending
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .values()
                        .any(|p| matches!(p, Pending::Status | Pending::Sent(_)));
                    if !polling {
                        r = r.and(register(&mut writer, Request::Status, Pending::Status));
                        r = r.and(register(&mut writer, Request::Sent, Pending::Sent(Vec::new())));
                    }
                    if let Err(e) = r.and(writer.flush().await) {
                        break Err(e);
                    }
                }
                effect = effects.recv() => {
                    let Some(effect) = effect else { read.abort(); return };
                    let Some((req, pending)) = effect_request(effect) else { continue };
                    let r = register(&mut writer, req, pending);
                    if let Err(e) = r.and(writer.flush().await) {
                        break Err(e);
                    }
                }
                done = &mut read => {
                    break match done {
                        Ok(r) => r,
                        Err(_) => Err(ControlError::Closed),
                    };
                }
            }
        };
        read.abort();
        let why = match ended {
            Ok(()) => "the node closed the connection".to_owned(),
            Err(e) => reason(&e),
        };
        if updates.send(Update::Disconnected(why)).is_err() {
            return;
        }
    }
}

/// Waits for the next effect while disconnected: `true` when the console quit. Effects other
/// than quitting cannot be carried out without the node and are dropped.
async fn wait_closed(effects: &mut mpsc::UnboundedReceiver<Effect>) -> bool {
    effects.recv().await.is_none_or(|e| e == Effect::Quit)
}

/// The whole inbox, then each new message and each changed line (an acknowledgement made
/// with `hotline ack`, a partner's re-alert).
fn inbox_request() -> Request {
    Request::Inbox {
        follow: true,
        unacked: false,
        channel: None,
        updates: true,
    }
}

/// The alarm book's uncleared entries, then every change (a clearing included).
fn alarms_request() -> Request {
    Request::Alarms {
        follow: true,
        all: false,
    }
}

/// The request that carries out an effect; quitting is the console's own business.
fn effect_request(effect: Effect) -> Option<(Request, Pending)> {
    Some(match effect {
        Effect::Ack(id) => (
            Request::Ack { id: id.clone() },
            Pending::Ack(id.to_string()),
        ),
        Effect::Send {
            precedence,
            channel,
            body,
        } => (
            Request::Send {
                to: None,
                channel: Some(channel),
                precedence: Some(precedence),
                body,
                wait: None,
                timeout_ms: None,
            },
            Pending::Effect(format!("{precedence} message queued")),
        ),
        Effect::ClearAlarm(id) => (
            Request::ClearAlarm {
                id: Some(id),
                all: false,
                by: crate::alarms::local_user(),
            },
            Pending::Effect(format!("cleared alarm #{id}")),
        ),
        Effect::Quit => return None,
    })
}

async fn read_loop(
    mut reader: ControlReader,
    pending: PendingMap,
    updates: mpsc::UnboundedSender<Update>,
) -> Result<(), ControlError> {
    while let Some(line) = reader.next().await? {
        let mut map = pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(p) = map.get_mut(&line.tag) else {
            continue;
        };
        let update = match (p, line.event) {
            (Pending::Inbox, Event::Message(m)) => Some(Update::Message(m)),
            (Pending::Status, Event::Status(s)) => Some(Update::Status(s)),
            (Pending::Alarms | Pending::Effect(_), Event::Alarm(a)) => Some(Update::Alarm(a)),
            (Pending::Sent(list), Event::Sent(s)) => {
                list.push(s);
                None
            }
            (Pending::Effect(_), Event::Stored { id, .. }) => Some(Update::Queued(id)),
            (_, Event::Done { ok, error }) => match map.remove(&line.tag) {
                Some(Pending::Sent(list)) => Some(Update::Sent(list)),
                Some(Pending::Effect(what)) => Some(Update::Finished {
                    what,
                    error: (!ok).then(|| error.unwrap_or_else(|| "request failed".into())),
                }),
                Some(Pending::Ack(id)) if ok => {
                    let at = crate::time::format_time(crate::time::wall_now());
                    let _ = updates.send(Update::Acknowledged { id: id.clone(), at });
                    Some(Update::Finished {
                        what: format!("acknowledged {id}"),
                        error: None,
                    })
                }
                Some(Pending::Ack(id)) => Some(Update::Finished {
                    what: format!("acknowledging {id}"),
                    error: Some(error.unwrap_or_else(|| "request failed".into())),
                }),
                _ => None,
            },
            _ => None,
        };
        drop(map);
        if let Some(u) = update {
            if updates.send(u).is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// A connection failure in a few words.
fn reason(e: &ControlError) -> String {
    match e {
        ControlError::NotRunning { .. } => "node not running".into(),
        e => e.to_string(),
    }
}
