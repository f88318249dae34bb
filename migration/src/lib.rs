//! Pantheon's schema, as SeaORM migrations that run unchanged on PostgreSQL
//! and SQLite. The server applies them at start (`database.auto_migrate`);
//! the `migration` binary runs them on its own; both under [`lock`].

pub use sea_orm_migration::prelude::*;

pub mod lock;
mod m20261127_000001_create_chat_tables;
mod m20261128_000002_index_turns_in_progress;
mod m20261202_000003_turn_heartbeat;
mod m20261207_000004_turn_idempotency_keys;
mod m20261208_000005_uploaded_files;
mod m20261208_000006_turn_tool_calls;

/// Every migration, in order.
#[derive(Debug)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261127_000001_create_chat_tables::Migration),
            Box::new(m20261128_000002_index_turns_in_progress::Migration),
            Box::new(m20261202_000003_turn_heartbeat::Migration),
            Box::new(m20261207_000004_turn_idempotency_keys::Migration),
            Box::new(m20261208_000005_uploaded_files::Migration),
            Box::new(m20261208_000006_turn_tool_calls::Migration),
        ]
    }
}
