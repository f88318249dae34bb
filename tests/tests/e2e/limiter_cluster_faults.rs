//! The limiter on a Redis Cluster that misbehaves: a master stalled, a
//! master killed under load (failover), slots moved while checks run
//! (resharding). Each test runs a cluster of its own: the suite's shared
//! one is never stalled, killed or resharded.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pantheon_domain::limiter::{
    Decision, Fallback, LimiterHandle, LimiterShared, LimiterState, Limits, SkipReason,
};
use pantheon_domain::{ManualClock, UserId};
use pantheon_infrastructure::limiter::keys::log_key;
use pantheon_infrastructure::limiter::topology::slot_of;
use pantheon_infrastructure::settings::TierLimits;
use pantheon_tests::limiter::cluster_limiter;
use pantheon_tests::redis_cluster::{RedisCluster, user_in, user_on};
use pantheon_tests::{Backend, TestApp, expect_json, header, spawn_app_with_clock};

use crate::limiter_faults::T0;

/// An actor on `cluster` with a handle that waits `wait` and Redis calls
/// bounded by `timeout`; returns the handle and the limiter's shared state.
async fn actor_on(
    cluster: &RedisCluster,
    fallback: Fallback,
    timeout: Duration,
    wait: Duration,
) -> (LimiterHandle, Arc<LimiterShared>) {
    let (handle, actor, shared) = cluster_limiter(&cluster.urls(), fallback, timeout, wait).await;
    tokio::spawn(actor.run());
    (handle, shared)
}

const HIGH: Limits = Limits::turns(100_000, 1_000_000, 1_000_000);

/// A stalled master (`CLIENT PAUSE`) answers its own users' checks by the
/// fallback while the other masters' users are checked as usual, without
/// waiting for it; after three failed calls only that node is degraded (its
/// users get the fallback at once), and when it answers again its users are
/// checked again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_master_falls_back_alone() {
    let cluster = RedisCluster::start_with(3, 0, 5_000);
    let view = cluster.view();
    let masters = view.masters();
    let stalled = masters[0].port;
    let victim = user_on(view, stalled, "stalled");
    let others: Vec<UserId> = masters[1..].iter().map(|m| user_on(view, m.port, "other")).collect();
    let (limiter, shared) =
        actor_on(&cluster, Fallback::Deny, Duration::from_millis(300), Duration::from_secs(5))
            .await;
    // The admissions are held to the end: a lease dropped now would send
    // its release to the stalled node, a failed call of its own racing the
    // three the rounds below count.
    let mut held = Vec::new();
    for user in others.iter().chain([&victim]) {
        let admission = limiter.check(user.clone(), HIGH).await;
        assert!(matches!(admission.decision, Decision::Admitted(_)));
        held.push(admission);
    }

    view.command(stalled, &["CLIENT", "PAUSE", "3000", "ALL"]);
    let paused = Instant::now();
    for round in 1..=4 {
        let victim_check = {
            let (limiter, victim) = (limiter.clone(), victim.clone());
            tokio::spawn(async move { limiter.check(victim, HIGH).await.decision })
        };
        for user in &others {
            let decision = limiter.check(user.clone(), HIGH).await.decision;
            assert!(
                matches!(decision, Decision::Admitted(_)),
                "round {round}: {user}: {decision:?}"
            );
        }
        if round <= 3 {
            // Its node's pipeline waits out the 300 ms timeout; the other
            // nodes' users were answered before it.
            assert!(!victim_check.is_finished(), "round {round}: the others waited for the stall");
        }
        let decision = victim_check.await.unwrap();
        assert_eq!(decision, Decision::Unavailable(SkipReason::StoreUnavailable), "round {round}");
    }
    assert_eq!(shared.state(), LimiterState::Degraded, "three failed calls degrade that node");
    assert!(paused.elapsed() < Duration::from_millis(3_000), "all of it during the stall");

    // When the pause ends, the probe finds the node again.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !matches!(limiter.check(victim.clone(), HIGH).await.decision, Decision::Admitted(_)) {
        assert!(Instant::now() < deadline, "the stalled node's users are not checked again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(shared.state(), LimiterState::Healthy);
    drop(held);
}

/// One turn's outcome under load.
#[derive(Debug, Clone)]
struct Outcome {
    at: Instant,
    master: u16,
    status: u16,
    checked: bool,
}

