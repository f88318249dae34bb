//! The limiter port: the messages the limiter task answers and what its
//! answers mean. The task itself (Redis or in-process) lives in
//! `infrastructure`; the domain only speaks this protocol through
//! [`LimiterHandle`](super::LimiterHandle).

use std::collections::HashMap;

use tokio::sync::oneshot;

use super::answer::{Decision, RateLimitStatus};
use super::lease::Lease;
use super::limits::{Claim, Limits, TokenCost};
use crate::idempotency::KeyClaim;
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
        /// The `Idempotency-Key` to claim with the check.
        claim: Option<Claim>,
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

/// A check's answer, with the lease of the slot an admission took (`None`
/// when the check was skipped, refused, or let through by shadow mode).
#[derive(Debug)]
pub struct Admission {
    /// The decision.
    pub decision: Decision,
    /// Held by the turn until its end is persisted.
    pub lease: Option<Lease>,
    /// The check's key was claimed already, by this: nothing was counted,
    /// and `decision` means nothing.
    pub claimed: Option<KeyClaim>,
}

impl Admission {
    /// An answer that took no slot.
    pub fn without_lease(decision: Decision) -> Self {
        Self { decision, lease: None, claimed: None }
    }

    /// The answer of a check whose key was claimed already.
    pub fn claimed(claim: KeyClaim) -> Self {
        Self {
            decision: Decision::Skipped(super::SkipReason::StoreUnavailable),
            lease: None,
            claimed: Some(claim),
        }
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
