//! The verdict on one request: it is admitted only when one of its user's
//! concurrency slots is free, it fits both the minute and the hour window,
//! and (with token budgets) the smallest reservation it could live with fits
//! both token windows; the verdict carries what the response headers need
//! (limit, remaining and reset per window, turns running, when to retry) and
//! the tokens an admission reserved.

use super::window::{Window, WindowCounts, fits, fits_cost, remaining, wait_cost_ms, wait_ms};

/// A user's allowance: requests per sliding minute and per sliding hour,
/// turns running at once, and optionally tokens per sliding minute and hour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limits {
    /// Requests allowed in any sliding minute.
    pub per_minute: u32,
    /// Requests allowed in any sliding hour.
    pub per_hour: u32,
    /// Turns that may hold a slot at once.
    pub max_concurrent: u32,
    /// Tokens (input and output) allowed in any sliding minute; `None`: no
    /// token budget over the minute.
    pub tokens_per_minute: Option<u32>,
    /// Tokens allowed in any sliding hour; `None`: none over the hour.
    pub tokens_per_hour: Option<u32>,
}

impl Limits {
    /// Turn limits with no token budget.
    pub const fn turns(per_minute: u32, per_hour: u32, max_concurrent: u32) -> Self {
        Self {
            per_minute,
            per_hour,
            max_concurrent,
            tokens_per_minute: None,
            tokens_per_hour: None,
        }
    }

    /// The turn limit that applies to `window`.
    pub fn limit(&self, window: Window) -> u32 {
        match window {
            Window::Minute => self.per_minute,
            Window::Hour => self.per_hour,
        }
    }

    /// The token budget of `window`, when there is one.
    pub fn token_limit(&self, window: Window) -> Option<u32> {
        match window {
            Window::Minute => self.tokens_per_minute,
            Window::Hour => self.tokens_per_hour,
        }
    }

    /// Whether any token budget applies: only then are tokens reserved.
    pub fn has_token_budget(&self) -> bool {
        self.tokens_per_minute.is_some() || self.tokens_per_hour.is_some()
    }

    /// The limit of `policy` (`None` for a token policy without a budget).
    pub fn of(&self, policy: Policy) -> Option<u32> {
        match policy {
            Policy::Minute | Policy::Hour => policy.window().map(|w| self.limit(w)),
            Policy::TokensMinute | Policy::TokensHour => {
                policy.window().and_then(|w| self.token_limit(w))
            }
            Policy::Concurrency => Some(self.max_concurrent),
        }
    }
}

/// A limit a request can be refused for: a turn window, a token window, or
/// the concurrency cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Policy {
    /// The sliding minute.
    Minute,
    /// The sliding hour.
    Hour,
    /// Tokens over the sliding minute.
    TokensMinute,
    /// Tokens over the sliding hour.
    TokensHour,
    /// The turns running at once.
    Concurrency,
}

impl Policy {
    /// Every policy, in the order headers and `violated-policies` list them.
    pub const ALL: [Policy; 5] = [
        Policy::Minute,
        Policy::Hour,
        Policy::TokensMinute,
        Policy::TokensHour,
        Policy::Concurrency,
    ];

    /// The policy's name in headers and problem bodies.
    pub fn name(self) -> &'static str {
        match self {
            Policy::Minute => "minute",
            Policy::Hour => "hour",
            Policy::TokensMinute => "tokens-minute",
            Policy::TokensHour => "tokens-hour",
            Policy::Concurrency => "concurrency",
        }
    }

    /// The window this policy limits over, `None` for concurrency.
    pub fn window(self) -> Option<Window> {
        match self {
            Policy::Minute | Policy::TokensMinute => Some(Window::Minute),
            Policy::Hour | Policy::TokensHour => Some(Window::Hour),
            Policy::Concurrency => None,
        }
    }

    /// Whether it counts tokens rather than turns.
    pub fn is_tokens(self) -> bool {
        matches!(self, Policy::TokensMinute | Policy::TokensHour)
    }

    /// The token policy of `window`.
    pub fn tokens(window: Window) -> Self {
        match window {
            Window::Minute => Policy::TokensMinute,
            Window::Hour => Policy::TokensHour,
        }
    }
}

impl From<Window> for Policy {
    fn from(window: Window) -> Self {
        match window {
            Window::Minute => Policy::Minute,
            Window::Hour => Policy::Hour,
        }
    }
}

