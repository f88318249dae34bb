//! Applying migrations under a lock, so instances (and the CLI) started
//! together on one database apply each migration once: the first takes the
//! lock and migrates, the others wait, then find nothing pending.
//!
//! PostgreSQL: a session-level `pg_advisory_lock` on a fixed key, taken on
//! a pool of exactly one connection that never expires or idles out, so the
//! lock and every migration statement share one session (sea-orm-migration
//! runs each PostgreSQL migration in its own transaction on that
//! connection). Should the connection break, its statements fail and the
//! server releases the lock with the session.
//!
//! SQLite: an exclusive `flock` on `<database file>.migrate-lock` beside the
//! database (WAL mode already needs that directory writable). Not the
//! database file itself: a process that closes any descriptor of it drops
//! SQLite's own POSIX locks. The operating system releases the lock when
//! the process dies. An in-memory database is private to its process and
//! needs none.
//!
//! The wait is bounded: an instance that cannot get the lock in time stops
//! with an error naming it instead of hanging its deploy.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

use pantheon_infrastructure::db;
use pantheon_infrastructure::settings::DatabaseSettings;
use sea_orm_migration::MigratorTrait;
use sea_orm_migration::sea_orm::sqlx::sqlite::SqliteConnectOptions;
use sea_orm_migration::sea_orm::{
    ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr, Statement,
};

use crate::Migrator;

/// How long to wait for another instance's migrations.
pub const LOCK_WAIT: Duration = Duration::from_secs(300);

/// The advisory lock key: "pantheon" in ASCII.
const PG_LOCK_KEY: i64 = 0x7061_6e74_6865_6f6e;

const POLL: Duration = Duration::from_millis(100);

/// A connection holding the migration lock; whatever runs on
/// [`Self::connection`] runs under it.
#[derive(Debug)]
pub struct MigrationLock {
    conn: DatabaseConnection,
    /// The SQLite lock file, locked while open.
    _file: Option<File>,
}

impl MigrationLock {
    /// Connects and waits (at most `wait`) for the lock.
    ///
    /// # Errors
    /// [`DbErr`] when the database cannot be reached or the lock not taken in time.
    pub async fn acquire(settings: &DatabaseSettings, wait: Duration) -> Result<Self, DbErr> {
        let deadline = Instant::now() + wait;
        let timed_out =
            || DbErr::Custom(format!("another migration held the lock for over {wait:?}"));
        // SQLite: the file lock first, so even creating the database file
        // and switching it to WAL happen under it.
        let file = match sqlite_lock_path(&settings.url)? {
            Some(path) => {
                let file = OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&path)
                    .map_err(|e| DbErr::Custom(format!("{}: {e}", path.display())))?;
                loop {
                    match file.try_lock() {
                        Ok(()) => break,
                        Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                            tokio::time::sleep(POLL).await;
                        }
                        Err(TryLockError::WouldBlock) => return Err(timed_out()),
                        Err(TryLockError::Error(e)) => {
                            return Err(DbErr::Custom(format!("{}: {e}", path.display())));
                        }
                    }
                }
                Some(file)
            }
            None => None,
        };
        let mut options = db::connect_options(settings);
        options.max_connections(1).min_connections(1).idle_timeout(None).max_lifetime(None);
        let conn = Database::connect(options).await?;
        if conn.get_database_backend() == DbBackend::Postgres {
            let try_lock = Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT pg_try_advisory_lock($1) AS locked",
                [PG_LOCK_KEY.into()],
            );
            loop {
                let row = conn.query_one_raw(try_lock.clone()).await?;
                if row.map(|r| r.try_get::<bool>("", "locked")).transpose()? == Some(true) {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(timed_out());
                }
                tokio::time::sleep(POLL).await;
            }
        }
        Ok(Self { conn, _file: file })
    }

    /// The one connection that holds the lock.
    pub fn connection(&self) -> &DatabaseConnection {
        &self.conn
    }

    /// Releases the lock and closes the connection.
    ///
    /// # Errors
    /// [`DbErr`] when the lock had been lost with its session.
    pub async fn release(self) -> Result<(), DbErr> {
        if self.conn.get_database_backend() == DbBackend::Postgres {
            let unlock = Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT pg_advisory_unlock($1) AS unlocked",
                [PG_LOCK_KEY.into()],
            );
            let row = self.conn.query_one_raw(unlock).await?;
            if row.map(|r| r.try_get::<bool>("", "unlocked")).transpose()? != Some(true) {
                return Err(DbErr::Custom("the migration lock was lost mid-way".into()));
            }
        }
        self.conn.close().await
    }
}

/// Applies pending migrations under the lock: what the server does at start.
///
/// # Errors
/// [`DbErr`] when the lock cannot be taken or a migration fails.
pub async fn up(settings: &DatabaseSettings) -> Result<(), DbErr> {
    let lock = MigrationLock::acquire(settings, LOCK_WAIT).await?;
    Migrator::up(lock.connection(), None).await?;
    lock.release().await
}

/// `<file>.migrate-lock` for a file-backed SQLite URL.
fn sqlite_lock_path(url: &str) -> Result<Option<PathBuf>, DbErr> {
    if !db::is_sqlite(url) {
        return Ok(None);
    }
    let options = SqliteConnectOptions::from_str(url).map_err(|e| DbErr::Custom(e.to_string()))?;
    let file = options.get_filename();
    if url.contains(":memory:") || url.contains("mode=memory") || file.as_os_str().is_empty() {
        return Ok(None);
    }
    let mut name = file.as_os_str().to_owned();
    name.push(".migrate-lock");
    Ok(Some(PathBuf::from(name)))
}
