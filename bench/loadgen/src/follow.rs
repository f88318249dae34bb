//! The `resume` and `cancel` scenarios, over two instances: streams cut at
//! random points and resumed (`GET …/events` with `Last-Event-ID`) on
//! either instance, checked character by character; and turns cancelled
//! from the instance that does not run them, timed.

use std::time::{Duration, Instant};

use futures::StreamExt;
use hdrhistogram::Histogram;
use reqwest::{Client, Response, StatusCode};
use serde_json::{Value, json};

use crate::client;

/// One SSE event: its id, name and data.
#[derive(Debug)]
struct Event {
    id: String,
    name: String,
    data: Value,
}

/// Reads a stream's events; stops after `limit` when given, or at the
/// terminal event. Returns the events and when the first arrived.
async fn read(
    response: Response,
    limit: Option<usize>,
) -> Result<(Vec<Event>, Option<Instant>), String> {
    if response.status() != StatusCode::OK {
        return Err(format!("status {}", response.status()));
    }
    let mut body = response.bytes_stream();
    let mut buffer: Vec<u8> = Vec::new();
    let mut events = Vec::new();
    let mut first = None;
    while let Some(chunk) = body.next().await {
        buffer.extend_from_slice(&chunk.map_err(|e| e.to_string())?);
        while let Some(end) = buffer.windows(2).position(|w| w == b"\n\n") {
            let block: Vec<u8> = buffer.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&block);
            let field = |name: &str| {
                text.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim_start().to_owned())
            };
            let (Some(name), Some(id), Some(data)) =
                (field("event:"), field("id:"), field("data:"))
            else {
                continue;
            };
            first.get_or_insert_with(Instant::now);
            let data: Value = serde_json::from_str(&data).map_err(|e| e.to_string())?;
            let terminal = name == "turn.completed" || name == "turn.failed";
            events.push(Event { id, name, data });
            if terminal || limit.is_some_and(|l| events.len() >= l) {
                return Ok((events, first));
            }
        }
    }
    Ok((events, first))
}

/// A small deterministic generator (xorshift), so a run is repeatable.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// `trials` streams, each cut after a random number of events and resumed
/// (again and again, on a random instance) until its end; every trial's
/// deltas must add up to its output with no gap and no repeat.
pub async fn resume(
    bases: &[String],
    users: &[(String, String)],
    trials: usize,
    input: &str,
) -> Result<(), String> {
    let http = client(64, Duration::from_secs(60));
    let mut rng = Rng(0x5eed);
    let mut first_event = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
    let (mut missing, mut duplicated, mut mismatched, mut resumes) =
        (0usize, 0usize, 0usize, 0usize);
    for trial in 0..trials {
        let (token, session) = &users[trial % users.len()];
        let base = &bases[trial % bases.len()];
        let started = http
            .post(format!("{base}/api/v1/sessions/{session}/turns/stream"))
            .bearer_auth(token)
            .json(&json!({ "input": input }))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let cut = 1 + usize::try_from(rng.below(8)).unwrap_or(0);
        let (mut seen, _) = read(started, Some(cut)).await?;
        let turn = seen.first().ok_or("an empty stream")?.data["turn"].clone();
        let (turn_id, session_id) =
            (turn["id"].as_str().unwrap_or(""), turn["session_id"].as_str().unwrap_or(""));
        while seen.last().is_some_and(|e| e.name != "turn.completed" && e.name != "turn.failed") {
            let base = &bases[usize::try_from(rng.below(bases.len() as u64)).unwrap_or(0)];
            let last = seen.last().map(|e| e.id.clone()).unwrap_or_default();
            let asked = Instant::now();
            let response = http
                .get(format!("{base}/api/v1/sessions/{session_id}/turns/{turn_id}/events"))
                .bearer_auth(token)
                .header("last-event-id", last)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let more = 1 + usize::try_from(rng.below(6)).unwrap_or(0);
            let (rest, first) = read(response, Some(more)).await?;
            if let Some(first) = first {
                first_event.record(ms(first - asked)).map_err(|e| e.to_string())?;
            }
            resumes += 1;
            if rest.is_empty() {
                return Err(format!("a resume of {turn_id} sent nothing"));
            }
            seen.extend(rest);
        }
        let ids_ok = seen.iter().enumerate().all(|(k, e)| e.id == format!("{turn_id}:{k}"));
        let deltas: String = seen.iter().filter_map(|e| e.data["delta"].as_str()).collect();
        let output = seen.last().map_or("", |e| e.data["turn"]["output"].as_str().unwrap_or(""));
        if !ids_ok || deltas != output {
            mismatched += 1;
            let (d, o) = (deltas.chars().count(), output.chars().count());
            missing += o.saturating_sub(d);
            duplicated += d.saturating_sub(o);
            if deltas.len() == output.len() {
                // Same length, other text: count it both ways.
                missing += 1;
                duplicated += 1;
            }
        }
    }
    println!(
        "RESULT trials={trials} resumes={resumes} mismatched={mismatched} missing_chars={missing} \
         duplicated_chars={duplicated} first_resumed_event_p50_ms={:.1} first_resumed_event_p99_ms={:.1}",
        first_event.value_at_quantile(0.5) as f64 / 1000.0,
        first_event.value_at_quantile(0.99) as f64 / 1000.0,
    );
    Ok(())
}

