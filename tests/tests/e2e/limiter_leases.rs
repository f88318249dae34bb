//! Redis leases when clocks, calls and masters misbehave (README "Keys and
//! transport"): lease expiry on the Redis server's clock, so instances whose
//! clocks disagree keep each other's live leases; a refund only for a lease
//! its release actually removed, so a master that never saw a reservation
//! gives nothing back; and the lease of a check that ran after its call
//! timed out removed as soon as Redis answers again, not a lease TTL later.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pantheon_domain::ManualClock;
use pantheon_domain::limiter::{
    Admission, Decision, Fallback, HandleOptions, LimiterHandle, Limits, Mode, SkipReason,
    TokenCost, limiter_channel,
};
use pantheon_infrastructure::limiter::keys::active_key;
use pantheon_infrastructure::limiter::{LimiterActor, RedisLink};
use pantheon_tests::limiter::{Store, T0, connection_at, unique_user};
use pantheon_tests::redis_server::{RedisServer, try_command_at};
use redis::Commands;

fn is_admitted(admission: &Admission) -> bool {
    matches!(admission.decision, Decision::Admitted(_))
}

/// A limiter on the `redis-server` at `url`, built by hand with a stopped
/// clock at [`T0`]: the handle waits `wait` for the actor, which bounds
/// each Redis call by `timeout` and answers by `fallback = deny`.
async fn own_limiter(
    url: &str,
    timeout: Duration,
    wait: Duration,
    lease_ttl: Duration,
) -> LimiterHandle {
    let clock = Arc::new(ManualClock::at(T0));
    let options = HandleOptions { fallback: Fallback::Deny, mode: Mode::Enforce, wait };
    let (handle, mailbox, shared) = limiter_channel(4096, options, clock.clone());
    let client = redis::Client::open(url).unwrap();
    let link = RedisLink::start(client, timeout, Fallback::Deny, shared.clone()).await;
    let actor = LimiterActor::new(mailbox, clock, Fallback::Deny, shared, Some(link), lease_ttl);
    tokio::spawn(actor.run());
    handle
}

