//! Instances started at the same instant on an empty database (a scale-up
//! or a rolling deploy onto a fresh database), on the real binary: every one
//! comes up and serves, and each migration is applied once. The migration
//! CLI started beside a server is no different.

use std::time::Duration;

use migration::{Migrator, MigratorTrait};
use pantheon_infrastructure::auth::TokenMinter;
use pantheon_infrastructure::settings::AuthSettings;
use pantheon_tests::process::{self, ServerCommand, ServerProcess};
use pantheon_tests::{Backend, TestDatabase, db, expect_json};
use serde_json::json;

on_both_databases!(
    four_instances_started_together_all_serve,
    the_migration_cli_and_a_server_started_together_both_succeed,
);

/// Answers `/healthz` and an authenticated turn, as a client would see it.
async fn serves(server: &ServerProcess, minter: &TokenMinter) {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let health = client.get(format!("{}/healthz", server.address())).send().await.unwrap();
    assert_eq!(health.status(), 200, "{}", server.output());
    let token = minter
        .mint(&format!("user-{}", uuid::Uuid::new_v4()), None, Duration::from_secs(600))
        .unwrap();
    let sessions = format!("{}/api/v1/sessions", server.address());
    let response =
        client.post(&sessions).bearer_auth(&token).json(&json!({"title": "t"})).send().await;
    let session = expect_json(response.unwrap(), 201).await;
    let turns = format!("{sessions}/{}/turns", session["id"].as_str().unwrap());
    let response = client.post(&turns).bearer_auth(&token).json(&json!({"input": "hello"})).send();
    let turn = expect_json(response.await.unwrap(), 201).await;
    assert_eq!(
        (turn["status"].as_str(), turn["output"].as_str()),
        (Some("completed"), Some("You said: hello"))
    );
}

/// Every migration applied, each recorded once.
async fn applied_once(database: &TestDatabase) {
    let conn = database.connect().await;
    assert!(Migrator::get_pending_migrations(&conn).await.unwrap().is_empty());
    let all = i64::try_from(Migrator::migrations().len()).unwrap();
    assert_eq!(db::count(&conn, "seaql_migrations").await, all);
}

fn minter() -> TokenMinter {
    // The binary runs with the default (development) secret.
    TokenMinter::new(&AuthSettings::default()).unwrap()
}

async fn four_instances_started_together_all_serve(backend: Backend) {
    let database = TestDatabase::create(backend).await;
    let command = ServerCommand::new(&database.url);
    process::binary(); // built before the clock starts, so the starts coincide
    let mut servers: Vec<ServerProcess> = (0..4).map(|_| command.start()).collect();
    for server in &mut servers {
        server.wait_ready().await;
    }
    let minter = minter();
    for server in &servers {
        serves(server, &minter).await;
    }
    applied_once(&database).await;
}

async fn the_migration_cli_and_a_server_started_together_both_succeed(backend: Backend) {
    let database = TestDatabase::create(backend).await;
    let cli = process::migration_binary();
    process::binary();
    let mut server = ServerCommand::new(&database.url).start();
    let url = database.url.clone();
    let migrated = tokio::spawn(async move {
        process::run(cli, &["up"], &[("PANTHEON__DATABASE__URL", url.as_str())]).await
    });
    server.wait_ready().await;
    let migrated = migrated.await.unwrap();
    assert!(migrated.status.success(), "migration up: {migrated:?}");
    serves(&server, &minter()).await;
    applied_once(&database).await;
}
