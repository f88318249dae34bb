//! The accept loop: one connection per slot of `server.max_connections`;
//! at the cap, idle connections are closed to make room and the next
//! client waits in the listen backlog; accept errors pause the loop and are
//! logged once, then summarised.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use super::connection::serve_connection;
use super::registry::Registry;
use super::state::Timeouts;

/// How often, at the cap with nothing idle, the loop looks again for a
/// connection that has become idle.
const RECLAIM_RETRY: Duration = Duration::from_millis(250);
/// The interval of the accept-error summary.
const SUMMARY_EVERY: Duration = Duration::from_secs(10);
/// The pause after a first accept error, doubled per further error.
const FIRST_PAUSE: Duration = Duration::from_millis(10);
/// The longest pause between two accept attempts that failed.
const MAX_PAUSE: Duration = Duration::from_secs(1);

/// What the loop serves with.
#[derive(Debug)]
pub(super) struct Acceptor {
    pub listener: TcpListener,
    pub router: Router,
    pub builder: Arc<http1::Builder>,
    pub timeouts: Timeouts,
    pub slots: Arc<Semaphore>,
    pub registry: Arc<Registry>,
    pub tasks: TaskTracker,
}

impl Acceptor {
    /// Accepts and spawns connections until `shutdown` resolves.
    pub(super) async fn run(self, mut shutdown: Pin<&mut impl Future<Output = ()>>) {
        let mut errors = AcceptErrors::default();
        loop {
            let accepted = tokio::select! {
                biased;
                () = &mut shutdown => return,
                accepted = self.listener.accept() => accepted,
            };
            let stream = match accepted {
                Ok((stream, _)) => {
                    errors.recovered();
                    stream
                }
                // The client gave up before the accept: nothing to pause for.
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    let pause = errors.record(&e);
                    if is_out_of_files(&e) {
                        self.registry.reclaim_idle();
                    }
                    tokio::select! {
                        biased;
                        () = &mut shutdown => return,
                        () = tokio::time::sleep(pause) => continue,
                    }
                }
            };
            let slot = match self.slots.clone().try_acquire_owned() {
                Ok(slot) => slot,
                Err(_) => tokio::select! {
                    biased;
                    () = &mut shutdown => return,
                    slot = self.make_room() => match slot {
                        Some(slot) => slot,
                        None => return,
                    },
                },
            };
            let registration = self.registry.register(slot);
            let (router, timeouts, builder) =
                (self.router.clone(), self.timeouts, self.builder.clone());
            self.tasks.spawn(async move {
                let state = registration.state.clone();
                let (close, dropped) = (registration.close.clone(), registration.dropped.clone());
                serve_connection(&builder, stream, router, state, close, dropped, timeouts).await;
                drop(registration);
            });
        }
    }

    /// Waits for a free slot, closing idle connections to make one. `None`
    /// if the slots were closed (they never are).
    async fn make_room(&self) -> Option<OwnedSemaphorePermit> {
        loop {
            self.registry.reclaim_idle();
            tokio::select! {
                slot = self.slots.clone().acquire_owned() => return slot.ok(),
                () = tokio::time::sleep(RECLAIM_RETRY) => {}
            }
        }
    }
}

/// Errors that concern one connection, not the listener.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// `EMFILE` (the process's open-files limit) or `ENFILE` (the system's).
fn is_out_of_files(e: &io::Error) -> bool {
    const EMFILE: i32 = 24;
    const ENFILE: i32 = 23;
    matches!(e.raw_os_error(), Some(EMFILE | ENFILE))
}

/// An episode of failing accepts: logged once when it starts, then as a
/// count per [`SUMMARY_EVERY`], and closed with one line once a whole
/// interval passed without an error. A success between two errors does not
/// end it: at the open-files limit every other accept may fail.
#[derive(Debug, Default)]
struct AcceptErrors {
    /// When the current summary interval began; `None` while accepts work.
    window: Option<Instant>,
    last_error_at: Option<Instant>,
    /// Errors since the last line.
    unreported: u64,
    last: Option<String>,
    pause: Duration,
}

impl AcceptErrors {
    /// Counts an error; returns how long to pause before the next accept.
    fn record(&mut self, error: &io::Error) -> Duration {
        match self.window {
            None => {
                tracing::warn!(
                    %error,
                    "cannot accept connections; retrying with backoff, further errors are \
                     summarised every {}s",
                    SUMMARY_EVERY.as_secs()
                );
                self.window = Some(Instant::now());
            }
            Some(_) => {
                self.unreported += 1;
                self.last = Some(error.to_string());
                self.summarise_if_due();
            }
        }
        self.last_error_at = Some(Instant::now());
        self.pause = (self.pause * 2).clamp(FIRST_PAUSE, MAX_PAUSE);
        self.pause
    }

    /// An accept succeeded.
    fn recovered(&mut self) {
        if self.window.is_none() {
            return;
        }
        self.pause = Duration::ZERO;
        self.summarise_if_due();
        if self.last_error_at.is_some_and(|at| at.elapsed() >= SUMMARY_EVERY) {
            self.window = None;
            tracing::info!("accepting connections again");
        }
    }

    fn summarise_if_due(&mut self) {
        if self.window.is_some_and(|since| since.elapsed() >= SUMMARY_EVERY) {
            if self.unreported > 0 {
                tracing::warn!(
                    errors = self.unreported,
                    last_error = self.last.as_deref().unwrap_or_default(),
                    "accept errors since the last report"
                );
                self.unreported = 0;
            }
            self.window = Some(Instant::now());
        }
    }
}
