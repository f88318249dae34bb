//! Turn handlers: parse, call [`TurnService`](pantheon_domain::TurnService), map.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use pantheon_domain::{NewTurn, SessionId, TurnId};

use crate::dto::{ListBody, ListQuery, SubmitTurnRequest, TurnBody, turn_cursor};
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, ApiQuery, Authenticated};
use crate::state::AppState;

/// `POST /api/v1/sessions/{session_id}/turns`
pub async fn submit_turn(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath(session_id): ApiPath<SessionId>,
    ApiJson(body): ApiJson<SubmitTurnRequest>,
) -> Result<Response, ApiError> {
    let new = NewTurn::parse(body.input, state.max_input_chars)?;
    let turn = state.turns.submit(&caller, session_id, new).await?;
    let location = format!("/api/v1/sessions/{}/turns/{}", turn.session_id, turn.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(TurnBody::from(turn)),
    )
        .into_response())
}

/// `GET /api/v1/sessions/{session_id}/turns`
pub async fn list_turns(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath(session_id): ApiPath<SessionId>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<ListBody<TurnBody>>, ApiError> {
    let page = state
        .turns
        .list(&caller, session_id, query.turns()?)
        .await?;
    Ok(Json(ListBody::new(page, turn_cursor, TurnBody::from)))
}

/// `GET /api/v1/sessions/{session_id}/turns/{turn_id}`
pub async fn get_turn(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath((session_id, turn_id)): ApiPath<(SessionId, TurnId)>,
) -> Result<Json<TurnBody>, ApiError> {
    Ok(Json(
        state.turns.get(&caller, session_id, turn_id).await?.into(),
    ))
}
