//! [`LimiterHandle`]: the cloneable front of the limiter task. A user the
//! shared over-limit cache knows to be refused is answered at once, from
//! it. Without Redis, every check is decided on the caller's own thread by
//! the [`LocalLimiter`]: there is no dependency to fall back from, so a
//! busy task can never turn a decision into a skip. With Redis, a check is
//! a message over a bounded mailbox with a `oneshot` reply; a full mailbox
//! or a late reply is answered by the fallback at once (so the limiter can
//! slow a turn by at most its `wait`), and `fallback = local` then decides
//! with the in-process counts too, never skipping.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::answer::{Decision, Denial, RateLimitStatus, SkipReason};
use super::cache::OverLimitCache;
use super::decision::Verdict;
use super::lease::{Lease, Releases};
use super::limits::{Claim, Limits, Reservation, TokenCost};
use super::local::LocalLimiter;
use super::protocol::{Admission, Fallback, LimiterCommand, LimiterState, Mode};
use crate::clock::Clock;
use crate::ids::UserId;

/// How the handle answers when the task cannot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandleOptions {
    /// `rate_limit.fallback`.
    pub fallback: Fallback,
    /// `rate_limit.mode`.
    pub mode: Mode,
    /// The longest a caller waits for the task's answer.
    pub wait: Duration,
}

/// What the task shares with its handles: its state for reporting, the
/// over-limit cache it fills and they answer from, the queue its leases
/// release into, and the in-process counts both decide with.
#[derive(Debug, Default)]
pub struct LimiterShared {
    state: AtomicU8,
    refusals: OverLimitCache,
    releases: Arc<Releases>,
    local: OnceLock<LocalBackend>,
}

/// The in-process counts, and whether they are the limiter (no Redis) or
/// only its `fallback = local`.
#[derive(Debug)]
struct LocalBackend {
    limiter: Arc<dyn LocalLimiter>,
    decides: bool,
}

impl LimiterShared {
    /// Installs the in-process counts, once (a second call is ignored):
    /// with `decides` (no Redis) every handle decides with them on the
    /// caller's thread; otherwise they answer `fallback = local`.
    pub fn install_local(&self, limiter: Arc<dyn LocalLimiter>, decides: bool) {
        let _ = self.local.set(LocalBackend { limiter, decides });
    }

    /// The in-process counts, once installed.
    pub fn local(&self) -> Option<&Arc<dyn LocalLimiter>> {
        self.local.get().map(|l| &l.limiter)
    }

    /// The in-process counts when they are the limiter (no Redis).
    fn deciding_locally(&self) -> Option<&Arc<dyn LocalLimiter>> {
        self.local.get().filter(|l| l.decides).map(|l| &l.limiter)
    }

    /// Decides one turn with `local` at `now_ms`: counted, a slot and the
    /// reservation taken when admitted (the lease gives them back there),
    /// a refusal cached.
    pub fn decide_locally(
        &self,
        local: &Arc<dyn LocalLimiter>,
        user: &UserId,
        limits: Limits,
        cost: TokenCost,
        claim: Option<&Claim>,
        now_ms: i64,
    ) -> Admission {
        let verdict = match claim {
            None => local.check(user, limits, cost, now_ms),
            Some(claim) => match local.check_claiming(user, limits, cost, claim, now_ms) {
                Ok(verdict) => verdict,
                Err(held) => return Admission::claimed(held),
            },
        };
        let admitted = verdict.is_admitted();
        let (decision, reservation) = self.verdict(user, verdict);
        let lease = admitted.then(|| {
            Lease::local(user.clone(), local.clone())
                .with_reservation(reservation)
                .with_claim(claim.map(|c| c.key.clone()))
        });
        Admission { decision, lease, claimed: None }
    }

    /// Turns a verdict (of any backend) into the caller's decision and the
    /// tokens reserved, caching a refusal.
    pub fn verdict(&self, user: &UserId, verdict: Verdict) -> (Decision, Option<Reservation>) {
        let (decision, reservation) = verdict.into_decision();
        if let Decision::Limited(denial) = &decision {
            self.refusals.insert(user, denial);
        }
        (decision, reservation)
    }

    /// The over-limit cache.
    pub fn refusals(&self) -> &OverLimitCache {
        &self.refusals
    }

    /// Where dropped leases queue their release.
    pub fn releases(&self) -> &Arc<Releases> {
        &self.releases
    }

    /// Publishes the task's state.
    pub fn set_state(&self, state: LimiterState) {
        let code = match state {
            LimiterState::InProcess => 0,
            LimiterState::Healthy => 1,
            LimiterState::Degraded => 2,
        };
        self.state.store(code, Ordering::Relaxed);
    }

    /// The task's last published state.
    pub fn state(&self) -> LimiterState {
        match self.state.load(Ordering::Relaxed) {
            1 => LimiterState::Healthy,
            2 => LimiterState::Degraded,
            _ => LimiterState::InProcess,
        }
    }
}

/// The cloneable handle every request uses.
#[derive(Clone)]
pub struct LimiterHandle {
    sender: mpsc::Sender<LimiterCommand>,
    options: HandleOptions,
    shared: Arc<LimiterShared>,
    /// The task's clock: a cached refusal expires by the same time.
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for LimiterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LimiterHandle").field("options", &self.options).finish_non_exhaustive()
    }
}

/// Creates a handle and the mailbox its task reads, holding at most
/// `capacity` waiting commands; `clock` must be the task's.
pub fn limiter_channel(
    capacity: usize,
    options: HandleOptions,
    clock: Arc<dyn Clock>,
) -> (LimiterHandle, mpsc::Receiver<LimiterCommand>, Arc<LimiterShared>) {
    let (sender, mailbox) = mpsc::channel(capacity.max(1));
    let shared = Arc::new(LimiterShared::default());
    (LimiterHandle { sender, options, shared: shared.clone(), clock }, mailbox, shared)
}

