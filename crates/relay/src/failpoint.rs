//! Crash points for recovery tests: `HOTLINE_FAILPOINT=<name>` makes the process abort at that
//! point, as a power cut or `kill -9` would, with one line on stderr first.
//!
//! `HOTLINE_FAILPOINT_SKIP=<n>` lets the first `n` hits pass and fires on hit `n + 1`. Both are
//! read once, at the first hit. Unset (always, outside tests), a hit costs one load of a
//! `OnceLock` and a string comparison, so the points stay compiled in release builds and the
//! tests exercise the binary that ships.
//!
//! The points, in the order a write goes through them (see [`crate::store::group_commit`]):
//! - [`BEFORE_COMMIT`]: a batch of store operations was taken, nothing of it is written;
//! - [`MID_GROUP_COMMIT`]: inside the transaction, every operation applied, not committed;
//! - [`AFTER_COMMIT_BEFORE_ACCEPTED`]: committed, but the router not yet told, so no `Accepted`
//!   for the batch has been sent.

/// A batch of envelopes (and other store operations) is about to be committed.
pub const BEFORE_COMMIT: &str = "relay-before-commit";
/// Inside the group-commit transaction, after the inserts, before the commit.
pub const MID_GROUP_COMMIT: &str = "relay-mid-group-commit";
/// The batch is committed; the `Accepted` replies it releases are not sent yet.
pub const AFTER_COMMIT_BEFORE_ACCEPTED: &str = "relay-after-commit-before-accepted";

/// Every failpoint of the relay.
pub const ALL: [&str; 3] = [
    BEFORE_COMMIT,
    MID_GROUP_COMMIT,
    AFTER_COMMIT_BEFORE_ACCEPTED,
];

pub use hotline_net::failpoint::{ENV, ENV_SKIP, armed, hit};
