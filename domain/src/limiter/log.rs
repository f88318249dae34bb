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
mod tests {
    use super::*;

    const T0: i64 = 1_700_000_000_000;
    const MINUTE: i64 = 60_000;

    fn turns(per_minute: u32, per_hour: u32) -> Limits {
        Limits::turns(per_minute, per_hour, u32::MAX)
    }

    const ONE: TokenCost = TokenCost { input: 0, min_output: 0, max_output: 0 };

    #[test]
    fn a_burst_at_the_end_of_a_minute_holds_the_next_minute_to_the_limit() {
        let limits = turns(20, 1_000);
        let mut log = UsageLog::default();
        let mut admitted = Vec::new();
        // 20 turns in the last 100 ms of a minute, then one try every 100 ms.
        let burst = (0..20).map(|i| T0 + 59_900 + i * 5);
        let steady = (1..=700).map(|i| T0 + 60_000 + i * 100);
        for now in burst.chain(steady) {
            if log.check(limits, ONE, 0, now).admitted {
                admitted.push(now);
            }
        }
        let most = admitted
            .iter()
            .map(|&t| admitted.iter().filter(|&&u| u > t - MINUTE && u <= t).count())
            .max();
        assert_eq!(most, Some(20));
        // The first steady turn goes in as the first of the burst leaves.
        assert_eq!(admitted[20], T0 + 59_900 + MINUTE);
    }

    #[test]
    fn a_refusal_names_the_exact_instant_the_turn_fits() {
        let limits = turns(3, 100);
        let mut log = UsageLog::default();
        for now in [T0, T0 + 10_000, T0 + 20_000] {
            assert!(log.check(limits, ONE, 0, now).admitted);
        }
        let refused = log.check(limits, ONE, 0, T0 + 30_000);
        assert!(!refused.admitted);
        assert_eq!(refused.frees_at[0], T0 + MINUTE);
        assert!(!log.check(limits, ONE, 0, T0 + MINUTE - 1).admitted);
        assert!(log.check(limits, ONE, 0, T0 + MINUTE).admitted);
    }

    #[test]
    fn a_limit_of_one_waits_a_window_after_its_turn() {
        let mut log = UsageLog::default();
        let first = log.check(turns(1, 100), ONE, 0, T0);
        assert!(first.admitted);
        assert_eq!(first.frees_at[0], T0 + MINUTE, "the next turn fits a minute on");
        let refused = log.check(turns(1, 100), ONE, 0, T0 + 1);
        assert_eq!((refused.admitted, refused.frees_at[0]), (false, T0 + MINUTE));
    }

    #[test]
    fn the_clock_never_goes_back_and_a_zero_limit_never_fits() {
        let mut log = UsageLog::default();
        assert!(log.check(turns(5, 5), ONE, 0, T0).admitted);
        let late = log.check(turns(5, 5), ONE, 0, T0 - 5_000);
        assert_eq!(late.at_ms, T0, "decided and stamped at the log's time");
        let never = log.check(turns(0, 5), ONE, 0, T0);
        assert_eq!((never.admitted, never.frees_at[0]), (false, i64::MAX));
    }

    fn budget(per_minute: u32) -> Limits {
        Limits { tokens_per_minute: Some(per_minute), ..turns(1_000, 1_000) }
    }

    fn cost(input: u64) -> TokenCost {
        TokenCost { input, min_output: 10, max_output: 100 }
    }

    #[test]
    fn tokens_reserve_the_output_cap_and_wait_for_enough_to_leave() {
        let mut log = UsageLog::default();
        let a = log.check(budget(300), cost(50), 0, T0);
        assert_eq!((a.admitted, a.output_cap), (true, 100));
        let b = log.check(budget(300), cost(50), 0, T0 + 1_000);
        let c = log.check(budget(300), cost(50), 0, T0 + 2_000);
        // 150 + 150 = 300: the third gets nothing to write and is refused.
        assert!(b.admitted);
        assert!(!c.admitted);
        assert_eq!(log.load(Policy::TokensMinute), 300);
        // It needs 60 of the 300 back: the first entry's 150 leave at T0 + W.
        assert_eq!(c.frees_at[2], T0 + MINUTE);
        // A refund of the first entry brings the room back at once.
        log.refund(T0, 100);
        assert_eq!(log.load(Policy::TokensMinute), 200);
        assert!(log.check(budget(300), cost(50), 0, T0 + 3_000).admitted);
    }

