//! The over-limit cache: users known to be refused until an instant,
//! answered without asking Redis. Exact, because counts only grow until the
//! windows roll over, and `retry_at` already accounts for the roll-over.

use std::collections::HashMap;

use pantheon_domain::UserId;
use pantheon_domain::limiter::{Denial, Limits};

/// Entries beyond this are not added (after a sweep): a flood of distinct
/// over-limit users must not grow memory without bound.
const MAX_ENTRIES: usize = 100_000;

/// Denials by user and limits (a tier change is a different key, so an
/// upgraded token is asked about afresh).
#[derive(Debug, Default)]
pub struct OverLimitCache {
    entries: HashMap<(UserId, Limits), Denial>,
}

impl OverLimitCache {
    /// The cached denial of `user` at `now_ms`, with its reset times
    /// brought up to date; `None` once `retry_at` has come.
    pub fn get(&mut self, user: &UserId, limits: Limits, now_ms: i64) -> Option<Denial> {
        let key = (user.clone(), limits);
        let denial = self.entries.get(&key)?;
        if now_ms >= denial.retry_at_ms {
            self.entries.remove(&key);
            return None;
        }
        let mut denial = denial.clone();
        for usage in &mut denial.usage {
            usage.reset_ms = denial.retry_at_ms - now_ms;
        }
        denial.now_ms = now_ms;
        Some(denial)
    }

    /// Remembers a denial until its `retry_at`.
    pub fn insert(&mut self, user: &UserId, denial: &Denial) {
        if self.entries.len() >= MAX_ENTRIES {
            self.sweep(denial.now_ms);
            if self.entries.len() >= MAX_ENTRIES {
                return;
            }
        }
        self.entries.insert((user.clone(), denial.limits), denial.clone());
    }

    /// Drops denials whose `retry_at` has passed.
    pub fn sweep(&mut self, now_ms: i64) {
        self.entries.retain(|_, d| d.retry_at_ms > now_ms);
    }
}
