//! The limiter through its port, against real Redis — the single Redis and
//! the Redis Cluster, every test on both: exact rolling windows and retry
//! times, atomicity under concurrency (and at a window's edge), keys and
//! TTLs, and the Redis and in-process backends agreeing decision for
//! decision.

use std::sync::Arc;

use pantheon_domain::limiter::{
    Decision, Denial, Lease, LimiterHandle, Limits, Policy, TokenCost, Window,
};
use pantheon_domain::{ManualClock, UserId};
use pantheon_infrastructure::limiter::keys::active_key;
use pantheon_tests::limiter::{Store, redis_time_ms, stored_log, twin_limiters, unique_user};
use pantheon_tests::rng::Rng;
use redis::Commands;

on_both_stores!(
    a_minute_bound_refusal_is_exact,
    an_hour_bound_refusal_is_exact,
    a_refusal_bound_by_both_windows_is_exact,
    a_limit_of_one_waits_one_minute_after_its_turn,
    a_burst_at_a_window_s_end_never_puts_more_than_the_limit_in_any_window,
    three_instances_racing_at_a_window_edge_admit_exactly_what_left,
    refusals_count_nothing_and_a_higher_tier_is_admitted_next,
    keys_are_named_as_documented_with_ttls_of_their_longest_window_and_peeks_create_none,
    five_hundred_concurrent_checks_admit_exactly_the_limit,
    redis_and_in_process_backends_agree_on_every_decision,
);

const MINUTE: i64 = 60_000;
const HOUR: i64 = 3_600_000;
/// An hour boundary (also a minute boundary) in 2026.
const T0: i64 = 493_000 * HOUR;

/// Window limits with a cap on running turns no window test reaches (their
/// leases are dropped, and so released, as soon as each check returns).
fn limits(per_minute: u32, per_hour: u32) -> Limits {
    Limits::turns(per_minute, per_hour, 1_000_000)
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
        assert!(is_admitted(&cached.check(user.clone(), limits).await.decision));
    }
    let refused = denial(cached.check(user.clone(), limits).await.decision);
    assert_eq!(refused.violated, violated.iter().map(|&w| Policy::from(w)).collect::<Vec<_>>());
    assert!(refused.retry_at_ms > start_ms);

    clock.set(refused.retry_at_ms - 1);
    let by_cache = denial(cached.check(user.clone(), limits).await.decision);
    assert_eq!(by_cache.retry_at_ms, refused.retry_at_ms, "the cache answers the same retry time");
    let fresh = store.limiter(clock.clone()).await;
    let by_redis = denial(fresh.check(user.clone(), limits).await.decision);
    assert_eq!(by_redis.retry_at_ms, refused.retry_at_ms, "Redis agrees at retry_at − 1 ms");

    clock.set(refused.retry_at_ms);
    assert!(
        is_admitted(&cached.check(user.clone(), limits).await.decision),
        "admitted exactly at retry_at"
    );
    refused
}

async fn a_minute_bound_refusal_is_exact(store: Store) {
    let refused =
        assert_exact_retry(store, limits(3, 100), T0 + 10_000, 3, &[Window::Minute]).await;
    // Three turns at one instant: one more fits when they leave, a minute on.
    assert_eq!(refused.retry_at_ms, T0 + 10_000 + MINUTE);
}

async fn an_hour_bound_refusal_is_exact(store: Store) {
    let refused =
        assert_exact_retry(store, limits(100, 3), T0 + 20 * MINUTE, 3, &[Window::Hour]).await;
    assert_eq!(refused.retry_at_ms, T0 + 20 * MINUTE + HOUR);
}

async fn a_refusal_bound_by_both_windows_is_exact(store: Store) {
    let refused =
        assert_exact_retry(store, limits(3, 3), T0 + 5_000, 3, &[Window::Minute, Window::Hour])
            .await;
    // The hour is the later of the two waits, so it binds.
    assert_eq!(refused.binding, Policy::Hour);
    assert_eq!(refused.retry_at_ms, T0 + 5_000 + HOUR);
}

async fn a_limit_of_one_waits_one_minute_after_its_turn(store: Store) {
    let refused =
        assert_exact_retry(store, limits(1, 100), T0 + 59_999, 1, &[Window::Minute]).await;
    assert_eq!(refused.retry_at_ms, T0 + 59_999 + MINUTE, "a minute from the turn, not more");
}

/// The most admitted turns any span of `window_ms` holds, over every span
/// ending at an admission (the spans that can hold the most).
fn most_in_any_window(admitted: &[i64], window_ms: i64) -> usize {
    admitted
        .iter()
        .map(|&end| admitted.iter().filter(|&&t| t > end - window_ms && t <= end).count())
        .max()
        .unwrap_or(0)
}

