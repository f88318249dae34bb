//! `pantheon_provider_*`: the provider's shared capacity, as the gate
//! observes it. The waits and tokens are recorded by the turns (atomics);
//! the gauges are the queue's figures, read from the store once a second
//! by the gate's task (so a scrape costs no Redis call).

use pantheon_domain::capacity::CapacityStats;
use pantheon_domain::observe::CapacityObserver;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use super::histogram::{Histogram, LATENCY_BOUNDS};

/// The gate's observer.
#[derive(Debug, Clone)]
pub struct CapacityMetrics {
    queue_wait: Histogram,
    timed_out: Counter,
    tokens: Family<[(&'static str, String); 1], Counter>,
    queued: Gauge,
    in_flight: Gauge,
    effective: Gauge<f64, AtomicU64>,
}

impl CapacityMetrics {
    /// Registers the metrics in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self {
            queue_wait: Histogram::new(LATENCY_BOUNDS),
            timed_out: Counter::default(),
            tokens: Family::default(),
            queued: Gauge::default(),
            in_flight: Gauge::default(),
            effective: Gauge::default(),
        };
        registry.register(
            "pantheon_provider_queue_wait_seconds",
            "Seconds a turn waited for the provider's capacity before its slot (0 when it got one at once)",
            metrics.queue_wait.clone(),
        );
        registry.register(
            "pantheon_provider_queue_timeouts",
            "Turns that waited provider.queue_timeout_secs and failed upstream_saturated",
            metrics.timed_out.clone(),
        );
        registry.register(
            "pantheon_provider_tokens_served",
            "Tokens the provider served, by the caller's tier (what the fair order counts)",
            metrics.tokens.clone(),
        );
        registry.register(
            "pantheon_provider_queue_length",
            "Turns waiting for the provider's capacity, over all instances",
            metrics.queued.clone(),
        );
        registry.register(
            "pantheon_provider_slots_in_use",
            "Turns holding a provider slot, over all instances",
            metrics.in_flight.clone(),
        );
        registry.register(
            "pantheon_provider_effective_capacity",
            "Turns allowed upstream at once after back-pressure (provider.max_concurrent at most)",
            metrics.effective.clone(),
        );
        metrics
    }
}

impl CapacityObserver for CapacityMetrics {
    fn waited(&self, wait: Duration, granted: bool) {
        if granted {
            self.queue_wait.observe(wait.as_secs_f64());
        } else {
            self.timed_out.inc();
        }
    }

    fn served(&self, tier: &str, tokens: u64) {
        self.tokens.get_or_create(&[("tier", tier.to_owned())]).inc_by(tokens);
    }

    fn stats(&self, stats: &CapacityStats) {
        self.queued.set(i64::try_from(stats.queued).unwrap_or(i64::MAX));
        self.in_flight.set(i64::try_from(stats.in_flight).unwrap_or(i64::MAX));
        if let Some(effective) = stats.effective {
            self.effective.set(effective);
        }
    }
}
