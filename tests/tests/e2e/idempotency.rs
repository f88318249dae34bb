//! `Idempotency-Key` on both turn endpoints (`docs/API.md`, "Retries"): a
//! retry gets the first attempt's turn and counts nothing; the key is
//! claimed in the limiter's check (in memory, on the single Redis and on
//! the cluster) and held by the turn's row (unique per user) when the
//! claim is lost.

use std::sync::Arc;

use pantheon_domain::{ManualClock, UserId};
use pantheon_infrastructure::settings::ProviderKind;
use pantheon_tests::fake_openai::{FakeOpenAi, reply};
use pantheon_tests::limiter::{Store, logged_turns};
use pantheon_tests::sse::parse_raw;
use pantheon_tests::{
    Backend, TestApp, TestDatabase, expect_json, expect_problem, header, spawn_app_with,
    spawn_app_with_clock, spawn_instances,
};
use reqwest::{Method, Response};
use serde_json::{Value, json};

use crate::streaming::user_with_session;

/// 42 s into a minute.
const NOW: i64 = 493_300 * 3_600_000 + 42_000;

async fn post(
    app: &TestApp,
    token: &str,
    session: &str,
    input: &str,
    key: Option<&str>,
) -> Response {
    post_to(app, token, session, input, key, false).await
}

async fn post_to(
    app: &TestApp,
    token: &str,
    session: &str,
    input: &str,
    key: Option<&str>,
    stream: bool,
) -> Response {
    let path = match stream {
        true => format!("/api/v1/sessions/{session}/turns/stream"),
        false => format!("/api/v1/sessions/{session}/turns"),
    };
    let mut request = app.request(Method::POST, &path, token).json(&json!({ "input": input }));
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    request.send().await.unwrap()
}

fn replayed(response: &Response) -> bool {
    header(response, "idempotent-replayed") == "true"
}

