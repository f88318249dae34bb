//! A begin held on a locked session row: another transaction holds the
//! session `FOR UPDATE`, so the turn's `UPDATE sessions … RETURNING` waits
//! (as behind a slow writer or a lock queue). The turn it then commits is
//! live, not stale: its heartbeat is stamped after the wait, so no sweep
//! ends it. And a stream client that hangs up while it waits (before any
//! byte of its response) still cancels its turn under
//! `turns.on_disconnect = cancel`, upstream request included.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use pantheon_domain::ports::TurnRepository;
use pantheon_infrastructure::db::SeaOrmTurnRepository;
use pantheon_infrastructure::settings::OnDisconnect;
use pantheon_tests::fake_openai::{Answer, FakeOpenAi, Step, delta, done, finish, usage};
use pantheon_tests::{Backend, TestApp, expect_json, spawn_app_with};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, Statement,
    TransactionTrait,
};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::openai_provider::{spawn_on, user_with_session};

const WAIT: Duration = Duration::from_secs(30);

/// The session row held `FOR UPDATE` by a transaction of the test's own.
struct SessionLock {
    txn: DatabaseTransaction,
}

impl SessionLock {
    async fn take(db: &DatabaseConnection, session: &str) -> Self {
        let txn = db.begin().await.unwrap();
        let lock = Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT id FROM sessions WHERE id = $1::uuid FOR UPDATE",
            [session.into()],
        );
        txn.execute_raw(lock).await.unwrap();
        Self { txn }
    }

    /// Returns once a statement of the server waits for the lock.
    async fn wait_for_a_waiter(db: &DatabaseConnection) {
        let started = Instant::now();
        let sql = "SELECT count(*) AS n FROM pg_stat_activity \
                   WHERE datname = current_database() AND wait_event_type = 'Lock'";
        loop {
            let row = db
                .query_one_raw(Statement::from_string(DbBackend::Postgres, sql))
                .await
                .unwrap()
                .unwrap();
            if row.try_get::<i64>("", "n").unwrap() > 0 {
                return;
            }
            assert!(started.elapsed() < WAIT, "no begin waited for the session's lock");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Commits, freeing the row; returns the database's time just before.
    async fn release(self) -> DateTime<Utc> {
        let now = Statement::from_string(DbBackend::Postgres, "SELECT clock_timestamp() AS now");
        let row = self.txn.query_one_raw(now).await.unwrap().unwrap();
        let released: DateTime<Utc> = row.try_get("", "now").unwrap();
        self.txn.commit().await.unwrap();
        released
    }
}

/// `(status, heartbeat_at)` of the session's turn, once it is committed.
async fn turn_of(db: &DatabaseConnection, session: &str) -> Option<(String, DateTime<Utc>)> {
    let sql = Statement::from_sql_and_values(
        DbBackend::Postgres,
        "SELECT status, heartbeat_at FROM turns WHERE session_id = $1::uuid",
        [session.into()],
    );
    let row = db.query_one_raw(sql).await.unwrap()?;
    Some((row.try_get("", "status").unwrap(), row.try_get("", "heartbeat_at").unwrap()))
}

const CHECKPOINT_MS: u64 = 250;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_begin_held_three_intervals_on_a_locked_session_is_never_swept() {
    let app = spawn_app_with(Backend::Postgres, |s| {
        s.rate_limit.enabled = false;
        s.turns.checkpoint_ms = CHECKPOINT_MS;
        // 40 words of input: about 40 chunks, two seconds of generating.
        s.provider.builtin.chunk_delay_ms = 50;
    })
    .await;
    let stale_after = Duration::from_millis(CHECKPOINT_MS * 3);
    let (_, token) = app.new_user();
    let session = app.create_session(&token).await["id"].as_str().unwrap().to_owned();
    let input: Vec<String> = (1..=40).map(|i| format!("w{i}")).collect();

    let lock = SessionLock::take(&app.db, &session).await;
    let submitted = app
        .request(reqwest::Method::POST, &format!("/api/v1/sessions/{session}/turns"), &token)
        .json(&json!({ "input": input.join(" ") }))
        .send();
    let submitted = tokio::spawn(submitted);
    SessionLock::wait_for_a_waiter(&app.db).await;
    // Longer than a heartbeat may be old: a stamp taken before the wait
    // would be stale the moment the turn is committed.
    tokio::time::sleep(stale_after + Duration::from_millis(CHECKPOINT_MS)).await;
    let released = lock.release().await;

    // Another instance's sweep, the moment the turn is first seen.
    let (sweeper, _writers) = SeaOrmTurnRepository::new(app.db.clone());
    let started = Instant::now();
    let mut first_seen = true;
    let mut seen = Vec::new();
    let status = loop {
        if let Some((status, heartbeat)) = turn_of(&app.db, &session).await {
            if std::mem::take(&mut first_seen) {
                assert!(
                    heartbeat >= released,
                    "stamped at its commit, after the wait: {heartbeat} < {released}"
                );
                let swept = sweeper.expire_stale(stale_after, Utc::now()).await.unwrap();
                assert_eq!(swept, 0, "a sweep right after the commit ends nothing");
            }
            if seen.last() != Some(&status) {
                seen.push(status.clone());
            }
            assert_ne!(status, "incomplete", "a live turn was swept: {seen:?}");
            if status != "in_progress" {
                break status;
            }
        }
        assert!(started.elapsed() < WAIT, "the turn did not end: {seen:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(status, "completed", "{seen:?}");
    let response = submitted.await.unwrap().unwrap();
    let body = expect_json(response, 201).await;
    assert_eq!(body["status"], "completed");
}

/// A reply of 20 deltas over about three seconds: long enough that a turn
/// nobody cancelled is plainly still running when the test looks.
fn slow_reply() -> Answer {
    let mut steps = Vec::new();
    for i in 0..20 {
        steps.extend([delta(&format!("w{i} ")), Step::Pause(Duration::from_millis(150))]);
    }
    steps.extend([finish("stop"), usage(5, 20), done()]);
    Answer::Stream(steps)
}

/// Sends a stream request over a raw connection, then hangs up (`FIN`)
/// while the begin waits; returns once the server has closed its side, so
/// it has dropped the request before the turn was committed. A server that
/// answers half-closed clients keeps the connection: it is then reset
/// (`RST`), and the turn is cancelled when its response cannot be written.
async fn hang_up_while_the_begin_waits(app: &TestApp, token: &str, session: &str) {
    let body = json!({ "input": "hello" }).to_string();
    let address = app.address.trim_start_matches("http://");
    let request = format!(
        "POST /api/v1/sessions/{session}/turns/stream HTTP/1.1\r\nhost: {address}\r\n\
         authorization: Bearer {token}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut socket = tokio::net::TcpStream::connect(address).await.unwrap();
    socket.write_all(request.as_bytes()).await.unwrap();
    SessionLock::wait_for_a_waiter(&app.db).await;
    socket.shutdown().await.unwrap();
    let mut answer = Vec::new();
    match tokio::time::timeout(HALF_CLOSED_WAIT, socket.read_to_end(&mut answer)).await {
        Ok(read) => {
            assert!(matches!(read, Ok(0)), "the server closed without a byte: {read:?} {answer:?}");
        }
        Err(_) => socket.set_zero_linger().unwrap(),
    }
}

/// How long a hung-up client waits for the server to close its side.
const HALF_CLOSED_WAIT: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_client_gone_before_its_commit_cancels_its_turn_and_its_upstream_request() {
    let fake = FakeOpenAi::start(|_| slow_reply()).await;
    let app = spawn_on(Backend::Postgres, &fake, |s| {
        s.rate_limit.enabled = false;
        s.turns.on_disconnect = OnDisconnect::Cancel;
    })
    .await;
    let (token, session) = user_with_session(&app).await;

    let lock = SessionLock::take(&app.db, &session).await;
    hang_up_while_the_begin_waits(&app, &token, &session).await;
    lock.release().await;

    let started = Instant::now();
    let status = loop {
        match turn_of(&app.db, &session).await {
            Some((status, _)) if status != "in_progress" => break status,
            _ => {}
        }
        assert!(started.elapsed() < WAIT, "the turn did not end");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status, "cancelled", "a client gone before the commit cancels its turn");
    // Every request that reached the upstream was dropped before its end.
    while fake.cut_short() < fake.seen().len() {
        assert!(started.elapsed() < WAIT, "the upstream request was never dropped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(fake.cut_short(), fake.seen().len());
}
