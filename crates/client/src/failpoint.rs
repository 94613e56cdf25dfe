//! The node's named failpoints (mechanism in [`hotline_net::failpoint`]).
//!
//! - [`AFTER_OUTBOX_APPEND`]: a send is committed to the outbox, `stored` not yet reported;
//! - [`AFTER_INBOX_COMMIT_BEFORE_RECEIPT`]: a delivery is committed, its receipt not yet sent;
//! - [`AFTER_ACK_COMMIT`]: an operator acknowledgement is committed, its receipt not yet sent;
//! - [`MID_GROUP_COMMIT`]: inside the store transaction, after the inserts, before the commit.

pub use hotline_net::failpoint::{ENV, ENV_SKIP, armed, hit};

/// A send is committed to the outbox; `stored` is not yet reported.
pub const AFTER_OUTBOX_APPEND: &str = "after-outbox-append";
/// A delivery is committed; its receipt has not left.
pub const AFTER_INBOX_COMMIT_BEFORE_RECEIPT: &str = "after-inbox-commit-before-receipt";
/// An operator acknowledgement is committed; its receipt has not left.
pub const AFTER_ACK_COMMIT: &str = "after-ack-commit";
/// Inside the store transaction, after the inserts, before the commit.
pub const MID_GROUP_COMMIT: &str = "mid-group-commit";
