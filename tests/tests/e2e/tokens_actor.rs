//! Token budgets through the limiter's port, against real Redis: the keys
//! and their TTLs, refunds into the charged buckets (and none into a bucket
//! that counts for nothing any more), and the Lua script and the in-process
//! backend agreeing decision for decision, reservation for reservation.

use std::sync::Arc;

use pantheon_domain::ManualClock;
use pantheon_domain::limiter::{Decision, Lease, Limits, Policy, TokenCost, Window};
use pantheon_infrastructure::limiter::keys::{active_key, token_key};
use pantheon_tests::limiter::{Store, redis_connection, redis_limiter, twin_limiters, unique_user};
use pantheon_tests::rng::Rng;
use redis::Commands;

const MINUTE: i64 = 60_000;
const HOUR: i64 = 3_600_000;
/// An hour boundary in 2026, 25 s on.
const T0: i64 = 493_400 * HOUR + 25_000;

fn budget(per_minute: u32, per_hour: u32) -> Limits {
    Limits {
        tokens_per_minute: Some(per_minute),
        tokens_per_hour: Some(per_hour),
        ..Limits::turns(1_000, 10_000, 1_000)
    }
}

fn cost(input: u64) -> TokenCost {
    TokenCost { input, min_output: 16, max_output: 200 }
}

async fn until_bucket(key: &str, expected: i64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut redis = redis_connection();
    loop {
        let value: Option<i64> = redis.get(key).unwrap();
        if value == Some(expected) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{key} holds {value:?}, not {expected}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_reservation_charges_both_buckets_with_ttls_and_a_settled_lease_refunds_them() {
    let clock = Arc::new(ManualClock::at(T0));
    let limiter = redis_limiter(clock.clone()).await;
    let user = unique_user("tokens");
    let l = budget(1_000, 5_000);
    assert!(limiter.peek(user.clone(), l).await.is_some());
    let mut redis = redis_connection();
    let none: Vec<String> = redis.keys(format!("ratelimit:{{{user}}}:tokens:*")).unwrap();
    assert!(none.is_empty(), "a peek creates no key: {none:?}");

    let mut lease = limiter.check_with(user.clone(), l, cost(100)).await.lease.unwrap();
    let reservation = lease.reservation().unwrap();
    assert_eq!((reservation.input, reservation.output_cap), (100, 200));
    let minute = token_key(&user, Window::Minute, T0 / MINUTE);
    let hour = token_key(&user, Window::Hour, T0 / HOUR);
    for (key, ttl) in [(&minute, 2 * MINUTE), (&hour, 2 * HOUR)] {
        assert_eq!(redis.get::<_, i64>(key).unwrap(), 300, "{key}");
        let pttl: i64 = redis::cmd("PTTL").arg(key).query(&mut redis).unwrap();
        assert!(pttl > 0 && pttl <= ttl, "{key}: PTTL {pttl}");
    }
    lease.settle(130);
    drop(lease);
    until_bucket(&minute, 130).await;
    until_bucket(&hour, 130).await;
    let pttl: i64 = redis::cmd("PTTL").arg(&minute).query(&mut redis).unwrap();
    assert!(pttl > 0 && pttl <= 2 * MINUTE, "a refunded bucket keeps its end: PTTL {pttl}");
    let status = limiter.peek(user.clone(), l).await.unwrap();
    assert_eq!(status.tokens.map(|u| u.map(|u| u.remaining)), [Some(870), Some(4_870)]);
}

#[tokio::test]
async fn a_refund_for_a_bucket_past_being_anyone_s_previous_window_is_not_sent() {
    let clock = Arc::new(ManualClock::at(T0));
    let limiter = redis_limiter(clock.clone()).await;
    let user = unique_user("late");
    let mut lease = limiter.check_with(user.clone(), budget(1_000, 5_000), cost(100)).await.lease;
    // Three minutes on, the minute bucket counts for nothing (Redis would
    // have expired it): a refund there could only make a key anew.
    clock.advance(3 * MINUTE);
    if let Some(lease) = lease.as_mut() {
        lease.settle(0);
    }
    drop(lease);
    let hour = token_key(&user, Window::Hour, T0 / HOUR);
    until_bucket(&hour, 0).await;
    let minute = token_key(&user, Window::Minute, T0 / MINUTE);
    let value: i64 = redis_connection().get(&minute).unwrap();
    assert_eq!(value, 300, "the old minute bucket was left alone");
}

/// Both backends over the same random arrivals, costs, settlements and
/// clock moves, under small budgets and under the largest (exact in the
/// script's doubles only below 2^53): every decision and every reservation
/// equal.
#[tokio::test]
async fn redis_and_in_process_backends_agree_on_every_token_decision() {
    let seed = 0x70_c3_u64 ^ u64::from(std::process::id());
    let mut rng = Rng(seed | 1);
    let clock = Arc::new(ManualClock::at(T0 + 123));
    let (redis, memory) = twin_limiters(Store::Single, clock.clone()).await;
    let users: Vec<_> = (0..3).map(|_| unique_user("tokdiff")).collect();
    let small = Limits { per_minute: 50, per_hour: 500, max_concurrent: 3, ..budget(600, 3_000) };
    let large = Limits { tokens_per_hour: Some(1_000_000_000), ..small };
    let (mut running, mut refused_by_tokens, mut admitted) = (Vec::<(Lease, Lease)>::new(), 0, 0);
    for step in 0..800 {
        clock.advance(rng.gap_ms());
        if !running.is_empty() && rng.next(3) == 0 {
            // A turn ends: both leases settle alike, then drop.
            let (mut a, mut b) = running.swap_remove(rng.next(running.len() as u64) as usize);
            let reserved = a.reservation().map_or(0, |r| r.total());
            let used = rng.next(reserved + 20);
            a.settle(used);
            b.settle(used);
            continue;
        }
        let user = &users[rng.next(3) as usize];
        let (limits, input) = if step >= 600 {
            (large, 100_000_000 + rng.next(100_000_000))
        } else {
            (small, rng.next(300))
        };
        let turn = TokenCost { input, min_output: 16, max_output: 1 + rng.next(400) };
        let a = redis.check_with(user.clone(), limits, turn).await;
        let b = memory.check_with(user.clone(), limits, turn).await;
        assert_eq!(a.decision, b.decision, "seed {seed}, step {step}: the backends disagree");
        match (a.lease, b.lease) {
            (Some(a), Some(b)) => {
                assert_eq!(a.reservation(), b.reservation(), "seed {seed}, step {step}");
                admitted += 1;
                running.push((a, b));
            }
            (None, None) => {}
            _ => panic!("seed {seed}, step {step}: one backend took a slot, the other did not"),
        }
        if let Decision::Limited(denial) = &a.decision {
            refused_by_tokens += usize::from(denial.violated.iter().any(|p| p.is_tokens()));
            assert!(
                denial
                    .violated
                    .iter()
                    .all(|p| *p != Policy::Concurrency || limits.max_concurrent == 3)
            );
        }
    }
    assert!(admitted > 50, "the sequence admitted turns ({admitted})");
    assert!(refused_by_tokens > 20, "and refused some for tokens ({refused_by_tokens})");
    drop(running);
    let mut conn = redis_connection();
    for user in &users {
        let _: () = conn.del(active_key(user)).unwrap();
    }
}
