//! The sliding-window math for one window: whether a request fits, how many
//! more would fit, and exactly how long until one fits. All of it is integer
//! arithmetic on milliseconds (widened to `i128`), so the answer never depends
//! on float rounding and the Redis script can reproduce it bit for bit.
//!
//! The estimate of a window is `p·(W−e)/W + c`: the previous window's count
//! weighted by the share of it still inside the sliding window, plus the
//! current count. Comparisons are multiplied through by `W`.

/// One of the two windows every user is limited over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Window {
    /// A sliding minute (60 000 ms).
    Minute,
    /// A sliding hour (3 600 000 ms).
    Hour,
}

impl Window {
    /// Both windows in the order verdicts and headers list them (minute first).
    pub const ALL: [Window; 2] = [Window::Minute, Window::Hour];

    /// The window's length in milliseconds: the unit of its index and of `e`.
    pub fn millis(self) -> i64 {
        match self {
            Window::Minute => 60_000,
            Window::Hour => 3_600_000,
        }
    }

    /// The window's length in seconds, as the `w` of a `RateLimit-Policy`.
    pub fn seconds(self) -> u64 {
        self.millis().unsigned_abs() / 1000
    }

    /// The window's name as it appears in keys, headers and error bodies.
    pub fn name(self) -> &'static str {
        match self {
            Window::Minute => "minute",
            Window::Hour => "hour",
        }
    }
}

/// The counts one window needs: requests admitted in the current fixed window
/// and in the one before it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WindowCounts {
    /// Requests admitted in the current fixed window (index `i`).
    pub current: u64,
    /// Requests admitted in the previous fixed window (index `i − 1`).
    pub previous: u64,
}

impl WindowCounts {
    /// The counts after admitting one more request in the current window.
    pub fn incremented(self) -> Self {
        Self { current: self.current.saturating_add(1), ..self }
    }
}

/// The index of the fixed window holding `now_ms`: the suffix of the Redis
/// key its count is stored under. Floors, so instants before the epoch fall
/// in negative windows rather than sharing window 0.
pub fn window_index(window: Window, now_ms: i64) -> i64 {
    now_ms.div_euclid(window.millis())
}

/// Whether a request of cost 1 fits `window` at `now_ms` given its counts.
pub fn fits(window: Window, limit: u32, counts: WindowCounts, now_ms: i64) -> bool {
    fits_cost(window, limit, counts, now_ms, 1)
}

/// Whether a request of cost `k` (a turn's tokens) fits `window` at `now_ms`.
pub fn fits_cost(window: Window, limit: u32, counts: WindowCounts, now_ms: i64, k: u64) -> bool {
    let w = window.millis();
    fits_w(w, limit, counts, now_ms.rem_euclid(w), k)
}

/// How many more requests would fit `window` at `now_ms` (0 when full): the
/// `r` of the `RateLimit` header.
pub fn remaining(window: Window, limit: u32, counts: WindowCounts, now_ms: i64) -> u64 {
    let w = window.millis();
    remaining_w(w, limit, counts, now_ms.rem_euclid(w))
}

/// Milliseconds from `now_ms` until a request fits `window` if no count
/// changes (0 when it fits now). Exact: one millisecond earlier it does not
/// fit. A limit of 0 never fits and gives `i64::MAX`.
pub fn wait_ms(window: Window, limit: u32, counts: WindowCounts, now_ms: i64) -> i64 {
    wait_cost_ms(window, limit, counts, now_ms, 1)
}

/// [`wait_ms`] for a request of cost `k`: exact in the same way; a cost
/// above the limit never fits and gives `i64::MAX`.
pub fn wait_cost_ms(window: Window, limit: u32, counts: WindowCounts, now_ms: i64, k: u64) -> i64 {
    let w = window.millis();
    wait_w(w, limit, counts, now_ms.rem_euclid(w), k)
}

/// `fits` for a window of `w` ms at `e` ms into it and a cost `k`:
/// `p·(W−e) + (c+k)·W ≤ L·W`.
pub(super) fn fits_w(w: i64, limit: u32, counts: WindowCounts, e: i64, k: u64) -> bool {
    let (w, e, k) = (i128::from(w), i128::from(e), i128::from(k));
    let [c, p, l] = widen(limit, counts);
    p * (w - e) + (c + k) * w <= l * w
}

/// `remaining` for a window of `w` ms at `e` ms into it: the largest `k ≥ 0`
/// with `p·(W−e) + (c+k)·W ≤ L·W`.
pub(super) fn remaining_w(w: i64, limit: u32, counts: WindowCounts, e: i64) -> u64 {
    let (w, e) = (i128::from(w), i128::from(e));
    let [c, p, l] = widen(limit, counts);
    let room = l * w - p * (w - e);
    if room < 0 {
        return 0;
    }
    u64::try_from((room / w - c).max(0)).unwrap_or(u64::MAX)
}

