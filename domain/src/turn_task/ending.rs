//! How a turn's generation ended, and writing that end: at once, or again
//! after a database outage.

use std::time::Duration;

use crate::error::{ProviderError, TurnError};
use crate::ids::TurnId;
use crate::tool::ToolRecord;
use crate::turn::{FinishReason, Turn, TurnEnd, TurnFailure, TurnStatus, Usage};

use super::context::TurnContext;

/// The first pause before an unwritten end of a turn is tried again; it
/// doubles up to [`FINISH_RETRY_MAX`].
const FINISH_RETRY_FIRST: Duration = Duration::from_millis(200);
const FINISH_RETRY_MAX: Duration = Duration::from_secs(5);

/// How generation ended, before it is persisted.
pub(super) enum Ending {
    Completed(FinishReason, Option<Usage>),
    Failed(ProviderError),
    Cancelled,
    ShutDown,
}

impl Ending {
    /// The status the turn ends with.
    pub(super) fn status(&self) -> TurnStatus {
        match self {
            Self::Completed(..) => TurnStatus::Completed,
            Self::Failed(_) => TurnStatus::Failed,
            Self::Cancelled => TurnStatus::Cancelled,
            Self::ShutDown => TurnStatus::Incomplete,
        }
    }
}

impl TurnContext {
    /// Writes how the turn ended, with its usage. The second value is the
    /// end still to be written when the database was unavailable.
    pub(super) async fn persist(
        &self,
        turn: &Turn,
        output: String,
        ending: Ending,
        usage: Option<Usage>,
        tool_calls: Vec<ToolRecord>,
    ) -> (Result<Turn, TurnError>, Option<TurnEnd>) {
        let completed_at = self.clock.now_micros();
        let end = |status, finish_reason, usage, error| TurnEnd {
            output,
            status,
            finish_reason,
            usage,
            error,
            completed_at,
            tool_calls,
        };
        let (end, failure) = match ending {
            Ending::Completed(reason, _) => (end(TurnStatus::Completed, reason, usage, None), None),
            Ending::Failed(error) => {
                let failure = TurnFailure { kind: error.kind(), detail: failure_detail(&error) };
                (
                    end(TurnStatus::Failed, FinishReason::Error, usage, Some(failure)),
                    Some(Err(error)),
                )
            }
            Ending::Cancelled => {
                (end(TurnStatus::Cancelled, FinishReason::Cancelled, usage, None), None)
            }
            Ending::ShutDown => {
                (end(TurnStatus::Incomplete, FinishReason::Cancelled, usage, None), Some(Ok(())))
            }
        };
        let persisted = match self.turns.finish(turn.id, end.clone()).await {
            Ok(persisted) => persisted,
            Err(error) => {
                let retry = error.is_unavailable().then_some(end);
                return (Err(error.into()), retry);
            }
        };
        let outcome = match failure {
            None => Ok(persisted),
            Some(Err(source)) => Err(TurnError::Provider { turn: Box::new(persisted), source }),
            Some(Ok(())) => Err(TurnError::Interrupted { turn: Box::new(persisted) }),
        };
        (outcome, None)
    }

    /// Retries the end of a turn the database refused for an outage, with
    /// backoff, until it lands, `max_duration` passes or the shutdown grace
    /// ends (then the sweep ends the turn `incomplete` with its last
    /// checkpoint). Nothing accepted is dropped in silence: each way out is
    /// logged here, where it is handled.
    pub(super) async fn finish_later(&self, id: TurnId, end: TurnEnd) {
        let give_up = tokio::time::Instant::now() + self.policy.max_duration;
        let mut wait = FINISH_RETRY_FIRST;
        let mut attempts = 1_u32;
        loop {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.lifecycle.abort().cancelled() => {
                    tracing::warn!(turn.id = %id, attempts, "shutting down with the end of a turn unwritten; the sweep will end it incomplete");
                    return;
                }
            }
            attempts += 1;
            match self.turns.finish(id, end.clone()).await {
                Ok(_) => {
                    tracing::info!(turn.id = %id, attempts, "the end of a turn was written after an outage");
                    return;
                }
                Err(error) if error.is_unavailable() && tokio::time::Instant::now() < give_up => {
                    wait = (wait * 2).min(FINISH_RETRY_MAX);
                }
                Err(error) => {
                    tracing::error!(turn.id = %id, attempts, error = %error, "gave up writing the end of a turn; the sweep will end it incomplete");
                    return;
                }
            }
        }
    }
}

/// The public explanation of a provider failure: no upstream detail leaks.
fn failure_detail(error: &ProviderError) -> String {
    match error {
        ProviderError::Failed(_) => "The model provider failed to complete the reply.",
        ProviderError::Timeout => "The model provider did not complete the reply in time.",
        ProviderError::Unavailable { .. } => "The model provider is temporarily unavailable.",
        ProviderError::Saturated { .. } => {
            "The model provider's capacity stayed taken for the whole queue timeout."
        }
    }
    .to_owned()
}
