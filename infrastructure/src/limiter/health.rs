//! The health of the Redis nodes, one state machine per node, and its
//! warnings.
//!
//! ```text
//! healthy ──(3 consecutive failures, or down at boot)──► degraded
//! degraded ──(probe due: backoff with jitter)──► probing ──ok──► healthy
//!                                                   └──fail──► degraded (backoff doubles, ≤ 500 ms)
//! ```
//! A single Redis is one node. On a cluster each master has its own state:
//! a node that fails answers its own users' checks by the fallback while
//! the others are checked as usual; `/readyz` says `degraded` while any
//! node is. Warnings are logged on each state change and as one summary per
//! interval with the number of checks the fallback answered: never one per
//! request.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use pantheon_domain::limiter::{Fallback, LimiterShared, LimiterState};
use rand::Rng;
use tokio::time::Instant;

use super::topology::NodeAddr;

/// Consecutive failed calls that turn a healthy link degraded: one slow
/// call is noise, three in a row is an outage.
const FAILURES_TO_DEGRADE: u32 = 3;
/// The first probe waits this long; each failed probe doubles it.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// The backoff stops doubling here: with the ±50 % jitter a probe follows
/// the last failed one within 750 ms, so limiting resumes within 1 s of
/// Redis answering again (a reconnect and `SCRIPT LOAD` to a Redis that
/// answers take a few ms of the rest). Every second of a longer wait is a
/// second in which the fallback admits what Redis would refuse (a 5 s cap
/// let a 5-a-minute user through 27–41 extra times).
///
/// A capped timer rather than probing on the first check after a quiet
/// period: recovery then does not depend on traffic, no caller waits for a
/// connect, and `/readyz` turns healthy on an idle instance too. What it
/// costs is one connection attempt per instance every ≤ 750 ms while Redis
/// is down (probes never overlap, each bounded by `redis.timeout_ms`): a
/// refused connect, or one idle connection to a stalled Redis.
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// Where one node is.
#[derive(Debug)]
pub struct Health {
    degraded: bool,
    consecutive_failures: u32,
    backoff: Duration,
    next_probe: Instant,
}

impl Health {
    /// A node that starts healthy or, when it was down at boot, degraded.
    pub fn new(up: bool) -> Self {
        let mut health = Self {
            degraded: false,
            consecutive_failures: 0,
            backoff: MIN_BACKOFF,
            next_probe: Instant::now(),
        };
        if !up {
            health.degrade();
        }
        health
    }

    /// Whether checks must bypass this node.
    pub fn is_degraded(&self) -> bool {
        self.degraded
    }

    /// When the next probe may start.
    pub fn next_probe(&self) -> Instant {
        self.next_probe
    }

    /// A call succeeded.
    pub fn record_success(&mut self) {
        self.consecutive_failures = 0;
    }

    /// A call failed; returns whether the node just turned degraded.
    pub fn record_failure(&mut self) -> bool {
        if self.degraded {
            return false;
        }
        self.consecutive_failures += 1;
        if self.consecutive_failures >= FAILURES_TO_DEGRADE {
            self.degrade();
            return true;
        }
        false
    }

    fn degrade(&mut self) {
        self.degraded = true;
        self.backoff = MIN_BACKOFF;
        self.next_probe = Instant::now() + jittered(self.backoff);
    }

    /// A probe failed: wait longer before the next.
    pub fn probe_failed(&mut self) {
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        self.next_probe = Instant::now() + jittered(self.backoff);
    }

    /// A probe succeeded: back to healthy.
    pub fn recovered(&mut self) {
        self.degraded = false;
        self.consecutive_failures = 0;
    }
}

/// Every node's health, the state `/readyz` reports, and the warnings.
#[derive(Debug)]
pub struct HealthBoard {
    nodes: BTreeMap<NodeAddr, Health>,
    /// Checks the fallback answered since the last summary.
    skipped: u64,
    fallback: Fallback,
    shared: Arc<LimiterShared>,
}

impl HealthBoard {
    /// A board of `nodes`, each healthy or, with the error that stopped it
    /// at start, degraded.
    pub fn new(
        nodes: impl IntoIterator<Item = (NodeAddr, Option<String>)>,
        fallback: Fallback,
        shared: Arc<LimiterShared>,
    ) -> Self {
        let mut board = Self { nodes: BTreeMap::new(), skipped: 0, fallback, shared };
        for (node, error) in nodes {
            if let Some(error) = &error {
                board.warn_degraded(&node, &format!("Redis unreachable at start: {error}"));
            }
            board.nodes.insert(node, Health::new(error.is_none()));
        }
        board.publish();
        board
    }