/// `burst` tries in the last 100 ms before `edge`, then one every
/// `step_ms`, `tries` times, each costing `cost`: the admitted instants.
async fn burst_then_steady(
    limiter: &LimiterHandle,
    clock: &ManualClock,
    (l, cost): (Limits, TokenCost),
    burst: i64,
    edge: i64,
    (step_ms, tries): (i64, i64),
) -> Vec<i64> {
    let user = unique_user("burst");
    let mut admitted = Vec::new();
    let burst = (0..burst).map(|i| edge - 100 + i * 100 / burst);
    for at in burst.chain((1..=tries).map(|i| edge + i * step_ms)) {
        clock.set(at);
        if is_admitted(&limiter.check_with(user.clone(), l, cost).await.decision) {
            admitted.push(at);
        }
    }
    admitted
}

/// The burst the sliding-window counter let through at 1.95× its limit:
/// 20 turns in the last 100 ms of a minute, then a try every 100 ms for
/// 70 s. No 60 s hold more than 20, and the steady tries get in exactly as
/// the burst's turns leave. The hour the same way, scaled: 20 in the last
/// 100 ms of an hour, then a try every second for 70 minutes. And a token
/// minute of 2,000 whose turns reserve 100 each: never more than 2,000
/// tokens in any 60 s.
async fn a_burst_at_a_window_s_end_never_puts_more_than_the_limit_in_any_window(store: Store) {
    let clock = Arc::new(ManualClock::at(T0));
    let limiter = store.limiter(clock.clone()).await;
    let turns = TokenCost::default();
    let minute = (limits(20, 100_000), turns);
    let admitted = burst_then_steady(&limiter, &clock, minute, 20, T0 + MINUTE, (100, 700)).await;
    assert_eq!(most_in_any_window(&admitted, MINUTE), 20);
    assert_eq!(admitted.len(), 40, "20, then 20 more as each left, a minute later");
    assert_eq!(admitted[20], admitted[0] + MINUTE, "the first steady try in as the first left");

    let hour = (limits(100_000, 20), turns);
    let edge = T0 + 2 * HOUR;
    let admitted = burst_then_steady(&limiter, &clock, hour, 20, edge, (1_000, 4_200)).await;
    assert_eq!(most_in_any_window(&admitted, HOUR), 20);
    assert_eq!(admitted.len(), 40);
    // The first of the burst left at edge − 100 ms + 1 h; the next try is
    // on the second.
    assert_eq!(admitted[20], edge + HOUR, "the first try after the first left");

    // 84 tokens of input and 16 of output: each turn reserves exactly 100
    // (its lease is dropped unsettled, so nothing is refunded); 30 tries
    // in the burst, 20 fit.
    let budget = Limits { tokens_per_minute: Some(2_000), ..limits(100_000, 100_000) };
    let cost = TokenCost { input: 84, min_output: 16, max_output: 16 };
    let edge = T0 + 3 * HOUR;
    let admitted = burst_then_steady(&limiter, &clock, (budget, cost), 30, edge, (100, 700)).await;
    assert_eq!(most_in_any_window(&admitted, MINUTE) * 100, 2_000, "tokens in any minute");
    assert_eq!(admitted.len(), 40);
    assert_eq!(admitted[20], admitted[0] + MINUTE);
}

/// Twenty turns fill a minute; at the instant before they leave, 300
/// checks over three instances admit none; at the instant they leave,
/// exactly 20.
async fn three_instances_racing_at_a_window_edge_admit_exactly_what_left(store: Store) {
    let clock = Arc::new(ManualClock::at(T0 + 7_000));
    let three = [
        store.limiter(clock.clone()).await,
        store.limiter(clock.clone()).await,
        store.limiter(clock.clone()).await,
    ];
    let user = unique_user("edge");
    let l = limits(20, 1_000);
    for i in 0..20 {
        let handle = &three[i % 3];
        assert!(is_admitted(&handle.check(user.clone(), l).await.decision));
    }
    clock.set(T0 + 7_000 + MINUTE - 1);
    assert_eq!(race(&three, &user, 300, l).await, 0, "1 ms before the edge");
    clock.set(T0 + 7_000 + MINUTE);
    assert_eq!(race(&three, &user, 300, l).await, 20, "at the edge");
}

