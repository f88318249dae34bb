//! The `upload` scenario: files sent to `POST /api/v1/files` as
//! `multipart/form-data`, `concurrency` at a time, each body streamed in
//! chunks (never built whole in memory: a 1 GiB file costs the load
//! generator a chunk, not a gigabyte), with throughput and latency.
//!
//! The file is ASCII text (lines of a fixed pattern), so the server sniffs
//! it as `text/plain`, an allowed type, and checks it is UTF-8 to its end:
//! the path a real text upload takes.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::{Body, Client, StatusCode};
use serde_json::Value;

use crate::client;

/// Never appears in the file's bytes (lowercase letters, digits and spaces
/// of [`LINE`] cannot form it).
const BOUNDARY: &str = "pantheon-loadgen-Boundary-7F3A9C";

/// One line of the file's text; the file is this, repeated and cut.
const LINE: &[u8] =
    b"pantheon bench upload: the quick brown fox jumps over the lazy dog 0123456789\n";

/// One upload to make: whose token, and its session (written to `out`;
/// sent as the form's `session_id` only with `attach`).
pub struct Job {
    pub token: String,
    pub session: Option<String>,
}

/// How the uploads are made.
pub struct Options {
    /// Send each job's session as the form's `session_id`.
    pub attach: bool,
    /// Uploads at once.
    pub concurrency: usize,
    /// The size of each file.
    pub bytes: u64,
    /// The size of each piece of a body as it is sent.
    pub chunk_bytes: usize,
    /// The longest one upload may take.
    pub timeout: Duration,
}

/// How one upload ended.
struct Outcome {
    /// The status, or `None` when the request or its answer broke.
    status: Option<StatusCode>,
    /// The stored file's id, on a `201`.
    id: Option<String>,
    error: Option<String>,
    took: Duration,
}

/// A `&'static` slice, so each chunk of the body is a `Bytes` pointing at
/// it (no copy, no allocation per chunk). The buffer and the small
/// per-upload form parts are leaked: a few kilobytes, in a process that
/// exits after one run.
fn leak(bytes: Vec<u8>) -> &'static [u8] {
    Box::leak(bytes.into_boxed_slice())
}

/// `chunk_bytes` of the file's text.
fn text_chunk(chunk_bytes: usize) -> &'static [u8] {
    leak(LINE.iter().copied().cycle().take(chunk_bytes).collect())
}

/// The form around the file: the optional `session_id` field and the file
/// part's headers, then the closing boundary.
fn form_parts(session: Option<&str>, name: &str) -> (&'static [u8], &'static [u8]) {
    let mut head = String::new();
    if let Some(session) = session {
        let _ = write!(
            head,
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"session_id\"\r\n\r\n{session}\r\n"
        );
    }
    let _ = write!(
        head,
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n\
         Content-Type: text/plain\r\n\r\n"
    );
    let tail = format!("\r\n--{BOUNDARY}--\r\n");
    (leak(head.into_bytes()), leak(tail.into_bytes()))
}

/// The body's pieces, in order, produced as the request is sent: the
/// form's head, `bytes` of text in `chunk`-sized pieces, the form's tail.
fn body_stream(
    head: &'static [u8],
    chunk: &'static [u8],
    bytes: u64,
    tail: &'static [u8],
) -> impl futures::Stream<Item = Result<&'static [u8], std::io::Error>> + Send + 'static {
    let size = chunk.len() as u64;
    let full = bytes / size;
    let rest = (bytes % size) as usize;
    let file = futures::stream::iter(0..full)
        .map(move |_| chunk)
        .chain(futures::stream::iter((rest > 0).then(|| &chunk[..rest])));
    futures::stream::once(async move { head })
        .chain(file)
        .chain(futures::stream::once(async move { tail }))
        .map(Ok)
}

