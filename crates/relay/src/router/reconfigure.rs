//! A configuration reload applied to a running router: new hotlines and new limits, with every
//! live connection of an unaffected endpoint left alone.
//!
//! [`Router::reconfigure`] validates exactly as [`Router::new`] does, then replaces each
//! endpoint's partners and the [`Limits`]. An endpoint left in no hotline becomes *dormant*: it
//! is no longer configured ([`Router::is_configured`] is false, it cannot register, it is not
//! counted for the budget's quotas), but what the relay holds for it (queued envelopes, waiting
//! receipts and notices, its announcement) stays in memory and in the store, untouched: a
//! reload never deletes data. Its envelopes still expire by their time-to-live, and a later
//! reload that pairs it again serves them. Its live connection, if any, is reported in
//! [`Reconfigured::unpaired`] for the shell to close; the router forgets it at once, so nothing
//! more is routed to or from it.
//!
//! Online endpoints that gain a partner are told its presence (both ways); online endpoints
//! that lose one are told it is offline. New limits apply to what arrives next: envelopes
//! already queued keep the expiry they were given.

use std::collections::BTreeSet;

use hotline_proto::EndpointId;

use super::{ConnId, Limits, Router, RouterConfigError};

/// What a [`Router::reconfigure`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reconfigured {
    /// Hotlines that were not configured before, each as `(a, b)` with `a < b`.
    pub added: Vec<(EndpointId, EndpointId)>,
    /// Hotlines that are no longer configured, each as `(a, b)` with `a < b`.
    pub removed: Vec<(EndpointId, EndpointId)>,
    /// Whether the limits changed.
    pub limits_changed: bool,
    /// Live connections of endpoints now in no hotline: the router forgot them; the shell must
    /// close them.
    pub unpaired: Vec<(ConnId, EndpointId)>,
}

impl Reconfigured {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && !self.limits_changed
            && self.unpaired.is_empty()
    }
}

/// The hotlines as a set of ordered pairs.
fn pairs(hotlines: &[(EndpointId, EndpointId)]) -> BTreeSet<(EndpointId, EndpointId)> {
    hotlines
        .iter()
        .map(|(a, b)| {
            if a <= b {
                (a.clone(), b.clone())
            } else {
                (b.clone(), a.clone())
            }
        })
        .collect()
}

impl Router {
    /// Number of configured endpoints (in some hotline; not those a reload left dormant).
    pub fn endpoint_count(&self) -> usize {
        self.configured().count()
    }

    /// The endpoints in some hotline. One a reload removed from every hotline stays in
    /// `endpoints`, dormant, with what is queued for it (see `reconfigure`).
    pub(super) fn configured(&self) -> impl Iterator<Item = &EndpointId> + Clone {
        self.endpoints
            .iter()
            .filter(|(_, e)| !e.partners.is_empty())
            .map(|(id, _)| id)
    }

    /// The configured hotlines, each as `(a, b)` with `a < b`.
    pub fn hotlines(&self) -> Vec<(EndpointId, EndpointId)> {
        let mut out = Vec::new();
        for (a, ep) in &self.endpoints {
            out.extend(
                ep.partners
                    .iter()
                    .filter(|b| a < *b)
                    .map(|b| (a.clone(), b.clone())),
            );
        }
        out
    }

    /// The registered connections and their endpoints, by connection id.
    pub fn connections(&self) -> impl Iterator<Item = (ConnId, &EndpointId)> {
        self.conns.iter().map(|(c, e)| (*c, e))
    }

