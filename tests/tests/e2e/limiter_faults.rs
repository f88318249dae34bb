//! The limiter when Redis misbehaves (`docs/API.md`, "When Redis is down"): down at
//! boot, killed and restarted under load, stalled, its scripts flushed; the
//! three fallbacks; refusals answered from the over-limit cache without a
//! Redis call; and limiting resuming within a second of Redis answering
//! again. Each test runs a `redis-server` of its own.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pantheon_domain::ManualClock;
use pantheon_infrastructure::Settings;
use pantheon_infrastructure::settings::Fallback;
use pantheon_tests::logs::LogCapture;
use pantheon_tests::redis_server::{RedisServer, refused_url};
use pantheon_tests::{Backend, TestApp, expect_json, spawn_app_with_clock};
use reqwest::Response;
use serde_json::Value;

/// A few seconds past an hour boundary in 2026; the clock stays there, so no
/// window rolls over while a test counts.
pub(crate) const T0: i64 = pantheon_tests::limiter::T0;

/// Starts Pantheon with `redis_url` and a stopped clock. The Redis timeout
/// is generous unless `adjust` says otherwise: tests that count turns must
/// not see a check answered by the fallback because the machine is busy.
async fn spawn(redis_url: String, adjust: impl FnOnce(&mut Settings)) -> TestApp {
    let adjust = |settings: &mut Settings| {
        settings.redis.url = Some(redis_url);
        settings.redis.timeout_ms = 1_000;
        adjust(settings);
    };
    spawn_app_with_clock(Backend::Sqlite, adjust, Arc::new(ManualClock::at(T0))).await
}

/// A fresh user's token and a session of theirs.
async fn new_user_with_session(app: &TestApp) -> (String, String) {
    let (_, token) = app.new_user();
    let session = app.create_session(&token).await["id"].as_str().unwrap().to_owned();
    (token, session)
}

/// `/readyz`, asserted 200; returns the limiter's state.
async fn limiter_state(app: &TestApp) -> String {
    let ready = expect_json(app.client.get(app.url("/readyz")).send().await.unwrap(), 200).await;
    ready["limiter"].as_str().unwrap().to_owned()
}

/// Polls `/readyz` until the limiter reports `state`, for at most `limit`.
async fn wait_for_limiter(app: &TestApp, state: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    let mut seen = limiter_state(app).await;
    while seen != state {
        assert!(Instant::now() < deadline, "limiter still {seen:?} after {limit:?}, not {state:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        seen = limiter_state(app).await;
    }
}

fn header(response: &Response, name: &str) -> Option<String> {
    response.headers().get(name).map(|v| v.to_str().unwrap().to_owned())
}

/// Asserts a `429` with a `Retry-After`; returns the problem body.
async fn expect_rate_limited(response: Response) -> Value {
    assert!(header(&response, "retry-after").is_some(), "a 429 says when to retry");
    let body = expect_json(response, 429).await;
    assert_eq!(body["code"], "rate_limited", "{body}");
    body
}

/// With `per_minute = 3`: a fresh user's first three turns are admitted and
/// checked (they carry `RateLimit`), the fourth is refused.
async fn assert_fourth_turn_refused(app: &TestApp) {
    let (token, session) = new_user_with_session(app).await;
    for i in 1..=3 {
        let response = app.submit_turn(&token, &session, &format!("turn {i}")).await;
        assert!(header(&response, "ratelimit").is_some(), "turn {i} was checked");
        expect_json(response, 201).await;
    }
    expect_rate_limited(app.submit_turn(&token, &session, "turn 4").await).await;
}

/// Redis refusing connections at boot does not stop Pantheon: it starts
/// degraded, stays ready, and admits turns unchecked (no `RateLimit` header:
/// it would be a guess).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_at_boot_starts_degraded_and_turns_succeed() {
    let app = spawn(refused_url(), |_| {}).await;
    assert_eq!(limiter_state(&app).await, "degraded");

    let (token, session) = new_user_with_session(&app).await;
    let response = app.submit_turn(&token, &session, "hello").await;
    assert_eq!(header(&response, "ratelimit"), None, "a skipped check reports no usage");
    expect_json(response, 201).await;
    assert_eq!(app.count("turns").await, 1);
}

thread_local! {
    static LOG_GUARD: RefCell<Option<tracing::dispatcher::DefaultGuard>> = const { RefCell::new(None) };
}

/// A runtime whose threads (and only those) log into `capture`: the
/// subscriber is each thread's default, not the global one, so tests running
/// in parallel in this binary neither add lines here nor see these.
fn runtime_logging_into(capture: &LogCapture) -> tokio::runtime::Runtime {
    let for_threads = capture.dispatch.clone();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(move || {
            let guard = tracing::dispatcher::set_default(&for_threads);
            LOG_GUARD.with(|slot| *slot.borrow_mut() = Some(guard));
        })
        .on_thread_stop(|| LOG_GUARD.with(|slot| drop(slot.borrow_mut().take())))
        .build()
        .unwrap()
}

