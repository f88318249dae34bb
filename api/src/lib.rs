//! Pantheon's HTTP front: the Axum router, the extractors whose rejections
//! are problem responses, the mapping of domain errors to HTTP, and the
//! wiring of the `pantheon` binary. Handlers hold no business logic: they
//! parse, call a domain service, and map the result.

pub mod app;
pub mod background;
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
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

pub use app::{StartError, build};
pub use routes::router;
pub use state::AppState;

/// The accept queue's length (the kernel caps it at `net.core.somaxconn`).
///
/// A burst of new connections larger than the queue overflows it, and the
/// kernel drops the overflowing handshakes; their clients retransmit after
/// the 1 s initial timeout, so those requests start a second late. Tokio's
/// `TcpListener::bind` asks for 1,024, which 2,000 clients connecting at
/// once overflowed (bench scenario E: `ListenOverflows` in `nstat`, and a
/// tail of streams exactly 1 s late).
const ACCEPT_BACKLOG: u32 = 4096;

/// Binds `addr` with [`ACCEPT_BACKLOG`] and `SO_REUSEADDR` (a restart does
/// not wait out the old sockets' `TIME_WAIT`).
///
/// # Errors
/// The I/O error that stopped the bind, e.g. the address is in use.
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(ACCEPT_BACKLOG)
}

/// Serves the router on `listener` until `shutdown` resolves, then shuts
/// down gracefully: stops accepting, lets running turns finish within
/// `server.shutdown_grace_secs`, ends the rest as `incomplete` (open streams
/// get their terminal event), waits for open requests, and returns once
/// every turn is persisted, and stops the background tasks.
///
/// # Errors
/// The I/O error that stopped the server.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (turns, grace) = (state.turns.clone(), state.shutdown_grace);
    let background = state.background.clone();
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
    background.stop().await;
    served
}
