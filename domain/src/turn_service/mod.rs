//! The turn use case: the order of work in one place, shared by
//! the JSON and the streaming endpoint — limiter first, then the session
//! (owned by the caller) and the `in_progress` commit, then the reply in a
//! task of its own.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

mod admission;
mod answers;
mod follow;
mod replay;
mod upkeep;

pub use answers::{Answered, Followed, Started, Submitted};

use answers::{Admitted, ended};

use crate::capacity::ProviderGate;
use crate::clock::Clock;
use crate::error::TurnError;
use crate::idempotency::{IdempotencyKey, KeyClaim, fingerprint};
use crate::ids::{Caller, SessionId, TurnId};
use crate::limiter::{Claim, LimiterHandle, LimiterState, RateLimitStatus};
use crate::live::LiveOutputs;
use crate::observe::{Endpoint, TurnObserver, Unobserved};
use crate::page::{Page, PageRequest};
use crate::ports::{FileRepository, ModelProvider, NoBus, Tools, TurnBus, TurnRepository};
use crate::tokens::TokenCounter;
use crate::turn::{NewTurn, Turn, TurnStatus};
use crate::turn_run::TurnRun;
use crate::turn_task::{Measured, NotBegun, TurnContext, TurnPolicy, TurnTask};

/// Deltas buffered between the generating task and a slow reader.
const EVENT_BUFFER: usize = 64;

