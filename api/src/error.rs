//! [`ApiError`]: every way a request fails, and the one place that maps the
//! domain's errors to statuses, headers and problem bodies. Server-side
//! causes are logged here, once, and never sent to the client.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use pantheon_domain::file::UploadFault;
use pantheon_domain::{FailureKind, ProviderError, StorageError, Turn, TurnError, ValidationError};
use serde_json::json;

use crate::dto::TurnBody;
use crate::problem::Problem;
use crate::rate_limit;

/// A failed request.
#[derive(Debug)]
pub struct ApiError {
    problem: Box<Problem>,
    headers: HeaderMap,
}

impl ApiError {
    /// An error with the given problem.
    pub fn new(problem: Problem) -> Self {
        Self { problem: Box::new(problem), headers: HeaderMap::new() }
    }

    /// `400` with a code of its own (`malformed_json`, `invalid_path`, …).
    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(Problem::new(StatusCode::BAD_REQUEST, code, detail))
    }

    /// `401`: the client is not told which check failed.
    pub fn unauthenticated() -> Self {
        Self::new(Problem::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "A valid bearer token is required.",
        ))
    }

    /// `500`, logging the cause.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        Self::new(internal(cause).problem)
    }

    /// The same error with `name: value` among its headers.
    #[must_use]
    pub fn with_header(mut self, name: &'static str, value: HeaderValue) -> Self {
        self.headers.insert(name, value);
        self
    }

    /// The problem this error renders as.
    pub fn problem(&self) -> &Problem {
        &self.problem
    }
}

impl From<ValidationError> for ApiError {
    fn from(error: ValidationError) -> Self {
        TurnError::Invalid(error).into()
    }
}

impl From<StorageError> for ApiError {
    fn from(error: StorageError) -> Self {
        TurnError::Storage(error).into()
    }
}

/// The `Retry-After` of `503 upstream_saturated`: the queue was full for
/// its whole timeout, so an immediate retry would only wait again; a few
/// seconds spread the retries of many clients.
const SATURATED_RETRY_AFTER_SECS: u64 = 5;

/// The status of a provider failure's kind: also the `status` of the
/// `error` member of a turn that failed so.
pub fn failure_status(kind: FailureKind) -> StatusCode {
    match kind {
        FailureKind::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        FailureKind::UpstreamUnavailable | FailureKind::UpstreamSaturated => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        FailureKind::UpstreamError => StatusCode::BAD_GATEWAY,
    }
}

/// How a failed turn operation reaches the client: the JSON endpoints
/// answer it as the response, a stream sends it as the `error` of its
/// `turn.failed` event (with `turn`).
#[derive(Debug)]
pub struct Failure {
    /// The problem, without the `turn` member.
    pub problem: Problem,
    /// Headers the response carries (`Retry-After`, rate-limit headers).
    pub headers: HeaderMap,
    /// The turn as persisted, when the failure ended one.
    pub turn: Option<Turn>,
}

impl Failure {
    fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self { problem: Problem::new(status, code, detail), headers: HeaderMap::new(), turn: None }
    }

    fn retry_after(mut self, secs: u64) -> Self {
        self.headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        self
    }
}

