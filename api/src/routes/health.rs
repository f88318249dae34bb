//! Liveness and readiness probes (no prefix, no authentication).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::problem::Problem;
use crate::state::AppState;

/// `GET /healthz`: the process answers.
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: the database answers. The limiter's state is reported but
/// never fails readiness: a degraded limiter still serves turns.
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    if state.database.is_reachable().await {
        let limiter = state.turns.limiter_state().map_or("disabled", |s| s.as_str());
        Ok(Json(json!({ "status": "ready", "database": "ok", "limiter": limiter })))
    } else {
        tracing::warn!("readiness: database unreachable");
        Err(ApiError::new(
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                "The database is unreachable.",
            )
            .with("database", "unreachable".into()),
        ))
    }
}
