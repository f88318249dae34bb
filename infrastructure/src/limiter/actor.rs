//! The limiter task: the only owner of the Redis connections, the loaded
//! script, the health state and the leases this instance holds; it fills
//! the over-limit cache and sweeps it and the in-process logs, which
//! the handles share (without Redis they decide with those logs on
//! their own thread and never ask this task).
//!
//! It never waits for one check before taking the next: each turn of the
//! loop drains the mailbox (after one scheduler pass, so callers that are
//! ready add theirs), answers what it can locally (cache, in-process
//! backend, degraded fallback), and sends the rest as one pipeline per
//! node serving them (one for a single Redis; one per master of a cluster
//! holding a user of the batch), with up to [`MAX_IN_FLIGHT`] pipelines
//! outstanding per node: no user waits behind another node's round trip.
//!
//! Leases: every `lease_ttl / 3` one pipeline per node renews all the Redis
//! leases this instance holds. A dropped lease's release (and refund) rides
//! the next pipeline to its node, ahead of that pipeline's checks, so a
//! slot given back before a check was sent is free for it: under load a
//! finished turn costs no round trip of its own. It waits for no pipeline
//! that is not coming: with none in flight it is sent at once, and the
//! pipelines in flight each end with a chance to send it (alone once the
//! last of them is answered and no check came). Renewals and releases sent
//! on their own never wait for the in-flight cap: a slot must not stay
//! taken (or lapse) because checks are queueing.
//!
//! This file keeps the loop and the local answers; the per-node pipelines
//! (send, dispatch, settle, record, answer by the fallback) are in
//! `actor/pipelines.rs`, the health jobs (probe, layout read) in
//! `actor/probes.rs`, the leases' renewal and release book in
//! `actor/leases.rs`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use pantheon_domain::limiter::{
    Admission, Claim, Decision, Fallback, LeaseId, LimiterCommand, LimiterShared, Limits,
    LocalLimiter, RateLimitStatus, SkipReason, TokenCost,
};
use pantheon_domain::observe::Unobserved;
use pantheon_domain::{Clock, LimiterObserver, UserId};
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;

use super::memory::MemoryLimiter;
use super::redis_link::{Batch, BatchOutcome, MAX_IN_FLIGHT, Pending, RedisLink};
use super::topology::NodeAddr;

mod leases;
mod pipelines;
mod probes;

use probes::{Job, probe};

/// Most commands taken from the mailbox per loop turn (one pipeline).
pub(super) const MAX_BATCH: usize = 256;
/// How often the fallback summary is logged and the cache swept.
const SUMMARY_INTERVAL: Duration = Duration::from_secs(10);

/// The task.
#[derive(Debug)]
pub struct LimiterActor {
    mailbox: mpsc::Receiver<LimiterCommand>,
    clock: Arc<dyn Clock>,
    fallback: Fallback,
    /// Holds the over-limit cache this task fills and the handles read.
    shared: Arc<LimiterShared>,
    /// The in-process counts, shared with the handles (which decide with
    /// them on their own thread when there is no Redis).
    local: Arc<dyn LocalLimiter>,
    redis: Option<RedisLink>,
    /// `rate_limit.lease_ttl_secs`.
    lease_ttl: Duration,
    /// The Redis leases of this instance's running turns, to renew.
    held: HashMap<LeaseId, UserId>,
    /// Redis leases to remove that Redis has not answered for yet.
    unreleased: leases::Unreleased,
    /// Told of every pipeline's size and round trip.
    observer: Arc<dyn LimiterObserver>,
}

impl LimiterActor {
    /// An actor over its mailbox; `redis = None` is the in-process backend.
    pub fn new(
        mailbox: mpsc::Receiver<LimiterCommand>,
        clock: Arc<dyn Clock>,
        fallback: Fallback,
        shared: Arc<LimiterShared>,
        redis: Option<RedisLink>,
        lease_ttl: Duration,
    ) -> Self {
        shared.install_local(Arc::new(MemoryLimiter::default()), redis.is_none());
        let local = shared.local().cloned().unwrap_or_else(|| Arc::new(MemoryLimiter::default()));
        Self {
            mailbox,
            clock,
            fallback,
            shared,
            local,
            redis,
            lease_ttl,
            held: HashMap::new(),
            unreleased: leases::Unreleased::default(),
            observer: Arc::new(Unobserved),
        }
    }