/// Checks `user` until one is admitted (Redis answers again), for at most
/// ten seconds; returns that admission.
async fn admitted_once_redis_answers(
    handle: &LimiterHandle,
    user: &pantheon_domain::UserId,
    limits: Limits,
    cost: TokenCost,
) -> Admission {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let admission = handle.check_with(user.clone(), limits, cost).await;
        if is_admitted(&admission) {
            return admission;
        }
        assert_eq!(
            admission.decision,
            Decision::Unavailable(SkipReason::StoreUnavailable),
            "only Redis trouble refuses here"
        );
        assert!(Instant::now() < deadline, "Redis did not answer again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Two instances whose clocks are 30 s apart share one user's slots (cap
/// 2): each takes one, and neither's check drops the other's live lease —
/// the set holds both, and a third check is refused on either instance.
/// With expiry on each instance's own clock, the instance ahead swept the
/// other's lease as expired and admitted a third turn.
async fn instances_whose_clocks_differ_by_30_s_keep_each_other_s_leases(store: Store) {
    let behind = store.limiter(Arc::new(ManualClock::at(T0))).await;
    let ahead = store.limiter(Arc::new(ManualClock::at(T0 + 30_000))).await;
    let user = unique_user("skew");
    let limits = Limits::turns(1_000, 10_000, 2);

    let first = behind.check(user.clone(), limits).await;
    assert!(is_admitted(&first), "{:?}", first.decision);
    let second = ahead.check(user.clone(), limits).await;
    assert!(is_admitted(&second), "{:?}", second.decision);
    for (name, instance) in [("ahead", &ahead), ("behind", &behind)] {
        let third = instance.check(user.clone(), limits).await;
        assert!(
            matches!(third.decision, Decision::Limited(_)),
            "the instance {name} admitted a third turn over a cap of 2: {:?}",
            third.decision
        );
    }
    let mut redis = store.connection();
    let mut members: Vec<String> = redis.zrange(active_key(&user), 0, -1).unwrap();
    members.sort();
    let mut expected: Vec<String> =
        [&first, &second].iter().map(|a| a.lease.as_ref().unwrap().id().to_string()).collect();
    expected.sort();
    assert_eq!(members, expected, "both instances' leases are live");
}

on_both_stores!(instances_whose_clocks_differ_by_30_s_keep_each_other_s_leases);

fn budget() -> Limits {
    Limits {
        tokens_per_minute: Some(10_000),
        tokens_per_hour: Some(100_000),
        ..Limits::turns(1_000, 10_000, 10)
    }
}

/// A reservation is made on a master that is then killed and replaced by
/// an empty one (a failover to a replica that never saw it); a turn on the
/// new master reserves 300 tokens there. The first turn then settles at 0
/// tokens: its release finds no lease on the new master, so its refund of
/// 300 applies nowhere — the new master's counters still hold the second
/// turn's 300. Refunding regardless took them to 0: a user richer by a
/// reservation nobody had charged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_after_a_failover_to_a_master_that_never_saw_the_reservation_gives_nothing() {
    let mut redis = RedisServer::start();
    let handle = own_limiter(
        &redis.url(),
        Duration::from_millis(500),
        Duration::from_secs(5),
        Duration::from_secs(60),
    )
    .await;
    let user = unique_user("failover");
    let cost = TokenCost { input: 100, min_output: 16, max_output: 200 };
    let tokens = |redis: &RedisServer| {
        pantheon_tests::limiter::logged_tokens(&mut connection_at(redis.port()), &user)
    };

    let mut lost = handle.check_with(user.clone(), budget(), cost).await;
    assert!(is_admitted(&lost), "{:?}", lost.decision);
    assert_eq!(tokens(&redis), 300, "input + output cap reserved");

    redis.restart();
    let kept = admitted_once_redis_answers(&handle, &user, budget(), cost).await;
    assert_eq!(tokens(&redis), 300, "the new master holds only the new reservation");

    // The first turn used nothing: its release carries a refund of 300.
    let mut lost_lease = lost.lease.take().unwrap();
    lost_lease.settle(0);
    drop(lost_lease);
    drop(kept);
    // Both releases have run once the set is gone (the second one's `ZREM`
    // empties it; the first was queued before it).
    let deadline = Instant::now() + Duration::from_secs(5);
    while redis.command(&["EXISTS", &active_key(&user)]) != "0" {
        assert!(Instant::now() < deadline, "the releases never reached Redis");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(tokens(&redis), 300, "a refund for a lease this master never had");
}

/// Stalls `redis` for `seconds` (`DEBUG SLEEP` on a thread of its own) and
/// returns once it is stalled: a `PING` gets no answer any more.
fn stall(redis: &RedisServer, seconds: f64) -> std::thread::JoinHandle<()> {
    let port = redis.port();
    let sleeper = std::thread::spawn(move || {
        try_command_at(port, &["DEBUG", "SLEEP", &seconds.to_string()]).unwrap();
    });
    let client = redis::Client::open(redis.url()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // A loaded machine may take a while to answer, not 250 ms.
        let stalled = match client.get_connection_with_timeout(Duration::from_millis(250)) {
            Ok(mut conn) => {
                conn.set_read_timeout(Some(Duration::from_millis(250))).unwrap();
                redis::cmd("PING").query::<String>(&mut conn).is_err()
            }
            Err(_) => true,
        };
        if stalled {
            return sleeper;
        }
        assert!(Instant::now() < deadline, "DEBUG SLEEP did not stall Redis");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A check whose call times out (300 ms) while Redis is stalled (2 s)
/// runs when Redis wakes: it counts and adds its lease, and nobody holds
/// that lease (the caller got the fallback's `503`). The actor removes it
/// at once when Redis answers again: the set is empty long before the
/// lease's 60 s TTL. Without that, the lease held one of the user's slots
/// for the whole TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_that_ran_after_its_call_timed_out_leaves_no_lease() {
    const LEASE_TTL: Duration = Duration::from_secs(60);
    let redis = RedisServer::start_with(&["--enable-debug-command", "yes"]);
    let handle =
        own_limiter(&redis.url(), Duration::from_millis(300), Duration::from_secs(10), LEASE_TTL)
            .await;
    let limits = Limits::turns(1_000, 10_000, 5);
    let warm = unique_user("warm");
    assert!(is_admitted(&handle.check(warm, limits).await), "Redis answers");

    let victim = unique_user("victim");
    let sleeper = stall(&redis, 2.0);
    let timed_out = handle.check(victim.clone(), limits).await;
    assert_eq!(timed_out.decision, Decision::Unavailable(SkipReason::StoreUnavailable));
    sleeper.join().unwrap();

    let sentinel = unique_user("sentinel");
    let _ = admitted_once_redis_answers(&handle, &sentinel, limits, TokenCost::default()).await;
    let answering = Instant::now();
    let counted = pantheon_tests::limiter::logged_turns(&mut connection_at(redis.port()), &victim);
    assert_eq!(counted, 1, "the timed-out check ran and counted");
    let active = active_key(&victim);
    while redis.command(&["ZCARD", &active]) != "0" {
        assert!(
            answering.elapsed() < Duration::from_secs(5),
            "the timed-out check's lease is still held {:?} after Redis answered again \
             (lease TTL {LEASE_TTL:?})",
            answering.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
