//! Retries with an `Idempotency-Key`: the first attempt's turn, followed
//! from its start wherever it runs, instead of a second turn.

use std::time::Duration;

use futures::StreamExt;

use crate::error::TurnError;
use crate::idempotency::{IdempotencyKey, KeyClaim};
use crate::ids::{Caller, SessionId, TurnId};

use super::TurnService;
use super::answers::Started;

/// How often a retry looks for the first attempt's row while that attempt
/// is still committing it.
const ROW_POLL: Duration = Duration::from_millis(20);

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
