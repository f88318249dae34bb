//! One exchange with one node: a group of commands, each for one user's
//! slot, sent as one pipeline, and the replies that ask for more work
//! handled command by command:
//!
//! - `NOSCRIPT` (a restart, a failover, `SCRIPT FLUSH`): the script is loaded
//!   on that node and only those commands are sent again;
//! - `MOVED` (a resharding, a failover): the command goes to the node named,
//!   and the slot map learns it;
//! - `ASK` (a slot half-way through a migration): the command goes to the
//!   node named, after `ASKING` in the same pipeline, so nothing else on the
//!   multiplexed connection can come between them;
//! - `TRYAGAIN` (a multi-key command while its slot migrates): sent again to
//!   the slot's node after a short wait.
//!
//! Each of those replies means the command did not run, so sending it again
//! cannot count it twice; a command that ran is never sent again. Pipelines
//! are not atomic: commands before a `SCRIPT FLUSH` ran and counted, so they
//! keep their replies. The whole exchange, redirects included, is bounded by
//! the limiter's timeout; what is unanswered then fails (and its caller gets
//! the fallback).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use redis::{Cmd, ErrorKind, RedisError, RedisResult, ServerErrorKind, Value};
use tokio::time::Instant;

use super::nodes::{Nodes, timed_out};
use super::topology::NodeAddr;

/// Rounds of redirects and retries one exchange may take: a slot moves
/// once, a migration ends; a command still bouncing after this many is
/// answered by the fallback.
const MAX_ROUNDS: usize = 6;
/// The first wait after a `TRYAGAIN`; it doubles each round.
const TRYAGAIN_WAIT: Duration = Duration::from_millis(5);

/// A command for one user's slot.
#[derive(Debug)]
pub struct Routed {
    /// The slot of every key it touches.
    pub slot: u16,
    /// The command.
    pub cmd: Cmd,
}

/// What an exchange brings back: one result per command, in order, and how
/// each node it talked to did (`None`: it answered; `Some`: the error).
#[derive(Debug, Default)]
pub struct Exchange {
    /// One per command sent, in the order given.
    pub results: Vec<RedisResult<Value>>,
    /// Per node reached.
    pub reports: Vec<(NodeAddr, Option<String>)>,
}

/// Where a command goes next.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    Node(NodeAddr),
    /// After `ASKING`.
    Asking(NodeAddr),
}

impl Target {
    fn node(&self) -> &NodeAddr {
        match self {
            Self::Node(node) | Self::Asking(node) => node,
        }
    }
}

