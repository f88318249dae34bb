//! `pantheon-loadgen`: the load generator of `bench/run.sh`.
//!
//! - `free-port`: prints a free loopback TCP port;
//! - `setup`: mints a token for each of N distinct bench users (with the
//!   configured `auth.jwt_secret`, exactly as `pantheon token` does) and
//!   creates one session each, writing `token session` lines for wrk's Lua
//!   scripts and for `sse`;
//! - `turns`: N sequential JSON turns (the per-turn cost measurement);
//! - `sse`: one streaming turn per line of the users file, all at once,
//!   counting events to each stream's terminal one.
//!
//! Every loop is bounded in count, every request in time, and all traffic
//! goes to the `--base` URL (127.0.0.1 in `bench/run.sh`).

// A benchmark tool, not the server: a setup step that fails should stop the
// run loudly, so panicking on it is the right behaviour here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use futures::StreamExt;
use hdrhistogram::Histogram;
use pantheon_infrastructure::Settings;
use pantheon_infrastructure::auth::TokenMinter;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use tokio::sync::Barrier;

/// The load generator of `bench/run.sh`.
#[derive(Debug, Parser)]
#[command(name = "pantheon-loadgen")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print a free TCP port on 127.0.0.1.
    FreePort,
    /// Mint tokens for N users and create a session for each; write
    /// `token session` lines.
    Setup {
        /// The server, e.g. `http://127.0.0.1:8080`.
        #[arg(long)]
        base: String,
        /// How many distinct users.
        #[arg(long)]
        users: usize,
        /// User ids are `<prefix>-<i>`.
        #[arg(long)]
        prefix: String,
        /// The tier claim of the tokens.
        #[arg(long)]
        tier: Option<String>,
        /// Where the `token session` lines go.
        #[arg(long)]
        out: PathBuf,
        /// Sessions created at once.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
    },
    /// Submit `count` JSON turns one after the other, rotating through the
    /// users file; every one must answer `201`.
    Turns {
        #[arg(long)]
        base: String,
        #[arg(long)]
        users: PathBuf,
        #[arg(long)]
        count: usize,
        #[arg(long, default_value = "Hello, Pantheon benchmark")]
        input: String,
    },
    /// One streaming turn per line of the users file, all concurrent.
    Sse {
        #[arg(long)]
        base: String,
        #[arg(long)]
        users: PathBuf,
        #[arg(long)]
        input: String,
        /// Do not open the connections before the clock starts (measures
        /// the connect burst too).
        #[arg(long)]
        cold: bool,
        /// The longest one stream may take.
        #[arg(long, default_value_t = 60)]
        timeout_secs: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let result = runtime.block_on(async move {
        match cli.command {
            Command::FreePort => free_port(),
            Command::Setup { base, users, prefix, tier, out, concurrency } => {
                setup(&base, users, &prefix, tier.as_deref(), &out, concurrency).await
            }
            Command::Turns { base, users, count, input } => {
                turns(&base, &read_users(&users)?, count, &input).await
            }
            Command::Sse { base, users, input, cold, timeout_secs } => {
                let timeout = Duration::from_secs(timeout_secs);
                sse(&base, read_users(&users)?, &input, cold, timeout).await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pantheon-loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

fn free_port() -> Result<(), String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    println!("{}", listener.local_addr().map_err(|e| e.to_string())?.port());
    Ok(())
}

/// `(token, session id)` pairs from a `token session` file.
fn read_users(path: &PathBuf) -> Result<Vec<(String, String)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let users: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            Some((parts.next()?.to_owned(), parts.next()?.to_owned()))
        })
        .collect();
    if users.is_empty() {
        return Err(format!("{}: no `token session` lines", path.display()));
    }
    Ok(users)
}

fn client(max_idle: usize, timeout: Duration) -> Client {
    Client::builder()
        .pool_max_idle_per_host(max_idle)
        .pool_idle_timeout(Duration::from_secs(300))
        .tcp_nodelay(true)
        .timeout(timeout)
        .build()
        .expect("an HTTP client")
}

async fn setup(
    base: &str,
    users: usize,
    prefix: &str,
    tier: Option<&str>,
    out: &PathBuf,
    concurrency: usize,
) -> Result<(), String> {
    let settings = Settings::load().map_err(|e| e.to_string())?;
    let minter = TokenMinter::new(&settings.auth)?;
    let http = client(concurrency, Duration::from_secs(30));
    let url = format!("{base}/api/v1/sessions");
    let tokens: Vec<String> = (0..users)
        .map(|i| minter.mint(&format!("{prefix}-{i}"), tier, Duration::from_secs(3 * 3600)))
        .collect::<Result<_, _>>()?;
    let sessions: Vec<Result<String, String>> = futures::stream::iter(tokens.iter())
        .map(|token| {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let response = http
                    .post(&url)
                    .bearer_auth(token)
                    .json(&json!({ "title": "bench" }))
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                let status = response.status();
                let body: Value = response.json().await.map_err(|e| e.to_string())?;
                match (status, body["id"].as_str()) {
                    (StatusCode::CREATED, Some(id)) => Ok(id.to_owned()),
                    _ => Err(format!("creating a session answered {status}: {body}")),
                }
            }
        })
        .buffered(concurrency.max(1))
        .collect()
        .await;
    let mut lines = String::new();
    for (token, session) in tokens.iter().zip(sessions) {
        writeln!(lines, "{token} {}", session?).map_err(|e| e.to_string())?;
    }
    std::fs::write(out, lines).map_err(|e| format!("{}: {e}", out.display()))?;
    println!("setup: {users} users with a session each in {}", out.display());
    Ok(())
}

async fn turns(
    base: &str,
    users: &[(String, String)],
    count: usize,
    input: &str,
) -> Result<(), String> {
    let http = client(1, Duration::from_secs(30));
    let body = json!({ "input": input });
    let mut created = 0usize;
    for i in 0..count {
        let (token, session) = &users[i % users.len()];
        let response = http
            .post(format!("{base}/api/v1/sessions/{session}/turns"))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let text = response.text().await.map_err(|e| e.to_string())?;
        if status != StatusCode::CREATED {
            return Err(format!("turn {i} answered {status}: {text}"));
        }
        created += 1;
    }
    println!("RESULT turns={count} created={created}");
    Ok(())
}

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

async fn sse(
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
