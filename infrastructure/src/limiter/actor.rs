//! The limiter task: the only owner of the Redis connection, the loaded
//! script, the health state, the over-limit cache and the in-process
//! counters.
//!
//! It never waits for one check before taking the next: each turn of the
//! loop drains the mailbox (after one scheduler pass, so callers that are
//! ready add theirs), answers what it can locally (cache, in-process
//! backend, degraded fallback), and sends the rest as one pipeline, with up
//! to [`MAX_IN_FLIGHT`] pipelines outstanding.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use pantheon_domain::limiter::Limits;
use pantheon_domain::limiter::{
    Decision, Denial, Fallback, LimiterCommand, LimiterShared, RateLimitStatus, SkipReason,
    Verdict, decide, usage,
};
use pantheon_domain::{Clock, UserId};
use redis::aio::MultiplexedConnection;
use redis::{Client, RedisError, RedisResult, Script, Value};
use tokio::sync::{mpsc, oneshot};

use super::health::Health;
use super::memory::MemoryCounters;
use super::redis_link::{self, Pending};
use crate::metrics::LimiterMetrics;

/// Most commands taken from the mailbox per loop turn (one pipeline).
const MAX_BATCH: usize = 256;
/// Most pipelines outstanding; past it the mailbox fills and callers get
/// the fallback at once instead of queueing behind a slow Redis.
const MAX_IN_FLIGHT: usize = 16;
/// How often the fallback summary is logged and the cache swept.
const SUMMARY_INTERVAL: Duration = Duration::from_secs(10);

type CheckReply = oneshot::Sender<Decision>;
type PeekReply = oneshot::Sender<Option<RateLimitStatus>>;
type Batch = Vec<Pending<CheckReply, PeekReply>>;
type BatchOutcome = (Batch, Result<Vec<RedisResult<Value>>, RedisError>);

/// The Redis half of the actor's state.
#[derive(Debug)]
pub struct RedisLink {
    client: Client,
    script: Arc<Script>,
    timeout: Duration,
    conn: Option<MultiplexedConnection>,
    health: Health,
}

impl RedisLink {
    /// Connects once at start; Pantheon starts even when Redis is down, with
    /// the link degraded.
    pub async fn start(
        client: Client,
        timeout: Duration,
        fallback: Fallback,
        shared: Arc<LimiterShared>,
    ) -> Self {
        let script = Arc::new(Script::new(redis_link::CHECK_SCRIPT));
        let conn = match redis_link::connect(&client, &script, timeout).await {
            Ok(conn) => Some(conn),
            Err(e) => {
                tracing::debug!(error = %e, "Redis connect at start failed");
                None
            }
        };
        let health = Health::new(conn.is_some(), fallback, shared);
        Self { client, script, timeout, conn, health }
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
    local: MemoryCounters,
    redis: Option<RedisLink>,
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
    ) -> Self {
        let (local, metrics) = (MemoryCounters::default(), LimiterMetrics::default());
        Self { mailbox, clock, fallback, shared, local, redis, metrics }
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
        let mut probes: FuturesUnordered<BoxFuture<'static, RedisResult<MultiplexedConnection>>> =
            FuturesUnordered::new();
        let mut summary = tokio::time::interval(SUMMARY_INTERVAL);
        loop {
            let probe_at = self
                .redis
                .as_ref()
                .filter(|r| r.health.is_degraded())
                .map(|r| r.health.next_probe());
            tokio::select! {
                n = self.mailbox.recv_many(&mut batch, MAX_BATCH), if in_flight.len() < MAX_IN_FLIGHT => {
                    if n == 0 {
                        break;
                    }
                    self.gather(&mut batch).await;
                    let remote = self.answer_locally(batch.drain(..));
                    if let Some(future) = self.send(remote) {
                        in_flight.push(future);
                    }
                }
                Some((batch, outcome)) = in_flight.next() => self.settle(batch, outcome),
                () = sleep_until(probe_at), if probe_at.is_some() && probes.is_empty() => {
                    if let Some(redis) = &self.redis {
                        let (client, script, timeout) = (redis.client.clone(), redis.script.clone(), redis.timeout);
                        probes.push(Box::pin(async move { redis_link::connect(&client, &script, timeout).await }));
                    }
                }
                Some(probe) = probes.next() => self.probed(probe),
                _ = summary.tick() => self.housekeeping(),
            }
        }
        // Answer what is still in flight before leaving.
        while let Some((batch, outcome)) = in_flight.next().await {
            self.settle(batch, outcome);
        }
    }

