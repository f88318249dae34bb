//! A turn's wait for the provider's shared capacity (see
//! [`crate::capacity`]): its slot, at once or after its place in the
//! queue, under the turn's [`Watch`], and how the slot is given back.

use std::time::Duration;

use tokio::time::Instant;

use crate::capacity::{Entry, Outcome, ProviderSlot};
use crate::error::ProviderError;
use crate::turn::Usage;
use crate::turn_run::TurnEvent;

use super::TurnTask;
use super::ending::Ending;
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

/// A turn's wait in the queue across its attempts.
#[derive(Debug, Default)]
pub(super) struct QueueWait {
    /// When it stops waiting: set at its first wait, kept when the
    /// upstream sends it back, so one turn waits at most
    /// `provider.queue_timeout_secs` in all.
    until: Option<Instant>,
    /// How long to hold off before queuing again.
    pause: Option<Duration>,
}

/// The longest a refused turn holds off before queuing again, whatever
/// the upstream's `Retry-After` says (the queue's deadline bounds it too).
const MAX_PAUSE: Duration = Duration::from_secs(5);

/// The hold-off when the upstream refused without saying how long.
const DEFAULT_PAUSE: Duration = Duration::from_secs(1);

impl QueueWait {
    /// After the upstream refused the turn for its capacity: wait what it
    /// asked (or a second) before queuing again, so a turn is not
    /// dispatched straight back into the refusal it just had.
    pub(super) fn refused(&mut self, ending: &Ending) {
        let asked = match ending {
            Ending::Failed(ProviderError::Unavailable { retry_after, .. }) => *retry_after,
            _ => None,
        };
        self.pause = Some(asked.unwrap_or(DEFAULT_PAUSE).min(MAX_PAUSE));
    }
}

/// Gives a turn's slot back with what the turn used and how the upstream
/// answered: a refusal for capacity shrinks the effective capacity.
pub(super) fn release(slot: Option<ProviderSlot>, usage: Option<&Usage>, ending: &Ending) {
    let Some(mut slot) = slot else {
        return;
    };
    let used = usage.map_or(0, |u| u64::try_from(u.total_tokens).unwrap_or(0));
    let outcome = match ending {
        Ending::Failed(ProviderError::Unavailable { .. }) => Outcome::Throttled,
        _ if usage.is_none() => Outcome::Unused,
        _ => Outcome::Served,
    };
    slot.settle(used, outcome);
}

/// Whether a round refused by the upstream for its capacity goes back in
/// the queue instead of failing the turn: only a first request, with
/// nothing sent to the client yet, held by a slot (so the refusal shrank
/// the capacity it waits for).
pub(super) fn requeue(ending: &Ending, slot: Option<&ProviderSlot>, first_round: bool) -> bool {
    first_round
        && slot.is_some()
        && matches!(ending, Ending::Failed(ProviderError::Unavailable { .. }))
}
