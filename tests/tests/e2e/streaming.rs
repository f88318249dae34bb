//! Streaming turns over SSE (`docs/API.md`, "Streaming"): the event contract, the
//! shared limiter check, failures, keep-alive, disconnects, many streams.

use std::time::Duration;

use pantheon_infrastructure::provider::FAIL_MARKER;
use pantheon_infrastructure::settings::OnDisconnect;
use pantheon_tests::sse::{SseEvent, parse_raw, read_with_parser};
use pantheon_tests::{Backend, TestApp, expect_json, spawn_app, spawn_app_with};
use reqwest::{Method, Response};
use serde_json::{Value, json};

pub async fn stream(app: &TestApp, token: &str, session: &str, input: &str) -> Response {
    app.request(Method::POST, &format!("/api/v1/sessions/{session}/turns/stream"), token)
        .json(&json!({ "input": input }))
        .send()
        .await
        .unwrap()
}

pub async fn user_with_session(app: &TestApp) -> (String, String) {
    let (_, token) = app.new_user();
    let session = app.create_session(&token).await["id"].as_str().unwrap().to_owned();
    (token, session)
}

/// Asserts the envelope of every event and returns the terminal one.
pub fn assert_contract(events: &[SseEvent]) -> &SseEvent {
    assert_eq!(events[0].event, "turn.created", "turn.created comes first");
    let turn_id = events[0].data["turn"]["id"].as_str().unwrap();
    for (seq, event) in events.iter().enumerate() {
        assert_eq!(event.data["type"], event.event.as_str(), "type repeats the event name");
        assert_eq!(event.data["seq"], seq, "seq counts from 0 with no gap");
        assert_eq!(event.id, format!("{turn_id}:{seq}"));
    }
    let terminal: Vec<_> =
        events.iter().filter(|e| e.event == "turn.completed" || e.event == "turn.failed").collect();
    assert_eq!(terminal.len(), 1, "exactly one terminal event");
    let last = events.last().unwrap();
    assert_eq!(last, terminal[0], "the terminal event is the last");
    last
}

pub fn deltas(events: &[SseEvent]) -> String {
    events
        .iter()
        .filter(|e| e.event == "turn.delta")
        .map(|e| e.data["delta"].as_str().unwrap())
        .collect()
}

pub async fn get_turn(app: &TestApp, token: &str, turn: &Value) -> Value {
    let path = format!(
        "/api/v1/sessions/{}/turns/{}",
        turn["session_id"].as_str().unwrap(),
        turn["id"].as_str().unwrap()
    );
    expect_json(app.request(Method::GET, &path, token).send().await.unwrap(), 200).await
}

#[tokio::test]
async fn a_stream_sends_created_deltas_and_completed_in_order() {
    let app = spawn_app(Backend::Sqlite).await;
    let (token, session) = user_with_session(&app).await;
    let response = stream(&app, &token, &session, "the quick brown fox").await;
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "text/event-stream");
    assert_eq!(headers["cache-control"], "no-cache");
    assert_eq!(headers["x-accel-buffering"], "no");
    assert!(headers.get("content-encoding").is_none());
    assert!(headers.contains_key("ratelimit") && headers.contains_key("ratelimit-policy"));
    let raw = parse_raw(&response.text().await.unwrap());
    let terminal = assert_contract(&raw.events).clone();
    assert_eq!(terminal.event, "turn.completed");
    assert_eq!(raw.events[0].data["turn"]["status"], "in_progress");
    let completed = &terminal.data["turn"];
    assert_eq!(completed["status"], "completed");
    assert_eq!(
        deltas(&raw.events),
        completed["output"].as_str().unwrap(),
        "the deltas add up to the output"
    );
    assert_eq!(completed["output"], "You said: the quick brown fox");
    assert_eq!(
        &get_turn(&app, &token, completed).await,
        completed,
        "the persisted turn is the one streamed"
    );
}

#[tokio::test]
async fn an_independent_sse_parser_reads_the_same_stream() {
    let app = spawn_app(Backend::Sqlite).await;
    let (token, session) = user_with_session(&app).await;
    let events = read_with_parser(stream(&app, &token, &session, "parse me please").await).await;
    let terminal = assert_contract(&events);
    assert_eq!(terminal.event, "turn.completed");
    assert_eq!(deltas(&events), "You said: parse me please");
}

on_both_databases!(a_stream_over_the_limit_is_a_429_problem_and_shares_the_json_budget);

async fn a_stream_over_the_limit_is_a_429_problem_and_shares_the_json_budget(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.rate_limit.per_minute = 2).await;
    let (token, session) = user_with_session(&app).await;
    assert_eq!(app.submit_turn(&token, &session, "json").await.status(), 201);
    let admitted = stream(&app, &token, &session, "stream").await;
    assert_eq!(admitted.status(), 200);
    assert_contract(&parse_raw(&admitted.text().await.unwrap()).events);

    let refused = stream(&app, &token, &session, "one too many").await;
    assert_eq!(
        refused.headers()["content-type"],
        "application/problem+json",
        "not text/event-stream"
    );
    assert!(refused.headers().contains_key("retry-after"));
    let body = expect_json(refused, 429).await;
    assert_eq!(body["code"], "rate_limited");
    assert_eq!(
        app.submit_turn(&token, &session, "json again").await.status(),
        429,
        "one budget for both"
    );
    assert_eq!(app.count("turns").await, 2, "refusals wrote nothing");

    let nowhere = uuid::Uuid::new_v4().to_string();
    let (other, _) = user_with_session(&app).await;
    let missing = stream(&app, &other, &nowhere, "hi").await;
    assert_eq!(
        missing.status(),
        404,
        "a missing session is an ordinary 404 before the stream starts"
    );
}

