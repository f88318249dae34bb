//! Turn handlers: parse, call [`TurnService`](pantheon_domain::TurnService), map.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use pantheon_domain::{NewTurn, SessionId, TurnId};

use crate::dto::{ListBody, ListQuery, SubmitTurnRequest, TurnBody, turn_cursor};
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, ApiQuery, Authenticated};
use crate::openapi::problems::problems;
use crate::rate_limit;
use crate::state::AppState;

problems!(SubmitTurnProblems: malformed_json, bad_request, invalid_path, unauthenticated,
    session_not_found, request_timeout, payload_too_large, unsupported_media_type,
    validation_failed, input_exceeds_token_budget, rate_limited, internal_error, upstream_error,
    storage_unavailable, limiter_unavailable, upstream_unavailable, shutting_down,
    turn_interrupted, upstream_timeout);

/// `POST /api/v1/sessions/{session_id}/turns`
#[utoipa::path(
    post,
    path = "/api/v1/sessions/{session_id}/turns",
    tag = "turns",
    params(("session_id" = uuid::Uuid, Path, description = "The session's id.")),
    request_body(content = SubmitTurnRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "The completed turn, as persisted; `Location` is its path. \
            Checked against the caller's limits before anything else.", body = TurnBody),
        SubmitTurnProblems,
    ),
    security(("bearer" = [])),
)]
pub async fn submit_turn(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath(session_id): ApiPath<SessionId>,
    ApiJson(body): ApiJson<SubmitTurnRequest>,
) -> Result<Response, ApiError> {
    let new = NewTurn::parse(body.input, state.max_input_chars)?;
    let submitted = state.turns.submit(&caller, session_id, new).await?;
    let turn = submitted.turn;
    let location = format!("/api/v1/sessions/{}/turns/{}", turn.session_id, turn.id);
    let mut headers =
        rate_limit::admitted_headers(&state.turns, &caller, submitted.rate_limit.as_ref());
    if let Ok(location) = HeaderValue::from_str(&location) {
        headers.insert(header::LOCATION, location);
    }
    Ok((StatusCode::CREATED, headers, Json(TurnBody::from(turn))).into_response())
}

problems!(ListTurnsProblems: invalid_path, invalid_query, invalid_cursor, unauthenticated,
    session_not_found, internal_error, storage_unavailable);

/// `GET /api/v1/sessions/{session_id}/turns`
#[utoipa::path(
    get,
    path = "/api/v1/sessions/{session_id}/turns",
    tag = "turns",
    params(("session_id" = uuid::Uuid, Path, description = "The session's id."), ListQuery),
    responses(
        (status = 200, description = "The session's turns in `seq` order.", body = ListBody<TurnBody>),
        ListTurnsProblems,
    ),
    security(("bearer" = [])),
)]
pub async fn list_turns(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath(session_id): ApiPath<SessionId>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<ListBody<TurnBody>>, ApiError> {
    let page = state.turns.list(&caller, session_id, query.turns()?).await?;
    Ok(Json(ListBody::new(page, turn_cursor, TurnBody::from)))
}

problems!(GetTurnProblems: invalid_path, unauthenticated, turn_not_found, internal_error,
    storage_unavailable);

/// `GET /api/v1/sessions/{session_id}/turns/{turn_id}`
#[utoipa::path(
    get,
    path = "/api/v1/sessions/{session_id}/turns/{turn_id}",
    tag = "turns",
    params(
        ("session_id" = uuid::Uuid, Path, description = "The session's id."),
        ("turn_id" = uuid::Uuid, Path, description = "The turn's id."),
    ),
    responses(
        (status = 200, description = "The turn; while `in_progress`, with its output so far.", body = TurnBody),
        GetTurnProblems,
    ),
    security(("bearer" = [])),
)]
pub async fn get_turn(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath((session_id, turn_id)): ApiPath<(SessionId, TurnId)>,
) -> Result<Json<TurnBody>, ApiError> {
    Ok(Json(state.turns.get(&caller, session_id, turn_id).await?.into()))
}
