//! The OpenAPI 3.1 document, generated from the code: each handler's
//! `#[utoipa::path]` (paths, parameters, bodies, responses, next to the
//! handler), the DTOs' derived schemas, and the router itself — the routes
//! are registered through `utoipa-axum`, so a route cannot exist without
//! its operation. [`document`] finishes it with what is common to every
//! operation (the bearer scheme, the headers); `GET /openapi.json` serves
//! it, and `docs/openapi.json` is a copy a test keeps equal.

pub mod problems;
pub mod schemas;

use std::sync::OnceLock;

use axum::body::Bytes;
use utoipa::OpenApi;
use utoipa::openapi::Required;
use utoipa::openapi::extensions::Extensions;
use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{HeaderBuilder, OpenApi as Document, Ref, RefOr};

use crate::routes::api_router;

/// The document's fixed parts; the operations come from the router.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "Pantheon",
        description = "Rate-limited chat turns: sessions, turns as JSON or streamed as \
                       Server-Sent Events, per-user limits shared through Redis. The contract in \
                       prose is docs/API.md in the repository.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    tags(
        (name = "sessions", description = "A user's chat sessions."),
        (name = "turns", description = "Submitting and reading turns; every submission is checked against the caller's limits first."),
        (name = "files", description = "Files a user uploads for turns to read through the `file_read` tool: typed from their bytes, within exact per-user quotas."),
        (name = "rate limiting", description = "The caller's usage."),
        (name = "probes", description = "Liveness and readiness, without authentication."),
        (name = "documentation", description = "This document and the playground page."),
    ),
    components(schemas(
        schemas::ProblemSchema,
        schemas::RateLimitedProblem,
        schemas::TokenBudgetProblem,
        schemas::FileProblem,
        schemas::TurnStreamEvent,
    )),
)]
pub struct ApiDoc;

/// The whole document.
pub fn document() -> Document {
    let (_, mut api) = api_router().split_for_parts();
    finish(&mut api);
    api
}

/// The document as served: pretty JSON with a final newline, built once.
pub fn json() -> Bytes {
    static JSON: OnceLock<Bytes> = OnceLock::new();
    JSON.get_or_init(|| Bytes::from(render(&document()))).clone()
}

/// The document's text. Keys are sorted (through `serde_json::Value`), so
/// the text is the same on every build and `docs/openapi.json` diffs well.
pub fn render(api: &Document) -> String {
    let value = serde_json::to_value(api).unwrap_or_default();
    let mut text = serde_json::to_string_pretty(&value).unwrap_or_default();
    text.push('\n');
    text
}

/// The header every response carries.
const REQUEST_ID: &str = "x-request-id";

/// Operations whose success responses carry the rate-limit headers.
const RATE_LIMITED: [&str; 3] = ["submit_turn", "stream_turn", "rate_limit_status"];
/// Operations whose `201` carries `Location`.
const CREATING: [&str; 2] = ["create_session", "submit_turn"];

fn finish(api: &mut Document) {
    let components = api.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("JWT")
                .description(Some(
                    "A JWT signed with `auth.jwt_secret` (HS256) or the key of \
                     `auth.jwt_public_key`; `sub` is the user id, `exp` required, `tier` \
                     optional; `iss`/`aud` required when configured.",
                ))
                .build(),
        ),
    );
    for (name, kind, description) in HEADERS {
        let schema = ObjectBuilder::new().schema_type(kind);
        let header = HeaderBuilder::new().schema(Some(schema)).description(Some(description));
        components.headers.insert(name.to_owned(), RefOr::T(header.build()));
    }
    for (status, code) in [(404, problems::route_not_found), (405, problems::method_not_allowed)] {
        let name = if status == 404 { "RouteNotFound" } else { "MethodNotAllowed" };
        components.responses.insert(name.into(), RefOr::T(problems::response(status, &[code])));
    }
    for item in api.paths.paths.values_mut() {
        let operations =
            [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch];
        for operation in operations.into_iter().flatten() {
            finish_operation(operation);
        }
    }
}

fn header_ref(name: &str) -> Ref {
    Ref::new(format!("#/components/headers/{name}"))
}

fn finish_operation(operation: &mut Operation) {
    let id = operation.operation_id.as_deref().unwrap_or_default();
    let (rate_limited, creating) = (RATE_LIMITED.contains(&id), CREATING.contains(&id));
    if id == "create_session"
        && let Some(RefOr::T(body)) = &mut operation.request_body
        && let Some(RefOr::T(content)) = body.content.get_mut("application/json")
    {
        // The body may be left out, but when sent it is an object: `null`
        // is refused like any other non-object (`Option` made it nullable).
        content.schema = Some(RefOr::Ref(Ref::from_schema_name("CreateSession")));
        body.required = Some(Required::False);
    }
    for (status, response) in &mut operation.responses.responses {
        let RefOr::T(response) = response else { continue };
        response.headers.insert(REQUEST_ID.into(), RefOr::Ref(header_ref(REQUEST_ID)));
        if creating && status == "201" {
            response.headers.insert("Location".into(), RefOr::Ref(header_ref("Location")));
        }
        if rate_limited && status.starts_with('2') {
            for name in ["RateLimit-Policy", "RateLimit"] {
                response.headers.insert(name.into(), RefOr::Ref(header_ref(name)));
            }
        }
        if let Some(RefOr::T(content)) = response.content.get_mut("text/event-stream") {
            // OpenAPI 3.2 names this `itemSchema`; 3.1 has no field for
            // the payload of each event, so it is an extension here.
            let item = serde_json::json!({ "$ref": "#/components/schemas/TurnStreamEvent" });
            content.extensions = Some(Extensions::from_iter([("x-itemSchema", item)]));
        }
    }
}

/// The reusable headers: name, type, meaning.
const HEADERS: [(&str, Type, &str); 6] = [
    (
        REQUEST_ID,
        Type::String,
        "The request's id: echoed from the request's own `x-request-id` when that is 1 to 128 \
         visible ASCII characters, else generated (a UUID). Also in every log line of the \
         request.",
    ),
    (
        "RateLimit-Policy",
        Type::String,
        "The caller's limits (draft-ietf-httpapi-ratelimit-headers-10), e.g. \
         `\"minute\";q=20;w=60, \"hour\";q=300;w=3600, \"concurrency\";q=4;qu=\"concurrency\"`; \
         under a token budget `\"tokens-minute\";q=<L>;w=60;qu=\"tokens\"` (and `tokens-hour`) \
         join them after the windows. Sent whenever limiting is on.",
    ),
    (
        "RateLimit",
        Type::String,
        "The caller's usage per policy: `r` remaining (turns, tokens after this turn's \
         reservation, or free slots), `t` seconds until more quota (windows only), e.g. \
         `\"minute\";r=19;t=0, \"hour\";r=299;t=0, \"concurrency\";r=3`. Absent when the check \
         was skipped (Redis trouble with `rate_limit.fallback = allow`).",
    ),
    (
        "Retry-After",
        Type::Integer,
        "Seconds to wait before retrying: exact for a `429` by a window, 1 for one by the \
         concurrency cap alone and for the temporary `503`s.",
    ),
    ("Location", Type::String, "The path of the resource created."),
    ("WWW-Authenticate", Type::String, "`Bearer`."),
];
