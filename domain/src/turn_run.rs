//! A turn being generated: the task that drives the provider, records the
//! reply and persists how it ended, and the [`TurnRun`] its caller holds.
//!
//! The task, not the request, owns the work: a client that hangs up drops
//! the `TurnRun` (its event receiver), and the task carries on, unless the
//! caller cancels it on purpose (`turns.on_disconnect = cancel`).

use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::error::{ProviderError, TurnError};
use crate::limiter::RateLimitStatus;
use crate::ports::{ReplyEvent, ReplyRequest};
use crate::turn::{FinishReason, Turn, TurnEnd, TurnFailure, TurnStatus, Usage};
use crate::turn_service::{Measured, TurnService};

/// What a run reports while it generates.
#[derive(Debug)]
pub enum TurnEvent {
    /// A chunk of the reply.
    Delta(String),
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

/// How generation ended, before it is persisted.
enum Ending {
    Completed(FinishReason, Option<Usage>),
    Failed(ProviderError),
    Cancelled,
    ShutDown,
}

impl Ending {
    /// The status the turn ends with, and the usage the provider reported.
    fn reported(&self) -> (TurnStatus, Option<Usage>) {
        match self {
            Self::Completed(_, usage) => (TurnStatus::Completed, *usage),
            Self::Failed(_) => (TurnStatus::Failed, None),
            Self::Cancelled => (TurnStatus::Cancelled, None),
            Self::ShutDown => (TurnStatus::Incomplete, None),
        }
    }
}

/// Why the provider stopped early, besides its own failure.
enum Stop {
    Provider(ProviderError),
    Cancelled,
    ShutDown,
}

impl From<ProviderError> for Stop {
    fn from(error: ProviderError) -> Self {
        Self::Provider(error)
    }
}

impl TurnService {
    /// Generates the reply of `turn`, sends its events, and persists how it
    /// ended. Runs in its own (tracked) task.
    pub(crate) async fn drive(
        self,
        turn: Turn,
        events: mpsc::Sender<TurnEvent>,
        cancel: CancellationToken,
        measured: Measured,
    ) {
        let live = self.live.track(turn.id);
        let mut output = String::new();
        let deadline = tokio::time::sleep(self.policy.max_duration);
        tokio::pin!(deadline);
        let abort = self.lifecycle.abort.clone();
        let stopped = |reason: Option<Stop>| match reason {
            Some(Stop::Provider(e)) => Ending::Failed(e),
            Some(Stop::Cancelled) => Ending::Cancelled,
            Some(Stop::ShutDown) | None => Ending::ShutDown,
        };
        let open = async {
            let history = self.history(&turn).await;
            let request =
                ReplyRequest { session_id: turn.session_id, input: turn.input.clone(), history };
            self.provider.reply(request).await
        };
        let opened = tokio::select! {
            opened = open => opened.map_err(Stop::from),
            () = cancel.cancelled() => Err(Stop::Cancelled),
            () = abort.cancelled() => Err(Stop::ShutDown),
            () = &mut deadline => Err(Stop::Provider(ProviderError::Timeout)),
        };
        let ending = match opened {
            Err(stop) => stopped(Some(stop)),
            Ok(mut stream) => loop {
                let item = tokio::select! {
                    item = stream.next() => item,
                    () = cancel.cancelled() => break Ending::Cancelled,
                    () = abort.cancelled() => break Ending::ShutDown,
                    () = &mut deadline => break Ending::Failed(ProviderError::Timeout),
                };
                match item {
                    Some(Ok(ReplyEvent::Delta(delta))) => {
                        if output.is_empty() {
                            self.observer.first_delta(measured.endpoint, measured.since.elapsed());
                        }
                        output.push_str(&delta);
                        live.append(&delta);
                        // A receiver gone means the client left; the turn goes on.
                        let _ = events.send(TurnEvent::Delta(delta)).await;
                    }
                    Some(Ok(ReplyEvent::Finished { finish_reason, usage })) => {
                        break Ending::Completed(finish_reason, usage);
                    }
                    Some(Err(error)) => break Ending::Failed(error),
                    None => break Ending::Completed(FinishReason::Stop, None),
                }
            },
        };
        let (status, usage) = ending.reported();
        let (outcome, unwritten) = self.persist(&turn, output, ending).await;
        // Before the client hears of the end, so whoever saw the response
        // finds it counted.
        self.observer.ended(measured.endpoint, status, measured.since.elapsed(), usage.as_ref());
        if let Some(end) = unwritten {
            // The client hears of the outage now; the end is written when
            // the database is back, and meanwhile `GET` shows the output.
            let _ = events.send(TurnEvent::Finished(Box::new(outcome))).await;
            drop(events);
            self.finish_later(turn.id, end).await;
            drop(live);
            return;
        }
        drop(live);
        let _ = events.send(TurnEvent::Finished(Box::new(outcome))).await;
    }

