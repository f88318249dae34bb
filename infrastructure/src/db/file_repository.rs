//! [`FileRepository`] on SeaORM, the same statements on PostgreSQL and
//! SQLite.
//!
//! The quotas hold exactly across instances because every change of a
//! user's counters is one conditional statement on their `user_storage`
//! row (`… WHERE files + 1 <= max`, `… WHERE bytes + n <= quota`): on
//! PostgreSQL concurrent ones queue on the row's lock and each re-checks
//! its condition against the row as the one before left it; SQLite has one
//! writer at a time. The file's row moves in the same transaction, and
//! every transaction that touches both writes the file's row first, then
//! the counters, so no two of them can deadlock. Each one starts with a
//! write, so on SQLite it takes the write lock (waiting out the busy
//! timeout) before it reads anything.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use pantheon_domain::ports::{Deleting, FileRepository, Quota};
use pantheon_domain::{
    FileId, NewUpload, Page, PageRequest, SessionId, StorageError, StorageUsage, StoredFile,
    Uploaded, UserId,
};
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict, Query};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, DatabaseConnection, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, TransactionTrait,
};

use super::entity::uploaded_file::{self as file, DELETING, READY, UPLOADING};
use super::entity::{session, user, user_storage as counters};
use super::error::storage;
use super::file_deletions;
use super::file_rows::{cursor_time, file_from_row, signed, undo, unsigned};

/// Uploaded files in `uploaded_files`, and the users' counters in
/// `user_storage`; every read is scoped by `user_id`.
#[derive(Debug, Clone)]
pub struct SeaOrmFileRepository {
    db: DatabaseConnection,
}

impl SeaOrmFileRepository {
    /// A repository on a pool.
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }
}

#[async_trait]
impl FileRepository for SeaOrmFileRepository {
    async fn begin(
        &self,
        user: &UserId,
        upload: &NewUpload,
        quota: Quota,
        now: DateTime<Utc>,
    ) -> Result<bool, StorageError> {
        if quota.files == 0 {
            return Ok(false);
        }
        let txn = self.db.begin().await.map_err(storage)?;
        // As a session's first creation does: the user row exists only as
        // the owner of what they store.
        user::Entity::insert(user::ActiveModel { id: Set(user.to_string()), created_at: Set(now) })
            .on_conflict(OnConflict::column(user::Column::Id).do_nothing().to_owned())
            .exec_without_returning(&txn)
            .await
            .map_err(storage)?;
        let files = Expr::col((counters::Entity, counters::Column::Files));
        let counted = counters::Entity::insert(counters::ActiveModel {
            user_id: Set(user.to_string()),
            bytes: Set(0),
            files: Set(1),
        })
        .on_conflict(
            OnConflict::column(counters::Column::UserId)
                .value(counters::Column::Files, files.clone().add(1))
                .action_and_where(files.add(1).lte(signed(quota.files)))
                .to_owned(),
        )
        .exec_without_returning(&txn)
        .await
        .map_err(storage)?;
        if counted == 0 {
            txn.rollback().await.map_err(storage)?;
            return Ok(false);
        }
        let row = file::ActiveModel {
            id: Set(upload.id.as_uuid()),
            user_id: Set(user.to_string()),
            session_id: Set(upload.session_id.map(|s| s.as_uuid())),
            filename: Set(upload.filename.clone()),
            content_type: Set(upload.content_type.clone()),
            bytes: Set(0),
            sha256: Set(None),
            status: Set(UPLOADING.to_owned()),
            created_at: Set(now),
            updated_at: Set(now),
        };
        file::Entity::insert(row).exec_without_returning(&txn).await.map_err(storage)?;
        txn.commit().await.map_err(storage)?;
        Ok(true)
    }

