//! Uploaded files and each user's storage counters:
//! - `uploaded_files`: one row a file, `uploading` while its bytes arrive
//!   (`bytes` then holds what it reserved so far), `ready` once stored
//!   whole, `deleting` until its blob is gone. `session_id` has no foreign
//!   key: deleting a session marks its files `deleting` instead, so their
//!   blobs are removed before their rows;
//! - `user_storage`: the counters the quotas are checked against, one row a
//!   user, changed only by single conditional statements so that concurrent
//!   uploads on any instance can never together pass a quota.
//!
//! - `deleted_files`: a deleted file's id and owner, kept a day, so that
//!   deleting it again answers as the first deletion did (and another
//!   user's id still as a missing file).
//!
//! Indexes: a user's files newest first `(user_id, created_at)`, a
//! session's files `(session_id)`, and the sweep's `(status, updated_at)`.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{
    big_integer, string_len, text, text_null, timestamp_with_time_zone, uuid, uuid_null,
};

/// Creates `uploaded_files`, `user_storage` and `deleted_files`.
#[derive(Debug, DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum UploadedFiles {
    Table,
    Id,
    UserId,
    SessionId,
    Filename,
    ContentType,
    Bytes,
    Sha256,
    Status,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum DeletedFiles {
    Table,
    Id,
    UserId,
    DeletedAt,
}

#[derive(DeriveIden)]
enum UserStorage {
    Table,
    UserId,
    Bytes,
    Files,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(UploadedFiles::Table)
                    .col(uuid(UploadedFiles::Id).primary_key())
                    .col(string_len(UploadedFiles::UserId, 128))
                    .col(uuid_null(UploadedFiles::SessionId))
                    .col(text(UploadedFiles::Filename))
                    .col(text(UploadedFiles::ContentType))
                    .col(big_integer(UploadedFiles::Bytes).default(0))
                    .col(text_null(UploadedFiles::Sha256))
                    .col(text(UploadedFiles::Status))
                    .col(timestamp_with_time_zone(UploadedFiles::CreatedAt))
                    .col(timestamp_with_time_zone(UploadedFiles::UpdatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_uploaded_files_user")
                            .from(UploadedFiles::Table, UploadedFiles::UserId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        let indexes = [
            (
                "ix_uploaded_files_user_id_created_at",
                vec![UploadedFiles::UserId, UploadedFiles::CreatedAt],
            ),
            ("ix_uploaded_files_session_id", vec![UploadedFiles::SessionId]),
            (
                "ix_uploaded_files_status_updated_at",
                vec![UploadedFiles::Status, UploadedFiles::UpdatedAt],
            ),
        ];
        for (name, columns) in indexes {
            let mut index = Index::create();
            index.name(name).table(UploadedFiles::Table);
            for column in columns {
                index.col(column);
            }
            manager.create_index(index.to_owned()).await?;
        }
        manager
            .create_table(
                Table::create()
                    .table(UserStorage::Table)
                    .col(string_len(UserStorage::UserId, 128).primary_key())
                    .col(big_integer(UserStorage::Bytes).default(0))
                    .col(big_integer(UserStorage::Files).default(0))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_user_storage_user")
                            .from(UserStorage::Table, UserStorage::UserId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(DeletedFiles::Table)
                    .col(uuid(DeletedFiles::Id).primary_key())
                    .col(string_len(DeletedFiles::UserId, 128))
                    .col(timestamp_with_time_zone(DeletedFiles::DeletedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_deleted_files_deleted_at")
                    .table(DeletedFiles::Table)
                    .col(DeletedFiles::DeletedAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            DeletedFiles::Table.into_iden(),
            UserStorage::Table.into_iden(),
            UploadedFiles::Table.into_iden(),
        ] {
            manager.drop_table(Table::drop().table(table).to_owned()).await?;
        }
        Ok(())
    }
}
