//! Concurrency leases: a running turn's hold on one of its user's slots.
//!
//! The limiter task makes a [`Lease`] when it admits a turn and the turn's
//! task owns it until the turn's end is persisted. Dropping it is the only
//! way to give the slot back, so a turn that ends any way at all — done,
//! failed, cancelled, panicked, or never started because its caller went
//! away before the answer arrived — releases it. The drop cannot await, so
//! it queues the release in [`Releases`] and wakes the task, which sends it
//! (batched with other releases, ahead of any check it sends next).
//!
//! Where the slot is held decides how it is released: a Redis lease is
//! removed from the user's sorted set (and, if the instance dies first, it
//! expires `rate_limit.lease_ttl_secs` after its last renewal); an
//! in-process one is a count in the [`LocalLimiter`], given back by the
//! drop itself (one short lock, no task involved).
//!
//! A lease also carries the turn's token [`Reservation`], if any. The turn
//! [`settles`](Lease::settle) it with its actual usage before the drop, and
//! the release then refunds the difference to the log entry that was
//! charged, in the same batch. A lease dropped unsettled (a panic) refunds
//! nothing: the reservation stays charged, the safe side.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

use super::limits::{Refund, Reservation};
use super::local::LocalLimiter;
use crate::ids::UserId;

/// A lease's member in the user's sorted set: a UUIDv7 (74 random bits),
/// so instances never collide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseId(u128);

impl LeaseId {
    /// A new random id.
    pub fn random() -> Self {
        Self(uuid::Uuid::now_v7().as_u128())
    }
}

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// Where a lease's slot is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseStore {
    /// In the user's sorted set in Redis.
    Redis,
    /// In the in-process counts ([`LocalLimiter`]).
    Local,
}

/// A lease given back, waiting for the task to send its release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released {
    /// The lease.
    pub id: LeaseId,
    /// Whose slot it held.
    pub user: UserId,
    /// Where.
    pub store: LeaseStore,
    /// The unused part of its reservation, when it was settled below it.
    pub refund: Option<Refund>,
    /// The `Idempotency-Key` this lease claimed, to let go of: its turn
    /// was never committed.
    pub unclaim: Option<String>,
}

/// Releases queued by dropped leases. Bounded by the number of leases alive
/// (each is queued once), so it needs no capacity of its own; the lock is
/// held for one push or one swap, never across an `.await`.
#[derive(Debug, Default)]
pub struct Releases {
    queue: Mutex<Vec<Released>>,
    wake: Notify,
}