/// Submits and reads turns.
#[derive(Debug, Clone)]
pub struct TurnService {
    /// What the service and every turn's task use.
    context: Arc<TurnContext>,
    /// `None` when `rate_limit.enabled = false`.
    limiter: Option<LimiterHandle>,
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
        let context = TurnContext {
            turns,
            provider,
            tokens,
            clock,
            policy,
            live: LiveOutputs::default(),
            lifecycle: Arc::default(),
            observer: Arc::new(Unobserved),
            bus: Arc::new(NoBus),
            files: None,
            tools: None,
            gate: None,
        };
        Self { context: Arc::new(context), limiter }
    }

    /// The same service, reporting to `observer` (the metrics).
    #[must_use]
    pub fn with_observer(self, observer: Arc<dyn TurnObserver>) -> Self {
        let mut context = Arc::unwrap_or_clone(self.context);
        context.observer = observer;
        Self { context: Arc::new(context), ..self }
    }

    /// The same service, sharing turns' journals and cancel requests with
    /// other instances through `bus`.
    #[must_use]
    pub fn with_bus(self, bus: Arc<dyn TurnBus>) -> Self {
        let mut context = Arc::unwrap_or_clone(self.context);
        context.bus = bus;
        Self { context: Arc::new(context), ..self }
    }

    /// The same service, letting turns read the caller's files (those a
    /// turn names and its session's) through `tools`.
    #[must_use]
    pub fn with_files(self, files: Arc<dyn FileRepository>, tools: Arc<dyn Tools>) -> Self {
        let mut context = Arc::unwrap_or_clone(self.context);
        context.files = Some(files);
        context.tools = Some(tools);
        Self { context: Arc::new(context), ..self }
    }

    /// The same service, holding turns to the provider's shared capacity
    /// through `gate` (they wait their turn in fair order when it is taken).
    #[must_use]
    pub fn with_gate(self, gate: ProviderGate) -> Self {
        let mut context = Arc::unwrap_or_clone(self.context);
        context.gate = Some(gate);
        Self { context: Arc::new(context), ..self }
    }

    /// The place in line of `caller`'s first turn waiting for the
    /// provider; `None` when none waits (or no capacity is configured).
    pub async fn queue_place(&self, caller: &Caller) -> Option<u64> {
        self.context.gate.as_ref()?.place(&caller.user).await
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
        self.context.lifecycle.running()
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
        self.start_keyed(caller, session_id, new, None, false).await?.into_run()
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
        self.start_keyed(caller, session_id, new, None, true).await?.into_run()
    }

    /// [`TurnService::start`] (or, with `cancel_on_drop`,
    /// [`TurnService::start_cancel_on_drop`]) with an `Idempotency-Key`: a
    /// retry of a request already made with `key` starts nothing and
    /// follows the first attempt's turn from its `turn.created`.
    ///
    /// # Errors
    /// Those of [`TurnService::start`]; [`TurnError::IdempotencyKeyReused`]
    /// when `key` was sent with another request; [`TurnError::IdempotencyKeyInUse`]
    /// when its first attempt's turn does not appear in time.
    pub async fn start_keyed(
        &self,
        caller: &Caller,
        session_id: SessionId,
        new: NewTurn,
        key: Option<IdempotencyKey>,
        cancel_on_drop: bool,
    ) -> Result<Started, TurnError> {
        self.start_for(Endpoint::Stream, caller, session_id, new, key, cancel_on_drop).await
    }

    /// Starts a turn on behalf of `endpoint`; `cancel_on_drop`: see
    /// [`TurnService::start_cancel_on_drop`].
    async fn start_for(
        &self,
        endpoint: Endpoint,
        caller: &Caller,
        session_id: SessionId,
        new: NewTurn,
        key: Option<IdempotencyKey>,
        cancel_on_drop: bool,
    ) -> Result<Started, TurnError> {
        let measured = Measured { endpoint, since: Instant::now() };
        if self.context.lifecycle.is_closing() {
            return Err(TurnError::ShuttingDown);
        }
        let turn_id = TurnId::new();
        let keyed = key.map(|key| (key, fingerprint(session_id, new.input())));
        let claim = keyed.as_ref().map(|(key, fingerprint)| Claim {
            key: key.as_str().to_owned(),
            claim: KeyClaim { turn: turn_id, fingerprint: fingerprint.clone() },
            ttl_ms: i64::try_from(self.context.policy.idempotency_ttl.as_millis())
                .unwrap_or(i64::MAX),
        });
        let (rate_limit, lease) = match self.admit(caller, new.input(), claim).await? {
            Admitted::Go(rate_limit, lease) => (rate_limit, lease),
            Admitted::Claimed(held) => return self.replay(caller, session_id, keyed, held).await,
        };
        let (committed, begun) = oneshot::channel();
        let (events, receiver) = mpsc::channel(EVENT_BUFFER);
        let cancel = CancellationToken::new();
        let task = TurnTask {
            context: Arc::clone(&self.context),
            user: caller.user.clone(),
            tier: caller.tier.clone(),
            session_id,
            turn_id,
            new,
            keyed: keyed.clone(),
            lease,
            events,
            cancel: cancel.clone(),
            measured,
        };
        self.context.lifecycle.spawn(task.run(committed));
        // Armed until the caller holds the run: the HTTP server drops this
        // future when its client hangs up, and the commit may be what it
        // was waiting for. A drop then cancels the turn the task commits.
        let abandoned = cancel_on_drop.then(|| cancel.clone().drop_guard());
        let turn = match begun.await {
            Ok(Ok(turn)) => turn,
            Ok(Err(NotBegun::Failed(error))) => return Err(error),
            Ok(Err(NotBegun::KeyTaken(held))) => {
                return self.replay(caller, session_id, keyed, held).await;
            }
            Err(_) => return Err(TurnError::Internal("turn task lost".into())),
        };
        if let Some(guard) = abandoned {
            guard.disarm();
        }
        Ok(Started::Run(TurnRun::new(turn, rate_limit, receiver, cancel)))
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
        let run = self.start_for(Endpoint::Json, caller, session_id, new, None, false).await?;
        let run = run.into_run()?;
        let rate_limit = run.rate_limit;
        let turn = run.outcome().await?;
        Ok(Submitted { turn, rate_limit })
    }

    /// [`TurnService::submit`] with an `Idempotency-Key`: a retry waits for
    /// the first attempt's turn to end (wherever it runs) and is answered
    /// how it ended, as the first attempt was.
    ///
    /// # Errors
    /// Refusals before any turn was started or found (those of
    /// [`TurnService::start_keyed`]); how the turn ended is in
    /// [`Answered::outcome`].
    pub async fn submit_keyed(
        &self,
        caller: &Caller,
        session_id: SessionId,
        new: NewTurn,
        key: IdempotencyKey,
    ) -> Result<Answered, TurnError> {
        let started =
            self.start_for(Endpoint::Json, caller, session_id, new, Some(key), false).await?;
        Ok(match started {
            Started::Run(run) => {
                let rate_limit = run.rate_limit;
                let outcome = run.outcome().await.map(|turn| Submitted { turn, rate_limit });
                Answered { replayed: false, outcome }
            }
            Started::Replay { events, .. } => {
                let outcome = ended(events).await.map(|turn| Submitted { turn, rate_limit: None });
                Answered { replayed: true, outcome }
            }
        })
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
        let mut turn = self.owned(caller, session_id, turn_id).await?;
        if turn.status == TurnStatus::InProgress
            && let Some(output) = self.context.live.get(turn.id)
        {
            turn.output = output;
        }
        Ok(turn)
    }

    /// The caller's turn, as its row has it.
    async fn owned(
        &self,
        caller: &Caller,
        session_id: SessionId,
        turn_id: TurnId,
    ) -> Result<Turn, TurnError> {
        self.context
            .turns
            .get(&caller.user, session_id, turn_id)
            .await?
            .ok_or(TurnError::TurnNotFound)
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
        self.context
            .turns
            .list(&caller.user, session_id, page)
            .await?
            .ok_or(TurnError::SessionNotFound)
    }
}
