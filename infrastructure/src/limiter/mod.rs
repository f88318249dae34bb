//! The limiter actor and its backends (semantics: `docs/API.md`, "Rate
//! limiting"; keys and transport: README "Rate limiting").
//!
//! [`limiter`] makes the task that owns the Redis connection (or the
//! in-process logs when no Redis is configured) and returns the
//! domain's [`LimiterHandle`]; everything else talks to it through that.

mod actor;
mod exchange;
mod health;
pub mod keys;
pub mod log_format;
mod memory;
mod nodes;
mod redis_link;
pub mod topology;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use pantheon_domain::Clock;
use pantheon_domain::limiter::{
    Fallback, HandleOptions, LimitTable, LimiterHandle, LimiterState, Limits, Mode, limiter_channel,
};

pub use actor::LimiterActor;
pub use redis_link::{CHECK_SCRIPT, RedisLink};

use crate::metrics::LimiterMetrics;
use crate::settings::{self, Settings};

/// Waiting checks the mailbox holds; past this, callers get the fallback at
/// once (overload is not queued).
const MAILBOX: usize = 4096;

/// The limits of every tier, from the settings.
pub fn limit_table(settings: &settings::RateLimitSettings) -> LimitTable {
    let tiers: HashMap<String, Limits> = settings
        .tiers
        .iter()
        .map(|(name, t)| {
            let max_concurrent = t.max_concurrent_turns.unwrap_or(settings.max_concurrent_turns);
            let limits = Limits {
                per_minute: t.per_minute,
                per_hour: t.per_hour,
                max_concurrent,
                tokens_per_minute: t.tokens_per_minute.or(settings.tokens_per_minute),
                tokens_per_hour: t.tokens_per_hour.or(settings.tokens_per_hour),
            };
            (name.clone(), limits)
        })
        .collect();
    let default = Limits {
        per_minute: settings.per_minute,
        per_hour: settings.per_hour,
        max_concurrent: settings.max_concurrent_turns,
        tokens_per_minute: settings.tokens_per_minute,
        tokens_per_hour: settings.tokens_per_hour,
    };
    LimitTable::new(default, tiers)
}

fn fallback(setting: settings::Fallback) -> Fallback {
    match setting {
        settings::Fallback::Allow => Fallback::Allow,
        settings::Fallback::Local => Fallback::Local,
        settings::Fallback::Deny => Fallback::Deny,
    }
}

/// The actor's loop, for the composition root to run as a background task;
/// it ends when the last handle is dropped.
pub type LimiterTask = futures::future::BoxFuture<'static, ()>;

/// The limiter for the settings, and its actor's loop (not yet running);
/// `None` when rate limiting is disabled. Never fails: a Redis that is down
/// (or a URL it cannot use) starts the limiter degraded.
pub async fn limiter(
    settings: &Settings,
    clock: Arc<dyn Clock>,
) -> Option<(LimiterHandle, LimiterTask)> {
    measured_limiter(settings, clock, LimiterMetrics::default()).await
}

/// [`limiter`], its actor recording its Redis pipelines into `metrics`.
pub async fn measured_limiter(
    settings: &Settings,
    clock: Arc<dyn Clock>,
    metrics: LimiterMetrics,
) -> Option<(LimiterHandle, LimiterTask)> {
    if !settings.rate_limit.enabled {
        return None;
    }
    let timeout = Duration::from_millis(settings.redis.timeout_ms);
    let fallback = fallback(settings.rate_limit.fallback);
    let mode = match settings.rate_limit.mode {
        settings::LimitMode::Enforce => Mode::Enforce,
        settings::LimitMode::Shadow => Mode::Shadow,
    };
    // The handle waits a little longer than a Redis call may take, so the
    // actor's own timeout answers first and the handle's is only a backstop.
    let wait = timeout + (timeout / 2).max(Duration::from_millis(20));
    let (handle, mailbox, shared) =
        limiter_channel(MAILBOX, HandleOptions { fallback, mode, wait }, clock.clone());
    let redis = if !settings.redis.cluster_urls.is_empty() {
        match settings.redis.cluster_urls.iter().map(|url| connection_info(url)).collect() {
            Ok(seeds) => RedisLink::start_cluster(seeds, timeout, fallback, shared.clone()).await,
            Err(e) => {
                tracing::error!(error = %e, "redis.cluster_urls cannot be used; limiting in process");
                None
            }
        }
    } else if let Some(url) = &settings.redis.url {
        match connection_info(url).and_then(redis::Client::open) {
            Ok(client) => Some(RedisLink::start(client, timeout, fallback, shared.clone()).await),
            Err(e) => {
                tracing::error!(error = %e, "redis.url cannot be used; limiting in process");
                None
            }
        }
    } else {
        None
    };
    if redis.is_none() {
        shared.set_state(LimiterState::InProcess);
    }
    let lease_ttl = Duration::from_secs(settings.rate_limit.lease_ttl_secs);
    let actor =
        LimiterActor::new(mailbox, clock, fallback, shared, redis, lease_ttl).with_metrics(metrics);
    Some((handle, Box::pin(actor.run())))
}

/// The connection settings of `url`, with TCP connections that send at
/// once (`TCP_NODELAY`; redis-rs leaves Nagle's algorithm on): a check is a
/// small write, and with a pipeline already unanswered Nagle would hold the
/// next one back.
fn connection_info(url: &str) -> redis::RedisResult<redis::ConnectionInfo> {
    use redis::IntoConnectionInfo;
    Ok(url
        .into_connection_info()?
        .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true)))
}
