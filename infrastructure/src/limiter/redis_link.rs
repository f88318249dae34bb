//! The Redis side of the actor: connecting (with the script loaded), the
//! command of each check and peek, and sending one node's share of a batch
//! as one pipeline.

use std::sync::Arc;
use std::time::Duration;

use pantheon_domain::UserId;
use pantheon_domain::limiter::{Counts, LeaseId, Limits, TokenCost, Window, WindowCounts};
use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, Client, Cmd, ErrorKind, RedisError, RedisResult, Script, Value,
};

use tokio::sync::oneshot;

use super::exchange::{Exchange, Routed, exchange};
use super::keys::{active_key, check_keys, token_key, token_keys};
use super::nodes::Nodes;
use super::topology::{NodeAddr, slot_of};

/// The check-then-increment script.
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
        reply: C,
    },
    /// A peek.
    Peek { user: UserId, limits: Limits, now_ms: i64, reply: P },
    /// Pushes the expiry of `user`'s running leases to a TTL past the Redis
    /// server's now (only those still in the set: one that lapsed stays
    /// gone).
    Renew { user: UserId, leases: Vec<LeaseId>, ttl_ms: i64 },
    /// Gives `user`'s slots held by `leases` back, and the unused tokens of
    /// each lease's reservation to the buckets it charged, when Redis still
    /// held that lease.
    Release { user: UserId, leases: Vec<LeaseRelease> },
}

/// One lease to remove, with what its removal gives back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRelease {
    /// The lease.
    pub id: LeaseId,
    /// Applied only if the `ZREM` of `id` removed it (see `check.lua`).
    pub refunds: Vec<TokenRefund>,
}

/// Tokens to take back off one of a user's token counters (by the script,
/// which leaves a counter that no longer exists alone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenRefund {
    /// Which window's counter.
    pub window: Window,
    /// The window index charged.
    pub index: i64,
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

/// A check's answer from the script: whether it admitted, and the counts
/// it read before incrementing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScriptReply {
    /// The script incremented the counters.
    pub admitted: bool,
    /// The counts as read.
    pub counts: Counts,
}

/// Opens a multiplexed connection and loads the script, both bounded by
/// `timeout` (connect gets a little more: a TCP handshake is not a command).
///
/// # Errors
/// The [`RedisError`] of the connect or load (a timeout is an I/O error).
pub async fn connect(
    client: &Client,
    script: &Script,
    timeout: Duration,
) -> RedisResult<MultiplexedConnection> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout.max(Duration::from_millis(250))))
        .set_response_timeout(Some(timeout));
    let mut conn = client.get_multiplexed_async_connection_with_config(&config).await?;
    script.load_async(&mut conn).await?;
    Ok(conn)
}

