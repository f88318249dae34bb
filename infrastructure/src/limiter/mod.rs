//! The limiter actor and its backends (semantics: `docs/API.md`, "Rate
//! limiting"; keys and transport: README "Rate limiting").
//!
//! [`limiter`] makes the task that owns the Redis connection (or the
//! in-process logs when no Redis is configured) and returns the
//! domain's [`LimiterHandle`]; everything else talks to it through that.
//!
//! # Where things are
//!
//! Domain side (`pantheon_domain::limiter`): the exact windows (`log.rs`, a
//! user's `UsageLog` and the decision on it as a `Tally`, which `check.lua`
//! follows step for step), the `Verdict` a tally stands for
//! (`decision.rs`), the vocabulary (`limits.rs`), the protocol and the
//! `LimiterHandle`. The handle answers a user the over-limit cache
//! (`cache.rs`, filled by the actor) knows is refused on the caller's own
//! thread; without Redis it decides on the caller's thread too, through the
//! `LocalLimiter` port (here `memory.rs`: logs sharded by user behind short
//! locks); with Redis it asks this task through a bounded mailbox, a full
//! mailbox or a late reply answered by the fallback. A `Lease` (`lease.rs`)
//! is a running turn's slot: dropped, a Redis one queues its release (and
//! refund) for this task, an in-process one gives them back at once.
//!
//! Here: the loop and the local answers (`actor.rs`), the per-node
//! pipelines (`actor/pipelines.rs`), the health jobs (`actor/probes.rs`),
//! the leases this instance holds (`actor/leases.rs`: renewed every
//! `lease_ttl / 3`, one script call per user; releases Redis has not
//! answered kept until their node answers), the Redis half's state and
//! commands (`redis_link.rs`), the script (`check.lua`) and its replies
//! (`reply.rs`), the deployment (`nodes.rs`: a connection per node and the
//! slot map of `topology.rs`; a
//! single Redis is every slot on one node, a cluster's map is read with
//! `CLUSTER SLOTS`), one exchange with one node (`exchange.rs`: a pipeline,
//! then `NOSCRIPT`/`MOVED`/`ASK`/`TRYAGAIN` handled command by command, as
//! each means the command did not run), health per node (`health.rs`).
//!
//! Each loop turn drains the mailbox, takes the queued releases (put ahead
//! of the checks: a `ZREM`, or with refunds a `ZADD XX CH` of their marks),
//! answers locally what it can (cache → in-process backend → fallback for a
//! user whose node is degraded), and sends the rest as one pipeline per
//! node (up to 16 in flight per node, more waiting in its backlog;
//! renewals and releases never wait for that cap). A check whose caller
//! stopped waiting is dropped, never counted; one that failed after it was
//! written (it may run later) has its lease released like a dropped one.
//! Every pipelined item is one user's (hash tag `{user}`), so redis-rs's
//! `ClusterConnection` is not used: it retries a pipeline as a whole, which
//! would re-run checks that had counted.
//!
//! # States, per node
//!
//! ```text
//!   3 consecutive failed calls / down at boot
//! healthy ─────────────────────────────────────► degraded
//!    ▲                                              │ probe due (100 ms · 2^n ≤ 500 ms, ±50 %)
//!    └──────── reconnect + SCRIPT LOAD ok ◄──── probing ──fail──► degraded
//!                                                   └── serves no slot any more ──► retired
//! ```
//!
//! On a cluster each probe reads `CLUSTER SLOTS` first: a master whose
//! replica took over is retired and its users go to the new master; a
//! `MOVED` also makes the actor read the layout again. `/readyz` says
//! `degraded` while any node is. No Redis configured: the in-process backend
//! only (`in_process`). `rate_limit.enabled = false`: no actor at all.

mod actor;
mod exchange;
mod health;
pub mod keys;
pub mod log_format;
mod memory;
mod nodes;
mod redis_link;
mod reply;
pub mod topology;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use pantheon_domain::limiter::{
    HandleOptions, LimitTable, LimiterHandle, LimiterState, Limits, limiter_channel,
};
use pantheon_domain::observe::Unobserved;
use pantheon_domain::{Clock, LimiterObserver};

pub use actor::LimiterActor;
pub use redis_link::{CHECK_SCRIPT, RedisLink, TokenRefund};
pub use reply::parse_tally;

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
    measured_limiter(settings, clock, Arc::new(Unobserved)).await
}

/// [`limiter`], its actor reporting its Redis pipelines to `observer`.
pub async fn measured_limiter(
    settings: &Settings,
    clock: Arc<dyn Clock>,
    observer: Arc<dyn LimiterObserver>,
) -> Option<(LimiterHandle, LimiterTask)> {
    if !settings.rate_limit.enabled {
        return None;
    }
    let timeout = Duration::from_millis(settings.redis.timeout_ms);
    let (fallback, mode) = (settings.rate_limit.fallback, settings.rate_limit.mode);
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
    let actor = LimiterActor::new(mailbox, clock, fallback, shared, redis, lease_ttl)
        .with_observer(observer);
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
