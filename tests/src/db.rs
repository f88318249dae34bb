//! Test databases: a uniquely named PostgreSQL database or SQLite file per
//! test, so tests never see each other's rows.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement};

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// PostgreSQL (`PANTHEON_TEST_PG_URL`, default the local server).
    Postgres,
    /// A SQLite file in the temp directory.
    Sqlite,
}

/// The server that test databases are created on.
fn admin_url() -> String {
    std::env::var("PANTHEON_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A database made for one test.
#[derive(Debug)]
pub struct TestDatabase {
    /// The URL to give Pantheon.
    pub url: String,
    /// Which kind.
    pub backend: Backend,
    sqlite_path: Option<std::path::PathBuf>,
}

impl TestDatabase {
    /// Creates an empty database.
    pub async fn create(backend: Backend) -> Self {
        let name = format!("pantheon_test_{}", uuid::Uuid::new_v4().simple());
        match backend {
            Backend::Postgres => {
                let admin = Database::connect(admin_url()).await.expect("PostgreSQL is reachable");
                admin.execute_unprepared(&format!("CREATE DATABASE {name}")).await.unwrap();
                admin.close().await.unwrap();
                let base = admin_url();
                let server = base.rsplit_once('/').map_or(base.as_str(), |(server, _)| server);
                Self { url: format!("{server}/{name}"), backend, sqlite_path: None }
            }
            Backend::Sqlite => {
                let path = std::env::temp_dir().join(format!("{name}.db"));
                Self {
                    url: format!("sqlite://{}?mode=rwc", path.display()),
                    backend,
                    sqlite_path: Some(path),
                }
            }
        }
    }

    /// A PostgreSQL database made elsewhere (on a test's own server).
    pub fn at(url: String) -> Self {
        Self { url, backend: Backend::Postgres, sqlite_path: None }
    }

    /// A separate connection to it.
    pub async fn connect(&self) -> DatabaseConnection {
        Database::connect(&self.url).await.unwrap()
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // PostgreSQL databases are dropped in bulk by scripts/test.sh before a
        // run (a connection may still be open here); SQLite files go now.
        if let Some(path) = &self.sqlite_path {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
            }
        }
    }
}

/// Rows in `table`.
pub async fn count(db: &DatabaseConnection, table: &str) -> i64 {
    count_where(db, table, "TRUE").await
}

/// Rows in `table` matching the SQL `condition`.
pub async fn count_where(db: &DatabaseConnection, table: &str, condition: &str) -> i64 {
    let sql = format!("SELECT COUNT(*) AS n FROM {table} WHERE {condition}");
    let row = db
        .query_one_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .unwrap()
        .unwrap();
    row.try_get::<i64>("", "n").unwrap()
}
