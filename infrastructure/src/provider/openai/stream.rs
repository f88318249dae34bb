//! The streamed body of a chat completion, as the domain's reply events.
//!
//! The body is Server-Sent Events (parsed by `eventsource-stream`), one
//! `chat.completion.chunk` a `data:` line, ended by `data: [DONE]`. Deltas
//! are forwarded as they arrive; the finish reason and the usage chunk
//! (`stream_options.include_usage`) are kept for the final event. Tool
//! calls arrive in fragments ([`super::calls`]) and are handed on whole
//! when the model finishes (its finish reason, or `[DONE]` without one),
//! before the final event.
//!
//! After the first byte, failure is an `Err` item: an error object in the
//! stream, a body that ends without `[DONE]` or a finish reason (truncated),
//! a silence longer than `idle_timeout_ms`, a broken connection. Once the
//! model has given its finish reason, the reply is complete whatever
//! happens to the rest of the body.
//!
//! The stream owns the response and reads it only when polled: dropping it
//! closes the connection, and no task lives on.

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;

use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures::{FutureExt, Stream, StreamExt};
use pantheon_domain::ports::{ReplyEvent, ReplyStream};
use pantheon_domain::{FinishReason, ProviderError, Usage};
use serde::Deserialize;

use super::calls::{CallDelta, Calls};
use super::failure::{Secret, scrub};

/// Why the byte stream stopped early.
#[derive(Debug, thiserror::Error)]
enum Transport {
    /// Nothing arrived for `idle_timeout_ms`.
    #[error("idle timeout")]
    Idle,
    /// The connection broke.
    #[error("{0}")]
    Broken(String),
}

type Events = Pin<Box<dyn Stream<Item = Result<Event, EventStreamError<Transport>>> + Send>>;

/// The reply events of a streamed response.
pub(super) fn replies(
    response: reqwest::Response,
    idle: Duration,
    secret: Option<Secret>,
) -> ReplyStream {
    from_bytes(response.bytes_stream().map(|r| r.map_err(|e| e.to_string())), idle, secret)
}

/// The reply events of a body given as its chunks (a response's, or a
/// test's); each chunk must come within `idle`.
pub(super) fn from_bytes<S, B>(bytes: S, idle: Duration, secret: Option<Secret>) -> ReplyStream
where
    S: Stream<Item = Result<B, String>> + Send + 'static,
    B: AsRef<[u8]> + Send + 'static,
{
    let timed = futures::stream::unfold(Some(Box::pin(bytes)), move |bytes| async move {
        let mut bytes = bytes?;
        match tokio::time::timeout(idle, bytes.next()).await {
            Err(_) => Some((Err(Transport::Idle), None)),
            Ok(None) => None,
            Ok(Some(Ok(chunk))) => Some((Ok(chunk), Some(bytes))),
            Ok(Some(Err(cause))) => Some((Err(Transport::Broken(cause)), None)),
        }
    });
    let reader = Reader {
        events: Some(Box::pin(timed.eventsource())),
        queued: VecDeque::new(),
        reply: Reply { finish_reason: None, usage: None, calls: Calls::default(), secret },
    };
    futures::stream::unfold(reader, Reader::next_item).boxed()
}

/// Reads events until one makes a reply event.
struct Reader {
    /// `None` once the reply is over: the response is dropped at once.
    events: Option<Events>,
    /// Reply events made by one upstream event, not yet handed on.
    queued: VecDeque<Result<ReplyEvent, ProviderError>>,
    reply: Reply,
}

/// What the end of the reply needs.
struct Reply {
    finish_reason: Option<FinishReason>,
    usage: Option<Usage>,
    calls: Calls,
    secret: Option<Secret>,
}

/// What one event means.
enum Step {
    Nothing,
    /// Never empty.
    Events(Vec<ReplyEvent>),
    End(Result<ReplyEvent, ProviderError>),
}

impl Reader {
    async fn next_item(mut self) -> Option<(Result<ReplyEvent, ProviderError>, Self)> {
        if let Some(item) = self.queued.pop_front() {
            return Some((item, self));
        }
        let events = self.events.as_mut()?;
        let reply = &mut self.reply;
        let step = loop {
            let step = match events.next().await {
                None => Step::End(reply.broken_off(None)),
                Some(Ok(event)) => reply.on_event(&event),
                Some(Err(EventStreamError::Transport(Transport::Idle))) => {
                    Step::End(reply.broken_off(Some(ProviderError::Timeout)))
                }
                Some(Err(EventStreamError::Transport(Transport::Broken(cause)))) => {
                    let error = format!("the upstream connection broke: {cause}");
                    Step::End(reply.broken_off(Some(ProviderError::Failed(error))))
                }
                Some(Err(error)) => Step::End(Err(ProviderError::Failed(format!(
                    "unreadable event stream from the upstream: {}",
                    scrub(&error.to_string(), reply.secret.as_ref())
                )))),
            };
            if !matches!(step, Step::Nothing) {
                break step;
            }
        };
        match step {
            Step::Events(list) => self.queued.extend(list.into_iter().map(Ok)),
            Step::End(end) => {
                // A body read to its end lets the connection go back to the
                // pool; the end is usually in hand already after `[DONE]`.
                if end.is_ok() {
                    let _ = events.next().now_or_never();
                    let calls = self.reply.calls.take();
                    self.queued.extend(calls.into_iter().map(|c| Ok(ReplyEvent::ToolCall(c))));
                }
                self.events = None;
                self.queued.push_back(end);
            }
            Step::Nothing => {}
        }
        let item = self.queued.pop_front()?;
        Some((item, self))
    }
}

