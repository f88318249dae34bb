//! A user's log of admitted turns: the state every window is read from, so
//! that "at most L in any W" holds exactly. Each admitted turn is one entry
//! (its instant and the tokens it holds), kept while it is inside the hour;
//! a window's turns are the entries younger than the window, its tokens the
//! sum of their amounts. The entries inside the minute are a suffix of the
//! log, so one log serves all four windows, and the running sums make a
//! check cost what leaves the windows since the last one, not the log's
//! length.
//!
//! This is the model the Redis script (`check.lua`) follows step for step
//! and the in-process backend runs as is; a differential test holds the two
//! together. Two rules make it deterministic across instances:
//!
//! - The log's clock never goes back: a check is decided at the latest time
//!   the log has been read at, and an entry is stamped with it, so entries
//!   stay in order and an instance whose clock lags cannot count again what
//!   a faster one already let go.
//! - Entries that share an instant leave every window together, so a refund
//!   for an instant may land on any of them: it is spread over them in
//!   order, none below zero, and finds nothing once they are gone.

use std::collections::VecDeque;

use super::limits::{Limits, Policy, TokenCost};
use super::window::Window;

/// One admitted turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The log time of its admission (ms since the epoch).
    pub at_ms: i64,
    /// Tokens it holds: its reservation, less what was refunded (0 without
    /// a token budget).
    pub tokens: u64,
}

/// What one check (or peek) read and decided: what the store's atomic step
/// returns, and all a verdict is built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// The turn was admitted: its entry is in the log and its slot taken.
    pub admitted: bool,
    /// The log time the decision was made at, and an admission's stamp.
    pub at_ms: i64,
    /// Turns holding a slot, before this one.
    pub active: u64,
    /// The most output a reservation holds: `min(max_output, room left after
    /// the input in every budgeted window)`; 0 without a budget.
    pub output_cap: u64,
    /// Per measured window ([`Policy::MEASURED`]), what it held before the
    /// decision: turns, or tokens.
    pub loads: [u64; 4],
    /// Per measured window, the earliest log time at which the next request
    /// fits it if nothing else is admitted or refunded: after an admission
    /// or in a peek, one more turn (token); after a refusal, this request.
    /// `at_ms` when that is now; `i64::MAX` when never (a limit below the
    /// cost).
    pub frees_at: [i64; 4],
}

/// A user's log. Its clock starts unset, so the first check sets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageLog {
    entries: VecDeque<Entry>,
    /// The index of the first entry inside the minute.
    minute_start: usize,
    /// The tokens of the entries inside the minute.
    minute_tokens: u64,
    /// The tokens of every entry (all are inside the hour).
    hour_tokens: u64,
    /// The latest time the log was read at.
    clock: i64,
}

impl Default for UsageLog {
    fn default() -> Self {
        Self {
            entries: VecDeque::new(),
            minute_start: 0,
            minute_tokens: 0,
            hour_tokens: 0,
            clock: i64::MIN,
        }
    }
}

/// What one request asks of `policy`'s window: one turn, or its smallest
/// reservation.
pub(super) fn ask(policy: Policy, cost: TokenCost) -> u64 {
    if policy.is_tokens() { cost.smallest() } else { 1 }
}

impl UsageLog {
    /// Moves the clock to `now_ms` (never back) and lets go of the entries
    /// that left the minute and the hour; returns the clock.
    pub fn advance(&mut self, now_ms: i64) -> i64 {
        self.clock = self.clock.max(now_ms);
        let now = self.clock;
        let gone = |e: &Entry, w: Window| e.at_ms.saturating_add(w.millis()) <= now;
        while let Some(&entry) = self.entries.get(self.minute_start) {
            if !gone(&entry, Window::Minute) {
                break;
            }
            self.minute_tokens = self.minute_tokens.saturating_sub(entry.tokens);
            self.minute_start += 1;
        }
        // Whatever left the hour left the minute first: it is before
        // `minute_start`.
        while let Some(&entry) = self.entries.front() {
            if !gone(&entry, Window::Hour) {
                break;
            }
            self.entries.pop_front();
            self.hour_tokens = self.hour_tokens.saturating_sub(entry.tokens);
            self.minute_start = self.minute_start.saturating_sub(1);
        }
        now
    }

    /// The entries inside `window`, oldest first.
    fn inside(&self, window: Window) -> impl Iterator<Item = &Entry> {
        let start = match window {
            Window::Minute => self.minute_start,
            Window::Hour => 0,
        };
        self.entries.range(start.min(self.entries.len())..)
    }

    /// What `policy`'s window holds: turns, or tokens.
    pub fn load(&self, policy: Policy) -> u64 {
        match policy {
            Policy::Minute => {
                (self.entries.len() - self.minute_start.min(self.entries.len())) as u64
            }
            Policy::Hour => self.entries.len() as u64,
            Policy::TokensMinute => self.minute_tokens,
            Policy::TokensHour => self.hour_tokens,
            Policy::Concurrency => 0,
        }
    }

