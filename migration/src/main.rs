//! The migration CLI: `cargo run -p migration -- up | down | status | fresh`.
//!
//! The database URL is resolved exactly as the server resolves it
//! (`PANTHEON__DATABASE__URL` > `DATABASE_URL` > `pantheon.toml` > default),
//! so the CLI can never migrate a different database than the one served.

use migration::Migrator;
use pantheon_infrastructure::{Settings, db};

#[tokio::main]
async fn main() {
    let settings = match Settings::load() {
        Ok(settings) => settings,
        Err(e) => exit_with(&e),
    };
    let conn = match db::connect(&settings.database).await {
        Ok(conn) => conn,
        Err(e) => exit_with(&format!("cannot connect to the database: {e}")),
    };
    sea_orm_migration::cli::run_cli_with_custom_connection(Migrator, async move || Ok(conn)).await;
}

fn exit_with(message: &dyn std::fmt::Display) -> ! {
    eprintln!("migration: {message}");
    std::process::exit(2)
}
