//! The rate-limit contract over HTTP (`docs/API.md`, "Rate limiting"): the
//! original system's cases, the `429` exactly, headers parsed as Structured
//! Fields, refusals that touch no storage, tiers, shadow mode and the peek —
//! on the single Redis and on the Redis Cluster alike.

use std::sync::Arc;

use pantheon_domain::ManualClock;
use pantheon_infrastructure::Settings;
use pantheon_infrastructure::settings::{LimitMode, TierLimits};
use pantheon_tests::headers::sf_header;
use pantheon_tests::limiter::Store;
use pantheon_tests::{Backend, TestApp, expect_json, spawn_app_with_clock};
use reqwest::Method;
use serde_json::Value;

on_both_stores!(
    below_the_limit_a_turn_is_201_with_its_usage,
    the_minute_limit_answers_429_with_retry_after,
    a_limit_of_one_a_minute_asks_for_at_most_60_s_and_means_it,
    the_hour_limit_answers_429,
    a_refusal_writes_nothing_and_never_looks_the_session_up,
    a_higher_tier_token_is_admitted_on_its_very_next_request,
    shadow_mode_never_refuses_but_reports_the_usage,
    the_peek_reports_usage_and_consumes_nothing,
);

/// 42 s into a minute, 10 min into an hour.
const NOW: i64 = 493_100 * 3_600_000 + 600_000 + 42_000;

async fn app_with(
    store: Store,
    backend: Backend,
    per_minute: u32,
    per_hour: u32,
    adjust: impl FnOnce(&mut Settings),
) -> (TestApp, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::at(NOW));
    let app = spawn_app_with_clock(
        backend,
        |s| {
            store.configure(s);
            s.redis.timeout_ms = 2_000;
            s.rate_limit.per_minute = per_minute;
            s.rate_limit.per_hour = per_hour;
            adjust(s);
        },
        clock.clone(),
    )
    .await;
    (app, clock)
}

/// Asserts the `429` of `docs/API.md` ("Rate limiting") and returns its body.
async fn expect_rate_limited(response: reqwest::Response, window: &str, limit: i64) -> Value {
    let retry_after: i64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    let policy = sf_header(&response, "ratelimit-policy").expect("RateLimit-Policy");
    let usage = sf_header(&response, "ratelimit").expect("RateLimit");
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    let body = expect_json(response, 429).await;
    assert_eq!(body["type"], "https://iana.org/assignments/http-problem-types#quota-exceeded");
    assert_eq!(body["code"], "rate_limited");
    assert_eq!(body["title"], "Too Many Requests");
    assert_eq!(body["window"], window);
    assert_eq!(body["limit"], limit);
    assert_eq!(body["retry_after_seconds"], retry_after);
    assert!(retry_after >= 1);
    assert!(body["violated-policies"].as_array().unwrap().iter().any(|w| w == window));
    assert!(body["detail"].as_str().unwrap().contains(&format!("retry in {retry_after} s")));
    // The headers agree with the body.
    assert_eq!(policy[window]["q"], limit);
    assert_eq!(policy["minute"]["w"], 60);
    assert_eq!(policy["hour"]["w"], 3600);
    assert_eq!(usage[window]["r"], body["remaining"].as_i64().unwrap());
    assert_eq!(usage[window]["t"], retry_after);
    let retry_at =
        chrono::DateTime::parse_from_rfc3339(body["retry_at"].as_str().unwrap()).unwrap();
    let wait_ms = retry_at.timestamp_millis() - NOW;
    assert!(
        wait_ms > 0 && (wait_ms + 999) / 1000 == retry_after,
        "Retry-After is ceil(retry_at − now)"
    );
    body
}

async fn below_the_limit_a_turn_is_201_with_its_usage(store: Store) {
    let (app, _) = app_with(store, Backend::Sqlite, 3, 100, |_| {}).await;
    let (_, token) = app.new_user();
    let session = app.create_session(&token).await["id"].as_str().unwrap().to_owned();
    let response = app.submit_turn(&token, &session, "hi").await;
    let usage = sf_header(&response, "ratelimit").expect("an admitted turn reports its usage");
    let policy = sf_header(&response, "ratelimit-policy").expect("and the policy");
    expect_json(response, 201).await;
    assert_eq!((usage["minute"]["r"], usage["hour"]["r"]), (2, 99));
    assert_eq!((policy["minute"]["q"], policy["hour"]["q"]), (3, 100));
}

