//! The capacity over Redis: every operation is one call of `dispatch.lua`
//! (`EVALSHA`, loaded again after a `NOSCRIPT`), so the queue is one state
//! however many instances share it. Its keys carry one hash tag (the
//! prefix's braces): on a cluster they live in one slot and the script
//! runs on one node.
//!
//! The calls ride the turn bus's kind of connection, which redis-rs may
//! send again after a lost answer: each is safe to repeat (an enqueue of a
//! known ticket, a finish of one already gone, a renewal, change nothing
//! but dispatch). The clock is the caller's (`now_ms` in ARGV), so tests
//! drive expiry and the minute without sleeping.
//!
//! A grant wakes its waiter wherever it waits: the script publishes the
//! ids it granted on [`grants_channel`], and each instance runs
//! [`listen_grants`]. A message lost while a subscriber reconnects costs a
//! waiter the time until it asks [`CapacityStore::granted`] itself.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pantheon_domain::capacity::{CapacityStats, Enqueued, Finished, Outcome, Ticket, TicketId};
use pantheon_domain::ports::CapacityStore;
use pantheon_domain::{StorageError, UserId};
use redis::{FromRedisValue, Script, ScriptInvocation};

use super::config::{CapacityConfig, QueueOrder, ttl_ms};
use crate::bus::{Conn, Link, Target, Topic, timed_out};

/// The script of every operation.
const SCRIPT: &str = include_str!("dispatch.lua");

/// The keys the script names, after the prefix (see `dispatch.lua`).
const KEYS: [&str; 10] = [
    "flight", "held", "waiting", "tickets", "backlog", "counters", "minute", "costs", "state",
    "fifo",
];

/// The channel the grants of the queue under `prefix` are published on.
pub fn grants_channel(prefix: &str) -> String {
    format!("{prefix}:granted")
}

/// The Redis [`CapacityStore`].
#[derive(Debug, Clone)]
pub struct RedisCapacity {
    link: Link,
    script: Arc<Script>,
    keys: Vec<String>,
    /// ARGV 3 to 8, the same in every call.
    common: Vec<String>,
}

/// Where this store's grants are published: what [`listen_grants`] needs.
#[derive(Debug, Clone)]
pub struct Grants {
    /// The Redis.
    pub target: Target,
    /// The channel.
    pub channel: String,
}

impl Grants {
    /// The subscriber task, calling `wake` with each batch of grants.
    pub fn listen(
        self,
        wake: impl Fn(Vec<TicketId>) + Send + 'static,
    ) -> impl Future<Output = ()> + Send + 'static {
        listen_grants(self.target, self.channel, wake)
    }
}

impl RedisCapacity {
    /// The store over `target`, its keys under `prefix` (which must carry
    /// a hash tag, e.g. `{pantheon:provider}`: the script's keys must share
    /// a slot), and where its grants are published.
    pub fn new(target: Target, config: CapacityConfig, prefix: String) -> (Self, Grants) {
        let channel = grants_channel(&prefix);
        let keys = KEYS.iter().map(|key| format!("{prefix}:{key}")).collect();
        let order = match config.order {
            QueueOrder::Fair => "fair",
            QueueOrder::Fifo => "fifo",
        };
        let common = vec![
            config.max_concurrent.map_or(-1, i64::from).to_string(),
            config
                .tokens_per_minute
                .map_or(-1, |t| i64::try_from(t).unwrap_or(i64::MAX))
                .to_string(),
            ttl_ms(&config).to_string(),
            order.to_owned(),
            prefix,
            channel.clone(),
        ];
        let store = Self {
            link: Link::new(target.clone()),
            script: Arc::new(Script::new(SCRIPT)),
            keys,
            common,
        };
        (store, Grants { target, channel })
    }

    /// Runs the script's `op` at `now_ms` with `args` after the common ones.
    async fn call<T: FromRedisValue>(
        &self,
        op: &str,
        now_ms: i64,
        args: impl FnOnce(&mut ScriptInvocation<'_>),
    ) -> Result<T, StorageError> {
        let mut invocation = self.script.prepare_invoke();
        for key in &self.keys {
            invocation.key(key);
        }
        invocation.arg(op).arg(now_ms);
        for arg in &self.common {
            invocation.arg(arg);
        }
        args(&mut invocation);
        let run = async {
            match self.link.get().await? {
                Conn::Single(mut conn) => invocation.invoke_async(&mut conn).await,
                Conn::Cluster(mut conn) => invocation.invoke_async(&mut conn).await,
            }
        };
        // Connecting and loading the script are bounded on their own; this
        // bounds the whole, in case each step takes nearly its share.
        let limit = self.link.target().timeout().max(Duration::from_millis(250)) * 3;
        let result =
            tokio::time::timeout(limit, run).await.unwrap_or_else(|_| Err(timed_out("capacity")));
        result.map_err(|error| {
            self.link.reset();
            StorageError::unavailable(error)
        })
    }
}

/// The ids a script returned; one that does not parse is skipped (it
/// could only be another writer's junk: the script writes ticket ids).
fn ticket_ids<'a>(ids: impl IntoIterator<Item = &'a str>) -> Vec<TicketId> {
    ids.into_iter().filter_map(|id| id.trim().parse::<uuid::Uuid>().ok()).map(TicketId).collect()
}

