//! `provider.kind = openai` against a fake OpenAI-compatible upstream
//! (`docs/API.md`, "Provider failures"): a streamed reply with its usage, history, each failure before
//! and after the first byte, cancellation reaching the upstream, and the API
//! key kept out of every log line.

use std::time::{Duration, Instant};

use futures::StreamExt;
use pantheon_domain::TokenCounter;
use pantheon_infrastructure::Settings;
use pantheon_infrastructure::settings::{OnDisconnect, ProviderKind, TokenizerKind};
use pantheon_infrastructure::tokenizer::Tiktoken;
use pantheon_tests::fake_openai::{
    Answer, FakeOpenAi, Step, delta, done, error_line, finish, reply, status,
};
use pantheon_tests::logs::LogCapture;
use pantheon_tests::sse::parse_raw;
use pantheon_tests::{Backend, TestApp, expect_json, expect_problem, spawn_app_with};
use reqwest::Method;
use serde_json::{Value, json};

const KEY: &str = "sk-pantheon-test-0123456789abcdef";

on_both_databases!(history_of_earlier_completed_turns_is_sent_oldest_first_capped_at_context_turns);

/// A server whose provider is the fake, with short timeouts, then `adjust`.
pub(crate) async fn spawn_on(
    backend: Backend,
    fake: &FakeOpenAi,
    adjust: impl FnOnce(&mut Settings),
) -> TestApp {
    let base_url = fake.base_url.clone();
    spawn_app_with(backend, move |s| {
        s.provider.kind = ProviderKind::Openai;
        let openai = &mut s.provider.openai;
        openai.base_url = Some(base_url);
        openai.api_key = Some(KEY.into());
        openai.model = Some("fake-model".into());
        openai.system_prompt = Some("You are a test.".into());
        openai.first_byte_timeout_ms = 1_000;
        openai.idle_timeout_ms = 1_000;
        adjust(s);
    })
    .await
}

pub(crate) async fn user_with_session(app: &TestApp) -> (String, String) {
    let (_, token) = app.new_user();
    let session = app.create_session(&token).await["id"].as_str().unwrap().to_owned();
    (token, session)
}

async fn get_turn(app: &TestApp, token: &str, turn: &Value) -> Value {
    let (session, id) = (turn["session_id"].as_str().unwrap(), turn["id"].as_str().unwrap());
    let path = format!("/api/v1/sessions/{session}/turns/{id}");
    expect_json(app.request(Method::GET, &path, token).send().await.unwrap(), 200).await
}

/// `(role, content)` pairs, as [`Seen::messages`] gives them.
fn messages(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(role, content)| ((*role).to_owned(), (*content).to_owned())).collect()
}

const SYSTEM: (&str, &str) = ("system", "You are a test.");

#[tokio::test]
async fn a_streamed_reply_lands_in_the_turn_with_its_usage() {
    // A report at or above Pantheon's own count is taken as sent.
    let fake = FakeOpenAi::start(|_| reply(&["Hello", ",", " world"], 30)).await;
    let app = spawn_on(Backend::Sqlite, &fake, |_| {}).await;
    let (token, session) = user_with_session(&app).await;

    let turn = expect_json(app.submit_turn(&token, &session, "Say hello").await, 201).await;
    assert_eq!(turn["status"], "completed");
    assert_eq!(turn["output"], "Hello, world");
    assert_eq!(turn["finish_reason"], "stop");
    assert_eq!(turn["usage"], json!({"input_tokens": 30, "output_tokens": 3, "total_tokens": 33}));
    assert_eq!(get_turn(&app, &token, &turn).await, turn, "persisted as answered");

    let seen = fake.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].authorization.as_deref(), Some(format!("Bearer {KEY}").as_str()));
    assert_eq!(seen[0].body["model"], "fake-model");
    assert_eq!(seen[0].body["stream"], true);
    assert_eq!(seen[0].body["stream_options"], json!({"include_usage": true}));
    assert_eq!(seen[0].body["max_tokens"], 4_096, "turns.max_output_tokens, by default");
    assert!(seen[0].body.get("max_completion_tokens").is_none(), "one field, as OpenAI wants");
    assert_eq!(seen[0].messages(), messages(&[SYSTEM, ("user", "Say hello")]));
}