    #[test]
    fn a_refund_finds_nothing_once_its_entry_left_and_never_goes_below_zero() {
        let mut log = UsageLog::default();
        assert!(log.check(budget(1_000), cost(50), 0, T0).admitted);
        assert!(log.check(budget(1_000), cost(50), 0, T0 + 2 * MINUTE).admitted);
        assert_eq!(log.load(Policy::TokensMinute), 150);
        // The first entry left the minute but not the hour: the hour sees it.
        log.refund(T0, 1_000);
        assert_eq!(
            (log.load(Policy::TokensMinute), log.load(Policy::TokensHour)),
            (150, 150),
            "only the first entry's 150 could go"
        );
        log.advance(T0 + 3_600_000);
        log.refund(T0, 10);
        assert_eq!(log.load(Policy::TokensHour), 150);
    }

    #[test]
    fn entries_of_one_instant_share_refunds() {
        let mut log = UsageLog::default();
        let limits = budget(10_000);
        assert!(log.check(limits, cost(400), 0, T0).admitted); // 500
        assert!(log.check(limits, cost(0), 0, T0).admitted); // 100
        log.refund(T0, 90);
        log.refund(T0, 450);
        assert_eq!(log.load(Policy::TokensMinute), 60);
        assert!(log.entries().all(|e| e.at_ms == T0));
    }
    /// A tiny deterministic generator: tests need no `rand`.
    struct XorShift(u64);

    impl XorShift {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    /// What a window holds, counted from scratch over every entry ever made
    /// (with refunds applied): the definition the log must agree with.
    fn brute(made: &[Entry], policy: Policy, now: i64) -> u64 {
        let Some(window) = policy.window() else { return 0 };
        let inside = made.iter().filter(|e| e.at_ms > now - window.millis());
        if policy.is_tokens() { inside.map(|e| e.tokens).sum() } else { inside.count() as u64 }
    }

    #[test]
    fn random_arrivals_and_refunds_never_put_more_than_the_limit_in_any_window() {
        let limits = Limits {
            per_minute: 6,
            per_hour: 40,
            max_concurrent: u32::MAX,
            tokens_per_minute: Some(900),
            tokens_per_hour: Some(4_000),
        };
        for seed in 1..=40u64 {
            let mut rng = XorShift(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let (mut log, mut made, mut now) = (UsageLog::default(), Vec::<Entry>::new(), T0);
            for _ in 0..600 {
                now +=
                    [0, 1, 999, 7_000, 59_999, 61_000][rng.below(6) as usize] + rng.below(3) as i64;
                let cost = TokenCost { input: rng.below(200), min_output: 10, max_output: 150 };
                if rng.below(4) == 0 && !made.is_empty() {
                    // A refund of a random earlier entry, maybe gone.
                    let at = made[rng.below(made.len() as u64) as usize].at_ms;
                    let tokens = rng.below(300);
                    log.refund(at, tokens);
                    let inside_hour = at > log.clock - Window::Hour.millis();
                    let mut left = if inside_hour { tokens } else { 0 };
                    for e in made.iter_mut().filter(|e| e.at_ms == at) {
                        let taken = e.tokens.min(left);
                        e.tokens -= taken;
                        left -= taken;
                    }
                }
                let before = log.clone();
                let tally = log.check(limits, cost, 0, now);
                for (i, policy) in Policy::MEASURED.into_iter().enumerate() {
                    assert_eq!(tally.loads[i], brute(&made, policy, now), "{policy:?} seed {seed}");
                }
                if tally.admitted {
                    made.push(*log.entries().last().unwrap_or_else(|| unreachable!()));
                    for policy in Policy::MEASURED {
                        let limit = u64::from(limits.of(policy).unwrap_or(u32::MAX));
                        assert!(brute(&made, policy, now) <= limit, "{policy:?} seed {seed}");
                    }
                    continue;
                }
                // The refusal's instant is exact: the same request on the
                // same log is refused 1 ms before it and admitted at it.
                let retry = Policy::MEASURED
                    .into_iter()
                    .zip(tally.frees_at)
                    .filter(|&(p, _)| {
                        let limit = u64::from(limits.of(p).unwrap_or(u32::MAX));
                        brute(&made, p, now) + ask(p, cost) > limit
                    })
                    .map(|(_, at)| at)
                    .max()
                    .unwrap_or(now);
                if retry < i64::MAX && retry > now {
                    assert!(!before.clone().check(limits, cost, 0, retry - 1).admitted);
                    assert!(before.clone().check(limits, cost, 0, retry).admitted, "seed {seed}");
                }
            }
        }
    }
}
