//! The migration CLI: `cargo run -p migration -- up | down | status | fresh`.
//!
//! The database URL is resolved exactly as the server resolves it
//! (`PANTHEON__DATABASE__URL` > `DATABASE_URL` > `pantheon.toml` > default),
//! so the CLI can never migrate a different database than the one served.
//! Every command runs under the migration lock the server takes at start.

use migration::Migrator;
use migration::lock::{LOCK_WAIT, MigrationLock};
use pantheon_infrastructure::Settings;

#[tokio::main]
async fn main() {
    let settings = match Settings::load() {
        Ok(settings) => settings,
        Err(e) => exit_with(&e),
    };
    let lock = match MigrationLock::acquire(&settings.database, LOCK_WAIT).await {
        Ok(lock) => lock,
        Err(e) => exit_with(&format!("cannot take the migration lock: {e}")),
    };
    let conn = lock.connection().clone();
    sea_orm_migration::cli::run_cli_with_custom_connection(Migrator, async move || Ok(conn)).await;
    if let Err(e) = lock.release().await {
        exit_with(&format!("releasing the migration lock: {e}"));
    }
}

fn exit_with(message: &dyn std::fmt::Display) -> ! {
    eprintln!("migration: {message}");
    std::process::exit(2)
}
