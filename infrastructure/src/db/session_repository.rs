//! [`SessionRepository`] on SeaORM.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use pantheon_domain::ports::SessionRepository;
use pantheon_domain::{
    Clock, NewSession, Page, PageRequest, Session, SessionId, StorageError, SystemClock, UserId,
};
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, TransactionTrait,
};

use super::entity::{session, uploaded_file, user};
use super::error::storage;

/// Sessions in the `sessions` table, scoped by `user_id` in every statement.
#[derive(Debug, Clone)]
pub struct SeaOrmSessionRepository {
    db: DatabaseConnection,
}

impl SeaOrmSessionRepository {
    /// A repository on a pool.
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }
}

pub(crate) fn session_from_row(row: session::Model) -> Result<Session, StorageError> {
    Ok(Session {
        id: SessionId::from(row.id),
        user_id: UserId::parse(&row.user_id).map_err(|e| StorageError::other(e.to_string()))?,
        title: row.title,
        turn_count: row.turn_count,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}

#[async_trait]
impl SessionRepository for SeaOrmSessionRepository {
    async fn create(
        &self,
        user: &UserId,
        id: SessionId,
        new: &NewSession,
        now: DateTime<Utc>,
    ) -> Result<Session, StorageError> {
        // The user row exists only as the sessions' owner; inserting it on
        // first sight keeps identity free of any sign-up step.
        user::Entity::insert(user::ActiveModel { id: Set(user.to_string()), created_at: Set(now) })
            .on_conflict(OnConflict::column(user::Column::Id).do_nothing().to_owned())
            .exec_without_returning(&self.db)
            .await
            .map_err(storage)?;
        let row = session::Model {
            id: id.as_uuid(),
            user_id: user.to_string(),
            title: new.title().map(str::to_owned),
            turn_count: 0,
            created_at: now,
            updated_at: now,
        };
        session::Entity::insert(session::ActiveModel::from(row.clone()))
            .exec_without_returning(&self.db)
            .await
            .map_err(storage)?;
        session_from_row(row)
    }

    async fn list(
        &self,
        user: &UserId,
        page: PageRequest<SessionId>,
    ) -> Result<Page<Session>, StorageError> {
        let mut query = session::Entity::find().filter(session::Column::UserId.eq(user.as_str()));
        if let Some(after) = page.after {
            query = query.filter(session::Column::Id.lt(after.as_uuid()));
        }
        let rows = query
            .order_by_desc(session::Column::Id)
            .limit(page.limit + 1)
            .all(&self.db)
            .await
            .map_err(storage)?;
        let sessions = rows.into_iter().map(session_from_row).collect::<Result<Vec<_>, _>>()?;
        Ok(Page::from_overfetch(sessions, page.limit))
    }

    async fn get(&self, user: &UserId, id: SessionId) -> Result<Option<Session>, StorageError> {
        session::Entity::find_by_id(id.as_uuid())
            .filter(session::Column::UserId.eq(user.as_str()))
            .one(&self.db)
            .await
            .map_err(storage)?
            .map(session_from_row)
            .transpose()
    }

    async fn delete(&self, user: &UserId, id: SessionId) -> Result<bool, StorageError> {
        // Turns go with it through `ON DELETE CASCADE`. Its files cannot:
        // their blobs must go first, so they are marked for the file
        // service (and, should it fail, the sweep) in the same transaction.
        let txn = self.db.begin().await.map_err(storage)?;
        let result = session::Entity::delete_many()
            .filter(session::Column::Id.eq(id.as_uuid()))
            .filter(session::Column::UserId.eq(user.as_str()))
            .exec(&txn)
            .await
            .map_err(storage)?;
        if result.rows_affected == 0 {
            txn.rollback().await.map_err(storage)?;
            return Ok(false);
        }
        uploaded_file::Entity::update_many()
            .col_expr(uploaded_file::Column::Status, Expr::value(uploaded_file::DELETING))
            .col_expr(uploaded_file::Column::UpdatedAt, Expr::value(SystemClock.now_micros()))
            .filter(uploaded_file::Column::SessionId.eq(id.as_uuid()))
            .filter(uploaded_file::Column::UserId.eq(user.as_str()))
            .exec(&txn)
            .await
            .map_err(storage)?;
        txn.commit().await.map_err(storage)?;
        Ok(true)
    }
}