#[tokio::test]
async fn a_reply_cut_at_its_length_limit_keeps_length_and_unreported_usage_is_counted() {
    let fake =
        FakeOpenAi::start(|_| Answer::Stream(vec![delta("Once upon"), finish("length"), done()]))
            .await;
    // The deprecated alias still sets the cap.
    let app = spawn_on(Backend::Sqlite, &fake, |s| {
        s.provider.openai.max_output_tokens = Some(2);
        s.rate_limit.min_output_tokens = 1;
    })
    .await;
    let (token, session) = user_with_session(&app).await;
    let turn = expect_json(app.submit_turn(&token, &session, "Tell a story").await, 201).await;
    assert_eq!((&turn["status"], &turn["finish_reason"]), (&json!("completed"), &json!("length")));
    assert_eq!(turn["output"], "Once upon");
    // No usage chunk: the tokenizer's count of the prompt as sent (each
    // message framed, the reply primed) and of the reply.
    let tokens = Tiktoken::new(TokenizerKind::O200k);
    let prompt = (4 + tokens.count("You are a test.")) + (4 + tokens.count("Tell a story")) + 3;
    let output = tokens.count("Once upon");
    assert_eq!(
        turn["usage"],
        json!({"input_tokens": prompt, "output_tokens": output, "total_tokens": prompt + output})
    );
    assert_eq!(fake.seen()[0].body["max_tokens"], 2);
}

async fn history_of_earlier_completed_turns_is_sent_oldest_first_capped_at_context_turns(
    backend: Backend,
) {
    let fake = FakeOpenAi::start(|seen| {
        let input = seen.input();
        if input.starts_with("fail") {
            return status(500, "boom", vec![]);
        }
        reply(&["re: ", &input], 1)
    })
    .await;
    let app = spawn_on(backend, &fake, |s| s.provider.openai.context_turns = 2).await;
    let (token, session) = user_with_session(&app).await;
    for input in ["one", "two", "three"] {
        expect_json(app.submit_turn(&token, &session, input).await, 201).await;
    }
    expect_problem(app.submit_turn(&token, &session, "fail four").await, 502, "upstream_error")
        .await;
    expect_json(app.submit_turn(&token, &session, "five").await, 201).await;

    let seen = fake.seen();
    let first = messages(&[SYSTEM, ("user", "one")]);
    assert_eq!(seen[0].messages(), first, "no history for the first turn");
    let second = messages(&[SYSTEM, ("user", "one"), ("assistant", "re: one"), ("user", "two")]);
    assert_eq!(seen[1].messages(), second);
    let fifth = messages(&[
        SYSTEM,
        ("user", "two"),
        ("assistant", "re: two"),
        ("user", "three"),
        ("assistant", "re: three"),
        ("user", "five"),
    ]);
    assert_eq!(seen[4].messages(), fifth, "the last two completed turns, oldest first");
}

#[tokio::test]
async fn failures_before_the_first_byte_answer_their_status_and_persist_the_turn_failed() {
    let fake = FakeOpenAi::start(|seen| match seen.input().as_str() {
        "401" => status(401, &format!("Incorrect API key provided: {KEY}"), vec![]),
        "403" => status(403, "forbidden", vec![]),
        "429" => status(429, "Rate limit reached", vec![("retry-after", "7".into())]),
        "503" => status(503, "overloaded", vec![]),
        "500" => status(500, "internal", vec![]),
        _ => Answer::Delayed(Duration::from_secs(5), Box::new(reply(&["late"], 1))),
    })
    .await;
    let app =
        spawn_on(Backend::Sqlite, &fake, |s| s.provider.openai.first_byte_timeout_ms = 300).await;
    let (token, session) = user_with_session(&app).await;
    let cases = [
        ("401", 502, "upstream_error", None),
        ("403", 502, "upstream_error", None),
        ("429", 503, "upstream_unavailable", Some("7")),
        ("503", 503, "upstream_unavailable", None),
        ("500", 502, "upstream_error", None),
        ("silent", 504, "upstream_timeout", None),
    ];
    for (input, code, problem, retry_after) in cases {
        let started = Instant::now();
        let response = app.submit_turn(&token, &session, input).await;
        let header = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(header.as_deref(), retry_after, "{input}: Retry-After");
        let body = expect_problem(response, code, problem).await;
        assert!(started.elapsed() < Duration::from_secs(3), "{input}: answered in time");
        assert!(!body.to_string().contains(KEY), "{input}: {body}");
        let persisted = get_turn(&app, &token, &body["turn"]).await;
        assert_eq!(persisted["status"], "failed", "{input}: {persisted}");
        assert_eq!(
            (&persisted["output"], &persisted["error"]["code"]),
            (&json!(""), &json!(problem))
        );
    }
}

