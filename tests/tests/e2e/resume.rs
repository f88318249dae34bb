//! Streams resumed on any instance (`GET …/turns/{id}/events`, `docs/API.md`
//! "Resuming a stream") and cancels from any (`POST …/cancel`): in memory
//! on one instance, over the single Redis and the cluster with two
//! instances on one PostgreSQL.

use std::sync::Arc;

use futures::StreamExt;
use pantheon_domain::SystemClock;
use pantheon_domain::UserId;
use pantheon_infrastructure::bus::journal_key;
use pantheon_tests::limiter::{Store, logged_tokens};
use pantheon_tests::rng::Rng;
use pantheon_tests::sse::{SseEvent, parse_raw};
use pantheon_tests::{
    Backend, TestApp, TestDatabase, expect_json, expect_problem, spawn_app_with, spawn_instances,
};
use redis::Commands;
use reqwest::{Method, Response};
use serde_json::Value;

use crate::streaming::{LONG_INPUT, deltas, get_turn, stream, user_with_session};

/// Reads a stream's events; with `limit`, hangs up once that many came.
async fn read_events(response: Response, limit: Option<usize>) -> Vec<SseEvent> {
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let mut text = String::new();
    while let Some(chunk) = body.next().await {
        text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        let done = text.rsplit_once("\n\n").map_or("", |(done, _)| done);
        let events = parse_raw(done).events;
        if limit.is_some_and(|limit| events.len() >= limit) {
            return events;
        }
    }
    parse_raw(&text).events
}

fn turn_path(turn: &Value) -> String {
    format!(
        "/api/v1/sessions/{}/turns/{}",
        turn["session_id"].as_str().unwrap(),
        turn["id"].as_str().unwrap()
    )
}

fn events_path(turn: &Value) -> String {
    format!("{}/events", turn_path(turn))
}

async fn resume(app: &TestApp, token: &str, turn: &Value, last_event_id: Option<&str>) -> Response {
    let mut request = app.request(Method::GET, &events_path(turn), token);
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    request.send().await.unwrap()
}

async fn cancel(app: &TestApp, token: &str, turn: &Value) -> Response {
    let path = format!("{}/cancel", turn_path(turn));
    app.request(Method::POST, &path, token).send().await.unwrap()
}

/// Asserts `resumed` is exactly `original` (ids, names, deltas, and the
/// terminal's turn).
fn assert_same_events(resumed: &[SseEvent], original: &[SseEvent]) {
    let names = |events: &[SseEvent]| -> Vec<(String, String)> {
        events.iter().map(|e| (e.id.clone(), e.event.clone())).collect()
    };
    assert_eq!(names(resumed), names(original), "the same ids and events");
    for (resumed, original) in resumed.iter().zip(original) {
        match original.event.as_str() {
            "turn.delta" => assert_eq!(resumed.data, original.data, "the same delta"),
            _ => {
                let (a, b) = (&resumed.data["turn"], &original.data["turn"]);
                for field in ["id", "seq", "status", "output", "input"] {
                    assert_eq!(a[field], b[field], "the same turn {field}");
                }
            }
        }
    }
}

/// Two instances over one PostgreSQL, sharing `store`, with a paced reply.
async fn two_instances(store: Store) -> (TestDatabase, Vec<TestApp>) {
    let database = TestDatabase::create(Backend::Postgres).await;
    let apps = spawn_instances(2, &database, Arc::new(SystemClock), |s| {
        store.configure(s);
        s.redis.timeout_ms = 2_000;
        s.rate_limit.per_minute = 10_000;
        s.rate_limit.per_hour = 100_000;
        s.provider.builtin.chunk_delay_ms = 15;
        s.turns.coalesce_ms = 20;
    })
    .await;
    (database, apps)
}

