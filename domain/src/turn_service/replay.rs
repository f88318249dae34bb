//! Retries with an `Idempotency-Key`: the first attempt's turn, followed
//! from its start wherever it runs, instead of a second turn.

use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;

use crate::error::TurnError;
use crate::idempotency::{IdempotencyKey, KeyClaim};
use crate::ids::{Caller, SessionId, TurnId};
use crate::turn::Turn;
use crate::turn_run::TurnRun;

use super::{Followed, Submitted, TurnService};

/// How often a retry looks for the first attempt's row while that attempt
/// is still committing it.
const ROW_POLL: Duration = Duration::from_millis(20);

/// A started turn, or the first attempt's turn when the request was a
/// retry.
pub enum Started {
    /// A new turn, generating.
    Run(TurnRun),
    /// A retry: the first attempt's turn as committed, and its events from
    /// `turn.created` on (live while it runs, then its end).
    Replay {
        /// The turn as committed.
        turn: Turn,
        /// Its events.
        events: BoxStream<'static, Followed>,
    },
}

impl std::fmt::Debug for Started {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Run(run) => f.debug_tuple("Run").field(run).finish(),
            Self::Replay { turn, .. } => f.debug_struct("Replay").field("turn", turn).finish(),
        }
    }
}

impl Started {
    /// The run of a request that cannot be a retry (it has no key).
    ///
    /// # Errors
    /// [`TurnError::Internal`] for a replay, which only a key can cause.
    pub(super) fn into_run(self) -> Result<TurnRun, TurnError> {
        match self {
            Self::Run(run) => Ok(run),
            Self::Replay { .. } => Err(TurnError::Internal("a replay without a key".into())),
        }
    }
}

/// A JSON submission with a key, answered.
#[derive(Debug)]
pub struct Answered {
    /// Whether this answers a retry (`Idempotent-Replayed: true`).
    pub replayed: bool,
    /// How the turn ended, as its first attempt was answered.
    pub outcome: Result<Submitted, TurnError>,
}

impl TurnService {
    /// The first attempt's turn for a retry with `keyed` that found `held`.
    ///
    /// # Errors
    /// [`TurnError::IdempotencyKeyReused`] when the key came with another
    /// request; [`TurnError::IdempotencyKeyInUse`] when the first attempt's
    /// turn was not committed in time; those of [`TurnService::follow`].
    pub(super) async fn replay(
        &self,
        caller: &Caller,
        session_id: SessionId,
        keyed: Option<(IdempotencyKey, String)>,
        held: KeyClaim,
    ) -> Result<Started, TurnError> {
        let ours = keyed.map(|(_, fingerprint)| fingerprint);
        if ours.as_deref() != Some(held.fingerprint.as_str()) {
            return Err(TurnError::IdempotencyKeyReused);
        }
        self.await_row(caller, session_id, held.turn).await?;
        let (turn, events) = self.follow(caller, session_id, held.turn, None).await?;
        Ok(Started::Replay { turn, events: events.boxed() })
    }

    /// Waits until the turn a claim names is committed: a retry can arrive
    /// while the first attempt is still committing it. A first attempt
    /// that fails to commit lets go of its claim; its retries see the turn
    /// never come and are told to try again.
    async fn await_row(
        &self,
        caller: &Caller,
        session_id: SessionId,
        turn_id: TurnId,
    ) -> Result<(), TurnError> {
        let give_up = tokio::time::Instant::now() + self.context.policy.stale_after();
        loop {
            if self.context.turns.get(&caller.user, session_id, turn_id).await?.is_some() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= give_up {
                return Err(TurnError::IdempotencyKeyInUse);
            }
            tokio::time::sleep(ROW_POLL).await;
        }
    }
}

/// The end of a followed turn: the turn, or how it did not complete.
pub(super) async fn ended(mut events: BoxStream<'static, Followed>) -> Result<Turn, TurnError> {
    while let Some(event) = events.next().await {
        if let Followed::Ended { outcome, .. } = event {
            return outcome;
        }
    }
    Err(TurnError::Internal("a followed turn ended without its end".into()))
}
