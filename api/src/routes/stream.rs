//! `POST /api/v1/sessions/{session_id}/turns/stream`: the same path as the
//! JSON endpoint up to the commit — so every refusal (auth, validation,
//! limiter, session) is an ordinary problem response — then the reply as SSE.

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use pantheon_domain::{NewTurn, SessionId};
use pantheon_infrastructure::settings::OnDisconnect;

use crate::dto::SubmitTurnRequest;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, Authenticated};
use crate::routes::turns::rate_limit_headers;
use crate::sse::turn_events;
use crate::state::AppState;

/// `POST /api/v1/sessions/{session_id}/turns/stream`
pub async fn stream_turn(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath(session_id): ApiPath<SessionId>,
    ApiJson(body): ApiJson<SubmitTurnRequest>,
) -> Result<Response, ApiError> {
    let new = NewTurn::parse(body.input, state.max_input_chars)?;
    let run = state.turns.start(&caller, session_id, new).await?;
    let mut headers = rate_limit_headers(&state, &caller, run.rate_limit.as_ref());
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Proxies such as nginx buffer responses unless told not to.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    let events = turn_events(run, state.on_disconnect == OnDisconnect::Cancel);
    let sse = Sse::new(events).keep_alive(KeepAlive::new().interval(state.keep_alive));
    Ok((headers, sse).into_response())
}
