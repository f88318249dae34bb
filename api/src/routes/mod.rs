//! The router: every route of SPEC §4, the fallback, and the layers every
//! response passes through (request id, tracing, problem bodies, body limit).

mod health;
mod rate_limit;
mod sessions;
mod stream;
mod turns;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::middleware;
use axum::routing::{get, post};
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};

use crate::problem::{Problem, render_problems};
use crate::state::AppState;
use crate::telemetry;

/// Room for the largest valid input even if every character arrives as a
/// six-byte `\uXXXX` escape, plus the JSON around it. Anything larger is a
/// `413` before it is parsed.
fn body_limit(max_input_chars: usize) -> usize {
    max_input_chars.saturating_mul(6).saturating_add(4096)
}

/// The whole HTTP surface.
pub fn router(state: AppState) -> Router {
    let limit = body_limit(state.max_input_chars);
    // Full paths, not `nest("/api/v1", …)`: a nested router strips the
    // prefix by rebuilding every request's URI and routes it a second time,
    // work that every turn (and every refusal) paid for nothing.
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/api/v1/sessions", post(sessions::create_session).get(sessions::list_sessions))
        .route(
            "/api/v1/sessions/{session_id}",
            get(sessions::get_session).delete(sessions::delete_session),
        )
        .route(
            "/api/v1/sessions/{session_id}/turns",
            post(turns::submit_turn).get(turns::list_turns),
        )
        .route("/api/v1/sessions/{session_id}/turns/stream", post(stream::stream_turn))
        .route("/api/v1/sessions/{session_id}/turns/{turn_id}", get(turns::get_turn))
        .route("/api/v1/rate-limit", get(rate_limit::rate_limit_status))
        .fallback(|| async { Problem::for_status(StatusCode::NOT_FOUND) })
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
                .layer(telemetry::http_trace_layer())
                .layer(PropagateRequestIdLayer::x_request_id())
                .layer(middleware::from_fn(render_problems))
                .layer(DefaultBodyLimit::max(limit)),
        )
        .with_state(state)
}