/// The one mapping of a domain error to what the client sees, and the one
/// place its server-side cause is logged (never sent).
pub fn failure(error: TurnError) -> Failure {
    match error {
        TurnError::SessionNotFound => {
            Failure::new(StatusCode::NOT_FOUND, "session_not_found", "No such session.")
        }
        TurnError::TurnNotFound => {
            Failure::new(StatusCode::NOT_FOUND, "turn_not_found", "No such turn.")
        }
        TurnError::Invalid(e) => {
            let mut f =
                Failure::new(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed", e.to_string());
            f.problem =
                f.problem.with("errors", json!([{ "field": e.field, "message": e.message }]));
            f
        }
        TurnError::Storage(StorageError::Unavailable(cause)) => {
            tracing::error!(error = %cause, "storage unavailable");
            Failure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage_unavailable",
                "The service is temporarily unable to reach its storage.",
            )
            .retry_after(1)
        }
        TurnError::Storage(error @ StorageError::Other(_)) => internal(&error),
        TurnError::Provider { turn, source } => {
            tracing::warn!(turn.id = %turn.id, error = %source, "turn failed at the provider");
            let kind = source.kind();
            let detail = turn.error.as_ref().map(|e| e.detail.clone()).unwrap_or_default();
            let mut f = Failure::new(failure_status(kind), kind.as_str(), detail);
            match &source {
                ProviderError::Unavailable { retry_after: Some(wait), .. } => {
                    f = f.retry_after(wait.as_secs());
                }
                ProviderError::Saturated { .. } => f = f.retry_after(SATURATED_RETRY_AFTER_SECS),
                _ => {}
            }
            f.turn = Some(*turn);
            f
        }
        TurnError::RateLimited(denial) => {
            let (problem, headers) = rate_limit::too_many_requests(&denial);
            Failure { problem, headers, turn: None }
        }
        error @ TurnError::InputExceedsTokenBudget { .. } => Failure {
            problem: rate_limit::input_exceeds_token_budget(&error),
            headers: HeaderMap::new(),
            turn: None,
        },
        TurnError::LimiterUnavailable => {
            let (problem, headers) = rate_limit::limiter_unavailable();
            Failure { problem, headers, turn: None }
        }
        TurnError::Interrupted { turn } => {
            let mut f = Failure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "turn_interrupted",
                "The server shut down before the reply was complete.",
            );
            f.turn = Some(*turn);
            f
        }
        TurnError::TurnNotInProgress(turn) => {
            let mut f = Failure::new(
                StatusCode::CONFLICT,
                "turn_not_in_progress",
                format!(
                    "The turn is {}; only a turn in progress can be cancelled.",
                    turn.status.as_str()
                ),
            );
            f.turn = Some(*turn);
            f
        }
        TurnError::CancelUnconfirmed(turn) => {
            tracing::warn!(turn.id = %turn, "a cancel was sent but the turn's end was not seen in time");
            Failure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "cancel_unconfirmed",
                "The cancel was sent, but the turn's end was not seen in time; ask again.",
            )
            .retry_after(1)
        }
        TurnError::IdempotencyKeyReused => Failure::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "This Idempotency-Key was sent with another request (another input or session).",
        ),
        TurnError::IdempotencyKeyInUse => Failure::new(
            StatusCode::CONFLICT,
            "idempotency_key_in_use",
            "The first request with this Idempotency-Key has not committed its turn yet; retry.",
        )
        .retry_after(1),
        TurnError::FileNotFound => {
            Failure::new(StatusCode::NOT_FOUND, "file_not_found", "No such file.")
        }
        TurnError::FileTooLarge { limit } => {
            let mut f = Failure::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "file_too_large",
                format!("A file may hold at most {limit} bytes."),
            );
            f.problem = f.problem.with("limit", json!(limit));
            f
        }
        TurnError::StorageQuotaExceeded { unit, limit } => {
            let mut f = Failure::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "storage_quota_exceeded",
                format!("Your files may hold at most {limit} {unit} in all; delete some first."),
            );
            f.problem = f.problem.with("quota", json!({ "unit": unit, "limit": limit }));
            f
        }
        TurnError::FileTypeMismatch { declared, detected } => {
            let mut f = Failure::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "file_type_mismatch",
                format!("The file was declared {declared}, but its content is {detected}."),
            );
            f.problem =
                f.problem.with("declared", json!(declared)).with("detected", json!(detected));
            f
        }
        TurnError::FileTypeNotAllowed { detected } => {
            let mut f = Failure::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "file_type_not_allowed",
                format!("Files of type {detected} are not accepted."),
            );
            f.problem = f.problem.with("detected", json!(detected));
            f
        }
        TurnError::Upload(UploadFault::Malformed(why)) => Failure::new(
            StatusCode::BAD_REQUEST,
            "malformed_upload",
            format!("The body must be multipart/form-data with a `file` part: {why}."),
        ),
        TurnError::Upload(UploadFault::Incomplete) => Failure::new(
            StatusCode::BAD_REQUEST,
            "upload_incomplete",
            "The body ended before the upload was complete; nothing was kept.",
        ),
        TurnError::Upload(UploadFault::TimedOut) => Failure::new(
            StatusCode::REQUEST_TIMEOUT,
            "upload_timeout",
            "The upload was too slow; nothing was kept.",
        ),
        TurnError::ShuttingDown => Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "The server is shutting down; retry shortly.",
        )
        .retry_after(1),
        TurnError::Internal(cause) => internal(&cause),
    }
}

fn internal(cause: &dyn std::fmt::Display) -> Failure {
    tracing::error!(error = %cause, "request failed");
    Failure::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "An internal error occurred.")
}

impl From<TurnError> for ApiError {
    fn from(error: TurnError) -> Self {
        let Failure { mut problem, headers, turn } = failure(error);
        if let Some(turn) = turn {
            problem = problem
                .with("turn", serde_json::to_value(TurnBody::from(turn)).unwrap_or_default());
        }
        Self { problem: Box::new(problem), headers }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let unauthenticated = self.problem.status == StatusCode::UNAUTHORIZED;
        let headers = self.headers;
        let mut response = (*self.problem).into_response();
        response.headers_mut().extend(headers);
        if unauthenticated {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
