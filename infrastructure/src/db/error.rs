//! `DbErr` becomes a domain [`StorageError`] here and nowhere else.

use pantheon_domain::StorageError;
use sea_orm::DbErr;

/// Converts a SeaORM error, keeping the message for the log.
pub(crate) fn storage(error: DbErr) -> StorageError {
    match error {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => {
            StorageError::Unavailable(error.to_string())
        }
        other => StorageError::Other(other.to_string()),
    }
}
