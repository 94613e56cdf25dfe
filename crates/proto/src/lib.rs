//! `hotline-proto`: wire frames, end-to-end crypto and the sans-IO channel engine of Hotline.
//!
//! This crate never touches a socket, a file or the clock. Its shells — the relay
//! (`hotline-relay`), the endpoint node (`hotline-client`) and the load tester (`hotline-bench`)
//! — feed it bytes, store confirmations and the current time, and carry out the actions it
//! returns. That makes ordering, dedupe, retransmission, crash recovery and escalation testable
//! deterministically on virtual time (see the `Pair` harness in `engine/tests/util.rs`).
//!
//! # The model
//!
//! **Hotline, channels, lanes.** A hotline joins two endpoints (e.g. `us` and `jp`) through a
//! relay. Inside it, a *channel* (default `main`) is one conversation. Each direction of each
//! channel has four *lanes*, one per [`Precedence`]: `routine < priority < immediate < flash`.
//! Each lane numbers its messages 1, 2, 3, … ([`Seq`]).
//!
//! **Dependencies and the ordering rule.** Every envelope [`Header`](envelope::Header) carries
//! `after`: for its own lane and every *higher* lane, the latest sequence sent there before it.
//! The receiver delivers a message once everything named in `after` is delivered. Hence:
//! - same precedence: delivered in send order (own lane dependency);
//! - a higher precedence may overtake lower ones sent before it (it never names lower lanes,
//!   so a flash is not held back by a lost routine message);
//! - a lower precedence never overtakes a higher one sent before it (it names that lane);
//! - no gaps and no duplicates: a lane advances by exactly one, and anything at or below the
//!   delivered mark is a duplicate.
//!
//! **Ack levels.** The sender keeps every message until `delivered`. Levels, reported with
//! timestamps through [`engine::Action::Report`]: `stored` (in our outbox, durably), `accepted`
//! (the relay holds it), `delivered` (the partner verified and durably stored it; a signed,
//! cumulative-per-lane receipt), `acknowledged` (a partner operator acknowledged it; signed).
//! Until `accepted` the sender retransmits with backoff; after it, it re-offers on reconnect or
//! a missed deadline. The relay dedupes by (sender, channel, lane, seq).
//!
//! **Escalation.** Each precedence has a `delivered` and an `acknowledged` deadline
//! ([`engine::EngineConfig`]). A missed deadline raises the message's *transport* precedence
//! one level (the lane and relay scheduling follow it) while its ordering position — original
//! lane and sequence — stays fixed; the operator is alarmed ([`engine::Action::Escalate`]); a
//! missed `acknowledged` deadline also sends a signed escalation notice that re-alerts the
//! partner's operator, repeatedly while a flash stays unacknowledged.
//!
//! **Crypto, amortized not weakened** ([`crypto`]). One HPKE (RFC 9180, X-Wing post-quantum
//! hybrid KEM) setup per channel, direction and key epoch; each message gets its own
//! ChaCha20-Poly1305 key exported from that context, with the header as associated data. Each
//! lane is a SHA-256 hash chain (`prev` in every header); the sender signs the chain head with
//! its Ed25519 identity key once per message when idle and once per lane per batch under load,
//! so every message is provable through a signed head. Receivers release nothing that a
//! verified head does not cover. Sealing keys come from [`envelope::Announcement`]s signed by
//! the identity key, which each node pins; a changed partner key is an alarm. Every signed or
//! hashed structure has a domain-separation prefix ([`crypto::Domain`]).
//!
//! **Durability contract** ([`engine`]). State changes leave the engine as
//! [`engine::Action::Persist`] records; no `accepted`, receipt, delivery or envelope goes out
//! before the caller confirms the write with [`engine::Engine::handle_persisted`].
//! [`engine::Engine::restore`] rebuilds the engine from the confirmed records after a crash;
//! deadlines are wall-clock times, so they survive restarts.
//!
//! # Modules
//! - [`types`]: ids, names, precedence, the [`Lane`] numbering shared by node and relay, time.
//! - [`wire`]: the [`wire::Frame`] enum and its length-prefixed, versioned encoding.
//! - [`envelope`]: headers, envelopes, receipts, announcements and their signatures.
//! - [`crypto`]: keys, HPKE sessions, hashing and signing.
//! - [`engine`]: the channel engine.
//! - `testing` (feature `test-utils`): frame and receipt builders for the shells' tests.
#![warn(missing_docs)]

pub mod crypto;
pub mod engine;
pub mod envelope;
pub mod types;
pub mod wire;

#[cfg(feature = "test-utils")]
pub mod testing;

#[doc(hidden)]
pub mod fuzzing;

pub use types::{Channel, EndpointId, Lane, MessageId, NameError, Precedence, Seq, Time};