/// 16 clients submit turns for users spread over the three masters; one
/// master is killed. No turn fails; only the killed master's users are
/// answered by the fallback (no `RateLimit` header), for about the failover
/// time; once its replica is promoted they are limited again by the same
/// Pantheon, and the counts the replica carried are kept: a user who had 3
/// of 5 turns gets exactly 2 more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_fails_over_without_failing_a_turn() {
    const NODE_TIMEOUT_MS: u64 = 1_000;
    let mut cluster = RedisCluster::start(NODE_TIMEOUT_MS);
    let masters = cluster.view().masters();
    let killed = masters[0].port;
    let replica = cluster.view().replica_of(killed);
    let app = Arc::new(
        spawn_app_with_clock(
            Backend::Postgres,
            |s| {
                s.redis.cluster_urls = cluster.urls();
                s.redis.timeout_ms = 500;
                s.rate_limit.per_minute = 100_000;
                s.rate_limit.per_hour = 1_000_000;
                s.rate_limit.tiers.insert(
                    "small".into(),
                    TierLimits {
                        per_minute: 5,
                        per_hour: 100,
                        max_concurrent_turns: None,
                        tokens_per_minute: None,
                        tokens_per_hour: None,
                        weight: 1,
                    },
                );
            },
            Arc::new(ManualClock::at(T0)),
        )
        .await,
    );

    // A user on the doomed master with 3 of 5 turns, replicated.
    let carried = user_on(cluster.view(), killed, "carried");
    let carried_token = app.token_with_tier(carried.as_str(), "small");
    let carried_session =
        app.create_session(&carried_token).await["id"].as_str().unwrap().to_owned();
    for i in 1..=3 {
        expect_json(
            app.submit_turn(&carried_token, &carried_session, &format!("turn {i}")).await,
            201,
        )
        .await;
    }
    // The header and three entries.
    wait_for_replica(replica, &log_key(&carried), "4");

    let mut clients = Vec::new();
    let stop = Arc::new(AtomicBool::new(false));
    for i in 0..16 {
        let port = masters[i % 3].port;
        let user = user_on(cluster.view(), port, "load");
        let token = app.token(user.as_str());
        let session = app.create_session(&token).await["id"].as_str().unwrap().to_owned();
        let (app, stop) = (app.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let response = app.submit_turn(&token, &session, "under load").await;
                let checked = !header(&response, "ratelimit").is_empty();
                let status = response.status().as_u16();
                let _ = response.bytes().await;
                outcomes.push(Outcome { at: Instant::now(), master: port, status, checked });
            }
            outcomes
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.kill(killed);
    let killed_at = Instant::now();
    // Load until the replica serves the slots and has checked turns for a
    // second.
    let deadline = killed_at + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "the replica did not take over within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
        if cluster.view().masters().iter().any(|m| m.port == replica) {
            break;
        }
    }
    let promoted_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let mut outcomes: Vec<Outcome> = Vec::new();
    for client in clients {
        outcomes.extend(client.await.unwrap());
    }

    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| o.status != 201).collect();
    assert!(
        failed.is_empty(),
        "{} turns failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    let others_unchecked =
        outcomes.iter().filter(|o| o.master != killed && !o.checked && o.at > killed_at).count();
    assert_eq!(others_unchecked, 0, "the other masters' users were checked throughout");
    let after: Vec<&Outcome> =
        outcomes.iter().filter(|o| o.master == killed && o.at > killed_at).collect();
    let unchecked: Vec<&Outcome> = after.iter().copied().filter(|o| !o.checked).collect();
    let first_fallback = unchecked.first().map(|o| o.at);
    let last_fallback =
        unchecked.last().map(|o| o.at).expect("the killed master's users fell back");
    let resumed = after
        .iter()
        .find(|o| o.checked && o.at > last_fallback)
        .map(|o| o.at)
        .expect("limiting resumed for the killed master's users");
    let total = outcomes.iter().filter(|o| o.at > killed_at).count();
    eprintln!(
        "failover: {} turns after the kill, {} failed; the killed master's users fell back on {} turns \
         for {:.2} s (first {:.2} s, last {:.2} s after the kill); the replica was seen promoted {:.2} s \
         and limiting resumed {:.2} s after the kill",
        total,
        failed.len(),
        unchecked.len(),
        (last_fallback - first_fallback.unwrap_or(last_fallback)).as_secs_f64(),
        first_fallback.map_or(0.0, |t| (t - killed_at).as_secs_f64()),
        (last_fallback - killed_at).as_secs_f64(),
        (promoted_at - killed_at).as_secs_f64(),
        (resumed - killed_at).as_secs_f64(),
    );
    // Limiting resumes within a second of the promotion being visible
    // (the probe backoff is at most 750 ms), plus room for a busy machine.
    assert!(
        resumed <= promoted_at + Duration::from_secs(3),
        "limiting resumed {:?} after the promotion was seen",
        resumed.saturating_duration_since(promoted_at)
    );

    // The counts carried on the replica are kept: 2 more, then refused.
    for i in 4..=5 {
        let response =
            app.submit_turn(&carried_token, &carried_session, &format!("turn {i}")).await;
        assert!(!header(&response, "ratelimit").is_empty(), "turn {i} was checked");
        expect_json(response, 201).await;
    }
    let refused = app.submit_turn(&carried_token, &carried_session, "turn 6").await;
    assert_eq!(refused.status(), 429, "the replica kept the 3 turns counted before the kill");
    drop_app(app).await;
}

