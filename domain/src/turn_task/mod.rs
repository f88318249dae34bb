//! The task that generates one turn: it commits the turn, drives the
//! provider, sends the events, persists how the turn ended and gives its
//! lease back.
//!
//! The task, not the request, owns the work: a client that hangs up drops
//! its [`TurnRun`](crate::turn_run::TurnRun) (the event receiver), and the
//! task carries on, unless the caller cancels it on purpose
//! (`turns.on_disconnect = cancel`).

mod context;
mod ending;
mod outbox;
mod usage;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::error::{ProviderError, TurnError};
use crate::idempotency::{IdempotencyKey, KeyClaim};
use crate::ids::{SessionId, TurnId, UserId};
use crate::limiter::Lease;
use crate::live::LiveOutput;
use crate::observe::Endpoint;
use crate::ports::{ReplyEvent, ReplyRequest, TurnStart};
use crate::tokens::OutputMeter;
use crate::turn::{FinishReason, NewTurn, Turn};
use crate::turn_run::TurnEvent;

pub use context::TurnPolicy;
pub(crate) use context::{Measured, TurnContext};
use ending::{Ending, Stop};
use outbox::Outbox;
use usage::{Sent, settle};

/// Why a turn was not committed.
#[derive(Debug)]
pub(crate) enum NotBegun {
    /// The repository refused it (not the caller's session, the database
    /// down); nothing was written.
    Failed(TurnError),
    /// The user's turn with this `Idempotency-Key` is already committed.
    KeyTaken(KeyClaim),
}

