//! What [`super::SeaOrmFileRepository`] reads and writes besides its
//! statements: rows as the domain's files, sizes as the tables keep them,
//! where a page's cursor points.

use chrono::{DateTime, Utc};
use pantheon_domain::{FileId, SessionId, StorageError, StoredFile, UserId};
use sea_orm::{
    ColumnTrait, DatabaseConnection, DatabaseTransaction, EntityTrait, QueryFilter, QuerySelect,
};

use super::entity::uploaded_file as file;
use super::error::storage;

/// Sizes are `u64` in the domain and `bigint` in the tables; no file or
/// quota comes near `i64::MAX`, so saturating loses nothing real.
pub(super) fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

pub(super) fn unsigned(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

pub(super) fn file_from_row(row: file::Model) -> Result<StoredFile, StorageError> {
    let sha256 = row
        .sha256
        .ok_or_else(|| StorageError::other(format!("file {} is ready without a hash", row.id)))?;
    Ok(StoredFile {
        id: FileId::from(row.id),
        session_id: row.session_id.map(SessionId::from),
        filename: row.filename,
        content_type: row.content_type,
        bytes: unsigned(row.bytes),
        sha256,
        created_at: row.created_at,
    })
}

/// Ends a transaction that must leave nothing behind with `error`.
pub(super) async fn undo<T>(
    txn: DatabaseTransaction,
    error: StorageError,
) -> Result<T, StorageError> {
    txn.rollback().await.map_err(storage)?;
    Err(error)
}

/// Where a page after the file `after` starts: that file's `created_at`. A
/// cursor whose row is gone altogether (deleted meanwhile) falls back on
/// the time in its UUIDv7 id, which is when the upload began to the
/// millisecond; `None` when not even that is known.
pub(super) async fn cursor_time(
    db: &DatabaseConnection,
    user: &UserId,
    after: FileId,
) -> Result<Option<DateTime<Utc>>, StorageError> {
    let created = file::Entity::find_by_id(after.as_uuid())
        .filter(file::Column::UserId.eq(user.as_str()))
        .select_only()
        .column(file::Column::CreatedAt)
        .into_tuple::<DateTime<Utc>>()
        .one(db)
        .await
        .map_err(storage)?;
    Ok(created.or_else(|| {
        let (secs, nanos) = after.as_uuid().get_timestamp()?.to_unix();
        DateTime::from_timestamp(i64::try_from(secs).ok()?, nanos)
    }))
}
