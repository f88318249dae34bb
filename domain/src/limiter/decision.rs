//! The verdict on one request, built from a [`Tally`]: it is admitted only
//! when one of its user's concurrency slots is free, it fits both turn
//! windows and (with token budgets) the smallest reservation it could live
//! with fits both token windows; the verdict carries what the response
//! headers need (limit, remaining and reset per window, turns running, when
//! to retry) and the tokens an admission reserved. Every backend returns a
//! tally (the Redis script, the in-process log), so every verdict is made
//! here, one way.

use super::answer::{Decision, Denial, RateLimitStatus};
use super::limits::{Limits, Policy, Reservation, TokenCost, TokenUsage, WindowUsage};
use super::log::{Tally, ask};
use super::window::Window;

/// The outcome of a check: the status an admission reports and what it
/// reserved, or the denial itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A slot is free, the request fits both windows and its smallest
    /// reservation fits both token windows; it took the slot, was logged
    /// and charged, and `status` reports the windows after that.
    Admitted {
        /// Usage after this turn, slots taken with it.
        status: RateLimitStatus,
        /// What was reserved; `None` without a token budget.
        reservation: Option<Reservation>,
    },
    /// The request does not fit; nothing is counted, no slot is taken.
    Limited(Denial),
}

impl Verdict {
    /// Whether the request was admitted (and must be counted).
    pub fn is_admitted(&self) -> bool {
        matches!(self, Verdict::Admitted { .. })
    }

    /// The per-window usage, minute first, whichever the outcome.
    pub fn usage(&self) -> &[WindowUsage; 2] {
        match self {
            Verdict::Admitted { status, .. } => &status.usage,
            Verdict::Limited(denial) => &denial.usage,
        }
    }

    /// The caller's decision, and what an admission reserved.
    pub fn into_decision(self) -> (Decision, Option<Reservation>) {
        match self {
            Verdict::Admitted { status, reservation } => (Decision::Admitted(status), reservation),
            Verdict::Limited(denial) => (Decision::Limited(denial), None),
        }
    }
}

impl RateLimitStatus {
    /// What a peek's `tally` reports under `limits` at the caller's
    /// `now_ms`.
    pub fn from_peek(limits: Limits, tally: &Tally, now_ms: i64) -> Self {
        let (usage, tokens) = peek_usage(limits, tally, now_ms);
        Self { limits, usage, active: tally.active, tokens }
    }
}

/// How long a refusal by concurrency alone asks the client to wait.
pub const CONCURRENCY_RETRY_MS: i64 = 1_000;

impl Verdict {
    /// The verdict `tally` (a check of a turn costing `cost` under `limits`)
    /// stands for, reported at the caller's `now_ms`. The store decided; this
    /// names why and when: the violated policies, the instant the request
    /// fits every window it broke (the latest of their `frees_at`, exact),
    /// and per window what is left and when the next one fits.
    pub fn from_tally(limits: Limits, cost: TokenCost, tally: &Tally, now_ms: i64) -> Self {
        let budgeted = limits.has_token_budget();
        let charge = if budgeted { cost.input.saturating_add(tally.output_cap) } else { 0 };
        let mut violated: Vec<Policy> = measured(limits, tally)
            .filter(|&(policy, limit, load, _)| load.saturating_add(ask(policy, cost)) > limit)
            .map(|(policy, ..)| policy)
            .collect();
        let windows_fit = violated.is_empty();
        if tally.active >= u64::from(limits.max_concurrent) {
            violated.push(Policy::Concurrency);
        }
        if tally.admitted {
            let taken = |policy: Policy| if policy.is_tokens() { charge } else { 1 };
            let after = |policy: Policy, limit: u64, load: u64, frees_at: i64| {
                report(policy, limit, load.saturating_add(taken(policy)), frees_at, now_ms)
            };
            let (usage, tokens) = reports(limits, tally, after);
            let active = tally.active.saturating_add(1);
            return Verdict::Admitted {
                status: RateLimitStatus { limits, usage, active, tokens },
                reservation: budgeted.then_some(Reservation {
                    input: cost.input,
                    output_cap: tally.output_cap,
                    at_ms: tally.at_ms,
                }),
            };
        }
        let requested = budgeted.then(|| cost.smallest());
        let (retry_at_ms, binding) = if windows_fit {
            // Refused for concurrency alone: the windows report as they are.
            (now_ms.saturating_add(CONCURRENCY_RETRY_MS), Policy::Concurrency)
        } else {
            // Entries only leave while the log is frozen, so every window
            // fits from the latest of the violated ones' instants on.
            measured(limits, tally)
                .filter(|(policy, ..)| violated.contains(policy))
                .enumerate()
                .map(|(order, (policy, .., frees_at))| ((frees_at, order), policy))
                .max_by_key(|&(key, _)| key)
                .map_or((now_ms, Policy::Minute), |((at, _), policy)| (at, policy))
        };
        let as_read = |policy: Policy, limit: u64, load: u64, frees_at: i64| {
            let mut usage = report(policy, limit, load, frees_at, now_ms);
            if binding != Policy::Concurrency {
                usage.reset_ms = retry_at_ms.saturating_sub(now_ms).max(0);
            }
            usage
        };
        let (usage, tokens) = reports(limits, tally, as_read);
        Verdict::Limited(Denial {
            limits,
            usage,
            violated,
            retry_at_ms,
            binding,
            active: tally.active,
            tokens,
            requested,
            now_ms,
        })
    }
}

