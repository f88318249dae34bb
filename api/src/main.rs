//! `pantheon`: serve the API (the default), or mint a development token.

use std::process::ExitCode;

use mimalloc::MiMalloc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use pantheon_api::{app, listen, server, telemetry};
use pantheon_infrastructure::Settings;
use pantheon_infrastructure::auth::TokenMinter;
use pantheon_infrastructure::settings::LogFormat;

/// mimalloc instead of the system allocator: a request allocates and frees
/// dozens of small buffers (headers, JSON, log lines), and glibc's malloc
/// was a tenth of the server's time in the refusal benchmark.
#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

/// Pantheon: rate-limited chat turns.
#[derive(Debug, Parser)]
#[command(name = "pantheon", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the HTTP API (the default).
    Serve,
    /// Print the OpenAPI document (`docs/openapi.json` is its output).
    Openapi,
    /// Print a bearer token signed with the configured `auth.jwt_secret`.
    Token {
        /// The user id (the token's `sub`).
        #[arg(long)]
        user: String,
        /// The limit tier (the token's `tier` claim).
        #[arg(long)]
        tier: Option<String>,
        /// How long the token is valid, e.g. `1h`, `30m`, `7d`.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Some(Command::Openapi)) {
        print!("{}", pantheon_api::openapi::render(&pantheon_api::openapi::document()));
        return ExitCode::SUCCESS;
    }
    let settings = match Settings::load() {
        Ok(settings) => settings,
        Err(e) => return fail(&e),
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Token { user, tier, ttl } => {
            match TokenMinter::new(&settings.auth).and_then(|m| m.mint(&user, tier.as_deref(), ttl))
            {
                Ok(token) => {
                    println!("{token}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            }
        }
        Command::Serve => run_server(settings),
        Command::Openapi => ExitCode::SUCCESS,
    }
}

fn run_server(settings: Settings) -> ExitCode {
    // Held to the end: dropping it flushes the log lines still queued.
    let json = settings.log_format() == LogFormat::Json;
    let _log = match telemetry::init(&settings.log.level, json) {
        Ok(guard) => guard,
        Err(e) => return fail(&e),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    let open_files = server::raise_open_files_limit();
    runtime.block_on(async move {
        let built = match app::build(&settings, app::system_clock()).await {
            Ok(built) => built,
            Err(e) => return fail(&e),
        };
        let listener = match listen(settings.server.addr) {
            Ok(listener) => listener,
            Err(e) => return fail(&format!("cannot listen on {}: {e}", settings.server.addr)),
        };
        tracing::info!(
            addr = %settings.server.addr,
            metrics_addr = built.metrics_addr.map(|a| a.to_string()).as_deref().unwrap_or("off"),
            max_connections = built.limits.max_connections,
            open_files,
            "pantheon listening"
        );
        match built.serve(listener, shutdown_signal()).await {
            Ok(()) => {
                tracing::info!("pantheon stopped");
                ExitCode::SUCCESS
            }
            Err(e) => fail(&format!("server error: {e}")),
        }
    })
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received; finishing in-flight requests");
}

fn fail(message: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("pantheon: {message}");
    ExitCode::from(2)
}