async fn the_minute_limit_answers_429_with_retry_after(store: Store) {
    let (app, clock) = app_with(store, Backend::Postgres, 3, 100, |_| {}).await;
    let (_, token) = app.new_user();
    let session = app.create_session(&token).await["id"].as_str().unwrap().to_owned();
    for _ in 0..3 {
        assert_eq!(app.submit_turn(&token, &session, "hi").await.status(), 201);
    }
    let body =
        expect_rate_limited(app.submit_turn(&token, &session, "hi").await, "minute", 3).await;
    assert_eq!(body["violated-policies"], serde_json::json!(["minute"]));
    assert_eq!(app.count("turns").await, 3);

    let retry_at =
        chrono::DateTime::parse_from_rfc3339(body["retry_at"].as_str().unwrap()).unwrap();
    clock.set(retry_at.timestamp_millis());
    assert_eq!(
        app.submit_turn(&token, &session, "hi").await.status(),
        201,
        "a client that waits is admitted"
    );
}

/// `per_minute = 1`: half a second after the one turn, `Retry-After` says
/// 60 (the turn leaves the window 59.5 s later, rounded up); a client that
/// obeys it is admitted, one that comes a second early is refused.
async fn a_limit_of_one_a_minute_asks_for_at_most_60_s_and_means_it(store: Store) {
    let (app, clock) = app_with(store, Backend::Sqlite, 1, 100, |_| {}).await;
    let (_, token) = app.new_user();
    let session = app.create_session(&token).await["id"].as_str().unwrap().to_owned();
    assert_eq!(app.submit_turn(&token, &session, "one").await.status(), 201);
    clock.advance(500);
    let refused = app.submit_turn(&token, &session, "two").await;
    let retry_after: i64 = refused.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    expect_rate_limited(refused, "minute", 1).await;
    assert_eq!(retry_after, 60);
    clock.advance(retry_after * 1_000 - 1_000);
    assert_eq!(app.submit_turn(&token, &session, "early").await.status(), 429, "a second early");
    clock.advance(1_000);
    assert_eq!(app.submit_turn(&token, &session, "on time").await.status(), 201);
}

async fn the_hour_limit_answers_429(store: Store) {
    let (app, _) = app_with(store, Backend::Sqlite, 100, 2, |_| {}).await;
    let (_, token) = app.new_user();
    let session = app.create_session(&token).await["id"].as_str().unwrap().to_owned();
    for _ in 0..2 {
        assert_eq!(app.submit_turn(&token, &session, "hi").await.status(), 201);
    }
    expect_rate_limited(app.submit_turn(&token, &session, "hi").await, "hour", 2).await;
}

async fn a_refusal_writes_nothing_and_never_looks_the_session_up(store: Store) {
    let (app, _) = app_with(store, Backend::Postgres, 1, 100, |_| {}).await;
    let (_, token) = app.new_user();
    let session = app.create_session(&token).await["id"].as_str().unwrap().to_owned();
    assert_eq!(app.submit_turn(&token, &session, "hi").await.status(), 201);
    let before = (app.count("sessions").await, app.count("turns").await);
    let nowhere = uuid::Uuid::new_v4().to_string();
    let response = app.submit_turn(&token, &nowhere, "hi").await;
    expect_rate_limited(response, "minute", 1).await;
    assert_eq!((app.count("sessions").await, app.count("turns").await), before);
    let turn_count = expect_json(
        app.request(Method::GET, &format!("/api/v1/sessions/{session}"), &token)
            .send()
            .await
            .unwrap(),
        200,
    )
    .await["turn_count"]
        .clone();
    assert_eq!(turn_count, 1, "no seq was allocated for the refused turn");
}

