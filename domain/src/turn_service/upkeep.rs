//! The upkeep of the turns of this process: checkpoints of their output
//! and heartbeat, the sweep of turns whose instance died, and the drain at
//! shutdown.

use std::time::Duration;

use crate::error::TurnError;

use super::TurnService;

impl TurnService {
    /// Saves the output and heartbeat of every turn generating here for at
    /// least one interval, and of younger ones with output to save (a turn
    /// that ends between two checkpoints costs no write); returns how many
    /// were stamped.
    ///
    /// # Errors
    /// [`TurnError::Storage`] when the database fails; the outputs are sent
    /// again at the next checkpoint.
    pub async fn checkpoint(&self) -> Result<usize, TurnError> {
        let checkpoints =
            self.context.live.take_checkpoints(self.context.policy.checkpoint_interval);
        if checkpoints.is_empty() {
            return Ok(0);
        }
        if let Err(error) = self.context.turns.checkpoint(&checkpoints).await {
            self.context.live.retake(&checkpoints);
            if error.is_unavailable() {
                self.context.lifecycle.storage_failed(self.context.policy.stale_after());
            }
            return Err(error.into());
        }
        Ok(checkpoints.len())
    }

    /// Marks turns whose instance stopped stamping their heartbeat (it
    /// crashed, or lost its database for good) as `incomplete`, keeping the
    /// output they had checkpointed. Held back for a while after this
    /// instance saw the database unreachable (see `Lifecycle`). Any instance
    /// may run it: a live turn's heartbeat is stamped when its row is
    /// committed, then at least every other interval, so it is never older
    /// than [`TurnPolicy::stale_after`]; the store judges the age by the
    /// clock it stamped with, not this instance's.
    ///
    /// # Errors
    /// [`TurnError::Storage`] when the database fails.
    pub async fn sweep_stale(&self) -> Result<u64, TurnError> {
        if self.context.lifecycle.sweep_held_back() {
            return Ok(0);
        }
        let now = self.context.clock.now_micros();
        let swept =
            match self.context.turns.expire_stale(self.context.policy.stale_after(), now).await {
                Ok(swept) => swept,
                Err(error) => {
                    if error.is_unavailable() {
                        self.context.lifecycle.storage_failed(self.context.policy.stale_after());
                    }
                    return Err(error.into());
                }
            };
        if swept > 0 {
            tracing::warn!(turns = swept, "marked turns abandoned in progress as incomplete");
        }
        Ok(swept)
    }

    /// Graceful shutdown: refuses new turns, lets running ones finish within
    /// `grace`, then ends the rest as `incomplete` (their streams get their
    /// terminal event) and waits for them to be persisted.
    pub async fn drain(&self, grace: Duration) {
        self.context.lifecycle.drain(grace).await;
    }
}
