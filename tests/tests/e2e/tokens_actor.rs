//! Token budgets through the limiter's port, against real Redis: the log
//! and its TTL, refunds to the entry charged (and only in the windows that
//! still hold it), and the Lua script and the in-process backend agreeing
//! decision for decision, reservation for reservation.

use std::sync::Arc;

use pantheon_domain::limiter::{Decision, Lease, Limits, Policy, TokenCost};
use pantheon_domain::{ManualClock, UserId};
use pantheon_infrastructure::limiter::keys::{active_key, log_key};
use pantheon_tests::limiter::{
    Store, redis_connection, redis_limiter, settled_log, twin_limiters, unique_user,
};
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

/// Waits (bounded) until `user`'s log holds `expected`: per entry, its
/// stamp and tokens (a release is sent after the lease is dropped; its
/// refund marked is applied by the peek that reads the log).
async fn until_logged(user: &UserId, expected: &[(i64, u64)]) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut redis = redis_connection();
    loop {
        let log = settled_log(&mut redis, user);
        let got: Vec<(i64, u64)> =
            log.iter().flat_map(|l| l.entries.iter().map(|e| (e.at_ms, e.tokens))).collect();
        if got == expected {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "the log holds {got:?}, not {expected:?}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_reservation_is_logged_with_the_log_s_ttl_and_a_settled_lease_refunds_its_entry() {
    let clock = Arc::new(ManualClock::at(T0));
    let limiter = redis_limiter(clock.clone()).await;
    let user = unique_user("tokens");
    let l = budget(1_000, 5_000);
    assert!(limiter.peek(user.clone(), l).await.is_some());
    let mut redis = redis_connection();
    let none: Vec<String> = redis.keys(format!("ratelimit:{{{user}}}:*")).unwrap();
    assert!(none.is_empty(), "a peek creates no key: {none:?}");

    let mut lease = limiter.check_with(user.clone(), l, cost(100)).await.lease.unwrap();
    let reservation = lease.reservation().unwrap();
    assert_eq!((reservation.input, reservation.output_cap, reservation.at_ms), (100, 200, T0));
    until_logged(&user, &[(T0, 300)]).await;
    let pttl: i64 = redis::cmd("PTTL").arg(log_key(&user)).query(&mut redis).unwrap();
    assert!(pttl > HOUR - 60_000 && pttl <= HOUR, "the log lives an hour: PTTL {pttl}");
    lease.settle(130);
    drop(lease);
    // The release marks the lease with its refund (no longer a slot: its
    // score is below zero); the set, kept an hour since the budgeted
    // admission, holds the mark until the user's next check or peek.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let members: Vec<(String, f64)> =
            redis.zrange_withscores(active_key(&user), 0, -1).unwrap();
        if members.first().is_some_and(|(_, score)| *score < 0.0) {
            assert_eq!(members.len(), 1, "{members:?}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no mark: {members:?}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let pttl: i64 = redis::cmd("PTTL").arg(active_key(&user)).query(&mut redis).unwrap();
    assert!(pttl > HOUR - 60_000 && pttl <= HOUR, "the mark waits an hour: PTTL {pttl}");
    until_logged(&user, &[(T0, 130)]).await;
    let left: i64 = redis.zcard(active_key(&user)).unwrap();
    assert_eq!(left, 0, "the peek that applied the refund removed its mark");
    let pttl: i64 = redis::cmd("PTTL").arg(log_key(&user)).query(&mut redis).unwrap();
    assert!(pttl > 0 && pttl <= HOUR, "a refund keeps the log's end: PTTL {pttl}");
    let status = limiter.peek(user.clone(), l).await.unwrap();
    assert_eq!(status.tokens.map(|u| u.map(|u| u.remaining)), [Some(870), Some(4_870)]);
}

/// An entry two minutes old has left the minute: its refund frees room in
/// the hour only. One past the hour has left the log: its refund is not
/// sent, and the log's other entries keep their tokens.
#[tokio::test]
async fn a_refund_lands_only_in_the_windows_that_still_hold_its_entry() {
    let clock = Arc::new(ManualClock::at(T0));
    let limiter = redis_limiter(clock.clone()).await;
    let user = unique_user("late");
    let l = budget(1_000, 5_000);
    let mut early = limiter.check_with(user.clone(), l, cost(100)).await.lease.unwrap();
    clock.advance(2 * MINUTE);
    let mut middle = limiter.check_with(user.clone(), l, cost(100)).await.lease.unwrap();
    early.settle(0);
    drop(early);
    until_logged(&user, &[(T0, 0), (T0 + 2 * MINUTE, 300)]).await;
    let status = limiter.peek(user.clone(), l).await.unwrap();
    assert_eq!(status.tokens.map(|u| u.map(|u| u.remaining)), [Some(700), Some(4_700)]);

    clock.advance(HOUR);
    middle.settle(0);
    drop(middle);
    // A marker after it: once its refund would have run, this one's has.
    let mut marker = limiter.check_with(user.clone(), l, cost(100)).await.lease.unwrap();
    marker.settle(50);
    drop(marker);
    let now = T0 + 2 * MINUTE + HOUR;
    until_logged(&user, &[(now, 50)]).await;
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