async fn a_higher_tier_token_is_admitted_on_its_very_next_request(store: Store) {
    let (app, _) = app_with(store, Backend::Sqlite, 1, 100, |s| {
        s.rate_limit.tiers.insert(
            "pro".into(),
            TierLimits {
                per_minute: 5,
                per_hour: 500,
                max_concurrent_turns: None,
                tokens_per_minute: None,
                tokens_per_hour: None,
                weight: 1,
            },
        );
    })
    .await;
    let (user, token) = app.new_user();
    let session = app.create_session(&token).await["id"].as_str().unwrap().to_owned();
    assert_eq!(app.submit_turn(&token, &session, "hi").await.status(), 201);
    assert_eq!(app.submit_turn(&token, &session, "hi").await.status(), 429);
    let pro = app.token_with_tier(&user, "pro");
    let response = app.submit_turn(&pro, &session, "hi").await;
    let policy = sf_header(&response, "ratelimit-policy").unwrap();
    expect_json(response, 201).await;
    assert_eq!(policy["minute"]["q"], 5);
}

async fn shadow_mode_never_refuses_but_reports_the_usage(store: Store) {
    let (app, _) =
        app_with(store, Backend::Sqlite, 1, 100, |s| s.rate_limit.mode = LimitMode::Shadow).await;
    let (_, token) = app.new_user();
    let session = app.create_session(&token).await["id"].as_str().unwrap().to_owned();
    for _ in 0..3 {
        let response = app.submit_turn(&token, &session, "hi").await;
        let usage = sf_header(&response, "ratelimit").unwrap();
        expect_json(response, 201).await;
        assert_eq!(usage["minute"]["r"], 0);
    }
    assert_eq!(app.count("turns").await, 3);
}

async fn the_peek_reports_usage_and_consumes_nothing(store: Store) {
    let (app, _) = app_with(store, Backend::Sqlite, 3, 100, |_| {}).await;
    let (_, token) = app.new_user();
    let session = app.create_session(&token).await["id"].as_str().unwrap().to_owned();
    assert_eq!(app.submit_turn(&token, &session, "hi").await.status(), 201);
    for _ in 0..5 {
        let response = app.request(Method::GET, "/api/v1/rate-limit", &token).send().await.unwrap();
        let usage = sf_header(&response, "ratelimit").unwrap();
        let body = expect_json(response, 200).await;
        assert_eq!(usage["minute"]["r"], 2);
        assert_eq!(body["windows"][0]["window"], "minute");
        assert_eq!(body["windows"][0]["remaining"], 2);
        assert_eq!(body["windows"][1]["remaining"], 99);
        assert_eq!(body["limiter"], "healthy");
    }
    assert_eq!(
        app.submit_turn(&token, &session, "hi").await.status(),
        201,
        "peeks consumed nothing"
    );
}

#[tokio::test]
async fn with_limiting_disabled_no_rate_limit_headers_are_sent() {
    let (app, _) =
        app_with(Store::Single, Backend::Sqlite, 1, 1, |s| s.rate_limit.enabled = false).await;
    let (_, token) = app.new_user();
    let session = app.create_session(&token).await["id"].as_str().unwrap().to_owned();
    for _ in 0..3 {
        let response = app.submit_turn(&token, &session, "hi").await;
        assert!(response.headers().get("ratelimit").is_none());
        assert!(response.headers().get("ratelimit-policy").is_none());
        expect_json(response, 201).await;
    }
}

#[tokio::test]
async fn the_in_process_limiter_serves_the_same_contract() {
    let (app, _) = app_with(Store::Single, Backend::Sqlite, 2, 100, |s| s.redis.url = None).await;
    let (_, token) = app.new_user();
    let session = app.create_session(&token).await["id"].as_str().unwrap().to_owned();
    for _ in 0..2 {
        assert_eq!(app.submit_turn(&token, &session, "hi").await.status(), 201);
    }
    expect_rate_limited(app.submit_turn(&token, &session, "hi").await, "minute", 2).await;
    let ready = expect_json(app.client.get(app.url("/readyz")).send().await.unwrap(), 200).await;
    assert_eq!(ready["limiter"], "in_process");
}