async fn one_upload(
    http: Client,
    url: String,
    job: Job,
    index: usize,
    attach: bool,
    bytes: u64,
    chunk: &'static [u8],
) -> Outcome {
    let session = job.session.as_deref().filter(|_| attach);
    let (head, tail) = form_parts(session, &format!("bench-{index}.txt"));
    let length = head.len() as u64 + bytes + tail.len() as u64;
    let t0 = Instant::now();
    let sent = http
        .post(&url)
        .bearer_auth(&job.token)
        .header("content-type", format!("multipart/form-data; boundary={BOUNDARY}"))
        // A known length, as browsers and curl send a form: the server can
        // refuse a file too large before reading it.
        .header("content-length", length)
        .body(Body::wrap_stream(body_stream(head, chunk, bytes, tail)))
        .send()
        .await;
    let response = match sent {
        Ok(response) => response,
        Err(e) => {
            return Outcome {
                status: None,
                id: None,
                error: Some(format!("request: {e:?}")),
                took: t0.elapsed(),
            };
        }
    };
    let status = response.status();
    let text = response.text().await;
    let took = t0.elapsed();
    match text {
        Ok(text) if status == StatusCode::CREATED => {
            let id = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["id"].as_str().map(str::to_owned));
            let error = id.is_none().then(|| format!("201 without an id: {text}"));
            Outcome { status: Some(status), id, error, took }
        }
        Ok(text) => Outcome {
            status: Some(status),
            id: None,
            error: Some(format!("{status}: {text}")),
            took,
        },
        Err(e) => Outcome {
            status: Some(status),
            id: None,
            error: Some(format!("{status}, body: {e}")),
            took,
        },
    }
}

/// Runs the jobs, `concurrency` at a time; prints one `RESULT` line, and
/// writes `token session file_id` lines (`-` for no session) to `out`.
pub async fn upload(
    base: &str,
    jobs: Vec<Job>,
    options: Options,
    out: Option<&PathBuf>,
) -> Result<(), String> {
    let Options { attach, concurrency, bytes, chunk_bytes, timeout } = options;
    let n = jobs.len();
    let concurrency = concurrency.clamp(1, n.max(1));
    let http = client(concurrency, timeout);
    let url = format!("{base}/api/v1/files");
    let chunk = text_chunk(chunk_bytes.max(1));
    let t0 = Instant::now();
    let outcomes: Vec<(String, Option<String>, Outcome)> =
        futures::stream::iter(jobs.into_iter().enumerate())
            .map(|(i, job)| {
                let (http, url) = (http.clone(), url.clone());
                async move {
                    let (token, session) = (job.token.clone(), job.session.clone());
                    let outcome = tokio::spawn(one_upload(http, url, job, i, attach, bytes, chunk))
                        .await
                        .unwrap();
                    (token, session, outcome)
                }
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
    let wall = t0.elapsed();
    let mut took: Vec<Duration> = outcomes.iter().map(|(_, _, o)| o.took).collect();
    took.sort();
    let quantile = |q: f64| {
        took.get(((took.len() as f64 * q).ceil() as usize).saturating_sub(1))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let created = outcomes.iter().filter(|(_, _, o)| o.id.is_some()).count();
    let mut statuses = std::collections::BTreeMap::<String, usize>::new();
    for (_, _, o) in &outcomes {
        let key = o.status.map_or_else(|| "error".to_owned(), |s| s.as_u16().to_string());
        *statuses.entry(key).or_default() += 1;
    }
    let statuses: Vec<String> = statuses.iter().map(|(s, n)| format!("{s}:{n}")).collect();
    // Bytes of files stored whole: a refused upload's bytes do not count.
    let stored = created as u64 * bytes;
    println!(
        "RESULT uploads={n} concurrency={concurrency} created={created} failed={} file_bytes={bytes} \
         stored_bytes={stored} wall_ms={:.1} mib_per_s={:.1} p50_ms={:.1} p99_ms={:.1} max_ms={:.1} \
         statuses={}",
        n - created,
        wall.as_secs_f64() * 1000.0,
        stored as f64 / 1_048_576.0 / wall.as_secs_f64().max(1e-9),
        quantile(0.5),
        quantile(0.99),
        quantile(1.0),
        statuses.join(","),
    );
    for error in outcomes.iter().filter_map(|(_, _, o)| o.error.as_ref()).take(3) {
        eprintln!("upload error: {error}");
    }
    if let Some(out) = out {
        let mut lines = String::new();
        for (token, session, o) in &outcomes {
            if let Some(id) = &o.id {
                let _ = writeln!(lines, "{token} {} {id}", session.as_deref().unwrap_or("-"));
            }
        }
        std::fs::write(out, lines).map_err(|e| format!("{}: {e}", out.display()))?;
    }
    if created < n {
        return Err(format!("{} of {n} uploads failed", n - created));
    }
    Ok(())
}
