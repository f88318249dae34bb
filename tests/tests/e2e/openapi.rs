//! The OpenAPI document: served as committed, complete against the router,
//! valid OpenAPI 3.1 for a parser, and strict enough to refuse what it does
//! not declare (the referee of every other test's responses).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use pantheon_domain::SystemClock;
use pantheon_infrastructure::Settings;
use pantheon_tests::contract::{check_event, check_response};
use pantheon_tests::{Backend, TestDatabase, header, spawn_app};
use serde_json::{Value, json};

/// `docs/openapi.json`, as committed.
fn committed() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json");
    std::fs::read_to_string(path).expect("docs/openapi.json exists")
}

#[tokio::test]
async fn the_served_document_is_the_committed_one() {
    let app = spawn_app(Backend::Sqlite).await;
    let response = app.client.get(app.url("/openapi.json")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "content-type"), "application/json");
    let served = response.text().await.unwrap();
    assert!(
        served == committed(),
        "docs/openapi.json differs from GET /openapi.json; regenerate it with \
         `cargo run -q -p pantheon-api -- openapi > docs/openapi.json`"
    );
    let doc: Value = serde_json::from_str(&served).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
}

/// axum's own catch-all for the fallback, which it registers with `/`.
const FALLBACK: &str = "/{*__private__axum_fallback}";

/// The path templates in an axum router's `Debug` output (its route
/// table: `RouteId(n): "/path"`), the only place a router lists them,
/// without the pair `fallback` adds.
fn routed_paths(debug: &str) -> BTreeSet<String> {
    let mut paths = BTreeSet::new();
    let mut rest = debug;
    while let Some(at) = rest.find("RouteId(") {
        rest = &rest[at + "RouteId(".len()..];
        let Some(close) = rest.find("): \"") else { continue };
        let after = &rest[close + 4..];
        if let Some(end) = after.find('"') {
            paths.insert(after[..end].to_owned());
        }
    }
    if paths.remove(FALLBACK) {
        paths.remove("/");
    }
    paths
}

/// Fills a template's parameters with fresh ids.
fn concrete(template: &str) -> String {
    template
        .split('/')
        .map(
            |part| {
                if part.starts_with('{') { uuid::Uuid::new_v4().to_string() } else { part.into() }
            },
        )
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_of_the_router_is_in_the_document_with_its_methods() {
    let doc = pantheon_api::openapi::document();
    let documented: BTreeMap<String, BTreeSet<&str>> = doc
        .paths
        .paths
        .iter()
        .map(|(path, item)| {
            let methods = [
                ("GET", item.get.is_some()),
                ("POST", item.post.is_some()),
                ("PUT", item.put.is_some()),
                ("PATCH", item.patch.is_some()),
                ("DELETE", item.delete.is_some()),
            ];
            (path.clone(), methods.into_iter().filter(|(_, on)| *on).map(|(m, _)| m).collect())
        })
        .collect();

    // The router the server serves, built as production builds it.
    let database = TestDatabase::create(Backend::Sqlite).await;
    let mut settings = Settings::default();
    settings.database.url = database.url.clone();
    settings.server.metrics_addr = None;
    let built = pantheon_api::build(&settings, Arc::new(SystemClock)).await.unwrap();
    let routed = routed_paths(&format!("{:?}", pantheon_api::router(built.state.clone())));
    built.stop().await;
    assert!(routed.contains("/api/v1/sessions/{session_id}/turns"), "parsed: {routed:?}");
    let documented_paths: BTreeSet<String> = documented.keys().cloned().collect();
    assert_eq!(routed, documented_paths, "routes of the router vs paths of the document");

    // Each path answers 405 to exactly the methods the document leaves out.
    let app = spawn_app(Backend::Sqlite).await;
    for (path, methods) in &documented {
        for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
            let url = app.url(&concrete(path));
            let request = app.client.request(method.parse().unwrap(), url);
            let status = request.send().await.unwrap().status().as_u16();
            assert_eq!(
                status != 405,
                methods.contains(method),
                "{method} {path} answered {status}; documented: {methods:?}"
            );
        }
    }
}

#[test]
fn the_document_is_valid_openapi_3_1_and_every_reference_resolves() {
    let text = committed();
    let spec = oas3::from_json(&text).expect("an OpenAPI 3.1 parser reads the document");
    assert_eq!(spec.openapi, "3.1.0");
    let raw: Value = serde_json::from_str(&text).unwrap();
    let mut operations = 0;
    for (path, method, operation) in spec.operations() {
        operations += 1;
        let declared = raw["paths"][&path][method.as_str().to_lowercase()]["responses"]
            .as_object()
            .map_or(0, serde_json::Map::len);
        let responses = operation.responses(&spec);
        assert_eq!(responses.len(), declared, "{method} {path}: every response resolves");
        assert!(operation.parameters(&spec).is_ok(), "{method} {path}: parameters resolve");
        assert!(operation.request_body(&spec).is_ok(), "{method} {path}: the body resolves");
        for (status, response) in responses {
            for (media, content) in &response.content {
                assert!(content.schema(&spec).is_ok(), "{method} {path} {status} {media}");
            }
        }
    }
    assert_eq!(operations, 20, "every operation is read");
    let schemes = spec.components.as_ref().map(|c| c.security_schemes.len());
    assert_eq!(schemes, Some(1), "the bearer scheme");
}

