//! The limiter through its port, against real Redis — the single Redis and
//! the Redis Cluster, every test on both: exact retry times, sliding
//! weights, atomicity under concurrency, keys and TTLs, and the Redis and
//! in-process backends agreeing decision for decision.

use std::sync::Arc;

use pantheon_domain::ManualClock;
use pantheon_domain::limiter::{Decision, Denial, LimiterHandle, Limits, Window};
use pantheon_infrastructure::limiter::keys::counter_key;
use pantheon_tests::limiter::{Store, memory_limiter, unique_user};
use redis::Commands;

on_both_stores!(
    a_minute_bound_refusal_is_exact,
    an_hour_bound_refusal_is_exact,
    a_refusal_bound_by_both_windows_is_exact,
    a_limit_of_one_waits_for_the_window_after_next,
    the_window_boundary_moves_the_count_into_the_previous_window,
    the_previous_window_weighs_by_the_time_left_in_the_current_one,
    refusals_count_nothing_and_a_higher_tier_is_admitted_next,
    keys_are_named_as_documented_with_ttls_within_two_windows_and_peeks_create_none,
    five_hundred_concurrent_checks_admit_exactly_the_limit,
    redis_and_in_process_backends_agree_on_every_decision,
);

const MINUTE: i64 = 60_000;
const HOUR: i64 = 3_600_000;
/// An hour boundary (also a minute boundary) in 2026.
const T0: i64 = 493_000 * HOUR;

fn limits(per_minute: u32, per_hour: u32) -> Limits {
    Limits { per_minute, per_hour }
}

