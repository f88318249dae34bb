//! The composition root: settings in, a ready [`AppState`] out. `main` and
//! the end-to-end tests build the server through the same function, so the
//! tests run the wiring that production runs.

use std::sync::Arc;
use std::time::Duration;

use pantheon_domain::ports::ModelProvider;
use pantheon_domain::{Clock, SessionService, SystemClock, TurnPolicy, TurnService};
use pantheon_infrastructure::auth::TokenVerifier;
use pantheon_infrastructure::db::{
    self, DatabaseProbe, SeaOrmSessionRepository, SeaOrmTurnRepository,
};
use pantheon_infrastructure::limiter::{limit_table, spawn_limiter};
use pantheon_infrastructure::provider::{BuiltinProvider, OpenAiProvider};
use pantheon_infrastructure::settings::{ProviderKind, ProviderSettings, Settings};
use thiserror::Error;

use crate::state::{AppParts, AppState};

/// Why the server could not start.
#[derive(Debug, Error)]
pub enum StartError {
    /// The database could not be reached.
    #[error("cannot connect to the database: {0}")]
    Database(String),
    /// Pending migrations failed.
    #[error("cannot apply migrations: {0}")]
    Migration(String),
    /// A setting could not be used.
    #[error("{0}")]
    Settings(String),
}

/// Connects, migrates (when `database.auto_migrate`), and wires the services.
///
/// # Errors
/// [`StartError`] when a dependency cannot be reached or set up.
pub async fn build(settings: &Settings, clock: Arc<dyn Clock>) -> Result<AppState, StartError> {
    // Migrations first, on their own locked connection: instances started
    // together apply each once, and the pool opens on the migrated schema.
    if settings.database.auto_migrate {
        migration::lock::up(&settings.database)
            .await
            .map_err(|e| StartError::Migration(e.to_string()))?;
    }
    let conn =
        db::connect(&settings.database).await.map_err(|e| StartError::Database(e.to_string()))?;
    let provider = model_provider(&settings.provider)?;
    let policy = TurnPolicy { max_duration: Duration::from_secs(settings.turns.max_duration_secs) };
    let limiter = spawn_limiter(settings, clock.clone()).await;
    let verifier =
        TokenVerifier::new(&settings.auth, limit_table(&settings.rate_limit)).map_err(|e| {
            StartError::Settings(format!("configuration error: auth.jwt_public_key: {e}"))
        })?;
    let turns = TurnService::new(
        Arc::new(SeaOrmTurnRepository::new(conn.clone())),
        provider,
        clock.clone(),
        policy,
        limiter,
    );
    spawn_stale_sweep(turns.clone(), policy.max_duration);
    Ok(AppState::new(AppParts {
        sessions: SessionService::new(
            Arc::new(SeaOrmSessionRepository::new(conn.clone())),
            clock.clone(),
        ),
        turns,
        verifier: Arc::new(verifier),
        database: DatabaseProbe::new(conn),
        max_input_chars: settings.turns.max_input_chars,
        keep_alive: Duration::from_secs(settings.turns.keep_alive_secs),
        on_disconnect: settings.turns.on_disconnect,
        shutdown_grace: Duration::from_secs(settings.server.shutdown_grace_secs),
    }))
}

/// The provider `provider.kind` names, built once: the `openai` one holds
/// the process's one HTTP client (connection pool).
fn model_provider(settings: &ProviderSettings) -> Result<Arc<dyn ModelProvider>, StartError> {
    Ok(match settings.kind {
        ProviderKind::Builtin => {
            Arc::new(BuiltinProvider::new(Duration::from_millis(settings.builtin.chunk_delay_ms)))
        }
        ProviderKind::Openai => Arc::new(
            OpenAiProvider::new(&settings.openai)
                .map_err(|e| StartError::Settings(e.to_string()))?,
        ),
    })
}

/// Ends turns that a crashed instance left `in_progress`: once at start,
/// then every `max_duration` (at least a minute).
fn spawn_stale_sweep(turns: TurnService, max_duration: Duration) {
    let every = max_duration.max(Duration::from_secs(60));
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(every);
        loop {
            interval.tick().await;
            if let Err(error) = turns.sweep_stale().await {
                tracing::warn!(error = %error, "sweeping abandoned turns failed");
            }
        }
    });
}

/// The production clock.
pub fn system_clock() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}
