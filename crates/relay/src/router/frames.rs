//! What each kind of frame does: the routing rules of the module docs, one handler per frame
//! kind, and the replies, refusals and control-queue pushes they share. It runs a little past
//! 600 lines because each frame kind's rules stay beside the others they must agree with.
//!
//! The handlers check who may send what (signer and addressee against the connection's
//! identity and hotlines), queue or forward, stage store operations and hold durable replies
//! behind their write. They never emit a write themselves: the input that called them flushes
//! what was staged, as one write, when it returns.
//!
//! Invariant: every refusal is logged, counted (an [`Output::Refused`]) and, when it answers a
//! frame, told to the connection that sent it.

use bytes::Bytes;
use hotline_proto::envelope::{EscalationNotice, LinkTest, Receipt, ReceiptKind, Signed};
use hotline_proto::wire::{Accepted, EnvelopeFrame, Frame, Presence, Refusal, RefusalCode};
use hotline_proto::{EndpointId, Lane, MessageId, Precedence, Time};
use tracing::{debug, info, trace, warn};

use super::budget::{self, OverBudget};
use super::commit::{After, Deferred};
use super::persist::{StoreOp, StoredAnnouncement, StoredControl, StoredEnvelope};
use super::queue::{AnnouncementOrder, ControlFrame, Item, ItemKey};
use super::{ConnId, Output, Router, encode, len};

/// When a stored control frame may be written to its addressee.
#[derive(Clone, Copy, Debug)]
enum Forward {
    /// At once, while its write commits.
    Now,
    /// Once the write that stores it has committed.
    AfterCommit,
}

impl Router {
    pub(super) fn handle_envelope(
        &mut self,
        now: Time,
        conn: ConnId,
        from: &EndpointId,
        frame: EnvelopeFrame,
        bytes: Bytes,
    ) {
        let header = &frame.envelope.header;
        let id = header.message_id();
        if &header.sender != from {
            let detail = format!(
                "envelope sender {} is not this connection's identity {from}",
                header.sender
            );
            self.refuse(conn, from, Some(id), RefusalCode::SenderMismatch, detail);
            return;
        }
        if !self.is_paired(from, &header.recipient) {
            let detail = format!("{} is not a partner of {from}", header.recipient);
            self.refuse(conn, from, Some(id), RefusalCode::NotPaired, detail);
            return;
        }
        let key = ItemKey::of(header);
        let recipient = header.recipient.clone();
        let transport = frame.transport;
        let limits = self.limits;
        let Some(dest) = self.endpoints.get_mut(&recipient) else {
            return;
        };
        let dest_conn = dest.conn;
        let queued_order = dest.items.get(&key).map(|i| i.order);
        let outcome = if let Some(old) = dest.items.get(&key).map(|i| i.lane) {
            let escalated = if transport > old {
                dest.escalate(&mut self.usage, &key, transport, bytes.clone())
            } else {
                None
            };
            if let Some((order, queued_at, old_expiry)) = escalated {
                let expires_at = limits.ttl.for_lane(transport).map(|t| queued_at.plus(t));
                dest.set_expiry(&key, expires_at);
                if let Some(at) = old_expiry {
                    self.expiries.remove(&(at, order));
                }
                if let Some(at) = expires_at {
                    self.expiries
                        .insert((at, order), (recipient.clone(), key.clone()));
                }
                self.stage_put(
                    key.clone(),
                    StoredEnvelope {
                        order,
                        destination: recipient.clone(),
                        lane: transport,
                        queued_at,
                        bytes,
                    },
                );
                trace!(peer = %from, %id, %old, new = %transport, "queued envelope escalated");
                Outcome::Queued
            } else {
                trace!(peer = %from, %id, "duplicate envelope already queued");
                Outcome::Duplicate
            }
        } else {
            // The bound is per sender: a destination in several hotlines gives each partner the
            // whole bound, so one partner's backlog never refuses another's traffic.
            let queued = dest.queued_from(from);
            let bound = limits.bound(transport);
            let size = len(&bytes);
            if queued.saturating_add(size) > bound {
                Outcome::Overloaded { queued, bound }
            } else if let Err(over) = budget::admit(
                &limits,
                &self.usage,
                self.configured(),
                from,
                transport,
                size,
            ) {
                Outcome::OverBudget(over)
            } else {
                let Some(dest) = self.endpoints.get_mut(&recipient) else {
                    return;
                };
                let order = self.next_order;
                self.next_order += 1;
                let expires_at = limits.ttl.for_lane(transport).map(|t| now.plus(t));
                let item = Item::unwritten(transport, order, now, expires_at, bytes.clone());
                dest.insert(&mut self.usage, key.clone(), item);
                if let Some(at) = expires_at {
                    self.expiries
                        .insert((at, order), (recipient.clone(), key.clone()));
                }
                self.stage_put(
                    key,
                    StoredEnvelope {
                        order,
                        destination: recipient.clone(),
                        lane: transport,
                        queued_at: now,
                        bytes,
                    },
                );
                Outcome::Queued
            }
        };
        match outcome {
            Outcome::Overloaded { queued, bound } => {
                let detail = format!(
                    "{recipient} has {queued} bytes queued from {from}; {transport} is refused above {bound}"
                );
                self.refuse(conn, from, Some(id), RefusalCode::Overloaded, detail);
                self.envelope_refused(from, &recipient, transport, RefusalCode::Overloaded);
            }
            Outcome::OverBudget(over) => {
                let detail = over.to_string();
                self.refuse(conn, from, Some(id), RefusalCode::Overloaded, detail);
                self.envelope_refused(from, &recipient, transport, RefusalCode::Overloaded);
            }
            Outcome::Queued | Outcome::Duplicate => {
                if let (Outcome::Queued, Some(dest_conn)) = (&outcome, dest_conn) {
                    self.outputs.push_back(Output::Wake {
                        conn: dest_conn,
                        stream: Lane::Precedence(transport),
                    });
                }
                // The write that holds it first: this input's, or for a duplicate the last
                // uncommitted write of its row, if any.
                let reply = encode(&Frame::Accepted(Accepted { id, durable: true }));
                let after = match (&outcome, queued_order) {
                    (Outcome::Duplicate, Some(order)) => After::Row(order),
                    _ => After::Staged,
                };
                self.after_commit(
                    after,
                    Deferred::Reply {
                        conn,
                        to: from.clone(),
                        bytes: reply,
                    },
                );
            }
        }
    }

