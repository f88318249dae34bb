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
use crate::limiter::{Lease, RateLimitStatus, Reservation};
use crate::ports::{ReplyEvent, ReplyRequest};
use crate::tokens::OutputMeter;
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
    /// The status the turn ends with.
    fn status(&self) -> TurnStatus {
        match self {
            Self::Completed(..) => TurnStatus::Completed,
            Self::Failed(_) => TurnStatus::Failed,
            Self::Cancelled => TurnStatus::Cancelled,
            Self::ShutDown => TurnStatus::Incomplete,
        }
    }
}

/// What reached the provider: set when it was called.
struct Sent {
    /// The history sent with the input.
    history: Vec<(String, String)>,
    /// The output cap asked for.
    cap: u64,
    /// The prompt's tokens, when the admission counted the input.
    prompt: Option<u64>,
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
    /// ended. Runs in its own (tracked) task, which owns the turn's `lease`:
    /// the slot is given back once the end is persisted and before the
    /// client hears of it, so a client that starts its next turn on seeing
    /// the end finds the slot free (and a panic drops it too). The lease is
    /// settled first with the turn's usage, so the release refunds what the
    /// turn did not use of its token reservation.
    ///
    /// The reply is held to its output cap (the reservation's, or
    /// `turns.max_output_tokens`): the provider is asked for no more, and a
    /// provider that sends more anyway is cut at the cap and not read on.
    pub(crate) async fn drive(
        self,
        turn: Turn,
        events: mpsc::Sender<TurnEvent>,
        cancel: CancellationToken,
        mut lease: Option<Lease>,
        measured: Measured,
    ) {
        let live = self.live.track(turn.id);
        let mut output = String::new();
        // Reported once, even when a first chunk is cut to nothing at the cap.
        let mut first_delta = true;
        let deadline = tokio::time::sleep(self.policy.max_duration);
        tokio::pin!(deadline);
        let abort = self.lifecycle.abort().clone();
        let stopped = |reason: Option<Stop>| match reason {
            Some(Stop::Provider(e)) => Ending::Failed(e),
            Some(Stop::Cancelled) => Ending::Cancelled,
            Some(Stop::ShutDown) | None => Ending::ShutDown,
        };
        let reservation = lease.as_ref().and_then(Lease::reservation);
        // Set once the provider was called (its request may be on the wire
        // from then on): the history sent, the cap asked for, and the
        // prompt's tokens when the admission already counted them.
        let mut sent: Option<Sent> = None;
        let open = async {
            let mut history = self.history(&turn).await;
            let (cap, prompt) = self.output_cap(reservation, &mut history);
            sent = Some(Sent { history: history.clone(), cap, prompt });
            let request = ReplyRequest {
                session_id: turn.session_id,
                input: turn.input.clone(),
                history,
                max_output_tokens: cap,
            };
            self.provider.reply(request).await
        };
        let opened = tokio::select! {
            opened = open => opened.map_err(Stop::from),
            () = cancel.cancelled() => Err(Stop::Cancelled),
            () = abort.cancelled() => Err(Stop::ShutDown),
            () = &mut deadline => Err(Stop::Provider(ProviderError::Timeout)),
        };
        let cap = sent.as_ref().map_or(self.policy.max_output_tokens, |sent| sent.cap);
        let mut meter = OutputMeter::new(self.tokens.as_ref(), cap);
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
                    Some(Ok(ReplyEvent::Delta(mut delta))) => {
                        if std::mem::take(&mut first_delta) {
                            self.observer.first_delta(measured.endpoint, measured.since.elapsed());
                        }
                        let accepted = meter.accept(&output, &delta);
                        delta.truncate(accepted.keep);
                        if !delta.is_empty() {
                            output.push_str(&delta);
                            live.append(&delta);
                            // A client that reads nothing holds the send, so
                            // it waits under the same deadline, cancellation
                            // and abort as the provider. A receiver gone
                            // means the client left; the turn goes on.
                            let held = tokio::select! {
                                biased;
                                _ = events.send(TurnEvent::Delta(delta)) => None,
                                () = cancel.cancelled() => Some(Ending::Cancelled),
                                () = abort.cancelled() => Some(Ending::ShutDown),
                                () = &mut deadline => Some(Ending::Failed(ProviderError::Timeout)),
                            };
                            if let Some(ending) = held {
                                break ending;
                            }
                        }
                        if accepted.capped {
                            tracing::info!(turn.id = %turn.id, cap, "the reply reached its output cap; not reading on");
                            break Ending::Completed(FinishReason::Length, None);
                        }
                    }
                    Some(Ok(ReplyEvent::Finished { finish_reason, usage })) => {
                        break Ending::Completed(finish_reason, usage);
                    }
                    Some(Err(error)) => break Ending::Failed(error),
                    None => break Ending::Completed(FinishReason::Stop, None),
                }
            },
        };
        let usage = sent.map(|sent| self.usage(&turn, &ending, sent, &output));
        if let Some(lease) = lease.as_mut() {
            settle(lease, &turn, usage);
        }
        let status = ending.status();
        let (outcome, unwritten) = self.persist(&turn, output, ending, usage).await;
        self.observer.ended(measured.endpoint, status, measured.since.elapsed(), usage.as_ref());
        // The end is on record: a client that reads nothing may delay its
        // terminal event, not the task, past the turn's deadline (or
        // `FINISHED_GRACE` after a turn that ran to it) or the abort.
        let report_by = deadline.deadline().max(tokio::time::Instant::now() + FINISHED_GRACE);
        if let Some(end) = unwritten {
            // The client hears of the outage now; the end is written when
            // the database is back, and meanwhile `GET` shows the output.
            self.report(&events, outcome, report_by).await;
            drop(events);
            self.finish_later(turn.id, end).await;
            drop(live);
            drop(lease);
            return;
        }
        drop(live);
        drop(lease);
        self.report(&events, outcome, report_by).await;
    }

    /// Sends the terminal event, waiting for room in the stream's buffer
    /// until `by` or the shutdown abort; a client still not reading then
    /// misses it (its connection is closed by the write timeout anyway).
    async fn report(
        &self,
        events: &mpsc::Sender<TurnEvent>,
        outcome: Result<Turn, TurnError>,
        by: tokio::time::Instant,
    ) {
        tokio::select! {
            biased;
            _ = events.send(TurnEvent::Finished(Box::new(outcome))) => {}
            () = self.lifecycle.abort().cancelled() => {}
            () = tokio::time::sleep_until(by) => {}
        }
    }

    /// The usage of a turn whose request reached the provider: what the
    /// provider reported, but never less than Pantheon counted — the prompt
    /// as sent (charged once sent, whatever ended the turn) and the output
    /// received. A provider reporting less (a zero, an omitted field) does
    /// not make a turn cheaper.
    fn usage(&self, turn: &Turn, ending: &Ending, sent: Sent, output: &str) -> Usage {
        let tokens = self.tokens.as_ref();
        let prompt = sent
            .prompt
            .unwrap_or_else(|| self.provider.prompt_tokens(tokens, &turn.input, &sent.history));
        let received = if output.is_empty() { 0 } else { tokens.count(output) };
        let counted = Usage::of(prompt, received);
        let Ending::Completed(_, Some(reported)) = ending else {
            return counted;
        };
        let floored = Usage {
            input_tokens: reported.input_tokens.max(counted.input_tokens),
            output_tokens: reported.output_tokens.max(counted.output_tokens),
            total_tokens: reported.total_tokens.max(counted.total_tokens),
        };
        if floored.total_tokens > reported.total_tokens {
            tracing::info!(
                turn.id = %turn.id,
                reported = reported.total_tokens,
                counted = counted.total_tokens,
                "the provider reported fewer tokens than were counted; charged the count"
            );
        }
        floored
    }

    /// The output cap of a turn, the history that fits with it, and the
    /// prompt's tokens with that history when the admission counted the
    /// input (under a token budget). Without a reservation:
    /// `turns.max_output_tokens`, with all the history, the prompt counted
    /// later if at all. With one, the history (unknown at admission, which
    /// comes before any database read) is paid out of the reservation: the
    /// cap shrinks by its tokens, and its oldest turns are left out while
    /// the cap would fall below `rate_limit.min_output_tokens`.
    ///
    /// The input is not tokenized again: the reservation holds its count,
    /// and each history turn's tokens are counted once, on its own
    /// ([`ModelProvider::prompt_tokens`] is additive over the history).
    ///
    /// [`ModelProvider::prompt_tokens`]: crate::ports::ModelProvider::prompt_tokens
    fn output_cap(
        &self,
        reservation: Option<Reservation>,
        history: &mut Vec<(String, String)>,
    ) -> (u64, Option<u64>) {
        let Some(reservation) = reservation else {
            return (self.policy.max_output_tokens, None);
        };
        if history.is_empty() {
            return (reservation.output_cap, Some(reservation.input));
        }
        let tokens = self.tokens.as_ref();
        let bare = self.provider.prompt_tokens(tokens, "", &[]);
        let each: Vec<u64> = history
            .iter()
            .map(|turn| {
                let with = self.provider.prompt_tokens(tokens, "", std::slice::from_ref(turn));
                with.saturating_sub(bare)
            })
            .collect();
        let mut extra: u64 = each.iter().sum();
        let floor = self.policy.min_output_tokens.min(reservation.output_cap);
        let mut dropped = 0;
        while reservation.output_cap.saturating_sub(extra) < floor && dropped < history.len() {
            extra = extra.saturating_sub(each[dropped]);
            dropped += 1;
        }
        history.drain(..dropped);
        (
            reservation.output_cap.saturating_sub(extra),
            Some(reservation.input.saturating_add(extra)),
        )
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

    /// Writes how the turn ended, with its usage. The second value is the
    /// end still to be written when the database was unavailable.
    async fn persist(
        &self,
        turn: &Turn,
        output: String,
        ending: Ending,
        usage: Option<Usage>,
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
}

/// Records the turn's usage on its lease, so the release refunds the rest of
/// the reservation: all of it when nothing reached the provider (`None`),
/// never the prompt's tokens once something did. A usage above the
/// reservation (a provider's tokenizer counts the prompt differently) is
/// charged the reservation: the budget is never exceeded, and the excess is
/// logged.
fn settle(lease: &mut Lease, turn: &Turn, usage: Option<Usage>) {
    let used = usage.as_ref().map_or(0, Usage::charged);
    if let Some(reservation) = lease.reservation()
        && used > reservation.total()
    {
        tracing::warn!(
            turn.id = %turn.id,
            used,
            reserved = reservation.total(),
            "the turn used more tokens than it reserved; charged the reservation"
        );
    }
    lease.settle(used);
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

/// How long a finished turn waits for room for its terminal event when its
/// deadline has passed.
const FINISHED_GRACE: Duration = Duration::from_secs(5);
