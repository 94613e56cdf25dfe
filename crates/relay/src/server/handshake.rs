//! Admission of new connections: what a handshake storm may cost the relay, and no more.
//!
//! Every QUIC connection attempt that quinn hands the accept loop (an [`quinn::Incoming`]: a
//! datagram that parsed as a QUIC Initial; other garbage never gets here) meets these limits,
//! in this order, each decided in O(1) before any task is spawned:
//!
//! 1. **Address validation under load.** A token bucket ([`RetryBucket`]) refills
//!    [`HandshakeLimits::unvalidated_per_second`] tokens per second, holding at most that many.
//!    Each attempt from an address quinn has not validated takes a token; with none left the
//!    relay answers with a QUIC Retry, so a flood from spoofed source addresses costs one
//!    stateless packet each and only senders that can receive at their address come back. A
//!    real node's quinn follows the Retry by itself, one round trip later.
//! 2. **Concurrent handshakes.** At most [`HandshakeLimits::max_handshakes`] connections may be
//!    between their first packet and their `Hello` (a semaphore permit, taken here and
//!    released when `Hello` is done or the connection gives up); beyond that the attempt is
//!    refused (a QUIC `CONNECTION_REFUSED`, no state kept).
//! 3. **Per remote IP address.** At most [`HandshakeLimits::max_per_address`] of those from one
//!    IP address, so one host cannot take every handshake slot.
//! 4. **Per identity.** Once TLS is done the client certificate names the endpoint; at most
//!    [`HandshakeLimits::max_per_identity`] connections of one identity may be waiting to say
//!    `Hello`, so a stolen key cannot hold many slots. Beyond it the connection is closed with
//!    [`CloseReason::TooManyPending`](super::CloseReason::TooManyPending).
//! 5. **A first packet that decrypts.** The accept loop accepts the attempt itself, which
//!    decrypts its Initial: a forged one (random bytes shaped like an Initial) is dropped
//!    there, without a task.
//! 6. **One deadline.** The TLS handshake, the control stream and the node's `Hello` together
//!    must finish within [`HandshakeLimits::hello_timeout`] of the attempt's admission (before,
//!    the control stream and the hello each had 10 s of their own, after an unbounded
//!    handshake).
//!
//! So the relay holds at most `max_handshakes` unfinished connections, each for at most
//! `hello_timeout`, whatever arrives. Each attempt ends in exactly one outcome, counted in
//! `hotline_relay_handshakes_total{outcome}` (see [`Outcome`]).
//!
//! Main types: [`HandshakeLimits`] (public, in [`ServerConfig`](super::ServerConfig)),
//! [`Gate`] (the shared counts) and [`Admission`] (one attempt's permit and slots, released on
//! drop).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use hotline_proto::EndpointId;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Limits on connections that have not yet said `Hello` (see `server/handshake.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandshakeLimits {
    /// Connection attempts per second from unvalidated addresses (also the burst) above which
    /// the relay asks for address validation with a QUIC Retry.
    pub unvalidated_per_second: u32,
    /// Connections at once between their first packet and their `Hello`.
    pub max_handshakes: usize,
    /// Of those, how many may come from one remote IP address.
    pub max_per_address: usize,
    /// Of those past TLS, how many may present one identity.
    pub max_per_identity: usize,
    /// How long a connection has, from its first packet, to finish TLS, open its control
    /// stream and say `Hello`.
    pub hello_timeout: Duration,
}

impl HandshakeLimits {
    /// Default [`HandshakeLimits::unvalidated_per_second`]: far above the reconnect rate of a
    /// deployment's few dozen nodes, far below what a flood sends.
    pub const DEFAULT_UNVALIDATED_PER_SECOND: u32 = 32;
    /// Default [`HandshakeLimits::max_handshakes`].
    pub const DEFAULT_MAX_HANDSHAKES: usize = 256;
    /// Default [`HandshakeLimits::max_per_address`]: a NAT may hide several nodes.
    pub const DEFAULT_MAX_PER_ADDRESS: usize = 16;
    /// Default [`HandshakeLimits::max_per_identity`]: a node reconnecting while its old attempt
    /// lingers needs two.
    pub const DEFAULT_MAX_PER_IDENTITY: usize = 4;
    /// Default [`HandshakeLimits::hello_timeout`]: a handshake takes a few round trips; 5 s
    /// leaves room for a slow satellite link.
    pub const DEFAULT_HELLO_TIMEOUT: Duration = Duration::from_secs(5);
}

