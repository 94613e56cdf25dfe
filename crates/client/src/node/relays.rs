//! What the engine loop knows of each relay link: whether it is connected and since when, why
//! not, its word on the partner, whether it carries the partner's fresh link tests, and which of
//! our messages it holds. The engine sees one link; this is what `status` shows per relay.
//! The engine loop's handlers of link events are here too, and its back-pressure check
//! ([`EngineLoop::takes_sends`]): both read and change only this state and the engine's link.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use hotline_proto::{MessageId, Time};

use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tracing::{Instrument, info, info_span};

use super::engine_loop::EngineLoop;
use super::relay_link::{
    self, EGRESS_PAUSE_FRAMES, LaneSenders, LinkEvent, LinkEventKind, RelayTarget, Writers,
};
use crate::config::RelayAddress;
use crate::control::RelayView;
use crate::time::format_time;
use crate::time::wall_now;
use crate::view;

/// At most this many message ids are kept per relay for `status` (what it holds); beyond it
/// the count stops growing rather than memory.
pub(super) const MAX_HELD_IDS: usize = 65_536;

/// What the loop knows of one relay link.
#[derive(Debug)]
pub(super) struct RelayState {
    pub(super) address: RelayAddress,
    /// The live connection's writers, if connected.
    pub(super) writers: Option<Writers>,
    /// Since when it has been in its current state (connected or not).
    pub(super) since: Time,
    /// Why it is not connected, if it is not.
    pub(super) last_error: Option<String>,
    /// This relay's latest word on the partner (forgotten when the connection ends).
    pub(super) partner_online: Option<bool>,
    /// When it last brought the partner's newest fresh link test.
    pub(super) link_test_at: Option<Time>,
    /// Our messages it accepted that are not yet delivered (as far as we know: a restarted
    /// relay may still hold what its last connection accepted).
    pub(super) holds: BTreeSet<MessageId>,
    /// Removed from the configuration by a reload: its link is stopped, it is not shown and
    /// not counted. Its index is never reused.
    pub(super) removed: bool,
    /// Its link task, stopped when this is dropped or replaced.
    pub(super) task: Option<LinkTask>,
}

impl RelayState {
    pub(super) fn new(address: &RelayAddress, now: Time) -> Self {
        Self {
            address: address.clone(),
            writers: None,
            since: now,
            last_error: None,
            partner_online: None,
            link_test_at: None,
            holds: BTreeSet::new(),
            removed: false,
            task: None,
        }
    }

    /// Its greeting (the relay's word on the partner) may have been read before this event:
    /// that word is kept.
    pub(super) fn up(&mut self, writers: Writers, now: Time) {
        self.writers = Some(writers);
        self.since = now;
        self.last_error = None;
    }

    /// Returns whether it was connected.
    pub(super) fn down(&mut self, reason: String, now: Time) -> bool {
        let was_up = self.writers.take().is_some();
        if was_up {
            self.since = now;
        }
        // What it held is offered again to every relay; its count starts afresh.
        self.holds.clear();
        self.last_error = Some(reason);
        self.partner_online = None;
        was_up
    }

    pub(super) fn failed(&mut self, reason: String, now: Time) {
        if self.last_error.is_none() && self.writers.is_none() {
            self.since = now;
        }
        self.last_error = Some(reason);
    }

    /// When it stopped carrying fresh link tests, if it does not carry them now: when its last
    /// one went stale or when it disconnected, whichever came first.
    pub(super) fn stopped_carrying(&self, now: Time, fresh_within: Duration) -> Option<Time> {
        let stale_at = self.link_test_at.map(|at| at.plus(fresh_within));
        match (self.writers.is_some(), stale_at) {
            (true, Some(stale)) if now < stale => None,
            (true, Some(stale)) => Some(stale),
            (false, Some(stale)) => Some(stale.min(self.since)),
            (_, None) => Some(self.since),
        }
    }

    pub(super) fn view(&self, now: Time, fresh_within: Duration) -> RelayView {
        RelayView {
            holds: self.holds.len(),
            carries_link_tests: self.writers.is_some()
                && self
                    .link_test_at
                    .is_some_and(|at| now < at.plus(fresh_within)),
            addr: self.address.addr.clone(),
            name: self.address.name.clone(),
            connected: self.writers.is_some(),
            since: format_time(self.since),
            last_error: self.last_error.clone(),
            partner_online: self.partner_online,
        }
    }
}

/// A relay link's task; dropping it stops the link.
#[derive(Debug)]
pub(super) struct LinkTask(JoinHandle<()>);

impl Drop for LinkTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What a new relay link needs, kept so that a reload can add relays to a running node.
#[derive(Debug)]
pub(super) struct LinkSpawner {
    pub(super) net: LaneSenders,
    pub(super) events: mpsc::UnboundedSender<LinkEvent>,
    pub(super) client_config: quinn::ClientConfig,
    /// Told when a connection's writers drain; the engine loop waits on it while it holds
    /// back sends.
    pub(super) drained: Arc<Notify>,
    /// The node's span; each link runs in a child `conn{relay}`.
    pub(super) span: tracing::Span,
}

