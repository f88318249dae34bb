//! Logging: the subscriber set up once in `main`, and the per-request span
//! and line (method, route, status, latency, request id).
//!
//! Lines are formatted on the request's thread and written to stdout by a
//! worker thread (`tracing-appender`): a request never waits for the write,
//! which was 7 % of a refusal's samples when it did. The queue holds 128,000
//! lines; past that, lines are dropped (and counted,
//! `pantheon_log_lines_dropped_total`) rather than blocking the server. The
//! guard `init` returns flushes what is queued when it is dropped, at the end
//! of `main`.

use std::io::IsTerminal;
use std::sync::OnceLock;
use std::time::Duration;

use axum::extract::{MatchedPath, Request};
use axum::http::Response;
use tower_http::classify::{ServerErrorsAsFailures, SharedClassifier};
use tower_http::trace::{DefaultOnBodyChunk, DefaultOnEos, MakeSpan, OnResponse, TraceLayer};
use tracing::Span;
use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

/// The writer's count of dropped lines, once logging is set up.
static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Installs the global subscriber from `log.level` (`level`) and
/// `log.format` (`json`, else compact lines), writing
/// through the non-blocking writer. Colours only on a terminal: escape codes
/// in a log file or a collector's pipe are noise to read and bytes to write
/// on every request line.
///
/// # Errors
/// A message naming `log.level` when it is not a valid filter.
pub fn init(level: &str, json: bool) -> Result<WorkerGuard, String> {
    let filter =
        EnvFilter::try_new(level).map_err(|e| format!("configuration error: log.level: {e}"))?;
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .thread_name("pantheon-log")
        .finish(std::io::stdout());
    let _ = DROPPED.set(writer.error_counter());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::stdout().is_terminal());
    let result = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.compact().try_init()
    };
    // A second init (tests) keeps the first subscriber; that is fine.
    drop(result);
    Ok(guard)
}

/// Log lines dropped so far because the writer's queue was full; `None`
/// before [`init`] (in-process tests).
pub fn dropped_lines() -> Option<u64> {
    DROPPED.get().map(|c| u64::try_from(c.dropped_lines()).unwrap_or(u64::MAX))
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