    pub(super) fn handle_receipt(
        &mut self,
        conn: ConnId,
        from: &EndpointId,
        receipt: &Signed<Receipt>,
        bytes: Bytes,
    ) {
        let r = &receipt.body;
        let id = match r.kind {
            ReceiptKind::Delivered { upto, .. } => Some(MessageId {
                sender: r.to.clone(),
                channel: r.channel.clone(),
                precedence: r.precedence,
                seq: upto,
            }),
            ReceiptKind::Acknowledged { seq, .. } => Some(MessageId {
                sender: r.to.clone(),
                channel: r.channel.clone(),
                precedence: r.precedence,
                seq,
            }),
        };
        if !self.check_signer(conn, from, &r.from, id.clone(), "receipt")
            || !self.check_addressee(conn, from, &r.to, id.clone(), "receipt")
        {
            return;
        }
        if let ReceiptKind::Delivered { upto, .. } = r.kind {
            if let Some(ep) = self.endpoints.get_mut(from) {
                let removed =
                    ep.remove_delivered(&mut self.usage, &r.to, &r.channel, r.precedence, upto);
                trace!(
                    peer = %from,
                    removed = removed.len(),
                    "delivered receipt released queued envelopes"
                );
                for (order, expires_at) in removed {
                    if let Some(at) = expires_at {
                        self.expiries.remove(&(at, order));
                    }
                    self.staged.push(StoreOp::DeleteEnvelope { order });
                }
            }
        }
        // Stored in the same write as the deletions and forwarded at once (see
        // `forward_durable`): after a crash before that write commits, the envelopes come back
        // and the receiver answers them as duplicates.
        self.forward_durable(conn, from, &r.to, id, bytes, "receipt");
    }

