//! The tool calls a turn's model made (`file_read`), kept with the turn as
//! JSON: the API shows them, and they tell what the reply was based on.

use sea_orm_migration::prelude::*;

/// Adds `turns.tool_calls` (JSON text; `NULL` for a turn that called none).
#[derive(Debug, DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Turns {
    Table,
    ToolCalls,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Turns::Table)
                    .add_column(ColumnDef::new(Turns::ToolCalls).text().null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter().table(Turns::Table).drop_column(Turns::ToolCalls).to_owned(),
            )
            .await
    }
}
