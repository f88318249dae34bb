//! Group writes of concurrent turns on PostgreSQL: the begins (and the
//! finishes) that are waiting when a writer is free go to the database as
//! one statement, one commit and one round trip.
//!
//! Why: on a 2-core machine PostgreSQL spends most of a turn's CPU on
//! per-statement work (parse/bind/execute, the commit's WAL flush, the pool's
//! ping when a connection is returned), not on the rows. 2,000 streams
//! starting at once queued for the pool one statement each, and their first
//! events waited for it (`bench/RESULTS.md`, scenario E).
//!
//! How: a few writer tasks, each fed by a bounded channel, each taking
//! whatever has queued (`recv_many`, up to [`MAX_BATCH`]) and sending it as
//! one statement. Nothing waits for a batch to fill: a lone turn is written
//! at once, alone, so an idle server pays no latency for this. Begins are
//! sharded by session, so two writers never lock the same session rows and
//! cannot deadlock each other. A batch the database refuses as a whole is
//! retried one turn at a time, so one bad row fails one turn, not its
//! neighbours.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use pantheon_domain::turn::TurnEnd;
use pantheon_domain::{SessionId, StorageError, TurnId};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, FromQueryResult, QueryResult, Statement, Value,
};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::entity::turn;
use super::error::storage;

/// The most turns one statement carries.
pub(super) const MAX_BATCH: usize = 128;

/// Writer tasks per kind of write: each holds at most one pooled connection
/// while it writes, so begins and finishes together hold at most four of the
/// pool's (8 by default); more writers would only split the batches.
const WRITERS: usize = 2;

/// Turns waiting for each writer before callers wait to enqueue.
const QUEUE: usize = 1024;

/// Bumps each session's `turn_count` once by its number of new turns, then
/// inserts the turns numbered in arrival order (`ord`). Rows of a session
/// that is not the caller's match nothing in `bumped` and are not inserted.
/// The `UPDATE`'s row locks serialize against any other writer of those
/// sessions, exactly as the one-turn statement's do.
///
/// The heartbeat is the database's clock read once every row of `bumped`
/// is locked (`stamp` aggregates them all first; a volatile CTE is never
/// inlined): a begin that waited on a lock is stamped after the wait, so
/// the sweep, reading the same clock, never takes a turn that was just
/// committed for a stale one.
const BEGIN_SQL: &str = "\
WITH input AS (
    SELECT * FROM jsonb_to_recordset($1::jsonb) AS i(
        ord bigint, turn_id uuid, session_id uuid, user_id text, input text,
        created_at timestamptz, idempotency_key text, request_hash text)
), counts AS (
    SELECT session_id, user_id, count(*) AS n, max(created_at) AS latest
    FROM input GROUP BY session_id, user_id
), bumped AS (
    UPDATE sessions AS s
    SET turn_count = s.turn_count + c.n, updated_at = c.latest
    FROM counts AS c
    WHERE s.id = c.session_id AND s.user_id = c.user_id
    RETURNING s.id, s.user_id, s.turn_count - c.n AS base
), stamp AS MATERIALIZED (
    SELECT clock_timestamp() AS at FROM (SELECT count(*) FROM bumped) AS locked
)
INSERT INTO turns (id, session_id, seq, input, output, status, created_at, heartbeat_at,
                   user_id, idempotency_key, request_hash)
SELECT i.turn_id, i.session_id,
       b.base + row_number() OVER (PARTITION BY i.session_id ORDER BY i.ord),
       i.input, '', 'in_progress', i.created_at, t.at,
       CASE WHEN i.idempotency_key IS NULL THEN NULL ELSE i.user_id END,
       i.idempotency_key, i.request_hash
FROM input AS i JOIN bumped AS b ON b.id = i.session_id AND b.user_id = i.user_id
CROSS JOIN stamp AS t
RETURNING id, seq, EXISTS (
    SELECT 1 FROM uploaded_files AS f WHERE f.session_id = turns.session_id AND f.status = 'ready'
) AS session_files";