    pub(super) fn handle_escalation(
        &mut self,
        conn: ConnId,
        from: &EndpointId,
        notice: &Signed<EscalationNotice>,
        bytes: Bytes,
    ) {
        let n = &notice.body;
        let id = Some(n.message.clone());
        if !self.check_signer(conn, from, &n.from, id.clone(), "escalation notice")
            || !self.check_addressee(conn, from, &n.to, id.clone(), "escalation notice")
        {
            return;
        }
        self.forward_durable(conn, from, &n.to, id, bytes, "escalation notice");
    }

    pub(super) fn handle_announcement(
        &mut self,
        conn: ConnId,
        from: &EndpointId,
        endpoint: &EndpointId,
        order: AnnouncementOrder,
        bytes: Bytes,
    ) {
        if !self.check_signer(conn, from, endpoint, None, "announcement") {
            return;
        }
        let Some(ep) = self.endpoints.get_mut(from) else {
            return;
        };
        if ep.announcement.as_ref().is_some_and(|(o, _)| *o > order) {
            debug!(peer = %from, epoch = order.1, "announcement older than the stored one ignored");
            return;
        }
        ep.announcement = Some((order, bytes.clone()));
        self.staged
            .push(StoreOp::PutAnnouncement(StoredAnnouncement {
                endpoint: from.clone(),
                epoch: order.1,
                bytes: bytes.clone(),
            }));
        let partners: Vec<EndpointId> = ep.partners.iter().cloned().collect();
        for p in partners {
            self.push_control(
                &p,
                ControlFrame {
                    bytes: bytes.clone(),
                    keep_offline: false,
                    stored: None,
                },
            );
        }
    }

    pub(super) fn handle_link_test(
        &mut self,
        conn: ConnId,
        from: &EndpointId,
        link: &Signed<LinkTest>,
        bytes: Bytes,
    ) {
        let l = &link.body;
        if !self.check_signer(conn, from, &l.from, None, "link test")
            || !self.check_addressee(conn, from, &l.to, None, "link test")
        {
            return;
        }
        let limits = self.limits;
        let Some(dest) = self.endpoints.get(&l.to) else {
            return;
        };
        if dest.conn.is_none() {
            trace!(peer = %from, to = %l.to, "link test for an offline partner dropped");
            return;
        }
        if dest.queued_bytes().saturating_add(len(&bytes)) > limits.control_bound() {
            debug!(peer = %from, to = %l.to, "link test for an overloaded partner dropped");
            return;
        }
        self.push_control(
            &l.to,
            ControlFrame {
                bytes,
                keep_offline: false,
                stored: None,
            },
        );
    }

    fn check_signer(
        &mut self,
        conn: ConnId,
        from: &EndpointId,
        signer: &EndpointId,
        id: Option<MessageId>,
        what: &str,
    ) -> bool {
        if signer == from {
            return true;
        }
        let detail = format!("{what} signed as {signer} is not this connection's identity {from}");
        self.refuse(conn, from, id, RefusalCode::SenderMismatch, detail);
        false
    }

    fn check_addressee(
        &mut self,
        conn: ConnId,
        from: &EndpointId,
        to: &EndpointId,
        id: Option<MessageId>,
        what: &str,
    ) -> bool {
        if self.is_paired(from, to) {
            return true;
        }
        let detail = format!("{what} addressed to {to}, which is not a partner of {from}");
        self.refuse(conn, from, id, RefusalCode::NotPaired, detail);
        false
    }

    /// Stages the store write of a queued envelope (new, or moved to a higher lane), noting where
    /// it is so it can leave memory once committed.
    fn stage_put(&mut self, key: ItemKey, stored: StoredEnvelope) {
        self.uncommitted_puts
            .insert(stored.order, (stored.destination.clone(), key));
        self.staged.push(StoreOp::PutEnvelope(stored));
    }