    /// Whether `node` must be bypassed; a node not seen before (a replica
    /// just promoted, a master just added) starts healthy.
    pub fn is_degraded(&self, node: &NodeAddr) -> bool {
        self.nodes.get(node).is_some_and(Health::is_degraded)
    }

    /// Whether every node is degraded: then no check can reach Redis.
    pub fn all_degraded(&self) -> bool {
        !self.nodes.is_empty() && self.nodes.values().all(Health::is_degraded)
    }

    /// When the first probe of a degraded node not in `probing` is due.
    pub fn next_probe(&self, probing: &HashSet<NodeAddr>) -> Option<Instant> {
        self.nodes
            .iter()
            .filter(|(node, h)| h.is_degraded() && !probing.contains(*node))
            .map(|(_, h)| h.next_probe())
            .min()
    }

    /// The degraded nodes not in `probing` whose probe is due by `now`.
    pub fn due(&self, now: Instant, probing: &HashSet<NodeAddr>) -> Vec<NodeAddr> {
        self.nodes
            .iter()
            .filter(|(node, h)| {
                h.is_degraded() && h.next_probe() <= now && !probing.contains(*node)
            })
            .map(|(node, _)| node.clone())
            .collect()
    }

    /// A call to `node` succeeded.
    pub fn record_success(&mut self, node: &NodeAddr) {
        self.entry(node).record_success();
    }

    /// A call to `node` failed; returns whether it just turned degraded
    /// (its connection should then be dropped: the probe makes a new one).
    pub fn record_failure(&mut self, node: &NodeAddr, error: &str) -> bool {
        let degraded = self.entry(node).record_failure();
        if degraded {
            self.warn_degraded(node, error);
            self.publish();
        }
        degraded
    }

    /// A check was answered by the fallback.
    pub fn note_fallback(&mut self) {
        self.skipped += 1;
    }

    /// A probe of `node` failed: it waits longer before the next.
    pub fn probe_failed(&mut self, node: &NodeAddr, error: &str) {
        if let Some(health) = self.nodes.get_mut(node) {
            health.probe_failed();
            let backoff_ms = health.backoff.as_millis() as u64;
            tracing::debug!(error, node = %node, backoff_ms, "Redis probe failed");
        }
    }

    /// A probe of `node` succeeded: it is healthy again.
    pub fn recovered(&mut self, node: &NodeAddr) {
        if let Some(health) = self.nodes.get_mut(node)
            && health.is_degraded()
        {
            health.recovered();
            tracing::info!(skipped = self.skipped, node = %node, "rate limiter recovered: Redis answers again");
            self.publish();
        }
    }

    /// `node` serves no slot any more (its replica took over, or it left
    /// the cluster): its users are checked on their new node.
    pub fn retire(&mut self, node: &NodeAddr) {
        if let Some(health) = self.nodes.remove(node)
            && health.is_degraded()
        {
            tracing::info!(
                skipped = self.skipped,
                node = %node,
                "rate limiter recovered: the failed node no longer serves any slot; its users are checked on the node that took them over"
            );
            self.publish();
        }
    }

    /// Retires every node for which `serves` is false.
    pub fn retain(&mut self, serves: impl Fn(&NodeAddr) -> bool) {
        let gone: Vec<NodeAddr> = self.nodes.keys().filter(|n| !serves(n)).cloned().collect();
        for node in gone {
            self.retire(&node);
        }
    }

    /// The periodic summary: how many checks the fallback answered.
    pub fn summarize(&mut self) {
        if self.skipped > 0 {
            let degraded: Vec<String> = self
                .nodes
                .iter()
                .filter(|(_, h)| h.is_degraded())
                .map(|(node, _)| node.to_string())
                .collect();
            tracing::warn!(
                skipped = self.skipped,
                degraded = !degraded.is_empty(),
                nodes = ?degraded,
                "rate limiter: checks answered by the fallback in the last interval"
            );
            self.skipped = 0;
        }
    }

    fn entry(&mut self, node: &NodeAddr) -> &mut Health {
        self.nodes.entry(node.clone()).or_insert_with(|| Health::new(true))
    }

