//! The Redis half of the actor: its state ([`RedisLink`]: the nodes, their
//! health, the pipelines in flight and waiting), the command of each check,
//! peek, renewal and release, and sending one node's share of a batch as
//! one pipeline.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use pantheon_domain::UserId;
use pantheon_domain::limiter::{
    Admission, Claim, Fallback, LeaseId, LimiterShared, Limits, RateLimitStatus, TokenCost,
};
use redis::{Client, Cmd, ConnectionInfo, ErrorKind, RedisError, RedisResult, Script, Value};

use tokio::sync::oneshot;

use super::exchange::{Exchange, Routed, exchange};
use super::health::HealthBoard;
use super::keys::{active_key, check_keys, claim_key};
use super::nodes::Nodes;
use super::topology::{NodeAddr, slot_of};

/// The limiter's script: check-then-log, peek, release, renew.
pub const CHECK_SCRIPT: &str = include_str!("check.lua");

/// What a batch carries to Redis and back. Every item belongs to one user
/// (one hash slot) and is one command, or a few that stand together.
#[derive(Debug)]
pub enum Pending<C, P> {
    /// A check: `reply` answers the caller; `lease` is the member it adds
    /// when it admits; `cost` what it reserves under a token budget.
    Check {
        user: UserId,
        limits: Limits,
        cost: TokenCost,
        now_ms: i64,
        lease: LeaseId,
        ttl_ms: i64,
        /// The `Idempotency-Key` claimed with the check.
        claim: Option<Claim>,
        reply: C,
    },
    /// A peek.
    Peek { user: UserId, limits: Limits, now_ms: i64, reply: P },
    /// Pushes the expiry of `user`'s running leases to a TTL past the Redis
    /// server's now (only those still in the set: one that lapsed stays
    /// gone).
    Renew { user: UserId, leases: Vec<LeaseId>, ttl_ms: i64 },
    /// Gives `user`'s slots held by `leases` back, and the unused tokens of
    /// each lease's reservation to the log entry it charged, when Redis
    /// still held that lease (marked for the user's next check or peek: see
    /// `check.lua`).
    Release { user: UserId, leases: Vec<LeaseRelease> },
}

/// One lease to remove, with what its removal gives back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRelease {
    /// The lease.
    pub id: LeaseId,
    /// Marked only if Redis still holds `id` (see `check.lua`).
    pub refund: Option<TokenRefund>,
    /// The `Idempotency-Key` its check claimed, to let go of (its turn was
    /// never committed).
    pub unclaim: Option<String>,
}

/// Tokens to give back to the log entry a reservation charged (by the
/// script, which finds nothing once the entry has left the log).
///
/// Sent as the lease's score: `-1 - (tokens * 2^23 + at_ms mod 2^23)`, an
/// integer below 2^53 while `tokens < 2^30` (limits are at most 10^9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenRefund {
    /// The entry's stamp.
    pub at_ms: i64,
    /// Tokens to give back.
    pub tokens: u64,
}

impl<C, P> Pending<C, P> {
    /// Whose keys it touches.
    pub fn user(&self) -> &UserId {
        match self {
            Self::Check { user, .. }
            | Self::Peek { user, .. }
            | Self::Renew { user, .. }
            | Self::Release { user, .. } => user,
        }
    }

    /// Whether it only keeps leases (a renewal or a release), which no
    /// caller waits for and which must not queue behind checks.
    pub fn is_upkeep(&self) -> bool {
        matches!(self, Self::Renew { .. } | Self::Release { .. })
    }
}

impl<C: Reply, P: Reply> Pending<C, P> {
    /// Whether its caller stopped waiting (the handle's timeout fired and
    /// answered by the fallback, or the request was cancelled).
    pub fn abandoned(&self) -> bool {
        match self {
            Self::Check { reply, .. } => reply.abandoned(),
            Self::Peek { reply, .. } => reply.abandoned(),
            Self::Renew { .. } | Self::Release { .. } => false,
        }
    }
}

/// Where an answer goes, and whether anyone still waits for it.
pub trait Reply {
    /// The receiving side is gone: nobody will read the answer.
    fn abandoned(&self) -> bool;
}

impl<T> Reply for oneshot::Sender<T> {
    fn abandoned(&self) -> bool {
        self.is_closed()
    }
}