impl Releases {
    fn push(&self, released: Released) {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner).push(released);
        self.wake.notify_one();
    }

    /// Everything queued so far.
    pub fn take(&self) -> Vec<Released> {
        std::mem::take(&mut *self.queue.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Resolves once a release was queued since the last wake (at once when
    /// one was queued before the call).
    pub async fn queued(&self) {
        self.wake.notified().await;
    }
}

/// Where a dropped lease gives its slot back.
#[derive(Debug)]
enum Returns {
    /// Queued for the limiter task to send.
    Queue(Arc<Releases>),
    /// Straight into the in-process counts.
    Local(Arc<dyn LocalLimiter>),
}

/// A held slot (and its token reservation); dropping it releases the slot.
#[derive(Debug)]
pub struct Lease {
    id: LeaseId,
    user: UserId,
    store: LeaseStore,
    returns: Returns,
    reservation: Option<Reservation>,
    used: Option<u64>,
    /// The key the check claimed, until the turn is committed.
    claim: Option<String>,
}

impl Lease {
    /// A lease the task just took for `user` in `store`; `releases` is where
    /// its drop queues the release.
    pub fn new(id: LeaseId, user: UserId, store: LeaseStore, releases: Arc<Releases>) -> Self {
        let returns = Returns::Queue(releases);
        Self { id, user, store, returns, reservation: None, used: None, claim: None }
    }

    /// A slot `local` just gave `user`: the drop gives it back there.
    pub fn local(user: UserId, local: Arc<dyn LocalLimiter>) -> Self {
        let returns = Returns::Local(local);
        Self {
            id: LeaseId::random(),
            user,
            store: LeaseStore::Local,
            returns,
            reservation: None,
            used: None,
            claim: None,
        }
    }

    /// The lease with the tokens its admission reserved.
    #[must_use]
    pub fn with_reservation(mut self, reservation: Option<Reservation>) -> Self {
        self.reservation = reservation;
        self
    }

    /// The lease of a check that claimed `key` (an `Idempotency-Key`):
    /// dropped before [`Lease::keep_claim`], it lets go of the claim too, so
    /// a retry of a turn that was never committed is a new attempt.
    #[must_use]
    pub fn with_claim(mut self, key: Option<String>) -> Self {
        self.claim = key;
        self
    }

    /// The turn is committed: its claim stays, whatever becomes of it.
    pub fn keep_claim(&mut self) {
        self.claim = None;
    }

    /// The tokens reserved for the turn, when a budget applies.
    pub fn reservation(&self) -> Option<Reservation> {
        self.reservation
    }

    /// Records what the turn actually used, so the release refunds the rest
    /// of its reservation (never more than it charged).
    pub fn settle(&mut self, used: u64) {
        self.used = Some(used);
    }

    /// The lease's id.
    pub fn id(&self) -> LeaseId {
        self.id
    }

    /// Where the slot is held.
    pub fn store(&self) -> LeaseStore {
        self.store
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let refund = match (self.reservation, self.used) {
            (Some(r), Some(used)) if used < r.total() => {
                Some(Refund { tokens: r.total() - used, at_ms: r.at_ms })
            }
            _ => None,
        };
        match &self.returns {
            Returns::Queue(releases) => releases.push(Released {
                id: self.id,
                user: self.user.clone(),
                store: self.store,
                refund,
                unclaim: self.claim.take(),
            }),
            Returns::Local(local) => {
                local.release(&self.user);
                if let Some(refund) = refund {
                    local.refund(&self.user, refund);
                }
                if let Some(key) = self.claim.take() {
                    local.unclaim(&self.user, &key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_dropped_lease_queues_its_release_and_wakes_the_task() {
        let releases = Arc::new(Releases::default());
        let user = UserId::parse("alice").unwrap_or_else(|_| unreachable!());
        let lease =
            Lease::new(LeaseId::random(), user.clone(), LeaseStore::Redis, releases.clone());
        let id = lease.id();
        assert!(releases.take().is_empty());
        drop(lease);
        // The wake was stored: the task waiting after the drop is woken at once.
        releases.queued().await;
        let released = Released {
            id,
            user: user.clone(),
            store: LeaseStore::Redis,
            refund: None,
            unclaim: None,
        };
        assert_eq!(releases.take(), vec![released]);
        assert!(releases.take().is_empty());
    }

    #[test]
    fn a_settled_lease_refunds_the_unused_part_of_its_reservation_and_an_unsettled_one_none() {
        let releases = Arc::new(Releases::default());
        let user = UserId::parse("alice").unwrap_or_else(|_| unreachable!());
        let reservation = Reservation { input: 100, output_cap: 400, at_ms: 7 };
        let lease = |used: Option<u64>| {
            let mut lease =
                Lease::new(LeaseId::random(), user.clone(), LeaseStore::Local, releases.clone())
                    .with_reservation(Some(reservation));
            if let Some(used) = used {
                lease.settle(used);
            }
            lease
        };
        drop(lease(Some(130)));
        drop(lease(Some(600)));
        drop(lease(None));
        let refunds: Vec<_> = releases.take().into_iter().map(|r| r.refund).collect();
        assert_eq!(refunds, vec![Some(Refund { tokens: 370, at_ms: 7 }), None, None]);
    }

    #[test]
    fn ids_are_32_hex_digits_and_differ() {
        let (a, b) = (LeaseId::random(), LeaseId::random());
        assert_ne!(a, b);
        assert_eq!(a.to_string().len(), 32);
        assert!(a.to_string().chars().all(|c| c.is_ascii_hexdigit()));
    }
}