/// Resumes after every event of a finished turn, on each instance in turn.
async fn resumes_after_every_event(apps: &[TestApp]) {
    let (token, session) = user_with_session(&apps[0]).await;
    let original = read_events(stream(&apps[0], &token, &session, LONG_INPUT).await, None).await;
    let turn = original[0].data["turn"].clone();
    assert!(original.len() > 3, "several deltas: {original:?}");
    let whole = read_events(resume(&apps[1 % apps.len()], &token, &turn, None).await, None).await;
    assert_same_events(&whole, &original);
    for (k, event) in original.iter().enumerate().take(original.len() - 1) {
        let app = &apps[k % apps.len()];
        let rest = read_events(resume(app, &token, &turn, Some(&event.id)).await, None).await;
        assert_same_events(&rest, &original[k + 1..]);
    }
}

async fn resumes_after_every_event_in_memory(backend: Backend) {
    let app = spawn_app_with(backend, |s| {
        s.provider.builtin.chunk_delay_ms = 15;
        s.turns.coalesce_ms = 20;
    })
    .await;
    resumes_after_every_event(std::slice::from_ref(&app)).await;
}

on_both_databases!(resumes_after_every_event_in_memory);

async fn resumes_after_every_event_on_either_instance(store: Store) {
    let (_database, apps) = two_instances(store).await;
    resumes_after_every_event(&apps).await;
}

on_both_stores!(resumes_after_every_event_on_either_instance);

/// Disconnects at random points mid-turn and resumes on a random instance:
/// the deltas add up to the output, none missing, none twice.
async fn random_disconnects_lose_and_repeat_nothing(store: Store) {
    let trials: usize =
        std::env::var("PANTHEON_RESUME_TRIALS").ok().and_then(|t| t.parse().ok()).unwrap_or(12);
    let (_database, apps) = two_instances(store).await;
    let mut rng = Rng(7);
    let (token, session) = user_with_session(&apps[0]).await;
    let mut joined = 0;
    for trial in 0..trials {
        let first = &apps[trial % 2];
        let cut = 1 + rng.next(6) as usize;
        let mut seen =
            read_events(stream(first, &token, &session, LONG_INPUT).await, Some(cut)).await;
        let turn = seen[0].data["turn"].clone();
        while seen.last().is_some_and(|e| e.event == "turn.delta") || seen.len() == 1 {
            let app = &apps[rng.next(2) as usize];
            let last = seen.last().unwrap().id.clone();
            let more = 1 + rng.next(4) as usize;
            let rest = read_events(resume(app, &token, &turn, Some(&last)).await, Some(more)).await;
            assert!(!rest.is_empty(), "a resume sends at least one event");
            seen.extend(rest);
        }
        for (seq, event) in seen.iter().enumerate() {
            assert_eq!(
                event.id,
                format!("{}:{seq}", turn["id"].as_str().unwrap()),
                "no gap, no repeat"
            );
        }
        let end = seen.last().unwrap();
        assert_eq!(end.event, "turn.completed");
        let output = end.data["turn"]["output"].as_str().unwrap();
        let story: Vec<(String, String, &str)> = seen
            .iter()
            .map(|e| (e.id.clone(), e.event.clone(), e.data["delta"].as_str().unwrap_or("")))
            .collect();
        assert_eq!(deltas(&seen), output, "every character once: {story:?}");
        joined += usize::from(seen.len() > cut);
    }
    assert!(joined > 0, "some trials resumed mid-turn");
}

