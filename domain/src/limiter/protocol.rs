//! The limiter port: the messages the limiter task answers and what its
//! answers mean. The task itself (Redis or in-process) lives in
//! `infrastructure`; the domain only speaks this protocol through
//! [`LimiterHandle`](super::LimiterHandle).

use std::collections::HashMap;

use tokio::sync::oneshot;

use super::lease::Lease;
use super::limits::{Limits, Policy, TokenCost, TokenUsage, WindowUsage};
use crate::ids::UserId;

/// A request to the limiter task.
#[derive(Debug)]
pub enum LimiterCommand {
    /// Decide on one turn and, when admitted, count it, take a slot and
    /// reserve its tokens.
    Check {
        /// Whose turn.
        user: UserId,
        /// The caller's limits (from the token's tier).
        limits: Limits,
        /// What the turn asks of the token budgets (ignored without one).
        cost: TokenCost,
        /// Where the answer goes; an answer nobody receives drops its lease,
        /// which gives the slot back.
        respond_to: oneshot::Sender<Admission>,
    },
    /// Report usage without counting anything or creating any key.
    Peek {
        /// Whose usage.
        user: UserId,
        /// The caller's limits.
        limits: Limits,
        /// Where the answer goes; `None` when the store cannot be read.
        respond_to: oneshot::Sender<Option<RateLimitStatus>>,
    },
}

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

/// A check's answer, with the lease of the slot an admission took (`None`
/// when the check was skipped, refused, or let through by shadow mode).
#[derive(Debug)]
pub struct Admission {
    /// The decision.
    pub decision: Decision,
    /// Held by the turn until its end is persisted.
    pub lease: Option<Lease>,
}

impl Admission {
    /// An answer that took no slot.
    pub fn without_lease(decision: Decision) -> Self {
        Self { decision, lease: None }
    }
}

/// `rate_limit.fallback`: how a check is answered when the store fails.
/// Read from the settings as is (`allow`, `local`, `deny`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fallback {
    /// Skip the check, warn.
    #[default]
    Allow,
    /// Use the in-process logs (per instance).
    Local,
    /// Refuse with `503`.
    Deny,
}

/// `rate_limit.mode` (`enforce`, `shadow`), read from the settings as is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Refuse over-limit turns.
    #[default]
    Enforce,
    /// Decide fully but never refuse; count what would have been refused.
    Shadow,
}

/// The limits of each tier, resolved once per request at authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitTable {
    default: Limits,
    tiers: HashMap<String, Limits>,
}

impl LimitTable {
    /// A table with default limits and named tiers.
    pub fn new(default: Limits, tiers: HashMap<String, Limits>) -> Self {
        Self { default, tiers }
    }

    /// The limits for a token's `tier` claim; an unknown or absent tier gets
    /// the default limits.
    pub fn resolve(&self, tier: Option<&str>) -> Limits {
        tier.and_then(|t| self.tiers.get(t)).copied().unwrap_or(self.default)
    }
}

/// The limiter's health, mirrored for readiness reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimiterState {
    /// Counting in this process only (no Redis configured).
    InProcess,
    /// Redis answers.
    Healthy,
    /// Redis is failing; checks are answered by the fallback while a probe
    /// with backoff waits for it to come back.
    Degraded,
}

impl LimiterState {
    /// The name reported by `/readyz`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InProcess => "in_process",
            Self::Healthy => "healthy",
            Self::Degraded => "degraded",
        }
    }
}