/// What one check reads from the store at one instant: both windows'
/// counts, both token windows' counts and the turns holding a slot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// The minute window's current and previous counts.
    pub minute: WindowCounts,
    /// The hour window's current and previous counts.
    pub hour: WindowCounts,
    /// Unexpired leases: turns running.
    pub active: u64,
    /// Tokens charged in the current and previous minute.
    pub tokens_minute: WindowCounts,
    /// Tokens charged in the current and previous hour.
    pub tokens_hour: WindowCounts,
}

impl Counts {
    /// The turn counts of `window`.
    pub fn get(&self, window: Window) -> WindowCounts {
        match window {
            Window::Minute => self.minute,
            Window::Hour => self.hour,
        }
    }

    /// The token counts of `window`.
    pub fn tokens(&self, window: Window) -> WindowCounts {
        match window {
            Window::Minute => self.tokens_minute,
            Window::Hour => self.tokens_hour,
        }
    }

    fn tokens_mut(&mut self, window: Window) -> &mut WindowCounts {
        match window {
            Window::Minute => &mut self.tokens_minute,
            Window::Hour => &mut self.tokens_hour,
        }
    }
}

/// What a turn asks of the token budgets: its prompt's estimated tokens,
/// the fewest output tokens worth running it for, and the most it may write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct TokenCost {
    /// The prompt as sent upstream, by the tokenizer.
    pub input: u64,
    /// `rate_limit.min_output_tokens`.
    pub min_output: u64,
    /// `turns.max_output_tokens`.
    pub max_output: u64,
}

impl TokenCost {
    /// The smallest reservation the turn is admitted with.
    pub fn smallest(&self) -> u64 {
        self.input.saturating_add(self.min_output)
    }
}

/// Tokens an admitted turn holds in its user's token windows until it ends,
/// and the buckets (window indexes) they were charged to, so that the refund
/// lands where the charge did even after a window rolled over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Reservation {
    /// The prompt's estimate.
    pub input: u64,
    /// The most output the turn may produce: `min(max_output, what is left
    /// after the input in every token window)`.
    pub output_cap: u64,
    /// The window index charged in the minute and the hour token window
    /// (`None` where that window has no budget).
    pub buckets: [Option<i64>; 2],
}

impl Reservation {
    /// Tokens charged: `input + output_cap`.
    pub fn total(&self) -> u64 {
        self.input.saturating_add(self.output_cap)
    }
}

/// What a response reports about one window (the `RateLimit` header's
/// `limit`, `r` and `t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowUsage {
    /// Which window this is.
    pub window: Window,
    /// The window's limit.
    pub limit: u32,
    /// Requests (or tokens, in a token window) that would still fit now.
    pub remaining: u64,
    /// Milliseconds until one more request (token) fits (0 when
    /// `remaining > 0`); for a refusal, until `retry_at_ms`.
    pub reset_ms: i64,
}

/// Per-window usage of the token windows, minute first; `None` where a
/// window has no budget.
pub type TokenUsage = [Option<WindowUsage>; 2];

/// The outcome of [`decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A slot is free, the request fits both windows and its smallest
    /// reservation fits both token windows; it takes the slot, both current
    /// counts go up by one, the reservation is charged, and `usage` and
    /// `tokens` report the counts after that.
    Admitted {
        /// Per-window usage after the increment, minute first.
        usage: [WindowUsage; 2],
        /// Turns running, this one included.
        active: u64,
        /// Per-token-window usage after the reservation.
        tokens: TokenUsage,
        /// What was reserved; `None` without a token budget.
        reservation: Option<Reservation>,
    },
    /// The request does not fit; nothing is counted, no slot is taken, and
    /// `usage` reports the counts as read.
    Limited {
        /// Per-window usage with the counts unchanged, minute first.
        usage: [WindowUsage; 2],
        /// The policies the request did not fit (minute, hour, tokens-minute,
        /// tokens-hour, concurrency order); never empty.
        violated: Vec<Policy>,
        /// The earliest instant (ms since the epoch) at which the same request
        /// (its smallest reservation) fits every window, if nothing else is
        /// admitted or refunded meanwhile; for a refusal by concurrency alone,
        /// one second on (a slot frees when some turn ends, which no clock
        /// predicts).
        retry_at_ms: i64,
        /// The violated policy that sets `retry_at_ms`: the window with the
        /// latest wait, concurrency only when no window is violated.
        binding: Policy,
        /// Turns running.
        active: u64,
        /// Per-token-window usage with the counts unchanged.
        tokens: TokenUsage,
        /// The smallest reservation refused (`input + min_output`); `None`
        /// without a token budget.
        requested: Option<u64>,
    },
}

