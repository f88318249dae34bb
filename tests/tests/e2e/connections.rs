//! Hostile and stalled clients over real sockets: a head sent a byte at a
//! time, a body that never completes, idle keep-alive connections, a stream
//! whose client stops reading, and more idle connections than the
//! open-files limit allows (on the real binary).

use std::time::{Duration, Instant};

use pantheon_infrastructure::settings::OnDisconnect;
use pantheon_tests::db::count;
use pantheon_tests::sse::parse_raw;
use pantheon_tests::{Backend, TestApp, spawn_app_with};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::shutdown::statuses as turn_statuses;
use crate::streaming::{assert_contract, stream, user_with_session};

fn socket_addr(address: &str) -> String {
    address.trim_start_matches("http://").to_owned()
}

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(socket_addr(&app.address)).await.unwrap()
}

/// Reads one response with a `Content-Length` body: (status, head, body).
async fn read_response(stream: &mut TcpStream) -> (u16, String, String) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed before a response head: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length").then(|| value.trim().parse().unwrap())
        })
        .expect("a content-length");
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed inside a response body");
        buf.extend_from_slice(&chunk[..n]);
    }
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head, String::from_utf8_lossy(&buf[head_end..head_end + length]).to_string())
}

/// Waits (bounded) until the server closes `stream`; returns what it sent
/// before, or panics after `limit`.
async fn wait_closed(stream: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the server did not close the connection within {limit:?}"));
    received
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_sent_a_byte_at_a_time_is_closed_after_header_read_timeout() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.server.header_read_timeout_ms = 500).await;
    let stream = connect(&app).await;
    let started = Instant::now();
    let (mut reader, mut writer) = stream.into_split();
    // A slowloris client: a head that never ends, one byte every 100 ms.
    let drip = tokio::spawn(async move {
        let head = b"GET /healthz HTTP/1.1\r\nHost: pantheon\r\nX-Slow: ";
        let bytes = head.iter().copied().chain(std::iter::repeat(b'a'));
        for byte in bytes.take(600) {
            if writer.write_all(&[byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut received = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), reader.read_to_end(&mut received))
        .await
        .expect("closed within 5 s");
    let lived = started.elapsed();
    assert!(closed.is_ok() || received.is_empty());
    assert!(received.is_empty(), "no response to a head that never completed: {received:?}");
    assert!(lived >= Duration::from_millis(450), "closed after {lived:?}, before the timeout");
    assert!(lived < Duration::from_millis(1500), "closed after {lived:?}, timeout 500 ms");
    drip.abort();
}

async fn rate_limit_remaining(app: &TestApp, token: &str) -> Value {
    let response =
        app.request(reqwest::Method::GET, "/api/v1/rate-limit", token).send().await.unwrap();
    let body = pantheon_tests::read_json(response).await;
    body["windows"].clone()
}

/// Sends `path` a head announcing 100 body bytes and only part of them.
async fn send_partial_body(app: &TestApp, path: &str, token: &str) -> TcpStream {
    let mut stream = connect(app).await;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: pantheon\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"input\": \"hel"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

async fn a_body_that_never_completes_gets_408_and_changes_nothing(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.server.body_read_timeout_ms = 500).await;
    let (token, session) = user_with_session(&app).await;
    let limits_before = rate_limit_remaining(&app, &token).await;
    let (sessions_before, turns_before) =
        (count(&app.db, "sessions").await, count(&app.db, "turns").await);

    for path in [
        format!("/api/v1/sessions/{session}/turns"),
        format!("/api/v1/sessions/{session}/turns/stream"),
        "/api/v1/sessions".to_owned(),
    ] {
        let started = Instant::now();
        let mut stream = send_partial_body(&app, &path, &token).await;
        let (status, head, body) =
            tokio::time::timeout(Duration::from_secs(5), read_response(&mut stream))
                .await
                .expect("an answer within 5 s");
        let took = started.elapsed();
        assert_eq!(status, 408, "{path}: {head}{body}");
        assert!(
            head.to_ascii_lowercase().contains("content-type: application/problem+json"),
            "{head}"
        );
        let problem: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(problem["code"], "request_timeout", "{problem}");
        assert_eq!(problem["status"], 408);
        assert!(took >= Duration::from_millis(450), "{path}: answered after {took:?}");
        assert!(
            took < Duration::from_millis(1500),
            "{path}: answered after {took:?}, timeout 500 ms"
        );
        // The unread rest of the body cannot be told from a next request.
        wait_closed(&mut stream, Duration::from_secs(2)).await;
    }

    assert_eq!(count(&app.db, "sessions").await, sessions_before, "no session created");
    assert_eq!(count(&app.db, "turns").await, turns_before, "no turn created");
    assert_eq!(rate_limit_remaining(&app, &token).await, limits_before, "nothing counted");
}

on_both_databases!(a_body_that_never_completes_gets_408_and_changes_nothing);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_idle_timeout_not_the_head_timeout() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.server.idle_timeout_secs = 1;
        s.server.header_read_timeout_ms = 300;
    })
    .await;
    let mut stream = connect(&app).await;
    for _ in 0..2 {
        stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: pantheon\r\n\r\n").await.unwrap();
        let (status, _, _) = read_response(&mut stream).await;
        assert_eq!(status, 200, "the connection is kept alive between requests");
    }
    let idle_from = Instant::now();
    let after = wait_closed(&mut stream, Duration::from_secs(5)).await;
    let idle = idle_from.elapsed();
    assert!(after.is_empty(), "nothing sent on close: {after:?}");
    assert!(idle >= Duration::from_millis(900), "closed after {idle:?} idle, before idle_timeout");
    assert!(idle < Duration::from_millis(2500), "closed after {idle:?} idle, idle_timeout 1 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_keeps_sending_outlives_idle_timeout() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.server.idle_timeout_secs = 1;
        s.server.header_read_timeout_ms = 300;
        s.provider.builtin.chunk_delay_ms = 100;
    })
    .await;
    let (token, session) = user_with_session(&app).await;
    let input = vec!["word"; 30].join(" ");
    let started = Instant::now();
    let response = stream(&app, &token, &session, &input).await;
    let raw = parse_raw(&response.text().await.unwrap());
    let took = started.elapsed();
    let terminal = assert_contract(&raw.events);
    assert_eq!(terminal.event, "turn.completed", "{terminal:?}");
    assert!(took > Duration::from_secs(2), "the stream lasted {took:?}, longer than idle_timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_client_stops_reading_is_dropped_after_write_timeout() {
    let app = spawn_app_with(Backend::Postgres, |s| {
        s.turns.write_timeout_secs = 1;
        s.turns.on_disconnect = OnDisconnect::Cancel;
        // 60,000 events (about 10 MB) over 60 s: far more than the socket
        // buffers hold, even as the kernel grows the server's.
        s.turns.max_input_chars = 600_000;
        // The whole echo: far past the default cap of 4,096 tokens.
        s.turns.max_output_tokens = Some(100_000);
        s.provider.builtin.chunk_delay_ms = 1;
        // An event per chunk: coalesced, the reply fits the buffers.
        s.turns.coalesce_ms = 0;
    })
    .await;
    let (token, session) = user_with_session(&app).await;
    let input = vec!["overflow"; 60_000].join(" ");
    let body = serde_json::json!({ "input": input }).to_string();
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut client = socket.connect(socket_addr(&app.address).parse().unwrap()).await.unwrap();
    let request = format!(
        "POST /api/v1/sessions/{session}/turns/stream HTTP/1.1\r\nHost: pantheon\r\n\
         Authorization: Bearer {token}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    client.write_all(request.as_bytes()).await.unwrap();
    let started = Instant::now();
    // The client reads nothing from here on.
    let mut statuses = Vec::new();
    while started.elapsed() < Duration::from_secs(50) {
        statuses = turn_statuses(&app.db).await;
        if statuses.iter().any(|s| s != "in_progress") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = started.elapsed();
    assert_eq!(statuses, ["cancelled"], "the turn followed on_disconnect = cancel");
    assert!(took >= Duration::from_secs(1), "ended after {took:?}, before write_timeout");
    // The stall only begins once the kernel's buffers are full, and on
    // loopback it grows the server's send buffer to megabytes first: the
    // bound is the reply's own length, not write_timeout.
    assert!(took < Duration::from_secs(45), "ended after {took:?}; the reply would take 60 s");
    drop(client);
}

/// Keep-alive connections that each completed one request and then sit idle.
async fn idle_connections(address: &str, n: usize) -> Vec<TcpStream> {
    let mut open = Vec::with_capacity(n);
    for _ in 0..n {
        let mut stream = TcpStream::connect(address).await.unwrap();
        stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: pantheon\r\n\r\n").await.unwrap();
        let (status, _, _) =
            tokio::time::timeout(Duration::from_secs(5), read_response(&mut stream))
                .await
                .expect("each idle-to-be connection is answered");
        assert_eq!(status, 200);
        open.push(stream);
    }
    open
}

/// Opens 1,100 idle keep-alive connections to a server limited to 1,024
/// open files, then asks as a new client; returns how long its answer took
/// and the server's output.
async fn bystander_beside_idle_connections(max_connections: Option<&str>) -> (Duration, String) {
    // This process holds the 1,100 client sockets itself.
    rlimit::increase_nofile_limit(4096).unwrap();
    let database = pantheon_tests::TestDatabase::create(Backend::Postgres).await;
    let mut command = pantheon_tests::process::ServerCommand::new(&database.url);
    command.nofile(1024);
    if let Some(max) = max_connections {
        command.set("PANTHEON__SERVER__MAX_CONNECTIONS", max);
    }
    let server = command.spawn().await;
    let address = format!("127.0.0.1:{}", server.port());

    let started = Instant::now();
    let idle = idle_connections(&address, 1100).await;
    eprintln!("1,100 idle keep-alive connections opened in {:?}", started.elapsed());

    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let asked = Instant::now();
    let response = client
        .get(format!("{}/healthz", server.address()))
        .send()
        .await
        .unwrap_or_else(|e| panic!("the bystander was not answered: {e}\n{}", server.output()));
    let answered = asked.elapsed();
    eprintln!("bystander answered in {answered:?}");
    assert_eq!(response.status(), 200);
    assert!(answered < Duration::from_secs(5));
    drop(idle);
    (answered, server.output())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bystander_is_served_while_idle_connections_exceed_the_open_files_limit() {
    let (_, output) = bystander_beside_idle_connections(None).await;
    assert!(!output.contains("cannot accept"), "the cap kept accepts from failing:\n{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cap_above_the_open_files_limit_logs_accept_errors_once_and_still_serves() {
    let (_, output) = bystander_beside_idle_connections(Some("5000")).await;
    assert!(output.contains("more than the open-files limit leaves room for"), "{output}");
    let first = output.lines().filter(|l| l.contains("cannot accept connections")).count();
    let summaries = output.lines().filter(|l| l.contains("accept errors since")).count();
    assert_eq!(first, 1, "one warning when accepts start failing:\n{output}");
    assert!(summaries <= 10, "{summaries} summaries: at most one per 10 s:\n{output}");
}