impl LimiterHandle {
    /// [`LimiterHandle::check_with`] for a turn that asks nothing of the
    /// token budgets.
    pub async fn check(&self, user: UserId, limits: Limits) -> Admission {
        self.check_with(user, limits, TokenCost::default()).await
    }

    /// Decides on one turn of `user` costing `cost`; an admission carries the
    /// lease of the slot it took, with the tokens it reserved. Never fails:
    /// trouble is answered by the fallback, and shadow mode turns refusals
    /// into admissions (counted, holding no slot, reserving nothing).
    pub async fn check_with(&self, user: UserId, limits: Limits, cost: TokenCost) -> Admission {
        self.check_claiming(user, limits, cost, None).await
    }

    /// [`LimiterHandle::check_with`] claiming an `Idempotency-Key` in the
    /// same atomic check (see [`Claim`]). A check with a claim skips the
    /// over-limit cache: a retry is answered its turn even over a limit.
    /// When the store cannot be asked (the fallback), the claim is not
    /// made: the turn's row, unique by its key, still tells a retry.
    pub async fn check_claiming(
        &self,
        user: UserId,
        limits: Limits,
        cost: TokenCost,
        claim: Option<Claim>,
    ) -> Admission {
        let requested = limits.has_token_budget().then(|| cost.smallest());
        let now_ms = self.clock.now_ms();
        let cached = match claim {
            Some(_) => None,
            None => self.shared.refusals.get(&user, limits, requested, now_ms),
        };
        let admission = match (cached, self.shared.deciding_locally()) {
            (Some(denial), _) => Admission::without_lease(Decision::Limited(denial)),
            (None, Some(local)) => {
                self.shared.decide_locally(local, &user, limits, cost, claim.as_ref(), now_ms)
            }
            (None, None) => self.ask(user.clone(), limits, cost, claim).await,
        };
        match admission.decision {
            Decision::Limited(denial) if self.options.mode == Mode::Shadow => {
                tracing::info!(user.id = %user, retry_at_ms = denial.retry_at_ms, "shadow mode: would have refused");
                Admission::without_lease(Decision::Admitted(denial.status()))
            }
            _ => admission,
        }
    }

    /// A refusal the over-limit cache holds for `user`, for a turn whose
    /// smallest reservation is at most `at_most` tokens: asked before the
    /// turn's tokens are estimated, so a known refusal costs no tokenizing.
    /// `None` when the cache does not answer it exactly, and in shadow mode
    /// (which refuses nothing).
    pub fn cached_refusal(&self, user: &UserId, limits: Limits, at_most: u64) -> Option<Denial> {
        if self.options.mode == Mode::Shadow {
            return None;
        }
        self.shared.refusals.get_within(user, limits, at_most, self.clock.now_ms())
    }

    /// Asks the task.
    async fn ask(
        &self,
        user: UserId,
        limits: Limits,
        cost: TokenCost,
        claim: Option<Claim>,
    ) -> Admission {
        let (respond_to, reply) = oneshot::channel();
        let command = LimiterCommand::Check { user: user.clone(), limits, cost, claim, respond_to };
        // A full mailbox is overload: answer now rather than queue.
        let reason = if self.sender.try_send(command).is_err() {
            SkipReason::Overloaded
        } else {
            match tokio::time::timeout(self.options.wait, reply).await {
                Ok(Ok(admission)) => return admission,
                // Dropping `reply` tells the task this caller stopped
                // waiting: a check not yet sent is never counted.
                _ => SkipReason::StoreUnavailable,
            }
        };
        self.fallback(reason, &user, limits, cost)
    }

    /// Reports `user`'s usage without counting; `None` when unknown.
    pub async fn peek(&self, user: UserId, limits: Limits) -> Option<RateLimitStatus> {
        if let Some(local) = self.shared.deciding_locally() {
            let now_ms = self.clock.now_ms();
            let tally = local.peek(&user, limits, now_ms);
            return Some(RateLimitStatus::from_peek(limits, &tally, now_ms));
        }
        let (respond_to, reply) = oneshot::channel();
        self.sender.try_send(LimiterCommand::Peek { user, limits, respond_to }).ok()?;
        tokio::time::timeout(self.options.wait, reply).await.ok()?.ok()?
    }

    /// Whether refusals are enforced (not `rate_limit.mode = shadow`).
    pub fn enforces(&self) -> bool {
        self.options.mode == Mode::Enforce
    }

    /// The limiter's current state.
    pub fn state(&self) -> LimiterState {
        self.shared.state()
    }

    /// How many refusals were answered from the over-limit cache.
    pub fn cache_refusals(&self) -> u64 {
        self.shared.refusals.hits()
    }

    /// The answer to a check the task could not take or answer in time:
    /// with Redis configured that is Redis trouble (the task is waiting on
    /// it), answered as `rate_limit.fallback` says.
    fn fallback(
        &self,
        reason: SkipReason,
        user: &UserId,
        limits: Limits,
        cost: TokenCost,
    ) -> Admission {
        let decision = match (self.options.fallback, self.shared.local()) {
            (Fallback::Deny, _) => Decision::Unavailable(reason),
            (Fallback::Local, Some(local)) => {
                let now_ms = self.clock.now_ms();
                return self.shared.decide_locally(local, user, limits, cost, None, now_ms);
            }
            // No in-process counts installed (a handle without its task).
            (Fallback::Allow | Fallback::Local, _) => Decision::Skipped(reason),
        };
        Admission::without_lease(decision)
    }
}
