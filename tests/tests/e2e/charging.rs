//! What a turn is charged, and how long a client can hold it (README
//! "Token budgets", `docs/API.md` "Streaming"): a prompt sent upstream is
//! charged whatever ends the turn, a provider's usage is never believed
//! below Pantheon's own count, and a client that reads nothing cannot keep
//! its turn running past `max_duration_secs` or the shutdown.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pantheon_domain::{ManualClock, TokenCounter};
use pantheon_infrastructure::Settings;
use pantheon_infrastructure::auth::TokenMinter;
use pantheon_infrastructure::settings::{AuthSettings, ProviderKind};
use pantheon_tests::fake_openai::{
    Answer, FakeOpenAi, delta, delta_forever, done, finish, reply, usage,
};
use pantheon_tests::process::ServerCommand;
use pantheon_tests::{Backend, TestDatabase, expect_json, expect_problem, spawn_app_with};
use reqwest::Method;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

use crate::shutdown::statuses;
use crate::tokens::{
    NOW, app, bucket_settles_at, tokens, tokens_left, total, user_and_session, words,
};

const SYSTEM: &str = "You are a test.";
const LIMIT: i64 = 100_000;

/// The `openai` provider against `fake`.
fn upstream(s: &mut Settings, fake: &FakeOpenAi) {
    s.provider.kind = ProviderKind::Openai;
    s.provider.openai.base_url = Some(fake.base_url.clone());
    s.provider.openai.model = Some("fake-model".into());
    s.provider.openai.system_prompt = Some(SYSTEM.into());
}

