//! Following a turn from any instance: its events after a `seq` (a stream
//! resumed after a lost connection), and its end (what a cancel answers).
//!
//! The journal (the [`TurnBus`](crate::ports::TurnBus)) carries the events
//! as the turn's own stream sent them; the turn's row is the authority on
//! its end. So a reader falls back on the row whenever the journal goes
//! quiet for an interval: a journal that expired, was lost with its store,
//! or stopped because the instance running the turn died (the sweep then
//! ends the row) still ends every reader's stream, with the whole output.

use std::sync::Arc;

use futures::Stream;

use crate::error::{ProviderError, StorageError, TurnError};
use crate::ids::{Caller, SessionId, TurnId, UserId};
use crate::ports::JournalEntry;
use crate::turn::{FailureKind, Turn, TurnStatus};
use crate::turn_task::TurnContext;

use super::TurnService;
use super::answers::Followed;

impl TurnService {
    /// The events of a turn of the caller's after `after` (all of them,
    /// from `turn.created`, when `None`): those already sent, then the live
    /// ones, then exactly one end, wherever the turn runs; with the turn as
    /// it was committed.
    ///
    /// A gap in the journal (entries lost with its store) is never papered
    /// over: no delta after it is sent, and the end carries the whole
    /// output.
    ///
    /// # Errors
    /// [`TurnError::TurnNotFound`] when the turn is not the caller's;
    /// [`TurnError::Storage`] when the database fails.
    pub async fn follow(
        &self,
        caller: &Caller,
        session_id: SessionId,
        turn_id: TurnId,
        after: Option<u64>,
    ) -> Result<(Turn, impl Stream<Item = Followed> + Send + 'static), TurnError> {
        let turn = self.owned(caller, session_id, turn_id).await?;
        let started = committed(&turn);
        Ok((started, follow(Arc::clone(&self.context), caller.user.clone(), turn, after)))
    }

    /// Cancels a turn of the caller's, wherever it runs, and answers it as
    /// persisted `cancelled` once its instance has stopped it.
    ///
    /// # Errors
    /// - [`TurnError::TurnNotFound`]: not the caller's turn.
    /// - [`TurnError::TurnNotInProgress`]: it had ended, or ended otherwise
    ///   before the cancel reached it (with the turn as it ended).
    /// - [`TurnError::CancelUnconfirmed`]: its end was not seen within the
    ///   time the sweep takes to end a dead instance's turns.
    /// - [`TurnError::Storage`]: the database, or the bus, failed.
    pub async fn cancel(
        &self,
        caller: &Caller,
        session_id: SessionId,
        turn_id: TurnId,
    ) -> Result<Turn, TurnError> {
        let turn = self.owned(caller, session_id, turn_id).await?;
        if turn.status != TurnStatus::InProgress {
            return Err(TurnError::TurnNotInProgress(Box::new(turn)));
        }
        if !self.context.live.cancel(turn_id) {
            self.context.bus.request_cancel(turn_id).await?;
        }
        let policy = &self.context.policy;
        let patience = policy.stale_after() + 2 * policy.checkpoint_interval;
        let events = follow(Arc::clone(&self.context), caller.user.clone(), turn, None);
        let end = tokio::time::timeout(patience, async {
            futures::pin_mut!(events);
            while let Some(event) = futures::StreamExt::next(&mut events).await {
                if let Followed::Ended { outcome, .. } = event {
                    return Some(outcome);
                }
            }
            None
        });
        let outcome = end.await.ok().flatten().ok_or(TurnError::CancelUnconfirmed(turn_id))?;
        let turn = match outcome {
            Ok(turn) => turn,
            Err(
                TurnError::Provider { turn, .. }
                | TurnError::Interrupted { turn }
                | TurnError::TurnNotInProgress(turn),
            ) => *turn,
            Err(error) => return Err(error),
        };
        if turn.status == TurnStatus::Cancelled {
            Ok(turn)
        } else {
            Err(TurnError::TurnNotInProgress(Box::new(turn)))
        }
    }

    /// Cancels `turn` if it generates in this process: a cancel request
    /// that another instance sent over the bus. `false` when it does not.
    pub fn cancel_here(&self, turn: TurnId) -> bool {
        self.context.live.cancel(turn)
    }
}

