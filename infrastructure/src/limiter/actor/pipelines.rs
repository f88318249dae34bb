//! The per-node pipelines: a batch split by the node serving each user,
//! each node's share sent as one pipeline (at most `MAX_IN_FLIGHT` per node
//! outstanding, the rest waiting in the node's backlog up to
//! [`MAX_BACKLOG`]), its results fanned out to the callers, each call's
//! outcome recorded in the node's health, and what cannot be sent answered
//! by the fallback.

/// Checks waiting for a busy node's next pipeline; past it they are
/// answered by the fallback at once (that node is not keeping up).
const MAX_BACKLOG: usize = MAX_BATCH;

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use pantheon_domain::limiter::{Admission, Lease, LeaseStore, RateLimitStatus, Verdict};

use super::leases::Upkeep;
use super::{LimiterActor, MAX_BATCH};
use crate::limiter::redis_link::{
    self, Batch, BatchOutcome, BatchReply, CheckReply, MAX_IN_FLIGHT, PeekReply, Pending,
};
use crate::limiter::reply;
use crate::limiter::topology::{NodeAddr, slot_of};

impl LimiterActor {
    /// Splits `batch` by the node serving each user and sends each node's
    /// share as one pipeline.
    pub(super) fn send(
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
    pub(super) fn dispatch(
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
        let observer = Arc::clone(&self.observer);
        let started = std::time::Instant::now();
        in_flight.push(Box::pin(redis_link::run_batch(nodes, node.clone(), group).map(
            move |(batch, outcome)| {
                if !batch.is_empty() {
                    observer.pipeline(batch.len(), started.elapsed());
                }
                (node, batch, outcome)
            },
        )));
    }

    /// Fans a pipeline's results out to the callers and updates each
    /// node's health.
    pub(super) fn settle(&mut self, node: &NodeAddr, batch: Batch, outcome: BatchReply) {
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
                (
                    Pending::Check { user, limits, cost, now_ms, lease, reply, claim, .. },
                    Ok(values),
                ) => {
                    let unclaim = claim.map(|claim| claim.key);
                    match reply::parse_check(values) {
                        Ok(Err(held)) => {
                            let _ = reply.send(Admission::claimed(held));
                        }
                        Ok(Ok(tally)) => {
                            let verdict = Verdict::from_tally(limits, cost, &tally, now_ms);
                            let (decision, reservation) = self.shared.verdict(&user, verdict);
                            // The lease follows the script, which took the
                            // slot: an answer nobody receives drops it, and
                            // the drop gives the slot back.
                            let lease = tally.admitted.then(|| {
                                self.held.insert(lease, user.clone());
                                let releases = self.shared.releases().clone();
                                Lease::new(lease, user, LeaseStore::Redis, releases)
                                    .with_reservation(reservation)
                                    .with_claim(unclaim)
                            });
                            let _ = reply.send(Admission { decision, lease, claimed: None });
                        }
                        Err(error) => {
                            tracing::error!(error, "unexpected limiter script reply");
                            // The script ran: it may have taken a slot.
                            self.unrelease(lease, user.clone(), None, unclaim, Upkeep::Due);
                            let admission = self.fallback(&user, limits, cost, now_ms);
                            let _ = reply.send(admission);
                        }
                    }
                }
                (Pending::Peek { limits, now_ms, reply, .. }, Ok(values)) => {
                    let status = reply::parse_tally(values)
                        .ok()
                        .map(|t| RateLimitStatus::from_peek(limits, &t, now_ms));
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
                        // Its claim, if it made one, names a turn never made.
                        Pending::Check { user, lease, claim, .. } if ran => {
                            let unclaim = claim.as_ref().map(|claim| claim.key.clone());
                            self.unrelease(
                                *lease,
                                user.clone(),
                                None,
                                unclaim,
                                Upkeep::AwaitingAnswer,
                            );
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
    pub(super) fn record(&mut self, node: &NodeAddr, error: Option<&str>) {
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

    pub(super) fn answer_by_fallback(&mut self, pending: Pending<CheckReply, PeekReply>) {
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
}
