//! [`TurnRepository`] on SeaORM.
//!
//! A JSON turn costs two statements and two commits on PostgreSQL: one
//! statement bumps the session's `seq` (checking ownership) and inserts the
//! turn, then one update writes the outcome; concurrent turns share those
//! statements ([`super::turn_batch`]). SQLite cannot put an `UPDATE` in a
//! `WITH`, so there the bump and the insert are two statements in one
//! transaction (and SQLite has one writer at a time anyway). A provider that
//! wants history (`context_turns > 0`) adds one indexed read.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use pantheon_domain::ports::{Checkpoint, Committed, TurnRepository, TurnStart};
use pantheon_domain::turn::TurnEnd;
use pantheon_domain::{Clock, SystemClock};
use pantheon_domain::{
    FailureKind, FinishReason, Page, PageRequest, SessionId, StorageError, Turn, TurnFailure,
    TurnId, TurnStatus, Usage, UserId,
};
use sea_orm::sea_query::{Expr, ExprTrait, Query};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, DbBackend,
    EntityTrait, QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
};

use super::entity::{session, turn, uploaded_file};
use super::error::storage;
use super::turn_batch::{
    BeginRow, CHECKPOINT_SQL, FinishRow, TurnBatcher, WriterTask, rows_statement,
};

/// How old a heartbeat-less `in_progress` row must be before the sweep
/// ends it: the longest turn the older versions allowed, plus slack.
const LEGACY_STALE_AFTER: chrono::Duration = chrono::Duration::hours(1);

/// The clock heartbeats are stamped and judged by on SQLite (a file on one
/// machine, so one clock for every instance of it). PostgreSQL's is the
/// database's own (`clock_timestamp()`, `now()`), whatever the instances'.
fn sqlite_clock() -> DateTime<Utc> {
    SystemClock.now_micros()
}

/// One checkpoint, as [`CHECKPOINT_SQL`] reads it.
#[derive(Debug, serde::Serialize)]
struct CheckpointRow<'a> {
    id: uuid::Uuid,
    output: Option<&'a str>,
}

impl<'a> From<&'a Checkpoint> for CheckpointRow<'a> {
    fn from(c: &'a Checkpoint) -> Self {
        Self { id: c.turn_id.as_uuid(), output: c.output.as_deref() }
    }
}

/// Turns in the `turns` table; ownership is checked through `sessions`.
#[derive(Debug, Clone)]
pub struct SeaOrmTurnRepository {
    db: DatabaseConnection,
    /// PostgreSQL's batching writers; `None` on SQLite.
    batcher: Option<Arc<TurnBatcher>>,
}

impl SeaOrmTurnRepository {
    /// A repository on a pool, and on PostgreSQL the batching writers it
    /// sends its turn writes to: the caller runs them (the composition root
    /// as tracked background tasks), or the repository's writes wait.
    pub fn new(db: DatabaseConnection) -> (Self, Vec<WriterTask>) {
        if db.get_database_backend() != DbBackend::Postgres {
            return (Self { db, batcher: None }, Vec::new());
        }
        let (batcher, writers) = TurnBatcher::new(&db);
        (Self { db, batcher: Some(Arc::new(batcher)) }, writers)
    }
}

fn corrupt(what: &str, value: &str) -> StorageError {
    StorageError::other(format!("unreadable {what} in turns: {value:?}"))
}

fn turn_from_row(row: turn::Model) -> Result<Turn, StorageError> {
    let status = TurnStatus::parse(&row.status).ok_or_else(|| corrupt("status", &row.status))?;
    let finish_reason = row
        .finish_reason
        .as_deref()
        .map(|r| FinishReason::parse(r).ok_or_else(|| corrupt("finish_reason", r)))
        .transpose()?;
    let usage = match (row.input_tokens, row.output_tokens, row.total_tokens) {
        (Some(input_tokens), Some(output_tokens), Some(total_tokens)) => {
            Some(Usage { input_tokens, output_tokens, total_tokens })
        }
        _ => None,
    };
    let error = row
        .error_code
        .map(|code| {
            let kind = FailureKind::parse(&code).ok_or_else(|| corrupt("error_code", &code))?;
            Ok::<_, StorageError>(TurnFailure {
                kind,
                detail: row.error_detail.unwrap_or_default(),
            })
        })
        .transpose()?;
    let tool_calls = match row.tool_calls.as_deref() {
        None => Vec::new(),
        Some(raw) => serde_json::from_str(raw).map_err(|_| corrupt("tool_calls", raw))?,
    };
    Ok(Turn {
        id: TurnId::from(row.id),
        session_id: SessionId::from(row.session_id),
        seq: row.seq,
        input: row.input,
        output: row.output,
        status,
        finish_reason,
        usage,
        error,
        created_at: row.created_at,
        completed_at: row.completed_at,
        tool_calls,
    })
}

