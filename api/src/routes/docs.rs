//! The API describing itself: the OpenAPI document and the playground page,
//! both built into the binary.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use crate::openapi;

/// `GET /openapi.json`
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "documentation",
    responses((
        status = 200,
        description = "This document (OpenAPI 3.1); `docs/openapi.json` in the repository is the same.",
        content_type = "application/json",
        body = Object,
    )),
)]
pub async fn openapi_json() -> Response {
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], openapi::json())
        .into_response()
}

/// The playground: one static page, no external resources.
const PLAYGROUND: &str = include_str!("../../playground/index.html");

/// What the page may do: run its own inline script and style, call this
/// origin, and nothing else.
const PLAYGROUND_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; \
    style-src 'unsafe-inline'; connect-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// `GET /playground`
#[utoipa::path(
    get,
    path = "/playground",
    tag = "documentation",
    responses((
        status = 200,
        description = "A page to try the API from a browser: paste a token, create or pick a \
                       session, upload files and attach them, send turns as JSON or as a \
                       stream (with their tool calls), see the rate-limit headers and any \
                       problem. It calls the API like any client and holds no secret.",
        content_type = "text/html",
        body = String,
    )),
)]
pub async fn playground() -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8")),
            (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(PLAYGROUND_CSP)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        PLAYGROUND,
    )
        .into_response()
}