/// Redis dying under a running Pantheon: turns keep being admitted, readiness
/// holds, the outage is logged once (not once per turn), and when Redis is
/// back the limiter recovers on its own and limits again.
#[test]
fn redis_killed_mid_test_turns_still_succeed_and_warn_once() {
    let capture = LogCapture::new("warn,pantheon_infrastructure::limiter=info");
    let runtime = runtime_logging_into(&capture);
    let _guard = tracing::dispatcher::set_default(&capture.dispatch);
    let logs = &capture.logs;
    runtime.block_on(async {
        let mut redis = RedisServer::start();
        let app = spawn(redis.url(), |s| s.rate_limit.per_minute = 3).await;
        assert_eq!(limiter_state(&app).await, "healthy");
        assert_fourth_turn_refused(&app).await;

        redis.kill();
        let (token, session) = new_user_with_session(&app).await;
        for i in 1..=30 {
            let response = app.submit_turn(&token, &session, &format!("turn {i}")).await;
            assert_eq!(response.status(), 201, "turn {i} while Redis is down");
        }
        assert_eq!(limiter_state(&app).await, "degraded", "three failed calls degrade the link");

        redis.restart();
        // The probe backoff is capped at 500 ms, +50% jitter: 750 ms at worst
        // (the exact bound is `limiting_resumes_within_a_second…`'s).
        wait_for_limiter(&app, "healthy", Duration::from_secs(15)).await;
        assert_fourth_turn_refused(&app).await;
    });
    drop(runtime);

    let degraded = logs.lines_with("rate limiter degraded");
    assert_eq!(degraded.len(), 1, "one warning on the state change: {degraded:#?}");
    assert!(degraded[0].contains("WARN"), "{degraded:#?}");
    let recovered = logs.lines_with("rate limiter recovered");
    assert_eq!(recovered.len(), 1, "one line on recovery: {recovered:#?}");
    // Besides the state change, at most a summary per 10 s interval.
    let warnings: Vec<_> =
        logs.lines_with("WARN").into_iter().filter(|l| l.contains("rate limiter")).collect();
    assert!(warnings.len() <= 4, "30 unchecked turns, {} warnings: {warnings:#?}", warnings.len());
}

/// A Redis that accepts connections but does not answer (`CLIENT PAUSE`)
/// costs a turn at most the Redis timeout: the check is answered by the
/// fallback instead of waiting for the 2 s stall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_redis_answers_within_the_timeout() {
    let redis = RedisServer::start();
    let app = spawn(redis.url(), |s| s.redis.timeout_ms = 50).await;
    assert_eq!(limiter_state(&app).await, "healthy");
    let (token, session) = new_user_with_session(&app).await;
    expect_json(app.submit_turn(&token, &session, "warm up").await, 201).await;

    redis.pause(2_000);
    let started = Instant::now();
    let response = app.submit_turn(&token, &session, "during the stall").await;
    let elapsed = started.elapsed();
    assert_eq!(header(&response, "ratelimit"), None, "the check was skipped, not answered");
    expect_json(response, 201).await;
    // The limiter gives up after 50 ms (the handle's backstop is 75 ms); the
    // rest of a turn is a few SQLite writes. 1 s leaves room for a loaded
    // machine and is still half the stall: a turn that waited for Redis fails.
    assert!(elapsed < Duration::from_secs(1), "the turn took {elapsed:?}");
}

/// `SCRIPT FLUSH` (as after a Redis restart or failover) is not an outage:
/// the `NOSCRIPT` reply reloads the script, the checks are really made (they
/// carry `RateLimit`) and the limit still holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_flush_is_handled_transparently() {
    let redis = RedisServer::start();
    let app = spawn(redis.url(), |s| s.rate_limit.per_minute = 3).await;
    let (token, session) = new_user_with_session(&app).await;
    for i in 1..=2 {
        expect_json(app.submit_turn(&token, &session, &format!("turn {i}")).await, 201).await;
    }

    assert_eq!(redis.command(&["SCRIPT", "FLUSH"]), "OK");
    let third = app.submit_turn(&token, &session, "turn 3").await;
    let usage = header(&third, "ratelimit").expect("the third turn was checked");
    assert!(usage.contains("\"minute\";r=0"), "RateLimit: {usage}");
    expect_json(third, 201).await;

    assert_eq!(redis.command(&["SCRIPT", "FLUSH"]), "OK");
    let fourth = app.submit_turn(&token, &session, "turn 4").await;
    assert!(header(&fourth, "ratelimit").is_some(), "the refusal reports usage");
    expect_rate_limited(fourth).await;
    assert_eq!(limiter_state(&app).await, "healthy");
    assert_eq!(app.count("turns").await, 3);
}

/// `fallback = local` limits per instance while Redis is down: the in-process
/// counters refuse the third turn when two a minute are allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_local_enforces_per_instance_while_redis_is_down() {
    let app = spawn(refused_url(), |s| {
        s.rate_limit.fallback = Fallback::Local;
        s.rate_limit.per_minute = 2;
    })
    .await;
    assert_eq!(limiter_state(&app).await, "degraded");
    let (token, session) = new_user_with_session(&app).await;
    for i in 1..=2 {
        expect_json(app.submit_turn(&token, &session, &format!("turn {i}")).await, 201).await;
    }
    let body = expect_rate_limited(app.submit_turn(&token, &session, "turn 3").await).await;
    assert_eq!(body["window"], "minute", "{body}");
    assert_eq!(app.count("turns").await, 2);
}

