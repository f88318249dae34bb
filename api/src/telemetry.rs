//! Logging: the subscriber set up once in `main`, and the per-request span
//! and line (method, route, status, latency, request id).

use std::io::IsTerminal;
use std::time::Duration;

use axum::extract::{MatchedPath, Request};
use axum::http::Response;
use pantheon_infrastructure::settings::{LogFormat, Settings};
use tower_http::classify::{ServerErrorsAsFailures, SharedClassifier};
use tower_http::trace::{DefaultOnBodyChunk, DefaultOnEos, MakeSpan, OnResponse, TraceLayer};
use tracing::Span;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber from `log.level` and `log.format`.
/// Colours only on a terminal: escape codes in a log file or a collector's
/// pipe are noise to read and bytes to write on every request line.
///
/// # Errors
/// A message naming `log.level` when it is not a valid filter.
pub fn init(settings: &Settings) -> Result<(), String> {
    let filter = EnvFilter::try_new(&settings.log.level)
        .map_err(|e| format!("configuration error: log.level: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal());
    let result = match settings.log_format() {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
    // A second init (tests) keeps the first subscriber; that is fine.
    drop(result);
    Ok(())
}

/// Opens one span per request with its route template (not the raw path,
/// which would put ids in the field) and request id.
#[derive(Debug, Clone, Copy)]
pub struct RequestSpan;

impl<B> MakeSpan<B> for RequestSpan {
    fn make_span(&mut self, request: &Request<B>) -> Span {
        let route =
            request.extensions().get::<MatchedPath>().map_or("<unmatched>", MatchedPath::as_str);
        let request_id =
            request.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("");
        tracing::info_span!("request", method = %request.method(), route, request_id)
    }
}

/// Logs one line per response with its status and latency.
#[derive(Debug, Clone, Copy)]
pub struct ResponseLine;

impl<B> OnResponse<B> for ResponseLine {
    fn on_response(self, response: &Response<B>, latency: Duration, _span: &Span) {
        tracing::info!(
            status = response.status().as_u16(),
            latency_ms = latency.as_secs_f64() * 1000.0,
            "response"
        );
    }
}

/// The tracing layer of the router. No failure line: a `5xx` is logged
/// where its cause is handled (`error::failure`), and the response line
/// carries its status.
pub fn http_trace_layer() -> TraceLayer<
    SharedClassifier<ServerErrorsAsFailures>,
    RequestSpan,
    (),
    ResponseLine,
    DefaultOnBodyChunk,
    DefaultOnEos,
    (),
> {
    TraceLayer::new_for_http()
        .make_span_with(RequestSpan)
        .on_request(())
        .on_response(ResponseLine)
        .on_failure(())
}