#[tokio::test]
async fn failures_after_the_first_byte_fail_the_turn_with_its_partial_output() {
    let fake = FakeOpenAi::start(|seen| {
        let rest = match seen.input().as_str() {
            "error line" => vec![error_line("the model crashed")],
            "truncated" => vec![],
            _ => vec![Step::Stall],
        };
        Answer::Stream([vec![delta("partial")], rest].concat())
    })
    .await;
    let app = spawn_on(Backend::Sqlite, &fake, |s| s.provider.openai.idle_timeout_ms = 300).await;
    let (token, session) = user_with_session(&app).await;
    let cases = [
        ("error line", 502, "upstream_error"),
        ("truncated", 502, "upstream_error"),
        ("stalled", 504, "upstream_timeout"),
    ];
    for (input, code, problem) in cases {
        let body =
            expect_problem(app.submit_turn(&token, &session, input).await, code, problem).await;
        let persisted = get_turn(&app, &token, &body["turn"]).await;
        assert_eq!(persisted["status"], "failed", "{input}: {persisted}");
        assert_eq!(persisted["output"], "partial", "{input}: the partial output is kept");
        assert_eq!(persisted["finish_reason"], "error");
    }
}

#[tokio::test]
async fn a_stalled_upstream_trips_the_idle_timeout_and_the_stream_ends_with_turn_failed() {
    let fake = FakeOpenAi::start(|_| Answer::Stream(vec![delta("partial"), Step::Stall])).await;
    let app = spawn_on(Backend::Sqlite, &fake, |s| s.provider.openai.idle_timeout_ms = 300).await;
    let (token, session) = user_with_session(&app).await;
    let started = Instant::now();
    let path = format!("/api/v1/sessions/{session}/turns/stream");
    let response = app.request(Method::POST, &path, &token).json(&json!({"input": "hi"})).send();
    let whole = tokio::time::timeout(Duration::from_secs(10), response.await.unwrap().text());
    let text = whole.await.expect("the stream ended in time").unwrap();
    assert!(started.elapsed() < Duration::from_secs(3), "the idle timeout fired, not a longer one");
    let events = parse_raw(&text).events;
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names, ["turn.created", "turn.delta", "turn.failed"]);
    let failed = &events[2].data;
    assert_eq!(
        (&failed["error"]["code"], &failed["error"]["status"]),
        (&json!("upstream_timeout"), &json!(504))
    );
    assert_eq!(failed["turn"]["output"], "partial");
    assert_eq!(get_turn(&app, &token, &failed["turn"]).await["status"], "failed");
}

