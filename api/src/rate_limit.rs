//! The rate-limit headers of draft-ietf-httpapi-ratelimit-headers-10 and the
//! `429` / `503` problems of `docs/API.md` ("Rate limiting"). Values are
//! Structured Field lists:
//! `RateLimit-Policy: "minute";q=20;w=60, "hour";q=300;w=3600` and
//! `RateLimit: "minute";r=19;t=0, "hour";r=299;t=0`.

use std::fmt::Write as _;

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use chrono::{DateTime, SecondsFormat};
use pantheon_domain::limiter::{
    Denial, Limits, RateLimitStatus, Window, WindowUsage, retry_after_secs,
};
use serde_json::json;

use crate::problem::Problem;

/// `RateLimit-Policy`.
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit`.
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Whole seconds, rounded up: a client that waits `t` is not early.
fn ceil_secs(ms: i64) -> i64 {
    (ms.max(0) + 999) / 1000
}

/// The `RateLimit-Policy` value for `limits`. Written into one buffer: it
/// goes out with every checked turn, admitted or refused.
pub fn policy_value(limits: Limits) -> String {
    let mut value = String::with_capacity(64);
    for (i, w) in Window::ALL.into_iter().enumerate() {
        let sep = if i == 0 { "" } else { ", " };
        let _ = write!(value, "{sep}\"{}\";q={};w={}", w.name(), limits.limit(w), w.seconds());
    }
    value
}

/// The `RateLimit` value for per-window usage.
pub fn usage_value(usage: &[WindowUsage; 2]) -> String {
    let mut value = String::with_capacity(64);
    for (i, u) in usage.iter().enumerate() {
        let sep = if i == 0 { "" } else { ", " };
        let (name, remaining, t) = (u.window.name(), u.remaining, ceil_secs(u.reset_ms));
        let _ = write!(value, "{sep}\"{name}\";r={remaining};t={t}");
    }
    value
}

fn insert(headers: &mut HeaderMap, name: HeaderName, value: String) {
    if let Ok(value) = HeaderValue::try_from(value) {
        headers.insert(name, value);
    }
}

/// The headers of a response to a checked request: the policy always, the
/// usage only when it is known (a skipped check would make it a guess).
pub fn headers(limits: Limits, status: Option<&RateLimitStatus>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    insert(&mut headers, RATELIMIT_POLICY, policy_value(limits));
    if let Some(status) = status {
        insert(&mut headers, RATELIMIT, usage_value(&status.usage));
    }
    headers
}

/// The `429` for a denial, with its headers.
pub fn too_many_requests(denial: &Denial) -> (Problem, HeaderMap) {
    let retry_after = retry_after_secs(denial.retry_at_ms, denial.now_ms);
    let window = denial.binding;
    let usage = denial.usage.iter().find(|u| u.window == window).copied();
    let limit = denial.limits.limit(window);
    let retry_at = DateTime::from_timestamp_millis(denial.retry_at_ms)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_default();
    let problem = Problem::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!("Turn limit of {limit} per {} reached; retry in {retry_after} s.", window.name()),
    )
    .with("violated-policies", json!(denial.violated.iter().map(|w| w.name()).collect::<Vec<_>>()))
    .with("limit", json!(limit))
    .with("window", json!(window.name()))
    .with("window_seconds", json!(window.seconds()))
    .with("remaining", json!(usage.map_or(0, |u| u.remaining)))
    .with("retry_after_seconds", json!(retry_after))
    .with("retry_at", json!(retry_at))
    .with_type("https://iana.org/assignments/http-problem-types#quota-exceeded");
    let mut headers = headers(
        denial.limits,
        Some(&RateLimitStatus { limits: denial.limits, usage: denial.usage }),
    );
    headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    (problem, headers)
}

/// The `503` of `fallback = deny` while the limiter cannot decide.
pub fn limiter_unavailable() -> (Problem, HeaderMap) {
    let problem = Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "limiter_unavailable",
        "Turn limits cannot be checked right now; retry shortly.",
    )
    .with_type("https://iana.org/assignments/http-problem-types#temporary-reduced-capacity");
    let mut headers = HeaderMap::new();
    headers.insert(header::RETRY_AFTER, HeaderValue::from(1));
    (problem, headers)
}
