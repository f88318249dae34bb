//! The in-process counters: the same contract as the Redis script, for one
//! instance. Used when no Redis is configured and for `fallback = local`.
//! A slot is a count per user, given back when its lease is dropped (the
//! task hears of it through the release queue); nothing here expires,
//! because nothing can outlive this process.

use std::collections::HashMap;

use pantheon_domain::UserId;
use pantheon_domain::limiter::{
    Counts, Limits, Verdict, Window, WindowCounts, decide, window_index,
};

/// Counters by user, window and window index, and slots taken by user.
#[derive(Debug, Default)]
pub struct MemoryCounters {
    counts: HashMap<(UserId, Window, i64), u64>,
    active: HashMap<UserId, u64>,
}

impl MemoryCounters {
    fn read(&self, user: &UserId, window: Window, now_ms: i64) -> WindowCounts {
        let index = window_index(window, now_ms);
        let get = |i| self.counts.get(&(user.clone(), window, i)).copied().unwrap_or(0);
        WindowCounts { current: get(index), previous: get(index - 1) }
    }

    /// The counts of `user` at `now_ms`, touching nothing.
    pub fn counts(&self, user: &UserId, now_ms: i64) -> Counts {
        Counts {
            minute: self.read(user, Window::Minute, now_ms),
            hour: self.read(user, Window::Hour, now_ms),
            active: self.active.get(user).copied().unwrap_or(0),
        }
    }

    /// Decides and, when admitted, counts and takes a slot: check-then-
    /// increment, atomic because the actor owns the counters alone.
    pub fn check(&mut self, user: &UserId, limits: Limits, now_ms: i64) -> Verdict {
        let verdict = decide(limits, self.counts(user, now_ms), now_ms);
        if verdict.is_admitted() {
            for window in Window::ALL {
                let key = (user.clone(), window, window_index(window, now_ms));
                *self.counts.entry(key).or_insert(0) += 1;
            }
            *self.active.entry(user.clone()).or_insert(0) += 1;
        }
        verdict
    }

    /// Gives back a slot `check` took for `user`.
    pub fn release(&mut self, user: &UserId) {
        if let Some(active) = self.active.get_mut(user) {
            *active = active.saturating_sub(1);
            if *active == 0 {
                self.active.remove(user);
            }
        }
    }

    /// Drops counters too old to be anyone's current or previous window.
    pub fn sweep(&mut self, now_ms: i64) {
        self.counts.retain(|(_, window, index), _| *index >= window_index(*window, now_ms) - 1);
    }
}