impl SeaOrmTurnRepository {
    /// SQLite (no DML in a `WITH`): the bump, whose write lock serializes
    /// concurrent turns of one session, then the insert, in one transaction.
    async fn bump_then_insert(
        &self,
        start: &TurnStart<'_>,
    ) -> Result<Option<(i64, bool)>, StorageError> {
        let txn = self.db.begin().await.map_err(storage)?;
        let bumped = session::Entity::update_many()
            .col_expr(session::Column::TurnCount, Expr::col(session::Column::TurnCount).add(1))
            .col_expr(session::Column::UpdatedAt, Expr::value(start.now))
            .filter(session::Column::Id.eq(start.session_id.as_uuid()))
            .filter(session::Column::UserId.eq(start.user.as_str()))
            .exec_with_returning(&txn)
            .await
            .map_err(storage)?;
        let Some(session) = bumped.into_iter().next() else {
            txn.rollback().await.map_err(storage)?;
            return Ok(None);
        };
        // Read now that the write lock is held: any wait for it is behind.
        let heartbeat = sqlite_clock();
        let row = turn::ActiveModel {
            id: Set(start.turn_id.as_uuid()),
            session_id: Set(start.session_id.as_uuid()),
            seq: Set(session.turn_count),
            input: Set(start.input.to_owned()),
            output: Set(String::new()),
            status: Set(TurnStatus::InProgress.as_str().to_owned()),
            created_at: Set(start.now),
            heartbeat_at: Set(Some(heartbeat)),
            user_id: Set(start.idempotency.map(|_| start.user.as_str().to_owned())),
            idempotency_key: Set(start.idempotency.map(|(key, _)| key.to_owned())),
            request_hash: Set(start.idempotency.map(|(_, hash)| hash.to_owned())),
            ..Default::default()
        };
        turn::Entity::insert(row).exec_without_returning(&txn).await.map_err(storage)?;
        let session_files = uploaded_file::Entity::find()
            .select_only()
            .column(uploaded_file::Column::Id)
            .filter(uploaded_file::Column::SessionId.eq(start.session_id.as_uuid()))
            .filter(uploaded_file::Column::Status.eq(uploaded_file::READY))
            .into_tuple::<uuid::Uuid>()
            .one(&txn)
            .await
            .map_err(storage)?
            .is_some();
        txn.commit().await.map_err(storage)?;
        Ok(Some((session.turn_count, session_files)))
    }
}

#[async_trait]
impl TurnRepository for SeaOrmTurnRepository {
    async fn begin(&self, start: TurnStart<'_>) -> Result<Option<Committed>, StorageError> {
        let begun = match &self.batcher {
            Some(batcher) => {
                let row = BeginRow::new(
                    start.turn_id,
                    start.session_id,
                    start.user.as_str(),
                    start.input,
                    start.now,
                    start.idempotency,
                );
                batcher.begin(row).await?
            }
            None => self.bump_then_insert(&start).await?,
        };
        Ok(begun.map(|(seq, session_files)| Committed { turn: start.begun(seq), session_files }))
    }

    async fn finish(&self, id: TurnId, end: TurnEnd) -> Result<Turn, StorageError> {
        let vanished = || StorageError::other(format!("turn {id} vanished before it finished"));
        if let Some(batcher) = &self.batcher {
            return batcher
                .finish(FinishRow::new(id, end))
                .await?
                .ok_or_else(vanished)
                .and_then(turn_from_row);
        }
        let usage = end.usage;
        let error = end.error;
        let update = turn::ActiveModel {
            output: Set(end.output),
            status: Set(end.status.as_str().to_owned()),
            finish_reason: Set(Some(end.finish_reason.as_str().to_owned())),
            input_tokens: Set(usage.map(|u| u.input_tokens)),
            output_tokens: Set(usage.map(|u| u.output_tokens)),
            total_tokens: Set(usage.map(|u| u.total_tokens)),
            error_code: Set(error.as_ref().map(|e| e.kind.as_str().to_owned())),
            error_detail: Set(error.map(|e| e.detail)),
            completed_at: Set(Some(end.completed_at)),
            tool_calls: Set(turn::tool_calls_column(&end.tool_calls)),
            ..Default::default()
        };
        let rows = turn::Entity::update_many()
            .set(update)
            .filter(turn::Column::Id.eq(id.as_uuid()))
            .exec_with_returning(&self.db)
            .await
            .map_err(storage)?;
        let row = rows.into_iter().next().ok_or_else(vanished)?;
        turn_from_row(row)
    }

    async fn checkpoint(&self, checkpoints: &[Checkpoint]) -> Result<(), StorageError> {
        if self.batcher.is_some() {
            let rows: Vec<CheckpointRow<'_>> =
                checkpoints.iter().map(CheckpointRow::from).collect();
            let statement = rows_statement(CHECKPOINT_SQL, &rows, [])?;
            self.db.execute_raw(statement).await.map_err(storage)?;
            return Ok(());
        }
        // SQLite: one transaction, one commit, a statement per turn.
        let txn = self.db.begin().await.map_err(storage)?;
        let now = sqlite_clock();
        for checkpoint in checkpoints {
            let mut update = turn::Entity::update_many()
                .col_expr(turn::Column::HeartbeatAt, Expr::value(now))
                .filter(turn::Column::Id.eq(checkpoint.turn_id.as_uuid()))
                .filter(turn::Column::Status.eq(TurnStatus::InProgress.as_str()));
            if let Some(output) = &checkpoint.output {
                update = update.col_expr(turn::Column::Output, Expr::value(output.clone()));
            }
            update.exec(&txn).await.map_err(storage)?;
        }
        txn.commit().await.map_err(storage)
    }

