//! The global memory budget: who may still queue envelope bytes when every destination
//! together holds a lot.
//!
//! The per-destination bound ([`Limits::bound`]) does not bound the relay: many destinations
//! each under it can still exhaust RAM, and since every queued envelope is held in memory, one
//! busy sender could starve every other hotline. This module decides, for a new envelope, from
//! [`Usage`] (queued envelope bytes per sender and in total) alone, so the rule is a pure
//! function, tested without the router.
//!
//! The rule, for a budget `B` (`Limits::max_queued_bytes_total`) and `N` configured endpoints:
//! - Half the budget is promised in equal quotas, `q = B / (2N)` per endpoint as a sender. The
//!   part of each quota a sender does not use is held free for it: no one else may take it.
//! - An envelope that keeps its sender within its quota is admitted, whatever its precedence.
//! - Beyond its quota a sender borrows from what is left: `free = B - total - owed`, where
//!   `owed` is the unused quota of every other endpoint. A `flash` envelope is admitted while
//!   `free` (after it) is not negative; any other precedence only while the sender's excess
//!   over its quota (after it) is no larger than `free` (after it). As the pool fills, the
//!   sender with the largest excess is the first refused; a lighter borrower still gets in.
//!
//! So `total + owed <= B` always holds for admissions: a sender within its quota is never
//! refused because others filled the budget (its quota is still free), and the budget is never
//! passed. Only a restore (which loads every stored envelope, also past a budget made smaller
//! since) or escalations (a re-sent frame may be a few bytes longer) can put the total over
//! `B`; then a within-quota sender's `flash` is still admitted, its other precedences are
//! refused until deliveries bring the total back under `B`. Nothing already queued is ever
//! dropped here: a refusal only ever answers the new envelope.

use std::fmt;

use hotline_proto::{EndpointId, Precedence};

use super::Limits;
use super::queue::Usage;

/// Why the budget refused an envelope; the refusal's detail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct OverBudget {
    /// The budget, `max_queued_bytes_total`.
    pub(super) budget: u64,
    /// Envelope bytes queued for every destination.
    pub(super) total: u64,
    /// Unused quota of the other endpoints, held free for them.
    pub(super) owed: u64,
    /// The sender.
    pub(super) sender: EndpointId,
    /// Bytes the sender has queued.
    pub(super) used: u64,
    /// The sender's quota.
    pub(super) quota: u64,
    /// The refused envelope's size and transport lane.
    pub(super) size: u64,
    pub(super) transport: Precedence,
}

impl fmt::Display for OverBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            budget,
            total,
            owed,
            sender,
            used,
            quota,
            size,
            transport,
        } = self;
        write!(
            f,
            "relay budget {budget} bytes: {total} queued, {owed} held for senders within their \
             quota; {sender} holds {used} bytes (quota {quota}); its {transport} envelope of \
             {size} bytes is refused "
        )?;
        if used.saturating_add(*size) <= *quota {
            write!(f, "because the budget is full")
        } else {
            write!(
                f,
                "because the heaviest senders past their quota are refused first"
            )
        }
    }
}

/// Whether `sender` may queue `size` more bytes on `transport`, given what is queued and the
/// configured endpoints (every one a potential sender, each owed its quota). See the module
/// docs for the rule.
pub(super) fn admit<'a>(
    limits: &Limits,
    usage: &Usage,
    endpoints: impl Iterator<Item = &'a EndpointId> + Clone,
    sender: &EndpointId,
    transport: Precedence,
    size: u64,
) -> Result<(), OverBudget> {
    let budget = limits.max_queued_bytes_total;
    let quota = quota(budget, endpoints.clone().count());
    let used = usage.of(sender);
    let total = usage.total;
    let after = used.saturating_add(size);
    let owed: u64 = endpoints
        .filter(|e| *e != sender)
        .map(|e| quota.saturating_sub(usage.of(e)))
        .sum();
    let refuse = || OverBudget {
        budget,
        total,
        owed,
        sender: sender.clone(),
        used,
        quota,
        size,
        transport,
    };
    if after <= quota {
        // Its quota is held free: only a restored or escalated excess makes the budget full.
        if transport == Precedence::Flash || total.saturating_add(size) <= budget {
            return Ok(());
        }
        return Err(refuse());
    }
    let free = budget
        .checked_sub(total.saturating_add(size).saturating_add(owed))
        .ok_or_else(refuse)?;
    if transport == Precedence::Flash || after - quota <= free {
        Ok(())
    } else {
        Err(refuse())
    }
}

/// Each configured endpoint's quota: half the budget shared equally.
pub(super) fn quota(budget: u64, endpoints: usize) -> u64 {
    let n = u64::try_from(endpoints.max(1)).unwrap_or(u64::MAX);
    budget / 2 / n
}