/// Sends `items` to `node` and follows the replies as above.
pub async fn exchange(nodes: Arc<Nodes>, node: NodeAddr, items: Vec<Routed>) -> Exchange {
    let deadline = Instant::now() + nodes.timeout();
    let mut results: Vec<Option<RedisResult<Value>>> = vec![None; items.len()];
    let mut reports: BTreeMap<NodeAddr, Option<String>> = BTreeMap::new();
    let mut todo: Vec<(usize, Target)> =
        (0..items.len()).map(|i| (i, Target::Node(node.clone()))).collect();
    let mut wait = TRYAGAIN_WAIT;
    for _ in 0..MAX_ROUNDS {
        if todo.is_empty() {
            break;
        }
        let mut groups: BTreeMap<Target, Vec<usize>> = BTreeMap::new();
        for (i, target) in todo.drain(..) {
            groups.entry(target).or_default().push(i);
        }
        let sends = groups.into_iter().map(|(target, indexes)| {
            let cmds: Vec<&Cmd> = indexes.iter().map(|&i| &items[i].cmd).collect();
            let send = send(&nodes, target.clone(), cmds, deadline);
            async move { (target, indexes, send.await) }
        });
        let mut retry_later = false;
        for (target, indexes, outcome) in join_all(sends).await {
            let values = match outcome {
                Ok(values) => values,
                Err(error) => {
                    report(&mut reports, target.node(), Some(&error));
                    for i in indexes {
                        results[i] = Some(Err(error.clone()));
                    }
                    continue;
                }
            };
            report(&mut reports, target.node(), None);
            let mut noscript = false;
            for (i, value) in indexes.into_iter().zip(values) {
                let error = match value {
                    Ok(value) => {
                        results[i] = Some(Ok(value));
                        continue;
                    }
                    Err(error) => error,
                };
                match error.kind() {
                    ErrorKind::Server(ServerErrorKind::Moved) => match redirect(&error) {
                        Some((to, slot)) => {
                            nodes.moved(slot, to.clone());
                            todo.push((i, Target::Node(to)));
                        }
                        None => results[i] = Some(Err(error)),
                    },
                    ErrorKind::Server(ServerErrorKind::Ask) => match redirect(&error) {
                        Some((to, _)) => todo.push((i, Target::Asking(to))),
                        None => results[i] = Some(Err(error)),
                    },
                    ErrorKind::Server(ServerErrorKind::TryAgain) => {
                        retry_later = true;
                        todo.push((i, Target::Node(nodes.node_for(items[i].slot))));
                    }
                    ErrorKind::Server(ServerErrorKind::NoScript) => {
                        noscript = true;
                        todo.push((i, target.clone()));
                    }
                    _ => {
                        // An error reply (`CLUSTERDOWN`, `OOM`, a script
                        // error…) counts against the node like a failed call.
                        report(&mut reports, target.node(), Some(&error));
                        results[i] = Some(Err(error));
                    }
                }
            }
            if noscript && let Err(error) = load_script(&nodes, target.node(), deadline).await {
                report(&mut reports, target.node(), Some(&error));
                todo.retain(|(i, t)| {
                    let keep = t != &target;
                    if !keep {
                        results[*i] = Some(Err(error.clone()));
                    }
                    keep
                });
            }
        }
        if retry_later && !todo.is_empty() {
            let until = (Instant::now() + wait).min(deadline);
            tokio::time::sleep_until(until).await;
            wait *= 2;
        }
    }
    let results = results
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| {
                Err(RedisError::from(std::io::Error::other(format!(
                    "still redirected after {MAX_ROUNDS} rounds"
                ))))
            })
        })
        .collect();
    Exchange { results, reports: reports.into_iter().collect() }
}

/// One pipeline to one node, bounded by `deadline`.
async fn send(
    nodes: &Nodes,
    target: Target,
    cmds: Vec<&Cmd>,
    deadline: Instant,
) -> RedisResult<Vec<RedisResult<Value>>> {
    let node = target.node();
    let mut connection = tokio::time::timeout_at(deadline, nodes.connection(node))
        .await
        .map_err(|_| timed_out("connect"))??;
    let asking = matches!(target, Target::Asking(_));
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for cmd in &cmds {
        if asking {
            pipe.add_command(redis::cmd("ASKING"));
        }
        pipe.add_command((*cmd).clone());
    }
    let values: Vec<RedisResult<Value>> =
        tokio::time::timeout_at(deadline, pipe.query_async(&mut connection))
            .await
            .map_err(|_| timed_out("pipeline"))??;
    if asking {
        // Every other reply is `ASKING`'s `OK`.
        return Ok(values.into_iter().skip(1).step_by(2).collect());
    }
    Ok(values)
}

async fn load_script(nodes: &Nodes, node: &NodeAddr, deadline: Instant) -> RedisResult<()> {
    let mut connection = tokio::time::timeout_at(deadline, nodes.connection(node))
        .await
        .map_err(|_| timed_out("connect"))??;
    tokio::time::timeout_at(deadline, nodes.script().load_async(&mut connection))
        .await
        .map_err(|_| timed_out("SCRIPT LOAD"))??;
    Ok(())
}

/// The node and slot a `MOVED`/`ASK` reply names.
fn redirect(error: &RedisError) -> Option<(NodeAddr, u16)> {
    let (address, slot) = error.redirect_node()?;
    Some((NodeAddr::parse(address)?, slot))
}

/// Records how `node` did; a failure is never overwritten by a later answer
/// in the same exchange.
fn report(
    reports: &mut BTreeMap<NodeAddr, Option<String>>,
    node: &NodeAddr,
    error: Option<&RedisError>,
) {
    let entry = reports.entry(node.clone()).or_insert(None);
    if entry.is_none() {
        *entry = error.map(ToString::to_string);
    }
}