/// Writes each turn's outcome and returns the rows as persisted.
const FINISH_SQL: &str = "\
UPDATE turns AS t
SET output = v.output, status = v.status, finish_reason = v.finish_reason,
    input_tokens = v.input_tokens, output_tokens = v.output_tokens,
    total_tokens = v.total_tokens, error_code = v.error_code,
    error_detail = v.error_detail, completed_at = v.completed_at,
    tool_calls = v.tool_calls
FROM jsonb_to_recordset($1::jsonb) AS v(
    id uuid, output text, status text, finish_reason text, input_tokens bigint,
    output_tokens bigint, total_tokens bigint, error_code text, error_detail text,
    completed_at timestamptz, tool_calls text)
WHERE t.id = v.id
RETURNING t.*";

/// Saves the outputs that grew (a `null` output keeps the stored one) and
/// stamps the heartbeat of every turn of the checkpoint still in progress,
/// by the database's clock, as [`BEGIN_SQL`] does.
pub(super) const CHECKPOINT_SQL: &str = "\
UPDATE turns AS t
SET output = COALESCE(v.output, t.output), heartbeat_at = now()
FROM jsonb_to_recordset($1::jsonb) AS v(id uuid, output text)
WHERE t.id = v.id AND t.status = 'in_progress'";

/// One new turn, as [`BEGIN_SQL`] reads it.
#[derive(Debug, Serialize)]
pub(super) struct BeginRow {
    ord: usize,
    turn_id: Uuid,
    session_id: Uuid,
    user_id: String,
    input: String,
    created_at: DateTime<Utc>,
    /// With its fingerprint, when the client sent one; a second row with
    /// it for the user fails the statement (the batch is then written one
    /// by one, so that row fails alone).
    idempotency_key: Option<String>,
    request_hash: Option<String>,
}

impl BeginRow {
    pub(super) fn new(
        turn_id: TurnId,
        session_id: SessionId,
        user_id: &str,
        input: &str,
        created_at: DateTime<Utc>,
        idempotency: Option<(&str, &str)>,
    ) -> Self {
        Self {
            ord: 0,
            turn_id: turn_id.as_uuid(),
            session_id: session_id.as_uuid(),
            user_id: user_id.to_owned(),
            input: input.to_owned(),
            created_at,
            idempotency_key: idempotency.map(|(key, _)| key.to_owned()),
            request_hash: idempotency.map(|(_, hash)| hash.to_owned()),
        }
    }
}

/// One outcome, as [`FINISH_SQL`] reads it.
#[derive(Debug, Serialize)]
pub(super) struct FinishRow {
    id: Uuid,
    output: String,
    status: &'static str,
    finish_reason: &'static str,
    input_tokens: Option<i64>,
    output_tokens: Option<i64>,
    total_tokens: Option<i64>,
    error_code: Option<String>,
    error_detail: Option<String>,
    completed_at: DateTime<Utc>,
    tool_calls: Option<String>,
}

impl FinishRow {
    pub(super) fn new(id: TurnId, end: TurnEnd) -> Self {
        let (usage, error) = (end.usage, end.error);
        Self {
            id: id.as_uuid(),
            output: end.output,
            status: end.status.as_str(),
            finish_reason: end.finish_reason.as_str(),
            input_tokens: usage.map(|u| u.input_tokens),
            output_tokens: usage.map(|u| u.output_tokens),
            total_tokens: usage.map(|u| u.total_tokens),
            error_code: error.as_ref().map(|e| e.kind.as_str().to_owned()),
            error_detail: error.map(|e| e.detail),
            completed_at: end.completed_at,
            tool_calls: turn::tool_calls_column(&end.tool_calls),
        }
    }
}

/// The seq of a begun turn; `None`: not the caller's session.
/// The turn's `seq` and whether its session has files; `None`: not the
/// caller's session.
pub(super) type Begun = Result<Option<(i64, bool)>, StorageError>;
/// The turn as persisted; `None`: no such turn (its session was deleted).
pub(super) type Finished = Result<Option<turn::Model>, StorageError>;

/// A writer's loop, for the composition root to run as a background task:
/// it ends when the last handle to its queue is dropped, or when the task
/// is stopped at shutdown.
pub type WriterTask = BoxFuture<'static, ()>;