    async fn expire_stale(
        &self,
        stale_after: std::time::Duration,
        now: DateTime<Utc>,
    ) -> Result<u64, StorageError> {
        // A row is seen only once committed, stamped just before: a begin
        // still in flight (however long it waits) cannot be taken for stale.
        let stale = if self.batcher.is_some() {
            let micros = i64::try_from(stale_after.as_micros()).unwrap_or(i64::MAX);
            Expr::col(turn::Column::HeartbeatAt)
                .lt(Expr::cust(format!("now() - interval '{micros} microseconds'")))
        } else {
            let bound = chrono::Duration::from_std(stale_after).unwrap_or(chrono::Duration::MAX);
            let cutoff =
                sqlite_clock().checked_sub_signed(bound).unwrap_or(DateTime::<Utc>::MIN_UTC);
            Expr::col(turn::Column::HeartbeatAt).lt(cutoff)
        };
        // Rows an older version wrote have no heartbeat; they are ended as
        // that version did, once older than any turn may run.
        let legacy_cutoff = now - LEGACY_STALE_AFTER;
        let result = turn::Entity::update_many()
            .col_expr(turn::Column::Status, Expr::value(TurnStatus::Incomplete.as_str()))
            .col_expr(turn::Column::FinishReason, Expr::value(FinishReason::Cancelled.as_str()))
            .col_expr(turn::Column::CompletedAt, Expr::value(now))
            .filter(turn::Column::Status.eq(TurnStatus::InProgress.as_str()))
            .filter(
                Condition::any().add(stale).add(
                    Condition::all()
                        .add(turn::Column::HeartbeatAt.is_null())
                        .add(turn::Column::CreatedAt.lt(legacy_cutoff)),
                ),
            )
            .exec(&self.db)
            .await
            .map_err(storage)?;
        Ok(result.rows_affected)
    }

    async fn list(
        &self,
        user: &UserId,
        session_id: SessionId,
        page: PageRequest<i64>,
    ) -> Result<Option<Page<Turn>>, StorageError> {
        let owned = session::Entity::find_by_id(session_id.as_uuid())
            .filter(session::Column::UserId.eq(user.as_str()))
            .select_only()
            .column(session::Column::Id)
            .into_tuple::<uuid::Uuid>()
            .one(&self.db)
            .await
            .map_err(storage)?;
        if owned.is_none() {
            return Ok(None);
        }
        let mut query =
            turn::Entity::find().filter(turn::Column::SessionId.eq(session_id.as_uuid()));
        if let Some(after) = page.after {
            query = query.filter(turn::Column::Seq.gt(after));
        }
        let rows = query
            .order_by_asc(turn::Column::Seq)
            .limit(page.limit + 1)
            .all(&self.db)
            .await
            .map_err(storage)?;
        let turns = rows.into_iter().map(turn_from_row).collect::<Result<Vec<_>, _>>()?;
        Ok(Some(Page::from_overfetch(turns, page.limit)))
    }

    async fn get(
        &self,
        user: &UserId,
        session_id: SessionId,
        turn_id: TurnId,
    ) -> Result<Option<Turn>, StorageError> {
        let owned_session = Query::select()
            .column(session::Column::Id)
            .from(session::Entity)
            .and_where(session::Column::Id.eq(session_id.as_uuid()))
            .and_where(session::Column::UserId.eq(user.as_str()))
            .to_owned();
        turn::Entity::find_by_id(turn_id.as_uuid())
            .filter(turn::Column::SessionId.in_subquery(owned_session))
            .one(&self.db)
            .await
            .map_err(storage)?
            .map(turn_from_row)
            .transpose()
    }

    async fn find_by_key(
        &self,
        user: &UserId,
        key: &str,
    ) -> Result<Option<(TurnId, String)>, StorageError> {
        let row = turn::Entity::find()
            .filter(turn::Column::UserId.eq(user.as_str()))
            .filter(turn::Column::IdempotencyKey.eq(key))
            .one(&self.db)
            .await
            .map_err(storage)?;
        Ok(row.map(|row| (TurnId::from(row.id), row.request_hash.unwrap_or_default())))
    }

    async fn completed_before(
        &self,
        session_id: SessionId,
        before_seq: i64,
        limit: usize,
    ) -> Result<Vec<Turn>, StorageError> {
        // Walks the unique (session_id, seq) index backwards from `before_seq`.
        let rows = turn::Entity::find()
            .filter(turn::Column::SessionId.eq(session_id.as_uuid()))
            .filter(turn::Column::Seq.lt(before_seq))
            .filter(turn::Column::Status.eq(TurnStatus::Completed.as_str()))
            .order_by_desc(turn::Column::Seq)
            .limit(u64::try_from(limit).unwrap_or(u64::MAX))
            .all(&self.db)
            .await
            .map_err(storage)?;
        rows.into_iter().rev().map(turn_from_row).collect()
    }
}
