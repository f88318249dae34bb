//! A server `SIGKILL`ed with streams in flight, on the real binary: its
//! turns do not stay `in_progress` (another instance's sweep ends them once
//! their heartbeat stops), and each keeps the output it had checkpointed —
//! at most one checkpoint interval behind what its client had received.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use pantheon_infrastructure::auth::TokenMinter;
use pantheon_infrastructure::settings::AuthSettings;
use pantheon_tests::process::ServerCommand;
use pantheon_tests::sse::parse_raw;
use pantheon_tests::{Backend, TestDatabase};
use sea_orm::{ConnectionTrait, Statement};

const STREAMS: usize = 10;
const CHUNK_DELAY_MS: u64 = 100;
/// The default checkpoint interval, in chunks of this test's pace.
const CHUNKS_PER_CHECKPOINT: usize = 10;
/// Deltas each client has before the kill: past two checkpoints.
const BEFORE_KILL: usize = 25;
const WAIT: Duration = Duration::from_secs(30);

async fn rows(db: &sea_orm::DatabaseConnection) -> Vec<(String, String, String)> {
    let sql = "SELECT id::text AS id, status, output FROM turns";
    db.query_all_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .unwrap()
        .into_iter()
        .map(|r| {
            (
                r.try_get("", "id").unwrap(),
                r.try_get("", "status").unwrap(),
                r.try_get("", "output").unwrap(),
            )
        })
        .collect()
}

