//! The rate-limit headers of draft-ietf-httpapi-ratelimit-headers-10 and the
//! `429` / `503` / `422` problems of `docs/API.md` ("Rate limiting"). Values
//! are Structured Field lists:
//! `RateLimit-Policy: "minute";q=20;w=60, "hour";q=300;w=3600, "concurrency";q=4;qu="concurrency"`
//! and `RateLimit: "minute";r=19;t=0, "hour";r=299;t=0, "concurrency";r=3`;
//! under a token budget, `"tokens-minute";q=L;w=60;qu="tokens"` (and
//! `tokens-hour`) join them after the windows, their `r` in tokens.

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use pantheon_domain::limiter::{Denial, Limits, Policy, RateLimitStatus, Window, retry_after_secs};
use pantheon_domain::{Caller, TurnError, TurnService};
use serde_json::json;

use crate::problem::{Problem, QuotaMembers};

/// `RateLimit-Policy`.
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit`.
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Whole seconds, rounded up: a client that waits `t` is not early.
fn ceil_secs(ms: i64) -> i64 {
    (ms.max(0) + 999) / 1000
}

/// Appends `n` in decimal (`itoa`: these values go out with every checked
/// turn, and `write!`'s formatting machinery was most of their cost).
fn push_int(value: &mut String, n: impl itoa::Integer) {
    value.push_str(itoa::Buffer::new().format(n));
}

/// Appends one member, `"<name>"`, after a separator unless it is the first.
fn push_member(value: &mut String, name: &str) {
    if !value.is_empty() {
        value.push_str(", ");
    }
    value.push('"');
    value.push_str(name);
    value.push('"');
}

/// The `RateLimit-Policy` value for `limits`, written into one buffer.
pub fn policy_value(limits: Limits) -> String {
    let mut value = String::with_capacity(128);
    for w in Window::ALL {
        push_member(&mut value, w.name());
        value.push_str(";q=");
        push_int(&mut value, limits.limit(w));
        value.push_str(";w=");
        push_int(&mut value, w.seconds());
    }
    for w in Window::ALL {
        if let Some(limit) = limits.token_limit(w) {
            push_member(&mut value, Policy::tokens(w).name());
            value.push_str(";q=");
            push_int(&mut value, limit);
            value.push_str(";w=");
            push_int(&mut value, w.seconds());
            value.push_str(";qu=\"tokens\"");
        }
    }
    push_member(&mut value, Policy::Concurrency.name());
    value.push_str(";q=");
    push_int(&mut value, limits.max_concurrent);
    value.push_str(";qu=\"concurrency\"");
    value
}

/// The `RateLimit` value for a status: each window's remaining turns and
/// reset, then the free slots (no `t`: a slot frees when a turn ends).
pub fn usage_value(status: &RateLimitStatus) -> String {
    let mut value = String::with_capacity(128);
    let windows = status.usage.iter().map(|u| (u.window.name(), u));
    let tokens = status.tokens.iter().flatten().map(|u| (Policy::tokens(u.window).name(), u));
    for (name, u) in windows.chain(tokens) {
        push_member(&mut value, name);
        value.push_str(";r=");
        push_int(&mut value, u.remaining);
        value.push_str(";t=");
        push_int(&mut value, ceil_secs(u.reset_ms));
    }
    push_member(&mut value, Policy::Concurrency.name());
    value.push_str(";r=");
    push_int(&mut value, status.free_slots());
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

/// The headers of a request the limiter admitted (or peeked for) for
/// `caller`; none when limiting is off.
pub fn admitted_headers(
    turns: &TurnService,
    caller: &Caller,
    status: Option<&RateLimitStatus>,
) -> HeaderMap {
    match turns.limiter_state() {
        Some(_) => headers(caller.limits, status),
        None => HeaderMap::new(),
    }
}

/// The `429` for a denial, with its headers. The body describes the binding
/// policy: a violated window (its `retry_at` is exact) before concurrency.
pub fn too_many_requests(denial: &Denial) -> (Problem, HeaderMap) {
    let retry_after = retry_after_secs(denial.retry_at_ms, denial.now_ms);
    let status = denial.status();
    let binding = denial.binding;
    let token_window = binding.window().filter(|_| binding.is_tokens());
    let mut quota = QuotaMembers {
        limit: 0,
        window: binding.name(),
        window_seconds: binding.window().map(Window::seconds),
        remaining: 0,
        requested: None,
        violated: denial.violated.iter().map(|p| p.name()).collect(),
        retry_after_seconds: retry_after,
        retry_at_ms: denial.retry_at_ms,
        active: denial.violated.contains(&Policy::Concurrency).then_some(denial.active),
    };
    let detail = match (token_window, binding.window()) {
        (Some(window), _) => {
            let limit = denial.limits.token_limit(window).unwrap_or_default();
            let usage = status.tokens.iter().flatten().find(|u| u.window == window).copied();
            let requested = denial.requested.unwrap_or_default();
            quota.limit = u64::from(limit);
            quota.remaining = usage.map_or(0, |u| u.remaining);
            quota.requested = Some(requested);
            format!(
                "Token budget of {limit} per {} reached: this turn needs at least \
                 {requested}; retry in {retry_after} s.",
                window.name()
            )
        }
        (None, Some(window)) => {
            let limit = denial.limits.limit(window);
            let usage = denial.usage.iter().find(|u| u.window == window).copied();
            quota.limit = u64::from(limit);
            quota.remaining = usage.map_or(0, |u| u.remaining);
            format!(
                "Turn limit of {limit} per {} reached; retry in {retry_after} s.",
                window.name()
            )
        }
        (None, None) => {
            let cap = denial.limits.max_concurrent;
            quota.limit = u64::from(cap);
            quota.remaining = status.free_slots();
            format!("{cap} turns already running; retry when one ends.")
        }
    };
    let problem = Problem::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", detail)
        .with_quota(quota)
        .with_type("https://iana.org/assignments/http-problem-types#quota-exceeded");
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
            "The input is at least {input_tokens} tokens; with the least output a turn needs \
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use pantheon_domain::limiter::WindowUsage;

    use super::*;

    fn usage(window: Window, remaining: u64, reset_ms: i64) -> WindowUsage {
        WindowUsage { window, limit: 0, remaining, reset_ms }
    }

    #[test]
    fn the_headers_are_the_documented_structured_field_lists() {
        let mut limits = Limits::turns(20, 300, 4);
        assert_eq!(
            policy_value(limits),
            "\"minute\";q=20;w=60, \"hour\";q=300;w=3600, \"concurrency\";q=4;qu=\"concurrency\""
        );
        let mut status = RateLimitStatus {
            limits,
            usage: [usage(Window::Minute, 19, 0), usage(Window::Hour, 251, 41_001)],
            active: 1,
            tokens: [None, None],
        };
        assert_eq!(
            usage_value(&status),
            "\"minute\";r=19;t=0, \"hour\";r=251;t=42, \"concurrency\";r=3"
        );

        limits.tokens_per_minute = Some(1000);
        status.limits = limits;
        status.tokens = [Some(usage(Window::Minute, 22, 22_500)), None];
        assert_eq!(
            policy_value(limits),
            "\"minute\";q=20;w=60, \"hour\";q=300;w=3600, \"tokens-minute\";q=1000;w=60;qu=\"tokens\", \
             \"concurrency\";q=4;qu=\"concurrency\""
        );
        assert_eq!(
            usage_value(&status),
            "\"minute\";r=19;t=0, \"hour\";r=251;t=42, \"tokens-minute\";r=22;t=23, \"concurrency\";r=3"
        );
    }

    /// 2025-12-02T16:36:40.062Z
    const RETRY_AT_MS: i64 = 1_764_693_400_062;

    fn denial(limits: Limits, violated: Vec<Policy>, binding: Policy) -> Denial {
        Denial {
            limits,
            usage: [usage(Window::Minute, 0, 0), usage(Window::Hour, 7, 0)],
            violated,
            retry_at_ms: RETRY_AT_MS,
            binding,
            active: 4,
            tokens: [Some(usage(Window::Minute, 30, 0)), None],
            requested: Some(96),
            now_ms: RETRY_AT_MS - 1_500,
        }
    }

    fn body(denial: &Denial) -> serde_json::Value {
        let (problem, headers) = too_many_requests(denial);
        assert_eq!(headers[header::RETRY_AFTER], "2");
        problem.to_body(Some("req-1"))
    }

    #[test]
    fn a_429_names_its_binding_policy_with_exactly_its_members() {
        let mut limits = Limits::turns(20, 300, 4);
        limits.tokens_per_minute = Some(1000);
        let common = json!({
            "type": "https://iana.org/assignments/http-problem-types#quota-exceeded",
            "title": "Too Many Requests", "status": 429, "code": "rate_limited",
            "retry_after_seconds": 2, "retry_at": "2025-12-02T16:36:40.062Z",
            "request_id": "req-1",
        });
        let with = |members: serde_json::Value| {
            let mut all = common.clone();
            all.as_object_mut().unwrap().extend(members.as_object().unwrap().clone());
            all
        };

        let minute = denial(limits, vec![Policy::Minute], Policy::Minute);
        assert_eq!(
            body(&minute),
            with(json!({
                "detail": "Turn limit of 20 per minute reached; retry in 2 s.",
                "limit": 20, "window": "minute", "window_seconds": 60, "remaining": 0,
                "violated-policies": ["minute"],
            }))
        );

        let tokens = denial(limits, vec![Policy::TokensMinute], Policy::TokensMinute);
        assert_eq!(
            body(&tokens),
            with(json!({
                "detail": "Token budget of 1000 per minute reached: this turn needs at least 96; \
                           retry in 2 s.",
                "limit": 1000, "window": "tokens-minute", "window_seconds": 60, "remaining": 30,
                "requested": 96, "violated-policies": ["tokens-minute"],
            }))
        );

        let slots = denial(limits, vec![Policy::Minute, Policy::Concurrency], Policy::Concurrency);
        assert_eq!(
            body(&slots),
            with(json!({
                "detail": "4 turns already running; retry when one ends.",
                "limit": 4, "window": "concurrency", "remaining": 0,
                "violated-policies": ["minute", "concurrency"], "active": 4,
            }))
        );
    }
}
