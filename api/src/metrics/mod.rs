//! The process's metrics in the Prometheus text format, on a listener of
//! their own (`server.metrics_addr`, see [`server`]).
//!
//! Recording costs the hot path atomics only: every counter and histogram
//! a request touches is created once (at start, or the first time its
//! label values occur) and kept in a slot the request finds by index, so no
//! request takes a lock or allocates to be counted. Values that only matter
//! when someone looks (states, pool sizes, turns in progress) are read at
//! scrape time ([`scrape`]).

mod capacity;
mod histogram;
mod http;
mod scrape;
pub mod server;
mod turns;

use std::sync::Arc;

use pantheon_domain::TurnService;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

pub use capacity::CapacityMetrics;
pub use histogram::LimiterMetrics;
pub use http::{HttpMetrics, HttpMetricsLayer};
pub use scrape::ConnectionPool;
pub use turns::TurnMetrics;

/// Every metric of one server, and the registry that renders them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// `pantheon_http_*`, recorded by [`HttpMetricsLayer`].
    pub http: Arc<HttpMetrics>,
    /// `pantheon_turns_*`, `pantheon_tokens_total`, `pantheon_limiter_decisions_total`:
    /// the domain's observer.
    pub turns: Arc<TurnMetrics>,
    /// `pantheon_limiter_redis_duration_seconds`, `pantheon_limiter_batch_size`:
    /// recorded by the limiter actor.
    pub limiter: LimiterMetrics,
    /// `pantheon_sse_streams_open`.
    pub sse_streams: Gauge,
    /// `pantheon_provider_*`: the provider's shared capacity.
    pub capacity: CapacityMetrics,
}

impl Metrics {
    /// The metrics of a server whose router has `routes` (path templates).
    pub fn new(routes: impl IntoIterator<Item = String>) -> Self {
        let mut registry = Registry::default();
        let http = Arc::new(HttpMetrics::new(routes, &mut registry));
        let turns = Arc::new(TurnMetrics::new(&mut registry));
        let limiter = LimiterMetrics::default();
        registry.register(
            "pantheon_limiter_redis_duration_seconds",
            "Seconds per pipeline round trip to Redis (checks, peeks, lease upkeep)",
            limiter.redis_duration.clone(),
        );
        registry.register(
            "pantheon_limiter_batch_size",
            "Items per pipeline sent to Redis: checks, peeks, per-user lease releases and renewals",
            limiter.batch_size.clone(),
        );
        let capacity = CapacityMetrics::new(&mut registry);
        let sse_streams = Gauge::default();
        registry.register(
            "pantheon_sse_streams_open",
            "Server-Sent Events responses being written",
            sse_streams.clone(),
        );
        let build_info = Family::<[(&'static str, &'static str); 1], Gauge>::default();
        build_info.get_or_create(&[("version", env!("CARGO_PKG_VERSION"))]).set(1);
        registry.register("pantheon_build_info", "The running build; always 1", build_info);
        Self { registry, http, turns, limiter, sse_streams, capacity }
    }

    /// Adds what is read at scrape time from the services and `pool`.
    pub fn read_at_scrape(&mut self, turns: TurnService, pool: Arc<dyn ConnectionPool>) {
        self.registry.register_collector(Box::new(scrape::Sources { turns, pool }));
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut text = String::with_capacity(16 * 1024);
        // Writing into a `String` cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry);
        text
    }
}

/// Counts an SSE response as open while it lives.
#[derive(Debug)]
pub struct OpenStream(Gauge);

impl OpenStream {
    /// One more open stream.
    pub fn new(gauge: &Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.dec();
    }
}