    /// Lets the callers that are ready to run send their checks too before a
    /// batch goes out: one scheduler pass, no timer, so a busy instance sends
    /// fewer, larger pipelines and an idle one is not slowed.
    async fn gather(&mut self, batch: &mut Vec<LimiterCommand>) {
        let remote =
            self.redis.as_ref().is_some_and(|r| !r.health.is_degraded() && r.conn.is_some());
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

    /// Answers peeks and checks that need no Redis call; returns the rest.
    fn answer_locally(&mut self, commands: impl Iterator<Item = LimiterCommand>) -> Batch {
        let now_ms = self.clock.now_ms();
        let remote =
            self.redis.as_ref().is_some_and(|r| !r.health.is_degraded() && r.conn.is_some());
        let mut batch = Vec::new();
        for command in commands {
            // A caller that stopped waiting was already answered by the
            // handle's fallback (or its request is gone): its check must
            // neither reach Redis nor count locally — under `deny` it got a
            // `503`. Checked here and again just before the pipeline is sent.
            if abandoned(&command) {
                continue;
            }
            match command {
                LimiterCommand::Check { user, limits, respond_to } => {
                    // Known over-limit users are refused from the cache first,
                    // before Redis and before any fallback.
                    if let Some(denial) = self.shared.refusals().get(&user, limits, now_ms) {
                        let _ = respond_to.send(Decision::Limited(denial));
                    } else if remote {
                        batch.push(Pending::Check { user, limits, now_ms, reply: respond_to });
                    } else if self.redis.is_none() {
                        let decision = self.check_locally(&user, limits, now_ms);
                        let _ = respond_to.send(decision);
                    } else {
                        let decision = self.fallback(&user, limits, now_ms);
                        let _ = respond_to.send(decision);
                    }
                }
                LimiterCommand::Peek { user, limits, respond_to } => {
                    if remote {
                        batch.push(Pending::Peek { user, limits, now_ms, reply: respond_to });
                    } else if self.redis.is_none() || self.fallback == Fallback::Local {
                        let counts = self.local.counts(&user, now_ms);
                        let _ = respond_to.send(Some(RateLimitStatus {
                            limits,
                            usage: usage(limits, counts, now_ms),
                        }));
                    } else {
                        let _ = respond_to.send(None);
                    }
                }
            }
        }
        batch
    }

    fn send(&mut self, batch: Batch) -> Option<BoxFuture<'static, BatchOutcome>> {
        if batch.is_empty() {
            return None;
        }
        let redis = self.redis.as_ref()?;
        let conn = redis.conn.clone()?;
        let exchange = redis_link::run_batch(conn, redis.script.clone(), batch, redis.timeout);
        let metrics = self.metrics.clone();
        Some(Box::pin(async move {
            let started = std::time::Instant::now();
            let (batch, outcome) = exchange.await;
            if !batch.is_empty() {
                metrics.pipeline(batch.len(), started.elapsed());
            }
            (batch, outcome)
        }))
    }

