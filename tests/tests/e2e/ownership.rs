//! Another user's session is indistinguishable from a missing one.

use pantheon_tests::{Backend, expect_problem, spawn_app};
use reqwest::Method;
use serde_json::json;

on_both_databases!(another_users_session_is_404_everywhere_and_unchanged);

async fn another_users_session_is_404_everywhere_and_unchanged(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, owner) = app.new_user();
    let (_, intruder) = app.new_user();
    let session = app.create_session(&owner).await["id"].as_str().unwrap().to_owned();
    let turn =
        pantheon_tests::expect_json(app.submit_turn(&owner, &session, "mine").await, 201).await;
    let turn_id = turn["id"].as_str().unwrap();
    let (sessions, turns) = (app.count("sessions").await, app.count("turns").await);

    let base = format!("/api/v1/sessions/{session}");
    let attempts = [
        (Method::GET, base.clone(), None, "session_not_found"),
        (Method::DELETE, base.clone(), None, "session_not_found"),
        (Method::GET, format!("{base}/turns"), None, "session_not_found"),
        (
            Method::POST,
            format!("{base}/turns"),
            Some(json!({"input": "theirs"})),
            "session_not_found",
        ),
        (Method::GET, format!("{base}/turns/{turn_id}"), None, "turn_not_found"),
    ];
    for (method, path, body, code) in attempts {
        let mut request = app.request(method.clone(), &path, &intruder);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let problem = expect_problem(response, 404, code).await;
        assert!(!problem.to_string().contains(&session), "{method} {path}: no hint of the session");
    }
    assert_eq!(app.count("sessions").await, sessions);
    assert_eq!(app.count("turns").await, turns);
    let still = pantheon_tests::expect_json(
        app.request(Method::GET, &base, &owner).send().await.unwrap(),
        200,
    )
    .await;
    assert_eq!(still["turn_count"], 1);
}