/// The prompt of `input` as sent upstream, by the server's tokenizer: each
/// message framed (4), the reply primed (3).
fn prompt_tokens(input: &str) -> i64 {
    let t = tokens();
    ((4 + t.count(SYSTEM)) + (4 + t.count(input)) + 3) as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_whose_upstream_never_sent_its_head_is_charged_its_prompt() {
    let fake = FakeOpenAi::start(|_| {
        Answer::Delayed(Duration::from_secs(5), Box::new(reply(&["late"], 1)))
    })
    .await;
    let clock = Arc::new(ManualClock::at(NOW));
    let app = app(&clock, |s| {
        s.rate_limit.tokens_per_minute = Some(LIMIT as u32);
        upstream(s, &fake);
        s.provider.openai.first_byte_timeout_ms = 300;
    })
    .await;
    let (user, token, session) = user_and_session(&app).await;
    let input = words(300);
    let prompt = prompt_tokens(&input);
    let response = app.submit_turn(&token, &session, &input).await;
    let body = expect_problem(response, 504, "upstream_timeout").await;
    let path = format!("/api/v1/sessions/{session}/turns/{}", body["turn"]["id"].as_str().unwrap());
    let turn =
        expect_json(app.request(Method::GET, &path, &token).send().await.unwrap(), 200).await;
    assert_eq!(turn["status"], "failed");
    assert_eq!(
        turn["usage"],
        json!({"input_tokens": prompt, "output_tokens": 0, "total_tokens": prompt}),
        "the prompt reached the upstream: charged"
    );
    bucket_settles_at(&user, NOW, prompt).await;
    let peek = app.request(Method::GET, "/api/v1/rate-limit", &token).send().await.unwrap();
    assert_eq!(tokens_left(&peek), LIMIT - prompt, "refunded all but the prompt");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_reports_zero_tokens_is_charged_what_was_counted() {
    let mut steps: Vec<_> = (0..200).map(|_| delta(" token")).collect();
    steps.extend([finish("stop"), usage(0, 0), done()]);
    let fake = FakeOpenAi::start(move |_| Answer::Stream(steps.clone())).await;
    let clock = Arc::new(ManualClock::at(NOW));
    let app = app(&clock, |s| {
        s.rate_limit.tokens_per_minute = Some(LIMIT as u32);
        upstream(s, &fake);
    })
    .await;
    let (user, token, session) = user_and_session(&app).await;
    let input = "Say token two hundred times";
    let turn = expect_json(app.submit_turn(&token, &session, input).await, 201).await;
    assert_eq!(turn["output"], " token".repeat(200));
    let (prompt, output) = (prompt_tokens(input), tokens().count(&" token".repeat(200)) as i64);
    assert_eq!(
        turn["usage"],
        json!({"input_tokens": prompt, "output_tokens": output, "total_tokens": prompt + output}),
        "a report of 0 is floored at the count"
    );
    assert!(output >= 200);
    bucket_settles_at(&user, NOW, total(&turn)).await;
}

/// Starts a streamed turn and never reads its response, from a socket with
/// the smallest receive buffer, so the server's writes stall early.
async fn unread_stream(port: u16, token: &str, session: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4_096).unwrap();
    let mut connection = socket.connect(([127, 0, 0, 1], port).into()).await.unwrap();
    let body = json!({ "input": "Write forever" }).to_string();
    let request = format!(
        "POST /api/v1/sessions/{session}/turns/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\
         Authorization: Bearer {token}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    connection.write_all(request.as_bytes()).await.unwrap();
    connection
}

/// Waits (bounded) until the database holds a turn: it is committed and
/// generating.
async fn committed(db: &sea_orm::DatabaseConnection) {
    let started = Instant::now();
    while statuses(db).await.is_empty() {
        assert!(started.elapsed() < Duration::from_secs(10), "no turn was committed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An upstream that streams a reply forever, as fast as it is read.
async fn endless() -> FakeOpenAi {
    FakeOpenAi::start(|_| Answer::Stream(vec![delta_forever("lorem ipsum dolor sit amet ")])).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_client_that_reads_nothing_cannot_hold_its_turn_past_max_duration() {
    const MAX_DURATION: Duration = Duration::from_secs(2);
    let fake = endless().await;
    let app = spawn_app_with(Backend::Postgres, |s| {
        upstream(s, &fake);
        s.turns.max_duration_secs = MAX_DURATION.as_secs();
        s.turns.max_output_tokens = Some(1_000_000_000);
        // The write timeout would free the turn only much later.
        s.turns.write_timeout_secs = 120;
    })
    .await;
    let (_, token) = app.new_user();
    let session = app.create_session(&token).await["id"].as_str().unwrap().to_owned();
    let port: u16 = app.address.rsplit(':').next().unwrap().parse().unwrap();
    let _unread = unread_stream(port, &token, &session).await;
    committed(&app.db).await;
    let since = Instant::now();
    while statuses(&app.db).await == ["in_progress"] {
        assert!(
            since.elapsed() < MAX_DURATION + Duration::from_secs(1),
            "still in progress {:?} after its commit, max_duration {MAX_DURATION:?}",
            since.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(statuses(&app.db).await, ["failed"], "ended at its deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigterm_a_turn_whose_client_reads_nothing_is_persisted_before_the_exit() {
    const GRACE_SECS: u64 = 1;
    let fake = endless().await;
    let database = TestDatabase::create(Backend::Postgres).await;
    let secret = format!("test-secret-{}", uuid::Uuid::new_v4());
    let mut command = ServerCommand::new(&database.url);
    command
        .set("PANTHEON__AUTH__JWT_SECRET", &secret)
        .set("PANTHEON__RATE_LIMIT__ENABLED", "false")
        .set("PANTHEON__PROVIDER__KIND", "openai")
        .set("PANTHEON__PROVIDER__OPENAI__BASE_URL", &fake.base_url)
        .set("PANTHEON__PROVIDER__OPENAI__MODEL", "fake-model")
        .set("PANTHEON__TURNS__MAX_OUTPUT_TOKENS", "1000000000")
        .set("PANTHEON__TURNS__WRITE_TIMEOUT_SECS", "120")
        .set("PANTHEON__SERVER__SHUTDOWN_GRACE_SECS", &GRACE_SECS.to_string());
    let mut server = command.spawn().await;
    let minter =
        TokenMinter::new(&AuthSettings { jwt_secret: secret, ..AuthSettings::default() }).unwrap();
    let token = minter.mint("unread-sigterm", None, Duration::from_secs(60)).unwrap();
    let session = server.create_session(&reqwest::Client::new(), &token).await;
    let _unread = unread_stream(server.port(), &token, &session).await;
    let db = database.connect().await;
    committed(&db).await;

    let started = Instant::now();
    let status = server.terminate().await;
    let took = started.elapsed();
    assert!(status.success(), "exit status {status}:\n{}", server.output());
    assert!(took < Duration::from_secs(GRACE_SECS + 5), "exited {took:?} after SIGTERM");
    assert_eq!(statuses(&db).await, ["incomplete"], "nothing left in progress");
}
