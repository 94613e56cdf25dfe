//! What the engine loop takes in: the operator's commands from the control server and the
//! channels it listens to, kept apart from the loop itself so the loop's file holds only its
//! logic.

use std::sync::Arc;

use hotline_proto::EndpointId;
use hotline_proto::MessageId;
use hotline_proto::engine::{Outgoing, Report};
use tokio::sync::{Notify, mpsc, oneshot};

use super::RequestError;
use super::alarm_desk::Clearing;
use super::relay_link::{LaneReceivers, LinkEvent};
use super::relays::Reconfigure;
use super::store_thread::Persisted;
use crate::alarms::ClearTarget;
use crate::control::{AlarmView, InboxEntry, SentView, StatusView};

/// Non-flash sends the control server may queue for the engine loop. When it is full, a
/// connection's reader waits (and stops reading its socket): that is the back-pressure a flood
/// of routine sends meets while the engine loop holds back intake (see [`Inputs::drained`]).
pub(super) const NORMAL_QUEUE: usize = 1024;

/// An operator command from the control server.
#[derive(Debug)]
pub(super) enum Command {
    /// Queue a message; progress goes to `events`.
    Send {
        out: Outgoing,
        to: Option<EndpointId>,
        events: mpsc::UnboundedSender<Report>,
        submitted: oneshot::Sender<Result<MessageId, RequestError>>,
    },
    /// Stream the inbox (and, with `follow`, new deliveries).
    Inbox {
        follow: bool,
        updates: bool,
        entries: mpsc::UnboundedSender<InboxEntry>,
        /// Why the listing stopped part-way, if it did.
        failed: oneshot::Sender<String>,
    },
    /// Acknowledge; answered once the acknowledgement is durable.
    Ack {
        id: MessageId,
        reply: oneshot::Sender<Result<(), RequestError>>,
    },
    /// A status snapshot.
    Status { reply: oneshot::Sender<StatusView> },
    /// Our messages that await the partner (delivery or acknowledgement).
    Sent {
        reply: oneshot::Sender<Vec<SentView>>,
    },
    /// Replace the sealing key now; answered with the new epoch.
    Rekey { reply: oneshot::Sender<u32> },
    /// Verify or export the audit log.
    Audit {
        export: bool,
        reply: oneshot::Sender<Result<Vec<serde_json::Value>, RequestError>>,
    },
    /// Stream the alarm book (uncleared only unless `all`; with `follow`, every change too).
    Alarms {
        follow: bool,
        all: bool,
        entries: mpsc::UnboundedSender<AlarmView>,
    },
    /// Clear alarms; answered with what was cleared and a handle that hears once it is
    /// durable.
    ClearAlarm {
        target: ClearTarget,
        by: String,
        reply: oneshot::Sender<Result<Clearing, RequestError>>,
    },
}

/// Everything the loop listens to.
#[derive(Debug)]
pub(super) struct Inputs {
    pub(super) persisted: mpsc::UnboundedReceiver<Persisted>,
    pub(super) net: LaneReceivers,
    /// Flash sends and queries, served before other sends.
    pub(super) urgent: mpsc::UnboundedReceiver<Command>,
    /// Routine, priority and immediate sends: taken only while the relay links keep up (a
    /// live link's writers hold fewer than `EGRESS_PAUSE_FRAMES`).
    pub(super) normal: mpsc::Receiver<Command>,
    /// Hears when a link's writers drain, to take `normal` again.
    pub(super) drained: Arc<Notify>,
    pub(super) link: mpsc::UnboundedReceiver<LinkEvent>,
    /// A reloaded configuration's engine settings: its deadlines are taken.
    pub(super) reconfigure: mpsc::UnboundedReceiver<Reconfigure>,
    pub(super) stop: oneshot::Receiver<()>,
}
