//! A PostgreSQL that fails under load: a server of the test's own, stopped
//! with `pg_ctl stop -m immediate` (every backend killed, connections
//! broken mid-query), then started again. Every failure is a prompt `503
//! storage_unavailable` with `Retry-After`, never a `500`; Pantheon
//! recovers without a restart; nothing it accepted is lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pantheon_domain::SystemClock;
use pantheon_tests::postgres_server::PostgresServer;
use pantheon_tests::sse::parse_raw;
use pantheon_tests::{TestApp, TestDatabase, expect_problem, header, spawn_app_on};
use sea_orm::{ConnectionTrait, Statement};
use serde_json::Value;

use crate::streaming::{assert_contract, stream, user_with_session};

/// The pool's acquire timeout in these tests.
const ACQUIRE_MS: u64 = 1_000;
/// What an answer during the outage may take beyond the acquire timeout:
/// a busy 2-core machine. Less than a second acquire timeout, so a request
/// that waits out two (queued behind a failing batch) fails the test.
const SLACK: Duration = Duration::from_millis(700);
/// Bound on every wait for a state to appear.
const WAIT: Duration = Duration::from_secs(30);

async fn app_on_own_postgres(chunk_delay_ms: u64) -> (Arc<PostgresServer>, TestApp) {
    let pg = tokio::task::spawn_blocking(|| {
        let pg = PostgresServer::start();
        pg.create_database("pantheon");
        pg
    })
    .await
    .unwrap();
    let database = TestDatabase::at(pg.url("pantheon"));
    let app = spawn_app_on(
        database,
        |s| {
            s.database.acquire_timeout_ms = ACQUIRE_MS;
            s.rate_limit.enabled = false;
            s.provider.builtin.chunk_delay_ms = chunk_delay_ms;
        },
        Arc::new(SystemClock),
    )
    .await;
    (Arc::new(pg), app)
}

async fn stop(pg: &Arc<PostgresServer>) {
    let pg = pg.clone();
    tokio::task::spawn_blocking(move || pg.stop_immediately()).await.unwrap();
}

async fn start(pg: &Arc<PostgresServer>) {
    let pg = pg.clone();
    tokio::task::spawn_blocking(move || pg.start_again()).await.unwrap();
}

async fn turn_status(app: &TestApp, id: &str) -> Option<(String, String)> {
    let sql = format!("SELECT status, output FROM turns WHERE id = '{id}'");
    let row = app
        .db
        .query_one_raw(Statement::from_string(app.db.get_database_backend(), sql))
        .await
        .ok()??;
    Some((row.try_get("", "status").ok()?, row.try_get("", "output").ok()?))
}

