//! RFC 9457 problem details: the one shape of every error response.
//!
//! Handlers and extractors return an [`ApiError`](crate::error::ApiError),
//! whose response carries a [`Problem`] as an extension and no body; the
//! [`render_problems`] middleware then writes the body with the request id.
//! Responses that axum makes itself (unknown route, wrong method, body over
//! the limit) get a problem body for their status the same way, so no error
//! ever leaves as plain text.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};

/// The media type of problem bodies.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// A problem, before the request id is known.
#[derive(Debug, Clone)]
pub struct Problem {
    /// The HTTP status.
    pub status: StatusCode,
    /// A registered problem type URI that fits; `None` means our own,
    /// `urn:pantheon:problem:<code>`, written out only when serialized.
    pub registered_type: Option<&'static str>,
    /// A stable snake_case key clients can switch on.
    pub code: &'static str,
    /// A short, status-level summary.
    pub title: &'static str,
    /// What happened, for a human; never internal detail.
    pub detail: String,
    /// Extension members (`errors`, `turn`, …), in the order they are
    /// written; names are ours, never a standard member's.
    pub extensions: Vec<(&'static str, Value)>,
    /// The `429`'s members, written after `extensions` straight from their
    /// fields: every refusal is rendered, and a `Value` per member was an
    /// allocation each.
    pub quota: Option<Box<QuotaMembers>>,
}

/// The members of a `429` (see `docs/API.md`, "Rate limiting"), in the
/// order they are written; the optional ones only where they apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaMembers {
    /// The binding policy's limit (turns, tokens or slots).
    pub limit: u64,
    /// The binding policy's name.
    pub window: &'static str,
    /// The binding window's length; none for concurrency.
    pub window_seconds: Option<u64>,
    /// What is left of the binding policy.
    pub remaining: u64,
    /// The smallest reservation refused, for a token budget.
    pub requested: Option<u64>,
    /// The violated policies' names, in order.
    pub violated: Vec<&'static str>,
    /// `Retry-After`.
    pub retry_after_seconds: u64,
    /// When the same request fits (ms since the epoch), written RFC 3339.
    pub retry_at_ms: i64,
    /// Turns running, when concurrency was violated.
    pub active: Option<u64>,
}

impl QuotaMembers {
    fn write<M: SerializeMap>(&self, map: &mut M) -> Result<(), M::Error> {
        map.serialize_entry("limit", &self.limit)?;
        map.serialize_entry("window", self.window)?;
        if let Some(seconds) = self.window_seconds {
            map.serialize_entry("window_seconds", &seconds)?;
        }
        map.serialize_entry("remaining", &self.remaining)?;
        if let Some(requested) = self.requested {
            map.serialize_entry("requested", &requested)?;
        }
        map.serialize_entry("violated-policies", &self.violated)?;
        map.serialize_entry("retry_after_seconds", &self.retry_after_seconds)?;
        map.serialize_entry("retry_at", &RetryAt(self.retry_at_ms))?;
        if let Some(active) = self.active {
            map.serialize_entry("active", &active)?;
        }
        Ok(())
    }

    fn len(&self) -> usize {
        6 + usize::from(self.window_seconds.is_some())
            + usize::from(self.requested.is_some())
            + usize::from(self.active.is_some())
    }
}

/// An instant in ms since the epoch, written RFC 3339 with milliseconds
/// (empty if out of range). chrono's own RFC 3339 writer: its `format`
/// parses a pattern on every call, which cost a refusal 4,000 instructions.
struct RetryAt(i64);

impl Serialize for RetryAt {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let at = chrono::DateTime::from_timestamp_millis(self.0)
            .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
        serializer.serialize_str(at.as_deref().unwrap_or_default())
    }
}

