//! The log against the definition: bursts, exact retries, refunds, and
//! random sequences checked against every entry ever made.

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
            now += [0, 1, 999, 7_000, 59_999, 61_000][rng.below(6) as usize] + rng.below(3) as i64;
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
