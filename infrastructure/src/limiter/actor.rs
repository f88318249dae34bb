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
//! leases this instance holds; a dropped lease wakes the task, which sends
//! its release at once, or ahead of the checks of the pipeline it is
//! building. Renewals and releases sent on their own never wait for the
//! in-flight cap: a slot must not stay taken (or lapse) because checks are
//! queueing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use pantheon_domain::limiter::{
    Admission, Decision, Fallback, Lease, LeaseId, LeaseStore, LimiterCommand, LimiterShared,
    Limits, LocalLimiter, RateLimitStatus, Reservation, SkipReason, Tally, TokenCost, Verdict,
};
use pantheon_domain::{Clock, UserId};
use redis::{Client, ConnectionInfo, RedisResult, Script};
use tokio::sync::{mpsc, oneshot};
use tokio::time::MissedTickBehavior;

use super::health::HealthBoard;
use super::memory::MemoryLimiter;
use super::nodes::Nodes;
use super::redis_link::{self, BatchReply, Pending};
use super::topology::{NodeAddr, slot_of};
use crate::metrics::LimiterMetrics;

mod leases;

use leases::Upkeep;

/// Most commands taken from the mailbox per loop turn (one pipeline).
const MAX_BATCH: usize = 256;
/// Most pipelines outstanding per node. Past it on a single Redis the
/// mailbox fills and callers get the fallback at once instead of queueing
/// behind a slow Redis; on a cluster that node's share of a batch waits for
/// its next free pipeline (up to [`MAX_BACKLOG`] checks), while the other
/// nodes' shares go out.
const MAX_IN_FLIGHT: usize = 16;
/// Checks waiting for a busy node's next pipeline; past it they are
/// answered by the fallback at once (that node is not keeping up).
const MAX_BACKLOG: usize = MAX_BATCH;
/// How often the fallback summary is logged and the cache swept.
const SUMMARY_INTERVAL: Duration = Duration::from_secs(10);

type CheckReply = oneshot::Sender<Admission>;
type PeekReply = oneshot::Sender<Option<RateLimitStatus>>;
type Batch = Vec<Pending<CheckReply, PeekReply>>;
type BatchOutcome = (NodeAddr, Batch, BatchReply);

/// What a background Redis job found.
enum Job {
    /// A probe of a degraded node: `Ok(true)` it answers again, `Ok(false)`
    /// it serves no slot any more.
    Probe(NodeAddr, RedisResult<bool>),
    /// The cluster's layout was read again (after a `MOVED`).
    Refresh(RedisResult<()>),
}

/// The Redis half of the actor's state.
#[derive(Debug)]
pub struct RedisLink {
    nodes: Arc<Nodes>,
    health: HealthBoard,
    /// Pipelines outstanding per node.
    in_flight: HashMap<NodeAddr, usize>,
    /// Per node at [`MAX_IN_FLIGHT`]: what its next pipeline takes.
    backlog: HashMap<NodeAddr, Batch>,
}

impl RedisLink {
    /// One Redis. Connects once at start; Pantheon starts even when Redis
    /// is down, with the link degraded.
    pub async fn start(
        client: Client,
        timeout: Duration,
        fallback: Fallback,
        shared: Arc<LimiterShared>,
    ) -> Self {
        let script = Arc::new(Script::new(redis_link::CHECK_SCRIPT));
        let nodes = Nodes::single(client.get_connection_info().clone(), script, timeout);
        Self::connect(nodes, fallback, shared).await
    }

    /// A Redis Cluster found from `seeds` (at least one): its layout is read
    /// and every master connected at start; a cluster that cannot be reached
    /// starts degraded, and so does each master that cannot.
    pub async fn start_cluster(
        seeds: Vec<ConnectionInfo>,
        timeout: Duration,
        fallback: Fallback,
        shared: Arc<LimiterShared>,
    ) -> Option<Self> {
        let script = Arc::new(Script::new(redis_link::CHECK_SCRIPT));
        let nodes = Nodes::cluster(seeds, script, timeout)?;
        if let Err(e) = nodes.refresh().await {
            tracing::warn!(
                error = %e,
                "redis.cluster_urls: no seed answered CLUSTER SLOTS; checks go to the first seed \
                 until the layout can be read"
            );
        }
        Some(Self::connect(nodes, fallback, shared).await)
    }

