//! The turn use case: the order of work of SPEC §4 in one place, shared by
//! the JSON and (later) the streaming endpoint.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use crate::clock::Clock;
use crate::error::{ProviderError, TurnError};
use crate::ids::{Caller, SessionId, TurnId, UserId};
use crate::limiter::{Decision, LimiterHandle, LimiterState, RateLimitStatus};
use crate::page::{Page, PageRequest};
use crate::ports::{ModelProvider, ReplyEvent, ReplyRequest, TurnRepository, TurnStart};
use crate::turn::{FinishReason, NewTurn, Turn, TurnEnd, TurnFailure, TurnStatus, Usage};

/// Tunables of the turn path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TurnPolicy {
    /// The longest a reply may take before the turn is ended as timed out.
    pub max_duration: Duration,
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
    turns: Arc<dyn TurnRepository>,
    provider: Arc<dyn ModelProvider>,
    clock: Arc<dyn Clock>,
    policy: TurnPolicy,
    /// `None` when `rate_limit.enabled = false`.
    limiter: Option<LimiterHandle>,
}

impl TurnService {
    /// A service over its ports.
    pub fn new(
        turns: Arc<dyn TurnRepository>,
        provider: Arc<dyn ModelProvider>,
        clock: Arc<dyn Clock>,
        policy: TurnPolicy,
        limiter: Option<LimiterHandle>,
    ) -> Self {
        Self { turns, provider, clock, policy, limiter }
    }

    /// Asks the limiter whether the caller may submit a turn now, counting
    /// it when so. Both turn endpoints call this first, before any
    /// repository call, so a refusal costs no database work.
    ///
    /// # Errors
    /// - [`TurnError::RateLimited`]: over a limit; retry at the denial's `retry_at_ms`.
    /// - [`TurnError::LimiterUnavailable`]: the store is down and the fallback is `deny`.
    pub async fn admit(&self, caller: &Caller) -> Result<Option<RateLimitStatus>, TurnError> {
        let Some(limiter) = &self.limiter else {
            return Ok(None);
        };
        match limiter.check(caller.user.clone(), caller.limits).await {
            Decision::Admitted(status) => Ok(Some(status)),
            Decision::Skipped(_) => Ok(None),
            Decision::Limited(denial) => Err(TurnError::RateLimited(Box::new(denial))),
            Decision::Unavailable(_) => Err(TurnError::LimiterUnavailable),
        }
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

    /// Submits a turn and waits for its reply.
    ///
    /// The work runs in its own task: the HTTP server drops a handler's
    /// future when the client hangs up, and a turn committed `in_progress`
    /// must still be completed and persisted.
    ///
    /// # Errors
    /// - [`TurnError::RateLimited`], [`TurnError::LimiterUnavailable`]: refused
    ///   before anything was looked up or written.
    /// - [`TurnError::SessionNotFound`]: not the caller's session; nothing written.
    /// - [`TurnError::Provider`]: the reply failed; the turn is persisted `failed`.
    /// - [`TurnError::Storage`]: the database failed.
    pub async fn submit(
        &self,
        caller: &Caller,
        session_id: SessionId,
        new: NewTurn,
    ) -> Result<Submitted, TurnError> {
        let rate_limit = self.admit(caller).await?;
        let service = self.clone();
        let user = caller.user.clone();
        let turn = tokio::spawn(async move { service.run(user, session_id, new).await })
            .await
            .map_err(|e| TurnError::Internal(format!("turn task lost: {e}")))??;
        Ok(Submitted { turn, rate_limit })
    }

    /// One turn of a session of the caller's, also while in progress.
    ///
    /// # Errors
    /// [`TurnError::TurnNotFound`] when the turn (or the session) is not the caller's.
    pub async fn get(
        &self,
        caller: &Caller,
        session_id: SessionId,
        turn_id: TurnId,
    ) -> Result<Turn, TurnError> {
        self.turns.get(&caller.user, session_id, turn_id).await?.ok_or(TurnError::TurnNotFound)
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

    async fn run(
        &self,
        user: UserId,
        session_id: SessionId,
        new: NewTurn,
    ) -> Result<Turn, TurnError> {
        let start = TurnStart {
            user: &user,
            session_id,
            turn_id: TurnId::new(),
            input: new.input(),
            now: self.clock.now_micros(),
        };
        let turn = self.turns.begin(start).await?.ok_or(TurnError::SessionNotFound)?;
        let (end, failure) = self.generate(&turn).await;
        let turn = self.turns.finish(turn.id, end).await?;
        match failure {
            None => Ok(turn),
            Some(source) => Err(TurnError::Provider { turn: Box::new(turn), source }),
        }
    }

    /// Collects the provider's reply, bounded by the policy's duration.
    /// Returns how the turn ended and, when it failed, why.
    async fn generate(&self, turn: &Turn) -> (TurnEnd, Option<ProviderError>) {
        let request = ReplyRequest { session_id: turn.session_id, input: turn.input.clone() };
        let mut output = String::new();
        let collected = tokio::time::timeout(
            self.policy.max_duration,
            collect_reply(self.provider.as_ref(), request, &mut output),
        )
        .await
        .unwrap_or(Err(ProviderError::Timeout));
        let completed_at = self.clock.now_micros();
        match collected {
            Ok((finish_reason, usage)) => (
                TurnEnd {
                    output,
                    status: TurnStatus::Completed,
                    finish_reason,
                    usage,
                    error: None,
                    completed_at,
                },
                None,
            ),
            Err(error) => {
                tracing::warn!(turn.id = %turn.id, error = %error, "provider failed");
                let failure =
                    TurnFailure { code: error.code().to_owned(), detail: failure_detail(&error) };
                (
                    TurnEnd {
                        output,
                        status: TurnStatus::Failed,
                        finish_reason: FinishReason::Error,
                        usage: None,
                        error: Some(failure),
                        completed_at,
                    },
                    Some(error),
                )
            }
        }
    }
}

/// Appends the reply's deltas to `output` until it finishes or fails; what
/// was appended before a failure stays, as the turn's partial output.
async fn collect_reply(
    provider: &dyn ModelProvider,
    request: ReplyRequest,
    output: &mut String,
) -> Result<(FinishReason, Option<Usage>), ProviderError> {
    let mut stream = provider.reply(request).await?;
    while let Some(event) = stream.next().await {
        match event? {
            ReplyEvent::Delta(delta) => output.push_str(&delta),
            ReplyEvent::Finished { finish_reason, usage } => return Ok((finish_reason, usage)),
        }
    }
    Ok((FinishReason::Stop, None))
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
