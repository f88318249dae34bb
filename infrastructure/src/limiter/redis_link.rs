//! The Redis side of the actor: connecting (with the script loaded), the
//! command of each check and peek, and sending one node's share of a batch
//! as one pipeline.

use std::sync::Arc;
use std::time::Duration;

use pantheon_domain::UserId;
use pantheon_domain::limiter::{Counts, Limits, Window, WindowCounts};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Cmd, RedisResult, Script, Value};

use tokio::sync::oneshot;

use super::exchange::{Exchange, Routed, exchange};
use super::keys::check_keys;
use super::nodes::Nodes;
use super::topology::{NodeAddr, slot_of};

/// The check-then-increment script.
pub const CHECK_SCRIPT: &str = include_str!("check.lua");

/// What a batch carries to Redis and back.
#[derive(Debug)]
pub enum Pending<C, P> {
    /// A check: `reply` answers the caller.
    Check { user: UserId, limits: Limits, now_ms: i64, reply: C },
    /// A peek.
    Peek { user: UserId, limits: Limits, now_ms: i64, reply: P },
}

impl<C: Reply, P: Reply> Pending<C, P> {
    /// Whose keys it touches.
    pub fn user(&self) -> &UserId {
        match self {
            Self::Check { user, .. } | Self::Peek { user, .. } => user,
        }
    }

    /// Whether its caller stopped waiting (the handle's timeout fired and
    /// answered by the fallback, or the request was cancelled).
    pub fn abandoned(&self) -> bool {
        match self {
            Self::Check { reply, .. } => reply.abandoned(),
            Self::Peek { reply, .. } => reply.abandoned(),
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

/// The command of one pending item: `EVALSHA` of the script for a check,
/// `MGET` of the four counters for a peek. Every key of it is `user`'s, in
/// `user`'s slot.
fn command<C, P>(script: &Script, pending: &Pending<C, P>) -> Cmd {
    match pending {
        Pending::Check { user, limits, now_ms, .. } => {
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(script.get_hash()).arg(4).arg(&check_keys(user, *now_ms));
            for window in Window::ALL {
                cmd.arg(limits.limit(window))
                    .arg(window.millis())
                    .arg(now_ms.rem_euclid(window.millis()));
            }
            cmd
        }
        Pending::Peek { user, now_ms, .. } => {
            redis::cmd("MGET").arg(&check_keys(user, *now_ms)).to_owned()
        }
    }
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
) -> (Vec<Pending<C, P>>, Exchange) {
    batch.retain(|pending| !pending.abandoned());
    if batch.is_empty() {
        return (batch, Exchange::default());
    }
    let items = batch
        .iter()
        .map(|pending| Routed {
            slot: slot_of(pending.user()),
            cmd: command(nodes.script(), pending),
        })
        .collect();
    let outcome = exchange(nodes, node, items).await;
    (batch, outcome)
}

/// Parses the script's `{admitted, mc, mp, hc, hp}`.
///
/// # Errors
/// A message when the reply has another shape.
pub fn parse_check(value: Value) -> Result<ScriptReply, String> {
    let fields: Vec<i64> = redis::from_redis_value(value).map_err(|e| e.to_string())?;
    let [admitted, mc, mp, hc, hp] = fields[..] else {
        return Err(format!("script returned {} fields, expected 5", fields.len()));
    };
    let count = |n: i64| u64::try_from(n).unwrap_or(0);
    Ok(ScriptReply {
        admitted: admitted == 1,
        counts: Counts {
            minute: WindowCounts { current: count(mc), previous: count(mp) },
            hour: WindowCounts { current: count(hc), previous: count(hp) },
        },
    })
}

/// Parses an `MGET` of the four keys.
///
/// # Errors
/// A message when the reply has another shape.
pub fn parse_peek(value: Value) -> Result<Counts, String> {
    let fields: Vec<Option<u64>> = redis::from_redis_value(value).map_err(|e| e.to_string())?;
    let [mc, mp, hc, hp] = fields[..] else {
        return Err(format!("MGET returned {} values, expected 4", fields.len()));
    };
    let n = |v: Option<u64>| v.unwrap_or(0);
    Ok(Counts {
        minute: WindowCounts { current: n(mc), previous: n(mp) },
        hour: WindowCounts { current: n(hc), previous: n(hp) },
    })
}
