//! The migrations go up, all the way down, and up again on both databases.

use migration::{Migrator, MigratorTrait};
use pantheon_tests::{Backend, TestDatabase};
use sea_orm::ConnectionTrait;

on_both_databases!(migrations_go_up_down_to_zero_and_up_again);

async fn tables(db: &sea_orm::DatabaseConnection) -> Vec<String> {
    let sql = match db.get_database_backend() {
        sea_orm::DatabaseBackend::Sqlite => {
            "SELECT name AS t FROM sqlite_master WHERE type = 'table' AND name IN ('users','sessions','turns') ORDER BY name"
        }
        _ => {
            "SELECT table_name::text AS t FROM information_schema.tables WHERE table_schema = 'public' AND table_name IN ('users','sessions','turns') ORDER BY table_name"
        }
    };
    db.query_all_raw(sea_orm::Statement::from_string(db.get_database_backend(), sql))
        .await
        .unwrap()
        .into_iter()
        .map(|row| row.try_get::<String>("", "t").unwrap())
        .collect()
}

async fn migrations_go_up_down_to_zero_and_up_again(backend: Backend) {
    let database = TestDatabase::create(backend).await;
    let db = database.connect().await;
    let all = Migrator::migrations().len();

    Migrator::up(&db, None).await.unwrap();
    assert_eq!(tables(&db).await, ["sessions", "turns", "users"]);
    assert_eq!(Migrator::get_applied_migrations(&db).await.unwrap().len(), all);

    Migrator::down(&db, None).await.unwrap();
    assert!(tables(&db).await.is_empty());
    assert!(Migrator::get_applied_migrations(&db).await.unwrap().is_empty());

    Migrator::up(&db, None).await.unwrap();
    assert_eq!(tables(&db).await, ["sessions", "turns", "users"]);
    assert!(Migrator::get_pending_migrations(&db).await.unwrap().is_empty());
}
