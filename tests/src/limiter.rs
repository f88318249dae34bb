//! Limiter tests at the port: actors over the shared test Redis (or the
//! in-process backend), each with a clock the test moves.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use pantheon_domain::ManualClock;
use pantheon_domain::limiter::LimiterHandle;
use pantheon_infrastructure::Settings;
use pantheon_infrastructure::limiter::limiter;

/// The Redis the suite shares (`PANTHEON_TEST_REDIS_URL`, default local).
pub fn redis_url() -> String {
    std::env::var("PANTHEON_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A user id no other test uses.
pub fn unique_user(prefix: &str) -> pantheon_domain::UserId {
    pantheon_domain::UserId::parse(&format!("{prefix}-{}", uuid::Uuid::new_v4().simple())).unwrap()
}

/// Settings for a limiter on the shared Redis. The timeout is generous:
/// these tests check decisions, and a check answered by the fallback under
/// a loaded machine would make them flaky.
pub fn redis_settings() -> Settings {
    let mut settings = Settings::default();
    settings.redis.url = Some(redis_url());
    settings.redis.timeout_ms = 2_000;
    settings
}

/// A limiter for `settings`, its actor spawned on the test's runtime (the
/// server's composition root tracks it instead).
pub async fn spawn_limiter(settings: &Settings, clock: Arc<ManualClock>) -> Option<LimiterHandle> {
    let (handle, actor) = limiter(settings, clock).await?;
    tokio::spawn(actor);
    Some(handle)
}

/// A limiter actor on the shared Redis with `clock`.
pub async fn redis_limiter(clock: Arc<ManualClock>) -> LimiterHandle {
    spawn_limiter(&redis_settings(), clock).await.expect("limiting is enabled")
}

/// An in-process limiter actor with `clock`.
pub async fn memory_limiter(clock: Arc<ManualClock>) -> LimiterHandle {
    spawn_limiter(&Settings::default(), clock).await.expect("limiting is enabled")
}

/// A Redis and an in-process limiter on one `clock`, for differential
/// tests: the Redis leases outlive any run, so only releases free slots, on
/// both sides.
pub async fn twin_limiters(clock: Arc<ManualClock>) -> (LimiterHandle, LimiterHandle) {
    let mut settings = redis_settings();
    settings.rate_limit.lease_ttl_secs = 100_000_000;
    let redis = spawn_limiter(&settings, clock.clone()).await.expect("limiting is enabled");
    (redis, memory_limiter(clock).await)
}

/// A synchronous Redis connection for looking behind the limiter.
pub fn redis_connection() -> redis::Connection {
    redis::Client::open(redis_url()).unwrap().get_connection().unwrap()
}
