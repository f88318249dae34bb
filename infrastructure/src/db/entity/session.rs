//! `sessions`: a user's chat sessions; `turn_count` allocates turn `seq`s.

use sea_orm::entity::prelude::*;

/// A session row.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "sessions")]
pub struct Model {
    /// UUIDv7, so ordering by id is ordering by creation.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// The owner.
    pub user_id: String,
    /// Optional title.
    pub title: Option<String>,
    /// Turns ever submitted; bumped by the statement that allocates a `seq`.
    pub turn_count: i64,
    /// Created.
    pub created_at: DateTimeUtc,
    /// Created or last given a turn.
    pub updated_at: DateTimeUtc,
}

/// No navigable relations are needed by the queries.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