/// Sleeps until `due`; never wakes when there is none.
async fn sleep_until(due: Option<tokio::time::Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

/// Whether the row holds the turn's end: an outcome that carries the
/// persisted turn, or a success.
fn recorded(outcome: &Result<Turn, TurnError>) -> bool {
    matches!(outcome, Ok(_) | Err(TurnError::Provider { .. } | TurnError::Interrupted { .. }))
}

/// How long a finished turn waits for room for its terminal event when its
/// deadline has passed.
const FINISHED_GRACE: Duration = Duration::from_secs(5);

/// One admitted turn's work, with everything it uses: it runs in a task of
/// its own (tracked for graceful shutdown) and owns the turn's lease, so
/// the slot is given back however the task ends (a panic drops it too).
pub(crate) struct TurnTask {
    pub(crate) context: Arc<TurnContext>,
    pub(crate) user: UserId,
    pub(crate) session_id: SessionId,
    /// The id the turn is committed with (its key's claim names it).
    pub(crate) turn_id: TurnId,
    pub(crate) new: NewTurn,
    /// The client's `Idempotency-Key` and the request's fingerprint.
    pub(crate) keyed: Option<(IdempotencyKey, String)>,
    /// The caller's slot and token reservation, when the limiter took one.
    pub(crate) lease: Option<Lease>,
    /// Deltas, then exactly one terminal event, to the caller's `TurnRun`.
    pub(crate) events: mpsc::Sender<TurnEvent>,
    pub(crate) cancel: CancellationToken,
    pub(crate) measured: Measured,
}

impl TurnTask {
    /// Commits the turn `in_progress` and answers `committed` (the caller
    /// waits for it), then generates the reply. A turn the repository
    /// refuses (not the caller's session, the database down) reached no
    /// provider: its whole reservation goes back, with the slot, before
    /// the caller hears of it.
    pub(crate) async fn run(mut self, committed: oneshot::Sender<Result<Turn, NotBegun>>) {
        let turn_id = self.turn_id;
        // Tracked before the row exists, so a cancel that comes as soon as
        // the turn can be seen finds it (a checkpoint of a row not yet
        // committed changes nothing).
        let live = self.context.live.track(turn_id, self.cancel.clone());
        let start = TurnStart {
            user: &self.user,
            session_id: self.session_id,
            turn_id,
            input: self.new.input(),
            idempotency: self.keyed.as_ref().map(|(key, hash)| (key.as_str(), hash.as_str())),
            now: self.context.clock.now_micros(),
        };
        let begun = match self.context.turns.begin(start).await {
            Ok(Some(turn)) => Ok(turn),
            Ok(None) => Err(TurnError::SessionNotFound),
            Err(error) => Err(TurnError::from(error)),
        };
        match begun {
            Ok(turn) => {
                if let Some(lease) = self.lease.as_mut() {
                    lease.keep_claim();
                }
                let _ = committed.send(Ok(turn.clone()));
                self.drive(turn, live).await;
            }
            Err(error) => {
                if let Some(mut lease) = self.lease.take() {
                    lease.settle(0);
                }
                // A row with the key refused this one (its claim was lost
                // with Redis, or never made): the retry gets that turn.
                let taken = match &self.keyed {
                    Some((key, _)) => self
                        .context
                        .turns
                        .find_by_key(&self.user, key.as_str())
                        .await
                        .ok()
                        .flatten(),
                    None => None,
                };
                let failure = match taken {
                    Some((turn, fingerprint)) => NotBegun::KeyTaken(KeyClaim { turn, fingerprint }),
                    None => NotBegun::Failed(error),
                };
                let _ = committed.send(Err(failure));
            }
        }
    }

    /// Generates the reply of `turn`, sends its events, and persists how it
    /// ended. The lease is settled with the turn's usage (so the release
    /// refunds what the turn did not use of its reservation) and given back
    /// once the end is persisted and before the client hears of it, so a
    /// client that starts its next turn on seeing the end finds the slot
    /// free.
    ///
    /// The reply is held to its output cap (the reservation's, or
    /// `turns.max_output_tokens`): the provider is asked for no more, and a
    /// provider that sends more anyway is cut at the cap and not read on.
    async fn drive(mut self, turn: Turn, live: LiveOutput) {
        let context = Arc::clone(&self.context);
        let streamed = self.measured.endpoint == Endpoint::Stream;
        let mut outbox =
            Outbox::created(turn.id, Arc::clone(&context.bus), context.policy.coalesce, streamed);
        let mut output = String::new();
        // Reported once, even when a first chunk is cut to nothing at the cap.
        let mut first_delta = true;
        let deadline = tokio::time::sleep(context.policy.max_duration);
        tokio::pin!(deadline);
        let abort = context.lifecycle.abort().clone();
        let cancel = self.cancel.clone();
        let reservation = self.lease.as_ref().and_then(Lease::reservation);
        // Set once the provider was called (its request may be on the wire
        // from then on): the history sent, the cap asked for, and the
        // prompt's tokens when the admission already counted them.
        let mut sent: Option<Sent> = None;
        let open = async {
            let mut history = context.history(&turn).await;
            let (cap, prompt) = context.output_cap(reservation, &mut history);
            sent = Some(Sent { history: history.clone(), cap, prompt });
            let request = ReplyRequest {
                session_id: turn.session_id,
                input: turn.input.clone(),
                history,
                max_output_tokens: cap,
                files: Vec::new(),
                tools: Vec::new(),
                rounds: Vec::new(),
            };
            context.provider.reply(request).await
        };
        let opened = tokio::select! {
            opened = open => opened.map_err(Stop::from),
            () = cancel.cancelled() => Err(Stop::Cancelled),
            () = abort.cancelled() => Err(Stop::ShutDown),
            () = &mut deadline => Err(Stop::Provider(ProviderError::Timeout)),
        };
        let cap = sent.as_ref().map_or(context.policy.max_output_tokens, |sent| sent.cap);
        let mut meter = OutputMeter::new(context.tokens.as_ref(), cap);
        let ending = match opened {
            Err(stop) => Ending::from(stop),
            Ok(mut stream) => loop {
                let due = outbox.due_at();
                let item = tokio::select! {
                    item = stream.next() => Some(item),
                    () = sleep_until(due) => None,
                    () = cancel.cancelled() => break Ending::Cancelled,
                    () = abort.cancelled() => break Ending::ShutDown,
                    () = &mut deadline => break Ending::Failed(ProviderError::Timeout),
                };
                let mut flush = item.is_none();
                match item.flatten() {
                    None if flush => {}
                    Some(Ok(ReplyEvent::Delta(mut delta))) => {
                        if std::mem::take(&mut first_delta) {
                            let since = self.measured.since.elapsed();
                            context.observer.first_delta(self.measured.endpoint, since);
                        }
                        let accepted = meter.accept(&output, &delta);
                        delta.truncate(accepted.keep);
                        if !delta.is_empty() {
                            output.push_str(&delta);
                            live.append(&delta);
                            flush = outbox.push(&delta);
                        }
                        if accepted.capped {
                            tracing::info!(turn.id = %turn.id, cap, "the reply reached its output cap; not reading on");
                            break Ending::Completed(FinishReason::Length, None);
                        }
                    }
                    Some(Ok(ReplyEvent::Finished { finish_reason, usage })) => {
                        break Ending::Completed(finish_reason, usage);
                    }
                    Some(Ok(ReplyEvent::ToolCall(_))) => {}
                    Some(Err(error)) => break Ending::Failed(error),
                    None => break Ending::Completed(FinishReason::Stop, None),
                }
                // A client that reads nothing holds the send, so it waits
                // under the same deadline, cancellation and abort as the
                // provider. A receiver gone means the client left; the turn
                // goes on.
                if let Some(batch) = flush.then(|| outbox.take()).flatten() {
                    let held = tokio::select! {
                        biased;
                        _ = self.events.send(TurnEvent::Delta(batch)) => None,
                        () = cancel.cancelled() => Some(Ending::Cancelled),
                        () = abort.cancelled() => Some(Ending::ShutDown),
                        () = &mut deadline => Some(Ending::Failed(ProviderError::Timeout)),
                    };
                    if let Some(ending) = held {
                        break ending;
                    }
                }
            },
        };
        // What was still gathering is output too: it goes out before the end.
        let tail = outbox.take();
        let usage = sent.map(|sent| context.usage(&turn, &ending, sent, &output));
        if let Some(lease) = self.lease.as_mut() {
            settle(lease, &turn, usage);
        }
        let status = ending.status();
        let (outcome, unwritten) = context.persist(&turn, output, ending, usage).await;
        outbox.ended(recorded(&outcome));
        let elapsed = self.measured.since.elapsed();
        context.observer.ended(self.measured.endpoint, status, elapsed, usage.as_ref());
        // The end is on record: a client that reads nothing may delay its
        // terminal event, not the task, past the turn's deadline (or
        // `FINISHED_GRACE` after a turn that ran to it) or the abort.
        let report_by = deadline.deadline().max(tokio::time::Instant::now() + FINISHED_GRACE);
        if let Some(end) = unwritten {
            // The client hears of the outage now; the end is written when
            // the database is back, and meanwhile `GET` shows the output.
            self.report(tail, outcome, report_by).await;
            drop(self.events);
            context.finish_later(turn.id, end).await;
            drop(live);
            drop(self.lease);
            return;
        }
        drop(live);
        drop(self.lease.take());
        self.report(tail, outcome, report_by).await;
    }

    /// Sends the terminal event, waiting for room in the stream's buffer
    /// until `by` or the shutdown abort; a client still not reading then
    /// misses it (its connection is closed by the write timeout anyway).
    async fn report(
        &self,
        tail: Option<String>,
        outcome: Result<Turn, TurnError>,
        by: tokio::time::Instant,
    ) {
        let events = tail.map(TurnEvent::Delta).into_iter();
        for event in events.chain([TurnEvent::Finished(Box::new(outcome))]) {
            let sent = tokio::select! {
                biased;
                sent = self.events.send(event) => sent.is_ok(),
                () = self.context.lifecycle.abort().cancelled() => false,
                () = tokio::time::sleep_until(by) => false,
            };
            if !sent {
                return;
            }
        }
    }
}
