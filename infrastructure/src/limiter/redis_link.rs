//! The Redis side of the actor: connecting (with the script loaded) and
//! sending one batch of checks and peeks as one pipeline.

use std::sync::Arc;
use std::time::Duration;

use pantheon_domain::UserId;
use pantheon_domain::limiter::{Counts, LeaseId, Limits, TokenCost, Window, WindowCounts};
use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, Client, ErrorKind, Pipeline, RedisError, RedisResult, Script,
    ServerErrorKind, Value,
};

use tokio::sync::oneshot;

use super::keys::{active_key, check_keys, token_key, token_keys};

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
    /// Pushes the expiry of `user`'s running leases to `expires_at_ms` (only
    /// those still in the set: one that lapsed stays gone).
    Renew { user: UserId, leases: Vec<LeaseId>, expires_at_ms: i64, ttl_ms: i64 },
    /// Gives `user`'s slots held by `leases` back, and the unused tokens of
    /// their reservations to the buckets that were charged.
    Release { user: UserId, leases: Vec<LeaseId>, refunds: Vec<TokenRefund> },
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
    /// How many commands the item adds to a pipeline.
    fn width(&self) -> usize {
        match self {
            Self::Check { .. } | Self::Release { .. } => 1,
            Self::Peek { .. } | Self::Renew { .. } => 2,
        }
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

fn pipeline<'a, C: 'a, P: 'a>(
    script: &Script,
    batch: impl IntoIterator<Item = &'a Pending<C, P>>,
) -> Pipeline {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for pending in batch {
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
                cmd.arg(*now_ms).arg(*ttl_ms).arg(limits.max_concurrent).arg(lease.to_string());
                if budgeted {
                    for window in Window::ALL {
                        cmd.arg(limits.token_limit(window).map_or(-1, i64::from));
                    }
                    cmd.arg(cost.input).arg(cost.min_output).arg(cost.max_output);
                }
                pipe.add_command(cmd);
            }
            Pending::Peek { user, limits, now_ms, .. } => {
                let [mc, mp, hc, hp, active] = check_keys(user, *now_ms);
                let mut mget = redis::cmd("MGET");
                mget.arg(&[mc, mp, hc, hp]);
                if limits.has_token_budget() {
                    mget.arg(&token_keys(user, *now_ms));
                }
                pipe.add_command(mget);
                // Unexpired only, without removing anything: a peek writes nothing.
                let after_now = format!("({now_ms}");
                pipe.add_command(
                    redis::cmd("ZCOUNT").arg(active).arg(after_now).arg("+inf").to_owned(),
                );
            }
            Pending::Renew { user, leases, expires_at_ms, ttl_ms } => {
                let key = active_key(user);
                let mut zadd = redis::cmd("ZADD");
                zadd.arg(&key).arg("XX");
                for lease in leases {
                    zadd.arg(*expires_at_ms).arg(lease.to_string());
                }
                pipe.add_command(zadd);
                pipe.add_command(redis::cmd("PEXPIRE").arg(key).arg(*ttl_ms).to_owned());
            }
            Pending::Release { user, leases, refunds } if refunds.is_empty() => {
                let mut zrem = redis::cmd("ZREM");
                zrem.arg(active_key(user));
                for lease in leases {
                    zrem.arg(lease.to_string());
                }
                pipe.add_command(zrem);
            }
            Pending::Release { user, leases, refunds } => {
                // One call: the leases out, the unused tokens back.
                let mut cmd = redis::cmd("EVALSHA");
                cmd.arg(script.get_hash()).arg(1 + refunds.len()).arg(active_key(user));
                for refund in refunds {
                    cmd.arg(token_key(user, refund.window, refund.index));
                }
                cmd.arg("release").arg(leases.len());
                for lease in leases {
                    cmd.arg(lease.to_string());
                }
                for refund in refunds {
                    cmd.arg(refund.tokens);
                }
                pipe.add_command(cmd);
            }
        }
    }
    pipe
}

/// Groups a pipeline's flat results by item: each item's values, or the
/// first error among its commands.
fn per_item<C, P>(
    batch: &[&Pending<C, P>],
    results: Vec<RedisResult<Value>>,
) -> Vec<RedisResult<Vec<Value>>> {
    let mut results = results.into_iter();
    batch
        .iter()
        .map(|pending| {
            let mut values = Vec::with_capacity(pending.width());
            for _ in 0..pending.width() {
                match results.next() {
                    Some(Ok(value)) => values.push(value),
                    Some(Err(error)) => return Err(error),
                    None => return Err(short_reply()),
                }
            }
            Ok(values)
        })
        .collect()
}

fn short_reply() -> RedisError {
    RedisError::from((ErrorKind::Client, "pipeline returned fewer replies than commands"))
}

fn is_noscript(result: &RedisResult<Vec<Value>>) -> bool {
    matches!(result, Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript))
}

/// Sends `batch` as one pipeline and returns it with one result per item
/// (the values of its commands). A `NOSCRIPT` (Redis restarted or `SCRIPT
/// FLUSH`) reloads the script and resends once: it is not an outage. The
/// whole exchange is bounded by `timeout`.
///
/// Items whose caller stopped waiting are dropped first, here at the first
/// poll, just before the pipeline is written: a check whose caller was
/// already answered by the fallback must not be counted (under `deny` that
/// caller got a `503`). Once written, a check cannot be recalled; the
/// returned batch (maybe empty) lines up with the results.
pub async fn run_batch<C: Reply, P: Reply>(
    mut conn: MultiplexedConnection,
    script: Arc<Script>,
    mut batch: Vec<Pending<C, P>>,
    timeout: Duration,
) -> (Vec<Pending<C, P>>, Result<Vec<RedisResult<Vec<Value>>>, RedisError>) {
    batch.retain(|pending| !pending.abandoned());
    if batch.is_empty() {
        return (batch, Ok(Vec::new()));
    }
    let exchange = async {
        let all: Vec<&Pending<C, P>> = batch.iter().collect();
        let flat: Vec<RedisResult<Value>> =
            pipeline(&script, all.iter().copied()).query_async(&mut conn).await?;
        let mut results = per_item(&all, flat);
        let missing: Vec<usize> =
            (0..results.len()).filter(|&i| is_noscript(&results[i])).collect();
        if !missing.is_empty() {
            // A pipeline is not atomic: checks before a `SCRIPT FLUSH` ran and
            // counted, so only the ones that found no script are sent again.
            script.load_async(&mut conn).await?;
            let again: Vec<&Pending<C, P>> = missing.iter().filter_map(|&i| batch.get(i)).collect();
            let flat: Vec<RedisResult<Value>> =
                pipeline(&script, again.iter().copied()).query_async(&mut conn).await?;
            for (i, result) in missing.into_iter().zip(per_item(&again, flat)) {
                results[i] = result;
            }
        }
        Ok(results)
    };
    let outcome = match tokio::time::timeout(timeout, exchange).await {
        Ok(outcome) => outcome,
        Err(_) => Err(RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "Redis call exceeded redis.timeout_ms",
        ))),
    };
    (batch, outcome)
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