on_both_stores!(random_disconnects_lose_and_repeat_nothing);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_the_journal_is_gone_a_resume_gets_the_whole_turn_as_its_end() {
    let (_database, apps) = two_instances(Store::Single).await;
    let (token, session) = user_with_session(&apps[0]).await;
    let original = read_events(stream(&apps[0], &token, &session, LONG_INPUT).await, None).await;
    let turn = original[0].data["turn"].clone();
    let turn_id: uuid::Uuid = turn["id"].as_str().unwrap().parse().unwrap();
    let mut redis = Store::Single.connection();
    let key = journal_key(turn_id.into());
    let ttl: i64 = redis.ttl(&key).unwrap();
    assert!((590..=600).contains(&ttl), "kept turns.resume_ttl_secs after the end: {ttl}");
    // What the expiry does, without waiting ten minutes.
    let _: () = redis.del(&key).unwrap();
    let late =
        read_events(resume(&apps[1], &token, &turn, Some(&original[2].id)).await, None).await;
    assert_eq!(late.len(), 1, "the end alone: {late:?}");
    assert_eq!(late[0].event, "turn.completed");
    assert_eq!(late[0].id, format!("{}:3", turn["id"].as_str().unwrap()));
    assert_eq!(late[0].data["turn"]["output"], format!("You said: {LONG_INPUT}"), "whole");
}

#[tokio::test]
async fn with_no_journal_a_resume_still_gets_the_end() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.provider.builtin.chunk_delay_ms = 15;
        s.turns.resume_ttl_secs = 0;
    })
    .await;
    let (token, session) = user_with_session(&app).await;
    let first = read_events(stream(&app, &token, &session, LONG_INPUT).await, Some(2)).await;
    let turn = first[0].data["turn"].clone();
    let rest = read_events(resume(&app, &token, &turn, Some(&first[1].id)).await, None).await;
    assert_eq!(rest.len(), 1, "the end alone: {rest:?}");
    assert_eq!(rest[0].data["turn"]["output"], format!("You said: {LONG_INPUT}"));
}

#[tokio::test]
async fn hostile_last_event_ids_and_other_users_turns_are_refused() {
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await;
    let (token, session) = user_with_session(&app).await;
    let streamed = read_events(stream(&app, &token, &session, "mine").await, None).await;
    let turn = streamed[0].data["turn"].clone();
    let other = expect_json(app.submit_turn(&token, &session, "another").await, 201).await;
    let id = turn["id"].as_str().unwrap();
    let huge = format!("{id}:{}", "9".repeat(8_000));
    let other_id = format!("{}:0", other["id"].as_str().unwrap());
    for bad in ["abc", "0:1", &other_id, &format!("{id}:-1"), &format!("{id}:x"), &huge] {
        let response = resume(&app, &token, &turn, Some(bad)).await;
        expect_problem(response, 400, "invalid_last_event_id").await;
    }
    let response =
        app.request(Method::GET, &format!("{}?after=x", events_path(&turn)), &token).send().await;
    expect_problem(response.unwrap(), 400, "invalid_query").await;
    let (_, stranger) = app.new_user();
    expect_problem(resume(&app, &stranger, &turn, None).await, 404, "turn_not_found").await;
    expect_problem(cancel(&app, &stranger, &turn).await, 404, "turn_not_found").await;
    let after = read_events(
        app.request(Method::GET, &format!("{}?after=0", events_path(&turn)), &token)
            .send()
            .await
            .unwrap(),
        None,
    )
    .await;
    assert_eq!(after.first().unwrap().id, format!("{id}:1"), "`after` resumes too");
}

async fn cancel_in_memory(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.provider.builtin.chunk_delay_ms = 100).await;
    let (token, session) = user_with_session(&app).await;
    let seen = read_events(stream(&app, &token, &session, LONG_INPUT).await, Some(2)).await;
    let turn = seen[0].data["turn"].clone();
    let cancelled = expect_json(cancel(&app, &token, &turn).await, 200).await;
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(cancelled["finish_reason"], "cancelled");
    let output = cancelled["output"].as_str().unwrap();
    assert!(output.starts_with("You said") && output.len() < LONG_INPUT.len(), "{output}");
    assert_eq!(get_turn(&app, &token, &turn).await, cancelled, "as persisted");
    let again =
        expect_problem(cancel(&app, &token, &turn).await, 409, "turn_not_in_progress").await;
    assert_eq!(again["turn"], cancelled, "with the turn as it ended");
    let rest = read_events(resume(&app, &token, &turn, Some(&seen[1].id)).await, None).await;
    let end = rest.last().unwrap();
    assert_eq!(end.event, "turn.completed", "a resumer gets the end");
    assert_eq!(end.data["turn"]["status"], "cancelled");
    assert_eq!(deltas(&seen) + &deltas(&rest), output);
}

