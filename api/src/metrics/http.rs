//! `pantheon_http_requests_total{method,route,status}` and
//! `pantheon_http_request_duration_seconds{method,route}`, recorded by a
//! layer around every route: the route label is the matched template,
//! never the raw path, written with `:name` for each parameter
//! (`/api/v1/sessions/:session_id`: braces are regex metacharacters in
//! PromQL's `=~` matchers, and some text-format parsers stop at them), and
//! requests no route matched share `<unmatched>`.
//!
//! The counters live in slots indexed by (route, method) and status; a slot
//! is filled the first time its labels occur (the family's lock and an
//! allocation, once), and every later request is an index and an atomic
//! add.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use super::histogram::{Histogram, LATENCY_BOUNDS};
use axum::extract::MatchedPath;
use axum::http::{Method, Request, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tower::{Layer, Service};

/// The route label of requests no route matched.
const UNMATCHED: &str = "<unmatched>";
/// The method labels, by index; anything else is `other`.
const METHODS: [&str; 8] = ["GET", "POST", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS", "other"];
/// Statuses 100–599 have a slot each.
const STATUSES: usize = 500;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    route: String,
    status: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RouteLabels {
    method: &'static str,
    route: String,
}

type Durations = Family<RouteLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BOUNDS)
}

/// A path template as a label value: `{name}` becomes `:name`.
fn label(template: &str) -> String {
    template.replace('{', ":").replace('}', "")
}

/// One (route, method)'s duration histogram and its counters by status.
#[derive(Debug)]
struct Slot {
    labels: RouteLabels,
    duration: Histogram,
    statuses: Box<[OnceLock<Counter>]>,
}

/// The HTTP metrics of one router.
#[derive(Debug)]
pub struct HttpMetrics {
    /// The router's path templates, sorted; index `routes.len()` is
    /// [`UNMATCHED`].
    routes: Vec<String>,
    slots: Box<[OnceLock<Box<Slot>>]>,
    requests: Family<RequestLabels, Counter>,
    durations: Durations,
}

/// Where a request's figures go, decided when it arrives.
#[derive(Debug, Clone, Copy)]
struct SlotIndex(usize);

impl HttpMetrics {
    /// Registers the two metrics for a router of `routes`.
    pub fn new(routes: impl IntoIterator<Item = String>, registry: &mut Registry) -> Self {
        let mut routes: Vec<String> = routes.into_iter().collect();
        routes.sort();
        routes.dedup();
        let slots = (0..(routes.len() + 1) * METHODS.len()).map(|_| OnceLock::new()).collect();
        let requests = Family::<RequestLabels, Counter>::default();
        let durations = Durations::new_with_constructor(latency_histogram);
        registry.register(
            "pantheon_http_requests",
            "HTTP responses by method, route template and status",
            requests.clone(),
        );
        registry.register(
            "pantheon_http_request_duration_seconds",
            "Seconds from a request's arrival to its response head, by method and route template",
            durations.clone(),
        );
        Self { routes, slots, requests, durations }
    }

    fn slot_index(&self, route: Option<&MatchedPath>, method: &Method) -> SlotIndex {
        let route = route
            .and_then(|r| self.routes.binary_search_by(|t| t.as_str().cmp(r.as_str())).ok())
            .unwrap_or(self.routes.len());
        let method = match *method {
            Method::GET => 0,
            Method::POST => 1,
            Method::DELETE => 2,
            Method::PUT => 3,
            Method::PATCH => 4,
            Method::HEAD => 5,
            Method::OPTIONS => 6,
            _ => 7,
        };
        SlotIndex(route * METHODS.len() + method)
    }

    fn slot(&self, index: SlotIndex) -> Option<&Slot> {
        let cell = self.slots.get(index.0)?;
        Some(cell.get_or_init(|| {
            let (route, method) = (index.0 / METHODS.len(), index.0 % METHODS.len());
            let labels = RouteLabels {
                method: METHODS[method],
                route: self.routes.get(route).map_or_else(|| UNMATCHED.to_owned(), |t| label(t)),
            };
            let duration = self.durations.get_or_create_owned(&labels);
            let statuses = (0..STATUSES).map(|_| OnceLock::new()).collect();
            Box::new(Slot { labels, duration, statuses })
        }))
    }

    fn record(&self, index: SlotIndex, status: u16, started: Instant) {
        let Some(slot) = self.slot(index) else { return };
        slot.duration.observe(started.elapsed().as_secs_f64());
        let Some(cell) = usize::from(status).checked_sub(100).and_then(|i| slot.statuses.get(i))
        else {
            return;
        };
        cell.get_or_init(|| {
            let labels = RequestLabels {
                method: slot.labels.method,
                route: slot.labels.route.clone(),
                status,
            };
            self.requests.get_or_create_owned(&labels)
        })
        .inc();
    }
}

/// The layer that records every response of the router it wraps.
#[derive(Debug, Clone)]
pub struct HttpMetricsLayer(Arc<HttpMetrics>);

impl HttpMetricsLayer {
    /// A layer recording into `metrics`.
    pub fn new(metrics: Arc<HttpMetrics>) -> Self {
        Self(metrics)
    }
}

impl<S> Layer<S> for HttpMetricsLayer {
    type Service = Recording<S>;

    fn layer(&self, inner: S) -> Recording<S> {
        Recording { inner, metrics: self.0.clone() }
    }
}

/// A service whose responses are counted.
#[derive(Debug, Clone)]
pub struct Recording<S> {
    inner: S,
    metrics: Arc<HttpMetrics>,
}

impl<S, B, R> Service<Request<B>> for Recording<S>
where
    S: Service<Request<B>, Response = Response<R>>,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = Recorded<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let index =
            self.metrics.slot_index(request.extensions().get::<MatchedPath>(), request.method());
        Recorded {
            inner: self.inner.call(request),
            metrics: Some(self.metrics.clone()),
            index,
            started: Instant::now(),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future, recording when the response head is ready.
    #[allow(missing_debug_implementations)]
    pub struct Recorded<F> {
        #[pin]
        inner: F,
        metrics: Option<Arc<HttpMetrics>>,
        index: SlotIndex,
        started: Instant,
    }
}

impl<F, R, E> Future for Recorded<F>
where
    F: Future<Output = Result<Response<R>, E>>,
{
    type Output = Result<Response<R>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        if let (Ok(response), Some(metrics)) = (&result, this.metrics.take()) {
            metrics.record(*this.index, response.status().as_u16(), *this.started);
        }
        Poll::Ready(result)
    }
}