    async fn connect(nodes: Nodes, fallback: Fallback, shared: Arc<LimiterShared>) -> Self {
        let masters = nodes.masters();
        let connected =
            futures::future::join_all(masters.iter().map(|m| nodes.connection(m))).await;
        let states = masters.into_iter().zip(connected).map(|(node, connected)| {
            let error = connected.err().map(|e| e.to_string());
            if let Some(error) = &error {
                tracing::debug!(error, node = %node, "Redis connect at start failed");
            }
            (node, error)
        });
        let health = HealthBoard::new(states, fallback, shared);
        Self { nodes: Arc::new(nodes), health, in_flight: HashMap::new(), backlog: HashMap::new() }
    }

    /// Whether `user`'s node can be asked (it is not degraded).
    fn routes(&self, user: &UserId) -> bool {
        !self.health.is_degraded(&self.nodes.node_for(slot_of(user)))
    }

    /// Whether any node can be asked.
    fn any_up(&self) -> bool {
        !self.health.all_degraded()
    }

    /// Pipelines the loop may have outstanding in all.
    fn max_in_flight(&self) -> usize {
        MAX_IN_FLIGHT * self.nodes.master_count().max(1)
    }
}

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
    metrics: LimiterMetrics,
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
            metrics: LimiterMetrics::default(),
        }
    }

    /// The same actor, recording its pipelines into `metrics`.
    #[must_use]
    pub fn with_metrics(mut self, metrics: LimiterMetrics) -> Self {
        self.metrics = metrics;
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
                () = releases.queued() => {
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
                    // Releases kept for a node that has just answered.
                    let remote = self.take_releases();
                    self.send(remote, &mut in_flight);
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
                LimiterCommand::Check { user, limits, cost, respond_to } => {
                    // Known over-limit users are refused from the cache first,
                    // before Redis and before any fallback.
                    let requested = limits.has_token_budget().then(|| cost.smallest());
                    if let Some(denial) =
                        self.shared.refusals().get(&user, limits, requested, now_ms)
                    {
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
                            reply: respond_to,
                        });
                    } else if self.redis.is_none() {
                        let admission = self.check_locally(&user, limits, cost, now_ms);
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
                        let _ = respond_to.send(Some(status(limits, &tally, now_ms)));
                    } else {
                        let _ = respond_to.send(None);
                    }
                }
            }
        }
        batch
    }

    /// Splits `batch` by the node serving each user and sends each node's
    /// share as one pipeline.
    fn send(
        &mut self,
        batch: Batch,
        in_flight: &mut FuturesUnordered<BoxFuture<'static, BatchOutcome>>,
    ) {
        if batch.is_empty() {
            return;
        }
        let Some(redis) = &self.redis else { return };
        let owners = redis.nodes.nodes_for(batch.iter().map(|p| slot_of(p.user())));
        let mut groups: BTreeMap<NodeAddr, Batch> = BTreeMap::new();
        for (node, pending) in owners.into_iter().zip(batch) {
            groups.entry(node).or_default().push(pending);
        }
        for (node, group) in groups {
            self.dispatch(node, group, in_flight);
        }
    }

    /// Sends `group` to `node` as one pipeline, or, with the node at
    /// [`MAX_IN_FLIGHT`], keeps it for the node's next one (what does not
    /// fit in [`MAX_BACKLOG`] is answered by the fallback).
    fn dispatch(
        &mut self,
        node: NodeAddr,
        group: Batch,
        in_flight: &mut FuturesUnordered<BoxFuture<'static, BatchOutcome>>,
    ) {
        let Some(redis) = &mut self.redis else { return };
        if redis.health.is_degraded(&node) {
            // Turned degraded while this waited in its backlog.
            for pending in group {
                self.answer_by_fallback(pending);
            }
            return;
        }
        let outstanding = redis.in_flight.entry(node.clone()).or_default();
        // Lease upkeep alone never waits for the cap (see the module doc).
        let upkeep = group.iter().all(Pending::is_upkeep);
        if *outstanding >= MAX_IN_FLIGHT && !upkeep {
            let waiting = redis.backlog.entry(node).or_default();
            let room = MAX_BACKLOG.saturating_sub(waiting.len());
            let mut group = group.into_iter();
            waiting.extend(group.by_ref().take(room));
            for pending in group {
                self.answer_by_fallback(pending);
            }
            return;
        }
        *outstanding += 1;
        let nodes = redis.nodes.clone();
        let metrics = self.metrics.clone();
        let started = std::time::Instant::now();
        in_flight.push(Box::pin(redis_link::run_batch(nodes, node.clone(), group).map(
            move |(batch, outcome)| {
                if !batch.is_empty() {
                    metrics.pipeline(batch.len(), started.elapsed());
                }
                (node, batch, outcome)
            },
        )));
    }

    /// Fans a pipeline's results out to the callers and updates each
    /// node's health.
    fn settle(&mut self, node: &NodeAddr, batch: Batch, outcome: BatchReply) {
        if let Some(redis) = &mut self.redis
            && let Some(outstanding) = redis.in_flight.get_mut(node)
        {
            *outstanding = outstanding.saturating_sub(1);
        }
        if batch.is_empty() {
            // Every caller gave up before it was sent: no call, no news.
            return;
        }
        // Error replies inside a pipeline count as one failed call of their
        // node, like a pipeline that failed whole.
        for (node, error) in &outcome.reports {
            self.record(node, error.as_deref());
            if error.is_none() {
                self.node_answered(Some(node));
            }
        }
        for (pending, result) in batch.into_iter().zip(outcome.results) {
            match (pending, result) {
                (Pending::Check { user, limits, cost, now_ms, lease, reply, .. }, Ok(values)) => {
                    match redis_link::parse_tally(values) {
                        Ok(tally) => {
                            let verdict = Verdict::from_tally(limits, cost, &tally, now_ms);
                            let (decision, reservation) =
                                self.verdict(&user, limits, now_ms, verdict);
                            // The lease follows the script, which took the
                            // slot: an answer nobody receives drops it, and
                            // the drop gives the slot back.
                            let lease = tally.admitted.then(|| {
                                self.held.insert(lease, user.clone());
                                let releases = self.shared.releases().clone();
                                Lease::new(lease, user, LeaseStore::Redis, releases)
                                    .with_reservation(reservation)
                            });
                            let _ = reply.send(Admission { decision, lease });
                        }
                        Err(error) => {
                            tracing::error!(error, "unexpected limiter script reply");
                            // The script ran: it may have taken a slot.
                            self.unrelease(lease, user.clone(), None, Upkeep::Due);
                            let admission = self.fallback(&user, limits, cost, now_ms);
                            let _ = reply.send(admission);
                        }
                    }
                }
                (Pending::Peek { limits, now_ms, reply, .. }, Ok(values)) => {
                    let status =
                        redis_link::parse_tally(values).ok().map(|t| status(limits, &t, now_ms));
                    let _ = reply.send(status);
                }
                (Pending::Release { leases, .. }, Ok(_)) => self.released(&leases),
                (Pending::Renew { .. }, Ok(_)) => {}
                (pending, Err(error)) => {
                    let ran = redis_link::may_have_run(&error);
                    match &pending {
                        // Written before the call failed, the check may
                        // have run (or run later) and taken a slot nobody
                        // holds: its lease is removed once the node answers
                        // (idempotent; what it counted stays counted).
                        Pending::Check { user, lease, .. } if ran => {
                            self.unrelease(*lease, user.clone(), None, Upkeep::AwaitingAnswer);
                        }
                        // Redis refused it: sending it again would too.
                        Pending::Release { leases, .. } if !ran => self.released(leases),
                        _ => {}
                    }
                    self.answer_by_fallback(pending);
                }
            }
        }
    }

    /// How a call to `node` went.
    fn record(&mut self, node: &NodeAddr, error: Option<&str>) {
        let Some(redis) = &mut self.redis else { return };
        match error {
            None => redis.health.record_success(node),
            Some(error) => {
                if redis.health.record_failure(node, error) {
                    // The connection may be broken for good; the probe makes a new one.
                    redis.nodes.forget(node);
                }
            }
        }
    }

    fn answer_by_fallback(&mut self, pending: Pending<CheckReply, PeekReply>) {
        match pending {
            // Its caller stopped waiting and got the handle's own fallback
            // (under `local`, already decided with these counts): counting
            // it again would charge a turn twice.
            Pending::Check { reply, .. } if reply.is_closed() => {}
            Pending::Check { user, limits, cost, now_ms, reply, .. } => {
                let admission = self.fallback(&user, limits, cost, now_ms);
                let _ = reply.send(admission);
            }
            Pending::Peek { reply, .. } => {
                let _ = reply.send(None);
            }
            // A lost renewal lets the lease lapse within its TTL, the safe
            // side of a failure; a release is kept for the node's answer.
            Pending::Renew { .. } => {}
            Pending::Release { leases, .. } => self.release_failed(&leases),
        }
    }

    fn job_done(&mut self, job: Job) {
        let Some(redis) = &mut self.redis else { return };
        // Which releases kept for an answer are due now: that node's, or
        // (the layout changed) any whose user another node may serve.
        let answered = match job {
            Job::Probe(node, Ok(true)) => {
                redis.health.recovered(&node);
                Some(Some(node))
            }
            Job::Probe(node, Ok(false)) => {
                redis.health.retire(&node);
                Some(None)
            }
            Job::Probe(node, Err(error)) => {
                redis.health.probe_failed(&node, &error.to_string());
                None
            }
            Job::Refresh(Err(error)) => {
                tracing::debug!(error = %error, "reading the Redis Cluster layout failed");
                None
            }
            Job::Refresh(Ok(())) => Some(None),
        };
        // A layout read by the probe or the refresh may show other nodes
        // gone (a failover moves every slot of the failed master).
        if redis.nodes.is_cluster() {
            let nodes = redis.nodes.clone();
            redis.health.retain(|node| nodes.serves(node));
        }
        if let Some(node) = answered {
            self.node_answered(node.as_ref());
        }
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
        now_ms: i64,
    ) -> Admission {
        self.shared.decide_locally(&self.local, user, limits, cost, now_ms)
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
            Fallback::Local => self.check_locally(user, limits, cost, now_ms),
        }
    }

    /// Turns a verdict into the caller's decision and the tokens reserved,
    /// caching refusals.
    fn verdict(
        &mut self,
        user: &UserId,
        limits: Limits,
        now_ms: i64,
        verdict: Verdict,
    ) -> (Decision, Option<Reservation>) {
        self.shared.verdict(user, limits, now_ms, verdict)
    }
}

/// What a peek's `tally` reports.
fn status(limits: Limits, tally: &Tally, now_ms: i64) -> RateLimitStatus {
    RateLimitStatus::from_peek(limits, tally, now_ms)
}

/// Probes `node`: on a cluster, reads the layout first (the node may have
/// been replaced by its replica), then reconnects if it still serves slots.
async fn probe(nodes: Arc<Nodes>, node: NodeAddr) -> Job {
    if nodes.is_cluster() {
        if let Err(error) = nodes.refresh().await {
            return Job::Probe(node, Err(error));
        }
        if !nodes.serves(&node) {
            return Job::Probe(node, Ok(false));
        }
    }
    let connected = nodes.reconnect(&node).await.map(|_| true);
    Job::Probe(node, connected)
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