    /// Retries the end of a turn the database refused for an outage, with
    /// backoff, until it lands, `max_duration` passes or the shutdown grace
    /// ends (then the sweep ends the turn `incomplete` with its last
    /// checkpoint). Nothing accepted is dropped in silence: each way out is
    /// logged here, where it is handled.
    async fn finish_later(&self, id: crate::ids::TurnId, end: TurnEnd) {
        let give_up = tokio::time::Instant::now() + self.policy.max_duration;
        let mut wait = FINISH_RETRY_FIRST;
        let mut attempts = 1_u32;
        loop {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.lifecycle.abort.cancelled() => {
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

    /// The earlier completed turns the provider wants as context; none
    /// (logged) when storage fails: a reply without history beats no reply.
    async fn history(&self, turn: &Turn) -> Vec<(String, String)> {
        let wanted = self.provider.context_turns();
        if wanted == 0 {
            return Vec::new();
        }
        match self.turns.completed_before(turn.session_id, turn.seq, wanted).await {
            Ok(turns) => turns.into_iter().map(|t| (t.input, t.output)).collect(),
            Err(error) => {
                tracing::warn!(turn.id = %turn.id, error = %error, "no history for the provider");
                Vec::new()
            }
        }
    }

    /// Writes how the turn ended. The second value is the end still to be
    /// written when the database was unavailable.
    async fn persist(
        &self,
        turn: &Turn,
        output: String,
        ending: Ending,
    ) -> (Result<Turn, TurnError>, Option<TurnEnd>) {
        let completed_at = self.clock.now_micros();
        let end = |status, finish_reason, usage, error| TurnEnd {
            output,
            status,
            finish_reason,
            usage,
            error,
            completed_at,
        };
        let (end, failure) = match ending {
            Ending::Completed(reason, usage) => {
                (end(TurnStatus::Completed, reason, usage, None), None)
            }
            Ending::Failed(error) => {
                let failure = TurnFailure { kind: error.kind(), detail: failure_detail(&error) };
                (
                    end(TurnStatus::Failed, FinishReason::Error, None, Some(failure)),
                    Some(Err(error)),
                )
            }
            Ending::Cancelled => {
                (end(TurnStatus::Cancelled, FinishReason::Cancelled, None, None), None)
            }
            Ending::ShutDown => {
                (end(TurnStatus::Incomplete, FinishReason::Cancelled, None, None), Some(Ok(())))
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
}

/// The public explanation of a provider failure: no upstream detail leaks.
fn failure_detail(error: &ProviderError) -> String {
    match error {
        ProviderError::Failed(_) => "The model provider failed to complete the reply.",
        ProviderError::Timeout => "The model provider did not complete the reply in time.",
        ProviderError::Unavailable { .. } => "The model provider is temporarily unavailable.",
    }
    .to_owned()
}

/// The first pause before an unwritten end of a turn is tried again; it
/// doubles up to [`FINISH_RETRY_MAX`].
const FINISH_RETRY_FIRST: Duration = Duration::from_millis(200);
const FINISH_RETRY_MAX: Duration = Duration::from_secs(5);

/// How long [`TurnService::drain`] waits for aborted turns to persist.
pub(crate) const ABORT_WAIT: Duration = Duration::from_secs(10);
