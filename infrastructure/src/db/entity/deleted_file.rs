//! `deleted_files`: who deleted which file, kept a day, so a repeated
//! delete answers as the first one did.

use sea_orm::entity::prelude::*;

/// A deleted file.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "deleted_files")]
pub struct Model {
    /// The file's id.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// Its owner.
    pub user_id: String,
    /// When its row went.
    pub deleted_at: DateTimeUtc,
}

/// No navigable relations are needed by the queries.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