/// A panic message, when `f` panics.
fn refusal(f: impl FnOnce() + std::panic::UnwindSafe) -> Option<String> {
    std::panic::catch_unwind(f)
        .err()
        .map(|e| e.downcast_ref::<String>().cloned().unwrap_or_else(|| "(no message)".into()))
}

#[test]
fn the_contract_refuses_what_the_document_does_not_declare() {
    let session = json!({
        "id": "01a2379d-8216-7634-a6a8-b9fa87c2adfe",
        "title": null,
        "turn_count": 0,
        "created_at": "2026-12-02T16:36:39.062404Z",
        "updated_at": "2026-12-02T16:36:39.062404Z",
    });
    let path = "/api/v1/sessions/01a2379d-8216-7634-a6a8-b9fa87c2adfe";
    check_response(path, 200, "application/json", &session);

    let mut extra = session.clone();
    extra["owner"] = json!("alice");
    let refused = refusal(|| check_response(path, 200, "application/json", &extra));
    assert!(refused.is_some_and(|m| m.contains("owner")), "an undeclared member");
    let mut missing = session.clone();
    missing.as_object_mut().unwrap().remove("turn_count");
    let refused = refusal(|| check_response(path, 200, "application/json", &missing));
    assert!(refused.is_some_and(|m| m.contains("turn_count")), "a missing member");
    let mut bad_time = session.clone();
    bad_time["created_at"] = json!("yesterday");
    let refused = refusal(|| check_response(path, 200, "application/json", &bad_time));
    assert!(refused.is_some_and(|m| m.contains("date-time")), "a malformed timestamp");

    let problem = |code: &str, status: u16| {
        json!({
            "type": format!("urn:pantheon:problem:{code}"), "title": "x", "status": status,
            "detail": "x", "code": code, "request_id": "r",
        })
    };
    check_response(path, 404, "application/problem+json", &problem("session_not_found", 404));
    let undeclared_code = problem("turn_not_found", 404);
    let refused =
        refusal(|| check_response(path, 404, "application/problem+json", &undeclared_code));
    assert!(
        refused.is_some_and(|m| m.contains("turn_not_found")),
        "a code the operation never answers"
    );
    let undeclared_status = problem("rate_limited", 429);
    let refused =
        refusal(|| check_response(path, 429, "application/problem+json", &undeclared_status));
    assert!(
        refused.is_some_and(|m| m.contains("declares no 429")),
        "a status the operation never answers"
    );

    // A 429 of each binding policy is declared, and its members are closed.
    let turns = format!("{path}/turns");
    let refusal_of = |window: &str| {
        let mut body = problem("rate_limited", 429);
        let members = json!({
            "type": "https://iana.org/assignments/http-problem-types#quota-exceeded",
            "violated-policies": [window], "limit": 4, "window": window, "remaining": 0,
            "retry_after_seconds": 1, "retry_at": "2026-12-02T16:36:40.062Z",
        });
        body.as_object_mut().unwrap().extend(members.as_object().unwrap().clone());
        body
    };
    let mut concurrency = refusal_of("concurrency");
    concurrency["active"] = json!(4);
    check_response(&turns, 429, "application/problem+json", &concurrency);
    let mut tokens = refusal_of("tokens-minute");
    tokens["window_seconds"] = json!(60);
    tokens["requested"] = json!(96);
    check_response(&turns, 429, "application/problem+json", &tokens);
    let mut bogus = concurrency.clone();
    bogus["slots"] = json!(0);
    let refused = refusal(|| check_response(&turns, 429, "application/problem+json", &bogus));
    assert!(refused.is_some_and(|m| m.contains("slots")), "an undeclared 429 member");
    let unknown_policy = refusal_of("day");
    let refused =
        refusal(|| check_response(&turns, 429, "application/problem+json", &unknown_policy));
    assert!(refused.is_some_and(|m| m.contains("day")), "a policy that does not exist");

    let delta = json!({
        "type": "turn.delta", "seq": 1,
        "turn_id": "01a2379d-8216-7634-a6a8-b9fa87c2adfe", "delta": "You said:",
    });
    check_event("turn.delta", &delta);
    let mut unknown = delta.clone();
    unknown["extra"] = json!(1);
    let refused = refusal(|| check_event("turn.delta", &unknown));
    assert!(refused.is_some_and(|m| m.contains("extra")), "an undeclared event member");
    let refused = refusal(|| check_event("turn.created", &delta));
    assert!(refused.is_some_and(|m| m.contains("repeats the type")), "event name and type differ");
}

/// Every `code` enum value of the document's problem responses.
fn declared_codes(node: &Value, codes: &mut BTreeSet<String>) {
    match node {
        Value::Object(map) => {
            if let Some(Value::Array(values)) = map.get("code").and_then(|c| c.get("enum")) {
                codes.extend(values.iter().filter_map(Value::as_str).map(str::to_owned));
            }
            map.values().for_each(|v| declared_codes(v, codes));
        }
        Value::Array(items) => items.iter().for_each(|v| declared_codes(v, codes)),
        _ => {}
    }
}

#[test]
fn docs_api_md_lists_every_problem_code_the_document_declares() {
    let doc: Value = serde_json::from_str(&committed()).unwrap();
    let mut codes = BTreeSet::new();
    declared_codes(&doc, &mut codes);
    assert!(codes.len() >= 20, "{codes:?}");
    let api = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/API.md"))
        .expect("docs/API.md exists");
    let missing: Vec<&String> =
        codes.iter().filter(|c| !api.contains(&format!("| `{c}` |"))).collect();
    assert!(missing.is_empty(), "docs/API.md's code table lacks {missing:?}");
}
