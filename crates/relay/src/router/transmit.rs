//! What goes out to a node: the next frame for a stream's writer, queued envelopes read back
//! from the store when memory no longer holds them, and frames leaving memory once written or
//! committed.
//!
//! The shell's one writer per stream pulls with [`Router::poll_transmit`] only when it can
//! write, and reports each frame with [`Router::handle_written`]. An envelope whose frame is
//! only in the store (past [`Limits::max_in_memory_bytes`](super::Limits::max_in_memory_bytes))
//! is taken from its lane all the same, marked in flight and held in the lane's loading slot
//! while [`Output::Load`] reads it back; [`Router::handle_loaded`] wakes the writer, whose next
//! pull returns it. A slot whose envelope was delivered, expired or moved meanwhile is dropped.
//!
//! Invariant: at most one envelope per lane of an endpoint waits for a read; it is
//! [`ItemState::InFlight`] meanwhile, so a reconnection (which rewinds every in-flight
//! envelope) also empties the slots.

use bytes::Bytes;
use hotline_proto::{EndpointId, Lane, Precedence, Time};
use tracing::error;

use super::commit::{After, Deferred};
use super::queue::ItemKey;
use super::{ConnId, ItemState, Output, Router, len};

/// One frame for one stream, from [`Router::poll_transmit`]. Hand it back to
/// [`Router::handle_written`] once written.
#[derive(Clone, Debug)]
pub struct Transmit {
    /// The frame, length prefix included, byte for byte as it arrived (or as the relay made it).
    pub bytes: Bytes,
    stream: Lane,
    item: Option<(ItemKey, u64)>,
    /// For an envelope, when it first arrived at the relay (wall clock).
    queued_at: Option<Time>,
}

impl Transmit {
    /// The stream it goes to.
    pub fn stream(&self) -> Lane {
        self.stream
    }

    /// For an envelope: its sender and when it first arrived at the relay (wall clock; an
    /// envelope written again after a reconnection keeps its first arrival). `None` for a
    /// control frame.
    pub fn envelope(&self) -> Option<(&EndpointId, Time)> {
        let (key, _) = self.item.as_ref()?;
        Some((&key.sender, self.queued_at?))
    }
}

impl Router {
    /// The next frame for `stream` of `conn`, if any. Envelopes are taken per lane in arrival
    /// order from each sender, the senders in deficit round robin (see `fair`); the caller calls this only when it is ready to write, which bounds write-ahead.
    #[must_use]
    pub fn poll_transmit(&mut self, conn: ConnId, stream: Lane) -> Option<Transmit> {
        let endpoint = self.conns.get(&conn)?;
        let ep = self.endpoints.get_mut(endpoint)?;
        match stream {
            Lane::Control => {
                if ep.control_in_flight.is_some() {
                    return None;
                }
                let frame = ep.pop_control()?;
                let bytes = frame.bytes.clone();
                ep.control_in_flight = Some(frame);
                Some(Transmit {
                    bytes,
                    stream,
                    item: None,
                    queued_at: None,
                })
            }
            Lane::Precedence(lane) => {
                let slot = lane.index();
                // The envelope taken last time, if its frame was being read back.
                if let Some((order, key)) = ep.loading[slot].take() {
                    match ep.items.get(&key) {
                        Some(item)
                            if item.order == order
                                && item.lane == lane
                                && item.state == ItemState::InFlight =>
                        {
                            let Some(bytes) = item.bytes.clone() else {
                                // Still being read.
                                ep.loading[slot] = Some((order, key));
                                return None;
                            };
                            let queued_at = Some(item.queued_at);
                            return Some(Transmit {
                                bytes,
                                stream,
                                item: Some((key, order)),
                                queued_at,
                            });
                        }
                        // Delivered, expired or moved meanwhile: take the next one.
                        _ => {}
                    }
                }
                loop {
                    let (order, key) = ep.unwritten[slot].pop()?;
                    let Some(item) = ep.items.get_mut(&key) else {
                        // The index only lists queued items; tolerate a stale entry all the same.
                        continue;
                    };
                    item.state = ItemState::InFlight;
                    let Some(bytes) = item.bytes.clone() else {
                        // Only the store has it: read it back, then this writer is woken.
                        ep.loading[slot] = Some((order, key));
                        self.outputs.push_back(Output::Load {
                            destination: endpoint.clone(),
                            lane,
                            order,
                        });
                        return None;
                    };
                    return Some(Transmit {
                        bytes,
                        stream,
                        item: Some((key, order)),
                        queued_at: Some(item.queued_at),
                    });
                }
            }
        }
    }

    /// The frame of row `order` that [`Output::Load`] asked for, read back from the store
    /// (`None`: the row is gone). Wakes the writer that waits for it.
    pub fn handle_loaded(
        &mut self,
        destination: &EndpointId,
        lane: Precedence,
        order: u64,
        bytes: Option<Bytes>,
    ) {
        let Some(ep) = self.endpoints.get_mut(destination) else {
            return;
        };
        let slot = lane.index();
        let Some((_, key)) = ep.loading[slot].clone().filter(|(o, _)| *o == order) else {
            // Not (or no longer) waited for.
            return;
        };
        match bytes {
            Some(bytes) => {
                if !ep.warm(&mut self.usage, lane, order, bytes) {
                    // It changed meanwhile (moved to another lane, say): the writer moves on.
                    ep.loading[slot] = None;
                }
            }
            None => {
                if ep.items.get(&key).is_some_and(|item| item.order == order) {
                    error!(
                        to = %destination,
                        order,
                        "a queued envelope is missing from the store; offered again on reconnection"
                    );
                }
                ep.loading[slot] = None;
            }
        }
        if let Some(conn) = ep.conn {
            self.outputs.push_back(Output::Wake {
                conn,
                stream: Lane::Precedence(lane),
            });
        }
    }

    /// The shell wrote `transmit` to `conn`'s stream.
    pub fn handle_written(&mut self, conn: ConnId, transmit: Transmit) {
        let Some(endpoint) = self.conns.get(&conn) else {
            return;
        };
        let Some(ep) = self.endpoints.get_mut(endpoint) else {
            return;
        };
        match transmit.item {
            None => {
                let mut stored = None;
                if let Some(frame) = ep.control_in_flight.take() {
                    ep.control_bytes -= len(&frame.bytes);
                    stored = frame.stored;
                }
                if ep.control_len() > 0 {
                    self.outputs.push_back(Output::Wake {
                        conn,
                        stream: Lane::Control,
                    });
                }
                if let Some(key) = stored {
                    // Its put may still be committing (receipts leave at once).
                    self.after_commit(After::ControlRow(key), Deferred::DeleteControl { key });
                }
            }
            Some((key, order)) => {
                if let Some(item) = ep.items.get_mut(&key) {
                    // An escalation meanwhile made it unwritten on a higher lane: leave it so.
                    if item.order == order && item.state == ItemState::InFlight {
                        item.state = ItemState::Written;
                    }
                }
                // Written, it waits only for its receipt: memory need not hold it.
                let destination = endpoint.clone();
                self.cool(&destination, &key, order);
            }
        }
        self.flush();
    }

    /// Drops a committed envelope's frame from memory if memory is over its window.
    pub(super) fn cool(&mut self, destination: &EndpointId, key: &ItemKey, order: u64) {
        if self.usage.hot <= self.limits.max_in_memory_bytes || self.commits.row_pending(order) {
            return;
        }
        if let Some(ep) = self.endpoints.get_mut(destination) {
            ep.cool(&mut self.usage, key, order);
        }
    }
}
