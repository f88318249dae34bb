//! The actor's lease upkeep: turning the releases queued by dropped leases
//! into `ZREM`s (and marks of token refunds), removing the leases of checks
//! that may have run although their call failed, and the periodic renewal
//! of the Redis leases this instance holds. Neither is a caller's check:
//! the loop sends them without waiting for the in-flight cap (see the
//! parent module).
//!
//! A release is kept until Redis answered it: one that failed, or whose
//! node cannot be asked now, is sent again once the node answers (every
//! release is idempotent — a `ZREM`, or a `ZADD XX` of the same mark, which
//! changes only a lease still held and which the user's next check consumes
//! once — so sending one twice gives nothing back twice).
//! Waiting for an answer first keeps a failing node from being sent more
//! failing calls, and puts the release after whatever the failed call left
//! queued in Redis (a check that runs once a stall ends).

use std::collections::HashMap;

use pantheon_domain::UserId;
use pantheon_domain::limiter::{LeaseId, LeaseStore, Window};

use super::LimiterActor;
use crate::limiter::redis_link::{Batch, LeaseRelease, Pending, TokenRefund};
use crate::limiter::topology::{NodeAddr, slot_of};

/// Releases kept waiting for their node at most; past it a lease is left
/// to lapse within `lease_ttl` (its reservation stays charged).
const MAX_UNRELEASED: usize = 16_384;

/// The Redis leases to remove that Redis has not yet answered for.
#[derive(Debug, Default)]
pub(super) struct Unreleased {
    /// To send with the next releases (its node permitting), or sent.
    pending: HashMap<LeaseId, Entry>,
    /// A call to their node failed: sent once the node answers a call.
    awaiting: HashMap<LeaseId, Entry>,
    /// Some of `pending` wait to be sent.
    due: bool,
}

#[derive(Debug)]
struct Entry {
    user: UserId,
    refund: Option<TokenRefund>,
    /// The `Idempotency-Key` its check claimed, to let go of.
    unclaim: Option<String>,
    /// In a pipeline now: not sent again until it fails.
    sent: bool,
}

/// When a kept release is to be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Upkeep {
    /// With the next releases (its node permitting).
    Due,
    /// Once its node answers a call again.
    AwaitingAnswer,
}

impl LimiterActor {
    pub(super) fn lease_ttl_ms(&self) -> i64 {
        i64::try_from(self.lease_ttl.as_millis()).unwrap_or(i64::MAX)
    }

    /// Applies the releases queued by dropped leases — in-process slots and
    /// refunds at once — and returns the Redis releases due: one item per
    /// user (a `ZREM`, and for leases with a refund their marks: see
    /// `check.lua`). A user whose node cannot be asked now keeps them until
    /// it answers again.
    pub(super) fn take_releases(&mut self) -> Batch {
        let now_ms = self.clock.now_ms();
        for released in self.shared.releases().take() {
            match released.store {
                LeaseStore::Local => {
                    self.local.release(&released.user);
                    if let Some(refund) = released.refund {
                        self.local.refund(&released.user, refund);
                    }
                    if let Some(key) = &released.unclaim {
                        self.local.unclaim(&released.user, key);
                    }
                }
                LeaseStore::Redis => {
                    self.held.remove(&released.id);
                    // An entry older than an hour has left the log: its
                    // refund would find nothing.
                    let refund = released
                        .refund
                        .filter(|r| r.tokens > 0 && r.at_ms > now_ms - Window::Hour.millis())
                        .map(|r| TokenRefund { at_ms: r.at_ms, tokens: r.tokens });
                    let unclaim = released.unclaim;
                    self.unrelease(released.id, released.user, refund, unclaim, Upkeep::Due);
                }
            }
        }
        let book = &mut self.unreleased;
        if !book.due {
            return Vec::new();
        }
        book.due = false;
        let redis = self.redis.as_ref();
        let mut by_user: HashMap<UserId, Vec<LeaseRelease>> = HashMap::new();
        for (id, entry) in &mut book.pending {
            if entry.sent || !redis.is_some_and(|r| r.routes(&entry.user)) {
                continue;
            }
            entry.sent = true;
            let release =
                LeaseRelease { id: *id, refund: entry.refund, unclaim: entry.unclaim.clone() };
            by_user.entry(entry.user.clone()).or_default().push(release);
        }
        by_user.into_iter().map(|(user, leases)| Pending::Release { user, leases }).collect()
    }

    /// Keeps `id` of `user` to remove from Redis (with `refund` if the
    /// removal finds it), sent as `when` says.
    pub(super) fn unrelease(
        &mut self,
        id: LeaseId,
        user: UserId,
        refund: Option<TokenRefund>,
        unclaim: Option<String>,
        when: Upkeep,
    ) {
        let book = &mut self.unreleased;
        if book.pending.len() + book.awaiting.len() >= MAX_UNRELEASED {
            return;
        }
        let entry = Entry { user, refund, unclaim, sent: false };
        match when {
            Upkeep::Due => {
                book.pending.insert(id, entry);
                book.due = true;
            }
            Upkeep::AwaitingAnswer => {
                book.awaiting.insert(id, entry);
            }
        }
    }

    /// Redis answered the release of `leases` (whatever it removed): done.
    pub(super) fn released(&mut self, leases: &[LeaseRelease]) {
        let book = &mut self.unreleased;
        for lease in leases {
            book.pending.remove(&lease.id);
            book.awaiting.remove(&lease.id);
        }
    }

    /// The release of `leases` was not answered: sent again once its node
    /// answers a call.
    pub(super) fn release_failed(&mut self, leases: &[LeaseRelease]) {
        let book = &mut self.unreleased;
        for lease in leases {
            if let Some(mut entry) = book.pending.remove(&lease.id) {
                entry.sent = false;
                book.awaiting.insert(lease.id, entry);
            }
        }
    }

    /// `node` answered a call (`None`: the layout changed, any node may
    /// now serve a user): the releases awaiting its answer are due.
    pub(super) fn node_answered(&mut self, node: Option<&NodeAddr>) {
        let book = &mut self.unreleased;
        let Some(redis) = &self.redis else { return };
        if book.awaiting.is_empty() {
            return;
        }
        let answered: Vec<LeaseId> = book
            .awaiting
            .iter()
            .filter(|(_, e)| node.is_none_or(|n| redis.nodes.node_for(slot_of(&e.user)) == *n))
            .map(|(id, _)| *id)
            .collect();
        for id in answered {
            if let Some(entry) = book.awaiting.remove(&id) {
                book.pending.insert(id, entry);
                book.due = true;
            }
        }
    }

    /// One script call per user pushing the expiry of every lease this
    /// instance holds a TTL past the Redis server's now. Skipped for a user
    /// whose node cannot be asked; a lease that lapses meanwhile is not
    /// brought back (`ZADD XX`), and its turn runs on without a slot rather
    /// than block its user.
    pub(super) fn renewals(&self) -> Batch {
        if self.held.is_empty() {
            return Vec::new();
        }
        let ttl_ms = self.lease_ttl_ms();
        let mut by_user: HashMap<&UserId, Vec<LeaseId>> = HashMap::new();
        for (id, user) in &self.held {
            by_user.entry(user).or_default().push(*id);
        }
        by_user
            .into_iter()
            .filter(|(user, _)| self.routes(user))
            .map(|(user, leases)| Pending::Renew { user: user.clone(), leases, ttl_ms })
            .collect()
    }
}
