//! Pantheon's HTTP front: the Axum router, the extractors whose rejections
//! are problem responses, the mapping of domain errors to HTTP, and the
//! wiring of the `pantheon` binary. Handlers hold no business logic: they
//! parse, call a domain service, and map the result.

pub mod app;
pub mod background;
pub mod dto;
pub mod error;
pub mod extract;
pub mod metrics;
pub mod openapi;
pub mod problem;
pub mod rate_limit;
pub mod request_id;
pub mod routes;
pub mod server;
pub mod sse;
pub mod state;
pub mod telemetry;

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

pub use app::{Built, StartError, build};
pub use routes::router;
pub use server::serve;
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
