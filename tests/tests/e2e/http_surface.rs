//! The parts of the contract every response shares: problem bodies for
//! routing errors, request ids, probes.

use pantheon_tests::{Backend, expect_json, expect_problem, spawn_app};
use reqwest::Method;

#[tokio::test]
async fn unknown_routes_and_wrong_methods_are_problems() {
    let app = spawn_app(Backend::Sqlite).await;
    let (_, token) = app.new_user();
    expect_problem(
        app.client.get(app.url("/nowhere")).send().await.unwrap(),
        404,
        "route_not_found",
    )
    .await;
    expect_problem(
        app.request(Method::GET, "/api/v1/nowhere", &token).send().await.unwrap(),
        404,
        "route_not_found",
    )
    .await;
    let wrong = app.request(Method::PUT, "/api/v1/sessions", &token).send().await.unwrap();
    let allow =
        wrong.headers().get("allow").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    assert!(allow.contains("GET") && allow.contains("POST"), "Allow: {allow}");
    expect_problem(wrong, 405, "method_not_allowed").await;
}

#[tokio::test]
async fn request_ids_are_echoed_or_generated() {
    let app = spawn_app(Backend::Sqlite).await;
    let echoed =
        app.client.get(app.url("/healthz")).header("x-request-id", "abc-123").send().await.unwrap();
    assert_eq!(echoed.headers()["x-request-id"], "abc-123");
    let generated = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(generated.headers()["x-request-id"].len(), 36);
    let problem = app
        .client
        .get(app.url("/api/v1/sessions"))
        .header("x-request-id", "req-9")
        .send()
        .await
        .unwrap();
    let body = expect_problem(problem, 401, "unauthenticated").await;
    assert_eq!(body["request_id"], "req-9");
}

#[tokio::test]
async fn probes_report_liveness_and_readiness() {
    let app = spawn_app(Backend::Postgres).await;
    let live = expect_json(app.client.get(app.url("/healthz")).send().await.unwrap(), 200).await;
    assert_eq!(live["status"], "ok");
    let ready = expect_json(app.client.get(app.url("/readyz")).send().await.unwrap(), 200).await;
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["database"], "ok");
}

#[tokio::test]
async fn a_session_can_be_created_without_a_body() {
    let app = spawn_app(Backend::Sqlite).await;
    let (_, token) = app.new_user();
    let response = app.request(Method::POST, "/api/v1/sessions", &token).send().await.unwrap();
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let session = expect_json(response, 201).await;
    assert!(session["title"].is_null());
    assert_eq!(location, format!("/api/v1/sessions/{}", session["id"].as_str().unwrap()));
}
