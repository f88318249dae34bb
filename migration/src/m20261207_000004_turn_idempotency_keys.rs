//! `Idempotency-Key` on turns: the row records the key a client sent and
//! the fingerprint of its request, with its owner, unique per owner. The
//! limiter claims a key before anything is counted; this index is what
//! still holds when that claim is lost (Redis failed over, or the
//! fallback let the retry through): a second row with the key cannot be
//! committed, and the retry is answered the first one's turn.

use sea_orm_migration::prelude::*;

/// Adds `turns.user_id`, `turns.idempotency_key`, `turns.request_hash`
/// (null on rows without a key) and `ux_turns_user_idempotency_key`.
#[derive(Debug, DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Turns {
    Table,
    UserId,
    IdempotencyKey,
    RequestHash,
}

const INDEX: &str = "ux_turns_user_idempotency_key";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite adds one at a time.
        for column in [
            ColumnDef::new(Turns::UserId).string_len(128).null().to_owned(),
            ColumnDef::new(Turns::IdempotencyKey).string_len(255).null().to_owned(),
            ColumnDef::new(Turns::RequestHash).string_len(64).null().to_owned(),
        ] {
            manager
                .alter_table(Table::alter().table(Turns::Table).add_column(column).to_owned())
                .await?;
        }
        // Partial: only keyed turns are in it (the same SQL on both stores).
        manager
            .get_connection()
            .execute_unprepared(&format!(
                "CREATE UNIQUE INDEX {INDEX} ON turns (user_id, idempotency_key) \
                 WHERE idempotency_key IS NOT NULL"
            ))
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_index(Index::drop().name(INDEX).table(Turns::Table).to_owned()).await?;
        for column in [Turns::RequestHash, Turns::IdempotencyKey, Turns::UserId] {
            manager
                .alter_table(Table::alter().table(Turns::Table).drop_column(column).to_owned())
                .await?;
        }
        Ok(())
    }
}