impl Verdict {
    /// Whether the request was admitted (and must be counted).
    pub fn is_admitted(&self) -> bool {
        matches!(self, Verdict::Admitted { .. })
    }

    /// The per-window usage, minute first, whichever the outcome.
    pub fn usage(&self) -> &[WindowUsage; 2] {
        match self {
            Verdict::Admitted { usage, .. } | Verdict::Limited { usage, .. } => usage,
        }
    }
}

/// How long a refusal by concurrency alone asks the client to wait.
pub const CONCURRENCY_RETRY_MS: i64 = 1_000;

/// The whole decision for `counts` read at `now_ms` (before any increment)
/// on a turn costing `cost`: admit when a slot is free, the request fits
/// both windows and `cost.smallest()` fits both token windows, reserving
/// `input + output_cap`; otherwise refuse with the violated policies and
/// the instant to retry. Without a token budget in `limits`, `cost` is
/// ignored and nothing is reserved.
pub fn decide(limits: Limits, counts: Counts, cost: TokenCost, now_ms: i64) -> Verdict {
    let budgeted = limits.has_token_budget();
    let mut violated: Vec<Policy> = Window::ALL
        .into_iter()
        .filter(|&w| !fits(w, limits.limit(w), counts.get(w), now_ms))
        .map(Policy::from)
        .collect();
    let mut output_cap = cost.max_output;
    for window in Window::ALL {
        let Some(limit) = limits.token_limit(window) else { continue };
        let room = remaining(window, limit, counts.tokens(window), now_ms);
        if !fits_cost(window, limit, counts.tokens(window), now_ms, cost.smallest()) {
            violated.push(Policy::tokens(window));
        }
        output_cap = output_cap.min(room.saturating_sub(cost.input));
    }
    let windows_fit = violated.is_empty();
    if counts.active >= u64::from(limits.max_concurrent) {
        violated.push(Policy::Concurrency);
    }
    if violated.is_empty() {
        let reservation = budgeted.then(|| Reservation {
            input: cost.input,
            output_cap,
            buckets: Window::ALL
                .map(|w| limits.token_limit(w).map(|_| super::window::window_index(w, now_ms))),
        });
        let mut after = Counts {
            minute: counts.minute.incremented(),
            hour: counts.hour.incremented(),
            active: counts.active + 1,
            ..counts
        };
        if let Some(reservation) = &reservation {
            for window in Window::ALL.into_iter().filter(|&w| limits.token_limit(w).is_some()) {
                let charged = after.tokens_mut(window);
                charged.current = charged.current.saturating_add(reservation.total());
            }
        }
        return Verdict::Admitted {
            usage: usage(limits, after, now_ms),
            active: after.active,
            tokens: token_usage(limits, after, now_ms),
            reservation,
        };
    }
    let requested = budgeted.then(|| cost.smallest());
    if windows_fit {
        // Refused for concurrency alone: the windows report as they are.
        return Verdict::Limited {
            usage: usage(limits, counts, now_ms),
            violated,
            retry_at_ms: now_ms.saturating_add(CONCURRENCY_RETRY_MS),
            binding: Policy::Concurrency,
            active: counts.active,
            tokens: token_usage(limits, counts, now_ms),
            requested,
        };
    }
    // Each window's fit is monotone in time with frozen counts, so all fit
    // from the latest of their waits on.
    let wait = |policy: Policy| -> i64 {
        let Some(window) = policy.window() else { return 0 };
        match (policy.is_tokens(), limits.of(policy)) {
            (false, Some(limit)) => wait_ms(window, limit, counts.get(window), now_ms),
            (true, Some(limit)) => {
                wait_cost_ms(window, limit, counts.tokens(window), now_ms, cost.smallest())
            }
            (_, None) => 0,
        }
    };
    let (wait, binding) = violated
        .iter()
        .enumerate()
        .filter(|&(_, &p)| p != Policy::Concurrency)
        .map(|(order, &p)| ((wait(p), order), p))
        .max_by_key(|&(key, _)| key)
        .map_or((0, Policy::Minute), |((wait, _), p)| (wait, p));
    let retry_at_ms = now_ms.saturating_add(wait);
    let reset_ms = retry_at_ms.saturating_sub(now_ms);
    let refused = |mut u: WindowUsage| {
        u.reset_ms = reset_ms;
        u
    };
    Verdict::Limited {
        usage: usage(limits, counts, now_ms).map(refused),
        violated,
        retry_at_ms,
        binding,
        active: counts.active,
        tokens: token_usage(limits, counts, now_ms).map(|u| u.map(refused)),
        requested,
    }
}