/// The commands of one pending item, every key of them `user`'s, in
/// `user`'s slot: `EVALSHA` of the script for a check; `MGET` of the four
/// counters (and the four token counters under a budget) and the script's
/// `count` of the unexpired leases for a peek (read-only: it removes
/// nothing); the script's `renew` for a renewal; `ZREM` for a release, or
/// with refunds the script's release branch (each `ZREM`, and that lease's
/// refunds if it removed something, in one call). Everything that reads or
/// sets a lease's expiry is a script, on the Redis server's clock.
fn commands<C, P>(script: &Script, pending: &Pending<C, P>) -> Vec<Cmd> {
    let on_leases = |user: &UserId, branch: &str| {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(script.get_hash()).arg(1).arg(active_key(user)).arg(branch);
        cmd
    };
    match pending {
        Pending::Check { user, limits, cost, now_ms, lease, ttl_ms, .. } => {
            let budgeted = limits.has_token_budget();
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(script.get_hash())
                .arg(if budgeted { 9 } else { 5 })
                .arg(&check_keys(user, *now_ms));
            if budgeted {
                cmd.arg(&token_keys(user, *now_ms));
            }
            for window in Window::ALL {
                cmd.arg(limits.limit(window))
                    .arg(window.millis())
                    .arg(now_ms.rem_euclid(window.millis()));
            }
            cmd.arg(*ttl_ms).arg(limits.max_concurrent).arg(lease.to_string());
            if budgeted {
                for window in Window::ALL {
                    cmd.arg(limits.token_limit(window).map_or(-1, i64::from));
                }
                cmd.arg(cost.input).arg(cost.min_output).arg(cost.max_output);
            }
            vec![cmd]
        }
        Pending::Peek { user, limits, now_ms, .. } => {
            let [mc, mp, hc, hp, _] = check_keys(user, *now_ms);
            let mut mget = redis::cmd("MGET");
            mget.arg(&[mc, mp, hc, hp]);
            if limits.has_token_budget() {
                mget.arg(&token_keys(user, *now_ms));
            }
            vec![mget, on_leases(user, "count")]
        }
        Pending::Renew { user, leases, ttl_ms } => {
            let mut renew = on_leases(user, "renew");
            renew.arg(*ttl_ms);
            for lease in leases {
                renew.arg(lease.to_string());
            }
            vec![renew]
        }
        Pending::Release { user, leases } if leases.iter().all(|l| l.refunds.is_empty()) => {
            let mut zrem = redis::cmd("ZREM");
            zrem.arg(active_key(user));
            for lease in leases {
                zrem.arg(lease.id.to_string());
            }
            vec![zrem]
        }
        Pending::Release { user, leases } => {
            // One call: the leases out, the unused tokens of those removed
            // back. Every bucket any of them charged is a key; each lease
            // gives an amount per key (0 for one it did not charge).
            let mut buckets: Vec<(Window, i64)> = Vec::new();
            for refund in leases.iter().flat_map(|l| &l.refunds) {
                if !buckets.contains(&(refund.window, refund.index)) {
                    buckets.push((refund.window, refund.index));
                }
            }
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(script.get_hash()).arg(1 + buckets.len()).arg(active_key(user));
            for &(window, index) in &buckets {
                cmd.arg(token_key(user, window, index));
            }
            cmd.arg("release").arg(leases.len());
            for lease in leases {
                cmd.arg(lease.id.to_string());
                for &(window, index) in &buckets {
                    let tokens = lease
                        .refunds
                        .iter()
                        .find(|r| r.window == window && r.index == index)
                        .map_or(0, |r| r.tokens);
                    cmd.arg(tokens);
                }
            }
            vec![cmd]
        }
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

/// Parses the script's `{admitted, mc, mp, hc, hp, active}` and, under a
/// token budget, `{tmc, tmp, thc, thp, output cap}` after them.
///
/// # Errors
/// A message when the reply has another shape.
pub fn parse_check(values: Vec<Value>) -> Result<ScriptReply, String> {
    let [value] = <[Value; 1]>::try_from(values).map_err(|v| format!("{} replies", v.len()))?;
    let fields: Vec<i64> = redis::from_redis_value(value).map_err(|e| e.to_string())?;
    let count = |n: i64| u64::try_from(n).unwrap_or(0);
    let pair = |c: i64, p: i64| WindowCounts { current: count(c), previous: count(p) };
    let (turns, tokens) = match fields[..] {
        [a, mc, mp, hc, hp, active] => ((a, mc, mp, hc, hp, active), None),
        [a, mc, mp, hc, hp, active, tmc, tmp, thc, thp, _cap] => {
            ((a, mc, mp, hc, hp, active), Some((pair(tmc, tmp), pair(thc, thp))))
        }
        _ => return Err(format!("script returned {} fields, expected 6 or 11", fields.len())),
    };
    let (admitted, mc, mp, hc, hp, active) = turns;
    let (tokens_minute, tokens_hour) = tokens.unwrap_or_default();
    Ok(ScriptReply {
        admitted: admitted == 1,
        counts: Counts {
            minute: pair(mc, mp),
            hour: pair(hc, hp),
            active: count(active),
            tokens_minute,
            tokens_hour,
        },
    })
}

/// Parses a peek's `MGET` of the four counters (and the four token counters
/// under a budget) and `ZCOUNT` of the leases.
///
/// # Errors
/// A message when the reply has another shape.
pub fn parse_peek(values: Vec<Value>) -> Result<Counts, String> {
    let [counters, active] =
        <[Value; 2]>::try_from(values).map_err(|v| format!("{} replies", v.len()))?;
    // A token counter a refund took below zero (never, but Redis would
    // allow it) reads as 0, as in the script.
    let fields: Vec<Option<i64>> = redis::from_redis_value(counters).map_err(|e| e.to_string())?;
    let n = |v: Option<i64>| v.map_or(0, |v| u64::try_from(v).unwrap_or(0));
    let pair = |c: Option<i64>, p: Option<i64>| WindowCounts { current: n(c), previous: n(p) };
    let (turns, tokens) = match fields[..] {
        [mc, mp, hc, hp] => ([mc, mp, hc, hp], None),
        [mc, mp, hc, hp, tmc, tmp, thc, thp] => {
            ([mc, mp, hc, hp], Some((pair(tmc, tmp), pair(thc, thp))))
        }
        _ => return Err(format!("MGET returned {} values, expected 4 or 8", fields.len())),
    };
    let [mc, mp, hc, hp] = turns;
    let active: u64 = redis::from_redis_value(active).map_err(|e| e.to_string())?;
    let (tokens_minute, tokens_hour) = tokens.unwrap_or_default();
    Ok(Counts { minute: pair(mc, mp), hour: pair(hc, hp), active, tokens_minute, tokens_hour })
}
