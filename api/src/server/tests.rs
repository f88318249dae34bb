//! `serve` with a plain router over real TCP: it serves what it is given,
//! and at shutdown it stops accepting, awaits the drain while a request in
//! flight is answered, and returns only after both.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use axum::routing::get;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, oneshot};

use super::*;

const LIMITS: ConnectionLimits = ConnectionLimits {
    header_read_timeout: Duration::from_secs(5),
    idle_timeout: Duration::from_secs(5),
    write_timeout: Duration::from_secs(5),
    max_connections: 16,
};

/// Sends one `GET path` on a connection of its own and reads the response
/// to the server's close.
async fn get_text(addr: std::net::SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

#[tokio::test]
async fn a_plain_router_is_served_and_shutdown_waits_for_the_drain_and_the_request_in_flight() {
    let release = Arc::new(Notify::new());
    let (entered, handler_entered) = oneshot::channel::<()>();
    let entered = Arc::new(std::sync::Mutex::new(Some(entered)));
    let held = release.clone();
    let router = Router::new().route("/", get(|| async { "hello" })).route(
        "/slow",
        get(move || {
            let (held, entered) = (held.clone(), entered.clone());
            async move {
                if let Some(entered) = entered.lock().unwrap().take() {
                    let _ = entered.send(());
                }
                held.notified().await;
                "late"
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let (drain_started, draining_seen) = oneshot::channel::<()>();
    let (finish_drain, drain_may_end) = oneshot::channel::<()>();
    let draining = async move {
        let _ = drain_started.send(());
        let _ = drain_may_end.await;
    };
    let server =
        tokio::spawn(serve(listener, router, LIMITS, async { drop(stopped.await) }, draining));

    assert!(get_text(addr, "/").await.ends_with("hello"));
    let slow = tokio::spawn(get_text(addr, "/slow"));
    handler_entered.await.unwrap();

    stop.send(()).unwrap();
    draining_seen.await.unwrap();
    // Draining: the listener is closed, the request in flight goes on.
    assert!(TcpStream::connect(addr).await.is_err(), "no new connection while draining");
    assert!(!server.is_finished());
    release.notify_one();
    let response = slow.await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("late"));
    assert!(!server.is_finished(), "serve returned before the drain ended");

    finish_drain.send(()).unwrap();
    server.await.unwrap().unwrap();
}
