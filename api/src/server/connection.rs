//! One connection's task: hyper serves it, and one timer per connection
//! enforces whichever deadline its phase has (head, idle, stalled write).
//!
//! hyper's own `header_read_timeout` is off: it also runs while a
//! keep-alive connection waits for its next request, so it would close
//! every idle connection after the head timeout and leave no room for a
//! longer `server.idle_timeout_secs`.

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::io::TrackedIo;
use super::service::TrackedService;
use super::state::{ConnState, Expiry, Timeouts};

/// How a connection's task ended.
#[derive(Debug)]
enum End {
    /// hyper finished it: the client left, or a graceful close completed.
    Served(Result<(), hyper::Error>),
    /// A deadline passed; the connection is dropped without a response.
    TimedOut(Expiry),
    /// The shutdown's last step dropped it.
    Dropped,
}

/// Serves `stream` until the client leaves, a deadline passes, or `close`
/// is cancelled (shutdown, or room needed at the cap): then hyper closes it
/// at once if it holds no request, else after the response in progress.
pub(super) async fn serve_connection(
    builder: &http1::Builder,
    stream: TcpStream,
    router: Router,
    state: Arc<ConnState>,
    close: CancellationToken,
    dropped: CancellationToken,
    timeouts: Timeouts,
) {
    let io = TokioIo::new(TrackedIo::new(stream, state.clone()));
    let mut conn = pin!(builder.serve_connection(io, TrackedService::new(router, state.clone())));
    let mut close = pin!(close.cancelled_owned());
    let mut dropped = pin!(dropped.cancelled_owned());
    let mut timer = pin!(tokio::time::sleep_until(Instant::now()));
    let mut armed: Option<Instant> = None;
    let mut closing = false;
    let end = poll_fn(|cx| {
        loop {
            if let Poll::Ready(result) = conn.as_mut().poll(cx) {
                return Poll::Ready(End::Served(result));
            }
            if dropped.as_mut().poll(cx).is_ready() {
                return Poll::Ready(End::Dropped);
            }
            if !closing && close.as_mut().poll(cx).is_ready() {
                closing = true;
                conn.as_mut().graceful_shutdown();
                continue;
            }
            let Some((deadline, expiry)) = state.next_expiry(&timeouts) else {
                return Poll::Pending;
            };
            if deadline <= Instant::now() {
                if expiry == Expiry::Idle && !closing {
                    // Idle in hyper's eyes too: this closes it at once.
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                    continue;
                }
                return Poll::Ready(End::TimedOut(expiry));
            }
            if armed != Some(deadline) {
                // A later deadline only updates the timer entry; an earlier
                // one (a head's first byte) re-registers it.
                timer.as_mut().reset(deadline);
                armed = Some(deadline);
            }
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // Fired: re-arm from the state on the next round.
            armed = None;
        }
    })
    .await;
    match end {
        End::Served(Ok(())) => {}
        End::Served(Err(error)) => tracing::debug!(%error, "connection ended with an error"),
        End::TimedOut(Expiry::Head) => {
            tracing::debug!("closed a connection whose request head did not arrive in time");
        }
        End::TimedOut(Expiry::Idle) => tracing::debug!("closed an idle connection"),
        End::Dropped => tracing::debug!("dropped a connection still open at the end of shutdown"),
        End::TimedOut(Expiry::Write) => {
            tracing::info!("dropped a connection whose client stopped reading its response");
        }
    }
}