on_both_databases!(cancel_in_memory);

/// A cancel sent to the instance that does not run the turn stops it, frees
/// its slot and settles its tokens (the prompt and what was written
/// charged, the rest of the reservation given back); the stream on the
/// other instance ends.
async fn a_cancel_from_the_other_instance_stops_the_turn(store: Store) {
    let database = TestDatabase::create(Backend::Postgres).await;
    let apps = spawn_instances(2, &database, Arc::new(SystemClock), |s| {
        store.configure(s);
        s.redis.timeout_ms = 2_000;
        s.rate_limit.max_concurrent_turns = 1;
        s.rate_limit.tokens_per_minute = Some(1_000_000);
        s.provider.builtin.chunk_delay_ms = 200;
    })
    .await;
    let (user, token) = apps[0].new_user();
    let session = apps[0].create_session(&token).await["id"].as_str().unwrap().to_owned();
    let response = stream(&apps[0], &token, &session, LONG_INPUT).await;
    let mut body = response.bytes_stream();
    let mut text = String::new();
    while parse_raw(text.rsplit_once("\n\n").map_or("", |(d, _)| d)).events.len() < 2 {
        text.push_str(std::str::from_utf8(&body.next().await.unwrap().unwrap()).unwrap());
    }
    let turn = parse_raw(&text).events[0].data["turn"].clone();
    let busy = apps[1].submit_turn(&token, &session, "while it runs").await;
    assert_eq!(busy.status(), 429, "its slot is taken while it runs");
    let cancelled = expect_json(cancel(&apps[1], &token, &turn).await, 200).await;
    assert_eq!(cancelled["status"], "cancelled");
    while let Some(chunk) = body.next().await {
        text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    let events = parse_raw(&text).events;
    let end = events.last().unwrap();
    assert_eq!(end.data["turn"]["status"], "cancelled", "the original stream ends too");
    assert_eq!(deltas(&events), cancelled["output"].as_str().unwrap());
    // The refund rides the release, queued as the turn ended.
    let user = UserId::parse(&user).unwrap();
    let charged = cancelled["usage"]["total_tokens"].as_u64().unwrap();
    let mut logged = 0;
    for _ in 0..100 {
        logged = logged_tokens(&mut store.connection(), &user);
        if logged == charged {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(logged, charged, "the prompt and the output written charged, no more");
    // Its release is ahead of any check its instance sends next (another
    // instance sees it once it reached Redis).
    let next = apps[0].submit_turn(&token, &session, "next").await;
    expect_json(next, 201).await;
}

on_both_stores!(a_cancel_from_the_other_instance_stops_the_turn);

/// A JSON turn's journal holds its start and end only; followed as a
/// stream, it is `turn.created` then the end with the whole output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_turn_journals_its_start_and_end_only() {
    let (_database, apps) = two_instances(Store::Single).await;
    let (token, session) = user_with_session(&apps[0]).await;
    let turn = expect_json(apps[0].submit_turn(&token, &session, LONG_INPUT).await, 201).await;
    let turn_id: uuid::Uuid = turn["id"].as_str().unwrap().parse().unwrap();
    let mut redis = Store::Single.connection();
    let entries: usize = redis.xlen(journal_key(turn_id.into())).unwrap();
    assert_eq!(entries, 2, "created and ended");
    let ttl: i64 = redis.ttl(journal_key(turn_id.into())).unwrap();
    assert!((1..=10).contains(&ttl), "kept only for the readers waiting on its end: {ttl}");
    let events = read_events(resume(&apps[1], &token, &turn, None).await, None).await;
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names, ["turn.created", "turn.completed"]);
    assert_eq!(events[1].data["turn"], turn, "the end carries the whole turn");
}