    /// `/readyz`: degraded while any node is.
    fn publish(&self) {
        let degraded = self.nodes.values().any(Health::is_degraded);
        self.shared.set_state(if degraded {
            LimiterState::Degraded
        } else {
            LimiterState::Healthy
        });
    }

    fn warn_degraded(&self, node: &NodeAddr, error: &str) {
        match self.fallback {
            Fallback::Local => tracing::warn!(
                error,
                node = %node,
                "rate limiter degraded: Redis is failing; limits and token budgets are now \
                 enforced PER INSTANCE by the in-process fallback until it recovers"
            ),
            Fallback::Allow => tracing::warn!(
                error,
                node = %node,
                "rate limiter degraded: Redis is failing; turns are admitted unchecked, with no \
                 token accounting (no reservation, no refund), until it recovers"
            ),
            Fallback::Deny => tracing::warn!(
                error,
                node = %node,
                "rate limiter degraded: Redis is failing; turns are refused with 503 until it recovers"
            ),
        }
    }
}

/// `base` ± 50%, so instances that lost Redis together do not probe in step.
fn jittered(base: Duration) -> Duration {
    let factor = rand::rng().random_range(0.5..1.5);
    base.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wait before the next probe after `failed` failed probes, jitter
    /// aside: written out, not derived from the constants under test.
    fn base_wait(failed: u32) -> Duration {
        Duration::from_millis(match failed {
            0 => 100,
            1 => 200,
            2 => 400,
            _ => 500,
        })
    }

    /// Runs `step` and asserts the next probe falls in `base` ± 50 %
    /// counted from when it ran: bracketing the call keeps the bounds exact
    /// without a clock to stop.
    fn assert_next_probe(health: &mut Health, base: Duration, step: impl FnOnce(&mut Health)) {
        let before = Instant::now();
        step(health);
        let after = Instant::now();
        let next = health.next_probe();
        assert!(next >= before + base / 2, "{:?} before {base:?}/2", next - before);
        assert!(next <= after + base * 3 / 2, "{:?} after {base:?}·1.5", next - before);
    }

    #[test]
    fn probes_back_off_from_100_ms_and_never_wait_more_than_750_ms() {
        let mut health = Health::new(true);
        assert_next_probe(&mut health, base_wait(0), |h| {
            for _ in 0..FAILURES_TO_DEGRADE {
                h.record_failure();
            }
        });
        assert!(health.is_degraded());
        // 200, 400, then 500 ms for as long as Redis stays down.
        for failed in 1..=40 {
            assert_next_probe(&mut health, base_wait(failed), |h| h.probe_failed());
        }
    }

    #[test]
    fn each_node_degrades_alone_and_readiness_follows_the_worst() {
        let shared = Arc::new(LimiterShared::default());
        let (a, b) = (NodeAddr::new("10.0.0.1", 7000), NodeAddr::new("10.0.0.2", 7000));
        let mut board = HealthBoard::new(
            [(a.clone(), None), (b.clone(), None)],
            Fallback::Allow,
            shared.clone(),
        );
        assert_eq!(shared.state(), LimiterState::Healthy);
        for i in 1..=FAILURES_TO_DEGRADE {
            assert_eq!(board.record_failure(&a, "refused"), i == FAILURES_TO_DEGRADE);
            board.record_success(&b);
        }
        assert!(board.is_degraded(&a) && !board.is_degraded(&b) && !board.all_degraded());
        assert_eq!(shared.state(), LimiterState::Degraded);
        assert_eq!(board.due(Instant::now() + MAX_BACKOFF * 2, &HashSet::new()), vec![a.clone()]);
        // Its replica took its slots over: nothing is degraded any more.
        board.retain(|node| *node != a);
        assert_eq!(shared.state(), LimiterState::Healthy);
        assert_eq!(board.next_probe(&HashSet::new()), None);
    }

    #[test]
    fn an_outage_after_recovery_starts_again_at_100_ms() {
        let mut health = Health::new(false);
        for _ in 0..10 {
            health.probe_failed();
        }
        health.recovered();
        assert!(!health.is_degraded());
        assert_next_probe(&mut health, base_wait(0), |h| {
            for _ in 0..FAILURES_TO_DEGRADE {
                h.record_failure();
            }
        });
    }
}
