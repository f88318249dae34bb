//! Each bad input of `docs/API.md` ("Errors") gets its status and a problem body, and writes
//! nothing.

use pantheon_tests::{Backend, expect_problem, spawn_app_with};
use reqwest::Method;

on_both_databases!(each_bad_turn_request_gets_its_status_and_writes_nothing);

/// One bad request and what it must get.
struct Case {
    name: &'static str,
    path: String,
    content_type: Option<&'static str>,
    body: String,
    status: u16,
    code: &'static str,
}

fn case(
    name: &'static str,
    path: &str,
    content_type: Option<&'static str>,
    body: impl Into<String>,
    status: u16,
    code: &'static str,
) -> Case {
    Case { name, path: path.to_owned(), content_type, body: body.into(), status, code }
}

async fn each_bad_turn_request_gets_its_status_and_writes_nothing(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.turns.max_input_chars = 100).await;
    let (_, token) = app.new_user();
    let session = app.create_session(&token).await["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/sessions/{session}/turns");
    let json = "application/json";
    let oversized = format!(r#"{{"input": "{}"}}"#, "a".repeat(100 * 12 + 5000));
    let bad_id = "/api/v1/sessions/not-a-uuid/turns";
    let cases = [
        case("malformed JSON", &path, Some(json), r#"{"input": "#, 400, "malformed_json"),
        case(
            "wrong content type",
            &path,
            Some("text/plain"),
            r#"{"input": "hi"}"#,
            415,
            "unsupported_media_type",
        ),
        case("no content type", &path, None, r#"{"input": "hi"}"#, 415, "unsupported_media_type"),
        case("missing input", &path, Some(json), "{}", 422, "validation_failed"),
        case("null input", &path, Some(json), r#"{"input": null}"#, 422, "validation_failed"),
        case("input not a string", &path, Some(json), r#"{"input": 42}"#, 422, "validation_failed"),
        case("blank input", &path, Some(json), r#"{"input": " \n\t "}"#, 422, "validation_failed"),
        case(
            "NUL in input",
            &path,
            Some(json),
            r#"{"input": "a\u0000b"}"#,
            422,
            "validation_failed",
        ),
        case(
            "input over the limit",
            &path,
            Some(json),
            format!(r#"{{"input": "{}"}}"#, "é".repeat(101)),
            422,
            "validation_failed",
        ),
        case(
            "unknown field",
            &path,
            Some(json),
            r#"{"input": "hi", "model": "x"}"#,
            422,
            "validation_failed",
        ),
        case("not an object", &path, Some(json), r#"["hi"]"#, 422, "validation_failed"),
        case("oversized body", &path, Some(json), oversized, 413, "payload_too_large"),
        case("malformed session id", bad_id, Some(json), r#"{"input": "hi"}"#, 400, "invalid_path"),
    ];
    for Case { name, path, content_type, body, status, code } in cases {
        let mut request = app.request(Method::POST, &path, &token).body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let problem = expect_problem(request.send().await.unwrap(), status, code).await;
        if status == 422 && name != "not an object" {
            assert!(
                problem["detail"].as_str().unwrap().contains("input")
                    || problem["detail"].as_str().unwrap().contains("model"),
                "{name}: {problem}"
            );
        }
    }
    let exactly_at_limit = app.submit_turn(&token, &session, &"é".repeat(100)).await;
    assert_eq!(exactly_at_limit.status(), 201, "the limit counts characters, not bytes");
    assert_eq!(app.count("turns").await, 1, "only the valid turn was written");

    for bad_title in ["x".repeat(201), "a\u{0}b".to_owned()] {
        let title = app
            .request(Method::POST, "/api/v1/sessions", &token)
            .json(&serde_json::json!({ "title": bad_title }))
            .send()
            .await
            .unwrap();
        expect_problem(title, 422, "validation_failed").await;
    }
    assert_eq!(app.count("sessions").await, 1);
}
