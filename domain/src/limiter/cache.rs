//! The over-limit cache: users known to be refused until an instant,
//! answered without asking Redis. Exact for a turn window: what it holds
//! only grows until its entries leave, and `retry_at` is the instant enough
//! of them have.
//!
//! Shared by the limiter task (which fills it from Redis's verdicts) and
//! every [`LimiterHandle`](super::LimiterHandle) (which answers from it
//! before using the mailbox): a refusal of a known over-limit user costs a
//! map lookup on the request's own thread, not a round trip through the
//! task. The lock is held for one map operation, never across an `.await`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::answer::Denial;
use super::limits::Limits;
use crate::ids::UserId;

/// Entries beyond this are not added (after a sweep): a flood of distinct
/// over-limit users must not grow memory without bound.
const MAX_ENTRIES: usize = 100_000;

/// Denials by user, each for the limits it was made under: a token of
/// another tier finds no entry (a different `limits`) and is asked about
/// afresh, and its own denial replaces the other. Under a token budget an
/// entry also answers only a turn asking for the same smallest reservation:
/// another size could fit the token windows at another time.
///
/// Every check of every turn looks here first, and almost all of them find
/// nothing, so the count of entries is kept beside the map: an empty cache
/// answers without taking the lock. A lookup racing an insert may miss it;
/// the task looks again before it asks Redis.
#[derive(Debug, Default)]
pub struct OverLimitCache {
    entries: Mutex<HashMap<UserId, Denial>>,
    len: AtomicUsize,
    /// Refusals answered from here, for the metrics.
    hits: AtomicU64,
}

impl OverLimitCache {
    /// The map; a panic elsewhere while it was held leaves it consistent
    /// (every operation is one map call), so poisoning is ignored.
    fn entries(&self) -> MutexGuard<'_, HashMap<UserId, Denial>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Publishes the count after a change, under the lock.
    fn counted(&self, entries: &HashMap<UserId, Denial>) {
        self.len.store(entries.len(), Ordering::Release);
    }

    /// The cached denial of `user` under `limits` for a turn whose smallest
    /// reservation is `requested` (`None` without a token budget) at
    /// `now_ms`, with its reset times brought up to date; `None` once
    /// `retry_at` has come.
    pub fn get(
        &self,
        user: &UserId,
        limits: Limits,
        requested: Option<u64>,
        now_ms: i64,
    ) -> Option<Denial> {
        self.find(user, limits, now_ms, |d| d.requested == requested)
    }

    /// [`OverLimitCache::get`] for a turn whose smallest reservation is not
    /// known yet, only bounded: at most `at_most`. Still exact: a cached
    /// denial is one by a turn window with no token window violated, and a
    /// turn no larger than what each token window had left then fits them
    /// until `retry_at` too (that room only grows while the user is
    /// refused), so it gets the same verdict at the same time.
    pub fn get_within(
        &self,
        user: &UserId,
        limits: Limits,
        at_most: u64,
        now_ms: i64,
    ) -> Option<Denial> {
        self.find(user, limits, now_ms, |d| {
            d.tokens.iter().flatten().all(|u| at_most <= u.remaining)
        })
    }

    fn find(
        &self,
        user: &UserId,
        limits: Limits,
        now_ms: i64,
        answers: impl Fn(&Denial) -> bool,
    ) -> Option<Denial> {
        if self.len.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut entries = self.entries();
        let denial = entries.get(user).filter(|d| d.limits == limits && answers(d))?;
        if now_ms >= denial.retry_at_ms {
            entries.remove(user);
            self.counted(&entries);
            return None;
        }
        let mut denial = denial.clone();
        drop(entries);
        for usage in denial.usage.iter_mut().chain(denial.tokens.iter_mut().flatten()) {
            usage.reset_ms = denial.retry_at_ms - now_ms;
        }
        denial.now_ms = now_ms;
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(denial)
    }

    /// How many refusals were answered from the cache.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Remembers a denial until its `retry_at`; one by concurrency alone is
    /// not kept (see [`Denial::cacheable`]).
    pub fn insert(&self, user: &UserId, denial: &Denial) {
        if !denial.cacheable() {
            return;
        }
        let mut entries = self.entries();
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(user) {
            entries.retain(|_, d| d.retry_at_ms > denial.now_ms);
            self.counted(&entries);
            if entries.len() >= MAX_ENTRIES {
                return;
            }
        }
        entries.insert(user.clone(), denial.clone());
        self.counted(&entries);
    }

