//! Token budgets per user over HTTP (README "Token budgets"): a turn
//! reserves its input and output cap in the same `EVALSHA` as its turn's
//! log entry and slot, is held to that cap whatever the upstream does, and
//! settles its actual usage on the entry it charged; the settled usage in a
//! window never exceeds its limit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pantheon_domain::limiter::Window;
use pantheon_domain::{ManualClock, TokenCounter, UserId};
use pantheon_infrastructure::Settings;
use pantheon_infrastructure::settings::{Fallback, ProviderKind, TokenizerKind};
use pantheon_infrastructure::tokenizer::Tiktoken;
use pantheon_tests::fake_openai::{Answer, FakeOpenAi, delta, done, finish, usage};
use pantheon_tests::headers::{parse_sf_list, parse_sf_string_params};
use pantheon_tests::limiter::{redis_connection, redis_url};
use pantheon_tests::redis_server::refused_url;
use pantheon_tests::sse::parse_raw;
use pantheon_tests::{
    Backend, TestApp, TestDatabase, expect_json, expect_problem, header, spawn_app_on,
    spawn_instances,
};
use redis::Commands;
use reqwest::{Method, Response};
use serde_json::{Value, json};

use crate::streaming::stream;

/// 42 s into a minute.
pub const NOW: i64 = 493_300 * 3_600_000 + 42_000;

pub fn tokens() -> Tiktoken {
    Tiktoken::new(TokenizerKind::O200k)
}

/// `n` distinct words.
pub fn words(n: usize) -> String {
    (0..n).map(|i| format!("word{i}")).collect::<Vec<_>>().join(" ")
}

/// A server on its own SQLite file and the shared Redis, turn limits out of
/// reach, then `adjust`.
pub async fn app(clock: &Arc<ManualClock>, adjust: impl FnOnce(&mut Settings)) -> TestApp {
    let database = TestDatabase::create(Backend::Sqlite).await;
    spawn_app_on(
        database,
        |s| {
            s.redis.url = Some(redis_url());
            s.redis.timeout_ms = 2_000;
            s.rate_limit.per_minute = 10_000;
            s.rate_limit.per_hour = 100_000;
            s.rate_limit.max_concurrent_turns = 1_000;
            adjust(s);
        },
        clock.clone(),
    )
    .await
}

pub async fn user_and_session(app: &TestApp) -> (UserId, String, String) {
    let (user, token) = app.new_user();
    let session = app.create_session(&token).await["id"].as_str().unwrap().to_owned();
    (UserId::parse(&user).unwrap(), token, session)
}

/// The tokens of the user's log entries inside `window` ending at
/// `now_ms`, refunds marked applied; `None` when no entry is inside.
fn bucket(user: &UserId, window: Window, now_ms: i64) -> Option<i64> {
    let log = pantheon_tests::limiter::settled_log(&mut redis_connection(), user)?;
    let inside = log.entries.iter().filter(|e| e.at_ms > now_ms - window.millis());
    inside.map(|e| e.tokens as i64).reduce(|a, b| a + b)
}

