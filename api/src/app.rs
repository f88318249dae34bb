//! The composition root: settings in, a ready [`Built`] server out. `main`
//! and the end-to-end tests build the server through the same function, so
//! the tests run the wiring that production runs. Settings and adapters are
//! turned here into what the HTTP front takes (plain values, domain
//! services, the domain's observers).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pantheon_domain::capacity::{GatePolicy, ProviderGate};
use pantheon_domain::observe::{CapacityObserver, Unobserved};
use pantheon_domain::ports::{FileRepository, ModelProvider, Quota};
use pantheon_domain::{
    Clock, FilePolicy, FileService, LimiterObserver, SessionService, SystemClock, TokenCounter,
    TurnPolicy, TurnService,
};
use pantheon_infrastructure::auth::TokenVerifier;
use pantheon_infrastructure::bus;
use pantheon_infrastructure::capacity::{Capacity, capacity_store};
use pantheon_infrastructure::db::{
    self, DatabaseProbe, SeaOrmFileRepository, SeaOrmSessionRepository, SeaOrmTurnRepository,
};
use pantheon_infrastructure::files;
use pantheon_infrastructure::limiter::{limit_table, measured_limiter};
use pantheon_infrastructure::provider::{BuiltinProvider, OpenAiProvider};
use pantheon_infrastructure::settings::{OnDisconnect, ProviderKind, ProviderSettings, Settings};
use pantheon_infrastructure::tokenizer::Tiktoken;
use pantheon_infrastructure::tools::FileTools;
use thiserror::Error;
use tokio::net::TcpListener;

use crate::background::Background;
use crate::metrics::{self, ConnectionPool, Metrics};
use crate::routes::router;
use crate::server::{self, ConnectionLimits, connection_cap};
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
    /// The metrics listener could not be bound.
    #[error("cannot listen on {addr} (server.metrics_addr): {error}")]
    MetricsListener {
        /// `server.metrics_addr`.
        addr: std::net::SocketAddr,
        /// Why.
        error: std::io::Error,
    },
}

/// A server wired from its settings, not yet serving.
#[derive(Debug)]
pub struct Built {
    /// What the handlers reach.
    pub state: AppState,
    /// The connection timeouts and cap.
    pub limits: ConnectionLimits,
    /// Where the metrics listener is bound, when it is on.
    pub metrics_addr: Option<SocketAddr>,
    /// `server.shutdown_grace_secs`.
    shutdown_grace: Duration,
    /// The background tasks, stopped once the last turn is persisted.
    background: Background,
}

impl Built {
    /// Serves the router on `listener` until `shutdown` resolves, then
    /// shuts down gracefully (see [`server::serve`]): running turns finish
    /// within `server.shutdown_grace_secs`, the rest end `incomplete`; it
    /// returns once every turn is persisted, every connection closed and
    /// the background tasks have stopped.
    ///
    /// # Errors
    /// Those of [`server::serve`].
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let (turns, grace) = (self.state.turns.clone(), self.shutdown_grace);
        let files = self.state.files.clone();
        let draining = async move {
            // Uploads and turns drain together, within the one grace.
            tokio::join!(turns.drain(grace), files.drain(grace));
            // These clones hold the limiter's handle too: the actor ends
            // once the last one is dropped (see `Background::stop`).
            drop(turns);
            drop(files);
        };
        let served = server::serve(listener, router(self.state), self.limits, shutdown, draining);
        let result = served.await;
        self.background.stop().await;
        result
    }

    /// Stops the background tasks of a server that will not serve.
    pub async fn stop(self) {
        drop(self.state);
        self.background.stop().await;
    }
}

/// The database pool as the metrics read it.
impl ConnectionPool for DatabaseProbe {
    fn connections(&self) -> (u64, u64) {
        self.pool_connections()
    }
}

/// The connection limits `settings` configure, under the current
/// open-files limit.
fn connection_limits(settings: &Settings) -> ConnectionLimits {
    let files_per_client = if settings.provider.kind == ProviderKind::Openai { 2 } else { 1 };
    ConnectionLimits {
        header_read_timeout: Duration::from_millis(settings.server.header_read_timeout_ms),
        idle_timeout: Duration::from_secs(settings.server.idle_timeout_secs),
        write_timeout: Duration::from_secs(settings.turns.write_timeout_secs),
        max_connections: connection_cap(
            settings.server.max_connections,
            u64::from(db::pool_size(&settings.database)),
            files_per_client,
        ),
    }
}

