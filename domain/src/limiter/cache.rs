//! The over-limit cache: users known to be refused until an instant,
//! answered without asking Redis. Exact, because counts only grow until the
//! windows roll over, and `retry_at` already accounts for the roll-over.
//!
//! Shared by the limiter task (which fills it from Redis's verdicts) and
//! every [`LimiterHandle`](super::LimiterHandle) (which answers from it
//! before using the mailbox): a refusal of a known over-limit user costs a
//! map lookup on the request's own thread, not a round trip through the
//! task. The lock is held for one map operation, never across an `.await`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::decision::Limits;
use super::protocol::Denial;
use crate::ids::UserId;

/// Entries beyond this are not added (after a sweep): a flood of distinct
/// over-limit users must not grow memory without bound.
const MAX_ENTRIES: usize = 100_000;

/// Denials by user, each for the limits it was made under: a token of
/// another tier finds no entry (a different `limits`) and is asked about
/// afresh, and its own denial replaces the other.
///
/// Every check of every turn looks here first, and almost all of them find
/// nothing, so the count of entries is kept beside the map: an empty cache
/// answers without taking the lock. A lookup racing an insert may miss it;
/// the task looks again before it asks Redis.
#[derive(Debug, Default)]
pub struct OverLimitCache {
    entries: Mutex<HashMap<UserId, Denial>>,
    len: AtomicUsize,
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

    /// The cached denial of `user` under `limits` at `now_ms`, with its
    /// reset times brought up to date; `None` once `retry_at` has come.
    pub fn get(&self, user: &UserId, limits: Limits, now_ms: i64) -> Option<Denial> {
        if self.len.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut entries = self.entries();
        let denial = entries.get(user).filter(|d| d.limits == limits)?;
        if now_ms >= denial.retry_at_ms {
            entries.remove(user);
            self.counted(&entries);
            return None;
        }
        let mut denial = denial.clone();
        drop(entries);
        for usage in &mut denial.usage {
            usage.reset_ms = denial.retry_at_ms - now_ms;
        }
        denial.now_ms = now_ms;
        Some(denial)
    }

    /// Remembers a denial until its `retry_at`.
    pub fn insert(&self, user: &UserId, denial: &Denial) {
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
