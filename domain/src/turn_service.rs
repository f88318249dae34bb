//! The turn use case: the order of work in one place, shared by
//! the JSON and the streaming endpoint — limiter first, then the session
//! (owned by the caller) and the `in_progress` commit, then the reply in a
//! task of its own.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::error::TurnError;
use crate::ids::{Caller, SessionId, TurnId};
use crate::lifecycle::Lifecycle;
use crate::limiter::{
    Admission, Decision, Lease, LimiterHandle, LimiterState, Policy, RateLimitStatus, TokenCost,
    Window,
};
use crate::live::LiveOutputs;
use crate::observe::{Endpoint, TurnObserver, Unobserved};
use crate::page::{Page, PageRequest};
use crate::ports::{ModelProvider, TurnRepository, TurnStart};
use crate::tokens::TokenCounter;
use crate::turn::{NewTurn, Turn, TurnStatus};
use crate::turn_run::TurnRun;

/// Deltas buffered between the generating task and a slow reader.
const EVENT_BUFFER: usize = 64;

/// Tunables of the turn path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TurnPolicy {
    /// The longest a reply may take before the turn is ended as timed out;
    /// also how long an unwritten end of a turn is retried.
    pub max_duration: Duration,
    /// How often a generating turn's output and heartbeat are saved.
    pub checkpoint_interval: Duration,
    /// `turns.max_output_tokens`: the most output one turn may produce.
    pub max_output_tokens: u64,
    /// `rate_limit.min_output_tokens`: under a token budget, the fewest
    /// output tokens a turn is admitted with.
    pub min_output_tokens: u64,
}

impl TurnPolicy {
    /// Missed heartbeats after which a turn is taken for abandoned: three
    /// intervals, so one slow checkpoint write (or a brief pause of its
    /// instance) does not end a live turn.
    pub const STALE_AFTER_INTERVALS: u32 = 3;

    /// How old a heartbeat may be before the sweep ends its turn.
    pub fn stale_after(&self) -> Duration {
        self.checkpoint_interval * Self::STALE_AFTER_INTERVALS
    }
}

/// A turn that was admitted and completed, with the usage to report.
#[derive(Debug, Clone, PartialEq)]
pub struct Submitted {
    /// The completed turn, as persisted.
    pub turn: Turn,
    /// The caller's usage after this turn; `None` when the check was skipped.
    pub rate_limit: Option<RateLimitStatus>,
}

/// Submits and reads turns.
#[derive(Debug, Clone)]
pub struct TurnService {
    pub(crate) turns: Arc<dyn TurnRepository>,
    pub(crate) provider: Arc<dyn ModelProvider>,
    /// The tokenizer: input estimates, output caps, usage nobody reported.
    pub(crate) tokens: Arc<dyn TokenCounter>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) policy: TurnPolicy,
    /// `None` when `rate_limit.enabled = false`.
    limiter: Option<LimiterHandle>,
    pub(crate) live: LiveOutputs,
    pub(crate) lifecycle: Arc<Lifecycle>,
    pub(crate) observer: Arc<dyn TurnObserver>,
}

/// Which endpoint a turn came from and when it was admitted, for the
/// observer's durations.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Measured {
    pub(crate) endpoint: Endpoint,
    pub(crate) since: Instant,
}

impl TurnService {
    /// A service over its ports.
    pub fn new(
        turns: Arc<dyn TurnRepository>,
        provider: Arc<dyn ModelProvider>,
        tokens: Arc<dyn TokenCounter>,
        clock: Arc<dyn Clock>,
        policy: TurnPolicy,
        limiter: Option<LimiterHandle>,
    ) -> Self {
        Self {
            turns,
            provider,
            tokens,
            clock,
            policy,
            limiter,
            live: LiveOutputs::default(),
            lifecycle: Arc::default(),
            observer: Arc::new(Unobserved),
        }
    }

    /// The same service, reporting to `observer` (the metrics).
    #[must_use]
    pub fn with_observer(mut self, observer: Arc<dyn TurnObserver>) -> Self {
        self.observer = observer;
        self
    }

