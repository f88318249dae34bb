//! Liveness and readiness probes (no prefix, no authentication).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;

use crate::dto::{HealthBody, ReadyBody};
use crate::error::ApiError;
use crate::openapi::problems::problems;
use crate::problem::Problem;
use crate::state::AppState;

/// `GET /healthz`: the process answers.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "probes",
    responses((status = 200, description = "The process answers.", body = HealthBody)),
)]
pub async fn healthz() -> Json<HealthBody> {
    Json(HealthBody { status: "ok" })
}

problems!(ReadyProblems: not_ready);

/// `GET /readyz`: the database answers. The limiter's state is reported but
/// never fails readiness: a degraded limiter still serves turns.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "probes",
    responses(
        (status = 200, description = "The database answers; the limiter's state is reported.", body = ReadyBody),
        ReadyProblems,
    ),
)]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<ReadyBody>, ApiError> {
    if state.database.is_reachable().await {
        let limiter = state.turns.limiter_state().into();
        Ok(Json(ReadyBody { status: "ready", database: "ok", limiter }))
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
