//! Session handlers: parse, call [`SessionService`](pantheon_domain::SessionService), map.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use pantheon_domain::{NewSession, SessionId};

use crate::dto::{CreateSessionRequest, ListBody, ListQuery, SessionBody, session_cursor};
use crate::error::ApiError;
use crate::extract::{ApiPath, ApiQuery, Authenticated, JsonOrEmpty};
use crate::openapi::problems::problems;
use crate::state::AppState;

problems!(CreateSessionProblems: malformed_json, bad_request, unauthenticated, request_timeout,
    payload_too_large, unsupported_media_type, validation_failed, internal_error, storage_unavailable);

/// `POST /api/v1/sessions`
#[utoipa::path(
    post,
    path = "/api/v1/sessions",
    tag = "sessions",
    request_body(
        content = Option<CreateSessionRequest>,
        description = "May be left out entirely (no body, no `Content-Type`).",
        content_type = "application/json",
    ),
    responses(
        (status = 201, description = "Created; `Location` is its path.", body = SessionBody),
        CreateSessionProblems,
    ),
    security(("bearer" = [])),
)]
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

problems!(ListSessionsProblems: invalid_query, invalid_cursor, unauthenticated, internal_error,
    storage_unavailable);

/// `GET /api/v1/sessions`
#[utoipa::path(
    get,
    path = "/api/v1/sessions",
    tag = "sessions",
    params(ListQuery),
    responses(
        (status = 200, description = "The caller's sessions, newest first.", body = ListBody<SessionBody>),
        ListSessionsProblems,
    ),
    security(("bearer" = [])),
)]
pub async fn list_sessions(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<ListBody<SessionBody>>, ApiError> {
    let page = state.sessions.list(&caller, query.sessions()?).await?;
    Ok(Json(ListBody::new(page, session_cursor, SessionBody::from)))
}

problems!(SessionProblems: invalid_path, unauthenticated, session_not_found, internal_error,
    storage_unavailable);

/// `GET /api/v1/sessions/{session_id}`
#[utoipa::path(
    get,
    path = "/api/v1/sessions/{session_id}",
    tag = "sessions",
    params(("session_id" = uuid::Uuid, Path, description = "The session's id.")),
    responses(
        (status = 200, description = "The session.", body = SessionBody),
        SessionProblems,
    ),
    security(("bearer" = [])),
)]
pub async fn get_session(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath(session_id): ApiPath<SessionId>,
) -> Result<Json<SessionBody>, ApiError> {
    Ok(Json(state.sessions.get(&caller, session_id).await?.into()))
}

/// `DELETE /api/v1/sessions/{session_id}`
#[utoipa::path(
    delete,
    path = "/api/v1/sessions/{session_id}",
    tag = "sessions",
    params(("session_id" = uuid::Uuid, Path, description = "The session's id.")),
    responses(
        (status = 204, description = "Deleted, with all its turns."),
        SessionProblems,
    ),
    security(("bearer" = [])),
)]
pub async fn delete_session(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath(session_id): ApiPath<SessionId>,
) -> Result<StatusCode, ApiError> {
    state.sessions.delete(&caller, session_id).await?;
    Ok(StatusCode::NO_CONTENT)
}