impl Problem {
    /// A problem of our own namespace.
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            registered_type: None,
            code,
            title: status.canonical_reason().unwrap_or("Error"),
            detail: detail.into(),
            extensions: Vec::new(),
            quota: None,
        }
    }

    /// The same problem under a registered type instead of our namespace.
    pub fn with_type(mut self, type_uri: &'static str) -> Self {
        self.registered_type = Some(type_uri);
        self
    }

    /// Adds the `429`'s members.
    pub fn with_quota(mut self, quota: QuotaMembers) -> Self {
        self.quota = Some(Box::new(quota));
        self
    }

    /// Adds an extension member.
    pub fn with(mut self, key: &'static str, value: Value) -> Self {
        self.extensions.push((key, value));
        self
    }

    /// The problem for a bare error status produced outside our handlers.
    pub fn for_status(status: StatusCode) -> Self {
        let (code, detail) = match status {
            StatusCode::NOT_FOUND => ("route_not_found", "No such route."),
            StatusCode::METHOD_NOT_ALLOWED => (
                "method_not_allowed",
                "The method is not allowed on this route; see the Allow header.",
            ),
            StatusCode::PAYLOAD_TOO_LARGE => {
                ("payload_too_large", "The request body is too large.")
            }
            StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                ("unsupported_media_type", "The request body must be application/json.")
            }
            StatusCode::REQUEST_TIMEOUT => ("request_timeout", "The request took too long."),
            s if s.is_server_error() => ("internal_error", "An internal error occurred."),
            _ => ("bad_request", "The request could not be processed."),
        };
        Self::new(status, code, detail)
    }

    /// The JSON body, with the request id when there is one (a problem
    /// embedded in an event or a turn has none of its own).
    pub fn to_body(&self, request_id: Option<&str>) -> Value {
        serde_json::to_value(ProblemBody { problem: self, request_id })
            .unwrap_or_else(|_| Value::Object(Map::new()))
    }

    /// The body as response bytes, serialized straight from the fields (no
    /// intermediate `Value`: every `429` is rendered, and that tree was a
    /// tenth of a refusal's cost).
    fn to_bytes(&self, request_id: Option<&str>) -> Vec<u8> {
        serde_json::to_vec(&ProblemBody { problem: self, request_id }).unwrap_or_default()
    }
}

/// A problem's members in RFC 9457 order, then its extensions, then the
/// request id. Extension names never repeat a standard member's.
struct ProblemBody<'a> {
    problem: &'a Problem,
    request_id: Option<&'a str>,
}

impl Serialize for ProblemBody<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let p = self.problem;
        let quota = p.quota.as_ref().map_or(0, |q| q.len());
        let id = usize::from(self.request_id.is_some());
        let mut map = serializer.serialize_map(Some(5 + p.extensions.len() + quota + id))?;
        match p.registered_type {
            Some(uri) => map.serialize_entry("type", uri)?,
            None => map.serialize_entry("type", &OwnType(p.code))?,
        }
        map.serialize_entry("title", p.title)?;
        map.serialize_entry("status", &p.status.as_u16())?;
        map.serialize_entry("detail", &p.detail)?;
        map.serialize_entry("code", p.code)?;
        for (key, value) in &p.extensions {
            map.serialize_entry(*key, value)?;
        }
        if let Some(quota) = &p.quota {
            quota.write(&mut map)?;
        }
        if let Some(id) = self.request_id {
            map.serialize_entry("request_id", id)?;
        }
        map.end()
    }
}

/// `urn:pantheon:problem:<code>`, written straight into the output.
struct OwnType(&'static str);

impl Serialize for OwnType {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&format_args!("urn:pantheon:problem:{}", self.0))
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut response = self.status.into_response();
        response.extensions_mut().insert(self);
        response
    }
}

/// Writes problem bodies (see the module doc). Runs inside the request-id
/// layer, so the id is already on the request.
pub async fn render_problems(request: Request, next: Next) -> Response {
    let request_id =
        request.headers().get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(PROBLEM_JSON.as_bytes()));
    if is_problem {
        return response;
    }
    let (mut parts, _) = response.into_parts();
    let problem =
        parts.extensions.remove::<Problem>().unwrap_or_else(|| Problem::for_status(status));
    parts.status = problem.status;
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(problem.to_bytes(request_id.as_deref())))
}
