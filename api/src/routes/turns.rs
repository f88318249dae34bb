//! Turn handlers: parse, call [`TurnService`](pantheon_domain::TurnService), map.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use pantheon_domain::{SessionId, TurnId};

use crate::dto::{ListBody, ListQuery, SubmitTurnRequest, TurnBody, turn_cursor};
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, ApiQuery, Authenticated, IdempotencyHeader};
use crate::openapi::problems::problems;
use crate::rate_limit;
use crate::state::AppState;

problems!(SubmitTurnProblems: malformed_json, bad_request, invalid_path,
    invalid_idempotency_key, unauthenticated, session_not_found, idempotency_key_in_use,
    request_timeout, payload_too_large, unsupported_media_type, validation_failed,
    input_exceeds_token_budget, idempotency_key_reused, rate_limited, internal_error,
    upstream_error, storage_unavailable, limiter_unavailable, upstream_unavailable, upstream_saturated, shutting_down,
    turn_interrupted, upstream_timeout);

/// `Idempotent-Replayed: true`, on every answer to a retry.
pub const REPLAYED: &str = "idempotent-replayed";

/// `POST /api/v1/sessions/{session_id}/turns`
#[utoipa::path(
    post,
    path = "/api/v1/sessions/{session_id}/turns",
    tag = "turns",
    params(
        ("session_id" = uuid::Uuid, Path, description = "The session's id."),
        ("Idempotency-Key" = Option<String>, Header, description = "1–255 printable ASCII \
            characters, bare or as a Structured Fields string: a retry with the key gets the \
            first attempt's turn (waiting for its end) with `Idempotent-Replayed: true`, never \
            a second turn, and counts against no limit."),
    ),
    request_body(content = SubmitTurnRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "The completed turn, as persisted; `Location` is its path. \
            Checked against the caller's limits before anything else. A retry's answer \
            (`Idempotency-Key`) carries `Idempotent-Replayed: true`.", body = TurnBody,
            headers(("Idempotent-Replayed" = String, description = "`true` on the answer to a \
                retry: the first attempt's turn, as it ended."))),
        SubmitTurnProblems,
    ),
    security(("bearer" = [])),
)]
pub async fn submit_turn(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath(session_id): ApiPath<SessionId>,
    IdempotencyHeader(key): IdempotencyHeader,
    ApiJson(body): ApiJson<SubmitTurnRequest>,
) -> Result<Response, ApiError> {
    let new = body.into_turn(state.max_input_chars)?;
    let (submitted, replayed) = match key {
        None => (state.turns.submit(&caller, session_id, new).await?, false),
        Some(key) => {
            let answered = state.turns.submit_keyed(&caller, session_id, new, key).await?;
            let replayed = answered.replayed;
            let submitted = answered.outcome.map_err(|error| {
                let error = ApiError::from(error);
                if replayed {
                    error.with_header(REPLAYED, HeaderValue::from_static("true"))
                } else {
                    error
                }
            })?;
            (submitted, replayed)
        }
    };
    let turn = submitted.turn;
    let location = format!("/api/v1/sessions/{}/turns/{}", turn.session_id, turn.id);
    let mut headers =
        rate_limit::admitted_headers(&state.turns, &caller, submitted.rate_limit.as_ref());
    if let Ok(location) = HeaderValue::from_str(&location) {
        headers.insert(header::LOCATION, location);
    }
    if replayed {
        headers.insert(REPLAYED, HeaderValue::from_static("true"));
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
