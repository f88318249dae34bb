//! `uploaded_files`: one row a file, from the start of its upload until its
//! blob is gone.

use sea_orm::entity::prelude::*;

/// `status` while the bytes arrive: the row holds what it reserved.
pub const UPLOADING: &str = "uploading";
/// `status` of a file stored whole: the only one any read shows.
pub const READY: &str = "ready";
/// `status` of a file whose blob is to go, then its row.
pub const DELETING: &str = "deleting";

/// An uploaded file's row.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "uploaded_files")]
pub struct Model {
    /// UUIDv7; the only part of the blob's path.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// The owner.
    pub user_id: String,
    /// The session it is attached to. No foreign key: a session's deletion
    /// marks its files `deleting` instead, so their blobs go first.
    pub session_id: Option<Uuid>,
    /// The sanitised client name.
    #[sea_orm(column_type = "Text")]
    pub filename: String,
    /// The sniffed type.
    #[sea_orm(column_type = "Text")]
    pub content_type: String,
    /// While `uploading`: the bytes reserved so far; once `ready`: the size.
    pub bytes: i64,
    /// Lowercase hex, set once `ready`.
    #[sea_orm(column_type = "Text", nullable)]
    pub sha256: Option<String>,
    /// `uploading`, `ready` or `deleting`.
    #[sea_orm(column_type = "Text")]
    pub status: String,
    /// The upload started.
    pub created_at: DateTimeUtc,
    /// Last reservation, completion or marking; what the sweep judges by.
    pub updated_at: DateTimeUtc,
}

/// No navigable relations are needed by the queries.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