/// What one JSON turn got.
#[derive(Debug)]
struct Answer {
    status: u16,
    took: Duration,
    retry_after: String,
    body: Value,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_outage_under_load_is_answered_503_promptly_and_every_201_turn_is_stored() {
    let (pg, app) = app_on_own_postgres(0).await;
    let app = Arc::new(app);
    let running = Arc::new(AtomicBool::new(true));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (token, session) = user_with_session(&app).await;
        let (app, running) = (app.clone(), running.clone());
        clients.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            // Bounded in count as well as by the flag.
            for _ in 0..20_000 {
                if !running.load(Ordering::SeqCst) {
                    break;
                }
                let started = Instant::now();
                let response = app.submit_turn(&token, &session, "during an outage").await;
                let status = response.status().as_u16();
                let retry_after = header(&response, "retry-after");
                let body: Value = response.json().await.unwrap_or(Value::Null);
                answers.push(Answer { status, took: started.elapsed(), retry_after, body });
            }
            answers
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop(&pg).await;
    // The other endpoints that touch storage answer the same way.
    let (_, token) = app.new_user();
    let listed =
        app.request(reqwest::Method::GET, "/api/v1/sessions", &token).send().await.unwrap();
    assert_eq!(header(&listed, "retry-after"), "1");
    expect_problem(listed, 503, "storage_unavailable").await;
    let session = uuid::Uuid::now_v7();
    let streamed = stream(&app, &token, &session.to_string(), "hello").await;
    assert_eq!(header(&streamed, "retry-after"), "1");
    expect_problem(streamed, 503, "storage_unavailable").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    start(&pg).await;
    let restarted = Instant::now();
    // Recovery without restarting Pantheon: a fresh user's turn succeeds.
    let (token, session) = user_with_session_retrying(&app).await;
    loop {
        let response = app.submit_turn(&token, &session, "after the outage").await;
        if response.status() == 201 {
            break;
        }
        assert!(restarted.elapsed() < WAIT, "no turn succeeded after the restart");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let recovery = restarted.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    running.store(false, Ordering::SeqCst);

    let mut answers = Vec::new();
    for client in clients {
        answers.extend(client.await.unwrap());
    }
    let unavailable: Vec<&Answer> = answers.iter().filter(|a| a.status == 503).collect();
    let stored: Vec<&Answer> = answers.iter().filter(|a| a.status == 201).collect();
    assert!(!unavailable.is_empty(), "the outage was seen");
    assert!(!stored.is_empty());
    for answer in &answers {
        assert!(matches!(answer.status, 201 | 503), "only 201 or 503: {answer:?}");
    }
    let slowest = unavailable.iter().map(|a| a.took).max().unwrap_or_default();
    for answer in &unavailable {
        assert_eq!(answer.body["code"], "storage_unavailable", "{answer:?}");
        assert!(!answer.retry_after.is_empty(), "Retry-After on every 503: {answer:?}");
        assert!(
            answer.took < Duration::from_millis(ACQUIRE_MS) + SLACK,
            "answered within the acquire timeout: {answer:?}"
        );
    }
    for answer in &stored {
        let id = answer.body["id"].as_str().unwrap();
        let (status, output) = turn_status(&app, id).await.expect("every 201 turn is stored");
        assert_eq!((status.as_str(), output.as_str()), ("completed", "You said: during an outage"));
    }
    println!(
        "outage: {} answers, {} × 503 (slowest {slowest:?}), {} × 201; recovered {recovery:?} after the restart",
        answers.len(),
        unavailable.len(),
        stored.len()
    );
}

/// A session created right after the restart, when the pool may still hold
/// a broken connection or two.
async fn user_with_session_retrying(app: &TestApp) -> (String, String) {
    let started = Instant::now();
    let (_, token) = app.new_user();
    loop {
        let response = app
            .request(reqwest::Method::POST, "/api/v1/sessions", &token)
            .json(&serde_json::json!({}))
            .send()
            .await
            .unwrap();
        if response.status() == 201 {
            let body = pantheon_tests::read_json(response).await;
            return (token, body["id"].as_str().unwrap().to_owned());
        }
        assert_eq!(response.status(), 503);
        assert!(started.elapsed() < WAIT, "no session could be created after the restart");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_whose_end_cannot_be_written_says_so_and_its_turn_lands_after_the_outage() {
    let (pg, app) = app_on_own_postgres(150).await;
    let (token, session) = user_with_session(&app).await;
    let input = "one two three four five six seven eight nine ten";
    let response = stream(&app, &token, &session, input).await;
    assert_eq!(response.status(), 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop(&pg).await;
    // The reply ends while the database is down.
    let raw = parse_raw(&response.text().await.unwrap());
    let terminal = assert_contract(&raw.events).clone();
    assert_eq!(terminal.event, "turn.failed", "{:?}", terminal.data);
    assert_eq!(terminal.data["error"]["code"], "storage_unavailable");
    assert_eq!(terminal.data["error"]["status"], 503);
    let id = terminal.data["turn"]["id"].as_str().unwrap().to_owned();
    let streamed: String = raw.events.iter().filter_map(|e| e.data["delta"].as_str()).collect();
    assert_eq!(streamed, format!("You said: {input}"));

    start(&pg).await;
    let restarted = Instant::now();
    loop {
        if let Some((status, output)) = turn_status(&app, &id).await
            && status == "completed"
        {
            assert_eq!(output, format!("You said: {input}"), "the whole reply is kept");
            break;
        }
        assert!(restarted.elapsed() < WAIT, "the turn's end was never written");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