impl Default for HandshakeLimits {
    fn default() -> Self {
        Self {
            unvalidated_per_second: Self::DEFAULT_UNVALIDATED_PER_SECOND,
            max_handshakes: Self::DEFAULT_MAX_HANDSHAKES,
            max_per_address: Self::DEFAULT_MAX_PER_ADDRESS,
            max_per_identity: Self::DEFAULT_MAX_PER_IDENTITY,
            hello_timeout: Self::DEFAULT_HELLO_TIMEOUT,
        }
    }
}

/// How one connection attempt ended, as counted in `hotline_relay_handshakes_total{outcome}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Answered with a QUIC Retry (address validation); a real client comes back validated,
    /// as a new attempt.
    Retry,
    /// Refused: [`HandshakeLimits::max_handshakes`] reached.
    RefusedCap,
    /// Refused: [`HandshakeLimits::max_per_address`] reached.
    RefusedPerAddress,
    /// Closed after TLS: [`HandshakeLimits::max_per_identity`] reached.
    RefusedPerIdentity,
    /// Closed: no `Hello` within [`HandshakeLimits::hello_timeout`].
    HelloTimeout,
    /// Failed otherwise: TLS, no or unconfigured identity, a bad `Hello`, a closed connection.
    Failed,
    /// Admitted, but its first packet did not decrypt: dropped without a task.
    Invalid,
    /// Said `Hello` in time; registration follows.
    Accepted,
}

impl Outcome {
    pub(crate) const ALL: [Self; 8] = [
        Self::Retry,
        Self::RefusedCap,
        Self::RefusedPerAddress,
        Self::RefusedPerIdentity,
        Self::HelloTimeout,
        Self::Failed,
        Self::Invalid,
        Self::Accepted,
    ];

    /// The metric label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Retry => "retry",
            Self::RefusedCap => "refused_cap",
            Self::RefusedPerAddress => "refused_per_address",
            Self::RefusedPerIdentity => "refused_per_identity",
            Self::HelloTimeout => "hello_timeout",
            Self::Failed => "failed",
            Self::Invalid => "invalid",
            Self::Accepted => "accepted",
        }
    }
}

/// A token bucket: `rate` tokens per second, at most `rate` held. Owned by the accept loop,
/// which passes it tokio's clock.
#[derive(Debug)]
pub(super) struct RetryBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl RetryBucket {
    pub(super) fn new(rate: u32, now: Instant) -> Self {
        let rate = f64::from(rate);
        Self {
            rate,
            tokens: rate,
            last: now,
        }
    }

    /// Takes a token if one is left at `now`.
    pub(super) fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The counts behind the limits, shared by the accept loop and the connection actors.
#[derive(Debug)]
pub(super) struct Gate {
    limits: HandshakeLimits,
    handshakes: Arc<Semaphore>,
    pending: Mutex<Pending>,
}

/// Connections not yet past `Hello`, by remote IP address and (once known) by identity. A key
/// is removed when its count reaches zero, so the maps hold at most `max_handshakes` keys.
#[derive(Debug, Default)]
struct Pending {
    by_address: HashMap<IpAddr, usize>,
    by_identity: HashMap<EndpointId, usize>,
}

impl Gate {
    pub(super) fn new(limits: HandshakeLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            handshakes: Arc::new(Semaphore::new(limits.max_handshakes)),
            pending: Mutex::default(),
        })
    }

    pub(super) fn limits(&self) -> HandshakeLimits {
        self.limits
    }

    /// Connections between their admission and their `Hello` (or giving up).
    pub(crate) fn in_progress(&self) -> usize {
        self.limits
            .max_handshakes
            .saturating_sub(self.handshakes.available_permits())
    }

    fn pending(&self) -> MutexGuard<'_, Pending> {
        // Only counter updates run under this lock; they leave it consistent even if one
        // panicked.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits an attempt from `address`, or says which limit refuses it. O(1).
    pub(super) fn admit(self: &Arc<Self>, address: IpAddr) -> Result<Admission, Outcome> {
        let permit = self
            .handshakes
            .clone()
            .try_acquire_owned()
            .map_err(|_| Outcome::RefusedCap)?;
        let mut pending = self.pending();
        let count = pending.by_address.entry(address).or_default();
        if *count >= self.limits.max_per_address {
            if *count == 0 {
                pending.by_address.remove(&address);
            }
            return Err(Outcome::RefusedPerAddress);
        }
        *count += 1;
        Ok(Admission {
            gate: self.clone(),
            address,
            identity: None,
            _permit: permit,
        })
    }
}