/// The commands of one pending item, every key of them `user`'s, in
/// `user`'s slot: `EVALSHA` of the script for a check, a peek (it writes
/// only the refunds marked) or a renewal; for a release, plain commands: a
/// `ZREM` of the leases without a refund, and one `ZADD XX CH` of the
/// marks of those with one (a refund owed, applied by the user's next check
/// or peek). A release with a refund used to be a script call of its own,
/// costing Redis some twenty times a `ZREM`.
/// Everything that reads or sets a lease's expiry is a script, on the
/// Redis server's clock.
fn commands<C, P>(script: &Script, pending: &Pending<C, P>) -> Vec<Cmd> {
    let evalsha = |keys: &[String], branch: &str| {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(script.get_hash()).arg(keys.len()).arg(keys).arg(branch);
        cmd
    };
    let limits_args = |cmd: &mut Cmd, limits: &Limits| {
        cmd.arg(limits.per_minute).arg(limits.per_hour);
        for limit in [limits.tokens_per_minute, limits.tokens_per_hour] {
            cmd.arg(limit.map_or(-1, i64::from));
        }
    };
    match pending {
        Pending::Check { user, limits, cost, now_ms, lease, ttl_ms, claim, .. } => {
            let mut cmd = match claim {
                None => evalsha(&check_keys(user), "check"),
                Some(claim) => {
                    let [active, log] = check_keys(user);
                    evalsha(&[active, log, claim_key(user, &claim.key)], "check")
                }
            };
            cmd.arg(*now_ms).arg(*ttl_ms).arg(limits.max_concurrent).arg(lease.to_string());
            limits_args(&mut cmd, limits);
            cmd.arg(cost.input).arg(cost.min_output).arg(cost.max_output);
            if let Some(claim) = claim {
                cmd.arg(claim.claim.encode()).arg(claim.ttl_ms);
            }
            vec![cmd]
        }
        Pending::Peek { user, limits, now_ms, .. } => {
            let mut cmd = evalsha(&check_keys(user), "peek");
            cmd.arg(*now_ms);
            limits_args(&mut cmd, limits);
            vec![cmd]
        }
        Pending::Renew { user, leases, ttl_ms } => {
            let mut renew = evalsha(&[active_key(user)], "renew");
            renew.arg(*ttl_ms);
            for lease in leases {
                renew.arg(lease.to_string());
            }
            vec![renew]
        }
        Pending::Release { user, leases } => {
            let key = active_key(user);
            let (mut zrem, mut mark) = (None::<Cmd>, None::<Cmd>);
            for lease in leases {
                match lease.refund {
                    None => zrem.get_or_insert_with(|| {
                        let mut cmd = redis::cmd("ZREM");
                        cmd.arg(&key);
                        cmd
                    }),
                    Some(refund) => mark
                        .get_or_insert_with(|| {
                            let mut cmd = redis::cmd("ZADD");
                            cmd.arg(&key).arg("XX").arg("CH");
                            cmd
                        })
                        .arg(refund.mark()),
                }
                .arg(lease.id.to_string());
            }
            let unclaims = leases.iter().filter_map(|lease| lease.unclaim.as_deref()).map(|key| {
                let mut cmd = redis::cmd("DEL");
                cmd.arg(claim_key(user, key));
                cmd
            });
            zrem.into_iter().chain(mark).chain(unclaims).collect()
        }
    }
}

impl TokenRefund {
    /// The score that marks a released lease with this refund.
    pub fn mark(self) -> i64 {
        const STAMP: i64 = 1 << 23;
        let tokens = self.tokens.min((1 << 30) - 1) as i64;
        -1 - (tokens * STAMP + self.at_ms.rem_euclid(STAMP))
    }
}

/// Whether a command that failed with `error` may have run: anything but
/// an error reply from Redis (which means it did not) — a timeout, a
/// connection lost after the command was written.
pub fn may_have_run(error: &RedisError) -> bool {
    !matches!(error.kind(), ErrorKind::Server(_) | ErrorKind::Extension)
}

/// What a batch brings back: per item, the values of its commands or the
/// first error among them; and how each node reached did.
#[derive(Debug, Default)]
pub struct BatchReply {
    /// One per item, in the batch's order.
    pub results: Vec<RedisResult<Vec<Value>>>,
    /// Per node reached (`None`: it answered; `Some`: the error).
    pub reports: Vec<(NodeAddr, Option<String>)>,
}

