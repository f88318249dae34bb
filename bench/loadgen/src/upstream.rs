//! `upstream`: a fake OpenAI-compatible `/v1/chat/completions` with a hard
//! capacity, for `bench/fairness.sh`.
//!
//! At most `capacity` requests are served at once; one more gets `429`
//! with `Retry-After: 1` and an OpenAI-style JSON error. An admitted
//! request is streamed (`chat.completion.chunk`s, one word a token: `" the"`,
//! `" and"`…): first a "prefill" pause of its prompt tokens (all messages'
//! characters ÷ 4) at `prefill_tokens_per_sec`, then `max_tokens` (or
//! `max_completion_tokens`; 64 when neither) tokens at `tokens_per_sec`,
//! each at its own deadline from the start (no drift), the last with
//! `finish_reason: stop`, then a chunk with `usage` and `data: [DONE]`.
//! The slot is held until the body ends or the client drops it.
//!
//! `GET /stats` answers the counters as JSON (`?reset=1` zeroes them after
//! reading, the maximum concurrency to the current one); on SIGTERM or
//! SIGINT they are printed as a `RESULT` line. With `--log FILE`, one JSON
//! line per request: `tag` (the `[[…]]` at the start of the last user
//! message, if any), `status` (200 or 429), `t_start` and `t_end` (Unix
//! seconds; `t_end` when the last byte was queued, or the drop),
//! `prompt_tokens`, `completion_tokens`, `prefill_s`, `complete`.

use std::fs::File;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::time::Instant;

/// The upstream's shape.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct Config {
    /// Requests served at once; one more gets `429`, `Retry-After: 1`.
    #[arg(long)]
    pub capacity: usize,
    /// Output tokens a second, per stream.
    #[arg(long)]
    pub tokens_per_sec: f64,
    /// Prompt tokens (characters ÷ 4) a second: the pause before the first
    /// token.
    #[arg(long, default_value_t = 200_000.0)]
    pub prefill_tokens_per_sec: f64,
}

struct Shared {
    config: Config,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    served: AtomicU64,
    completed: AtomicU64,
    rejected: AtomicU64,
    log: Option<Mutex<File>>,
}

impl Shared {
    fn stats(&self) -> Value {
        json!({
            "capacity": self.config.capacity,
            "in_flight": self.in_flight.load(Ordering::SeqCst),
            "max_concurrency": self.max_in_flight.load(Ordering::SeqCst),
            "served": self.served.load(Ordering::SeqCst),
            "completed": self.completed.load(Ordering::SeqCst),
            "rejected_429": self.rejected.load(Ordering::SeqCst),
        })
    }

    fn log(&self, line: &Value) {
        if let Some(file) = &self.log {
            let mut file = file.lock().unwrap();
            let _ = writeln!(file, "{line}");
        }
    }
}

fn now_s() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// A held slot: given back, and the request logged, when the body ends or
/// is dropped.
struct Slot {
    shared: Arc<Shared>,
    tag: String,
    t_start: f64,
    prompt_tokens: u64,
    completion_tokens: u64,
    prefill_s: f64,
    sent: u64,
    complete: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.shared.in_flight.fetch_sub(1, Ordering::SeqCst);
        if self.complete {
            self.shared.completed.fetch_add(1, Ordering::SeqCst);
        }
        self.shared.log(&json!({
            "tag": self.tag, "status": 200, "t_start": self.t_start, "t_end": now_s(),
            "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
            "sent_tokens": self.sent, "prefill_s": self.prefill_s, "complete": self.complete,
        }));
    }
}

/// The `[[tag]]` that starts the last user message, if any.
fn tag_of(messages: &[Value]) -> String {
    let last = messages.iter().rev().find(|m| m["role"] == "user");
    let text = last.and_then(|m| m["content"].as_str()).unwrap_or_default();
    text.strip_prefix("[[")
        .and_then(|rest| rest.split_once("]]"))
        .map(|(tag, _)| tag.to_owned())
        .unwrap_or_default()
}

/// Each one token (with its leading space) in the common BPE encodings,
/// so a meter that counts the reply (Pantheon's, against `max_tokens`)
/// counts what the usage says.
const WORDS: [&str; 8] = [" the", " and", " for", " you", " not", " are", " but", " all"];

fn chunk(content: Option<&str>, finish: Option<&str>) -> Bytes {
    let body = json!({
        "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": "fake",
        "choices": [{ "index": 0, "delta": { "content": content }, "finish_reason": finish }],
    });
    Bytes::from(format!("data: {body}\n\n"))
}

