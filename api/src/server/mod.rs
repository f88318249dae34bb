//! Serving the router over TCP with the defences a public server needs
//! against its clients: every connection lives by a deadline for its request
//! head, its idle wait and its stalled writes; the number of connections is
//! capped below the open-files limit, and at the cap idle ones make room.
//!
//! Our own accept loop over hyper instead of `axum::serve`, which has none
//! of these (no timeouts, no cap, and an `accept error` line every second
//! once the process runs out of files).
//!
//! The listener's backlog is 4,096 (tokio's default 1,024 overflowed when
//! 2,000 clients connected at once). Each connection's task keeps one timer
//! for the deadline its phase has (head, idle, stalled write), read from one
//! per-connection atomic word that its reads, its service call and the end
//! of its response body update: no lock per request. hyper's own
//! `header_read_timeout` is off, as it also runs while a keep-alive
//! connection idles. A semaphore caps connections below the open-files
//! limit; a registry touched at open and close only lets the accept loop
//! close the longest-idle connections at the cap, and every one at
//! shutdown (once every turn is persisted, a connection not done within
//! 1 s, a client not reading, is dropped). The body deadline is in the JSON
//! extractors, so a late body is a `408` problem.

mod accept;
mod connection;
mod io;
mod limits;
mod registry;
mod service;
mod state;

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

pub use limits::{connection_cap, raise_open_files_limit};

use self::state::Timeouts;

/// How long, once every turn is persisted at shutdown, open connections
/// get to finish their responses before they are dropped.
const FLUSH_WAIT: Duration = Duration::from_secs(1);

/// The most bytes of a request head (request line and headers) hyper
/// reads before it answers `431`. hyper checks between reads, so a head
/// that arrives in one read may run past it by that read's size.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// The connection settings, resolved at start.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// `server.header_read_timeout_ms`
    pub header_read_timeout: Duration,
    /// `server.idle_timeout_secs`
    pub idle_timeout: Duration,
    /// `turns.write_timeout_secs`
    pub write_timeout: Duration,
    /// `server.max_connections`, or the default [`connection_cap`] derives.
    pub max_connections: usize,
}

/// Serves `router` on `listener` until `shutdown` resolves, then shuts
/// down gracefully: stops accepting, awaits `draining` (the application's
/// own drain: for Pantheon, running turns finish within
/// `server.shutdown_grace_secs`, the rest end `incomplete` and their open
/// streams get their terminal event) while open requests go on, and
/// returns once `draining` is done and every connection is closed.
///
/// # Errors
/// None today: accept errors are logged and retried, never returned; the
/// `Result` keeps callers ready for a listener that can fail for good.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
    draining: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut builder = http1::Builder::new();
    // Off: see `connection`'s module doc; our own timer replaces it.
    builder.header_read_timeout(None);
    // A head larger than this is answered `431` by hyper: by default it
    // buffered ~400 KiB of head, so one request could carry a 420 KB header.
    builder.max_header_size(MAX_HEAD_BYTES);
    // hyper's default, kept on purpose: a client's FIN ends its connection.
    // A FIN is all a server sees of a client that shut its write side only
    // (`shutdown(SHUT_WR)`) and of one that left; taking it for leaving is
    // what lets `turns.on_disconnect = cancel` stop a stream (and its
    // upstream request) at once while the provider is silent, instead of at
    // the next write that fails. A half-closed request gets no answer
    // (`request_heads::a_client_that_half_closes_after_its_request_is_taken_for_gone`).
    builder.half_close(false);
    let registry = Arc::new(registry::Registry::default());
    let tasks = TaskTracker::new();
    let acceptor = accept::Acceptor {
        listener,
        router,
        builder: Arc::new(builder),
        timeouts: Timeouts {
            header: limits.header_read_timeout,
            idle: limits.idle_timeout,
            write: limits.write_timeout,
        },
        slots: Arc::new(Semaphore::new(limits.max_connections)),
        registry: registry.clone(),
        tasks: tasks.clone(),
    };
    let shutdown = pin!(shutdown);
    // Returns when the signal comes; the listener is closed with it.
    acceptor.run(shutdown).await;
    // In a task of its own: it runs while connections are closed below.
    let (drained, all_drained) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        draining.await;
        let _ = drained.send(());
    });
    registry.close_all();
    tasks.close();
    // The drain first (for Pantheon: every turn persisted; those whose
    // clients are gone have no connection keeping the server up). Then a
    // connection still open is one whose client is not reading the rest of
    // its response: it gets [`FLUSH_WAIT`] to take it, then is dropped
    // rather than allowed to hold the process for its write timeout.
    let _ = all_drained.await;
    if tokio::time::timeout(FLUSH_WAIT, tasks.wait()).await.is_err() {
        tracing::info!(
            connections = tasks.len(),
            "shutting down: dropping connections whose clients are not reading"
        );
        registry.drop_all();
        tasks.wait().await;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