fn place(raw: i64) -> Option<u64> {
    u64::try_from(raw).ok().filter(|place| *place > 0)
}

#[async_trait]
impl CapacityStore for RedisCapacity {
    async fn enqueue(&self, ticket: &Ticket, now_ms: i64) -> Result<Enqueued, StorageError> {
        let reply: Vec<String> = self
            .call("enqueue", now_ms, |invocation| {
                invocation
                    .arg(ticket.id.to_string())
                    .arg(ticket.user.as_str())
                    .arg(ticket.weight.max(1))
                    .arg(ticket.cost)
                    .arg(ticket.deadline_ms);
            })
            .await?;
        let (head, granted) =
            reply.split_first().ok_or_else(|| StorageError::other("an empty reply"))?;
        let raw = head.parse::<i64>().map_err(|_| StorageError::other("a malformed place"))?;
        Ok(Enqueued { granted: ticket_ids(granted.iter().map(String::as_str)), place: place(raw) })
    }

    async fn finish(&self, done: &[Finished], now_ms: i64) -> Result<Vec<TicketId>, StorageError> {
        let granted: Vec<String> = self
            .call("finish", now_ms, |invocation| {
                for finished in done {
                    let outcome = match finished.outcome {
                        Outcome::Served => "s",
                        Outcome::Throttled => "t",
                        Outcome::Unused => "u",
                    };
                    invocation.arg(finished.id.to_string()).arg(finished.used).arg(outcome);
                }
            })
            .await?;
        Ok(ticket_ids(granted.iter().map(String::as_str)))
    }

    async fn renew(&self, held: &[TicketId], now_ms: i64) -> Result<Vec<TicketId>, StorageError> {
        let granted: Vec<String> = self
            .call("renew", now_ms, |invocation| {
                for id in held {
                    invocation.arg(id.to_string());
                }
            })
            .await?;
        Ok(ticket_ids(granted.iter().map(String::as_str)))
    }

    async fn granted(&self, ticket: TicketId) -> Result<bool, StorageError> {
        let run = async {
            let mut conn = self.link.get().await?;
            conn.query::<Option<f64>>(
                redis::cmd("ZSCORE").arg(&self.keys[0]).arg(ticket.to_string()),
            )
            .await
        };
        let limit = self.link.target().timeout().max(Duration::from_millis(250)) * 2;
        let result =
            tokio::time::timeout(limit, run).await.unwrap_or_else(|_| Err(timed_out("capacity")));
        let score = result.map_err(|error| {
            self.link.reset();
            StorageError::unavailable(error)
        })?;
        Ok(score.is_some())
    }

    async fn place(&self, user: &UserId) -> Result<Option<u64>, StorageError> {
        // `place` reads no clock; 0 stands in for the argument.
        let raw: i64 = self
            .call("place", 0, |invocation| {
                invocation.arg(user.as_str());
            })
            .await?;
        Ok(place(raw))
    }

    async fn stats(&self, now_ms: i64) -> Result<CapacityStats, StorageError> {
        let (queued, in_flight, effective, tokens): (u64, u64, String, String) =
            self.call("stats", now_ms, |_| {}).await?;
        Ok(CapacityStats {
            queued,
            in_flight,
            effective: effective.parse().ok(),
            tokens_last_minute: tokens.parse::<f64>().map_or(0, |t| t.max(0.0) as u64),
        })
    }
}

/// Listens for grants on `channel` until the task is stopped, calling
/// `wake` with the ids of each message.
pub async fn listen_grants(
    target: Target,
    channel: String,
    wake: impl Fn(Vec<TicketId>) + Send + 'static,
) {
    let topic = Topic {
        channel: &channel,
        what: "capacity grants",
        missed: "waiters here learn of other instances' grants only when they ask",
    };
    crate::bus::listen(target, topic, move |payload| {
        let ids = ticket_ids(payload.split(','));
        if !ids.is_empty() {
            wake(ids);
        }
    })
    .await;
}