/// What `counts` leave of each window at `now_ms`, minute first: the
/// remaining turns and the wait until one more fits. Serves admitted
/// responses (with the incremented counts) and read-only peeks.
pub fn usage(limits: Limits, counts: Counts, now_ms: i64) -> [WindowUsage; 2] {
    Window::ALL.map(|window| {
        let limit = limits.limit(window);
        let counts = counts.get(window);
        WindowUsage {
            window,
            limit,
            remaining: remaining(window, limit, counts, now_ms),
            reset_ms: wait_ms(window, limit, counts, now_ms),
        }
    })
}

/// What `counts` leave of each token window at `now_ms`: the remaining
/// tokens and the wait until one more token fits; `None` without a budget.
pub fn token_usage(limits: Limits, counts: Counts, now_ms: i64) -> TokenUsage {
    Window::ALL.map(|window| {
        let limit = limits.token_limit(window)?;
        let counts = counts.tokens(window);
        Some(WindowUsage {
            window,
            limit,
            remaining: remaining(window, limit, counts, now_ms),
            reset_ms: wait_ms(window, limit, counts, now_ms),
        })
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
    use crate::limiter::window::tests::{advance, wc};

    /// 30 s into a minute and 50 min 30 s into an hour.
    const NOW: i64 = 472_222 * 3_600_000 + 3_030_000;

    fn limits(per_minute: u32, per_hour: u32) -> Limits {
        Limits::turns(per_minute, per_hour, 4)
    }

    fn counts(minute: WindowCounts, hour: WindowCounts) -> Counts {
        Counts { minute, hour, ..Counts::default() }
    }

    const NO_COST: TokenCost = TokenCost { input: 0, min_output: 0, max_output: 0 };

    fn decide(limits: Limits, counts: Counts, now_ms: i64) -> Verdict {
        super::decide(limits, counts, NO_COST, now_ms)
    }

    /// Decides at `at` on the counts read at `NOW`, advanced to `at`.
    fn decide_later(limits: Limits, c: Counts, at: i64) -> Verdict {
        let minute = advance(Window::Minute.millis(), c.minute, NOW, at);
        let hour = advance(Window::Hour.millis(), c.hour, NOW, at);
        decide(limits, Counts { minute, hour, ..c }, at)
    }

    /// Asserts a refusal at `NOW` naming `violated`, with unincremented
    /// `remaining` and `reset_ms` pointing at `retry_at_ms`, and that the same
    /// request is refused 1 ms before `retry_at_ms` and admitted at it.
    fn assert_limited(limits: Limits, c: Counts, violated: &[Window], remaining: [u64; 2]) -> i64 {
        let Verdict::Limited { usage, violated: v, retry_at_ms, .. } = decide(limits, c, NOW)
        else {
            panic!("expected a refusal for {c:?}");
        };
        assert_eq!(v, violated.iter().map(|&w| Policy::from(w)).collect::<Vec<_>>());
        assert_eq!(usage.map(|u| u.remaining), remaining);
        assert_eq!(usage.map(|u| u.reset_ms), [retry_at_ms - NOW; 2]);
        assert!(!decide_later(limits, c, retry_at_ms - 1).is_admitted());
        assert!(decide_later(limits, c, retry_at_ms).is_admitted());
        retry_at_ms
    }

    #[test]
    fn an_admitted_request_reports_the_counts_after_its_increment() {
        assert_eq!((NOW % 60_000, NOW % 3_600_000), (30_000, 3_030_000));
        let verdict = decide(limits(5, 100), counts(wc(2, 0), wc(10, 20)), NOW);
        assert!(verdict.is_admitted());
        let usage = verdict.usage().map(|u| (u.window, u.limit, u.remaining, u.reset_ms));
        // Hour: floor((100·W − 20·570 000) / W) − 11 = 96 − 11 = 85.
        assert_eq!(usage, [(Window::Minute, 5, 2, 0), (Window::Hour, 100, 85, 0)]);
    }

    #[test]
    fn taking_the_last_slot_reports_when_the_next_one_opens() {
        let [m, h] = *decide(limits(3, 100), counts(wc(2, 0), wc(0, 0)), NOW).usage();
        // After the increment c = 3 = L: next window, 3·(W−e') ≤ 2·W ⇔ e' ≥ 20 000.
        assert_eq!((m.remaining, m.reset_ms), (0, 30_000 + 20_000));
        assert_eq!((h.remaining, h.reset_ms), (99, 0));
    }

    #[test]
    fn a_minute_bound_refusal_names_the_minute_and_counts_nothing() {
        let c = counts(wc(5, 3), wc(40, 0));
        let retry_at = assert_limited(limits(5, 100), c, &[Window::Minute], [0, 60]);
        assert_eq!(retry_at, NOW + wait_ms(Window::Minute, 5, c.minute, NOW));
    }

    #[test]
    fn an_hour_bound_refusal_waits_for_the_hour() {
        let c = counts(wc(1, 0), wc(60, 300));
        let retry_at = assert_limited(limits(5, 100), c, &[Window::Hour], [4, 0]);
        // 60 + 1 + 300·570/3600 > 100 until 300·(W−e) ≤ 39·W: e ≥ 3 132 000.
        assert_eq!(retry_at, NOW + 102_000);
    }

    #[test]
    fn a_refusal_bound_by_both_windows_retries_at_the_later_wait() {
        let c = counts(wc(5, 5), wc(100, 0));
        let minute_wait = wait_ms(Window::Minute, 5, c.minute, NOW);
        let hour_wait = wait_ms(Window::Hour, 100, c.hour, NOW);
        assert_eq!((minute_wait, hour_wait), (42_000, 606_000));
        let both = [Window::Minute, Window::Hour];
        assert_eq!(assert_limited(limits(5, 100), c, &both, [0, 0]), NOW + hour_wait);
        // With the minute binding later, the minute's wait is the one taken.
        let c = counts(wc(5, 0), wc(97, 13));
        let minute_wait = wait_ms(Window::Minute, 5, c.minute, NOW);
        let hour_wait = wait_ms(Window::Hour, 100, c.hour, NOW);
        assert_eq!((minute_wait, hour_wait), (42_000, 16_154));
        assert_eq!(assert_limited(limits(5, 100), c, &both, [0, 0]), NOW + minute_wait);
    }

    #[test]
    fn a_limit_of_one_admits_once_then_refuses_into_the_window_after_next() {
        let fresh = decide(limits(1, 1), Counts::default(), NOW);
        assert!(fresh.is_admitted());
        assert!(fresh.usage().iter().all(|u| u.remaining == 0));
        let used = counts(wc(1, 0), wc(1, 0));
        let retry_at = assert_limited(limits(1, 1), used, &[Window::Minute, Window::Hour], [0, 0]);
        assert_eq!(retry_at, NOW + 2 * 3_600_000 - 3_030_000);
    }

    #[test]
    fn a_full_set_of_slots_refuses_for_concurrency_alone_and_reports_the_windows_as_they_are() {
        let c = Counts { active: 4, ..counts(wc(1, 0), wc(1, 0)) };
        let Verdict::Limited { usage, violated, retry_at_ms, binding, active, .. } =
            decide(limits(5, 100), c, NOW)
        else {
            panic!("four running turns fill a cap of four");
        };
        assert_eq!(
            (violated, binding, active),
            (vec![Policy::Concurrency], Policy::Concurrency, 4)
        );
        assert_eq!(retry_at_ms, NOW + CONCURRENCY_RETRY_MS);
        assert_eq!(usage.map(|u| (u.remaining, u.reset_ms)), [(4, 0), (99, 0)]);
        let admitted = decide(limits(5, 100), Counts { active: 3, ..c }, NOW);
        assert!(matches!(admitted, Verdict::Admitted { active: 4, .. }));
    }

    #[test]
    fn a_window_and_concurrency_both_violated_retry_when_the_window_fits() {
        let c = Counts { active: 4, ..counts(wc(5, 3), wc(40, 0)) };
        let Verdict::Limited { violated, retry_at_ms, binding, .. } =
            decide(limits(5, 100), c, NOW)
        else {
            panic!("refused");
        };
        assert_eq!(violated, vec![Policy::Minute, Policy::Concurrency]);
        assert_eq!(binding, Policy::Minute);
        assert_eq!(retry_at_ms, NOW + wait_ms(Window::Minute, 5, c.minute, NOW));
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

    fn charged(minute: WindowCounts, hour: WindowCounts) -> Counts {
        Counts { tokens_minute: minute, tokens_hour: hour, ..Counts::default() }
    }

    #[test]
    fn an_admission_reserves_the_input_and_the_output_cap_in_both_token_windows() {
        let verdict = super::decide(budget(), charged(wc(300, 0), wc(300, 0)), cost(100), NOW);
        let Verdict::Admitted { tokens: [Some(m), Some(h)], reservation: Some(r), .. } = verdict
        else {
            panic!("room for it: {verdict:?}");
        };
        // Plenty of room: the cap is turns.max_output_tokens.
        assert_eq!((r.input, r.output_cap, r.total()), (100, 400, 500));
        assert_eq!(r.buckets, [Some(NOW / 60_000), Some(NOW / 3_600_000)]);
        assert_eq!((m.limit, m.remaining), (1_000, 200));
        assert_eq!((h.limit, h.remaining), (5_000, 4_200));
    }

    #[test]
    fn the_output_cap_shrinks_to_what_is_left_after_the_input() {
        // Minute: 1 000 − 300 weighted half of 600 = 400 left; 100 input → 300.
        let c = charged(wc(300, 600), wc(0, 0));
        let Verdict::Admitted { reservation: Some(r), tokens, .. } =
            super::decide(budget(), c, cost(100), NOW)
        else {
            panic!("room for 116");
        };
        assert_eq!(r.output_cap, 300, "the minute's room less the input");
        assert_eq!(tokens[0].map(|u| u.remaining), Some(0), "the reservation took the rest");
    }

    #[test]
    fn a_token_refusal_names_its_window_asks_for_the_smallest_reservation_and_is_exact() {
        // 900 used this minute: 100 left, the smallest reservation is 116.
        let c = charged(wc(900, 0), wc(900, 0));
        let Verdict::Limited { violated, binding, retry_at_ms, requested, tokens, .. } =
            super::decide(budget(), c, cost(100), NOW)
        else {
            panic!("116 does not fit in 100");
        };
        assert_eq!(
            (violated, binding, requested),
            (vec![Policy::TokensMinute], Policy::TokensMinute, Some(116))
        );
        assert_eq!(tokens[0].map(|u| u.remaining), Some(100));
        assert_eq!(retry_at_ms, NOW + wait_cost_ms(Window::Minute, 1_000, wc(900, 0), NOW, 116));
        let later = |at: i64| {
            let minute = advance(60_000, c.tokens_minute, NOW, at);
            let hour = advance(3_600_000, c.tokens_hour, NOW, at);
            super::decide(budget(), charged(minute, hour), cost(100), at)
        };
        assert!(!later(retry_at_ms - 1).is_admitted());
        assert!(later(retry_at_ms).is_admitted());
    }

    #[test]
    fn a_turn_window_and_a_token_window_refuse_together_at_the_later_wait() {
        let c = Counts { minute: wc(100, 0), ..charged(wc(0, 0), wc(4_990, 0)) };
        let Verdict::Limited { violated, binding, retry_at_ms, .. } =
            super::decide(budget(), c, cost(100), NOW)
        else {
            panic!("refused");
        };
        assert_eq!(violated, vec![Policy::Minute, Policy::TokensHour]);
        assert_eq!(binding, Policy::TokensHour, "the hour's wait is the longer");
        assert_eq!(retry_at_ms, NOW + wait_cost_ms(Window::Hour, 5_000, wc(4_990, 0), NOW, 116));
    }

    #[test]
    fn without_a_token_budget_nothing_is_reserved_and_the_cost_is_ignored() {
        let verdict = super::decide(limits(5, 100), Counts::default(), cost(1_000_000), NOW);
        assert!(matches!(
            verdict,
            Verdict::Admitted { reservation: None, tokens: [None, None], .. }
        ));
        let one = Limits { tokens_per_hour: Some(500), ..limits(5, 100) };
        let Verdict::Admitted { reservation: Some(r), tokens, .. } =
            super::decide(one, Counts::default(), cost(100), NOW)
        else {
            panic!("fits");
        };
        assert_eq!((r.buckets[0], r.output_cap), (None, 400), "only the hour is charged");
        assert_eq!(tokens[0], None);
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds_and_is_at_least_one() {
        let after = [0, -5, 1, 1_000, 1_001, 59_500].map(|ms| retry_after_secs(NOW + ms, NOW));
        assert_eq!(after, [1, 1, 1, 1, 2, 60]);
        assert_eq!(retry_after_secs(i64::MAX, i64::MIN), u64::MAX / 1000 + 1);
    }
}
