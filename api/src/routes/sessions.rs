//! Session handlers: parse, call [`SessionService`](pantheon_domain::SessionService), map.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use pantheon_domain::{NewSession, SessionId};

use crate::dto::{CreateSessionRequest, ListBody, ListQuery, SessionBody, session_cursor};
use crate::error::ApiError;
use crate::extract::{ApiPath, ApiQuery, Authenticated, JsonOrEmpty};
use crate::state::AppState;

/// `POST /api/v1/sessions`
pub async fn create_session(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    JsonOrEmpty(body): JsonOrEmpty<CreateSessionRequest>,
) -> Result<Response, ApiError> {
    let new = NewSession::parse(body.title)?;
    let session = state.sessions.create(&caller, new).await?;
    let location = format!("/api/v1/sessions/{}", session.id);
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(SessionBody::from(session)))
        .into_response())
}

/// `GET /api/v1/sessions`
pub async fn list_sessions(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<ListBody<SessionBody>>, ApiError> {
    let page = state.sessions.list(&caller, query.sessions()?).await?;
    Ok(Json(ListBody::new(page, session_cursor, SessionBody::from)))
}

/// `GET /api/v1/sessions/{session_id}`
pub async fn get_session(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath(session_id): ApiPath<SessionId>,
) -> Result<Json<SessionBody>, ApiError> {
    Ok(Json(state.sessions.get(&caller, session_id).await?.into()))
}

/// `DELETE /api/v1/sessions/{session_id}`
pub async fn delete_session(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath(session_id): ApiPath<SessionId>,
) -> Result<StatusCode, ApiError> {
    state.sessions.delete(&caller, session_id).await?;
    Ok(StatusCode::NO_CONTENT)
}
