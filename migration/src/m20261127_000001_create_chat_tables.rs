//! `users`, `sessions` and `turns`, with the keys and indexes every query
//! of the repositories needs:
//! - sessions listed newest first per user: `(user_id, id)` (ids are UUIDv7);
//! - turns listed in order per session, and `seq` unique: `(session_id, seq)`;
//! - deleting a session deletes its turns: `ON DELETE CASCADE`.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{
    big_integer, big_integer_null, string_len, string_len_null, string_null, text, text_null,
    timestamp_with_time_zone, timestamp_with_time_zone_null, uuid,
};

/// Creates the chat tables.
#[derive(Debug, DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Sessions {
    Table,
    Id,
    UserId,
    Title,
    TurnCount,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Turns {
    Table,
    Id,
    SessionId,
    Seq,
    Input,
    Output,
    Status,
    FinishReason,
    InputTokens,
    OutputTokens,
    TotalTokens,
    ErrorCode,
    ErrorDetail,
    CreatedAt,
    CompletedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Users::Table)
                    .col(string_len(Users::Id, 128).primary_key())
                    .col(timestamp_with_time_zone(Users::CreatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Sessions::Table)
                    .col(uuid(Sessions::Id).primary_key())
                    .col(string_len(Sessions::UserId, 128))
                    .col(string_len_null(Sessions::Title, 200))
                    .col(big_integer(Sessions::TurnCount).default(0))
                    .col(timestamp_with_time_zone(Sessions::CreatedAt))
                    .col(timestamp_with_time_zone(Sessions::UpdatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_sessions_user")
                            .from(Sessions::Table, Sessions::UserId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_sessions_user_id_id")
                    .table(Sessions::Table)
                    .col(Sessions::UserId)
                    .col(Sessions::Id)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Turns::Table)
                    .col(uuid(Turns::Id).primary_key())
                    .col(uuid(Turns::SessionId))
                    .col(big_integer(Turns::Seq))
                    .col(text(Turns::Input))
                    .col(text(Turns::Output).default(""))
                    .col(string_len(Turns::Status, 16))
                    .col(string_null(Turns::FinishReason))
                    .col(big_integer_null(Turns::InputTokens))
                    .col(big_integer_null(Turns::OutputTokens))
                    .col(big_integer_null(Turns::TotalTokens))
                    .col(string_null(Turns::ErrorCode))
                    .col(text_null(Turns::ErrorDetail))
                    .col(timestamp_with_time_zone(Turns::CreatedAt))
                    .col(timestamp_with_time_zone_null(Turns::CompletedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_turns_session")
                            .from(Turns::Table, Turns::SessionId)
                            .to(Sessions::Table, Sessions::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ux_turns_session_id_seq")
                    .table(Turns::Table)
                    .col(Turns::SessionId)
                    .col(Turns::Seq)
                    .unique()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in
            [Turns::Table.into_iden(), Sessions::Table.into_iden(), Users::Table.into_iden()]
        {
            manager.drop_table(Table::drop().table(table).to_owned()).await?;
        }
        Ok(())
    }
}