    async fn reserve(
        &self,
        user: &UserId,
        id: FileId,
        bytes: u64,
        quota: Quota,
        now: DateTime<Utc>,
    ) -> Result<bool, StorageError> {
        let n = signed(bytes);
        let txn = self.db.begin().await.map_err(storage)?;
        let grown = file::Entity::update_many()
            .col_expr(file::Column::Bytes, Expr::col(file::Column::Bytes).add(n))
            .col_expr(file::Column::UpdatedAt, Expr::value(now))
            .filter(file::Column::Id.eq(id.as_uuid()))
            .filter(file::Column::UserId.eq(user.as_str()))
            .filter(file::Column::Status.eq(UPLOADING))
            .exec(&txn)
            .await
            .map_err(storage)?;
        if grown.rows_affected == 0 {
            let gone = StorageError::other(format!("upload {id} is no longer uploading"));
            return undo(txn, gone).await;
        }
        let counted = counters::Entity::update_many()
            .col_expr(counters::Column::Bytes, Expr::col(counters::Column::Bytes).add(n))
            .filter(counters::Column::UserId.eq(user.as_str()))
            .filter(Expr::col(counters::Column::Bytes).add(n).lte(signed(quota.bytes)))
            .exec(&txn)
            .await
            .map_err(storage)?;
        if counted.rows_affected == 0 {
            txn.rollback().await.map_err(storage)?;
            return Ok(false);
        }
        txn.commit().await.map_err(storage)?;
        Ok(true)
    }

    async fn complete(
        &self,
        user: &UserId,
        id: FileId,
        done: &Uploaded,
        now: DateTime<Utc>,
    ) -> Result<StoredFile, StorageError> {
        let actual = signed(done.bytes);
        let txn = self.db.begin().await.map_err(storage)?;
        // A write first, so the row is locked before what it reserved is
        // read (and, on SQLite, the write lock taken before any read).
        let locked = file::Entity::update_many()
            .col_expr(file::Column::UpdatedAt, Expr::value(now))
            .filter(file::Column::Id.eq(id.as_uuid()))
            .filter(file::Column::UserId.eq(user.as_str()))
            .filter(file::Column::Status.eq(UPLOADING))
            .exec_with_returning(&txn)
            .await
            .map_err(storage)?;
        let Some(reserved) = locked.into_iter().next().map(|row| row.bytes) else {
            let gone = StorageError::other(format!("upload {id} is no longer uploading"));
            return undo(txn, gone).await;
        };
        if actual > reserved {
            let over = format!("upload {id} wrote {actual} bytes but reserved only {reserved}");
            return undo(txn, StorageError::other(over)).await;
        }
        let ready = file::Entity::update_many()
            .col_expr(file::Column::Status, Expr::value(READY))
            .col_expr(file::Column::Bytes, Expr::value(actual))
            .col_expr(file::Column::Sha256, Expr::value(done.sha256.clone()))
            .filter(file::Column::Id.eq(id.as_uuid()))
            .exec_with_returning(&txn)
            .await
            .map_err(storage)?;
        let Some(ready) = ready.into_iter().next() else {
            return undo(txn, StorageError::other(format!("upload {id} vanished"))).await;
        };
        if reserved > actual {
            let excess = reserved - actual;
            counters::Entity::update_many()
                .col_expr(counters::Column::Bytes, Expr::col(counters::Column::Bytes).sub(excess))
                .filter(counters::Column::UserId.eq(user.as_str()))
                .exec(&txn)
                .await
                .map_err(storage)?;
        }
        txn.commit().await.map_err(storage)?;
        file_from_row(ready)
    }

    async fn list(
        &self,
        user: &UserId,
        page: PageRequest<FileId>,
    ) -> Result<Page<StoredFile>, StorageError> {
        let mut query = file::Entity::find()
            .filter(file::Column::UserId.eq(user.as_str()))
            .filter(file::Column::Status.eq(READY));
        if let Some(after) = page.after {
            let Some(created) = cursor_time(&self.db, user, after).await? else {
                return Ok(Page { items: Vec::new(), has_more: false });
            };
            query = query.filter(
                Condition::any().add(file::Column::CreatedAt.lt(created)).add(
                    Condition::all()
                        .add(file::Column::CreatedAt.eq(created))
                        .add(file::Column::Id.lt(after.as_uuid())),
                ),
            );
        }
        let rows = query
            .order_by_desc(file::Column::CreatedAt)
            .order_by_desc(file::Column::Id)
            .limit(page.limit.saturating_add(1))
            .all(&self.db)
            .await
            .map_err(storage)?;
        let files = rows.into_iter().map(file_from_row).collect::<Result<Vec<_>, _>>()?;
        Ok(Page::from_overfetch(files, page.limit))
    }

