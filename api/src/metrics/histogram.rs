//! A histogram whose every observation is atomics only, and the limiter
//! actor's measurements recorded into two of them.
//!
//! prometheus-client's histogram takes a lock per observation; every turn
//! and every refusal observes at least one, so this one keeps its buckets
//! and sum in atomics instead (fixed bounds, no allocation after creation).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use pantheon_domain::LimiterObserver;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Bounds (seconds) for request and turn latencies: 0.5 ms to 60 s.
pub const LATENCY_BOUNDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Bounds (seconds) for Redis round trips: 0.1 ms up to a little past the
/// largest sensible `redis.timeout_ms`.
pub const ROUND_TRIP_BOUNDS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

/// Bounds for pipeline sizes (items per pipeline: checks, peeks, lease
/// upkeep; at most 256).
pub const BATCH_BOUNDS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// A histogram over fixed bounds. Clones share the same cells.
#[derive(Debug, Clone)]
pub struct Histogram(Arc<Cells>);

#[derive(Debug)]
struct Cells {
    bounds: &'static [f64],
    /// One counter per bound, then the overflow (`+Inf`) one.
    buckets: Box<[AtomicU64]>,
    /// The sum of observations, as `f64` bits.
    sum: AtomicU64,
}

impl Histogram {
    /// An empty histogram over `bounds` (ascending).
    pub fn new(bounds: &'static [f64]) -> Self {
        let buckets = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Self(Arc::new(Cells { bounds, buckets, sum: AtomicU64::new(0) }))
    }

    /// Records one value.
    pub fn observe(&self, value: f64) {
        let cells = &*self.0;
        let bucket = cells.bounds.partition_point(|bound| *bound < value);
        if let Some(counter) = cells.buckets.get(bucket) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        // Lock-free: a lost race retries with the sum another thread wrote.
        let _ = cells.sum.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
            Some((f64::from_bits(bits) + value).to_bits())
        });
    }

    /// The number of observations so far.
    pub fn count(&self) -> u64 {
        self.0.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// The sum of observations so far.
    pub fn sum(&self) -> f64 {
        f64::from_bits(self.0.sum.load(Ordering::Relaxed))
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let cells = &*self.0;
        let buckets: Vec<(f64, u64)> = cells
            .bounds
            .iter()
            .zip(cells.buckets.iter())
            .map(|(bound, n)| (*bound, n.load(Ordering::Relaxed)))
            .collect();
        encoder.encode_histogram::<NoLabelSet>(self.sum(), self.count(), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// What the limiter actor measures of its Redis traffic: its observer.
#[derive(Debug, Clone)]
pub struct LimiterMetrics {
    /// Seconds per pipeline exchange with one Redis node (`NOSCRIPT` reload
    /// and redirections included).
    pub redis_duration: Histogram,
    /// Items per pipeline sent: checks, peeks, each user's lease releases
    /// or renewals.
    pub batch_size: Histogram,
}

impl Default for LimiterMetrics {
    fn default() -> Self {
        Self {
            redis_duration: Histogram::new(ROUND_TRIP_BOUNDS),
            batch_size: Histogram::new(BATCH_BOUNDS),
        }
    }
}

impl LimiterObserver for LimiterMetrics {
    fn pipeline(&self, size: usize, elapsed: std::time::Duration) {
        self.redis_duration.observe(elapsed.as_secs_f64());
        self.batch_size.observe(size as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::Histogram;

    #[test]
    fn a_value_falls_in_the_first_bucket_whose_bound_is_not_below_it() {
        let h = Histogram::new(&[1.0, 2.0]);
        for v in [0.5, 1.0, 1.5, 2.0, 3.0] {
            h.observe(v);
        }
        let counts: Vec<u64> =
            h.0.buckets.iter().map(|b| b.load(std::sync::atomic::Ordering::Relaxed)).collect();
        assert_eq!(counts, [2, 2, 1], "le=1: 0.5 and 1.0; le=2: 1.5 and 2.0; +Inf: 3.0");
        assert_eq!(h.count(), 5);
        assert!((h.sum() - 8.0).abs() < 1e-9);
    }
}