/// Sends `batch` to `node` as one pipeline (see [`exchange`]) and returns
/// it with one result per item and how each node reached did.
///
/// Items whose caller stopped waiting are dropped first, here at the first
/// poll, just before the pipeline is written: a check whose caller was
/// already answered by the fallback must not be counted (under `deny` that
/// caller got a `503`). Once written, a check cannot be recalled; the
/// returned batch (maybe empty) lines up with the results.
pub async fn run_batch<C: Reply, P: Reply>(
    nodes: Arc<Nodes>,
    node: NodeAddr,
    mut batch: Vec<Pending<C, P>>,
) -> (Vec<Pending<C, P>>, BatchReply) {
    batch.retain(|pending| !pending.abandoned());
    if batch.is_empty() {
        return (batch, BatchReply::default());
    }
    let mut widths = Vec::with_capacity(batch.len());
    let mut items = Vec::with_capacity(batch.len());
    for pending in &batch {
        let slot = slot_of(pending.user());
        let cmds = commands(nodes.script(), pending);
        widths.push(cmds.len());
        items.extend(cmds.into_iter().map(|cmd| Routed { slot, cmd }));
    }
    let Exchange { results, reports } = exchange(nodes, node, items).await;
    (batch, BatchReply { results: per_item(&widths, results), reports })
}

/// Groups an exchange's results, one per command, by item.
fn per_item(widths: &[usize], results: Vec<RedisResult<Value>>) -> Vec<RedisResult<Vec<Value>>> {
    let mut results = results.into_iter();
    widths
        .iter()
        .map(|&width| {
            let mut values = Vec::with_capacity(width);
            for _ in 0..width {
                match results.next() {
                    Some(Ok(value)) => values.push(value),
                    Some(Err(error)) => return Err(error),
                    None => {
                        return Err(RedisError::from((
                            ErrorKind::Client,
                            "fewer replies than commands",
                        )));
                    }
                }
            }
            Ok(values)
        })
        .collect()
}

pub(super) type CheckReply = oneshot::Sender<Admission>;
pub(super) type PeekReply = oneshot::Sender<Option<RateLimitStatus>>;
pub(super) type Batch = Vec<Pending<CheckReply, PeekReply>>;
pub(super) type BatchOutcome = (NodeAddr, Batch, BatchReply);

/// Most pipelines outstanding per node. Past it on a single Redis the
/// mailbox fills and callers get the fallback at once instead of queueing
/// behind a slow Redis; on a cluster that node's share of a batch waits for
/// its next free pipeline (up to [`MAX_BACKLOG`] checks), while the other
/// nodes' shares go out.
pub(super) const MAX_IN_FLIGHT: usize = 16;

/// The Redis half of the actor's state.
#[derive(Debug)]
pub struct RedisLink {
    pub(super) nodes: Arc<Nodes>,
    pub(super) health: HealthBoard,
    /// Pipelines outstanding per node.
    pub(super) in_flight: HashMap<NodeAddr, usize>,
    /// Per node at [`MAX_IN_FLIGHT`]: what its next pipeline takes.
    pub(super) backlog: HashMap<NodeAddr, Batch>,
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
        let script = Arc::new(Script::new(CHECK_SCRIPT));
        let nodes = Nodes::single(client.get_connection_info().clone(), script, timeout);
        Self::open(nodes, fallback, shared).await
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
        let script = Arc::new(Script::new(CHECK_SCRIPT));
        let nodes = Nodes::cluster(seeds, script, timeout)?;
        if let Err(e) = nodes.refresh().await {
            tracing::warn!(
                error = %e,
                "redis.cluster_urls: no seed answered CLUSTER SLOTS; checks go to the first seed \
                 until the layout can be read"
            );
        }
        Some(Self::open(nodes, fallback, shared).await)
    }

    async fn open(nodes: Nodes, fallback: Fallback, shared: Arc<LimiterShared>) -> Self {
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
    pub(super) fn routes(&self, user: &UserId) -> bool {
        !self.health.is_degraded(&self.nodes.node_for(slot_of(user)))
    }

    /// Whether any node can be asked.
    pub(super) fn any_up(&self) -> bool {
        !self.health.all_degraded()
    }

    /// Pipelines the loop may have outstanding in all.
    pub(super) fn max_in_flight(&self) -> usize {
        MAX_IN_FLIGHT * self.nodes.master_count().max(1)
    }
}
