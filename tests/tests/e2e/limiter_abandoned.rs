//! A stalled Redis and checks whose callers were already answered by the
//! fallback: those never reach Redis, so they are never counted. The actor
//! is built by hand on a `redis-server` of the test's own, with a handle
//! that gives up long before the actor's Redis timeout.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pantheon_domain::ManualClock;
use pantheon_domain::limiter::{
    Decision, Fallback, HandleOptions, Limits, Mode, SkipReason, limiter_channel,
};
use pantheon_infrastructure::limiter::{LimiterActor, RedisLink};
use pantheon_tests::limiter::unique_user;
use pantheon_tests::redis_server::RedisServer;

use crate::limiter_faults::T0;

/// A check whose caller was already answered by the handle's fallback is
/// never counted: under `fallback = deny` that caller got a `503`, and
/// counting it would spend its quota on a turn it never had.
///
/// The handle waits 200 ms, the actor's Redis timeout is 10 s, and Redis is
/// stalled (`CLIENT PAUSE`) for 2.5 s. Forty filler checks, 20 ms apart,
/// fill the actor's 16 pipelines in flight; the victim's checks then wait in
/// the mailbox, and their callers get the fallback after 200 ms. When Redis
/// answers again the actor takes them from the mailbox: they must not reach
/// Redis. (The fillers written before their callers gave up are counted: a
/// command on the wire cannot be recalled.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_answered_by_the_fallback_are_never_counted() {
    const STALL: Duration = Duration::from_millis(2_500);
    const LEASE_TTL: Duration = Duration::from_secs(15);
    let redis = RedisServer::start();
    let clock = Arc::new(ManualClock::at(T0));
    let options = HandleOptions {
        fallback: Fallback::Deny,
        mode: Mode::Enforce,
        wait: Duration::from_millis(200),
    };
    let (handle, mailbox, shared) = limiter_channel(4096, options, clock.clone());
    let client = redis::Client::open(redis.url()).unwrap();
    let link =
        RedisLink::start(client, Duration::from_secs(10), Fallback::Deny, shared.clone()).await;
    tokio::spawn(
        LimiterActor::new(mailbox, clock, Fallback::Deny, shared, Some(link), LEASE_TTL).run(),
    );
    let limits = Limits::turns(1_000, 10_000, 1_000);
    let check = |user| {
        let handle = handle.clone();
        tokio::spawn(async move { handle.check(user, limits).await.decision })
    };
    let warm = unique_user("warm");
    assert!(matches!(check(warm).await.unwrap(), Decision::Admitted(_)), "Redis answers");

    redis.pause(STALL.as_millis() as u64);
    let stalled = Instant::now();
    let filler = unique_user("filler");
    let mut fillers = Vec::new();
    for _ in 0..40 {
        fillers.push(check(filler.clone()));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let victim = unique_user("victim");
    let victims: Vec<_> = (0..20).map(|_| check(victim.clone())).collect();
    for task in fillers.into_iter().chain(victims) {
        let decision = task.await.unwrap();
        assert_eq!(decision, Decision::Unavailable(SkipReason::StoreUnavailable), "a 503");
    }
    assert!(stalled.elapsed() < STALL, "the callers were answered during the stall");

    // Once a later check is admitted, everything the actor sent before it
    // (same connection, in order) has run in Redis.
    tokio::time::sleep(STALL.saturating_sub(stalled.elapsed())).await;
    let sentinel = unique_user("sentinel");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !matches!(check(sentinel.clone()).await.unwrap(), Decision::Admitted(_)) {
        assert!(Instant::now() < deadline, "Redis did not answer again after the stall");
    }
    let mut connection = pantheon_tests::limiter::connection_at(redis.port());
    let mut counter = |user| pantheon_tests::limiter::logged_turns(&mut connection, user);
    let (victim_count, filler_count) = (counter(&victim), counter(&filler));
    eprintln!("after the stall: victim counter {victim_count}, filler counter {filler_count}");
    assert_eq!(victim_count, 0, "checks answered by the fallback were counted");
    assert!(filler_count < 40, "queued fillers answered by the fallback were counted too");
}
