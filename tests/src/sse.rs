//! Reading a stream of turn events, two ways: by hand from the raw text
//! (which also sees keep-alive comments), and with an independent SSE
//! parser crate, so the wire format is checked by more than our reading.
//! Either way, every event's data is checked against the OpenAPI
//! document's `TurnStreamEvent`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::Value;

/// One event as sent.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    /// `event:`
    pub event: String,
    /// `id:`
    pub id: String,
    /// `data:`, parsed as JSON.
    pub data: Value,
}

/// A whole stream read by hand.
#[derive(Debug, Default)]
pub struct RawStream {
    /// The events, in order.
    pub events: Vec<SseEvent>,
    /// How many comment lines (keep-alives) came.
    pub comments: usize,
}

/// Parses the raw text of a stream: blocks separated by blank lines, each
/// with `event:`, `id:` and exactly one `data:` line, or comment lines.
pub fn parse_raw(text: &str) -> RawStream {
    let mut stream = RawStream::default();
    for block in text.split("\n\n").filter(|b| !b.trim().is_empty()) {
        if let Some((event, id, data)) = parse_block(block, &mut stream.comments) {
            stream.events.push(SseEvent { event, id: id.expect("every event has an id"), data });
        }
    }
    stream
}

/// One block of a stream: its event, its `id:` (`turn.queued` has none)
/// and its one `data:` line as JSON, checked against the document; `None`
/// for a block of comments only, which are counted into `comments`.
pub fn parse_block(block: &str, comments: &mut usize) -> Option<(String, Option<String>, Value)> {
    let (mut event, mut id, mut data) = (None, None, Vec::new());
    for line in block.lines() {
        if line.starts_with(':') {
            *comments += 1;
        } else if line.is_empty() {
        } else if let Some(v) = line.strip_prefix("event: ") {
            event = Some(v.to_owned());
        } else if let Some(v) = line.strip_prefix("id: ") {
            id = Some(v.to_owned());
        } else if let Some(v) = line.strip_prefix("data: ") {
            data.push(v.to_owned());
        } else {
            panic!("unexpected line {line:?}");
        }
    }
    let event = event?;
    assert_eq!(data.len(), 1, "data is one line of JSON: {block}");
    let data = serde_json::from_str(&data[0]).expect("data is JSON");
    crate::contract::check_event(&event, &data);
    Some((event, id, data))
}

/// Reads a whole stream with `eventsource-stream`.
pub async fn read_with_parser(response: reqwest::Response) -> Vec<SseEvent> {
    let mut parsed = response.bytes_stream().eventsource();
    let mut events = Vec::new();
    while let Some(event) = parsed.next().await {
        let event = event.expect("a well-formed event stream");
        let data = serde_json::from_str(&event.data).unwrap();
        crate::contract::check_event(&event.event, &data);
        events.push(SseEvent { event: event.event, id: event.id, data });
    }
    events
}
