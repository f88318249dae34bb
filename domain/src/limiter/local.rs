//! [`LocalLimiter`]: the port to the in-process counts, slots and token
//! reservations. Synchronous on purpose: a decision is one short critical
//! section, so the handle makes it on the caller's own thread when no Redis
//! is configured (and for `fallback = local`) instead of queueing it behind
//! a mailbox that can fill or answer late. An in-process decision is
//! therefore always made, never skipped.
//!
//! Implementations hold no lock across an `.await` (there is none) and keep
//! each user's counts behind one lock, so a check-then-increment is atomic
//! per user.

use std::fmt::Debug;

use super::decision::{Counts, Limits, TokenCost, Verdict};
use super::lease::Refund;
use crate::ids::UserId;

/// The in-process counters of one instance.
pub trait LocalLimiter: Debug + Send + Sync {
    /// The counts of `user` at `now_ms`, touching nothing.
    fn counts(&self, user: &UserId, now_ms: i64) -> Counts;

    /// Decides with [`decide`](super::decide) and, when admitted, counts
    /// the turn, takes a slot and charges the reservation, atomically for
    /// `user`.
    fn check(&self, user: &UserId, limits: Limits, cost: TokenCost, now_ms: i64) -> Verdict;

    /// Gives back a slot `check` took for `user`.
    fn release(&self, user: &UserId);

    /// Gives the unused tokens of a reservation back to the buckets it
    /// charged (those still kept).
    fn refund(&self, user: &UserId, refund: Refund);

    /// Drops counters too old to be anyone's current or previous window.
    fn sweep(&self, now_ms: i64);
}