/// Handles to the writer tasks' queues.
#[derive(Debug)]
pub(super) struct TurnBatcher {
    begins: Writers<BeginRow, Option<(i64, bool)>>,
    finishes: Writers<FinishRow, Option<turn::Model>>,
}

impl TurnBatcher {
    /// The queues, and the writers that drain them (not yet running).
    pub(super) fn new(db: &DatabaseConnection) -> (Self, Vec<WriterTask>) {
        let for_begins = db.clone();
        let for_finishes = db.clone();
        let (begins, mut tasks) = Writers::new(move |rows| begin_batch(for_begins.clone(), rows));
        let (finishes, more) = Writers::new(move |rows| finish_batch(for_finishes.clone(), rows));
        tasks.extend(more);
        (Self { begins, finishes }, tasks)
    }

    /// Begins one turn, in whatever batch is next for its session's writer.
    pub(super) async fn begin(&self, row: BeginRow) -> Begun {
        let shard = self.begins.shard_of(&row.session_id);
        self.begins.call(shard, row).await
    }

    /// Finishes one turn, in whatever batch is next.
    pub(super) async fn finish(&self, row: FinishRow) -> Finished {
        let shard = self.finishes.shard_of(&row.id);
        self.finishes.call(shard, row).await
    }
}

/// A request and where its answer goes.
type Job<Row, T> = (Row, oneshot::Sender<Result<T, StorageError>>);

/// [`WRITERS`] tasks, each draining its own queue in batches.
#[derive(Debug)]
struct Writers<Row, T> {
    queues: Vec<mpsc::Sender<Job<Row, T>>>,
    hasher: RandomState,
}