/// The measured windows that have a limit, with their limit, load and
/// `frees_at`, in [`Policy::MEASURED`] order.
fn measured(limits: Limits, tally: &Tally) -> impl Iterator<Item = (Policy, u64, u64, i64)> + '_ {
    Policy::MEASURED.into_iter().enumerate().filter_map(move |(i, policy)| {
        let limit = u64::from(limits.of(policy)?);
        Some((policy, limit, tally.loads[i], tally.frees_at[i]))
    })
}

/// One window's report: `limit − load` left, and when nothing is left the
/// wait until `frees_at`.
fn report(policy: Policy, limit: u64, load: u64, frees_at: i64, now_ms: i64) -> WindowUsage {
    let remaining = limit.saturating_sub(load);
    WindowUsage {
        window: policy.window().unwrap_or(Window::Minute),
        limit: u32::try_from(limit).unwrap_or(u32::MAX),
        remaining,
        reset_ms: if remaining > 0 { 0 } else { frees_at.saturating_sub(now_ms).max(0) },
    }
}

/// The turn windows' and the token windows' reports, each made by `one`.
fn reports(
    limits: Limits,
    tally: &Tally,
    one: impl Fn(Policy, u64, u64, i64) -> WindowUsage,
) -> ([WindowUsage; 2], TokenUsage) {
    let mut turns = Window::ALL.map(|window| WindowUsage {
        window,
        limit: limits.limit(window),
        remaining: 0,
        reset_ms: 0,
    });
    let mut tokens: TokenUsage = [None; 2];
    for (policy, limit, load, frees_at) in measured(limits, tally) {
        let usage = one(policy, limit, load, frees_at);
        let slot = usize::from(policy.window() == Some(Window::Hour));
        if policy.is_tokens() {
            tokens[slot] = Some(usage);
        } else {
            turns[slot] = usage;
        }
    }
    (turns, tokens)
}

/// What a peek's `tally` reports: per window, what is left and when one
/// more fits.
fn peek_usage(limits: Limits, tally: &Tally, now_ms: i64) -> ([WindowUsage; 2], TokenUsage) {
    reports(limits, tally, |policy, limit, load, frees_at| {
        report(policy, limit, load, frees_at, now_ms)
    })
}

