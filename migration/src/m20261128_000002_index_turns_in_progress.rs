//! An index for the sweep that ends turns a crashed instance left
//! `in_progress`: it filters on `status` and `created_at`.

use sea_orm_migration::prelude::*;

/// Adds `ix_turns_status_created_at`.
#[derive(Debug, DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Turns {
    Table,
    Status,
    CreatedAt,
}

const INDEX: &str = "ix_turns_status_created_at";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name(INDEX)
                    .table(Turns::Table)
                    .col(Turns::Status)
                    .col(Turns::CreatedAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_index(Index::drop().name(INDEX).table(Turns::Table).to_owned()).await
    }
}