    /// Replaces the hotlines and limits of a running router (see the module docs). Refused,
    /// with nothing changed, for what [`Router::new`] refuses.
    pub fn reconfigure(
        &mut self,
        hotlines: &[(EndpointId, EndpointId)],
        limits: Limits,
    ) -> Result<Reconfigured, RouterConfigError> {
        // The same checks as at startup, on a throwaway router.
        Self::new(hotlines, limits)?;
        let old = pairs(&self.hotlines());
        let new = pairs(hotlines);
        let mut report = Reconfigured {
            added: new.difference(&old).cloned().collect(),
            removed: old.difference(&new).cloned().collect(),
            limits_changed: limits != self.limits,
            unpaired: Vec::new(),
        };
        self.limits = limits;
        for ep in self.endpoints.values_mut() {
            ep.partners.clear();
        }
        for (a, b) in &new {
            self.endpoints
                .entry(a.clone())
                .or_default()
                .partners
                .insert(b.clone());
            self.endpoints
                .entry(b.clone())
                .or_default()
                .partners
                .insert(a.clone());
        }
        // Endpoints in no hotline now: forget their connections.
        let dormant: Vec<EndpointId> = self
            .endpoints
            .iter()
            .filter(|(_, ep)| ep.partners.is_empty() && ep.conn.is_some())
            .map(|(id, _)| id.clone())
            .collect();
        for id in dormant {
            if let Some(ep) = self.endpoints.get_mut(&id) {
                if let Some(conn) = ep.conn.take() {
                    ep.drop_session_frames();
                    self.conns.remove(&conn);
                    report.unpaired.push((conn, id));
                }
            }
        }
        let online =
            |r: &Self, e: &EndpointId| r.endpoints.get(e).is_some_and(|e| e.conn.is_some());
        for (a, b) in &report.added {
            if online(self, a) && online(self, b) {
                self.tell_partners_presence(a, std::slice::from_ref(b), true);
                self.tell_partners_presence(b, std::slice::from_ref(a), true);
            }
        }
        for (a, b) in &report.removed {
            // The one that went offline (or unpaired) is no longer the other's partner.
            if online(self, a) {
                self.tell_partners_presence(b, std::slice::from_ref(a), false);
            }
            if online(self, b) {
                self.tell_partners_presence(a, std::slice::from_ref(b), false);
            }
        }
        self.flush();
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use hotline_proto::testing::{self, id};
    use hotline_proto::wire::{self, Frame};
    use hotline_proto::{Precedence, Time};

    use super::super::{ConnectError, Lane, Output};
    use super::*;

    const T0: Time = Time(1_000_000);

    fn router() -> Router {
        Router::new(
            &[(id("us"), id("jp")), (id("uk"), id("fr"))],
            Limits::default(),
        )
        .unwrap()
    }

    fn closes(r: &mut Router) -> usize {
        std::iter::from_fn(|| r.poll_output())
            .filter(|o| matches!(o, Output::Close { .. }))
            .count()
    }

    #[test]
    fn adding_and_removing_hotlines_keeps_unaffected_connections_and_queued_data() {
        let mut r = router();
        r.handle_connected(T0, ConnId(1), id("us")).unwrap();
        r.handle_connected(T0, ConnId(2), id("jp")).unwrap();
        r.handle_connected(T0, ConnId(3), id("uk")).unwrap();
        // fr is offline: an envelope from uk waits for it.
        let env = testing::envelope("uk", "fr", Precedence::Routine, 1, Precedence::Routine, 16);
        r.handle_frame(
            T0,
            ConnId(3),
            Lane::Precedence(Precedence::Routine),
            env.into(),
        );
        let queued = r.stats().queued_frames;
        let _ = closes(&mut r);

        let new = [(id("us"), id("jp")), (id("xx"), id("jp"))];
        let report = r.reconfigure(&new, Limits::default()).unwrap();
        assert_eq!(report.added, vec![(id("jp"), id("xx"))]);
        assert_eq!(report.removed, vec![(id("fr"), id("uk"))]);
        assert_eq!(report.unpaired, vec![(ConnId(3), id("uk"))]);
        assert!(!report.limits_changed);
        assert_eq!(
            closes(&mut r),
            0,
            "the shell closes the unpaired, not the router"
        );
        assert_eq!(
            r.connection_of(&id("us")),
            Some(ConnId(1)),
            "us is untouched"
        );
        assert_eq!(
            r.connection_of(&id("jp")),
            Some(ConnId(2)),
            "jp is untouched"
        );
        assert_eq!(r.endpoint_of(ConnId(3)), None, "uk is forgotten");
        assert!(!r.is_configured(&id("uk")) && !r.is_configured(&id("fr")));
        assert!(r.is_configured(&id("xx")) && r.is_paired(&id("jp"), &id("xx")));
        assert_eq!(r.endpoint_count(), 3);
        let again = r.handle_connected(T0, ConnId(4), id("fr"));
        assert_eq!(again, Err(ConnectError::NotConfigured(id("fr"))));
        assert_eq!(
            r.stats().queued_frames[Lane::Precedence(Precedence::Routine).index()],
            queued[Lane::Precedence(Precedence::Routine).index()],
            "what was queued for fr is kept"
        );

        // Pairing uk:fr again serves what waited for fr.
        let back = [(id("us"), id("jp")), (id("uk"), id("fr"))];
        let report = r.reconfigure(&back, Limits::default()).unwrap();
        assert_eq!(report.added, vec![(id("fr"), id("uk"))]);
        r.handle_connected(T0, ConnId(5), id("fr")).unwrap();
        let lane = Lane::Precedence(Precedence::Routine);
        let t = r.poll_transmit(ConnId(5), lane).expect("the kept envelope");
        assert!(matches!(
            wire::decode_frame(&t.bytes).unwrap().0,
            Frame::Envelope(_)
        ));
    }

    #[test]
    fn a_refused_configuration_changes_nothing() {
        let mut r = router();
        r.handle_connected(T0, ConnId(1), id("us")).unwrap();
        assert!(r.reconfigure(&[], Limits::default()).is_err());
        let selfish = [(id("us"), id("us"))];
        assert!(r.reconfigure(&selfish, Limits::default()).is_err());
        assert_eq!(r.hotlines().len(), 2);
        assert_eq!(r.connection_of(&id("us")), Some(ConnId(1)));
        let limits = Limits {
            max_queue_bytes: 1 << 20,
            ..Limits::default()
        };
        let same = r.hotlines();
        let report = r.reconfigure(&same, limits).unwrap();
        assert!(report.limits_changed && report.added.is_empty() && report.removed.is_empty());
    }
}
