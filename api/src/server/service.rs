//! The router as one connection's hyper service: a request marks the
//! connection busy, and the end of its response body marks it idle, so the
//! idle clock never runs while a reply (an SSE stream) is still going out.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{Request, Response};
use axum::routing::future::RouteFuture;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use tower::Service;

use super::state::ConnState;

/// The router, serving one connection.
#[derive(Debug, Clone)]
pub(super) struct TrackedService {
    router: Router,
    state: Arc<ConnState>,
}

impl TrackedService {
    pub(super) fn new(router: Router, state: Arc<ConnState>) -> Self {
        Self { router, state }
    }
}

impl hyper::service::Service<Request<Incoming>> for TrackedService {
    type Response = Response<TrackedBody>;
    type Error = Infallible;
    type Future = TrackedResponse;

    fn call(&self, request: Request<Incoming>) -> TrackedResponse {
        self.state.on_request();
        // `Router` is always ready (its `poll_ready` is `Ready`); cloning it
        // is one reference count, as `axum::serve` did per request.
        let mut router = self.router.clone();
        TrackedResponse { inner: router.call(request), end: Some(ResponseEnd(self.state.clone())) }
    }
}

/// Marks the connection idle when dropped.
#[derive(Debug)]
struct ResponseEnd(Arc<ConnState>);

impl Drop for ResponseEnd {
    fn drop(&mut self) {
        self.0.on_response_end();
    }
}

pin_project_lite::pin_project! {
    /// The router's response, its body carrying the [`ResponseEnd`].
    #[allow(missing_debug_implementations)]
    pub(super) struct TrackedResponse {
        #[pin]
        inner: RouteFuture<Infallible>,
        end: Option<ResponseEnd>,
    }
}

impl Future for TrackedResponse {
    type Output = Result<Response<TrackedBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(response) = ready!(this.inner.poll(cx));
        let end = this.end.take();
        Poll::Ready(Ok(response.map(|body| TrackedBody { body, _end: end })))
    }
}

/// A response body that marks its connection idle once hyper drops it.
#[derive(Debug)]
pub(super) struct TrackedBody {
    body: Body,
    _end: Option<ResponseEnd>,
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
