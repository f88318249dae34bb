//! Turns whose model calls `file_read` over several rounds, against the
//! fake OpenAI upstream: only the turn's files are read (another user's
//! file, a malformed call, a bad range get error results, never bytes),
//! every round's prompt is charged to the token budget, and a round that
//! would not fit the turn's reservation ends it `length` unsent.

use std::sync::Arc;

use pantheon_domain::{ManualClock, TokenCounter};
use pantheon_infrastructure::Settings;
use pantheon_infrastructure::settings::ProviderKind;
use pantheon_tests::expect_json;
use pantheon_tests::fake_openai::{FakeOpenAi, Round};
use reqwest::Method;
use serde_json::{Value, json};

use crate::tokens::{NOW, app, bucket_settles_at, tokens, total, user_and_session};

const SYSTEM: &str = "You are a test.";

fn upstream(s: &mut Settings, fake: &FakeOpenAi) {
    s.provider.kind = ProviderKind::Openai;
    s.provider.openai.base_url = Some(fake.base_url.clone());
    s.provider.openai.model = Some("fake-model".into());
    s.provider.openai.system_prompt = Some(SYSTEM.into());
}

fn read_call(file: &str, extra: &str) -> String {
    format!(r#"{{"file_id":"{file}"{extra}}}"#)
}

async fn submit(app: &pantheon_tests::TestApp, token: &str, session: &str, body: Value) -> Value {
    let path = format!("/api/v1/sessions/{session}/turns");
    expect_json(app.request(Method::POST, &path, token).json(&body).send().await.unwrap(), 201)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_loop_reads_only_the_turns_files_and_every_round_is_charged() {
    let clock = Arc::new(ManualClock::at(NOW));
    let fake = FakeOpenAi::rounds(Vec::new()).await;
    let app = app(&clock, |s| {
        s.rate_limit.tokens_per_minute = Some(100_000);
        upstream(s, &fake);
    })
    .await;
    let (user, token, session) = user_and_session(&app).await;
    let (_, other) = app.new_user();
    let theirs = app.upload_ok(&other, "theirs.txt", b"THEIR SECRET LEDGER", None).await;
    let theirs = theirs["id"].as_str().unwrap();
    let mine = app.upload_ok(&token, "mine.txt", b"my quarterly numbers", None).await;
    let mine = mine["id"].as_str().unwrap();
    fake.queue(Round::calls(&[("file_read", &read_call(mine, ""))]));
    fake.queue(Round::calls(&[
        ("file_read", &read_call(theirs, "")),
        ("file_read", "{not json"),
        ("file_read", &read_call(mine, r#","offset":99999"#)),
    ]));
    fake.queue(Round::text(&["Done", "."]));
    let input = "Summarise my file";
    let turn = submit(&app, &token, &session, json!({ "input": input, "files": [mine] })).await;
    assert_eq!(turn["output"], "Done.");
    assert_eq!(turn["finish_reason"], "stop");
    let calls = turn["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 4, "{calls:?}");
    assert_eq!(calls[0]["file_id"], mine);
    assert_eq!(calls[0]["bytes"], 20);
    assert!(calls[0]["error"].is_null(), "{}", calls[0]);
    for refused in &calls[1..] {
        assert_eq!(refused["bytes"], 0, "{refused}");
        assert!(refused["error"].is_string(), "{refused}");
    }
    assert!(calls[1]["error"].as_str().unwrap().contains("no such file"), "{}", calls[1]);
    assert!(calls[1]["file_id"].is_null(), "another user's file is not named back");

    assert_eq!(fake.calls(), 3, "one request per round");
    let seen = fake.seen();
    assert_eq!(seen[0].tool_names(), ["file_read"]);
    assert!(seen[1].tool_results()[0].1.contains("my quarterly numbers"));
    assert_eq!(seen[2].tool_results().len(), 4, "every round goes back");
    for request in &seen {
        assert!(!request.body.to_string().contains("THEIR SECRET"), "no byte of another user's");
    }
    // Charged every round: three prompts, each at least the input's.
    let t = tokens();
    let first = (4 + t.count(SYSTEM) + 4 + t.count(input) + 3) as i64;
    assert!(turn["usage"]["input_tokens"].as_i64().unwrap() >= 3 * first, "{}", turn["usage"]);
    bucket_settles_at(&user, NOW, total(&turn)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_that_would_not_fit_the_reservation_ends_the_turn_unsent() {
    const BUDGET: u32 = 400;
    let clock = Arc::new(ManualClock::at(NOW));
    let fake = FakeOpenAi::rounds(Vec::new()).await;
    let app = app(&clock, |s| {
        s.rate_limit.tokens_per_minute = Some(BUDGET);
        upstream(s, &fake);
    })
    .await;
    let (user, token, session) = user_and_session(&app).await;
    // Its text alone is more tokens than the budget holds.
    let long: String = (0..1_500).map(|i| format!("w{i} ")).collect();
    let file = app.upload_ok(&token, "long.txt", long.as_bytes(), None).await;
    let file = file["id"].as_str().unwrap();
    fake.queue(Round::calls(&[("file_read", &read_call(file, ""))]));
    fake.queue(Round::text(&["never sent"]));
    let turn = submit(&app, &token, &session, json!({ "input": "Read it", "files": [file] })).await;
    assert_eq!(turn["status"], "completed");
    assert_eq!(turn["finish_reason"], "length");
    assert_eq!(fake.calls(), 1, "the second round was not sent");
    assert_eq!(turn["tool_calls"].as_array().unwrap().len(), 1);
    assert!(total(&turn) <= i64::from(BUDGET), "{}", turn["usage"]);
    bucket_settles_at(&user, NOW, total(&turn)).await;
}
