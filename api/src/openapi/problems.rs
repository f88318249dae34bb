//! The error responses of the OpenAPI document: every problem `code` the
//! API answers, with its status and meaning, and [`problems!`], which
//! declares the codes a handler can answer (next to the handler) as the
//! error responses of its operation — one response per status, its schema
//! the problem schema with `code` narrowed to those codes.
//!
//! A code named in `problems!` must be one of the constants here (it is a
//! path, so a typo does not compile); the end-to-end suite checks every
//! problem it receives against its operation's declared codes.

#![allow(non_upper_case_globals)]

use std::collections::BTreeMap;

use utoipa::openapi::schema::{AllOfBuilder, ObjectBuilder, Schema, Type};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Response, ResponseBuilder};

use crate::problem::PROBLEM_JSON;

/// One problem code.
#[derive(Debug, Clone, Copy)]
pub struct Code {
    /// The `code` member.
    pub name: &'static str,
    /// The HTTP status.
    pub status: u16,
    /// When it is answered.
    pub meaning: &'static str,
    /// Whether the response carries `Retry-After`.
    pub retry_after: bool,
}

const fn code(name: &'static str, status: u16, meaning: &'static str) -> Code {
    Code { name, status, meaning, retry_after: false }
}

const fn retried(name: &'static str, status: u16, meaning: &'static str) -> Code {
    Code { name, status, meaning, retry_after: true }
}

pub const malformed_json: Code = code("malformed_json", 400, "the body is not valid JSON");
pub const bad_request: Code = code("bad_request", 400, "the body could not be read");
pub const invalid_path: Code =
    code("invalid_path", 400, "a path parameter is malformed (an id that is not a UUID)");
pub const invalid_query: Code =
    code("invalid_query", 400, "a query parameter is malformed, or `limit` is outside 1–100");
pub const invalid_cursor: Code =
    code("invalid_cursor", 400, "the `after` cursor is not one this list issued");
pub const unauthenticated: Code = code(
    "unauthenticated",
    401,
    "no valid bearer token (missing, malformed, expired, wrong signature, issuer or audience); \
     `WWW-Authenticate: Bearer`",
);
pub const session_not_found: Code = code(
    "session_not_found",
    404,
    "no such session of the caller's (another user's looks the same)",
);
pub const turn_not_found: Code =
    code("turn_not_found", 404, "no such turn in a session of the caller's");
pub const invalid_last_event_id: Code = code(
    "invalid_last_event_id",
    400,
    "`Last-Event-ID` is not `<turn_id>:<seq>` of this turn, or `after` is not a number",
);
pub const invalid_idempotency_key: Code = code(
    "invalid_idempotency_key",
    400,
    "`Idempotency-Key` is not 1–255 printable ASCII characters (bare, or a Structured Fields \
     string), or is sent twice",
);
pub const idempotency_key_in_use: Code = retried(
    "idempotency_key_in_use",
    409,
    "the first request with this `Idempotency-Key` has not committed its turn yet (or failed \
     before it did); `Retry-After: 1`",
);
pub const idempotency_key_reused: Code = code(
    "idempotency_key_reused",
    422,
    "this `Idempotency-Key` was sent with another request (another input or session); nothing \
     was counted or written",
);
pub const turn_not_in_progress: Code = code(
    "turn_not_in_progress",
    409,
    "the turn had already ended (or ended otherwise before the cancel reached it); `turn` is the \
     turn as it ended",
);
pub const cancel_unconfirmed: Code = retried(
    "cancel_unconfirmed",
    503,
    "the cancel was sent but the turn's end was not seen in time (its instance unreachable); \
     `Retry-After: 1`",
);
pub const request_timeout: Code =
    code("request_timeout", 408, "the body did not arrive within `server.body_read_timeout_ms`");
pub const payload_too_large: Code =
    code("payload_too_large", 413, "the body is over the limit (from `turns.max_input_chars`)");
pub const unsupported_media_type: Code =
    code("unsupported_media_type", 415, "the body is not sent as `application/json`");
pub const validation_failed: Code = code(
    "validation_failed",
    422,
    "a field is missing, blank, too long, of the wrong type or unknown; `errors` names it",
);
pub const input_exceeds_token_budget: Code = code(
    "input_exceeds_token_budget",
    422,
    "the input alone (with `rate_limit.min_output_tokens`) can never fit a token budget; nothing \
     was written or counted",
);
pub const rate_limited: Code = retried(
    "rate_limited",
    429,
    "over one of the caller's limits (a turn window, the concurrency cap, a token budget); \
     nothing was looked up or counted. `Retry-After` is exact for a window, 1 for the cap",
);
pub const internal_error: Code = code("internal_error", 500, "an unexpected failure (logged)");
pub const upstream_error: Code = code(
    "upstream_error",
    502,
    "the model provider failed; the turn is persisted `failed` with its partial output (`turn`)",
);
pub const storage_unavailable: Code =
    retried("storage_unavailable", 503, "the database cannot be reached; `Retry-After: 1`");
pub const limiter_unavailable: Code = retried(
    "limiter_unavailable",
    503,
    "limits cannot be checked (Redis failing with `rate_limit.fallback = deny`); `Retry-After: 1`",
);
pub const upstream_unavailable: Code = retried(
    "upstream_unavailable",
    503,
    "the provider answered 429/503; `Retry-After` when it sent one; the turn is persisted `failed`",
);
pub const upstream_saturated: Code = retried(
    "upstream_saturated",
    503,
    "the provider's shared capacity (`provider.max_concurrent`, `provider.tokens_per_minute`) \
     stayed taken for `provider.queue_timeout_secs`; `Retry-After: 5`; the turn is persisted \
     `failed`, charged nothing",
);
pub const shutting_down: Code =
    retried("shutting_down", 503, "the server is draining for shutdown; `Retry-After: 1`");
