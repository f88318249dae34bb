//! Opening the pool with the options our workload needs.

use std::time::Duration;

use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{ConnectOptions, Database, DatabaseConnection, DbErr};

use crate::settings::DatabaseSettings;

/// Whether a database URL names SQLite.
pub fn is_sqlite(url: &str) -> bool {
    url.starts_with("sqlite:")
}

/// Connects to the configured database.
///
/// Pool choices, each measured or forced by a failure mode:
/// - no ping on every checkout (`test_before_acquire` is sqlx's default and
///   costs a round trip per statement group); only connections idle for 30 s
///   are pinged, which is when a server or proxy may have dropped them;
/// - SQLite in WAL mode with a busy timeout, so concurrent turns queue for
///   the write lock instead of failing with `database is locked`.
///
/// # Errors
/// [`DbErr`] when the database cannot be reached.
pub async fn connect(settings: &DatabaseSettings) -> Result<DatabaseConnection, DbErr> {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get() as u32);
    let sqlite = is_sqlite(&settings.url);
    let default_size = if sqlite { 4 } else { (cores * 4).max(8) };
    let mut options = ConnectOptions::new(settings.url.clone());
    options
        .max_connections(settings.max_connections.unwrap_or(default_size))
        .min_connections(1)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(10))
        .test_before_acquire_if_idle_for(Duration::from_secs(30))
        .sqlx_logging(false);
    if sqlite {
        options.map_sqlx_sqlite_opts(|o| {
            o.journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true)
        });
    }
    Database::connect(options).await
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
}
