//! The health state machine of the Redis link, and its warnings.
//!
//! ```text
//! healthy ──(3 consecutive failures, or down at boot)──► degraded
//! degraded ──(probe due: backoff with jitter)──► probing ──ok──► healthy
//!                                                   └──fail──► degraded (backoff doubles, ≤ 500 ms)
//! ```
//! Warnings are logged on each state change and as one summary per interval
//! with the number of checks the fallback answered: never one per request.

use std::sync::Arc;
use std::time::Duration;

use pantheon_domain::limiter::{Fallback, LimiterShared, LimiterState};
use rand::Rng;
use tokio::time::Instant;

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

/// Where the link is.
#[derive(Debug)]
pub struct Health {
    degraded: bool,
    consecutive_failures: u32,
    backoff: Duration,
    next_probe: Instant,
    skipped: u64,
    fallback: Fallback,
    shared: Arc<LimiterShared>,
}

impl Health {
    /// A link that starts healthy or, when Redis was down at boot, degraded.
    pub fn new(up: bool, fallback: Fallback, shared: Arc<LimiterShared>) -> Self {
        let mut health = Self {
            degraded: false,
            consecutive_failures: 0,
            backoff: MIN_BACKOFF,
            next_probe: Instant::now(),
            skipped: 0,
            fallback,
            shared,
        };
        if up {
            health.shared.set_state(LimiterState::Healthy);
        } else {
            health.degrade("Redis unreachable at start");
        }
        health
    }

    /// Whether checks must bypass Redis.
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

    /// A call failed; returns whether the link just turned degraded.
    pub fn record_failure(&mut self, error: &str) -> bool {
        if self.degraded {
            return false;
        }
        self.consecutive_failures += 1;
        if self.consecutive_failures >= FAILURES_TO_DEGRADE {
            self.degrade(error);
            return true;
        }
        false
    }

    /// A check was answered by the fallback.
    pub fn note_fallback(&mut self) {
        self.skipped += 1;
    }

    fn degrade(&mut self, error: &str) {
        self.degraded = true;
        self.backoff = MIN_BACKOFF;
        self.next_probe = Instant::now() + jittered(self.backoff);
        self.shared.set_state(LimiterState::Degraded);
        match self.fallback {
            Fallback::Local => tracing::warn!(
                error,
                "rate limiter degraded: Redis is failing; limits and token budgets are now \
                 enforced PER INSTANCE by the in-process fallback until it recovers"
            ),
            Fallback::Allow => tracing::warn!(
                error,
                "rate limiter degraded: Redis is failing; turns are admitted unchecked, with no \
                 token accounting (no reservation, no refund), until it recovers"
            ),
            Fallback::Deny => tracing::warn!(
                error,
                "rate limiter degraded: Redis is failing; turns are refused with 503 until it recovers"
            ),
        }
    }

    /// A probe failed: wait longer before the next.
    pub fn probe_failed(&mut self, error: &str) {
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        self.next_probe = Instant::now() + jittered(self.backoff);
        tracing::debug!(error, backoff_ms = self.backoff.as_millis() as u64, "Redis probe failed");
    }

    /// A probe succeeded: back to healthy.
    pub fn recovered(&mut self) {
        self.degraded = false;
        self.consecutive_failures = 0;
        self.shared.set_state(LimiterState::Healthy);
        tracing::info!(skipped = self.skipped, "rate limiter recovered: Redis answers again");
        self.skipped = 0;
    }

    /// The periodic summary: how many checks the fallback answered.
    pub fn summarize(&mut self) {
        if self.skipped > 0 {
            tracing::warn!(
                skipped = self.skipped,
                degraded = self.degraded,
                "rate limiter: checks answered by the fallback in the last interval"
            );
            self.skipped = 0;
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
        let mut health = Health::new(true, Fallback::Allow, Arc::new(LimiterShared::default()));
        assert_next_probe(&mut health, base_wait(0), |h| {
            for _ in 0..FAILURES_TO_DEGRADE {
                h.record_failure("refused");
            }
        });
        assert!(health.is_degraded());
        // 200, 400, then 500 ms for as long as Redis stays down.
        for failed in 1..=40 {
            assert_next_probe(&mut health, base_wait(failed), |h| h.probe_failed("refused"));
        }
    }

    #[test]
    fn an_outage_after_recovery_starts_again_at_100_ms() {
        let mut health = Health::new(false, Fallback::Deny, Arc::new(LimiterShared::default()));
        for _ in 0..10 {
            health.probe_failed("refused");
        }
        health.recovered();
        assert!(!health.is_degraded());
        assert_next_probe(&mut health, base_wait(0), |h| {
            for _ in 0..FAILURES_TO_DEGRADE {
                h.record_failure("refused");
            }
        });
    }
}