/// `wait_ms` for a window of `w` ms at `e` ms into it and a cost `k`.
///
/// The estimate only falls as time passes with the counts frozen (inside a
/// window the previous count's weight shrinks; at a boundary `p·0 + c·W`
/// becomes `c·W + 0·W`), so the first instant it fits is the answer.
pub(super) fn wait_w(w: i64, limit: u32, counts: WindowCounts, e: i64, k: u64) -> i64 {
    let (w, e, k) = (i128::from(w), i128::from(e), i128::from(k));
    let [c, p, l] = widen(limit, counts);
    let d = if k > l {
        // Not even an empty window holds it (a limit of 0 holds nothing).
        return i64::MAX;
    } else if c + k <= l {
        // Fits at the latest at the next boundary, where the estimate is c+k:
        // `p·(W−e−d) ≤ (L−c−k)·W`.
        if p == 0 { 0 } else { (w - e - (l - c - k) * w / p).max(0) }
    } else {
        // Not before the next window: `e'` into it, where `c` has become the
        // previous count and needs `c·(W−e') ≤ (L−k)·W`. Here `c > L−k ≥ 0`,
        // so the floor is below `W` and `e' > 0`; `e' = W` is the start of
        // the window after next, where both counts are 0 and `k ≤ L` fits.
        (w - e) + w - (l - k) * w / c
    };
    i64::try_from(d).unwrap_or(i64::MAX)
}

