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
pub mod sse;
pub mod state;
pub mod telemetry;

use std::future::Future;

use tokio::net::TcpListener;

pub use app::{StartError, build};
pub use routes::router;
pub use state::AppState;

/// Serves the router on `listener` until `shutdown` resolves, then shuts
/// down gracefully: stops accepting, lets running turns finish within
/// `server.shutdown_grace_secs`, ends the rest as `incomplete` (open streams
/// get their terminal event), waits for open requests, and returns once
/// every turn is persisted.
///
/// # Errors
/// The I/O error that stopped the server.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (turns, grace) = (state.turns.clone(), state.shutdown_grace);
    let (drained, all_persisted) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        tokio::spawn(async move {
            turns.drain(grace).await;
            let _ = drained.send(());
        });
    };
    let served = axum::serve(listener, router(state)).with_graceful_shutdown(signal).await;
    // Turns whose clients are gone have no connection keeping the server
    // up; wait for them too. (Returns at once if the signal never came.)
    let _ = all_persisted.await;
    served
}
