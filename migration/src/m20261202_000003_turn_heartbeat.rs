//! A heartbeat on every turn: the generating instance stamps it at the
//! start and at every checkpoint, and the sweep ends the turns whose
//! heartbeat stopped (their instance crashed) instead of waiting out the
//! longest a turn may take. The sweep's index is partial: only the few
//! `in_progress` rows are in it, so it stays small however many turns the
//! table holds.

use sea_orm_migration::prelude::*;

/// Adds `turns.heartbeat_at` (existing rows: their `created_at`) and
/// `ix_turns_in_progress_heartbeat`, replacing `ix_turns_status_created_at`.
#[derive(Debug, DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Turns {
    Table,
    Status,
    CreatedAt,
    HeartbeatAt,
}

const INDEX: &str = "ix_turns_in_progress_heartbeat";
const OLD_INDEX: &str = "ix_turns_status_created_at";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Turns::Table)
                    .add_column(
                        ColumnDef::new(Turns::HeartbeatAt).timestamp_with_time_zone().null(),
                    )
                    .to_owned(),
            )
            .await?;
        let db = manager.get_connection();
        db.execute_unprepared("UPDATE turns SET heartbeat_at = created_at").await?;
        // Partial indexes are the same SQL on PostgreSQL and SQLite.
        db.execute_unprepared(&format!(
            "CREATE INDEX {INDEX} ON turns (heartbeat_at) WHERE status = 'in_progress'"
        ))
        .await?;
        manager.drop_index(Index::drop().name(OLD_INDEX).table(Turns::Table).to_owned()).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name(OLD_INDEX)
                    .table(Turns::Table)
                    .col(Turns::Status)
                    .col(Turns::CreatedAt)
                    .to_owned(),
            )
            .await?;
        manager.drop_index(Index::drop().name(INDEX).table(Turns::Table).to_owned()).await?;
        manager
            .alter_table(
                Table::alter().table(Turns::Table).drop_column(Turns::HeartbeatAt).to_owned(),
            )
            .await
    }
}