impl Reply {
    fn on_event(&mut self, event: &Event) -> Step {
        let data = event.data.trim();
        match event.event.as_str() {
            "message" => {}
            "error" => return Step::End(Err(self.upstream_error(data))),
            // Other named events (pings of some proxies) carry no chunk.
            _ => return Step::Nothing,
        }
        if data == "[DONE]" {
            return Step::End(Ok(self.finished()));
        }
        if data.is_empty() {
            return Step::Nothing;
        }
        let chunk: Chunk = match serde_json::from_str(data) {
            Ok(chunk) => chunk,
            Err(error) => {
                let shown = scrub(data, self.secret.as_ref());
                return Step::End(Err(ProviderError::Failed(format!(
                    "unreadable chunk from the upstream ({error}): {shown}"
                ))));
            }
        };
        if let Some(error) = chunk.error {
            return Step::End(Err(self.upstream_error(&error.to_string())));
        }
        if let Some(usage) = chunk.usage {
            self.usage = Some(usage.into());
        }
        let (mut text, mut finished) = (String::new(), false);
        for choice in chunk.choices.into_iter().filter(|c| c.index == 0) {
            if let Some(reason) = choice.finish_reason.as_deref() {
                self.finish_reason = Some(finish_reason(reason));
                finished = true;
            }
            let Some(delta) = choice.delta else { continue };
            text.extend(delta.content);
            for fragment in delta.tool_calls.into_iter().flatten() {
                if let Err(error) = self.calls.add(fragment) {
                    return Step::End(Err(error));
                }
            }
        }
        let mut events = Vec::new();
        if !text.is_empty() {
            events.push(ReplyEvent::Delta(text));
        }
        if finished {
            events.extend(self.calls.take().into_iter().map(ReplyEvent::ToolCall));
        }
        if events.is_empty() { Step::Nothing } else { Step::Events(events) }
    }

    fn upstream_error(&self, detail: &str) -> ProviderError {
        ProviderError::Failed(format!(
            "the upstream reported an error mid-reply: {}",
            scrub(detail, self.secret.as_ref())
        ))
    }

    fn finished(&self) -> ReplyEvent {
        ReplyEvent::Finished {
            finish_reason: self.finish_reason.unwrap_or(FinishReason::Stop),
            usage: self.usage,
        }
    }

    /// The body ended, fell silent or broke (`error`) before `[DONE]`:
    /// complete if the model had said why it stopped (some servers omit
    /// `[DONE]`; the usage may be missing then), else truncated.
    fn broken_off(&self, error: Option<ProviderError>) -> Result<ReplyEvent, ProviderError> {
        match (self.finish_reason, error) {
            (Some(_), _) => Ok(self.finished()),
            (None, Some(error)) => Err(error),
            (None, None) => Err(ProviderError::Failed(
                "the upstream stream ended before the reply was complete".into(),
            )),
        }
    }
}

/// An upstream finish reason in the domain's terms: `length` is kept,
/// anything else is the model stopping (`content_filter` and unknown ones
/// are logged).
fn finish_reason(raw: &str) -> FinishReason {
    match raw {
        "length" => FinishReason::Length,
        "stop" | "eos" | "tool_calls" | "function_call" => FinishReason::Stop,
        other => {
            tracing::info!(finish_reason = other, "upstream finish reason taken as stop");
            FinishReason::Stop
        }
    }
}

/// One `chat.completion.chunk` (only what Pantheon reads).
#[derive(Debug, Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<Choice>,
    usage: Option<ChunkUsage>,
    error: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct Choice {
    #[serde(default)]
    index: u32,
    delta: Option<Delta>,
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Delta {
    content: Option<String>,
    tool_calls: Option<Vec<CallDelta>>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
struct ChunkUsage {
    prompt_tokens: i64,
    completion_tokens: i64,
    total_tokens: Option<i64>,
}

impl From<ChunkUsage> for Usage {
    fn from(u: ChunkUsage) -> Self {
        Self {
            input_tokens: u.prompt_tokens,
            output_tokens: u.completion_tokens,
            total_tokens: u.total_tokens.unwrap_or(u.prompt_tokens + u.completion_tokens),
        }
    }
}
