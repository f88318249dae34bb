//! A fake OpenAI-compatible upstream for the `openai` provider's tests: an
//! axum server on a free loopback port answering `POST /v1/chat/completions`
//! by a script. It records what it was sent (bodies, `Authorization`), and
//! notices when a streamed body is dropped before its end — which is how a
//! server sees its client close the connection.
//!
//! Tool use is scripted as a queue of [`Round`]s ([`FakeOpenAi::rounds`],
//! [`FakeOpenAi::queue`]): each request takes the next one (calls to make,
//! streamed in fragments as OpenAI streams them, or a text reply), and the
//! script answers once the queue is empty.

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

mod capacity;
mod tools;

pub use capacity::{HardCapacity, Held};
use tools::Queue;
pub use tools::{Round, tool_calls};

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
    /// The answer, holding `Held` (a request counted in flight by a
    /// [`HardCapacity`]) until its streamed body ends or is dropped (or,
    /// for any other answer, until it is sent).
    Holding(Held, Box<Answer>),
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
    /// The messages as `(role, content)` (a `null` content, an assistant
    /// message that only called tools, as empty).
    pub fn messages(&self) -> Vec<(String, String)> {
        self.message_values()
            .iter()
            .map(|m| {
                let content = m["content"].as_str().unwrap_or_default();
                (m["role"].as_str().unwrap().into(), content.into())
            })
            .collect()
    }

    /// The content of the last user message (the new input).
    pub fn input(&self) -> String {
        let messages = self.messages();
        let user = messages.iter().rev().find(|(role, _)| role == "user");
        user.map(|(_, c)| c.clone()).unwrap_or_default()
    }

    /// The messages as sent.
    pub fn message_values(&self) -> Vec<Value> {
        self.body["messages"].as_array().cloned().unwrap_or_default()
    }
}

type Script = Arc<dyn Fn(&Seen) -> Answer + Send + Sync>;

#[derive(Clone)]
struct Shared {
    script: Script,
    queue: Arc<Mutex<Queue>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    cut_short: Arc<AtomicUsize>,
}

/// The running fake; stops when dropped.
#[derive(Debug)]
pub struct FakeOpenAi {
    /// What `provider.openai.base_url` should be (`http://127.0.0.1:<port>/v1`).
    pub base_url: String,
    queue: Arc<Mutex<Queue>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    cut_short: Arc<AtomicUsize>,
    server: JoinHandle<()>,
}

impl FakeOpenAi {
    /// Starts a fake that answers every request by `script` (once the
    /// queue of rounds, empty to begin with, is).
    pub async fn start(script: impl Fn(&Seen) -> Answer + Send + Sync + 'static) -> Self {
        let shared = Shared {
            script: Arc::new(script),
            queue: Arc::default(),
            seen: Arc::default(),
            cut_short: Arc::default(),
        };
        let (queue, seen, cut_short) =
            (shared.queue.clone(), shared.seen.clone(), shared.cut_short.clone());
        let app = Router::new().route("/v1/chat/completions", post(completions)).with_state(shared);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}/v1", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { base_url, queue, seen, cut_short, server }
    }

    /// Starts a fake that answers successive requests by `rounds`, in
    /// order, and any request after the last with a `500`.
    pub async fn rounds(rounds: Vec<Round>) -> Self {
        let fake =
            Self::start(|_| status(500, "the fake has no more scripted rounds", vec![])).await;
        for round in rounds {
            fake.queue(round);
        }
        fake
    }

    /// Queues `round`: it answers the first request after those already
    /// queued, ahead of the script.
    pub fn queue(&self, round: Round) {
        self.queue.lock().unwrap().rounds.push_back(round);
    }

    /// How many requests the fake received.
    pub fn calls(&self) -> usize {
        self.seen.lock().unwrap().len()
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
    // Under the one lock, the n-th request recorded takes the n-th round.
    let queued = {
        let mut all = shared.seen.lock().unwrap();
        all.push(seen.clone());
        shared.queue.lock().unwrap().next()
    };
    let mut answer = queued.unwrap_or_else(|| (shared.script)(&seen));
    let mut held = None;
    loop {
        match answer {
            Answer::Delayed(wait, then) => {
                tokio::time::sleep(wait).await;
                answer = *then;
            }
            Answer::Holding(hold, then) => {
                held = Some(hold);
                answer = *then;
            }
            _ => break,
        }
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
            let guard = CutShort { counter: shared.cut_short.clone(), finished: false, held };
            let body = futures::stream::unfold((VecDeque::from(steps), guard), next_chunk);
            ([(header::CONTENT_TYPE, "text/event-stream")], Body::from_stream(body)).into_response()
        }
        Answer::Delayed(..) | Answer::Holding(..) => unreachable!("unwrapped above"),
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
            Some(Step::Send(text)) => {
                if steps.is_empty() {
                    // The last chunk: out of flight before the client can
                    // read the end of the reply (and send the next request).
                    guard.held = None;
                }
                return Some((Ok(Bytes::from(text)), (steps, guard)));
            }
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

/// Counts a body dropped before its end; holds what the answer held.
struct CutShort {
    counter: Arc<AtomicUsize>,
    finished: bool,
    held: Option<Held>,
}

impl Drop for CutShort {
    fn drop(&mut self) {
        if !self.finished {
            self.counter.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// A well-formed reply of `words`, a pause of `pause` before each word
/// (1 prompt token): a slow upstream.
pub fn slow_reply(words: &[&str], pause: Duration) -> Answer {
    let mut steps = Vec::new();
    for word in words {
        steps.push(Step::Pause(pause));
        steps.push(delta(word));
    }
    steps.extend([finish("stop"), usage(1, words.len() as i64), done()]);
    Answer::Stream(steps)
}
