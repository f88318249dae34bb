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

use super::decision::Verdict;
use super::limits::{Claim, Limits, Refund, TokenCost};
use super::log::Tally;
use crate::idempotency::KeyClaim;
use crate::ids::UserId;

/// The in-process logs and slots of one instance.
pub trait LocalLimiter: Debug + Send + Sync {
    /// What `user`'s log reports at `now_ms` under `limits` (a peek):
    /// counts nothing.
    fn peek(&self, user: &UserId, limits: Limits, now_ms: i64) -> Tally;

    /// Decides on `user`'s log ([`UsageLog::check`](super::UsageLog::check))
    /// and, when admitted, makes the entry and takes a slot, atomically for
    /// `user`.
    fn check(&self, user: &UserId, limits: Limits, cost: TokenCost, now_ms: i64) -> Verdict;

    /// [`LocalLimiter::check`] claiming `claim` with it, in the same
    /// critical section: `Err` with the earlier claim of the key (counting
    /// nothing) when it is held and unexpired; else the check, the claim
    /// kept when it admits.
    ///
    /// # Errors
    /// The claim that holds the key.
    fn check_claiming(
        &self,
        user: &UserId,
        limits: Limits,
        cost: TokenCost,
        claim: &Claim,
        now_ms: i64,
    ) -> Result<Verdict, KeyClaim>;

    /// Lets go of `user`'s claim of `key` (its turn was never committed).
    fn unclaim(&self, user: &UserId, key: &str);

    /// Gives back a slot `check` took for `user`.
    fn release(&self, user: &UserId);

    /// Gives the unused tokens of a reservation back to the log entry it
    /// charged (when it is still there).
    fn refund(&self, user: &UserId, refund: Refund);

    /// Drops the logs with nothing left inside the hour and no slot taken.
    fn sweep(&self, now_ms: i64);
}
