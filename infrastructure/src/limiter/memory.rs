//! The in-process counters: the same contract as the Redis script, for one
//! instance. Used when no Redis is configured and for `fallback = local`.
//! A slot is a count per user, given back when its lease is dropped, and so
//! is the unused part of a token reservation; nothing here expires, because
//! nothing can outlive this process.
//!
//! Every request's handle decides here on its own thread, so the counters
//! are split into shards by user, each behind its own lock: a user's counts
//! all live in one shard (a check-then-increment is one critical section),
//! and users of different shards never wait for each other. A lock is held
//! for a few map operations, never across an `.await`.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Mutex, MutexGuard, PoisonError};

use pantheon_domain::UserId;
use pantheon_domain::limiter::{
    Counts, Limits, LocalLimiter, Refund, TokenCost, Verdict, Window, WindowCounts, decide,
    window_index,
};

/// Shards of the counters: a few per core is enough for callers to rarely
/// meet on one lock.
const SHARDS: usize = 64;

/// What a counter counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Unit {
    Turns,
    Tokens,
}

/// One shard: counters by user, unit, window and window index, and slots
/// taken by user.
#[derive(Debug, Default)]
struct Shard {
    counts: HashMap<(UserId, Unit, Window, i64), u64>,
    active: HashMap<UserId, u64>,
}

impl Shard {
    fn read(&self, user: &UserId, unit: Unit, window: Window, now_ms: i64) -> WindowCounts {
        let index = window_index(window, now_ms);
        let get = |i| self.counts.get(&(user.clone(), unit, window, i)).copied().unwrap_or(0);
        WindowCounts { current: get(index), previous: get(index - 1) }
    }

    fn counts(&self, user: &UserId, now_ms: i64) -> Counts {
        Counts {
            minute: self.read(user, Unit::Turns, Window::Minute, now_ms),
            hour: self.read(user, Unit::Turns, Window::Hour, now_ms),
            active: self.active.get(user).copied().unwrap_or(0),
            tokens_minute: self.read(user, Unit::Tokens, Window::Minute, now_ms),
            tokens_hour: self.read(user, Unit::Tokens, Window::Hour, now_ms),
        }
    }
}

/// The counters, sharded by user.
#[derive(Debug)]
pub struct MemoryCounters {
    shards: Box<[Mutex<Shard>]>,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for MemoryCounters {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }
}

impl MemoryCounters {
    /// The shard holding `user`. A panic while one was held leaves it
    /// consistent enough (every change is a counter bump), so poisoning is
    /// ignored.
    fn shard(&self, user: &UserId) -> MutexGuard<'_, Shard> {
        // `SHARDS` fits any usize; the modulo keeps the index in range.
        let index = usize::try_from(self.hasher.hash_one(user) % SHARDS as u64).unwrap_or(0);
        self.shards[index].lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl LocalLimiter for MemoryCounters {
    fn counts(&self, user: &UserId, now_ms: i64) -> Counts {
        self.shard(user).counts(user, now_ms)
    }

    fn check(&self, user: &UserId, limits: Limits, cost: TokenCost, now_ms: i64) -> Verdict {
        let mut shard = self.shard(user);
        let verdict = decide(limits, shard.counts(user, now_ms), cost, now_ms);
        if let Verdict::Admitted { reservation, .. } = &verdict {
            for window in Window::ALL {
                let key = (user.clone(), Unit::Turns, window, window_index(window, now_ms));
                *shard.counts.entry(key).or_insert(0) += 1;
            }
            if let Some(reservation) = reservation {
                for (window, index) in Window::ALL.into_iter().zip(reservation.buckets) {
                    let Some(index) = index else { continue };
                    let charged = shard.counts.entry((user.clone(), Unit::Tokens, window, index));
                    *charged.or_insert(0) += reservation.total();
                }
            }
            *shard.active.entry(user.clone()).or_insert(0) += 1;
        }
        verdict
    }

    fn release(&self, user: &UserId) {
        let mut shard = self.shard(user);
        if let Some(active) = shard.active.get_mut(user) {
            *active = active.saturating_sub(1);
            if *active == 0 {
                shard.active.remove(user);
            }
        }
    }

    fn refund(&self, user: &UserId, refund: Refund) {
        let mut shard = self.shard(user);
        for (window, index) in Window::ALL.into_iter().zip(refund.buckets) {
            let Some(index) = index else { continue };
            if let Some(charged) =
                shard.counts.get_mut(&(user.clone(), Unit::Tokens, window, index))
            {
                *charged = charged.saturating_sub(refund.tokens);
            }
        }
    }

    fn sweep(&self, now_ms: i64) {
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            shard
                .counts
                .retain(|(_, _, window, index), _| *index >= window_index(*window, now_ms) - 1);
        }
    }
}