on_both_databases!(a_provider_failure_mid_stream_ends_with_turn_failed);

async fn a_provider_failure_mid_stream_ends_with_turn_failed(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, session) = user_with_session(&app).await;
    let response =
        stream(&app, &token, &session, &format!("one two three four {FAIL_MARKER}")).await;
    let raw = parse_raw(&response.text().await.unwrap());
    let terminal = assert_contract(&raw.events);
    assert_eq!(terminal.event, "turn.failed");
    let turn = &terminal.data["turn"];
    assert_eq!(turn["status"], "failed");
    assert_eq!(turn["output"], "You said: one two", "the partial output");
    assert_eq!(deltas(&raw.events), "You said: one two");
    assert_eq!(terminal.data["error"]["code"], "upstream_error");
    assert_eq!(terminal.data["error"]["status"], 502);
    assert_eq!(&get_turn(&app, &token, turn).await, turn);
}

#[tokio::test]
async fn keep_alive_comments_flow_while_the_provider_is_silent() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.turns.keep_alive_secs = 1;
        s.provider.builtin.chunk_delay_ms = 1_300;
    })
    .await;
    let (token, session) = user_with_session(&app).await;
    let raw = parse_raw(&stream(&app, &token, &session, "slow").await.text().await.unwrap());
    assert_contract(&raw.events);
    assert!(raw.comments >= 1, "a keep-alive comment arrived while the provider was silent");
}

/// Reads events until `count` deltas have arrived, then hangs up.
pub async fn read_deltas_then_disconnect(response: Response, count: usize) -> Value {
    use futures::StreamExt;
    let mut body = response.bytes_stream();
    let mut text = String::new();
    while let Some(chunk) = body.next().await {
        text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        let raw = parse_raw(text.rsplit_once("\n\n").map_or("", |(done, _)| done));
        if raw.events.iter().filter(|e| e.event == "turn.delta").count() >= count {
            return raw.events[0].data["turn"].clone();
        }
    }
    panic!("the stream ended before {count} deltas");
}

/// Polls the turn until it leaves `in_progress` (bounded).
pub async fn wait_until_ended(app: &TestApp, token: &str, turn: &Value) -> Value {
    for _ in 0..200 {
        let now = get_turn(app, token, turn).await;
        if now["status"] != "in_progress" {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the turn stayed in progress");
}

pub const LONG_INPUT: &str = "one two three four five six seven eight nine ten eleven twelve";

#[tokio::test]
async fn a_client_that_disconnects_does_not_cut_the_turn_short_by_default() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.provider.builtin.chunk_delay_ms = 60).await;
    let (token, session) = user_with_session(&app).await;
    let turn =
        read_deltas_then_disconnect(stream(&app, &token, &session, LONG_INPUT).await, 3).await;
    let during = get_turn(&app, &token, &turn).await;
    assert_eq!(during["status"], "in_progress");
    assert!(
        during["output"].as_str().unwrap().starts_with("You said: one"),
        "the partial output shows: {during}"
    );
    let ended = wait_until_ended(&app, &token, &turn).await;
    assert_eq!(ended["status"], "completed");
    assert_eq!(ended["output"], format!("You said: {LONG_INPUT}"), "persisted in full");
}

#[tokio::test]
async fn with_on_disconnect_cancel_the_turn_stops_and_keeps_its_partial_output() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.provider.builtin.chunk_delay_ms = 100;
        s.turns.on_disconnect = OnDisconnect::Cancel;
    })
    .await;
    let (token, session) = user_with_session(&app).await;
    let turn =
        read_deltas_then_disconnect(stream(&app, &token, &session, LONG_INPUT).await, 2).await;
    let ended = wait_until_ended(&app, &token, &turn).await;
    assert_eq!(ended["status"], "cancelled");
    assert_eq!(ended["finish_reason"], "cancelled");
    let output = ended["output"].as_str().unwrap();
    assert!(output.starts_with("You said: one"), "{output}");
    assert!(
        output.len() < format!("You said: {LONG_INPUT}").len(),
        "the provider stopped early: {output}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_streams_from_different_users_all_complete() {
    let app = spawn_app_with(Backend::Postgres, |s| s.provider.builtin.chunk_delay_ms = 20).await;
    let streams = (0..200).map(|i| {
        let app = &app;
        async move {
            let (token, session) = user_with_session(app).await;
            let input = format!("stream number {i}");
            let raw = parse_raw(&stream(app, &token, &session, &input).await.text().await.unwrap());
            let terminal = assert_contract(&raw.events).clone();
            assert_eq!(terminal.event, "turn.completed");
            assert_eq!(terminal.data["turn"]["output"], format!("You said: {input}"));
            get_turn(app, &token, &terminal.data["turn"]).await == terminal.data["turn"]
        }
    });
    let results = futures::future::join_all(streams).await;
    assert!(results.iter().all(|same| *same), "every persisted turn equals its streamed one");
    assert_eq!(app.count("turns").await, 200);
}
