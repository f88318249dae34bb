//! A fake OpenAI-compatible upstream for the `openai` provider's tests: an
//! axum server on a free loopback port answering `POST /v1/chat/completions`
//! by a script. It records what it was sent (bodies, `Authorization`), and
//! notices when a streamed body is dropped before its end — which is how a
//! server sees its client close the connection.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

/// How the fake answers one request.
#[derive(Debug, Clone)]
pub enum Answer {
    /// `200 text/event-stream`, the body made of these steps.
    Stream(Vec<Step>),
    /// A plain response (`application/json` body).
    Status {
        /// The status code.
        status: u16,
        /// Extra headers.
        headers: Vec<(&'static str, String)>,
        /// The body.
        body: String,
    },
    /// Nothing for this long (no response head), then the answer.
    Delayed(Duration, Box<Answer>),
}

/// A piece of a streamed body.
#[derive(Debug, Clone)]
pub enum Step {
    /// Raw text, sent as one chunk.
    Send(String),
    /// A pause.
    Pause(Duration),
    /// A `: ping` comment at this interval, forever (alive, saying nothing).
    PingForever(Duration),
    /// Silence, forever.
    Stall,
    /// This raw text, again and again, forever: a reply that never ends,
    /// sent as fast as it is read.
    Repeat(String),
}

/// A `chat.completion.chunk` carrying `text`.
pub fn delta(text: &str) -> Step {
    data(json!({"object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]}))
}

/// `text` as a delta, again and again, forever.
pub fn delta_forever(text: &str) -> Step {
    match delta(text) {
        Step::Send(raw) => Step::Repeat(raw),
        other => other,
    }
}

/// The chunk with the finish reason.
pub fn finish(reason: &str) -> Step {
    data(json!({"object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": {}, "finish_reason": reason}]}))
}

/// The usage chunk (`stream_options.include_usage`).
pub fn usage(prompt: i64, completion: i64) -> Step {
    data(json!({"object": "chat.completion.chunk", "choices": [], "usage":
        {"prompt_tokens": prompt, "completion_tokens": completion,
         "total_tokens": prompt + completion}}))
}

/// An error object in the stream.
pub fn error_line(message: &str) -> Step {
    data(json!({"error": {"message": message, "type": "server_error"}}))
}

/// `data: [DONE]`.
pub fn done() -> Step {
    Step::Send("data: [DONE]\n\n".into())
}

fn data(value: Value) -> Step {
    Step::Send(format!("data: {value}\n\n"))
}

/// A whole, well-formed reply: the words as deltas, `stop`, usage, `[DONE]`.
pub fn reply(words: &[&str], prompt_tokens: i64) -> Answer {
    let mut steps: Vec<Step> = words.iter().map(|w| delta(w)).collect();
    steps.extend([finish("stop"), usage(prompt_tokens, words.len() as i64), done()]);
    Answer::Stream(steps)
}

/// A plain error response, with a JSON body in OpenAI's shape.
pub fn status(code: u16, message: &str, headers: Vec<(&'static str, String)>) -> Answer {
    let body = json!({"error": {"message": message, "type": "error"}}).to_string();
    Answer::Status { status: code, headers, body }
}

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The JSON body.
    pub body: Value,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
}

impl Seen {
    /// The messages as `(role, content)`.
    pub fn messages(&self) -> Vec<(String, String)> {
        self.body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m["role"].as_str().unwrap().into(), m["content"].as_str().unwrap().into()))
            .collect()
    }

    /// The content of the last message (the new input).
    pub fn input(&self) -> String {
        self.messages().last().map(|(_, c)| c.clone()).unwrap_or_default()
    }
}

type Script = Arc<dyn Fn(&Seen) -> Answer + Send + Sync>;

#[derive(Clone)]
struct Shared {
    script: Script,
    seen: Arc<Mutex<Vec<Seen>>>,
    cut_short: Arc<AtomicUsize>,
}

/// The running fake; stops when dropped.
#[derive(Debug)]
pub struct FakeOpenAi {
    /// What `provider.openai.base_url` should be (`http://127.0.0.1:<port>/v1`).
    pub base_url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    cut_short: Arc<AtomicUsize>,
    server: JoinHandle<()>,
}

impl FakeOpenAi {
    /// Starts a fake that answers every request by `script`.
    pub async fn start(script: impl Fn(&Seen) -> Answer + Send + Sync + 'static) -> Self {
        let shared =
            Shared { script: Arc::new(script), seen: Arc::default(), cut_short: Arc::default() };
        let (seen, cut_short) = (shared.seen.clone(), shared.cut_short.clone());
        let app = Router::new().route("/v1/chat/completions", post(completions)).with_state(shared);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}/v1", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { base_url, seen, cut_short, server }
    }

    /// Every request received so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// How many streamed bodies were dropped before their last step: each
    /// is a connection the client closed mid-reply.
    pub fn cut_short(&self) -> usize {
        self.cut_short.load(Ordering::SeqCst)
    }
}

impl Drop for FakeOpenAi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn completions(
    State(shared): State<Shared>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let authorization = headers.get(header::AUTHORIZATION).map(|v| v.to_str().unwrap().to_owned());
    let seen = Seen { body, authorization };
    shared.seen.lock().unwrap().push(seen.clone());
    let mut answer = (shared.script)(&seen);
    while let Answer::Delayed(wait, then) = answer {
        tokio::time::sleep(wait).await;
        answer = *then;
    }
    match answer {
        Answer::Status { status, headers, body } => {
            let mut response = (
                StatusCode::from_u16(status).unwrap(),
                [(header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response();
            for (name, value) in headers {
                response.headers_mut().insert(name, value.parse().unwrap());
            }
            response
        }
        Answer::Stream(steps) => {
            let guard = CutShort { counter: shared.cut_short.clone(), finished: false };
            let body = futures::stream::unfold((VecDeque::from(steps), guard), next_chunk);
            ([(header::CONTENT_TYPE, "text/event-stream")], Body::from_stream(body)).into_response()
        }
        Answer::Delayed(..) => unreachable!("unwrapped above"),
    }
}

async fn next_chunk(
    (mut steps, mut guard): (VecDeque<Step>, CutShort),
) -> Option<(Result<Bytes, Infallible>, (VecDeque<Step>, CutShort))> {
    loop {
        match steps.pop_front() {
            None => {
                guard.finished = true;
                return None;
            }
            Some(Step::Send(text)) => return Some((Ok(Bytes::from(text)), (steps, guard))),
            Some(Step::Pause(wait)) => tokio::time::sleep(wait).await,
            Some(Step::PingForever(every)) => {
                tokio::time::sleep(every).await;
                steps.push_front(Step::PingForever(every));
                return Some((Ok(Bytes::from_static(b": ping\n\n")), (steps, guard)));
            }
            Some(Step::Stall) => futures::future::pending::<()>().await,
            Some(Step::Repeat(text)) => {
                steps.push_front(Step::Repeat(text.clone()));
                return Some((Ok(Bytes::from(text)), (steps, guard)));
            }
        }
    }
}

/// Counts a body dropped before its end.
struct CutShort {
    counter: Arc<AtomicUsize>,
    finished: bool,
}

impl Drop for CutShort {
    fn drop(&mut self) {
        if !self.finished {
            self.counter.fetch_add(1, Ordering::SeqCst);
        }
    }
}