impl<Row: Send + 'static, T: Send + 'static> Writers<Row, T> {
    /// `write` answers a batch with one output per row, in order.
    fn new<F, Fut>(write: F) -> (Self, Vec<WriterTask>)
    where
        F: Fn(Vec<Row>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<Result<T, StorageError>>> + Send + 'static,
    {
        let write = Arc::new(write);
        let (queues, tasks) = (0..WRITERS)
            .map(|_| {
                let (tx, mut rx) = mpsc::channel::<Job<Row, T>>(QUEUE);
                let write = Arc::clone(&write);
                let task: WriterTask = Box::pin(async move {
                    let mut jobs = Vec::with_capacity(MAX_BATCH);
                    while rx.recv_many(&mut jobs, MAX_BATCH).await > 0 {
                        let (rows, replies): (Vec<Row>, Vec<_>) = jobs.drain(..).unzip();
                        let outs = write(rows).await;
                        let outage = match outs.first() {
                            Some(Err(e)) if e.is_unavailable() => Some(e.clone()),
                            _ => None,
                        };
                        for (reply, out) in replies.into_iter().zip(outs) {
                            // The caller may have gone; its turn is written anyway.
                            let _ = reply.send(out);
                        }
                        // Whoever queued meanwhile has waited out one acquire
                        // timeout already: answered now, not after another.
                        if let Some(error) = outage {
                            while let Ok((_, reply)) = rx.try_recv() {
                                let _ = reply.send(Err(error.clone()));
                            }
                        }
                    }
                });
                (tx, task)
            })
            .unzip();
        (Self { queues, hasher: RandomState::new() }, tasks)
    }

    fn shard_of(&self, key: &impl Hash) -> usize {
        // Truncation is fine: only the remainder matters.
        let hash = self.hasher.hash_one(key) as usize;
        hash % self.queues.len()
    }

    async fn call(&self, shard: usize, row: Row) -> Result<T, StorageError> {
        // Only at shutdown, after the last turn: the instance is going away.
        let stopped = || StorageError::unavailable("the turn writer has stopped");
        let queue = self.queues.get(shard).ok_or_else(stopped)?;
        let (reply, answer) = oneshot::channel();
        queue.send((row, reply)).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// `sql` with the rows as its first parameter, a `jsonb` array, then
/// `more`. PostgreSQL plans it for each batch (`plan_cache_mode`, set in
/// `connect`), so the plan follows the tables as they grow.
pub(super) fn rows_statement<R: Serialize>(
    sql: &str,
    rows: &[R],
    more: impl IntoIterator<Item = Value>,
) -> Result<Statement, StorageError> {
    let json = serde_json::to_value(rows)
        .map_err(|e| StorageError::other(format!("encoding a batch of turns: {e}")))?;
    let values = std::iter::once(Value::Json(Some(Box::new(json)))).chain(more);
    Ok(Statement::from_sql_and_values(DbBackend::Postgres, sql, values))
}

async fn run_rows<R: Serialize>(
    db: &DatabaseConnection,
    sql: &str,
    rows: &[R],
) -> Result<Vec<QueryResult>, StorageError> {
    db.query_all_raw(rows_statement(sql, rows, [])?).await.map_err(storage)
}

/// After a batch failed as a whole: each row alone, so the row at fault
/// fails alone. A batch of one has nothing to isolate and keeps its error,
/// and so does a batch that failed for an outage.
async fn one_by_one<'a, R, T, Fut>(
    error: StorageError,
    rows: &'a [R],
    write: impl Fn(&'a [R]) -> Fut,
) -> Vec<Result<T, StorageError>>
where
    Fut: Future<Output = Result<Vec<T>, StorageError>>,
{
    if rows.len() <= 1 {
        return vec![Err(error)];
    }
    // An outage fails every row alike; one by one, each would wait out the
    // pool's acquire timeout again, and the last caller the sum of them.
    if error.is_unavailable() {
        return rows.iter().map(|_| Err(error.clone())).collect();
    }
    tracing::warn!(%error, turns = rows.len(), "a batch of turn writes failed; writing them one by one");
    let mut outs = Vec::with_capacity(rows.len());
    for one in rows.chunks(1) {
        let out = write(one).await.and_then(|mut out| {
            out.pop().ok_or_else(|| StorageError::other("a turn write answered nothing"))
        });
        outs.push(out);
    }
    outs
}

/// One answer per row, in order: the seq, or `None` for a session that is
/// not the caller's.
async fn write_begins(
    db: &DatabaseConnection,
    rows: &[BeginRow],
) -> Result<Vec<Option<(i64, bool)>>, StorageError> {
    let mut seqs = HashMap::with_capacity(rows.len());
    for row in run_rows(db, BEGIN_SQL, rows).await? {
        let id: Uuid = row.try_get("", "id").map_err(storage)?;
        let seq: i64 = row.try_get("", "seq").map_err(storage)?;
        let files: bool = row.try_get("", "session_files").map_err(storage)?;
        seqs.insert(id, (seq, files));
    }
    Ok(rows.iter().map(|row| seqs.get(&row.turn_id).copied()).collect())
}

/// One answer per row, in order: the turn as persisted, or `None` when it
/// is gone.
async fn write_finishes(
    db: &DatabaseConnection,
    rows: &[FinishRow],
) -> Result<Vec<Option<turn::Model>>, StorageError> {
    let mut turns = HashMap::with_capacity(rows.len());
    for row in run_rows(db, FINISH_SQL, rows).await? {
        let model = turn::Model::from_query_result(&row, "").map_err(storage)?;
        turns.insert(model.id, model);
    }
    Ok(rows.iter().map(|row| turns.remove(&row.id)).collect())
}

async fn begin_batch(db: DatabaseConnection, mut rows: Vec<BeginRow>) -> Vec<Begun> {
    for (ord, row) in rows.iter_mut().enumerate() {
        row.ord = ord;
    }
    match write_begins(&db, &rows).await {
        Ok(seqs) => seqs.into_iter().map(Ok).collect(),
        Err(error) => one_by_one(error, &rows, |one| write_begins(&db, one)).await,
    }
}

async fn finish_batch(db: DatabaseConnection, rows: Vec<FinishRow>) -> Vec<Finished> {
    match write_finishes(&db, &rows).await {
        Ok(turns) => turns.into_iter().map(Ok).collect(),
        Err(error) => one_by_one(error, &rows, |one| write_finishes(&db, one)).await,
    }
}