    /// Queues a receipt or notice for `to`, online or not, within the control bound.
    fn forward_durable(
        &mut self,
        conn: ConnId,
        from: &EndpointId,
        to: &EndpointId,
        id: Option<MessageId>,
        bytes: Bytes,
        what: &str,
    ) {
        let bound = self.limits.control_bound();
        let queued = self.queued_bytes(to);
        if queued.saturating_add(len(&bytes)) > bound {
            let detail = format!("{to} has {queued} bytes queued; {what} refused above {bound}");
            self.refuse(conn, from, id, RefusalCode::Overloaded, detail);
            return;
        }
        // Queued at once, not after the write: the receipt or notice is the partner's signed
        // word, not the relay's promise, so it need not wait for the relay's fsync (that would
        // put a third fsync on every message's round trip; issue 12). The write still holds it
        // for an addressee that goes away before it is written, and the envelopes it deletes.
        // If the relay crashes before the write commits, those envelopes come back and are
        // offered again: the receiver answers each duplicate with its stored receipt, silently.
        self.store_control(to.clone(), bytes, Forward::Now);
    }

    /// Stores a frame for `to` (online or not) and queues it to `to`, at once or once that
    /// write commits.
    fn store_control(&mut self, to: EndpointId, bytes: Bytes, when: Forward) {
        let key = self.next_control;
        self.next_control += 1;
        self.staged.push(StoreOp::PutControl(StoredControl {
            key,
            addressee: to.clone(),
            bytes: bytes.clone(),
        }));
        let frame = ControlFrame {
            bytes,
            keep_offline: true,
            stored: Some(key),
        };
        match when {
            Forward::Now => self.push_control(&to, frame),
            Forward::AfterCommit => {
                self.after_commit(After::Staged, Deferred::Control { to, frame });
            }
        }
    }

    /// A queued envelope's time-to-live ran out: free it, tell its sender.
    pub(super) fn expire(&mut self, at: Time, order: u64, destination: &EndpointId, key: &ItemKey) {
        let Some(dest) = self.endpoints.get_mut(destination) else {
            return;
        };
        // The index names exactly the queued items (the invariant); tolerate a stale entry.
        let current = dest
            .items
            .get(key)
            .is_some_and(|i| i.order == order && i.expires_at == Some(at));
        if !current {
            return;
        }
        let Some(item) = dest.remove(&mut self.usage, key) else {
            return;
        };
        self.staged.push(StoreOp::DeleteEnvelope { order });
        let id = key.message_id();
        let held = at.since(item.queued_at);
        info!(
            to = %destination,
            message_id = %id,
            lane = %item.lane,
            held_s = held.as_secs(),
            "queued envelope expired; telling its sender"
        );
        let detail = format!(
            "the relay held it {}s for {destination} on the {} lane, its time-to-live; \
             offer it again later",
            held.as_secs(),
            item.lane
        );
        let frame = encode(&Frame::Refused(Refusal {
            id: Some(id),
            code: RefusalCode::Expired,
            detail,
        }));
        // Always queued, whatever the sender's backlog: a refusal that frees an envelope must
        // not itself be refused.
        // The relay's own word that it dropped the envelope: only once that is durable.
        self.store_control(key.sender.clone(), frame, Forward::AfterCommit);
        self.outputs.push_back(Output::Refused {
            conn: None,
            code: RefusalCode::Expired,
        });
        self.envelope_refused(&key.sender, destination, item.lane, RefusalCode::Expired);
    }

    /// Counts a refused envelope of a configured hotline (see [`Output::EnvelopeRefused`]).
    fn envelope_refused(
        &mut self,
        sender: &EndpointId,
        recipient: &EndpointId,
        transport: Precedence,
        code: RefusalCode,
    ) {
        self.outputs.push_back(Output::EnvelopeRefused {
            sender: sender.clone(),
            recipient: recipient.clone(),
            transport,
            code,
        });
    }

    pub(super) fn tell_partners_presence(
        &mut self,
        endpoint: &EndpointId,
        partners: &[EndpointId],
        online: bool,
    ) {
        let frame = encode(&Frame::Presence(Presence {
            endpoint: endpoint.clone(),
            online,
        }));
        for p in partners {
            self.push_control(
                p,
                ControlFrame {
                    bytes: frame.clone(),
                    keep_offline: false,
                    stored: None,
                },
            );
        }
    }

