//! The per-user cap on running turns (README "Concurrent turns"): a slot
//! per turn from admission until its end is persisted, on both endpoints,
//! held by a lease in `ratelimit:{<user>}:turns:active`; refusals that take
//! nothing, renewal, release on every way a turn ends, and a dead
//! instance's slots coming free within the lease TTL.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use pantheon_domain::ManualClock;
use pantheon_infrastructure::Settings;
use pantheon_infrastructure::limiter::keys::active_key;
use pantheon_infrastructure::provider::FAIL_MARKER;
use pantheon_infrastructure::settings::{Fallback, OnDisconnect};
use pantheon_tests::headers::{parse_sf_list, parse_sf_string_params};
use pantheon_tests::limiter::{self, redis_connection, redis_time_ms, redis_url};
use pantheon_tests::process::ServerCommand;
use pantheon_tests::redis_server::refused_url;
use pantheon_tests::sse::parse_raw;
use pantheon_tests::{
    Backend, TestApp, TestDatabase, expect_json, spawn_app_on, spawn_app_with, spawn_instances,
};
use redis::Commands;
use reqwest::{Method, Response};
use serde_json::{Value, json};

use crate::streaming::{
    LONG_INPUT, read_deltas_then_disconnect, stream, user_with_session, wait_until_ended,
};

/// 42 s into a minute.
const NOW: i64 = 493_200 * 3_600_000 + 42_000;

/// Where a test's slots are held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Store {
    Redis,
    Cluster,
    InProcess,
}

impl Store {
    /// The suite's shared Redis or cluster; `None` in process.
    fn remote(self) -> Option<limiter::Store> {
        match self {
            Self::Redis => Some(limiter::Store::Single),
            Self::Cluster => Some(limiter::Store::Cluster),
            Self::InProcess => None,
        }
    }
}

async fn app(
    store: Store,
    cap: u32,
    adjust: impl FnOnce(&mut Settings),
) -> (TestApp, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::at(NOW));
    let database = TestDatabase::create(Backend::Sqlite).await;
    let app = spawn_app_on(
        database,
        |s| {
            s.redis.url = None;
            if let Some(remote) = store.remote() {
                remote.configure(s);
            }
            s.redis.timeout_ms = 2_000;
            s.rate_limit.per_minute = 1_000;
            s.rate_limit.per_hour = 10_000;
            s.rate_limit.max_concurrent_turns = cap;
            // Slow enough that a turn of LONG_INPUT runs for seconds.
            s.provider.builtin.chunk_delay_ms = 400;
            adjust(s);
        },
        clock.clone(),
    )
    .await;
    (app, clock)
}

fn user_of(token_user: &str) -> pantheon_domain::UserId {
    pantheon_domain::UserId::parse(token_user).unwrap()
}

/// Starts a stream and reads until its `turn.created`; the turn goes on
/// generating after the body is dropped (`on_disconnect = continue`).
pub(crate) async fn started(response: Response) -> Value {
    assert_eq!(response.status(), 200, "the stream was admitted");
    let mut body = response.bytes_stream();
    let mut text = String::new();
    while let Some(chunk) = body.next().await {
        text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        if let Some((done, _)) = text.split_once("\n\n") {
            let raw = parse_raw(&format!("{done}\n\n"));
            if let Some(first) = raw.events.first() {
                assert_eq!(first.event, "turn.created");
                return first.data["turn"].clone();
            }
        }
    }
    panic!("the stream ended before turn.created");
}

/// Asserts a refusal for concurrency alone with the cap and running count,
/// headers parsed as Structured Fields and agreeing with the body.
async fn expect_concurrency_refusal(response: Response, cap: i64, active: i64) -> Value {
    assert_eq!(response.headers()["retry-after"], "1");
    let policy_raw = response.headers()["ratelimit-policy"].to_str().unwrap().to_owned();
    let policy = parse_sf_list(&policy_raw);
    let units = parse_sf_string_params(&policy_raw);
    let usage = parse_sf_list(response.headers()["ratelimit"].to_str().unwrap());
    let body = expect_json(response, 429).await;
    assert_eq!(body["code"], "rate_limited");
    assert_eq!(body["violated-policies"], json!(["concurrency"]));
    assert_eq!(body["window"], "concurrency");
    assert_eq!(body["limit"], cap);
    assert_eq!(body["active"], active);
    assert_eq!(body["retry_after_seconds"], 1);
    assert_eq!(policy["concurrency"]["q"], cap);
    assert_eq!(units["concurrency"]["qu"], "concurrency");
    assert_eq!(usage["concurrency"]["r"], cap - active);
    assert_eq!(body["remaining"], cap - active);
    body
}

