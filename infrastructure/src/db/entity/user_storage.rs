//! `user_storage`: the counters each user's quotas are checked against.

use sea_orm::entity::prelude::*;

/// A user's counters.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "user_storage")]
pub struct Model {
    /// The owner.
    #[sea_orm(primary_key, auto_increment = false)]
    pub user_id: String,
    /// Bytes reserved by uploads in flight, plus the sizes of stored files.
    pub bytes: i64,
    /// Rows in `uploaded_files`, whatever their status.
    pub files: i64,
}

/// No navigable relations are needed by the queries.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
