//! JSON turns: persisted in order, concurrent submissions, provider failure.

use std::collections::BTreeSet;

use pantheon_domain::TokenCounter;
use pantheon_infrastructure::provider::FAIL_MARKER;
use pantheon_infrastructure::settings::TokenizerKind;
use pantheon_infrastructure::tokenizer::Tiktoken;
use pantheon_tests::{Backend, expect_json, expect_problem, spawn_app, spawn_app_with};
use reqwest::Method;
use serde_json::json;

on_both_databases!(
    a_turn_is_persisted_completed_with_seq_one_and_listed_in_order,
    twenty_concurrent_turns_get_seqs_one_to_twenty,
    a_provider_failure_persists_the_turn_failed_and_answers_502,
);

async fn a_turn_is_persisted_completed_with_seq_one_and_listed_in_order(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, token) = app.new_user();
    let session = app.create_session(&token).await["id"].as_str().unwrap().to_owned();

    let response = app.submit_turn(&token, &session, "hello pantheon").await;
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let turn = expect_json(response, 201).await;
    assert_eq!(turn["seq"], 1);
    assert_eq!(turn["input"], "hello pantheon");
    assert_eq!(turn["output"], "You said: hello pantheon");
    assert_eq!(turn["status"], "completed");
    assert_eq!(turn["finish_reason"], "stop");
    // The builtin provider counts with the server's tokenizer.
    let tokens = Tiktoken::new(TokenizerKind::O200k);
    let (input, output) =
        (tokens.count("hello pantheon"), tokens.count("You said: hello pantheon"));
    assert_eq!(
        turn["usage"],
        json!({"input_tokens": input, "output_tokens": output, "total_tokens": input + output})
    );
    assert!(turn["error"].is_null() && turn["completed_at"].is_string());
    assert_eq!(
        location,
        format!("/api/v1/sessions/{session}/turns/{}", turn["id"].as_str().unwrap())
    );

    let read =
        expect_json(app.request(Method::GET, &location, &token).send().await.unwrap(), 200).await;
    assert_eq!(read, turn, "the persisted turn is the one answered");

    for input in ["second", "third"] {
        assert_eq!(app.submit_turn(&token, &session, input).await.status(), 201);
    }
    let path = format!("/api/v1/sessions/{session}/turns?limit=2");
    let first =
        expect_json(app.request(Method::GET, &path, &token).send().await.unwrap(), 200).await;
    let seqs: Vec<i64> =
        first["data"].as_array().unwrap().iter().map(|t| t["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, [1, 2]);
    assert_eq!(first["has_more"], true);
    let next = format!("{path}&after={}", first["next_cursor"].as_str().unwrap());
    let second =
        expect_json(app.request(Method::GET, &next, &token).send().await.unwrap(), 200).await;
    assert_eq!(second["data"][0]["seq"], 3);
    assert_eq!(second["data"][0]["input"], "third");
    assert_eq!(second["has_more"], false);

    let session_now = expect_json(
        app.request(Method::GET, &format!("/api/v1/sessions/{session}"), &token)
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(session_now["turn_count"], 3);
}

async fn twenty_concurrent_turns_get_seqs_one_to_twenty(backend: Backend) {
    // Twenty at once for one user: a cap on running turns below that would
    // refuse some (the cap has tests of its own, in `concurrency`).
    let app = spawn_app_with(backend, |s| s.rate_limit.max_concurrent_turns = 20).await;
    let (_, token) = app.new_user();
    let session = app.create_session(&token).await["id"].as_str().unwrap().to_owned();

    let submissions = (0..20).map(|i| {
        let (app, token, session) = (&app, &token, &session);
        async move { app.submit_turn(token, session, &format!("turn {i}")).await }
    });
    let responses = futures::future::join_all(submissions).await;
    let mut seqs = BTreeSet::new();
    let mut inputs = BTreeSet::new();
    for response in responses {
        let turn = expect_json(response, 201).await;
        assert!(seqs.insert(turn["seq"].as_i64().unwrap()), "duplicate seq");
        inputs.insert(turn["input"].as_str().unwrap().to_owned());
    }
    assert_eq!(seqs, (1..=20).collect::<BTreeSet<i64>>(), "seq 1..20, no gap");
    assert_eq!(inputs.len(), 20, "no turn dropped");
    assert_eq!(app.count("turns").await, 20);
}

async fn a_provider_failure_persists_the_turn_failed_and_answers_502(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, token) = app.new_user();
    let session = app.create_session(&token).await["id"].as_str().unwrap().to_owned();

    let input = format!("one two three four {FAIL_MARKER}");
    let problem =
        expect_problem(app.submit_turn(&token, &session, &input).await, 502, "upstream_error")
            .await;
    let turn = &problem["turn"];
    assert_eq!(turn["status"], "failed");
    assert_eq!(turn["finish_reason"], "error");
    assert_eq!(turn["output"], "You said: one two", "the partial output is kept");
    assert_eq!(turn["error"]["code"], "upstream_error");
    assert_eq!(turn["error"]["status"], 502);

    let path = format!("/api/v1/sessions/{session}/turns/{}", turn["id"].as_str().unwrap());
    let stored =
        expect_json(app.request(Method::GET, &path, &token).send().await.unwrap(), 200).await;
    assert_eq!(&stored, turn);
}
