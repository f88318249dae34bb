//! What the caller of a turn holds while its task generates the reply:
//! the [`TurnRun`], and the [`TurnEvent`]s it receives.

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::error::TurnError;
use crate::limiter::RateLimitStatus;
use crate::tool::ToolEvent;
use crate::turn::Turn;

/// What a run reports while it generates.
#[derive(Debug)]
pub enum TurnEvent {
    /// A chunk of the reply.
    Delta(String),
    /// The turn waits for the provider's shared capacity: its place in
    /// line (1: next), when known. Sent before any delta (again when a
    /// refusal of the upstream sent the turn back in the queue).
    Queued {
        /// Its place.
        place: Option<u64>,
    },
    /// The model called a tool, or a call's result went back to it.
    Tool(ToolEvent),
    /// The end: the turn as persisted, or why it did not complete
    /// ([`TurnError::Provider`] and [`TurnError::Interrupted`] carry the turn).
    /// Boxed: every stream's channel allocates room for 32 events at once,
    /// and an unboxed outcome made each slot 200 bytes instead of 32.
    Finished(Box<Result<Turn, TurnError>>),
}

/// An admitted turn, committed `in_progress`, whose reply is being generated.
#[derive(Debug)]
pub struct TurnRun {
    /// The turn as committed.
    pub turn: Turn,
    /// The caller's usage after this turn; `None` when the check was skipped.
    pub rate_limit: Option<RateLimitStatus>,
    /// Deltas, then exactly one [`TurnEvent::Finished`].
    pub events: mpsc::Receiver<TurnEvent>,
    cancel: CancellationToken,
}

impl TurnRun {
    pub(crate) fn new(
        turn: Turn,
        rate_limit: Option<RateLimitStatus>,
        events: mpsc::Receiver<TurnEvent>,
        cancel: CancellationToken,
    ) -> Self {
        Self { turn, rate_limit, events, cancel }
    }

    /// A token that stops the provider and persists the partial output as
    /// `cancelled` when cancelled.
    pub fn canceller(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Waits for the end, ignoring deltas.
    ///
    /// # Errors
    /// How the turn did not complete (see [`TurnEvent::Finished`]).
    pub async fn outcome(mut self) -> Result<Turn, TurnError> {
        while let Some(event) = self.events.recv().await {
            if let TurnEvent::Finished(outcome) = event {
                return *outcome;
            }
        }
        Err(TurnError::Internal("the turn task ended without an outcome".into()))
    }
}
