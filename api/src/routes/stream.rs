//! `POST /api/v1/sessions/{session_id}/turns/stream`: the same path as the
//! JSON endpoint up to the commit — so every refusal (auth, validation,
//! limiter, session) is an ordinary problem response — then the reply as SSE.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::Response;
use pantheon_domain::SessionId;
use pantheon_domain::turn_service::Started;

use crate::dto::SubmitTurnRequest;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, Authenticated, IdempotencyHeader};
use crate::metrics::OpenStream;
use crate::openapi::problems::problems;
use crate::rate_limit;
use crate::routes::turns::REPLAYED;
use crate::sse::{self, followed_events, turn_events};
use crate::state::AppState;

problems!(StreamTurnProblems: malformed_json, bad_request, invalid_path,
    invalid_idempotency_key, unauthenticated, session_not_found, idempotency_key_in_use,
    request_timeout, payload_too_large, unsupported_media_type, validation_failed,
    input_exceeds_token_budget, idempotency_key_reused, rate_limited, internal_error,
    storage_unavailable, limiter_unavailable, shutting_down);

/// An example stream, as the builtin provider answers `Hello`.
const EXAMPLE: &str = "event: turn.created\nid: 0193…:0\ndata: {\"seq\":0,\"turn\":{…,\"status\":\"in_progress\"},\"type\":\"turn.created\"}\n\n\
event: turn.delta\nid: 0193…:1\ndata: {\"delta\":\"You said:\",\"seq\":1,\"turn_id\":\"0193…\",\"type\":\"turn.delta\"}\n\n\
event: turn.completed\nid: 0193…:3\ndata: {\"seq\":3,\"turn\":{…,\"status\":\"completed\"},\"type\":\"turn.completed\"}\n\n";

/// `POST /api/v1/sessions/{session_id}/turns/stream`
#[utoipa::path(
    post,
    path = "/api/v1/sessions/{session_id}/turns/stream",
    tag = "turns",
    params(
        ("session_id" = uuid::Uuid, Path, description = "The session's id."),
        ("Idempotency-Key" = Option<String>, Header, description = "As for `POST …/turns`: a \
            retry with the key gets the first attempt's turn's events from `turn.created` (live \
            while it runs), with `Idempotent-Replayed: true`, never a second turn."),
    ),
    request_body(content = SubmitTurnRequest, content_type = "application/json"),
    responses(
        (
            status = 200,
            description = "The turn was admitted and committed; its events follow as Server-Sent \
                Events (`Cache-Control: no-cache`, `X-Accel-Buffering: no`). Each event's `data` \
                is one line of JSON, a `TurnStreamEvent` (`x-itemSchema`); its `event` is the \
                `type`, its `id` `<turn_id>:<seq>`. A comment line (`:`) is sent every \
                `turns.keep_alive_secs` while the provider is silent. A provider failure is a \
                `turn.failed` event, not a status. Deltas arriving within `turns.coalesce_ms` of \
                the last one sent go out as one event.",
            content_type = "text/event-stream",
            body = String,
            headers(("Idempotent-Replayed" = String, description = "`true` when the request \
                was a retry (`Idempotency-Key`): the events are the first attempt's turn's, from \
                `turn.created`.")),
            example = json!(EXAMPLE),
        ),
        StreamTurnProblems,
    ),
    security(("bearer" = [])),
)]
pub async fn stream_turn(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath(session_id): ApiPath<SessionId>,
    IdempotencyHeader(key): IdempotencyHeader,
    ApiJson(body): ApiJson<SubmitTurnRequest>,
) -> Result<Response, ApiError> {
    let new = body.into_turn(state.max_input_chars)?;
    let cancel_on_disconnect = state.cancel_on_disconnect;
    // Dropped by the server if the client hangs up before the commit: with
    // `cancel`, the turn is then cancelled too, not generated for no one.
    let started =
        state.turns.start_keyed(&caller, session_id, new, key, cancel_on_disconnect).await?;
    let open = state.metrics.as_ref().map(|m| OpenStream::new(&m.sse_streams));
    Ok(match started {
        Started::Run(run) => {
            let headers =
                rate_limit::admitted_headers(&state.turns, &caller, run.rate_limit.as_ref());
            sse::response(headers, turn_events(run, cancel_on_disconnect, open), state.keep_alive)
        }
        Started::Replay { turn, events } => {
            let mut headers = HeaderMap::new();
            headers.insert(REPLAYED, HeaderValue::from_static("true"));
            sse::response(headers, followed_events(turn, events, open), state.keep_alive)
        }
    })
}
