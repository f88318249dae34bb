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

/// The members a refused upload adds to the problem, each only with the
/// codes it names.
#[derive(Debug, Serialize, ToSchema)]
pub struct FileProblem {
    /// `file_too_large`: `files.max_file_bytes`.
    #[schema(required = false, nullable = false)]
    limit: Option<u64>,
    /// `storage_quota_exceeded`: which quota, and its size.
    #[schema(required = false, nullable = false)]
    quota: Option<QuotaMember>,
    /// `file_type_mismatch`: the type the part or the name declared.
    #[schema(required = false, nullable = false)]
    declared: Option<String>,
    /// `file_type_mismatch`, `file_type_not_allowed`: the type of the bytes.
    #[schema(required = false, nullable = false)]
    detected: Option<String>,
}

/// The quota a `storage_quota_exceeded` upload would have passed.
#[derive(Debug, Serialize, ToSchema)]
pub struct QuotaMember {
    /// `bytes` (`files.quota_bytes`) or `files` (`files.max_files`).
    unit: String,
    /// The quota.
    limit: u64,
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
/// `https://iana.org/assignments/http-problem-types#quota-exceeded`). They
/// describe the binding policy: a violated window (turns or tokens, whose
/// `retry_at` is exact) before the concurrency cap.
#[derive(Debug, Serialize, ToSchema)]
pub struct RateLimitedProblem {
    /// The limits the turn did not fit, in this order: `minute`, `hour`,
    /// `tokens-minute`, `tokens-hour`, `concurrency`.
    #[serde(rename = "violated-policies")]
    violated_policies: Vec<PolicyName>,
    /// The binding policy's limit: turns in its window, tokens in its
    /// window, or turns running at once.
    limit: u64,
    /// The binding policy.
    window: PolicyName,
    /// The binding window's length; absent when the binding policy is
    /// `concurrency`.
    #[schema(required = false, nullable = false)]
    window_seconds: Option<i64>,
    /// What is left of the binding policy: turns or tokens left in the
    /// window, or free slots.
    remaining: u64,
    /// A token window binds: the smallest reservation this turn needs (its
    /// input and `rate_limit.min_output_tokens`).
    #[schema(required = false, nullable = false)]
    requested: Option<u64>,
    /// `concurrency` is violated: the caller's turns running now.
    #[schema(required = false, nullable = false)]
    active: Option<u64>,
    /// Seconds until the same request fits, rounded up (as `Retry-After`);
    /// 1 when only the concurrency cap binds (no clock predicts a turn's end).
    retry_after_seconds: i64,
    /// The earliest instant the same request fits (RFC 3339, milliseconds).
    #[schema(format = DateTime)]
    retry_at: String,
}

/// A rate-limit policy, as named in the headers and bodies.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyName {
    Minute,
    Hour,
    TokensMinute,
    TokensHour,
    Concurrency,
}

/// The members `input_exceeds_token_budget` adds to the problem: a turn
/// whose input alone can never fit a token budget (a `429` would be
/// retried forever). Sent with that code only; optional here because the
/// same `422` response holds `validation_failed`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenBudgetProblem {
    /// The input's tokens, as Pantheon's tokenizer counts the prompt; for
    /// an input refused by its size alone, the fewest it can have.
    #[schema(required = false, nullable = false)]
    input_tokens: Option<u64>,
    /// The input and `rate_limit.min_output_tokens`.
    #[schema(required = false, nullable = false)]
    requested: Option<u64>,
    /// The budget it cannot fit.
    #[schema(required = false, nullable = false)]
    limit: Option<u64>,
    /// That budget: `tokens-minute` or `tokens-hour`.
    #[schema(required = false, nullable = false)]
    window: Option<PolicyName>,
}

