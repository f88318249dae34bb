//! What a turn keeps of its wait for the provider across attempts, and
//! how it gives its slot back: a leaf, shared by the task's loop
//! (`mod.rs`) and its wait (`queue.rs`).

use std::time::Duration;

use tokio::time::Instant;

use crate::capacity::{Outcome, ProviderSlot};
use crate::error::ProviderError;
use crate::turn::Usage;

use super::ending::Ending;

/// A turn's wait in the queue across its attempts.
#[derive(Debug, Default)]
pub(super) struct QueueWait {
    /// When it stops waiting: set at its first wait, kept when the
    /// upstream sends it back, so one turn waits at most
    /// `provider.queue_timeout_secs` in all.
    pub(super) until: Option<Instant>,
    /// How long to hold off before queuing again.
    pub(super) pause: Option<Duration>,
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
