//! A turn's events as Server-Sent Events (`docs/API.md`, "Streaming"):
//! named events, one-line JSON `data` with `type` and `seq` (from 0), `id:
//! <turn_id>:<seq>`, exactly one terminal event, then a clean end. No item
//! is ever an `Err`: that would cut the connection without a terminal event.

use std::convert::Infallible;

use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use pantheon_domain::tool::ToolEvent;
use pantheon_domain::turn_service::Followed;
use pantheon_domain::{Turn, TurnError, TurnEvent, TurnId, TurnRun};
use serde::Serialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::dto::TurnBody;
use crate::error::failure;
use crate::metrics::OpenStream;

/// Cancels the turn when the stream is dropped before its terminal event
/// (the client left), if `turns.on_disconnect = cancel`. Made before the
/// stream and moved into it whole, so it fires even when the server drops
/// a body it never polled (the client left right after the commit).
struct DisconnectGuard {
    token: CancellationToken,
    armed: bool,
}

impl DisconnectGuard {
    /// The terminal event is out: leaving now is not a disconnect.
    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for DisconnectGuard {
    fn drop(&mut self) {
        if self.armed {
            tracing::info!("stream client left; cancelling its turn");
            self.token.cancel();
        }
    }
}

/// Numbers the events of one stream.
struct Events {
    turn_id: TurnId,
    seq: u64,
}

/// An event's `data`: `type` and `seq`, then the event's own members.
/// Serialized straight to text (no `Value` tree): 22 events per stream.
#[derive(Serialize)]
struct EventData<T> {
    #[serde(rename = "type")]
    kind: &'static str,
    seq: u64,
    #[serde(flatten)]
    fields: T,
}

#[derive(Serialize)]
struct TurnField {
    turn: TurnBody,
}

#[derive(Serialize)]
struct DeltaFields<'a> {
    turn_id: TurnId,
    delta: &'a str,
}

/// A `turn.tool_call` or `turn.tool_result`.
#[derive(Serialize)]
struct ToolFields<'a> {
    turn_id: TurnId,
    #[serde(flatten)]
    event: &'a ToolEvent,
}

impl ToolFields<'_> {
    fn kind(event: &ToolEvent) -> &'static str {
        match event {
            ToolEvent::Call { .. } => "turn.tool_call",
            ToolEvent::Result { .. } => "turn.tool_result",
        }
    }
}

#[derive(Serialize)]
struct FailedFields {
    turn: TurnBody,
    error: Value,
}

impl Events {
    /// The event numbered `seq` (a resumed stream's numbers are the
    /// journal's).
    fn at(&mut self, seq: u64, kind: &'static str, fields: impl Serialize) -> Event {
        self.seq = seq;
        self.next(kind, fields)
    }

    fn next(&mut self, kind: &'static str, fields: impl Serialize) -> Event {
        let data = serde_json::to_string(&EventData { kind, seq: self.seq, fields })
            .unwrap_or_else(|_| format!(r#"{{"type":"{kind}","seq":{}}}"#, self.seq));
        let event =
            Event::default().event(kind).id(format!("{}:{}", self.turn_id, self.seq)).data(data);
        self.seq += 1;
        event
    }
}

/// `turn.queued`: the turn waits for the provider's shared capacity. A
/// notice of the moment, not part of the turn's record: it carries no
/// `id` (a resumed stream neither replays it nor counts it), so the
/// numbers of the events around it are the journal's.
fn queued(turn_id: TurnId, place: Option<u64>) -> Event {
    let data = json!({ "type": "turn.queued", "turn_id": turn_id, "place": place });
    Event::default().event("turn.queued").data(data.to_string())
}

/// The terminal event for how the turn ended: `turn.completed`, or
/// `turn.failed` with the problem the JSON endpoint would have answered.
fn terminal(events: &mut Events, started: &Turn, outcome: Result<Turn, TurnError>) -> Event {
    let error = match outcome {
        Ok(turn) => return events.next("turn.completed", TurnField { turn: TurnBody::from(turn) }),
        Err(error) => error,
    };
    let failure = failure(error);
    let turn = failure.turn.unwrap_or_else(|| started.clone());
    let error = failure.problem.to_body(None);
    events.next("turn.failed", FailedFields { turn: TurnBody::from(turn), error })
}

/// A stream's response: `headers` (with `Cache-Control: no-cache` and
/// `X-Accel-Buffering: no` added: proxies such as nginx buffer responses
/// unless told not to) and `events`, with a keep-alive comment every
/// `keep_alive` while nothing else is sent.
pub fn response(
    mut headers: HeaderMap,
    events: impl Stream<Item = Result<Event, Infallible>> + Send + 'static,
    keep_alive: std::time::Duration,
) -> Response {
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    let sse = Sse::new(events).keep_alive(KeepAlive::new().interval(keep_alive));
    (headers, sse).into_response()
}

/// The event stream of a started turn; `open` counts it while it lives.
pub fn turn_events(
    mut run: TurnRun,
    cancel_on_disconnect: bool,
    open: Option<OpenStream>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let guard = DisconnectGuard { token: run.canceller(), armed: cancel_on_disconnect };
    let mut events = Events { turn_id: run.turn.id, seq: 0 };
    async_stream::stream! {
        // Moved in whole, so they live (and fire on drop) with the stream.
        let mut guard = guard;
        let _open = open;
        let started = run.turn.clone();
        yield Ok(events.next("turn.created", TurnField { turn: TurnBody::from(started.clone()) }));
        loop {
            match run.events.recv().await {
                Some(TurnEvent::Delta(delta)) => {
                    yield Ok(events.next("turn.delta", DeltaFields { turn_id: started.id, delta: &delta }));
                }
                Some(TurnEvent::Tool(event)) => {
                    let kind = ToolFields::kind(&event);
                    yield Ok(events.next(kind, ToolFields { turn_id: started.id, event: &event }));
                }
                Some(TurnEvent::Queued { place }) => yield Ok(queued(started.id, place)),
                Some(TurnEvent::Finished(outcome)) => {
                    guard.disarm();
                    yield Ok(terminal(&mut events, &started, *outcome));
                    break;
                }
                None => {
                    guard.disarm();
                    let lost = Err(TurnError::Internal("the turn task ended without an outcome".into()));
                    yield Ok(terminal(&mut events, &started, lost));
                    break;
                }
            }
        }
    }
}

/// The events of a turn followed from a `seq` on (`GET …/events`): the
/// journal's numbers, so the ids are the ones the original stream sent.
/// `started` is the turn as committed, for an end that carries no turn.
pub fn followed_events(
    started: Turn,
    followed: impl Stream<Item = Followed> + Send + 'static,
    open: Option<OpenStream>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let mut events = Events { turn_id: started.id, seq: 0 };
    async_stream::stream! {
        let _open = open;
        futures::pin_mut!(followed);
        while let Some(item) = futures::StreamExt::next(&mut followed).await {
            match item {
                Followed::Created(turn) => {
                    yield Ok(events.at(0, "turn.created", TurnField { turn: TurnBody::from(turn) }));
                }
                Followed::Delta { seq, text } => {
                    yield Ok(events.at(seq, "turn.delta", DeltaFields { turn_id: started.id, delta: &text }));
                }
                Followed::Tool { seq, event } => {
                    let kind = ToolFields::kind(&event);
                    yield Ok(events.at(seq, kind, ToolFields { turn_id: started.id, event: &event }));
                }
                Followed::Ended { seq, outcome } => {
                    events.seq = seq;
                    yield Ok(terminal(&mut events, &started, outcome));
                    break;
                }
            }
        }
    }
}