impl LinkSpawner {
    /// Starts the link to relay number `index` at `address`.
    pub(super) fn spawn(&self, index: usize, address: &RelayAddress) -> LinkTask {
        let span = info_span!(parent: &self.span, "conn", relay = %address.addr);
        LinkTask(tokio::spawn(
            relay_link::run(
                RelayTarget {
                    index,
                    address: address.clone(),
                    client_config: self.client_config.clone(),
                    drained: self.drained.clone(),
                },
                self.net.clone(),
                self.events.clone(),
            )
            .instrument(span),
        ))
    }
}

/// A reloaded configuration, for the engine loop: the deadlines and the relay list.
#[derive(Debug)]
pub(super) struct Reconfigure {
    pub(super) engine: hotline_proto::engine::EngineConfig,
    pub(super) relays: Vec<RelayAddress>,
}

impl EngineLoop {
    /// Whether non-flash sends are taken now: no relay is connected (they are stored to go
    /// later), or a connected one's writers hold fewer than [`EGRESS_PAUSE_FRAMES`]. Flash
    /// sends and queries are always taken.
    pub(super) fn takes_sends(&self) -> bool {
        self.relays
            .iter()
            .filter_map(|r| r.writers.as_ref())
            .map(Writers::backlog)
            .min()
            .is_none_or(|b| b < EGRESS_PAUSE_FRAMES)
    }

    /// The partner's presence as the live relays report it: online if any says so.
    pub(super) fn partner_online(&self) -> Option<bool> {
        let said = self
            .relays
            .iter()
            .filter(|r| r.writers.is_some())
            .filter_map(|r| r.partner_online);
        said.reduce(|a, b| a || b)
    }

    pub(super) fn connected_relays(&self) -> usize {
        self.relays.iter().filter(|r| r.writers.is_some()).count()
    }

    pub(super) fn link(&mut self, ev: LinkEvent) {
        let now = wall_now();
        let Some(relay) = self.relays.get_mut(ev.relay).filter(|r| !r.removed) else {
            return;
        };
        match ev.kind {
            LinkEventKind::Connected(w) => {
                relay.up(w, now);
                self.last_error = None;
                // Every unconfirmed message is offered again, to every live relay: the new one
                // must get it, and the others drop what they already hold.
                self.engine.handle_connected(now);
            }
            LinkEventKind::Disconnected(reason) => {
                let was_up = relay.down(reason.clone(), now);
                self.last_error = Some(format!("relay {}: {reason}", relay.address.addr));
                self.after_relay_down(was_up, now);
            }
            LinkEventKind::Failed(reason) => {
                relay.failed(reason.clone(), now);
                self.last_error = Some(format!("relay {}: {reason}", relay.address.addr));
            }
            LinkEventKind::IdentityConflict(close) => {
                let line = view::identity_conflict_line(close);
                let was_up = relay.down(line.clone(), now);
                self.after_relay_down(was_up, now);
                self.identity_alarm(&line);
                self.last_error = Some(line);
            }
        }
    }

    /// A relay that carried traffic went away: the engine is told it is disconnected only when
    /// no relay is left; otherwise it may only hear that the partner's presence changed.
    fn after_relay_down(&mut self, was_up: bool, now: Time) {
        if !was_up {
            return;
        }
        if self.connected_relays() == 0 {
            self.engine.handle_disconnected(now);
        }
    }

    /// Applies a reload: new deadlines, and the relay list: links to relays no longer listed
    /// are stopped (as if they went down), new relays are dialled; the others are untouched.
    pub(super) fn reconfigure(&mut self, r: Reconfigure) {
        self.engine.set_deadlines(&r.engine);
        let now = wall_now();
        let mut went_down = false;
        for relay in self.relays.iter_mut().filter(|x| !x.removed) {
            if !r.relays.contains(&relay.address) {
                info!(relay = %relay.address.addr, "relay removed by reload");
                relay.task = None;
                relay.removed = true;
                went_down |= relay.down("removed from the configuration".into(), now);
            }
        }
        if went_down && !self.relays.iter().any(|x| x.writers.is_some()) {
            self.engine.handle_disconnected(now);
        }
        for address in &r.relays {
            if self
                .relays
                .iter()
                .any(|x| !x.removed && x.address == *address)
            {
                continue;
            }
            let index = self.relays.len();
            let mut state = RelayState::new(address, now);
            if let Some(spawner) = &self.spawner {
                info!(relay = %address.addr, "relay added by reload");
                state.task = Some(spawner.spawn(index, address));
            }
            self.relays.push(state);
        }
    }
}
