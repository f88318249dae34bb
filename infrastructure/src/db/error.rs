//! `DbErr` becomes a domain [`StorageError`] here and nowhere else.

use pantheon_domain::StorageError;
use sea_orm::sqlx;
use sea_orm::{DbErr, RuntimeErr};

/// Converts a SeaORM error, keeping it as the cause for the log.
pub(crate) fn storage(error: DbErr) -> StorageError {
    if is_outage(&error) { StorageError::unavailable(error) } else { StorageError::other(error) }
}

/// Whether the database could not be reached, as opposed to refusing a
/// statement: these are answered `503` and retried, never `500`.
fn is_outage(error: &DbErr) -> bool {
    match error {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => {
            is_sqlx_outage(e)
        }
        _ => false,
    }
}

fn is_sqlx_outage(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| is_outage_code(&code)),
        _ => false,
    }
}

/// PostgreSQL's connection exceptions (class `08`), an administrator's or a
/// crash's termination of sessions (`57P01`–`57P03`: the server is shutting
/// down or starting), too many connections (`53300`); SQLite's busy and
/// locked (`5`, `6`), which outlast the busy timeout only under an outage of
/// the disk or a writer that hangs.
fn is_outage_code(code: &str) -> bool {
    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300" | "5" | "6")
}

#[cfg(test)]
mod tests {
    use super::is_outage_code;

    #[test]
    fn outage_codes() {
        for code in ["08006", "08001", "57P01", "57P03", "53300", "5"] {
            assert!(is_outage_code(code), "{code}");
        }
        for code in ["23505", "22P02", "42P01", "40001", "19"] {
            assert!(!is_outage_code(code), "{code}");
        }
    }
}
