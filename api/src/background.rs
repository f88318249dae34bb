//! The process's background tasks — the turn writers, the limiter actor,
//! the checkpointer and the sweep — started by the composition root and
//! stopped by [`crate::serve`] once the last turn is persisted (they serve
//! the turns until then), so nothing outlives the server.
//!
//! Two kinds: most are stopped (cancelled at their next `.await`); a task
//! with work still owed at shutdown — the limiter actor, whose last lease
//! releases and refunds must reach Redis — is left to end on its own once
//! what feeds it is dropped, which the stopped tasks' end brings about.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long [`Background::stop`] waits for each kind of task to end.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// The tracked background tasks and the tokens that stop them.
#[derive(Debug, Clone, Default)]
pub struct Background {
    tracker: TaskTracker,
    stop: CancellationToken,
    /// Tasks that end on their own ([`Background::spawn_ending`]).
    ending: TaskTracker,
    /// Cancels those that did not end within [`STOP_WAIT`].
    abort: CancellationToken,
}

impl Background {
    /// Runs `task` until it ends or the tasks are stopped.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let stop = self.stop.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                () = task => {}
                () = stop.cancelled() => {}
            }
        });
    }

    /// Runs `task` to its own end: [`Background::stop`] waits for it after
    /// the other tasks have stopped (their end drops what it was waiting
    /// for), and cancels it only if it has not ended within [`STOP_WAIT`].
    pub fn spawn_ending(&self, task: impl Future<Output = ()> + Send + 'static) {
        let abort = self.abort.clone();
        self.ending.spawn(async move {
            tokio::select! {
                () = task => {}
                () = abort.cancelled() => {}
            }
        });
    }

    /// A token cancelled when the tasks are stopped: for a task run by
    /// [`Background::spawn_ending`] that must finish its work then.
    pub fn stopping(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Runs `tick` every `period` (the first at once), a tick at a time,
    /// until the tasks are stopped. A tick that overruns delays the next
    /// rather than piling ticks up.
    pub fn every<F, Fut>(&self, period: Duration, mut tick: F)
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        self.spawn(async move {
            let mut interval = tokio::time::interval(period);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                tick().await;
            }
        });
    }

    /// Stops every task, then waits (bounded) for the ones that end on
    /// their own.
    pub async fn stop(&self) {
        self.stop.cancel();
        self.tracker.close();
        if tokio::time::timeout(STOP_WAIT, self.tracker.wait()).await.is_err() {
            tracing::warn!(tasks = self.tracker.len(), "background tasks did not stop in time");
        }
        self.ending.close();
        if tokio::time::timeout(STOP_WAIT, self.ending.wait()).await.is_err() {
            tracing::warn!(tasks = self.ending.len(), "background tasks did not end; cancelling");
            self.abort.cancel();
            self.ending.wait().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::Background;

    #[tokio::test(start_paused = true)]
    async fn stop_ends_every_task_including_ones_that_never_finish_on_their_own() {
        let background = Background::default();
        background.spawn(std::future::pending());
        let ticks = Arc::new(AtomicUsize::new(0));
        let counted = ticks.clone();
        background.every(Duration::from_secs(1), move || {
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
            }
        });
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        assert_eq!(ticks.load(Ordering::SeqCst), 3, "at once, then every second");
        background.stop().await;
        assert!(background.tracker.is_empty(), "no task outlives stop");
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(ticks.load(Ordering::SeqCst), 3, "no tick after stop");
    }

    #[tokio::test(start_paused = true)]
    async fn stop_lets_an_ending_task_finish_its_work_after_the_stopped_ones_drop_its_input() {
        let background = Background::default();
        let (sender, mut receiver) = tokio::sync::mpsc::channel::<()>(1);
        // A periodic task holding the only sender, like a service holding
        // the limiter's handle.
        background.every(Duration::from_secs(1), move || {
            let _held = &sender;
            async {}
        });
        let finished = Arc::new(AtomicUsize::new(0));
        let done = finished.clone();
        background.spawn_ending(async move {
            while receiver.recv().await.is_some() {}
            // Work owed after the input closed (the last releases): takes
            // time, and is not cut short.
            tokio::time::sleep(Duration::from_secs(1)).await;
            done.fetch_add(1, Ordering::SeqCst);
        });
        background.stop().await;
        assert_eq!(finished.load(Ordering::SeqCst), 1, "the ending task ran to its end");
        assert!(background.ending.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn stop_cancels_an_ending_task_that_does_not_end_in_time() {
        let background = Background::default();
        background.spawn_ending(std::future::pending());
        background.stop().await;
        assert!(background.ending.is_empty(), "no task outlives stop");
    }
}
