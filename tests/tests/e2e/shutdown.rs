//! Graceful shutdown with streams open (`docs/API.md`, "Shutdown"): the server stops within
//! its grace period, open streams end with their terminal event, and no turn
//! is left `in_progress`.

use std::time::{Duration, Instant};

use pantheon_tests::sse::parse_raw;
use pantheon_tests::{Backend, spawn_app_with};
use sea_orm::{ConnectionTrait, Statement};

use crate::streaming::{assert_contract, stream, user_with_session};

pub async fn statuses(db: &sea_orm::DatabaseConnection) -> Vec<String> {
    let sql = "SELECT status FROM turns ORDER BY status";
    db.query_all_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .unwrap()
        .into_iter()
        .map(|row| row.try_get::<String>("", "status").unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_streams_within_the_grace_period_and_leaves_nothing_in_progress() {
    let grace = Duration::from_secs(1);
    let app = spawn_app_with(Backend::Postgres, |s| {
        s.server.shutdown_grace_secs = 1;
        s.provider.builtin.chunk_delay_ms = 250;
    })
    .await;
    let long = "one two three four five six seven eight nine ten eleven twelve thirteen";
    let mut readers = Vec::new();
    for input in [long, long, long, "short"] {
        let (token, session) = user_with_session(&app).await;
        // The head is in once `send` returns: the turn is committed.
        let response = stream(&app, &token, &session, input).await;
        readers.push(tokio::spawn(async move { parse_raw(&response.text().await.unwrap()) }));
    }
    // Wait (bounded) until all four turns are committed and streaming.
    let db = app.db.clone();
    for _ in 0..100 {
        if statuses(&db).await.len() == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(statuses(&db).await.len(), 4);

    let started = Instant::now();
    let stopping = tokio::spawn(app.stop());
    let mut outcomes = Vec::new();
    for reader in readers {
        let raw = reader.await.unwrap();
        let terminal = assert_contract(&raw.events).clone();
        outcomes.push((
            terminal.event.clone(),
            terminal.data["turn"]["status"].as_str().unwrap().to_owned(),
            terminal.data["error"]["code"].clone(),
        ));
    }
    stopping.await.unwrap();
    let took = started.elapsed();
    assert!(took < grace + Duration::from_secs(3), "stopped in {took:?}, grace {grace:?}");

    outcomes.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(
        outcomes[0].0, "turn.completed",
        "the short turn finished within the grace: {outcomes:?}"
    );
    for (event, status, code) in &outcomes[1..] {
        assert_eq!((event.as_str(), status.as_str()), ("turn.failed", "incomplete"));
        assert_eq!(code, "turn_interrupted");
    }
    let stored = statuses(&db).await;
    assert_eq!(
        stored,
        ["completed", "incomplete", "incomplete", "incomplete"],
        "nothing left in progress"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_and_exits_cleanly_on_sigterm() {
    let database = pantheon_tests::TestDatabase::create(Backend::Sqlite).await;
    let mut server = pantheon_tests::process::ServerCommand::new(&database.url).spawn().await;
    let ready = reqwest::get(format!("{}/readyz", server.address())).await.unwrap();
    assert_eq!(ready.status(), 200);
    let status = server.terminate().await;
    assert!(status.success(), "exit status {status}; stderr:\n{}", server.output());
    assert!(server.output().contains("pantheon stopped"), "{}", server.output());
}
