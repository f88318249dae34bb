//! Deleting a file, remembered a day: a `deleting` row's removal leaves its
//! id and owner in `deleted_files`, so a repeated delete (a client's retry)
//! answers as the first did, while an id that never was the caller's stays
//! a missing file.

use chrono::{DateTime, Utc};
use pantheon_domain::ports::Deleting;
use pantheon_domain::{FileId, StorageError, UserId};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter,
    TransactionTrait,
};

use super::entity::uploaded_file::{self as file, DELETING, READY};
use super::entity::{deleted_file, user_storage as counters};
use super::error::storage;

/// See [`pantheon_domain::ports::FileRepository::mark_deleting`].
pub(super) async fn mark(
    db: &DatabaseConnection,
    user: &UserId,
    id: FileId,
    now: DateTime<Utc>,
) -> Result<Deleting, StorageError> {
    let marked = file::Entity::update_many()
        .col_expr(file::Column::Status, Expr::value(DELETING))
        .col_expr(file::Column::UpdatedAt, Expr::value(now))
        .filter(file::Column::Id.eq(id.as_uuid()))
        .filter(file::Column::UserId.eq(user.as_str()))
        .filter(file::Column::Status.eq(READY))
        .exec(db)
        .await
        .map_err(storage)?;
    if marked.rows_affected > 0 {
        return Ok(Deleting::Marked);
    }
    let deleting = file::Entity::find()
        .filter(file::Column::Id.eq(id.as_uuid()))
        .filter(file::Column::UserId.eq(user.as_str()))
        .filter(file::Column::Status.eq(DELETING))
        .one(db)
        .await
        .map_err(storage)?
        .is_some();
    let deleted = deleting
        || deleted_file::Entity::find()
            .filter(deleted_file::Column::Id.eq(id.as_uuid()))
            .filter(deleted_file::Column::UserId.eq(user.as_str()))
            .one(db)
            .await
            .map_err(storage)?
            .is_some();
    Ok(if deleted { Deleting::AlreadyDeleted } else { Deleting::NotFound })
}

/// See [`pantheon_domain::ports::FileRepository::remove`].
pub(super) async fn remove(
    db: &DatabaseConnection,
    id: FileId,
    now: DateTime<Utc>,
) -> Result<bool, StorageError> {
    let txn = db.begin().await.map_err(storage)?;
    let removed = file::Entity::delete_many()
        .filter(file::Column::Id.eq(id.as_uuid()))
        .filter(file::Column::Status.ne(READY))
        .exec_with_returning(&txn)
        .await
        .map_err(storage)?;
    let Some(row) = removed.into_iter().next() else {
        txn.rollback().await.map_err(storage)?;
        return Ok(false);
    };
    counters::Entity::update_many()
        .col_expr(counters::Column::Bytes, Expr::col(counters::Column::Bytes).sub(row.bytes))
        .col_expr(counters::Column::Files, Expr::col(counters::Column::Files).sub(1))
        .filter(counters::Column::UserId.eq(row.user_id.clone()))
        .exec(&txn)
        .await
        .map_err(storage)?;
    if row.status == DELETING {
        remember(&txn, row.id, row.user_id, now).await?;
    }
    txn.commit().await.map_err(storage)?;
    Ok(true)
}

/// Records a deletion; one already recorded stays as it was.
async fn remember(
    txn: &impl ConnectionTrait,
    id: uuid::Uuid,
    user_id: String,
    now: DateTime<Utc>,
) -> Result<(), StorageError> {
    let tombstone =
        deleted_file::ActiveModel { id: Set(id), user_id: Set(user_id), deleted_at: Set(now) };
    deleted_file::Entity::insert(tombstone)
        .on_conflict_do_nothing_on([deleted_file::Column::Id])
        .exec(txn)
        .await
        .map_err(storage)?;
    Ok(())
}

/// See [`pantheon_domain::ports::FileRepository::forget_deleted`].
pub(super) async fn forget(
    db: &DatabaseConnection,
    before: DateTime<Utc>,
) -> Result<u64, StorageError> {
    let forgotten = deleted_file::Entity::delete_many()
        .filter(deleted_file::Column::DeletedAt.lt(before))
        .exec(db)
        .await
        .map_err(storage)?;
    Ok(forgotten.rows_affected)
}