fn denial(decision: Decision) -> Denial {
    match decision {
        Decision::Limited(denial) => denial,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn is_admitted(decision: &Decision) -> bool {
    matches!(decision, Decision::Admitted(_))
}

/// Checks until the first refusal (asserting `expected_admissions` came
/// first), then that the refusal is exact: at `retry_at − 1` refused by the
/// cache and, on a fresh actor with an empty cache, by Redis; at `retry_at`
/// admitted.
async fn assert_exact_retry(
    store: Store,
    limits: Limits,
    start_ms: i64,
    expected_admissions: usize,
    violated: &[Window],
) -> Denial {
    let clock = Arc::new(ManualClock::at(start_ms));
    let cached = store.limiter(clock.clone()).await;
    let user = unique_user("exact");
    for _ in 0..expected_admissions {
        assert!(is_admitted(&cached.check(user.clone(), limits).await));
    }
    let refused = denial(cached.check(user.clone(), limits).await);
    assert_eq!(refused.violated, violated);
    assert!(refused.retry_at_ms > start_ms);

    clock.set(refused.retry_at_ms - 1);
    let by_cache = denial(cached.check(user.clone(), limits).await);
    assert_eq!(by_cache.retry_at_ms, refused.retry_at_ms, "the cache answers the same retry time");
    let fresh = store.limiter(clock.clone()).await;
    let by_redis = denial(fresh.check(user.clone(), limits).await);
    assert_eq!(by_redis.retry_at_ms, refused.retry_at_ms, "Redis agrees at retry_at − 1 ms");

    clock.set(refused.retry_at_ms);
    assert!(is_admitted(&cached.check(user.clone(), limits).await), "admitted exactly at retry_at");
    refused
}

async fn a_minute_bound_refusal_is_exact(store: Store) {
    let refused =
        assert_exact_retry(store, limits(3, 100), T0 + 10_000, 3, &[Window::Minute]).await;
    // c = 3 = L in the current minute: the first instant the previous
    // minute's weight lets one more in is (W − e) + W − ⌊(L−1)·W/c⌋.
    assert_eq!(refused.retry_at_ms, T0 + 10_000 + (MINUTE - 10_000) + MINUTE - 2 * MINUTE / 3);
}

async fn an_hour_bound_refusal_is_exact(store: Store) {
    let refused =
        assert_exact_retry(store, limits(100, 3), T0 + 20 * MINUTE, 3, &[Window::Hour]).await;
    assert_eq!(refused.retry_at_ms, T0 + 20 * MINUTE + (HOUR - 20 * MINUTE) + HOUR - 2 * HOUR / 3);
}

async fn a_refusal_bound_by_both_windows_is_exact(store: Store) {
    let refused =
        assert_exact_retry(store, limits(3, 3), T0 + 5_000, 3, &[Window::Minute, Window::Hour])
            .await;
    // The hour is the later of the two waits, so it binds.
    assert_eq!(refused.binding, Window::Hour);
    assert_eq!(refused.retry_at_ms, T0 + 5_000 + (HOUR - 5_000) + HOUR - 2 * HOUR / 3);
}

async fn a_limit_of_one_waits_for_the_window_after_next(store: Store) {
    let refused =
        assert_exact_retry(store, limits(1, 100), T0 + 59_999, 1, &[Window::Minute]).await;
    assert_eq!(refused.retry_at_ms, T0 + 2 * MINUTE, "2W − e from 59,999 ms");
}

async fn the_window_boundary_moves_the_count_into_the_previous_window(store: Store) {
    let clock = Arc::new(ManualClock::at(T0 + 59_998));
    let limiter = store.limiter(clock.clone()).await;
    let user = unique_user("boundary");
    let l = limits(2, 100);
    for _ in 0..2 {
        assert!(is_admitted(&limiter.check(user.clone(), l).await));
    }
    clock.set(T0 + 59_999);
    assert!(!is_admitted(&limiter.check(user.clone(), l).await), "59,999: still the same window");
    clock.set(T0 + 60_000);
    // e = 0 of the next window: the previous count weighs in full (2·W + W > 2·W).
    assert!(
        !is_admitted(&limiter.check(user.clone(), l).await),
        "60,000: previous window at full weight"
    );
}

/// The previous window's share at e = 0, W/2 and W − 1 with p = 10, L = 10:
/// turns that fit are ⌊(L·W − p·(W − e)) / W⌋.
async fn the_previous_window_weighs_by_the_time_left_in_the_current_one(store: Store) {
    for (elapsed, expected) in [(0, 0), (MINUTE / 2, 5), (MINUTE - 1, 9)] {
        let clock = Arc::new(ManualClock::at(T0 + MINUTE - 1));
        let limiter = store.limiter(clock.clone()).await;
        let user = unique_user("weight");
        let l = limits(10, 1_000);
        for _ in 0..10 {
            assert!(is_admitted(&limiter.check(user.clone(), l).await));
        }
        clock.set(T0 + MINUTE + elapsed);
        let mut admitted = 0;
        while is_admitted(&limiter.check(user.clone(), l).await) {
            admitted += 1;
            assert!(admitted <= 10);
        }
        assert_eq!(admitted, expected, "e = {elapsed}");
    }
}

async fn refusals_count_nothing_and_a_higher_tier_is_admitted_next(store: Store) {
    let clock = Arc::new(ManualClock::at(T0 + 1_000));
    let limiter = store.limiter(clock.clone()).await;
    let user = unique_user("tier");
    let free = limits(2, 100);
    for _ in 0..2 {
        assert!(is_admitted(&limiter.check(user.clone(), free).await));
    }
    let mut redis = store.connection();
    let minute_key = counter_key(&user, Window::Minute, T0 / MINUTE);
    let hour_key = counter_key(&user, Window::Hour, T0 / HOUR);
    for _ in 0..5 {
        denial(limiter.check(user.clone(), free).await);
    }
    // A fresh actor: these refusals come from Redis itself, not the cache.
    let fresh = store.limiter(clock.clone()).await;
    for _ in 0..5 {
        denial(fresh.check(user.clone(), free).await);
    }
    let counts: (i64, i64) = (redis.get(&minute_key).unwrap(), redis.get(&hour_key).unwrap());
    assert_eq!(counts, (2, 2), "refused attempts bump neither window");

    let pro = limits(10, 1_000);
    assert!(is_admitted(&limiter.check(user.clone(), pro).await), "the upgrade applies at once");
}

async fn keys_are_named_as_documented_with_ttls_within_two_windows_and_peeks_create_none(
    store: Store,
) {
    let clock = Arc::new(ManualClock::at(T0 + 25_000));
    let limiter = store.limiter(clock.clone()).await;
    let user = unique_user("keys");
    let l = limits(5, 50);
    assert!(limiter.peek(user.clone(), l).await.is_some());
    let mut redis = store.connection();
    let pattern = format!("ratelimit:{{{user}}}:*");
    let keys: Vec<String> = redis.keys(&pattern).unwrap();
    assert!(keys.is_empty(), "a peek creates no key: {keys:?}");

    assert!(is_admitted(&limiter.check(user.clone(), l).await));
    let mut keys: Vec<String> = redis.keys(&pattern).unwrap();
    keys.sort();
    let expected = vec![
        format!("ratelimit:{{{user}}}:turns:hour:{}", T0 / HOUR),
        format!("ratelimit:{{{user}}}:turns:minute:{}", (T0 + 25_000) / MINUTE),
    ];
    assert_eq!(keys, expected);
    for (key, window) in keys.iter().zip([HOUR, MINUTE]) {
        let pttl: i64 = redis::cmd("PTTL").arg(key).query(&mut redis).unwrap();
        assert!(pttl > 0 && pttl <= 2 * window, "{key}: PTTL {pttl}");
    }
}

async fn admitted_among(handles: &[LimiterHandle], checks: usize, l: Limits) -> usize {
    let user = unique_user("burst");
    let tasks: Vec<_> = (0..checks)
        .map(|i| {
            let handle = handles[i % handles.len()].clone();
            let user = user.clone();
            tokio::spawn(async move { handle.check(user, l).await })
        })
        .collect();
    let mut admitted = 0;
    for task in tasks {
        match task.await.unwrap() {
            Decision::Admitted(_) => admitted += 1,
            Decision::Limited(_) => {}
            other => panic!("no check may be skipped here: {other:?}"),
        }
    }
    admitted
}

async fn five_hundred_concurrent_checks_admit_exactly_the_limit(store: Store) {
    let clock = Arc::new(ManualClock::at(T0 + 30_000));
    let one = store.limiter(clock.clone()).await;
    assert_eq!(admitted_among(&[one], 500, limits(20, 1_000)).await, 20);

    let three = [
        store.limiter(clock.clone()).await,
        store.limiter(clock.clone()).await,
        store.limiter(clock.clone()).await,
    ];
    assert_eq!(
        admitted_among(&three, 500, limits(20, 1_000)).await,
        20,
        "three instances, one Redis"
    );
}

/// A tiny deterministic generator (xorshift), so a failure is reproducible
/// from the printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}

async fn redis_and_in_process_backends_agree_on_every_decision(store: Store) {
    let seed = 0x5eed_u64 ^ u64::from(std::process::id());
    let mut rng = Rng(seed | 1);
    let clock = Arc::new(ManualClock::at(T0 + 123));
    let redis = store.limiter(clock.clone()).await;
    let memory = memory_limiter(clock.clone()).await;
    let users: Vec<_> = (0..3).map(|_| unique_user("diff")).collect();
    let l = limits(4, 12);
    let mut refused = 0;
    for step in 0..400 {
        // Mostly short gaps (bursts), sometimes long ones (window changes).
        let gap = match rng.next(10) {
            0..=5 => rng.next(2_000) as i64,
            6..=8 => rng.next(40_000) as i64,
            _ => rng.next(1_200_000) as i64,
        };
        clock.advance(gap);
        let user = &users[rng.next(3) as usize];
        let (a, b) = (redis.check(user.clone(), l).await, memory.check(user.clone(), l).await);
        assert_eq!(a, b, "seed {seed}, step {step}: Redis and in-process disagree");
        refused += usize::from(matches!(a, Decision::Limited(_)));
    }
    assert!(refused > 20, "the sequence exercised refusals ({refused})");
}