fn deltas(text: &str) -> (String, String) {
    let events = parse_raw(text).events;
    let id =
        events.first().and_then(|e| e.data["turn"]["id"].as_str()).unwrap_or_default().to_owned();
    (id, events.iter().filter_map(|e| e.data["delta"].as_str()).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_sigkill_no_turn_stays_in_progress_and_each_keeps_its_checkpointed_output() {
    let database = TestDatabase::create(Backend::Postgres).await;
    let secret = format!("test-secret-{}", uuid::Uuid::new_v4());
    let mut command = ServerCommand::new(&database.url);
    command
        .set("PANTHEON__AUTH__JWT_SECRET", &secret)
        .set("PANTHEON__RATE_LIMIT__ENABLED", "false")
        .set("PANTHEON__PROVIDER__BUILTIN__CHUNK_DELAY_MS", &CHUNK_DELAY_MS.to_string());
    let mut first = command.spawn().await;
    let minter =
        TokenMinter::new(&AuthSettings { jwt_secret: secret, ..AuthSettings::default() }).unwrap();
    let client = reqwest::Client::new();
    let words: Vec<String> = (1..=80).map(|i| format!("w{i}")).collect();
    let input = words.join(" ");
    let full_reply = format!("You said: {input}");

    let received: Vec<Arc<Mutex<String>>> =
        (0..STREAMS).map(|_| Arc::new(Mutex::new(String::new()))).collect();
    for text in &received {
        let token = minter.mint(&format!("crash-{}", uuid::Uuid::new_v4()), None, WAIT).unwrap();
        let session = first.create_session(&client, &token).await;
        let response = first.stream(&client, &token, &session, &input).await;
        assert_eq!(response.status(), 200);
        let text = text.clone();
        tokio::spawn(async move {
            let mut body = response.bytes_stream();
            while let Some(Ok(chunk)) = body.next().await {
                text.lock().unwrap().push_str(&String::from_utf8_lossy(&chunk));
            }
        });
    }
    let started = Instant::now();
    while received
        .iter()
        .any(|t| t.lock().unwrap().matches("event: turn.delta").count() < BEFORE_KILL)
    {
        assert!(started.elapsed() < WAIT, "the streams did not progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    first.kill();
    let killed = Instant::now();
    let seen: Vec<(String, String)> = received.iter().map(|t| deltas(&t.lock().unwrap())).collect();
    let _second = command.spawn().await;
    let db = database.connect().await;
    loop {
        let stored = rows(&db).await;
        if stored.len() == STREAMS && stored.iter().all(|(_, status, _)| status != "in_progress") {
            break;
        }
        assert!(killed.elapsed() < WAIT, "turns still in progress: {stored:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ended_after = killed.elapsed();
    // Default checkpoint (1 s): stale after 3 s, a sweep every 2 s, plus the
    // restart: about 5 s; the bound leaves room for a loaded machine.
    assert!(ended_after < Duration::from_secs(9), "crashed turns ended after {ended_after:?}");

    let stored = rows(&db).await;
    let mut kept = Vec::new();
    for (id, client_saw) in &seen {
        let (_, status, output) =
            stored.iter().find(|(i, _, _)| i == id).expect("the turn is stored");
        assert_eq!(status, "incomplete");
        assert!(full_reply.starts_with(output.as_str()), "{output:?}");
        assert!(full_reply.starts_with(client_saw.as_str()), "{client_saw:?}");
        let stored_chunks = output.split(' ').count();
        let seen_chunks = client_saw.split(' ').count();
        assert!(
            stored_chunks + CHUNKS_PER_CHECKPOINT + 2 >= seen_chunks,
            "at most one interval of output lost: stored {stored_chunks} chunks, the client saw {seen_chunks}"
        );
        kept.push((stored_chunks, seen_chunks));
    }
    println!("crash: turns ended {ended_after:?} after the kill; (stored, seen) chunks: {kept:?}");
}

/// A stream resumed on a second instance while the first runs its turn,
/// then the first `SIGKILL`ed: the resumer gets every event the first had
/// published, then `turn.failed` (`turn_interrupted`) once the second's
/// sweep ended the turn — it never hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumer_on_another_instance_gets_the_end_of_a_turn_whose_instance_was_killed() {
    let database = TestDatabase::create(Backend::Postgres).await;
    let secret = format!("test-secret-{}", uuid::Uuid::new_v4());
    let mut command = ServerCommand::new(&database.url);
    command
        .set("PANTHEON__AUTH__JWT_SECRET", &secret)
        .set("PANTHEON__REDIS__URL", &pantheon_tests::limiter::redis_url())
        .set("PANTHEON__PROVIDER__BUILTIN__CHUNK_DELAY_MS", &CHUNK_DELAY_MS.to_string());
    let mut first = command.spawn().await;
    let second = command.spawn().await;
    let minter =
        TokenMinter::new(&AuthSettings { jwt_secret: secret, ..AuthSettings::default() }).unwrap();
    let client = reqwest::Client::new();
    let token = minter.mint(&format!("resumer-{}", uuid::Uuid::new_v4()), None, WAIT).unwrap();
    let session = first.create_session(&client, &token).await;
    let words: Vec<String> = (1..=80).map(|i| format!("w{i}")).collect();
    let response = first.stream(&client, &token, &session, &words.join(" ")).await;
    let mut body = response.bytes_stream();
    let mut text = String::new();
    while text.matches("event: turn.delta").count() < 3 {
        text.push_str(&String::from_utf8_lossy(&body.next().await.unwrap().unwrap()));
    }
    let (turn_id, _) = deltas(&text);
    drop(body);
    let resumed = client
        .get(format!("{}/api/v1/sessions/{session}/turns/{turn_id}/events", second.address()))
        .bearer_auth(&token)
        .header("last-event-id", format!("{turn_id}:1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resumed.status(), 200);
    let resumed_text = Arc::new(Mutex::new(String::new()));
    let reading = resumed_text.clone();
    let reader = tokio::spawn(async move {
        let mut body = resumed.bytes_stream();
        while let Some(Ok(chunk)) = body.next().await {
            reading.lock().unwrap().push_str(&String::from_utf8_lossy(&chunk));
        }
    });
    while resumed_text.lock().unwrap().matches("event: turn.delta").count() < 3 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill();
    let killed = Instant::now();
    tokio::time::timeout(WAIT, reader).await.expect("the resumer's stream ended").unwrap();
    let ended_after = killed.elapsed();
    let events = parse_raw(&resumed_text.lock().unwrap()).events;
    for (k, event) in events.iter().enumerate() {
        assert_eq!(event.id, format!("{turn_id}:{}", k + 2), "the events after 1, in order");
    }
    let end = events.last().unwrap();
    assert_eq!(end.event, "turn.failed");
    assert_eq!(end.data["error"]["code"], "turn_interrupted");
    assert_eq!(end.data["turn"]["status"], "incomplete");
    println!("crash: the resumer's terminal event came {ended_after:?} after the kill");
}
