//! `turns`: one exchange each, unique on `(session_id, seq)`.

use sea_orm::entity::prelude::*;

/// A turn row.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "turns")]
pub struct Model {
    /// UUIDv7.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// The session (cascade-deleted with it).
    pub session_id: Uuid,
    /// Position in the session, from 1.
    pub seq: i64,
    /// The user's input.
    #[sea_orm(column_type = "Text")]
    pub input: String,
    /// The reply so far.
    #[sea_orm(column_type = "Text")]
    pub output: String,
    /// `in_progress`, `completed`, …
    pub status: String,
    /// `stop`, `length`, `cancelled`, `error`.
    pub finish_reason: Option<String>,
    /// Reported usage, all three or none.
    pub input_tokens: Option<i64>,
    /// Reported usage.
    pub output_tokens: Option<i64>,
    /// Reported usage.
    pub total_tokens: Option<i64>,
    /// Failure code.
    pub error_code: Option<String>,
    /// Failure detail (public wording).
    #[sea_orm(column_type = "Text", nullable)]
    pub error_detail: Option<String>,
    /// Committed.
    pub created_at: DateTimeUtc,
    /// Reached a final status.
    pub completed_at: Option<DateTimeUtc>,
    /// Last stamped for the generating instance (at the commit, then every
    /// checkpoint), by the store's clock; the sweep ends turns whose
    /// heartbeat stopped. Null only on rows an older version wrote.
    pub heartbeat_at: Option<DateTimeUtc>,
    /// The owner, recorded with an `Idempotency-Key` (unique with it).
    pub user_id: Option<String>,
    /// The client's `Idempotency-Key`, when it sent one.
    pub idempotency_key: Option<String>,
    /// The fingerprint of the request that sent the key.
    pub request_hash: Option<String>,
    /// The tool calls its model made, as JSON; `NULL` when none.
    pub tool_calls: Option<String>,
}

/// No navigable relations are needed by the queries.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

/// A turn's tool calls as stored: `NULL` when there were none.
pub fn tool_calls_column(calls: &[pantheon_domain::tool::ToolRecord]) -> Option<String> {
    if calls.is_empty() { None } else { serde_json::to_string(calls).ok() }
}
