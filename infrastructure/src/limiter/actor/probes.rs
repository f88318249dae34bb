//! The health jobs: probing a degraded node (on a cluster, reading the
//! layout first) and what a finished probe or layout read changes.

use std::sync::Arc;

use redis::RedisResult;

use super::LimiterActor;
use crate::limiter::nodes::Nodes;
use crate::limiter::topology::NodeAddr;

/// What a background Redis job found.
pub(super) enum Job {
    /// A probe of a degraded node: `Ok(true)` it answers again, `Ok(false)`
    /// it serves no slot any more.
    Probe(NodeAddr, RedisResult<bool>),
    /// The cluster's layout was read again (after a `MOVED`).
    Refresh(RedisResult<()>),
}

/// Probes `node`: on a cluster, reads the layout first (the node may have
/// been replaced by its replica), then reconnects if it still serves slots.
pub(super) async fn probe(nodes: Arc<Nodes>, node: NodeAddr) -> Job {
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

impl LimiterActor {
    pub(super) fn job_done(&mut self, job: Job) {
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
}