fn minute_count_in(store: limiter::Store, user: &pantheon_domain::UserId, now_ms: i64) -> i64 {
    // The turns of the user's log inside the minute ending at `now_ms`.
    let log = limiter::stored_log(&mut store.connection(), user);
    let inside = log.map(|l| l.entries.iter().filter(|e| e.at_ms > now_ms - 60_000).count());
    inside.unwrap_or(0) as i64
}

fn minute_count(user: &pantheon_domain::UserId, now_ms: i64) -> i64 {
    minute_count_in(limiter::Store::Single, user, now_ms)
}

fn leases_in(store: limiter::Store, user: &pantheon_domain::UserId) -> Vec<(String, i64)> {
    store.connection().zrange_withscores(active_key(user), 0, -1).unwrap()
}

fn leases(user: &pantheon_domain::UserId) -> Vec<(String, i64)> {
    leases_in(limiter::Store::Single, user)
}

async fn submit(app: &TestApp, token: &str, session: &str, input: &str) -> Response {
    app.submit_turn(token, session, input).await
}

async fn the_cap_refuses_the_next_turn_on_both_endpoints_until_one_ends(store: Store) {
    let (app, _) = app(store, 2, |_| {}).await;
    let (user, token) = app.new_user();
    let user = user_of(&user);
    let session = app.create_session(&token).await["id"].as_str().unwrap().to_owned();

    // A short stream (a few seconds at this pace) and a long one.
    let short = stream(&app, &token, &session, "a b c d").await;
    let short_turn_body = tokio::spawn(async move { short.text().await.unwrap() });
    started(stream(&app, &token, &session, LONG_INPUT).await).await;

    let refused = stream(&app, &token, &session, "third").await;
    expect_concurrency_refusal(refused, 2, 2).await;
    let refused = submit(&app, &token, &session, "third").await;
    expect_concurrency_refusal(refused, 2, 2).await;

    let peek = app.request(Method::GET, "/api/v1/rate-limit", &token).send().await.unwrap();
    let peek_usage = parse_sf_list(peek.headers()["ratelimit"].to_str().unwrap());
    let peek = expect_json(peek, 200).await;
    assert_eq!(peek["active"], 2);
    assert_eq!(peek["concurrency"], json!({ "limit": 2, "active": 2, "free": 0 }));
    assert_eq!(peek_usage["concurrency"]["r"], 0);
    assert_eq!(peek_usage["minute"]["r"], 998, "the refusals counted nothing");
    if let Some(remote) = store.remote() {
        let counted = minute_count_in(remote, &user, NOW);
        assert_eq!(counted, 2, "refused attempts changed no window counter");
        assert_eq!(leases_in(remote, &user).len(), 2, "one lease per running turn");
    }
    assert_eq!(app.count("turns").await, 2, "a refusal writes nothing");

    // The short stream ends: its slot is free for the very next turn, JSON here.
    let events = parse_raw(&short_turn_body.await.unwrap()).events;
    assert_eq!(events.last().unwrap().event, "turn.completed");
    let admitted = submit(&app, &token, &session, "next").await;
    let usage = parse_sf_list(admitted.headers()["ratelimit"].to_str().unwrap());
    expect_json(admitted, 201).await;
    assert_eq!(usage["concurrency"]["r"], 0, "this turn and the long stream ran at its admission");
    assert_eq!(usage["minute"]["r"], 997);
    if let Some(remote) = store.remote() {
        assert_eq!(minute_count_in(remote, &user, NOW), 3);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cap_holds_on_redis() {
    the_cap_refuses_the_next_turn_on_both_endpoints_until_one_ends(Store::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cap_holds_on_a_redis_cluster() {
    the_cap_refuses_the_next_turn_on_both_endpoints_until_one_ends(Store::Cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cap_holds_in_process() {
    the_cap_refuses_the_next_turn_on_both_endpoints_until_one_ends(Store::InProcess).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_refusal_takes_no_slot_and_a_double_violation_describes_the_window() {
    let (app, clock) = app(Store::Redis, 1, |s| {
        s.rate_limit.per_minute = 1;
        // Outlives the clock's jump below: only a renewal or a release may
        // move this lease, and this test wants neither.
        s.rate_limit.lease_ttl_secs = 600;
    })
    .await;
    let (user, token) = app.new_user();
    let user = user_of(&user);
    let session = app.create_session(&token).await["id"].as_str().unwrap().to_owned();
    started(stream(&app, &token, &session, LONG_INPUT).await).await;

    // Over the minute and out of slots: the body describes the minute.
    let refused = submit(&app, &token, &session, "again").await;
    let retry_after: i64 = refused.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    let body = expect_json(refused, 429).await;
    assert_eq!(body["violated-policies"], json!(["minute", "concurrency"]));
    assert_eq!(body["window"], "minute");
    assert_eq!(body["limit"], 1);
    assert_eq!(body["active"], 1);
    assert!(retry_after > 1, "the window's exact wait, not the concurrency guess");
    assert_eq!(leases(&user).len(), 1, "a refusal takes no slot");
    assert_eq!(minute_count(&user, NOW), 1);

    // A new minute, the stream still running: refused for concurrency alone.
    clock.advance(120_000);
    let refused = submit(&app, &token, &session, "again").await;
    expect_concurrency_refusal(refused, 1, 1).await;
    assert_eq!(minute_count(&user, NOW + 120_000), 0, "nothing counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_stream_and_a_failed_provider_each_give_their_slot_back() {
    let (app, _) = app(Store::Redis, 1, |s| s.turns.on_disconnect = OnDisconnect::Cancel).await;
    let (user, token) = app.new_user();
    let user = user_of(&user);
    let session = app.create_session(&token).await["id"].as_str().unwrap().to_owned();

    let turn =
        read_deltas_then_disconnect(stream(&app, &token, &session, LONG_INPUT).await, 1).await;
    let ended = wait_until_ended(&app, &token, &turn).await;
    assert_eq!(ended["status"], "cancelled");
    // The release follows the write the GET saw; allow it a moment to land.
    let admitted =
        admitted_within(&app, &token, &session, "after cancel", Duration::from_secs(3)).await;
    assert_eq!(admitted["status"], "completed");

    let failed = submit(&app, &token, &session, &format!("one two {FAIL_MARKER}")).await;
    assert_eq!(failed.status(), 502, "the provider failed");
    let admitted = submit(&app, &token, &session, "after failure").await;
    assert_eq!(admitted.status(), 201, "the failed turn's slot was given back before its 502");
    assert!(leases(&user).is_empty(), "no lease is left behind");
}

/// Submits JSON turns until one is admitted within `bound`.
async fn admitted_within(
    app: &TestApp,
    token: &str,
    session: &str,
    input: &str,
    bound: Duration,
) -> Value {
    let deadline = Instant::now() + bound;
    loop {
        let response = submit(app, token, session, input).await;
        if response.status() == 201 {
            return response.json().await.unwrap();
        }
        assert_eq!(response.status(), 429);
        assert!(Instant::now() < deadline, "the slot was never given back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A lease expires on the Redis server's clock (`TIME` in the script), which
/// no test can move: the turn runs (about 5 s) past its first expiry (TTL
/// 3 s) in real time while each renewal, every second, pushes the expiry to
/// the server's now + 3 s; then the slot is still held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_longer_than_its_lease_keeps_its_slot_by_renewal() {
    let (app, _) = app(Store::Redis, 1, |s| s.rate_limit.lease_ttl_secs = 3).await;
    let (user, token) = app.new_user();
    let user = user_of(&user);
    let session = app.create_session(&token).await["id"].as_str().unwrap().to_owned();
    let mut redis = redis_connection();
    let before = redis_time_ms(&mut redis);
    started(stream(&app, &token, &session, LONG_INPUT).await).await;
    let after = redis_time_ms(&mut redis);
    let [(_, first_expiry)] = leases(&user)[..] else { panic!("one lease") };
    assert!(
        (before + 3_000..=after + 3_000).contains(&first_expiry),
        "the lease expires a TTL after the Redis server's now: {first_expiry} not in \
         {before}..{after} + 3 s"
    );

    let mut expiry = first_expiry;
    let mut renewals = 0;
    while redis_time_ms(&mut redis) <= first_expiry + 500 {
        // The server's now on both sides of the read: a renewal between
        // the reads is bounded by the later one.
        let now = redis_time_ms(&mut redis);
        let [(_, current)] = leases(&user)[..] else { panic!("the lease lapsed at {now}") };
        let read = redis_time_ms(&mut redis);
        assert!(current > now, "a live lease expires after the server's now");
        if current > expiry {
            assert!(current <= read + 3_000, "renewed to the server's now + TTL at most");
            expiry = current;
            renewals += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(renewals >= 2, "renewed every second, saw {renewals} renewals");
    let refused = submit(&app, &token, &session, "still running").await;
    expect_concurrency_refusal(refused, 1, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_and_fallback_local_the_instance_counts_slots_itself() {
    let (app, _) = app(Store::Redis, 1, |s| {
        s.redis.url = Some(refused_url());
        s.redis.timeout_ms = 200;
        s.rate_limit.fallback = Fallback::Local;
    })
    .await;
    let (token, session) = user_with_session(&app).await;
    started(stream(&app, &token, &session, LONG_INPUT).await).await;
    let refused = submit(&app, &token, &session, "second").await;
    expect_concurrency_refusal(refused, 1, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_never_run_more_than_the_cap_for_one_user() {
    const CAP: usize = 3;
    const TURNS: usize = 200;
    let database = TestDatabase::create(Backend::Postgres).await;
    let apps = spawn_instances(3, &database, Arc::new(pantheon_domain::SystemClock), |s| {
        s.redis.url = Some(redis_url());
        s.redis.timeout_ms = 2_000;
        s.rate_limit.per_minute = 10_000;
        s.rate_limit.per_hour = 100_000;
        s.rate_limit.max_concurrent_turns = CAP as u32;
        s.provider.builtin.chunk_delay_ms = 50;
    })
    .await;
    let (user, token) = apps[0].new_user();
    let user = user_of(&user);
    let session = apps[0].create_session(&token).await["id"].as_str().unwrap().to_owned();

    let running = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (running, user, db) = (running.clone(), user.clone(), database.connect().await);
        tokio::spawn(async move {
            let (mut max_leases, mut max_rows, mut samples) = (0, 0, 0);
            while running.load(std::sync::atomic::Ordering::SeqCst) {
                let now = pantheon_domain::Clock::now_ms(&pantheon_domain::SystemClock);
                let live: usize = redis_connection()
                    .zcount(active_key(&user), format!("({now}"), "+inf")
                    .unwrap();
                let rows =
                    pantheon_tests::db::count_where(&db, "turns", "status = 'in_progress'").await;
                max_leases = max_leases.max(live);
                max_rows = max_rows.max(rows);
                samples += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (max_leases, max_rows, samples)
        })
    };
    let input = "one two three four five six seven eight";
    let turns = (0..TURNS).map(|i| {
        let (app, token, session) = (&apps[i % 3], &token, &session);
        async move { app.submit_turn(token, session, input).await.status().as_u16() }
    });
    let statuses = futures::future::join_all(turns).await;
    running.store(false, std::sync::atomic::Ordering::SeqCst);
    let (max_leases, max_rows, samples) = sampler.await.unwrap();

    let admitted = statuses.iter().filter(|&&s| s == 201).count();
    assert!(statuses.iter().all(|&s| s == 201 || s == 429), "every refusal is a 429: {statuses:?}");
    assert!(admitted >= CAP, "the cap was used: {admitted} admitted");
    assert!(samples > 10, "sampled while the turns ran ({samples})");
    assert!(max_leases <= CAP, "at most {CAP} leases at once, saw {max_leases}");
    assert!(max_rows <= CAP as i64, "at most {CAP} turns in progress at once, saw {max_rows}");
    assert_eq!(apps[0].count("turns").await, admitted as i64, "each admitted turn, no other");
    for app in apps {
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_instance_s_slots_are_free_again_within_the_lease_ttl() {
    const TTL_SECS: u64 = 3;
    let secret = format!("test-secret-{}", uuid::Uuid::new_v4());
    let database = TestDatabase::create(Backend::Sqlite).await;
    let mut command = ServerCommand::new(&database.url);
    command
        .set("PANTHEON__AUTH__JWT_SECRET", &secret)
        .set("PANTHEON__REDIS__URL", &redis_url())
        .set("PANTHEON__RATE_LIMIT__MAX_CONCURRENT_TURNS", "2")
        .set("PANTHEON__RATE_LIMIT__LEASE_TTL_SECS", &TTL_SECS.to_string())
        .set("PANTHEON__PROVIDER__BUILTIN__CHUNK_DELAY_MS", "1000");
    let mut doomed = command.spawn().await;
    let survivor = spawn_app_with(Backend::Sqlite, |s| {
        s.auth.jwt_secret = secret.clone();
        s.redis.url = Some(redis_url());
        s.rate_limit.max_concurrent_turns = 2;
        s.rate_limit.lease_ttl_secs = TTL_SECS;
    })
    .await;
    let (user, token) = survivor.new_user();
    let user = user_of(&user);
    let client = reqwest::Client::new();
    let doomed_session = doomed.create_session(&client, &token).await;
    for _ in 0..2 {
        started(doomed.stream(&client, &token, &doomed_session, LONG_INPUT).await).await;
    }
    let session = survivor.create_session(&token).await["id"].as_str().unwrap().to_owned();
    expect_concurrency_refusal(survivor.submit_turn(&token, &session, "hi").await, 2, 2).await;
    assert_eq!(leases(&user).len(), 2);

    doomed.kill();
    let killed = Instant::now();
    let freed = loop {
        let response = survivor.submit_turn(&token, &session, "hi").await;
        if response.status() == 201 {
            break killed.elapsed();
        }
        assert_eq!(response.status(), 429);
        assert!(killed.elapsed() < Duration::from_secs(TTL_SECS + 5), "the slots never came free");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!(
        "slots of a SIGKILLed instance free after {} ms (TTL {TTL_SECS} s)",
        freed.as_millis()
    );
    assert!(
        freed <= Duration::from_secs(TTL_SECS + 1),
        "free within lease_ttl + 1 s, took {freed:?}"
    );
    survivor.stop().await;
}