async fn completions(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            let error = json!({"error": {"message": format!("bad JSON: {e}"), "type": "invalid_request_error"}});
            return (StatusCode::BAD_REQUEST, axum::Json(error)).into_response();
        }
    };
    let messages = request["messages"].as_array().cloned().unwrap_or_default();
    let tag = tag_of(&messages);
    let chars: usize = messages.iter().filter_map(|m| m["content"].as_str()).map(str::len).sum();
    let prompt_tokens = (chars as u64).div_ceil(4).max(1);
    let completion_tokens = request["max_tokens"]
        .as_u64()
        .or_else(|| request["max_completion_tokens"].as_u64())
        .unwrap_or(64)
        .max(1);
    let config = shared.config;
    let before = shared.in_flight.fetch_add(1, Ordering::SeqCst);
    if before >= config.capacity {
        shared.in_flight.fetch_sub(1, Ordering::SeqCst);
        shared.rejected.fetch_add(1, Ordering::SeqCst);
        let t = now_s();
        shared.log(&json!({"tag": tag, "status": 429, "t_start": t, "t_end": t,
            "prompt_tokens": prompt_tokens, "completion_tokens": 0}));
        let error = json!({"error": {
            "message": format!("the fake upstream serves {} requests at once", config.capacity),
            "type": "rate_limit_error", "code": "rate_limit_exceeded"}});
        return (StatusCode::TOO_MANY_REQUESTS, [(header::RETRY_AFTER, "1")], axum::Json(error))
            .into_response();
    }
    shared.max_in_flight.fetch_max(before + 1, Ordering::SeqCst);
    shared.served.fetch_add(1, Ordering::SeqCst);
    let prefill_s = prompt_tokens as f64 / config.prefill_tokens_per_sec;
    let slot = Slot {
        shared: shared.clone(),
        tag,
        t_start: now_s(),
        prompt_tokens,
        completion_tokens,
        prefill_s,
        sent: 0,
        complete: false,
    };
    let start = Instant::now() + Duration::from_secs_f64(prefill_s);
    let per_token = 1.0 / config.tokens_per_sec;
    // Token k (from 0) goes out at start + (k + 1) / R; then the usage and
    // [DONE]; then the slot is dropped with the stream.
    let stream = futures::stream::unfold(Some(slot), move |slot| async move {
        let mut slot = slot?;
        if slot.sent < slot.completion_tokens {
            let k = slot.sent;
            tokio::time::sleep_until(start + Duration::from_secs_f64((k + 1) as f64 * per_token))
                .await;
            slot.sent += 1;
            let word = WORDS[(k % WORDS.len() as u64) as usize];
            let last = slot.sent == slot.completion_tokens;
            let bytes = chunk(Some(word), last.then_some("stop"));
            return Some((Ok::<_, std::io::Error>(bytes), Some(slot)));
        }
        let usage = json!({
            "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0,
            "model": "fake", "choices": [],
            "usage": { "prompt_tokens": slot.prompt_tokens, "completion_tokens": slot.completion_tokens,
                       "total_tokens": slot.prompt_tokens + slot.completion_tokens },
        });
        slot.complete = true;
        drop(slot);
        Some((Ok(Bytes::from(format!("data: {usage}\n\ndata: [DONE]\n\n"))), None))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .unwrap()
}

async fn stats(State(shared): State<Arc<Shared>>, RawQuery(query): RawQuery) -> Response {
    let stats = shared.stats();
    if query.is_some_and(|q| q.split('&').any(|p| p == "reset=1")) {
        shared.served.store(0, Ordering::SeqCst);
        shared.completed.store(0, Ordering::SeqCst);
        shared.rejected.store(0, Ordering::SeqCst);
        let now = shared.in_flight.load(Ordering::SeqCst);
        shared.max_in_flight.store(now, Ordering::SeqCst);
    }
    axum::Json(stats).into_response()
}

fn result_line(stats: &Value) -> String {
    format!(
        "RESULT served={} completed={} rejected_429={} max_concurrency={} capacity={}",
        stats["served"],
        stats["completed"],
        stats["rejected_429"],
        stats["max_concurrency"],
        stats["capacity"]
    )
}

pub async fn upstream(
    port: u16,
    config: Config,
    log: Option<std::path::PathBuf>,
) -> Result<(), String> {
    if config.capacity == 0 || config.tokens_per_sec <= 0.0 || config.prefill_tokens_per_sec <= 0.0
    {
        return Err(
            "--capacity, --tokens-per-sec and --prefill-tokens-per-sec must be positive".into()
        );
    }
    let log = match log {
        Some(path) => {
            Some(Mutex::new(File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?))
        }
        None => None,
    };
    let shared = Arc::new(Shared {
        config,
        in_flight: AtomicUsize::new(0),
        max_in_flight: AtomicUsize::new(0),
        served: AtomicU64::new(0),
        completed: AtomicU64::new(0),
        rejected: AtomicU64::new(0),
        log,
    });
    let app = Router::new()
        .route("/v1/chat/completions", post(completions))
        .route("/stats", get(stats))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(shared.clone());
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| format!("binding 127.0.0.1:{port}: {e}"))?;
    eprintln!(
        "upstream: 127.0.0.1:{port}, capacity {}, {} tokens/s a stream, prefill {} tokens/s",
        config.capacity, config.tokens_per_sec, config.prefill_tokens_per_sec
    );
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    // Streams in flight are not awaited: the counters are printed at once.
    tokio::select! {
        served = axum::serve(listener, app) => served.map_err(|e| e.to_string())?,
        () = shutdown => {}
    }
    println!("{}", result_line(&shared.stats()));
    Ok(())
}
