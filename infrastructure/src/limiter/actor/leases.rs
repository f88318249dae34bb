//! The actor's lease upkeep: turning the releases queued by dropped leases
//! into `ZREM`s (and token refunds), and the periodic renewal of the Redis
//! leases this instance holds. Neither is a caller's check: the loop sends
//! them without waiting for the in-flight cap (see the parent module).

use std::collections::HashMap;

use pantheon_domain::UserId;
use pantheon_domain::limiter::{LeaseId, LeaseStore, Window};

use super::{Batch, LimiterActor};
use crate::limiter::redis_link::{Pending, TokenRefund};

impl LimiterActor {
    pub(super) fn lease_ttl_ms(&self) -> i64 {
        i64::try_from(self.lease_ttl.as_millis()).unwrap_or(i64::MAX)
    }

    /// Applies the releases queued by dropped leases: in-process slots and
    /// refunds at once, Redis ones as one item per user to send (a `ZREM`,
    /// or with refunds the script's release: the `ZREM` and a `DECRBY` per
    /// token bucket that still exists, in one call). A user whose node
    /// cannot be asked now has them dropped: those leases lapse within
    /// `lease_ttl`, and their reservations stay charged (the safe side).
    pub(super) fn take_releases(&mut self) -> Batch {
        let now_ms = self.clock.now_ms();
        let mut by_user: HashMap<UserId, (Vec<LeaseId>, Vec<TokenRefund>)> = HashMap::new();
        for released in self.shared.releases().take() {
            match released.store {
                LeaseStore::Local => {
                    self.local.release(&released.user);
                    if let Some(refund) = released.refund {
                        self.local.refund(&released.user, refund);
                    }
                }
                LeaseStore::Redis => {
                    self.held.remove(&released.id);
                    let (leases, refunds) = by_user.entry(released.user).or_default();
                    leases.push(released.id);
                    if let Some(refund) = released.refund {
                        for (window, index) in Window::ALL.into_iter().zip(refund.buckets) {
                            if let Some(index) = index {
                                add_refund(refunds, window, index, refund.tokens, now_ms);
                            }
                        }
                    }
                }
            }
        }
        by_user
            .into_iter()
            .filter(|(user, _)| self.routes(user))
            .map(|(user, (leases, refunds))| Pending::Release { user, leases, refunds })
            .collect()
    }

    /// One `ZADD XX` per user pushing the expiry of every lease this
    /// instance holds a TTL ahead. Skipped for a user whose node cannot be
    /// asked; a lease that lapses meanwhile is not brought back (`XX`), and
    /// its turn runs on without a slot rather than block its user.
    pub(super) fn renewals(&self) -> Batch {
        if self.held.is_empty() {
            return Vec::new();
        }
        let ttl_ms = self.lease_ttl_ms();
        let expires_at_ms = self.clock.now_ms().saturating_add(ttl_ms);
        let mut by_user: HashMap<&UserId, Vec<LeaseId>> = HashMap::new();
        for (id, user) in &self.held {
            by_user.entry(user).or_default().push(*id);
        }
        by_user
            .into_iter()
            .filter(|(user, _)| self.routes(user))
            .map(|(user, leases)| Pending::Renew {
                user: user.clone(),
                leases,
                expires_at_ms,
                ttl_ms,
            })
            .collect()
    }
}

/// Adds a refund of `tokens` to the bucket `index` of `window`, merged with
/// one to the same bucket; none once the bucket is past being anyone's
/// previous window (it has expired, or is about to, and counts for nothing).
fn add_refund(
    refunds: &mut Vec<TokenRefund>,
    window: Window,
    index: i64,
    tokens: u64,
    now_ms: i64,
) {
    let ends_at = index.saturating_add(2).saturating_mul(window.millis());
    if ends_at <= now_ms || tokens == 0 {
        return;
    }
    match refunds.iter_mut().find(|r| r.window == window && r.index == index) {
        Some(refund) => refund.tokens = refund.tokens.saturating_add(tokens),
        None => refunds.push(TokenRefund { window, index, tokens }),
    }
}