    /// Drops denials whose `retry_at` has passed.
    pub fn sweep(&self, now_ms: i64) {
        let mut entries = self.entries();
        entries.retain(|_, d| d.retry_at_ms > now_ms);
        self.counted(&entries);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::{Policy, Window, WindowUsage};

    const LIMITS: Limits = Limits {
        per_minute: 2,
        per_hour: 100,
        max_concurrent: 4,
        tokens_per_minute: None,
        tokens_per_hour: None,
    };

    fn user(name: &str) -> UserId {
        UserId::parse(name).unwrap_or_else(|_| unreachable!())
    }

    fn denial(limits: Limits, now_ms: i64, retry_at_ms: i64) -> Denial {
        let usage = |window, limit| WindowUsage { window, limit, remaining: 0, reset_ms: 0 };
        Denial {
            limits,
            usage: [usage(Window::Minute, limits.per_minute), usage(Window::Hour, limits.per_hour)],
            violated: vec![Policy::Minute],
            retry_at_ms,
            binding: Policy::Minute,
            active: 0,
            tokens: [None, None],
            requested: None,
            now_ms,
        }
    }

    #[test]
    fn a_denial_is_answered_until_its_retry_time_with_resets_brought_up_to_date() {
        let cache = OverLimitCache::default();
        assert_eq!(cache.get(&user("alice"), LIMITS, None, 1_000), None);
        cache.insert(&user("alice"), &denial(LIMITS, 1_000, 5_000));
        let hit = cache.get(&user("alice"), LIMITS, None, 2_000).unwrap_or_else(|| unreachable!());
        assert_eq!(
            (hit.now_ms, hit.usage[0].reset_ms, hit.usage[1].reset_ms),
            (2_000, 3_000, 3_000)
        );
        assert_eq!(cache.get(&user("bob"), LIMITS, None, 2_000), None);
        assert_eq!(cache.get(&user("alice"), LIMITS, None, 5_000), None);
        // Expired on that read, and gone: the lock-free emptiness check holds.
        assert_eq!(cache.len.load(Ordering::Acquire), 0);
    }

    #[test]
    fn other_limits_find_nothing_and_their_denial_replaces_the_entry() {
        let cache = OverLimitCache::default();
        let pro = Limits::turns(50, 1_000, 4);
        cache.insert(&user("alice"), &denial(LIMITS, 1_000, 5_000));
        assert_eq!(cache.get(&user("alice"), pro, None, 2_000), None);
        cache.insert(&user("alice"), &denial(pro, 2_000, 9_000));
        assert_eq!(cache.get(&user("alice"), LIMITS, None, 3_000), None);
        assert_eq!(cache.get(&user("alice"), pro, None, 3_000).map(|d| d.retry_at_ms), Some(9_000));
    }

    #[test]
    fn under_a_token_budget_only_the_same_smallest_reservation_is_answered() {
        let cache = OverLimitCache::default();
        let budget = Limits { tokens_per_minute: Some(1_000), ..LIMITS };
        cache.insert(
            &user("alice"),
            &Denial { requested: Some(116), ..denial(budget, 1_000, 5_000) },
        );
        assert_eq!(cache.get(&user("alice"), budget, Some(500), 2_000), None);
        assert!(cache.get(&user("alice"), budget, Some(116), 2_000).is_some());
        // A token window refused: a refund may let it in at any time.
        let by_tokens = Denial {
            violated: vec![Policy::TokensMinute],
            binding: Policy::TokensMinute,
            requested: Some(116),
            ..denial(budget, 1_000, 5_000)
        };
        cache.insert(&user("bob"), &by_tokens);
        assert_eq!(cache.get(&user("bob"), budget, Some(116), 2_000), None);
    }

    #[test]
    fn a_turn_of_unknown_size_is_answered_only_within_the_token_room_the_denial_saw() {
        let cache = OverLimitCache::default();
        let budget = Limits { tokens_per_minute: Some(1_000), ..LIMITS };
        let room =
            WindowUsage { window: Window::Minute, limit: 1_000, remaining: 300, reset_ms: 0 };
        let refused = Denial {
            requested: Some(116),
            tokens: [Some(room), None],
            ..denial(budget, 1_000, 5_000)
        };
        cache.insert(&user("alice"), &refused);
        assert!(cache.get_within(&user("alice"), budget, 300, 2_000).is_some());
        // Larger, it might meet the token window too, and retry later.
        assert_eq!(cache.get_within(&user("alice"), budget, 301, 2_000), None);
        assert_eq!(cache.get_within(&user("alice"), LIMITS, 1, 2_000), None, "other limits");
    }

    #[test]
    fn a_sweep_drops_what_has_expired() {
        let cache = OverLimitCache::default();
        cache.insert(&user("alice"), &denial(LIMITS, 1_000, 5_000));
        cache.insert(&user("bob"), &denial(LIMITS, 1_000, 9_000));
        cache.sweep(6_000);
        assert_eq!(cache.len.load(Ordering::Acquire), 1);
        assert_eq!(
            cache.get(&user("bob"), LIMITS, None, 6_000).map(|d| d.retry_at_ms),
            Some(9_000)
        );
    }
}
