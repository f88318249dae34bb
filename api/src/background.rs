//! The process's background tasks — the turn writers, the limiter actor,
//! the checkpointer and the sweep — started by the composition root and
//! stopped by [`crate::serve`] once the last turn is persisted (they serve
//! the turns until then), so nothing outlives the server.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long [`Background::stop`] waits for the tasks to end.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// The tracked background tasks and the token that stops them.
#[derive(Debug, Clone, Default)]
pub struct Background {
    tracker: TaskTracker,
    stop: CancellationToken,
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

    /// Stops every task and waits (bounded) for them to end.
    pub async fn stop(&self) {
        self.stop.cancel();
        self.tracker.close();
        if tokio::time::timeout(STOP_WAIT, self.tracker.wait()).await.is_err() {
            tracing::warn!(tasks = self.tracker.len(), "background tasks did not stop in time");
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
}
