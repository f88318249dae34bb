//! `GET /api/v1/rate-limit`: the caller's usage per window, per token
//! window (settled: a finished turn's refund shows at once) and turns
//! running. A peek: it counts nothing and creates no key.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use pantheon_domain::limiter::{Policy, WindowUsage};
use serde_json::{Value, json};

use crate::extract::Authenticated;
use crate::openapi::problems::problems;
use crate::openapi::schemas::RateLimitBody;
use crate::rate_limit;
use crate::state::AppState;

problems!(RateLimitProblems: unauthenticated);

/// `GET /api/v1/rate-limit`
#[utoipa::path(
    get,
    path = "/api/v1/rate-limit",
    tag = "rate limiting",
    responses(
        (status = 200, description = "The caller's usage per window. Counts nothing, creates no \
            Redis key.", body = RateLimitBody),
        RateLimitProblems,
    ),
    security(("bearer" = [])),
)]
pub async fn rate_limit_status(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
) -> (HeaderMap, Json<Value>) {
    let place = state.turns.queue_place(&caller).await;
    let queue = place.map(|place| json!({ "place": place }));
    let Some(limiter) = state.turns.limiter_state() else {
        let body = json!({ "enabled": false, "windows": [], "provider_queue": queue });
        return (HeaderMap::new(), Json(body));
    };
    let status = state.turns.rate_limit_status(&caller).await;
    let window = |name: &str, u: &WindowUsage| {
        json!({
            "window": name,
            "limit": u.limit,
            "window_seconds": u.window.seconds(),
            "remaining": u.remaining,
            "reset_seconds": (u.reset_ms.max(0) + 999) / 1000,
        })
    };
    let windows = status
        .as_ref()
        .map(|s| s.usage.iter().map(|u| window(u.window.name(), u)).collect::<Vec<_>>());
    let tokens = status.as_ref().map(|s| {
        let budgets = s.tokens.iter().flatten();
        budgets.map(|u| window(Policy::tokens(u.window).name(), u)).collect::<Vec<_>>()
    });
    let concurrency = status.as_ref().map(
        |s| json!({ "limit": s.limits.max_concurrent, "active": s.active, "free": s.free_slots() }),
    );
    let body = json!({
        "enabled": true,
        "tier": caller.tier,
        "limiter": limiter.as_str(),
        "windows": windows,
        "tokens": tokens,
        "active": status.as_ref().map(|s| s.active),
        "concurrency": concurrency,
        "provider_queue": queue,
    });
    (rate_limit::admitted_headers(&state.turns, &caller, status.as_ref()), Json(body))
}