/// A retry answers the first attempt's turn, replayed, and counts nothing.
async fn a_retry_gets_the_first_turn_and_counts_nothing(app: &TestApp) {
    let (token, session) = user_with_session(app).await;
    let first = post(app, &token, &session, "hello", Some("key-1")).await;
    assert!(!replayed(&first), "the first attempt's own answer is not a replay");
    let first = expect_json(first, 201).await;
    let retry = post(app, &token, &session, "hello", Some("\"key-1\"")).await;
    assert!(replayed(&retry), "a retry is marked");
    let location = header(&retry, "location");
    assert_eq!(
        location,
        format!("/api/v1/sessions/{session}/turns/{}", first["id"].as_str().unwrap())
    );
    assert_eq!(expect_json(retry, 201).await, first, "the same turn, as it ended");
    assert_eq!(app.count("turns").await, 1, "one turn row");
    let usage = expect_json(
        app.request(Method::GET, "/api/v1/rate-limit", &token).send().await.unwrap(),
        200,
    )
    .await;
    let minute = usage["windows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["window"] == "minute")
        .unwrap()
        .clone();
    let (remaining, limit) =
        (minute["remaining"].as_i64().unwrap(), minute["limit"].as_i64().unwrap());
    assert_eq!(remaining, limit - 1, "the retry counted nothing: {usage}");
    // The same key on the other endpoint: the turn's events.
    let events = parse_raw(
        &post_to(app, &token, &session, "hello", Some("key-1"), true).await.text().await.unwrap(),
    )
    .events;
    assert_eq!(events[0].data["turn"]["id"], first["id"]);
    assert_eq!(events.last().unwrap().data["turn"], first);
}

async fn retries_in_memory(backend: Backend) {
    let app = spawn_app_with(backend, |_| {}).await;
    a_retry_gets_the_first_turn_and_counts_nothing(&app).await;
}

on_both_databases!(retries_in_memory);

async fn retries_on_redis(store: Store) {
    let app = spawn_app_with(Backend::Postgres, |s| {
        store.configure(s);
        s.redis.timeout_ms = 2_000;
    })
    .await;
    a_retry_gets_the_first_turn_and_counts_nothing(&app).await;
}

on_both_stores!(retries_on_redis);

#[tokio::test]
async fn a_key_sent_with_another_request_is_422_and_changes_nothing() {
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await;
    let (token, session) = user_with_session(&app).await;
    expect_json(post(&app, &token, &session, "hello", Some("k")).await, 201).await;
    expect_problem(
        post(&app, &token, &session, "other", Some("k")).await,
        422,
        "idempotency_key_reused",
    )
    .await;
    let other = app.create_session(&token).await["id"].as_str().unwrap().to_owned();
    expect_problem(
        post(&app, &token, &other, "hello", Some("k")).await,
        422,
        "idempotency_key_reused",
    )
    .await;
    assert_eq!(app.count("turns").await, 1);
    // Keys belong to their user: another's equal key is its own.
    let (stranger, theirs) = user_with_session(&app).await;
    let response = post(&app, &stranger, &theirs, "hello", Some("k")).await;
    assert!(!replayed(&response));
    expect_json(response, 201).await;
    assert_eq!(app.count("turns").await, 2);
}

#[tokio::test]
async fn hostile_keys_are_400_and_change_nothing() {
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await;
    let (token, session) = user_with_session(&app).await;
    let long = "k".repeat(256);
    for bad in ["\"unterminated", "\"a\"b\"", "tab\there", long.as_str(), "\"\""] {
        let response = post(&app, &token, &session, "hello", Some(bad)).await;
        expect_problem(response, 400, "invalid_idempotency_key").await;
    }
    let twice = app
        .request(Method::POST, &format!("/api/v1/sessions/{session}/turns"), &token)
        .header("idempotency-key", "a")
        .header("idempotency-key", "b")
        .json(&json!({ "input": "hello" }))
        .send()
        .await
        .unwrap();
    expect_problem(twice, 400, "invalid_idempotency_key").await;
    let raw = app
        .request(Method::POST, &format!("/api/v1/sessions/{session}/turns"), &token)
        .header(
            "idempotency-key",
            reqwest::header::HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        )
        .json(&json!({ "input": "hello" }))
        .send()
        .await
        .unwrap();
    expect_problem(raw, 400, "invalid_idempotency_key").await;
    assert_eq!(app.count("turns").await, 0);
    assert_eq!(app.count("sessions").await, 1);
}

/// A refused attempt keeps nothing: the key is free for the retry, which
/// is a new turn; and a retry of an admitted one is answered over the limit.
async fn refusals_keep_the_key_free_and_replays_pass_the_limit(store: Option<Store>) {
    let clock = Arc::new(ManualClock::at(NOW));
    let app = spawn_app_with_clock(
        Backend::Postgres,
        |s| {
            if let Some(store) = store {
                store.configure(s);
            }
            s.redis.timeout_ms = 2_000;
            s.rate_limit.per_minute = 1;
        },
        clock.clone(),
    )
    .await;
    let (token, session) = user_with_session(&app).await;
    let first = expect_json(post(&app, &token, &session, "one", Some("a")).await, 201).await;
    let limited = post(&app, &token, &session, "two", Some("b")).await;
    assert_eq!(limited.status(), 429, "over the minute");
    let replay = post(&app, &token, &session, "one", Some("a")).await;
    assert!(replayed(&replay));
    assert_eq!(expect_json(replay, 201).await, first, "a replay passes the limit");
    clock.advance(60_000);
    let second = post(&app, &token, &session, "two", Some("b")).await;
    assert!(!replayed(&second), "the refused attempt left the key free");
    let second = expect_json(second, 201).await;
    assert_ne!(second["id"], first["id"]);
    assert_eq!(app.count("turns").await, 2);
}

async fn refusals_and_replays_on_redis(store: Store) {
    refusals_keep_the_key_free_and_replays_pass_the_limit(Some(store)).await;
}

on_both_stores!(refusals_and_replays_on_redis);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_and_replays_in_memory() {
    refusals_keep_the_key_free_and_replays_pass_the_limit(None).await;
}

/// A retry while the first attempt still streams attaches to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_retry_attaches_to_the_running_turn_and_a_json_retry_waits_for_its_end() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.provider.builtin.chunk_delay_ms = 40).await;
    let (token, session) = user_with_session(&app).await;
    let input = "one two three four five six seven eight";
    let first = post_to(&app, &token, &session, input, Some("s"), true).await;
    let (second, json) = tokio::join!(
        post_to(&app, &token, &session, input, Some("s"), true),
        post(&app, &token, &session, input, Some("s")),
    );
    assert!(replayed(&second) && replayed(&json));
    let first = parse_raw(&first.text().await.unwrap()).events;
    let second = parse_raw(&second.text().await.unwrap()).events;
    let ids = |events: &[pantheon_tests::sse::SseEvent]| {
        events.iter().map(|e| e.id.clone()).collect::<Vec<_>>()
    };
    assert_eq!(ids(&second), ids(&first), "the same events, from turn.created");
    let json = expect_json(json, 201).await;
    assert_eq!(json, first.last().unwrap().data["turn"], "the JSON retry answers the end");
    assert_eq!(json["output"], format!("You said: {input}"));
    assert_eq!(app.count("turns").await, 1);
}