    /// Fans a pipeline's results out to the callers and updates health.
    fn settle(&mut self, batch: Batch, outcome: Result<Vec<RedisResult<Value>>, RedisError>) {
        if batch.is_empty() {
            // Every caller gave up before it was sent: no call, no news.
            return;
        }
        let results = match outcome {
            Ok(results) => results,
            Err(error) => {
                self.failed(&error.to_string());
                for pending in batch {
                    self.answer_by_fallback(pending);
                }
                return;
            }
        };
        // Error replies inside a pipeline count as one failed call, like a
        // pipeline that failed whole.
        let mut item_error: Option<String> = None;
        for (pending, result) in batch.into_iter().zip(results) {
            match (pending, result) {
                (Pending::Check { user, limits, now_ms, reply }, Ok(value)) => {
                    match redis_link::parse_check(value) {
                        Ok(script) => {
                            let decision = self.verdict(
                                &user,
                                limits,
                                now_ms,
                                decide(limits, script.counts, now_ms),
                            );
                            if script.admitted != matches!(decision, Decision::Admitted(_)) {
                                tracing::error!(user.id = %user, "limiter script and decision function disagree");
                            }
                            let _ = reply.send(decision);
                        }
                        Err(error) => {
                            tracing::error!(error, "unexpected limiter script reply");
                            let decision = self.fallback(&user, limits, now_ms);
                            let _ = reply.send(decision);
                        }
                    }
                }
                (Pending::Peek { limits, now_ms, reply, .. }, Ok(value)) => {
                    let status = redis_link::parse_peek(value).ok().map(|counts| RateLimitStatus {
                        limits,
                        usage: usage(limits, counts, now_ms),
                    });
                    let _ = reply.send(status);
                }
                (pending, Err(error)) => {
                    item_error.get_or_insert_with(|| error.to_string());
                    self.answer_by_fallback(pending);
                }
            }
        }
        match item_error {
            Some(error) => self.failed(&error),
            None => {
                if let Some(redis) = &mut self.redis {
                    redis.health.record_success();
                }
            }
        }
    }

    fn failed(&mut self, error: &str) {
        if let Some(redis) = &mut self.redis
            && redis.health.record_failure(error)
        {
            // The connection may be broken for good; the probe makes a new one.
            redis.conn = None;
        }
    }

    fn answer_by_fallback(&mut self, pending: Pending<CheckReply, PeekReply>) {
        match pending {
            Pending::Check { user, limits, now_ms, reply } => {
                let decision = self.fallback(&user, limits, now_ms);
                let _ = reply.send(decision);
            }
            Pending::Peek { reply, .. } => {
                let _ = reply.send(None);
            }
        }
    }

    fn probed(&mut self, probe: RedisResult<MultiplexedConnection>) {
        let Some(redis) = &mut self.redis else { return };
        match probe {
            Ok(conn) => {
                redis.conn = Some(conn);
                redis.health.recovered();
            }
            Err(error) => redis.health.probe_failed(&error.to_string()),
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
    fn check_locally(&mut self, user: &UserId, limits: Limits, now_ms: i64) -> Decision {
        let verdict = self.local.check(user, limits, now_ms);
        self.verdict(user, limits, now_ms, verdict)
    }

    /// How a check is answered while Redis cannot be asked.
    fn fallback(&mut self, user: &UserId, limits: Limits, now_ms: i64) -> Decision {
        if let Some(redis) = &mut self.redis {
            redis.health.note_fallback();
        }
        match self.fallback {
            Fallback::Allow => Decision::Skipped(SkipReason::StoreUnavailable),
            Fallback::Deny => Decision::Unavailable(SkipReason::StoreUnavailable),
            Fallback::Local => self.check_locally(user, limits, now_ms),
        }
    }

    /// Turns a verdict into the caller's decision, caching refusals.
    fn verdict(
        &mut self,
        user: &UserId,
        limits: Limits,
        now_ms: i64,
        verdict: Verdict,
    ) -> Decision {
        match verdict {
            Verdict::Admitted { usage } => Decision::Admitted(RateLimitStatus { limits, usage }),
            Verdict::Limited { usage, violated, retry_at_ms, binding } => {
                let denial = Denial { limits, usage, violated, retry_at_ms, binding, now_ms };
                self.shared.refusals().insert(user, &denial);
                Decision::Limited(denial)
            }
        }
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