#[tokio::test]
async fn the_upstream_sees_its_connection_closed_when_a_stream_client_leaves_with_cancel() {
    let fake = FakeOpenAi::start(|_| {
        Answer::Stream(vec![delta("partial"), Step::PingForever(Duration::from_millis(50))])
    })
    .await;
    let app =
        spawn_on(Backend::Sqlite, &fake, |s| s.turns.on_disconnect = OnDisconnect::Cancel).await;
    let (token, session) = user_with_session(&app).await;
    let path = format!("/api/v1/sessions/{session}/turns/stream");
    let response = app.request(Method::POST, &path, &token).json(&json!({"input": "hi"})).send();
    let mut body = response.await.unwrap().bytes_stream();
    let mut text = String::new();
    while !text.contains("event: turn.delta") {
        let chunk = tokio::time::timeout(Duration::from_secs(5), body.next()).await;
        let chunk = chunk.expect("a delta in time").expect("the stream goes on").unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let turn = parse_raw(text.split_once("\n\n").unwrap().0).events[0].data["turn"].clone();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(fake.cut_short(), 0, "the upstream reply is alive while the client listens");

    drop(body);
    let deadline = Instant::now() + Duration::from_secs(5);
    while fake.cut_short() == 0 {
        assert!(Instant::now() < deadline, "the upstream connection was never closed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut ended = get_turn(&app, &token, &turn).await;
    while ended["status"] == "in_progress" && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        ended = get_turn(&app, &token, &turn).await;
    }
    assert_eq!((&ended["status"], &ended["output"]), (&json!("cancelled"), &json!("partial")));
}

/// Every turn path that meets the key — success, a refusal that quotes it,
/// an error line that quotes it — logged at debug/trace for Pantheon's
/// crates and the HTTP client. The subscriber is this thread's default and
/// the runtime runs on this thread only, so tests running in parallel in
/// this binary neither add lines here nor see these.
#[test]
fn the_api_key_appears_in_no_log_line() {
    let capture = LogCapture::new(
        "info,pantheon_api=trace,pantheon_domain=trace,pantheon_infrastructure=trace,\
         reqwest=trace,hyper_util=debug",
    );
    let _guard = tracing::dispatcher::set_default(&capture.dispatch);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let fake = FakeOpenAi::start(|seen| match seen.input().as_str() {
            "refused" => status(401, &format!("Incorrect API key provided: {KEY}"), vec![]),
            "quoted" => Answer::Stream(vec![delta("x"), error_line(&format!("bad key {KEY}"))]),
            _ => reply(&["fine"], 1),
        })
        .await;
        let app = spawn_on(Backend::Sqlite, &fake, |_| {}).await;
        let (token, session) = user_with_session(&app).await;
        expect_json(app.submit_turn(&token, &session, "hello").await, 201).await;
        expect_problem(app.submit_turn(&token, &session, "refused").await, 502, "upstream_error")
            .await;
        expect_problem(app.submit_turn(&token, &session, "quoted").await, 502, "upstream_error")
            .await;
        app.stop().await;
    });
    drop(runtime);

    let text = capture.logs.text();
    assert!(text.contains("opening an upstream reply"), "debug lines were captured:\n{text}");
    assert!(text.contains("refused our credentials"), "the cause is logged:\n{text}");
    assert!(text.contains("reported an error mid-reply"), "the cause is logged:\n{text}");
    let leaks: Vec<&str> = text.lines().filter(|l| l.contains(KEY)).collect();
    assert!(leaks.is_empty(), "the key leaked into the logs: {leaks:#?}");
}

/// A provider failure is logged once, where it is answered (not by the
/// provider, the turn task and the HTTP mapping each), with its cause.
/// Synchronous for the reason the test above gives.
#[test]
fn an_upstream_429_is_logged_once_with_its_cause() {
    let capture = LogCapture::new("warn");
    let _guard = tracing::dispatcher::set_default(&capture.dispatch);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let fake = FakeOpenAi::start(|_| {
            status(429, "slow down, quota-marker", vec![("retry-after", "7".into())])
        })
        .await;
        let app = spawn_on(Backend::Sqlite, &fake, |_| {}).await;
        let (token, session) = user_with_session(&app).await;
        let response = app.submit_turn(&token, &session, "hello").await;
        assert_eq!(pantheon_tests::header(&response, "retry-after"), "7");
        expect_problem(response, 503, "upstream_unavailable").await;
        app.stop().await;
    });
    drop(runtime);

    // Nothing else of this test warns: every warning line is about it.
    let text = capture.logs.text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "logged once: {lines:#?}");
    assert!(lines[0].contains("WARN") && lines[0].contains("429"), "{}", lines[0]);
    assert!(lines[0].contains("quota-marker"), "with the upstream's words: {}", lines[0]);
}
