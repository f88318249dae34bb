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
mod prepare;
mod queue;
mod queue_wait;
mod round;
mod usage;
mod watch;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::error::TurnError;
use crate::idempotency::{IdempotencyKey, KeyClaim};
use crate::ids::{SessionId, TurnId, UserId};
use crate::limiter::Lease;
use crate::live::LiveOutput;
use crate::observe::Endpoint;
use crate::ports::{Committed, ReplyRequest, TurnStart};
use crate::tool::{FileRef, ToolRecord, ToolRound};
use crate::turn::{FinishReason, NewTurn, Turn, Usage};
use crate::turn_run::TurnEvent;

pub use context::TurnPolicy;
pub(crate) use context::{Measured, TurnContext};
use ending::Ending;
use outbox::Outbox;
use queue_wait::QueueWait;
use usage::settle;
use watch::{Reply, Watch};

/// Why a turn was not committed.
#[derive(Debug)]
pub(crate) enum NotBegun {
    /// The repository refused it (not the caller's session, the database
    /// down); nothing was written.
    Failed(TurnError),
    /// The user's turn with this `Idempotency-Key` is already committed.
    KeyTaken(KeyClaim),
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
    /// The caller's tier: its share of the provider when it is saturated.
    pub(crate) tier: Option<String>,
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
        // Files the turn names are checked before anything is written.
        let named = match self.new.files() {
            [] => Ok(None),
            ids => self.context.named_files(&self.user, self.session_id, ids).await.map(Some),
        };
        let begun = match named {
            Err(error) => Err(error),
            Ok(named) => match self.context.turns.begin(start).await {
                Ok(Some(committed)) => Ok((committed, named)),
                Ok(None) => Err(TurnError::SessionNotFound),
                Err(error) => Err(TurnError::from(error)),
            },
        };
        match begun {
            Ok((Committed { turn, session_files }, named)) => {
                if let Some(lease) = self.lease.as_mut() {
                    lease.keep_claim();
                }
                let _ = committed.send(Ok(turn.clone()));
                self.drive(turn, live, named, session_files).await;
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
    /// A turn with files may take several rounds: while the model calls
    /// tools (at most `turns.max_tool_rounds` rounds), their results go
    /// back to it in another request. Each round's prompt is paid out of
    /// the reservation before it is sent; a round that would not fit ends
    /// the turn (`length`). The usage is the sum over the rounds.
    async fn drive(
        mut self,
        turn: Turn,
        live: LiveOutput,
        named: Option<Vec<FileRef>>,
        session_files: bool,
    ) {
        let context = Arc::clone(&self.context);
        let streamed = self.measured.endpoint == Endpoint::Stream;
        let outbox =
            Outbox::created(turn.id, Arc::clone(&context.bus), context.policy.coalesce, streamed);
        let mut reply = Reply { output: String::new(), outbox, first_delta: true };
        let mut watch = Watch {
            cancel: self.cancel.clone(),
            abort: context.lifecycle.abort().clone(),
            deadline: Box::pin(tokio::time::sleep(context.policy.max_duration)),
        };
        let reservation = self.lease.as_ref().and_then(Lease::reservation);
        let prepared = tokio::select! {
            prepared = context.prepare(&self.user, &turn, named, session_files, reservation) => Ok(prepared),
            ending = watch.stopped() => Err(ending),
        };
        // The sum of the rounds' usage; `None` while nothing reached the
        // provider.
        let mut usage: Option<Usage> = None;
        let mut records = Vec::new();
        let ending = match prepared {
            Err(ending) => ending,
            Ok(prepared) => 'turn: {
                let tools = match (&context.tools, prepared.files.is_empty()) {
                    (Some(tools), false) => tools.specs(),
                    _ => Vec::new(),
                };
                let mut rounds: Vec<ToolRound> = Vec::new();
                let mut cap = prepared.cap;
                let mut prompt = prepared.prompt;
                // The provider's shared capacity, when one is configured:
                // the turn waits its turn (its user's slot held meanwhile).
                let mut cost = 0;
                let mut slot = None;
                let mut wait = QueueWait::default();
                if context.gate.is_some() {
                    let first = *prompt.get_or_insert_with(|| {
                        let tokens = context.tokens.as_ref();
                        context.provider.prompt_tokens(tokens, &turn.input, &prepared.history)
                    });
                    cost = first.saturating_add(cap);
                    match self.provider_slot(cost, &mut wait, &mut watch).await {
                        Ok(got) => slot = got,
                        Err(ending) => break 'turn ending,
                    }
                }
                let ending = loop {
                    let request = ReplyRequest {
                        session_id: turn.session_id,
                        input: turn.input.clone(),
                        history: prepared.history.clone(),
                        max_output_tokens: cap,
                        files: prepared.files.clone(),
                        tools: tools.clone(),
                        rounds: rounds.clone(),
                    };
                    let opened = tokio::select! {
                        opened = context.provider.reply(request) => opened.map_err(Ending::Failed),
                        ending = watch.stopped() => Err(ending),
                    };
                    if let Err(ending) = &opened
                        && queue_wait::requeue(ending, slot.as_ref(), rounds.is_empty())
                    {
                        queue_wait::release(slot.take(), None, ending);
                        wait.refused(ending);
                        match self.provider_slot(cost, &mut wait, &mut watch).await {
                            Ok(got) => slot = got,
                            Err(ending) => break ending,
                        }
                        continue;
                    }
                    // Charged once sent, whatever ends the round.
                    let round_prompt = *prompt.get_or_insert_with(|| {
                        let tokens = context.tokens.as_ref();
                        context.provider.prompt_tokens(tokens, &turn.input, &prepared.history)
                    });
                    let round = match opened {
                        Err(ending) => {
                            let charged = context.charged(&turn, round_prompt, 0, None);
                            usage = Some(usage.map_or(charged, |u| u.plus(charged)));
                            break ending;
                        }
                        Ok(stream) => {
                            self.read_round(stream, cap, &mut reply, &live, &mut watch).await
                        }
                    };
                    let received = context.received(&round);
                    let reported = match &round.ending {
                        Ending::Completed(_, reported) => *reported,
                        _ => None,
                    };
                    let charged = context.charged(&turn, round_prompt, received, reported);
                    let spent = usage.map_or(charged, |u| u.plus(charged));
                    usage = Some(spent);
                    let more = matches!(&round.ending, Ending::Completed(reason, _) if *reason != FinishReason::Length)
                        && !round.calls.is_empty();
                    if !more {
                        break round.ending;
                    }
                    if rounds.len() >= context.policy.max_tool_rounds as usize {
                        tracing::info!(turn.id = %turn.id, rounds = rounds.len(), "the model called tools past turns.max_tool_rounds");
                        break Ending::Completed(FinishReason::Length, None);
                    }
                    let done = match self
                        .run_tools(&prepared.files, round.calls, &mut reply, &mut watch)
                        .await
                    {
                        Ok(done) => done,
                        Err(ending) => break ending,
                    };
                    records.extend(done.iter().map(|(call, result)| ToolRecord::of(call, result)));
                    let done = ToolRound { text: round.text, calls: done };
                    let next = round_prompt.saturating_add(
                        context.provider.round_tokens(context.tokens.as_ref(), &done),
                    );
                    rounds.push(done);
                    match context.next_cap(reservation, spent, next) {
                        Some(next_cap) => cap = next_cap,
                        None => {
                            tracing::info!(turn.id = %turn.id, prompt = next, "the next round's prompt does not fit the turn's reservation");
                            break Ending::Completed(FinishReason::Length, None);
                        }
                    }
                    prompt = Some(next);
                };
                queue_wait::release(slot, usage.as_ref(), &ending);
                ending
            }
        };
        // What was still gathering is output too: it goes out before the end.
        let tail = reply.outbox.take();
        if let Some(lease) = self.lease.as_mut() {
            settle(lease, &turn, usage);
        }
        let status = ending.status();
        let (outcome, unwritten) =
            context.persist(&turn, reply.output, ending, usage, records).await;
        reply.outbox.ended(recorded(&outcome));
        let elapsed = self.measured.since.elapsed();
        context.observer.ended(self.measured.endpoint, status, elapsed, usage.as_ref());
        // The end is on record: a client that reads nothing may delay its
        // terminal event, not the task, past the turn's deadline (or
        // `FINISHED_GRACE` after a turn that ran to it) or the abort.
        let report_by = watch.deadline.deadline().max(tokio::time::Instant::now() + FINISHED_GRACE);
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