    /// The earliest log time by which entries worth at least `need` turns
    /// (tokens) have left `policy`'s window, counting `extra` (an entry
    /// about to be made) last: `clock` when `need` is 0, `i64::MAX` when the
    /// window never gives that much back.
    fn frees_at(&self, policy: Policy, need: u64, extra: Option<Entry>) -> i64 {
        let Some(window) = policy.window() else { return self.clock };
        if need == 0 {
            return self.clock;
        }
        let worth = |e: &Entry| if policy.is_tokens() { e.tokens } else { 1 };
        let mut freed = 0u64;
        for entry in self.inside(window).chain(extra.as_ref()) {
            freed = freed.saturating_add(worth(entry));
            if freed >= need {
                return entry.at_ms.saturating_add(window.millis());
            }
        }
        i64::MAX
    }

    /// The decision on a turn costing `cost` with `active` slots taken, at
    /// the log's clock (see [`Tally`]); changes nothing.
    pub fn decide(&self, limits: Limits, cost: TokenCost, active: u64) -> Tally {
        let budgeted = limits.has_token_budget();
        let loads = Policy::MEASURED.map(|p| self.load(p));
        let mut admitted = active < u64::from(limits.max_concurrent);
        let mut output_cap = if budgeted { cost.max_output } else { 0 };
        for (policy, load) in Policy::MEASURED.into_iter().zip(loads) {
            let Some(limit) = limits.of(policy).map(u64::from) else { continue };
            admitted &= load.saturating_add(ask(policy, cost)) <= limit;
            if policy.is_tokens() {
                output_cap = output_cap.min(limit.saturating_sub(load.saturating_add(cost.input)));
            }
        }
        let charge = if budgeted { cost.input.saturating_add(output_cap) } else { 0 };
        let entry = Entry { at_ms: self.clock, tokens: charge };
        let mut frees_at = [self.clock; 4];
        for ((policy, load), at) in Policy::MEASURED.into_iter().zip(loads).zip(&mut frees_at) {
            let Some(limit) = limits.of(policy).map(u64::from) else { continue };
            *at = if admitted {
                let taken = if policy.is_tokens() { charge } else { 1 };
                let need = load.saturating_add(taken).saturating_add(1).saturating_sub(limit);
                self.frees_at(policy, need, Some(entry))
            } else {
                let need = load.saturating_add(ask(policy, cost)).saturating_sub(limit);
                self.frees_at(policy, need, None)
            };
        }
        Tally { admitted, at_ms: self.clock, active, output_cap, loads, frees_at }
    }

    /// What a peek reports at the log's clock: the loads and, per window,
    /// when one more turn (token) fits; changes nothing.
    pub fn peek(&self, limits: Limits, active: u64) -> Tally {
        let loads = Policy::MEASURED.map(|p| self.load(p));
        let mut frees_at = [self.clock; 4];
        for ((policy, load), at) in Policy::MEASURED.into_iter().zip(loads).zip(&mut frees_at) {
            let Some(limit) = limits.of(policy).map(u64::from) else { continue };
            *at = self.frees_at(policy, load.saturating_add(1).saturating_sub(limit), None);
        }
        Tally { admitted: false, at_ms: self.clock, active, output_cap: 0, loads, frees_at }
    }

    /// Advances to `now_ms`, decides, and when admitted makes the entry.
    pub fn check(&mut self, limits: Limits, cost: TokenCost, active: u64, now_ms: i64) -> Tally {
        self.advance(now_ms);
        let tally = self.decide(limits, cost, active);
        if !tally.admitted && self.entries.is_empty() {
            // A log with no entries is no log: it keeps no clock either (as
            // the script deletes the key it trimmed empty).
            *self = Self::default();
        }
        if tally.admitted {
            let tokens = if limits.has_token_budget() {
                cost.input.saturating_add(tally.output_cap)
            } else {
                0
            };
            self.entries.push_back(Entry { at_ms: tally.at_ms, tokens });
            self.minute_tokens = self.minute_tokens.saturating_add(tokens);
            self.hour_tokens = self.hour_tokens.saturating_add(tokens);
        }
        tally
    }

    /// Gives `tokens` back to the entries stamped `at_ms`, in order, none
    /// below zero; nothing when they have left the log. The sums follow.
    pub fn refund(&mut self, at_ms: i64, tokens: u64) {
        let mut left = tokens;
        // Entries are in stamp order; the refunded one is usually among the
        // newest.
        let from = self.entries.partition_point(|e| e.at_ms < at_ms);
        for index in from..self.entries.len() {
            let Some(entry) = self.entries.get_mut(index) else { break };
            if entry.at_ms != at_ms || left == 0 {
                break;
            }
            let taken = entry.tokens.min(left);
            entry.tokens -= taken;
            left -= taken;
            self.hour_tokens = self.hour_tokens.saturating_sub(taken);
            if index >= self.minute_start {
                self.minute_tokens = self.minute_tokens.saturating_sub(taken);
            }
        }
    }

    /// The latest time the log was read at (`i64::MIN` before the first).
    pub fn clock(&self) -> i64 {
        self.clock
    }

    /// Whether nothing is left to remember.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries, oldest first (for tests and the differential check).
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter()
    }
}

#[cfg(test)]
mod tests;