    /// The same actor, reporting its pipelines to `observer` (the metrics).
    #[must_use]
    pub fn with_observer(mut self, observer: Arc<dyn LimiterObserver>) -> Self {
        self.observer = observer;
        self
    }

    /// Runs until every handle is dropped.
    pub async fn run(mut self) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut in_flight: FuturesUnordered<BoxFuture<'static, BatchOutcome>> =
            FuturesUnordered::new();
        let mut jobs: FuturesUnordered<BoxFuture<'static, Job>> = FuturesUnordered::new();
        let mut probing: HashSet<NodeAddr> = HashSet::new();
        let mut refreshing = false;
        let mut summary = tokio::time::interval(SUMMARY_INTERVAL);
        let mut renewal = tokio::time::interval(self.lease_ttl / 3);
        renewal.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let releases = self.shared.releases().clone();
        loop {
            let probe_at = self.redis.as_ref().and_then(|r| r.health.next_probe(&probing));
            let room = self.redis.as_ref().map_or(MAX_IN_FLIGHT, RedisLink::max_in_flight);
            tokio::select! {
                n = self.mailbox.recv_many(&mut batch, MAX_BATCH), if in_flight.len() < room => {
                    if n == 0 {
                        break;
                    }
                    self.gather(&mut batch).await;
                    // Releases first: a slot given back before a check was
                    // sent is free for that check.
                    let mut remote = self.take_releases();
                    remote.extend(self.answer_locally(batch.drain(..)));
                    self.send(remote, &mut in_flight);
                }
                // Traffic flowing: the release rides the next pipeline.
                () = releases.queued(), if in_flight.is_empty() => {
                    let remote = self.take_releases();
                    self.send(remote, &mut in_flight);
                }
                _ = renewal.tick() => {
                    let remote = self.renewals();
                    self.send(remote, &mut in_flight);
                }
                Some((node, batch, outcome)) = in_flight.next() => {
                    self.settle(&node, batch, outcome);
                    let waiting = self.redis.as_mut().and_then(|r| r.backlog.remove(&node));
                    if let Some(waiting) = waiting {
                        self.dispatch(node, waiting, &mut in_flight);
                    }
                    // Releases kept for a node that has just answered, and
                    // those no check carried while pipelines were in flight.
                    if in_flight.is_empty() {
                        let remote = self.take_releases();
                        self.send(remote, &mut in_flight);
                    }
                    if let Some(redis) = &self.redis && !refreshing && redis.nodes.take_stale() {
                        refreshing = true;
                        let nodes = redis.nodes.clone();
                        jobs.push(Box::pin(async move { Job::Refresh(nodes.refresh().await) }));
                    }
                }
                () = sleep_until(probe_at), if probe_at.is_some() => {
                    if let Some(redis) = &self.redis {
                        for node in redis.health.due(tokio::time::Instant::now(), &probing) {
                            probing.insert(node.clone());
                            let nodes = redis.nodes.clone();
                            jobs.push(Box::pin(probe(nodes, node)));
                        }
                    }
                }
                Some(job) = jobs.next() => {
                    if let Job::Probe(node, _) = &job {
                        probing.remove(node);
                    } else {
                        refreshing = false;
                    }
                    self.job_done(job);
                    let remote = self.take_releases();
                    self.send(remote, &mut in_flight);
                }
                _ = summary.tick() => self.housekeeping(),
            }
        }
        // Send the last releases and answer what is still in flight (and
        // waiting behind it) before leaving.
        let remote = self.take_releases();
        self.send(remote, &mut in_flight);
        while let Some((node, batch, outcome)) = in_flight.next().await {
            self.settle(&node, batch, outcome);
            let waiting = self.redis.as_mut().and_then(|r| r.backlog.remove(&node));
            if let Some(waiting) = waiting {
                self.dispatch(node, waiting, &mut in_flight);
            }
        }
    }

    /// Lets the callers that are ready to run send their checks too before a
    /// batch goes out: one scheduler pass, no timer, so a busy instance sends
    /// fewer, larger pipelines and an idle one is not slowed.
    async fn gather(&mut self, batch: &mut Vec<LimiterCommand>) {
        let remote = self.redis.as_ref().is_some_and(RedisLink::any_up);
        if !remote || batch.len() >= MAX_BATCH {
            return;
        }
        tokio::task::yield_now().await;
        while batch.len() < MAX_BATCH {
            match self.mailbox.try_recv() {
                Ok(command) => batch.push(command),
                Err(_) => break,
            }
        }
    }

    /// Whether `user`'s node is to be asked now.
    fn routes(&self, user: &UserId) -> bool {
        self.redis.as_ref().is_some_and(|r| r.routes(user))
    }

    /// Answers peeks and checks that need no Redis call; returns the rest.
    fn answer_locally(&mut self, commands: impl Iterator<Item = LimiterCommand>) -> Batch {
        let now_ms = self.clock.now_ms();
        let ttl_ms = self.lease_ttl_ms();
        let mut batch = Vec::new();
        for command in commands {
            // A caller that stopped waiting was already answered by the
            // handle's fallback (or its request is gone): its check must
            // neither reach Redis nor count locally — under `deny` it got a
            // `503`. Checked here and again just before the pipeline is sent.
            if abandoned(&command) {
                continue;
            }
            let remote = self.redis.as_ref().is_some_and(|r| r.routes(command_user(&command)));
            match command {
                LimiterCommand::Check { user, limits, cost, claim, respond_to } => {
                    // Known over-limit users are refused from the cache first,
                    // before Redis and before any fallback; not a check with
                    // a key, whose retry is answered even over a limit.
                    let requested = limits.has_token_budget().then(|| cost.smallest());
                    let cached = match claim {
                        Some(_) => None,
                        None => self.shared.refusals().get(&user, limits, requested, now_ms),
                    };
                    if let Some(denial) = cached {
                        let _ =
                            respond_to.send(Admission::without_lease(Decision::Limited(denial)));
                    } else if remote {
                        let lease = LeaseId::random();
                        batch.push(Pending::Check {
                            user,
                            limits,
                            cost,
                            now_ms,
                            lease,
                            ttl_ms,
                            claim,
                            reply: respond_to,
                        });
                    } else if self.redis.is_none() {
                        let admission =
                            self.check_locally(&user, limits, cost, claim.as_ref(), now_ms);
                        let _ = respond_to.send(admission);
                    } else {
                        let admission = self.fallback(&user, limits, cost, now_ms);
                        let _ = respond_to.send(admission);
                    }
                }
                LimiterCommand::Peek { user, limits, respond_to } => {
                    if remote {
                        batch.push(Pending::Peek { user, limits, now_ms, reply: respond_to });
                    } else if self.redis.is_none() || self.fallback == Fallback::Local {
                        let tally = self.local.peek(&user, limits, now_ms);
                        let _ = respond_to
                            .send(Some(RateLimitStatus::from_peek(limits, &tally, now_ms)));
                    } else {
                        let _ = respond_to.send(None);
                    }
                }
            }
        }
        batch
    }

    fn housekeeping(&mut self) {
        let now_ms = self.clock.now_ms();
        self.shared.refusals().sweep(now_ms);
        self.local.sweep(now_ms);
        if let Some(redis) = &mut self.redis {
            redis.health.summarize();
        }
    }

    /// The in-process backend's answer (no Redis configured, or `local`).
    fn check_locally(
        &mut self,
        user: &UserId,
        limits: Limits,
        cost: TokenCost,
        claim: Option<&Claim>,
        now_ms: i64,
    ) -> Admission {
        self.shared.decide_locally(&self.local, user, limits, cost, claim, now_ms)
    }

    /// How a check is answered while Redis cannot be asked.
    fn fallback(
        &mut self,
        user: &UserId,
        limits: Limits,
        cost: TokenCost,
        now_ms: i64,
    ) -> Admission {
        if let Some(redis) = &mut self.redis {
            redis.health.note_fallback();
        }
        match self.fallback {
            Fallback::Allow => {
                Admission::without_lease(Decision::Skipped(SkipReason::StoreUnavailable))
            }
            Fallback::Deny => {
                Admission::without_lease(Decision::Unavailable(SkipReason::StoreUnavailable))
            }
            // A claim is not made here: the turn's row, unique by its key,
            // still tells a retry (see `LimiterHandle::check_claiming`).
            Fallback::Local => self.check_locally(user, limits, cost, None, now_ms),
        }
    }
}

fn command_user(command: &LimiterCommand) -> &UserId {
    match command {
        LimiterCommand::Check { user, .. } | LimiterCommand::Peek { user, .. } => user,
    }
}

fn abandoned(command: &LimiterCommand) -> bool {
    match command {
        LimiterCommand::Check { respond_to, .. } => respond_to.is_closed(),
        LimiterCommand::Peek { respond_to, .. } => respond_to.is_closed(),
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
