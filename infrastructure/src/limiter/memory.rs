//! The in-process counters: the same contract as the Redis script, for one
//! instance. Used when no Redis is configured and for `fallback = local`.
//! A slot is a count per user, given back when its lease is dropped (the
//! task hears of it through the release queue), and so is the unused part
//! of a token reservation; nothing here expires, because nothing can
//! outlive this process.

use std::collections::HashMap;

use pantheon_domain::UserId;
use pantheon_domain::limiter::{
    Counts, Limits, Refund, TokenCost, Verdict, Window, WindowCounts, decide, window_index,
};

/// What a counter counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Unit {
    Turns,
    Tokens,
}

/// Counters by user, unit, window and window index, and slots taken by user.
#[derive(Debug, Default)]
pub struct MemoryCounters {
    counts: HashMap<(UserId, Unit, Window, i64), u64>,
    active: HashMap<UserId, u64>,
}

impl MemoryCounters {
    fn read(&self, user: &UserId, unit: Unit, window: Window, now_ms: i64) -> WindowCounts {
        let index = window_index(window, now_ms);
        let get = |i| self.counts.get(&(user.clone(), unit, window, i)).copied().unwrap_or(0);
        WindowCounts { current: get(index), previous: get(index - 1) }
    }

    /// The counts of `user` at `now_ms`, touching nothing.
    pub fn counts(&self, user: &UserId, now_ms: i64) -> Counts {
        Counts {
            minute: self.read(user, Unit::Turns, Window::Minute, now_ms),
            hour: self.read(user, Unit::Turns, Window::Hour, now_ms),
            active: self.active.get(user).copied().unwrap_or(0),
            tokens_minute: self.read(user, Unit::Tokens, Window::Minute, now_ms),
            tokens_hour: self.read(user, Unit::Tokens, Window::Hour, now_ms),
        }
    }

    /// Decides and, when admitted, counts, takes a slot and charges the
    /// reservation: check-then-increment, atomic because the actor owns the
    /// counters alone.
    pub fn check(
        &mut self,
        user: &UserId,
        limits: Limits,
        cost: TokenCost,
        now_ms: i64,
    ) -> Verdict {
        let verdict = decide(limits, self.counts(user, now_ms), cost, now_ms);
        if let Verdict::Admitted { reservation, .. } = &verdict {
            for window in Window::ALL {
                let key = (user.clone(), Unit::Turns, window, window_index(window, now_ms));
                *self.counts.entry(key).or_insert(0) += 1;
            }
            if let Some(reservation) = reservation {
                for (window, index) in Window::ALL.into_iter().zip(reservation.buckets) {
                    let Some(index) = index else { continue };
                    let charged = self.counts.entry((user.clone(), Unit::Tokens, window, index));
                    *charged.or_insert(0) += reservation.total();
                }
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

    /// Gives the unused tokens of a reservation back to the buckets it
    /// charged (those still kept: an older one counts for nothing now).
    pub fn refund(&mut self, user: &UserId, refund: Refund) {
        for (window, index) in Window::ALL.into_iter().zip(refund.buckets) {
            let Some(index) = index else { continue };
            if let Some(charged) = self.counts.get_mut(&(user.clone(), Unit::Tokens, window, index))
            {
                *charged = charged.saturating_sub(refund.tokens);
            }
        }
    }

    /// Drops counters too old to be anyone's current or previous window.
    pub fn sweep(&mut self, now_ms: i64) {
        self.counts.retain(|(_, _, window, index), _| *index >= window_index(*window, now_ms) - 1);
    }
}