/// `GET /api/v1/rate-limit`: the caller's usage, counting nothing.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = RateLimitStatus)]
pub struct RateLimitBody {
    /// `false` when `rate_limit.enabled = false` (then `windows` is empty
    /// and nothing else is sent).
    enabled: bool,
    /// The token's `tier` claim, `null` without one; absent when disabled.
    #[schema(required = false)]
    tier: Option<String>,
    /// The limiter's state; absent when disabled.
    #[schema(required = false, nullable = false)]
    limiter: Option<LimiterStateBody>,
    /// Turn usage per window, minute first; `null` when the store cannot
    /// be read right now.
    #[schema(required = true)]
    windows: Option<Vec<WindowUsageBody>>,
    /// Token usage per budgeted window (`tokens-minute`, `tokens-hour`),
    /// settled: a finished turn's refund shows at once; empty without a
    /// token budget, `null` when the store cannot be read; absent when
    /// disabled.
    #[schema(required = false)]
    tokens: Option<Vec<WindowUsageBody>>,
    /// The caller's turns running now; `null` when the store cannot be
    /// read; absent when disabled.
    #[schema(required = false)]
    active: Option<u64>,
    /// The concurrency cap; `null` when the store cannot be read; absent
    /// when disabled.
    #[schema(required = false)]
    concurrency: Option<ConcurrencyBody>,
    /// The caller's place in the provider's queue when a turn of theirs
    /// waits for the provider's shared capacity; `null` when none waits
    /// (or no capacity is configured).
    #[schema(required = true)]
    provider_queue: Option<ProviderQueueBody>,
}

/// Where the caller's first waiting turn stands in the provider's queue.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = ProviderQueuePlace)]
pub struct ProviderQueueBody {
    /// 1: dispatched next. In fair order: one more than the users with a
    /// smaller virtual counter (plus the caller's own turns ahead), so it
    /// can move back as well as forward when others arrive.
    place: u64,
}

/// The caller's concurrent turns.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = ConcurrencyUsage)]
pub struct ConcurrencyBody {
    /// Turns that may run at once (`rate_limit.max_concurrent_turns`).
    limit: u64,
    /// Turns running now.
    active: u64,
    /// Slots free: `limit − active`, never below 0.
    free: u64,
}

/// One window's usage.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = WindowUsage)]
pub struct WindowUsageBody {
    /// `minute` or `hour` in `windows`; `tokens-minute` or `tokens-hour`
    /// in `tokens`.
    window: PolicyName,
    /// The caller's limit in it (turns, or tokens).
    limit: u64,
    window_seconds: i64,
    /// Turns (or tokens) that would still fit now.
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
    /// The turn waits for the provider's shared capacity (before any
    /// delta). It has no `seq` and its SSE event no `id`: it is
    /// not replayed on resume.
    #[serde(rename = "turn.queued")]
    Queued(TurnQueued),
    /// A chunk of the reply.
    #[serde(rename = "turn.delta")]
    Delta(TurnDelta),
    /// The model called a tool (`file_read`) on one of the turn's files.
    #[serde(rename = "turn.tool_call")]
    ToolCall(TurnToolCall),
    /// A tool call's result went back to the model.
    #[serde(rename = "turn.tool_result")]
    ToolResult(TurnToolResult),
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

/// `turn.queued`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TurnQueued {
    #[schema(format = Uuid)]
    turn_id: String,
    /// Its place in line (1: next); `null` when unknown.
    place: Option<u64>,
}

/// `turn.tool_call`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TurnToolCall {
    seq: u64,
    #[schema(format = Uuid)]
    turn_id: String,
    /// Always `call`.
    kind: String,
    /// The tool: `file_read`.
    name: String,
    /// Its arguments as the model sent them (JSON text, validated before
    /// the call runs).
    arguments: String,
}

/// `turn.tool_result`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TurnToolResult {
    seq: u64,
    #[schema(format = Uuid)]
    turn_id: String,
    /// Always `result`.
    kind: String,
    /// The tool: `file_read`.
    name: String,
    /// The file read, when the call named one of the turn's files.
    #[schema(format = Uuid)]
    file_id: Option<String>,
    /// The bytes of the file returned to the model.
    bytes: u64,
    /// Why the call failed (the model was told; the turn goes on).
    error: Option<String>,
}

/// `turn.failed`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TurnFailure {
    seq: u64,
    /// The turn with its partial output.
    turn: TurnBody,
    /// The problem the JSON endpoint would have answered (no `request_id`):
    /// `upstream_error` 502, `upstream_unavailable` 503, `upstream_saturated`
    /// 503, `upstream_timeout` 504, `turn_interrupted` 503 at shutdown,
    /// `storage_unavailable` 503.
    error: ProblemSchema,
}
