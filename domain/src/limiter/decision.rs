//! The verdict on one request: it is admitted only when one of its user's
//! concurrency slots is free and it fits both the minute and the hour
//! window, and the verdict carries what the response headers need (limit,
//! remaining and reset per window, turns running, and when to retry).

use super::window::{Window, WindowCounts, fits, remaining, wait_ms};

/// A user's allowance: requests per sliding minute and per sliding hour,
/// and turns running at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limits {
    /// Requests allowed in any sliding minute.
    pub per_minute: u32,
    /// Requests allowed in any sliding hour.
    pub per_hour: u32,
    /// Turns that may hold a slot at once.
    pub max_concurrent: u32,
}

impl Limits {
    /// The limit that applies to `window`.
    pub fn limit(&self, window: Window) -> u32 {
        match window {
            Window::Minute => self.per_minute,
            Window::Hour => self.per_hour,
        }
    }
}

/// A limit a request can be refused for: a window, or the concurrency cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Policy {
    /// The sliding minute.
    Minute,
    /// The sliding hour.
    Hour,
    /// The turns running at once.
    Concurrency,
}

impl Policy {
    /// The policy's name in headers and problem bodies.
    pub fn name(self) -> &'static str {
        match self {
            Policy::Minute => "minute",
            Policy::Hour => "hour",
            Policy::Concurrency => "concurrency",
        }
    }

    /// The window this policy limits, `None` for concurrency.
    pub fn window(self) -> Option<Window> {
        match self {
            Policy::Minute => Some(Window::Minute),
            Policy::Hour => Some(Window::Hour),
            Policy::Concurrency => None,
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
/// counts and the turns holding a slot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// The minute window's current and previous counts.
    pub minute: WindowCounts,
    /// The hour window's current and previous counts.
    pub hour: WindowCounts,
    /// Unexpired leases: turns running.
    pub active: u64,
}

impl Counts {
    /// The counts of `window`.
    pub fn get(&self, window: Window) -> WindowCounts {
        match window {
            Window::Minute => self.minute,
            Window::Hour => self.hour,
        }
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
    /// Requests that would still fit right now.
    pub remaining: u64,
    /// Milliseconds until one more request fits (0 when `remaining > 0`);
    /// for a refusal, until `retry_at_ms`.
    pub reset_ms: i64,
}

/// The outcome of [`decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A slot is free and the request fits both windows; it takes the slot,
    /// both current counts go up by one and `usage` (minute, hour) reports
    /// the counts after that increment.
    Admitted {
        /// Per-window usage after the increment, minute first.
        usage: [WindowUsage; 2],
        /// Turns running, this one included.
        active: u64,
    },
    /// The request does not fit; nothing is counted, no slot is taken, and
    /// `usage` reports the counts as read.
    Limited {
        /// Per-window usage with the counts unchanged, minute first.
        usage: [WindowUsage; 2],
        /// The policies the request did not fit (minute, hour, concurrency
        /// order); never empty.
        violated: Vec<Policy>,
        /// The earliest instant (ms since the epoch) at which the same request
        /// fits both windows, if nothing else is admitted meanwhile; for a
        /// refusal by concurrency alone, one second on (a slot frees when some
        /// turn ends, which no clock predicts).
        retry_at_ms: i64,
        /// The violated policy that sets `retry_at_ms`: the window with the
        /// later wait, concurrency only when no window is violated.
        binding: Policy,
        /// Turns running.
        active: u64,
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

/// The whole decision for `counts` read at `now_ms` (before any increment):
/// admit when a slot is free and the request fits both windows, otherwise
/// refuse with the violated policies and the instant to retry.
pub fn decide(limits: Limits, counts: Counts, now_ms: i64) -> Verdict {
    let mut violated: Vec<Policy> = Window::ALL
        .into_iter()
        .filter(|&w| !fits(w, limits.limit(w), counts.get(w), now_ms))
        .map(Policy::from)
        .collect();
    let windows_fit = violated.is_empty();
    if counts.active >= u64::from(limits.max_concurrent) {
        violated.push(Policy::Concurrency);
    }
    if violated.is_empty() {
        let after = Counts {
            minute: counts.minute.incremented(),
            hour: counts.hour.incremented(),
            active: counts.active + 1,
        };
        return Verdict::Admitted { usage: usage(limits, after, now_ms), active: after.active };
    }
    if windows_fit {
        // Refused for concurrency alone: the windows report as they are.
        return Verdict::Limited {
            usage: usage(limits, counts, now_ms),
            violated,
            retry_at_ms: now_ms.saturating_add(CONCURRENCY_RETRY_MS),
            binding: Policy::Concurrency,
            active: counts.active,
        };
    }
    // Each window's fit is monotone in time with frozen counts, so both fit
    // from the later of the two waits on.
    let (wait, binding) = Window::ALL
        .map(|w| (wait_ms(w, limits.limit(w), counts.get(w), now_ms), w))
        .into_iter()
        .filter(|&(_, w)| violated.contains(&Policy::from(w)))
        .max_by_key(|&(wait, w)| (wait, w == Window::Hour))
        .unwrap_or((0, Window::Minute));
    let retry_at_ms = now_ms.saturating_add(wait);
    let usage = Window::ALL.map(|window| {
        let limit = limits.limit(window);
        WindowUsage {
            window,
            limit,
            remaining: remaining(window, limit, counts.get(window), now_ms),
            reset_ms: retry_at_ms.saturating_sub(now_ms),
        }
    });
    Verdict::Limited {
        usage,
        violated,
        retry_at_ms,
        binding: binding.into(),
        active: counts.active,
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
        Limits { per_minute, per_hour, max_concurrent: 4 }
    }

    fn counts(minute: WindowCounts, hour: WindowCounts) -> Counts {
        Counts { minute, hour, active: 0 }
    }

    /// Decides at `at` on the counts read at `NOW`, advanced to `at`.
    fn decide_later(limits: Limits, c: Counts, at: i64) -> Verdict {
        let minute = advance(Window::Minute.millis(), c.minute, NOW, at);
        let hour = advance(Window::Hour.millis(), c.hour, NOW, at);
        decide(limits, Counts { minute, hour, active: c.active }, at)
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
        let Verdict::Limited { usage, violated, retry_at_ms, binding, active } =
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

    #[test]
    fn retry_after_rounds_up_to_whole_seconds_and_is_at_least_one() {
        let after = [0, -5, 1, 1_000, 1_001, 59_500].map(|ms| retry_after_secs(NOW + ms, NOW));
        assert_eq!(after, [1, 1, 1, 1, 2, 60]);
        assert_eq!(retry_after_secs(i64::MAX, i64::MIN), u64::MAX / 1000 + 1);
    }
}