    /// A frame arrived on `arrived` instead of its own stream `expected`: refused unrouted, so
    /// a node cannot pass flash traffic through its control stream or a routine-tagged stream
    /// (where it would dodge the per-lane back-pressure, and the flash-first order of writes).
    pub(super) fn refuse_wrong_stream(
        &mut self,
        conn: ConnId,
        from: &EndpointId,
        frame: &Frame,
        expected: Lane,
        arrived: Lane,
    ) {
        let (id, detail) = match frame {
            Frame::Envelope(e) => (
                Some(e.envelope.header.message_id()),
                format!("envelope for lane {expected} arrived on stream {arrived}"),
            ),
            _ => (
                None,
                format!(
                    "{} frame arrived on stream {arrived}; it belongs on {expected}",
                    frame_kind(frame)
                ),
            ),
        };
        self.refuse(conn, from, id, RefusalCode::Malformed, detail);
        self.outputs.push_back(Output::WrongStream {
            conn,
            expected,
            arrived,
        });
    }

    /// A reply to the connection that sent the frame.
    pub(super) fn reply(&mut self, conn: ConnId, to: &EndpointId, bytes: Bytes) {
        if self.conns.get(&conn) == Some(to) {
            self.push_control(
                to,
                ControlFrame {
                    bytes,
                    keep_offline: false,
                    stored: None,
                },
            );
        }
    }

    pub(super) fn refuse(
        &mut self,
        conn: ConnId,
        to: &EndpointId,
        id: Option<MessageId>,
        code: RefusalCode,
        detail: String,
    ) {
        let message_id = id.as_ref().map(ToString::to_string);
        if code == RefusalCode::Overloaded {
            // Load, not misbehaviour: counted in the metrics, and the sender is told.
            debug!(peer = %to, ?code, message_id = message_id.as_deref(), %detail, "refused");
        } else {
            warn!(peer = %to, ?code, message_id = message_id.as_deref(), %detail, "refused");
        }
        let frame = encode(&Frame::Refused(Refusal { id, code, detail }));
        self.reply(conn, to, frame);
        self.outputs.push_back(Output::Refused {
            conn: Some(conn),
            code,
        });
    }

    /// Appends to `to`'s control queue; frames that only make sense on a live connection are
    /// skipped while it is offline.
    pub(super) fn push_control(&mut self, to: &EndpointId, frame: ControlFrame) {
        let Some(ep) = self.endpoints.get_mut(to) else {
            return;
        };
        if ep.conn.is_none() && !frame.keep_offline {
            return;
        }
        ep.push_control_back(frame);
        if let Some(conn) = ep.conn {
            self.outputs.push_back(Output::Wake {
                conn,
                stream: Lane::Control,
            });
        }
    }
}

/// The stream a node must send `frame` on: an envelope on the stream of its transport lane
/// (an escalated copy on its raised lane), every other frame a node sends on its control
/// stream. `None` for the frames only the relay sends, which are refused whatever the stream.
pub(super) fn expected_stream(frame: &Frame) -> Option<Lane> {
    match frame {
        Frame::Envelope(e) => Some(Lane::Precedence(e.transport)),
        Frame::Hello(_)
        | Frame::Receipt(_)
        | Frame::Escalation(_)
        | Frame::Announcement(_)
        | Frame::LinkTest(_) => Some(Lane::Control),
        Frame::Accepted(_) | Frame::Refused(_) | Frame::Presence(_) => None,
    }
}

fn frame_kind(frame: &Frame) -> &'static str {
    match frame {
        Frame::Hello(_) => "hello",
        Frame::Envelope(_) => "envelope",
        Frame::Receipt(_) => "receipt",
        Frame::Escalation(_) => "escalation notice",
        Frame::Announcement(_) => "announcement",
        Frame::LinkTest(_) => "link test",
        Frame::Accepted(_) => "accepted",
        Frame::Refused(_) => "refused",
        Frame::Presence(_) => "presence",
    }
}

enum Outcome {
    Queued,
    Duplicate,
    Overloaded { queued: u64, bound: u64 },
    OverBudget(OverBudget),
}
