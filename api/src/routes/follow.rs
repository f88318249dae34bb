//! A running turn seen from any instance: its events resumed after a lost
//! connection (`GET …/events`), and its cancel (`POST …/cancel`).

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use pantheon_domain::{SessionId, TurnId};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::dto::TurnBody;
use crate::error::ApiError;
use crate::extract::{ApiPath, ApiQuery, Authenticated};
use crate::metrics::OpenStream;
use crate::openapi::problems::problems;
use crate::sse::{self, followed_events};
use crate::state::AppState;

/// Where a resumed stream starts.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Send the events after this `seq` (what `Last-Event-ID` says, for
    /// clients that cannot set it; the header wins when both are sent).
    after: Option<u64>,
}

/// The `seq` after which to resume: `Last-Event-ID: <turn_id>:<seq>` (of
/// this turn, nothing else), else `?after=`; `None`: from the start.
fn resume_after(
    headers: &HeaderMap,
    turn_id: TurnId,
    query: &EventsQuery,
) -> Result<Option<u64>, ApiError> {
    let Some(raw) = headers.get("last-event-id") else {
        return Ok(query.after);
    };
    let invalid = || {
        ApiError::bad_request(
            "invalid_last_event_id",
            "Last-Event-ID must be `<turn_id>:<seq>` of this turn.",
        )
    };
    let (turn, seq) = raw.to_str().map_err(|_| invalid())?.split_once(':').ok_or_else(invalid)?;
    let turn: uuid::Uuid = turn.parse().map_err(|_| invalid())?;
    if TurnId::from(turn) != turn_id {
        return Err(invalid());
    }
    seq.parse().map(Some).map_err(|_| invalid())
}

problems!(TurnEventsProblems: invalid_path, invalid_query, invalid_last_event_id,
    unauthenticated, turn_not_found, internal_error, storage_unavailable);

/// `GET /api/v1/sessions/{session_id}/turns/{turn_id}/events`
#[utoipa::path(
    get,
    path = "/api/v1/sessions/{session_id}/turns/{turn_id}/events",
    tag = "turns",
    params(
        ("session_id" = uuid::Uuid, Path, description = "The session's id."),
        ("turn_id" = uuid::Uuid, Path, description = "The turn's id."),
        ("Last-Event-ID" = Option<String>, Header, description = "`<turn_id>:<seq>`, the id of \
            the last event received: the stream starts after it."),
        EventsQuery,
    ),
    responses(
        (
            status = 200,
            description = "The turn's events as Server-Sent Events, on any instance: those after \
                `Last-Event-ID` (or `after`; all, from `turn.created`, without either), then the \
                live ones, then the terminal event. The ids and deltas are the ones the original \
                stream sent. Once the events expired (`turns.resume_ttl_secs` after the end), \
                the terminal event alone, with the whole output.",
            content_type = "text/event-stream",
            body = String,
        ),
        TurnEventsProblems,
    ),
    security(("bearer" = [])),
)]
pub async fn turn_events(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath((session_id, turn_id)): ApiPath<(SessionId, TurnId)>,
    ApiQuery(query): ApiQuery<EventsQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let after = resume_after(&headers, turn_id, &query)?;
    let (started, followed) = state.turns.follow(&caller, session_id, turn_id, after).await?;
    let open = state.metrics.as_ref().map(|m| OpenStream::new(&m.sse_streams));
    let events = followed_events(started, followed, open);
    Ok(sse::response(HeaderMap::new(), events, state.keep_alive))
}

problems!(CancelTurnProblems: invalid_path, unauthenticated, turn_not_found,
    turn_not_in_progress, internal_error, storage_unavailable, cancel_unconfirmed);

/// `POST /api/v1/sessions/{session_id}/turns/{turn_id}/cancel`
#[utoipa::path(
    post,
    path = "/api/v1/sessions/{session_id}/turns/{turn_id}/cancel",
    tag = "turns",
    params(
        ("session_id" = uuid::Uuid, Path, description = "The session's id."),
        ("turn_id" = uuid::Uuid, Path, description = "The turn's id."),
    ),
    responses(
        (status = 200, description = "The turn was stopped wherever it ran and is persisted \
            `cancelled` with its partial output; its slot is free and its tokens settled. Not \
            counted by the turn windows.", body = TurnBody),
        CancelTurnProblems,
    ),
    security(("bearer" = [])),
)]
pub async fn cancel_turn(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath((session_id, turn_id)): ApiPath<(SessionId, TurnId)>,
) -> Result<Json<TurnBody>, ApiError> {
    Ok(Json(state.turns.cancel(&caller, session_id, turn_id).await?.into()))
}