/// Polls the replica at `port` until the list at `key` is `value` long
/// (replication is asynchronous).
fn wait_for_replica(port: u16, key: &str, value: &str) {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let mut connection = client.get_connection().unwrap();
    redis::cmd("READONLY").query::<()>(&mut connection).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got: Option<String> = redis::cmd("LLEN").arg(key).query(&mut connection).unwrap();
        if got.as_deref() == Some(value) {
            return;
        }
        assert!(Instant::now() < deadline, "the replica holds {got:?} for {key}, not {value}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn drop_app(app: Arc<TestApp>) {
    if let Ok(app) = Arc::try_unwrap(app) {
        app.stop().await;
    }
}

/// `redis-cli --cluster reshard` moves 1,000 slots from one master to
/// another while users of those slots are checked through two instances
/// (`MOVED`, `ASK` and `TRYAGAIN` all happen on the way): every check is
/// answered by Redis, none is counted twice or lost, and no user is
/// admitted beyond the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resharding_while_checks_run_answers_every_check_exactly() {
    const MOVED_SLOTS: u16 = 1_000;
    const LIMIT: u32 = 20;
    const CHECKS: usize = 30;
    let cluster = Arc::new(RedisCluster::start_with(3, 0, 5_000));
    let view = cluster.view().clone();
    let masters = view.masters();
    let (from, to) = (&masters[0], &masters[1]);
    let first = from.slots[0].0;
    // redis-cli moves the source's lowest slots.
    let moved = move |slot: u16| (first..first + MOVED_SLOTS).contains(&slot);
    let users: Vec<UserId> = (0..240).map(|_| user_in(moved, "reshard")).collect();
    let instances = [
        actor_on(&cluster, Fallback::Deny, Duration::from_secs(2), Duration::from_secs(5)).await.0,
        actor_on(&cluster, Fallback::Deny, Duration::from_secs(2), Duration::from_secs(5)).await.0,
    ];
    let redirects_before = redirects(&view, from.port) + redirects(&view, to.port);

    let resharding = {
        let (cluster, from, to) = (cluster.clone(), from.id.clone(), to.id.clone());
        tokio::task::spawn_blocking(move || {
            let slots = MOVED_SLOTS.to_string();
            cluster.redis_cli(&[
                "reshard",
                "--cluster-from",
                &from,
                "--cluster-to",
                &to,
                "--cluster-slots",
                &slots,
                "--cluster-yes",
            ])
        })
    };
    // Users take turns, four at a time, until the resharding is over:
    // each one's 30 checks go out in bursts of five over both instances.
    let limits = Limits::turns(LIMIT, 10_000, 1_000_000);
    let mut results: HashMap<UserId, (usize, usize)> = HashMap::new();
    let mut queue = users.iter();
    let mut done_at = None;
    while done_at.is_none_or(|t: Instant| t.elapsed() < Duration::from_millis(300)) {
        let group: Vec<&UserId> = queue.by_ref().take(4).collect();
        if group.is_empty() {
            break;
        }
        let runs = group.into_iter().map(|user| {
            let instances = instances.clone();
            let user = user.clone();
            async move {
                let (mut admitted, mut refused) = (0, 0);
                for burst in 0..CHECKS / 5 {
                    let checks = (0..5).map(|i| {
                        let (handle, user) = (&instances[(burst + i) % 2], user.clone());
                        async move { handle.check(user, limits).await.decision }
                    });
                    for decision in futures::future::join_all(checks).await {
                        match decision {
                            Decision::Admitted(_) => admitted += 1,
                            Decision::Limited(_) => refused += 1,
                            other => panic!(
                                "{user} (slot {}): not answered by Redis: {other:?}",
                                slot_of(&user)
                            ),
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                (user, (admitted, refused))
            }
        });
        results.extend(futures::future::join_all(runs).await);
        if done_at.is_none() && resharding.is_finished() {
            done_at = Some(Instant::now());
        }
    }
    let output = resharding.await.unwrap();
    assert!(output.contains("Moving slot"), "{output}");
    view.wait_until_settled();
    let redirected = redirects(&view, from.port) + redirects(&view, to.port) - redirects_before;
    eprintln!(
        "resharding: {} users checked, {redirected} MOVED/ASK/TRYAGAIN replies",
        results.len()
    );
    assert!(redirected > 0, "the checks ran into the migration");

    let client = redis::cluster::ClusterClient::new(view.urls()).unwrap();
    let mut connection = client.get_connection().unwrap();
    for (user, (admitted, refused)) in &results {
        assert_eq!(admitted + refused, CHECKS, "{user}: every check answered");
        assert_eq!(*admitted, LIMIT as usize, "{user}: admitted exactly to the limit");
        let count = pantheon_tests::limiter::logged_turns(&mut connection, user);
        assert_eq!(count, u64::from(LIMIT), "{user}: each admission counted once");
        assert_eq!(view.master_of(user), to.port, "{user} moved");
    }
}

/// `MOVED`, `ASK` and `TRYAGAIN` replies the node at `port` has sent.
fn redirects(view: &pantheon_tests::redis_cluster::ClusterView, port: u16) -> u64 {
    ["errorstat_MOVED", "errorstat_ASK", "errorstat_TRYAGAIN"]
        .iter()
        .map(|field| view.info(port, "errorstats", field))
        .sum()
}
