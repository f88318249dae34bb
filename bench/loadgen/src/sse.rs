//! The `sse` scenario: one streaming turn per bench user, all released at
//! once, each read to its terminal event, with latency percentiles.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use hdrhistogram::Histogram;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use tokio::sync::Barrier;

use crate::client;

/// How one stream ended.
#[derive(Debug, Default)]
struct StreamOutcome {
    /// `turn.completed` arrived.
    completed: bool,
    /// `turn.failed` arrived.
    failed: bool,
    /// An HTTP status other than `200`, or the connection broke.
    error: Option<String>,
    /// Named events received.
    events: u64,
    /// From the start signal to the first event.
    first_event: Option<Duration>,
    /// From the start signal to the terminal event.
    done: Option<Duration>,
}

/// The `event:` name of one `\n\n`-terminated SSE block, if it has one
/// (keep-alive comments have none).
fn event_name(block: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(block).ok()?;
    text.lines().find_map(|line| line.strip_prefix("event:")).map(str::trim)
}

async fn one_stream(
    http: Client,
    url: String,
    token: String,
    body: Value,
    start: Arc<Barrier>,
    clock: Arc<std::sync::OnceLock<Instant>>,
) -> StreamOutcome {
    start.wait().await;
    let t0 = *clock.get_or_init(Instant::now);
    let mut outcome = StreamOutcome::default();
    let response = match http.post(&url).bearer_auth(&token).json(&body).send().await {
        Ok(response) => response,
        Err(e) => {
            outcome.error = Some(format!("request: {e}"));
            return outcome;
        }
    };
    if response.status() != StatusCode::OK {
        outcome.error = Some(format!("status {}", response.status()));
        return outcome;
    }
    let mut body = response.bytes_stream();
    let mut buffer: Vec<u8> = Vec::with_capacity(4096);
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(e) => {
                outcome.error = Some(format!("body: {e}"));
                return outcome;
            }
        };
        buffer.extend_from_slice(&chunk);
        while let Some(end) = buffer.windows(2).position(|w| w == b"\n\n") {
            let block: Vec<u8> = buffer.drain(..end + 2).collect();
            let Some(name) = event_name(&block) else { continue };
            outcome.events += 1;
            outcome.first_event.get_or_insert_with(|| t0.elapsed());
            match name {
                "turn.completed" => outcome.completed = true,
                "turn.failed" => outcome.failed = true,
                _ => continue,
            }
            outcome.done = Some(t0.elapsed());
        }
    }
    if !outcome.completed && !outcome.failed && outcome.error.is_none() {
        outcome.error = Some("stream ended without a terminal event".into());
    }
    outcome
}

/// Opens one connection per stream before the clock starts: each warm-up
/// request keeps its connection checked out (its body unread) until all
/// have answered, so none is reused by another; the connects are spread
/// over a few hundred milliseconds so the listen backlog never overflows.
async fn warm(http: &Client, base: &str, n: usize) -> usize {
    let barrier = Arc::new(Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (http, url, barrier) = (http.clone(), format!("{base}/healthz"), barrier.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_micros(150 * i as u64)).await;
                let response = http.get(&url).send().await;
                barrier.wait().await;
                match response {
                    Ok(response) => response.bytes().await.is_ok(),
                    Err(_) => false,
                }
            })
        })
        .collect();
    let mut ok = 0;
    for task in tasks {
        ok += usize::from(task.await.unwrap_or(false));
    }
    ok
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub async fn sse(
    base: &str,
    users: Vec<(String, String)>,
    input: &str,
    cold: bool,
    timeout: Duration,
) -> Result<(), String> {
    let n = users.len();
    let http = client(n, timeout);
    let warmed = if cold { 0 } else { warm(&http, base, n).await };
    let start = Arc::new(Barrier::new(n));
    let clock = Arc::new(std::sync::OnceLock::new());
    let body = json!({ "input": input });
    let tasks: Vec<_> = users
        .into_iter()
        .map(|(token, session)| {
            let url = format!("{base}/api/v1/sessions/{session}/turns/stream");
            tokio::spawn(one_stream(
                http.clone(),
                url,
                token,
                body.clone(),
                start.clone(),
                clock.clone(),
            ))
        })
        .collect();
    let mut latency = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).unwrap();
    let mut first = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).unwrap();
    let (mut completed, mut failed, mut errors, mut events) = (0u64, 0u64, 0u64, 0u64);
    let mut wall = Duration::ZERO;
    let mut first_error = None;
    for task in tasks {
        let outcome = task.await.map_err(|e| e.to_string())?;
        completed += u64::from(outcome.completed);
        failed += u64::from(outcome.failed);
        events += outcome.events;
        if let Some(e) = outcome.error {
            errors += 1;
            first_error.get_or_insert(e);
        }
        if let Some(d) = outcome.done {
            wall = wall.max(d);
            latency.saturating_record(d.as_micros() as u64);
        }
        if let Some(d) = outcome.first_event {
            first.saturating_record(d.as_micros() as u64);
        }
    }
    let p = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "RESULT streams={n} warmed={warmed} completed={completed} failed={failed} errors={errors} \
         events={events} wall_ms={:.1} events_per_s={:.0} p50_ms={:.1} p99_ms={:.1} \
         first_event_p50_ms={:.1} first_event_p99_ms={:.1}",
        ms(wall),
        events as f64 / wall.as_secs_f64().max(1e-9),
        p(&latency, 0.5),
        p(&latency, 0.99),
        p(&first, 0.5),
        p(&first, 0.99),
    );
    if let Some(e) = first_error {
        eprintln!("first stream error: {e}");
    }
    Ok(())
}
