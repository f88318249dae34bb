//! The rate-limit headers of draft-ietf-httpapi-ratelimit-headers-10 and the
//! `429` / `503` / `422` problems of `docs/API.md` ("Rate limiting"). Values
//! are Structured Field lists:
//! `RateLimit-Policy: "minute";q=20;w=60, "hour";q=300;w=3600, "concurrency";q=4;qu="concurrency"`
//! and `RateLimit: "minute";r=19;t=0, "hour";r=299;t=0, "concurrency";r=3`;
//! under a token budget, `"tokens-minute";q=L;w=60;qu="tokens"` (and
//! `tokens-hour`) join them after the windows, their `r` in tokens.

use std::fmt::Write as _;

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use chrono::{DateTime, SecondsFormat};
use pantheon_domain::TurnError;
use pantheon_domain::limiter::{Denial, Limits, Policy, RateLimitStatus, Window, retry_after_secs};
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
    for w in Window::ALL {
        if let Some(limit) = limits.token_limit(w) {
            let name = Policy::tokens(w).name();
            let _ = write!(value, ", \"{name}\";q={limit};w={};qu=\"tokens\"", w.seconds());
        }
    }
    let _ = write!(value, ", \"concurrency\";q={};qu=\"concurrency\"", limits.max_concurrent);
    value
}

/// The `RateLimit` value for a status: each window's remaining turns and
/// reset, then the free slots (no `t`: a slot frees when a turn ends).
pub fn usage_value(status: &RateLimitStatus) -> String {
    let mut value = String::with_capacity(80);
    for (i, u) in status.usage.iter().enumerate() {
        let sep = if i == 0 { "" } else { ", " };
        let (name, remaining, t) = (u.window.name(), u.remaining, ceil_secs(u.reset_ms));
        let _ = write!(value, "{sep}\"{name}\";r={remaining};t={t}");
    }
    for u in status.tokens.iter().flatten() {
        let (name, t) = (Policy::tokens(u.window).name(), ceil_secs(u.reset_ms));
        let _ = write!(value, ", \"{name}\";r={};t={t}", u.remaining);
    }
    let _ = write!(value, ", \"concurrency\";r={}", status.free_slots());
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
        insert(&mut headers, RATELIMIT, usage_value(status));
    }
    headers
}

/// The `429` for a denial, with its headers. The body describes the binding
/// policy: a violated window (its `retry_at` is exact) before concurrency.
pub fn too_many_requests(denial: &Denial) -> (Problem, HeaderMap) {
    let retry_after = retry_after_secs(denial.retry_at_ms, denial.now_ms);
    let retry_at = DateTime::from_timestamp_millis(denial.retry_at_ms)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_default();
    let violated: Vec<&str> = denial.violated.iter().map(|p| p.name()).collect();
    let status = denial.status();
    let binding = denial.binding;
    let token_window = binding.window().filter(|_| binding.is_tokens());
    let problem = match (token_window, binding.window()) {
        (Some(window), _) => {
            let limit = denial.limits.token_limit(window).unwrap_or_default();
            let usage = status.tokens.iter().flatten().find(|u| u.window == window).copied();
            let requested = denial.requested.unwrap_or_default();
            Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "Token budget of {limit} per {} reached: this turn needs at least \
                     {requested}; retry in {retry_after} s.",
                    window.name()
                ),
            )
            .with("limit", json!(limit))
            .with("window", json!(binding.name()))
            .with("window_seconds", json!(window.seconds()))
            .with("remaining", json!(usage.map_or(0, |u| u.remaining)))
            .with("requested", json!(requested))
        }
        (None, Some(window)) => {
            let limit = denial.limits.limit(window);
            let usage = denial.usage.iter().find(|u| u.window == window).copied();
            Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "Turn limit of {limit} per {} reached; retry in {retry_after} s.",
                    window.name()
                ),
            )
            .with("limit", json!(limit))
            .with("window", json!(window.name()))
            .with("window_seconds", json!(window.seconds()))
            .with("remaining", json!(usage.map_or(0, |u| u.remaining)))
        }
        (None, None) => {
            let cap = denial.limits.max_concurrent;
            Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("{cap} turns already running; retry when one ends."),
            )
            .with("limit", json!(cap))
            .with("window", json!(Policy::Concurrency.name()))
            .with("remaining", json!(status.free_slots()))
        }
    };
    let mut problem = problem
        .with("violated-policies", json!(violated))
        .with("retry_after_seconds", json!(retry_after))
        .with("retry_at", json!(retry_at))
        .with_type("https://iana.org/assignments/http-problem-types#quota-exceeded");
    if denial.violated.contains(&Policy::Concurrency) {
        problem = problem.with("active", json!(denial.active));
    }
    let mut headers = headers(denial.limits, Some(&status));
    headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    (problem, headers)
}

/// The `422` for an input that can never fit a token budget (a `429` would
/// be retried forever).
pub fn input_exceeds_token_budget(error: &TurnError) -> Problem {
    let TurnError::InputExceedsTokenBudget { input_tokens, requested, limit, policy } = error
    else {
        return Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "input_exceeds_token_budget", "");
    };
    Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "input_exceeds_token_budget",
        format!(
            "The input is {input_tokens} tokens; with the least output a turn needs \
             ({requested} in all) it can never fit the token budget of {limit} per {}.",
            policy.window().map_or("window", Window::name)
        ),
    )
    .with("input_tokens", json!(input_tokens))
    .with("requested", json!(requested))
    .with("limit", json!(limit))
    .with("window", json!(policy.name()))
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