/// One admitted attempt's handshake permit and pending slots; dropping it releases them.
#[derive(Debug)]
pub(super) struct Admission {
    gate: Arc<Gate>,
    address: IpAddr,
    identity: Option<EndpointId>,
    _permit: OwnedSemaphorePermit,
}

impl Admission {
    /// Counts this connection against `peer`'s limit, now that TLS named it; refused if the
    /// identity already has [`HandshakeLimits::max_per_identity`] pending.
    pub(super) fn identify(&mut self, peer: &EndpointId) -> Result<(), Outcome> {
        let mut pending = self.gate.pending();
        let count = pending.by_identity.get(peer).copied().unwrap_or(0);
        if count >= self.gate.limits.max_per_identity {
            return Err(Outcome::RefusedPerIdentity);
        }
        pending.by_identity.insert(peer.clone(), count + 1);
        self.identity = Some(peer.clone());
        Ok(())
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut pending = self.gate.pending();
        release(&mut pending.by_address, self.address);
        if let Some(peer) = self.identity.take() {
            release(&mut pending.by_identity, peer);
        }
    }
}

fn release<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, key: K) {
    if let Some(count) = counts.get_mut(&key) {
        *count = count.saturating_sub(1);
        if *count == 0 {
            counts.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_handshakes: usize, per_address: usize, per_identity: usize) -> HandshakeLimits {
        HandshakeLimits {
            max_handshakes,
            max_per_address: per_address,
            max_per_identity: per_identity,
            ..HandshakeLimits::default()
        }
    }

    #[test]
    fn bucket_allows_its_burst_then_refills_at_its_rate() {
        let t0 = Instant::now();
        let mut bucket = RetryBucket::new(4, t0);
        assert!((0..4).all(|_| bucket.take(t0)), "the burst is the rate");
        assert!(!bucket.take(t0), "empty after the burst");
        let quarter = t0 + Duration::from_millis(250);
        assert!(bucket.take(quarter), "one token back after 1/rate seconds");
        assert!(!bucket.take(quarter));
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| bucket.take(later)).count(), 4, "capped");
    }

    #[test]
    fn bucket_ignores_time_going_backwards() {
        let t0 = Instant::now();
        let mut bucket = RetryBucket::new(1, t0 + Duration::from_secs(1));
        assert!(bucket.take(t0 + Duration::from_secs(1)));
        assert!(!bucket.take(t0), "an earlier instant adds nothing");
    }

    #[test]
    fn gate_caps_handshakes_then_addresses_and_releases_on_drop() {
        let gate = Gate::new(limits(3, 2, 9));
        let a: IpAddr = [127, 0, 0, 1].into();
        let b: IpAddr = [127, 0, 0, 2].into();
        let first = gate.admit(a).unwrap();
        let _second = gate.admit(a).unwrap();
        assert_eq!(gate.admit(a).unwrap_err(), Outcome::RefusedPerAddress);
        let _third = gate.admit(b).unwrap();
        assert_eq!(gate.in_progress(), 3);
        assert_eq!(gate.admit(b).unwrap_err(), Outcome::RefusedCap);
        drop(first);
        assert_eq!(gate.in_progress(), 2);
        assert!(gate.admit(a).is_ok(), "a released slot is reusable");
    }

    #[test]
    fn gate_caps_pending_connections_per_identity() {
        let gate = Gate::new(limits(10, 10, 2));
        let a: IpAddr = [127, 0, 0, 1].into();
        let peer = hotline_proto::testing::id("us");
        let mut one = gate.admit(a).unwrap();
        let mut two = gate.admit(a).unwrap();
        let mut three = gate.admit(a).unwrap();
        one.identify(&peer).unwrap();
        two.identify(&peer).unwrap();
        assert_eq!(three.identify(&peer), Err(Outcome::RefusedPerIdentity));
        drop(one);
        assert_eq!(three.identify(&peer), Ok(()), "released when one finishes");
        drop((two, three));
        assert!(gate.pending().by_identity.is_empty(), "no key left behind");
        assert!(gate.pending().by_address.is_empty(), "no key left behind");
    }
}
