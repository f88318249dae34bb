//! Schemas of bodies the code writes without a struct of its own: problem
//! bodies (serialized member by member, see `problem.rs`), the
//! `GET /api/v1/rate-limit` body and the stream's event payloads. The
//! end-to-end suite validates every response and every event it receives
//! against these, so a member added on one side and not the other fails it.

#![allow(dead_code)]

use serde::Serialize;
use utoipa::ToSchema;

use crate::dto::{LimiterStateBody, TurnBody};

/// An RFC 9457 problem: the body of every error response
/// (`application/problem+json`).
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Problem)]
pub struct ProblemSchema {
    /// `urn:pantheon:problem:<code>`, or a registered problem type (the
    /// `429` and the `503 limiter_unavailable`).
    #[serde(rename = "type")]
    #[schema(format = "uri-reference")]
    type_uri: String,
    /// The status's reason phrase.
    title: String,
    /// The HTTP status.
    status: u16,
    /// What happened, for a human; never internal detail.
    detail: String,
    /// A stable snake_case key clients can switch on.
    code: String,
    /// The request's `x-request-id`; absent from a problem inside a stream
    /// event or a turn.
    #[schema(required = false, nullable = false)]
    request_id: Option<String>,
    /// `validation_failed`: the fields refused.
    #[schema(required = false, nullable = false)]
    errors: Option<Vec<FieldError>>,
    /// A turn that was committed and then failed or was interrupted
    /// (`upstream_*`, `turn_interrupted`), as persisted.
    #[schema(required = false, nullable = false)]
    turn: Option<TurnBody>,
    /// `not_ready`: `unreachable`.
    #[schema(required = false, nullable = false)]
    database: Option<String>,
}

/// One refused field of a `validation_failed` problem.
#[derive(Debug, Serialize, ToSchema)]
pub struct FieldError {
    /// The field, e.g. `input`.
    field: String,
    /// Why it was refused.
    message: String,
}

/// The members a `429` adds to the problem (whose type is the registered
/// `https://iana.org/assignments/http-problem-types#quota-exceeded`).
#[derive(Debug, Serialize, ToSchema)]
pub struct RateLimitedProblem {
    /// The limits the turn did not fit, in order (`minute`, `hour`).
    #[serde(rename = "violated-policies")]
    violated_policies: Vec<String>,
    /// The limit of the window that sets `retry_at`.
    limit: u64,
    /// That window's name.
    window: String,
    /// That window's length.
    window_seconds: i64,
    /// Turns left in that window (0).
    remaining: u64,
    /// Seconds until the same request fits, rounded up (as `Retry-After`).
    retry_after_seconds: i64,
    /// The earliest instant the same request fits (RFC 3339, milliseconds).
    #[schema(format = DateTime)]
    retry_at: String,
}

/// `GET /api/v1/rate-limit`: the caller's usage, counting nothing.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = RateLimitStatus)]
pub struct RateLimitBody {
    /// `false` when `rate_limit.enabled = false` (then `windows` is empty).
    enabled: bool,
    /// The token's `tier` claim, `null` without one; absent when disabled.
    #[schema(required = false)]
    tier: Option<String>,
    /// The limiter's state; absent when disabled.
    #[schema(required = false, nullable = false)]
    limiter: Option<LimiterStateBody>,
    /// Usage per window, minute first; `null` when the store cannot be
    /// read right now.
    #[schema(required = true)]
    windows: Option<Vec<WindowUsageBody>>,
}

/// One window's usage.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = WindowUsage)]
pub struct WindowUsageBody {
    /// `minute` or `hour`.
    window: String,
    /// The caller's limit in it.
    limit: u64,
    window_seconds: i64,
    /// Turns that would still fit now.
    remaining: u64,
    /// Seconds until more quota, rounded up (0 while some remains).
    reset_seconds: i64,
}

/// One event of `POST …/turns/stream`, the JSON of its `data` line; the SSE
/// `event` field repeats `type`. Exactly one `turn.created` first, any
/// number of `turn.delta`, then exactly one terminal event
/// (`turn.completed` or `turn.failed`). Clients ignore unknown types.
#[derive(Debug, Serialize, ToSchema)]
#[serde(tag = "type")]
#[allow(clippy::large_enum_variant)] // never built: a schema only
pub enum TurnStreamEvent {
    /// The turn was committed `in_progress`: always the first event.
    #[serde(rename = "turn.created")]
    Created(TurnEventWithTurn),
    /// A chunk of the reply.
    #[serde(rename = "turn.delta")]
    Delta(TurnDelta),
    /// The turn completed, as persisted: terminal.
    #[serde(rename = "turn.completed")]
    Completed(TurnEventWithTurn),
    /// The turn failed or was interrupted: terminal.
    #[serde(rename = "turn.failed")]
    Failed(TurnFailure),
}

/// `turn.created` and `turn.completed`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TurnEventWithTurn {
    /// The event's position in the stream, from 0; the SSE `id` is
    /// `<turn_id>:<seq>`.
    seq: u64,
    turn: TurnBody,
}

/// `turn.delta`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TurnDelta {
    seq: u64,
    #[schema(format = Uuid)]
    turn_id: String,
    /// The chunk, to append to the output so far.
    delta: String,
}

/// `turn.failed`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TurnFailure {
    seq: u64,
    /// The turn with its partial output.
    turn: TurnBody,
    /// The problem the JSON endpoint would have answered (no `request_id`):
    /// `upstream_error` 502, `upstream_unavailable` 503, `upstream_timeout`
    /// 504, `turn_interrupted` 503 at shutdown, `storage_unavailable` 503.
    error: ProblemSchema,
}