    /// Asks the limiter whether the caller may submit a turn now, counting
    /// it, taking one of the caller's slots and reserving its tokens when
    /// so. Both turn endpoints call this first, before any repository call,
    /// so a refusal costs no database work. The lease (when a slot was
    /// taken) must live until the turn's end is persisted.
    ///
    /// Under a token budget a refusal costs no tokenizing where it can be
    /// told without: an input whose byte count alone rules out every fit is
    /// refused first, then a refusal the over-limit cache holds answers,
    /// and only then is the input tokenized (once: its count travels in the
    /// lease's reservation to the turn's task).
    ///
    /// # Errors
    /// - [`TurnError::InputExceedsTokenBudget`]: the input can never fit.
    /// - [`TurnError::RateLimited`]: over a limit; retry at the denial's `retry_at_ms`.
    /// - [`TurnError::LimiterUnavailable`]: the store is down and the fallback is `deny`.
    async fn admit(
        &self,
        caller: &Caller,
        input: &str,
    ) -> Result<(Option<RateLimitStatus>, Option<Lease>), TurnError> {
        let Some(limiter) = &self.limiter else {
            return Ok((None, None));
        };
        let mut cached = None;
        let mut cost = TokenCost::default();
        if caller.limits.has_token_budget() {
            let enforce = limiter.enforces();
            let framing = self.provider.prompt_tokens(self.tokens.as_ref(), "", &[]);
            let fewest = framing.saturating_add(self.tokens.fewest_tokens(input.len()));
            self.fits_budget(caller, fewest, enforce)?;
            // Every token is at least one byte.
            let most = framing.saturating_add(u64::try_from(input.len()).unwrap_or(u64::MAX));
            let at_most = most.saturating_add(self.policy.min_output_tokens);
            cached = limiter.cached_refusal(&caller.user, caller.limits, at_most);
            if cached.is_none() {
                cost = self.token_cost(caller, input, enforce)?;
            }
        }
        let admission = match cached {
            Some(denial) => Admission { decision: Decision::Limited(denial), lease: None },
            None => limiter.check_with(caller.user.clone(), caller.limits, cost).await,
        };
        self.observer.decided(&admission.decision);
        match admission.decision {
            Decision::Admitted(status) => Ok((Some(status), admission.lease)),
            Decision::Skipped(_) => Ok((None, admission.lease)),
            Decision::Limited(denial) => Err(TurnError::RateLimited(Box::new(denial))),
            Decision::Unavailable(_) => Err(TurnError::LimiterUnavailable),
        }
    }

    /// What a turn of `input` asks of the caller's token budgets, by its
    /// prompt's tokens as the provider sends it (the input tokenized once).
    ///
    /// # Errors
    /// [`TurnError::InputExceedsTokenBudget`]: see [`TurnService::fits_budget`].
    fn token_cost(
        &self,
        caller: &Caller,
        input: &str,
        enforce: bool,
    ) -> Result<TokenCost, TurnError> {
        let cost = TokenCost {
            input: self.provider.prompt_tokens(self.tokens.as_ref(), input, &[]),
            min_output: self.policy.min_output_tokens,
            max_output: self.policy.max_output_tokens,
        };
        self.fits_budget(caller, cost.input, enforce)?;
        Ok(cost)
    }