/// `fallback = deny` refuses turns with a `503` while Redis is down, and
/// writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_deny_answers_503() {
    let app = spawn(refused_url(), |s| s.rate_limit.fallback = Fallback::Deny).await;
    assert_eq!(limiter_state(&app).await, "degraded");
    let (token, session) = new_user_with_session(&app).await;

    let response = app.submit_turn(&token, &session, "hello").await;
    assert_eq!(header(&response, "content-type").as_deref(), Some("application/problem+json"));
    let retry_after: u64 = header(&response, "retry-after").expect("Retry-After").parse().unwrap();
    assert!((1..=60).contains(&retry_after), "a short Retry-After, not {retry_after}");
    let request_id = header(&response, "x-request-id").unwrap();
    // Not `expect_problem`: this problem type is a registered IANA one.
    let body = expect_json(response, 503).await;
    assert_eq!(body["status"], 503, "{body}");
    assert_eq!(body["code"], "limiter_unavailable", "{body}");
    assert_eq!(
        body["type"], "https://iana.org/assignments/http-problem-types#temporary-reduced-capacity",
        "{body}"
    );
    assert!(body["title"].is_string() && body["detail"].is_string(), "{body}");
    assert_eq!(body["request_id"], request_id.as_str(), "{body}");
    assert_eq!(app.count("turns").await, 0, "a refused turn writes nothing");
}

/// A user known to be over the limit is refused from the actor's cache:
/// twenty more attempts make no `EVALSHA` call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_limit_cache_answers_refusals_without_redis_calls() {
    let redis = RedisServer::start();
    let app = spawn(redis.url(), |s| s.rate_limit.per_minute = 2).await;
    let (token, session) = new_user_with_session(&app).await;
    for i in 1..=2 {
        expect_json(app.submit_turn(&token, &session, &format!("turn {i}")).await, 201).await;
    }
    expect_rate_limited(app.submit_turn(&token, &session, "turn 3").await).await;
    let before = redis.evalsha_calls();
    assert_eq!(before, 3, "two admissions and the first refusal asked Redis");

    for i in 4..=23 {
        expect_rate_limited(app.submit_turn(&token, &session, &format!("turn {i}")).await).await;
    }
    assert_eq!(redis.evalsha_calls(), before, "refusals came from the cache");
    assert_eq!(app.count("turns").await, 2);
}

/// Limiting resumes within a second of Redis answering again: after an
/// outage long enough for the probe backoff to have grown (5 s), a user is
/// refused at its limit again soon after Redis restarts on the same port.
/// Twice: the probe times are random, and one lucky probe could hide a
/// long backoff.
///
/// A real-time bound, because the delay is the behaviour: the probe waits at
/// most 750 ms (500 ms cap, +50 % jitter), then a reconnect, a `SCRIPT LOAD`
/// and four turns. 1.5 s leaves room for a loaded machine; with the old 5 s
/// cap it took up to 7.5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limiting_resumes_within_a_second_of_redis_answering_again() {
    const OUTAGE: Duration = Duration::from_secs(5);
    let mut redis = RedisServer::start();
    let app = spawn(redis.url(), |s| s.rate_limit.per_minute = 3).await;
    assert_fourth_turn_refused(&app).await;

    for round in 1..=2 {
        redis.kill();
        let (token, session) = new_user_with_session(&app).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while limiter_state(&app).await != "degraded" {
            assert!(Instant::now() < deadline, "the limiter did not notice Redis was killed");
            expect_json(app.submit_turn(&token, &session, "while down").await, 201).await;
        }
        // The backoff grows with the outage: that is what is under test.
        tokio::time::sleep(OUTAGE).await;

        redis.restart();
        let answering = Instant::now();
        let elapsed = time_to_first_refusal(&app, answering).await;
        eprintln!(
            "round {round}: first refusal {} ms after Redis answered again",
            elapsed.as_millis()
        );
        assert!(
            elapsed < Duration::from_millis(1_500),
            "round {round}: limiting resumed after {elapsed:?}"
        );
    }
}

/// How long after `answering` a fresh user is refused at its limit: the
/// restarted Redis is empty, so it takes three checked turns and the fourth
/// is refused. Each turn is also the poll.
async fn time_to_first_refusal(app: &TestApp, answering: Instant) -> Duration {
    let (token, session) = new_user_with_session(app).await;
    let deadline = answering + Duration::from_secs(15);
    for turn in 1.. {
        let response = app.submit_turn(&token, &session, &format!("turn {turn}")).await;
        if response.status() == 429 {
            break;
        }
        expect_json(response, 201).await;
        assert!(Instant::now() < deadline, "still not limiting 15 s after Redis came back");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    answering.elapsed()
}
