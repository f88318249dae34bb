//! The router: every route of the API (`docs/API.md`), the fallback, and
//! the layers every response passes through (request id, tracing, metrics,
//! problem bodies, body limit).
//!
//! Routes are registered through `utoipa-axum`'s `routes!`, which adds each
//! handler's `#[utoipa::path]` operation to the OpenAPI document as it adds
//! the route: the document cannot miss a route.

mod docs;
mod files;
mod follow;
mod health;
mod rate_limit;
mod sessions;
mod stream;
mod turns;
mod upload;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::middleware;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::metrics::HttpMetricsLayer;
use crate::openapi::ApiDoc;
use crate::problem::{Problem, render_problems};
use crate::request_id;
use crate::state::AppState;
use crate::telemetry;

/// Room for the largest valid input even if every character arrives in its
/// longest JSON form: a character beyond the Basic Multilingual Plane (an
/// emoji) escaped as a surrogate pair, `\ud83d\ude42`, is twelve bytes —
/// Python's `json.dumps` and many clients escape so by default. Plus the
/// JSON around it. Anything larger is a `413` before it is parsed.
fn body_limit(max_input_chars: usize) -> usize {
    max_input_chars.saturating_mul(MAX_ESCAPED_CHAR_BYTES).saturating_add(4096)
}

/// The bytes of one character as a surrogate pair's two `\uXXXX` escapes.
const MAX_ESCAPED_CHAR_BYTES: usize = 12;

/// Every route with its operation, before state and layers.
///
/// Full paths, not `nest("/api/v1", …)`: a nested router strips the prefix
/// by rebuilding every request's URI and routes it a second time, work that
/// every turn (and every refusal) paid for nothing.
pub fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(sessions::create_session, sessions::list_sessions))
        .routes(routes!(sessions::get_session, sessions::delete_session))
        .routes(routes!(turns::submit_turn, turns::list_turns))
        .routes(routes!(stream::stream_turn))
        .routes(routes!(turns::get_turn))
        .routes(routes!(follow::turn_events))
        .routes(routes!(follow::cancel_turn))
        .routes(routes!(rate_limit::rate_limit_status))
        .routes(routes!(files::upload_file, files::list_files))
        .routes(routes!(files::get_file, files::delete_file))
        .routes(routes!(files::file_content))
        .routes(routes!(docs::openapi_json))
        .routes(routes!(docs::playground))
}

/// The whole HTTP surface.
pub fn router(state: AppState) -> Router {
    let limit = body_limit(state.max_input_chars);
    let metrics = state.metrics.as_ref().map(|m| HttpMetricsLayer::new(m.http.clone()));
    let (routes, _) = api_router().split_for_parts();
    routes
        .fallback(|| async { Problem::for_status(StatusCode::NOT_FOUND) })
        .layer(
            ServiceBuilder::new()
                // Before the id is set, so an unusable one is replaced.
                .map_request(request_id::drop_unusable)
                .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
                .layer(telemetry::http_trace_layer())
                .layer(PropagateRequestIdLayer::x_request_id())
                // Outside the problem renderer, which may set the final status.
                .option_layer(metrics)
                .layer(middleware::from_fn(render_problems))
                .layer(DefaultBodyLimit::max(limit)),
        )
        .with_state(state)
}