/// Connects, migrates (when `database.auto_migrate`), and wires the services.
///
/// # Errors
/// [`StartError`] when a dependency cannot be reached or set up.
pub async fn build(settings: &Settings, clock: Arc<dyn Clock>) -> Result<Built, StartError> {
    // Migrations first, on their own locked connection: instances started
    // together apply each once, and the pool opens on the migrated schema.
    if settings.database.auto_migrate {
        migration::lock::up(&settings.database)
            .await
            .map_err(|e| StartError::Migration(e.to_string()))?;
    }
    let conn =
        db::connect(&settings.database).await.map_err(|e| StartError::Database(e.to_string()))?;
    for deprecation in settings.deprecations() {
        tracing::warn!("{deprecation}");
    }
    // Loaded once per process, here rather than on the first turn.
    let tokens: Arc<dyn TokenCounter> = Arc::new(Tiktoken::new(settings.rate_limit.tokenizer));
    let provider = model_provider(&settings.provider, tokens.clone())?;
    let policy = TurnPolicy {
        max_duration: Duration::from_secs(settings.turns.max_duration_secs),
        checkpoint_interval: Duration::from_millis(settings.turns.checkpoint_ms),
        max_output_tokens: u64::from(settings.max_output_tokens()),
        min_output_tokens: u64::from(settings.rate_limit.min_output_tokens),
        coalesce: Duration::from_millis(settings.turns.coalesce_ms),
        idempotency_ttl: Duration::from_secs(settings.turns.idempotency_ttl_secs),
        max_tool_rounds: settings.turns.max_tool_rounds,
    };
    let verifier =
        TokenVerifier::new(&settings.auth, limit_table(&settings.rate_limit)).map_err(|e| {
            StartError::Settings(format!("configuration error: auth.jwt_public_key: {e}"))
        })?;
    let mut metrics = settings.server.metrics_addr.map(|_| Metrics::new(route_templates()));
    let metrics_listener = match settings.server.metrics_addr {
        Some(addr) => {
            Some(crate::listen(addr).map_err(|error| StartError::MetricsListener { addr, error })?)
        }
        None => None,
    };
    // Nothing runs before this point, so a failed start leaves no task behind.
    let background = Background::default();
    let limiter_observer: Arc<dyn LimiterObserver> = match &metrics {
        Some(metrics) => Arc::new(metrics.limiter.clone()),
        None => Arc::new(Unobserved),
    };
    let limiter = match measured_limiter(settings, clock.clone(), limiter_observer).await {
        Some((handle, actor)) => {
            // Ends on its own once the last handle is dropped, after
            // sending the last lease releases and refunds.
            background.spawn_ending(actor);
            Some(handle)
        }
        None => None,
    };
    let (repository, writers) = SeaOrmTurnRepository::new(conn.clone());
    for writer in writers {
        background.spawn(writer);
    }
    let bus = bus::turn_bus(settings)
        .map_err(|e| StartError::Settings(format!("configuration error: redis: {e}")))?;
    let blobs = files::blob_store(&settings.files, &settings.database)
        .map_err(|e| StartError::Settings(format!("configuration error: files: {e}")))?;
    // The tool's schema is compiled here, once for the process.
    let tools = FileTools::new(blobs.clone(), settings.files.max_read_bytes)
        .map_err(|e| StartError::Settings(format!("file_read tool: {e}")))?;
    let file_rows: Arc<dyn FileRepository> = Arc::new(SeaOrmFileRepository::new(conn.clone()));
    let session_rows = Arc::new(SeaOrmSessionRepository::new(conn.clone()));
    let files = FileService::new(
        file_rows.clone(),
        blobs,
        session_rows.clone(),
        clock.clone(),
        file_policy(settings),
        limiter.clone(),
    );
    spawn_file_sweep(&background, &files, settings.files.sweep_interval_secs);
    let mut turns =
        TurnService::new(Arc::new(repository), provider, tokens, clock.clone(), policy, limiter)
            .with_bus(bus.bus)
            .with_files(file_rows, Arc::new(tools));
    if let Some(gate) = provider_gate(settings, &clock, metrics.as_ref(), &background)? {
        turns = turns.with_gate(gate);
    }
    if let Some(writer) = bus.writer {
        // Ends on its own once the last turn's end is appended and the
        // service is gone.
        background.spawn_ending(writer);
    }
    if let Some(target) = bus.cancels {
        let here = turns.clone();
        background.spawn(bus::cancel_listener(target, move |turn| {
            here.cancel_here(turn);
        }));
    }
    if let Some(metrics) = &mut metrics {
        turns = turns.with_observer(metrics.turns.clone());
        metrics.read_at_scrape(turns.clone(), Arc::new(DatabaseProbe::new(conn.clone())));
    }
    spawn_turn_upkeep(&background, &turns, policy);
    let metrics = metrics.map(Arc::new);
    let mut metrics_addr = None;
    if let (Some(listener), Some(metrics)) = (metrics_listener, &metrics) {
        metrics_addr = listener.local_addr().ok();
        background.spawn(metrics::server::serve(listener, metrics.clone()));
    }
    let state = AppState::new(AppParts {
        sessions: SessionService::new(session_rows, clock.clone()).with_files(files.clone()),
        turns,
        files,
        verifier: Arc::new(verifier),
        database: DatabaseProbe::new(conn),
        max_input_chars: settings.turns.max_input_chars,
        keep_alive: Duration::from_secs(settings.turns.keep_alive_secs),
        cancel_on_disconnect: settings.turns.on_disconnect == OnDisconnect::Cancel,
        body_read_timeout: Duration::from_millis(settings.server.body_read_timeout_ms),
        metrics,
    });
    Ok(Built {
        state,
        limits: connection_limits(settings),
        metrics_addr,
        shutdown_grace: Duration::from_secs(settings.server.shutdown_grace_secs),
        background,
    })
}

