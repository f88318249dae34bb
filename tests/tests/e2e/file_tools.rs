//! Turns that read files through `file_read`, with the builtin provider
//! (whose tool use is deterministic): the files a turn may read, the
//! events a stream shows, what the turn records, and the refusals.

use pantheon_tests::sse::read_with_parser;
use pantheon_tests::{Backend, expect_json, expect_problem, spawn_app};
use reqwest::Method;
use serde_json::{Value, json};

use crate::streaming::{assert_contract, deltas, get_turn, user_with_session};

on_both_databases!(
    a_streamed_turn_reads_the_file_it_names_and_shows_it,
    a_sessions_files_are_read_by_its_turns_without_naming_them,
    a_turn_naming_a_file_it_may_not_read_is_refused_and_writes_nothing
);

const NOTES: &str = "Quarterly notes: revenue up 12 %, costs flat, hiring paused.";

async fn a_streamed_turn_reads_the_file_it_names_and_shows_it(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, session) = user_with_session(&app).await;
    let file = app.upload_ok(&token, "notes.txt", NOTES.as_bytes(), None).await;
    let id = file["id"].as_str().unwrap();
    let response = app
        .request(Method::POST, &format!("/api/v1/sessions/{session}/turns/stream"), &token)
        .json(&json!({ "input": "What do my notes say?", "files": [id] }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let events = read_with_parser(response).await;
    let terminal = assert_contract(&events);
    assert_eq!(terminal.event, "turn.completed", "{terminal:?}");
    let kinds: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(&kinds[..3], ["turn.created", "turn.tool_call", "turn.tool_result"], "{kinds:?}");
    let call = &events[1].data;
    assert_eq!(call["name"], "file_read");
    let arguments: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(arguments["file_id"], id);
    let result = &events[2].data;
    assert_eq!(result["file_id"], id);
    assert_eq!(result["bytes"], NOTES.len());
    assert!(result.get("error").is_none(), "{result}");
    let text = deltas(&events);
    let expected = format!("Read {} bytes of notes.txt: \"{}\"", NOTES.len(), &NOTES[..60]);
    assert!(text.starts_with(&expected), "{text:?}");
    let turn = &terminal.data["turn"];
    assert_eq!(turn["output"], text.as_str());
    assert_eq!(turn["tool_calls"][0]["file_id"], id);
    assert_eq!(turn["tool_calls"][0]["bytes"], NOTES.len());
    let stored = get_turn(&app, &token, turn).await;
    assert_eq!(stored["tool_calls"], turn["tool_calls"], "the calls are recorded with the turn");
    // Both rounds were charged: the second prompt carried the file's text.
    let usage = &turn["usage"];
    assert!(usage["input_tokens"].as_i64().unwrap() > 2 * 5, "{usage}");
}

async fn a_sessions_files_are_read_by_its_turns_without_naming_them(backend: Backend) {
    let app = spawn_app(backend).await;
    let (token, session) = user_with_session(&app).await;
    app.upload_ok(&token, "attached.md", b"# Plan\nShip on Friday.", Some(&session)).await;
    let turn = expect_json(app.submit_turn(&token, &session, "What is the plan?").await, 201).await;
    assert!(
        turn["output"]
            .as_str()
            .unwrap()
            .starts_with("Read 22 bytes of attached.md: \"# Plan Ship on Friday.\""),
        "{turn}"
    );
    assert_eq!(turn["tool_calls"].as_array().unwrap().len(), 1);
    // Another session of the same user does not see it.
    let other = app.create_session(&token).await["id"].as_str().unwrap().to_owned();
    let plain = expect_json(app.submit_turn(&token, &other, "What is the plan?").await, 201).await;
    assert_eq!(plain["tool_calls"], json!([]));
    assert!(!plain["output"].as_str().unwrap().contains("Read "), "{plain}");
}

async fn a_turn_naming_a_file_it_may_not_read_is_refused_and_writes_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, owner) = app.new_user();
    let theirs = app.upload_ok(&owner, "private.txt", b"not yours", None).await;
    let (token, session) = user_with_session(&app).await;
    let turns = app.count("turns").await;
    let missing = uuid::Uuid::new_v4().to_string();
    for named in [theirs["id"].as_str().unwrap(), missing.as_str()] {
        for path in ["turns", "turns/stream"] {
            let response = app
                .request(Method::POST, &format!("/api/v1/sessions/{session}/{path}"), &token)
                .json(&json!({ "input": "read it", "files": [named] }))
                .send()
                .await
                .unwrap();
            let problem = expect_problem(response, 422, "validation_failed").await;
            assert_eq!(problem["errors"][0]["field"], "files", "{problem}");
            assert!(!problem.to_string().contains("not yours"));
        }
    }
    assert_eq!(app.count("turns").await, turns, "nothing was written");
    let too_many: Vec<String> = (0..21).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    let response = app
        .request(Method::POST, &format!("/api/v1/sessions/{session}/turns"), &token)
        .json(&json!({ "input": "read them", "files": too_many }))
        .send()
        .await
        .unwrap();
    expect_problem(response, 422, "validation_failed").await;
}

/// A streamed turn's tool events are journaled like its deltas: the same
/// turn resumed from its start on another instance (through Redis) shows
/// the same events under the same ids. One process compiles the tool's
/// schema once, however many servers and turns it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_events_resume_on_another_instance_with_the_same_ids() {
    let database = pantheon_tests::TestDatabase::create(Backend::Postgres).await;
    let clock = std::sync::Arc::new(pantheon_domain::SystemClock);
    let apps = pantheon_tests::spawn_instances(2, &database, clock, |s| {
        s.redis.url = Some(pantheon_tests::limiter::redis_url());
        s.redis.timeout_ms = 2_000;
    })
    .await;
    let (token, session) = user_with_session(&apps[0]).await;
    let file = apps[0].upload_ok(&token, "notes.txt", NOTES.as_bytes(), None).await;
    let response = apps[0]
        .request(Method::POST, &format!("/api/v1/sessions/{session}/turns/stream"), &token)
        .json(&json!({ "input": "Read my notes", "files": [file["id"]] }))
        .send()
        .await
        .unwrap();
    let original = read_with_parser(response).await;
    let turn = &assert_contract(&original).data["turn"];
    let path = format!("/api/v1/sessions/{session}/turns/{}/events", turn["id"].as_str().unwrap());
    let resumed =
        read_with_parser(apps[1].request(Method::GET, &path, &token).send().await.unwrap()).await;
    let shape = |events: &[pantheon_tests::sse::SseEvent]| -> Vec<(String, String)> {
        events.iter().map(|e| (e.id.clone(), e.event.clone())).collect()
    };
    assert_eq!(shape(&resumed), shape(&original));
    assert_eq!(resumed[1].data, original[1].data, "the call, as the original stream sent it");
    assert_eq!(resumed[2].data, original[2].data, "and its result");
    assert_eq!(pantheon_infrastructure::tools::schema_compilations(), 1);
}