    async fn get(&self, user: &UserId, id: FileId) -> Result<Option<StoredFile>, StorageError> {
        file::Entity::find_by_id(id.as_uuid())
            .filter(file::Column::UserId.eq(user.as_str()))
            .filter(file::Column::Status.eq(READY))
            .one(&self.db)
            .await
            .map_err(storage)?
            .map(file_from_row)
            .transpose()
    }

    async fn readable(
        &self,
        user: &UserId,
        session: SessionId,
        ids: &[FileId],
    ) -> Result<Vec<StoredFile>, StorageError> {
        let mut any = Condition::any().add(file::Column::SessionId.eq(session.as_uuid()));
        if !ids.is_empty() {
            any = any.add(file::Column::Id.is_in(ids.iter().map(FileId::as_uuid)));
        }
        // One row a file, whichever way it is named: no duplicates to drop.
        let rows = file::Entity::find()
            .filter(file::Column::UserId.eq(user.as_str()))
            .filter(file::Column::Status.eq(READY))
            .filter(any)
            .order_by_asc(file::Column::CreatedAt)
            .order_by_asc(file::Column::Id)
            .all(&self.db)
            .await
            .map_err(storage)?;
        rows.into_iter().map(file_from_row).collect()
    }

    async fn mark_deleting(
        &self,
        user: &UserId,
        id: FileId,
        now: DateTime<Utc>,
    ) -> Result<Deleting, StorageError> {
        file_deletions::mark(&self.db, user, id, now).await
    }

    async fn deleting_in_session(&self, session: SessionId) -> Result<Vec<FileId>, StorageError> {
        let ids = file::Entity::find()
            .select_only()
            .column(file::Column::Id)
            .filter(file::Column::SessionId.eq(session.as_uuid()))
            .filter(file::Column::Status.eq(DELETING))
            .into_tuple::<uuid::Uuid>()
            .all(&self.db)
            .await
            .map_err(storage)?;
        Ok(ids.into_iter().map(FileId::from).collect())
    }

    async fn remove(&self, id: FileId, now: DateTime<Utc>) -> Result<bool, StorageError> {
        file_deletions::remove(&self.db, id, now).await
    }

    async fn forget_deleted(&self, before: DateTime<Utc>) -> Result<u64, StorageError> {
        file_deletions::forget(&self.db, before).await
    }

    /// Also finds the files whose session is gone without having marked
    /// them: an upload into a session that was deleted between the
    /// upload's check of the session and its row's insert (the deletion's
    /// marking could not see the row yet). They are marked `deleting` here
    /// with their `updated_at` kept, so they come back among the stale ones
    /// at once when that is old enough, and [`FileRepository::remove`] takes
    /// them like any other.
    async fn stale(&self, before: DateTime<Utc>, limit: u64) -> Result<Vec<FileId>, StorageError> {
        let session_exists = Query::select()
            .expr(Expr::val(1))
            .from(session::Entity)
            .and_where(
                Expr::col((session::Entity, session::Column::Id))
                    .equals((file::Entity, file::Column::SessionId)),
            )
            .to_owned();
        let orphans = Query::select()
            .column(file::Column::Id)
            .from(file::Entity)
            .and_where(file::Column::Status.is_in([READY, UPLOADING]))
            .and_where(file::Column::SessionId.is_not_null())
            .and_where(Expr::exists(session_exists).not())
            .limit(limit)
            .to_owned();
        file::Entity::update_many()
            .col_expr(file::Column::Status, Expr::value(DELETING))
            .filter(file::Column::Id.in_subquery(orphans))
            .exec(&self.db)
            .await
            .map_err(storage)?;
        let ids = file::Entity::find()
            .select_only()
            .column(file::Column::Id)
            .filter(file::Column::Status.is_in([UPLOADING, DELETING]))
            .filter(file::Column::UpdatedAt.lt(before))
            .order_by_asc(file::Column::UpdatedAt)
            .limit(limit)
            .into_tuple::<uuid::Uuid>()
            .all(&self.db)
            .await
            .map_err(storage)?;
        Ok(ids.into_iter().map(FileId::from).collect())
    }

    async fn usage(&self, user: &UserId) -> Result<StorageUsage, StorageError> {
        let row =
            counters::Entity::find_by_id(user.as_str()).one(&self.db).await.map_err(storage)?;
        Ok(row.map_or_else(StorageUsage::default, |row| StorageUsage {
            bytes: unsigned(row.bytes),
            files: unsigned(row.files),
        }))
    }
}