    /// Refuses a prompt of at least `input` tokens (a count, or a bound by
    /// the input's size) that with the least output cannot fit a budget even
    /// when nothing else is charged, counting nothing (unless only
    /// shadowing, which never refuses).
    ///
    /// # Errors
    /// [`TurnError::InputExceedsTokenBudget`] naming the first such budget.
    fn fits_budget(&self, caller: &Caller, input: u64, enforce: bool) -> Result<(), TurnError> {
        let requested = input.saturating_add(self.policy.min_output_tokens);
        for window in Window::ALL {
            match caller.limits.token_limit(window) {
                Some(limit) if enforce && requested > u64::from(limit) => {
                    return Err(TurnError::InputExceedsTokenBudget {
                        input_tokens: input,
                        requested,
                        limit,
                        policy: Policy::tokens(window),
                    });
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The caller's current usage, counting nothing; `None` when the limiter
    /// is off or cannot tell.
    pub async fn rate_limit_status(&self, caller: &Caller) -> Option<RateLimitStatus> {
        self.limiter.as_ref()?.peek(caller.user.clone(), caller.limits).await
    }

    /// The limiter's state, `None` when rate limiting is off.
    pub fn limiter_state(&self) -> Option<LimiterState> {
        self.limiter.as_ref().map(LimiterHandle::state)
    }

    /// Refusals the limiter answered from its over-limit cache; `None`
    /// when rate limiting is off.
    pub fn limiter_cache_refusals(&self) -> Option<u64> {
        self.limiter.as_ref().map(LimiterHandle::cache_refusals)
    }

    /// Turns generating in this process (committed, not yet ended).
    pub fn turns_in_progress(&self) -> usize {
        self.lifecycle.running()
    }

    /// Starts a turn: the limiter, then the session lookup and the commit of
    /// the `in_progress` turn, then the reply in a task of its own. Everything
    /// that can refuse the turn is decided before this returns.
    ///
    /// The commit itself runs in that task too: the HTTP server drops a
    /// handler's future when the client hangs up, and a committed turn must
    /// never be left without its generation.
    ///
    /// # Errors
    /// - [`TurnError::RateLimited`], [`TurnError::LimiterUnavailable`]: refused
    ///   before anything was looked up or written.
    /// - [`TurnError::SessionNotFound`]: not the caller's session; nothing written.
    /// - [`TurnError::ShuttingDown`]: the process is draining.
    /// - [`TurnError::Storage`]: the database failed.
    pub async fn start(
        &self,
        caller: &Caller,
        session_id: SessionId,
        new: NewTurn,
    ) -> Result<TurnRun, TurnError> {
        self.start_for(Endpoint::Stream, caller, session_id, new, false).await
    }

    /// [`TurnService::start`] for a caller whose leaving ends its turn
    /// (`turns.on_disconnect = cancel`): when this future is dropped before
    /// it returns (the client hung up while the turn was being committed),
    /// the turn is cancelled as soon as it is committed, as its caller
    /// would have done on leaving later: no window is left between
    /// admission and the caller holding [`TurnRun::canceller`].
    ///
    /// # Errors
    /// Those of [`TurnService::start`].
    pub async fn start_cancel_on_drop(
        &self,
        caller: &Caller,
        session_id: SessionId,
        new: NewTurn,
    ) -> Result<TurnRun, TurnError> {
        self.start_for(Endpoint::Stream, caller, session_id, new, true).await
    }

    /// [`TurnService::start`] on behalf of `endpoint`; `cancel_on_drop`: see
    /// [`TurnService::start_cancel_on_drop`].
    async fn start_for(
        &self,
        endpoint: Endpoint,
        caller: &Caller,
        session_id: SessionId,
        new: NewTurn,
        cancel_on_drop: bool,
    ) -> Result<TurnRun, TurnError> {
        let measured = Measured { endpoint, since: Instant::now() };
        if self.lifecycle.is_closing() {
            return Err(TurnError::ShuttingDown);
        }
        let (rate_limit, mut lease) = self.admit(caller, new.input()).await?;
        let (committed, begun) = oneshot::channel();
        let (events, receiver) = mpsc::channel(EVENT_BUFFER);
        let cancel = CancellationToken::new();
        let service = self.clone();
        let user = caller.user.clone();
        let task_cancel = cancel.clone();
        self.lifecycle.spawn(async move {
            let start = TurnStart {
                user: &user,
                session_id,
                turn_id: TurnId::new(),
                input: new.input(),
                now: service.clock.now_micros(),
            };
            let turn = match service.turns.begin(start).await {
                Ok(Some(turn)) => turn,
                refused => {
                    // Nothing reached the provider: the whole reservation
                    // back, the slot with it.
                    if let Some(lease) = lease.as_mut() {
                        lease.settle(0);
                    }
                    drop(lease);
                    let error =
                        refused.map_or_else(TurnError::from, |_| TurnError::SessionNotFound);
                    let _ = committed.send(Err(error));
                    return;
                }
            };
            let _ = committed.send(Ok(turn.clone()));
            service.drive(turn, events, task_cancel, lease, measured).await;
        });
        // Armed until the caller holds the run: the HTTP server drops this
        // future when its client hangs up, and the commit may be what it
        // was waiting for. A drop then cancels the turn the task commits.
        let abandoned = cancel_on_drop.then(|| cancel.clone().drop_guard());
        let turn = begun.await.map_err(|_| TurnError::Internal("turn task lost".into()))??;
        if let Some(guard) = abandoned {
            guard.disarm();
        }
        Ok(TurnRun::new(turn, rate_limit, receiver, cancel))
    }

    /// Submits a turn and waits for its reply.
    ///
    /// # Errors
    /// Those of [`TurnService::start`], and how the turn did not complete:
    /// [`TurnError::Provider`] (persisted `failed`), [`TurnError::Interrupted`]
    /// (persisted `incomplete` at shutdown), [`TurnError::Storage`].
    pub async fn submit(
        &self,
        caller: &Caller,
        session_id: SessionId,
        new: NewTurn,
    ) -> Result<Submitted, TurnError> {
        let run = self.start_for(Endpoint::Json, caller, session_id, new, false).await?;
        let rate_limit = run.rate_limit;
        let turn = run.outcome().await?;
        Ok(Submitted { turn, rate_limit })
    }

    /// One turn of a session of the caller's, also while in progress (with
    /// its partial output, when it is generated in this process).
    ///
    /// # Errors
    /// [`TurnError::TurnNotFound`] when the turn (or the session) is not the caller's.
    pub async fn get(
        &self,
        caller: &Caller,
        session_id: SessionId,
        turn_id: TurnId,
    ) -> Result<Turn, TurnError> {
        let mut turn = self
            .turns
            .get(&caller.user, session_id, turn_id)
            .await?
            .ok_or(TurnError::TurnNotFound)?;
        if turn.status == TurnStatus::InProgress
            && let Some(output) = self.live.get(turn.id)
        {
            turn.output = output;
        }
        Ok(turn)
    }

    /// The turns of a session of the caller's, in `seq` order.
    ///
    /// # Errors
    /// [`TurnError::SessionNotFound`] when the session is not the caller's.
    pub async fn list(
        &self,
        caller: &Caller,
        session_id: SessionId,
        page: PageRequest<i64>,
    ) -> Result<Page<Turn>, TurnError> {
        self.turns.list(&caller.user, session_id, page).await?.ok_or(TurnError::SessionNotFound)
    }

    /// Saves the output and heartbeat of every turn generating here for at
    /// least one interval, and of younger ones with output to save (a turn
    /// that ends between two checkpoints costs no write); returns how many
    /// were stamped.
    ///
    /// # Errors
    /// [`TurnError::Storage`] when the database fails; the outputs are sent
    /// again at the next checkpoint.
    pub async fn checkpoint(&self) -> Result<usize, TurnError> {
        let checkpoints = self.live.take_checkpoints(self.policy.checkpoint_interval);
        if checkpoints.is_empty() {
            return Ok(0);
        }
        if let Err(error) = self.turns.checkpoint(&checkpoints).await {
            self.live.retake(&checkpoints);
            if error.is_unavailable() {
                self.lifecycle.storage_failed(self.policy.stale_after());
            }
            return Err(error.into());
        }
        Ok(checkpoints.len())
    }

    /// Marks turns whose instance stopped stamping their heartbeat (it
    /// crashed, or lost its database for good) as `incomplete`, keeping the
    /// output they had checkpointed. Held back for a while after this
    /// instance saw the database unreachable (see `Lifecycle`). Any instance
    /// may run it: a live turn's heartbeat is stamped when its row is
    /// committed, then at least every other interval, so it is never older
    /// than [`TurnPolicy::stale_after`]; the store judges the age by the
    /// clock it stamped with, not this instance's.
    ///
    /// # Errors
    /// [`TurnError::Storage`] when the database fails.
    pub async fn sweep_stale(&self) -> Result<u64, TurnError> {
        if self.lifecycle.sweep_held_back() {
            return Ok(0);
        }
        let now = self.clock.now_micros();
        let swept = match self.turns.expire_stale(self.policy.stale_after(), now).await {
            Ok(swept) => swept,
            Err(error) => {
                if error.is_unavailable() {
                    self.lifecycle.storage_failed(self.policy.stale_after());
                }
                return Err(error.into());
            }
        };
        if swept > 0 {
            tracing::warn!(turns = swept, "marked turns abandoned in progress as incomplete");
        }
        Ok(swept)
    }

    /// Graceful shutdown: refuses new turns, lets running ones finish within
    /// `grace`, then ends the rest as `incomplete` (their streams get their
    /// terminal event) and waits for them to be persisted.
    pub async fn drain(&self, grace: Duration) {
        self.lifecycle.drain(grace).await;
    }
}
