//! What a check answers: admitted with the usage to report, refused with
//! everything the `429` needs, or not checked and why.

use super::limits::{Limits, Policy, TokenUsage, WindowUsage};

/// Usage to report in `RateLimit` headers, minute first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitStatus {
    /// The limits in force.
    pub limits: Limits,
    /// Per-window usage.
    pub usage: [WindowUsage; 2],
    /// Turns holding a slot (after this one's admission, for a check).
    pub active: u64,
    /// Per-token-window usage (after this one's reservation, for a check).
    pub tokens: TokenUsage,
}

impl RateLimitStatus {
    /// Slots still free.
    pub fn free_slots(&self) -> u64 {
        u64::from(self.limits.max_concurrent).saturating_sub(self.active)
    }
}

/// A refusal with everything the `429` needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The limits in force.
    pub limits: Limits,
    /// Per-window usage (counts unchanged), minute first.
    pub usage: [WindowUsage; 2],
    /// The policies the request did not fit (minute, hour, concurrency).
    pub violated: Vec<Policy>,
    /// The earliest instant (ms since the epoch) the same request fits; for
    /// concurrency alone, a second on.
    pub retry_at_ms: i64,
    /// The violated policy that sets `retry_at_ms`.
    pub binding: Policy,
    /// Turns holding a slot when the decision was made.
    pub active: u64,
    /// Per-token-window usage (counts unchanged).
    pub tokens: TokenUsage,
    /// The smallest reservation the turn could have been admitted with
    /// (`None` without a token budget): what a token refusal refused.
    pub requested: Option<u64>,
    /// When the decision was made (ms since the epoch).
    pub now_ms: i64,
}

impl Denial {
    /// Whether the over-limit cache may answer for it until `retry_at_ms`:
    /// only when a turn window binds and no token window was violated. A
    /// slot frees, and a token refund lands, at a time no clock predicts;
    /// a turn window's count only grows until it rolls over.
    pub fn cacheable(&self) -> bool {
        self.binding != Policy::Concurrency && !self.violated.iter().any(|p| p.is_tokens())
    }

    /// The usage to report with the `429`.
    pub fn status(&self) -> RateLimitStatus {
        RateLimitStatus {
            limits: self.limits,
            usage: self.usage,
            active: self.active,
            tokens: self.tokens,
        }
    }
}

/// Why a check was not made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// The store failed, timed out, or is known to be down.
    StoreUnavailable,
    /// The limiter's mailbox was full: overload is answered at once.
    Overloaded,
}

/// The limiter's answer to a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Admitted and counted.
    Admitted(RateLimitStatus),
    /// Refused; nothing was counted.
    Limited(Denial),
    /// Not checked (fallback `allow`): admit, report no usage.
    Skipped(SkipReason),
    /// Not checked (fallback `deny`): refuse with `503`.
    Unavailable(SkipReason),
}
