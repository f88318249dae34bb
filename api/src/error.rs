//! [`ApiError`]: every way a request fails, and the one place that maps the
//! domain's errors to statuses, headers and problem bodies. Server-side
//! causes are logged here, once, and never sent to the client.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use pantheon_domain::{ProviderError, StorageError, TurnError, ValidationError};
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
        tracing::error!(error = %cause, "request failed");
        Self::new(Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "An internal error occurred.",
        ))
    }

    /// The problem this error renders as.
    pub fn problem(&self) -> &Problem {
        &self.problem
    }
}

impl From<ValidationError> for ApiError {
    fn from(error: ValidationError) -> Self {
        Self::new(
            Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed", error.to_string())
                .with("errors", json!([{ "field": error.field, "message": error.message }])),
        )
    }
}

impl From<StorageError> for ApiError {
    fn from(error: StorageError) -> Self {
        match error {
            StorageError::Unavailable(_) => {
                tracing::error!(error = %error, "storage unavailable");
                let mut e = Self::new(Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage_unavailable",
                    "The service is temporarily unable to reach its storage.",
                ));
                e.headers.insert(header::RETRY_AFTER, HeaderValue::from(1));
                e
            }
            StorageError::Other(_) => Self::internal(&error),
        }
    }
}

/// The status and public wording of a provider failure's code; shared with
/// the `error` member of a failed turn.
pub fn provider_status(code: &str) -> StatusCode {
    match code {
        "upstream_timeout" => StatusCode::GATEWAY_TIMEOUT,
        "upstream_unavailable" => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_GATEWAY,
    }
}

impl From<TurnError> for ApiError {
    fn from(error: TurnError) -> Self {
        match error {
            TurnError::SessionNotFound => Self::new(Problem::new(
                StatusCode::NOT_FOUND,
                "session_not_found",
                "No such session.",
            )),
            TurnError::TurnNotFound => {
                Self::new(Problem::new(StatusCode::NOT_FOUND, "turn_not_found", "No such turn."))
            }
            TurnError::Invalid(e) => e.into(),
            TurnError::Storage(e) => e.into(),
            TurnError::Provider { turn, source } => {
                tracing::warn!(turn.id = %turn.id, error = %source, "turn failed at the provider");
                let mut headers = HeaderMap::new();
                if let ProviderError::Unavailable { retry_after: Some(wait) } = &source {
                    headers.insert(header::RETRY_AFTER, HeaderValue::from(wait.as_secs().max(1)));
                }
                let body = TurnBody::from(*turn);
                let detail = body.error.as_ref().map(|e| e.detail.clone()).unwrap_or_default();
                let problem = Problem::new(provider_status(source.code()), source.code(), detail)
                    .with("turn", serde_json::to_value(&body).unwrap_or_default());
                Self { problem: Box::new(problem), headers }
            }
            TurnError::RateLimited(denial) => {
                let (problem, headers) = rate_limit::too_many_requests(&denial);
                Self { problem: Box::new(problem), headers }
            }
            TurnError::LimiterUnavailable => {
                let (problem, headers) = rate_limit::limiter_unavailable();
                Self { problem: Box::new(problem), headers }
            }
            TurnError::Interrupted { turn } => {
                let problem = Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "turn_interrupted",
                    "The server shut down before the reply was complete.",
                )
                .with("turn", serde_json::to_value(TurnBody::from(*turn)).unwrap_or_default());
                Self::new(problem)
            }
            TurnError::ShuttingDown => {
                let mut e = Self::new(Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "shutting_down",
                    "The server is shutting down; retry shortly.",
                ));
                e.headers.insert(header::RETRY_AFTER, HeaderValue::from(1));
                e
            }
            TurnError::Internal(cause) => Self::internal(&cause),
        }
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
