//! The life of this process's turns: the tracker of the generating tasks,
//! which graceful shutdown drains, and the gate that holds the sweep back
//! after the database was unreachable.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a drain waits for aborted turns to persist.
const ABORT_WAIT: Duration = Duration::from_secs(10);

/// The generating tasks of this process, for graceful shutdown.
#[derive(Debug, Default)]
pub(crate) struct Lifecycle {
    tracker: TaskTracker,
    /// Cancelled when the shutdown grace is over: tasks persist `incomplete`.
    abort: CancellationToken,
    closing: AtomicBool,
    /// Set when a checkpoint or sweep found the database unreachable: no
    /// sweep before then. During an outage no instance can stamp its
    /// heartbeats; once it ends, every instance gets the policy's
    /// `stale_after` to stamp them again before this one ends turns for a
    /// missed beat.
    sweep_not_before: Mutex<Option<Instant>>,
}

impl Lifecycle {
    /// Whether shutdown began: new turns are refused.
    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    /// Runs a turn's task, tracked until it ends.
    pub(crate) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.tracker.spawn(task);
    }

    /// Turns generating now.
    pub(crate) fn running(&self) -> usize {
        self.tracker.len()
    }

    /// Cancelled when the shutdown grace is over.
    pub(crate) fn abort(&self) -> &CancellationToken {
        &self.abort
    }

    /// The database was found unreachable: hold the sweep back for
    /// `stale_after` from now.
    pub(crate) fn storage_failed(&self, stale_after: Duration) {
        *self.sweep_not_before.lock().unwrap_or_else(PoisonError::into_inner) =
            Some(Instant::now() + stale_after);
    }

    /// Whether the sweep must wait (see `sweep_not_before`).
    pub(crate) fn sweep_held_back(&self) -> bool {
        self.sweep_not_before
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|until| Instant::now() < until)
    }

    /// Refuses new turns, lets running ones finish within `grace`, then
    /// aborts the rest (they persist `incomplete`) and waits for them.
    pub(crate) async fn drain(&self, grace: Duration) {
        self.closing.store(true, Ordering::SeqCst);
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait()).await.is_err() {
            tracing::warn!(
                turns = self.tracker.len(),
                "shutdown grace over; ending the remaining turns as incomplete"
            );
            self.abort.cancel();
            if tokio::time::timeout(ABORT_WAIT, self.tracker.wait()).await.is_err() {
                tracing::error!("turns still running after the abort wait");
            }
        }
    }
}
