//! What a request's head and body may carry: request ids bounded before
//! they are echoed and logged, a head past hyper's buffer refused `431`, a
//! body sized for the longest valid JSON of a valid input, and a client
//! that half-closes its socket after sending taken for gone.

use pantheon_tests::logs::LogCapture;
use pantheon_tests::{Backend, TestApp, expect_problem, spawn_app};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::streaming::user_with_session;

fn socket_addr(app: &TestApp) -> String {
    app.address.trim_start_matches("http://").to_owned()
}

/// Everything the server sends until it closes the connection (or resets it).
async fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let mut chunk = [0u8; 8192];
    let read = async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(20), read).await.unwrap();
    String::from_utf8_lossy(&received).into_owned()
}

fn status_of(response: &str) -> u16 {
    response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

#[test]
fn request_ids_longer_than_128_or_not_visible_ascii_are_replaced_and_never_logged() {
    let capture = LogCapture::new("info");
    let _guard = tracing::dispatcher::set_default(&capture.dispatch);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let app = spawn_app(Backend::Sqlite).await;
        let longest = "k".repeat(128);
        let echoed = app
            .client
            .get(app.url("/healthz"))
            .header("x-request-id", &longest)
            .send()
            .await
            .unwrap();
        assert_eq!(echoed.headers()["x-request-id"], longest.as_str(), "128 characters are kept");

        let huge = format!("huge-{}", "x".repeat(10_000));
        for sent in [huge.as_str(), &"y".repeat(129), "two words", "tab\there"] {
            let response = app
                .client
                .get(app.url("/api/v1/sessions"))
                .header("x-request-id", sent)
                .send()
                .await
                .unwrap();
            let fresh = response.headers()["x-request-id"].to_str().unwrap().to_owned();
            assert_ne!(fresh, sent);
            assert!(
                uuid::Uuid::parse_str(&fresh).is_ok(),
                "a fresh id replaces {sent:.20}…: {fresh}"
            );
            let body = expect_problem(response, 401, "unauthenticated").await;
            assert_eq!(body["request_id"], fresh.as_str(), "the problem carries the fresh id");
            let logged = capture.logs.lines_with(&fresh);
            assert!(!logged.is_empty(), "the fresh id is logged");
        }
        assert!(capture.logs.lines_with("huge-xxxx").is_empty(), "the refused id is never logged");
        app.stop().await;
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_over_64_kib_is_refused_431_and_one_under_is_served() {
    let app = spawn_app(Backend::Sqlite).await;
    let head = |pad: usize| {
        format!(
            "GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\nx-pad: {}\r\nconnection: close\r\n\r\n",
            "p".repeat(pad)
        )
    };
    let mut under = TcpStream::connect(socket_addr(&app)).await.unwrap();
    under.write_all(head(60 * 1024).as_bytes()).await.unwrap();
    assert_eq!(status_of(&read_until_closed(&mut under).await), 200);

    // The server answers and closes before it has read the whole head, so
    // the kernel may reset the connection and lose the answer before the
    // client reads it: a few tries, every one refused, at least one 431.
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let mut over = TcpStream::connect(socket_addr(&app)).await.unwrap();
        let _ = over.write_all(head(100 * 1024).as_bytes()).await;
        let answer = read_until_closed(&mut over).await;
        assert!(answer.is_empty() || status_of(&answer) == 431, "{answer:.200}");
        statuses.push(status_of(&answer));
    }
    assert!(statuses.contains(&431), "{statuses:?}");
    let healthy = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(healthy.status(), 200, "the server goes on serving");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_emoji_escaped_as_surrogate_pairs_are_a_valid_turn() {
    let app = spawn_app(Backend::Sqlite).await;
    assert_eq!(app.settings.turns.max_input_chars, 32_000);
    let (token, session) = user_with_session(&app).await;
    // As Python's json.dumps writes it: 12 bytes a character.
    let body = format!(r#"{{"input": "{}"}}"#, r"\ud83d\ude42".repeat(20_000));
    assert!(body.len() > 32_000 * 6 + 4096, "over the old six-bytes-a-character limit");
    let response = app
        .request(reqwest::Method::POST, &format!("/api/v1/sessions/{session}/turns"), &token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let turn: Value = response.json().await.unwrap();
    assert_eq!(turn["input"].as_str().unwrap().chars().count(), 20_000);
    assert!(turn["input"].as_str().unwrap().chars().all(|c| c == '\u{1F642}'));
    app.stop().await;
}

/// The server takes a FIN for a client that left (see `serve`): it cannot
/// tell a half-close from a hang-up, and treating both as leaving is what
/// stops a silent stream's upstream request at once under `on_disconnect =
/// cancel`. This pins the documented cost: a half-closed request gets no
/// answer, and the server goes on serving the same user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_half_closes_after_its_request_is_taken_for_gone() {
    let app = spawn_app(Backend::Sqlite).await;
    let (token, session) = user_with_session(&app).await;
    let body = r#"{"input": "half closed"}"#;
    let request = format!(
        "POST /api/v1/sessions/{session}/turns HTTP/1.1\r\nhost: 127.0.0.1\r\n\
         authorization: Bearer {token}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut stream = TcpStream::connect(socket_addr(&app)).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.shutdown().await.unwrap();
    let answer = read_until_closed(&mut stream).await;
    assert_eq!(answer, "", "a half-closed client is taken for gone: no answer");
    let next = app.submit_turn(&token, &session, "after").await;
    assert_eq!(next.status(), 201, "the server goes on serving the same user");
    app.stop().await;
}
