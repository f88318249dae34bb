//! Admission: the limiter's check of a turn, and under a token budget what
//! the turn asks of it, told as cheaply as it can be told.

use crate::error::TurnError;
use crate::ids::Caller;
use crate::limiter::{Admission, Claim, Decision, Policy, TokenCost, Window};

use super::TurnService;
use super::answers::Admitted;

impl TurnService {
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
    pub(super) async fn admit(
        &self,
        caller: &Caller,
        input: &str,
        claim: Option<Claim>,
    ) -> Result<Admitted, TurnError> {
        let Some(limiter) = &self.limiter else {
            return Ok(Admitted::Go(None, None));
        };
        let mut cached = None;
        let mut cost = TokenCost::default();
        if caller.limits.has_token_budget() {
            let enforce = limiter.enforces();
            let framing =
                self.context.provider.prompt_tokens(self.context.tokens.as_ref(), "", &[]);
            let fewest = framing.saturating_add(self.context.tokens.fewest_tokens(input.len()));
            self.fits_budget(caller, fewest, enforce)?;
            // Every token is at least one byte.
            let most = framing.saturating_add(u64::try_from(input.len()).unwrap_or(u64::MAX));
            let at_most = most.saturating_add(self.context.policy.min_output_tokens);
            // A retry is answered its turn even over a limit: the script
            // tells it, not the cache.
            if claim.is_none() {
                cached = limiter.cached_refusal(&caller.user, caller.limits, at_most);
            }
            if cached.is_none() {
                cost = self.token_cost(caller, input, enforce)?;
            }
        }
        let admission = match cached {
            Some(denial) => Admission::without_lease(Decision::Limited(denial)),
            None => limiter.check_claiming(caller.user.clone(), caller.limits, cost, claim).await,
        };
        if let Some(claimed) = admission.claimed {
            return Ok(Admitted::Claimed(claimed));
        }
        self.context.observer.decided(&admission.decision);
        match admission.decision {
            Decision::Admitted(status) => Ok(Admitted::Go(Some(status), admission.lease)),
            Decision::Skipped(_) => Ok(Admitted::Go(None, admission.lease)),
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
            input: self.context.provider.prompt_tokens(self.context.tokens.as_ref(), input, &[]),
            min_output: self.context.policy.min_output_tokens,
            max_output: self.context.policy.max_output_tokens,
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
        let requested = input.saturating_add(self.context.policy.min_output_tokens);
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
}