pub const turn_interrupted: Code = code(
    "turn_interrupted",
    503,
    "the server shut down mid-reply; the turn is persisted `incomplete` (`turn`)",
);
pub const not_ready: Code =
    code("not_ready", 503, "the database does not answer (`database: unreachable`)");
pub const upstream_timeout: Code = code(
    "upstream_timeout",
    504,
    "the provider did not answer in time (`turns.max_duration_secs`, or its own timeouts); the \
     turn is persisted `failed`",
);
pub const file_not_found: Code =
    code("file_not_found", 404, "no such file of the caller's (another user's looks the same)");
pub const malformed_upload: Code = code(
    "malformed_upload",
    400,
    "the body is not `multipart/form-data` with a `file` part (and at most a `session_id` \
     before it)",
);
pub const upload_incomplete: Code =
    code("upload_incomplete", 400, "the body ended before the file did; nothing was kept");
pub const upload_timeout: Code = code(
    "upload_timeout",
    408,
    "the body stalled past `server.body_read_timeout_ms`, or the upload took longer than \
     `files.max_upload_secs`; nothing was kept",
);
pub const file_too_large: Code = code(
    "file_too_large",
    413,
    "the file is over `files.max_file_bytes` (`limit`), told from `Content-Length` before \
     reading or while streaming; nothing was kept",
);
pub const storage_quota_exceeded: Code = code(
    "storage_quota_exceeded",
    413,
    "the file would take the caller past `files.quota_bytes` or `files.max_files` (`quota`); \
     nothing was kept",
);
pub const file_type_mismatch: Code = code(
    "file_type_mismatch",
    415,
    "the bytes are not of the type the part's `Content-Type` or the name's extension declared \
     (`declared`, `detected`)",
);
pub const file_type_not_allowed: Code = code(
    "file_type_not_allowed",
    415,
    "the bytes are of a type not in `files.allowed_types` (`detected`)",
);
/// Any unknown path (not part of an operation).
pub const route_not_found: Code = code("route_not_found", 404, "no such route");
/// A known path with a method it does not take (not part of an operation).
pub const method_not_allowed: Code =
    code("method_not_allowed", 405, "the method is not allowed on this path; see `Allow`");

/// Declares the error responses of an operation:
/// `problems!(ListTurnsProblems: invalid_path, unauthenticated, …);` then
/// `responses(…, ListTurnsProblems)` in its `#[utoipa::path]`.
macro_rules! problems {
    ($name:ident: $($code:ident),+ $(,)?) => {
        #[doc = concat!("The error responses of one operation: ", $("`", stringify!($code), "` ",)+)]
        #[derive(Debug)]
        pub struct $name;

        impl utoipa::IntoResponses for $name {
            fn responses() -> std::collections::BTreeMap<
                String,
                utoipa::openapi::RefOr<utoipa::openapi::Response>,
            > {
                $crate::openapi::problems::responses(&[$($crate::openapi::problems::$code),+])
            }
        }
    };
}

pub(crate) use problems;

/// One response per status among `codes`.
pub fn responses(codes: &[Code]) -> BTreeMap<String, RefOr<Response>> {
    let mut by_status: BTreeMap<u16, Vec<Code>> = BTreeMap::new();
    for code in codes {
        by_status.entry(code.status).or_default().push(*code);
    }
    by_status
        .into_iter()
        .map(|(status, codes)| (status.to_string(), RefOr::T(response(status, &codes))))
        .collect()
}

/// The headers a problem response may carry, by status and code.
fn headers(status: u16, codes: &[Code]) -> Vec<&'static str> {
    let mut headers = Vec::new();
    if status == 401 {
        headers.push("WWW-Authenticate");
    }
    if status == 429 {
        headers.extend(["RateLimit-Policy", "RateLimit"]);
    }
    if codes.iter().any(|c| c.retry_after) {
        headers.push("Retry-After");
    }
    headers
}

/// A response of `status` with a body whose `code` is one of `codes`.
pub fn response(status: u16, codes: &[Code]) -> Response {
    let names: Vec<&str> = codes.iter().map(|c| c.name).collect();
    let narrowed = ObjectBuilder::new()
        .property(
            "status",
            ObjectBuilder::new().schema_type(Type::Integer).enum_values(Some([status])),
        )
        .property("code", ObjectBuilder::new().schema_type(Type::String).enum_values(Some(names)));
    let mut all = AllOfBuilder::new().item(Ref::from_schema_name("Problem"));
    if status == 429 {
        // The `429` adds the limit's members to the problem's.
        all = all.item(Ref::from_schema_name("RateLimitedProblem"));
    }
    if codes.iter().any(|c| c.name == input_exceeds_token_budget.name) {
        // Its members, optional: the same status holds `validation_failed`.
        all = all.item(Ref::from_schema_name("TokenBudgetProblem"));
    }
    let upload =
        [file_too_large, storage_quota_exceeded, file_type_mismatch, file_type_not_allowed];
    if codes.iter().any(|c| upload.iter().any(|u| u.name == c.name)) {
        // Their members, optional: each status holds other codes too.
        all = all.item(Ref::from_schema_name("FileProblem"));
    }
    let schema = Schema::AllOf(all.item(narrowed).build());
    let description =
        codes.iter().map(|c| format!("`{}`: {}.", c.name, c.meaning)).collect::<Vec<_>>().join(" ");
    let mut builder = ResponseBuilder::new()
        .description(description)
        .content(PROBLEM_JSON, ContentBuilder::new().schema(Some(schema)).build());
    for header in headers(status, codes) {
        builder = builder.header_ref(header, Ref::new(format!("#/components/headers/{header}")));
    }
    builder.build()
}
