//! Opening the pool with the options our workload needs.

use std::time::Duration;

use sea_orm::sqlx::postgres::PgSslMode;
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{ConnectOptions, Database, DatabaseConnection, DbErr};

use crate::settings::DatabaseSettings;

/// Whether a database URL names SQLite.
pub fn is_sqlite(url: &str) -> bool {
    url.starts_with("sqlite:")
}

/// The pool's size: `database.max_connections`, else 4 on SQLite (one
/// writer at a time) and 4 × cores (at least 8) on PostgreSQL. The server's
/// connection cap leaves this many open files for the pool.
pub fn pool_size(settings: &DatabaseSettings) -> u32 {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get() as u32);
    let default_size = if is_sqlite(&settings.url) { 4 } else { (cores * 4).max(8) };
    settings.max_connections.unwrap_or(default_size)
}

/// Connects to the configured database.
///
/// Pool choices, each measured or forced by a failure mode:
/// - no ping on every checkout (`test_before_acquire` is sqlx's default and
///   costs a round trip per statement group); only connections idle for 30 s
///   are pinged, which is when a server or proxy may have dropped them;
/// - SQLite in WAL mode with a busy timeout, so concurrent turns queue for
///   the write lock instead of failing with `database is locked`;
/// - PostgreSQL on a loopback host without TLS unless the URL (or
///   `PGSSLMODE`) names an `sslmode`: the default, `prefer`, encrypts
///   opportunistically and verifies nothing, so on loopback it protects
///   nothing, while its rustls (ours) and OpenSSL (the server's) cost CPU
///   on both sides: without it, JSON turns ran 12 % faster there
///   (`bench/RESULTS.md`). A mode the URL or `PGSSLMODE` names, `prefer`
///   included, is always kept;
/// - PostgreSQL plans every execution of a prepared statement with its
///   parameters (`plan_cache_mode = force_custom_plan`): the batched turn
///   writes join a `jsonb` batch to `turns`, and a generic plan cached while
///   the table was small (a hash join over a sequential scan) was kept for
///   every later batch as the table grew: scenario A fell from 2,054 to
///   1,336 turns/s. Planning these statements costs far less than one
///   scan.
///
/// # Errors
/// [`DbErr`] when the database cannot be reached.
pub async fn connect(settings: &DatabaseSettings) -> Result<DatabaseConnection, DbErr> {
    Database::connect(connect_options(settings)).await
}

/// The options [`connect`] opens the pool with, for a caller that needs to
/// change some (the migration lock's single connection).
pub fn connect_options(settings: &DatabaseSettings) -> ConnectOptions {
    let sqlite = is_sqlite(&settings.url);
    // While the database is down every request waits this long for a
    // connection, then answers `503`: short, so clients hear of the outage
    // and retry, instead of piling up behind the pool.
    let acquire_timeout = Duration::from_millis(settings.acquire_timeout_ms);
    let mut options = ConnectOptions::new(settings.url.clone());
    options
        .max_connections(pool_size(settings))
        .min_connections(1)
        .connect_timeout(acquire_timeout)
        .acquire_timeout(acquire_timeout)
        .test_before_acquire_if_idle_for(Duration::from_secs(30))
        .sqlx_logging(false);
    if sqlite {
        options.map_sqlx_sqlite_opts(|o| {
            o.journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true)
        });
    } else {
        let keep_ssl_mode =
            names_ssl_mode(&settings.url) || std::env::var_os("PGSSLMODE").is_some();
        options.map_sqlx_postgres_opts(move |o| {
            let o = o.options([("plan_cache_mode", "force_custom_plan")]);
            if !keep_ssl_mode && is_loopback_host(o.get_host()) {
                o.ssl_mode(PgSslMode::Disable)
            } else {
                o
            }
        });
    }
    options
}

/// Whether a PostgreSQL URL sets the TLS mode itself (`sslmode` or sqlx's
/// `ssl-mode` query parameter).
fn names_ssl_mode(url: &str) -> bool {
    url.split_once('?').is_some_and(|(_, query)| {
        query
            .split('&')
            .filter_map(|pair| pair.split('=').next())
            .any(|key| key.eq_ignore_ascii_case("sslmode") || key.eq_ignore_ascii_case("ssl-mode"))
    })
}

/// `localhost`, `127.0.0.0/8` or `::1`.
fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Answers readiness: can the database be reached right now?
#[derive(Debug, Clone)]
pub struct DatabaseProbe {
    db: DatabaseConnection,
}

impl DatabaseProbe {
    /// A probe over the pool.
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    /// Whether a ping succeeds within a second: a readiness check must answer
    /// promptly even when the database hangs.
    pub async fn is_reachable(&self) -> bool {
        matches!(tokio::time::timeout(Duration::from_secs(1), self.db.ping()).await, Ok(Ok(())))
    }

    /// The pool's open connections as `(idle, in_use)`, for the metrics.
    pub fn pool_connections(&self) -> (u64, u64) {
        let (size, idle) = match self.db.get_database_backend() {
            sea_orm::DbBackend::Postgres => {
                let pool = self.db.get_postgres_connection_pool();
                (pool.size(), pool.num_idle())
            }
            sea_orm::DbBackend::Sqlite => {
                let pool = self.db.get_sqlite_connection_pool();
                (pool.size(), pool.num_idle())
            }
            _ => (0, 0),
        };
        let idle = u64::try_from(idle).unwrap_or(u64::MAX);
        (idle, u64::from(size).saturating_sub(idle))
    }
}

#[cfg(test)]
mod tests {
    use super::{is_loopback_host, names_ssl_mode};

    #[test]
    fn an_ssl_mode_in_the_url_is_seen() {
        assert!(names_ssl_mode("postgres://u@127.0.0.1/db?sslmode=require"));
        assert!(names_ssl_mode("postgres://u@localhost/db?application_name=x&ssl-mode=prefer"));
        assert!(names_ssl_mode("postgres://u@localhost/db?SSLMODE=verify-full"));
        assert!(!names_ssl_mode("postgres://u@127.0.0.1:5432/db"));
        assert!(!names_ssl_mode("postgres://u@127.0.0.1/db?application_name=sslmode"));
    }

    #[test]
    fn loopback_hosts() {
        for host in ["127.0.0.1", "127.0.1.7", "localhost", "LocalHost", "::1", "[::1]"] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in ["10.0.0.5", "db.internal", "/var/run/postgresql", "::ffff:10.0.0.1"] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }
}
