//! Metrics read when Prometheus scrapes, not recorded as things happen:
//! the limiter's state, its cache refusals, turns in progress, the
//! database pool, and log lines the non-blocking writer had to drop.
//! Nothing on a request's path pays for them.

use pantheon_domain::TurnService;
use pantheon_domain::limiter::LimiterState;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::telemetry;

/// The database pool, as the scrape reads it (the composition root
/// implements it for the adapter's probe).
pub trait ConnectionPool: Send + Sync + std::fmt::Debug {
    /// Open connections: `(idle, in_use)`.
    fn connections(&self) -> (u64, u64);
}

/// What the scrape reads.
#[derive(Debug)]
pub(super) struct Sources {
    pub(super) turns: TurnService,
    pub(super) pool: std::sync::Arc<dyn ConnectionPool>,
}

/// The limiter's states, as labelled; exactly one is 1.
const STATES: [&str; 4] = ["healthy", "degraded", "in_process", "disabled"];

fn state_name(state: Option<LimiterState>) -> &'static str {
    match state {
        None => "disabled",
        Some(state) => state.as_str(),
    }
}

fn gauge(value: u64) -> ConstGauge<i64> {
    ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX))
}

impl Collector for Sources {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let current = state_name(self.turns.limiter_state());
        let mut family = encoder.encode_descriptor(
            "pantheon_limiter_state",
            "The limiter's state: 1 for the current one.",
            None,
            MetricType::Gauge,
        )?;
        for state in STATES {
            let value = ConstGauge::new(i64::from(state == current));
            value.encode(family.encode_family(&[("state", state)])?)?;
        }

        let refusals = ConstCounter::new(self.turns.limiter_cache_refusals().unwrap_or(0));
        refusals.encode(encoder.encode_descriptor(
            "pantheon_limiter_cache_refusals",
            "Refusals answered from the over-limit cache, without Redis.",
            None,
            refusals.metric_type(),
        )?)?;

        let in_progress = gauge(self.turns.turns_in_progress() as u64);
        in_progress.encode(encoder.encode_descriptor(
            "pantheon_turns_in_progress",
            "Turns generating in this process.",
            None,
            in_progress.metric_type(),
        )?)?;

        let (idle, in_use) = self.pool.connections();
        let mut family = encoder.encode_descriptor(
            "pantheon_db_pool_connections",
            "Open database connections by state (idle, in_use).",
            None,
            MetricType::Gauge,
        )?;
        gauge(idle).encode(family.encode_family(&[("state", "idle")])?)?;
        gauge(in_use).encode(family.encode_family(&[("state", "in_use")])?)?;

        if let Some(dropped) = telemetry::dropped_lines() {
            let dropped = ConstCounter::new(dropped);
            dropped.encode(encoder.encode_descriptor(
                "pantheon_log_lines_dropped",
                "Log lines dropped because the log writer's queue was full.",
                None,
                dropped.metric_type(),
            )?)?;
        }
        Ok(())
    }
}
