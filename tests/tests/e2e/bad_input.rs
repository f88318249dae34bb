//! Each bad input of SPEC §4 gets its status and a problem body, and writes
//! nothing.

use pantheon_tests::{Backend, expect_problem, spawn_app_with};
use reqwest::Method;

on_both_databases!(each_bad_turn_request_gets_its_status_and_writes_nothing);

async fn each_bad_turn_request_gets_its_status_and_writes_nothing(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.turns.max_input_chars = 100).await;
    let (_, token) = app.new_user();
    let session = app.create_session(&token).await["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/sessions/{session}/turns");
    let json = "application/json";
    let oversized = format!(r#"{{"input": "{}"}}"#, "a".repeat(100 * 6 + 5000));
    let cases: Vec<(&str, String, Option<&str>, String, u16, &str)> = vec![
        ("malformed JSON", path.clone(), Some(json), r#"{"input": "#.into(), 400, "malformed_json"),
        ("wrong content type", path.clone(), Some("text/plain"), r#"{"input": "hi"}"#.into(), 415, "unsupported_media_type"),
        ("no content type", path.clone(), None, r#"{"input": "hi"}"#.into(), 415, "unsupported_media_type"),
        ("missing input", path.clone(), Some(json), "{}".into(), 422, "validation_failed"),
        ("null input", path.clone(), Some(json), r#"{"input": null}"#.into(), 422, "validation_failed"),
        ("input not a string", path.clone(), Some(json), r#"{"input": 42}"#.into(), 422, "validation_failed"),
        ("blank input", path.clone(), Some(json), r#"{"input": " \n\t "}"#.into(), 422, "validation_failed"),
        ("input over the limit", path.clone(), Some(json), format!(r#"{{"input": "{}"}}"#, "é".repeat(101)), 422, "validation_failed"),
        ("unknown field", path.clone(), Some(json), r#"{"input": "hi", "model": "x"}"#.into(), 422, "validation_failed"),
        ("not an object", path.clone(), Some(json), r#"["hi"]"#.into(), 422, "validation_failed"),
        ("oversized body", path.clone(), Some(json), oversized, 413, "payload_too_large"),
        ("malformed session id", "/api/v1/sessions/not-a-uuid/turns".into(), Some(json), r#"{"input": "hi"}"#.into(), 400, "invalid_path"),
    ];
    for (name, path, content_type, body, status, code) in cases {
        let mut request = app.request(Method::POST, &path, &token).body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let problem = expect_problem(request.send().await.unwrap(), status, code).await;
        if status == 422 && name != "not an object" {
            assert!(problem["detail"].as_str().unwrap().contains("input") || problem["detail"].as_str().unwrap().contains("model"), "{name}: {problem}");
        }
    }
    let exactly_at_limit = app.submit_turn(&token, &session, &"é".repeat(100)).await;
    assert_eq!(exactly_at_limit.status(), 201, "the limit counts characters, not bytes");
    assert_eq!(app.count("turns").await, 1, "only the valid turn was written");

    let title = app
        .request(Method::POST, "/api/v1/sessions", &token)
        .json(&serde_json::json!({"title": "x".repeat(201)}))
        .send()
        .await
        .unwrap();
    expect_problem(title, 422, "validation_failed").await;
    assert_eq!(app.count("sessions").await, 1);
}