/// `count` turns streamed on the first instance and cancelled from the
/// second once their first delta arrived: how long the cancel's answer
/// took, and how long until the running stream's terminal event (the turn
/// stopped, persisted and released).
pub async fn cancel(
    bases: &[String],
    users: &[(String, String)],
    count: usize,
    input: &str,
) -> Result<(), String> {
    let [runs, cancels] = bases else { return Err("two --bases are needed".into()) };
    let http: Client = client(16, Duration::from_secs(60));
    let mut answered = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
    let mut stopped = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
    let mut cancelled = 0usize;
    for i in 0..count {
        let (token, session) = &users[i % users.len()];
        let response = http
            .post(format!("{runs}/api/v1/sessions/{session}/turns/stream"))
            .bearer_auth(token)
            .json(&json!({ "input": input }))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let mut body = response.bytes_stream();
        let mut text = String::new();
        while text.matches("event: turn.delta").count() < 1 {
            let chunk =
                body.next().await.ok_or("the stream ended early")?.map_err(|e| e.to_string())?;
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
        let turn_id = text
            .split("\"id\":\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .ok_or("no turn id")?
            .to_owned();
        let asked = Instant::now();
        let answer = http
            .post(format!("{cancels}/api/v1/sessions/{session}/turns/{turn_id}/cancel"))
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = answer.status();
        let answer: Value = answer.json().await.map_err(|e| e.to_string())?;
        answered.record(ms(asked.elapsed())).map_err(|e| e.to_string())?;
        while !text.contains("event: turn.completed") && !text.contains("event: turn.failed") {
            let Some(chunk) = body.next().await else { break };
            text.push_str(&String::from_utf8_lossy(&chunk.map_err(|e| e.to_string())?));
        }
        stopped.record(ms(asked.elapsed())).map_err(|e| e.to_string())?;
        cancelled += usize::from(status == StatusCode::OK && answer["status"] == "cancelled");
    }
    println!(
        "RESULT cancels={count} cancelled={cancelled} answer_p50_ms={:.1} answer_p99_ms={:.1} \
         stream_end_p50_ms={:.1} stream_end_p99_ms={:.1}",
        answered.value_at_quantile(0.5) as f64 / 1000.0,
        answered.value_at_quantile(0.99) as f64 / 1000.0,
        stopped.value_at_quantile(0.5) as f64 / 1000.0,
        stopped.value_at_quantile(0.99) as f64 / 1000.0,
    );
    Ok(())
}
