//! The metrics listener: `GET /metrics` (and `HEAD`) on
//! `server.metrics_addr`, nothing else — every other path is a `404`, any
//! other method a `405` — and never the API's port, so the API's listener
//! and limits see no scrape and scrapers reach no API route.
//!
//! A handful of connections at once, each closed after
//! [`IDLE_TIMEOUT`] without a request; the task is a background task of the
//! composition root, and its connections end with it.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use super::Metrics;

/// Most scrape connections at once; more are closed at accept.
const MAX_CONNECTIONS: usize = 16;
/// A connection waiting this long for a request head is closed (longer
/// than Prometheus's default 15 s scrape interval, so it can reuse one).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// The pause after a failed accept (e.g. out of files), so the loop does
/// not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `metrics` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    let mut connections = JoinSet::new();
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(IDLE_TIMEOUT);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) if connections.len() < MAX_CONNECTIONS => {
                    let metrics = metrics.clone();
                    let service = service_fn(move |request| {
                        let response = answer(&metrics, &request);
                        async move { Ok::<_, Infallible>(response) }
                    });
                    let connection = builder.serve_connection(TokioIo::new(stream), service);
                    connections.spawn(async move {
                        if let Err(error) = connection.await {
                            tracing::debug!(error = %error, "metrics connection ended");
                        }
                    });
                }
                Ok(_) => tracing::debug!("metrics listener at its connection cap; closing"),
                Err(error) => {
                    tracing::debug!(error = %error, "metrics listener accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

fn answer<B>(metrics: &Metrics, request: &Request<B>) -> Response<Body> {
    if request.uri().path() != "/metrics" {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    }
    match *request.method() {
        Method::GET => {
            let mut response = Response::new(Body::from(metrics.render()));
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
            response
        }
        Method::HEAD => {
            let mut response = Response::new(Body::empty());
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
            response
        }
        _ => {
            let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            response
        }
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::from(text));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}