/// A retry of a failed turn is answered its failure, as the first was.
#[tokio::test]
async fn a_retry_of_a_failed_turn_gets_the_same_problem() {
    let fake =
        FakeOpenAi::start(|_| pantheon_tests::fake_openai::status(500, "boom", vec![])).await;
    let base_url = fake.base_url.clone();
    let app = spawn_app_with(Backend::Sqlite, move |s| {
        s.provider.kind = ProviderKind::Openai;
        s.provider.openai.base_url = Some(base_url);
        s.provider.openai.api_key = Some("test-key".into());
        s.provider.openai.model = Some("fake-model".into());
    })
    .await;
    let (token, session) = user_with_session(&app).await;
    let first =
        expect_problem(post(&app, &token, &session, "hi", Some("f")).await, 502, "upstream_error")
            .await;
    let retry = post(&app, &token, &session, "hi", Some("f")).await;
    assert!(replayed(&retry));
    let retry = expect_problem(retry, 502, "upstream_error").await;
    assert_eq!(retry["turn"], first["turn"]);
    assert_eq!(fake.seen().len(), 1, "one upstream call");
}

/// Without the limiter (so no claim), the row's unique key still makes one
/// turn of twenty simultaneous attempts.
async fn the_row_holds_the_key_when_no_claim_is_made(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.rate_limit.enabled = false).await;
    let (token, session) = user_with_session(&app).await;
    let answers = futures::future::join_all(
        (0..20).map(|_| post(&app, &token, &session, "once", Some("race"))),
    )
    .await;
    let mut ids = Vec::new();
    for answer in answers {
        ids.push(expect_json(answer, 201).await["id"].clone());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "one turn for all: {ids:?}");
    assert_eq!(app.count("turns").await, 1);
}

on_both_databases!(the_row_holds_the_key_when_no_claim_is_made);

/// 100 identical requests fired at once at two instances: one turn, one
/// upstream call, one count.
async fn a_hundred_simultaneous_retries_over_two_instances_make_one_turn(store: Store) {
    let fake = FakeOpenAi::start(|_| reply(&["Hello", ",", " world"], 30)).await;
    let base_url = fake.base_url.clone();
    let database = TestDatabase::create(Backend::Postgres).await;
    let apps = spawn_instances(2, &database, Arc::new(pantheon_domain::SystemClock), |s| {
        store.configure(s);
        s.redis.timeout_ms = 2_000;
        s.rate_limit.per_minute = 1_000;
        s.rate_limit.per_hour = 10_000;
        s.provider.kind = ProviderKind::Openai;
        s.provider.openai.base_url = Some(base_url.clone());
        s.provider.openai.api_key = Some("test-key".into());
        s.provider.openai.model = Some("fake-model".into());
    })
    .await;
    let user = format!("race-{}", uuid::Uuid::new_v4());
    let token = apps[0].token(&user);
    let session = apps[0].create_session(&token).await["id"].as_str().unwrap().to_owned();
    let answers = futures::future::join_all(
        (0..100).map(|i| post(&apps[i % 2], &token, &session, "once", Some("the-key"))),
    )
    .await;
    let mut replays = 0;
    let mut ids: Vec<Value> = Vec::new();
    for answer in answers {
        replays += usize::from(replayed(&answer));
        ids.push(expect_json(answer, 201).await["id"].clone());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "every answer carries the same turn");
    assert_eq!(replays, 99, "all but the first are replays");
    assert_eq!(apps[0].count("turns").await, 1, "one row");
    assert_eq!(fake.seen().len(), 1, "one upstream call");
    let user = UserId::parse(&user).unwrap();
    assert_eq!(logged_turns(&mut store.connection(), &user), 1, "counted once");
    println!("idempotency race ({store:?}): 100 requests, 1 turn, 1 upstream call, 1 counted");
}

on_both_stores!(a_hundred_simultaneous_retries_over_two_instances_make_one_turn);
