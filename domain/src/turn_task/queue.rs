//! A turn's wait for the provider's shared capacity (see
//! [`crate::capacity`]): its slot, at once or after its place in the
//! queue, under the turn's [`Watch`].

use tokio::time::Instant;

use crate::capacity::{Entry, ProviderSlot};
use crate::error::ProviderError;
use crate::turn_run::TurnEvent;

use super::TurnTask;
use super::ending::Ending;
use super::queue_wait::QueueWait;
use super::watch::Watch;

impl TurnTask {
    /// A slot for a request that may use `cost` tokens; `None` when no
    /// capacity is configured, or its store cannot be reached (the turn
    /// goes unqueued). A turn that must wait says so first
    /// (`turn.queued`, with its place in line).
    ///
    /// # Errors
    /// How the turn ends instead: cancelled, shut down or out of time
    /// while it waited, or [`ProviderError::Saturated`] after the queue's
    /// timeout. A wait given up withdraws its ticket.
    pub(super) async fn provider_slot(
        &self,
        cost: u64,
        wait: &mut QueueWait,
        watch: &mut Watch,
    ) -> Result<Option<ProviderSlot>, Ending> {
        let Some(gate) = &self.context.gate else {
            return Ok(None);
        };
        let until = *wait.until.get_or_insert_with(|| Instant::now() + gate.queue_timeout());
        if let Some(pause) = wait.pause.take() {
            // The upstream's own `Retry-After`, or the queue's deadline.
            tokio::select! {
                () = tokio::time::sleep_until((Instant::now() + pause).min(until)) => {}
                ending = watch.stopped() => return Err(ending),
            }
        }
        if Instant::now() >= until {
            return Err(Ending::Failed(ProviderError::Saturated { waited: gate.queue_timeout() }));
        }
        // One store call, bounded by its timeout: not raced with the
        // watch, so a ticket is never left queued by a dropped call.
        let waiting = match gate.enter(&self.user, self.tier.as_deref(), cost, until).await {
            Entry::Granted(slot) => return Ok(Some(slot)),
            Entry::Open => return Ok(None),
            Entry::Queued(waiting) => waiting,
        };
        if let Some(ending) = self.send(TurnEvent::Queued { place: waiting.place() }, watch).await {
            return Err(ending);
        }
        tokio::select! {
            granted = waiting.granted() => match granted {
                Ok(slot) => Ok(slot),
                Err(saturated) => Err(Ending::Failed(ProviderError::Saturated { waited: saturated.waited })),
            },
            ending = watch.stopped() => Err(ending),
        }
    }
}