/// The `Retry-After` header value for a refusal: whole seconds until
/// `retry_at_ms`, rounded up so a client that obeys it is not refused again,
/// and at least 1.
pub fn retry_after_secs(retry_at_ms: i64, now_ms: i64) -> u64 {
    let ms = i128::from(retry_at_ms) - i128::from(now_ms);
    let secs = (ms + 999).div_euclid(1000).max(1);
    u64::try_from(secs).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::log::UsageLog;

    /// 30 s into a minute and 50 min 30 s into an hour.
    const NOW: i64 = 472_222 * 3_600_000 + 3_030_000;
    const MINUTE: i64 = 60_000;
    const NO_COST: TokenCost = TokenCost { input: 0, min_output: 0, max_output: 0 };

    fn limits(per_minute: u32, per_hour: u32) -> Limits {
        Limits::turns(per_minute, per_hour, 4)
    }

    /// A log holding one turn at each of `at`.
    fn log_of(at: &[i64]) -> UsageLog {
        let mut log = UsageLog::default();
        for &t in at {
            log.check(Limits::turns(u32::MAX, u32::MAX, u32::MAX), NO_COST, 0, t);
        }
        log
    }

    /// The verdict on one more turn at `now` with `active` slots taken; the
    /// log is left as it was.
    fn verdict(log: &UsageLog, limits: Limits, active: u64, now: i64) -> Verdict {
        let mut log = log.clone();
        let tally = log.check(limits, NO_COST, active, now);
        Verdict::from_tally(limits, NO_COST, &tally, now)
    }

    #[test]
    fn an_admitted_turn_reports_what_is_left_after_it() {
        let log = log_of(&[NOW - 70_000, NOW - 20_000, NOW - 10_000]);
        let v = verdict(&log, limits(5, 100), 1, NOW);
        let Verdict::Admitted { status, reservation } = v else { panic!("{v:?}") };
        let (usage, active) = (status.usage, status.active);
        // Two in the minute, three in the hour, and this one.
        assert_eq!(usage.map(|u| (u.remaining, u.reset_ms)), [(2, 0), (96, 0)]);
        assert_eq!((active, reservation), (2, None));
    }

    #[test]
    fn taking_the_last_turn_reports_when_the_oldest_leaves() {
        let log = log_of(&[NOW - 50_000, NOW - 10_000]);
        let [m, h] = *verdict(&log, limits(3, 100), 0, NOW).usage();
        assert_eq!((m.remaining, m.reset_ms), (0, 10_000));
        assert_eq!((h.remaining, h.reset_ms), (97, 0));
        // With a limit of one, the turn itself is what has to leave.
        let [m, _] = *verdict(&UsageLog::default(), limits(1, 100), 0, NOW).usage();
        assert_eq!((m.remaining, m.reset_ms), (0, MINUTE));
    }

    /// Asserts a refusal of the turn at `NOW` for `violated`, reporting the
    /// windows as read with `reset_ms` at the retry; that one more turn is
    /// refused 1 ms before the retry and admitted at it; returns the retry.
    fn assert_refused(log: &UsageLog, limits: Limits, violated: &[Policy], left: [u64; 2]) -> i64 {
        let v = verdict(log, limits, 0, NOW);
        let Verdict::Limited(Denial { usage, violated: v, retry_at_ms, binding, .. }) = v else {
            panic!("expected a refusal: {v:?}");
        };
        assert_eq!(v, violated);
        assert!(violated.contains(&binding));
        assert_eq!(usage.map(|u| u.remaining), left);
        assert_eq!(usage.map(|u| u.reset_ms), [retry_at_ms - NOW; 2]);
        assert!(!verdict(log, limits, 0, retry_at_ms - 1).is_admitted());
        assert!(verdict(log, limits, 0, retry_at_ms).is_admitted());
        retry_at_ms
    }

    #[test]
    fn a_minute_refusal_waits_for_the_oldest_turn_of_the_minute_to_leave() {
        let log = log_of(&[NOW - 3_000_000, NOW - 45_000, NOW - 30_000, NOW - 1]);
        let retry = assert_refused(&log, limits(3, 100), &[Policy::Minute], [0, 96]);
        assert_eq!(retry, NOW - 45_000 + MINUTE);
    }

    #[test]
    fn a_refusal_over_the_limit_waits_for_as_many_as_it_is_over() {
        // Five in the minute under a limit lowered to three: three must leave.
        let at = [NOW - 50_000, NOW - 40_000, NOW - 30_000, NOW - 20_000, NOW - 10_000];
        let retry = assert_refused(&log_of(&at), limits(3, 100), &[Policy::Minute], [0, 95]);
        assert_eq!(retry, NOW - 30_000 + MINUTE);
    }

    #[test]
    fn both_windows_refusing_retry_at_the_later() {
        let at: Vec<i64> = (0..5).map(|i| NOW - 3_000_000 + i).chain([NOW - 5_000]).collect();
        let both = [Policy::Minute, Policy::Hour];
        let retry = assert_refused(&log_of(&at), limits(1, 6), &both, [0, 0]);
        assert_eq!(retry, NOW - 3_000_000 + 3_600_000);
        let Verdict::Limited(Denial { binding, .. }) = verdict(&log_of(&at), limits(1, 6), 0, NOW)
        else {
            panic!("refused");
        };
        assert_eq!(binding, Policy::Hour);
    }

    #[test]
    fn a_full_set_of_slots_refuses_for_concurrency_alone_and_reports_the_windows_as_they_are() {
        let v = verdict(&log_of(&[NOW - 1]), limits(5, 100), 4, NOW);
        let Verdict::Limited(Denial { usage, violated, retry_at_ms, binding, active, .. }) = v
        else {
            panic!("four running turns fill a cap of four");
        };
        assert_eq!(
            (violated, binding, active),
            (vec![Policy::Concurrency], Policy::Concurrency, 4)
        );
        assert_eq!(retry_at_ms, NOW + CONCURRENCY_RETRY_MS);
        assert_eq!(usage.map(|u| (u.remaining, u.reset_ms)), [(4, 0), (99, 0)]);
        assert!(matches!(verdict(&log_of(&[]), limits(5, 100), 3, NOW), Verdict::Admitted { .. }));
    }

    #[test]
    fn a_window_and_concurrency_both_violated_retry_when_the_window_fits() {
        let log = log_of(&[NOW - 10_000]);
        let v = verdict(&log, limits(1, 100), 4, NOW);
        let Verdict::Limited(Denial { violated, retry_at_ms, binding, .. }) = v else {
            panic!("refused")
        };
        assert_eq!(
            (violated, binding),
            (vec![Policy::Minute, Policy::Concurrency], Policy::Minute)
        );
        assert_eq!(retry_at_ms, NOW + 50_000);
    }

    /// 1 000 tokens a minute and 5 000 an hour, turns out of reach.
    fn budget() -> Limits {
        Limits {
            tokens_per_minute: Some(1_000),
            tokens_per_hour: Some(5_000),
            ..limits(100, 1_000)
        }
    }

    fn cost(input: u64) -> TokenCost {
        TokenCost { input, min_output: 16, max_output: 400 }
    }

    #[test]
    fn a_token_admission_reserves_the_cap_and_a_token_refusal_waits_for_enough_to_leave() {
        let mut log = UsageLog::default();
        let first = log.check(budget(), cost(100), 0, NOW - 40_000);
        let v = Verdict::from_tally(budget(), cost(100), &first, NOW - 40_000);
        let Verdict::Admitted { status, reservation: Some(r) } = v else {
            panic!("room for it: {v:?}");
        };
        let [Some(m), Some(h)] = status.tokens else { panic!("both budgeted") };
        assert_eq!((r.input, r.output_cap, r.total(), r.at_ms), (100, 400, 500, NOW - 40_000));
        assert_eq!((m.remaining, h.remaining), (500, 4_500));
        // 500 + the next 500 fill the minute; the third's 116 must wait for
        // the first entry's 500 to leave.
        assert!(log.check(budget(), cost(100), 0, NOW - 20_000).admitted);
        let tally = log.check(budget(), cost(100), 0, NOW);
        let v = Verdict::from_tally(budget(), cost(100), &tally, NOW);
        let Verdict::Limited(Denial { violated, binding, retry_at_ms, requested, tokens, .. }) = v
        else {
            panic!("116 does not fit in 0");
        };
        assert_eq!((violated, binding), (vec![Policy::TokensMinute], Policy::TokensMinute));
        assert_eq!((requested, tokens[0].map(|u| u.remaining)), (Some(116), Some(0)));
        assert_eq!(retry_at_ms, NOW + 20_000);
        let at = |t: i64| log.clone().check(budget(), cost(100), 0, t).admitted;
        assert!(!at(retry_at_ms - 1));
        assert!(at(retry_at_ms));
    }

    #[test]
    fn the_output_cap_shrinks_to_what_is_left_after_the_input() {
        let mut log = UsageLog::default();
        log.check(budget(), TokenCost { input: 600, min_output: 0, max_output: 0 }, 0, NOW - 1);
        let tally = log.check(budget(), cost(100), 0, NOW);
        let v = Verdict::from_tally(budget(), cost(100), &tally, NOW);
        let Verdict::Admitted { reservation: Some(r), status } = v else { panic!("{v:?}") };
        let tokens = status.tokens;
        assert_eq!(r.output_cap, 300, "the minute's room less the input");
        assert_eq!(tokens[0].map(|u| (u.remaining, u.reset_ms)), Some((0, MINUTE - 1)));
    }

    #[test]
    fn without_a_token_budget_nothing_is_reserved_and_the_cost_is_ignored() {
        let tally = UsageLog::default().check(limits(5, 100), cost(1_000_000), 0, NOW);
        let v = Verdict::from_tally(limits(5, 100), cost(1_000_000), &tally, NOW);
        assert!(
            matches!(v, Verdict::Admitted { reservation: None, status } if status.tokens == [None, None])
        );
        let hour = Limits { tokens_per_hour: Some(500), ..limits(5, 100) };
        let tally = UsageLog::default().check(hour, cost(100), 0, NOW);
        let v = Verdict::from_tally(hour, cost(100), &tally, NOW);
        let Verdict::Admitted { reservation: Some(r), status } = v else { panic!("fits") };
        let tokens = status.tokens;
        assert_eq!((r.output_cap, tokens[0]), (400, None), "only the hour is charged");
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds_and_is_at_least_one() {
        let after = [0, -5, 1, 1_000, 1_001, 59_500].map(|ms| retry_after_secs(NOW + ms, NOW));
        assert_eq!(after, [1, 1, 1, 1, 2, 60]);
        assert_eq!(retry_after_secs(i64::MAX, i64::MIN), u64::MAX / 1000 + 1);
    }
}