/// The stream of [`TurnService::follow`].
fn follow(
    context: Arc<TurnContext>,
    user: UserId,
    turn: Turn,
    after: Option<u64>,
) -> impl Stream<Item = Followed> + Send + 'static {
    async_stream::stream! {
        let mut reader = context.bus.reader(turn.id);
        let mut last = after;
        // Set at a gap: no delta after it is relayed, the end tells all.
        let mut gap = false;
        // The first read only looks: a late reader whose journal expired
        // hears of the end at once, from the row.
        let mut wait = std::time::Duration::ZERO;
        let mut read_any = false;
        let mut warned = false;
        loop {
            let entries = match reader.read(last, wait).await {
                Ok(entries) => entries,
                Err(error) => {
                    if !std::mem::replace(&mut warned, true) {
                        tracing::warn!(turn.id = %turn.id, error = %error, "a turn's journal cannot be read; following its row");
                    }
                    tokio::time::sleep(wait).await;
                    Vec::new()
                }
            };
            // The row is the authority once the journal said nothing for a
            // whole wait, or holds nothing at all (expired, never kept);
            // not when a look finds the writer still sending.
            let ask_row = entries.is_empty()
                && (!wait.is_zero() || (!read_any && !reader.exists().await.unwrap_or(false)));
            read_any |= !entries.is_empty();
            wait = context.policy.checkpoint_interval;
            for (seq, entry) in entries {
                if last.is_some_and(|last| seq <= last) {
                    continue;
                }
                gap |= seq != last.map_or(0, |last| last + 1);
                match entry {
                    JournalEntry::Ended { recorded, .. } => {
                        let outcome = ended(&context, &user, &turn, recorded).await;
                        yield Followed::Ended { seq, outcome };
                        return;
                    }
                    JournalEntry::Created if !gap => yield Followed::Created(committed(&turn)),
                    JournalEntry::Delta(text) if !gap => yield Followed::Delta { seq, text },
                    JournalEntry::Tool(event) if !gap => yield Followed::Tool { seq, event },
                    JournalEntry::Created | JournalEntry::Delta(_) | JournalEntry::Tool(_) => {}
                }
                last = Some(seq);
            }
            if ask_row {
                // Nothing new for a while: the row may have ended without
                // the journal telling (expired, lost, its instance dead).
                match context.turns.get(&user, turn.session_id, turn.id).await {
                    Ok(Some(now)) if now.status == TurnStatus::InProgress => {}
                    Ok(Some(now)) => {
                        let seq = last.map_or(1, |last| last + 1);
                        yield Followed::Ended { seq, outcome: outcome_of(now) };
                        return;
                    }
                    Ok(None) => {
                        let seq = last.map_or(1, |last| last + 1);
                        yield Followed::Ended { seq, outcome: Err(TurnError::TurnNotFound) };
                        return;
                    }
                    // The database is out: the journal may still tell.
                    Err(_) => {}
                }
            }
        }
    }
}

/// The end the journal announced: the row as it ended, or (when the row
/// could not take the end) the outage the turn's own stream reported.
async fn ended(
    context: &TurnContext,
    user: &UserId,
    turn: &Turn,
    recorded: bool,
) -> Result<Turn, TurnError> {
    let unwritten =
        || TurnError::Storage(StorageError::unavailable("the turn's end is not written yet"));
    if !recorded {
        return Err(unwritten());
    }
    match context.turns.get(user, turn.session_id, turn.id).await? {
        Some(now) if now.status != TurnStatus::InProgress => outcome_of(now),
        Some(_) => Err(unwritten()),
        None => Err(TurnError::TurnNotFound),
    }
}

/// `turn` as it was committed: `turn.created` carries that, however far
/// the turn has gone since.
fn committed(turn: &Turn) -> Turn {
    Turn {
        output: String::new(),
        status: TurnStatus::InProgress,
        finish_reason: None,
        usage: None,
        error: None,
        completed_at: None,
        tool_calls: Vec::new(),
        ..turn.clone()
    }
}

/// An ended turn as its own stream reported it: a success, or the failure
/// or interruption its status records.
pub(crate) fn outcome_of(turn: Turn) -> Result<Turn, TurnError> {
    match turn.status {
        TurnStatus::Failed => {
            let (kind, detail) =
                turn.error.as_ref().map_or((FailureKind::UpstreamError, String::new()), |e| {
                    (e.kind, e.detail.clone())
                });
            let source = match kind {
                FailureKind::UpstreamError => ProviderError::Failed(detail),
                FailureKind::UpstreamTimeout => ProviderError::Timeout,
                FailureKind::UpstreamUnavailable => {
                    ProviderError::Unavailable { retry_after: None, cause: detail }
                }
                FailureKind::UpstreamSaturated => {
                    ProviderError::Saturated { waited: std::time::Duration::ZERO }
                }
            };
            Err(TurnError::Provider { turn: Box::new(turn), source })
        }
        TurnStatus::Incomplete => Err(TurnError::Interrupted { turn: Box::new(turn) }),
        TurnStatus::InProgress | TurnStatus::Completed | TurnStatus::Cancelled => Ok(turn),
    }
}