/// Waits (bounded) until the minute holds `expected` tokens: a release is
/// sent after the response that reported the end.
pub async fn bucket_settles_at(user: &UserId, now_ms: i64, expected: i64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while bucket(user, Window::Minute, now_ms) != Some(expected) {
        let got = bucket(user, Window::Minute, now_ms);
        assert!(Instant::now() < deadline, "the bucket holds {got:?}, not {expected}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn total(turn: &Value) -> i64 {
    turn["usage"]["total_tokens"].as_i64().unwrap()
}

/// The `r` of `tokens-minute` in a response's `RateLimit`.
pub fn tokens_left(response: &Response) -> i64 {
    parse_sf_list(&header(response, "ratelimit"))["tokens-minute"]["r"]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_long_turns_over_three_instances_never_settle_more_than_the_budget() {
    const LIMIT: i64 = 4_000;
    const CLIENTS: usize = 48;
    const ATTEMPTS: usize = 4;
    let clock = Arc::new(ManualClock::at(NOW));
    let database = TestDatabase::create(Backend::Postgres).await;
    let apps = spawn_instances(3, &database, clock.clone(), |s| {
        s.redis.url = Some(redis_url());
        s.redis.timeout_ms = 2_000;
        s.rate_limit.per_minute = 10_000;
        s.rate_limit.per_hour = 100_000;
        s.rate_limit.max_concurrent_turns = 1_000;
        s.rate_limit.tokens_per_minute = Some(LIMIT as u32);
        s.turns.max_output_tokens = Some(120);
        // About a second per turn: they overlap, and refunds land while
        // others are still asking.
        s.provider.builtin.chunk_delay_ms = 20;
    })
    .await;
    let (user, token, session) = user_and_session(&apps[0]).await;
    let input = words(40);
    let clients = (0..CLIENTS).map(|i| {
        let (app, token, session, input) = (&apps[i % 3], &token, &session, &input);
        async move {
            let mut outcomes = Vec::new();
            for _ in 0..ATTEMPTS {
                let response = app.submit_turn(token, session, input).await;
                match response.status().as_u16() {
                    201 => {
                        outcomes.push(Ok(response.json::<Value>().await.unwrap()));
                        break;
                    }
                    429 => outcomes.push(Err(response.json::<Value>().await.unwrap())),
                    other => panic!("every answer is a 201 or a 429, got {other}"),
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            outcomes
        }
    });
    let outcomes: Vec<_> = futures::future::join_all(clients).await.into_iter().flatten().collect();
    let admitted: Vec<&Value> = outcomes.iter().filter_map(|o| o.as_ref().ok()).collect();
    let refused: Vec<&Value> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    let settled: i64 = admitted.iter().map(|t| total(t)).sum();
    println!(
        "token budget {LIMIT}: {} turns admitted, {} refused, {settled} tokens settled \
         ({:.1} % used, overshoot {})",
        admitted.len(),
        refused.len(),
        100.0 * settled as f64 / LIMIT as f64,
        (settled - LIMIT).max(0)
    );
    assert!(settled <= LIMIT, "settled {settled} > {LIMIT}");
    assert!(settled >= LIMIT / 2, "the budget was used: {settled} of {LIMIT}");
    assert!(!refused.is_empty(), "the budget refused some");
    for body in &refused {
        assert_eq!(body["violated-policies"], json!(["tokens-minute"]), "{body}");
        assert_eq!(body["window"], "tokens-minute");
    }
    // Redis agrees to the token: the bucket holds exactly what was settled.
    bucket_settles_at(&user, NOW, settled).await;
    for app in apps {
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_ignores_max_tokens_is_cut_at_the_cap_and_charged_no_more() {
    let mut steps: Vec<_> = (0..500).map(|_| delta(" more")).collect();
    steps.extend([finish("stop"), usage(10, 500), done()]);
    let fake = FakeOpenAi::start(move |_| Answer::Stream(steps.clone())).await;
    let clock = Arc::new(ManualClock::at(NOW));
    let base_url = fake.base_url.clone();
    let app = app(&clock, |s| {
        s.rate_limit.tokens_per_minute = Some(100_000);
        s.turns.max_output_tokens = Some(50);
        s.provider.kind = ProviderKind::Openai;
        s.provider.openai.base_url = Some(base_url);
        s.provider.openai.model = Some("fake-model".into());
        s.provider.openai.system_prompt = Some("You are a test.".into());
    })
    .await;
    let (user, token, session) = user_and_session(&app).await;
    let response = app.submit_turn(&token, &session, "Write forever").await;
    let reserved = 100_000 - tokens_left(&response);
    let turn = expect_json(response, 201).await;
    assert_eq!(turn["finish_reason"], "length");
    let t = tokens();
    assert_eq!(t.count(turn["output"].as_str().unwrap()), 50, "cut at the cap");
    let prompt = (4 + t.count("You are a test.")) + (4 + t.count("Write forever")) + 3;
    assert_eq!(
        turn["usage"],
        json!({"input_tokens": prompt, "output_tokens": 50, "total_tokens": prompt + 50})
    );
    assert_eq!(reserved, prompt as i64 + 50, "reserved: the prompt and the cap");
    assert!(total(&turn) <= reserved);
    assert_eq!(fake.seen()[0].body["max_tokens"], 50, "the upstream was asked for the cap");
    bucket_settles_at(&user, NOW, total(&turn)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_reply_refunds_and_the_peek_reports_the_settled_usage() {
    const LIMIT: i64 = 10_000;
    let clock = Arc::new(ManualClock::at(NOW));
    let app = app(&clock, |s| {
        s.rate_limit.tokens_per_minute = Some(LIMIT as u32);
        s.rate_limit.tokens_per_hour = Some(50_000);
        s.turns.max_output_tokens = Some(1_000);
    })
    .await;
    let (user, token, session) = user_and_session(&app).await;
    let response = app.submit_turn(&token, &session, "hi").await;
    let policy = parse_sf_list(&header(&response, "ratelimit-policy"));
    let units = parse_sf_string_params(&header(&response, "ratelimit-policy"));
    assert_eq!(policy["tokens-minute"], [("q".into(), LIMIT), ("w".into(), 60)].into());
    assert_eq!(policy["tokens-hour"], [("q".into(), 50_000), ("w".into(), 3_600)].into());
    assert_eq!(units["tokens-minute"]["qu"], "tokens");
    let input = tokens().count("hi") as i64;
    assert_eq!(tokens_left(&response), LIMIT - (input + 1_000), "after the reservation");
    let turn = expect_json(response, 201).await;
    assert!(total(&turn) < input + 1_000, "a short reply");

    let peek = app.request(Method::GET, "/api/v1/rate-limit", &token).send().await.unwrap();
    assert_eq!(tokens_left(&peek), LIMIT - total(&turn), "the refund shows at once");
    let body = expect_json(peek, 200).await;
    assert_eq!(body["tokens"][0]["window"], "tokens-minute");
    assert_eq!(body["tokens"][0]["remaining"], LIMIT - total(&turn));
    assert_eq!(body["tokens"][1]["remaining"], 50_000 - total(&turn));
    assert_eq!(bucket(&user, Window::Minute, NOW), Some(total(&turn)));
    assert_eq!(bucket(&user, Window::Hour, NOW), Some(total(&turn)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_after_the_minute_rolled_on_lands_on_the_entry_it_was_charged_to() {
    let clock = Arc::new(ManualClock::at(NOW));
    let app = app(&clock, |s| {
        s.rate_limit.tokens_per_minute = Some(10_000);
        s.turns.max_output_tokens = Some(1_000);
        s.provider.builtin.chunk_delay_ms = 100;
    })
    .await;
    let (user, token, session) = user_and_session(&app).await;
    // The head of the stream: admitted, reserved, committed.
    let response = stream(&app, &token, &session, "one two three four five six").await;
    assert_eq!(response.status(), 200);
    clock.advance(60_000);
    let events = parse_raw(&response.text().await.unwrap()).events;
    let end = events.last().unwrap();
    assert_eq!(end.event, "turn.completed");
    let settled = total(&end.data["turn"]);
    bucket_settles_at(&user, NOW, settled).await;
    assert_eq!(bucket(&user, Window::Minute, NOW + 60_000), None, "nothing in the new minute");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_refusal_is_exact_names_its_policy_and_asks_for_the_smallest_reservation() {
    const LIMIT: i64 = 1_000;
    let clock = Arc::new(ManualClock::at(NOW));
    let app = app(&clock, |s| {
        s.rate_limit.tokens_per_minute = Some(LIMIT as u32);
        s.turns.max_output_tokens = Some(100);
    })
    .await;
    let (_, token, session) = user_and_session(&app).await;
    let input = words(40);
    let smallest = tokens().count(&input) as i64 + 16;
    let mut refused = None;
    for _ in 0..20 {
        let response = app.submit_turn(&token, &session, &input).await;
        if response.status() == 429 {
            refused = Some(response);
            break;
        }
        expect_json(response, 201).await;
    }
    let refused = refused.expect("the budget ran out");
    let retry_after: i64 = header(&refused, "retry-after").parse().unwrap();
    let body = expect_json(refused, 429).await;
    assert_eq!(body["code"], "rate_limited");
    assert_eq!(body["violated-policies"], json!(["tokens-minute"]));
    assert_eq!((&body["window"], &body["limit"]), (&json!("tokens-minute"), &json!(LIMIT)));
    assert_eq!(body["window_seconds"], 60);
    assert_eq!(body["requested"], smallest);
    assert!(body["remaining"].as_i64().unwrap() < smallest, "{body}");
    let retry_at = chrono::DateTime::parse_from_rfc3339(body["retry_at"].as_str().unwrap())
        .unwrap()
        .timestamp_millis();
    assert_eq!(retry_after, (retry_at - NOW + 999) / 1000);

    clock.set(retry_at - 1);
    let early = app.submit_turn(&token, &session, &input).await;
    let early = expect_json(early, 429).await;
    assert_eq!(early["retry_at"], body["retry_at"], "refused 1 ms before, with the same time");
    clock.set(retry_at);
    expect_json(app.submit_turn(&token, &session, &input).await, 201).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_input_over_the_budget_is_422_and_nothing_is_written_or_counted() {
    let clock = Arc::new(ManualClock::at(NOW));
    let app = app(&clock, |s| s.rate_limit.tokens_per_minute = Some(50)).await;
    let (user, token, session) = user_and_session(&app).await;
    let input = words(60);
    let response = app.submit_turn(&token, &session, &input).await;
    let body = expect_problem(response, 422, "input_exceeds_token_budget").await;
    let estimate = tokens().count(&input) as i64;
    assert_eq!(body["input_tokens"], estimate);
    assert_eq!(body["requested"], estimate + 16);
    assert_eq!((&body["limit"], &body["window"]), (&json!(50), &json!("tokens-minute")));
    let streamed = stream(&app, &token, &session, &input).await;
    expect_problem(streamed, 422, "input_exceeds_token_budget").await;
    assert_eq!(app.count("turns").await, 0, "nothing written");
    let keys: Vec<String> = redis_connection().keys(format!("ratelimit:{{{user}}}:*")).unwrap();
    assert!(keys.is_empty(), "nothing counted: {keys:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_local_budgets_per_instance_and_allow_accounts_nothing() {
    let clock = Arc::new(ManualClock::at(NOW));
    let budget = |fallback| {
        move |s: &mut Settings| {
            s.redis.url = Some(refused_url());
            s.redis.timeout_ms = 200;
            s.rate_limit.fallback = fallback;
            s.rate_limit.tokens_per_minute = Some(100);
            s.turns.max_output_tokens = Some(90);
            s.provider.builtin.chunk_delay_ms = 300;
        }
    };
    // local: a running turn's reservation leaves too little for the next.
    let local = app(&clock, budget(Fallback::Local)).await;
    let (_, token, session) = user_and_session(&local).await;
    let running = stream(&local, &token, &session, "one two three four five six").await;
    assert_eq!(running.status(), 200);
    let refused = local.submit_turn(&token, &session, "hi").await;
    let body = expect_json(refused, 429).await;
    assert_eq!(body["violated-policies"], json!(["tokens-minute"]));
    drop(running);

    // allow: admitted unchecked, no usage reported (it would be a guess).
    let allow = app(&clock, budget(Fallback::Allow)).await;
    let (_, token, session) = user_and_session(&allow).await;
    let running = stream(&allow, &token, &session, "one two three four five six").await;
    assert_eq!(running.status(), 200);
    let admitted = allow.submit_turn(&token, &session, "hi").await;
    assert!(header(&admitted, "ratelimit").is_empty());
    expect_json(admitted, 201).await;
}
