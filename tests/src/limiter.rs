//! Limiter tests at the port: actors over the shared test Redis, the shared
//! test cluster (or the in-process backend), each with a clock the test
//! moves.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use std::time::Duration;

use pantheon_domain::ManualClock;
use pantheon_domain::limiter::{
    Fallback, HandleOptions, LimiterHandle, LimiterShared, Mode, limiter_channel,
};
use pantheon_infrastructure::Settings;
use pantheon_infrastructure::limiter::{LimiterActor, RedisLink, limiter};
use redis::IntoConnectionInfo;

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

/// A limiter on `store` and an in-process one on one `clock`, for differential
/// tests: the Redis leases outlive any run, so only releases free slots, on
/// both sides.
pub async fn twin_limiters(
    store: Store,
    clock: Arc<ManualClock>,
) -> (LimiterHandle, LimiterHandle) {
    let mut settings = store.settings();
    settings.rate_limit.lease_ttl_secs = 100_000_000;
    let redis = spawn_limiter(&settings, clock.clone()).await.expect("limiting is enabled");
    (redis, memory_limiter(clock).await)
}

/// A limiter on the cluster at `urls`, built by hand: the handle answers
/// by `fallback` after `wait`, Redis calls are bounded by `timeout`. The
/// actor is returned unspawned, so a test can fill its mailbox first.
pub async fn cluster_limiter(
    urls: &[String],
    fallback: Fallback,
    timeout: Duration,
    wait: Duration,
) -> (LimiterHandle, LimiterActor, Arc<LimiterShared>) {
    let clock = Arc::new(ManualClock::at(crate::limiter::T0));
    let options = HandleOptions { fallback, mode: Mode::Enforce, wait };
    let (handle, mailbox, shared) = limiter_channel(4096, options, clock.clone());
    let seeds = urls.iter().map(|u| u.as_str().into_connection_info().unwrap()).collect();
    let link = RedisLink::start_cluster(seeds, timeout, fallback, shared.clone()).await.unwrap();
    let lease_ttl = Duration::from_secs(Settings::default().rate_limit.lease_ttl_secs);
    let actor = LimiterActor::new(mailbox, clock, fallback, shared.clone(), Some(link), lease_ttl);
    (handle, actor, shared)
}

/// A few seconds past an hour boundary in 2026: the stopped clock of the
/// hand-built limiters, so no window rolls over while a test counts.
pub const T0: i64 = 493_000 * 3_600_000 + 5_000;

/// A synchronous Redis connection for looking behind the limiter.
pub fn redis_connection() -> redis::Connection {
    redis::Client::open(redis_url()).unwrap().get_connection().unwrap()
}

/// Where the limiter keeps its counters: the suite's single Redis or its
/// Redis Cluster. The limiter's tests run on both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// `redis.url`: the shared Redis.
    Single,
    /// `redis.cluster_urls`: the shared cluster.
    Cluster,
}

impl Store {
    /// Points `settings` at this store.
    pub fn configure(self, settings: &mut Settings) {
        match self {
            Self::Single => {
                settings.redis.url = Some(redis_url());
                settings.redis.cluster_urls.clear();
            }
            Self::Cluster => {
                settings.redis.url = None;
                settings.redis.cluster_urls = crate::redis_cluster::shared_cluster_urls();
            }
        }
    }

    /// Settings for a limiter on this store, with the generous timeout of
    /// [`redis_settings`].
    pub fn settings(self) -> Settings {
        let mut settings = redis_settings();
        self.configure(&mut settings);
        settings
    }

    /// A limiter actor on this store with `clock`.
    pub async fn limiter(self, clock: Arc<ManualClock>) -> LimiterHandle {
        spawn_limiter(&self.settings(), clock).await.expect("limiting is enabled")
    }

    /// A synchronous connection for looking behind the limiter (on the
    /// cluster, redis-rs's own cluster connection: it routes each command
    /// to the node serving its key, `KEYS` to every master).
    pub fn connection(self) -> StoreConnection {
        match self {
            Self::Single => StoreConnection::Single(redis_connection()),
            Self::Cluster => {
                let urls = crate::redis_cluster::shared_cluster_urls();
                let client = redis::cluster::ClusterClient::new(urls).unwrap();
                StoreConnection::Cluster(Box::new(client.get_connection().unwrap()))
            }
        }
    }
}