/// The gate of the provider's shared capacity, when `provider.*` sets
/// one, with its task (and, over Redis, the listener for other instances'
/// grants). The task ends on its own at shutdown, once it has sent the
/// last slots back.
fn provider_gate(
    settings: &Settings,
    clock: &Arc<dyn Clock>,
    metrics: Option<&Metrics>,
    background: &Background,
) -> Result<Option<ProviderGate>, StartError> {
    let store = capacity_store(settings)
        .map_err(|e| StartError::Settings(format!("configuration error: redis: {e}")))?;
    let Some(Capacity { store, grants }) = store else {
        return Ok(None);
    };
    let ttl = Duration::from_secs(settings.rate_limit.lease_ttl_secs);
    let policy = GatePolicy {
        queue_timeout: Duration::from_secs(settings.provider.queue_timeout_secs),
        weights: settings
            .rate_limit
            .tiers
            .iter()
            .map(|(name, t)| (name.clone(), t.weight))
            .collect(),
        renew_every: ttl / 3,
    };
    let observer: Arc<dyn CapacityObserver> = match metrics {
        Some(metrics) => Arc::new(metrics.capacity.clone()),
        None => Arc::new(Unobserved),
    };
    let gate = ProviderGate::new(store, clock.clone(), policy, observer);
    background.spawn_ending(gate.clone().run(background.stopping()));
    if let Some(grants) = grants {
        let waking = gate.clone();
        background.spawn(grants.listen(move |granted| waking.wake(&granted)));
    }
    Ok(Some(gate))
}

/// The router's path templates, the values of the metrics' `route` label.
fn route_templates() -> impl Iterator<Item = String> {
    crate::openapi::document().paths.paths.into_keys()
}

/// The provider `provider.kind` names, built once: the `openai` one holds
/// the process's one HTTP client (connection pool).
fn model_provider(
    settings: &ProviderSettings,
    tokens: Arc<dyn TokenCounter>,
) -> Result<Arc<dyn ModelProvider>, StartError> {
    Ok(match settings.kind {
        ProviderKind::Builtin => Arc::new(BuiltinProvider::new(
            Duration::from_millis(settings.builtin.chunk_delay_ms),
            tokens,
        )),
        ProviderKind::Openai => Arc::new(
            OpenAiProvider::new(&settings.openai)
                .map_err(|e| StartError::Settings(e.to_string()))?,
        ),
    })
}

/// The checkpointer (every interval: the output and heartbeat of this
/// process's generating turns) and the sweep (at start, then every two
/// intervals: turns whose heartbeat stopped are ended `incomplete`). After a
/// crash, its turns are ended within three intervals of their last
/// heartbeat plus one sweep period: about 5 s with the default 1 s.
fn spawn_turn_upkeep(background: &Background, turns: &TurnService, policy: TurnPolicy) {
    let checkpointing = turns.clone();
    background.every(policy.checkpoint_interval, move || {
        let turns = checkpointing.clone();
        async move {
            if let Err(error) = turns.checkpoint().await {
                tracing::warn!(error = %error, "checkpointing turns in progress failed");
            }
        }
    });
    let sweeping = turns.clone();
    background.every(policy.checkpoint_interval * 2, move || {
        let turns = sweeping.clone();
        async move {
            if let Err(error) = turns.sweep_stale().await {
                tracing::warn!(error = %error, "sweeping abandoned turns failed");
            }
        }
    });
}

/// The rules of uploads, from `files.*` and `rate_limit.uploads_per_minute`.
fn file_policy(settings: &Settings) -> FilePolicy {
    let files = &settings.files;
    FilePolicy {
        max_file_bytes: files.max_file_bytes,
        quota: Quota { bytes: files.quota_bytes, files: files.max_files },
        allowed_types: files.allowed_types.clone(),
        max_upload: Duration::from_secs(files.max_upload_secs),
        orphan_grace: Duration::from_secs(files.orphan_grace_secs),
        uploads_per_minute: settings.rate_limit.uploads_per_minute,
    }
}

/// The files' sweep (at start, then every `files.sweep_interval_secs`):
/// what interrupted uploads and deletions left, past their grace.
fn spawn_file_sweep(background: &Background, files: &FileService, every_secs: u64) {
    let sweeping = files.clone();
    background.every(Duration::from_secs(every_secs), move || {
        let files = sweeping.clone();
        async move {
            if let Err(error) = files.sweep().await {
                tracing::warn!(error = %error, "sweeping abandoned files failed");
            }
        }
    });
}

/// The production clock.
pub fn system_clock() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}
