//! Pantheon's HTTP front: the Axum router, the extractors whose rejections
//! are problem responses, the mapping of domain errors to HTTP, and the
//! wiring of the `pantheon` binary. Handlers hold no business logic: they
//! parse, call a domain service, and map the result.

pub mod app;
pub mod dto;
pub mod error;
pub mod extract;
pub mod problem;
pub mod rate_limit;
pub mod routes;
pub mod state;
pub mod telemetry;

use std::future::Future;

use tokio::net::TcpListener;

pub use app::{StartError, build};
pub use routes::router;
pub use state::AppState;

/// Serves the router on `listener` until `shutdown` resolves, then stops
/// accepting and waits for in-flight requests.
///
/// # Errors
/// The I/O error that stopped the server.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await
}