/// A connection to a [`Store`].
#[allow(missing_debug_implementations)]
pub enum StoreConnection {
    /// To the single Redis.
    Single(redis::Connection),
    /// To the cluster.
    Cluster(Box<redis::cluster::ClusterConnection>),
}

impl redis::ConnectionLike for StoreConnection {
    fn req_packed_command(&mut self, cmd: &[u8]) -> redis::RedisResult<redis::Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
    ) -> redis::RedisResult<Vec<redis::Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(cmd, offset, count),
            Self::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn req_command(&mut self, cmd: &redis::Cmd) -> redis::RedisResult<redis::Value> {
        match self {
            Self::Single(c) => c.req_command(cmd),
            Self::Cluster(c) => c.req_command(cmd),
        }
    }

    fn get_db(&self) -> i64 {
        0
    }

    fn check_connection(&mut self) -> bool {
        match self {
            Self::Single(c) => c.check_connection(),
            Self::Cluster(c) => c.check_connection(),
        }
    }

    fn is_open(&self) -> bool {
        match self {
            Self::Single(c) => c.is_open(),
            Self::Cluster(c) => c.is_open(),
        }
    }
}

/// The Redis server's clock in ms (`TIME`): what lease expiry is measured
/// on, whatever the instances' clocks say.
pub fn redis_time_ms(conn: &mut impl redis::ConnectionLike) -> i64 {
    let (seconds, micros): (i64, i64) = redis::cmd("TIME").query(conn).unwrap();
    seconds * 1_000 + micros / 1_000
}

/// `user`'s log as Redis holds it (`None`: no log), through any connection
/// (a cluster connection routes by the key's slot; a replica's connection
/// needs `READONLY` first).
pub fn stored_log(
    connection: &mut impl redis::ConnectionLike,
    user: &pantheon_domain::UserId,
) -> Option<pantheon_infrastructure::limiter::log_format::StoredLog> {
    let key = pantheon_infrastructure::limiter::keys::log_key(user);
    let elements: Vec<Vec<u8>> =
        redis::cmd("LRANGE").arg(key).arg(0).arg(-1).query(connection).unwrap();
    pantheon_infrastructure::limiter::log_format::decode(&elements).unwrap()
}

/// `user`'s log as the next check decides on it: the refunds that releases
/// marked (see `check.lua`) applied first, by the script's peek, which
/// writes only those.
pub fn settled_log(
    connection: &mut impl redis::ConnectionLike,
    user: &pantheon_domain::UserId,
) -> Option<pantheon_infrastructure::limiter::log_format::StoredLog> {
    use pantheon_infrastructure::limiter::keys::{active_key, log_key};
    let script = redis::Script::new(pantheon_infrastructure::limiter::CHECK_SCRIPT);
    let mut peek = script.key(active_key(user));
    peek.key(log_key(user)).arg("peek").arg(0).arg(-1).arg(-1).arg(-1).arg(-1);
    let _: redis::Value = peek.invoke(connection).unwrap();
    stored_log(connection, user)
}

/// Turns `user`'s log holds (all of them inside the hour of its clock).
pub fn logged_turns(
    connection: &mut impl redis::ConnectionLike,
    user: &pantheon_domain::UserId,
) -> u64 {
    stored_log(connection, user).map_or(0, |log| log.entries.len() as u64)
}

/// Tokens `user`'s log holds, refunds marked applied: its entries'
/// amounts, summed.
pub fn logged_tokens(
    connection: &mut impl redis::ConnectionLike,
    user: &pantheon_domain::UserId,
) -> u64 {
    settled_log(connection, user).map_or(0, |log| log.entries.iter().map(|e| e.tokens).sum())
}

/// A connection to the Redis on `port` of this machine.
pub fn connection_at(port: u16) -> redis::Connection {
    redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap().get_connection().unwrap()
}