/// `checks` concurrent checks of `user` spread over `handles`: how many
/// were admitted.
async fn race(handles: &[LimiterHandle], user: &UserId, checks: usize, l: Limits) -> usize {
    let tasks: Vec<_> = (0..checks)
        .map(|i| {
            let handle = handles[i % handles.len()].clone();
            let user = user.clone();
            tokio::spawn(async move { handle.check(user, l).await.decision })
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

async fn refusals_count_nothing_and_a_higher_tier_is_admitted_next(store: Store) {
    let clock = Arc::new(ManualClock::at(T0 + 1_000));
    let limiter = store.limiter(clock.clone()).await;
    let user = unique_user("tier");
    let free = limits(2, 100);
    for _ in 0..2 {
        assert!(is_admitted(&limiter.check(user.clone(), free).await.decision));
    }
    let mut redis = store.connection();
    for _ in 0..5 {
        denial(limiter.check(user.clone(), free).await.decision);
    }
    // A fresh actor: these refusals come from Redis itself, not the cache.
    let fresh = store.limiter(clock.clone()).await;
    for _ in 0..5 {
        denial(fresh.check(user.clone(), free).await.decision);
    }
    let log = stored_log(&mut redis, &user).expect("two admissions");
    let stamps: Vec<i64> = log.entries.iter().map(|e| e.at_ms).collect();
    assert_eq!(stamps, [T0 + 1_000; 2], "refused attempts log nothing");

    let pro = limits(10, 1_000);
    assert!(
        is_admitted(&limiter.check(user.clone(), pro).await.decision),
        "the upgrade applies at once"
    );
}

async fn keys_are_named_as_documented_with_ttls_of_their_longest_window_and_peeks_create_none(
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

    let before = redis_time_ms(&mut redis);
    let admission = limiter.check(user.clone(), l).await;
    let after = redis_time_ms(&mut redis);
    assert!(is_admitted(&admission.decision));
    let mut keys: Vec<String> = redis.keys(&pattern).unwrap();
    keys.sort();
    let expected =
        vec![format!("ratelimit:{{{user}}}:log"), format!("ratelimit:{{{user}}}:turns:active")];
    assert_eq!(keys, expected);
    // The log lives an hour past its newest entry, the lease set a lease
    // TTL (15 s by default) past its newest lease.
    for (key, ttl) in keys.iter().zip([HOUR, 15_000]) {
        let pttl: i64 = redis::cmd("PTTL").arg(key).query(&mut redis).unwrap();
        assert!(pttl > 0 && pttl <= ttl, "{key}: PTTL {pttl}");
    }
    let lease = admission.lease.expect("an admission holds a lease");
    // Scored by its expiry on the Redis server's clock, not the instance's.
    let members: Vec<(String, i64)> = redis.zrange_withscores(&keys[1], 0, -1).unwrap();
    let [(member, expiry)] = &members[..] else { panic!("one lease: {members:?}") };
    assert_eq!(*member, lease.id().to_string());
    assert!(
        (before + 15_000..=after + 15_000).contains(expiry),
        "{expiry} not in {before}..{after} + 15 s"
    );

    // Released: the last member gone, the set goes with it.
    drop(lease);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while redis.exists::<_, bool>(&keys[1]).unwrap() {
        assert!(std::time::Instant::now() < deadline, "the release never reached Redis");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

async fn admitted_among(handles: &[LimiterHandle], checks: usize, l: Limits) -> usize {
    race(handles, &unique_user("burst"), checks, l).await
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

/// Both backends over the same random arrivals, finishes and clock moves:
/// every decision equal. Turns hold their leases until the sequence ends
/// them (the lease TTL is longer than the whole run, so only releases free
/// slots, on both sides).
async fn redis_and_in_process_backends_agree_on_every_decision(store: Store) {
    let seed = 0x5eed_u64 ^ u64::from(std::process::id());
    let mut rng = Rng(seed | 1);
    let clock = Arc::new(ManualClock::at(T0 + 123));
    let (redis, memory) = twin_limiters(store, clock.clone()).await;
    let users: Vec<_> = (0..3).map(|_| unique_user("diff")).collect();
    let l = Limits::turns(4, 12, 2);
    let mut running: Vec<(usize, Lease, Lease)> = Vec::new();
    let (mut refused, mut by_concurrency, mut finished) = (0, 0, 0);
    for step in 0..600 {
        clock.advance(rng.gap_ms());
        if !running.is_empty() && rng.next(3) == 0 {
            // A turn ends: both of its leases are dropped.
            running.swap_remove(rng.next(running.len() as u64) as usize);
            finished += 1;
            continue;
        }
        let u = rng.next(3) as usize;
        let user = &users[u];
        let (a, b) = (redis.check(user.clone(), l).await, memory.check(user.clone(), l).await);
        assert_eq!(
            a.decision, b.decision,
            "seed {seed}, step {step}: Redis and in-process disagree"
        );
        match (a.lease, b.lease) {
            (Some(a), Some(b)) => running.push((u, a, b)),
            (None, None) => {}
            _ => panic!("seed {seed}, step {step}: one backend took a slot, the other did not"),
        }
        if let Decision::Limited(denial) = &a.decision {
            refused += 1;
            by_concurrency += usize::from(denial.violated.contains(&Policy::Concurrency));
        }
    }
    assert!(refused > 20, "the sequence exercised refusals ({refused})");
    assert!(by_concurrency > 5, "and refusals for concurrency ({by_concurrency})");
    assert!(finished > 20, "and turns ending ({finished})");
    drop(running);
    let mut conn = store.connection();
    for user in &users {
        let _: () = conn.del(active_key(user)).unwrap();
    }
}