/// `[c, p, L]` widened so products with `W` cannot overflow.
fn widen(limit: u32, counts: WindowCounts) -> [i128; 3] {
    [counts.current, counts.previous, u64::from(limit)].map(i128::from)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Counts of a `w`-ms window read at `from`, as read at the later `to` if
    /// nothing is admitted: one boundary crossed turns current into previous,
    /// two or more clear both.
    pub(crate) fn advance(w: i64, c: WindowCounts, from: i64, to: i64) -> WindowCounts {
        match to.div_euclid(w) - from.div_euclid(w) {
            0 => c,
            1 => wc(0, c.current),
            _ => WindowCounts::default(),
        }
    }

    pub(crate) fn wc(current: u64, previous: u64) -> WindowCounts {
        WindowCounts { current, previous }
    }

    /// Whether a request of cost `k` fits `d` ms after `e`, with the counts
    /// frozen at `e`.
    fn fits_after(w: i64, limit: u32, counts: WindowCounts, e: i64, d: i64, k: u64) -> bool {
        fits_w(w, limit, advance(w, counts, e, e + d), (e + d) % w, k)
    }

    #[test]
    fn window_lengths_names_and_indexes_match_the_contract() {
        let (m, h) = (Window::Minute, Window::Hour);
        assert_eq!((m.millis(), m.seconds(), m.name()), (60_000, 60, "minute"));
        assert_eq!((h.millis(), h.seconds(), h.name()), (3_600_000, 3600, "hour"));
        let indexes =
            [(m, 119_999), (m, 120_000), (h, 3_599_999), (m, -1)].map(|(w, t)| window_index(w, t));
        assert_eq!(indexes, [1, 2, 0, -1]);
    }

    #[test]
    fn a_full_previous_window_weighs_fully_at_the_boundary_and_fades_across_it() {
        let (m, full) = (Window::Minute, wc(0, 10));
        // e = 0: 10·W + W > 10·W, nothing fits.
        assert!(!fits(m, 10, full, 120_000));
        assert_eq!(remaining(m, 10, full, 120_000), 0);
        // e = W/2: 10·W/2 + (c+1)·W ≤ 10·W ⇔ c ≤ 4, so exactly 5 more fit.
        assert_eq!(remaining(m, 10, full, 150_000), 5);
        assert!(fits(m, 10, wc(4, 10), 150_000));
        assert!(!fits(m, 10, wc(5, 10), 150_000));
        // e = W−1: 10·1 + (c+1)·W ≤ 10·W ⇔ c ≤ 8, so 9 fit: the 10th needs
        // the last millisecond of the previous window's weight gone.
        assert_eq!(remaining(m, 10, full, 179_999), 9);
        assert!(fits(m, 10, wc(8, 10), 179_999));
        assert!(!fits(m, 10, wc(9, 10), 179_999));
        assert!(fits(m, 10, wc(9, 0), 180_000));
    }

    #[test]
    fn a_full_minute_refuses_until_the_next_window() {
        let (m, now) = (Window::Minute, 60_000 * 7 + 12_345);
        assert!(!fits(m, 5, wc(5, 0), now));
        // Next window: 5·(W−e') ≤ 4·W ⇔ e' ≥ W/5 = 12 000.
        assert_eq!(wait_ms(m, 5, wc(5, 0), now), (60_000 - 12_345) + 12_000);
    }

    #[test]
    fn a_limit_of_one_waits_for_the_window_after_next_once_used() {
        let m = Window::Minute;
        assert!(fits(m, 1, wc(0, 0), 61_000));
        assert_eq!(wait_ms(m, 1, wc(0, 0), 61_000), 0);
        assert_eq!(remaining(m, 1, wc(0, 0), 61_000), 1);
        assert_eq!(remaining(m, 1, wc(1, 0), 61_000), 0);
        assert_eq!(wait_ms(m, 1, wc(1, 0), 61_000), 2 * 60_000 - 1_000);
        // The last window used it: fits once its weight is gone, at the boundary.
        assert_eq!(wait_ms(m, 1, wc(0, 1), 61_000), 59_000);
        assert!(!fits(m, 1, wc(0, 1), 119_999));
    }

    #[test]
    fn a_limit_of_zero_never_fits() {
        assert!(!fits(Window::Hour, 0, wc(0, 0), 0));
        assert_eq!(remaining(Window::Hour, 0, wc(0, 0), 0), 0);
        assert_eq!(wait_ms(Window::Hour, 0, wc(0, 0), 0), i64::MAX);
    }

    #[test]
    fn wait_is_exact_for_both_real_windows() {
        let cases = [
            (10, 0, 10),
            (10, 9, 3),
            (10, 10, 0),
            (10, 12, 7),
            (60, 59, 60),
            (1, 1, 1),
            (3, 0, 250),
        ];
        for (window, (l, c, p)) in Window::ALL.into_iter().flat_map(|w| cases.map(|x| (w, x))) {
            let w = window.millis();
            for now in [0, 1, w / 3, w / 2, w - 1].map(|e| 1_000 * w + e) {
                let (counts, case) = (wc(c, p), format!("{window:?} L={l} c={c} p={p} now={now}"));
                let at = now + wait_ms(window, l, counts, now);
                assert!(fits(window, l, advance(w, counts, now, at), at), "{case}");
                if at > now {
                    assert!(!fits(window, l, advance(w, counts, now, at - 1), at - 1), "{case}");
                }
            }
        }
    }

    #[test]
    fn wait_matches_a_brute_force_search_in_a_small_window() {
        const W: i64 = 100;
        for (l, c, p) in (1..=5u32)
            .flat_map(|l| (0..=6u64).flat_map(move |c| (0..=6u64).map(move |p| (l, c, p))))
        {
            for e in 0..W {
                let (counts, case) = (wc(c, p), format!("L={l} c={c} p={p} e={e}"));
                let brute = (0..=3 * W).find(|&d| fits_after(W, l, counts, e, d, 1));
                assert_eq!(Some(wait_w(W, l, counts, e, 1)), brute, "{case}");
                let room = (0..).take_while(|&k| fits_w(W, l, wc(c + k, p), e, 1)).count();
                assert_eq!(remaining_w(W, l, counts, e), room as u64, "{case}");
            }
        }
    }

    #[test]
    fn a_cost_k_waits_exactly_as_a_brute_force_search_finds_and_fits_up_to_remaining() {
        const W: i64 = 100;
        for (l, c, p) in (1..=9u32)
            .flat_map(|l| (0..=9u64).flat_map(move |c| (0..=9u64).map(move |p| (l, c, p))))
            .filter(|&(l, c, p)| c <= u64::from(l) && p <= u64::from(l))
        {
            for (e, k) in (0..W).step_by(7).flat_map(|e| (1..=10u64).map(move |k| (e, k))) {
                let (counts, case) = (wc(c, p), format!("L={l} c={c} p={p} e={e} k={k}"));
                let brute = (0..=3 * W).find(|&d| fits_after(W, l, counts, e, d, k));
                let wait = wait_w(W, l, counts, e, k);
                assert_eq!(brute.unwrap_or(i64::MAX), wait, "{case}");
                // The largest cost that fits now is what `remaining` reports.
                let fits_now = fits_w(W, l, counts, e, k);
                assert_eq!(fits_now, k <= remaining_w(W, l, counts, e), "{case}");
            }
        }
    }

    #[test]
    fn a_cost_above_the_limit_never_fits_and_a_token_window_waits_for_its_share() {
        let (m, now) = (Window::Minute, 60_000 * 9 + 30_000);
        assert_eq!(wait_cost_ms(m, 100, wc(0, 0), now, 101), i64::MAX);
        assert_eq!(wait_cost_ms(m, 100, wc(0, 0), now, 100), 0);
        // 60 of 100 used this minute, 50 asked: the next minute at e' where
        // 60·(W−e') ≤ 50·W, i.e. e' ≥ W/6 = 10 000.
        assert!(!fits_cost(m, 100, wc(60, 0), now, 50));
        assert_eq!(wait_cost_ms(m, 100, wc(60, 0), now, 50), 30_000 + 10_000);
        assert!(fits_cost(m, 100, wc(0, 60), now + 40_000, 50));
        assert!(!fits_cost(m, 100, wc(0, 60), now + 39_999, 50));
        // Inside the window: p = 80 fades until 80·(W−e) ≤ 60·W, e ≥ 15 000.
        assert_eq!(wait_cost_ms(m, 100, wc(0, 80), 60_000 * 9, 40), 15_000);
    }

    #[test]
    fn huge_counts_do_not_overflow() {
        let (h, big) = (Window::Hour, wc(u64::MAX, u64::MAX));
        assert!(!fits(h, u32::MAX, big, 1));
        assert_eq!(remaining(h, u32::MAX, big, 1), 0);
        assert_eq!(wait_ms(h, u32::MAX, big, 1), 2 * 3_600_000 - 1);
    }
}
